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
                match load(&path) {
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
