//! Packet tests: synthetic packets through the TC and XDP programs (`BPF_PROG_TEST_RUN`),
//! checking the rewritten bytes, both checksums (recomputed here independently), MACs and the
//! verdict. They run in a test-bed node namespace so the programs' FIB lookups resolve.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "end-to-end tests panic with clear messages"
)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::{Value, json};
use tollgate::{
    dataplane::{Dataplane, inspect, lbmaps::LbMaps, writer::Writer},
    enls::{Enls, EnlsConfig, Object, SourceEvent, ingest::Kind, metrics::EnlsMetrics},
};
use tollgate_common::lb::config::Config;
use tollgate_tests::{Cluster, ClusterSpec, Node};

const TC_ACT_UNSPEC: u32 = u32::MAX; // -1 as the kernel reports it
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 11);
const NODE6: &str = "fd00:77::11";
const PEER_NODE6: &str = "fd00:77::12";
const CLIENT6: &str = "fd00:77::100";
const REMOTE_POD6: &str = "fd00:244:2::11";
const PEER_NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 12);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 100);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 11);
const LOCAL_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 1, 0];
const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x12];

// --- packets -------------------------------------------------------------------------------

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for chunk in data.chunks(2) {
        let w = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        acc += u32::from(w);
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn ipv4(proto: u8, src: Ipv4Addr, dst: Ipv4Addr, l4: &[u8]) -> Vec<u8> {
    let len = (20 + l4.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0];
    ip[2..4].copy_from_slice(&len.to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = fold(sum16(&ip, 0));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(l4);
    ip
}

/// [`ipv4`] with 4 bytes of options (three No-Operations and an End of Options List): a
/// 24-byte header.
fn ipv4_with_options(proto: u8, src: Ipv4Addr, dst: Ipv4Addr, l4: &[u8]) -> Vec<u8> {
    let plain = ipv4(proto, src, dst, l4);
    let mut ip = plain[..20].to_vec();
    ip[0] = 0x46;
    ip[2..4].copy_from_slice(&((24 + l4.len()) as u16).to_be_bytes());
    ip[10..12].copy_from_slice(&[0, 0]);
    ip.extend_from_slice(&[1, 1, 1, 0]);
    let c = fold(sum16(&ip, 0));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(l4);
    ip
}

fn ipv6(proto: u8, src: &IpAddr, dst: &IpAddr, l4: &[u8]) -> Vec<u8> {
    let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) else {
        panic!("ipv6() takes IPv6 addresses: {src} → {dst}");
    };
    let mut ip = vec![0x60, 0, 0, 0, 0, 0, proto, 64];
    ip[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
    ip.extend_from_slice(&s.octets());
    ip.extend_from_slice(&d.octets());
    ip.extend_from_slice(l4);
    ip
}

/// IPv6 extension headers: (type, the header's bytes; its first byte, Next Header, is filled
/// in by [`ipv6_exts`]).
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DEST_OPTS: u8 = 60;

/// An 8-byte Hop-by-Hop or Destination Options header: one PadN option.
fn options_header() -> Vec<u8> {
    vec![0, 0, 1, 4, 0, 0, 0, 0]
}

/// A Fragment header: `offset` in bytes (a multiple of 8), `more` = more fragments follow.
fn fragment_header(id: u32, offset: usize, more: bool) -> Vec<u8> {
    assert_eq!(offset % 8, 0);
    let field = offset as u16 | u16::from(more);
    let mut h = vec![0, 0];
    h.extend_from_slice(&field.to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h
}

/// An IPv6 packet with extension headers `exts` in that order before `payload` (of protocol
/// `proto`): each header's Next Header names the one after it.
fn ipv6_exts(
    src: &IpAddr,
    dst: &IpAddr,
    exts: &[(u8, Vec<u8>)],
    proto: u8,
    payload: &[u8],
) -> Vec<u8> {
    let first = exts.first().map_or(proto, |e| e.0);
    let mut rest = Vec::new();
    for (i, (_, h)) in exts.iter().enumerate() {
        let mut h = h.clone();
        h[0] = exts.get(i + 1).map_or(proto, |e| e.0);
        rest.extend_from_slice(&h);
    }
    rest.extend_from_slice(payload);
    ipv6(first, src, dst, &rest)
}

/// Offset and protocol of the upper-layer header of an IPv6 packet (`ip` from its first
/// byte), after its extension headers; a later fragment stops at its Fragment header.
fn ipv6_upper_layer(ip: &[u8]) -> (usize, u8) {
    let (mut off, mut next) = (40, ip[6]);
    loop {
        match next {
            HOP_BY_HOP | ROUTING | DEST_OPTS => {
                next = ip[off];
                off += (usize::from(ip[off + 1]) + 1) * 8;
            }
            FRAGMENT => {
                let field = u16::from_be_bytes([ip[off + 2], ip[off + 3]]);
                next = ip[off];
                off += 8;
                if field & !7 != 0 {
                    return (off, next);
                }
            }
            _ => return (off, next),
        }
    }
}

fn pseudo(src: &IpAddr, dst: &IpAddr, proto: u8, len: usize) -> u32 {
    let mut b = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            b.extend_from_slice(&s.octets());
            b.extend_from_slice(&d.octets());
            b.extend_from_slice(&[0, proto]);
            b.extend_from_slice(&(len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            b.extend_from_slice(&s.octets());
            b.extend_from_slice(&d.octets());
            b.extend_from_slice(&(len as u32).to_be_bytes());
            b.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("mixed families"),
    }
    sum16(&b, 0)
}

fn tcp(src: &IpAddr, dst: &IpAddr, sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&1000u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t.extend_from_slice(payload);
    let c = fold(sum16(&t, pseudo(src, dst, 6, t.len())));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

fn udp(
    src: &IpAddr,
    dst: &IpAddr,
    sport: u16,
    dport: u16,
    payload: &[u8],
    zero_checksum: bool,
) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(payload);
    if !zero_checksum {
        let c = fold(sum16(&u, pseudo(src, dst, 17, u.len())));
        u[6..8].copy_from_slice(&c.to_be_bytes());
    }
    u
}

fn ether(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4 frame a pod sends (as its host-side veth receives it).
fn pod_frame(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    ether(
        [2, 0, 0, 0, 2, 0],
        [2, 0, 0, 0, 3, 0],
        0x0800,
        &ipv4(proto, src, dst, l4),
    )
}

fn syn4(dst: Ipv4Addr, dport: u16, sport: u16, node_mac: [u8; 6]) -> Vec<u8> {
    let (s, d) = (IpAddr::V4(CLIENT), IpAddr::V4(dst));
    ether(
        node_mac,
        CLIENT_MAC,
        0x0800,
        &ipv4(6, CLIENT, dst, &tcp(&s, &d, sport, dport, 0x02, &[])),
    )
}

/// A parsed IPv4/IPv6 TCP or UDP frame, checksums verified.
#[derive(Debug)]
struct Seen {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
    tcp_flags: u8,
    l4: Vec<u8>,
}

fn parse(frame: &[u8]) -> Seen {
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let (src, dst, proto, l4): (IpAddr, IpAddr, u8, &[u8]) = match ethertype {
        0x0800 => {
            let ip = &frame[14..];
            let ihl = usize::from(ip[0] & 0xf) * 4;
            assert_eq!(
                fold(sum16(&ip[..ihl], 0)),
                0,
                "IPv4 header checksum wrong: {frame:02x?}"
            );
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let src = IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]));
            let dst = IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
            (src, dst, ip[9], &ip[ihl..total])
        }
        0x86dd => {
            let ip = &frame[14..];
            let len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            let s: [u8; 16] = ip[8..24].try_into().unwrap();
            let d: [u8; 16] = ip[24..40].try_into().unwrap();
            let (l4, proto) = ipv6_upper_layer(ip);
            (
                IpAddr::V6(Ipv6Addr::from(s)),
                IpAddr::V6(Ipv6Addr::from(d)),
                proto,
                &ip[l4..40 + len],
            )
        }
        other => panic!("ethertype {other:#x}"),
    };
    if proto == 6 || proto == 17 || proto == 58 {
        let zero_udp = proto == 17 && l4[6] == 0 && l4[7] == 0 && src.is_ipv4();
        if !zero_udp {
            assert_eq!(
                fold(sum16(l4, pseudo(&src, &dst, proto, l4.len()))),
                0,
                "L4 checksum wrong: {frame:02x?}"
            );
        }
    }
    if proto == 1 {
        assert_eq!(fold(sum16(l4, 0)), 0, "ICMP checksum wrong: {frame:02x?}");
    }
    Seen {
        dst_mac: frame[0..6].try_into().unwrap(),
        src_mac: frame[6..12].try_into().unwrap(),
        src,
        dst,
        proto,
        sport: u16::from_be_bytes([l4[0], l4[1]]),
        dport: u16::from_be_bytes([l4[2], l4[3]]),
        tcp_flags: if proto == 6 { l4[13] } else { 0 },
        l4: l4.to_vec(),
    }
}

// --- set-up --------------------------------------------------------------------------------

fn endpoint(ip: Ipv4Addr, node: &str) -> Value {
    json!({"addresses": [ip.to_string()], "nodeName": node, "conditions": {"ready": true}})
}

fn objects() -> Vec<Value> {
    let svc = |name: &str, spec: Value| json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": name}, "spec": spec});
    let slice = |name: &str, svc: &str, ports: Value, eps: Vec<Value>| {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "default", "name": name, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": if eps.first().is_some_and(|e| e["addresses"][0].as_str().unwrap().contains(':')) { "IPv6" } else { "IPv4" },
        "ports": ports, "endpoints": eps})
    };
    vec![
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1"},
            "status": {"addresses": [{"type": "InternalIP", "address": NODE.to_string()}, {"type": "InternalIP", "address": NODE6}]}}),
        // Cluster policy, remote backend: DNAT + SNAT, redirected out of the uplink.
        svc(
            "remote",
            json!({"type": "NodePort", "clusterIP": "10.96.0.1", "ports": [
            {"name": "http", "port": 80, "nodePort": 30080}, {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}]}),
        ),
        slice(
            "remote-1",
            "remote",
            json!([{"name": "http", "port": 8080}, {"name": "dns", "port": 5353, "protocol": "UDP"}]),
            vec![endpoint(REMOTE_POD, "node2")],
        ),
        // Local policy, local backend: DNAT only, client address kept.
        svc(
            "local",
            json!({"type": "NodePort", "clusterIP": "10.96.0.2", "externalTrafficPolicy": "Local",
            "ports": [{"name": "http", "port": 80, "nodePort": 30081}]}),
        ),
        slice(
            "local-1",
            "local",
            json!([{"name": "http", "port": 8080}]),
            vec![endpoint(LOCAL_POD, "node1")],
        ),
        // No endpoints: REJECT.
        svc(
            "empty",
            json!({"type": "NodePort", "clusterIP": "10.96.0.3", "ports": [
            {"name": "http", "port": 80, "nodePort": 30099}, {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30098}]}),
        ),
        // IPv6, no endpoints: REJECT.
        svc(
            "empty6",
            json!({"type": "NodePort", "clusterIP": "fd00:96::7", "clusterIPs": ["fd00:96::7"], "ipFamilies": ["IPv6"],
            "ports": [{"name": "http", "port": 80, "nodePort": 30095}, {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30097}]}),
        ),
        // IPv6, Cluster policy, remote backend: DNAT + SNAT.
        svc(
            "remote6",
            json!({"type": "NodePort", "clusterIP": "fd00:96::8", "clusterIPs": ["fd00:96::8"], "ipFamilies": ["IPv6"],
            "ports": [{"name": "http", "port": 80, "nodePort": 30084}, {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30054}]}),
        ),
        slice(
            "remote6-1",
            "remote6",
            json!([{"name": "http", "port": 8080}, {"name": "dns", "port": 5353, "protocol": "UDP"}]),
            vec![
                json!({"addresses": [REMOTE_POD6], "nodeName": "node2", "conditions": {"ready": true}}),
            ],
        ),
        // IPv6, Local policy, local backend.
        svc(
            "six",
            json!({"type": "NodePort", "clusterIP": "fd00:96::6", "clusterIPs": ["fd00:96::6"], "ipFamilies": ["IPv6"],
            "externalTrafficPolicy": "Local", "ports": [{"name": "http", "port": 80, "nodePort": 30086}]}),
        ),
        slice(
            "six-1",
            "six",
            json!([{"name": "http", "port": 8080}]),
            vec![
                json!({"addresses": ["fd00:244:1::11"], "nodeName": "node1", "conditions": {"ready": true}}),
            ],
        ),
    ]
}

