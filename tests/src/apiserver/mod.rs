//! An API-server double that speaks the real Kubernetes list/watch protocol over HTTP, so tests
//! drive the real kube-rs client and watcher (no kube-apiserver binary exists on these machines).
//!
//! Supported: Services, EndpointSlices, Nodes, Pods (and ConfigMaps, events.k8s.io Events);
//! cluster-wide and namespaced paths; GET (one object), list (label and field selectors,
//! `limit`/`continue` pagination over a snapshot, `resourceVersion` in the list metadata), watch
//! (from a resourceVersion, or with synthetic ADDED events from "0"; selector entries/exits as
//! ADDED/DELETED; BOOKMARK events; `timeoutSeconds`; an ERROR event with 410 Gone when the
//! version is older than the event log), POST, PUT (with resourceVersion conflicts), PATCH (JSON
//! merge patch), DELETE. Test controls: [`ApiServerDouble::compact`] (forget history: resuming
//! watches get 410) and [`ApiServerDouble::drop_watches`] (end every watch stream, as an API
//! server restart would).

pub mod selector;
pub mod store;

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::{Method, Request, Response, StatusCode, body::Frame, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};

use self::{
    selector::{FieldSelector, LabelSelector, labels_of},
    store::{EventType, RESOURCES, Resource, Store, StoreError, resource_by_kind},
};

type Body = BoxBody<Bytes, Infallible>;

/// A list taken by a first page: its resourceVersion and items, served by `continue` pages.
type ListSnapshot = (u64, Arc<Vec<Value>>);

/// Request counters, for tests that assert how the client behaved.
#[derive(Debug, Default)]
pub struct RequestStats {
    pub lists: AtomicU64,
    pub watches: AtomicU64,
    pub gone: AtomicU64,
    pub writes: AtomicU64,
}

struct Shared {
    store: Mutex<Store>,
    stats: RequestStats,
    /// Bumped to end every open watch stream.
    watch_generation: watch::Sender<u64>,
    pages: Mutex<HashMap<String, ListSnapshot>>,
    page_id: AtomicU64,
    bookmark_interval: Duration,
    unserved: Vec<&'static str>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running double. Dropping it stops the server.
pub struct ApiServerDouble {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

#[derive(Debug, Clone)]
pub struct DoubleOptions {
    /// Events kept for resuming watches; older resourceVersions answer 410 Gone.
    pub event_log: usize,
    pub bookmark_interval: Duration,
    /// Kinds answered 404, as by an API server that predates them.
    pub unserved: Vec<&'static str>,
}

impl Default for DoubleOptions {
    fn default() -> Self {
        Self {
            event_log: 100_000,
            bookmark_interval: Duration::from_millis(500),
            unserved: Vec::new(),
        }
    }
}

impl ApiServerDouble {
    /// Serves on 127.0.0.1 (an ephemeral port).
    pub fn start_local() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("binding the API-server double: {e}"));
        Self::start(listener, DoubleOptions::default())
    }

