//! One Service's records (the Service and its EndpointSlices) → its node-local state.

use std::{
    collections::{BTreeMap, HashSet, btree_map::Entry},
    net::IpAddr,
    sync::Arc,
};

use super::{
    categorize::{self, NodeTopology, PortPolicy},
    ingest::{EndpointRecord, ServiceRecord, SliceRecord, ep_flags},
    model::{
        EndpointAddr, EndpointSet, Frontend, FrontendKind, IpFamily, IpNet, NodeInfo, ObjKey,
        ServicePortState, ServiceState,
    },
};

/// What computing a service needs to know about the node and the agent's options.
#[derive(Debug, Clone, Copy)]
pub struct NodeContext<'a> {
    pub node: Option<&'a NodeInfo>,
    /// `--nodeport-addresses`: node addresses outside these prefixes get no NodePort frontends
    /// (empty: all of the node's InternalIP/ExternalIP addresses).
    pub nodeport_addresses: &'a [IpNet],
    /// `--nodeport-addresses primary`: only the node's primary IP of each family.
    pub nodeport_primary: bool,
    pub prefer_same_node: bool,
}

impl NodeContext<'_> {
    fn nodeport_ips(&self, family: IpFamily) -> Vec<IpAddr> {
        self.node
            .into_iter()
            .flat_map(|n| {
                if self.nodeport_primary {
                    &n.primary
                } else {
                    &n.addresses
                }
            })
            .filter(|ip| IpFamily::of(ip) == family)
            .filter(|ip| {
                self.nodeport_addresses.is_empty()
                    || self.nodeport_addresses.iter().any(|net| net.contains(ip))
            })
            .copied()
            .collect()
    }
}

fn of_family(ips: &[IpAddr], family: IpFamily) -> impl Iterator<Item = IpAddr> + '_ {
    ips.iter()
        .copied()
        .filter(move |ip| IpFamily::of(ip) == family)
}

/// R6–R8: the endpoints of one service port (matched by port name and protocol) across the
/// slices of one family, merged by `ip:port`; a later non-terminating copy replaces an earlier
/// one. Slices come in name order, so the result is deterministic; it is sorted by address.
fn merged_endpoints<'s>(
    slices: &[&'s SliceRecord],
    port_name: &str,
    protocol: super::model::Protocol,
) -> Vec<(EndpointAddr, &'s EndpointRecord)> {
    let mut merged: BTreeMap<EndpointAddr, &EndpointRecord> = BTreeMap::new();
    for slice in slices {
        for sp in slice
            .ports
            .iter()
            .filter(|p| &*p.name == port_name && p.protocol == protocol)
        {
            for ep in &slice.endpoints {
                let addr = EndpointAddr {
                    ip: ep.ip,
                    port: sp.port,
                };
                match merged.entry(addr) {
                    Entry::Vacant(v) => {
                        v.insert(ep);
                    }
                    Entry::Occupied(mut o) => {
                        if !ep.has(ep_flags::TERMINATING) {
                            o.insert(ep);
                        }
                    }
                }
            }
        }
    }
    merged.into_iter().collect()
}

/// Shares one allocation between equal selections.
struct SetCache {
    addrs: Vec<EndpointAddr>,
    built: Vec<(Vec<usize>, EndpointSet)>,
}

impl SetCache {
    fn get(&mut self, selection: &[usize]) -> EndpointSet {
        if let Some((_, set)) = self.built.iter().find(|(s, _)| s == selection) {
            return set.clone();
        }
        let set = categorize::to_set(&self.addrs, selection);
        self.built.push((selection.to_vec(), set.clone()));
        set
    }
}