fn to_object(v: Value) -> Object {
    match v["kind"].as_str().unwrap() {
        "Service" => Object::Service(Box::new(serde_json::from_value(v).unwrap())),
        "EndpointSlice" => Object::EndpointSlice(Box::new(serde_json::from_value(v).unwrap())),
        "Node" => Object::Node(Box::new(serde_json::from_value(v).unwrap())),
        "ServiceCIDR" => Object::ServiceCidr(Box::new(serde_json::from_value(v).unwrap())),
        k => panic!("{k}"),
    }
}

struct Bench {
    dp: Dataplane,
    eth0: u32,
    eth0_mac: [u8; 6],
}

/// Loads the dataplane (nothing attached), programs the services, and sets up node1's
/// routes and neighbours so FIB lookups resolve. Runs inside node1's namespace.
fn bench(node: &Node) -> Bench {
    bench_with(node, Vec::new(), None)
}

/// [`bench`] with more objects and, with `maglev`, Maglev tables of that size
/// (`--lb-algorithm maglev --maglev-table-size M`).
/// A permanent neighbour entry on node1's eth0, so FIB lookups resolve.
fn permanent_neigh(node: &Node, addr: &str, mac: [u8; 6]) {
    let mac: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    node.ns.ip(&[
        "neigh",
        "replace",
        addr,
        "lladdr",
        &mac.join(":"),
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
}

fn bench_with(node: &Node, extra: Vec<Value>, maglev: Option<u32>) -> Bench {
    node.ns.ip(&[
        "route",
        "add",
        "10.244.2.0/24",
        "via",
        &PEER_NODE.to_string(),
    ]);
    node.ns
        .ip(&["-6", "route", "add", "fd00:244:2::/64", "via", PEER_NODE6]);
    for (addr, mac) in [
        (PEER_NODE6, PEER_MAC),
        (CLIENT6, CLIENT_MAC),
        (&PEER_NODE.to_string(), PEER_MAC),
        (&CLIENT.to_string(), CLIENT_MAC),
    ] {
        permanent_neigh(node, addr, mac);
    }
    let size = maglev.unwrap_or(tollgate_common::lb::maglev::DEFAULT_SIZE);
    let sizes = tollgate::dataplane::MapSizes {
        maglev: tollgate::dataplane::MapSizes::maglev_chunks(size),
        ..Default::default()
    };
    let dp = Dataplane::load(&node.bpffs, &sizes).unwrap();
    let mut writer = Writer::new(LbMaps::open(dp.pins()).unwrap());
    writer.set_maglev(maglev.is_some());
    writer.set_maglev_size(size);
    let mut enls = Enls::new(EnlsConfig::new("node1"), EnlsMetrics::detached());
    for k in Kind::ALL {
        enls.handle(SourceEvent::ListBegin(k));
    }
    for o in objects().into_iter().chain(extra) {
        enls.handle(SourceEvent::Apply(to_object(o)));
    }
    for k in Kind::ALL {
        enls.handle(SourceEvent::ListDone(k));
    }
    let update = enls.sync().unwrap();
    for c in &update.services {
        writer.apply(c).unwrap();
    }
    writer
        .set_service_cidrs(update.service_cidrs.as_deref().unwrap_or_default())
        .unwrap();
    let words = tollgate::dataplane::addr::words;
    writer
        .maps()
        .config
        .set(
            0,
            Config {
                host_netns_cookie: 0,
                snat_v4: words(IpAddr::V4(NODE)),
                snat_v6: words(NODE6.parse().unwrap()),
                snat_port_min: 61000,
                snat_port_max: 65535,
                ready: 1,
                ..Config::default()
            },
            0,
        )
        .unwrap();
    let eth0: u32 = node
        .ns
        .ip(&["-o", "link", "show", "eth0"])
        .split(':')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mac = node.ns.ip(&["-o", "link", "show", "eth0"]);
    let mac = mac
        .split("link/ether ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    let eth0_mac: Vec<u8> = mac
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    Bench {
        dp,
        eth0,
        eth0_mac: eth0_mac.try_into().unwrap(),
    }
}

impl Bench {
    /// Runs a TC program on `frame` as arriving on eth0: the verdict and the packet after it.
    fn tc(&self, program: &'static str, frame: &[u8]) -> (u32, Vec<u8>) {
        self.dp
            .test_run(program, frame, Some(&skb_ctx(self.eth0)))
            .unwrap()
    }

    /// Runs the XDP program on `frame` as arriving on eth0.
    fn xdp(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.dp
            .test_run(
                "tg_xdp_uplink",
                frame,
                Some(&xdp_ctx(frame.len(), self.eth0)),
            )
            .unwrap()
    }
}

/// `__sk_buff` input: ifindex and ingress_ifindex set to `ifindex`.
fn skb_ctx(ifindex: u32) -> Vec<u8> {
    let mut ctx = vec![0u8; 192];
    // struct __sk_buff: ifindex at 40, ingress_ifindex at 36.
    ctx[36..40].copy_from_slice(&ifindex.to_ne_bytes());
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// `xdp_md` input: ingress_ifindex set.
fn xdp_ctx(len: usize, ifindex: u32) -> Vec<u8> {
    let mut ctx = vec![0u8; 24];
    ctx[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// A TCP conntrack entry written by hand (as an agent from before a lookup filter left it):
/// packets `from` → `to` are rewritten to `rewrite` (the destination for FORWARD, the source for
/// REPLY).
fn insert_tcp_flow(
    dp: &Dataplane,
    from: (Ipv4Addr, u16),
    to: (Ipv4Addr, u16),
    rewrite: (Ipv4Addr, u16),
    dir: u8,
) {
    use tollgate::dataplane::addr::words;
    use tollgate_common::lb::ct::{CtEntry, CtKey};
    let key = CtKey {
        saddr: words(IpAddr::V4(from.0)),
        daddr: words(IpAddr::V4(to.0)),
        sport: from.1.to_be(),
        dport: to.1.to_be(),
        proto: 6,
        pad: [0; 3],
    };
    let entry = CtEntry {
        to_addr: words(IpAddr::V4(rewrite.0)),
        to_port: rewrite.1.to_be(),
        dir,
        ..CtEntry::default()
    };
    LbMaps::open(dp.pins())
        .unwrap()
        .ct
        .insert(key, entry, 0)
        .unwrap();
}

fn cluster() -> Cluster {
    Cluster::new(&ClusterSpec {
        pods_per_node: vec![0],
        cloud: false,
        ..Default::default()
    })
}

/// Runs `f` in node1's namespace on the bench `make` builds there ([`bench`],
/// [`bench_with_service_cidrs`]).
fn on_node1(make: fn(&Node) -> Bench, f: impl FnOnce(&Bench) + Send) {
    let c = cluster();
    let node = c.node("node1");
    node.ns.run_in(|| f(&make(node)));
}

// --- tests ---------------------------------------------------------------------------------

#[test]
fn tc_translates_nodeport_to_a_remote_backend_with_snat_and_redirects() {
    on_node1(bench, |b| {
        let pkt = syn4(NODE, 30080, 40000, b.eth0_mac);
        let (verdict, out) = b.tc("tg_tc_ingress", &pkt);
        assert_eq!(verdict, TC_ACT_REDIRECT, "redirected out through the FIB");
        let p = parse(&out);
        assert_eq!(
            (p.dst, p.dport),
            (IpAddr::V4(REMOTE_POD), 8080),
            "DNAT to the backend"
        );
        assert_eq!(
            p.src,
            IpAddr::V4(NODE),
            "SNAT to the node address the client used"
        );
        assert!(
            (61000..=65535).contains(&p.sport),
            "SNAT port from the range: {}",
            p.sport
        );
        assert_eq!(
            (p.dst_mac, p.src_mac),
            (PEER_MAC, b.eth0_mac),
            "MACs of the next hop"
        );
        assert_eq!(p.tcp_flags, 0x02);
        // The backend's reply comes back and is translated to what the client expects.
        let (s, d) = (IpAddr::V4(REMOTE_POD), IpAddr::V4(NODE));
        let reply = ether(
            b.eth0_mac,
            PEER_MAC,
            0x0800,
            &ipv4(6, REMOTE_POD, NODE, &tcp(&s, &d, 8080, p.sport, 0x12, &[])),
        );
        let (verdict, out) = b.tc("tg_tc_ingress", &reply);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let r = parse(&out);
        assert_eq!(
            (r.src, r.sport, r.dst, r.dport),
            (IpAddr::V4(NODE), 30080, IpAddr::V4(CLIENT), 40000)
        );
        assert_eq!(r.dst_mac, CLIENT_MAC);
        // UDP too, with a payload.
        let (s, d) = (IpAddr::V4(CLIENT), IpAddr::V4(NODE));
        let dgram = client4_frame(b, 17, &udp(&s, &d, 5000, 30053, b"query!", false));
        let (_, out) = b.tc("tg_tc_ingress", &dgram);
        let u = parse(&out);
        assert_eq!(
            (u.dst, u.dport, u.src),
            (IpAddr::V4(REMOTE_POD), 5353, IpAddr::V4(NODE))
        );
        assert_eq!(&u.l4[8..], b"query!");
    });
}

#[test]
fn tc_local_policy_keeps_the_client_address_and_handles_udp_without_checksum_and_ipv6() {
    on_node1(bench, |b| {
        let pkt = syn4(NODE, 30081, 40001, b.eth0_mac);
        let (verdict, out) = b.tc("tg_tc_ingress", &pkt);
        assert_eq!(
            verdict, TC_ACT_OK,
            "a local backend is reached through the stack"
        );
        let p = parse(&out);
        assert_eq!(
            (p.src, p.sport, p.dst, p.dport),
            (IpAddr::V4(CLIENT), 40001, IpAddr::V4(LOCAL_POD), 8080)
        );
        // IPv6 NodePort, Local policy.
        let (s, d): (IpAddr, IpAddr) = ("fd00:77::100".parse().unwrap(), NODE6.parse().unwrap());
        let seg = tcp(&s, &d, 40002, 30086, 0x02, &[]);
        let frame = ether(b.eth0_mac, CLIENT_MAC, 0x86dd, &ipv6(6, &s, &d, &seg));
        let (verdict, out) = b.tc("tg_tc_ingress", &frame);
        assert_eq!(verdict, TC_ACT_OK);
        let p = parse(&out);
        assert_eq!(
            (p.dst, p.dport),
            ("fd00:244:1::11".parse::<IpAddr>().unwrap(), 8080),
            "IPv6 DNAT, checksum verified"
        );
        // The rest of the flow: the client's segments to the NodePort and the backend pod's
        // answers are translated (neither may take the fast pass), a segment between two pods
        // passes untouched (it does).
        let backend6: IpAddr = "fd00:244:1::11".parse().unwrap();
        let seg = tcp(&s, &d, 40002, 30086, 0x18, b"GET /");
        let frame = ether(b.eth0_mac, CLIENT_MAC, 0x86dd, &ipv6(6, &s, &d, &seg));
        let (verdict, out) = b.tc("tg_tc_ingress", &frame);
        let p = parse(&out);
        assert_eq!((verdict, p.dst, p.dport), (TC_ACT_OK, backend6, 8080));
        let seg = tcp(&backend6, &s, 8080, 40002, 0x10, &[]);
        let frame = ether(
            CLIENT_MAC,
            b.eth0_mac,
            0x86dd,
            &ipv6(6, &backend6, &s, &seg),
        );
        let (_, out) = b.tc("tg_tc_from_pod", &frame);
        let p = parse(&out);
        assert_eq!(
            (p.src, p.sport),
            (d, 30086),
            "the answer comes from the NodePort"
        );
        let other: IpAddr = "fd00:244:1::12".parse().unwrap();
        let seg = tcp(&other, &backend6, 40003, 8080, 0x10, &[]);
        let frame = ether(
            CLIENT_MAC,
            b.eth0_mac,
            0x86dd,
            &ipv6(6, &other, &backend6, &seg),
        );
        let (verdict, out) = b.tc("tg_tc_from_pod", &frame);
        assert_eq!((verdict, out), (TC_ACT_UNSPEC, frame));
        // IPv4 UDP without checksum stays without one (after a remote, SNAT translation).
        let (s, d) = (IpAddr::V4(CLIENT), IpAddr::V4(NODE));
        let dgram = client4_frame(b, 17, &udp(&s, &d, 5001, 30053, b"x", true));
        let (_, out) = b.tc("tg_tc_ingress", &dgram);
        let u = parse(&out);
        assert_eq!(
            u.l4[6..8],
            [0, 0],
            "UDP checksum 0 means none, and stays so"
        );
        assert_eq!(u.dst, IpAddr::V4(REMOTE_POD));
    });
}

#[test]
fn tc_rejects_with_a_reset_or_port_unreachable() {
    on_node1(bench, |b| {
        let pkt = syn4(NODE, 30099, 40003, b.eth0_mac);
        let (verdict, out) = b.tc("tg_tc_ingress", &pkt);
        assert_eq!(verdict, TC_ACT_REDIRECT, "the reset goes back out");
        let r = parse(&out);
        assert_eq!(
            (r.src, r.sport, r.dst, r.dport),
            (IpAddr::V4(NODE), 30099, IpAddr::V4(CLIENT), 40003)
        );
        assert_eq!(r.tcp_flags, 0x14, "RST|ACK");
        assert_eq!(
            u32::from_be_bytes(r.l4[8..12].try_into().unwrap()),
            1001,
            "acknowledges the SYN"
        );
        assert_eq!(
            (r.dst_mac, r.src_mac),
            (CLIENT_MAC, b.eth0_mac),
            "back to the sender"
        );
        // A datagram gets a port unreachable with a plain IP header, quoting the datagram's IP
        // header (with its options) and UDP header.
        let (s, d) = (IpAddr::V4(CLIENT), IpAddr::V4(NODE));
        type Ip = fn(u8, Ipv4Addr, Ipv4Addr, &[u8]) -> Vec<u8>;
        for (ip, hdr) in [(ipv4 as Ip, 20), (ipv4_with_options, 24)] {
            let dgram = ether(
                b.eth0_mac,
                CLIENT_MAC,
                0x0800,
                &ip(17, CLIENT, NODE, &udp(&s, &d, 5002, 30098, b"hello", false)),
            );
            let (verdict, out) = b.tc("tg_tc_ingress", &dgram);
            assert_eq!(verdict, TC_ACT_REDIRECT);
            let icmp = parse(&out);
            assert_eq!((icmp.proto, icmp.src, icmp.dst), (1, d, s));
            assert_eq!(
                (out[14], &icmp.l4[0..2]),
                (0x45, &[3, 3][..]),
                "destination/port unreachable"
            );
            assert_eq!(icmp.l4[8..], dgram[14..14 + hdr + 8]);
            assert_eq!(out.len(), 14 + 20 + 8 + hdr + 8);
        }
        // IPv6: a reset for a SYN, an ICMPv6 port unreachable for a datagram.
        let (s6, d6): (IpAddr, IpAddr) = ("fd00:77::100".parse().unwrap(), NODE6.parse().unwrap());
        let frame6 = |proto: u8, l4: Vec<u8>| {
            ether(b.eth0_mac, CLIENT_MAC, 0x86dd, &ipv6(proto, &s6, &d6, &l4))
        };
        let syn6 = frame6(6, tcp(&s6, &d6, 40005, 30095, 0x02, &[]));
        let (verdict, out) = b.tc("tg_tc_ingress", &syn6);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let r = parse(&out);
        assert_eq!(
            (r.src, r.sport, r.dst, r.dport, r.tcp_flags),
            (d6, 30095, s6, 40005, 0x14),
            "an IPv6 reset, checksum verified"
        );
        let dgram6 = frame6(17, udp(&s6, &d6, 5003, 30097, b"hello", false));
        let (verdict, out) = b.tc("tg_tc_ingress", &dgram6);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let icmp = parse(&out);
        assert_eq!(
            (icmp.proto, icmp.src, icmp.dst),
            (58, d6, s6),
            "ICMPv6, checksum verified"
        );
        assert_eq!(icmp.l4[0..2], [1, 4], "destination/port unreachable");
        assert_eq!(
            (icmp.l4[8 + 6], &icmp.l4[8 + 40..8 + 44]),
            (17, &[0x13, 0x8b, 0x75, 0x91][..]),
            "quotes the original datagram's IPv6 header and its ports (5003 → 30097)"
        );
        assert_eq!(out.len(), 14 + 40 + 8 + 48);
        assert_eq!((icmp.dst_mac, icmp.src_mac), (CLIENT_MAC, b.eth0_mac));
        // A non-SYN TCP segment of a flow never seen is not ours: the stack answers it (a
        // reset, for a node address), without a service lookup.
        let (s, d) = (IpAddr::V4(CLIENT), IpAddr::V4(NODE));
        let ack = client4_frame(b, 6, &tcp(&s, &d, 40004, 30099, 0x10, &[]));
        let (verdict, _) = b.tc("tg_tc_ingress", &ack);
        assert_eq!(verdict, TC_ACT_UNSPEC);
    });
}

#[test]
fn a_cluster_ip_refuses_the_ports_and_protocols_its_service_does_not_define() {
    on_node1(bench, |b| {
        // Service `remote` defines TCP 80 and UDP 53 on 10.96.0.1.
        let vip = Ipv4Addr::new(10, 96, 0, 1);
        let (s, d) = (IpAddr::V4(CLIENT), IpAddr::V4(vip));
        let to = |addr, proto, l4: &[u8]| client4_frame_to(b, addr, proto, l4);
        // TCP to a port it does not define, and to the port it defines only for UDP: a reset
        // from the ClusterIP. (Without ServiceCIDRs, as here, the per-packet path looks
        // frontends up only for ports some frontend has had, `tg_feport_v1`: 30080 is a
        // NodePort's; with them, every port inside them. The socket hooks refuse every port.)
        for dport in [30080, 53] {
            let syn = to(vip, 6, &tcp(&s, &d, 40010, dport, 0x02, &[]));
            let (verdict, out) = b.tc("tg_tc_ingress", &syn);
            assert_eq!(verdict, TC_ACT_REDIRECT, "port {dport}");
            let r = parse(&out);
            assert_eq!(
                (r.src, r.sport, r.dst, r.dport, r.tcp_flags),
                (d, dport, s, 40010, 0x14),
                "port {dport}: RST|ACK"
            );
            // XDP leaves it to TC, which builds the answer.
            assert_eq!(b.xdp(&syn).0, XDP_PASS);
        }
        // UDP to the port it defines only for TCP: port unreachable.
        let (verdict, out) = b.tc(
            "tg_tc_ingress",
            &to(vip, 17, &udp(&s, &d, 5010, 80, b"x", false)),
        );
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let icmp = parse(&out);
        assert_eq!(
            (icmp.proto, icmp.src, icmp.dst, &icmp.l4[0..2]),
            (1, d, s, &[3, 3][..])
        );
        // The ports it defines are translated as before.
        let (verdict, out) = b.tc(
            "tg_tc_ingress",
            &to(vip, 6, &tcp(&s, &d, 40012, 80, 0x02, &[])),
        );
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(parse(&out).dst, IpAddr::V4(REMOTE_POD));
        // An address no Service has is not ours; nor, here, a port no frontend has had.
        let other = Ipv4Addr::new(10, 96, 0, 200);
        let o = IpAddr::V4(other);
        for (addr, dst, dport) in [(other, o, 80), (vip, d, 81)] {
            let syn = to(addr, 6, &tcp(&s, &dst, 40013, dport, 0x02, &[]));
            assert_eq!(
                b.tc("tg_tc_ingress", &syn).0,
                TC_ACT_UNSPEC,
                "{addr}:{dport}"
            );
        }
        // An IPv6 ClusterIP too.
        let (s6, d6): (IpAddr, IpAddr) = (CLIENT6.parse().unwrap(), "fd00:96::8".parse().unwrap());
        let syn6 = client6_syn_to(b, d6, 40014, 30084);
        let (verdict, out) = b.tc("tg_tc_ingress", &syn6);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let r = parse(&out);
        assert_eq!((r.src, r.dst, r.tcp_flags), (d6, s6, 0x14));
        // Counted under ID 0 (XDP counts nothing it passes on), listed apart from the services.
        let other_ports = inspect::other_ports(b.dp.pins()).unwrap();
        assert_eq!(other_ports.refused, 4);
        for ip in ["10.96.0.1", "10.96.0.2", "10.96.0.3", "fd00:96::8"] {
            assert!(
                other_ports.cluster_ips.iter().any(|a| a == ip),
                "{ip} in {:?}",
                other_ports.cluster_ips
            );
        }
        let services = inspect::services(b.dp.pins()).unwrap();
        assert!(services.iter().all(|s| s.service_id != 0 && s.port != 0));
    });
}

/// [`bench`] with the ServiceCIDRs 10.96.0.0/16 and fd00:96::/112.
fn bench_with_service_cidrs(node: &Node) -> Bench {
    let cidrs = tollgate_tests::k8s::service_cidr("kubernetes", &["10.96.0.0/16", "fd00:96::/112"]);
    bench_with(node, vec![cidrs], None)
}

/// The drops `tg_svccidr_v1` counts, by prefix, are `expected`.
fn assert_dropped_per_prefix(b: &Bench, expected: &[(&str, u64)]) {
    let counted = inspect::service_cidrs(b.dp.pins()).unwrap();
    let counted: Vec<(&str, u64)> = counted
        .iter()
        .map(|c| (c.cidr.as_str(), c.dropped))
        .collect();
    assert_eq!(counted, expected);
}

/// A new connection to an address inside a ServiceCIDR that no Service has (an unallocated
/// ClusterIP) is dropped (kube-proxy nftables), from outside and from pods, TCP and UDP, IPv4
/// and IPv6; the Services' own addresses keep their verdicts, and addresses outside the
/// prefixes are not ours.
#[test]
fn new_connections_to_unallocated_service_ips_are_dropped() {
    on_node1(bench_with_service_cidrs, |b| {
        let s = IpAddr::V4(CLIENT);
        let free = Ipv4Addr::new(10, 96, 0, 200);
        let f = IpAddr::V4(free);
        let to = |addr, proto, l4: &[u8]| client4_frame_to(b, addr, proto, l4);
        // From outside: a SYN (whatever its port: 8443 is no frontend's) and a datagram.
        for dport in [80, 8443] {
            let syn = to(free, 6, &tcp(&s, &f, 40030, dport, 0x02, &[]));
            assert_eq!(b.tc("tg_tc_ingress", &syn).0, TC_ACT_SHOT, "{free}:{dport}");
            // XDP leaves it to TC.
            assert_eq!(b.xdp(&syn).0, XDP_PASS);
        }
        let dgram = to(free, 17, &udp(&s, &f, 5030, 53, b"x", false));
        assert_eq!(b.tc("tg_tc_ingress", &dgram).0, TC_ACT_SHOT);
        // Only what starts a connection: a stray segment of no flow passes as before.
        let ack = to(free, 6, &tcp(&s, &f, 40031, 80, 0x10, &[]));
        assert_eq!(b.tc("tg_tc_ingress", &ack).0, TC_ACT_UNSPEC);
        // From a pod (its socket was not balanced: --socket-lb-host-namespace-only).
        let l4 = tcp(&IpAddr::V4(LOCAL_POD), &f, 40032, 80, 0x02, &[]);
        let frame = pod_frame(LOCAL_POD, free, 6, &l4);
        assert_eq!(b.tc("tg_tc_from_pod", &frame).0, TC_ACT_SHOT);
        // IPv6.
        let syn6 = client6_syn_to(b, "fd00:96::99".parse().unwrap(), 40033, 80);
        assert_eq!(b.tc("tg_tc_ingress", &syn6).0, TC_ACT_SHOT);
        // A Service's ClusterIP keeps its verdicts: translated on its port, refused on others.
        let vip = Ipv4Addr::new(10, 96, 0, 1);
        let d = IpAddr::V4(vip);
        let (verdict, out) = b.tc(
            "tg_tc_ingress",
            &to(vip, 6, &tcp(&s, &d, 40034, 80, 0x02, &[])),
        );
        assert_eq!(
            (verdict, parse(&out).dst),
            (TC_ACT_REDIRECT, IpAddr::V4(REMOTE_POD))
        );
        let (verdict, out) = b.tc(
            "tg_tc_ingress",
            &to(vip, 6, &tcp(&s, &d, 40035, 30080, 0x02, &[])),
        );
        assert_eq!((verdict, parse(&out).tcp_flags), (TC_ACT_REDIRECT, 0x14));
        // Also on ports no frontend has had (8443, 5353; `tg_feport_v1` has 30080): inside a
        // ServiceCIDR every port is looked up, as kube-proxy nftables checks every port of a
        // ClusterIP. A reset from outside (XDP leaves it to TC) and from a pod, a port
        // unreachable for a datagram.
        let syn = to(vip, 6, &tcp(&s, &d, 40037, 8443, 0x02, &[]));
        assert_eq!(b.xdp(&syn).0, XDP_PASS);
        let (verdict, out) = b.tc("tg_tc_ingress", &syn);
        let r = parse(&out);
        assert_eq!(
            (verdict, r.src, r.sport, r.dst, r.dport, r.tcp_flags),
            (TC_ACT_REDIRECT, d, 8443, s, 40037, 0x14),
            "a reset from the ClusterIP, not a drop"
        );
        let l4 = tcp(&IpAddr::V4(LOCAL_POD), &d, 40038, 8443, 0x02, &[]);
        let (verdict, out) = b.tc("tg_tc_from_pod", &pod_frame(LOCAL_POD, vip, 6, &l4));
        assert_eq!(
            (verdict, parse(&out).tcp_flags),
            (TC_ACT_REDIRECT, 0x14),
            "a pod's"
        );
        let (verdict, out) = b.tc(
            "tg_tc_ingress",
            &to(vip, 17, &udp(&s, &d, 5031, 5353, b"x", false)),
        );
        let icmp = parse(&out);
        assert_eq!(
            (verdict, icmp.proto, icmp.src, &icmp.l4[0..2]),
            (TC_ACT_REDIRECT, 1, d, &[3, 3][..])
        );
        // A stray segment there is not ours either.
        let ack = to(vip, 6, &tcp(&s, &d, 40039, 8443, 0x10, &[]));
        assert_eq!(b.tc("tg_tc_ingress", &ack).0, TC_ACT_UNSPEC);
        assert_eq!(
            inspect::other_ports(b.dp.pins()).unwrap().refused,
            4,
            "counted as the ClusterIP's refusals"
        );
        // Outside the prefixes: not ours.
        let beyond = Ipv4Addr::new(10, 97, 0, 1);
        let syn = to(
            beyond,
            6,
            &tcp(&s, &IpAddr::V4(beyond), 40036, 80, 0x02, &[]),
        );
        assert_eq!(b.tc("tg_tc_ingress", &syn).0, TC_ACT_UNSPEC);
        // Counted per prefix (XDP counts nothing it passes on).
        assert_dropped_per_prefix(b, &[("10.96.0.0/16", 4), ("fd00:96::/112", 1)]);
    });
}

/// An ICMP (IPv4) or ICMPv6 message (`pseudo`: ICMPv6's pseudo-header sum, 0 for ICMP).
fn icmp_message(kind: u8, code: u8, rest: [u8; 4], payload: &[u8], pseudo: u32) -> Vec<u8> {
    let mut m = vec![kind, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(payload);
    let c = fold(sum16(&m, pseudo));
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// Pings and SCTP to Service IPs (kube-proxy nftables checks every protocol): a ping, or an
/// SCTP packet, to a ClusterIP is refused with a port unreachable from it, quoting the IP
/// header and 8 bytes; to an unallocated address inside a ServiceCIDR dropped; ICMP that does
/// not start a flow (a reply, an error), tunnels (GRE) and addresses that are no Service IP
/// pass. From outside, from pods, and the host's own on its way out.
#[test]
fn other_protocols_to_service_ips_are_refused_or_dropped() {
    on_node1(bench_with_service_cidrs, |b| {
        let vip = Ipv4Addr::new(10, 96, 0, 1);
        let free = Ipv4Addr::new(10, 96, 0, 200);
        let (s, d) = (IpAddr::V4(CLIENT), IpAddr::V4(vip));
        let echo = icmp_message(8, 0, [0x12, 0x34, 0, 1], b"ping ping", 0);
        // An SCTP INIT's common header (ports, verification tag 0, checksum) and a chunk.
        let sctp = [
            0x9c, 0x40, 0x0b, 0xb8, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 0, 0, 4,
        ];
        // From outside: refused from the ClusterIP, MACs swapped, the IP header and the first
        // 8 bytes quoted, checksums verified (`parse`).
        for (proto, l4) in [(1u8, &echo[..]), (132, &sctp[..])] {
            let frame = client4_frame_to(b, vip, proto, l4);
            let (verdict, out) = b.tc("tg_tc_ingress", &frame);
            assert_eq!(verdict, TC_ACT_REDIRECT, "protocol {proto}");
            let r = parse(&out);
            assert_eq!(
                (r.proto, r.src, r.dst, &r.l4[0..2]),
                (1, d, s, &[3, 3][..]),
                "protocol {proto}: port unreachable from the ClusterIP"
            );
            assert_eq!(r.l4[8..], frame[14..14 + 20 + 8], "protocol {proto}");
            assert_eq!((r.dst_mac, r.src_mac), (CLIENT_MAC, b.eth0_mac));
            // XDP leaves it to TC.
            assert_eq!(b.xdp(&frame).0, XDP_PASS);
        }
        // From a pod.
        let (verdict, out) = b.tc("tg_tc_from_pod", &pod_frame(LOCAL_POD, vip, 1, &echo));
        let r = parse(&out);
        assert_eq!(
            (verdict, r.proto, r.src, r.dst, &r.l4[0..2]),
            (TC_ACT_REDIRECT, 1, d, IpAddr::V4(LOCAL_POD), &[3, 3][..])
        );
        // The node's own ping, leaving by the uplink: refused too (into the node).
        let host = host4_frame_to(b, vip, 1, &echo);
        let (verdict, out) = b.tc("tg_tc_egress", &host);
        let r = parse(&out);
        assert_eq!(
            (verdict, r.src, r.dst, &r.l4[0..2]),
            (TC_ACT_REDIRECT, d, IpAddr::V4(NODE), &[3, 3][..])
        );
        assert_eq!(
            r.dst_mac, b.eth0_mac,
            "addressed to the node's own interface"
        );
        // IPv6: an ICMPv6 port unreachable (its checksum over the pseudo header).
        let (s6, d6): (IpAddr, IpAddr) = (CLIENT6.parse().unwrap(), "fd00:96::8".parse().unwrap());
        let echo6 = icmp_message(
            128,
            0,
            [0x12, 0x34, 0, 1],
            b"ping",
            pseudo(&s6, &d6, 58, 12),
        );
        let frame6 = ether(b.eth0_mac, CLIENT_MAC, 0x86dd, &ipv6(58, &s6, &d6, &echo6));
        let (verdict, out) = b.tc("tg_tc_ingress", &frame6);
        let r = parse(&out);
        assert_eq!(
            (verdict, r.proto, r.src, r.dst, &r.l4[0..2]),
            (TC_ACT_REDIRECT, 58, d6, s6, &[1, 4][..])
        );
        assert_eq!(r.l4[8..], frame6[14..14 + 40 + 8]);
        // The host's IPv6 ping on its way out, answered into the node.
        let n6: IpAddr = NODE6.parse().unwrap();
        let echo6 = icmp_message(128, 0, [0, 7, 0, 1], b"ping", pseudo(&n6, &d6, 58, 12));
        let host6 = ether(PEER_MAC, b.eth0_mac, 0x86dd, &ipv6(58, &n6, &d6, &echo6));
        let (verdict, out) = b.tc("tg_tc_egress", &host6);
        let r = parse(&out);
        assert_eq!(
            (verdict, r.src, r.dst, &r.l4[0..2], r.dst_mac),
            (TC_ACT_REDIRECT, d6, n6, &[1, 4][..], b.eth0_mac)
        );
        // Unallocated addresses: dropped, from outside, from a pod, from the host, IPv6.
        let f = IpAddr::V4(free);
        for (program, frame) in [
            ("tg_tc_ingress", client4_frame_to(b, free, 1, &echo)),
            ("tg_tc_ingress", client4_frame_to(b, free, 132, &sctp)),
            ("tg_tc_from_pod", pod_frame(LOCAL_POD, free, 1, &echo)),
            ("tg_tc_egress", host4_frame_to(b, free, 1, &echo)),
        ] {
            assert_eq!(b.tc(program, &frame).0, TC_ACT_SHOT, "{program} to {f}");
        }
        let free6: IpAddr = "fd00:96::99".parse().unwrap();
        let echo6 = icmp_message(128, 0, [0, 1, 0, 1], b"ping", pseudo(&s6, &free6, 58, 12));
        let frame6 = ether(
            b.eth0_mac,
            CLIENT_MAC,
            0x86dd,
            &ipv6(58, &s6, &free6, &echo6),
        );
        assert_eq!(b.tc("tg_tc_ingress", &frame6).0, TC_ACT_SHOT);
        // What does not start a flow passes: an echo reply, an error about no flow of ours;
        // so does a ping to an address that is no Service IP (the node, beyond the prefix),
        // and a tunnel's packet (GRE), whatever its address.
        let reply = icmp_message(0, 0, [0x12, 0x34, 0, 1], b"pong", 0);
        let error = icmp_message(3, 1, [0; 4], &ipv4(17, vip, CLIENT, &[0; 8]), 0);
        let beyond = Ipv4Addr::new(10, 97, 0, 1);
        let gre = [0u8, 0, 0x08, 0, 0x45, 0, 0, 20].to_vec();
        for (dst, proto, l4) in [
            (vip, 1, &reply),
            (vip, 1, &error),
            (NODE, 1, &echo),
            (beyond, 1, &echo),
            (vip, 47, &gre),
            (free, 47, &gre),
        ] {
            let frame = client4_frame_to(b, dst, proto, l4);
            assert_eq!(
                b.tc("tg_tc_ingress", &frame).0,
                TC_ACT_UNSPEC,
                "{dst} {proto}: {l4:?}"
            );
        }
        // Nothing to quote (an SCTP header cut to 4 bytes): dropped, not answered.
        let short = client4_frame_to(b, vip, 132, &sctp[..4]);
        assert_eq!(b.tc("tg_tc_ingress", &short).0, TC_ACT_SHOT);
        // Counted: refusals under ID 0 (the ClusterIPs' other-ports entries), drops per prefix.
        assert_eq!(inspect::other_ports(b.dp.pins()).unwrap().refused, 7);
        assert_dropped_per_prefix(b, &[("10.96.0.0/16", 4), ("fd00:96::/112", 1)]);
    });
}

/// `/metrics`' traffic counters at `level`, read from the pinned maps as the agent's scrape
/// does.
fn scrape(b: &Bench, level: tollgate::dataplane::traffic::TrafficMetrics) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(
        tollgate::dataplane::traffic::TrafficCollector::new(b.dp.pins().clone(), level),
    ));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text
}

/// A counter map that cannot be read (here: its pin removed, as a careless `rm` would) leaves
/// only its own series out of `/metrics`; the others, and the scrape, are unaffected.
#[test]
fn a_counter_map_that_cannot_be_read_leaves_only_its_own_metrics_out() {
    use tollgate::dataplane::traffic::TrafficMetrics::Backends;
    use tollgate_common::lb::stats;
    on_node1(bench, |b| {
        // A NodePort connection: counted for its service port, its backend and eth0.
        let (verdict, _) = b.tc("tg_tc_ingress", &syn4(NODE, 30080, 40090, b.eth0_mac));
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let families = [
            "tollgate_service_connections_total{",
            "tollgate_backend_connections_total{",
            "tollgate_interface_packets_total{",
            "tollgate_cluster_ip_other_ports_refused_total",
        ];
        let present = |text: &str| -> Vec<bool> {
            assert!(text.ends_with("# EOF\n"), "{text}");
            families.iter().map(|f| text.contains(f)).collect()
        };
        assert_eq!(present(&scrape(b, Backends)), [true, true, true, true]);
        let pins = b.dp.pins();
        std::fs::remove_file(pins.map(stats::BACKEND_NAME)).unwrap();
        assert_eq!(
            present(&scrape(b, Backends)),
            [true, false, true, true],
            "without tg_bestat_v1"
        );
        std::fs::remove_file(pins.map(stats::SVC_NAME)).unwrap();
        assert_eq!(
            present(&scrape(b, Backends)),
            [false, false, true, false],
            "without tg_svcstat_v1 too"
        );
    });
}

/// `__sk_buff` input for a GSO packet (a GRO'd burst): `skb_ctx` with gso_segs (offset 164)
/// and gso_size (offset 176).
fn gso_skb_ctx(ifindex: u32, segs: u32, size: u32) -> Vec<u8> {
    let mut ctx = skb_ctx(ifindex);
    ctx[164..168].copy_from_slice(&segs.to_ne_bytes());
    ctx[176..180].copy_from_slice(&size.to_ne_bytes());
    ctx
}

/// A translated packet too big for the interface its route leaves by gets what a router sends
/// (kube-proxy's forwarding does): ICMP Fragmentation Needed / ICMPv6 Packet Too Big with that
/// MTU, from the address it was sent to, quoting it exactly as its sender (the client, or a
/// backend answering) sent it.
#[test]
fn packets_too_big_for_the_way_out_are_answered_with_the_mtu() {
    let c = cluster();
    let node = c.node("node1");
    node.ns.run_in(|| {
        let b = bench(node);
        let (s, d) = (IpAddr::V4(CLIENT), IpAddr::V4(NODE));
        let (verdict, _) = b.tc("tg_tc_ingress", &syn4(NODE, 30080, 40020, b.eth0_mac));
        assert_eq!(verdict, TC_ACT_REDIRECT, "a flow to the remote backend");
        // 1600 bytes of IP for eth0's 1500, the way to the backend.
        let big = client4_frame(&b, 6, &tcp(&s, &d, 40020, 30080, 0x18, &[7; 1560]));
        // XDP leaves it to TC (its FIB lookup checks the length too).
        let (verdict, out) = b.xdp(&big);
        assert_eq!((verdict, &out), (XDP_PASS, &big));
        let (verdict, out) = b.tc("tg_tc_ingress", &big);
        assert_eq!(verdict, TC_ACT_REDIRECT, "back out where it came in");
        let icmp = parse(&out);
        assert_eq!(
            (icmp.proto, icmp.src, icmp.dst),
            (1, d, s),
            "ICMP from the NodePort's address to the client, checksums verified"
        );
        assert_eq!(
            (
                icmp.l4[0..2].to_vec(),
                u16::from_be_bytes([icmp.l4[6], icmp.l4[7]])
            ),
            (vec![3, 4], 1500),
            "fragmentation needed, eth0's MTU"
        );
        assert_eq!(
            icmp.l4[8..],
            big[14..14 + 40],
            "quotes the IP header and the TCP header as the client sent them"
        );
        assert_eq!(out.len(), 14 + 20 + 8 + 40);
        assert_eq!((icmp.dst_mac, icmp.src_mac), (CLIENT_MAC, b.eth0_mac));
        // The same while the next hop's neighbour is unresolved (the FIB checks a plain
        // packet's length only when it resolves): answered, not left to the interface to drop.
        let peer = PEER_NODE.to_string();
        node.ns.ip(&["neigh", "del", &peer, "dev", "eth0"]);
        let (verdict, out) = b.tc("tg_tc_ingress", &big);
        permanent_neigh(node, &peer, PEER_MAC);
        let icmp = parse(&out);
        assert_eq!(
            (verdict, icmp.proto, icmp.dst, &icmp.l4[0..2]),
            (TC_ACT_REDIRECT, 1, s, &[3, 4][..]),
            "fragmentation needed without a neighbour"
        );
        assert_eq!(u16::from_be_bytes([icmp.l4[6], icmp.l4[7]]), 1500);
        // Only the SYN went on: the answered packets are not counted as translated.
        let packets = inspect::services(b.dp.pins())
            .unwrap()
            .into_iter()
            .find(|s| s.name == "remote" && s.port_name == "http")
            .unwrap()
            .counters
            .packets;
        assert_eq!(packets, 1);
        // GRO'd bursts (GSO; the device completes their checksums, CHECKSUM_PARTIAL) are
        // judged by their segments: of 780 bytes, it goes on to the backend; of 1560 bytes, the
        // same answer as above, whose ICMP checksum covers the quoted TCP checksum as the
        // device will store it (the one's complement of the sum of the quoted TCP header).
        let run_gso = |size: u32| {
            b.dp.test_run("tg_tc_ingress", &big, Some(&gso_skb_ctx(b.eth0, 2, size)))
                .unwrap()
        };
        let (verdict, out) = run_gso(780);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(parse(&out).dst, IpAddr::V4(REMOTE_POD));
        let (verdict, mut out) = run_gso(1560);
        assert_eq!((verdict, out.len()), (TC_ACT_REDIRECT, 14 + 20 + 8 + 40));
        let tcp_quote = 14 + 20 + 8 + 20;
        let device = fold(sum16(&out[tcp_quote..tcp_quote + 20], 0));
        out[tcp_quote + 16..tcp_quote + 18].copy_from_slice(&device.to_be_bytes());
        let icmp = parse(&out);
        assert_eq!((icmp.l4[0], icmp.l4[1], icmp.dst), (3, 4, s));
        // UDP: the IP header and the 8-byte UDP header.
        let dgram = client4_frame(&b, 17, &udp(&s, &d, 5020, 30053, &[1; 1500], false));
        let (verdict, out) = b.tc("tg_tc_ingress", &dgram);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let icmp = parse(&out);
        assert_eq!((icmp.proto, icmp.src, icmp.dst), (1, d, s));
        assert_eq!(
            (&icmp.l4[0..2], &icmp.l4[4..8]),
            (&[3, 4][..], &[0, 0, 0x05, 0xdc][..])
        );
        assert_eq!(icmp.l4[8..], dgram[14..14 + 28]);
        // IPv6: Packet Too Big, with the 32-bit MTU, quoting the IPv6 and TCP headers.
        let (s6, d6): (IpAddr, IpAddr) = (CLIENT6.parse().unwrap(), NODE6.parse().unwrap());
        let frame6 = |flags: u8, payload: &[u8]| {
            let seg = tcp(&s6, &d6, 40021, 30084, flags, payload);
            ether(b.eth0_mac, CLIENT_MAC, 0x86dd, &ipv6(6, &s6, &d6, &seg))
        };
        let (verdict, _) = b.tc("tg_tc_ingress", &frame6(0x02, &[]));
        assert_eq!(
            verdict, TC_ACT_REDIRECT,
            "a flow to the remote IPv6 backend"
        );
        let big6 = frame6(0x18, &[7; 1500]);
        let (verdict, out) = b.tc("tg_tc_ingress", &big6);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let icmp = parse(&out);
        assert_eq!(
            (icmp.proto, icmp.src, icmp.dst),
            (58, d6, s6),
            "ICMPv6 from the NodePort's address to the client, checksum verified"
        );
        assert_eq!(
            (&icmp.l4[0..2], &icmp.l4[4..8]),
            (&[2, 0][..], &[0, 0, 0x05, 0xdc][..]),
            "packet too big, MTU 1500"
        );
        assert_eq!(icmp.l4[8..], big6[14..14 + 60]);
        assert_eq!(out.len(), 14 + 40 + 8 + 60);
        // The first IPv6 fragment of a large datagram: the quote has its Fragment header; a
        // later fragment, which has no ports to quote, is dropped.
        let dgram = udp(&s6, &d6, 5021, 30054, &[3; 3000], false);
        let (first, later) = ipv6_fragments(&b, &s6, &d6, 77, &dgram, 1480);
        assert!(
            first.len() > 1514 && later.len() > 1514,
            "both too big for eth0"
        );
        let (verdict, out) = b.tc("tg_tc_ingress", &first);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let icmp = parse(&out);
        assert_eq!((icmp.proto, icmp.src, icmp.dst), (58, d6, s6));
        assert_eq!(icmp.l4[0..2], [2, 0]);
        assert_eq!(icmp.l4[8..], first[14..14 + 40 + 8 + 8]);
        let (verdict, _) = b.tc("tg_tc_ingress", &later);
        assert_eq!(verdict, TC_ACT_SHOT);
        // The flows' packets that fit still go to the backend.
        let small = client4_frame(&b, 6, &tcp(&s, &d, 40020, 30080, 0x18, &[7; 1400]));
        let (verdict, out) = b.tc("tg_tc_ingress", &small);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let fwd = parse(&out);
        assert_eq!((fwd.dst, fwd.dport), (IpAddr::V4(REMOTE_POD), 8080));
        // The backend's answer too big for the way to the client: the backend is told, about
        // its packet as it sent it (to the SNAT address and port), from that address.
        let (pod, node) = (IpAddr::V4(REMOTE_POD), IpAddr::V4(NODE));
        let answer = ether(
            b.eth0_mac,
            PEER_MAC,
            0x0800,
            &ipv4(
                6,
                REMOTE_POD,
                NODE,
                &tcp(&pod, &node, 8080, fwd.sport, 0x18, &[9; 1560]),
            ),
        );
        let (verdict, out) = b.tc("tg_tc_ingress", &answer);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let icmp = parse(&out);
        assert_eq!((icmp.proto, icmp.src, icmp.dst), (1, node, pod));
        assert_eq!(icmp.l4[0..2], [3, 4]);
        assert_eq!(icmp.l4[8..], answer[14..14 + 40]);
        assert_eq!((icmp.dst_mac, icmp.src_mac), (PEER_MAC, b.eth0_mac));
    });
}

#[test]
fn xdp_translates_in_place_and_transmits_from_the_uplink() {
    on_node1(bench, |b| {
        let payload = b"GET / HTTP/1.1\r\n\r\n";
        let (s, d) = (IpAddr::V4(CLIENT), IpAddr::V4(NODE));
        // A SYN starts the flow (conntrack entries created by XDP).
        let syn = syn4(NODE, 30080, 40010, b.eth0_mac);
        let (verdict, out) = b.xdp(&syn);
        assert_eq!(verdict, XDP_TX, "the backend is behind the same uplink");
        let p = parse(&out);
        assert_eq!(
            (p.dst, p.dport, p.src),
            (IpAddr::V4(REMOTE_POD), 8080, IpAddr::V4(NODE))
        );
        assert_eq!((p.dst_mac, p.src_mac), (PEER_MAC, b.eth0_mac));
        // A data segment of the same flow: same translation, incremental checksums right.
        let data = client4_frame(b, 6, &tcp(&s, &d, 40010, 30080, 0x18, payload));
        let (verdict, out) = b.xdp(&data);
        assert_eq!(verdict, XDP_TX);
        let q = parse(&out);
        assert_eq!(
            (q.sport, q.dport),
            (p.sport, 8080),
            "the flow keeps its SNAT port"
        );
        assert_eq!(&q.l4[20..], payload);
        // A local-policy frontend is left to TC, untouched.
        let local = syn4(NODE, 30081, 40011, b.eth0_mac);
        let (verdict, out) = b.xdp(&local);
        assert_eq!((verdict, out), (XDP_PASS, local));
        // Not a service: passes untouched.
        let other = syn4(NODE, 22, 40012, b.eth0_mac);
        let (verdict, out) = b.xdp(&other);
        assert_eq!((verdict, out), (XDP_PASS, other));
    });
}

/// A table that does not fit (a pinned map sized for fewer chunks) leaves no chunk behind: the
/// service port fails with a map error and is retried, and its replaced table goes too.
#[test]
fn a_maglev_table_that_does_not_fit_leaves_no_chunks() {
    let c = cluster();
    let node = c.node("node1");
    node.ns.run_in(|| {
        // Room for 6 chunks: one 16381-entry table (4 chunks) fits, the next does not.
        let sizes = tollgate::dataplane::MapSizes {
            maglev: 6,
            ..Default::default()
        };
        let dp = Dataplane::load(&node.bpffs, &sizes).unwrap();
        let mut writer = Writer::new(LbMaps::open(dp.pins()).unwrap());
        writer.set_maglev(true);
        writer.set_maglev_size(16381);
        let mut enls = Enls::new(EnlsConfig::new("node1"), EnlsMetrics::detached());
        for k in Kind::ALL {
            enls.handle(SourceEvent::ListBegin(k));
        }
        for o in objects() {
            enls.handle(SourceEvent::Apply(to_object(o)));
        }
        for k in Kind::ALL {
            enls.handle(SourceEvent::ListDone(k));
        }
        let update = enls.sync().unwrap();
        let results: Vec<bool> = update
            .services
            .iter()
            .map(|c| writer.apply(c).is_ok())
            .collect();
        assert!(
            results.iter().any(|ok| !ok),
            "some service port must not fit: {results:?}"
        );
        let maps = LbMaps::open(dp.pins()).unwrap();
        let mut chunks: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
        for k in maps.maglev.keys().map(Result::unwrap) {
            chunks.entry(k.service_id).or_default().push(k.chunk);
        }
        assert!(!chunks.is_empty(), "the table that fits is there");
        for (id, mut c) in chunks {
            c.sort_unstable();
            assert_eq!(c, [0, 1, 2, 3], "service port {id}: whole tables only");
        }
    });
}

#[test]
fn maglev_picks_the_backend_every_node_computes_from_the_flow() {
    use tollgate_common::lb::maglev::DEFAULT_SIZE;
    // The default table is one map value; 16381 entries take four (chunks).
    for size in [DEFAULT_SIZE, 16381] {
        maglev_picks_with(size);
    }
}

fn maglev_picks_with(size: u32) {
    use std::collections::{BTreeSet, HashMap};

    use tollgate::dataplane::{addr::words, maglev};
    use tollgate_common::lb::maglev::{chunks, hash};
    let backends: Vec<Ipv4Addr> = (21..25).map(|i| Ipv4Addr::new(10, 244, 2, i)).collect();
    let spread = vec![
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": "spread"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.9", "ports": [{"name": "http", "port": 80, "nodePort": 30090}]}}),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": "default", "name": "spread-1", "labels": {"kubernetes.io/service-name": "spread"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
            "endpoints": backends.iter().map(|ip| endpoint(*ip, "node2")).collect::<Vec<_>>()}),
    ];
    let c = cluster();
    let node = c.node("node1");
    node.ns.run_in(|| {
        let b = bench_with(node, spread, Some(size));
        // What any node computes from the backends' identities, with this node's IDs.
        let maps = LbMaps::open(b.dp.pins()).unwrap();
        let ids: HashMap<[u32; 4], u32> = maps
            .backend
            .iter()
            .map(Result::unwrap)
            .map(|(id, be)| (be.addr, id))
            .collect();
        let members: Vec<maglev::Member> = backends
            .iter()
            .map(|ip| {
                let addr = words(IpAddr::V4(*ip));
                (maglev::identity(&addr, 8080u16.to_be(), 6), ids[&addr])
            })
            .collect();
        let table = maglev::table(&members, size);
        assert_eq!(
            maps.maglev.keys().count(),
            7 * chunks(size) as usize,
            "a table per external service port with backends: remote (2 ports), remote6 (2 ports), \
             local, six, spread"
        );
        let expected = |sport: u16| {
            let h = hash(
                &words(IpAddr::V4(CLIENT)),
                sport.to_be(),
                30090u16.to_be(),
                6,
            );
            let id = table[(h % size) as usize];
            *backends
                .iter()
                .find(|ip| ids[&words(IpAddr::V4(**ip))] == id)
                .unwrap()
        };
        let mut chosen = BTreeSet::new();
        for sport in 40100..40164u16 {
            let syn = syn4(NODE, 30090, sport, b.eth0_mac);
            // Alternately through TC and XDP: both choose alike.
            let out = if sport % 2 == 0 {
                let (verdict, out) = b.tc("tg_tc_ingress", &syn);
                assert_eq!(verdict, TC_ACT_REDIRECT);
                out
            } else {
                let (verdict, out) = b.xdp(&syn);
                assert_eq!(verdict, XDP_TX);
                out
            };
            let p = parse(&out);
            assert_eq!(
                p.dst,
                IpAddr::V4(expected(sport)),
                "source port {sport}: the table's backend for the flow's hash"
            );
            chosen.insert(p.dst);
        }
        assert_eq!(chosen.len(), backends.len(), "64 flows reach every backend");
    });
    // Random choice (the default) writes no tables.
    on_node1(bench, |b| {
        assert_eq!(LbMaps::open(b.dp.pins()).unwrap().maglev.keys().count(), 0);
    });
}

#[test]
fn pod_packets_take_the_conntrack_lookup_only_from_marked_sources() {
    use tollgate::dataplane::{addr::words, marks};
    use tollgate_common::lb::ct_dir;
    on_node1(bench, |b| {
        // A SYN-ACK from `src`:8080 to the client, through the pod-side program.
        let reply = |src: Ipv4Addr, dport: u16| {
            let (s, d) = (IpAddr::V4(src), IpAddr::V4(CLIENT));
            let frame = ether(
                CLIENT_MAC,
                [2, 0, 0, 0, 2, 0],
                0x0800,
                &ipv4(6, src, CLIENT, &tcp(&s, &d, 8080, dport, 0x12, &[])),
            );
            let (verdict, out) = b.tc("tg_tc_from_pod", &frame);
            (verdict, parse(&out))
        };
        // A flow the program creates marks its backend first: the reply from the pod is found.
        let syn = syn4(NODE, 30081, 40011, b.eth0_mac);
        let (verdict, _) = b.tc("tg_tc_ingress", &syn);
        assert_eq!(verdict, TC_ACT_OK);
        assert!(marks::is_marked(b.dp.pins(), &words(IpAddr::V4(LOCAL_POD))).unwrap());
        let (_, p) = reply(LOCAL_POD, 40011);
        assert_eq!(
            (p.src, p.sport),
            (IpAddr::V4(NODE), 30081),
            "the reply of a marked backend is translated back"
        );

        // An entry without a mark (as an agent from before the marks left it): the pod's
        // packets skip the lookup, until the agent seeds the marks from the conntrack map.
        let unmarked = Ipv4Addr::new(10, 244, 1, 99);
        assert!(!marks::is_marked(b.dp.pins(), &words(IpAddr::V4(unmarked))).unwrap());
        insert_tcp_flow(
            &b.dp,
            (unmarked, 8080),
            (CLIENT, 40012),
            (NODE, 30081),
            ct_dir::REPLY,
        );
        let (verdict, p) = reply(unmarked, 40012);
        assert_eq!(
            verdict, TC_ACT_UNSPEC,
            "an unmarked source is not looked up"
        );
        assert_eq!(p.src, IpAddr::V4(unmarked));
        assert!(marks::seed(b.dp.pins()).unwrap() >= 1);
        assert!(marks::is_marked(b.dp.pins(), &words(IpAddr::V4(unmarked))).unwrap());
        let (_, p) = reply(unmarked, 40012);
        assert_eq!(
            (p.src, p.sport),
            (IpAddr::V4(NODE), 30081),
            "seeded from the conntrack map, the flow is found again"
        );
    });
}

#[test]
fn pod_packets_to_the_metadata_server_are_dropped_whatever_their_flags() {
    use tollgate::dataplane::addr::words;
    use tollgate_common::lb::md_mode;
    const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
    on_node1(bench, |b| {
        // The redirect is on (a pod's connect() goes to the proxy), as the agent sets it.
        let mut maps = LbMaps::open(b.dp.pins()).unwrap();
        let mut cfg = maps.config.get(&0, 0).unwrap();
        cfg.md_mode = md_mode::REDIRECT;
        cfg.md_addr = words(IpAddr::V4(METADATA));
        cfg.md_ports = [80u16.to_be(), 0];
        maps.config.set(0, cfg, 0).unwrap();
        // Packets a pod sends without the socket hook (a raw socket, a process outside the
        // hooks' cgroup): every segment to the redirected port is dropped, not only the SYN.
        let from_pod = |dst: Ipv4Addr, dport: u16, flags: u8| {
            let (s, d) = (IpAddr::V4(LOCAL_POD), IpAddr::V4(dst));
            let l4 = tcp(&s, &d, 40000, dport, flags, b"GET /");
            b.tc("tg_tc_from_pod", &pod_frame(LOCAL_POD, dst, 6, &l4)).0
        };
        for (flags, what) in [
            (0x02, "SYN"),
            (0x10, "ACK"),
            (0x18, "PSH+ACK"),
            (0x11, "FIN+ACK"),
            (0x04, "RST"),
        ] {
            assert_eq!(
                from_pod(METADATA, 80, flags),
                TC_ACT_SHOT,
                "{what} to the metadata server's redirected port"
            );
            assert_eq!(
                from_pod(METADATA, 8081, flags),
                TC_ACT_UNSPEC,
                "{what} to another port of the metadata address passes"
            );
            assert_eq!(
                from_pod(REMOTE_POD, 80, flags),
                TC_ACT_UNSPEC,
                "{what} to a pod passes"
            );
        }
    });
}

#[test]
fn outside_packets_take_the_conntrack_lookup_only_for_frontend_ports_or_marked_sources() {
    use tollgate::dataplane::marks;
    use tollgate_common::lb::{ct_dir, feport};
    let c = cluster();
    let node = c.node("node1");
    node.ns.run_in(|| {
        let b = bench(node);
        // The writer set every frontend's port (NodePorts and service ports), nothing else.
        for port in [30080u16, 30081, 30053, 80, 53] {
            assert!(
                marks::is_frontend_port(b.dp.pins(), port.to_be()).unwrap(),
                "{port} is a frontend's port"
            );
        }
        assert!(!marks::is_frontend_port(b.dp.pins(), 2222u16.to_be()).unwrap());

        // An ACK from outside to node port 2222, through TC and XDP.
        let ack = || {
            let (s, d) = (IpAddr::V4(CLIENT), IpAddr::V4(NODE));
            client4_frame(&b, 6, &tcp(&s, &d, 40020, 2222, 0x10, b"x"))
        };
        let run = |dp: &Dataplane| {
            let frame = ack();
            let (tc, out) = dp
                .test_run("tg_tc_ingress", &frame, Some(&skb_ctx(b.eth0)))
                .unwrap();
            let (xdp, xdp_out) = dp
                .test_run("tg_xdp_uplink", &frame, Some(&xdp_ctx(frame.len(), b.eth0)))
                .unwrap();
            assert_eq!(xdp, XDP_PASS);
            assert_eq!(xdp_out, frame, "XDP leaves it to TC");
            (tc, parse(&out))
        };
        // A forward entry for it, without its port in the filter (as a flow of a frontend an
        // agent from before the filter wrote, then removed): the packet skips the lookup.
        insert_tcp_flow(
            &b.dp,
            (CLIENT, 40020),
            (NODE, 2222),
            (LOCAL_POD, 8080),
            ct_dir::FORWARD,
        );
        let (verdict, p) = run(&b.dp);
        assert_eq!(verdict, TC_ACT_UNSPEC, "not a frontend port, not looked up");
        assert_eq!((p.dst, p.dport), (IpAddr::V4(NODE), 2222));

        // The next agent finds the filter gone but the flows kept: it sets their ports before
        // its programs run, and the flow is found again.
        std::fs::remove_file(b.dp.pins().map(feport::NAME)).unwrap();
        let next = Dataplane::load(&node.bpffs, &Default::default()).unwrap();
        for port in [2222u16, 30080, 30081, 80] {
            assert!(
                marks::is_frontend_port(next.pins(), port.to_be()).unwrap(),
                "{port} seeded"
            );
        }
        let (verdict, p) = run(&next);
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(
            (p.dst, p.dport),
            (IpAddr::V4(LOCAL_POD), 8080),
            "translated by the kept entry"
        );
    });
}

#[test]
fn pod_packets_to_a_port_no_frontend_has_had_skip_the_frontend_lookup() {
    use tollgate::dataplane::addr::words;
    use tollgate_common::lb::svc::SvcKey;
    const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 50);
    on_node1(bench, |b| {
        let mut maps = LbMaps::open(b.dp.pins()).unwrap();
        // Copies of two frontends (every slot) on ports the writer never set in the filter,
        // as if the filter had missed them: "local" (TCP 80) on 8081, "remote" (UDP 53) on 5354.
        let copy = |maps: &mut LbMaps, addr: Ipv4Addr, proto: u8, from: u16, to: u16| {
            let found: Vec<(SvcKey, _)> = maps
                .svc
                .iter()
                .map(Result::unwrap)
                .filter(|(k, _)| {
                    k.addr == words(IpAddr::V4(addr)) && k.proto == proto && k.port == from.to_be()
                })
                .collect();
            assert!(found.len() >= 2, "{addr}:{from} has a frontend and a slot");
            for (mut k, v) in found {
                k.port = to.to_be();
                maps.svc.insert(k, v, 0).unwrap();
            }
        };
        copy(&mut maps, Ipv4Addr::new(10, 96, 0, 2), 6, 80, 8081);
        copy(&mut maps, Ipv4Addr::new(10, 96, 0, 1), 17, 53, 5354);
        for port in [8081u16, 5354] {
            assert!(!maps.fe_ports.allows(port.to_be()).unwrap());
        }
        // A pod's SYN or UDP datagram, as the socket hooks left it (a raw socket, a process
        // outside the hooks' cgroup).
        let send = |dst: Ipv4Addr, proto: u8, dport: u16| {
            let (s, d) = (IpAddr::V4(POD), IpAddr::V4(dst));
            let l4 = if proto == 6 {
                tcp(&s, &d, 40030, dport, 0x02, &[])
            } else {
                udp(&s, &d, 40030, dport, b"q", false)
            };
            let frame = pod_frame(POD, dst, proto, &l4);
            let (verdict, out) = b.tc("tg_tc_from_pod", &frame);
            (verdict, out == frame, parse(&out))
        };
        let (local, remote) = (Ipv4Addr::new(10, 96, 0, 2), Ipv4Addr::new(10, 96, 0, 1));
        let (verdict, _, p) = send(local, 6, 80);
        assert_ne!(verdict, TC_ACT_UNSPEC);
        assert_eq!(
            (p.dst, p.dport),
            (IpAddr::V4(LOCAL_POD), 8080),
            "port 80 is translated"
        );
        let (verdict, _, p) = send(remote, 17, 53);
        assert_ne!(verdict, TC_ACT_UNSPEC);
        assert_eq!(
            (p.dst, p.dport),
            (IpAddr::V4(REMOTE_POD), 5353),
            "port 53 is translated"
        );
        for (dst, proto, port) in [(local, 6, 8081), (remote, 17, 5354)] {
            let (verdict, unchanged, _) = send(dst, proto, port);
            assert_eq!(
                verdict, TC_ACT_UNSPEC,
                "{dst}:{port}: not in the filter, not looked up"
            );
            assert!(unchanged, "{dst}:{port} passes untouched");
        }
        // In the filter, the same packets find their frontends.
        for port in [8081u16, 5354] {
            maps.fe_ports.allow(port.to_be()).unwrap();
        }
        let (_, _, p) = send(local, 6, 8081);
        assert_eq!((p.dst, p.dport), (IpAddr::V4(LOCAL_POD), 8080));
        let (_, _, p) = send(remote, 17, 5354);
        assert_eq!((p.dst, p.dport), (IpAddr::V4(REMOTE_POD), 5353));
    });
}

