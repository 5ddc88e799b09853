//! The programmer: programs ENLS updates into the maps on its own thread, keeps the node-wide
//! config entry right, reports health and metrics, and hands stale flows to the purge task.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::sync::{mpsc, oneshot};
use tollgate_common::lb::{config::Config, md_mode};

use super::{
    addr::words,
    gc,
    lbmaps::LbMaps,
    writer::{Purge, WriteError, Writer, balanced},
};
use crate::{
    admin::Health,
    enls::{
        ServiceChange, Update,
        metrics::ProgrammingMetrics,
        model::{IpNet, NodeInfo, ObjKey, ServiceState},
    },
    events::{Event, Events, Regarding},
};

type Labels = [(&'static str, &'static str); 1];

/// Dataplane metrics (kube-proxy's sync histograms, Tollgate's write and purge counters).
#[derive(Clone)]
pub struct DataplaneMetrics {
    sync: Histogram,
    sync_full: Histogram,
    sync_partial: Histogram,
    errors: Family<Labels, Counter>,
    entries: Family<Labels, Counter>,
    purged: Family<Labels, Counter>,
    termination_errors: Counter,
    services: Gauge,
    unprogrammed: Gauge,
    unbalanced: Gauge,
}

impl DataplaneMetrics {
    pub fn register(reg: &mut Registry) -> Self {
        let buckets = || {
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.0001, 2.0, 18,
            ))
        };
        let m = Self {
            sync: buckets(),
            sync_full: buckets(),
            sync_partial: buckets(),
            errors: Family::default(),
            entries: Family::default(),
            purged: Family::default(),
            termination_errors: Counter::default(),
            services: Gauge::default(),
            unprogrammed: Gauge::default(),
            unbalanced: Gauge::default(),
        };
        reg.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            m.sync.clone(),
        );
        reg.register(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            m.sync_full.clone(),
        );
        reg.register(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            m.sync_partial.clone(),
        );
        reg.register(
            "tollgate_dataplane_write_errors",
            "Services (or the set of ServiceCIDRs) that could not be programmed, by reason (capacity, ids, map, taken)",
            m.errors.clone(),
        );
        reg.register(
            "tollgate_dataplane_map_operations",
            "Map entries written or deleted",
            m.entries.clone(),
        );
        reg.register(
            "tollgate_dataplane_purged",
            "Stale flows, affinities, socket choices and connected UDP sockets removed after their backend left",
            m.purged.clone(),
        );
        reg.register(
            "tollgate_dataplane_socket_termination_errors",
            "Pod network namespaces or connected UDP sockets to a departed backend that could not be looked at or destroyed",
            m.termination_errors.clone(),
        );
        reg.register(
            "tollgate_dataplane_programmed_services",
            "Services programmed in the maps",
            m.services.clone(),
        );
        reg.register(
            "tollgate_dataplane_unprogrammed_services",
            "Services waiting to be programmed after an error (retried on every update)",
            m.unprogrammed.clone(),
        );
        reg.register(
            "tollgate_dataplane_unbalanced_service_ports",
            "Service ports left out of the maps because of their protocol (SCTP: the programs handle TCP and UDP)",
            m.unbalanced.clone(),
        );
        m
    }

    pub fn detached() -> Self {
        Self::register(&mut Registry::default())
    }
}

fn reason(e: &WriteError) -> &'static str {
    match e {
        WriteError::Capacity { .. } => "capacity",
        WriteError::Ids { .. } => "ids",
        WriteError::Map { .. } => "map",
        WriteError::Taken { .. } => "taken",
    }
}

/// Node-wide settings the programs read from `tg_config_v2`.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub host_netns_cookie: u64,
    pub snat_ports: (u16, u16),
    /// Addresses of the uplinks (SNAT fallback when the Node object has none).
    pub uplink_addresses: Vec<IpAddr>,
    /// Where pod connections to the metadata server go (`None`: left alone).
    pub metadata: Option<MetadataRedirect>,
    /// getpeername() of a balanced TCP socket shows the service address (`--socket-lb-peer`).
    pub tcp_peer: bool,
    /// Host processes reach NodePorts on 127.0.0.0/8 (`--localhost-nodeports`).
    pub localhost_nodeports: bool,
    /// The socket hooks balance host processes only (`--socket-lb-host-namespace-only`).
    pub socket_lb_host_only: bool,
}

/// The kernel half of metadata concealment: pod TCP connections to `server` on `ports` are
/// sent to `proxy`; host-network processes are never redirected.
#[derive(Debug, Clone)]
pub struct MetadataRedirect {
    pub server: IpAddr,
    pub ports: Vec<u16>,
    pub proxy: std::net::SocketAddr,
}

