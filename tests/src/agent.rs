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
    start_agent_until(node, source, extra, "tollgate ready")
}

/// Like [`start_agent`], waiting for `needle` in the log instead of readiness.
pub fn start_agent_until(node: &Node, source: &str, extra: &[&str], needle: &str) -> BgProcess {
    start_agent_from(&tollgate_bin(), node, source, extra, needle)
}

/// Like [`start_agent_until`], running the agent binary at `bin` (another build, say).
pub fn start_agent_from(
    bin: &std::path::Path,
    node: &Node,
    source: &str,
    extra: &[&str],
    needle: &str,
) -> BgProcess {
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
    let mut cmd = Command::new(bin);
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
    agent.wait_for_log(needle, Duration::from_secs(30));
    agent
}

/// GET `path` from the agent's admin server on `node` (the default port, from inside the node's
/// namespace): the status code and body (code 0 when nothing answered).
pub fn admin_get(node: &Node, path: &str) -> (u16, String) {
    http_get(node.host(), &format!("http://127.0.0.1:10256{path}"))
}

/// GET `url` with curl in `at`: the status code and body (code 0 when nothing answered).
pub fn http_get(at: crate::process::Placement<'_>, url: &str) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-m", "5", "-w", "\n%{http_code}", url]);
    let out = at.output(cmd);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// The value of the first sample of `name` (exactly that name, with or without labels) in a
/// Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> f64 {
    metric_opt(text, name).unwrap_or_else(|| panic!("metric {name} missing:\n{text}"))
}

/// Like [`metric`], `None` when absent; `name` may include labels (`m{a="b"}`).
pub fn metric_opt(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