/// An IPv4 fragment: `payload` is its part of the datagram's IP payload, `offset` in bytes
/// (a multiple of 8), `more` = more fragments follow.
fn ipv4_fragment(
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    id: u16,
    offset: usize,
    more: bool,
    payload: &[u8],
) -> Vec<u8> {
    assert_eq!(offset % 8, 0);
    let mut ip = ipv4(proto, src, dst, payload);
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    let field = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
    ip[6..8].copy_from_slice(&field.to_be_bytes());
    ip[10..12].copy_from_slice(&[0, 0]);
    let c = fold(sum16(&ip[..20], 0));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip
}

/// Addresses, id, fragment field and IP payload of an IPv4 fragment frame (header checksum
/// verified; the L4 checksum covers the whole datagram, so it is checked after reassembly).
fn fragment_parts(frame: &[u8]) -> (Ipv4Addr, Ipv4Addr, u16, u16, Vec<u8>) {
    let ip = &frame[14..];
    assert_eq!(fold(sum16(&ip[..20], 0)), 0, "IPv4 header checksum wrong");
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    (
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        u16::from_be_bytes([ip[4], ip[5]]),
        u16::from_be_bytes([ip[6], ip[7]]),
        ip[20..total].to_vec(),
    )
}

#[test]
fn every_fragment_of_a_udp_datagram_is_translated_both_ways() {
    on_node1(bench, |b| {
        let payload: Vec<u8> = (0..120u8).collect();
        // A datagram to the UDP NodePort (remote backend: DNAT + SNAT), in two fragments: the
        // UDP header and 24 bytes, then the rest.
        let fragments = |from: (Ipv4Addr, u16), to: (Ipv4Addr, u16), id: u16, data: &[u8]| {
            let (s, d) = (IpAddr::V4(from.0), IpAddr::V4(to.0));
            let dgram = udp(&s, &d, from.1, to.1, data, false);
            let frame = |off: usize, end: usize, more| {
                ether(
                    b.eth0_mac,
                    PEER_MAC,
                    0x0800,
                    &ipv4_fragment(17, from.0, to.0, id, off, more, &dgram[off..end]),
                )
            };
            (frame(0, 32, true), frame(32, dgram.len(), false))
        };
        let tc = |frame: &[u8]| {
            let (verdict, out) = b.tc("tg_tc_ingress", frame);
            (verdict, fragment_parts(&out))
        };
        // The whole datagram's UDP checksum, over both fragments' parts as translated.
        let reassembled_ok = |src: Ipv4Addr, dst: Ipv4Addr, a: &[u8], b: &[u8]| {
            let whole = [a, b].concat();
            let (s, d) = (IpAddr::V4(src), IpAddr::V4(dst));
            fold(sum16(&whole, pseudo(&s, &d, 17, whole.len()))) == 0
        };

        let (first, later) = fragments((CLIENT, 5010), (NODE, 30053), 0x4242, &payload);
        // A later fragment before its first: nothing to go by, it passes untouched.
        let (verdict, (_, dst, ..)) = tc(&later);
        assert_eq!((verdict, dst), (TC_ACT_UNSPEC, NODE));
        let (v1, (s1, d1, id1, field1, l4a)) = tc(&first);
        assert_eq!(v1, TC_ACT_REDIRECT);
        assert_eq!((s1, d1, id1, field1), (NODE, REMOTE_POD, 0x4242, 0x2000));
        assert_eq!(u16::from_be_bytes([l4a[2], l4a[3]]), 5353);
        let nat_port = u16::from_be_bytes([l4a[0], l4a[1]]);
        let (v2, (s2, d2, id2, field2, l4b)) = tc(&later);
        assert_eq!(
            (v2, s2, d2, id2, field2),
            (TC_ACT_REDIRECT, NODE, REMOTE_POD, 0x4242, 4),
            "the later fragment follows the first"
        );
        assert!(reassembled_ok(NODE, REMOTE_POD, &l4a, &l4b));
        assert_eq!(&[l4a[8..].to_vec(), l4b].concat(), &payload);

        // The backend's answer comes back in fragments too: translated to the NodePort.
        let answer: Vec<u8> = (0..100u8).rev().collect();
        let (first, later) = fragments((REMOTE_POD, 5353), (NODE, nat_port), 0x0707, &answer);
        let (v1, (s1, d1, _, _, l4a)) = tc(&first);
        let (v2, (s2, d2, _, _, l4b)) = tc(&later);
        assert_eq!((v1, s1, d1), (TC_ACT_REDIRECT, NODE, CLIENT));
        assert_eq!((v2, s2, d2), (TC_ACT_REDIRECT, NODE, CLIENT));
        assert_eq!(
            (
                u16::from_be_bytes([l4a[0], l4a[1]]),
                u16::from_be_bytes([l4a[2], l4a[3]])
            ),
            (30053, 5010)
        );
        assert!(reassembled_ok(NODE, CLIENT, &l4a, &l4b));

        // XDP: the same in place, sent back out of the uplink.
        let (first, later) = fragments((CLIENT, 5011), (NODE, 30053), 0x4343, &payload);
        let mut outs = Vec::new();
        for frame in [&first, &later] {
            let (verdict, out) = b.xdp(frame);
            assert_eq!(verdict, XDP_TX);
            let (s, d, ..) = fragment_parts(&out);
            assert_eq!((s, d), (NODE, REMOTE_POD));
            assert_eq!(&out[0..6], &PEER_MAC, "to the peer node");
            outs.push(fragment_parts(&out).4);
        }
        assert!(reassembled_ok(NODE, REMOTE_POD, &outs[0], &outs[1]));
    });
}

