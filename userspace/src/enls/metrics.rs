//! ENLS metrics. kube-proxy's names (`kubeproxy_…`) where it has the same concept, so existing
//! dashboards and alerts keep working; `tollgate_enls_…` for the rest.

use std::{
    sync::{Arc, atomic::AtomicU64},
    time::{Duration, SystemTime},
};

use prometheus_client::{
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use super::{
    ingest::{Kind, RejectReason},
    model::{IpFamily, ServiceState},
};

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

struct Inner {
    api_events: Family<Labels1, Counter>,
    rejected: Family<Labels2, Counter>,
    revisions: Counter,
    revision: Gauge,
    services: Gauge,
    pods: Gauge,
    service_changes: Counter,
    service_changes_pending: Gauge,
    endpoint_changes: Counter,
    endpoint_changes_pending: Gauge,
    last_queued: Gauge<f64, AtomicU64>,
    sync_duration: Histogram,
    no_local_endpoints: Family<Labels2, Gauge>,
}

/// Cheap to clone; every clone updates the same metrics.
#[derive(Clone)]
pub struct EnlsMetrics {
    inner: Arc<Inner>,
}

impl EnlsMetrics {
    pub fn register(reg: &mut Registry) -> Self {
        let inner = Inner {
            api_events: Family::default(),
            rejected: Family::default(),
            revisions: Counter::default(),
            revision: Gauge::default(),
            services: Gauge::default(),
            pods: Gauge::default(),
            service_changes: Counter::default(),
            service_changes_pending: Gauge::default(),
            endpoint_changes: Counter::default(),
            endpoint_changes_pending: Gauge::default(),
            last_queued: Gauge::default(),
            sync_duration: Histogram::new(exponential_buckets(0.000_01, 4.0, 10)),
            no_local_endpoints: Family::default(),
        };
        reg.register(
            "tollgate_enls_api_events",
            "Objects received from the sources (list items and watch events), by kind",
            inner.api_events.clone(),
        );
        reg.register(
            "tollgate_enls_rejected_objects",
            "Malformed objects or fields skipped, by kind and reason",
            inner.rejected.clone(),
        );
        reg.register(
            "tollgate_enls_revisions",
            "Revisions emitted (node-local state changes)",
            inner.revisions.clone(),
        );
        reg.register(
            "tollgate_enls_revision",
            "Current revision of the node-local state",
            inner.revision.clone(),
        );
        reg.register(
            "tollgate_enls_services",
            "Services in the node-local state",
            inner.services.clone(),
        );
        reg.register(
            "tollgate_enls_pods",
            "Pods of this node in the identity index",
            inner.pods.clone(),
        );
        reg.register(
            "kubeproxy_sync_proxy_rules_service_changes",
            "Cumulative service changes",
            inner.service_changes.clone(),
        );
        reg.register(
            "kubeproxy_sync_proxy_rules_service_changes_pending",
            "Pending service changes",
            inner.service_changes_pending.clone(),
        );
        reg.register(
            "kubeproxy_sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes",
            inner.endpoint_changes.clone(),
        );
        reg.register(
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            "Pending proxy rules Endpoint changes",
            inner.endpoint_changes_pending.clone(),
        );
        reg.register(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            inner.last_queued.clone(),
        );
        reg.register(
            "tollgate_enls_sync_duration_seconds",
            "Time to recompute the node-local state after changes",
            inner.sync_duration.clone(),
        );
        reg.register(
            "kubeproxy_sync_proxy_rules_no_local_endpoints",
            "Number of services with a Local traffic policy and no endpoints",
            inner.no_local_endpoints.clone(),
        );
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Metrics registered nowhere (tests, one-shot commands).
    pub fn detached() -> Self {
        Self::register(&mut Registry::default())
    }

    pub(crate) fn api_event(&self, kind: Kind) {
        self.inner
            .api_events
            .get_or_create(&[("kind", kind.as_str())])
            .inc();
    }

    pub(crate) fn rejected(&self, kind: Kind, reason: RejectReason) {
        self.inner
            .rejected
            .get_or_create(&[("kind", kind.as_str()), ("reason", reason.as_str())])
            .inc();
    }

    pub(crate) fn service_changed(&self) {
        self.inner.service_changes.inc();
        self.inner.service_changes_pending.inc();
        self.queued_now();
    }

    pub(crate) fn endpoints_changed(&self) {
        self.inner.endpoint_changes.inc();
        self.inner.endpoint_changes_pending.inc();
        self.queued_now();
    }

    pub(crate) fn queued_now(&self) {
        self.inner.last_queued.set(unix_now());
    }

    pub(crate) fn synced(&self, took: Duration) {
        self.inner.sync_duration.observe(took.as_secs_f64());
        self.inner.service_changes_pending.set(0);
        self.inner.endpoint_changes_pending.set(0);
    }

    /// Keeps `kubeproxy_sync_proxy_rules_no_local_endpoints` right by adjusting it for each
    /// changed service (counted per service and family, as kube-proxy does).
    pub(crate) fn service_replaced(&self, old: Option<&ServiceState>, new: Option<&ServiceState>) {
        for (i, family) in IpFamily::ALL.iter().enumerate() {
            let before = old.map(|s| local_gaps(s, *family)).unwrap_or_default();
            let after = new.map(|s| local_gaps(s, *family)).unwrap_or_default();
            for (policy, b, a) in [
                ("internal", before.0, after.0),
                ("external", before.1, after.1),
            ] {
                let delta = i64::from(a) - i64::from(b);
                if delta != 0 {
                    self.inner
                        .no_local_endpoints
                        .get_or_create(&[
                            ("traffic_policy", policy),
                            ("ip_family", IpFamily::ALL[i].as_str()),
                        ])
                        .inc_by(delta);
                }
            }
        }
    }

    pub(crate) fn revision(&self, revision: u64, services: usize, pods: usize) {
        self.inner.revisions.inc();
        self.inner
            .revision
            .set(i64::try_from(revision).unwrap_or(i64::MAX));
        self.inner
            .services
            .set(i64::try_from(services).unwrap_or(i64::MAX));
        self.inner.pods.set(i64::try_from(pods).unwrap_or(i64::MAX));
    }
}

/// (internal, external): does the service have a Local policy with endpoints elsewhere but
/// none usable here, in this family?
fn local_gaps(svc: &ServiceState, family: IpFamily) -> (bool, bool) {
    let (mut internal, mut external) = (false, false);
    for p in svc
        .ports
        .iter()
        .filter(|p| p.ip_family == family && p.has_endpoints)
    {
        internal |= p.internal_traffic_policy_local && p.internal_endpoints.is_empty();
        external |= p.external_traffic_policy_local
            && p.external_endpoints.as_ref().is_some_and(|e| e.is_empty());
    }
    (internal, external)
}

/// `kubeproxy_network_programming_duration_seconds`: from an EndpointSlice's
/// `last-change-trigger-time` to the moment the change is programmed (by the dataplane, or
/// printed by `tollgate enls --watch`).
#[derive(Clone)]
pub struct ProgrammingMetrics {
    network_programming: Histogram,
    last_sync: Gauge<f64, AtomicU64>,
}

impl ProgrammingMetrics {
    pub fn register(reg: &mut Registry) -> Self {
        // kube-proxy's buckets: 0.25 s, 0.5 s, 1…59 s, 60…115 s by 5, 120…300 s by 30.
        let buckets: Vec<f64> = [0.25, 0.5]
            .into_iter()
            .chain((1..60).map(f64::from))
            .chain((0..12).map(|i| 60.0 + 5.0 * f64::from(i)))
            .chain((0..7).map(|i| 120.0 + 30.0 * f64::from(i)))
            .collect();
        let m = Self {
            network_programming: Histogram::new(buckets),
            last_sync: Gauge::default(),
        };
        reg.register(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            m.network_programming.clone(),
        );
        reg.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            m.last_sync.clone(),
        );
        m
    }

    pub fn detached() -> Self {
        Self::register(&mut Registry::default())
    }

    /// Call once an update is programmed.
    pub fn programmed(&self, trigger_times: &[SystemTime]) {
        let now = SystemTime::now();
        for t in trigger_times {
            if let Ok(latency) = now.duration_since(*t) {
                self.network_programming.observe(latency.as_secs_f64());
            }
        }
        self.last_sync.set(unix_now());
    }
}
