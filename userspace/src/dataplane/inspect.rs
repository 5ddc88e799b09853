//! Reading the service maps back into a readable picture: service port → frontends → backends,
//! with counters (`tollgate maps`, tests, metrics).

use std::collections::BTreeMap;

use aya::maps::{LpmTrie, MapData, PerCpuArray};

use serde::Serialize;
use tollgate_common::lb::{
    config::{self, Config},
    md_mode, scope,
    stats::Counters,
    svc_flags,
    svccidr::{self, SvcCidrKey, SvcCidrValue},
    svcinfo::SvcInfo,
};

use super::{
    DataplaneError, PinLayout,
    addr::{ip, port_host},
    lbmaps::{LbMaps, sum},
    stats::{open_array, typed},
};
use crate::enls::model::EndpointAddr;

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct CounterView {
    pub connections: u64,
    pub packets: u64,
    pub bytes: u64,
    pub refused: u64,
}

impl From<Counters> for CounterView {
    fn from(c: Counters) -> Self {
        Self {
            connections: c.connections,
            packets: c.packets,
            bytes: c.bytes,
            refused: c.refused,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BackendView {
    pub id: u32,
    pub address: String,
    pub counters: CounterView,
}

#[derive(Debug, Clone, Serialize)]
pub struct FrontendView {
    /// ClusterIP, NodePort, LoadBalancer or External (externalIP or LB IP without ranges).
    pub kind: &'static str,
    pub address: String,
    /// "internal" (pods and host) or "external" (from outside, Local policy).
    pub scope: &'static str,
    pub flags: Vec<&'static str>,
    pub affinity_timeout: u32,
    pub backends: Vec<BackendView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceView {
    pub service_id: u32,
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    pub port: u16,
    pub protocol: &'static str,
    pub family: u8,
    pub counters: CounterView,
    pub frontends: Vec<FrontendView>,
}

/// The ClusterIPs that refuse the ports their Services do not define (kube-proxy nftables'
/// REJECT), and how many connections they refused (service-port ID 0's counter).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct OtherPortsView {
    pub cluster_ips: Vec<String>,
    pub refused: u64,
}

/// The other-ports entries of `tg_svc_v1`, addresses sorted.
pub fn other_ports(pins: &PinLayout) -> Result<OtherPortsView, DataplaneError> {
    let maps = LbMaps::open(pins)?;
    let mut addrs: Vec<std::net::IpAddr> = maps
        .svc
        .keys()
        .filter_map(Result::ok)
        .filter(|k| k.is_other_ports())
        .map(|k| ip(k.addr))
        .collect();
    addrs.sort();
    Ok(OtherPortsView {
        cluster_ips: addrs.iter().map(ToString::to_string).collect(),
        refused: counters_of(&maps.svcstat, 0).refused,
    })
}

/// A ServiceCIDR prefix and the new connections dropped (or refused at the socket) for its
/// unallocated addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceCidrView {
    pub cidr: String,
    pub dropped: u64,
}

/// The prefixes of `tg_svccidr_v1`, sorted (IPv4 first).
pub fn service_cidrs(pins: &PinLayout) -> Result<Vec<ServiceCidrView>, DataplaneError> {
    let trie: LpmTrie<MapData, SvcCidrKey, SvcCidrValue> = typed(pins, svccidr::NAME)?;
    let mut rows: Vec<(std::net::IpAddr, u32, u64)> = trie
        .iter()
        .filter_map(Result::ok)
        .map(|(k, v)| {
            let addr = ip(k.data().addr);
            let bits = if addr.is_ipv4() {
                k.prefix_len().saturating_sub(96)
            } else {
                k.prefix_len()
            };
            (addr, bits, v.dropped)
        })
        .collect();
    rows.sort();
    Ok(rows
        .into_iter()
        .map(|(addr, bits, dropped)| ServiceCidrView {
            cidr: format!("{addr}/{bits}"),
            dropped,
        })
        .collect())
}

/// The counters of ID `id` in a per-CPU counter map, summed over CPUs (zero if unreadable).
pub(crate) fn counters_of(map: &PerCpuArray<MapData, Counters>, id: u32) -> Counters {
    map.get(&id, 0).map(|v| sum(&v)).unwrap_or_default()
}

/// The node-wide settings the programs read (`tg_config_v2`), as the agent last wrote them.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NodeView {
    /// The agent has programmed a complete state.
    pub ready: bool,
    /// SNAT sources for NodePort/externalIP traffic to remote backends (none: unset).
    pub snat_v4: Option<String>,
    pub snat_v6: Option<String>,
    pub snat_ports: String,
    /// getpeername() of a balanced TCP socket shows the service (`--socket-lb-peer`).
    pub socket_lb_peer: bool,
    pub localhost_nodeports: bool,
    pub socket_lb_host_namespace_only: bool,
    /// `off`, or `redirect` with where to and whether the proxy is ready.
    pub metadata: String,
}

/// The node settings; `None` before an agent wrote them.
pub fn node(pins: &PinLayout) -> Result<Option<NodeView>, DataplaneError> {
    let config = open_array::<Config>(pins, config::NAME)?;
    let Ok(c) = config.get(&0, 0) else {
        return Ok(None);
    };
    if c == Config::default() {
        return Ok(None);
    }
    let addr = |w: [u32; 4]| (w != [0; 4]).then(|| ip(w).to_string());
    let metadata = if c.md_mode == md_mode::REDIRECT {
        let ports: Vec<String> = c
            .md_ports
            .iter()
            .filter(|p| **p != 0)
            .map(|p| port_host(*p).to_string())
            .collect();
        format!(
            "redirect {}:{} → {} ({})",
            ip(c.md_addr),
            ports.join(","),
            EndpointAddr {
                ip: ip(c.md_proxy_addr),
                port: port_host(c.md_proxy_port),
            },
            if c.md_ready != 0 {
                "ready"
            } else {
                "refusing until ready"
            }
        )
    } else {
        "off".into()
    };
    Ok(Some(NodeView {
        ready: c.ready != 0,
        snat_v4: addr(c.snat_v4),
        snat_v6: addr(c.snat_v6),
        snat_ports: format!("{}-{}", c.snat_port_min, c.snat_port_max),
        socket_lb_peer: c.tcp_peer_off == 0,
        localhost_nodeports: c.localhost_nodeports != 0,
        socket_lb_host_namespace_only: c.socket_lb_host_only != 0,
        metadata,
    }))
}

pub(crate) fn text(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

pub(crate) fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "TCP",
        17 => "UDP",
        132 => "SCTP",
        _ => "?",
    }
}