/// A frame of `ipv6_exts` from the client to node1 as it arrives on eth0.
/// An IPv4 frame from the outside client to node1's address, as eth0 receives it.
fn client4_frame(b: &Bench, proto: u8, l4: &[u8]) -> Vec<u8> {
    client4_frame_to(b, NODE, proto, l4)
}

/// An IPv4 frame from the outside client to `dst`, as eth0 receives it.
fn client4_frame_to(b: &Bench, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    ether(
        b.eth0_mac,
        CLIENT_MAC,
        0x0800,
        &ipv4(proto, CLIENT, dst, l4),
    )
}

/// An IPv4 frame of the node itself to `dst`, as it leaves by eth0 (to the router).
fn host4_frame_to(b: &Bench, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    ether(PEER_MAC, b.eth0_mac, 0x0800, &ipv4(proto, NODE, dst, l4))
}

/// A SYN from the outside client (IPv6, no extension headers) to `dst:dport`.
fn client6_syn_to(b: &Bench, dst: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
    let s: IpAddr = CLIENT6.parse().unwrap();
    ether(
        b.eth0_mac,
        CLIENT_MAC,
        0x86dd,
        &ipv6(6, &s, &dst, &tcp(&s, &dst, sport, dport, 0x02, &[])),
    )
}

fn client6_frame(b: &Bench, exts: &[(u8, Vec<u8>)], proto: u8, l4: &[u8]) -> Vec<u8> {
    let (s, d): (IpAddr, IpAddr) = (CLIENT6.parse().unwrap(), NODE6.parse().unwrap());
    ether(
        b.eth0_mac,
        CLIENT_MAC,
        0x86dd,
        &ipv6_exts(&s, &d, exts, proto, l4),
    )
}

