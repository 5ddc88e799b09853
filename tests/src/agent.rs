//! Starting the `tollgate` agent on a test-bed node.

use std::{process::Command, time::Duration};

use crate::{BgProcess, Node, tools::tollgate_bin};

/// Starts `tollgate run` on `node` (host network, the node's cgroup for host processes) with
/// its pin directory, the uplink `eth0`, debug logs, and `extra` arguments; waits until it
/// logs that it is ready.
pub fn start_agent(node: &Node, source: &str, extra: &[&str]) -> BgProcess {
    let mut cmd = Command::new(tollgate_bin());
    cmd.args([
        "run",
        "--node",
        &node.name,
        "--source",
        source,
        "--uplinks",
        "eth0",
        "--file-poll-ms",
        "100",
        "--bpffs",
    ])
    .arg(&node.bpffs)
    .args(extra)
    .env("TOLLGATE_LOG", "debug");
    let mut agent = node.spawn("agent", cmd);
    agent.wait_for_log("tollgate ready", Duration::from_secs(30));
    agent
}
