//! The metadata proxy over real sockets (loopback, no privileges): conformance with
//! k8s-metadata-proxy's rules and the kubernetes e2e concealment checker, and bad input —
//! HTTP/1 framing attacks, pipelining, oversized headers, slowloris clients, an upstream that is
//! down or slow, a thousand concurrent connections.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "end-to-end tests panic with clear messages"
)]

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tollgate::metadata::{
    identity::PodIndex,
    metrics::ProxyMetrics,
    policy::PolicyStore,
    proxy::{self, Limits, Proxy, ProxyConfig},
    rules::Flavor,
};
use tollgate_tests::metadata_double::{self, KUBE_ENV, NODE_TOKEN, PROJECT_ID};

type Log = Arc<Mutex<Vec<serde_json::Value>>>;

struct Bed {
    rt: tokio::runtime::Runtime,
    proxy: SocketAddr,
    log: Log,
    metrics: ProxyMetrics,
}

fn bed_with(
    flavor: Flavor,
    upstream: Option<&str>,
    limits: Limits,
    identity: Option<Arc<PodIndex>>,
) -> Bed {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let log: Log = Arc::default();
    let (proxy, metrics) = rt.block_on(async {
        let double = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let double_addr = double.local_addr().unwrap();
        tokio::spawn(metadata_double::serve(
            double,
            metadata_double::Options {
                record: Some(log.clone()),
                ..Default::default()
            },
        ));
        let metrics = ProxyMetrics::detached();
        let upstream = upstream
            .map(String::from)
            .unwrap_or_else(|| format!("http://{double_addr}"));
        let p = Proxy::new(
            ProxyConfig {
                flavor,
                upstream: upstream.parse().unwrap(),
                upstream_timeout: Duration::from_secs(1),
                aws_require_token: false,
                identity,
                policy: PolicyStore::default(),
                limits,
            },
            metrics.clone(),
        )
        .unwrap();
        let l = proxy::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(proxy::serve(l, p));
        (addr, metrics)
    });
    Bed {
        rt,
        proxy,
        log,
        metrics,
    }
}

fn bed() -> Bed {
    bed_with(Flavor::Gce, None, Limits::default(), None)
}

/// Sends raw bytes, reads until the server closes (or `wait` passes): everything received.
fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One request on its own connection (`Connection: close`): status and body.
fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req =
        format!("GET {target} HTTP/1.1\r\nHost: metadata.google.internal\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let text = raw(addr, req.as_bytes(), Duration::from_secs(5));
    parse_response(&text)
}

