//! The programs' traffic counters on `/metrics`: per service port (`tg_svcstat_v1`, named by
//! `tg_svcinfo_v1`), per backend (`tg_bestat_v1`, with `--traffic-metrics backends`) and per
//! interface and hook (`tg_ifstats_v1`), read from the pinned maps at each scrape, so they are
//! exactly what `tollgate maps` shows and cost nothing between scrapes.
//!
//! A map that cannot be read leaves its metrics out of that scrape (logged at debug); the rest
//! of `/metrics` is unaffected.

use std::fmt;

use aya::maps::{HashMap, MapData, PerCpuArray};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter},
};
use tollgate_common::lb::{
    backend::{self, Backend},
    stats::{self, Counters},
    svcinfo::{self, SvcInfo},
};

use super::{
    DataplaneError, PinLayout,
    addr::{ip, port_host},
    inspect::{counters_of, proto_name, service_cidrs, text},
    stats::{IfaceStatsRow, iface_stats, typed},
};
use crate::enls::model::EndpointAddr;

/// What `/metrics` carries of the programs' counters (`--traffic-metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TrafficMetrics {
    /// None.
    Off,
    /// Per service port and per interface.
    #[default]
    Services,
    /// Also per backend (one series per backend address and counter: many in large clusters).
    Backends,
}

/// Reads the counters at each scrape (register with `Registry::register_collector`).
#[derive(Debug)]
pub struct TrafficCollector {
    pins: PinLayout,
    level: TrafficMetrics,
}

impl TrafficCollector {
    pub fn new(pins: PinLayout, level: TrafficMetrics) -> Self {
        Self { pins, level }
    }
}

