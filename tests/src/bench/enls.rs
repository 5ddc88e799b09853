//! ENLS benchmark: 10k Services × 10 endpoints.
//!
//! - engine (in process): initial build time, and one endpoint change → emitted diff latency;
//! - agent process (`tollgate enls --source kube`, fed by the API-server double over HTTP):
//!   time to the first complete state, end-to-end change latency, peak RSS, and how many
//!   revisions a churn of mostly irrelevant API events becomes (kpng's events/revisions ratio).

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tollgate::enls::{Enls, EnlsConfig, Object, SourceEvent, ingest::Kind, metrics::EnlsMetrics};

use super::{Summary, micros, plot, rss_of, summarize};
use crate::{apiserver::ApiServerDouble, k8s, tools::tollgate_bin};

#[derive(Debug, Clone)]
pub struct Options {
    pub services: usize,
    pub endpoints: usize,
    pub changes: usize,
    pub churn_events: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            services: 10_000,
            endpoints: 10,
            changes: 10_000,
            churn_events: 20_000,
        }
    }
}

const NODES: [&str; 3] = ["node1", "node2", "node3"];

pub(crate) fn svc_ip(i: usize) -> String {
    format!("10.96.{}.{}", i / 250, i % 250 + 1)
}

pub(crate) fn ep_ip(i: usize, j: usize) -> String {
    let n = i * 16 + j;
    format!("10.{}.{}.{}", 128 + n / 65_536, (n / 256) % 256, n % 256)
}

fn slice_json(i: usize, ips: &[String]) -> Value {
    let eps = ips
        .iter()
        .enumerate()
        .map(|(j, ip)| k8s::endpoint(ip, NODES[j % NODES.len()]))
        .collect();
    k8s::slice(
        "bench",
        &format!("s{i}-1"),
        &format!("s{i}"),
        &[("http", 8080)],
        eps,
    )
}

fn objects(opts: &Options) -> Vec<Value> {
    let mut v = Vec::with_capacity(opts.services * 2 + 1);
    v.push(k8s::node("node1", "192.168.77.11", Some("zone-a")));
    for i in 0..opts.services {
        v.push(k8s::service(
            "bench",
            &format!("s{i}"),
            &svc_ip(i),
            &[("http", 80)],
        ));
        let ips: Vec<String> = (0..opts.endpoints).map(|j| ep_ip(i, j)).collect();
        v.push(slice_json(i, &ips));
    }
    v
}

pub(crate) fn to_object(v: Value) -> anyhow::Result<Object> {
    Ok(match v["kind"].as_str() {
        Some("Service") => Object::Service(Box::new(serde_json::from_value(v)?)),
        Some("EndpointSlice") => Object::EndpointSlice(Box::new(serde_json::from_value(v)?)),
        Some("Node") => Object::Node(Box::new(serde_json::from_value(v)?)),
        Some("Pod") => Object::Pod(Box::new(serde_json::from_value(v)?)),
        Some("ServiceCIDR") => Object::ServiceCidr(Box::new(serde_json::from_value(v)?)),
        other => bail!("unexpected kind {other:?}"),
    })
}

/// Deterministic pseudo-random sequence (xorshift), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub machine: String,
    pub services: usize,
    pub endpoints_per_service: usize,
    /// Engine: initial build of the whole state, milliseconds (one per repetition).
    pub initial_build_ms: Vec<f64>,
    /// Engine: one endpoint change → emitted diff, microseconds.
    pub change_us: Summary,
    /// Agent process: start → first complete state (list over HTTP included), milliseconds.
    pub agent_first_state_ms: f64,
    /// Agent process: API write → revision printed, milliseconds.
    pub agent_change_ms: Summary,
    pub agent_peak_rss_mib: f64,
    pub agent_rss_after_churn_mib: f64,
    pub churn: Churn,
}

#[derive(Debug, serde::Serialize)]
pub struct Churn {
    pub api_events: u64,
    pub revisions: u64,
    pub relevant_writes: usize,
    pub irrelevant_writes: usize,
}

