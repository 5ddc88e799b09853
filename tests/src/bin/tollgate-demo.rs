//! The demo behind `cargo xtask demo`: builds an emulated cluster (two nodes with pods, an
//! outside client, a cloud), feeds the agents a manifest of Services and EndpointSlices (the
//! embedded `tests/demo/services.yaml` unless `--manifest` names another), and shows real
//! traffic reaching them: curl from a pod, from a node's host network and from outside, DNS over
//! UDP, a refused connection, a backend swap, and what the maps hold (`tollgate maps`,
//! `bpftool`). Everything is torn down at the end (and on Ctrl-C).

use std::{
    path::PathBuf,
    process::{Command, Output},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Parser;
use tollgate_tests::{
    BgProcess, Cluster, ClusterSpec, Node,
    process::Placement,
    tools::{testbed_bin, tollgate_bin},
};

const DEFAULT_MANIFEST: &str = include_str!("../../demo/services.yaml");

#[derive(Parser)]
#[command(about = "Tollgate in a cluster emulated in network namespaces")]
struct Args {
    /// Services and EndpointSlices to serve (YAML or JSON); the cluster adds its Nodes and Pods.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Keep the cluster running after the tour until Ctrl-C (to explore with nsenter).
    #[arg(long)]
    keep: bool,
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Starts the next part of the tour; after Ctrl-C it returns an error instead, so `main`
/// returns and drops (tears down) everything it built.
fn section(title: &str) -> anyhow::Result<()> {
    if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        bail!("interrupted");
    }
    println!("\n=== {title} ===");
    Ok(())
}

/// Prints `$ label` and the command's output; returns whether it succeeded.
fn show(label: &str, out: &Output) -> bool {
    println!("$ {label}");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        print!("{}", String::from_utf8_lossy(&out.stderr));
        println!("({})", out.status);
    }
    out.status.success()
}

fn curl(at: Placement<'_>, where_: &str, url: &str) -> bool {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-m", "3", url]);
    show(&format!("curl {url}   ({where_})"), &at.output(cmd))
}

fn maps(node: &Node) -> Output {
    let mut cmd = Command::new(tollgate_bin());
    cmd.args(["maps", "--bpffs"]).arg(&node.bpffs);
    node.output(cmd)
}