#[test]
fn ipv6_extension_headers_are_walked_to_the_tcp_header() {
    on_node1(bench, |b| {
        let (s, d): (IpAddr, IpAddr) = (CLIENT6.parse().unwrap(), NODE6.parse().unwrap());
        let backend: IpAddr = "fd00:244:1::11".parse().unwrap();
        let exts = [
            (HOP_BY_HOP, options_header()),
            (DEST_OPTS, options_header()),
        ];
        // A SYN to the IPv6 NodePort (Local policy) behind a Hop-by-Hop and a Destination
        // Options header: translated, the headers kept, the checksum right.
        let syn = client6_frame(b, &exts, 6, &tcp(&s, &d, 40020, 30086, 0x02, &[]));
        let (verdict, out) = b.tc("tg_tc_ingress", &syn);
        assert_eq!(verdict, TC_ACT_OK);
        let p = parse(&out);
        assert_eq!(
            (p.src, p.sport, p.dst, p.dport),
            (s, 40020, backend, 8080),
            "DNAT behind extension headers, checksum verified"
        );
        assert_eq!(out.len(), syn.len(), "the extension headers stay");
        assert_eq!(out[14 + 6], HOP_BY_HOP);
        // The backend's answer, with a Destination Options header, comes from the NodePort.
        let seg = tcp(&backend, &s, 8080, 40020, 0x12, &[]);
        let answer = ether(
            CLIENT_MAC,
            b.eth0_mac,
            0x86dd,
            &ipv6_exts(&backend, &s, &[(DEST_OPTS, options_header())], 6, &seg),
        );
        let (_, out) = b.tc("tg_tc_from_pod", &answer);
        let p = parse(&out);
        assert_eq!((p.src, p.sport, p.tcp_flags), (d, 30086, 0x12));
        // XDP, to the remote backend (DNAT + SNAT), transmitted in place.
        let syn = client6_frame(b, &exts, 6, &tcp(&s, &d, 40021, 30084, 0x02, &[]));
        let (verdict, out) = b.xdp(&syn);
        assert_eq!(verdict, XDP_TX);
        let p = parse(&out);
        assert_eq!(
            (p.src, p.dst, p.dport),
            (d, REMOTE_POD6.parse().unwrap(), 8080),
            "XDP: DNAT + SNAT behind extension headers, checksum verified"
        );
        // A Routing header with segments left: the destination is not the final one, so the
        // packet is not a frontend's; it passes untouched.
        let mut routing = vec![0, 2, 0, 1, 0, 0, 0, 0];
        routing.extend_from_slice(&[0; 16]);
        let routed = client6_frame(
            b,
            &[(ROUTING, routing.clone())],
            6,
            &tcp(&s, &d, 40022, 30086, 0x02, &[]),
        );
        let (verdict, out) = b.tc("tg_tc_ingress", &routed);
        assert_eq!((verdict, out), (TC_ACT_UNSPEC, routed));
        // With no segments left, it is.
        routing[3] = 0;
        let routed = client6_frame(
            b,
            &[(ROUTING, routing)],
            6,
            &tcp(&s, &d, 40023, 30086, 0x02, &[]),
        );
        let (_, out) = b.tc("tg_tc_ingress", &routed);
        assert_eq!(parse(&out).dst, backend);
        // REJECT: a SYN behind a Hop-by-Hop header to a NodePort without endpoints gets a
        // reset with a plain IPv6 header.
        let syn = client6_frame(b, &exts[..1], 6, &tcp(&s, &d, 40024, 30095, 0x02, &[]));
        let (verdict, out) = b.tc("tg_tc_ingress", &syn);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let r = parse(&out);
        assert_eq!(
            (r.src, r.sport, r.dst, r.dport, r.tcp_flags),
            (d, 30095, s, 40024, 0x14),
            "a reset, checksum verified"
        );
        assert_eq!((out[14 + 6], out.len()), (6, 14 + 40 + 20));
        // A datagram behind a Destination Options header gets a port unreachable with a plain
        // IPv6 header, quoting the datagram's headers, the extension header with them.
        let dgram = client6_frame(
            b,
            &exts[1..],
            17,
            &udp(&s, &d, 5024, 30097, b"hello", false),
        );
        let (verdict, out) = b.tc("tg_tc_ingress", &dgram);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let icmp = parse(&out);
        assert_eq!((icmp.proto, icmp.src, icmp.dst), (58, d, s));
        assert_eq!((out[14 + 6], &icmp.l4[0..2]), (58, &[1, 4][..]));
        assert_eq!(icmp.l4[8..], dgram[14..14 + 40 + 8 + 8]);
    });
}

