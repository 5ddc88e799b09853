//! healthCheckNodePort servers, as kube-proxy's service health server: a LoadBalancer Service
//! with externalTrafficPolicy Local gets a `healthCheckNodePort`, and the cloud's load balancer
//! asks every node on that port whether to send it the Service's traffic (a node without a
//! local endpoint drops it, so the client address can be kept).
//!
//! For each such Service, an HTTP server listens on the port (on every address, or on the
//! node's addresses in `--nodeport-addresses`, or its primary IPs with `primary`). Any path
//! answers 200 when the node has at least one local Ready endpoint of the Service (distinct
//! addresses, across its ports) and the agent is healthy (`/livez`: no update waiting longer
//! than the health timeout), else 503, with kube-proxy's JSON body. A port that cannot be
//! opened (another process holds it) is logged, counted, recorded as a Warning Event on the
//! Service (kube-proxy's `FailedToStartServiceHealthcheck`), and tried again every few
//! seconds; it affects no other Service.
//!
//! ```text
//! ENLS updates ──▶ ServiceHealthServers::apply ──▶ one listener per Service (open / close /
//!                                                   count of local endpoints)
//! ```

use std::{
    collections::HashMap,
    convert::Infallible,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};
use tokio::{net::TcpListener, sync::mpsc, task::JoinSet, time::Instant};

use super::Health;
use crate::{
    enls::{
        Update,
        model::{ObjKey, ServiceState},
    },
    events::{Event, Events, Regarding},
};

/// How long a port that could not be opened waits before the next try.
pub const RETRY: Duration = Duration::from_secs(5);

/// What a Service asks of this node: its healthCheckNodePort and its local Ready endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub port: u16,
    pub endpoints: u32,
    /// The Service's metadata.uid, for the Event when the port cannot be opened.
    pub uid: Arc<str>,
}

impl Wanted {
    /// `None`: the Service has no health check (not a LoadBalancer with eTP Local).
    pub fn of(service: &ServiceState) -> Option<Self> {
        let port = service
            .ports
            .iter()
            .find_map(|p| p.health_check_node_port)?;
        Some(Self {
            port,
            endpoints: service.local_ready_endpoints,
            uid: service.uid.clone(),
        })
    }
}

#[derive(Clone)]
pub struct ServiceHealthMetrics {
    servers: Gauge,
    listen_failures: Counter,
}

impl ServiceHealthMetrics {
    pub fn register(reg: &mut Registry) -> Self {
        let m = Self {
            servers: Gauge::default(),
            listen_failures: Counter::default(),
        };
        reg.register(
            "tollgate_health_check_node_ports",
            "healthCheckNodePort servers listening (LoadBalancer Services with externalTrafficPolicy Local)",
            m.servers.clone(),
        );
        reg.register(
            "tollgate_health_check_node_port_listen_failures",
            "Attempts to open a healthCheckNodePort that failed (the port is tried again every 5 s)",
            m.listen_failures.clone(),
        );
        m
    }
}

/// What one Service's server answers.
struct Answer {
    service: ObjKey,
    endpoints: AtomicU32,
    health: Health,
}

impl Answer {
    /// kube-proxy's answer: the status, and its JSON body (tab-indented, no final newline).
    fn respond(&self) -> (StatusCode, String) {
        let endpoints = self.endpoints.load(Ordering::Relaxed);
        let healthy = self.health.is_healthy();
        let quote = |s: &str| serde_json::Value::from(s).to_string();
        let body = format!(
            "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {endpoints},\n\t\"serviceProxyHealthy\": {healthy}\n}}",
            quote(&self.service.namespace),
            quote(&self.service.name),
        );
        let status = if endpoints > 0 && healthy {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, body)
    }
}

/// Where the servers listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// These addresses; every address of the node (IPv4 and IPv6) when empty.
    At(Vec<IpAddr>),
    /// The Node's primary IPs as the ENLS reports them (`--nodeport-addresses primary`),
    /// following them when they change.
    NodePrimary,
}

