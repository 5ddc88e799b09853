//! Metadata proxy metrics, under the names operators already have dashboards and recording
//! rules for: k8s-metadata-proxy's `request_count{filter_result,code}`, the GKE metadata
//! server's `metadata_server_request_durations` and `outgoing_request_latency`.

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

pub type ResultLabels = [(&'static str, &'static str); 2];
type ReasonLabels = [(&'static str, &'static str); 1];

#[derive(Clone)]
pub struct ProxyMetrics {
    /// k8s-metadata-proxy's counter (exposed without a `_total` suffix, as it was).
    pub request_count: Family<ResultLabels, Gauge>,
    pub request_durations: Histogram,
    pub outgoing_latency: Histogram,
    pub in_flight: Gauge,
    pub policy_denials: Family<ReasonLabels, Counter>,
    pub upstream_errors: Family<ReasonLabels, Counter>,
    pub policy_reload_errors: Counter,
    pub connections: Gauge,
    pub connections_waiting: Gauge,
}

fn seconds() -> Histogram {
    // 50 µs … ~26 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.00005, 2.0, 20,
    ))
}

impl ProxyMetrics {
    pub fn register(reg: &mut Registry) -> Self {
        let m = Self {
            request_count: Family::default(),
            request_durations: seconds(),
            outgoing_latency: seconds(),
            in_flight: Gauge::default(),
            policy_denials: Family::default(),
            upstream_errors: Family::default(),
            policy_reload_errors: Counter::default(),
            connections: Gauge::default(),
            connections_waiting: Gauge::default(),
        };
        reg.register(
            "request_count",
            "Metadata requests by filter result (filter_result_proxied, filter_result_blocked) and HTTP code",
            m.request_count.clone(),
        );
        reg.register(
            "metadata_server_request_durations",
            "Time from a metadata request's arrival to its response, seconds",
            m.request_durations.clone(),
        );
        reg.register(
            "outgoing_request_latency",
            "Time the upstream metadata server took to answer a forwarded request, seconds",
            m.outgoing_latency.clone(),
        );
        reg.register(
            "tollgate_metadata_requests_in_flight",
            "Metadata requests being handled",
            m.in_flight.clone(),
        );
        reg.register(
            "tollgate_metadata_policy_denials",
            "Requests refused for their identity or policy, by reason (unknown_pod, ambiguous_pod, policy, concealed)",
            m.policy_denials.clone(),
        );
        reg.register(
            "tollgate_metadata_upstream_errors",
            "Forwarded requests that got no answer, by reason (connect, timeout, body)",
            m.upstream_errors.clone(),
        );
        reg.register(
            "tollgate_metadata_policy_reload_errors",
            "Policy files that did not load (the last good policy stayed)",
            m.policy_reload_errors.clone(),
        );
        reg.register(
            "tollgate_metadata_connections",
            "Client connections being served",
            m.connections.clone(),
        );
        reg.register(
            "tollgate_metadata_connections_waiting",
            "Client connections accepted and waiting because their client already has its maximum being served",
            m.connections_waiting.clone(),
        );
        m
    }

    pub fn detached() -> Self {
        Self::register(&mut Registry::default())
    }

    /// Counts one answered request (no allocation: the labels are static strings).
    pub fn count(&self, proxied: bool, code: http::StatusCode) {
        let result = if proxied {
            "filter_result_proxied"
        } else {
            "filter_result_blocked"
        };
        self.request_count
            .get_or_create(&[("filter_result", result), ("code", code_label(code))])
            .inc();
    }
}

/// The status code as a static label value (the table is built once; HTTP codes are
/// three digits).
fn code_label(code: http::StatusCode) -> &'static str {
    static CODES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    let table = CODES.get_or_init(|| {
        (0..1000u16)
            .map(|c| &*Box::leak(format!("{c:03}").into_boxed_str()))
            .collect()
    });
    table
        .get(usize::from(code.as_u16()))
        .copied()
        .unwrap_or("other")
}
