//! The kube source against the API-server double: the real kube-rs client and watcher list,
//! watch, paginate, resume, and re-list after 410 Gone; the ENLS turns that into revisions.
//! (No privileges needed.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "end-to-end tests panic with clear messages"
)]

use std::{process::Command, sync::Arc, time::Duration};

use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tollgate::{
    enls::{
        Enls, EnlsConfig, Update,
        metrics::EnlsMetrics,
        runner::{self, EnlsStatus},
    },
    events::{Event, EventMetrics, Events, Regarding},
    source::{self, SourceOptions, SourceSpec},
};
use tollgate_tests::{
    apiserver::{ApiServerDouble, DoubleOptions},
    k8s,
    tools::tollgate_bin,
};

struct Pipeline {
    updates: mpsc::Receiver<Arc<Update>>,
    status: watch::Receiver<EnlsStatus>,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Self {
        let p =
            std::env::temp_dir().join(format!("tg-enls-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    h.finish()
}

async fn pipeline(double: &ApiServerDouble, node: &str) -> Pipeline {
    let dir = TempDir::new();
    let opts = options(node, double.write_kubeconfig(&dir.0));
    let (events_tx, events_rx) = mpsc::channel(8192);
    let (updates_tx, updates) = mpsc::channel(64);
    let (status_tx, status) = watch::channel(EnlsStatus::default());
    source::start(&SourceSpec::Kube, &opts, events_tx)
        .await
        .unwrap();
    let engine = Enls::new(EnlsConfig::new(node), EnlsMetrics::detached());
    tokio::spawn(runner::run(engine, events_rx, vec![updates_tx], status_tx));
    Pipeline {
        updates,
        status,
        _dir: dir,
    }
}

async fn next(p: &mut Pipeline) -> Arc<Update> {
    tokio::time::timeout(Duration::from_secs(20), p.updates.recv())
        .await
        .expect("an update within 20 s")
        .expect("the engine is running")
}

/// No update arrives within `quiet`.
async fn none(p: &mut Pipeline, quiet: Duration) {
    if let Ok(Some(u)) = tokio::time::timeout(quiet, p.updates.recv()).await {
        panic!(
            "unexpected update (revision {}): {:?}",
            u.revision,
            u.services
                .iter()
                .map(|c| c.key.to_string())
                .collect::<Vec<_>>()
        );
    }
}

fn names(u: &Update) -> Vec<String> {
    let mut v: Vec<String> = u.services.iter().map(|c| c.key.name.to_string()).collect();
    v.sort();
    v
}

fn seed(double: &ApiServerDouble) {
    double.apply_all([
        k8s::node("node1", "192.168.77.11", Some("z1")),
        k8s::node("node2", "192.168.77.12", Some("z2")),
        k8s::service("default", "web", "10.96.0.10", &[("http", 80)]),
        k8s::slice(
            "default",
            "web-1",
            "web",
            &[("http", 8080)],
            vec![
                k8s::endpoint("10.244.1.11", "node1"),
                k8s::endpoint("10.244.2.11", "node2"),
            ],
        ),
        k8s::service("default", "db", "10.96.0.11", &[("", 5432)]),
        k8s::with_label(
            k8s::service("default", "theirs", "10.96.0.12", &[("", 80)]),
            "service.kubernetes.io/service-proxy-name",
            "other",
        ),
        k8s::pod("default", "n1p1", "node1", "10.244.1.11", "web"),
        k8s::pod("default", "n2p1", "node2", "10.244.2.11", "web"),
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_watches_and_emits_only_real_changes() {
    let double = ApiServerDouble::start_local();
    seed(&double);
    let mut p = pipeline(&double, "node1").await;
    let first = next(&mut p).await;
    assert!(first.initial);
    assert_eq!(
        names(&first),
        ["db", "web"],
        "the service of another proxy is filtered by the API server"
    );
    assert_eq!(
        first.pods.len(),
        1,
        "only this node's pods (field selector)"
    );
    assert_eq!(first.node.as_ref().unwrap().zone.as_deref(), Some("z1"));

    // One endpoint added: one revision with exactly that service.
    double.apply(k8s::slice(
        "default",
        "web-1",
        "web",
        &[("http", 8080)],
        vec![
            k8s::endpoint("10.244.1.11", "node1"),
            k8s::endpoint("10.244.2.11", "node2"),
            k8s::endpoint("10.244.2.12", "node2"),
        ],
    ));
    let u = next(&mut p).await;
    assert_eq!(u.revision, first.revision + 1);
    assert_eq!(names(&u), ["web"]);
    let web = u.services[0].new.as_ref().unwrap();
    assert_eq!(web.ports[0].internal_endpoints.len(), 3);
    // The Service's UID travels with it (Events refer to it).
    let uid = double.get("Service", "default", "web").unwrap()["metadata"]["uid"].clone();
    assert_eq!(Some(&*web.uid), uid.as_str());

    // Irrelevant events: no revision.
    double.apply(k8s::with_annotation(
        k8s::service("default", "db", "10.96.0.11", &[("", 5432)]),
        "note",
        "x",
    ));
    double.apply(k8s::with_label(
        k8s::pod("default", "n1p1", "node1", "10.244.1.11", "web"),
        "ver",
        "2",
    ));
    double.apply(k8s::pod(
        "default",
        "other-node-pod",
        "node2",
        "10.244.2.99",
        "x",
    ));
    none(&mut p, Duration::from_millis(700)).await;

    double.delete("Service", "default", "db");
    let u = next(&mut p).await;
    assert_eq!(names(&u), ["db"]);
    assert!(u.services[0].new.is_none());
    assert!(p.status.borrow().synced);
}

fn cidrs(u: &Update) -> Option<Vec<String>> {
    u.service_cidrs
        .as_ref()
        .map(|c| c.iter().map(ToString::to_string).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_cidrs_are_watched_and_an_api_server_without_them_holds_nothing_up() {
    let double = ApiServerDouble::start_local();
    seed(&double);
    double.apply(k8s::service_cidr("kubernetes", &["10.96.0.0/16"]));
    let mut p = pipeline(&double, "node1").await;
    let first = next(&mut p).await;
    assert_eq!(cidrs(&first), Some(vec!["10.96.0.0/16".to_owned()]));
    double.apply(k8s::service_cidr(
        "kubernetes",
        &["10.96.0.0/16", "fd00:96::/112"],
    ));
    let u = next(&mut p).await;
    assert_eq!(
        cidrs(&u),
        Some(vec!["10.96.0.0/16".to_owned(), "fd00:96::/112".to_owned()])
    );
    assert!(u.services.is_empty());

    // An API server before Kubernetes 1.33 has no ServiceCIDRs (404): the state is complete
    // without them, with none.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let old = ApiServerDouble::start(
        listener,
        DoubleOptions {
            unserved: vec!["ServiceCIDR"],
            ..Default::default()
        },
    );
    seed(&old);
    let mut p = pipeline(&old, "node1").await;
    let first = next(&mut p).await;
    assert!(first.initial);
    assert_eq!(names(&first), ["db", "web"]);
    assert_eq!(cidrs(&first), Some(vec![]));
}

fn options(node: &str, kubeconfig: std::path::PathBuf) -> SourceOptions {
    SourceOptions {
        node_name: node.into(),
        service_proxy_name: None,
        kubeconfig: Some(kubeconfig),
        file_poll: Duration::from_secs(1),
    }
}

/// `tollgate_kubernetes_events_total{result}` (0 before the first).
fn metric(reg: &prometheus_client::registry::Registry, result: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, reg).unwrap();
    let name = format!("tollgate_kubernetes_events_total{{result=\"{result}\"}}");
    tollgate_tests::agent::metric_opt(&text, &name).unwrap_or(0.0)
}

/// Waits until the double holds `n` Events, the last `published` of them counted.
async fn events_in(
    double: &ApiServerDouble,
    reg: &prometheus_client::registry::Registry,
    n: usize,
    published: f64,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let events = double.list("Event");
        if events.len() == n && metric(reg, "published") == published {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} Events ({published} published) within 20 s; have {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_the_api_server_and_repeats_become_a_series() {
    let double = ApiServerDouble::start_local();
    seed(&double);
    let dir = TempDir::new();
    let client = source::kube::client(&options("node1", double.write_kubeconfig(&dir.0)))
        .await
        .unwrap();
    let mut reg = prometheus_client::registry::Registry::default();
    let events = Events::start(client, "node1", EventMetrics::register(&mut reg));
    let uid = double.get("Service", "default", "web").unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    events.record(Regarding::node("node1"), start_event());
    let warning = Event {
        warning: true,
        reason: "FailedToStartServiceHealthcheck",
        action: "Listen",
        note: format!("node node1 failed: {}", "x".repeat(2000)),
    };
    events.record(Regarding::service("default", "web", &uid), warning.clone());
    let stored = events_in(&double, &reg, 2, 2.0).await;
    let by_reason = |stored: &[Value], reason: &str| {
        stored
            .iter()
            .find(|e| e["reason"] == reason)
            .unwrap_or_else(|| panic!("no {reason} Event in {stored:#?}"))
            .clone()
    };
    let start = by_reason(&stored, "Starting");
    assert_eq!(start["type"], "Normal");
    assert_eq!(start["metadata"]["namespace"], "default");
    assert_eq!(
        (
            &start["regarding"]["kind"],
            &start["regarding"]["name"],
            &start["regarding"]["uid"]
        ),
        (&"Node".into(), &"node1".into(), &"node1".into())
    );
    assert_eq!(start["reportingController"], "tollgate");
    assert_eq!(start["reportingInstance"], "node1");
    let w = by_reason(&stored, "FailedToStartServiceHealthcheck");
    assert_eq!(w["type"], "Warning");
    assert_eq!(w["action"], "Listen");
    assert_eq!(w["regarding"]["uid"], uid.as_str());
    assert_eq!(w["regarding"]["namespace"], "default");
    assert_eq!(w["note"].as_str().unwrap().len(), 1024, "cut to 1 kB");
    assert!(w.get("series").is_none_or(Value::is_null), "{w:#?}");

    // The same again: the Event's series counts it (a PATCH), no second object.
    events.record(Regarding::service("default", "web", &uid), warning);
    let stored = events_in(&double, &reg, 2, 3.0).await;
    let w = by_reason(&stored, "FailedToStartServiceHealthcheck");
    assert_eq!(w["series"]["count"], 2, "{w:#?}");
    assert_eq!(metric(&reg, "failed"), 0.0);

    // An API server that is not there: counted as failed, nothing else happens.
    drop(double);
    let client = source::kube::client(&options("node1", dir.0.join("kubeconfig")))
        .await
        .unwrap();
    let mut reg = prometheus_client::registry::Registry::default();
    let events = Events::start(client, "node1", EventMetrics::register(&mut reg));
    events.record(Regarding::node("node1"), start_event());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while metric(&reg, "failed") < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a failure within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&reg, "published"), 0.0);
}

fn start_event() -> Event {
    Event {
        warning: false,
        reason: "Starting",
        action: "StartTollgate",
        note: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_restarts_resume_without_spurious_changes_and_410_relists() {
    let double = ApiServerDouble::start_local();
    seed(&double);
    let mut p = pipeline(&double, "node1").await;
    let first = next(&mut p).await;
    let lists_before = double
        .stats()
        .lists
        .load(std::sync::atomic::Ordering::Relaxed);

    // Connection drop: the watcher resumes from its last version; nothing is re-emitted.
    double.drop_watches();
    none(&mut p, Duration::from_millis(800)).await;
    double.apply(k8s::service(
        "default",
        "cache",
        "10.96.0.13",
        &[("", 6379)],
    ));
    let u = next(&mut p).await;
    assert_eq!(
        names(&u),
        ["cache"],
        "changes after a reconnect still arrive"
    );

    // History compacted while disconnected, and a service deleted meanwhile: the resume gets
    // 410 Gone, the watcher re-lists, and the ENLS emits exactly that deletion.
    assert!(double.delete_while_disconnected("Service", "default", "web"));
    let u = next(&mut p).await;
    assert_eq!(names(&u), ["web"]);
    assert!(u.services[0].new.is_none());
    none(&mut p, Duration::from_millis(800)).await;
    let stats = double.stats();
    assert!(
        stats.gone.load(std::sync::atomic::Ordering::Relaxed) >= 1,
        "a 410 was served"
    );
    assert!(
        stats.lists.load(std::sync::atomic::Ordering::Relaxed) > lists_before,
        "the client re-listed"
    );
    assert_eq!(p.status.borrow().revision, first.revision + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paginated_initial_list_of_many_services() {
    let double = ApiServerDouble::start_local();
    let mut objs = vec![k8s::node("node1", "192.168.77.11", None)];
    for i in 0..1234u32 {
        let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
        objs.push(k8s::service("bulk", &format!("s{i}"), &ip, &[("", 80)]));
        objs.push(k8s::slice(
            "bulk",
            &format!("s{i}-1"),
            &format!("s{i}"),
            &[("", 8080)],
            vec![k8s::endpoint(
                &format!("10.244.{}.{}", i / 250, i % 250 + 1),
                "node2",
            )],
        ));
    }
    double.apply_all(objs);
    let mut p = pipeline(&double, "node1").await;
    let first = next(&mut p).await;
    assert_eq!(first.services.len(), 1234);
    assert!(
        first
            .services
            .iter()
            .all(|c| c.new.as_ref().unwrap().ports[0].internal_endpoints.len() == 1)
    );
    assert!(
        double
            .stats()
            .lists
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 6,
        "3 pages each for services and slices"
    );
}

#[test]
fn enls_command_prints_the_documented_json_from_kube() {
    let double = ApiServerDouble::start_local();
    seed(&double);
    let dir = TempDir::new();
    let kubeconfig = double.write_kubeconfig(&dir.0);
    let out = Command::new(tollgate_bin())
        .args([
            "enls",
            "--source",
            "kube",
            "--node",
            "node1",
            "--kubeconfig",
        ])
        .arg(&kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["node"], "node1");
    assert!(v["revision"].as_u64().unwrap() >= 1);
    let web = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "web")
        .unwrap();
    let port = &web["ports"][0];
    assert_eq!(port["name"], "http");
    assert_eq!(port["protocol"], "TCP");
    assert_eq!(port["port"], 80);
    assert_eq!(
        port["internal_endpoints"],
        serde_json::json!(["10.244.1.11:8080", "10.244.2.11:8080"])
    );
    assert_eq!(port["external_endpoints"], Value::Null);
    assert_eq!(port["has_endpoints"], true);
}