/// One Service's listening server; closed (listeners and connections) when dropped.
struct Instance {
    port: u16,
    uid: Arc<str>,
    answer: Arc<Answer>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The servers of every Service with a health check, kept in step with the ENLS.
pub struct ServiceHealthServers {
    health: Health,
    /// `Listen::NodePrimary`: `addresses` follow the Node's primary IPs.
    follow_primary: bool,
    /// Where each server listens now: these addresses; when empty, every address (or, while
    /// following the primary IPs before they are known, nowhere).
    addresses: Vec<IpAddr>,
    open: HashMap<ObjKey, Instance>,
    /// Wanted but not listening (the port could not be opened), tried again at `retry_at`.
    failed: HashMap<ObjKey, Wanted>,
    retry_at: Option<Instant>,
    metrics: ServiceHealthMetrics,
    events: Events,
}

impl ServiceHealthServers {
    pub fn new(
        health: Health,
        listen: Listen,
        metrics: ServiceHealthMetrics,
        events: Events,
    ) -> Self {
        let (follow_primary, addresses) = match listen {
            Listen::At(a) => (false, a),
            Listen::NodePrimary => (true, Vec::new()),
        };
        Self {
            events,
            health,
            follow_primary,
            addresses,
            open: HashMap::new(),
            failed: HashMap::new(),
            retry_at: None,
            metrics,
        }
    }

    /// Follows the ENLS until its updates end.
    pub async fn follow(mut self, mut updates: mpsc::Receiver<Arc<Update>>) {
        loop {
            let retry_at = self.retry_at;
            tokio::select! {
                u = updates.recv() => match u {
                    Some(u) => self.apply(&u),
                    None => return,
                },
                () = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)),
                    if retry_at.is_some() => self.retry(),
            }
        }
    }

    /// Opens, closes and updates the servers of the Services an update changed. Must run
    /// inside a tokio runtime (the servers are its tasks).
    pub fn apply(&mut self, update: &Update) {
        if self.follow_primary
            && let Some(node) = &update.node
            && node.primary != self.addresses
        {
            tracing::info!(addresses = ?node.primary, "healthCheckNodePorts listen on the node's primary IPs");
            self.addresses = node.primary.clone();
            self.reopen();
        }
        for change in &update.services {
            let wanted = change.new.as_deref().and_then(Wanted::of);
            self.set(&change.key, wanted);
        }
    }

    fn set(&mut self, key: &ObjKey, wanted: Option<Wanted>) {
        if let (Some(open), Some(w)) = (self.open.get_mut(key), &wanted)
            && open.port == w.port
        {
            open.answer.endpoints.store(w.endpoints, Ordering::Relaxed);
            open.uid.clone_from(&w.uid);
            return;
        }
        if let Some(old) = self.open.remove(key) {
            tracing::info!(service = %key, port = old.port, "closing its healthCheckNodePort");
        }
        let failed_before = self.failed.remove(key);
        if let Some(w) = wanted {
            // A port that failed before is logged again only when it changed.
            let quiet = failed_before.is_some_and(|f| f.port == w.port);
            self.open(key, w, quiet);
        }
        self.settle();
    }

    /// Opens every server again (where they listen changed), and tries the failed ones now.
    fn reopen(&mut self) {
        for (key, old) in std::mem::take(&mut self.open) {
            let w = Wanted {
                port: old.port,
                endpoints: old.answer.endpoints.load(Ordering::Relaxed),
                uid: old.uid.clone(),
            };
            drop(old);
            self.open(&key, w, false);
        }
        self.retry();
    }

    fn retry(&mut self) {
        self.retry_at = None;
        for (key, w) in std::mem::take(&mut self.failed) {
            self.open(&key, w, true);
        }
        self.settle();
    }

    fn open(&mut self, key: &ObjKey, w: Wanted, quiet: bool) {
        match self.listen(key, &w) {
            Ok(instance) => {
                tracing::info!(service = %key, port = w.port, local_endpoints = w.endpoints, "serving its healthCheckNodePort");
                self.open.insert(key.clone(), instance);
            }
            Err(e) => {
                self.metrics.listen_failures.inc();
                if quiet {
                    tracing::debug!(service = %key, port = w.port, "healthCheckNodePort still not opened: {e}");
                } else {
                    tracing::warn!(service = %key, port = w.port, "cannot open its healthCheckNodePort (tried again every {} s): {e}", RETRY.as_secs());
                    // kube-proxy's Event, with its words.
                    self.events.record(
                        Regarding::service(&key.namespace, &key.name, &w.uid),
                        Event {
                            warning: true,
                            reason: "FailedToStartServiceHealthcheck",
                            action: "Listen",
                            note: format!(
                                "node {} failed to start healthcheck \"{key}\" on port {}: {e}",
                                self.events.node(),
                                w.port
                            ),
                        },
                    );
                }
                self.failed.insert(key.clone(), w);
            }
        }
    }

    fn settle(&mut self) {
        self.metrics
            .servers
            .set(i64::try_from(self.open.len()).unwrap_or(i64::MAX));
        if self.failed.is_empty() {
            self.retry_at = None;
        } else if self.retry_at.is_none() {
            self.retry_at = Some(Instant::now() + RETRY);
        }
    }

    /// Listens on the port at every address; on any failure, nothing stays open.
    fn listen(&self, key: &ObjKey, w: &Wanted) -> io::Result<Instance> {
        let answer = Arc::new(Answer {
            service: key.clone(),
            endpoints: AtomicU32::new(w.endpoints),
            health: self.health.clone(),
        });
        let listeners = if self.addresses.is_empty() {
            if self.follow_primary {
                return Err(io::Error::other(
                    "the node's primary IPs are not known yet (no Node object)",
                ));
            }
            vec![listen_everywhere(w.port)?]
        } else {
            let mut v = Vec::with_capacity(self.addresses.len());
            for ip in &self.addresses {
                let addr = SocketAddr::new(*ip, w.port);
                v.push(bind(addr, false).map_err(|e| annotate(e, addr))?);
            }
            v
        };
        let tasks = listeners
            .into_iter()
            .map(|l| tokio::spawn(serve(l, answer.clone())).abort_handle())
            .collect();
        Ok(Instance {
            port: w.port,
            uid: w.uid.clone(),
            answer,
            tasks,
        })
    }
}