    /// Serves on an already bound listener (bind it inside a test-bed namespace to make the
    /// double reachable from the nodes).
    pub fn start(listener: std::net::TcpListener, opts: DoubleOptions) -> Self {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("listener address: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("nonblocking listener: {e}"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("apiserver-double")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("API-server double runtime: {e}"));
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(opts.event_log)),
            stats: RequestStats::default(),
            watch_generation: watch::channel(0).0,
            pages: Mutex::new(HashMap::new()),
            page_id: AtomicU64::new(0),
            bookmark_interval: opts.bookmark_interval,
            unserved: opts.unserved,
        });
        let serving = shared.clone();
        runtime.spawn(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("API-server double: {e}");
                    return;
                }
            };
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                // As Go's API server does: watch events are small writes that must not wait
                // for the previous one's ACK.
                let _ = stream.set_nodelay(true);
                let shared = serving.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, shared.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            shared,
            runtime: Some(runtime),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig pointing at the double and returns its path.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: {}\nusers:\n- name: tollgate\n  user:\n    token: test-token\ncontexts:\n- name: double\n  context:\n    cluster: double\n    user: tollgate\ncurrent-context: double\n",
            self.url()
        );
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    fn resource(obj: &Value) -> &'static Resource {
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        resource_by_kind(kind).unwrap_or_else(|| panic!("the double does not serve kind {kind:?}"))
    }

    /// Creates or replaces an object (its `kind` picks the resource). Returns the stored object.
    pub fn apply(&self, obj: Value) -> Value {
        let res = Self::resource(&obj);
        self.shared
            .lock()
            .apply(res, obj)
            .unwrap_or_else(|e| panic!("apply: {e}"))
    }

    /// Applies many objects under one lock (fast set-up for large states).
    pub fn apply_all(&self, objs: impl IntoIterator<Item = Value>) {
        let mut store = self.shared.lock();
        for obj in objs {
            let res = Self::resource(&obj);
            store
                .apply(res, obj)
                .unwrap_or_else(|e| panic!("apply: {e}"));
        }
    }

    /// Deletes an object; returns whether it existed.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let res = resource_by_kind(kind).unwrap_or_else(|| panic!("unknown kind {kind}"));
        self.shared.lock().delete(res, namespace, name).is_ok()
    }

    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let res = resource_by_kind(kind)?;
        let ns = if res.namespaced { namespace } else { "" };
        self.shared
            .lock()
            .objects
            .get(&(res.kind, ns.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Every stored object of `kind`, in key order (namespace, name).
    pub fn list(&self, kind: &str) -> Vec<Value> {
        self.shared
            .lock()
            .objects
            .iter()
            .filter(|((k, _, _), _)| *k == kind)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Forgets the event log: a watch resuming from any older version gets 410 Gone and the
    /// client must re-list.
    pub fn compact(&self) {
        self.shared.lock().compact();
    }

    /// Ends every open watch stream (the client reconnects from its last version).
    pub fn drop_watches(&self) {
        self.shared.watch_generation.send_modify(|g| *g += 1);
    }

    /// Ends every watch, deletes the object and forgets history, all before any client can
    /// reconnect: clients miss the DELETED event, get 410 Gone on resuming, and must re-list.
    pub fn delete_while_disconnected(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let res = resource_by_kind(kind).unwrap_or_else(|| panic!("unknown kind {kind}"));
        let mut store = self.shared.lock();
        self.drop_watches();
        let existed = store.delete(res, namespace, name).is_ok();
        store.compact();
        existed
    }

    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    pub fn stats(&self) -> &RequestStats {
        &self.shared.stats
    }
}

impl Drop for ApiServerDouble {
    fn drop(&mut self) {
        self.drop_watches();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn full(status: StatusCode, body: Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(e: &StoreError) -> Response<Body> {
    full(
        StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        e.status(),
    )
}

fn bad_request(msg: String) -> Response<Body> {
    full(
        StatusCode::BAD_REQUEST,
        json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "message": msg, "reason": "BadRequest", "code": 400}),
    )
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or(""),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(req: &Request<hyper::body::Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// `(resource, namespace, name)` from a request path.
fn route(path: &str) -> Option<(&'static Resource, Option<String>, Option<String>)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api_version, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => ("v1".to_owned(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        _ => (None, rest),
    };
    let (plural, name) = match rest {
        [plural] => (*plural, None),
        [plural, name] => (*plural, Some((*name).to_owned())),
        _ => return None,
    };
    let res = RESOURCES
        .iter()
        .find(|r| r.plural == plural && r.api_version == api_version)?;
    Some((res, ns, name))
}

struct Filter {
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn from_query(q: &HashMap<String, String>, namespace: Option<String>) -> Result<Self, String> {
        Ok(Self {
            namespace,
            labels: LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?,
            fields: FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))?,
        })
    }

    fn matches(&self, obj: &Value) -> bool {
        let ns_ok = self.namespace.as_deref().is_none_or(|ns| {
            obj.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns)
        });
        ns_ok && self.labels.matches(&labels_of(obj)) && self.fields.matches(obj)
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    if path == "/version" {
        return Ok(full(
            StatusCode::OK,
            json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-tollgate-double"}),
        ));
    }
    let Some((res, ns, name)) = route(&path).filter(|(r, ..)| !shared.unserved.contains(&r.kind))
    else {
        return Ok(full(
            StatusCode::NOT_FOUND,
            StoreError::NotFound(path).status(),
        ));
    };
    let q = query(&req);
    let method = req.method().clone();
    let resp = match (method, name) {
        (Method::GET, Some(name)) => {
            let key = (res.kind, ns.unwrap_or_default(), name);
            match shared.lock().objects.get(&key) {
                Some(o) => full(StatusCode::OK, o.clone()),
                None => error(&StoreError::NotFound(format!(
                    "{} {}/{}",
                    res.kind, key.1, key.2
                ))),
            }
        }
        (Method::GET, None) => {
            let filter = match Filter::from_query(&q, ns) {
                Ok(f) => f,
                Err(e) => return Ok(bad_request(e)),
            };
            if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) {
                shared.stats.watches.fetch_add(1, Ordering::Relaxed);
                watch_response(res, filter, &q, shared)
            } else {
                shared.stats.lists.fetch_add(1, Ordering::Relaxed);
                list_response(res, filter, &q, &shared)
            }
        }
        (Method::POST, None) | (Method::PUT, Some(_)) => {
            let is_create = req.method() == Method::POST;
            let mut obj = match json_body(req).await {
                Ok(v) => v,
                Err(resp) => return Ok(resp),
            };
            if let (Some(ns), Some(meta)) =
                (ns, obj.get_mut("metadata").and_then(Value::as_object_mut))
            {
                meta.insert("namespace".into(), ns.into());
            }
            shared.stats.writes.fetch_add(1, Ordering::Relaxed);
            let mut store = shared.lock();
            let result = if is_create {
                store.create(res, obj)
            } else {
                store.update(res, obj)
            };
            match result {
                Ok(o) => full(
                    if is_create {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    },
                    o,
                ),
                Err(e) => error(&e),
            }
        }
        (Method::PATCH, Some(name)) => {
            let merge = req
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .is_some_and(|t| t.as_bytes().starts_with(b"application/merge-patch+json"));
            if !merge {
                return Ok(full(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    json!({"kind": "Status", "code": 415, "status": "Failure", "reason": "UnsupportedMediaType", "message": "the double applies JSON merge patches only"}),
                ));
            }
            let patch = match json_body(req).await {
                Ok(v) => v,
                Err(resp) => return Ok(resp),
            };
            shared.stats.writes.fetch_add(1, Ordering::Relaxed);
            let mut store = shared.lock();
            let key = (res.kind, ns.unwrap_or_default(), name);
            match store.objects.get(&key).cloned() {
                Some(mut obj) => {
                    merge_patch(&mut obj, &patch);
                    match store.update(res, obj) {
                        Ok(o) => full(StatusCode::OK, o),
                        Err(e) => error(&e),
                    }
                }
                None => error(&StoreError::NotFound(format!(
                    "{} {}/{}",
                    res.kind, key.1, key.2
                ))),
            }
        }
        (Method::DELETE, Some(name)) => {
            shared.stats.writes.fetch_add(1, Ordering::Relaxed);
            match shared
                .lock()
                .delete(res, ns.as_deref().unwrap_or(""), &name)
            {
                Ok(o) => full(StatusCode::OK, o),
                Err(e) => error(&e),
            }
        }
        _ => full(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"kind": "Status", "code": 405, "status": "Failure", "reason": "MethodNotAllowed"}),
        ),
    };
    Ok(resp)
}

