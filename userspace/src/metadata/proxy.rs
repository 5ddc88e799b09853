//! The concealing proxy: parse and normalise the target once, apply the flavour's rules, find
//! the pod behind the source address and apply its policy, then forward the normalised request
//! (no client-address headers added) and stream the answer back.
//!
//! Bad input stays the problem of the request that carried it: headers over the limit get 431,
//! clients that do not send their headers in time are disconnected, bodies over the limit get
//! 413, an upstream that is down or slow gets 502 / 504. hyper parses HTTP/1 framing strictly
//! (a request with both Content-Length and Transfer-Encoding is read as chunked and closes the
//! connection after it), and every forwarded request is rebuilt from what was checked, so no
//! bytes of one request can reach the upstream inside another.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Either, Full, Limited};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use tokio::{net::TcpListener, sync::Semaphore};

use super::{
    identity::{Lookup, PodIndex},
    metrics::ProxyMetrics,
    policy::{Denial, PolicyStore},
    rules::{self, AWS_TTL_HEADER, Flavor},
    target,
};

pub type Body = Either<Full<Bytes>, Incoming>;

/// Resource limits per request and per proxy.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request line plus headers (hyper's read buffer; at least 8 KiB).
    pub header_bytes: usize,
    /// A client must send its request head within this time.
    pub header_timeout: Duration,
    pub body_bytes: usize,
    /// Client connections accepted at once (more wait in the listen backlog).
    pub connections: usize,
    /// Connections of one client address served at once; its further connections wait,
    /// accepted but without buffers, until one of its own finishes. One pod's burst or
    /// slow connections neither take the others' turn nor grow memory with their number.
    pub connections_per_client: usize,
    /// Requests forwarded at once (each needs an upstream connection; more wait their turn):
    /// bounds memory and the load on the metadata server, whatever the number of clients.
    pub upstream_concurrency: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_bytes: 8 * 1024,
            header_timeout: Duration::from_secs(10),
            body_bytes: 64 * 1024,
            connections: 4096,
            connections_per_client: 64,
            upstream_concurrency: 32,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub flavor: Flavor,
    /// `http://host[:port]` of the real metadata server.
    pub upstream: Uri,
    pub upstream_timeout: Duration,
    pub aws_require_token: bool,
    /// Pods of this node, when identity is enforced.
    pub identity: Option<Arc<PodIndex>>,
    pub policy: PolicyStore,
    pub limits: Limits,
}

/// Why a request was not forwarded (or not answered by the upstream).
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    reason: String,
    close: bool,
}

impl Refusal {
    fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
            close: false,
        }
    }
}

pub struct Proxy {
    cfg: ProxyConfig,
    authority: String,
    client: Client<HttpConnector, Full<Bytes>>,
    upstream_slots: Semaphore,
    pub metrics: ProxyMetrics,
}

/// Headers that belong to one connection and are never forwarded (RFC 9110 §7.6.1), plus the
/// length, which the rebuilt body sets.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for h in HOP_BY_HOP
        .iter()
        .copied()
        .chain(listed.iter().map(String::as_str))
    {
        headers.remove(h);
    }
    headers.remove(header::CONTENT_LENGTH);
}

