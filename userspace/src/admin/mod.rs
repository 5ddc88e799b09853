//! The admin HTTP server: `/metrics` (Prometheus text format), `/livez`, `/healthz`, `/readyz`.

pub mod health;
pub mod service_health;

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

pub use health::Health;

pub struct AdminState {
    pub registry: Registry,
    /// kube-proxy's `/healthz` and `/livez` (the agent); `None`: both answer 200 while the
    /// process serves (the standalone metadata proxy).
    pub health: Option<Health>,
    /// `/readyz`: 200 when the check passes, 503 with its reason otherwise.
    pub ready: Option<Arc<dyn ReadyCheck>>,
}

/// A readiness check for `/readyz`.
pub trait ReadyCheck: Send + Sync {
    /// `Ok(detail)` when ready, `Err(reason)` otherwise.
    fn check(&self) -> futures::future::BoxFuture<'_, Result<String, String>>;
}

fn response(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    r
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<AdminState>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match req.uri().path() {
        "/metrics" => {
            // Collectors read BPF maps (a system call per entry): off the async workers.
            let registry = state.clone();
            let encoded = tokio::task::spawn_blocking(move || {
                let mut text = String::new();
                prometheus_client::encoding::text::encode(&mut text, &registry.registry)
                    .map(|()| text)
                    .map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            match encoded {
                Ok(text) => response(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    text,
                ),
                Err(e) => response(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", e),
            }
        }
        "/readyz" => match &state.ready {
            Some(check) => match check.check().await {
                Ok(detail) => response(StatusCode::OK, "text/plain", format!("ok: {detail}\n")),
                Err(reason) => response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: {reason}\n"),
                ),
            },
            None => match &state.health {
                Some(h) if !h.healthz().0 => {
                    response(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
                }
                _ => response(StatusCode::OK, "text/plain", "ok\n"),
            },
        },
        "/healthz" | "/livez" if state.health.is_none() => {
            response(StatusCode::OK, "text/plain", "ok\n")
        }
        "/healthz" if let Some(health) = &state.health => {
            let (ok, body) = health.healthz();
            let code = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            response(code, "application/json", body)
        }
        "/livez" if let Some(health) = &state.health => {
            let (ok, body) = health.livez();
            let code = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            response(code, "application/json", body)
        }
        _ => response(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz, /livez, /readyz\n",
        ),
    })
}

/// Binds `addr`, returning the bound address (port 0 picks one) and the serving task.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<AdminState>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(req, state.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok((bound, task))
}