pub fn service_state(
    key: &ObjKey,
    svc: &ServiceRecord,
    slices: &[&SliceRecord],
    ctx: NodeContext<'_>,
) -> ServiceState {
    let topology = NodeTopology {
        zone: ctx.node.and_then(|n| n.zone.as_deref()),
        prefer_same_node: ctx.prefer_same_node,
    };
    let mut ports = Vec::new();
    let mut local_ready_ips: HashSet<IpAddr> = HashSet::new();
    for family in IpFamily::ALL {
        let cluster_ips: Vec<IpAddr> = of_family(&svc.cluster_ips, family).collect();
        // R2: no ClusterIP of this family, nothing to program for it.
        if cluster_ips.is_empty() {
            continue;
        }
        let external_ips: Vec<IpAddr> = of_family(&svc.external_ips, family).collect();
        let lb_ips: Vec<IpAddr> = of_family(&svc.lb_ips, family).collect();
        let source_ranges: Vec<IpNet> = svc
            .source_ranges
            .iter()
            .filter(|n| n.family() == family)
            .copied()
            .collect();
        let node_ips = ctx.nodeport_ips(family);
        let family_slices: Vec<&SliceRecord> = slices
            .iter()
            .filter(|s| s.family == family)
            .copied()
            .collect();
        for port in &svc.ports {
            let endpoints = merged_endpoints(&family_slices, &port.name, port.protocol);
            let records: Vec<EndpointRecord> =
                endpoints.iter().map(|(_, r)| (*r).clone()).collect();
            for (addr, rec) in &endpoints {
                if rec.has(ep_flags::LOCAL) && rec.has(ep_flags::READY) {
                    local_ready_ips.insert(addr.ip);
                }
            }
            let externally_accessible =
                port.node_port.is_some() || !lb_ips.is_empty() || !external_ips.is_empty();
            // R4 / reference §1.1: eTP=Local is ignored on a ClusterIP-only port.
            let etp_local = svc.etp_local && externally_accessible;
            let policy = PortPolicy {
                uses_cluster: !svc.itp_local || externally_accessible,
                uses_local: svc.itp_local || etp_local,
            };
            let cat = categorize::categorize(&records, policy, topology);
            let mut sets = SetCache {
                addrs: endpoints.iter().map(|(a, _)| *a).collect(),
                built: Vec::new(),
            };
            let cluster = cat.cluster.as_deref().map(|s| sets.get(s));
            let local = cat.local.as_deref().map(|s| sets.get(s));
            let empty: EndpointSet = Arc::from([]);
            let internal = if svc.itp_local {
                local.clone()
            } else {
                cluster.clone()
            }
            .unwrap_or_else(|| empty.clone());
            let external = externally_accessible.then(|| {
                if etp_local {
                    local.clone()
                } else {
                    cluster.clone()
                }
                .unwrap_or_else(|| empty.clone())
            });
            let serving: Vec<usize> = records
                .iter()
                .enumerate()
                .filter(|(_, r)| r.has(ep_flags::SERVING))
                .map(|(i, _)| i)
                .collect();
            let serving = sets.get(&serving);

            let mut frontends: Vec<Frontend> = Vec::new();
            let mut add = |kind, ips: &[IpAddr], port: u16| {
                frontends.extend(ips.iter().map(|ip| Frontend {
                    kind,
                    ip: *ip,
                    port,
                }));
            };
            add(FrontendKind::ClusterIP, &cluster_ips, port.port);
            add(FrontendKind::ExternalIP, &external_ips, port.port);
            add(FrontendKind::LoadBalancer, &lb_ips, port.port);
            if let Some(node_port) = port.node_port {
                add(FrontendKind::NodePort, &node_ips, node_port);
            }
            frontends.sort();
            frontends.dedup();
            // Vec growth leaves up to 4× capacity; this state lives as long as the service.
            frontends.shrink_to_fit();
            ports.push(ServicePortState {
                name: port.name.clone(),
                protocol: port.protocol,
                port: port.port,
                ip_family: family,
                node_port: port.node_port,
                frontends,
                session_affinity_timeout_seconds: svc.affinity_timeout,
                source_ranges: source_ranges.clone(),
                health_check_node_port: svc.health_check_node_port,
                internal_traffic_policy_local: svc.itp_local,
                external_traffic_policy_local: etp_local,
                has_endpoints: cat.has_any,
                internal_endpoints: internal,
                external_endpoints: external,
                cluster_endpoints: cluster,
                serving_endpoints: serving,
            });
        }
    }
    ports.sort_by(|a, b| {
        (a.ip_family, &a.name, a.protocol, a.port).cmp(&(b.ip_family, &b.name, b.protocol, b.port))
    });
    ports.shrink_to_fit();
    ServiceState {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        uid: svc.uid.clone(),
        service_type: svc.service_type,
        ports,
        local_ready_endpoints: u32::try_from(local_ready_ips.len()).unwrap_or(u32::MAX),
    }
}