fn engine_benchmarks(opts: &Options, report: &mut Report) -> anyhow::Result<()> {
    eprintln!(
        "enls: generating {} services × {} endpoints",
        opts.services, opts.endpoints
    );
    let values = objects(opts);
    let mut builds = Vec::new();
    let mut engine = None;
    for rep in 0..5 {
        let objs: Vec<Object> = values
            .iter()
            .cloned()
            .map(to_object)
            .collect::<anyhow::Result<_>>()?;
        let mut e = Enls::new(EnlsConfig::new("node1"), EnlsMetrics::detached());
        let start = Instant::now();
        for k in Kind::ALL {
            e.handle(SourceEvent::ListBegin(k));
        }
        for o in objs {
            e.handle(SourceEvent::Apply(o));
        }
        for k in Kind::ALL {
            e.handle(SourceEvent::ListDone(k));
        }
        let update = e.sync().context("no initial update")?;
        let took = start.elapsed();
        if update.services.len() != opts.services {
            bail!(
                "initial update has {} services, expected {}",
                update.services.len(),
                opts.services
            );
        }
        eprintln!(
            "enls: initial build #{rep}: {:.1} ms",
            took.as_secs_f64() * 1e3
        );
        builds.push(took.as_secs_f64() * 1e3);
        engine = Some(e);
    }
    report.initial_build_ms = builds;
    let mut engine = engine.context("no engine")?;

    // Pre-build the changes so only handle + sync is timed.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut current: Vec<Vec<String>> = (0..opts.services)
        .map(|i| (0..opts.endpoints).map(|j| ep_ip(i, j)).collect())
        .collect();
    let mut changes = Vec::with_capacity(opts.changes);
    for c in 0..opts.changes {
        let i = rng.below(opts.services);
        let j = rng.below(opts.endpoints);
        current[i][j] = format!("10.{}.{}.{}", 64 + c / 65_536, (c / 256) % 256, c % 256);
        changes.push(to_object(slice_json(i, &current[i]))?);
    }
    let mut samples = Vec::with_capacity(changes.len());
    for obj in changes {
        let start = Instant::now();
        engine.handle(SourceEvent::Apply(obj));
        let update = engine.sync();
        let took = start.elapsed();
        match update {
            Some(u) if u.services.len() == 1 => samples.push(micros(took)),
            other => bail!(
                "a change emitted {:?} services",
                other.map(|u| u.services.len())
            ),
        }
    }
    report.change_us = summarize(&mut samples);
    eprintln!(
        "enls: change → diff p50 {:.1} µs, p99 {:.1} µs",
        report.change_us.p50, report.change_us.p99
    );
    Ok(())
}

struct Agent {
    child: std::process::Child,
    lines: mpsc::Receiver<Value>,
    stats: mpsc::Receiver<String>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn next(&self, timeout: Duration) -> anyhow::Result<Value> {
        self.lines
            .recv_timeout(timeout)
            .context("the agent printed no revision in time")
    }

    /// The most recent `--stats` line's API event count.
    fn api_events(&self) -> Option<u64> {
        let mut last = None;
        while let Ok(line) = self.stats.try_recv() {
            last = Some(line);
        }
        last?.split_whitespace().nth(1)?.parse().ok()
    }
}