fn text(status: StatusCode, reason: &str, close: bool) -> Response<Body> {
    let mut r = Response::new(Either::Left(Full::new(Bytes::from(format!("{reason}\n")))));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if close {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

impl Proxy {
    pub fn new(cfg: ProxyConfig, metrics: ProxyMetrics) -> Result<Arc<Self>, String> {
        if cfg.upstream.scheme_str() != Some("http") {
            return Err(format!(
                "upstream {}: only http:// (the metadata server speaks plain HTTP)",
                cfg.upstream
            ));
        }
        let authority = cfg
            .upstream
            .authority()
            .map(|a| a.to_string())
            .ok_or_else(|| format!("upstream {} has no host", cfg.upstream))?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(cfg.limits.upstream_concurrency)
            .http1_read_buf_exact_size(8192)
            .build(connector);
        let upstream_slots = Semaphore::new(cfg.limits.upstream_concurrency.max(1));
        Ok(Arc::new(Self {
            cfg,
            authority,
            client,
            upstream_slots,
            metrics,
        }))
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.cfg
    }

    /// One request from `peer`.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let start = Instant::now();
        self.metrics.in_flight.inc();
        let (parts, body) = req.into_parts();
        let response = match self.decide(&parts, peer).await {
            Ok(t) => match self.forward(parts, body, &t).await {
                Ok(r) => {
                    self.metrics.count(true, r.status());
                    r.map(Either::Right)
                }
                Err(f) => {
                    self.metrics.count(false, f.status);
                    text(f.status, &f.reason, f.close)
                }
            },
            Err(f) => {
                tracing::debug!(%peer, uri = %parts.uri, status = f.status.as_u16(), reason = %f.reason, "metadata request refused");
                self.metrics.count(false, f.status);
                text(f.status, &f.reason, f.close)
            }
        };
        self.metrics
            .request_durations
            .observe(start.elapsed().as_secs_f64());
        self.metrics.in_flight.dec();
        response
    }

    /// Rules, identity, policy. Returns the normalised target to forward.
    async fn decide(
        &self,
        parts: &http::request::Parts,
        peer: SocketAddr,
    ) -> Result<target::Target, Refusal> {
        let raw = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        // An absolute-form target keeps its scheme and host in the URI.
        let raw = if parts.uri.scheme().is_some() {
            parts.uri.to_string()
        } else {
            raw.to_owned()
        };
        let t = target::parse(&raw)
            .map_err(|_| Refusal::new(StatusCode::FORBIDDEN, rules::UNPARSABLE))?;
        let class = rules::check(
            self.cfg.flavor,
            &parts.method,
            &parts.headers,
            &t,
            self.cfg.aws_require_token,
        )
        .map_err(|b| Refusal::new(b.status, b.reason))?;
        let who = match &self.cfg.identity {
            None => None,
            Some(index) => {
                if !index.synced() {
                    return Err(Refusal::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "The metadata proxy does not know this node's pods yet",
                    ));
                }
                match index.lookup(peer.ip()) {
                    Lookup::Pod(p) => Some(p),
                    Lookup::Unknown => {
                        self.deny("unknown_pod");
                        return Err(Refusal::new(
                            StatusCode::FORBIDDEN,
                            format!(
                                "Requests from {} are not from a pod on this node",
                                peer.ip()
                            ),
                        ));
                    }
                    Lookup::Ambiguous(n) => {
                        self.deny("ambiguous_pod");
                        return Err(Refusal::new(
                            StatusCode::FORBIDDEN,
                            format!("{} belongs to {n} pods on this node", peer.ip()),
                        ));
                    }
                }
            }
        };
        let policy = self.cfg.policy.get();
        let id = who.as_ref().map(|p| (&*p.namespace, &*p.service_account));
        match policy.decide(id, &t.segments, class) {
            Ok(()) => Ok(t),
            Err(Denial::Concealed) => {
                self.deny("concealed");
                Err(Refusal::new(StatusCode::FORBIDDEN, rules::CONCEALED))
            }
            Err(Denial::Denied) => {
                self.deny("policy");
                let whom = id
                    .map(|(ns, sa)| format!("{ns}/{sa}"))
                    .unwrap_or_else(|| "this client".into());
                Err(Refusal::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "This metadata endpoint is not allowed for {whom} by the metadata policy"
                    ),
                ))
            }
        }
    }

    fn deny(&self, reason: &'static str) {
        self.metrics
            .policy_denials
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    fn upstream_error(&self, reason: &'static str) {
        self.metrics
            .upstream_errors
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    async fn forward(
        &self,
        parts: http::request::Parts,
        body: Incoming,
        t: &target::Target,
    ) -> Result<Response<Incoming>, Refusal> {
        let body = Limited::new(body, self.cfg.limits.body_bytes)
            .collect()
            .await
            .map_err(|_| Refusal {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                reason: "Request body too large or malformed".into(),
                close: true,
            })?
            .to_bytes();
        self.send(parts.method, parts.headers, t, body).await
    }

    async fn send(
        &self,
        method: Method,
        mut headers: HeaderMap,
        t: &target::Target,
        body: Bytes,
    ) -> Result<Response<Incoming>, Refusal> {
        let uri: Uri = format!("http://{}{}", self.authority, t.path_and_query())
            .parse()
            .map_err(|_| Refusal::new(StatusCode::FORBIDDEN, rules::UNPARSABLE))?;
        strip_hop_by_hop(&mut headers);
        if !headers.contains_key(header::HOST)
            && let Ok(v) = HeaderValue::from_str(&self.authority)
        {
            headers.insert(header::HOST, v);
        }
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        let start = Instant::now();
        let sent = tokio::time::timeout(self.cfg.upstream_timeout, async {
            // The permit is held until the answer's head arrives; the body streams after.
            let _slot = self.upstream_slots.acquire().await;
            self.client.request(req).await
        })
        .await;
        let mut resp = match sent {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!("metadata server unavailable: {e}");
                self.upstream_error("connect");
                return Err(Refusal::new(
                    StatusCode::BAD_GATEWAY,
                    "The metadata server is unavailable",
                ));
            }
            Err(_) => {
                self.upstream_error("timeout");
                return Err(Refusal::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "The metadata server did not answer in time",
                ));
            }
        };
        self.metrics
            .outgoing_latency
            .observe(start.elapsed().as_secs_f64());
        strip_hop_by_hop(resp.headers_mut());
        Ok(resp)
    }

    /// Readiness: the identity index is complete (when enforced) and a harmless request goes
    /// through the rules, the policy and the upstream and gets an answer.
    pub async fn self_check(&self) -> Result<String, String> {
        if let Some(idx) = &self.cfg.identity
            && !idx.synced()
        {
            return Err("the pods of this node are not known yet".into());
        }
        let (method, target, headers): (Method, &str, Vec<(&str, &str)>) = match self.cfg.flavor {
            Flavor::Gce => (
                Method::GET,
                "/computeMetadata/v1/",
                vec![("metadata-flavor", "Google")],
            ),
            Flavor::Aws => (
                Method::PUT,
                "/latest/api/token",
                vec![(AWS_TTL_HEADER, "60")],
            ),
        };
        let t = target::parse(target).map_err(|e| e.to_string())?;
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(k, HeaderValue::from_static(v));
        }
        rules::check(self.cfg.flavor, &method, &h, &t, false).map_err(|b| b.reason)?;
        let started = Instant::now();
        let r = self
            .send(method, h, &t, Bytes::new())
            .await
            .map_err(|f| f.reason)?;
        if r.status().is_server_error() {
            return Err(format!("the metadata server answered {}", r.status()));
        }
        Ok(format!(
            "{} {target} → {} in {:.1} ms",
            self.cfg.flavor.as_str(),
            r.status().as_u16(),
            started.elapsed().as_secs_f64() * 1e3
        ))
    }
}

