//! cgroup v2 directories owned by a test (for the socket hooks), removed on drop.

use std::path::{Path, PathBuf};

/// The cgroup v2 mount point: `/sys/fs/cgroup/unified` on hybrid hosts, else `/sys/fs/cgroup`
/// when that is cgroup2 itself.
pub fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            let _dev = cols.next()?;
            let dir = cols.next()?;
            let fstype = cols.next()?;
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .collect();
    found.sort_by_key(|p| p.as_os_str().len());
    found
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no cgroup2 file system is mounted; the socket hooks need one"))
}

/// A cgroup directory. Drop kills whatever still runs in it (and its children) and removes it.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    children: Vec<Cgroup>,
}

impl Cgroup {
    /// Creates `<cgroup2 root>/<name>`; `name` must carry the test-bed prefix.
    pub fn new_top(name: &str) -> Self {
        assert!(
            name.starts_with(crate::prefix::MARKER),
            "test-bed cgroups must carry the test-bed prefix, got {name}"
        );
        Self::create(cgroup2_root().join(name))
    }

    fn create(path: PathBuf) -> Self {
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        Self {
            path,
            children: Vec::new(),
        }
    }

    /// Creates a child cgroup owned (and removed) by this one; returns its path.
    pub fn child(&mut self, name: &str) -> PathBuf {
        let child = Self::create(self.path.join(name));
        let path = child.path.clone();
        self.children.push(child);
        path
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Kills every process in the cgroup subtree at `path` and waits (≤ 5 s) for it to empty.
pub fn kill_all(path: &Path) {
    // cgroup.kill (5.14+) kills the whole subtree at once.
    let _ = std::fs::write(path.join("cgroup.kill"), "1");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while populated(path) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn populated(path: &Path) -> bool {
    std::fs::read_to_string(path.join("cgroup.events"))
        .map(|events| events.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

/// Removes the subtree bottom-up (after killing its processes).
pub fn remove_tree(path: &Path) {
    if !path.exists() {
        return;
    }
    kill_all(path);
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(path);
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for child in self.children.drain(..) {
            drop(child);
        }
        remove_tree(&self.path);
    }
}