fn parse_response(text: &str) -> (u16, String) {
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

const G: &[(&str, &str)] = &[("Metadata-Flavor", "Google")];

fn upstream_saw(log: &Log, needle: &str) -> bool {
    log.lock().unwrap().iter().any(|l| {
        l["path"].as_str().is_some_and(|p| p.contains(needle))
            || l["query"].as_str().is_some_and(|q| q.contains(needle))
    })
}

#[test]
fn the_kubernetes_concealment_checker_passes_through_the_proxy() {
    let b = bed();
    // successEndpoints (the e2e checker) that Tollgate allows.
    for url in [
        "http://169.254.169.254",
        "http://metadata.google.internal/",
        "/",
        "/0.1/meta-data/",
        "/computeMetadata/v1/",
        "/computeMetadata/v1/project/project-id",
        "/computeMetadata/v1/instance/service-accounts/default/token",
        "/computeMetadata/v1/instance/service-accounts/default/?recursive=true",
        "/computeMetadata//v1/./instance/../project/project-id",
    ] {
        let (code, body) = get(b.proxy, url, G);
        assert_eq!(code, 200, "{url}: {body}");
    }
    let (_, body) = get(
        b.proxy,
        "/computeMetadata//v1/./instance/../project/project-id",
        G,
    );
    assert_eq!(
        body, PROJECT_ID,
        "the normalised path is what was forwarded"
    );
    // failureEndpoints, and the encodings that must not produce a recursive dump.
    for url in [
        "/0.2/",
        "/computeMetadata/v2/",
        "/computeMetadata/0.1/attributes/kube-env",
        "/computeMetadata/v1beta1/instance/attributes/kube-env",
        "/computeMetadata/v1/instance/attributes/kube-env",
        "/computeMetadata/v1/instance/service-accounts/default/identity",
        "/computeMetadata/v1/instance/?recursive=true",
        "/computeMetadata/v1/instance/?something=other&recursive=true",
        "/computeMetadata/v1/instance/?recursive%3Dtrue",
        "/computeMetadata/v1/instance/?re%08ecursive=true",
        "/computeMetadata/v1/instance/attributes/KUBE-ENV",
        "/computeMetadata/v1/instance/attributes/kube-env/",
        "/computeMetadata/v1/instance/attributes/%6bube-env",
        "/computeMetadata/v1/instance/attributes/x/../kube-env",
        "http://metadata.google.internal/computeMetadata/v1/instance/attributes/kube-env",
    ] {
        let (code, body) = get(b.proxy, url, G);
        assert_eq!(code, 403, "{url}: {body}");
        assert!(!body.contains("KUBELET_CERT"), "{url} leaked kube-env");
    }
    // The checker's X-Forwarded-For pass: every success endpoint fails.
    for url in [
        "/",
        "/computeMetadata/v1/",
        "/computeMetadata/v1/project/project-id",
    ] {
        let (code, body) = get(
            b.proxy,
            url,
            &[
                ("Metadata-Flavor", "Google"),
                ("X-Forwarded-For", "Somebody-somewhere"),
            ],
        );
        assert_eq!(
            (code, body.trim()),
            (403, tollgate::metadata::rules::XFF),
            "{url}"
        );
    }
    assert!(!upstream_saw(&b.log, "kube-env"));
    assert!(!upstream_saw(&b.log, "identity"));
    let log = b.log.lock().unwrap();
    assert!(!log.is_empty());
    assert!(
        log.iter().all(|l| l["xff"] == false),
        "no client-address header ever reached the upstream"
    );
    assert!(log.iter().all(|l| l["query"] != "recursive=true"
        || l["path"].as_str().unwrap().contains("service-accounts")));
    drop(log);
    let blocked = b
        .metrics
        .request_count
        .get_or_create(&[("filter_result", "filter_result_blocked"), ("code", "403")])
        .get();
    assert_eq!(blocked, 18, "request_count{{filter_result_blocked,403}}");
    let _ = b.rt;
}

#[test]
fn framing_tricks_and_pipelining_never_carry_a_concealed_request_upstream() {
    let b = bed();
    let smuggle = "GET /computeMetadata/v1/instance/attributes/kube-env HTTP/1.1\r\nHost: x\r\nMetadata-Flavor: Google\r\n\r\n";
    // Content-Length and Transfer-Encoding together: read as chunked, and the connection closes
    // after it, so what follows the chunked body is never parsed as a request.
    let cl_te = format!(
        "POST /computeMetadata/v1/project/project-id HTTP/1.1\r\nHost: x\r\nMetadata-Flavor: Google\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggle}"
    );
    let out = raw(b.proxy, cl_te.as_bytes(), Duration::from_secs(3));
    assert!(!out.contains("KUBELET_CERT"), "{out}");
    assert_eq!(
        out.matches("HTTP/1.1 ").count(),
        1,
        "one answer, then the connection closed: {out}"
    );
    // A body whose Content-Length hides a request: the hidden bytes are body, not a request.
    let body = smuggle;
    let hidden = format!(
        "POST /computeMetadata/v1/project/project-id HTTP/1.1\r\nHost: x\r\nMetadata-Flavor: Google\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let out = raw(b.proxy, hidden.as_bytes(), Duration::from_secs(3));
    assert!(!out.contains("KUBELET_CERT"), "{out}");
    // Conflicting Content-Lengths: refused.
    let out = raw(
        b.proxy,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
        Duration::from_secs(3),
    );
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // Transfer-Encoding that is not chunked: refused.
    let out = raw(
        b.proxy,
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        Duration::from_secs(3),
    );
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // Pipelined requests: each is checked on its own.
    let pipelined = format!(
        "GET /computeMetadata/v1/project/project-id HTTP/1.1\r\nHost: x\r\nMetadata-Flavor: Google\r\n\r\n{smuggle}GET /computeMetadata/v1/project/project-id HTTP/1.1\r\nHost: x\r\nMetadata-Flavor: Google\r\nConnection: close\r\n\r\n"
    );
    let out = raw(b.proxy, pipelined.as_bytes(), Duration::from_secs(3));
    let codes: Vec<&str> = out
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &out[i + 9..i + 12])
        .collect();
    assert_eq!(codes, ["200", "403", "200"], "{out}");
    assert!(!out.contains("KUBELET_CERT"));
    assert!(
        !upstream_saw(&b.log, "kube-env"),
        "the upstream never saw kube-env"
    );
}

#[test]
fn bad_clients_affect_only_themselves() {
    let b = bed_with(
        Flavor::Gce,
        None,
        Limits {
            header_timeout: Duration::from_secs(1),
            ..Limits::default()
        },
        None,
    );
    // Oversized headers: 431 for that request.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let out = raw(b.proxy, big.as_bytes(), Duration::from_secs(3));
    assert!(
        out.starts_with("HTTP/1.1 431"),
        "{}",
        &out[..out.len().min(200)]
    );
    // Malformed request line.
    let out = raw(b.proxy, b"GARBAGE\r\n\r\n", Duration::from_secs(3));
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // Slowloris: half a request head, then silence. Others are served meanwhile, and the slow
    // client is cut off after the header timeout.
    let mut slow: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = TcpStream::connect(b.proxy).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    let start = Instant::now();
    let (code, _) = get(b.proxy, "/computeMetadata/v1/project/project-id", G);
    assert_eq!(code, 200);
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "served at once beside slow clients"
    );
    std::thread::sleep(Duration::from_millis(1500));
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(
            n == 0 || text.starts_with("HTTP/1.1 408"),
            "slow client got {text:?}"
        );
    }
}

