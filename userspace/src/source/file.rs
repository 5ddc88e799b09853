//! The file source: a manifest file, re-read when it changes (checked every poll interval by
//! size, modification time and inode, then by content). A file that fails to parse keeps the
//! last good state; the error (with its position) is logged once per distinct error.

use std::{
    hash::{Hash as _, Hasher as _},
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{sync::mpsc, task::JoinHandle};

use super::manifest;
use crate::enls::{SourceEvent, ingest::Kind};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    inode: u64,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path)?;
    Ok(Stamp {
        len: m.len(),
        modified: m.modified().ok(),
        inode: m.ino(),
    })
}

/// Reads and parses the file: the events of one full (re-)list.
pub fn load(path: &Path) -> Result<(u64, Vec<SourceEvent>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    let objects = manifest::parse(&text).map_err(|e| e.to_string())?;
    let mut events = Vec::with_capacity(objects.len() + 8);
    events.extend(Kind::ALL.map(SourceEvent::ListBegin));
    events.extend(objects.into_iter().map(SourceEvent::Apply));
    events.extend(Kind::ALL.map(SourceEvent::ListDone));
    Ok((hasher.finish(), events))
}

pub fn start(path: PathBuf, poll: Duration, tx: mpsc::Sender<SourceEvent>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_stamp: Option<Stamp> = None;
        let mut last_hash: Option<u64> = None;
        let mut last_error: Option<String> = None;
        loop {
            let current = stamp(&path).ok();
            if current.is_none() || current != last_stamp {
                last_stamp = current;
                // Off the runtime's threads: a cluster-sized file takes seconds to parse, and
                // the agent's other tasks (health, metrics, the metadata proxy) share them.
                let loaded = {
                    let path = path.clone();
                    tokio::task::spawn_blocking(move || load(&path))
                        .await
                        .unwrap_or_else(|e| Err(format!("reading failed: {e}")))
                };
                match loaded {
                    Ok((hash, events)) => {
                        last_error = None;
                        if last_hash != Some(hash) {
                            last_hash = Some(hash);
                            let objects = events.len().saturating_sub(8);
                            tracing::info!(path = %path.display(), objects, "manifest loaded");
                            for event in events {
                                if tx.send(event).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    Err(error) => {
                        if last_error.as_ref() != Some(&error) {
                            tracing::error!(
                                path = %path.display(),
                                "{error}; keeping the last good state"
                            );
                            last_error = Some(error);
                        }
                        // Retry the same content on the next change only.
                    }
                }
            }
            tokio::time::sleep(poll).await;
            if tx.is_closed() {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::{ffi::CString, os::unix::ffi::OsStrExt as _, sync::mpsc as std_mpsc};

    use super::*;

    /// The file is read and parsed off the runtime's thread. The proof is a FIFO, whose read
    /// waits for its writer, and a writer that starts only when a task on the runtime (a
    /// current-thread runtime: one thread) gets to run. A read on the runtime's thread would
    /// never let that task run.
    #[test]
    fn the_file_is_read_off_the_runtime_thread() {
        let dir = std::env::temp_dir().join(format!("tollgate-file-src-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("manifest.yaml");
        let _ = std::fs::remove_file(&fifo);
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");

        let (go_tx, go_rx) = std_mpsc::channel::<()>();
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                if go_rx.recv().is_ok() {
                    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: d}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n";
                    std::fs::write(&fifo, text).unwrap();
                }
            })
        };
        let (done_tx, done_rx) = std_mpsc::channel();
        let scenario = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let events = rt.block_on(async move {
                let (tx, mut rx) = mpsc::channel(64);
                let _source = start(fifo, Duration::from_secs(3600), tx);
                // The source's first poll starts the read; only then may the writer go.
                tokio::task::yield_now().await;
                tokio::spawn(async move { go_tx.send(()) });
                let mut applied = 0;
                while let Some(event) = rx.recv().await {
                    match event {
                        SourceEvent::Apply(_) => applied += 1,
                        SourceEvent::ListDone(_) if applied > 0 => break,
                        _ => {}
                    }
                }
                applied
            });
            let _ = done_tx.send(events);
        });
        let applied = done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the runtime's only thread was blocked by the file read");
        assert_eq!(applied, 1);
        scenario.join().unwrap();
        writer.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
