//! `/healthz` and `/livez` with kube-proxy's semantics: healthy unless an update has been
//! queued for longer than the health timeout without being programmed; `/healthz` also
//! requires the node to be eligible (no deletionTimestamp, not being removed by the cluster
//! autoscaler). Counted in `kubeproxy_proxy_healthz_total` / `kubeproxy_proxy_livez_total`.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

#[derive(Debug)]
struct State {
    /// Oldest update queued and not yet programmed.
    queued_since: Option<Instant>,
    /// Wall-clock time of the last successful programming.
    last_updated: Option<SystemTime>,
    node_eligible: bool,
    /// Nothing was ever programmed yet (the first full state is pending).
    started: bool,
}

#[derive(Clone)]
pub struct Health {
    state: Arc<Mutex<State>>,
    timeout: Duration,
    healthz_total: Family<[(&'static str, String); 1], Counter>,
    livez_total: Family<[(&'static str, String); 1], Counter>,
}

fn rfc3339(t: SystemTime) -> String {
    crate::telemetry::format_utc(t)
}

impl Health {
    /// `timeout` is kube-proxy's healthTimeout (2 × syncPeriod; 60 s by default).
    pub fn register(reg: &mut Registry, timeout: Duration) -> Self {
        let h = Self {
            state: Arc::new(Mutex::new(State {
                queued_since: None,
                last_updated: None,
                node_eligible: true,
                started: false,
            })),
            timeout,
            healthz_total: Family::default(),
            livez_total: Family::default(),
        };
        reg.register(
            "kubeproxy_proxy_healthz",
            "Cumulative proxy healthz HTTP status",
            h.healthz_total.clone(),
        );
        reg.register(
            "kubeproxy_proxy_livez",
            "Cumulative proxy livez HTTP status",
            h.livez_total.clone(),
        );
        h
    }

    /// Not registered anywhere (tests, tools).
    pub fn detached(timeout: Duration) -> Self {
        Self::register(&mut Registry::default(), timeout)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An update is waiting to be programmed.
    pub fn queued(&self) {
        let mut s = self.lock();
        s.queued_since.get_or_insert_with(Instant::now);
    }

    /// Everything queued so far is programmed.
    pub fn programmed(&self) {
        let mut s = self.lock();
        s.queued_since = None;
        s.last_updated = Some(SystemTime::now());
        s.started = true;
    }

    pub fn set_node_eligible(&self, eligible: bool) {
        self.lock().node_eligible = eligible;
    }

    /// Programmed at least once, and nothing queued for longer than the timeout (before the
    /// first programming, the start itself counts as queued).
    fn proxy_healthy(&self, s: &State) -> bool {
        s.started && s.queued_since.is_none_or(|q| q.elapsed() <= self.timeout)
    }

    /// kube-proxy's `IsHealthy`: what `/livez` answers (the node's eligibility left out),
    /// without counting a request. The healthCheckNodePort servers report it.
    pub fn is_healthy(&self) -> bool {
        self.proxy_healthy(&self.lock())
    }

    fn evaluate(&self, with_node: bool) -> (bool, String) {
        let s = self.lock();
        let now = SystemTime::now();
        let healthy = self.proxy_healthy(&s);
        let last = if healthy {
            now
        } else {
            s.last_updated.unwrap_or(SystemTime::UNIX_EPOCH)
        };
        let mut body = serde_json::json!({
            "lastUpdated": rfc3339(last),
            "currentTime": rfc3339(now),
        });
        if with_node {
            body["nodeEligible"] = serde_json::Value::Bool(s.node_eligible);
        }
        (healthy && (!with_node || s.node_eligible), body.to_string())
    }

    pub fn healthz(&self) -> (bool, String) {
        let (ok, body) = self.evaluate(true);
        self.healthz_total
            .get_or_create(&[("code", if ok { "200" } else { "503" }.to_owned())])
            .inc();
        (ok, body)
    }

    pub fn livez(&self) -> (bool, String) {
        let (ok, body) = self.evaluate(false);
        self.livez_total
            .get_or_create(&[("code", if ok { "200" } else { "503" }.to_owned())])
            .inc();
        (ok, body)
    }
}