/// The IPv6 fragments of a datagram: the first with the Fragment header's offset 0 and the
/// UDP header, the later ones from byte `split` of `dgram` (the UDP header and payload).
fn ipv6_fragments(
    b: &Bench,
    from: &IpAddr,
    to: &IpAddr,
    id: u32,
    dgram: &[u8],
    split: usize,
) -> (Vec<u8>, Vec<u8>) {
    let frame = |off: usize, end: usize, more: bool| {
        let ip = ipv6_exts(
            from,
            to,
            &[(FRAGMENT, fragment_header(id, off, more))],
            17,
            &dgram[off..end],
        );
        ether(b.eth0_mac, CLIENT_MAC, 0x86dd, &ip)
    };
    (frame(0, split, true), frame(split, dgram.len(), false))
}

/// Addresses, Fragment header (offset field, identification) and the fragment's part of the
/// datagram.
fn fragment6_parts(frame: &[u8]) -> (IpAddr, IpAddr, u16, u32, Vec<u8>) {
    let ip = &frame[14..];
    assert_eq!(ip[6], FRAGMENT);
    let len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let s: [u8; 16] = ip[8..24].try_into().unwrap();
    let d: [u8; 16] = ip[24..40].try_into().unwrap();
    (
        IpAddr::V6(Ipv6Addr::from(s)),
        IpAddr::V6(Ipv6Addr::from(d)),
        u16::from_be_bytes([ip[42], ip[43]]),
        u32::from_be_bytes(ip[44..48].try_into().unwrap()),
        ip[48..40 + len].to_vec(),
    )
}

