//! kube-proxy's CategorizeEndpoints (pkg/proxy/topology.go), restated: which endpoints of one
//! service port a node uses for Cluster and for Local traffic policy, and whether the service
//! has endpoints anywhere (REJECT vs DROP).

use std::sync::Arc;

use super::ingest::{EndpointRecord, ep_flags};

/// How a service port uses endpoints (derived from its traffic policies and frontends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortPolicy {
    /// iTP ≠ Local, or the port is externally accessible (eTP=Local still needs cluster
    /// endpoints for the pod/host short-circuit).
    pub uses_cluster: bool,
    /// iTP = Local, or (eTP = Local and externally accessible).
    pub uses_local: bool,
}

/// What the node knows about itself for topology.
#[derive(Debug, Clone, Copy)]
pub struct NodeTopology<'a> {
    /// Value of `topology.kubernetes.io/zone`; a missing or empty label never matches.
    pub zone: Option<&'a str>,
    /// The `PreferSameTrafficDistribution` feature gate (node hints).
    pub prefer_same_node: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopologyMode {
    None,
    PreferSameZone,
    PreferSameNode,
}

/// The result, as indexes into the input endpoint slice. `None` means "this kind of endpoints is
/// not used by the port" (distinct from an empty selection).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Categorized {
    pub cluster: Option<Vec<usize>>,
    pub local: Option<Vec<usize>>,
    pub has_any: bool,
}

fn ready(ep: &EndpointRecord) -> bool {
    ep.has(ep_flags::READY)
}

fn serving_terminating(ep: &EndpointRecord) -> bool {
    ep.has(ep_flags::SERVING) && ep.has(ep_flags::TERMINATING)
}

fn zone_hinted(ep: &EndpointRecord, zone: Option<&str>) -> bool {
    zone.is_some_and(|z| ep.zone_hints.iter().any(|h| &**h == z))
}

fn topology_mode(endpoints: &[EndpointRecord], node: NodeTopology<'_>) -> TopologyMode {
    let mut has_ready = false;
    let (mut all_node_hints, mut for_node) = (true, false);
    let (mut all_zone_hints, mut for_zone) = (true, false);
    for ep in endpoints.iter().filter(|e| ready(e)) {
        has_ready = true;
        if !ep.has(ep_flags::HAS_NODE_HINTS) {
            all_node_hints = false;
        } else if ep.has(ep_flags::NODE_HINT_ME) {
            for_node = true;
        }
        if ep.zone_hints.is_empty() {
            all_zone_hints = false;
        } else if zone_hinted(ep, node.zone) {
            for_zone = true;
        }
    }
    if !has_ready {
        return TopologyMode::None;
    }
    if node.prefer_same_node && all_node_hints && for_node {
        return TopologyMode::PreferSameNode;
    }
    if all_zone_hints && for_zone {
        return TopologyMode::PreferSameZone;
    }
    TopologyMode::None
}

fn available(ep: &EndpointRecord, mode: TopologyMode, node: NodeTopology<'_>) -> bool {
    match mode {
        TopologyMode::None => true,
        TopologyMode::PreferSameNode => ep.has(ep_flags::NODE_HINT_ME),
        TopologyMode::PreferSameZone => zone_hinted(ep, node.zone),
    }
}

fn select(endpoints: &[EndpointRecord], keep: impl Fn(&EndpointRecord) -> bool) -> Vec<usize> {
    endpoints
        .iter()
        .enumerate()
        .filter(|(_, e)| keep(e))
        .map(|(i, _)| i)
        .collect()
}