/// The config entry before the first complete state: metadata traffic of pods is refused
/// (when redirected at all) until the proxy is ready.
pub fn initial_config(settings: &NodeSettings) -> Config {
    config(settings, None, false)
}

fn config(settings: &NodeSettings, node: Option<&NodeInfo>, ready: bool) -> Config {
    let node_addrs = node.map(|n| n.addresses.as_slice()).unwrap_or_default();
    let pick = |v4: bool| {
        node_addrs
            .iter()
            .chain(&settings.uplink_addresses)
            .find(|a| a.is_ipv4() == v4)
            .map(|a| words(*a))
            .unwrap_or([0; 4])
    };
    Config {
        host_netns_cookie: settings.host_netns_cookie,
        snat_v4: pick(true),
        snat_v6: pick(false),
        snat_port_min: settings.snat_ports.0,
        snat_port_max: settings.snat_ports.1,
        ready: u8::from(ready),
        md_mode: if settings.metadata.is_some() {
            md_mode::REDIRECT
        } else {
            md_mode::OFF
        },
        md_ready: u8::from(ready && settings.metadata.is_some()),
        tcp_peer_off: u8::from(!settings.tcp_peer),
        md_addr: settings
            .metadata
            .as_ref()
            .map(|m| words(m.server))
            .unwrap_or_default(),
        md_proxy_addr: settings
            .metadata
            .as_ref()
            .map(|m| words(m.proxy.ip()))
            .unwrap_or_default(),
        md_ports: {
            let mut ports = [0u16; 2];
            for (slot, p) in ports
                .iter_mut()
                .zip(settings.metadata.iter().flat_map(|m| &m.ports))
            {
                *slot = p.to_be();
            }
            ports
        },
        md_proxy_port: settings
            .metadata
            .as_ref()
            .map(|m| m.proxy.port().to_be())
            .unwrap_or_default(),
        localhost_nodeports: u8::from(settings.localhost_nodeports),
        socket_lb_host_only: u8::from(settings.socket_lb_host_only),
    }
}

pub struct Programmer {
    pub writer: Writer,
    pub settings: NodeSettings,
    pub health: Health,
    pub programming: ProgrammingMetrics,
    pub metrics: DataplaneMetrics,
    pub purges: mpsc::UnboundedSender<Purge>,
    /// A Service that could not be programmed gets a Warning Event.
    pub events: Events,
}

/// The programmer's thread, as [`Programmer::spawn`] started it.
pub struct Programming {
    stopped: oneshot::Receiver<()>,
    gate: Arc<Gate>,
}

/// Held by the programmer while it writes an update; `true` once it is to stop.
#[derive(Default)]
struct Gate(Mutex<bool>);

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Programming {
    /// Completes when the programmer stops by itself: the ENLS stopped, or programming
    /// panicked.
    pub async fn stopped(&mut self) {
        let _ = (&mut self.stopped).await;
    }

    /// Lets the update being written finish and writes no other, so the maps are left as
    /// whole updates wrote them (a SIGTERM in the middle of a large one). `false` if the
    /// update was still being written after `timeout`.
    pub async fn stop(self, timeout: Duration) -> bool {
        let gate = self.gate;
        let (done_tx, done) = oneshot::channel();
        // A thread of its own, not the blocking pool: the runtime's drop waits for every
        // blocking task, which would undo the timeout.
        let waiter = std::thread::Builder::new()
            .name("tg-stop".into())
            .spawn(move || {
                // Taken once the update being written is done; none starts after.
                *gate.lock() = true;
                let _ = done_tx.send(());
            });
        waiter.is_ok() && matches!(tokio::time::timeout(timeout, done).await, Ok(Ok(())))
    }
}

impl Programmer {
    /// Programs updates on a thread of its own until the ENLS stops or [`Programming::stop`].
    /// Map writes are blocking system calls, and a complete state takes from tenths of a
    /// second (10,000 Services) to over a second (with Maglev tables): on a thread of its own
    /// that never holds up the runtime's threads, which health, metrics and the metadata
    /// proxy share.
    pub fn spawn(
        self,
        updates: mpsc::Receiver<Arc<Update>>,
        ready_note: String,
    ) -> std::io::Result<Programming> {
        let (stopped_tx, stopped) = oneshot::channel();
        let gate = Arc::new(Gate::default());
        let held = gate.clone();
        std::thread::Builder::new()
            .name("tg-programmer".into())
            .spawn(move || {
                // Dropped when the loop ends, also by a panic: `stopped` then completes.
                let _stopped = stopped_tx;
                self.run(updates, &held, ready_note);
            })?;
        Ok(Programming { stopped, gate })
    }

