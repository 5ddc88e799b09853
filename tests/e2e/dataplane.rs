//! The service dataplane end to end: real TCP and UDP through the real kernel in the emulated
//! cluster, from pods, host processes and an outside client.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "end-to-end tests panic with clear messages"
)]

use std::{
    collections::{BTreeSet, HashMap},
    net::Ipv4Addr,
    process::Command,
    time::Duration,
};

use aya::maps::{Array, Map, MapData};
use tollgate_common::lb::{
    affinity::{self, AffinityKey, AffinityValue},
    maglev,
    sockrev::{self, TcpRevSlot},
    svc::SvcKey,
    svc_flags, v4_mapped,
};
use tollgate_tests::{
    BgProcess, Cluster,
    agent::{admin_get, http_get, metric, metric_opt},
    apiserver::ApiServerDouble,
    scenario::{self, Scenario},
    traffic::Mode,
};

const T: Duration = Duration::from_secs(2);
/// For a client expected to time out (a dropped packet).
const SHORT: Duration = Duration::from_millis(700);

#[test]
fn cluster_ip_from_pods_and_host_tcp_and_udp() {
    let s = Scenario::new();
    let web = format!("{}:80", scenario::WEB);
    // From a pod: both backends (one local, one on the other node) answer.
    let t = s.client(s.pod("n1p2").placement(), &web, 40, Mode::Tcp, T);
    assert_eq!(t.ok, 40, "{t:?}");
    assert_eq!(t.names(), ["n1p1", "n2p1"], "{t:?}");
    assert_eq!(
        t.peers,
        std::slice::from_ref(&web),
        "getpeername shows the service address"
    );
    assert_eq!(
        t.seen_as
            .iter()
            .filter(|a| a.starts_with("10.244.1.12:"))
            .count(),
        t.seen_as.len(),
        "backends see the pod's own address: {t:?}"
    );
    // From a host process of node2.
    let t = s.client(s.node("node2").host(), &web, 20, Mode::Tcp, T);
    assert_eq!(t.ok, 20, "{t:?}");
    // `tollgate maps` shows the node settings the programs read.
    let node = &s.maps(s.node("node1"))["node"];
    assert_eq!(
        *node,
        serde_json::json!({
            "ready": true,
            "snat_v4": s.node("node1").ip.to_string(),
            "snat_v6": s.node("node1").ip6.to_string(),
            "snat_ports": "61000-65535",
            "socket_lb_peer": true,
            "localhost_nodeports": true,
            "socket_lb_host_namespace_only": false,
            "metadata": "off",
        })
    );
    // UDP, connected and unconnected: replies come from the service address.
    let dns = format!("{}:53", scenario::DNS);
    let t = s.client(s.pod("n2p1").placement(), &dns, 20, Mode::Udp, T);
    assert_eq!(t.ok, 20, "{t:?}");
    assert_eq!(t.peers, std::slice::from_ref(&dns), "{t:?}");
    let t = s.client(s.pod("n2p1").placement(), &dns, 20, Mode::UdpUnconnected, T);
    assert_eq!(t.ok, 20, "{t:?}");
    assert_eq!(
        t.peers,
        std::slice::from_ref(&dns),
        "recvfrom shows the service address: {t:?}"
    );
    assert_eq!(
        t.backends.len(),
        1,
        "one unconnected socket keeps its backend: {t:?}"
    );
}

/// A UDP NodePort Service (port 53, `node_port`) of the family `v6` whose one endpoint is
/// `pod` at `target_port`; `local`: externalTrafficPolicy Local.
fn udp_nodeport(
    c: &Cluster,
    name: &str,
    v6: bool,
    node_port: u16,
    pod: &str,
    target_port: u16,
    local: bool,
) -> [serde_json::Value; 2] {
    let pod = c.pod(pod);
    let (family, endpoint) = if v6 {
        ("IPv6", scenario::endpoint6(pod, scenario::ready()))
    } else {
        ("IPv4", scenario::endpoint(pod, scenario::ready()))
    };
    let cluster_ip = if v6 {
        format!("fd00:96::{node_port:x}")
    } else {
        format!("10.96.{}.{}", node_port / 256, node_port % 256)
    };
    let mut spec = serde_json::json!({"type": "NodePort", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
        "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": target_port, "nodePort": node_port}]});
    if v6 {
        spec["ipFamilies"] = serde_json::json!(["IPv6"]);
    }
    if local {
        spec["externalTrafficPolicy"] = serde_json::json!("Local");
    }
    [
        scenario::service(name, spec),
        scenario::slice(
            &format!("{name}-1"),
            name,
            family,
            serde_json::json!([{"name": "dns", "port": target_port, "protocol": "UDP"}]),
            vec![endpoint],
        ),
    ]
}

/// ICMP errors about translated flows go back translated (conntrack's RELATED): a UDP NodePort
/// whose backend does not listen on the target port answers the client with a port unreachable
/// (the client's connected socket gets ECONNREFUSED at once instead of waiting), from a local
/// backend (its error leaves through the pod's interface) and from a remote one (it comes back
/// over the uplink), over IPv4 and IPv6.
#[test]
fn icmp_port_unreachable_from_a_backend_reaches_the_client() {
    let s = Scenario::with_objects(Default::default(), &[], |c| {
        [
            scenario::objects(c),
            udp_nodeport(c, "closed-local", false, 30056, "n1p1", 5399, false).to_vec(),
            udp_nodeport(c, "closed-remote", false, 30057, "n2p1", 5399, false).to_vec(),
            udp_nodeport(c, "closed-local6", true, 30058, "n1p1", 5399, false).to_vec(),
            udp_nodeport(c, "closed-remote6", true, 30059, "n2p1", 5399, false).to_vec(),
        ]
        .concat()
    });
    let node1 = s.node("node1");
    // A backend's kernel rate-limits its ICMP errors per destination (one a second after a
    // burst of six): with SNAT every client's errors go to the node's address, so the budget
    // is shared, as behind kube-proxy. Unlimited here, so each datagram gets its own.
    for pod in ["n1p1", "n2p1"] {
        s.pod(pod).ns.sysctl("net.ipv4.icmp_ratelimit", "0");
        s.pod(pod).ns.sysctl("net.ipv6.icmp.ratelimit", "0");
    }
    // node1 itself would answer a datagram Tollgate did not translate with its own port
    // unreachable: the refusals must come from the backends, node1 sends none.
    let sent_by_node1 = || {
        icmp_counter(node1.host(), "OutDestUnreachs")
            + icmp_counter(node1.host(), "Icmp6OutDestUnreachs")
    };
    let before = sent_by_node1();
    for (addr, port) in [
        (node1.ip.to_string(), 30056),
        (node1.ip.to_string(), 30057),
        (format!("[{}]", node1.ip6), 30058),
        (format!("[{}]", node1.ip6), 30059),
    ] {
        let to = format!("{addr}:{port}");
        let t = s.client(s.cluster.outside(), &to, 5, Mode::Udp, T);
        assert_eq!((t.ok, t.refused), (0, 5), "{to}: {t:?}");
        assert!(
            t.elapsed_ms < 1500,
            "{to}: refused at once, not timed out: {t:?}"
        );
    }
    assert_eq!(
        sent_by_node1(),
        before,
        "node1 sent port unreachables itself"
    );
}

/// The node's own ICMP errors about packets it forwarded to a translated flow's local backend
/// leave translated back (conntrack's RELATED for kube-proxy): here a Local-policy UDP
/// NodePort whose backend's interface has a smaller MTU (1400) than the uplink, as pods have
/// under an overlay network. node1's forwarding answers a datagram that does not fit (IPv4 with
/// DF; an IPv6 fragment) with Fragmentation Needed / Packet Too Big quoting it as forwarded, to
/// the pod; the uplink's egress program makes it quote the datagram as the client sent it, to
/// the NodePort, so the client's kernel matches it and lowers its path MTU. Only the first
/// datagram is lost. Untranslated, every one was.
#[test]
fn the_nodes_own_icmp_errors_about_forwarded_packets_leave_translated() {
    let s = Scenario::with_objects(Default::default(), &[], |c| {
        [
            scenario::objects(c),
            udp_nodeport(c, "mtu-local", false, 30063, "n1p1", 5353, true).to_vec(),
            udp_nodeport(c, "mtu-local6", true, 30064, "n1p1", 5353, true).to_vec(),
        ]
        .concat()
    });
    let (node1, pod) = (s.node("node1"), s.pod("n1p1"));
    node1
        .ns
        .ip(&["link", "set", &pod.host_iface, "mtu", "1400"]);
    pod.ns.ip(&["link", "set", "eth0", "mtu", "1400"]);
    for (addr, mode) in [
        (format!("{}:30063", node1.ip), Mode::UdpFull),
        (format!("[{}]:30064", node1.ip6), Mode::UdpLarge),
    ] {
        told_the_mtu(&s, &addr, mode, 10, 1, T, &["n1p1"]);
    }
}

/// `count` exchanges of `mode` from the outside client with `addr` (each within `timeout`), at
/// most `lost` of them unanswered, answered by exactly `names`; starting with no path MTU
/// known (the client's route caches flushed), the client must be told one (its ICMP
/// destination-unreachable or ICMPv6 packet-too-big count rises).
fn told_the_mtu(
    s: &Scenario,
    addr: &str,
    mode: Mode,
    count: u64,
    lost: u64,
    timeout: Duration,
    names: &[&str],
) {
    let outside = &s.cluster.outside;
    outside.ip(&["route", "flush", "cache"]);
    outside.ip(&["-6", "route", "flush", "cache"]);
    let counter = if addr.starts_with('[') {
        "Icmp6InPktTooBigs"
    } else {
        "InDestUnreachs"
    };
    let before = icmp_counter(s.cluster.outside(), counter);
    let t = s.client(s.cluster.outside(), addr, count, mode, timeout);
    assert!(t.ok + lost >= count, "{addr}: {t:?}");
    assert_eq!(t.names(), names, "{addr}: {t:?}");
    assert!(
        icmp_counter(s.cluster.outside(), counter) > before,
        "{addr}: the client was told the MTU ({counter})"
    );
}

/// An ICMP counter of the namespace at `at`: `/proc/net/snmp`'s (a header line of names, then
/// a line of values) or, for names starting with `Icmp6`, `/proc/net/snmp6`'s (pairs).
fn icmp_counter(at: tollgate_tests::process::Placement<'_>, name: &str) -> u64 {
    let file = if name.starts_with("Icmp6") {
        "/proc/net/snmp6"
    } else {
        "/proc/net/snmp"
    };
    let mut cat = Command::new("cat");
    cat.arg(file);
    let text = String::from_utf8_lossy(&at.output(cat).stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    lines
        .windows(2)
        .find_map(|w| {
            let names: Vec<&str> = w[0].split_whitespace().collect();
            let values: Vec<&str> = w[1].split_whitespace().collect();
            (names.first() == Some(&"Icmp:") && values.first() == Some(&"Icmp:"))
                .then(|| names.iter().position(|n| *n == name).map(|i| values[i]))
                .flatten()
        })
        .or_else(|| {
            lines.iter().find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some(name)).then(|| f.next()).flatten()
            })
        })
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{name} not in {file}: {text}"))
}

/// Path MTU discovery from outside through a NodePort to a remote backend, when the way to the
/// other node has a smaller MTU (1400, as a tunnel or an encrypted link between nodes) than
/// the uplink the client reaches (1500). kube-proxy's forwarding answers a packet too big for
/// it with ICMP Fragmentation Needed / Packet Too Big; so does Tollgate, quoting the packet as
/// the client sent it (to the NodePort), so the client's kernel lowers its path MTU and sends
/// smaller packets. Without that answer the packets were dropped and the flows stalled.
#[test]
fn path_mtu_discovery_to_a_remote_backend_over_a_smaller_mtu_link() {
    let s = Scenario::with_objects(Default::default(), &[], |c| {
        [scenario::objects(c), scenario::nodeport6(c)].concat()
    });
    let (node1, node2) = (s.node("node1"), s.node("node2"));
    // A second link between the nodes, MTU 1400, which carries node1's traffic to node2's pods.
    node1.ns.add_veth("n2link", "n1link", &node2.ns);
    for (ns, dev, v4, v6) in [
        (&node1.ns, "n2link", "10.250.0.1/30", "fd00:250::1/64"),
        (&node2.ns, "n1link", "10.250.0.2/30", "fd00:250::2/64"),
    ] {
        ns.ip(&["link", "set", dev, "mtu", "1400", "up"]);
        ns.ip(&["addr", "add", v4, "dev", dev]);
        ns.ip(&["-6", "addr", "add", v6, "dev", dev, "nodad"]);
    }
    node1
        .ns
        .ip(&["route", "replace", "10.244.2.0/24", "via", "10.250.0.2"]);
    node1.ns.ip(&[
        "-6",
        "route",
        "replace",
        "fd00:244:2::/64",
        "via",
        "fd00:250::2",
    ]);
    let second = Duration::from_secs(1);
    let both = ["n1p1", "n2p1"];
    // TCP: 64 KiB requests (the client's TSO bursts arrive as GSO packets, judged by their
    // segments), to the local and the remote backend, over IPv4 and IPv6, none lost.
    for addr in [
        format!("{}:{}", node1.ip, scenario::NODEPORT),
        format!("[{}]:{}", node1.ip6, scenario::NODEPORT6),
    ] {
        told_the_mtu(&s, &addr, Mode::TcpUpload, 10, 0, second, &both);
    }
    // UDP: 4000-byte datagrams, which the client sends as 1500-byte fragments (IPv4 without
    // DF; IPv6 with a Fragment header): it is told the MTU too (a router would fragment IPv4
    // ones; the programs cannot), and from then on fragments to it. Only the first datagram to
    // the remote backend is lost (its socket gets EMSGSIZE).
    for addr in [
        format!("{}:{}", node1.ip, scenario::NODEPORT_UDP),
        format!("[{}]:{}", node1.ip6, scenario::NODEPORT6_UDP),
    ] {
        told_the_mtu(&s, &addr, Mode::UdpLarge, 20, 1, T, &both);
    }
}

/// Bulk TCP through a NodePort, and path MTU discovery through it.
///
/// A backend's answers leave it as TSO bursts (one skb of tens of KiB, cut into MTU-sized
/// segments on the way out); translated per packet, they must go on as such: 64 KiB answers
/// from the local and the remote backend arrive within a second each (a lost burst would cost
/// retransmission timeouts of a second and more).
///
/// Then a client behind a router whose link to it has a smaller MTU (1280) than the client's
/// own (1500, so the client asks for full-size segments) downloads the same. The router's
/// Fragmentation Needed goes to the NodePort's address, where the backend's segments seemed to
/// come from; Tollgate sends it on to the backend, which then sends smaller segments. Without
/// that, the transfers stall.
#[test]
fn bulk_tcp_and_path_mtu_discovery_through_a_nodeport() {
    let s = Scenario::new();
    let np = format!("{}:{}", s.node("node1").ip, scenario::NODEPORT);
    let second = Duration::from_secs(1);
    let t = s.client(s.cluster.outside(), &np, 10, Mode::TcpLarge, second);
    assert_eq!(t.ok, 10, "{t:?}");
    assert_eq!(t.names(), ["n1p1", "n2p1"], "{t:?}");

    let outside = &s.cluster.outside;
    let far = tollgate_tests::Netns::new(&format!("{}-far", outside.name()));
    far.add_veth("eth0", "vfar", outside);
    outside.ip(&["link", "set", "vfar", "mtu", "1280", "up"]);
    outside.ip(&["addr", "add", "10.200.0.1/24", "dev", "vfar"]);
    outside.sysctl("net.ipv4.ip_forward", "1");
    far.ip(&["addr", "add", "10.200.0.2/24", "dev", "eth0"]);
    far.ip(&["link", "set", "eth0", "up"]);
    far.ip(&["route", "add", "default", "via", "10.200.0.1"]);
    let at = tollgate_tests::process::Placement::new(&far, None);
    let t = s.client(at, &np, 10, Mode::TcpLarge, second);
    assert_eq!(t.ok, 10, "{t:?}");
    assert_eq!(t.names(), ["n1p1", "n2p1"], "{t:?}");
}

