//! Removing what killed test runs left behind (`cargo xtask clean-testbed`).
//!
//! An object is stale when its prefix has no owner record or the recorded owner process is gone.
//! Only objects carrying the test-bed marker are ever considered.

use crate::prefix::{MARKER, OWNER_DIR, owner_file};

/// What a sweep removed, for the report.
#[derive(Debug, Default)]
pub struct SweepReport {
    pub removed: Vec<String>,
}

fn owner_alive(prefix: &str) -> bool {
    let Ok(pid) = std::fs::read_to_string(owner_file(prefix)) else {
        return false;
    };
    let Ok(pid) = pid.trim().parse::<i32>() else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// `tgtXXXXX` out of `tgtXXXXX-node1` (or the name itself).
fn prefix_of(name: &str) -> Option<&str> {
    let head = name.split('-').next()?;
    (head.starts_with(MARKER) && head.len() == MARKER.len() + 5).then_some(head)
}

/// Removes stale test-bed objects; with `force`, removes every test-bed object.
pub fn sweep_stale(force: bool) -> SweepReport {
    let mut report = SweepReport::default();
    let stale = |name: &str| prefix_of(name).is_some_and(|p| force || !owner_alive(p));

    // 1. Processes die with their cgroups (also frees namespaces they held).
    let cg_root = crate::cgroup::cgroup2_root();
    for entry in std::fs::read_dir(&cg_root).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if stale(&name) {
            crate::cgroup::remove_tree(&entry.path());
            report
                .removed
                .push(format!("cgroup {}", entry.path().display()));
        }
    }
    // 2. Pins (links detach with them).
    for entry in std::fs::read_dir(crate::bpffs::BPFFS_ROOT)
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if stale(&name) {
            crate::bpffs::remove_tree(&entry.path());
            report
                .removed
                .push(format!("bpffs {}", entry.path().display()));
        }
    }
    // 3. Namespaces (their interfaces go with them).
    for entry in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if stale(&name) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &name])
                .status();
            report.removed.push(format!("netns {name}"));
        }
    }
    // 4. Scratch directories (manifests, kubeconfigs).
    for entry in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().is_ok_and(|t| t.is_dir()) && stale(&name) {
            let _ = std::fs::remove_dir_all(entry.path());
            report
                .removed
                .push(format!("directory {}", entry.path().display()));
        }
    }
    // 5. Owner records of dead runs.
    for entry in std::fs::read_dir(OWNER_DIR).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if stale(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    report
}
