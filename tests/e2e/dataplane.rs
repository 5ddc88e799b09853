//! The service dataplane end to end: real TCP and UDP through the real kernel in the emulated
//! cluster, from pods, host processes and an outside client.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "end-to-end tests panic with clear messages"
)]

use std::time::Duration;

use tollgate_tests::{
    scenario::{self, Scenario},
    traffic::Mode,
};

const T: Duration = Duration::from_secs(2);

#[test]
fn cluster_ip_from_pods_and_host_tcp_and_udp() {
    let s = Scenario::new();
    let web = format!("{}:80", scenario::WEB);
    // From a pod: both backends (one local, one on the other node) answer.
    let t = s.client(s.pod("n1p2").placement(), &web, 40, Mode::Tcp, T);
    assert_eq!(t.ok, 40, "{t:?}");
    assert_eq!(
        t.backends.keys().collect::<Vec<_>>(),
        ["n1p1", "n2p1"],
        "{t:?}"
    );
    assert_eq!(
        t.peers,
        [web.clone()],
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
    // UDP, connected and unconnected: replies come from the service address.
    let dns = format!("{}:53", scenario::DNS);
    let t = s.client(s.pod("n2p1").placement(), &dns, 20, Mode::Udp, T);
    assert_eq!(t.ok, 20, "{t:?}");
    assert_eq!(t.peers, [dns.clone()], "{t:?}");
    let t = s.client(s.pod("n2p1").placement(), &dns, 20, Mode::UdpUnconnected, T);
    assert_eq!(t.ok, 20, "{t:?}");
    assert_eq!(
        t.peers,
        [dns.clone()],
        "recvfrom shows the service address: {t:?}"
    );
    assert_eq!(
        t.backends.len(),
        1,
        "one unconnected socket keeps its backend: {t:?}"
    );
}