/// 40 connections from outside to node1's NodePort at `node1` (an address as in a URL) reach
/// the local backend (n1p1) and the remote one (n2p1); kube-proxy masquerades under Cluster
/// policy, so backends see the node's address; getpeername shows the NodePort.
fn nodeport_reaches_both_backends_masqueraded(s: &Scenario, node1: &str, port: u16) {
    let np = format!("{node1}:{port}");
    let t = s.client(s.cluster.outside(), &np, 40, Mode::Tcp, T);
    assert_eq!(t.ok, 40, "{t:?}");
    assert_eq!(t.names(), ["n1p1", "n2p1"], "{t:?}");
    assert!(
        t.seen_as
            .iter()
            .all(|a| a.starts_with(&format!("{node1}:"))),
        "SNAT to the node address: {t:?}"
    );
    assert_eq!(t.peers, std::slice::from_ref(&np));
}

/// IPv6 NodePort from outside, to the local and the remote backend: TCP, UDP, and datagrams
/// larger than the MTU, whose IPv6 fragments (a Fragment extension header; only the first has
/// the UDP header) are each translated, both ways.
#[test]
fn ipv6_nodeport_from_outside_tcp_udp_and_fragments() {
    let s = Scenario::with_objects(Default::default(), &[], |c| {
        [scenario::objects(c), scenario::nodeport6(c)].concat()
    });
    let node1 = s.node("node1").ip6;
    let outside = || s.cluster.outside();
    nodeport_reaches_both_backends_masqueraded(&s, &format!("[{node1}]"), scenario::NODEPORT6);
    let np_udp = format!("[{node1}]:{}", scenario::NODEPORT6_UDP);
    let t = s.client(outside(), &np_udp, 10, Mode::Udp, T);
    assert_eq!(t.ok, 10, "{t:?}");
    let t = s.client(outside(), &np_udp, 20, Mode::UdpLarge, T);
    assert_eq!(t.ok, 20, "{t:?}");
    assert_eq!(t.names(), ["n1p1", "n2p1"], "{t:?}");
    assert!(
        t.seen_as
            .iter()
            .all(|a| a.starts_with(&format!("[{node1}]:"))),
        "{t:?}"
    );
}

#[test]
fn nodeport_external_ip_and_load_balancer_from_outside() {
    let s = Scenario::new();
    let node1 = s.node("node1").ip;
    let outside = || s.cluster.outside();
    nodeport_reaches_both_backends_masqueraded(&s, &node1.to_string(), scenario::NODEPORT);
    // UDP NodePort too.
    let t = s.client(
        outside(),
        &format!("{node1}:{}", scenario::NODEPORT_UDP),
        10,
        Mode::Udp,
        T,
    );
    assert_eq!(t.ok, 10, "{t:?}");
    // Datagrams larger than the MTU: every IPv4 fragment is translated, both ways (kube-proxy's
    // conntrack reassembles them), to the local and the remote backend.
    let t = s.client(
        outside(),
        &format!("{node1}:{}", scenario::NODEPORT_UDP),
        20,
        Mode::UdpLarge,
        T,
    );
    assert_eq!(t.ok, 20, "{t:?}");
    assert_eq!(t.names(), ["n1p1", "n2p1"], "{t:?}");
    // externalIP and LoadBalancer IP (routed to node1 by the network).
    let t = s.client(
        outside(),
        &format!("{}:80", scenario::EXTERNAL_IP),
        10,
        Mode::Tcp,
        T,
    );
    assert_eq!((t.ok, t.names()), (10, vec!["n1p2"]), "{t:?}");
    let t = s.client(
        outside(),
        &format!("{}:80", scenario::LB_IP),
        10,
        Mode::Tcp,
        T,
    );
    assert_eq!(
        (t.ok, t.names()),
        (10, vec!["n2p2"]),
        "source range allows the client: {t:?}"
    );
    // A LoadBalancer whose source ranges exclude the client: dropped (timeout, no reset).
    let t = s.client(
        outside(),
        &format!("{}:80", scenario::LB_DENY_IP),
        2,
        Mode::Tcp,
        Duration::from_millis(700),
    );
    assert_eq!((t.ok, t.timeout), (0, 2), "source ranges drop: {t:?}");
    // Pods reach the LB VIP too (source ranges apply to outside traffic only).
    let t = s.client(
        s.pod("n1p1").placement(),
        &format!("{}:80", scenario::LB_DENY_IP),
        5,
        Mode::Tcp,
        T,
    );
    assert_eq!(t.ok, 5, "{t:?}");
}

#[test]
fn external_traffic_policy_local() {
    let s = Scenario::new();
    let (node1, node2) = (s.node("node1").ip, s.node("node2").ip);
    // node2 has the only endpoint: the client address is preserved.
    let t = s.client(
        s.cluster.outside(),
        &format!("{node2}:{}", scenario::NODEPORT_LOCAL),
        10,
        Mode::Tcp,
        T,
    );
    assert_eq!((t.ok, t.names()), (10, vec!["n2p2"]), "{t:?}");
    assert!(
        t.seen_as.iter().all(|a| a.starts_with("192.168.77.100:")),
        "client IP preserved: {t:?}"
    );
    // node1 has none: DROP (kube-proxy drops so the LB health check takes the node out).
    let t = s.client(
        s.cluster.outside(),
        &format!("{node1}:{}", scenario::NODEPORT_LOCAL),
        2,
        Mode::Tcp,
        Duration::from_millis(700),
    );
    assert_eq!((t.ok, t.timeout), (0, 2), "{t:?}");
    // Pods and host processes of node1 are short-circuited to the cluster endpoints.
    let t = s.client(
        s.pod("n1p1").placement(),
        &format!("{node1}:{}", scenario::NODEPORT_LOCAL),
        5,
        Mode::Tcp,
        T,
    );
    assert_eq!((t.ok, t.names()), (5, vec!["n2p2"]), "{t:?}");
    let t = s.client(
        s.node("node1").host(),
        &format!("{node1}:{}", scenario::NODEPORT_LOCAL),
        5,
        Mode::Tcp,
        T,
    );
    assert_eq!(t.ok, 5, "{t:?}");
}

/// A LoadBalancer Service with externalTrafficPolicy Local, its health check on `hc_port`.
fn lb_local(hc_port: u16, policy: &str) -> serde_json::Value {
    scenario::service(
        "lb-local",
        serde_json::json!({"type": "LoadBalancer", "clusterIP": "10.96.0.40",
            "externalTrafficPolicy": policy, "healthCheckNodePort": hc_port,
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30085}]}),
    )
}

fn lb_local_slice(s: &Cluster, pods: &[&str]) -> serde_json::Value {
    scenario::slice(
        "lb-local-1",
        "lb-local",
        "IPv4",
        serde_json::json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
        pods.iter()
            .map(|p| scenario::endpoint(s.pod(p), scenario::ready()))
            .collect(),
    )
}

/// What the outside client gets from `node`'s port: (status, localEndpoints, serviceProxyHealthy);
/// status 0 when nothing answers there.
fn health_check(c: &Cluster, node: &str, port: u16) -> (u16, Option<u64>, Option<bool>) {
    let url = format!("http://{}:{port}/healthz", c.node(node).ip);
    let (status, body) = http_get(c.outside(), &url);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    if status != 0 {
        assert!(
            status != 200
                || v["service"] == serde_json::json!({"namespace": "default", "name": "lb-local"}),
            "{url}: {body}"
        );
    }
    (
        status,
        v["localEndpoints"].as_u64(),
        v["serviceProxyHealthy"].as_bool(),
    )
}

fn wait_health_check(c: &Cluster, node: &str, port: u16, want: (u16, Option<u64>, Option<bool>)) {
    tollgate_tests::wait_for(&format!("{node}:{port} to answer {want:?}"), T * 5, || {
        (health_check(c, node, port) == want).then_some(())
    });
}

/// Another process holding `port` on `node` (every address).
fn blocker(node: &tollgate_tests::Node, port: u16) -> tollgate_tests::BgProcess {
    let mut cmd = Command::new(tollgate_tests::tools::testbed_bin());
    cmd.args(["serve", "--name", "blocker", "--tcp"]);
    cmd.arg(format!("0.0.0.0:{port}"));
    let mut blocker = node.spawn("blocker", cmd);
    blocker.wait_for_log("serving", Duration::from_secs(5));
    blocker
}

#[test]
fn health_check_node_ports_answer_whether_the_node_has_local_endpoints() {
    const HC: u16 = 32100;
    const BUSY: u16 = 32101;
    let s = Scenario::with_objects(tollgate_tests::ClusterSpec::default(), &[], |c| {
        let mut o = scenario::objects(c);
        o.push(lb_local(HC, "Local"));
        o.push(lb_local_slice(c, &["n2p2"]));
        o
    });
    // node2 has the endpoint, node1 has none: the load balancer sends to node2 only.
    wait_health_check(&s.cluster, "node2", HC, (200, Some(1), Some(true)));
    wait_health_check(&s.cluster, "node1", HC, (503, Some(0), Some(true)));

    // The endpoints move to node1 (two pods there).
    s.update(vec![lb_local_slice(&s.cluster, &["n1p1", "n1p2"])]);
    wait_health_check(&s.cluster, "node1", HC, (200, Some(2), Some(true)));
    wait_health_check(&s.cluster, "node2", HC, (503, Some(0), Some(true)));

    // Another process holds the new port on node1: node2 serves it at once, node1 tries again
    // until the port is free, and the old port closes on both.
    let blocker = blocker(s.node("node1"), BUSY);
    s.update(vec![lb_local(BUSY, "Local")]);
    wait_health_check(&s.cluster, "node2", BUSY, (503, Some(0), Some(true)));
    for node in ["node1", "node2"] {
        wait_health_check(&s.cluster, node, HC, (0, None, None));
    }
    let failures = || {
        metric_opt(
            &admin_get(s.node("node1"), "/metrics").1,
            "tollgate_health_check_node_port_listen_failures_total",
        )
        .unwrap_or(0.0)
    };
    tollgate_tests::wait_for("node1's agent to count the failed port", T * 5, || {
        (failures() >= 1.0).then_some(())
    });
    // Still the blocker's port, not a health check.
    let (status, body) = http_get(
        s.cluster.outside(),
        &format!("http://{}:{BUSY}/", s.node("node1").ip),
    );
    assert!(
        status == 200 && body.starts_with("blocker "),
        "{status} {body}"
    );
    // The agent stays healthy and serves everything else meanwhile.
    assert_eq!(admin_get(s.node("node1"), "/healthz").0, 200);
    let t = s.client(
        s.cluster.outside(),
        &format!("{}:30085", s.node("node1").ip),
        3,
        Mode::Tcp,
        T,
    );
    assert_eq!(t.ok, 3, "{t:?}");
    drop(blocker);
    wait_health_check(&s.cluster, "node1", BUSY, (200, Some(2), Some(true)));
    assert_eq!(
        metric(
            &admin_get(s.node("node1"), "/metrics").1,
            "tollgate_health_check_node_ports"
        ),
        1.0
    );

    // externalTrafficPolicy Cluster: no health check any more.
    s.update(vec![lb_local(BUSY, "Cluster")]);
    for node in ["node1", "node2"] {
        wait_health_check(&s.cluster, node, BUSY, (0, None, None));
        assert_eq!(
            metric(
                &admin_get(s.node(node), "/metrics").1,
                "tollgate_health_check_node_ports"
            ),
            0.0
        );
    }
}

#[test]
fn health_check_node_ports_listen_only_on_nodeport_addresses_when_given() {
    const HC: u16 = 32100;
    // A prefix, and kube-proxy's `primary` (the Node's first InternalIP of each family).
    for addresses in ["192.168.77.0/24", "primary"] {
        let s = Scenario::with_objects(
            tollgate_tests::ClusterSpec::default(),
            &["--nodeport-addresses", addresses],
            |c| {
                let mut o = scenario::objects(c);
                o.push(lb_local(HC, "Local"));
                o.push(lb_local_slice(c, &["n1p1"]));
                o
            },
        );
        wait_health_check(&s.cluster, "node1", HC, (200, Some(1), Some(true)));
        // Not on the node's other addresses (its loopback here).
        let node1 = s.node("node1");
        let (status, body) = http_get(node1.host(), &format!("http://127.0.0.1:{HC}/"));
        assert_eq!(status, 0, "{addresses}: {body}");
        let (status, _) = http_get(node1.host(), &format!("http://{}:{HC}/", node1.ip));
        assert_eq!(status, 200, "{addresses}");
        // NodePorts on the node's address, not on loopback (no localhost NodePorts).
        let np = format!("{}:{}", node1.ip, scenario::NODEPORT);
        let t = s.client(s.cluster.outside(), &np, 5, Mode::Tcp, T);
        assert_eq!(t.ok, 5, "{addresses}: {t:?}");
        let lo = format!("127.0.0.1:{}", scenario::NODEPORT);
        let t = s.client(node1.host(), &lo, 2, Mode::Tcp, T);
        assert_eq!((t.ok, t.refused), (0, 2), "{addresses}: {t:?}");
    }
}

/// The Events in the double whose reason is `reason`, by reporting node.
fn events_by(double: &ApiServerDouble, reason: &str) -> Vec<(String, serde_json::Value)> {
    double
        .list("Event")
        .into_iter()
        .filter(|e| e["reason"] == reason)
        .map(|e| (e["reportingInstance"].as_str().unwrap_or("").to_owned(), e))
        .collect()
}