/// A blocking connection to `to` from the local address `from` (any 127/8 address is local).
fn connect_from(b: &Bed, from: &str, to: SocketAddr) -> TcpStream {
    let s = b.rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(format!("{from}:0").parse().unwrap()).unwrap();
        s.connect(to).await.unwrap()
    });
    let s = s.into_std().unwrap();
    s.set_nonblocking(false).unwrap();
    s
}

#[test]
fn one_client_waits_for_its_own_connections_and_never_takes_the_others_turn() {
    let b = bed_with(
        Flavor::Gce,
        None,
        Limits {
            connections_per_client: 4,
            ..Limits::default()
        },
        None,
    );
    // Client 127.0.0.2 fills its four turns with half-sent requests.
    let mut slow: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = connect_from(&b, "127.0.0.2", b.proxy);
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    // (Accepted connections start in any order: let these four take their turns first.)
    tollgate_tests::wait_for(
        "the four slow connections to be served",
        Duration::from_secs(5),
        || (b.metrics.connections.get() == 4).then_some(()),
    );
    // Its fifth connection, a complete request, is accepted but waits: no answer, no reset.
    let mut fifth = connect_from(&b, "127.0.0.2", b.proxy);
    fifth
        .write_all(
            b"GET /computeMetadata/v1/project/project-id HTTP/1.1\r\nHost: x\r\n\
              Metadata-Flavor: Google\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    fifth
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 1024];
    assert!(
        matches!(fifth.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the fifth connection waits for its client's turn"
    );
    assert_eq!(b.metrics.connections_waiting.get(), 1);
    // Another client is served at once.
    let start = Instant::now();
    let (code, body) = get(b.proxy, "/computeMetadata/v1/project/project-id", G);
    assert_eq!((code, body.as_str()), (200, PROJECT_ID));
    assert!(start.elapsed() < Duration::from_millis(500));
    // One of its own finishing gives the fifth its turn.
    drop(slow.remove(0));
    fifth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut out = Vec::new();
    fifth.read_to_end(&mut out).unwrap();
    let (code, body) = parse_response(&String::from_utf8_lossy(&out));
    assert_eq!((code, body.as_str()), (200, PROJECT_ID));
    assert_eq!(b.metrics.connections_waiting.get(), 0);
}

#[test]
fn an_upstream_that_is_down_or_slow_gets_a_clear_5xx() {
    let down = bed_with(
        Flavor::Gce,
        Some("http://127.0.0.1:1"),
        Limits::default(),
        None,
    );
    let start = Instant::now();
    let (code, body) = get(down.proxy, "/computeMetadata/v1/project/project-id", G);
    assert_eq!(
        (code, body.trim()),
        (502, "The metadata server is unavailable")
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    // The double answers wait_for_change after 5 s; the proxy gives it 1 s.
    let b = bed();
    let start = Instant::now();
    let (code, body) = get(
        b.proxy,
        "/computeMetadata/v1/project/project-id?wait_for_change=true",
        G,
    );
    assert_eq!(
        (code, body.trim()),
        (504, "The metadata server did not answer in time")
    );
    assert!(start.elapsed() < Duration::from_secs(3));
    // Meanwhile and afterwards, others are served.
    assert_eq!(
        get(b.proxy, "/computeMetadata/v1/project/project-id", G).0,
        200
    );
}

#[test]
fn a_thousand_concurrent_connections_are_all_served() {
    let b = bed();
    let conns: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(b.proxy).expect("connect"))
        .collect();
    // Every connection sends its request only once all are open.
    let handles: Vec<_> = conns
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                s.write_all(b"GET /computeMetadata/v1/instance/service-accounts/default/token HTTP/1.1\r\nHost: x\r\nMetadata-Flavor: Google\r\nConnection: close\r\n\r\n")?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok::<_, std::io::Error>(out)
            })
        })
        .collect();
    let mut ok = 0;
    let mut errors = Vec::new();
    for h in handles {
        match h.join().unwrap() {
            Ok(out) if out.starts_with("HTTP/1.1 200") && out.contains(NODE_TOKEN) => ok += 1,
            Ok(out) => errors.push(out.chars().take(80).collect::<String>()),
            Err(e) => errors.push(e.to_string()),
        }
    }
    assert_eq!(ok, 1000, "errors: {:?}", &errors[..errors.len().min(5)]);
}

#[test]
fn identity_is_required_when_enforced() {
    let index = PodIndex::new();
    let b = bed_with(Flavor::Gce, None, Limits::default(), Some(index.clone()));
    let (code, body) = get(b.proxy, "/computeMetadata/v1/project/project-id", G);
    assert_eq!(code, 503, "not synced yet: {body}");
    index.apply(&[], true);
    let (code, body) = get(b.proxy, "/computeMetadata/v1/project/project-id", G);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("not from a pod on this node"), "{body}");
    assert!(!body.contains(KUBE_ENV));
}
