//! Where things are pinned: `<root>/<map name>` for maps (so `bpftool map dump pinned
//! <root>/tg_svc_v1` works), `<root>/links/<program>@<target>` for links.

use std::path::{Path, PathBuf};

use super::DataplaneError;

/// bpffs magic from `statfs(2)`.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

#[derive(Debug, Clone)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    /// Creates the directory tree (idempotent) after checking that it lives on a bpffs.
    pub fn prepare(root: &Path) -> Result<Self, DataplaneError> {
        std::fs::create_dir_all(root.join("links")).map_err(|source| DataplaneError::PinDir {
            path: root.to_owned(),
            source,
        })?;
        if !is_bpffs(root) {
            return Err(DataplaneError::NotBpffs {
                path: root.to_owned(),
            });
        }
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// A layout for reading an existing pin directory (no creation).
    pub fn existing(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn link(&self, program: &str, target: &str) -> PathBuf {
        self.root.join("links").join(format!("{program}@{target}"))
    }
}

fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; the path is a valid C string.
    unsafe {
        let mut buf: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut buf) == 0 && buf.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Unpins everything below `root` and removes the directories. Returns what was removed.
pub fn remove_all(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    if !root.exists() {
        return Ok(removed);
    }
    remove_tree(root, &mut removed)?;
    Ok(removed)
}

fn remove_tree(dir: &Path, removed: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            remove_tree(&path, removed)?;
        } else {
            // Unlinking a pin drops the kernel reference; a link without references detaches.
            std::fs::remove_file(&path)?;
            removed.push(path);
        }
    }
    std::fs::remove_dir(dir)?;
    removed.push(dir.to_owned());
    Ok(())
}