impl Flavor {
    pub fn as_str(&self) -> &'static str {
        match self {
            Flavor::Gce => "gce",
            Flavor::Aws => "aws",
        }
    }
}

/// A listener with a backlog for bursts of new connections (thousands of clients at once).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let options = crate::netif::ListenOptions {
        dual_stack: false,
        nodelay: true,
        backlog: 4096,
    };
    crate::netif::tcp_listener(addr, options)
}

/// Per client address: how many of its connections may be served at once.
#[derive(Default)]
struct ClientSlots {
    by_addr: Mutex<HashMap<IpAddr, Arc<Semaphore>>>,
}

impl ClientSlots {
    fn of(&self, addr: IpAddr, per_client: usize) -> Arc<Semaphore> {
        let mut m = self.by_addr.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(addr)
            .or_insert_with(|| Arc::new(Semaphore::new(per_client.max(1))))
            .clone()
    }

    /// Forgets `addr` once none of its connections holds or waits for its semaphore.
    fn release(&self, addr: IpAddr, sem: Arc<Semaphore>) {
        let mut m = self.by_addr.lock().unwrap_or_else(|e| e.into_inner());
        // The map's reference and `sem`: nobody else is using it.
        if Arc::strong_count(&sem) == 2 {
            m.remove(&addr);
        }
    }
}

/// Serves connections until the listener fails.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>) {
    let limits = proxy.cfg.limits;
    let slots = Arc::new(Semaphore::new(limits.connections));
    let clients = Arc::new(ClientSlots::default());
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: this connection only.
                tracing::warn!("metadata proxy accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let clients = clients.clone();
        tokio::spawn(async move {
            let sem = clients.of(peer.ip(), limits.connections_per_client);
            let turn = match sem.clone().try_acquire_owned() {
                Ok(t) => Ok(t),
                Err(_) => {
                    proxy.metrics.connections_waiting.inc();
                    let t = sem.clone().acquire_owned().await;
                    proxy.metrics.connections_waiting.dec();
                    t
                }
            };
            proxy.metrics.connections.inc();
            let p = proxy.clone();
            let svc = hyper::service::service_fn(move |req| {
                let p = p.clone();
                async move { Ok::<_, Infallible>(p.handle(req, peer).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(limits.header_bytes.max(8192))
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
            proxy.metrics.connections.dec();
            drop(turn);
            clients.release(peer.ip(), sem);
            drop(permit);
        });
    }
}
