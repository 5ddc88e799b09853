//! A metadata-server double: GCE (`/computeMetadata/v1/…`, `/0.1/meta-data/…`) and AWS IMDS
//! (`/latest/…`, IMDSv2 tokens) answers with recognisable secrets, the real servers' own checks
//! (GCE refuses X-Forwarded-For and wants `Metadata-Flavor: Google` under v1; IMDS refuses
//! X-Forwarded-For and, when asked to, requires a session token), and a JSON line per request
//! on stdout so tests can see exactly what reached "the cloud".

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

/// The kube-env attribute: concealed, must never reach a pod.
pub const KUBE_ENV: &str =
    "KUBELET_CERT: c2VjcmV0LWt1YmVsZXQtY2VydA==\nKUBE_PROXY_TOKEN: secret-kube-proxy-token\n";
/// The VM identity token: concealed.
pub const IDENTITY: &str = "eyJhbGciOiJSUzI1NiJ9.vm-identity.signature";
/// The node service account's access token.
pub const NODE_TOKEN: &str = "ya29.node-service-account-token";
pub const PROJECT_ID: &str = "tollgate-test-project";
pub const USER_DATA: &str = "#!/bin/sh\nexport NODE_BOOTSTRAP_SECRET=s3cr3t\n";
pub const AWS_ROLE: &str = "node-instance-role";
pub const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/node-role-secret";

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Log nothing per request (benchmarks).
    pub quiet: bool,
    /// IMDS reads need a session token.
    pub aws_require_token: bool,
    /// Keep the request lines here instead of printing them (in-process doubles).
    pub record: Option<Arc<std::sync::Mutex<Vec<serde_json::Value>>>>,
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn gce(req: &Request<Incoming>, path: &str, query: &str) -> Response<Full<Bytes>> {
    let flavor = req
        .headers()
        .get("metadata-flavor")
        .is_some_and(|v| v == "Google");
    if path.starts_with("/computeMetadata/v1") && !flavor {
        return reply(
            StatusCode::FORBIDDEN,
            "text/html",
            "Missing Metadata-Flavor:Google header.\n",
        );
    }
    let recursive = query
        .split('&')
        .any(|p| p == "recursive=true" || p == "recursive");
    let text = |s: &str| reply(StatusCode::OK, "application/text", s.to_owned());
    match (path, recursive) {
        ("/", _) => text("0.1/\ncomputeMetadata/\n"),
        ("/0.1/meta-data/", _) => text("attributes/\nproject-id\nservice-accounts/\n"),
        ("/computeMetadata/v1/", false) => text("instance/\nproject/\n"),
        ("/computeMetadata/v1/instance/", false) => {
            text("attributes/\nhostname\nid\nservice-accounts/\nzone\n")
        }
        ("/computeMetadata/v1/instance/", true) | ("/computeMetadata/v1/", true) => reply(
            StatusCode::OK,
            "application/json",
            json!({"attributes": {"kube-env": KUBE_ENV}, "hostname": "node1",
                   "serviceAccounts": {"default": {"token": NODE_TOKEN}}})
            .to_string(),
        ),
        ("/computeMetadata/v1/project/project-id", _) => text(PROJECT_ID),
        ("/computeMetadata/v1/instance/hostname", _) => text("node1.c.tollgate-test.internal"),
        ("/computeMetadata/v1/instance/attributes/kube-env", _)
        | ("/0.1/meta-data/attributes/kube-env", _) => text(KUBE_ENV),
        ("/computeMetadata/v1/instance/service-accounts/default/identity", _) => text(IDENTITY),
        ("/computeMetadata/v1/instance/service-accounts/default/token", _) => reply(
            StatusCode::OK,
            "application/json",
            json!({"access_token": NODE_TOKEN, "expires_in": 3599, "token_type": "Bearer"})
                .to_string(),
        ),
        ("/computeMetadata/v1/instance/service-accounts/default/", true) => reply(
            StatusCode::OK,
            "application/json",
            json!({"aliases": ["default"], "email": "node@tollgate-test.iam.gserviceaccount.com",
                   "scopes": ["https://www.googleapis.com/auth/cloud-platform"]})
            .to_string(),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/html", "Not Found\n"),
    }
}

fn aws(req: &Request<Incoming>, path: &str, opts: &Options) -> Response<Full<Bytes>> {
    let text = |s: &str| reply(StatusCode::OK, "text/plain", s.to_owned());
    if path.ends_with("/api/token") {
        if req.method() != hyper::Method::PUT {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "");
        }
        let Some(ttl) = req
            .headers()
            .get("x-aws-ec2-metadata-token-ttl-seconds")
            .and_then(|v| v.to_str().ok())
        else {
            return reply(StatusCode::BAD_REQUEST, "text/plain", "");
        };
        return text(&format!("AQAEAtoken-ttl-{ttl}"));
    }
    let token = req
        .headers()
        .get("x-aws-ec2-metadata-token")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("AQAEAtoken"));
    if opts.aws_require_token && !token {
        return reply(StatusCode::UNAUTHORIZED, "text/plain", "");
    }
    match path {
        "/latest/meta-data/" => text("ami-id\ninstance-id\niam/\n"),
        "/latest/meta-data/instance-id" => text("i-0123456789abcdef0"),
        "/latest/meta-data/iam/security-credentials/" => text(AWS_ROLE),
        p if p == format!("/latest/meta-data/iam/security-credentials/{AWS_ROLE}") => reply(
            StatusCode::OK,
            "application/json",
            json!({"Code": "Success", "AccessKeyId": "ASIANODEROLE", "SecretAccessKey": AWS_SECRET,
                   "Token": "node-session-token", "Type": "AWS-HMAC"})
            .to_string(),
        ),
        "/latest/user-data" => text(USER_DATA),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", ""),
    }
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    opts: Arc<Options>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let xff =
        req.headers().contains_key("x-forwarded-for") || req.headers().contains_key("forwarded");
    if !opts.quiet {
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), json!(String::from_utf8_lossy(v.as_bytes()))))
            .collect();
        let line = json!({"method": req.method().as_str(), "path": path, "query": query,
                          "peer": peer.ip().to_string(), "xff": xff, "headers": headers});
        match &opts.record {
            Some(r) => r.lock().unwrap_or_else(|e| e.into_inner()).push(line),
            None => println!("{line}"),
        }
    }
    if xff {
        // Both clouds refuse forwarded requests.
        return Ok(reply(
            StatusCode::FORBIDDEN,
            "text/plain",
            "X-Forwarded-For not allowed\n",
        ));
    }
    if query.contains("wait_for_change=true") {
        // A slow answer, for timeout tests.
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    Ok(
        if path.starts_with("/latest") || path.starts_with("/2009-04-04") {
            aws(&req, &path, &opts)
        } else {
            gce(&req, &path, &query)
        },
    )
}

/// Serves on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, opts: Options) {
    let opts = Arc::new(opts);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let opts = opts.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, peer, opts.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The requests a double logged (its stdout), parsed.
pub fn logged(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