type ServiceLabels = [(&'static str, String); 5];
type BackendLabels = [(&'static str, String); 2];
type InterfaceLabels = [(&'static str, String); 2];

/// A counter of `Counters`: its name in metric names, help text, and field.
type CounterField = (&'static str, &'static str, fn(&Counters) -> u64);

/// The four counters of `Counters`, in the order they are written.
const COUNTERS: [CounterField; 4] = [
    (
        "connections",
        "New connections balanced: connect() and sendmsg() calls translated by the socket hooks, and new flows of the per-packet path.",
        |c| c.connections,
    ),
    (
        "packets",
        "Packets translated by the per-packet path (TC, XDP); socket-balanced connections have none.",
        |c| c.packets,
    ),
    (
        "bytes",
        "Bytes of the packets translated by the per-packet path.",
        |c| c.bytes,
    ),
    (
        "refused",
        "Connections refused (REJECT) or dropped (DROP) for lack of endpoints, or dropped by loadBalancerSourceRanges.",
        |c| c.refused,
    ),
];

impl Collector for TrafficCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        if self.level == TrafficMetrics::Off {
            return Ok(());
        }
        match service_rows(&self.pins) {
            Ok(rows) => {
                for (name, help, get) in COUNTERS {
                    let name = format!("tollgate_service_{name}");
                    counters(&mut encoder, &name, help, &rows, get)?;
                }
            }
            Err(e) => tracing::debug!("service counters left out of /metrics: {e}"),
        }
        match other_ports_refused(&self.pins) {
            Ok(n) => {
                let m = encoder.encode_descriptor(
                    "tollgate_cluster_ip_other_ports_refused",
                    "Connections (and pings) to a ClusterIP on a port or protocol its Service does not define, refused (kube-proxy nftables' REJECT).",
                    None,
                    MetricType::Counter,
                )?;
                ConstCounter::new(n).encode(m)?;
            }
            Err(e) => tracing::debug!("other-ports counter left out of /metrics: {e}"),
        }
        match service_cidrs(&self.pins) {
            Ok(rows) => {
                let rows: Vec<([(&str, String); 1], u64)> = rows
                    .into_iter()
                    .map(|r| ([("cidr", r.cidr)], r.dropped))
                    .collect();
                counters(
                    &mut encoder,
                    "tollgate_service_cidr_unallocated_dropped",
                    "New connections (and pings) to an address inside a ServiceCIDR that no Service has, dropped (kube-proxy nftables' DROP; a host process's socket call fails with EPERM), by ServiceCIDR prefix.",
                    &rows,
                    |n| *n,
                )?;
            }
            Err(e) => tracing::debug!("ServiceCIDR counters left out of /metrics: {e}"),
        }
        if self.level == TrafficMetrics::Backends {
            match backend_rows(&self.pins) {
                // A backend is never refused: that counter is the service's.
                Ok(rows) => {
                    for (name, help, get) in &COUNTERS[..3] {
                        let name = format!("tollgate_backend_{name}");
                        counters(&mut encoder, &name, help, &rows, *get)?;
                    }
                }
                Err(e) => tracing::debug!("backend counters left out of /metrics: {e}"),
            }
        }
        match iface_stats(&self.pins) {
            Ok(stats) => {
                let rows: Vec<(InterfaceLabels, IfaceStatsRow)> = stats
                    .into_iter()
                    .map(|r| {
                        let name = crate::netif::name_of(r.ifindex)
                            .unwrap_or_else(|| format!("ifindex {}", r.ifindex));
                        ([("interface", name), ("hook", r.hook.to_owned())], r)
                    })
                    .collect();
                counters(
                    &mut encoder,
                    "tollgate_interface_packets",
                    "Packets Tollgate's TC and XDP programs saw, by interface and hook.",
                    &rows,
                    |r| r.packets,
                )?;
                counters(
                    &mut encoder,
                    "tollgate_interface_bytes",
                    "Bytes of the packets Tollgate's TC and XDP programs saw, by interface and hook.",
                    &rows,
                    |r| r.bytes,
                )?;
            }
            Err(e) => tracing::debug!("interface counters left out of /metrics: {e}"),
        }
        Ok(())
    }
}

/// One counter family: a series per row, its value `get` of the row's counters.
fn counters<L: EncodeLabelSet, C>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(L, C)],
    get: fn(&C) -> u64,
) -> Result<(), fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, c) in rows {
        ConstCounter::new(get(c)).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// Service-port ID 0's refusals: the ClusterIPs' other-ports entries count there.
fn other_ports_refused(pins: &PinLayout) -> Result<u64, DataplaneError> {
    let counters: PerCpuArray<MapData, Counters> = typed(pins, stats::SVC_NAME)?;
    Ok(counters_of(&counters, 0).refused)
}

/// Has anything been counted? A service port or backend gets its series from its first count
/// on (as a client library's labelled counters appear at their first increment): a node sees
/// traffic for few of a large cluster's Services, and a series per Service and counter at 10,000
/// Services would be megabytes per scrape.
fn counted(c: &Counters) -> bool {
    c.connections | c.packets | c.bytes | c.refused != 0
}

/// Every service port that has counted something, with its counters summed over CPUs, sorted
/// by labels.
pub fn service_rows(pins: &PinLayout) -> Result<Vec<(ServiceLabels, Counters)>, DataplaneError> {
    rows(pins, svcinfo::NAME, stats::SVC_NAME, |info: &SvcInfo| {
        let port = text(&info.port_name);
        [
            ("namespace", text(&info.namespace)),
            ("service", text(&info.name)),
            (
                "port",
                if port.is_empty() {
                    info.port.to_string()
                } else {
                    port
                },
            ),
            ("protocol", proto_name(info.proto).to_owned()),
            ("ip_family", format!("IPv{}", info.family)),
        ]
    })
}

/// Every backend that has counted something, with its counters summed over CPUs, sorted by
/// labels.
pub fn backend_rows(pins: &PinLayout) -> Result<Vec<(BackendLabels, Counters)>, DataplaneError> {
    rows(pins, backend::NAME, stats::BACKEND_NAME, |b: &Backend| {
        let address = EndpointAddr {
            ip: ip(b.addr),
            port: port_host(b.port),
        };
        [
            ("backend", address.to_string()),
            ("protocol", proto_name(b.proto).to_owned()),
        ]
    })
}

/// The entries of the ID-keyed map `names` labelled by `labels`, with their counters from the
/// per-CPU array `counters`, those that counted something, sorted by labels.
fn rows<V: aya::Pod, L: Ord>(
    pins: &PinLayout,
    names: &'static str,
    counters: &'static str,
    labels: impl Fn(&V) -> L,
) -> Result<Vec<(L, Counters)>, DataplaneError> {
    let names: HashMap<MapData, u32, V> = typed(pins, names)?;
    let counters: PerCpuArray<MapData, Counters> = typed(pins, counters)?;
    let mut rows: Vec<(L, Counters)> = names
        .iter()
        .filter_map(Result::ok)
        .map(|(id, v)| (labels(&v), counters_of(&counters, id)))
        .filter(|(_, c)| counted(c))
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;

    fn scrape(level: TrafficMetrics, pins: &std::path::Path) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(TrafficCollector::new(
            PinLayout::existing(pins),
            level,
        )));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn maps_that_cannot_be_read_leave_only_their_own_metrics_out() {
        // No pinned maps here: the scrape still succeeds, without traffic series.
        let dir = std::env::temp_dir().join(format!("tollgate-no-pins-{}", std::process::id()));
        for level in [
            TrafficMetrics::Off,
            TrafficMetrics::Services,
            TrafficMetrics::Backends,
        ] {
            let text = scrape(level, &dir);
            assert!(!text.contains("tollgate_"), "{level:?}: {text}");
            assert!(text.ends_with("# EOF\n"), "{level:?}: {text}");
        }
    }
}