fn agent_benchmarks(opts: &Options, report: &mut Report, workdir: &Path) -> anyhow::Result<()> {
    let double = ApiServerDouble::start_local();
    let mut objs = objects(opts);
    // Pods of this node (the identity index) and of others (filtered by the API server).
    for p in 0..110 {
        let node = if p < 50 { "node1" } else { NODES[1 + p % 2] };
        objs.push(k8s::pod(
            "bench",
            &format!("p{p}"),
            node,
            &format!("10.244.{}.{}", p / 200, p % 200 + 2),
            "default",
        ));
    }
    double.apply_all(objs);
    let kubeconfig = double.write_kubeconfig(workdir);
    let start = Instant::now();
    let mut child = Command::new(tollgate_bin())
        .args([
            "enls",
            "--source",
            "kube",
            "--node",
            "node1",
            "--watch",
            "--print",
            "summary",
            "--stats",
            "--kubeconfig",
        ])
        .arg(&kubeconfig)
        .env("TOLLGATE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting tollgate enls")?;
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().context("stdout")?;
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let (stx, stats) = mpsc::channel();
    let stderr = child.stderr.take().context("stderr")?;
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = stx.send(line);
        }
    });
    let agent = Agent {
        child,
        lines,
        stats,
    };
    let first = agent.next(Duration::from_secs(120))?;
    report.agent_first_state_ms = start.elapsed().as_secs_f64() * 1e3;
    if first["services"].as_u64() != Some(opts.services as u64) {
        bail!("first state has {} services", first["services"]);
    }
    let pid = agent.child.id();
    eprintln!(
        "enls: agent first state after {:.0} ms",
        report.agent_first_state_ms
    );

    // End-to-end: one endpoint change written to the API → revision printed by the agent.
    let mut rng = Rng(42);
    let mut samples = Vec::new();
    let mut last_revision = first["revision"].as_u64().unwrap_or(0);
    for c in 0..1000usize {
        let i = rng.below(opts.services);
        let mut ips: Vec<String> = (0..opts.endpoints).map(|j| ep_ip(i, j)).collect();
        ips[0] = format!("10.32.{}.{}", c / 256, c % 256);
        let t = Instant::now();
        double.apply(slice_json(i, &ips));
        let line = agent.next(Duration::from_secs(10))?;
        samples.push(t.elapsed().as_secs_f64() * 1e3);
        if line["services"].as_u64() != Some(1) {
            bail!("an end-to-end change emitted {line}");
        }
        // Put it back (also one revision) so every change is a real one.
        double.apply(slice_json(
            i,
            &(0..opts.endpoints).map(|j| ep_ip(i, j)).collect::<Vec<_>>(),
        ));
        last_revision = agent.next(Duration::from_secs(10))?["revision"]
            .as_u64()
            .unwrap_or(last_revision);
    }
    report.agent_change_ms = summarize(&mut samples);
    report.agent_peak_rss_mib = rss_of(pid)
        .map(|(hwm, _)| hwm as f64 / 1048576.0)
        .unwrap_or(0.0);

    // Churn: mostly irrelevant writes (pod and service annotations, slice re-writes with a new
    // trigger time only, pods of other nodes) and some real endpoint changes.
    std::thread::sleep(Duration::from_millis(1200));
    let events_before = agent.api_events().unwrap_or(0);
    let revision_before = last_revision;
    let (mut relevant, mut irrelevant) = (0usize, 0usize);
    for c in 0..opts.churn_events {
        let i = rng.below(opts.services);
        let base: Vec<String> = (0..opts.endpoints).map(|j| ep_ip(i, j)).collect();
        match rng.below(10) {
            0..=2 => {
                let p = rng.below(110);
                let node = if p < 50 { "node1" } else { NODES[1 + p % 2] };
                let pod = k8s::pod(
                    "bench",
                    &format!("p{p}"),
                    node,
                    &format!("10.244.{}.{}", p / 200, p % 200 + 2),
                    "default",
                );
                double.apply(k8s::with_annotation(pod, "heartbeat", &c.to_string()));
                irrelevant += 1;
            }
            3..=4 => {
                let svc = k8s::service("bench", &format!("s{i}"), &svc_ip(i), &[("http", 80)]);
                double.apply(k8s::with_annotation(svc, "deploy-id", &c.to_string()));
                irrelevant += 1;
            }
            5..=7 => {
                let t = format!("2020-01-01T00:00:{:02}Z", c % 60);
                double.apply(k8s::with_annotation(
                    slice_json(i, &base),
                    "endpoints.kubernetes.io/last-change-trigger-time",
                    &t,
                ));
                irrelevant += 1;
            }
            _ => {
                let mut ips = base.clone();
                ips[rng.below(opts.endpoints)] = format!("10.33.{}.{}", (c / 256) % 256, c % 256);
                double.apply(slice_json(i, &ips));
                relevant += 1;
            }
        }
    }
    // Let the agent drain, then read its counters.
    std::thread::sleep(Duration::from_millis(2500));
    while let Ok(v) = agent.lines.try_recv() {
        last_revision = v["revision"].as_u64().unwrap_or(last_revision);
    }
    let events_after = agent.api_events().unwrap_or(events_before);
    report.churn = Churn {
        api_events: events_after.saturating_sub(events_before),
        revisions: last_revision.saturating_sub(revision_before),
        relevant_writes: relevant,
        irrelevant_writes: irrelevant,
    };
    report.agent_rss_after_churn_mib = rss_of(pid)
        .map(|(hwm, _)| hwm as f64 / 1048576.0)
        .unwrap_or(0.0);
    eprintln!(
        "enls: churn {:?}, peak RSS {:.1} MiB",
        report.churn, report.agent_rss_after_churn_mib
    );
    Ok(())
}

pub fn run(opts: &Options, out_dir: &Path, markdown: &Path) -> anyhow::Result<Report> {
    let mut report = Report {
        machine: super::machine(),
        services: opts.services,
        endpoints_per_service: opts.endpoints,
        initial_build_ms: Vec::new(),
        change_us: summarize(&mut []),
        agent_first_state_ms: 0.0,
        agent_change_ms: summarize(&mut []),
        agent_peak_rss_mib: 0.0,
        agent_rss_after_churn_mib: 0.0,
        churn: Churn {
            api_events: 0,
            revisions: 0,
            relevant_writes: 0,
            irrelevant_writes: 0,
        },
    };
    engine_benchmarks(opts, &mut report)?;
    let workdir = std::env::temp_dir().join(format!("tg-bench-enls-{}", std::process::id()));
    std::fs::create_dir_all(&workdir)?;
    let result = agent_benchmarks(opts, &mut report, &workdir);
    let _ = std::fs::remove_dir_all(&workdir);
    result?;
    write(&report, out_dir, markdown)?;
    Ok(report)
}

