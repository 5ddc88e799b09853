//! Starting the `tollgate` agent on a test-bed node.

use std::{process::Command, time::Duration};

use crate::{BgProcess, Node, tools::tollgate_bin};

/// Starts `tollgate run` on `node` (host network, the node's cgroup for host processes) with
/// its pin directory, the uplink `eth0`, pod interfaces `veth*`, the node's own cgroup for the
/// socket hooks, debug logs, and `extra` arguments; waits until it logs that it is ready.
///
/// The socket hooks go to the node's cgroup, which the test bed created: never the host's
/// root cgroup (the agent's default), which this function refuses to allow.
pub fn start_agent(node: &Node, source: &str, extra: &[&str]) -> BgProcess {
    let cgroup_dir = node
        .cgroup
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    assert!(
        cgroup_dir.starts_with(crate::prefix::MARKER),
        "refusing to start an agent on cgroup {} outside the test bed",
        node.cgroup.display()
    );
    assert!(
        !extra.contains(&"--cgroup"),
        "the test bed chooses the agent's cgroup"
    );
    let mut cmd = Command::new(tollgate_bin());
    cmd.args(["run", "--node", &node.name, "--source", source])
        .args(["--uplinks", "eth0", "--pod-interfaces", "veth*"])
        .args(["--file-poll-ms", "100"])
        .arg("--cgroup")
        .arg(&node.cgroup)
        .arg("--bpffs")
        .arg(&node.bpffs)
        .args(extra)
        .env("TOLLGATE_LOG", "debug");
    let mut agent = node.spawn("agent", cmd);
    agent.wait_for_log("tollgate ready", Duration::from_secs(30));
    agent
}