#[test]
fn every_ipv6_fragment_of_a_udp_datagram_is_translated_both_ways() {
    on_node1(bench, |b| {
        let (client, node6, backend): (IpAddr, IpAddr, IpAddr) = (
            CLIENT6.parse().unwrap(),
            NODE6.parse().unwrap(),
            REMOTE_POD6.parse().unwrap(),
        );
        let payload: Vec<u8> = (0..120u8).collect();
        let tc = |frame: &[u8]| {
            let (verdict, out) = b.tc("tg_tc_ingress", frame);
            (verdict, fragment6_parts(&out))
        };
        let reassembled_ok = |src: &IpAddr, dst: &IpAddr, a: &[u8], b: &[u8]| {
            let whole = [a, b].concat();
            fold(sum16(&whole, pseudo(src, dst, 17, whole.len()))) == 0
        };
        // A datagram to the IPv6 UDP NodePort (remote backend: DNAT + SNAT) in two fragments.
        let dgram = udp(&client, &node6, 5020, 30054, &payload, false);
        let (first, later) = ipv6_fragments(b, &client, &node6, 0x0102_0304, &dgram, 32);
        // A later fragment before its first: nothing to go by, it passes untouched.
        let (verdict, out) = b.tc("tg_tc_ingress", &later);
        assert_eq!((verdict, &out), (TC_ACT_UNSPEC, &later));
        let (v1, (s1, d1, field1, id1, l4a)) = tc(&first);
        assert_eq!(v1, TC_ACT_REDIRECT);
        assert_eq!((s1, d1, field1, id1), (node6, backend, 1, 0x0102_0304));
        assert_eq!(u16::from_be_bytes([l4a[2], l4a[3]]), 5353);
        let nat_port = u16::from_be_bytes([l4a[0], l4a[1]]);
        let (v2, (s2, d2, field2, id2, l4b)) = tc(&later);
        assert_eq!(
            (v2, s2, d2, field2, id2),
            (TC_ACT_REDIRECT, node6, backend, 32, 0x0102_0304),
            "the later fragment follows the first"
        );
        assert!(reassembled_ok(&node6, &backend, &l4a, &l4b));
        assert_eq!(&[l4a[8..].to_vec(), l4b].concat(), &payload);
        // Another datagram with the same identification from another client: its later
        // fragment does not take the first datagram's ports (the key has whole addresses).
        let other: IpAddr = "fd00:78::100".parse().unwrap();
        let odgram = udp(&other, &node6, 5021, 30054, &payload, false);
        let (_, olater) = ipv6_fragments(b, &other, &node6, 0x0102_0304, &odgram, 32);
        let (verdict, out) = b.tc("tg_tc_ingress", &olater);
        assert_eq!((verdict, &out), (TC_ACT_UNSPEC, &olater));

        // The backend's answer comes back in fragments too: translated to the NodePort.
        let answer: Vec<u8> = (0..100u8).rev().collect();
        let adgram = udp(&backend, &node6, 5353, nat_port, &answer, false);
        let (first, later) = ipv6_fragments(b, &backend, &node6, 7, &adgram, 24);
        let (v1, (s1, d1, _, _, l4a)) = tc(&first);
        let (v2, (s2, d2, _, _, l4b)) = tc(&later);
        assert_eq!((v1, s1, d1), (TC_ACT_REDIRECT, node6, client));
        assert_eq!((v2, s2, d2), (TC_ACT_REDIRECT, node6, client));
        assert_eq!(
            (
                u16::from_be_bytes([l4a[0], l4a[1]]),
                u16::from_be_bytes([l4a[2], l4a[3]])
            ),
            (30054, 5020)
        );
        assert!(reassembled_ok(&node6, &client, &l4a, &l4b));

        // XDP: the same in place, sent back out of the uplink.
        let dgram = udp(&client, &node6, 5022, 30054, &payload, false);
        let (first, later) = ipv6_fragments(b, &client, &node6, 9, &dgram, 48);
        let mut outs = Vec::new();
        for frame in [&first, &later] {
            let (verdict, out) = b.xdp(frame);
            assert_eq!(verdict, XDP_TX);
            let (s, d, .., part) = fragment6_parts(&out);
            assert_eq!((s, d), (node6, backend));
            assert_eq!(&out[0..6], &PEER_MAC, "to the peer node");
            outs.push(part);
        }
        assert!(reassembled_ok(&node6, &backend, &outs[0], &outs[1]));
    });
}

