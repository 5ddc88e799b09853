//! The demo behind `cargo xtask demo`: builds an emulated cluster (two nodes with pods, an
//! outside client, a cloud), runs the agent on each node, sends real traffic and shows what the
//! dataplane counted. Everything is torn down at the end (and on Ctrl-C: the cluster is dropped
//! when the signal ends the wait).

use std::{process::Command, time::Duration};

use anyhow::{Context as _, bail};
use tollgate_tests::{
    Cluster, ClusterSpec, Node,
    tools::{testbed_bin, tollgate_bin},
};

fn section(title: &str) {
    println!("\n=== {title} ===");
}

fn show(label: &str, out: &std::process::Output) {
    println!("$ {label}");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        print!("{}", String::from_utf8_lossy(&out.stderr));
    }
}

fn maps(node: &Node) -> std::process::Output {
    let mut cmd = Command::new(tollgate_bin());
    cmd.args(["maps", "--bpffs"]).arg(&node.bpffs);
    node.output(cmd)
}

fn main() -> anyhow::Result<()> {
    tollgate_tests::require_root();
    section("building the emulated cluster");
    let cluster = Cluster::new(&ClusterSpec::default());
    for node in &cluster.nodes {
        println!(
            "{} ({}): uplink {} / {}, pods {}",
            node.name,
            node.ns.name(),
            node.ip,
            node.ip6,
            node.pods
                .iter()
                .map(|p| format!("{}={}", p.name, p.ip))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    println!("outside client: {}", tollgate_tests::cluster::OUTSIDE_V4);

    section("starting the agent on every node");
    let source = cluster.write_manifest(&[]);
    let mut agents = Vec::new();
    for node in &cluster.nodes {
        let agent = tollgate_tests::agent::start_agent(node, &source, &[]);
        println!(
            "{}: agent ready, maps pinned under {}",
            node.name,
            node.bpffs.display()
        );
        agents.push(agent);
    }

    section("sending traffic from the outside client to node1");
    let node1 = cluster.node("node1");
    let mut echo = Command::new(testbed_bin());
    echo.args(["udp-echo", "--listen", "0.0.0.0:7777"]);
    let mut echo = node1.spawn("udp-echo", echo);
    echo.wait_for_log("listening", Duration::from_secs(5));
    let mut ping = Command::new(testbed_bin());
    ping.args([
        "udp-ping",
        "--to",
        &format!("{}:7777", node1.ip),
        "--count",
        "500",
    ]);
    let out = cluster.outside().output(ping);
    show(
        "tollgate-testbed udp-ping --count 500   (outside → node1)",
        &out,
    );
    if !out.status.success() {
        bail!("udp-ping failed");
    }

    section("pod n1p1 → pod n2p1 across nodes");
    let mut icmp = Command::new("ping");
    icmp.args([
        "-c",
        "5",
        "-i",
        "0.2",
        "-q",
        &cluster.pod("n2p1").ip.to_string(),
    ]);
    show("ping -c 5 10.244.2.11", &cluster.pod("n1p1").output(icmp));

    section("what the dataplane counted (tollgate maps)");
    for node in &cluster.nodes {
        show(
            &format!(
                "tollgate maps --bpffs {}   ({})",
                node.bpffs.display(),
                node.name
            ),
            &maps(node),
        );
    }
    let mut bpftool = Command::new("bpftool");
    bpftool
        .args(["map", "dump", "pinned"])
        .arg(node1.bpffs.join("tg_ifstats_v1"));
    let dump = node1.output(bpftool);
    let text = String::from_utf8_lossy(&dump.stdout);
    println!(
        "$ bpftool map dump pinned {}/tg_ifstats_v1   (first entry)",
        node1.bpffs.display()
    );
    for line in text.lines().take(24) {
        println!("{line}");
    }

    section("tearing down");
    drop(echo);
    drop(agents);
    let prefix = cluster.prefix.to_string();
    drop(cluster);
    let left = std::fs::read_dir("/run/netns")
        .context("listing /run/netns")?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .count();
    println!("removed namespaces, cgroups and pins of {prefix} ({left} left)");
    Ok(())
}