fn write(r: &Report, out_dir: &Path, markdown: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out_dir)?;
    std::fs::write(
        out_dir.join("enls.json"),
        serde_json::to_string_pretty(&json!(r))?,
    )?;
    let mut builds = r.initial_build_ms.clone();
    let build = summarize(&mut builds);
    std::fs::write(
        out_dir.join("enls-change-latency.svg"),
        plot::bars(
            &format!(
                "ENLS: one endpoint change → emitted diff ({}k services)",
                r.services / 1000
            ),
            "microseconds",
            &[
                ("p50".into(), r.change_us.p50),
                ("p90".into(), r.change_us.p90),
                ("p99".into(), r.change_us.p99),
                ("max".into(), r.change_us.max),
            ],
            Some(("goal p99 < 1 ms".into(), 1000.0)),
        ),
    )?;
    std::fs::write(
        out_dir.join("enls-goals.svg"),
        plot::bars(
            &format!(
                "ENLS at {}k services × {} endpoints: measured as % of goal",
                r.services / 1000,
                r.endpoints_per_service
            ),
            "% of goal (lower is better)",
            &[
                (
                    "initial build (max) / 1 s".into(),
                    build.max / 1000.0 * 100.0,
                ),
                ("change p99 / 1 ms".into(), r.change_us.p99 / 1000.0 * 100.0),
                (
                    "peak RSS / 40 MiB".into(),
                    r.agent_rss_after_churn_mib / 40.0 * 100.0,
                ),
            ],
            Some(("goal".into(), 100.0)),
        ),
    )?;
    let ratio = if r.churn.api_events == 0 {
        0.0
    } else {
        r.churn.revisions as f64 / r.churn.api_events as f64 * 100.0
    };
    let body = format!(
        r#"## ENLS (issue: node-local state)

Measured by `cargo xtask bench enls` on {machine} (release build; the agent is a separate
`tollgate enls --source kube` process fed over HTTP by the API-server double in the benchmark
process, so both share the 2 cores).

| what | measured | goal |
|---|---|---|
| initial build, {svc} Services × {eps} endpoints (engine, 5 runs) | median {b50:.0} ms, max {bmax:.0} ms | < 1 s |
| one endpoint change → emitted diff (engine, {n} changes) | p50 {c50:.1} µs, p99 {c99:.1} µs, max {cmax:.0} µs | p99 < 1 ms |
| agent: start → first complete state (paginated lists over HTTP) | {first:.0} ms | — |
| agent: API write → revision printed (1000 changes, end to end) | p50 {e50:.2} ms, p99 {e99:.2} ms | — |
| agent peak RSS after the initial state and 1000 changes | {rss:.1} MiB | ≤ 40 MiB |
| agent peak RSS after the churn below | {rss2:.1} MiB | ≤ 40 MiB |
| churn: {w} API writes ({irr} irrelevant: pod/service annotations, slice re-writes with only a new trigger time, pods of other nodes; {rel} endpoint changes) | {ev} API events reached the agent (other nodes' pods are filtered by the API server) → {rev} revisions ({ratio:.1} %; bursts of endpoint changes coalesce) | — |

![change latency](tests/benchmarks/enls-change-latency.svg)
![goals](tests/benchmarks/enls-goals.svg)

The engine numbers time `Enls::handle` + `Enls::sync` on one thread. The end-to-end latency
adds the API write, the watch event's HTTP/JSON hop, kube-rs decoding and the print. kpng
measured 130,941 API events → 1,218 revisions on a real 1k-service cluster; our churn mix is
synthetic, so the ratio reflects the mix, not a cluster. Raw data: `tests/benchmarks/enls.json`."#,
        machine = r.machine,
        svc = r.services,
        eps = r.endpoints_per_service,
        b50 = build.p50,
        bmax = build.max,
        n = r.change_us.n,
        c50 = r.change_us.p50,
        c99 = r.change_us.p99,
        cmax = r.change_us.max,
        first = r.agent_first_state_ms,
        e50 = r.agent_change_ms.p50,
        e99 = r.agent_change_ms.p99,
        rss = r.agent_peak_rss_mib,
        rss2 = r.agent_rss_after_churn_mib,
        w = r.churn.relevant_writes + r.churn.irrelevant_writes,
        irr = r.churn.irrelevant_writes,
        rel = r.churn.relevant_writes,
        ev = r.churn.api_events,
        rev = r.churn.revisions,
    );
    super::update_section(markdown, "enls", &body)?;
    Ok(())
}