fn flag_names(f: u16) -> Vec<&'static str> {
    [
        (svc_flags::EXTERNAL, "external"),
        (svc_flags::SOURCE_RANGES, "source-ranges"),
        (svc_flags::DROP_IF_EMPTY, "drop-if-empty"),
        (svc_flags::LOCAL_ONLY, "local-only"),
        (svc_flags::NODE_ADDRESS, "node-address"),
        (svc_flags::MAGLEV, "maglev"),
    ]
    .into_iter()
    .filter(|(bit, _)| f & bit != 0)
    .map(|(_, n)| n)
    .collect()
}

/// Every service port with its frontends, backends and counters, sorted by name.
pub fn services(pins: &PinLayout) -> Result<Vec<ServiceView>, DataplaneError> {
    let maps = LbMaps::open(pins)?;
    let infos: BTreeMap<u32, SvcInfo> = maps.svcinfo.iter().filter_map(Result::ok).collect();
    let entries: Vec<_> = maps.svc.iter().filter_map(Result::ok).collect();
    let slots: BTreeMap<_, u32> = entries
        .iter()
        .filter(|(k, _)| k.slot != 0)
        .map(|(k, v)| ((k.addr, k.port, k.proto, k.scope, k.slot), v.backend_id))
        .collect();
    let counters = |map, id| counters_of(map, id).into();
    let mut out: BTreeMap<u32, ServiceView> = BTreeMap::new();
    for (k, v) in entries
        .iter()
        .filter(|(k, _)| k.slot == 0 && !k.is_other_ports())
    {
        let svc = out.entry(v.service_id).or_insert_with(|| {
            let info = infos.get(&v.service_id).copied().unwrap_or_default();
            ServiceView {
                service_id: v.service_id,
                namespace: text(&info.namespace),
                name: text(&info.name),
                port_name: text(&info.port_name),
                port: info.port,
                protocol: proto_name(k.proto),
                family: info.family,
                counters: counters(&maps.svcstat, v.service_id),
                frontends: Vec::new(),
            }
        });
        let backends = (1..=v.count)
            .filter_map(|slot| slots.get(&(k.addr, k.port, k.proto, k.scope, slot)))
            .map(|id| {
                let address = maps
                    .backend
                    .get(id, 0)
                    .map(|b| {
                        EndpointAddr {
                            ip: ip(b.addr),
                            port: port_host(b.port),
                        }
                        .to_string()
                    })
                    .unwrap_or_else(|_| "?".into());
                BackendView {
                    id: *id,
                    address,
                    counters: counters(&maps.bestat, *id),
                }
            })
            .collect();
        let kind = if v.flags & svc_flags::NODE_ADDRESS != 0 {
            "NodePort"
        } else if v.flags & svc_flags::SOURCE_RANGES != 0 {
            "LoadBalancer"
        } else if v.flags & svc_flags::EXTERNAL != 0 {
            "External"
        } else {
            "ClusterIP"
        };
        svc.frontends.push(FrontendView {
            kind,
            address: EndpointAddr {
                ip: ip(k.addr),
                port: port_host(k.port),
            }
            .to_string(),
            scope: if k.scope == scope::EXTERNAL {
                "external"
            } else {
                "internal"
            },
            flags: flag_names(v.flags),
            affinity_timeout: v.affinity_timeout,
            backends,
        });
    }
    let mut list: Vec<ServiceView> = out.into_values().collect();
    for s in &mut list {
        s.frontends
            .sort_by(|a, b| (a.kind, &a.address, a.scope).cmp(&(b.kind, &b.address, b.scope)));
    }
    list.sort_by(|a, b| {
        (&a.namespace, &a.name, &a.port_name, a.family).cmp(&(
            &b.namespace,
            &b.name,
            &b.port_name,
            b.family,
        ))
    });
    Ok(list)
}
