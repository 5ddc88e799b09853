//! Tollgate's test bed: a Kubernetes cluster emulated on one machine with network namespaces,
//! veth pairs, cgroups and bpffs directories, all owned by the test that made them.
//!
//! Safety of the machine: every object carries a unique prefix (`tgt` + 5 characters), lives
//! inside namespaces/cgroups/bpffs directories the test bed created, and is removed on drop, also
//! after a panic. Nothing here touches the root namespace's interfaces, routes, firewall or root
//! cgroup. Leftovers of killed runs are swept by [`sweep::sweep_stale`] (`cargo xtask
//! clean-testbed`).

pub mod agent;
pub mod apiserver;
pub mod bench;
pub mod bpffs;
pub mod cgroup;
pub mod cluster;
pub mod k8s;
pub mod metadata_double;
pub mod netns;
pub mod prefix;
pub mod process;
pub mod scenario;
pub mod sweep;
pub mod tools;
pub mod traffic;

pub use bpffs::BpffsDir;
pub use cgroup::Cgroup;
pub use cluster::{Cluster, ClusterSpec, Node, Pod};
pub use netns::Netns;
pub use prefix::Prefix;
pub use process::BgProcess;

/// Panics with a clear message unless the process can do privileged networking.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the test bed needs root (network namespaces, BPF, cgroups); run through `cargo xtask test`"
    );
}

/// Runs a command to completion, panicking with its output if it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    if !out.status.success() {
        panic!(
            "{program} {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `check` every 20 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(
    what: &str,
    timeout: std::time::Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if std::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