fn main() -> anyhow::Result<()> {
    tollgate_tests::require_root();
    let args = Args::parse();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel();
    on_signal(stop_tx)?;
    let manifest = match &args.manifest {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => DEFAULT_MANIFEST.to_owned(),
    };

    section("building the emulated cluster")?;
    let cluster = Cluster::new(&ClusterSpec::default());
    for node in &cluster.nodes {
        println!(
            "{} (netns {}): uplink {} / {}, pods {}",
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
    println!(
        "outside client: {} (netns {})",
        tollgate_tests::cluster::OUTSIDE_V4,
        cluster.outside.name()
    );
    let node1 = cluster.node("node1");
    // "The cloud" routes load-balancer and external IPs to node1.
    cluster.outside.ip(&[
        "route",
        "add",
        "203.0.113.0/24",
        "via",
        &node1.ip.to_string(),
    ]);
    let mut servers: Vec<BgProcess> = Vec::new();
    for node in &cluster.nodes {
        for pod in &node.pods {
            servers.push(tollgate_tests::scenario::serve(
                pod,
                "[::]:8080",
                "[::]:5353",
            ));
        }
    }
    println!("every pod serves HTTP on :8080 and UDP on :5353");
    let mut md = Command::new(testbed_bin());
    md.args(["metadata-double", "--listen", "169.254.169.254:80"]);
    let mut md = cluster.spawn_cloud("metadata", md);
    md.wait_for_log("serving metadata", Duration::from_secs(5));
    servers.push(md);
    println!("the cloud serves a metadata server at 169.254.169.254 (with secrets in kube-env)");

    section("starting `tollgate run` on every node")?;
    let source = cluster.write_manifest_text(&manifest);
    println!("source: {source}");
    let mut agents = Vec::new();
    for node in &cluster.nodes {
        let agent = tollgate_tests::agent::start_agent(node, &source, &["--metadata", "gce"]);
        println!(
            "{}: ready, maps pinned under {}",
            node.name,
            node.bpffs.display()
        );
        agents.push(agent);
    }
    if args.manifest.is_some() {
        tour_maps(&cluster)?;
        return keep(args.keep, &stop_rx, cluster, agents, servers);
    }

    let mut ok = true;
    section("ClusterIP from a pod (socket-level load balancing: one lookup per connection)")?;
    let n1p2 = cluster.pod("n1p2");
    for _ in 0..4 {
        ok &= curl(n1p2.placement(), "pod n1p2", "http://10.96.0.10/");
    }
    section("ClusterIP from a node's host network")?;
    ok &= curl(
        cluster.node("node2").host(),
        "node2 host",
        "http://10.96.0.10/",
    );
    section("NodePort from outside the cluster (SNAT to a remote backend, DNAT to a local one)")?;
    for _ in 0..3 {
        ok &= curl(cluster.outside(), "outside", "http://192.168.77.11:30080/");
    }
    section("externalTrafficPolicy: Local keeps the client address (backend on node2 only)")?;
    ok &= curl(cluster.outside(), "outside", "http://192.168.77.12:30081/");
    section(
        "its healthCheckNodePort: the cloud's load balancer asks each node (node2 has the endpoint)",
    )?;
    for node in ["192.168.77.12", "192.168.77.11"] {
        let url = format!("http://{node}:32081/healthz");
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-m", "3", "-w", "\nHTTP %{http_code}\n", &url]);
        ok &= show(
            &format!("curl {url}   (outside)"),
            &cluster.outside().output(cmd),
        );
    }
    section("LoadBalancer ingress IP with loadBalancerSourceRanges")?;
    ok &= curl(cluster.outside(), "outside", "http://203.0.113.20/");
    section("DNS over UDP to kube-dns")?;
    let mut dns = Command::new(testbed_bin());
    dns.args([
        "connect",
        "--to",
        "10.96.0.53:53",
        "--mode",
        "udp",
        "--count",
        "4",
    ]);
    ok &= show(
        "tollgate-testbed connect --to 10.96.0.53:53 --mode udp --count 4   (pod n1p2; JSON tally)",
        &n1p2.placement().output(dns),
    );
    section("a Service without endpoints refuses at once (kube-proxy's REJECT)")?;
    let refused = !curl(n1p2.placement(), "pod n1p2", "http://10.96.0.99/");
    println!("(refused as expected: {refused})");
    ok &= refused;
    section(
        "a ClusterIP refuses the ports its Service does not define (kube-proxy nftables' REJECT)",
    )?;
    let refused = !curl(n1p2.placement(), "pod n1p2", "http://10.96.0.10:8080/");
    println!("(other port refused as expected: {refused})");
    ok &= refused;
    section(
        "an address of the ServiceCIDR that no Service has is dropped (kube-proxy nftables' DROP), not routed out of the node",
    )?;
    // Sent on, it would time out after curl's 3 s. A host process's connect fails at once
    // (EPERM); a pod's SYN is dropped on its interface (its connect times out).
    let start = std::time::Instant::now();
    let dropped = !curl(node1.host(), "node1 host", "http://10.96.7.7/")
        && start.elapsed() < Duration::from_secs(1);
    println!("(unallocated Service IP dropped at once as expected: {dropped})");
    ok &= dropped;
    section(
        "a ping to a ClusterIP is answered by it (port unreachable, as kube-proxy nftables), not routed out of the node",
    )?;
    // `-I`: iputils ping first connects a UDP socket to learn its source address, which the
    // socket hooks refuse for a ClusterIP (ping would stop at "connect: Connection refused").
    let mut ping = Command::new("ping");
    ping.args(["-n", "-c", "1", "-W", "1", "-I"])
        .arg(n1p2.ip.to_string())
        .arg("10.96.0.10");
    let out = n1p2.placement().output(ping);
    show(
        &format!("ping -n -c 1 -W 1 -I {} 10.96.0.10   (pod n1p2)", n1p2.ip),
        &out,
    );
    let answered = String::from_utf8_lossy(&out.stdout)
        .contains("From 10.96.0.10 icmp_seq=1 Destination Port Unreachable");
    println!("(ping answered by the ClusterIP as expected: {answered})");
    ok &= answered;

    section("metadata concealment: pods get filtered answers, the node itself is not redirected")?;
    let md_curl = |at: Placement<'_>, where_: &str, path: &str| {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-m", "3", "-w", "  [HTTP %{http_code}]\n"])
            .args(["-H", "Metadata-Flavor: Google"])
            .arg(format!("http://169.254.169.254{path}"));
        let out = at.output(cmd);
        show(
            &format!("curl -H 'Metadata-Flavor: Google' http://169.254.169.254{path}   ({where_})"),
            &out,
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let a = md_curl(
        n1p2.placement(),
        "pod n1p2",
        "/computeMetadata/v1/project/project-id",
    );
    let b = md_curl(
        n1p2.placement(),
        "pod n1p2",
        "/computeMetadata/v1/instance/attributes/kube-env",
    );
    let c = md_curl(
        n1p2.placement(),
        "pod n1p2",
        "/computeMetadata/v1/instance/attributes/%6bube-env",
    );
    let d = md_curl(
        node1.host(),
        "node1 host",
        "/computeMetadata/v1/instance/attributes/kube-env",
    );
    let concealed = a.contains("[HTTP 200]")
        && b.contains("[HTTP 403]")
        && c.contains("[HTTP 403]")
        && d.contains("KUBELET_CERT");
    println!("(kube-env concealed from the pod, readable by the node: {concealed})");
    ok &= concealed;

    section("swapping web's backends: only web's entries change, never with none")?;
    let (from, to) = (
        "  - {addresses: [10.244.2.11], nodeName: node2, conditions: {ready: true, serving: true, terminating: false}}\n---\n# externalTrafficPolicy",
        "  - {addresses: [10.244.2.12], nodeName: node2, conditions: {ready: true, serving: true, terminating: false}}\n---\n# externalTrafficPolicy",
    );
    anyhow::ensure!(
        manifest.contains(from),
        "the embedded manifest lost web's second endpoint"
    );
    println!("web-1: endpoint 10.244.2.11 (n2p1) replaced by 10.244.2.12 (n2p2)");
    cluster.write_manifest_text(&manifest.replace(from, to));
    tollgate_tests::wait_for("web to use n2p2", Duration::from_secs(10), || {
        web_backends(node1)
            .filter(|b| b == &["10.244.1.11:8080", "10.244.2.12:8080"])
            .map(|_| ())
    });
    for _ in 0..3 {
        ok &= curl(n1p2.placement(), "pod n1p2", "http://10.96.0.10/");
    }

    tour_maps(&cluster)?;

    section("Prometheus metrics (node1, http://127.0.0.1:10256/metrics, excerpt)")?;
    let (_, text) = tollgate_tests::agent::admin_get(node1, "/metrics");
    for line in text.lines().filter(|l| {
        l.starts_with("tollgate_dataplane_programmed_services")
            || l.starts_with("kubeproxy_sync_proxy_rules_duration_seconds_count")
            || l.starts_with("kubeproxy_network_programming_duration_seconds_count")
            || l.starts_with("tollgate_enls_services")
            || l.starts_with("tollgate_dataplane_map_operations_total")
            || l.starts_with("tollgate_service_connections_total")
            || l.starts_with("tollgate_service_refused_total")
            || l.starts_with("request_count")
    }) {
        println!("{line}");
    }
    if !ok {
        bail!("some of the demo's requests did not get the expected answer (see above)");
    }
    keep(args.keep, &stop_rx, cluster, agents, servers)
}

/// The backends of web's ClusterIP frontend in the node's maps (`tollgate maps --json`).
fn web_backends(node: &Node) -> Option<Vec<String>> {
    let mut cmd = Command::new(tollgate_bin());
    cmd.args(["maps", "--json", "--bpffs"]).arg(&node.bpffs);
    let maps: serde_json::Value = serde_json::from_slice(&node.output(cmd).stdout).ok()?;
    let frontend = maps["services"]
        .as_array()?
        .iter()
        .flat_map(|s| s["frontends"].as_array().into_iter().flatten())
        .find(|f| f["address"] == "10.96.0.10:80")?;
    let mut backends: Vec<String> = frontend["backends"]
        .as_array()?
        .iter()
        .filter_map(|b| b["address"].as_str().map(String::from))
        .collect();
    backends.sort();
    Some(backends)
}

fn tour_maps(cluster: &Cluster) -> anyhow::Result<()> {
    section("what the maps hold: tollgate maps (node1)")?;
    let node1 = cluster.node("node1");
    show(
        &format!("tollgate maps --bpffs {}", node1.bpffs.display()),
        &maps(node1),
    );
    let mut bpftool = Command::new("bpftool");
    bpftool
        .args(["map", "dump", "pinned"])
        .arg(node1.bpffs.join("tg_svc_v1"));
    let dump = node1.output(bpftool);
    let text = String::from_utf8_lossy(&dump.stdout);
    println!(
        "$ bpftool map dump pinned {}/tg_svc_v1   (first entries)",
        node1.bpffs.display()
    );
    for line in text.lines().take(30) {
        println!("{line}");
    }
    Ok(())
}

fn keep(
    keep: bool,
    stop: &std::sync::mpsc::Receiver<()>,
    cluster: Cluster,
    agents: Vec<BgProcess>,
    servers: Vec<BgProcess>,
) -> anyhow::Result<()> {
    if keep {
        section("the cluster keeps running: Ctrl-C tears it down")?;
        for node in &cluster.nodes {
            println!(
                "{}: nsenter --net=/run/netns/{} bash   (maps: {})",
                node.name,
                node.ns.name(),
                node.bpffs.display()
            );
        }
        let _ = stop.recv();
    }
    println!("\n=== tearing down ===");
    drop(servers);
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

/// At SIGINT/SIGTERM: marks the tour interrupted and sends on `tx`.
fn on_signal(tx: std::sync::mpsc::Sender<()>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        rt.block_on(async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
            eprintln!("\ninterrupted: tearing down");
            let _ = tx.send(());
        });
    });
    Ok(())
}