    /// Programs updates until the ENLS stops or the gate says to. Logs "tollgate ready" after
    /// the first one.
    fn run(mut self, mut updates: mpsc::Receiver<Arc<Update>>, gate: &Gate, ready_note: String) {
        let mut node: Option<NodeInfo> = None;
        let mut ready = false;
        // Services whose latest state could not be written (a full map): they keep their
        // previous entries and are retried after every update, so room freed by another
        // service's removal is used without waiting for this one to change.
        let mut pending: BTreeMap<ObjKey, ServiceChange> = BTreeMap::new();
        // ServiceCIDRs not yet written (a map error).
        let mut cidrs_pending: Option<Vec<IpNet>> = None;
        self.writer.adopt();
        while let Some(update) = updates.blocking_recv() {
            // Held while this update is written (see `Programming::stop`).
            let stop = gate.lock();
            if *stop {
                return;
            }
            let start = Instant::now();
            if let Some(n) = &update.node {
                self.writer.set_node(n);
                self.health.set_node_eligible(n.eligible);
                node = Some(n.clone());
            }
            if let Some(cidrs) = &update.service_cidrs {
                cidrs_pending = Some(cidrs.clone());
            }
            // Retried after every update until written, as a Service that did not fit is.
            if let Some(cidrs) = &cidrs_pending {
                match self.writer.set_service_cidrs(cidrs) {
                    Ok(()) => {
                        if !update.initial || !cidrs.is_empty() {
                            let list: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
                            tracing::info!(
                                "ServiceCIDRs: {}; new connections to their unallocated addresses are dropped",
                                if list.is_empty() {
                                    "none".into()
                                } else {
                                    list.join(", ")
                                }
                            );
                        }
                        cidrs_pending = None;
                    }
                    Err(e) => {
                        tracing::error!(
                            "writing the ServiceCIDRs (retried on later updates; until then traffic to unallocated Service IPs follows the previous ones): {e}"
                        );
                        self.metrics
                            .errors
                            .get_or_create(&[("reason", reason(&e))])
                            .inc();
                    }
                }
            }
            let mut purge = Purge::default();
            // A frontend another change of this update frees (a Service renamed, an address
            // moved between Services: changes come sorted by name) is taken once all of them
            // are written, before anything is reported.
            let mut taken = Vec::new();
            // (After a restart, also one the previous agent's maps give to a Service that has
            // not been written yet: see `Writer::end_reservations`.)
            for change in &update.services {
                pending.remove(&change.key);
                self.apply(change, &mut pending, &mut purge, Some(&mut taken));
            }
            self.writer.end_reservations();
            for change in &taken {
                self.apply(change, &mut pending, &mut purge, None);
            }
            if !pending.is_empty() && !update.services.is_empty() {
                let retry: Vec<ServiceChange> =
                    std::mem::take(&mut pending).into_values().collect();
                for change in &retry {
                    if let Err(e) = self.apply_quietly(change, &mut purge) {
                        tracing::debug!(service = %change.key, "still not programmed: {e}");
                        pending.insert(change.key.clone(), change.clone());
                    }
                }
            }
            self.metrics.unprogrammed.set(pending.len() as i64);
            if update.initial {
                match self.writer.adopt_done() {
                    Ok((n, gone)) => {
                        if n > 0 || !gone.backends.is_empty() {
                            tracing::info!(
                                removed = n,
                                backends = gone.backends.len(),
                                "removed entries of a previous run that the current state no longer has"
                            );
                        }
                        purge.extend(gone);
                    }
                    Err(e) => tracing::warn!("cleaning entries of a previous run: {e}"),
                }
                ready = true;
            }
            let cfg = config(&self.settings, node.as_ref(), ready);
            if let Err(e) = self.writer.maps().config.set(0, cfg, 0) {
                tracing::error!("writing tg_config_v2: {e}");
            }
            let took = start.elapsed().as_secs_f64();
            self.metrics.sync.observe(took);
            if update.initial {
                &self.metrics.sync_full
            } else {
                &self.metrics.sync_partial
            }
            .observe(took);
            let stats = self.writer.take_stats();
            self.metrics
                .entries
                .get_or_create(&[("op", "write")])
                .inc_by(stats.entries_written as u64);
            self.metrics
                .entries
                .get_or_create(&[("op", "delete")])
                .inc_by(stats.entries_deleted as u64);
            self.metrics
                .services
                .set(self.writer.programmed_services() as i64);
            self.metrics
                .unbalanced
                .set(self.writer.unbalanced_ports() as i64);
            self.programming.programmed(&update.trigger_times);
            self.health.programmed();
            if !purge.is_empty() {
                let _ = self.purges.send(purge);
            }
            if update.initial {
                tracing::info!(
                    revision = update.revision,
                    services = update.services.len(),
                    took_ms = took * 1e3,
                    "tollgate ready {ready_note}"
                );
            } else {
                tracing::debug!(
                    revision = update.revision,
                    services = update.services.len(),
                    took_us = took * 1e6,
                    "programmed"
                );
            }
        }
    }
}