fn annotate(e: io::Error, addr: SocketAddr) -> io::Error {
    io::Error::new(e.kind(), format!("{addr}: {e}"))
}

/// Every address, IPv4 and IPv6 (one dual-stack socket, whatever `net.ipv6.bindv6only`
/// says); IPv4 only where IPv6 is unavailable.
fn listen_everywhere(port: u16) -> io::Result<TcpListener> {
    let any6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
    match bind(any6, true) {
        Ok(l) => Ok(l),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
            ) =>
        {
            let any4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
            bind(any4, false).map_err(|e| annotate(e, any4))
        }
        Err(e) => Err(annotate(e, any6)),
    }
}

fn bind(addr: SocketAddr, dual_stack: bool) -> io::Result<TcpListener> {
    let options = crate::netif::ListenOptions {
        dual_stack,
        nodelay: false,
        backlog: 128,
    };
    crate::netif::tcp_listener(addr, options)
}

/// Serves one listener until aborted; its connections end with it.
async fn serve(listener: TcpListener, answer: Arc<Answer>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let answer = answer.clone();
                    connections.spawn(async move {
                        let svc = service_fn(move |req| respond(req, answer.clone()));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(Duration::from_secs(10))
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::debug!("healthCheckNodePort accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn respond(
    _req: Request<Incoming>,
    answer: Arc<Answer>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = answer.respond();
    Ok(super::response(status, "application/json", body))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn key(name: &str) -> ObjKey {
        ObjKey::new("default", name)
    }

    fn answer(endpoints: u32, health: &Health) -> Answer {
        Answer {
            service: key("web"),
            endpoints: AtomicU32::new(endpoints),
            health: health.clone(),
        }
    }

    #[test]
    fn answers_as_kube_proxy_from_local_endpoints_and_the_agents_health() {
        let health = Health::detached(Duration::from_secs(60));
        // Nothing programmed yet: unhealthy whatever the endpoints.
        let (status, body) = answer(2, &health).respond();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("\"serviceProxyHealthy\": false"), "{body}");
        health.programmed();
        let (status, body) = answer(2, &health).respond();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"default\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["service"]["name"], "web");
        let (status, body) = answer(0, &health).respond();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("\"localEndpoints\": 0"), "{body}");
        // An update queued for longer than the timeout: unhealthy again.
        let stale = Health::detached(Duration::from_millis(1));
        stale.programmed();
        stale.queued();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            answer(2, &stale).respond().0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        // The node being drained does not count (kube-proxy's IsHealthy leaves it out).
        health.set_node_eligible(false);
        assert_eq!(answer(2, &health).respond().0, StatusCode::OK);
    }
}
