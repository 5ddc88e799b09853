//! Foundation: the test bed itself, and the first program pair (XDP + TC sharing a pinned BTF
//! map) loaded by the agent into a node namespace, counting real packets.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "end-to-end tests panic with clear messages"
)]

use std::{path::Path, process::Command, time::Duration};

use tollgate_tests::{
    BgProcess, Cluster, ClusterSpec, Node,
    tools::{testbed_bin, tollgate_bin},
    wait_for,
};

fn start_agent(cluster: &Cluster, node: &Node) -> BgProcess {
    // Native XDP even on the test bed's veth uplinks (it only counts and passes here).
    tollgate_tests::agent::start_agent(
        node,
        &cluster.write_manifest(&[]),
        &["--xdp-mode", "native"],
    )
}

fn ifindex(node: &Node, iface: &str) -> u32 {
    let out = node.ns.ip(&["-o", "link", "show", iface]);
    out.split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ifindex in {out:?}"))
}

/// (packets, bytes) counted by `hook` on `ifindex`, via `tollgate maps --json`.
fn counted(node: &Node, ifindex: u32, hook: &str) -> (u64, u64) {
    let mut cmd = Command::new(tollgate_bin());
    cmd.args(["maps", "--json", "--bpffs"]).arg(&node.bpffs);
    let out = node.output(cmd);
    assert!(
        out.status.success(),
        "tollgate maps failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("maps json: {e}"));
    v["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["ifindex"] == ifindex && r["hook"] == hook)
        .map(|r| {
            (
                r["packets"].as_u64().unwrap_or(0),
                r["bytes"].as_u64().unwrap_or(0),
            )
        })
        .unwrap_or((0, 0))
}

fn udp_ping(cluster: &Cluster, to: &str, count: u32) -> u64 {
    let mut cmd = Command::new(testbed_bin());
    cmd.args([
        "udp-ping",
        "--to",
        to,
        "--count",
        &count.to_string(),
        "--size",
        "100",
    ]);
    let out = cluster.outside().output(cmd);
    assert!(
        out.status.success(),
        "udp-ping: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("udp-ping json: {e}"));
    v["received"].as_u64().unwrap_or(0)
}

fn ping(placement: tollgate_tests::process::Placement<'_>, to: &str) -> bool {
    let mut cmd = Command::new("ping");
    cmd.args(["-c", "1", "-W", "2", to]);
    placement.output(cmd).status.success()
}

#[test]
fn topology_routes_between_pods_nodes_outside_and_cloud() {
    let cluster = Cluster::new(&ClusterSpec::default());
    let n1p1 = cluster.pod("n1p1");
    let n2p2 = cluster.pod("n2p2");
    assert!(
        ping(n1p1.placement(), &n2p2.ip.to_string()),
        "pod → pod on another node (v4)"
    );
    assert!(
        ping(n1p1.placement(), &n2p2.ip6.to_string()),
        "pod → pod on another node (v6)"
    );
    assert!(
        ping(n1p1.placement(), &cluster.pod("n1p2").ip.to_string()),
        "pod → pod on the same node"
    );
    assert!(
        ping(cluster.outside(), &cluster.node("node2").ip.to_string()),
        "outside → node"
    );
    assert!(
        ping(n1p1.placement(), "169.254.169.254"),
        "pod → cloud metadata address"
    );
    assert!(
        ping(cluster.node("node1").host(), "169.254.169.254"),
        "host → cloud metadata address"
    );
    // The outside client is not routed to pod addresses, as in a real cluster.
    assert!(
        !ping(cluster.outside(), &n1p1.ip.to_string()),
        "outside must not reach pod IPs directly"
    );
}

#[test]
fn dropping_the_cluster_removes_everything_it_created() {
    let cluster = Cluster::new(&ClusterSpec {
        pods_per_node: vec![1],
        cloud: true,
        ..Default::default()
    });
    let prefix = cluster.prefix.to_string();
    let cgroup = cluster.cgroup_root().to_owned();
    let node = cluster.node("node1");
    // Something running inside, and something pinned, to prove drop handles them too.
    let mut sleeper = Command::new("sleep");
    sleeper.arg("600");
    let sleeping = node.spawn("sleeper", sleeper);
    let pid = sleeping.pid();
    std::mem::forget(sleeping); // leave it to the cluster's cgroup clean-up
    let agent = start_agent(&cluster, node);
    drop(agent);
    drop(cluster);

    let netns = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    assert!(
        netns.iter().all(|n| !n.starts_with(&prefix)),
        "namespaces left behind: {netns:?}"
    );
    assert!(!cgroup.exists(), "cgroup {} left behind", cgroup.display());
    assert!(
        !Path::new("/sys/fs/bpf").join(&prefix).exists(),
        "bpffs directory left behind"
    );
    assert!(
        !Path::new(tollgate_tests::prefix::OWNER_DIR)
            .join(&prefix)
            .exists(),
        "owner record left behind"
    );
    // Killed but unreaped (we forgot its handle) leaves a zombie: that counts as dead.
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let running = state
        .rsplit(')')
        .next()
        .map(|rest| !rest.trim_start().starts_with('Z'))
        .unwrap_or(false);
    assert!(!running, "process {pid} survived the clean-up: {state}");
}

#[test]
fn xdp_and_tc_count_real_packets_in_a_pinned_btf_map() {
    let cluster = Cluster::new(&ClusterSpec {
        pods_per_node: vec![1, 1],
        cloud: false,
        ..Default::default()
    });
    let node = cluster.node("node1");
    let mut echo = Command::new(testbed_bin());
    echo.args(["udp-echo", "--listen", "0.0.0.0:7777"]);
    let mut echo = node.spawn("udp-echo", echo);
    echo.wait_for_log("listening", Duration::from_secs(5));
    let _agent = start_agent(&cluster, node);
    let eth0 = ifindex(node, "eth0");

    let before_xdp = counted(node, eth0, "xdp");
    const N: u32 = 300;
    let received = udp_ping(&cluster, &format!("{}:7777", node.ip), N);
    assert_eq!(
        received,
        u64::from(N),
        "every datagram must be echoed (the programs pass traffic)"
    );

    let (xdp_packets, xdp_bytes) = counted(node, eth0, "xdp");
    let (ing_packets, _) = counted(node, eth0, "tc_ingress");
    let (eg_packets, eg_bytes) = counted(node, eth0, "tc_egress");
    let n = u64::from(N);
    // Background packets (ARP, IPv6 neighbour discovery) may add a few.
    for (what, packets) in [
        ("xdp", xdp_packets - before_xdp.0),
        ("tc_ingress", ing_packets),
        ("tc_egress", eg_packets),
    ] {
        assert!(
            (n..n + 40).contains(&packets),
            "{what} counted {packets} packets for {n} datagrams"
        );
    }
    // 100-byte payload + UDP 8 + IPv4 20 + Ethernet 14 = 142 bytes per frame.
    assert!(xdp_bytes - before_xdp.1 >= n * 142, "xdp bytes {xdp_bytes}");
    assert!(eg_bytes >= n * 142, "tc egress bytes {eg_bytes}");

    // The other node has no agent: nothing is attached there.
    let other = cluster.node("node2");
    assert!(!other.bpffs.exists(), "node2 has no agent and no pins");

    // bpftool pretty-prints the pinned map with BTF field names.
    let dump = node.output({
        let mut c = Command::new("bpftool");
        c.args(["map", "dump", "pinned"])
            .arg(node.bpffs.join("tg_ifstats_v1"));
        c
    });
    assert!(
        dump.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let text = String::from_utf8_lossy(&dump.stdout);
    for field in ["\"ifindex\"", "\"hook\"", "\"packets\"", "\"bytes\""] {
        assert!(
            text.contains(field),
            "bpftool dump lacks field {field}:\n{text}"
        );
    }
}

#[test]
fn programs_keep_counting_across_agent_sigkill_and_restart() {
    let cluster = Cluster::new(&ClusterSpec {
        pods_per_node: vec![0],
        cloud: false,
        ..Default::default()
    });
    let node = cluster.node("node1");
    let mut echo = Command::new(testbed_bin());
    echo.args(["udp-echo", "--listen", "0.0.0.0:7777"]);
    let mut echo = node.spawn("udp-echo", echo);
    echo.wait_for_log("listening", Duration::from_secs(5));
    let to = format!("{}:7777", node.ip);
    let eth0 = ifindex(node, "eth0");

    let mut agent = start_agent(&cluster, node);
    assert_eq!(udp_ping(&cluster, &to, 50), 50);
    let first = counted(node, eth0, "tc_ingress").0;
    assert!(first >= 50);

    agent.kill9();
    // No agent runs: the pinned links keep the programs attached, the pinned map keeps counting.
    assert_eq!(udp_ping(&cluster, &to, 50), 50);
    let while_dead = counted(node, eth0, "tc_ingress").0;
    assert!(
        while_dead >= first + 50,
        "counting stopped while the agent was dead: {first} → {while_dead}"
    );

    let _agent = start_agent(&cluster, node);
    assert_eq!(udp_ping(&cluster, &to, 50), 50);
    let after = counted(node, eth0, "tc_ingress").0;
    assert!(
        after >= while_dead + 50,
        "the restarted agent lost the pinned map: {while_dead} → {after}"
    );
    let after_xdp = counted(node, eth0, "xdp").0;
    assert!(after_xdp >= 150, "xdp counted {after_xdp}");
    // Exactly one program per hook: the restart updated the pinned links instead of stacking
    // a second copy (which would double-count).
    assert!(
        after - first < 50 * 2 + 40,
        "double counting after restart: {first} → {after}"
    );
}

#[test]
fn cleanup_removes_pins_and_detaches_programs() {
    let cluster = Cluster::new(&ClusterSpec {
        pods_per_node: vec![0],
        cloud: false,
        ..Default::default()
    });
    let node = cluster.node("node1");
    let mut agent = start_agent(&cluster, node);
    agent.terminate();
    let links: Vec<String> = std::fs::read_dir(node.bpffs.join("links"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for prefix in [
        "tg_xdp_uplink@eth0#",
        "tg_tc_ingress@eth0#",
        "tg_tc_egress@eth0#",
    ] {
        assert!(
            links.iter().any(|l| l.starts_with(prefix)),
            "{prefix}… pinned after a clean stop: {links:?}"
        );
    }
    assert_eq!(
        links.iter().filter(|l| l.contains("@cgroup-")).count(),
        9,
        "8 sock_addr hooks and sock_release: {links:?}"
    );
    let xdp_attached = |node: &Node| node.ns.ip(&["link", "show", "eth0"]).contains("xdp");
    assert!(
        xdp_attached(node),
        "xdp stays attached while the agent is stopped"
    );
    let cgroup_hooks = || {
        let out = Command::new("bpftool")
            .args(["cgroup", "show"])
            .arg(&node.cgroup)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).matches("tg_").count()
    };
    assert_eq!(
        cgroup_hooks(),
        9,
        "socket hooks stay attached while the agent is stopped"
    );

    let mut cmd = Command::new(tollgate_bin());
    cmd.args(["cleanup", "--bpffs"]).arg(&node.bpffs);
    let out = node.output(cmd);
    assert!(
        out.status.success(),
        "cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!node.bpffs.exists(), "pin directory removed");
    wait_for("xdp to detach", Duration::from_secs(5), || {
        (!xdp_attached(node)).then_some(())
    });
    wait_for("socket hooks to detach", Duration::from_secs(5), || {
        (cgroup_hooks() == 0).then_some(())
    });
}

use tollgate_tests::agent::{admin_get as curl, metric};

#[test]
fn agent_exposes_enls_metrics_and_health() {
    use tollgate_tests::k8s;
    let cluster = Cluster::new(&ClusterSpec {
        pods_per_node: vec![1],
        cloud: false,
        ..Default::default()
    });
    let node = cluster.node("node1");
    let svc = k8s::service("default", "web", "10.96.0.10", &[("http", 80)]);
    let slice = |ips: &[&str]| {
        k8s::slice(
            "default",
            "web-1",
            "web",
            &[("http", 8080)],
            ips.iter().map(|ip| k8s::endpoint(ip, "node1")).collect(),
        )
    };
    let source = cluster.write_manifest(&[svc.clone(), slice(&["10.244.1.11"])]);
    let _agent = tollgate_tests::agent::start_agent(node, &source, &[]);

    let (code, body) = curl(node, "/healthz");
    assert_eq!(code, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["nodeEligible"], true);
    assert!(health["lastUpdated"].is_string() && health["currentTime"].is_string());
    let (code, _) = curl(node, "/livez");
    assert_eq!(code, 200);

    let (_, text) = curl(node, "/metrics");
    assert_eq!(metric(&text, "tollgate_enls_revision"), 1.0);
    assert_eq!(metric(&text, "tollgate_enls_services"), 1.0);
    assert!(metric(&text, "kubeproxy_sync_proxy_rules_endpoint_changes_total") >= 1.0);
    assert!(
        text.contains("kubeproxy_proxy_healthz_total{code=\"200\"} 1"),
        "{text}"
    );

    // A relevant change: one more revision.
    cluster.write_manifest(&[svc.clone(), slice(&["10.244.1.11", "10.244.2.11"])]);
    wait_for("revision 2", Duration::from_secs(10), || {
        (metric(&curl(node, "/metrics").1, "tollgate_enls_revision") == 2.0).then_some(())
    });
    // An irrelevant one (a new annotation): events count up, the revision does not.
    let events = |text: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("tollgate_enls_api_events_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let events_before = events(&curl(node, "/metrics").1);
    cluster.write_manifest(&[
        k8s::with_annotation(svc, "note", "x"),
        slice(&["10.244.1.11", "10.244.2.11"]),
    ]);
    wait_for("the reload", Duration::from_secs(10), || {
        (events(&curl(node, "/metrics").1) > events_before).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        metric(&curl(node, "/metrics").1, "tollgate_enls_revision"),
        2.0
    );
}
