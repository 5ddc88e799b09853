//! bpffs directories owned by a test (where an agent pins its maps and links), removed on drop.

use std::path::{Path, PathBuf};

pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Mounts bpffs at `/sys/fs/bpf` if nothing is mounted there (the kernel's usual place).
pub fn ensure_mounted() {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mounted = mounts.lines().any(|l| {
        let mut cols = l.split_whitespace();
        let _ = cols.next();
        cols.next() == Some(BPFFS_ROOT) && cols.next() == Some("bpf")
    });
    if !mounted {
        std::fs::create_dir_all(BPFFS_ROOT).unwrap_or_else(|e| panic!("mkdir {BPFFS_ROOT}: {e}"));
        crate::run("mount", &["-t", "bpf", "bpf", BPFFS_ROOT]);
    }
}

/// `/sys/fs/bpf/<name>`: unpinned recursively on drop (links detach when their pin goes).
#[derive(Debug)]
pub struct BpffsDir {
    path: PathBuf,
}

impl BpffsDir {
    pub fn new(name: &str) -> Self {
        assert!(
            name.starts_with(crate::prefix::MARKER),
            "test-bed bpffs directories must carry the test-bed prefix, got {name}"
        );
        ensure_mounted();
        let path = PathBuf::from(BPFFS_ROOT).join(name);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A subdirectory path (not created: the agent creates its own pin directory).
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

pub fn remove_tree(path: &Path) {
    let _ = std::fs::remove_dir_all(path);
}

impl Drop for BpffsDir {
    fn drop(&mut self) {
        remove_tree(&self.path);
    }
}