pub fn categorize(
    endpoints: &[EndpointRecord],
    policy: PortPolicy,
    node: NodeTopology<'_>,
) -> Categorized {
    let mut out = Categorized::default();
    if endpoints.is_empty() {
        // Nothing to categorize, but "uses this kind, has none" differs from "does not use".
        out.cluster = policy.uses_cluster.then(Vec::new);
        out.local = policy.uses_local.then(Vec::new);
        return out;
    }
    if policy.uses_cluster {
        let mode = topology_mode(endpoints, node);
        let mut cluster = select(endpoints, |e| ready(e) && available(e, mode, node));
        // No Ready endpoint anywhere (topology was already off if none was Ready for it):
        // fall back to every serving-and-terminating endpoint, topology ignored.
        if cluster.is_empty() {
            cluster = select(endpoints, serving_terminating);
        }
        out.has_any = !cluster.is_empty();
        out.cluster = Some(cluster);
    }
    if !policy.uses_local {
        return out;
    }
    let (mut local_ready, mut local_serving_terminating) = (false, false);
    for ep in endpoints {
        if ready(ep) {
            out.has_any = true;
            local_ready |= ep.has(ep_flags::LOCAL);
        } else if serving_terminating(ep) {
            out.has_any = true;
            local_serving_terminating |= ep.has(ep_flags::LOCAL);
        }
    }
    // Topology never applies to local endpoints.
    out.local = Some(if local_ready {
        select(endpoints, |e| e.has(ep_flags::LOCAL) && ready(e))
    } else if local_serving_terminating {
        select(endpoints, |e| {
            e.has(ep_flags::LOCAL) && serving_terminating(e)
        })
    } else {
        Vec::new()
    });
    out
}

/// Builds the shared, sorted set for a selection (inputs are already sorted by address).
pub fn to_set<T: Copy>(items: &[T], selection: &[usize]) -> Arc<[T]> {
    selection.iter().map(|i| items[*i]).collect()
}

#[cfg(test)]
mod tests {
    //! Table tests written from upstream's topology_test.go semantics and the reference's edge
    //! cases (k8s-NN names refer to rows of upstream's CategorizeEndpoints table).
    use std::net::IpAddr;

    use super::*;