impl Programmer {
    /// Writes one change, reporting an error (and keeping the change for a retry); with
    /// `defer`, a change whose frontend another Service holds is set aside there instead.
    fn apply(
        &mut self,
        change: &ServiceChange,
        pending: &mut BTreeMap<ObjKey, ServiceChange>,
        purge: &mut Purge,
        defer: Option<&mut Vec<ServiceChange>>,
    ) {
        let unbalanced_before = self.writer.unbalanced_ports_of(&change.key);
        let result = self.apply_quietly(change, purge);
        if let (Err(WriteError::Taken { .. }), Some(defer)) = (&result, defer) {
            defer.push(change.clone());
            return;
        }
        let unbalanced = self.writer.unbalanced_ports_of(&change.key);
        if unbalanced > 0
            && unbalanced != unbalanced_before
            && let Some(new) = &change.new
        {
            self.report_unbalanced(new);
        }
        if let Err(e) = result {
            tracing::error!(service = %change.key, "not programmed (retried on later updates): {e}");
            let uid = change
                .new
                .as_ref()
                .or(change.old.as_ref())
                .map_or("", |s| &*s.uid);
            self.events.record(
                Regarding::service(&change.key.namespace, &change.key.name, uid),
                Event {
                    warning: true,
                    reason: "FailedToProgramService",
                    action: "Program",
                    note: format!(
                        "node {} could not program the Service (retried on later updates): {e}",
                        self.events.node()
                    ),
                },
            );
            self.metrics
                .errors
                .get_or_create(&[("reason", reason(&e))])
                .inc();
            pending.insert(change.key.clone(), change.clone());
        }
    }

    /// A Service gained SCTP ports the programs leave out, or their number changed: a warning
    /// in the log and on the Service.
    fn report_unbalanced(&self, service: &ServiceState) {
        let mut ports: Vec<String> = service
            .ports
            .iter()
            .filter(|p| !balanced(p))
            .map(|p| format!("{}/SCTP", p.port))
            .collect();
        ports.sort();
        ports.dedup();
        tracing::warn!(
            service = %service.key(),
            ports = ?ports,
            "SCTP service ports are not load-balanced: Tollgate's kernel programs handle TCP and UDP"
        );
        self.events.record(
            Regarding::service(&service.namespace, &service.name, &service.uid),
            Event {
                warning: true,
                reason: "UnsupportedProtocol",
                action: "Program",
                note: format!(
                    "node {} does not load-balance the Service's SCTP ports (its kernel programs balance TCP and UDP; the other ports work): {}",
                    self.events.node(),
                    ports.join(", ")
                ),
            },
        );
    }

    fn apply_quietly(
        &mut self,
        change: &ServiceChange,
        purge: &mut Purge,
    ) -> Result<(), WriteError> {
        purge.extend(self.writer.apply(change)?);
        Ok(())
    }
}

/// Removes stale flows as purge requests arrive (off the programming path: it walks maps);
/// `terminate_in`: see [`gc::purge`].
pub async fn purge_task(
    maps: LbMaps,
    metrics: DataplaneMetrics,
    mut rx: mpsc::UnboundedReceiver<Purge>,
    terminate_in: Option<std::path::PathBuf>,
) {
    let maps = Arc::new(std::sync::Mutex::new(maps));
    while let Some(mut purge) = rx.recv().await {
        while let Ok(more) = rx.try_recv() {
            purge.extend(more);
        }
        let (maps, cgroup) = (maps.clone(), terminate_in.clone());
        let done = tokio::task::spawn_blocking(move || {
            let mut m = maps.lock().unwrap_or_else(|p| p.into_inner());
            gc::purge(&mut m, &purge, cgroup.as_deref())
        })
        .await;
        if let Ok(s) = done {
            metrics
                .purged
                .get_or_create(&[("what", "flows")])
                .inc_by(s.flows as u64);
            metrics
                .purged
                .get_or_create(&[("what", "affinities")])
                .inc_by(s.affinities as u64);
            metrics
                .purged
                .get_or_create(&[("what", "sockets")])
                .inc_by(s.sockets as u64);
            metrics
                .purged
                .get_or_create(&[("what", "connected_udp_sockets")])
                .inc_by(s.terminated.destroyed as u64);
            metrics
                .termination_errors
                .inc_by(s.terminated.failed as u64);
            if s != gc::PurgeStats::default() {
                tracing::debug!(?s, "purged state of backends that left their service");
            }
        }
    }
}