/// The request's body as JSON, or the 400 answer.
async fn json_body(req: Request<hyper::body::Incoming>) -> Result<Value, Response<Body>> {
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Err(bad_request(e.to_string())),
    };
    serde_json::from_slice(&body).map_err(|e| bad_request(format!("body is not JSON: {e}")))
}

/// RFC 7386: objects merge key by key, `null` removes a key, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in fields {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

fn list_response(
    res: &'static Resource,
    filter: Filter,
    q: &HashMap<String, String>,
    shared: &Shared,
) -> Response<Body> {
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    // A continue token names a snapshot taken by the first page.
    let (rv, items, offset) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let Some((id, offset)) = token.split_once(':') else {
                return bad_request(format!("invalid continue token {token:?}"));
            };
            let offset: usize = offset.parse().unwrap_or(0);
            let pages = shared.pages.lock().unwrap_or_else(|p| p.into_inner());
            match pages.get(id) {
                Some((rv, items)) => (*rv, Arc::clone(items), offset),
                None => {
                    return error(&StoreError::Gone {
                        requested: 0,
                        oldest: 0,
                    });
                }
            }
        }
        None => {
            let store = shared.lock();
            let items: Vec<Value> = store
                .objects
                .iter()
                .filter(|(k, _)| k.0 == res.kind)
                .map(|(_, v)| v)
                .filter(|o| filter.matches(o))
                .cloned()
                .collect();
            (store.rv, Arc::new(items), 0)
        }
    };
    let end = offset.saturating_add(limit).min(items.len());
    let page: Vec<Value> = items[offset.min(items.len())..end].to_vec();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if end < items.len() {
        let id = match q
            .get("continue")
            .and_then(|t| t.split_once(':'))
            .map(|(id, _)| id.to_owned())
        {
            Some(id) => id,
            None => {
                let id = format!("p{}", shared.page_id.fetch_add(1, Ordering::Relaxed));
                shared
                    .pages
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.clone(), (rv, items.clone()));
                id
            }
        };
        metadata["continue"] = format!("{id}:{end}").into();
        metadata["remainingItemCount"] = (items.len() - end).into();
    } else if let Some((id, _)) = q.get("continue").and_then(|t| t.split_once(':')) {
        shared
            .pages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
    full(
        StatusCode::OK,
        json!({"apiVersion": res.api_version, "kind": format!("{}List", res.kind), "metadata": metadata, "items": page}),
    )
}