    struct Ep {
        ip: &'static str,
        ready: bool,
        serving: bool,
        terminating: bool,
        local: bool,
        zones: &'static [&'static str],
        nodes: &'static [&'static str],
    }

    const fn ep(ip: &'static str) -> Ep {
        Ep {
            ip,
            ready: true,
            serving: true,
            terminating: false,
            local: false,
            zones: &[],
            nodes: &[],
        }
    }

    impl Ep {
        const fn local(mut self) -> Self {
            self.local = true;
            self
        }
        const fn unready(mut self) -> Self {
            self.ready = false;
            self.serving = false;
            self
        }
        /// Terminating but still serving (the graceful-termination fallback).
        const fn terminating(mut self) -> Self {
            self.ready = false;
            self.serving = true;
            self.terminating = true;
            self
        }
        const fn zones(mut self, z: &'static [&'static str]) -> Self {
            self.zones = z;
            self
        }
        const fn nodes(mut self, n: &'static [&'static str]) -> Self {
            self.nodes = n;
            self
        }
    }

    const ME: &str = "node-me";

    fn records(eps: &[Ep]) -> Vec<EndpointRecord> {
        eps.iter()
            .map(|e| {
                let mut flags = 0;
                for (on, bit) in [
                    (e.ready, ep_flags::READY),
                    (e.serving, ep_flags::SERVING),
                    (e.terminating, ep_flags::TERMINATING),
                    (e.local, ep_flags::LOCAL),
                    (!e.nodes.is_empty(), ep_flags::HAS_NODE_HINTS),
                    (e.nodes.contains(&ME), ep_flags::NODE_HINT_ME),
                ] {
                    if on {
                        flags |= bit;
                    }
                }
                EndpointRecord {
                    ip: e.ip.parse::<IpAddr>().unwrap(),
                    flags,
                    zone_hints: e.zones.iter().map(|z| Arc::<str>::from(*z)).collect(),
                }
            })
            .collect()
    }

    const CLUSTER: PortPolicy = PortPolicy {
        uses_cluster: true,
        uses_local: false,
    };
    /// iTP=Local on a ClusterIP-only service.
    const LOCAL_ONLY: PortPolicy = PortPolicy {
        uses_cluster: false,
        uses_local: true,
    };
    /// eTP=Local (or iTP=Local) on an externally accessible service.
    const BOTH: PortPolicy = PortPolicy {
        uses_cluster: true,
        uses_local: true,
    };

    struct Case {
        name: &'static str,
        policy: PortPolicy,
        zone: Option<&'static str>,
        prefer_same_node: bool,
        endpoints: Vec<Ep>,
        cluster: Option<&'static [&'static str]>,
        local: Option<&'static [&'static str]>,
        has_any: bool,
    }

    fn ips(eps: &[EndpointRecord], sel: &Option<Vec<usize>>) -> Option<Vec<String>> {
        sel.as_ref().map(|s| {
            let mut v: Vec<String> = s.iter().map(|i| eps[*i].ip.to_string()).collect();
            v.sort();
            v
        })
    }

    fn want(x: Option<&[&str]>) -> Option<Vec<String>> {
        x.map(|v| {
            let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
            v.sort();
            v
        })
    }

    fn run(cases: Vec<Case>) {
        for c in cases {
            let recs = records(&c.endpoints);
            let node = NodeTopology {
                zone: c.zone,
                prefer_same_node: c.prefer_same_node,
            };
            let got = categorize(&recs, c.policy, node);
            assert_eq!(
                ips(&recs, &got.cluster),
                want(c.cluster),
                "{}: cluster",
                c.name
            );
            assert_eq!(ips(&recs, &got.local), want(c.local), "{}: local", c.name);
            assert_eq!(got.has_any, c.has_any, "{}: has_any", c.name);
        }
    }

    fn case(name: &'static str, policy: PortPolicy, endpoints: Vec<Ep>) -> Case {
        Case {
            name,
            policy,
            zone: Some("zone-a"),
            prefer_same_node: false,
            endpoints,
            cluster: None,
            local: None,
            has_any: true,
        }
    }

    impl Case {
        fn cluster(mut self, c: &'static [&'static str]) -> Self {
            self.cluster = Some(c);
            self
        }
        fn local(mut self, l: &'static [&'static str]) -> Self {
            self.local = Some(l);
            self
        }
        fn zone(mut self, z: Option<&'static str>) -> Self {
            self.zone = z;
            self
        }
        fn gate(mut self) -> Self {
            self.prefer_same_node = true;
            self
        }
        fn no_endpoints(mut self) -> Self {
            self.has_any = false;
            self
        }
    }

    #[test]
    fn zone_hints() {
        run(vec![
            case(
                "filtered to my zone",
                CLUSTER,
                vec![
                    ep("10.1.2.3").zones(&["zone-a"]),
                    ep("10.1.2.4").zones(&["zone-b"]),
                    ep("10.1.2.5").zones(&["zone-c"]),
                    ep("10.1.2.6").zones(&["zone-a"]),
                ],
            )
            .cluster(&["10.1.2.3", "10.1.2.6"]),
            case(
                "one Ready endpoint without hints disables topology",
                CLUSTER,
                vec![
                    ep("10.1.2.3").zones(&["zone-a"]),
                    ep("10.1.2.4").zones(&["zone-b"]),
                    ep("10.1.2.5"),
                    ep("10.1.2.6").zones(&["zone-a"]),
                ],
            )
            .cluster(&["10.1.2.3", "10.1.2.4", "10.1.2.5", "10.1.2.6"]),
            case(
                "an unready endpoint without hints does not disable topology",
                CLUSTER,
                vec![
                    ep("10.1.2.3").zones(&["zone-a"]),
                    ep("10.1.2.4").zones(&["zone-b"]),
                    ep("10.1.2.5").unready(),
                ],
            )
            .cluster(&["10.1.2.3"]),
            case(
                "no endpoint hinted for my zone: topology off",
                CLUSTER,
                vec![
                    ep("10.1.2.3").zones(&["zone-b"]),
                    ep("10.1.2.4").zones(&["zone-c"]),
                ],
            )
            .cluster(&["10.1.2.3", "10.1.2.4"]),
            case(
                "node without zone label: topology off",
                CLUSTER,
                vec![
                    ep("10.1.2.3").zones(&["zone-a"]),
                    ep("10.1.2.4").zones(&["zone-b"]),
                ],
            )
            .zone(None)
            .cluster(&["10.1.2.3", "10.1.2.4"]),
            case(
                "multi-zone hints: any match qualifies",
                CLUSTER,
                vec![
                    ep("10.1.2.3").zones(&["zone-a", "zone-b", "zone-c"]),
                    ep("10.1.2.4").zones(&["zone-b", "zone-c"]),
                    ep("10.1.2.5").zones(&["zone-b", "zone-d"]),
                    ep("10.1.2.6").zones(&["zone-c"]),
                ],
            )
            .zone(Some("zone-c"))
            .cluster(&["10.1.2.3", "10.1.2.4", "10.1.2.6"]),
            // k8s-08
            case(
                "unready in my zone, Ready elsewhere: use the Ready ones elsewhere",
                CLUSTER,
                vec![
                    ep("10.1.2.3").zones(&["zone-a"]).unready(),
                    ep("10.1.2.4").zones(&["zone-b"]),
                    ep("10.1.2.5").zones(&["zone-c"]),
                    ep("10.1.2.6").zones(&["zone-a"]).unready(),
                ],
            )
            .cluster(&["10.1.2.4", "10.1.2.5"]),
            case(
                "unready endpoint in my zone is left out",
                CLUSTER,
                vec![
                    ep("10.1.2.3").zones(&["zone-a"]),
                    ep("10.1.2.4").zones(&["zone-b"]),
                    ep("10.1.2.6").zones(&["zone-a"]).unready(),
                ],
            )
            .cluster(&["10.1.2.3"]),
        ]);
    }

    #[test]
    fn traffic_policies() {
        run(vec![
            // k8s-02/03/11: cluster is zone-filtered, local is not.
            case(
                "eTP=Local with zone hints",
                BOTH,
                vec![
                    ep("10.1.2.3").zones(&["zone-a"]).local(),
                    ep("10.1.2.4").zones(&["zone-b"]).local(),
                    ep("10.1.2.5").zones(&["zone-c"]),
                    ep("10.1.2.6").zones(&["zone-a"]),
                ],
            )
            .cluster(&["10.1.2.3", "10.1.2.6"])
            .local(&["10.1.2.3", "10.1.2.4"]),
            case("iTP=Local, no endpoints", LOCAL_ONLY, vec![])
                .local(&[])
                .no_endpoints(),
            // k8s-13
            case(
                "iTP=Local, only remote Ready endpoints: DROP",
                LOCAL_ONLY,
                vec![ep("10.0.0.0"), ep("10.0.0.1")],
            )
            .local(&[]),
            case(
                "iTP=Local, all local",
                LOCAL_ONLY,
                vec![ep("10.0.0.0").local(), ep("10.0.0.1").local()],
            )
            .local(&["10.0.0.0", "10.0.0.1"]),
            case(
                "iTP=Local, local unready, remote Ready",
                LOCAL_ONLY,
                vec![ep("10.0.0.0").local().unready(), ep("10.0.0.1")],
            )
            .local(&[]),
            case("no endpoints at all: REJECT", CLUSTER, vec![])
                .cluster(&[])
                .no_endpoints(),
            case(
                "only unready endpoints: REJECT",
                CLUSTER,
                vec![ep("10.0.0.0").unready()],
            )
            .cluster(&[])
            .no_endpoints(),
            case(
                "eTP=Local, no endpoints anywhere",
                BOTH,
                vec![ep("10.0.0.0").unready()],
            )
            .cluster(&[])
            .local(&[])
            .no_endpoints(),
        ]);
    }

    #[test]
    fn terminating_fallback() {
        run(vec![
            // k8s-18
            case(
                "only terminating endpoints: Cluster policy uses them all",
                CLUSTER,
                vec![
                    ep("10.0.0.0").terminating().local(),
                    ep("10.0.0.1").terminating(),
                    ep("10.0.0.2").unready(),
                ],
            )
            .cluster(&["10.0.0.0", "10.0.0.1"]),
            case(
                "terminating fallback ignores topology",
                CLUSTER,
                vec![
                    ep("10.0.0.0").terminating().zones(&["zone-b"]),
                    ep("10.0.0.1").terminating().zones(&["zone-a"]),
                ],
            )
            .cluster(&["10.0.0.0", "10.0.0.1"]),
            case(
                "Ready endpoints win over terminating ones",
                CLUSTER,
                vec![ep("10.0.0.0").terminating(), ep("10.0.0.1")],
            )
            .cluster(&["10.0.0.1"]),
            case(
                "terminating but not serving is never used",
                CLUSTER,
                vec![Ep {
                    serving: false,
                    ..ep("10.0.0.0").terminating()
                }],
            )
            .cluster(&[])
            .no_endpoints(),
            // k8s-23
            case(
                "iTP+eTP Local, only remote terminating: DROP",
                BOTH,
                vec![ep("10.0.0.0").terminating(), ep("10.0.0.1").terminating()],
            )
            .cluster(&["10.0.0.0", "10.0.0.1"])
            .local(&[]),
            // k8s-24
            case(
                "eTP=Local, local terminating and remote Ready",
                BOTH,
                vec![ep("10.0.0.0").terminating().local(), ep("10.0.0.1")],
            )
            .cluster(&["10.0.0.1"])
            .local(&["10.0.0.0"]),
            case(
                "local Ready beats local terminating",
                BOTH,
                vec![ep("10.0.0.0").terminating().local(), ep("10.0.0.1").local()],
            )
            .cluster(&["10.0.0.1"])
            .local(&["10.0.0.1"]),
        ]);
    }

    #[test]
    fn prefer_same_node() {
        run(vec![
            case(
                "gate off: zone hints are used",
                CLUSTER,
                vec![
                    ep("10.0.0.1").zones(&["zone-a"]).nodes(&[ME]),
                    ep("10.0.0.2").zones(&["zone-a"]).nodes(&["node-b"]),
                    ep("10.0.0.3").zones(&["zone-b"]).nodes(&["node-c"]),
                ],
            )
            .cluster(&["10.0.0.1", "10.0.0.2"]),
            case(
                "gate on and hinted: only the same-node endpoint",
                CLUSTER,
                vec![
                    ep("10.0.0.1").zones(&["zone-a"]).nodes(&[ME]),
                    ep("10.0.0.2").zones(&["zone-a"]).nodes(&["node-b"]),
                    ep("10.0.0.3").zones(&["zone-b"]).nodes(&["node-c"]),
                ],
            )
            .gate()
            .cluster(&["10.0.0.1"]),
            case(
                "one endpoint with neither hint: no filtering at all",
                CLUSTER,
                vec![
                    ep("10.0.0.1").zones(&["zone-a"]).nodes(&[ME]),
                    ep("10.0.0.2").zones(&["zone-a"]).nodes(&["node-b"]),
                    ep("10.0.0.3"),
                ],
            )
            .gate()
            .cluster(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
            case(
                "no endpoint hinted for this node: fall back to the zone",
                CLUSTER,
                vec![
                    ep("10.0.0.1").zones(&["zone-a"]).nodes(&["node-b"]),
                    ep("10.0.0.2").zones(&["zone-a"]).nodes(&["node-b"]),
                    ep("10.0.0.3").zones(&["zone-b"]).nodes(&["node-c"]),
                ],
            )
            .gate()
            .cluster(&["10.0.0.1", "10.0.0.2"]),
        ]);
    }
}