/// An ICMP (IPv4) error of `kind`/`code` from `from` to `to`, quoting `quoted` (an IPv4 packet).
fn icmp4_error(
    from: Ipv4Addr,
    to: Ipv4Addr,
    kind: u8,
    code: u8,
    rest: [u8; 4],
    quoted: &[u8],
) -> Vec<u8> {
    let mut m = vec![kind, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(quoted);
    let c = fold(sum16(&m, 0));
    m[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4(1, from, to, &m)
}

/// An ICMPv6 error, as [`icmp4_error`].
fn icmp6_error(from: &IpAddr, to: &IpAddr, kind: u8, rest: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, 0, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(quoted);
    let c = fold(sum16(&m, pseudo(from, to, 58, m.len())));
    m[2..4].copy_from_slice(&c.to_be_bytes());
    ipv6(58, from, to, &m)
}

/// An ICMP or ICMPv6 error frame's outer addresses and its quoted packet's addresses and ports,
/// with the outer header's, the ICMP and the quoted IPv4 header's checksums verified.
#[derive(Debug, PartialEq)]
struct Quoted {
    from: IpAddr,
    to: IpAddr,
    src: (IpAddr, u16),
    dst: (IpAddr, u16),
}

fn quoted(frame: &[u8]) -> Quoted {
    let outer = parse(frame);
    assert!(outer.proto == 1 || outer.proto == 58, "{outer:?}");
    let inner = &outer.l4[8..];
    let (src, dst, l4) = if outer.proto == 1 {
        assert_eq!(
            fold(sum16(&inner[..20], 0)),
            0,
            "quoted IPv4 header checksum wrong"
        );
        (
            IpAddr::V4(Ipv4Addr::new(inner[12], inner[13], inner[14], inner[15])),
            IpAddr::V4(Ipv4Addr::new(inner[16], inner[17], inner[18], inner[19])),
            &inner[20..],
        )
    } else {
        let s: [u8; 16] = inner[8..24].try_into().unwrap();
        let d: [u8; 16] = inner[24..40].try_into().unwrap();
        (
            IpAddr::V6(Ipv6Addr::from(s)),
            IpAddr::V6(Ipv6Addr::from(d)),
            &inner[40..],
        )
    };
    let port = |i: usize| u16::from_be_bytes([l4[i], l4[i + 1]]);
    Quoted {
        from: outer.src,
        to: outer.dst,
        src: (src, port(0)),
        dst: (dst, port(2)),
    }
}

#[test]
fn icmp_errors_about_translated_flows_go_back_translated() {
    on_node1(bench, |b| {
        let (client, node4) = (IpAddr::V4(CLIENT), IpAddr::V4(NODE));
        let remote = IpAddr::V4(REMOTE_POD);
        // A UDP datagram to the NodePort (remote backend, DNAT + SNAT) starts a flow.
        let dgram = |sport| client4_frame(b, 17, &udp(&client, &node4, sport, 30053, b"q", false));
        let (_, out) = b.tc("tg_tc_ingress", &dgram(5030));
        let sent = parse(&out);
        assert_eq!((sent.src, sent.dst, sent.dport), (node4, remote, 5353));
        let nat_port = sent.sport;
        // The backend answers with a port unreachable quoting the datagram as it arrived:
        // the client gets it from the NodePort, quoting its own datagram.
        let quote = out[14..].to_vec();
        let error = ether(
            b.eth0_mac,
            PEER_MAC,
            0x0800,
            &icmp4_error(REMOTE_POD, NODE, 3, 3, [0; 4], &quote),
        );
        let (verdict, out) = b.tc("tg_tc_ingress", &error);
        assert_eq!(verdict, TC_ACT_REDIRECT, "back out to the client");
        assert_eq!(
            quoted(&out),
            Quoted {
                from: node4,
                to: client,
                src: (client, 5030),
                dst: (node4, 30053),
            }
        );
        assert_eq!(&out[0..6], &CLIENT_MAC);
        // A router on the way to the client: Fragmentation Needed about the backend's answer
        // as it left the node (from the NodePort). The backend gets it, quoting its answer
        // as it sent it; the router keeps its address.
        let router = Ipv4Addr::new(192, 168, 77, 254);
        let answer = ipv4(
            17,
            NODE,
            CLIENT,
            &udp(&node4, &client, 30053, 5030, &[b'a'; 64], false),
        );
        let error = ether(
            b.eth0_mac,
            CLIENT_MAC,
            0x0800,
            &icmp4_error(router, NODE, 3, 4, [0, 0, 0x05, 0x00], &answer),
        );
        let (verdict, out) = b.tc("tg_tc_ingress", &error);
        assert_eq!(verdict, TC_ACT_REDIRECT, "out to the backend's node");
        assert_eq!(
            quoted(&out),
            Quoted {
                from: IpAddr::V4(router),
                to: remote,
                src: (remote, 5353),
                dst: (node4, nat_port),
            }
        );
        assert_eq!(&out[0..6], &PEER_MAC);
        assert_eq!(
            &out[14 + 20 + 4..14 + 20 + 8],
            &[0, 0, 0x05, 0x00],
            "the MTU stays"
        );
        // An error about a flow that was never translated passes untouched.
        let other = ipv4(
            17,
            NODE,
            CLIENT,
            &udp(&node4, &client, 22, 5031, b"x", false),
        );
        let error = ether(
            b.eth0_mac,
            CLIENT_MAC,
            0x0800,
            &icmp4_error(router, NODE, 3, 4, [0, 0, 0x05, 0x00], &other),
        );
        let (verdict, out) = b.tc("tg_tc_ingress", &error);
        assert_eq!((verdict, out), (TC_ACT_UNSPEC, error));

        // IPv6: a router's Packet Too Big about a TCP reply on its way to the client.
        let (client6, node6, backend6): (IpAddr, IpAddr, IpAddr) = (
            CLIENT6.parse().unwrap(),
            NODE6.parse().unwrap(),
            REMOTE_POD6.parse().unwrap(),
        );
        let syn = client6_frame(b, &[], 6, &tcp(&client6, &node6, 40060, 30084, 0x02, &[]));
        let (_, out) = b.tc("tg_tc_ingress", &syn);
        let nat_port = parse(&out).sport;
        let reply = ipv6(
            6,
            &node6,
            &client6,
            &tcp(&node6, &client6, 30084, 40060, 0x10, &[0; 64]),
        );
        let router6: IpAddr = "fd00:77::fe".parse().unwrap();
        let error = ether(
            b.eth0_mac,
            CLIENT_MAC,
            0x86dd,
            &icmp6_error(&router6, &node6, 2, [0, 0, 0x05, 0x00], &reply),
        );
        let (verdict, out) = b.tc("tg_tc_ingress", &error);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(
            quoted(&out),
            Quoted {
                from: router6,
                to: backend6,
                src: (backend6, 8080),
                dst: (node6, nat_port),
            },
            "ICMPv6 checksum verified"
        );
    });
}