fn line(event: &str, object: &Value) -> Bytes {
    let mut s = json!({"type": event, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

fn watch_response(
    res: &'static Resource,
    filter: Filter,
    q: &HashMap<String, String>,
    shared: Arc<Shared>,
) -> Response<Body> {
    let bookmarks = matches!(
        q.get("allowWatchBookmarks").map(String::as_str),
        Some("true" | "1")
    );
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let from = q.get("resourceVersion").map(String::as_str).unwrap_or("");
    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    let mut initial: Vec<Bytes> = Vec::new();
    let (mut sub, mut last_rv, gone) = {
        let store = shared.lock();
        let sub = store.tx.subscribe();
        if from.is_empty() || from == "0" {
            for (_, o) in store.objects.iter().filter(|(k, _)| k.0 == res.kind) {
                if filter.matches(o) {
                    initial.push(line("ADDED", o));
                }
            }
            (sub, store.rv, None)
        } else {
            let rv: u64 = from.parse().unwrap_or(0);
            match store.changes_since(res.kind, rv) {
                Ok(changes) => {
                    for c in &changes {
                        if let Some((t, o)) = translate(c, &filter) {
                            initial.push(line(t, o));
                        }
                    }
                    (sub, store.rv, None)
                }
                Err(e) => (sub, rv, Some(e)),
            }
        }
    };
    if let Some(e) = gone {
        shared.stats.gone.fetch_add(1, Ordering::Relaxed);
        initial.push(line("ERROR", &e.status()));
    }
    let mut generation = shared.watch_generation.subscribe();
    let ended = initial
        .last()
        .is_some_and(|l| l.starts_with(b"{\"type\":\"ERROR\""));
    let interval = shared.bookmark_interval;
    tokio::spawn(async move {
        for l in initial {
            if tx.send(l).await.is_err() {
                return;
            }
        }
        if ended {
            return;
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tokio::select! {
                // Ending the stream wins over forwarding anything that raced with it.
                biased;
                _ = generation.changed() => return,
                _ = &mut deadline => return,
                _ = tick.tick(), if bookmarks => {
                    let bm = json!({"kind": res.kind, "apiVersion": res.api_version, "metadata": {"resourceVersion": last_rv.to_string()}});
                    if tx.send(line("BOOKMARK", &bm)).await.is_err() { return; }
                }
                change = sub.recv() => match change {
                    Ok(c) => {
                        if c.rv <= last_rv || c.kind != res.kind { continue; }
                        last_rv = c.rv;
                        if let Some((t, o)) = translate(&c, &filter)
                            && tx.send(line(t, o)).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let e = StoreError::Gone { requested: last_rv, oldest: last_rv + 1 };
                        let _ = tx.send(line("ERROR", &e.status())).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut r = Response::new(StreamBody::new(stream).boxed());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// How a change looks to a watcher with `filter`: objects entering the selection are ADDED,
/// leaving it DELETED.
fn translate<'c>(c: &'c store::Change, filter: &Filter) -> Option<(&'static str, &'c Value)> {
    let was = c.old.as_ref().is_some_and(|o| filter.matches(o));
    let is = filter.matches(&c.new);
    match c.event {
        EventType::Added => is.then_some(("ADDED", &c.new)),
        EventType::Deleted => was.then_some(("DELETED", &c.new)),
        EventType::Modified => match (was, is) {
            (false, true) => Some(("ADDED", &c.new)),
            (true, true) => Some(("MODIFIED", &c.new)),
            (true, false) => Some(("DELETED", &c.new)),
            (false, false) => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let (r, ns, name) = route("/api/v1/namespaces/default/services/web").unwrap();
        assert_eq!(
            (r.kind, ns.as_deref(), name.as_deref()),
            ("Service", Some("default"), Some("web"))
        );
        let (r, ns, name) = route("/apis/discovery.k8s.io/v1/endpointslices").unwrap();
        assert_eq!((r.kind, ns, name), ("EndpointSlice", None, None));
        let (r, _, name) = route("/api/v1/nodes/node1").unwrap();
        assert_eq!((r.kind, name.as_deref()), ("Node", Some("node1")));
        assert!(route("/apis/apps/v1/deployments").is_none());
        assert_eq!(
            percent_decode("%21service.kubernetes.io%2Fheadless"),
            "!service.kubernetes.io/headless"
        );
        assert_eq!(percent_decode("a+in+%28x%2Cy%29"), "a in (x,y)");
        let (r, ns, _) = route("/apis/events.k8s.io/v1/namespaces/default/events").unwrap();
        assert_eq!((r.kind, ns.as_deref()), ("Event", Some("default")));
    }

    #[test]
    fn merge_patches_as_rfc_7386_says() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(
            &mut target,
            &json!({"a": "z", "c": {"f": null, "h": 1}, "l": [3], "n": {"o": null}}),
        );
        assert_eq!(
            target,
            json!({"a": "z", "c": {"d": "e", "h": 1}, "l": [3], "n": {}})
        );
        let mut scalar = json!(1);
        merge_patch(&mut scalar, &json!({"a": 1}));
        assert_eq!(scalar, json!({"a": 1}));
    }
}