#[test]
fn agents_on_the_kube_source_record_events_on_their_node_and_on_services() {
    use tollgate_tests::{
        agent::start_agent,
        apiserver::DoubleOptions,
        cluster::{CLOUD_V4, ClusterSpec},
        k8s, wait_for,
    };
    const BUSY: u16 = 32102;
    let cluster = Cluster::new(&ClusterSpec::default());
    // The API server on the LAN (the cloud namespace), where both nodes reach it.
    let listener = cluster
        .cloud()
        .run_in(|| std::net::TcpListener::bind((CLOUD_V4, 0)))
        .unwrap();
    let double = ApiServerDouble::start(listener, DoubleOptions::default());
    let kubeconfig = double.write_kubeconfig(cluster.workdir());
    let kubeconfig = kubeconfig.to_str().unwrap();
    double.apply_all(cluster.base_objects());
    double.apply(lb_local(BUSY, "Local"));
    double.apply(lb_local_slice(&cluster, &["n2p2"]));
    let uid_of = |name: &str| {
        double.get("Service", "default", name).unwrap()["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // Another process holds the healthCheckNodePort on node1.
    let _blocker = blocker(cluster.node("node1"), BUSY);
    let _agents: Vec<_> = cluster
        .nodes
        .iter()
        .map(|n| {
            start_agent(
                n,
                "kube",
                &["--kubeconfig", kubeconfig, "--lb-map-size", "16"],
            )
        })
        .collect();

    // Each agent says on its Node that it started.
    let started = wait_for("both nodes' Starting Events", T * 5, || {
        let e = events_by(&double, "Starting");
        (e.len() == 2).then_some(e)
    });
    for (node, e) in &started {
        assert_eq!(e["type"], "Normal");
        assert_eq!(e["reportingController"], "tollgate");
        assert_eq!(e["regarding"]["kind"], "Node");
        assert_eq!(e["regarding"]["name"], node.as_str());
        assert_eq!(
            e["regarding"]["uid"],
            node.as_str(),
            "kubectl describe node finds it"
        );
    }
    // node1 cannot open the health check port: a Warning on the Service, as kube-proxy's.
    let failed = wait_for("node1's FailedToStartServiceHealthcheck", T * 5, || {
        let e = events_by(&double, "FailedToStartServiceHealthcheck");
        (!e.is_empty()).then_some(e)
    });
    let (node, e) = &failed[0];
    assert_eq!(node, "node1");
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["regarding"]["kind"], "Service");
    assert_eq!(e["regarding"]["namespace"], "default");
    assert_eq!(e["regarding"]["name"], "lb-local");
    assert_eq!(e["regarding"]["uid"], uid_of("lb-local").as_str());
    let note = e["note"].as_str().unwrap();
    assert!(
        note.starts_with(&format!(
            "node node1 failed to start healthcheck \"default/lb-local\" on port {BUSY}: "
        )),
        "{note}"
    );
    // The agents serve from the API server's state meanwhile: node2 has the endpoint.
    wait_health_check(&cluster, "node2", BUSY, (200, Some(1), Some(true)));

    // A Service too big for the maps: each node says so on it.
    let big_eps: Vec<serde_json::Value> = (1..=20)
        .map(|i| k8s::endpoint(&format!("10.244.9.{i}"), "node2"))
        .collect();
    double.apply(k8s::service(
        "default",
        "big",
        "10.96.0.50",
        &[("http", 80)],
    ));
    double.apply(k8s::slice(
        "default",
        "big-1",
        "big",
        &[("http", 8080)],
        big_eps,
    ));
    let unprogrammed = wait_for("both nodes' FailedToProgramService", T * 5, || {
        let e = events_by(&double, "FailedToProgramService");
        (e.len() == 2).then_some(e)
    });
    let big = uid_of("big");
    let mut nodes: Vec<&str> = unprogrammed.iter().map(|(n, _)| n.as_str()).collect();
    nodes.sort_unstable();
    assert_eq!(nodes, ["node1", "node2"]);
    for (node, e) in &unprogrammed {
        assert_eq!(e["type"], "Warning");
        assert_eq!(e["regarding"]["name"], "big");
        assert_eq!(e["regarding"]["uid"], big.as_str());
        let note = e["note"].as_str().unwrap();
        assert!(
            note.starts_with(&format!("node {node} could not program the Service")),
            "{note}"
        );
    }

    // SCTP ports are left out of the maps: each node says so on the Service.
    double.apply(scenario::service(
        "diameter",
        serde_json::json!({"clusterIP": "10.96.0.51", "ports": [
            {"name": "tcp", "port": 3868, "protocol": "TCP"},
            {"name": "sctp", "port": 3868, "protocol": "SCTP"}]}),
    ));
    let unsupported = wait_for("both nodes' UnsupportedProtocol", T * 5, || {
        let e = events_by(&double, "UnsupportedProtocol");
        (e.len() == 2).then_some(e)
    });
    for (node, e) in &unsupported {
        assert_eq!(e["regarding"]["name"], "diameter");
        assert_eq!(e["regarding"]["uid"], uid_of("diameter").as_str());
        let note = e["note"].as_str().unwrap();
        assert!(
            note.starts_with(&format!("node {node} does not load-balance"))
                && note.ends_with(": 3868/SCTP"),
            "{note}"
        );
    }

    // The port is retried every 5 s without another Event; every Event was published.
    std::thread::sleep(Duration::from_secs(6));
    let again = events_by(&double, "FailedToStartServiceHealthcheck");
    assert_eq!(again.len(), 1, "{again:#?}");
    assert!(
        again[0]
            .1
            .get("series")
            .is_none_or(serde_json::Value::is_null)
    );
    let text = admin_get(cluster.node("node1"), "/metrics").1;
    assert_eq!(
        metric(
            &text,
            "tollgate_kubernetes_events_total{result=\"published\"}"
        ),
        4.0,
        "{text}"
    );
    assert_eq!(
        metric_opt(&text, "tollgate_kubernetes_events_total{result=\"failed\"}"),
        None
    );
}

#[test]
fn host_processes_reach_node_ports_on_loopback_and_pods_do_not() {
    let mut s = Scenario::new();
    let host = || s.node("node1").host();
    for to in [
        format!("127.0.0.1:{}", scenario::NODEPORT),
        format!("127.0.0.2:{}", scenario::NODEPORT),
    ] {
        let t = s.client(host(), &to, 10, Mode::Tcp, T);
        assert_eq!(t.ok, 10, "{to}: {t:?}");
        assert!(
            t.names().iter().all(|n| ["n1p1", "n2p1"].contains(n)),
            "{t:?}"
        );
        // getpeername() shows the address the process connected to.
        assert_eq!(t.peers, vec![to.clone()], "{t:?}");
    }
    let udp = format!("127.0.0.1:{}", scenario::NODEPORT_UDP);
    let t = s.client(host(), &udp, 4, Mode::Udp, T);
    assert_eq!((t.ok, t.peers.clone()), (4, vec![udp.clone()]), "{t:?}");
    // externalTrafficPolicy Local: the host is short-circuited to the cluster endpoints.
    let local = format!("127.0.0.1:{}", scenario::NODEPORT_LOCAL);
    let t = s.client(host(), &local, 3, Mode::Tcp, T);
    assert_eq!((t.ok, t.names()), (3, vec!["n2p2"]), "{t:?}");
    // A pod's loopback is its own: nothing listens on the NodePort there.
    let t = s.client(
        s.pod("n1p1").placement(),
        &format!("127.0.0.1:{}", scenario::NODEPORT),
        2,
        Mode::Tcp,
        T,
    );
    assert_eq!((t.ok, t.refused), (0, 2), "{t:?}");
    // A loopback port that is no NodePort is left alone (a ClusterIP's port, here).
    let t = s.client(host(), "127.0.0.1:80", 1, Mode::Tcp, T);
    assert_eq!((t.ok, t.refused), (0, 1), "{t:?}");

    // --localhost-nodeports=false: loopback is left alone.
    s.agents[0].terminate();
    s.agents[0] = tollgate_tests::agent::start_agent(
        s.node("node1"),
        &s.source,
        &["--localhost-nodeports=false"],
    );
    let t = s.client(
        s.node("node1").host(),
        &format!("127.0.0.1:{}", scenario::NODEPORT),
        2,
        Mode::Tcp,
        T,
    );
    assert_eq!((t.ok, t.refused), (0, 2), "{t:?}");
}

#[test]
fn sctp_ports_are_reported_and_left_out_while_the_services_other_ports_work() {
    let s = Scenario::with_objects(tollgate_tests::ClusterSpec::default(), &[], |c| {
        let mut o = scenario::objects(c);
        o.push(scenario::service(
            "mixed",
            serde_json::json!({"clusterIP": "10.96.0.41", "ports": [
                {"name": "http", "port": 80, "targetPort": 8080},
                {"name": "sig", "port": 9000, "protocol": "SCTP"}]}),
        ));
        o.push(scenario::slice(
            "mixed-1",
            "mixed",
            "IPv4",
            serde_json::json!([{"name": "http", "port": 8080, "protocol": "TCP"},
                {"name": "sig", "port": 9000, "protocol": "SCTP"}]),
            vec![scenario::endpoint(c.pod("n2p1"), scenario::ready())],
        ));
        o.push(scenario::service(
            "sctp-only",
            serde_json::json!({"clusterIP": "10.96.0.42", "ports": [
                {"name": "sig", "port": 9000, "protocol": "SCTP"}]}),
        ));
        o
    });
    let t = s.client(s.pod("n1p1").placement(), "10.96.0.41:80", 3, Mode::Tcp, T);
    assert_eq!((t.ok, t.names()), (3, vec!["n2p1"]), "{t:?}");
    // A Service with only SCTP ports still has its ClusterIP: TCP and UDP to it are refused
    // (kube-proxy nftables' REJECT), not dropped as an unallocated address.
    for mode in [Mode::Tcp, Mode::Udp] {
        let t = s.client(s.pod("n1p1").placement(), "10.96.0.42:9000", 2, mode, T);
        assert_eq!((t.ok, t.refused), (0, 2), "{mode:?}: {t:?}");
        assert!(t.elapsed_ms < 500, "refused at once: {t:?}");
    }
    let node1 = s.node("node1");
    assert_eq!(s.backends(node1, "10.96.0.41:9000", "internal"), None);
    let metrics = admin_get(node1, "/metrics").1;
    assert_eq!(
        metric(&metrics, "tollgate_dataplane_unbalanced_service_ports"),
        2.0
    );
    assert!(
        s.agents[0]
            .logs()
            .contains("SCTP service ports are not load-balanced"),
        "the agent says so"
    );
    // Without its SCTP port, and without the SCTP-only Service, nothing is reported any more.
    s.remove("Service", "sctp-only");
    s.update(vec![scenario::service(
        "mixed",
        serde_json::json!({"clusterIP": "10.96.0.41", "ports": [
            {"name": "http", "port": 80, "targetPort": 8080}]}),
    )]);
    tollgate_tests::wait_for("the report to clear", T * 5, || {
        let m = admin_get(node1, "/metrics").1;
        (metric(&m, "tollgate_dataplane_unbalanced_service_ports") == 0.0).then_some(())
    });
    // Its ClusterIP's entry went with it: the address is unallocated now (dropped).
    let t = s.client(
        s.pod("n1p1").placement(),
        "10.96.0.42:9000",
        2,
        Mode::Tcp,
        SHORT,
    );
    assert_eq!((t.ok, t.timeout), (0, 2), "{t:?}");
}

/// The peers of the established TCP sockets in `at`'s network namespace, as the kernel's socket
/// table has them (not getpeername(), which the socket hooks answer).
fn socket_peers(at: tollgate_tests::process::Placement<'_>) -> Vec<String> {
    let mut ss = Command::new("ss");
    ss.args(["-Htn", "state", "established"]);
    let out = at.output(ss);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
        .collect()
}

#[test]
fn socket_lb_host_namespace_only_leaves_pods_sockets_to_the_per_packet_path() {
    let s = Scenario::with(
        tollgate_tests::ClusterSpec::default(),
        &["--socket-lb-host-namespace-only", "true"],
    );
    let web = format!("{}:80", scenario::WEB);
    // A pod's connections reach both backends (on its node and on the other) and see the
    // service address.
    assert_eq!(
        s.maps(s.node("node1"))["node"]["socket_lb_host_namespace_only"],
        true
    );
    let t = s.client(s.pod("n1p2").placement(), &web, 40, Mode::Tcp, T);
    assert_eq!(t.ok, 40, "{t:?}");
    assert_eq!(t.names(), ["n1p1", "n2p1"], "{t:?}");
    assert_eq!(t.peers, std::slice::from_ref(&web), "{t:?}");
    let client = format!("{}:", s.pod("n1p2").ip);
    assert!(
        t.seen_as.iter().all(|a| a.starts_with(&client)),
        "the backends see the pod: {t:?}"
    );
    // Its socket keeps the service address (what a sidecar's redirect by destination
    // matches); a host process's socket is balanced at connect as before.
    let pace = Duration::from_millis(100);
    let mut from_pod = s.spawn_session(s.pod("n1p2").placement(), &web, 20, pace);
    let mut from_host = s.spawn_session(s.node("node1").host(), &web, 20, pace);
    assert_eq!(
        socket_peers(s.pod("n1p2").placement()),
        std::slice::from_ref(&web)
    );
    let host_peers = socket_peers(s.node("node1").host());
    let backends = [
        format!("{}:8080", s.pod("n1p1").ip),
        format!("{}:8080", s.pod("n2p1").ip),
    ];
    assert!(
        host_peers.iter().any(|p| backends.contains(p)) && !host_peers.contains(&web),
        "{host_peers:?}"
    );
    for p in [&mut from_pod, &mut from_host] {
        let t = Scenario::finish(p, Duration::from_secs(15));
        assert_eq!(t.ok, 20, "{t:?}");
    }
    // IPv6, UDP, hairpin, and REJECT for a service without endpoints, per packet.
    let web6 = format!("[{}]:80", scenario::WEB6);
    let t = s.client(s.pod("n2p2").placement(), &web6, 20, Mode::Tcp, T);
    assert_eq!((t.ok, t.names()), (20, vec!["n1p1", "n2p1"]), "{t:?}");
    assert_eq!(t.peers, std::slice::from_ref(&web6), "{t:?}");
    let dns = format!("{}:53", scenario::DNS);
    let t = s.client(s.pod("n1p1").placement(), &dns, 20, Mode::Udp, T);
    assert_eq!((t.ok, t.names()), (20, vec!["n1p2", "n2p2"]), "{t:?}");
    assert_eq!(t.peers, std::slice::from_ref(&dns), "{t:?}");
    let t = s.client(s.pod("n1p1").placement(), &web, 40, Mode::Tcp, T);
    assert_eq!(t.ok, 40, "{t:?}");
    assert!(
        t.backends.contains_key("n1p1"),
        "the pod reached itself through its service: {t:?}"
    );
    let empty = format!("{}:80", scenario::EMPTY);
    let t = s.client(s.pod("n1p1").placement(), &empty, 3, Mode::Tcp, T);
    assert_eq!((t.ok, t.refused), (0, 3), "{t:?}");
    assert!(t.elapsed_ms < 500, "refused at once, not timed out: {t:?}");
    // A ClusterIP on a port its Service does not define, TCP and UDP: refused per packet too,
    // on ports some frontend has (53, 80) and on ports none has (9999, 9998: inside the
    // ServiceCIDR every port is looked up).
    for (port, mode) in [
        (53, Mode::Tcp),
        (80, Mode::Udp),
        (9999, Mode::Tcp),
        (9998, Mode::Udp),
    ] {
        let to = format!("{}:{port}", scenario::WEB);
        let t = s.client(s.pod("n1p1").placement(), &to, 2, mode, T);
        assert_eq!((t.ok, t.refused), (0, 2), "{to}: {t:?}");
        assert!(t.elapsed_ms < 500, "{to}: refused at once: {t:?}");
    }
}

/// `--traffic-metrics backends`: the programs' counters on `/metrics`, per service port, per
/// backend and per interface, with the numbers `tollgate maps` shows.
#[test]
fn traffic_counters_are_on_metrics_as_tollgate_maps_shows_them() {
    let s = Scenario::with(Default::default(), &["--traffic-metrics", "backends"]);
    let node1 = s.node("node1");
    // Socket-balanced connections from a pod: counted as connections, no packets.
    let web = format!("{}:80", scenario::WEB);
    let t = s.client(s.pod("n1p2").placement(), &web, 30, Mode::Tcp, T);
    assert_eq!(t.ok, 30, "{t:?}");
    // NodePort from outside: flows of the per-packet path, with packets and bytes.
    let np = format!("{}:{}", node1.ip, scenario::NODEPORT);
    let t = s.client(s.cluster.outside(), &np, 6, Mode::Tcp, T);
    assert_eq!(t.ok, 6, "{t:?}");
    // No endpoints: refused.
    let empty = format!("{}:80", scenario::EMPTY);
    let t = s.client(s.pod("n1p2").placement(), &empty, 3, Mode::Tcp, T);
    assert_eq!((t.ok, t.refused), (0, 3), "{t:?}");

    let (code, text) = admin_get(node1, "/metrics");
    assert_eq!(code, 200);
    let maps = s.maps(node1);
    let service = |name: &str, port: &str, proto: &str| {
        let view = maps["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name && v["port_name"] == port && v["protocol"] == proto)
            .unwrap_or_else(|| panic!("{name}/{port} not in tollgate maps"))
            .clone();
        let metric = |counter: &str| {
            metric_opt(
                &text,
                &format!(
                    "tollgate_service_{counter}_total{{namespace=\"default\",service=\"{name}\",\
                     port=\"{port}\",protocol=\"{proto}\",ip_family=\"IPv4\"}}"
                ),
            )
            .unwrap_or_else(|| panic!("{counter} of {name}/{port} missing:\n{text}"))
        };
        let counters = ["connections", "packets", "bytes", "refused"].map(|c| metric(c) as u64);
        let shown = ["connections", "packets", "bytes", "refused"]
            .map(|c| view["counters"][c].as_u64().unwrap());
        assert_eq!(counters, shown, "{name}/{port}: /metrics and tollgate maps");
        counters
    };
    let [conns, packets, ..] = service("web", "http", "TCP");
    assert_eq!((conns, packets), (30, 0), "socket-balanced: no packets");
    let [conns, packets, bytes, _] = service("np", "http", "TCP");
    assert_eq!(conns, 6);
    assert!(
        packets >= 6 * 3 && bytes > packets * 40,
        "{packets} packets, {bytes} bytes"
    );
    let [conns, _, _, refused] = service("empty", "http", "TCP");
    assert_eq!((conns, refused), (0, 3));
    // A service nothing was sent to has no series yet (tollgate maps shows it at zero).
    assert!(!text.contains("service=\"dns\""), "{text}");
    assert!(
        maps["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "dns")
    );
    // Backends: web and np share n1p1:8080 and n2p1:8080, which served all 36 connections.
    let backend = |pod: &str| {
        let name = format!(
            "tollgate_backend_connections_total{{backend=\"{}:8080\",protocol=\"TCP\"}}",
            s.pod(pod).ip
        );
        metric_opt(&text, &name).unwrap_or_else(|| panic!("{name} missing:\n{text}"))
    };
    assert_eq!(backend("n1p1") + backend("n2p1"), 36.0);
    assert!(
        !text.contains("tollgate_backend_refused"),
        "refusals are the service's"
    );
    // Interfaces: the uplink's TC ingress saw the NodePort's packets.
    let uplink = metric(
        &text,
        "tollgate_interface_packets_total{interface=\"eth0\",hook=\"tc_ingress\"}",
    );
    assert!(uplink >= packets as f64, "{uplink}");
    // A real Prometheus scrapes the agent: the target is up, the counters are typed as
    // counters, and a query returns what the agent counted.
    let dir = s.cluster.workdir().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        "scrape_configs:\n  - job_name: tollgate\n    scrape_interval: 1s\n    \
         static_configs:\n      - targets: ['127.0.0.1:10256']\n",
    )
    .unwrap();
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!(
        "--config.file={}",
        dir.join("prometheus.yml").display()
    ))
    .arg(format!(
        "--storage.tsdb.path={}",
        dir.join("data").display()
    ))
    .arg("--web.listen-address=127.0.0.1:19090");
    let _prometheus = node1.spawn("prometheus", cmd);
    let api = |path: &str| {
        let (code, body) = http_get(
            node1.host(),
            &format!("http://127.0.0.1:19090/api/v1/{path}"),
        );
        (code == 200)
            .then(|| serde_json::from_str::<serde_json::Value>(&body).ok())
            .flatten()
    };
    let query = "query?query=tollgate_service_connections_total%7Bservice%3D%22web%22%7D";
    let value = tollgate_tests::wait_for(
        "Prometheus to scrape the agent",
        Duration::from_secs(30),
        || {
            api(query).and_then(|v| {
                v["data"]["result"][0]["value"][1]
                    .as_str()
                    .map(String::from)
            })
        },
    );
    assert_eq!(value, "30");
    let targets = api("targets").unwrap();
    let target = &targets["data"]["activeTargets"][0];
    assert_eq!(
        (&target["health"], &target["lastError"]),
        (&serde_json::json!("up"), &serde_json::json!("")),
        "{target}"
    );
    let metadata = |metric: &str| {
        api(&format!("targets/metadata?metric={metric}")).unwrap()["data"][0]["type"].clone()
    };
    for metric in [
        "tollgate_service_connections",
        "tollgate_dataplane_map_operations",
    ] {
        assert_eq!(metadata(metric), serde_json::json!("counter"), "{metric}");
    }
    // node2's agent counted only what reached it: the NodePort's connections did not, nor the
    // refusals of node1's pod.
    let (_, text2) = admin_get(s.node("node2"), "/metrics");
    assert!(
        !text2.contains("service=\"np\"") && !text2.contains("service=\"empty\""),
        "{text2}"
    );
}

#[test]
fn reject_and_drop() {
    let s = Scenario::new();
    // No endpoints at all: REJECT, at once (connection refused), from pods, host and outside.
    let empty = format!("{}:80", scenario::EMPTY);
    for at in [s.pod("n1p1").placement(), s.node("node1").host()] {
        let t = s.client(at, &empty, 3, Mode::Tcp, T);
        assert_eq!((t.ok, t.refused), (0, 3), "{t:?}");
        assert!(t.elapsed_ms < 500, "refused at once, not timed out: {t:?}");
    }
    let t = s.client(
        s.cluster.outside(),
        &format!("{}:{}", s.node("node1").ip, scenario::NODEPORT_EMPTY),
        3,
        Mode::Tcp,
        T,
    );
    assert_eq!((t.ok, t.refused), (0, 3), "outside gets a reset: {t:?}");
    let t = s.client(
        s.pod("n1p1").placement(),
        &format!("{}:53", scenario::EMPTY),
        2,
        Mode::Udp,
        T,
    );
    assert_eq!((t.ok, t.refused), (0, 2), "UDP is refused too: {t:?}");
    // A ClusterIP on a port or protocol its Service does not define: REJECT (kube-proxy
    // nftables), from pods and host; counted node-wide.
    for at in [s.pod("n1p1").placement(), s.node("node1").host()] {
        let t = s.client(at, &format!("{}:9999", scenario::WEB), 2, Mode::Tcp, T);
        assert_eq!((t.ok, t.refused), (0, 2), "{t:?}");
        assert!(t.elapsed_ms < 500, "refused at once, not timed out: {t:?}");
        let t = s.client(at, &format!("{}:80", scenario::WEB), 2, Mode::Udp, T);
        assert_eq!((t.ok, t.refused), (0, 2), "UDP to a TCP-only port: {t:?}");
    }
    let (_, text) = admin_get(s.node("node1"), "/metrics");
    assert_eq!(
        metric(&text, "tollgate_cluster_ip_other_ports_refused_total"),
        8.0,
        "{text}"
    );
    // internalTrafficPolicy=Local with the only endpoint on node2: node1's pods get DROP
    // (a timeout), node2's pods reach it.
    let itp = format!("{}:80", scenario::ITP_LOCAL);
    let t = s.client(
        s.pod("n1p1").placement(),
        &itp,
        2,
        Mode::Tcp,
        Duration::from_millis(700),
    );
    assert_eq!((t.ok, t.timeout), (0, 2), "{t:?}");
    let t = s.client(
        s.node("node1").host(),
        &itp,
        2,
        Mode::Tcp,
        Duration::from_millis(700),
    );
    assert_eq!(
        (t.ok, t.timeout),
        (0, 2),
        "host traffic is dropped too: {t:?}"
    );
    let t = s.client(s.pod("n2p2").placement(), &itp, 5, Mode::Tcp, T);
    assert_eq!((t.ok, t.names()), (5, vec!["n2p1"]), "{t:?}");
}

/// The outside namespace (the LAN's router, where node1's default route leads) owns `addr`
/// and knows node1's pod network (its answers find the pod).
fn router_owns(s: &Scenario, addr: &str) {
    let outside = &s.cluster.outside;
    outside.ip(&["addr", "add", &format!("{addr}/32"), "dev", "lo"]);
    let node1 = s.node("node1").ip.to_string();
    outside.ip(&["route", "add", "10.244.1.0/24", "via", &node1]);
}

/// An address inside a ServiceCIDR that no Service has is not sent on (kube-proxy nftables
/// drops it): the node's default route would take it out of the node. Here the LAN's router
/// (the outside namespace) has the address, so a connection that leaves the node succeeds.
#[test]
fn unallocated_service_ips_do_not_leave_the_node() {
    let s = Scenario::new();
    let free = "10.96.7.7";
    router_owns(&s, free);
    let mut cmd = Command::new(tollgate_tests::tools::testbed_bin());
    cmd.args(["serve", "--name", "beyond"]).args([
        "--tcp",
        &format!("{free}:80"),
        "--udp",
        &format!("{free}:53"),
    ]);
    let mut server = s.cluster.spawn_outside("beyond", cmd);
    server.wait_for_log("serving", Duration::from_secs(5));
    let tcp = format!("{free}:80");
    let udp = format!("{free}:53");
    // A pod's SYN or datagram is dropped on its interface (a timeout); a host process's call
    // fails at once (EPERM). TCP and UDP.
    for (to, mode) in [(&tcp, Mode::Tcp), (&udp, Mode::Udp)] {
        let pod = s.client(s.pod("n1p2").placement(), to, 2, mode, SHORT);
        assert_eq!((pod.ok, pod.timeout), (0, 2), "{to} {mode:?}: {pod:?}");
        let host = s.client(s.node("node1").host(), to, 2, mode, T);
        assert_eq!((host.ok, host.other), (0, 2), "{to} {mode:?}: {host:?}");
        assert!(host.elapsed_ms < 500, "failed at once: {host:?}");
    }
    // The Services' own addresses keep their verdicts.
    let t = s.client(
        s.pod("n1p2").placement(),
        &format!("{}:80", scenario::WEB),
        2,
        Mode::Tcp,
        T,
    );
    assert_eq!(t.ok, 2, "{t:?}");
    let t = s.client(
        s.pod("n1p2").placement(),
        &format!("{}:80", scenario::EMPTY),
        2,
        Mode::Tcp,
        T,
    );
    assert_eq!(t.refused, 2, "no endpoints: REJECT, as before: {t:?}");
    let t = s.client(
        s.pod("n1p2").placement(),
        &format!("{}:9999", scenario::WEB),
        2,
        Mode::Tcp,
        T,
    );
    assert_eq!(
        t.refused, 2,
        "a port the Service does not define: REJECT: {t:?}"
    );
    // Counted per prefix: `tollgate maps` and /metrics.
    let maps = s.maps(s.node("node1"));
    assert_eq!(
        maps["service_cidrs"],
        serde_json::json!([{"cidr": "10.96.0.0/16", "dropped": 8}, {"cidr": "fd00:96::/112", "dropped": 0}]),
        "{maps}"
    );
    let (_, text) = admin_get(s.node("node1"), "/metrics");
    assert_eq!(
        metric(
            &text,
            "tollgate_service_cidr_unallocated_dropped_total{cidr=\"10.96.0.0/16\"}"
        ),
        8.0,
        "{text}"
    );
    // Without the ServiceCIDR the address is nobody's: the connection leaves the node and
    // the LAN's router answers.
    s.remove("ServiceCIDR", "kubernetes");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let t = s.client(s.pod("n1p2").placement(), &tcp, 1, Mode::Tcp, T);
        if t.ok == 1 {
            assert_eq!(t.names(), ["beyond"], "{t:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still dropped: {t:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        s.maps(s.node("node1"))["service_cidrs"],
        serde_json::json!([])
    );
}

/// `ping -c 1` from `at` (`-I source`: without it, iputils ping first connects a UDP socket to
/// the address to learn its source, which the socket hooks refuse for a ClusterIP): whether
/// it got an echo reply, and its output.
fn ping_once(at: tollgate_tests::process::Placement<'_>, source: &str, to: &str) -> (bool, String) {
    let mut cmd = Command::new("ping");
    cmd.args(["-n", "-c", "1", "-W", "1", "-I", source, to]);
    let out = at.output(cmd);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Pings (and SCTP, see the packet test) to Service IPs do not leave the node, as with
/// kube-proxy's nftables rules: a ClusterIP answers with a port unreachable, an unallocated
/// address inside a ServiceCIDR drops them. From pods and from the host (whose pings no
/// socket hook sees), IPv4 and IPv6. Without this a ping to a ClusterIP goes out by the
/// default route, and one to an unallocated address reaches whatever has it beyond the node.
#[test]
fn pings_to_service_ips_are_refused_or_dropped_not_routed() {
    let s = Scenario::new();
    let free = "10.96.7.7";
    router_owns(&s, free);
    let node1 = s.node("node1");
    let pod = s.pod("n1p2");
    let (pod_ip, node_ip) = (pod.ip.to_string(), node1.ip.to_string());
    for (name, at, source) in [
        ("pod", pod.placement(), &pod_ip),
        ("host", node1.host(), &node_ip),
    ] {
        let (replied, out) = ping_once(at, source, scenario::WEB);
        assert!(
            !replied
                && out.contains(&format!(
                    "From {} icmp_seq=1 Destination Port Unreachable",
                    scenario::WEB
                )),
            "{name}: refused by the ClusterIP: {out}"
        );
        let (replied, out) = ping_once(at, source, free);
        assert!(
            !replied && out.contains("100% packet loss"),
            "{name}: dropped: {out}"
        );
        // Counted per prefix (`tollgate maps`): the pod's echo request once; the host's at
        // least once (ping tries again when the first send fails with ENOBUFS).
        let dropped = s.maps(node1)["service_cidrs"][0]["dropped"]
            .as_u64()
            .unwrap();
        assert!(
            if name == "pod" {
                dropped == 1
            } else {
                dropped > 1
            },
            "{name}: {dropped} dropped"
        );
    }
    let (replied, out) = ping_once(pod.placement(), &pod.ip6.to_string(), scenario::WEB6);
    assert!(
        !replied && out.contains("Port unreachable"),
        "pod, IPv6: refused by the ClusterIP: {out}"
    );
    // Pings to other addresses are not Tollgate's: a pod on the other node, the router.
    let router = tollgate_tests::cluster::OUTSIDE_V4.to_string();
    for to in [s.pod("n2p1").ip.to_string(), router] {
        let (replied, out) = ping_once(pod.placement(), &pod_ip, &to);
        assert!(replied, "pod to {to}: {out}");
    }
    // Refusals counted with the ClusterIPs' other ports: the pod's two, the host's one.
    let maps = s.maps(node1);
    assert_eq!(maps["other_ports"]["refused"], 3, "{maps}");
    // Without the ServiceCIDR the address is nobody's: the ping leaves the node, and the LAN's
    // router answers.
    s.remove("ServiceCIDR", "kubernetes");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !ping_once(pod.placement(), &pod_ip, free).0 {
        assert!(std::time::Instant::now() < deadline, "still dropped");
    }
}

/// A pod connecting to a ClusterIP the moment it is allocated, before the agent has
/// programmed it, gets through once it is (its first SYN dropped as unallocated, a
/// retransmitted one translated), as with kube-proxy, whose rules catch the retransmit.
#[test]
fn a_pod_connecting_to_a_cluster_ip_before_it_is_programmed_gets_through() {
    let s = Scenario::new();
    let late = "10.96.7.8";
    let mut cmd = Command::new(tollgate_tests::tools::testbed_bin());
    cmd.args(["connect", "--to", &format!("{late}:80"), "--count", "1"])
        .args(["--mode", "tcp", "--timeout-ms", "6000"]);
    let mut client = BgProcess::spawn("early-client", s.pod("n1p2").placement(), cmd);
    std::thread::sleep(Duration::from_millis(300));
    s.update(vec![
        scenario::service(
            "late",
            serde_json::json!({"clusterIP": late, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
        ),
        scenario::slice(
            "late-1",
            "late",
            "IPv4",
            serde_json::json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
            vec![scenario::endpoint(s.pod("n2p1"), scenario::ready())],
        ),
    ]);
    let t = Scenario::finish(&mut client, Duration::from_secs(10));
    assert_eq!((t.ok, t.names()), (1, vec!["n2p1"]), "{t:?}");
    assert!(
        t.elapsed_ms >= 900,
        "through a retransmitted SYN, not the first: {t:?}"
    );
    let maps = s.maps(s.node("node1"));
    // The first SYN at least (a slow reload may drop a retransmit too).
    assert!(
        maps["service_cidrs"][0]["dropped"].as_u64() >= Some(1),
        "the first SYN: {maps}"
    );
}

#[test]
fn multi_port_named_ports_hairpin_ipv6_and_affinity() {
    let s = Scenario::new();
    // Two named ports of one service map to different target ports of every pod. 80
    // connections: a backend left out by chance is 4 × (3/4)^80 ≈ 4e-10 (30 gave 7e-4, and
    // one CI run met it).
    for (port, expect) in [(80u16, "8080"), (81, "8081")] {
        let t = s.client(
            s.pod("n1p1").placement(),
            &format!("{}:{port}", scenario::MULTI),
            80,
            Mode::Tcp,
            T,
        );
        assert_eq!(t.ok, 80, "port {port}: {t:?}");
        assert_eq!(
            t.backends.len(),
            4,
            "all four pods serve port {port} ({expect}): {t:?}"
        );
    }
    // Hairpin: n1p1 is a backend of web; reaching web from n1p1 sometimes lands on itself.
    let t = s.client(
        s.pod("n1p1").placement(),
        &format!("{}:80", scenario::WEB),
        40,
        Mode::Tcp,
        T,
    );
    assert_eq!(t.ok, 40, "{t:?}");
    assert!(
        t.backends.contains_key("n1p1"),
        "the pod reached itself through its service: {t:?}"
    );
    // IPv6 ClusterIP, from a pod and from a host process.
    let web6 = format!("[{}]:80", scenario::WEB6);
    for at in [s.pod("n2p2").placement(), s.node("node1").host()] {
        let t = s.client(at, &web6, 20, Mode::Tcp, T);
        assert_eq!(t.ok, 20, "{t:?}");
        assert_eq!(t.names(), ["n1p1", "n2p1"], "{t:?}");
        assert_eq!(t.peers, std::slice::from_ref(&web6), "{t:?}");
    }
    // ClientIP affinity: one client sticks to one backend within the timeout (2 s)...
    let aff = format!("{}:80", scenario::AFFINITY);
    let t = s.client(s.pod("n1p2").placement(), &aff, 30, Mode::Tcp, T);
    assert_eq!((t.ok, t.backends.len()), (30, 1), "sticky: {t:?}");
    // ... and is free to move once it expires: over several expiries, more than one backend
    // (a fresh choice each time, so up to 20 expiries: all alike by chance 1 in 2^19).
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(2300));
        let t = s.client(s.pod("n1p2").placement(), &aff, 3, Mode::Tcp, T);
        assert_eq!((t.ok, t.backends.len()), (3, 1), "{t:?}");
        seen.extend(t.backends.into_keys());
        if seen.len() > 1 {
            break;
        }
    }
    assert!(seen.len() > 1, "affinity never expired: {seen:?}");
}

fn slice_of(s: &Scenario, name: &str) -> serde_json::Value {
    s.object("EndpointSlice", name)
}

fn with_endpoints(mut slice: serde_json::Value, eps: Vec<serde_json::Value>) -> serde_json::Value {
    slice["endpoints"] = serde_json::Value::Array(eps);
    slice
}

/// Where the sequence switched from `from` to `to`: all of the first before, all of the second
/// after, at most `gap` failures between.
fn switched(seq: &[String], from: &str, to: &str, gap: usize) {
    let first = seq.iter().position(|b| b != from).unwrap_or(seq.len());
    assert!(first > 0, "never reached {from}: {seq:?}");
    let rest = &seq[first..];
    let fails = rest.iter().take_while(|b| *b == "!").count();
    assert!(fails <= gap, "{fails} failures in the switch: {seq:?}");
    assert!(
        !rest[fails..].is_empty() && rest[fails..].iter().all(|b| b == to),
        "after the switch only {to}: {seq:?}"
    );
}

#[test]
fn stale_udp_flows_are_purged_when_their_backend_goes() {
    let s = Scenario::new();
    let (n1p1, n1p2, n2p1, n2p2) = (s.pod("n1p1"), s.pod("n1p2"), s.pod("n2p1"), s.pod("n2p2"));
    let (only_n1p2, only_n2p2) = (
        with_endpoints(
            slice_of(&s, "dns-1"),
            vec![scenario::endpoint(n1p2, scenario::ready())],
        ),
        with_endpoints(
            slice_of(&s, "dns-1"),
            vec![scenario::endpoint(n2p2, scenario::ready())],
        ),
    );
    let np_n1p1 = with_endpoints(
        slice_of(&s, "np-1"),
        vec![scenario::endpoint(n1p1, scenario::ready())],
    );
    let np_n2p1 = with_endpoints(
        slice_of(&s, "np-1"),
        vec![scenario::endpoint(n2p1, scenario::ready())],
    );
    s.update(vec![only_n1p2, np_n1p1]);
    s.wait_backends(
        &format!("{}:53", scenario::DNS),
        "internal",
        &[&format!("{}:5353", n1p2.ip)],
    );
    let node1 = s.node("node1").ip;
    s.wait_backends(
        &format!("{node1}:{}", scenario::NODEPORT_UDP),
        "internal",
        &[&format!("{}:5353", n1p1.ip)],
    );

    // One unconnected UDP socket in a pod (socket LB), one UDP "flow" from outside (conntrack).
    let pace = Duration::from_millis(100);
    let mut pod = s.spawn_client(
        s.pod("n1p1").placement(),
        &format!("{}:53", scenario::DNS),
        40,
        Mode::UdpUnconnected,
        pace,
    );
    let mut outside = s.spawn_client(
        s.cluster.outside(),
        &format!("{node1}:{}", scenario::NODEPORT_UDP),
        40,
        Mode::UdpUnconnected,
        pace,
    );
    std::thread::sleep(Duration::from_millis(1500));
    let node1 = s.node("node1");
    let before = backend_ids(node1);
    s.update(vec![only_n2p2, np_n2p1]);
    let pod = Scenario::finish(&mut pod, Duration::from_secs(15));
    let outside = Scenario::finish(&mut outside, Duration::from_secs(15));
    switched(&pod.sequence, "n1p2", "n2p2", 2);
    switched(&outside.sequence, "n1p1", "n2p1", 2);
    // No ID of a backend that left names another backend now: a kept choice (the pod socket's,
    // until the purge removes it) must not silently lead to another service's backend.
    for (id, b) in backend_ids(node1) {
        if let Some(old) = before.get(&id) {
            assert_eq!(*old, b, "backend ID {id} was reused at once");
        }
    }
}

#[test]
fn connected_udp_sockets_are_terminated_when_their_backend_goes() {
    let s = Scenario::new();
    let (n1p2, n2p2) = (s.pod("n1p2"), s.pod("n2p2"));
    let only = |pod| {
        with_endpoints(
            slice_of(&s, "dns-1"),
            vec![scenario::endpoint(pod, scenario::ready())],
        )
    };
    let dns = format!("{}:53", scenario::DNS);
    s.update(vec![only(n1p2)]);
    s.wait_backends(&dns, "internal", &[&format!("{}:5353", n1p2.ip)]);

    // One connected UDP socket in a pod, kept while it works: the connect hook sent it to
    // n1p2, which keeps answering after it stops being an endpoint. Only destroying the socket
    // moves the client (which reconnects after an error) to the serving backend.
    let mut client = s.spawn_client(
        s.pod("n1p1").placement(),
        &dns,
        40,
        Mode::UdpKept,
        Duration::from_millis(100),
    );
    std::thread::sleep(Duration::from_millis(1500));
    s.update(vec![only(n2p2)]);
    let tally = Scenario::finish(&mut client, Duration::from_secs(15));
    switched(&tally.sequence, "n1p2", "n2p2", 2);
    // The client saw its socket go (one failed exchange), and every peer it reported is the
    // service address.
    assert!(
        tally.sequence.contains(&"!".to_owned()),
        "{:?}",
        tally.sequence
    );
    assert_eq!(tally.peers, std::slice::from_ref(&dns), "{tally:?}");
    let text = tollgate_tests::agent::admin_get(s.node("node1"), "/metrics").1;
    assert_eq!(
        tollgate_tests::agent::metric(
            &text,
            "tollgate_dataplane_purged_total{what=\"connected_udp_sockets\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        tollgate_tests::agent::metric(&text, "tollgate_dataplane_socket_termination_errors_total"),
        0.0
    );
    // `--traffic-metrics services` (the default): service series, no backend series.
    assert!(
        text.contains("tollgate_service_connections_total{namespace=\"default\",service=\"dns\"")
            && !text.contains("tollgate_backend_"),
        "{text}"
    );
}

#[test]
fn udp_state_of_backends_that_left_while_no_agent_ran_goes_at_restart() {
    let mut s = Scenario::new();
    let (n1p1, n1p2, n2p2) = (s.pod("n1p1"), s.pod("n1p2"), s.pod("n2p2"));
    let dns_on = |pod| {
        with_endpoints(
            slice_of(&s, "dns-1"),
            vec![scenario::endpoint(pod, scenario::ready())],
        )
    };
    let np_on = |pod| {
        with_endpoints(
            slice_of(&s, "np-1"),
            vec![scenario::endpoint(pod, scenario::ready())],
        )
    };
    let dns = format!("{}:53", scenario::DNS);
    let np = format!("{}:{}", s.node("node1").ip, scenario::NODEPORT_UDP);
    s.update(vec![dns_on(n1p2), np_on(n1p1)]);
    s.wait_backends(&dns, "internal", &[&format!("{}:5353", n1p2.ip)]);
    s.wait_backends(&np, "internal", &[&format!("{}:5353", n1p1.ip)]);

    // A kept connected socket and an unconnected one in a pod (socket LB), a UDP flow from
    // outside (conntrack), all on the backends that are about to leave.
    let pace = Duration::from_millis(100);
    let mut clients = [
        (
            "pod, connected",
            s.spawn_client(n1p1.placement(), &dns, 60, Mode::UdpKept, pace),
        ),
        (
            "pod, unconnected",
            s.spawn_client(n1p1.placement(), &dns, 60, Mode::UdpUnconnected, pace),
        ),
        (
            "outside",
            s.spawn_client(s.cluster.outside(), &np, 60, Mode::UdpUnconnected, pace),
        ),
    ];
    // While no agent runs, n1p1 stops being a backend of anything and n1p2 moves from the DNS
    // service to the NodePort's UDP port (the old backends keep answering).
    let after = vec![dns_on(n2p2), np_on(n1p2)];
    std::thread::sleep(Duration::from_millis(1000));
    s.agents[0].kill9();
    s.update(after);
    std::thread::sleep(Duration::from_millis(1000));
    let node = s.cluster.node("node1");
    s.agents[0] = tollgate_tests::agent::start_agent(node, &s.source, &[]);
    let mut stuck = Vec::new();
    for (what, client) in &mut clients {
        let t = Scenario::finish(client, Duration::from_secs(20));
        let (from, to) = if *what == "outside" {
            ("n1p1", "n1p2")
        } else {
            ("n1p2", "n2p2")
        };
        assert_eq!(
            t.sequence.first().map(String::as_str),
            Some(from),
            "{what}: {t:?}"
        );
        if t.sequence.last().map(String::as_str) != Some(to) {
            stuck.push(format!("{what}: {:?}", t.sequence));
        }
    }
    assert!(
        stuck.is_empty(),
        "still on the departed backend: {stuck:#?}"
    );
}

#[test]
fn service_ports_keep_their_ids_across_a_restart_and_gone_ones_take_their_affinities_along() {
    let mut s = Scenario::new();
    let affinity = format!("{}:80", scenario::AFFINITY);
    let t = s.client(s.pod("n1p1").placement(), &affinity, 3, Mode::Tcp, T);
    assert_eq!((t.ok, t.backends.len()), (3, 1), "affine: {t:?}");
    let affine = t.names()[0].to_owned();
    let before = service_ids(s.cluster.node("node1"));
    let old_id = before[&("affinity".to_owned(), "http".to_owned())];

    // While no agent runs, the service goes and another ClientIP service comes, without the
    // backend the client was affine to (and with a longer timeout, so a leftover affinity
    // would still count).
    let mut svc = s.object("Service", "affinity");
    svc["metadata"]["name"] = "aff2".into();
    svc["spec"]["clusterIP"] = "10.96.0.17".into();
    svc["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] = 600.into();
    let mut slice = s.object("EndpointSlice", "affinity-1");
    slice["metadata"]["name"] = "aff2-1".into();
    slice["metadata"]["labels"]["kubernetes.io/service-name"] = "aff2".into();
    let others: Vec<_> = ["n1p1", "n1p2", "n2p1", "n2p2"]
        .into_iter()
        .filter(|n| *n != affine)
        .map(|n| scenario::endpoint(s.pod(n), scenario::ready()))
        .collect();
    slice["endpoints"] = others.into();
    s.agents[0].kill9();
    s.remove("Service", "affinity");
    s.remove("EndpointSlice", "affinity-1");
    s.update(vec![svc, slice]);
    let node = s.cluster.node("node1");
    s.agents[0] = tollgate_tests::agent::start_agent(node, &s.source, &[]);

    let t = s.client(s.pod("n1p1").placement(), "10.96.0.17:80", 10, Mode::Tcp, T);
    assert_eq!(t.ok, 10, "{t:?}");
    assert!(
        !t.backends.contains_key(&affine),
        "the client's affinity to {affine} in the departed service led into the new one: {t:?}"
    );
    let after = service_ids(s.cluster.node("node1"));
    for (port, id) in &before {
        if let Some(now) = after.get(port) {
            assert_eq!(now, id, "{port:?} kept its ID");
        }
    }
    // The departed service's ClusterIP no longer refuses other ports; the new one's does, and
    // the other services' kept theirs.
    let ips = other_ports_ips(&s, s.cluster.node("node1"));
    assert!(
        !ips.iter().any(|ip| ip == scenario::AFFINITY)
            && ips.iter().any(|ip| ip == "10.96.0.17")
            && ips.iter().any(|ip| ip == scenario::WEB),
        "{ips:?}"
    );
    let new_id = after[&("aff2".to_owned(), "http".to_owned())];
    assert_ne!(
        new_id, old_id,
        "the departed service's ID is not reused at once"
    );
    // The departed service's affinities were purged.
    tollgate_tests::wait_for("the purge", Duration::from_secs(5), || {
        let data = MapData::from_pin(s.cluster.node("node1").bpffs.join(affinity::NAME)).unwrap();
        let map: aya::maps::HashMap<MapData, AffinityKey, AffinityValue> =
            aya::maps::HashMap::try_from(Map::HashMap(data)).unwrap();
        map.keys()
            .map(Result::unwrap)
            .all(|k| k.service_id != old_id)
            .then_some(())
    });
}

#[test]
fn source_ranges_of_a_service_gone_while_no_agent_ran_allow_nobody_after_restart() {
    let mut s = Scenario::new();
    let deny = format!("{}:80", scenario::LB_DENY_IP);
    let dropped = |s: &Scenario| {
        let t = s.client(
            s.cluster.outside(),
            &deny,
            2,
            Mode::Tcp,
            Duration::from_millis(700),
        );
        (t.ok, t.timeout)
    };
    assert_eq!(dropped(&s), (0, 2), "lb-deny's ranges exclude the client");
    // While no agent runs, the LoadBalancer whose ranges allow the client goes (frontends
    // handed out afresh would give lb-deny's its ID, and with it its ranges).
    s.agents[0].kill9();
    s.remove("Service", "lb");
    s.remove("EndpointSlice", "lb-1");
    let node = s.cluster.node("node1");
    s.agents[0] = tollgate_tests::agent::start_agent(node, &s.source, &[]);
    assert_eq!(
        dropped(&s),
        (0, 2),
        "lb-deny's ranges still exclude the client"
    );
    // Nothing is left of lb's ranges.
    let text = String::from_utf8(
        std::process::Command::new("bpftool")
            .args(["map", "dump", "pinned"])
            .arg(node.bpffs.join(tollgate_common::lb::srcrange::NAME))
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let entries: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(entries.len(), 1, "only lb-deny's 10.0.0.0/8: {text}");
}

/// node's service ports (`tg_svcinfo_v1`): (service name, port name) → ID.
fn service_ids(
    node: &tollgate_tests::cluster::Node,
) -> std::collections::BTreeMap<(String, String), u32> {
    use tollgate_common::lb::svcinfo::{self, SvcInfo};
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim_end_matches('\0').to_owned();
    let data = MapData::from_pin(node.bpffs.join(svcinfo::NAME)).unwrap();
    let map: aya::maps::HashMap<MapData, u32, SvcInfo> =
        aya::maps::HashMap::try_from(Map::HashMap(data)).unwrap();
    map.iter()
        .map(Result::unwrap)
        .map(|(id, i)| ((text(&i.name), text(&i.port_name)), id))
        .collect()
}

/// node's backend map: ID → (address, port).
fn backend_ids(
    node: &tollgate_tests::cluster::Node,
) -> std::collections::BTreeMap<u32, ([u32; 4], u16)> {
    use tollgate_common::lb::backend::{self, Backend};
    let data = MapData::from_pin(node.bpffs.join(backend::NAME)).unwrap();
    let map: aya::maps::HashMap<MapData, u32, Backend> =
        aya::maps::HashMap::try_from(Map::HashMap(data)).unwrap();
    map.iter()
        .map(Result::unwrap)
        .map(|(id, b)| (id, (b.addr, b.port)))
        .collect()
}

#[test]
fn terminating_endpoints_keep_their_established_flows() {
    let s = Scenario::new();
    let (n1p1, n2p1) = (s.pod("n1p1"), s.pod("n2p1"));
    let node1 = s.node("node1").ip;
    let np = format!("{node1}:{}", scenario::NODEPORT);
    s.update(vec![with_endpoints(
        slice_of(&s, "np-1"),
        vec![scenario::endpoint(n2p1, scenario::ready())],
    )]);
    s.wait_backends(&np, "internal", &[&format!("{}:8080", n2p1.ip)]);
    // A long connection from outside (per-packet path) and one from a pod (socket LB).
    let pace = Duration::from_millis(100);
    let mut from_outside = s.spawn_session(s.cluster.outside(), &np, 30, pace);
    let mut from_pod = s.spawn_session(s.pod("n1p2").placement(), &np, 30, pace);
    // n2p1 starts terminating, n1p1 takes new connections.
    s.update(vec![with_endpoints(
        slice_of(&s, "np-1"),
        vec![
            scenario::endpoint(n2p1, scenario::terminating()),
            scenario::endpoint(n1p1, scenario::ready()),
        ],
    )]);
    s.wait_backends(&np, "internal", &[&format!("{}:8080", n1p1.ip)]);
    let t = s.client(s.cluster.outside(), &np, 10, Mode::Tcp, T);
    assert_eq!(
        (t.ok, t.names()),
        (10, vec!["n1p1"]),
        "new connections avoid the terminating endpoint: {t:?}"
    );
    for (what, p) in [("outside", &mut from_outside), ("pod", &mut from_pod)] {
        let t = Scenario::finish(p, Duration::from_secs(15));
        assert_eq!(
            (t.ok, t.names()),
            (30, vec!["n2p1"]),
            "{what}: the established flow kept its backend: {t:?}"
        );
    }
}

#[test]
fn agent_restart_keeps_established_flows_and_serves_at_once() {
    let mut s = Scenario::new();
    let node1 = s.node("node1").ip;
    let np = format!("{node1}:{}", scenario::NODEPORT);
    let web = format!("{}:80", scenario::WEB);
    let pace = Duration::from_millis(100);
    let mut from_outside = s.spawn_session(s.cluster.outside(), &np, 40, pace);
    let mut from_pod = s.spawn_session(s.pod("n1p2").placement(), &web, 40, pace);
    // SIGKILL: no clean-up runs. Programs stay attached through their pinned links.
    s.agents[0].kill9();
    std::thread::sleep(Duration::from_millis(500));
    let t = s.client(s.pod("n1p2").placement(), &web, 5, Mode::Tcp, T);
    assert_eq!(t.ok, 5, "served while no agent runs: {t:?}");
    let t = s.client(s.cluster.outside(), &np, 5, Mode::Tcp, T);
    assert_eq!(t.ok, 5, "NodePort served while no agent runs: {t:?}");
    // Restart: new connections right away.
    let node = s.cluster.node("node1");
    s.agents[0] = tollgate_tests::agent::start_agent(node, &s.source, &[]);
    let t = s.client(
        s.pod("n1p2").placement(),
        &web,
        5,
        Mode::Tcp,
        Duration::from_secs(1),
    );
    assert_eq!(t.ok, 5, "served at once after the restart: {t:?}");
    let t = s.client(
        s.cluster.outside(),
        &np,
        5,
        Mode::Tcp,
        Duration::from_secs(1),
    );
    assert_eq!(t.ok, 5, "{t:?}");
    for (what, p) in [("outside", &mut from_outside), ("pod", &mut from_pod)] {
        let t = Scenario::finish(p, Duration::from_secs(20));
        assert_eq!(
            (t.ok, t.backends.len()),
            (40, 1),
            "{what}: the connection survived the restart: {t:?}"
        );
    }
    // The restarted agent updated its pinned links in place instead of stacking programs.
    let links = std::fs::read_dir(node.bpffs.join("links")).unwrap().count();
    assert_eq!(
        links,
        2 + 9 + 2,
        "uplink TC ingress+egress (auto mode skips XDP on veth) + socket hooks 8 and sock_release + TC ingress of two pod interfaces"
    );
}

#[test]
fn new_connections_spread_evenly_over_backends() {
    let s = Scenario::new();
    const N: u64 = 20_000;
    let t = s.client(
        s.pod("n1p1").placement(),
        &format!("{}:80", scenario::SPREAD),
        N,
        Mode::Tcp,
        T,
    );
    assert_eq!(t.ok, N, "{t:?}");
    let expected = N as f64 / 4.0;
    for (name, count) in &t.backends {
        let dev = (*count as f64 - expected) / expected;
        assert!(
            dev.abs() <= 0.05,
            "{name}: {count} of {N} ({:+.1} %): {:?}",
            dev * 100.0,
            t.backends
        );
    }
    assert_eq!(t.backends.len(), 4);
}

/// `--lb-algorithm maglev`: a flow from outside reaches the same backend whichever node it
/// enters, because both nodes fill the same table from the same backends (with random choice,
/// two nodes agree on one of the NodePort's two backends half the time).
#[test]
fn maglev_sends_a_flow_from_outside_to_the_same_backend_through_either_node() {
    // Tables of 16381 entries (four map values each), not the default 4093.
    let mut s = Scenario::with(
        Default::default(),
        &["--lb-algorithm", "maglev", "--maglev-table-size", "16381"],
    );
    // One connection from outside with a fixed source port; the name of the pod that answers.
    let ask = |node: &str, sport: u16| {
        let to = format!(
            "TCP:{}:{},sourceport={sport},reuseaddr,connect-timeout=3",
            s.node(node).ip,
            scenario::NODEPORT
        );
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "echo x | socat -t3 -T3 - \"$0\"", &to]);
        let out = s.cluster.outside().output(cmd);
        let text = String::from_utf8_lossy(&out.stdout);
        let name = text
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        assert!(
            name.starts_with('n'),
            "{to}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        name
    };
    let mut seen = std::collections::BTreeSet::new();
    for sport in 41_000..41_024 {
        let (a, b) = (ask("node1", sport), ask("node2", sport));
        assert_eq!(a, b, "source port {sport}: node1 chose {a}, node2 {b}");
        seen.insert(a);
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["n1p1", "n2p1"],
        "the flows spread over both backends"
    );
    // Every table holds exactly the backends of its service port's frontends, on both nodes;
    // when n2p1 leaves, both write their tables again without it.
    let consistent = |s: &Scenario, want: usize| -> Result<(), String> {
        for node in ["node1", "node2"] {
            let pins = tollgate::dataplane::PinLayout::existing(&s.cluster.node(node).bpffs);
            let maps = tollgate::dataplane::lbmaps::LbMaps::open(&pins).unwrap();
            let mut slots: HashMap<u32, BTreeSet<u32>> = HashMap::new();
            let entries: Vec<_> = maps.svc.iter().map(Result::unwrap).collect();
            for (k, v) in &entries {
                if k.slot == 0 && v.flags & svc_flags::MAGLEV != 0 {
                    let ids = slots.entry(v.service_id).or_default();
                    ids.extend(entries.iter().filter_map(|(sk, sv)| {
                        (sk.slot != 0 && SvcKey { slot: 0, ..*sk } == *k).then_some(sv.backend_id)
                    }));
                }
            }
            let tables = maglev_tables(&maps, MAGLEV_SIZE);
            let with_backends = slots.values().filter(|i| !i.is_empty()).count();
            if tables.len() != with_backends {
                return Err(format!(
                    "{node}: {} tables, {with_backends} ports",
                    tables.len()
                ));
            }
            for (id, t) in &tables {
                let held: BTreeSet<u32> = t.iter().copied().collect();
                if Some(&held) != slots.get(id) {
                    return Err(format!(
                        "{node}: table of {id}: {held:?} {:?}",
                        slots.get(id)
                    ));
                }
            }
            let sizes: Vec<usize> = tables
                .values()
                .map(|t| t.iter().collect::<BTreeSet<_>>().len())
                .collect();
            if !sizes.contains(&want) {
                return Err(format!("{node}: no table of {want} backends: {sizes:?}"));
            }
        }
        Ok(())
    };
    consistent(&s, 2).unwrap();
    // Both nodes hold the same table, entry for entry (by backend address; IDs are each
    // node's own).
    let before = maglev_table(&s, "node1");
    assert_eq!(before, maglev_table(&s, "node2"));
    // n1p2 joins: the nodes still hold the same table; n1p2 takes about a third of the
    // entries, and few entries move between the two backends that stay (Maglev's point).
    let (n1p1, n1p2, n2p1) = (s.pod("n1p1"), s.pod("n1p2"), s.pod("n2p1"));
    s.update(vec![with_endpoints(
        slice_of(&s, "np-1"),
        vec![
            scenario::endpoint(n1p1, scenario::ready()),
            scenario::endpoint(n2p1, scenario::ready()),
            scenario::endpoint(n1p2, scenario::ready()),
        ],
    )]);
    tollgate_tests::wait_for("tables of three backends", Duration::from_secs(5), || {
        consistent(&s, 3).ok()
    });
    let after = maglev_table(&s, "node1");
    assert_eq!(after, maglev_table(&s, "node2"));
    let taken = after.iter().filter(|a| **a == n1p2.ip).count();
    let crossed = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b != a && **a != n1p2.ip)
        .count();
    // Maglev's population gives each of n backends ⌊M/n⌋ or ⌈M/n⌉ entries.
    let third = MAGLEV_SIZE as usize / 3;
    assert!(
        (third..=third + 1).contains(&taken),
        "n1p2 has {taken} of {} entries",
        after.len()
    );
    // Under 5 %, as the unit tests bound it for a backend that goes (1 entry here).
    assert!(
        crossed * 20 < after.len(),
        "{crossed} entries moved between n1p1 and n2p1"
    );
    for sport in 41_200..41_208 {
        let (a, b) = (ask("node1", sport), ask("node2", sport));
        assert_eq!(a, b, "source port {sport}: node1 chose {a}, node2 {b}");
    }
    s.update(vec![with_endpoints(
        slice_of(&s, "np-1"),
        vec![scenario::endpoint(n1p1, scenario::ready())],
    )]);
    s.wait_backends("10.96.0.30:80", "internal", &[&format!("{}:8080", n1p1.ip)]);
    tollgate_tests::wait_for("tables without n2p1", Duration::from_secs(5), || {
        consistent(&s, 1).ok()
    });
    for sport in 41_100..41_104 {
        assert_eq!(
            (ask("node1", sport), ask("node2", sport)),
            ("n1p1".into(), "n1p1".into())
        );
    }
    // Restarted with random choice (the default), node1's agent removes its tables.
    let tables = |s: &Scenario| {
        use tollgate_common::lb::maglev::{Chunk, Key, NAME};
        let data = MapData::from_pin(s.cluster.node("node1").bpffs.join(NAME)).unwrap();
        let map: aya::maps::HashMap<_, Key, Chunk> =
            aya::maps::HashMap::try_from(Map::HashMap(data)).unwrap();
        map.keys().count()
    };
    assert!(tables(&s) >= 1, "the NodePort's service ports have tables");
    s.agents[0].terminate();
    let node = s.cluster.node("node1");
    // An older agent's table map (any map pinned under its name stands in for it) is
    // unpinned at start.
    let retired = node.bpffs.join("tg_maglev_v1");
    MapData::from_pin(node.bpffs.join(tollgate_common::lb::svc::NAME))
        .unwrap()
        .pin(&retired)
        .unwrap();
    s.agents[0] = tollgate_tests::agent::start_agent(node, &s.source, &[]);
    assert_eq!(
        tables(&s),
        0,
        "no tables left once the random agent is ready"
    );
    assert!(!retired.exists(), "the retired map's pin is gone");
}

/// The Maglev table size the e2e test runs with.
const MAGLEV_SIZE: u32 = 16381;

/// The Maglev tables in `maps`, their chunks put together: service port ID → its `size`
/// entries (a missing chunk leaves zeros).
fn maglev_tables(maps: &tollgate::dataplane::lbmaps::LbMaps, size: u32) -> HashMap<u32, Vec<u32>> {
    let mut tables: HashMap<u32, Vec<u32>> = HashMap::new();
    for (k, c) in maps.maglev.iter().map(Result::unwrap) {
        let t = tables
            .entry(k.service_id)
            .or_insert_with(|| vec![0; size as usize]);
        let start = (k.chunk * maglev::CHUNK) as usize;
        for (entry, id) in t.iter_mut().skip(start).zip(c.backends) {
            *entry = id;
        }
    }
    tables
}

/// `node`'s Maglev table of the NodePort's TCP service port, as the backends' addresses.
fn maglev_table(s: &Scenario, node: &str) -> Vec<Ipv4Addr> {
    let pins = tollgate::dataplane::PinLayout::existing(&s.cluster.node(node).bpffs);
    let maps = tollgate::dataplane::lbmaps::LbMaps::open(&pins).unwrap();
    let id = maps
        .svc
        .iter()
        .map(Result::unwrap)
        .find(|(k, v)| {
            k.slot == 0
                && k.port == scenario::NODEPORT.to_be()
                && k.proto == 6
                && v.flags & svc_flags::MAGLEV != 0
        })
        .expect("the NodePort's Maglev entry")
        .1
        .service_id;
    maglev_tables(&maps, MAGLEV_SIZE)[&id]
        .iter()
        .map(|b| {
            let backend = maps.backend.get(b, 0).unwrap();
            Ipv4Addr::from(backend.addr[3].to_ne_bytes())
        })
        .collect()
}

/// Packets the uplink's TC ingress program saw on node1.
fn tc_ingress_packets(s: &Scenario) -> u64 {
    let maps = s.maps(s.node("node1"));
    maps["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["hook"] == "tc_ingress")
        .map(|r| r["packets"].as_u64().unwrap())
        .max()
        .unwrap_or(0)
}

#[test]
fn xdp_fast_path_transmits_remote_backend_traffic_from_the_uplink() {
    // The XDP program in generic mode (native XDP_TX between veths is unreliable; physical
    // NICs transmit XDP frames themselves), with full checksums as packets from a wire have.
    let spec = tollgate_tests::ClusterSpec {
        wire_checksums: true,
        ..Default::default()
    };
    let s = Scenario::with(spec, &["--xdp-mode", "generic"]);
    let (node1, n2p1) = (s.node("node1").ip, s.pod("n2p1"));
    let np = format!("{node1}:{}", scenario::NODEPORT);
    // Only the remote backend: every packet of these flows, both ways, leaves node1's uplink
    // where it came in.
    s.update(vec![with_endpoints(
        slice_of(&s, "np-1"),
        vec![scenario::endpoint(n2p1, scenario::ready())],
    )]);
    s.wait_backends(&np, "internal", &[&format!("{}:8080", n2p1.ip)]);
    // Warm the neighbour entries (XDP leaves packets to TC while a MAC is unknown).
    assert_eq!(s.client(s.cluster.outside(), &np, 2, Mode::Tcp, T).ok, 2);
    let before = tc_ingress_packets(&s);
    let t = s.client(s.cluster.outside(), &np, 30, Mode::Tcp, T);
    assert_eq!((t.ok, t.names()), (30, vec!["n2p1"]), "{t:?}");
    let tc = tc_ingress_packets(&s) - before;
    // 30 flows × ≥ 8 packets crossed the uplink; TC saw (almost) none of them.
    assert!(
        tc < 30,
        "TC ingress saw {tc} packets: XDP did not transmit them"
    );
    let t = s.client(
        s.cluster.outside(),
        &format!("{node1}:{}", scenario::NODEPORT_UDP),
        20,
        Mode::Udp,
        T,
    );
    assert_eq!(t.ok, 20, "{t:?}");
    let t = s.client(
        s.cluster.outside(),
        &format!("{}:80", scenario::LB_IP),
        10,
        Mode::Tcp,
        T,
    );
    assert_eq!(
        (t.ok, t.names()),
        (10, vec!["n2p2"]),
        "LB VIP to a remote backend through XDP: {t:?}"
    );
    let t = s.client(
        s.cluster.outside(),
        &format!("{}:80", scenario::LB_DENY_IP),
        2,
        Mode::Tcp,
        Duration::from_millis(700),
    );
    assert_eq!(
        (t.ok, t.timeout),
        (0, 2),
        "XDP drops what source ranges exclude: {t:?}"
    );
}

#[test]
fn a_full_service_map_fails_only_the_service_that_does_not_fit_until_room_frees() {
    use tollgate_tests::{
        agent::{admin_get, metric, metric_opt},
        k8s, wait_for,
    };
    // 16 entries (frontends, slots and each ClusterIP's other-ports entry): web (1 frontend +
    // 2 slots + 1) and small (1 + 1 + 1) fit; big (1 + 10 + 1) does not, with 9 free.
    let svc_and_slice = |name: &str, ip: &str, eps: Vec<serde_json::Value>| {
        vec![
            k8s::service("default", name, ip, &[("http", 80)]),
            k8s::slice(
                "default",
                &format!("{name}-1"),
                name,
                &[("http", 8080)],
                eps,
            ),
        ]
    };
    let big_eps: Vec<serde_json::Value> = (1..=10)
        .map(|i| k8s::endpoint(&format!("10.244.9.{i}"), "node2"))
        .collect();
    let s = Scenario::with_objects(
        tollgate_tests::cluster::ClusterSpec::default(),
        &["--lb-map-size", "16"],
        |c| {
            let ep = |pod: &str| {
                let node = format!("node{}", &pod[1..2]);
                k8s::endpoint(&c.pod(pod).ip.to_string(), &node)
            };
            let mut o = svc_and_slice("web", scenario::WEB, vec![ep("n1p1"), ep("n2p1")]);
            o.extend(svc_and_slice(
                "small",
                "10.96.0.41",
                vec![k8s::endpoint("10.244.9.100", "node2")],
            ));
            o
        },
    );
    let node1 = s.node("node1");
    let web = format!("{}:80", scenario::WEB);
    s.update(svc_and_slice("big", "10.96.0.40", big_eps));
    wait_for("big to be refused", Duration::from_secs(10), || {
        let text = admin_get(node1, "/metrics").1;
        metric_opt(&text, "tollgate_dataplane_unprogrammed_services")
            .filter(|n| *n == 1.0)
            .map(|_| text)
    });
    assert_eq!(s.backends(node1, "10.96.0.40:80", "internal"), None);
    assert_eq!(
        s.backends(node1, "10.96.0.41:80", "internal"),
        Some(vec!["10.244.9.100:8080".to_string()])
    );
    let t = s.client(s.pod("n1p2").placement(), &web, 10, Mode::Tcp, T);
    assert_eq!(t.ok, 10, "the services that fit are served: {t:?}");
    let text = admin_get(node1, "/metrics").1;
    assert!(
        metric(
            &text,
            "tollgate_dataplane_write_errors_total{reason=\"capacity\"}"
        ) >= 1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "tollgate_dataplane_unprogrammed_services"),
        1.0
    );
    assert!(
        s.agents[0]
            .logs()
            .contains("tg_svc_v1 is full: 12 more entries needed, 9 free"),
        "the log names the map and the shortfall"
    );

    // A failed write leaves no other-ports entry behind.
    assert_eq!(
        other_ports_ips(&s, node1),
        [scenario::WEB, "10.96.0.41"],
        "big's is not there"
    );
    // Removing small frees 3 entries: big is retried and fits, unchanged itself.
    s.remove("Service", "small");
    s.remove("EndpointSlice", "small-1");
    let want: Vec<String> = (1..=10).map(|i| format!("10.244.9.{i}:8080")).collect();
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    // On node1, the node under test (wait_backends would also accept node2 alone).
    s.wait_backends_on(node1, "10.96.0.40:80", "internal", &want);
    assert_eq!(s.backends(node1, "10.96.0.41:80", "internal"), None);
    let text = admin_get(node1, "/metrics").1;
    assert_eq!(
        metric_opt(&text, "tollgate_dataplane_unprogrammed_services"),
        Some(0.0)
    );
    let t = s.client(s.pod("n1p2").placement(), &web, 10, Mode::Tcp, T);
    assert_eq!(t.ok, 10, "{t:?}");
    assert_eq!(
        other_ports_ips(&s, node1),
        ["10.96.0.10", "10.96.0.40"],
        "small's went with it"
    );
}

#[test]
fn a_frontend_stays_with_the_service_that_has_it_until_that_one_lets_go() {
    use tollgate_tests::{
        agent::{admin_get, metric_opt},
        wait_for,
    };
    let mut s = Scenario::new();
    let node1 = s.cluster.node("node1");
    let names = |s: &Scenario| -> Vec<String> {
        s.maps(node1)["services"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["name"].as_str().map(String::from))
            .collect()
    };
    // web renamed in one manifest write: the new name sorts first, so its change comes before
    // the old one's removal. Its frontend and ClusterIP pass on, nothing is reported.
    {
        let mut objects = s.objects.borrow_mut();
        for o in objects.iter_mut() {
            if o["kind"] == "Service" && o["metadata"]["name"] == "web" {
                o["metadata"]["name"] = "a-web".into();
            }
            if o["kind"] == "EndpointSlice" && o["metadata"]["name"] == "web-1" {
                o["metadata"]["labels"]["kubernetes.io/service-name"] = "a-web".into();
            }
        }
        s.cluster.write_manifest(&objects);
    }
    wait_for("the rename", Duration::from_secs(10), || {
        let n = names(&s);
        (n.iter().any(|n| n == "a-web") && !n.iter().any(|n| n == "web")).then_some(())
    });
    let web = format!("{}:80", scenario::WEB);
    let t = s.client(s.pod("n1p2").placement(), &web, 10, Mode::Tcp, T);
    assert_eq!((t.ok, t.names()), (10, vec!["n1p1", "n2p1"]), "{t:?}");
    let t = s.client(
        s.pod("n1p2").placement(),
        &format!("{}:9999", scenario::WEB),
        1,
        Mode::Tcp,
        T,
    );
    assert_eq!(t.refused, 1, "its other ports are still refused: {t:?}");
    let text = admin_get(node1, "/metrics").1;
    assert_eq!(
        metric_opt(
            &text,
            "tollgate_dataplane_write_errors_total{reason=\"taken\"}"
        ),
        None,
        "{text}"
    );

    // A Service on port 80 with externalIPs, served by one pod.
    let external = |s: &Scenario, name: &str, cluster_ip: &str, ips: &[&str], pod: &str| {
        vec![
            scenario::service(
                name,
                serde_json::json!({"clusterIP": cluster_ip, "externalIPs": ips,
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
            ),
            scenario::slice(
                &format!("{name}-1"),
                name,
                "IPv4",
                serde_json::json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
                vec![scenario::endpoint(s.pod(pod), scenario::ready())],
            ),
        ]
    };
    // A second Service with ext's externalIP and port: ext keeps it, dup waits (reported).
    let ext = format!("{}:80", scenario::EXTERNAL_IP);
    s.update(external(
        &s,
        "dup",
        "10.96.0.77",
        &[scenario::EXTERNAL_IP],
        "n2p2",
    ));
    wait_for("dup to be refused", Duration::from_secs(10), || {
        let text = admin_get(node1, "/metrics").1;
        (metric_opt(&text, "tollgate_dataplane_unprogrammed_services") == Some(1.0)).then_some(())
    });
    let text = admin_get(node1, "/metrics").1;
    assert!(
        metric_opt(
            &text,
            "tollgate_dataplane_write_errors_total{reason=\"taken\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(
        s.agents[0]
            .logs()
            .contains("ExternalIP 203.0.113.10:80/TCP is already Service default/ext's"),
        "the log names the frontend and its holder"
    );
    let t = s.client(s.cluster.outside(), &ext, 10, Mode::Tcp, T);
    assert_eq!((t.ok, t.names()), (10, vec!["n1p2"]), "still ext's: {t:?}");
    // A restart (even SIGKILL) leaves it with ext, although dup sorts first: the new agent
    // holds each pinned frontend for the Service that had it while it writes the first state.
    // Per frontend, not per Service: while no agent runs, a-new (which sorts first and has a
    // frontend of its own) claims ext's address too; ext keeps it, a-new waits.
    let other_ip = "203.0.113.77";
    let a_new = |s: &Scenario, ips: &[&str]| external(s, "a-new", "10.96.0.78", ips, "n1p1");
    s.update(a_new(&s, &[other_ip]));
    let (n1p1, n2p2) = (
        format!("{}:8080", s.pod("n1p1").ip),
        format!("{}:8080", s.pod("n2p2").ip),
    );
    s.wait_backends_on(node1, &format!("{other_ip}:80"), "internal", &[&n1p1]);
    s.agents[0].kill9();
    s.update(a_new(&s, &[other_ip, scenario::EXTERNAL_IP]));
    s.agents[0] = tollgate_tests::agent::start_agent(node1, &s.source, &[]);
    let t = s.client(s.cluster.outside(), &ext, 10, Mode::Tcp, T);
    assert_eq!(
        (t.ok, t.names()),
        (10, vec!["n1p2"]),
        "still ext's after a restart: {t:?}"
    );
    let text = admin_get(node1, "/metrics").1;
    assert_eq!(
        metric_opt(&text, "tollgate_dataplane_unprogrammed_services"),
        Some(2.0),
        "dup and a-new wait: {text}"
    );
    assert!(
        s.agents[0]
            .logs()
            .contains("ExternalIP 203.0.113.10:80/TCP is already Service default/ext's"),
        "the log names the frontend and its holder"
    );
    // ext goes: the waiting Services are tried again, a-new (first by name) takes the frontend.
    s.remove("Service", "ext");
    s.remove("EndpointSlice", "ext-1");
    s.wait_backends_on(node1, &ext, "internal", &[&n1p1]);
    let t = s.client(s.cluster.outside(), &ext, 10, Mode::Tcp, T);
    assert_eq!((t.ok, t.names()), (10, vec!["n1p1"]), "now a-new's: {t:?}");
    // a-new goes while no agent runs: the restarted agent holds its frontend for it only while
    // the first state is tried, then dup takes it.
    s.agents[0].kill9();
    s.remove("Service", "a-new");
    s.remove("EndpointSlice", "a-new-1");
    s.agents[0] = tollgate_tests::agent::start_agent(node1, &s.source, &[]);
    s.wait_backends_on(node1, &ext, "internal", &[&n2p2]);
    let t = s.client(s.cluster.outside(), &ext, 10, Mode::Tcp, T);
    assert_eq!((t.ok, t.names()), (10, vec!["n2p2"]), "now dup's: {t:?}");
    let text = admin_get(node1, "/metrics").1;
    assert_eq!(
        metric_opt(&text, "tollgate_dataplane_unprogrammed_services"),
        Some(0.0)
    );
}

/// The ClusterIPs `tollgate maps` lists as refusing the ports their Services do not define.
fn other_ports_ips(s: &Scenario, node: &tollgate_tests::Node) -> Vec<String> {
    s.maps(node)["other_ports"]["cluster_ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.as_str().map(String::from))
        .collect()
}

#[test]
fn bpftool_prints_every_pinned_map_with_field_names() {
    // Maglev on, so the NodePort's service port has a table to print; an IPv6 NodePort for
    // IPv6 fragments.
    let s = Scenario::with_objects(Default::default(), &["--lb-algorithm", "maglev"], |c| {
        [scenario::objects(c), scenario::nodeport6(c)].concat()
    });
    let node1 = s.node("node1");
    // Traffic that leaves an entry in every map: a NodePort flow from outside to a remote
    // backend (conntrack), a ClusterIP service with affinity (affinity, socket LB), UDP
    // from a pod (reverse socket translation) and a fragmented datagram from outside.
    let np = format!("{}:{}", node1.ip, scenario::NODEPORT);
    let t = s.client(s.cluster.outside(), &np, 4, Mode::Tcp, T);
    assert_eq!(t.ok, 4, "{t:?}");
    let affinity = format!("{}:80", scenario::AFFINITY);
    let t = s.client(s.pod("n1p2").placement(), &affinity, 2, Mode::Tcp, T);
    assert_eq!(t.ok, 2, "{t:?}");
    let dns = format!("{}:53", scenario::DNS);
    let t = s.client(s.pod("n1p2").placement(), &dns, 2, Mode::UdpUnconnected, T);
    assert_eq!(t.ok, 2, "{t:?}");
    // A datagram in IPv4 fragments from outside (the first fragment's ports).
    let np_udp = format!("{}:{}", node1.ip, scenario::NODEPORT_UDP);
    let t = s.client(s.cluster.outside(), &np_udp, 1, Mode::UdpLarge, T);
    assert_eq!(t.ok, 1, "{t:?}");
    let np6_udp = format!("[{}]:{}", node1.ip6, scenario::NODEPORT6_UDP);
    let t = s.client(s.cluster.outside(), &np6_udp, 1, Mode::UdpLarge, T);
    assert_eq!(t.ok, 1, "{t:?}");

    let fields: &[(&str, &[&str])] = &[
        ("tg_ifstats_v1", &["ifindex", "hook", "packets"]),
        (
            "tg_svc_v1",
            &["addr", "scope", "slot", "backend_id", "rev_nat_id"],
        ),
        ("tg_backend_v1", &["addr", "port", "proto", "flags"]),
        ("tg_revnat_v1", &["addr", "port"]),
        (
            "tg_ct_v2",
            &["saddr", "dir", "nat_addr", "nat_port", "last_seen"],
        ),
        ("tg_ctmark_v1", &["flows"]),
        ("tg_feport_v1", &["value"]),
        ("tg_frag_v1", &["saddr", "id", "proto", "sport", "dport"]),
        ("tg_frag6_v1", &["saddr", "id", "proto", "sport", "dport"]),
        ("tg_affinity_v1", &["client", "service_id", "last_used"]),
        ("tg_sockct_v1", &["cookie", "backend_id", "service_id"]),
        ("tg_sockrev_v1", &["cookie", "addr", "port"]),
        ("tg_tcprev_v1", &[]),
        ("tg_tcpslot_v1", &["cookie", "rev", "backend_addr", "port"]),
        ("tg_tcpheld_v1", &["value"]),
        ("tg_peerport_v1", &["value"]),
        ("tg_srcrange_v1", &["rev_nat_id", "addr"]),
        ("tg_svccidr_v1", &["addr", "dropped"]),
        ("tg_cidrbits_v1", &["value"]),
        ("tg_maglev_v2", &["service_id", "chunk", "backends"]),
        (
            "tg_svcstat_v1",
            &["packets", "bytes", "connections", "refused"],
        ),
        ("tg_bestat_v1", &["packets", "bytes", "connections"]),
        ("tg_svcinfo_v1", &["namespace", "name", "port_name"]),
        (
            "tg_config_v2",
            &["host_netns_cookie", "snat_port_min", "ready"],
        ),
    ];
    let names: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        tollgate_common::MAP_NAMES,
        "every map is checked, in MAP_NAMES order"
    );
    for (map, want) in fields {
        if *map == tollgate_common::lb::sockrev::TCP_NAME {
            // Socket storage has no key iteration, so nothing to dump: it is pinned, with BTF.
            let out = node1.output({
                let mut c = std::process::Command::new("bpftool");
                c.args(["-j", "map", "show", "pinned"])
                    .arg(node1.bpffs.join(map));
                c
            });
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success()
                    && text.contains("\"type\":\"sk_storage\"")
                    && text.contains("\"btf_id\":"),
                "bpftool map show {map}: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            continue;
        }
        let out = node1.output({
            let mut c = std::process::Command::new("bpftool");
            c.args(["map", "dump", "pinned"]).arg(node1.bpffs.join(map));
            c
        });
        assert!(
            out.status.success(),
            "bpftool {map}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        for field in *want {
            assert!(
                text.contains(&format!("\"{field}\": ")),
                "bpftool dump of {map} lacks field {field}: {}",
                &text[..text.len().min(2000)]
            );
        }
    }
}

/// `--socket-lb-peer=false` (Cilium's socket-LB peer option off): TCP connections are still
/// balanced, but keep no reverse record, so getpeername() shows the backend; UDP replies still
/// come from the service address. (The default is covered above: the service address.)
#[test]
fn socket_lb_peer_off_shows_the_backend_to_getpeername() {
    let s = Scenario::with(Default::default(), &["--socket-lb-peer=false"]);
    let web = format!("{}:80", scenario::WEB);
    let t = s.client(s.pod("n1p2").placement(), &web, 20, Mode::Tcp, T);
    assert_eq!(t.ok, 20, "{t:?}");
    assert_eq!(t.names(), ["n1p1", "n2p1"], "{t:?}");
    let backends = [
        scenario::pod_addr(s.pod("n1p1"), 8080).to_string(),
        scenario::pod_addr(s.pod("n2p1"), 8080).to_string(),
    ];
    assert!(
        !t.peers.is_empty() && t.peers.iter().all(|p| backends.contains(p)),
        "getpeername shows a backend, not {web}: {t:?}"
    );
    let dns = format!("{}:53", scenario::DNS);
    let t = s.client(s.pod("n2p1").placement(), &dns, 10, Mode::Udp, T);
    assert_eq!(t.ok, 10, "{t:?}");
    assert_eq!(t.peers, std::slice::from_ref(&dns), "{t:?}");
}

/// The TCP reverse records of a node: (slot, slot content) of every slot whose bit in
/// `tg_tcpheld_v1` is set.
fn held_slots(node: &tollgate_tests::cluster::Node) -> Vec<(u32, TcpRevSlot)> {
    let (slots, bits) = (reverse_slots(node), held_bits(node));
    let words: Vec<u64> = (0..sockrev::HELD_WORDS)
        .map(|w| bits.get(&w, 0).unwrap())
        .collect();
    (0..sockrev::SLOTS)
        .filter(|&i| {
            let (word, bit) = sockrev::held_bit(i);
            words[word as usize] & bit != 0
        })
        .map(|i| (i, slots.get(&i, 0).unwrap()))
        .collect()
}

fn reverse_slots(node: &tollgate_tests::cluster::Node) -> Array<MapData, TcpRevSlot> {
    let data = MapData::from_pin(node.bpffs.join(sockrev::SLOT_NAME)).unwrap();
    Array::try_from(Map::Array(data)).unwrap()
}

fn held_bits(node: &tollgate_tests::cluster::Node) -> Array<MapData, u64> {
    let data = MapData::from_pin(node.bpffs.join(sockrev::HELD_NAME)).unwrap();
    Array::try_from(Map::Array(data)).unwrap()
}

/// A connected TCP socket's getpeername() record takes the slot of its socket cookie (no
/// allocation), gives it back when the socket closes (the sock_release hook), and falls back
/// to the socket's own storage when its slot is held by another socket: getpeername() shows
/// the service address on both paths.
#[test]
fn tcp_reverse_records_use_cookie_slots_given_back_at_close_with_storage_fallback() {
    let s = Scenario::new();
    let node1 = s.node("node1");
    let web = format!("{}:80", scenario::WEB);
    let web_addr = v4_mapped(u32::from(scenario::WEB.parse::<Ipv4Addr>().unwrap()).to_be());
    let of_web = |v: &TcpRevSlot| v.rev.addr == web_addr && v.rev.port == 80u16.to_be();

    let mut session = s.spawn_session(
        s.pod("n1p2").placement(),
        &web,
        10,
        Duration::from_millis(100),
    );
    let held = held_slots(node1);
    let open: Vec<_> = held.iter().filter(|(_, v)| of_web(v)).collect();
    assert_eq!(open.len(), 1, "one open connection, one slot: {held:?}");
    let (slot, record) = open[0];
    assert_eq!(*slot, sockrev::slot(record.cookie), "{held:?}");
    let t = Scenario::finish(&mut session, Duration::from_secs(10));
    assert_eq!(t.ok, 10, "{t:?}");
    assert_eq!(t.peers, std::slice::from_ref(&web), "{t:?}");
    let held = held_slots(node1);
    assert!(
        !held.iter().any(|(_, v)| of_web(v)),
        "the closed socket gave its slot back: {held:?}"
    );
    // MPTCP: the connect hook sees the kernel's subflow, which the kernel closes without the
    // release hook, so it must take no slot (getpeername asks the MPTCP socket, which has no
    // record: it shows the backend). The connections are balanced all the same.
    let t = s.client(s.pod("n1p2").placement(), &web, 20, Mode::Mptcp, T);
    assert_eq!(t.ok, 20, "{t:?}");
    assert_eq!(t.names(), ["n1p1", "n2p1"], "{t:?}");
    let held = held_slots(node1);
    assert!(
        !held.iter().any(|(_, v)| of_web(v)),
        "MPTCP subflows hold no slot: {held:?}"
    );

    // A connection straight to a backend's pod IP (not translated, though its peer port is a
    // backend port, so the release hook looks at the held bits) holds no slot.
    let direct = format!("{}:8080", s.pod("n1p1").ip);
    let t = s.client(s.pod("n1p2").placement(), &direct, 10, Mode::Tcp, T);
    assert_eq!(t.ok, 10, "{t:?}");
    assert_eq!(t.peers, [direct], "{t:?}");
    let held = held_slots(node1);
    assert!(held.is_empty(), "no slot held once all closed: {held:?}");

    // Every slot held (by a cookie no socket has): the records go to socket storage.
    let (mut slots, mut bits) = (reverse_slots(node1), held_bits(node1));
    let taken = TcpRevSlot {
        cookie: u64::MAX,
        ..Default::default()
    };
    for i in 0..sockrev::SLOTS {
        slots.set(i, taken, 0).unwrap();
    }
    for w in 0..sockrev::HELD_WORDS {
        bits.set(w, u64::MAX, 0).unwrap();
    }
    let t = s.client(s.pod("n1p2").placement(), &web, 10, Mode::Tcp, T);
    assert_eq!(t.ok, 10, "{t:?}");
    assert_eq!(
        t.peers,
        std::slice::from_ref(&web),
        "getpeername through socket storage: {t:?}"
    );
    let changed = (0..sockrev::SLOTS)
        .filter(|i| slots.get(i, 0).unwrap() != taken)
        .count();
    assert_eq!(changed, 0, "no held slot was overwritten");
    let released = (0..sockrev::HELD_WORDS)
        .filter(|w| bits.get(w, 0).unwrap() != u64::MAX)
        .count();
    assert_eq!(released, 0, "no held slot was given back by another socket");
    for w in 0..sockrev::HELD_WORDS {
        bits.set(w, 0, 0).unwrap();
    }
    for i in 0..sockrev::SLOTS {
        slots.set(i, TcpRevSlot::default(), 0).unwrap();
    }
}

/// An upgrade from an agent before the held bits (which marked a held slot by its cookie
/// alone): the new agent marks every slot with a cookie held before its programs run, so open
/// sockets keep their records; once the bits exist, only the programs write them.
#[test]
fn held_bits_are_seeded_from_the_slots_an_older_agent_left() {
    use tollgate::dataplane::{Dataplane, held};
    let cluster = tollgate_tests::Cluster::new(&tollgate_tests::ClusterSpec {
        pods_per_node: vec![0],
        cloud: false,
        ..Default::default()
    });
    let node = cluster.node("node1");
    let load = || Dataplane::load(&node.bpffs, &Default::default()).unwrap();
    let record = |cookie: u64| TcpRevSlot {
        cookie,
        ..Default::default()
    };
    drop(load());
    let mut slots = reverse_slots(node);
    slots.set(5, record(0x1_0005), 0).unwrap();
    slots.set(9, record(0), 0).unwrap();
    std::fs::remove_file(node.bpffs.join(sockrev::HELD_NAME)).unwrap();
    let dp = load();
    assert!(held::is_held(dp.pins(), 5).unwrap(), "a slot with a cookie");
    assert!(!held::is_held(dp.pins(), 9).unwrap(), "an empty slot");
    assert_eq!(held_slots(node).len(), 1);
    drop(dp);
    slots.set(7, record(0x1_0007), 0).unwrap();
    let dp = load();
    assert!(
        !held::is_held(dp.pins(), 7).unwrap(),
        "kept bits are not seeded again"
    );
}

/// The dataplane bench's floor (`bench::floor`): the agent's hooks on a node (the cgroup's
/// nine socket hooks, TCX on the uplink and on every pod interface), with programs that pass
/// pod traffic untouched; all gone again once dropped.
#[test]
fn bench_floor_attaches_the_agents_hooks_and_passes_traffic() {
    use aya::programs::{SchedClassifier, TcAttachType};
    use tollgate::dataplane::programs;
    use tollgate_tests::bench::floor::Floor;
    let cluster = tollgate_tests::Cluster::new(&tollgate_tests::ClusterSpec {
        pods_per_node: vec![2],
        cloud: false,
        ..Default::default()
    });
    let node = cluster.node("node1");
    let server = cluster.pod("n1p2");
    let _serving = scenario::serve(server, "[::]:8080", "[::]:5353");
    let hooks = || {
        let shown = tollgate_tests::run(
            "bpftool",
            &["-j", "cgroup", "show", &node.cgroup.to_string_lossy()],
        );
        let cgroup: Vec<serde_json::Value> = serde_json::from_str(if shown.trim().is_empty() {
            "[]"
        } else {
            &shown
        })
        .unwrap();
        let mut names: BTreeSet<String> = cgroup
            .iter()
            .map(|p| p["name"].as_str().unwrap_or_default().to_owned())
            .collect();
        let mut tcx = vec![
            ("eth0", TcAttachType::Ingress),
            ("eth0", TcAttachType::Egress),
        ];
        tcx.extend(
            node.pods
                .iter()
                .map(|p| (p.host_iface.as_str(), TcAttachType::Ingress)),
        );
        for (iface, direction) in tcx {
            let (_, attached) = node
                .ns
                .run_in(|| SchedClassifier::query_tcx(iface, direction))
                .unwrap();
            names.extend(
                attached
                    .iter()
                    .map(|p| format!("{}@{iface}", p.name_as_str().unwrap_or_default())),
            );
        }
        names
    };
    assert_eq!(hooks(), BTreeSet::new(), "nothing attached before");
    let floor = Floor::attach(node).unwrap();
    let mut expected: BTreeSet<String> = programs::SOCK
        .iter()
        .chain(&[programs::SOCK_RELEASE])
        .map(|p| (*p).to_owned())
        .collect();
    expected.insert(format!("{}@eth0", programs::TC_INGRESS));
    expected.insert(format!("{}@eth0", programs::TC_EGRESS));
    for pod in &node.pods {
        expected.insert(format!("{}@{}", programs::TC_FROM_POD, pod.host_iface));
    }
    assert_eq!(hooks(), expected);
    let client = cluster.pod("n1p1").placement();
    for (port, mode, count) in [(8080, Mode::Tcp, 20), (5353, Mode::Udp, 10)] {
        let to = scenario::pod_addr(server, port).to_string();
        let t = scenario::run_client(client, &to, count, mode, T);
        assert_eq!(t.ok, count, "{mode:?} to {to}: {t:?}");
        assert_eq!(t.peers, std::slice::from_ref(&to), "{t:?}");
    }
    drop(floor);
    // The links go with their last fd; a fork by a test running alongside holds copies of the
    // fds until its exec closes them.
    tollgate_tests::wait_for("every floor hook to go", Duration::from_secs(5), || {
        hooks().is_empty().then_some(())
    });
}

mod programmer {
    //! The programmer in process, on real maps in a test-owned bpffs directory.

    use std::{
        sync::Arc,
        time::{Duration, Instant},
    };

    use tollgate::{
        admin::Health,
        dataplane::{
            Dataplane,
            lbmaps::LbMaps,
            program::{DataplaneMetrics, NodeSettings, Programmer},
            writer::Writer,
        },
        enls::{
            Enls, EnlsConfig, Object, SourceEvent, Update,
            ingest::Kind,
            metrics::{EnlsMetrics, ProgrammingMetrics},
        },
    };
    use tollgate_tests::{BpffsDir, Prefix};

    struct Bed {
        _bpffs: BpffsDir,
        _prefix: Prefix,
        dp: Dataplane,
        enls: Enls,
    }

    impl Bed {
        fn new() -> Self {
            let prefix = Prefix::new();
            let bpffs = BpffsDir::new(&prefix.child("programmer"));
            let dp = Dataplane::load(bpffs.path(), &Default::default()).unwrap();
            let mut enls = Enls::new(EnlsConfig::new("node1"), EnlsMetrics::detached());
            for k in Kind::ALL {
                enls.handle(SourceEvent::ListBegin(k));
            }
            Self {
                _bpffs: bpffs,
                _prefix: prefix,
                dp,
                enls,
            }
        }

        /// Services `from..to`, one port each: an update with that many changes.
        fn services(&mut self, from: usize, to: usize) -> Arc<Update> {
            for i in from..to {
                let service = serde_json::json!({
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": format!("s{i}"), "namespace": "default"},
                    "spec": {
                        "clusterIP": format!("10.96.{}.{}", i / 250, i % 250 + 1),
                        "ports": [{"port": 80}]
                    }
                });
                self.enls
                    .handle(SourceEvent::Apply(Object::Service(Box::new(
                        serde_json::from_value(service).unwrap(),
                    ))));
            }
            for k in Kind::ALL {
                self.enls.handle(SourceEvent::ListDone(k));
            }
            let update = self.enls.sync().expect("a complete state");
            assert_eq!(update.services.len(), to - from);
            Arc::new(update)
        }

        fn programmer(&self) -> Programmer {
            let (purges, _) = tokio::sync::mpsc::unbounded_channel();
            Programmer {
                writer: Writer::new(LbMaps::open(self.dp.pins()).unwrap()),
                settings: NodeSettings {
                    host_netns_cookie: 0,
                    snat_ports: (30_000, 31_000),
                    uplink_addresses: vec![],
                    metadata: None,
                    tcp_peer: true,
                    localhost_nodeports: true,
                    socket_lb_host_only: false,
                },
                health: Health::detached(Duration::from_secs(60)),
                programming: ProgrammingMetrics::detached(),
                metrics: DataplaneMetrics::detached(),
                purges,
                events: tollgate::events::Events::off(
                    "node1",
                    tollgate::events::EventMetrics::detached(),
                ),
            }
        }

        /// Frontend entries in the service map.
        fn frontends(&self) -> usize {
            LbMaps::open(self.dp.pins())
                .unwrap()
                .svc
                .keys()
                .filter(|k| k.as_ref().is_ok_and(|k| k.slot == 0 && !k.is_other_ports()))
                .count()
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// The programmer writes the maps on a thread of its own: a complete state is programmed
    /// while the runtime's only thread is held by a task that never yields (with programming
    /// as a task on the runtime, nothing would be written and this times out).
    #[test]
    fn writes_the_maps_off_the_runtime_threads() {
        let mut bed = Bed::new();
        let update = bed.services(0, 1);
        let programmer = bed.programmer();
        runtime().block_on(async {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let mut programming = programmer.spawn(rx, "(test)".into()).unwrap();
            tx.send(update).await.unwrap();
            // Hold the runtime's only thread, without an await, until the service is written.
            let deadline = Instant::now() + Duration::from_secs(30);
            while bed.frontends() == 0 {
                assert!(
                    Instant::now() < deadline,
                    "nothing programmed while the runtime's only thread was held"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            // The programmer stops when the ENLS does.
            drop(tx);
            tokio::time::timeout(Duration::from_secs(30), programming.stopped())
                .await
                .expect("the programmer stops when its updates end");
        });
    }

    /// Services in the update [`stop_while_writing`] stops in the middle of.
    const STOPPED_UPDATE: usize = 5000;

    /// Starts writing an update of [`STOPPED_UPDATE`] Services and, once its first is written,
    /// stops the programmer with `timeout`. Returns what `stop` said, and how many frontends
    /// were written just before the stop and just after it returned. Then checks that the
    /// update gets finished and that the next one is not written.
    fn stop_while_writing(timeout: Duration) -> (bool, usize, usize) {
        const N: usize = STOPPED_UPDATE;
        let mut bed = Bed::new();
        let first = bed.services(0, N);
        let second = bed.services(N, N + 1);
        let programmer = bed.programmer();
        runtime().block_on(async {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let programming = programmer.spawn(rx, "(test)".into()).unwrap();
            tx.send(first).await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            while bed.frontends() == 0 {
                assert!(Instant::now() < deadline, "the update was never started");
                std::thread::sleep(Duration::from_millis(1));
            }
            let before = bed.frontends();
            let stopped = programming.stop(timeout).await;
            let after = bed.frontends();
            while bed.frontends() < N {
                assert!(Instant::now() < deadline, "the update was not finished");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Nothing more is written.
            let _ = tx.send(second).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(bed.frontends(), N, "no update after the stop");
            (stopped, before, after)
        })
    }

    /// Stopping (the agent's SIGTERM) lets the update being written finish and writes no
    /// other: the maps hold all of a large update's services, not the part written so far.
    #[test]
    fn stopping_finishes_the_update_being_written_and_writes_no_other() {
        const N: usize = STOPPED_UPDATE;
        let (stopped, before, after) = stop_while_writing(Duration::from_secs(60));
        assert!(stopped, "stopped");
        assert!(
            before < N,
            "stopped in the middle of the update ({before} of {N} written)"
        );
        assert_eq!(
            after, N,
            "the update being written was finished before the stop returned"
        );
    }

    /// A stop that waits less than the update being written takes says so (`false`: the
    /// agent logs that it terminates anyway); the update is still finished, and no other
    /// written after it.
    #[test]
    fn a_stop_that_times_out_says_so_and_the_update_still_finishes() {
        const N: usize = STOPPED_UPDATE;
        let (stopped, _, after) = stop_while_writing(Duration::from_millis(1));
        assert!(
            after < N,
            "still in the middle of the update after the stop ({after} of {N} written)"
        );
        assert!(!stopped, "a 1 ms stop in the middle of {N} Services");
    }
}
