//! Service dataplane benchmark.
//!
//! - Short-connection HTTP (wrk, `Connection: close`) from a client pod to an nginx pod: to a
//!   ClusterIP through Tollgate with 1, 1,000 and 10,000 Services programmed, against the same
//!   traffic straight to the pod IP with nothing installed (the limit), interleaved round by
//!   round so both see the same machine state.
//! - Programming (in process, real maps): the full restore of N Services, and one change at
//!   10,000 Services (an endpoint replaced; a Service added) from ENLS event to maps written.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tollgate::{
    dataplane::{
        Dataplane, MapSizes,
        lbmaps::LbMaps,
        traffic::{TrafficCollector, TrafficMetrics},
        writer::Writer,
    },
    enls::{
        Enls, EnlsConfig, SourceEvent, ingest::Kind, metrics::EnlsMetrics, runner::process_usage_of,
    },
};

use super::{
    Summary,
    enls::{ep_ip, svc_ip, to_object},
    floor::Floor,
    micros, plot, rss_of, summarize, tool_version,
};
use crate::{BgProcess, Cluster, ClusterSpec, Pod, k8s, tools::tollgate_bin};

#[derive(Debug, Clone)]
pub struct Options {
    /// Service counts to measure at.
    pub counts: Vec<usize>,
    /// Endpoints of each filler Service.
    pub endpoints: usize,
    /// Seconds of each wrk run.
    pub duration_s: u64,
    /// Sequential rounds (limit, Tollgate, pod IP with Tollgate installed) per service count.
    pub rounds: usize,
    /// Paired rounds (both nodes at once) per comparison and orientation.
    pub pairs: usize,
    /// wrk connections (kept open concurrently; each request uses a new one).
    pub connections: usize,
    /// Single changes timed at the largest count.
    pub changes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            counts: vec![1, 1_000, 10_000],
            endpoints: 10,
            duration_s: 6,
            rounds: 8,
            pairs: 6,
            connections: 16,
            changes: 1_000,
        }
    }
}

/// The Service wrk reaches through Tollgate.
const TARGET_IP: &str = "10.97.0.10";

fn filler(i: usize, ips: &[String]) -> [Value; 2] {
    let eps = ips.iter().map(|ip| k8s::endpoint(ip, "node2")).collect();
    [
        k8s::service("bench", &format!("s{i}"), &svc_ip(i), &[("http", 80)]),
        k8s::slice(
            "bench",
            &format!("s{i}-1"),
            &format!("s{i}"),
            &[("http", 8080)],
            eps,
        ),
    ]
}

/// `count` Services: the target (backed by the nginx pods, `(address, node)`; with
/// internalTrafficPolicy Local, so each node's pods reach their own node's nginx) and
/// `count - 1` fillers; and the ServiceCIDR their ClusterIPs are in, as every cluster since
/// Kubernetes 1.33 has (the programs then check the destination of every SYN against it).
fn manifest_objects(count: usize, endpoints: usize, nginx: &[(String, String)]) -> Vec<Value> {
    let mut target = k8s::service("bench", "target", TARGET_IP, &[("http", 80)]);
    target["spec"]["internalTrafficPolicy"] = json!("Local");
    let mut v = vec![
        k8s::service_cidr("kubernetes", &["10.96.0.0/12"]),
        target,
        k8s::slice(
            "bench",
            "target-1",
            "target",
            &[("http", 8080)],
            nginx
                .iter()
                .map(|(ip, node)| k8s::endpoint(ip, node))
                .collect(),
        ),
    ];
    for i in 0..count.saturating_sub(1) {
        let ips: Vec<String> = (0..endpoints).map(|j| ep_ip(i, j)).collect();
        v.extend(filler(i, &ips));
    }
    v
}

/// The runs of one round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Run {
    /// To the pod IP, nothing installed.
    Limit,
    /// To the ClusterIP, agent with its defaults.
    Tollgate,
    /// To the pod IP, agent with its defaults.
    PodIp,
}

/// One wrk run.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Wrk {
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    pub requests: u64,
    /// CPU wrk used, in % of one core over the run (0 when not measured: paired runs, whose
    /// two wrk processes finish together).
    pub client_cpu_pct: f64,
    /// CPU the nginx worker used, in % of one core over the run (0 when not measured).
    pub server_cpu_pct: f64,
}

#[derive(Debug, serde::Serialize)]
pub struct CountResult {
    pub services: usize,
    pub limit: Vec<Wrk>,
    pub tollgate: Vec<Wrk>,
    /// The limit's traffic (to the pod IP, no Service) with the agent installed: what
    /// Tollgate costs traffic that it does not translate.
    pub pod_ip_installed: Vec<Wrk>,
    /// Tollgate rate / limit rate of the same round, over the rounds.
    pub ratio: Ratio,
    /// The same for `pod_ip_installed`.
    pub ratio_pod_ip: Ratio,
    /// Through Tollgate (ClusterIP) on one node while the other node runs the limit.
    pub paired: Paired,
    /// The limit's traffic with the agent installed on one node while the other node runs
    /// the limit.
    pub paired_pod_ip: Paired,
    pub tollgate_p99_ms: f64,
    pub limit_p99_ms: f64,
    /// Agent: start → "tollgate ready" (state built and every Service programmed).
    pub agent_ready_ms: f64,
    pub agent_peak_rss_mib: f64,
    /// CPU the agent used while wrk ran (ms, median over rounds): it should be idle.
    pub agent_cpu_during_run_ms: f64,
    /// Tollgate's kernel programs over one more run with the kernel's run-time statistics on
    /// (a run of its own: the statistics cost ≈ 40–65 ns per program run, so the ratio rounds
    /// are taken without them).
    pub programs: Vec<ProgramTime>,
}

/// Per-round ratios (a run's rate over another's), over the rounds. The mean is the estimate;
/// the rounds scatter (`sd`: machine noise), so its 95 % confidence interval says what a row
/// can resolve.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Ratio {
    pub mean: f64,
    /// Half-width of the 95 % confidence interval of the mean (Student's t over the rounds).
    pub ci95: f64,
    /// Lower median of the per-round ratios (the estimate of reports before 2026-12-01).
    pub lower_median: f64,
    /// Standard deviation of the per-round ratios (0 with fewer than two rounds).
    pub sd: f64,
}

impl Ratio {
    pub fn of(per_round: &[f64]) -> Self {
        let n = per_round.len();
        if n == 0 {
            return Self::default();
        }
        let mean = per_round.iter().sum::<f64>() / n as f64;
        let sd = if n < 2 {
            0.0
        } else {
            (per_round.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        };
        let ci95 = if n < 2 {
            f64::INFINITY
        } else {
            t975(n - 1) * sd / (n as f64).sqrt()
        };
        let mut sorted = per_round.to_vec();
        sorted.sort_by(|a, b| a.total_cmp(b));
        Self {
            mean,
            ci95,
            lower_median: sorted[(n - 1) / 2],
            sd,
        }
    }
}

/// The 97.5th percentile of Student's t distribution with `df` degrees of freedom.
fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        d if d <= T.len() => T[d - 1],
        // Within 0.002 of the table beyond 30.
        d => 1.960 + 2.4 / d as f64,
    }
}

/// One kernel program's share of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProgramTime {
    pub program: String,
    pub runs: u64,
    pub ns_per_run: f64,
    pub runs_per_request: f64,
    /// Its time over the run's requests (every request is one connection).
    pub ns_per_request: f64,
}

/// Run count and run time of every loaded Tollgate program (names `tg_*`), by name.
fn program_totals() -> BTreeMap<String, (u64, Duration)> {
    let mut totals = BTreeMap::new();
    for info in aya::programs::loaded_programs().filter_map(Result::ok) {
        if let Some(name) = info.name_as_str()
            && name.starts_with("tg_")
        {
            let e = totals
                .entry(name.to_owned())
                .or_insert((0u64, Duration::ZERO));
            e.0 += info.run_count();
            e.1 += info.run_time();
        }
    }
    totals
}

/// One wrk run through the ClusterIP with BPF_ENABLE_STATS held (released on return, so the
/// kernel setting is never left on): what each program cost per run and per request.
fn program_times(client: &Pod, url: &str, opts: &Options) -> anyhow::Result<Vec<ProgramTime>> {
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enabling the kernel's BPF run-time statistics")?;
    let before = program_totals();
    let w = wrk(client, url, opts, None)?;
    let after = program_totals();
    drop(stats);
    let requests = w.requests.max(1) as f64;
    Ok(after
        .into_iter()
        .filter_map(|(program, (runs, time))| {
            let (runs0, time0) = before.get(&program).copied().unwrap_or_default();
            let runs = runs.saturating_sub(runs0);
            let ns = time.saturating_sub(time0).as_nanos() as f64;
            (runs > 0).then(|| ProgramTime {
                program,
                runs,
                ns_per_run: ns / runs as f64,
                runs_per_request: runs as f64 / requests,
                ns_per_request: ns / requests,
            })
        })
        .collect())
}

#[derive(Debug, serde::Serialize)]
pub struct Programming {
    pub services: usize,
    pub endpoints_per_service: usize,
    /// Full restore: every Service written into empty maps (ENLS build excluded), ms.
    pub full_write_ms: f64,
    /// One endpoint replaced: ENLS handle + sync + map write, µs.
    pub endpoint_change_us: Summary,
    /// The map write alone of those changes, µs.
    pub endpoint_change_write_us: Summary,
    /// One Service (with its slice) added: ENLS handle + sync + map write, µs.
    pub service_add_us: Summary,
    /// `/metrics`' traffic counters read from these maps with every service port and backend
    /// counted (`--traffic-metrics services`, then `backends`): encode time, ms, and size, KiB
    /// (3 scrapes each, the median time).
    pub metrics_scrape: Vec<Scrape>,
    /// Measured with `--lb-algorithm maglev` and an externalIP on every Service (each service
    /// port then has a Maglev table, written again on every endpoint change).
    pub maglev: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Scrape {
    pub level: String,
    pub ms: f64,
    pub kib: f64,
}

/// Times the traffic collector's encoding over the pinned maps at `pins` (median of 3).
fn scrape(pins: &tollgate::dataplane::PinLayout, level: TrafficMetrics) -> Scrape {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(TrafficCollector::new(pins.clone(), level)));
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..3 {
        let mut text = String::new();
        let start = Instant::now();
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        times.push(start.elapsed().as_secs_f64() * 1e3);
        size = text.len();
    }
    times.sort_by(f64::total_cmp);
    Scrape {
        level: format!("{level:?}").to_lowercase(),
        ms: times[1],
        kib: size as f64 / 1024.0,
    }
}

/// The programming table's rows for one measurement.
fn programming_rows(p: &Programming) -> String {
    let (pre, restore_goal, add_goal) = if p.maglev {
        ("maglev: ", "—", "—")
    } else {
        (
            "",
            "iptables 14.5 s at 10k",
            "iptables 1.4 s, nftables 0.6 s at 10k",
        )
    };
    let (c, w, a) = (
        &p.endpoint_change_us,
        &p.endpoint_change_write_us,
        &p.service_add_us,
    );
    format!(
        "| {pre}full restore: every Service written into empty maps | {:.0} ms | {restore_goal} |\n\
         | {pre}one endpoint replaced → maps written ({} changes) | p50 {:.1} µs, p99 {:.1} µs, max {:.0} µs | p99 < 1 ms |\n\
         | … of which the map writes | p50 {:.1} µs, p99 {:.1} µs | — |\n\
         | {pre}one Service added → maps written ({} adds) | p50 {:.1} µs, p99 {:.1} µs, max {:.0} µs | {add_goal} |\n",
        p.full_write_ms, c.n, c.p50, c.p99, c.max, w.p50, w.p99, a.n, a.p50, a.p99, a.max,
    ) + &p
        .metrics_scrape
        .iter()
        .filter(|_| !p.maglev)
        .map(|m| {
            format!(
                "| `/metrics` traffic counters read at a scrape (`--traffic-metrics {}`, {} service ports, every one counted) | {:.1} ms, {:.0} KiB | — |\n",
                m.level,
                p.services + a.n,
                m.ms,
                m.kib
            )
        })
        .collect::<String>()
}

/// An externalIP for filler `i` (198.18.0.0/15, the benchmarking range).
fn external_ip(i: usize) -> String {
    format!("198.{}.{}.{}", 18 + i / 65_536, (i / 256) % 256, i % 256)
}

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub machine: String,
    /// The commit measured (`+changes`: with uncommitted changes), taken before the run writes
    /// its own results.
    pub commit: String,
    pub wrk: String,
    pub counts: Vec<CountResult>,
    pub programming: Programming,
    /// The same with `--lb-algorithm maglev` (every Service with an externalIP).
    pub programming_maglev: Programming,
    /// Paired comparisons measured once (see [`Calibration`]).
    pub calibration: Calibration,
}

fn parse_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mult) = if let Some(v) = s.strip_suffix("us") {
        (v, 1e-3)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1e3)
    } else {
        (s, 1.0)
    };
    num.parse::<f64>().ok().map(|v| v * mult)
}

/// Parses wrk's `--latency` report.
fn parse_wrk(text: &str) -> anyhow::Result<Wrk> {
    let field = |prefix: &str| -> Option<&str> {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .map(|l| l[prefix.len()..].trim())
    };
    let requests_per_s: f64 = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))?;
    let p50_ms = field("50%").and_then(parse_ms).unwrap_or(0.0);
    let p99_ms = field("99%").and_then(parse_ms).unwrap_or(0.0);
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let mut errors = 0;
    if let Some(v) = field("Socket errors:") {
        // "connect 0, read 0, write 0, timeout 0"
        errors += v
            .split(',')
            .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    if let Some(v) = field("Non-2xx or 3xx responses:") {
        errors += v.parse::<u64>().unwrap_or(0);
    }
    Ok(Wrk {
        requests_per_s,
        p50_ms,
        p99_ms,
        errors,
        requests,
        client_cpu_pct: 0.0,
        server_cpu_pct: 0.0,
    })
}

/// CPU time of this process's waited-for children (wrk is one, run to completion).
fn children_cpu() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_CHILDREN is a valid `who`.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The nginx worker of `master` (nginx runs one).
fn nginx_worker(master: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One wrk run from `client`; `server` is the nginx worker whose CPU is measured alongside.
fn wrk(client: &Pod, url: &str, opts: &Options, server: Option<u32>) -> anyhow::Result<Wrk> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", "--latency", "-H", "Connection: close"])
        .arg(format!("-c{}", opts.connections))
        .arg(format!("-d{}s", opts.duration_s))
        .arg("--timeout")
        .arg("2s")
        .arg(url);
    let server_cpu = || server.and_then(|pid| process_usage_of(pid).map(|(cpu, _)| cpu));
    let (client_before, server_before, start) = (children_cpu(), server_cpu(), Instant::now());
    let out = client.placement().output(cmd);
    let (client_cpu, server_after, wall) = (
        children_cpu().saturating_sub(client_before),
        server_cpu(),
        start.elapsed().as_secs_f64().max(1e-3),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk {url}: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut w = parse_wrk(&text)?;
    w.client_cpu_pct = client_cpu.as_secs_f64() * 100.0 / wall;
    if let (Some(a), Some(b)) = (server_before, server_after) {
        w.server_cpu_pct = b.saturating_sub(a).as_secs_f64() * 100.0 / wall;
    }
    eprintln!(
        "dataplane:   {url}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
        w.requests_per_s, w.p50_ms, w.p99_ms, w.errors
    );
    Ok(w)
}

fn nginx(server: &Pod, workdir: &Path) -> anyhow::Result<BgProcess> {
    let dir = workdir.join(format!("nginx-{}", server.name));
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("nginx.conf");
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  \
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             server {{\n    listen 8080 backlog=4096;\n    \
             location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n"
        ),
    )?;
    let mut cmd = Command::new("nginx");
    cmd.arg("-c").arg(&conf).args(["-g", "daemon off;"]);
    let p = server.spawn("nginx", cmd);
    // Ready when it accepts.
    let addr = format!("{}:8080", server.ip);
    crate::wait_for("nginx to listen", Duration::from_secs(10), || {
        let ok = server.ns.run_in(|| {
            std::net::TcpStream::connect_timeout(
                &addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}")),
                Duration::from_millis(200),
            )
            .is_ok()
        });
        ok.then_some(())
    });
    Ok(p)
}

fn cleanup(node: &crate::Node) -> anyhow::Result<()> {
    if !node.bpffs.exists() {
        return Ok(());
    }
    let mut cmd = Command::new(tollgate_bin());
    cmd.args(["cleanup", "--bpffs"]).arg(&node.bpffs);
    let out = node.output(cmd);
    if !out.status.success() {
        bail!("tollgate cleanup: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    summarize(v).p50
}

/// "lo–hi %": the range of the ratios' per-round standard deviations.
fn sd_range(ratios: impl Iterator<Item = Ratio>) -> String {
    let (lo, hi) = ratios.fold((f64::INFINITY, 0.0_f64), |(lo, hi), r| {
        (lo.min(r.sd), hi.max(r.sd))
    });
    if lo.is_finite() {
        format!("{:.1}–{:.1} %", lo * 100.0, hi * 100.0)
    } else {
        "unknown (no rounds)".to_owned()
    }
}

/// The median request rate of some runs.
fn rate(runs: &[Wrk]) -> f64 {
    median(&mut runs.iter().map(|w| w.requests_per_s).collect::<Vec<_>>())
}

/// One node's half of the test bed: a client pod and an nginx pod.
struct Half<'a> {
    node: &'a crate::Node,
    client: &'a Pod,
    /// The nginx pod's own address (the limit's target).
    direct: String,
}

/// The test bed: node1 and node2, each with a client pod and an nginx pod. The sequential
/// runs use node1 only; the paired runs use both at once.
struct Bed<'a> {
    halves: [Half<'a>; 2],
    /// The nginx worker of node1 (its CPU is measured in the sequential runs).
    worker: Option<u32>,
    /// The target's ClusterIP (internalTrafficPolicy Local: each node's pods reach their own
    /// node's nginx through it).
    via: String,
    extra_args: Vec<String>,
    /// The nginx pods' `(address, node)`, for the target's EndpointSlice.
    nginx: Vec<(String, String)>,
    /// The nginx processes (stopped when the bed is dropped).
    _servers: Vec<BgProcess>,
}

impl Bed<'_> {
    /// Starts the agent (`bin`, or this build's) on `half`'s node with the bench's extra
    /// arguments and `extra`.
    fn agent(
        &self,
        bin: Option<&Path>,
        half: &Half<'_>,
        source: &str,
        extra: &[&str],
    ) -> BgProcess {
        let args: Vec<&str> = self
            .extra_args
            .iter()
            .map(String::as_str)
            .chain(extra.iter().copied())
            .collect();
        let bin = bin.map_or_else(tollgate_bin, Path::to_path_buf);
        crate::agent::start_agent_from(&bin, half.node, source, &args, "tollgate ready")
    }

    fn cleanup(&self) -> anyhow::Result<()> {
        for h in &self.halves {
            cleanup(h.node)?;
        }
        Ok(())
    }
}

/// wrk from both clients at the same time (each to its own URL): the machine's state, which
/// moves rates by several per cent from run to run, is then common to both arms.
fn wrk_pair(a: (&Pod, &str), b: (&Pod, &str), opts: &Options) -> anyhow::Result<(Wrk, Wrk)> {
    std::thread::scope(|s| {
        let ha = s.spawn(|| wrk(a.0, a.1, opts, None));
        let hb = s.spawn(|| wrk(b.0, b.1, opts, None));
        let join = |h: std::thread::ScopedJoinHandle<'_, anyhow::Result<Wrk>>| {
            h.join()
                .map_err(|_| anyhow::anyhow!("a wrk thread panicked"))?
        };
        // The children's CPU time cannot be told apart between two concurrent wrk runs.
        let unmeasured = |w: Wrk| Wrk {
            client_cpu_pct: 0.0,
            ..w
        };
        Ok((unmeasured(join(ha)?), unmeasured(join(hb)?)))
    })
}

/// Two arms measured at the same time, one on each node (both CPUs busy: the ratio is the
/// relative CPU cost of a request, both ends of the connection included). Half the rounds
/// have arm A on node1, half on node2, so the nodes' own difference cancels in the mean.
#[derive(Debug, Default, serde::Serialize)]
pub struct Paired {
    /// Arm A's rate over arm B's, per round (A on node1 first, then on node2), from `a` and
    /// `b` (by [`Paired::finish`]).
    pub per_round: Vec<f64>,
    /// Over every round: the estimate.
    pub ratio: Ratio,
    /// Over the rounds with A on node1, and on node2.
    pub a_on_node1: Ratio,
    pub a_on_node2: Ratio,
    pub a: Vec<Wrk>,
    pub b: Vec<Wrk>,
}

impl Paired {
    fn push(&mut self, (a, b): (Wrk, Wrk)) {
        self.a.push(a);
        self.b.push(b);
    }

    /// Call after the A-on-node1 rounds (`split` of them) and the A-on-node2 ones.
    fn finish(&mut self, split: usize) {
        self.per_round = self
            .a
            .iter()
            .zip(&self.b)
            .map(|(a, b)| a.requests_per_s / b.requests_per_s.max(1.0))
            .collect();
        self.ratio = Ratio::of(&self.per_round);
        let (first, second) = self.per_round.split_at(split.min(self.per_round.len()));
        self.a_on_node1 = Ratio::of(first);
        self.a_on_node2 = Ratio::of(second);
    }
}

/// Paired comparisons that do not depend on the number of Services, measured once with the
/// target alone.
#[derive(Debug, Default, serde::Serialize)]
pub struct Calibration {
    /// The limit against itself: what the method sees with nothing to see. Its halves show
    /// the two nodes' own difference, which the mean over both cancels.
    pub same: Paired,
    /// The limit's traffic through the agent's hooks with programs that return at once
    /// (`floor`), over the limit: what the kernel's hooks cost by themselves.
    pub hooks_only: Paired,
    /// Through Tollgate with its defaults over Tollgate with `--socket-lb-peer=false`, both to
    /// the ClusterIP (an agent on each node): what the getpeername record costs.
    pub peer_record: Paired,
}

/// One arm of a paired comparison: what runs on its node, and where its client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arm {
    /// Nothing installed; to the nginx pod's IP.
    Limit,
    /// The floor (Tollgate's hooks, programs that return at once); to the pod IP.
    Floor,
    /// The agent (this build's, or the binary `bin`) with `args`; to the target's ClusterIP
    /// (`service`) or to the pod IP.
    Agent {
        service: bool,
        bin: Option<PathBuf>,
        args: Vec<String>,
    },
}

impl std::str::FromStr for Arm {
    type Err = String;

    /// `limit`, `floor`, or `service` / `pod-ip` followed by `,bin=PATH` and `,arg=ARG`
    /// (repeatable): `service,bin=/tmp/old-tollgate,arg=--socket-lb-peer=false`.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(',');
        let kind = parts.next().unwrap_or_default();
        let service = match kind {
            "limit" | "floor" if s.contains(',') => {
                return Err(format!("{kind} takes no options: {s:?}"));
            }
            "limit" => return Ok(Self::Limit),
            "floor" => return Ok(Self::Floor),
            "service" => true,
            "pod-ip" => false,
            _ => {
                return Err(format!(
                    "{kind:?}: an arm is limit, floor, service or pod-ip"
                ));
            }
        };
        let (mut bin, mut args) = (None, Vec::new());
        for part in parts {
            if let Some(path) = part.strip_prefix("bin=") {
                bin = Some(PathBuf::from(path));
            } else if let Some(arg) = part.strip_prefix("arg=") {
                args.push(arg.to_owned());
            } else {
                return Err(format!("{part:?}: expected bin=PATH or arg=ARG"));
            }
        }
        Ok(Self::Agent { service, bin, args })
    }
}

/// What an arm left running; dropping it removes it.
#[derive(Default)]
struct Installed {
    _floor: Option<Floor>,
    _agent: Option<BgProcess>,
}

impl Bed<'_> {
    /// Installs `arm` on `half`'s node; returns what runs there and the client's URL.
    fn install(
        &self,
        arm: &Arm,
        half: &Half<'_>,
        source: &str,
    ) -> anyhow::Result<(Installed, String)> {
        Ok(match arm {
            Arm::Limit => (Installed::default(), half.direct.clone()),
            Arm::Floor => (
                Installed {
                    _floor: Some(Floor::attach(half.node)?),
                    _agent: None,
                },
                half.direct.clone(),
            ),
            Arm::Agent { service, bin, args } => {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let agent = self.agent(bin.as_deref(), half, source, &args);
                let url = if *service {
                    self.via.clone()
                } else {
                    half.direct.clone()
                };
                (
                    Installed {
                        _floor: None,
                        _agent: Some(agent),
                    },
                    url,
                )
            }
        })
    }

    /// Paired rounds of `a` against `b`: `rounds` with `a` on node1, then `rounds` with it on
    /// node2.
    fn compare(
        &self,
        a: &Arm,
        b: &Arm,
        source: &str,
        rounds: usize,
        opts: &Options,
    ) -> anyhow::Result<Paired> {
        let mut p = Paired::default();
        let [h1, h2] = &self.halves;
        for (x, y) in [(h1, h2), (h2, h1)] {
            self.cleanup()?;
            let (on_x, url_x) = self.install(a, x, source)?;
            let (on_y, url_y) = self.install(b, y, source)?;
            for _ in 0..rounds {
                p.push(wrk_pair((x.client, &url_x), (y.client, &url_y), opts)?);
            }
            drop((on_x, on_y));
        }
        self.cleanup()?;
        p.finish(rounds);
        Ok(p)
    }
}

fn calibration(bed: &Bed<'_>, source: &str, opts: &Options) -> anyhow::Result<Calibration> {
    let service = |args: &[&str]| Arm::Agent {
        service: true,
        bin: None,
        args: args.iter().map(|a| (*a).to_owned()).collect(),
    };
    let c = Calibration {
        same: bed.compare(&Arm::Limit, &Arm::Limit, source, opts.pairs, opts)?,
        hooks_only: bed.compare(&Arm::Floor, &Arm::Limit, source, opts.pairs, opts)?,
        peer_record: bed.compare(
            &service(&[]),
            &service(&["--socket-lb-peer=false"]),
            source,
            opts.pairs,
            opts,
        )?,
    };
    for (name, p) in [
        ("limit / limit", &c.same),
        ("hooks only / limit", &c.hooks_only),
        ("peer record on / off", &c.peer_record),
    ] {
        eprintln!(
            "dataplane: paired {name}: {:.4} ± {:.4}",
            p.ratio.mean, p.ratio.ci95
        );
    }
    Ok(c)
}

/// `tollgate-bench paired`: arm `a` against arm `b`, paired (see [`Paired`]), with the target
/// plus `services - 1` fillers; for comparing builds or flags end to end.
pub fn paired(a: &Arm, b: &Arm, services: usize, opts: &Options) -> anyhow::Result<Paired> {
    let workdir: PathBuf =
        std::env::temp_dir().join(format!("tg-bench-paired-{}", std::process::id()));
    std::fs::create_dir_all(&workdir)?;
    let cluster = Cluster::new(&ClusterSpec {
        pods_per_node: vec![2, 2],
        cloud: false,
        ..Default::default()
    });
    let result = set_up(&cluster, &workdir).and_then(|bed| {
        let source =
            cluster.write_manifest(&manifest_objects(services, opts.endpoints, &bed.nginx));
        bed.compare(a, b, &source, opts.pairs, opts)
    });
    let _ = std::fs::remove_dir_all(&workdir);
    let p = result?;
    eprintln!(
        "paired: {:.4} ± {:.4} (A on node1 {:.4}, on node2 {:.4})",
        p.ratio.mean, p.ratio.ci95, p.a_on_node1.mean, p.a_on_node2.mean
    );
    Ok(p)
}

/// Sets the test bed up on `cluster` (two nodes of two pods): nginx in each node's second
/// pod, tuned for short connections.
fn set_up<'a>(cluster: &'a Cluster, workdir: &Path) -> anyhow::Result<Bed<'a>> {
    let mut servers = Vec::new();
    let mut halves = Vec::new();
    for node in &cluster.nodes {
        let (client, server) = (&node.pods[0], &node.pods[1]);
        // Short connections: the client reuses TIME_WAIT ports, the server has room to accept.
        client.ns.sysctl("net.ipv4.tcp_tw_reuse", "1");
        client
            .ns
            .sysctl("net.ipv4.ip_local_port_range", "1024 60999");
        server.ns.sysctl("net.core.somaxconn", "4096");
        server.ns.sysctl("net.ipv4.tcp_max_syn_backlog", "4096");
        servers.push(nginx(server, workdir)?);
        halves.push(Half {
            node,
            client,
            direct: format!("http://{}:8080/", server.ip),
        });
    }
    let Ok(halves) = <[Half<'_>; 2]>::try_from(halves) else {
        bail!("the test bed has two nodes");
    };
    let bed = Bed {
        nginx: cluster
            .nodes
            .iter()
            .map(|n| (n.pods[1].ip.to_string(), n.name.clone()))
            .collect(),
        halves,
        worker: nginx_worker(servers[0].pid()),
        via: format!("http://{TARGET_IP}/"),
        // Extra agent arguments for experiments (`TOLLGATE_BENCH_AGENT_ARGS="--xdp-mode off"`).
        extra_args: std::env::var("TOLLGATE_BENCH_AGENT_ARGS")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        _servers: servers,
    };
    Ok(bed)
}

fn traffic(opts: &Options, workdir: &Path) -> anyhow::Result<(Vec<CountResult>, Calibration)> {
    let cluster = Cluster::new(&ClusterSpec {
        pods_per_node: vec![2, 2],
        cloud: false,
        ..Default::default()
    });
    let bed = set_up(&cluster, workdir)?;
    let (h1, h2) = (&bed.halves[0], &bed.halves[1]);
    let (client, node) = (h1.client, h1.node);
    let calibration = calibration(
        &bed,
        &cluster.write_manifest(&manifest_objects(1, opts.endpoints, &bed.nginx)),
        opts,
    )?;
    let mut results = Vec::new();
    for &count in &opts.counts {
        eprintln!("dataplane: {count} services");
        let source = cluster.write_manifest(&manifest_objects(count, opts.endpoints, &bed.nginx));
        let mut r = CountResult {
            services: count,
            limit: Vec::new(),
            tollgate: Vec::new(),
            pod_ip_installed: Vec::new(),
            ratio: Ratio::default(),
            ratio_pod_ip: Ratio::default(),
            paired: Paired::default(),
            paired_pod_ip: Paired::default(),
            tollgate_p99_ms: 0.0,
            limit_p99_ms: 0.0,
            agent_ready_ms: 0.0,
            agent_peak_rss_mib: 0.0,
            agent_cpu_during_run_ms: 0.0,
            programs: Vec::new(),
        };
        let mut ready = Vec::new();
        let mut agent_cpu = Vec::new();
        for round in 0..opts.rounds {
            // Every run leaves tens of thousands of TIME_WAIT entries for the same server
            // address behind (Tollgate's socket LB connects to the pod IP, like the limit), so
            // a later run starts with a fuller port space: the order reverses every other
            // round so that no run always pays for it.
            let mut order = [Run::Limit, Run::Tollgate, Run::PodIp];
            if round % 2 == 1 {
                order.reverse();
            }
            let mut runs = BTreeMap::new();
            for run in order {
                cleanup(node)?;
                let w = match run {
                    Run::Limit => wrk(client, &h1.direct, opts, bed.worker)?,
                    Run::Tollgate => {
                        let start = Instant::now();
                        let mut agent = bed.agent(None, h1, &source, &[]);
                        ready.push(start.elapsed().as_secs_f64() * 1e3);
                        let cpu = || process_usage_of(agent.pid()).map(|(cpu, _)| cpu);
                        let cpu_before = cpu();
                        let t = wrk(client, &bed.via, opts, bed.worker)?;
                        if let (Some(a), Some(b)) = (cpu_before, cpu()) {
                            agent_cpu.push(b.saturating_sub(a).as_secs_f64() * 1e3);
                        }
                        if round == 0 {
                            r.agent_peak_rss_mib = rss_of(agent.pid())
                                .map(|(peak, _)| peak as f64 / 1048576.0)
                                .unwrap_or(0.0);
                        }
                        agent.terminate();
                        t
                    }
                    Run::PodIp => {
                        let mut agent = bed.agent(None, h1, &source, &[]);
                        let w = wrk(client, &h1.direct, opts, bed.worker);
                        agent.terminate();
                        w?
                    }
                };
                runs.insert(run, w);
            }
            let mut take = |run| runs.remove(&run).context("every run ran");
            r.limit.push(take(Run::Limit)?);
            r.tollgate.push(take(Run::Tollgate)?);
            r.pod_ip_installed.push(take(Run::PodIp)?);
        }
        // Paired: the agent on one node, its client to the ClusterIP and (next round) to the
        // pod IP, while the other node's client runs the limit; then the other way round.
        for (a, b) in [(h1, h2), (h2, h1)] {
            bed.cleanup()?;
            let mut agent = bed.agent(None, a, &source, &[]);
            for _ in 0..opts.pairs {
                r.paired
                    .push(wrk_pair((a.client, &bed.via), (b.client, &b.direct), opts)?);
                r.paired_pod_ip.push(wrk_pair(
                    (a.client, &a.direct),
                    (b.client, &b.direct),
                    opts,
                )?);
            }
            agent.terminate();
        }
        r.paired.finish(opts.pairs);
        r.paired_pod_ip.finish(opts.pairs);
        bed.cleanup()?;
        let mut agent = bed.agent(None, h1, &source, &[]);
        r.programs = program_times(client, &bed.via, opts)?;
        agent.terminate();
        cleanup(node)?;
        // Each run over the same round's limit.
        let ratio = |runs: &[Wrk]| {
            let v: Vec<f64> = runs
                .iter()
                .zip(&r.limit)
                .map(|(w, l)| w.requests_per_s / l.requests_per_s.max(1.0))
                .collect();
            Ratio::of(&v)
        };
        r.ratio = ratio(&r.tollgate);
        r.ratio_pod_ip = ratio(&r.pod_ip_installed);
        r.agent_ready_ms = median(&mut ready);
        r.agent_cpu_during_run_ms = median(&mut agent_cpu);
        r.tollgate_p99_ms = median(&mut r.tollgate.iter().map(|w| w.p99_ms).collect::<Vec<_>>());
        r.limit_p99_ms = median(&mut r.limit.iter().map(|w| w.p99_ms).collect::<Vec<_>>());
        eprintln!(
            "dataplane: {count} services: {:.3} ± {:.3} of the limit, p99 {:.2} ms (limit {:.2} ms); paired {:.4} ± {:.4}",
            r.ratio.mean,
            r.ratio.ci95,
            r.tollgate_p99_ms,
            r.limit_p99_ms,
            r.paired.ratio.mean,
            r.paired.ratio.ci95
        );
        results.push(r);
    }
    Ok((results, calibration))
}

/// ENLS + writer in this process, on maps pinned in a test-bed bpffs directory; with
/// `maglev_size: Some(M)`, `--lb-algorithm maglev` with tables of M entries.
pub fn programming(opts: &Options, maglev_size: Option<u32>) -> anyhow::Result<Programming> {
    let maglev = maglev_size.is_some();
    let maglev_size = maglev_size.unwrap_or(tollgate_common::lb::maglev::DEFAULT_SIZE);
    let services = opts.counts.iter().copied().max().unwrap_or(10_000);
    let cluster = Cluster::new(&ClusterSpec {
        pods_per_node: vec![1],
        cloud: false,
        ..Default::default()
    });
    let node = cluster.node("node1");
    let sizes = MapSizes {
        maglev: MapSizes::maglev_chunks(maglev_size),
        ..MapSizes::default()
    };
    let dp = Dataplane::load(&node.bpffs, &sizes).context("loading")?;
    let mut writer = Writer::new(LbMaps::open(dp.pins())?);
    writer.set_maglev(maglev);
    writer.set_maglev_size(maglev_size);
    let mut enls = Enls::new(EnlsConfig::new("node1"), EnlsMetrics::detached());
    let mut objects = cluster.base_objects();
    let mut services_objects = manifest_objects(
        services,
        opts.endpoints,
        &[("10.244.1.11".to_owned(), "node1".to_owned())],
    );
    if maglev {
        for (i, o) in services_objects
            .iter_mut()
            .filter(|o| o["kind"] == "Service")
            .enumerate()
        {
            o["spec"]["externalIPs"] = json!([external_ip(i)]);
        }
    }
    objects.extend(services_objects);
    for k in Kind::ALL {
        enls.handle(SourceEvent::ListBegin(k));
    }
    for o in objects {
        enls.handle(SourceEvent::Apply(to_object(o)?));
    }
    for k in Kind::ALL {
        enls.handle(SourceEvent::ListDone(k));
    }
    let update = enls.sync().context("no initial update")?;
    let start = Instant::now();
    for c in &update.services {
        writer
            .apply(c)
            .map_err(|e| anyhow::anyhow!("{}: {e}", c.key))?;
    }
    writer
        .set_service_cidrs(update.service_cidrs.as_deref().unwrap_or_default())
        .map_err(|e| anyhow::anyhow!("ServiceCIDRs: {e}"))?;
    let full_write_ms = start.elapsed().as_secs_f64() * 1e3;
    let how = if maglev {
        format!(" (maglev, M = {maglev_size})")
    } else {
        String::new()
    };
    eprintln!("dataplane: full write of {services} services{how}: {full_write_ms:.0} ms");

    let mut change = Vec::with_capacity(opts.changes);
    let mut write_only = Vec::with_capacity(opts.changes);
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let fillers = services.saturating_sub(1).max(1);
    let mut current: Vec<Vec<String>> = (0..fillers)
        .map(|i| (0..opts.endpoints).map(|j| ep_ip(i, j)).collect())
        .collect();
    for c in 0..opts.changes {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let i = (seed % fillers as u64) as usize;
        let j = ((seed >> 32) % opts.endpoints.max(1) as u64) as usize;
        current[i][j] = format!("10.{}.{}.{}", 64 + c / 65_536, (c / 256) % 256, c % 256);
        let [_, slice] = filler(i, &current[i]);
        let obj = to_object(slice)?;
        let start = Instant::now();
        enls.handle(SourceEvent::Apply(obj));
        let update = enls.sync().context("a change without an update")?;
        let w = Instant::now();
        for c in &update.services {
            writer
                .apply(c)
                .map_err(|e| anyhow::anyhow!("{}: {e}", c.key))?;
        }
        write_only.push(micros(w.elapsed()));
        change.push(micros(start.elapsed()));
    }
    let mut add = Vec::with_capacity(opts.changes);
    for c in 0..opts.changes {
        let i = 20_000 + c;
        let ips: Vec<String> = (0..opts.endpoints)
            .map(|j| {
                format!(
                    "10.{}.{}.{}",
                    32 + c / 4096,
                    (c / 16) % 256,
                    (c % 16) * 16 + j
                )
            })
            .collect();
        let mut svc = filler(i, &ips);
        svc[0]["spec"]["clusterIP"] = json!(format!("10.98.{}.{}", c / 250, c % 250 + 1));
        if maglev {
            svc[0]["spec"]["externalIPs"] = json!([external_ip(i)]);
        }
        let [s, e] = svc;
        let (s, e) = (to_object(s)?, to_object(e)?);
        let start = Instant::now();
        enls.handle(SourceEvent::Apply(s));
        enls.handle(SourceEvent::Apply(e));
        let update = enls.sync().context("an added service without an update")?;
        for c in &update.services {
            writer
                .apply(c)
                .map_err(|e| anyhow::anyhow!("{}: {e}", c.key))?;
        }
        add.push(micros(start.elapsed()));
    }
    // Every service port and backend counted once: each has its series (the largest scrape).
    {
        let maps = writer.maps();
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let one = tollgate_common::lb::stats::Counters {
            connections: 1,
            ..Default::default()
        };
        let ones = || aya::maps::PerCpuValues::try_from(vec![one; cpus]);
        let ids: Vec<u32> = maps.svcinfo.keys().filter_map(Result::ok).collect();
        for id in ids {
            maps.svcstat.set(id, ones()?, 0)?;
        }
        // Backends past tg_bestat_v1's size have no counters.
        let ids: Vec<u32> = maps
            .backend
            .keys()
            .filter_map(Result::ok)
            .filter(|id| *id < tollgate_common::lb::stats::CAPACITY)
            .collect();
        for id in ids {
            maps.bestat.set(id, ones()?, 0)?;
        }
    }
    let metrics_scrape: Vec<Scrape> = [TrafficMetrics::Services, TrafficMetrics::Backends]
        .into_iter()
        .map(|level| scrape(dp.pins(), level))
        .collect();
    for m in &metrics_scrape {
        eprintln!(
            "dataplane: /metrics traffic counters ({}) over {} services{how}: {:.1} ms, {:.0} KiB",
            m.level,
            services + opts.changes,
            m.ms,
            m.kib
        );
    }
    drop(writer);
    drop(dp);
    let p = Programming {
        services,
        endpoints_per_service: opts.endpoints,
        full_write_ms,
        endpoint_change_us: summarize(&mut change),
        endpoint_change_write_us: summarize(&mut write_only),
        service_add_us: summarize(&mut add),
        metrics_scrape,
        maglev,
    };
    eprintln!(
        "dataplane: one change at {services}{how}: p50 {:.1} µs p99 {:.1} µs (write p99 {:.1} µs); add p99 {:.1} µs",
        p.endpoint_change_us.p50,
        p.endpoint_change_us.p99,
        p.endpoint_change_write_us.p99,
        p.service_add_us.p99
    );
    Ok(p)
}

pub fn run(opts: &Options, out_dir: &Path, markdown: &Path) -> anyhow::Result<Report> {
    let commit = super::commit();
    // The programming measurement changes filler Services: the target alone has none.
    if opts.counts.iter().all(|&c| c < 2) {
        bail!(
            "--services: at least one count must be 2 or more (the target plus fillers to change)"
        );
    }
    let wrk_version = tool_version("wrk", "-v");
    let workdir: PathBuf =
        std::env::temp_dir().join(format!("tg-bench-dataplane-{}", std::process::id()));
    std::fs::create_dir_all(&workdir)?;
    let traffic = traffic(opts, &workdir);
    let _ = std::fs::remove_dir_all(&workdir);
    let (counts, calibration) = traffic?;
    let report = Report {
        machine: super::machine(),
        commit,
        wrk: wrk_version,
        counts,
        programming: programming(opts, None)?,
        programming_maglev: programming(opts, Some(tollgate_common::lb::maglev::DEFAULT_SIZE))?,
        calibration,
    };
    write(&report, opts, out_dir, markdown)?;
    Ok(report)
}

fn write(r: &Report, opts: &Options, out_dir: &Path, markdown: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out_dir)?;
    std::fs::write(
        out_dir.join("dataplane.json"),
        serde_json::to_string_pretty(&json!(r))?,
    )?;
    let series = |name: &str, f: &dyn Fn(&CountResult) -> f64| {
        (
            name.to_owned(),
            r.counts
                .iter()
                .map(|c| (c.services as f64, f(c)))
                .collect::<Vec<_>>(),
        )
    };
    std::fs::write(
        out_dir.join("dataplane-rate.svg"),
        plot::lines(
            "pod → ClusterIP through Tollgate, as a fraction of pod → pod IP (short connections)",
            "services",
            "fraction of the limit",
            &[
                series("Tollgate", &|c| c.ratio.mean),
                series("pod IP, Tollgate installed", &|c| c.ratio_pod_ip.mean),
                series("Tollgate, paired (both nodes at once)", &|c| {
                    c.paired.ratio.mean
                }),
                series("pod IP, Tollgate installed, paired", &|c| {
                    c.paired_pod_ip.ratio.mean
                }),
                series("hooks only (programs return at once), paired", &|_| {
                    r.calibration.hooks_only.ratio.mean
                }),
                series("goal 0.97", &|_| 0.97),
                series("limit", &|_| 1.0),
            ],
            true,
        ),
    )?;
    std::fs::write(
        out_dir.join("dataplane-p99.svg"),
        plot::lines(
            "p99 latency of a short HTTP request (wrk, Connection: close)",
            "services",
            "milliseconds",
            &[
                series("Tollgate (ClusterIP)", &|c| c.tollgate_p99_ms),
                series("limit (pod IP, nothing installed)", &|c| c.limit_p99_ms),
            ],
            true,
        ),
    )?;
    let (p, m) = (&r.programming, &r.programming_maglev);
    std::fs::write(
        out_dir.join("dataplane-programming.svg"),
        plot::bars(
            &format!(
                "one service change at {}k services → maps written",
                p.services / 1000
            ),
            "microseconds",
            &[
                ("endpoint p50".into(), p.endpoint_change_us.p50),
                ("endpoint p99".into(), p.endpoint_change_us.p99),
                ("add service p50".into(), p.service_add_us.p50),
                ("add service p99".into(), p.service_add_us.p99),
                ("maglev: endpoint p99".into(), m.endpoint_change_us.p99),
                ("maglev: add service p99".into(), m.service_add_us.p99),
            ],
            Some(("goal p99 < 1 ms".into(), 1000.0)),
        ),
    )?;
    let mut rows = String::new();
    for c in &r.counts {
        let errors: u64 = c
            .tollgate
            .iter()
            .chain(&c.limit)
            .chain(&c.pod_ip_installed)
            .chain(&c.paired.a)
            .chain(&c.paired.b)
            .chain(&c.paired_pod_ip.a)
            .chain(&c.paired_pod_ip.b)
            .map(|w| w.errors)
            .sum();
        rows.push_str(&format!(
            "| {} | {:.0} | {:.0} | **{:.3}** ± {:.3} | {:.3} | {:.3} ± {:.3} | {:.2} ms | {:.2} ms | {} | {:.0} ms | {:.1} MiB | {:.0} ms |\n",
            c.services,
            rate(&c.limit),
            rate(&c.tollgate),
            c.ratio.mean,
            c.ratio.ci95,
            c.ratio.lower_median,
            c.ratio_pod_ip.mean,
            c.ratio_pod_ip.ci95,
            c.limit_p99_ms,
            c.tollgate_p99_ms,
            errors,
            c.agent_ready_ms,
            c.agent_peak_rss_mib,
            c.agent_cpu_during_run_ms,
        ));
    }
    let mut paired_rows = String::new();
    for c in &r.counts {
        let (p, q) = (&c.paired, &c.paired_pod_ip);
        paired_rows.push_str(&format!(
            "| {} | {:.0} | {:.0} | **{:.4}** ± {:.4} | {:.4} / {:.4} | {:.4} ± {:.4} | {:.4} / {:.4} |\n",
            c.services,
            rate(&p.b),
            rate(&p.a),
            p.ratio.mean,
            p.ratio.ci95,
            p.a_on_node1.mean,
            p.a_on_node2.mean,
            q.ratio.mean,
            q.ratio.ci95,
            q.a_on_node1.mean,
            q.a_on_node2.mean,
        ));
    }
    let mut calibration_rows = String::new();
    for (what, meaning, p) in [
        (
            "limit / limit",
            "the method itself, nothing installed on either node: the halves are the nodes' own difference, which the mean over both cancels",
            &r.calibration.same,
        ),
        (
            "hooks only / limit",
            "the pod-IP traffic through Tollgate's hooks with programs that return at once: what the kernel's hooks cost by themselves, the floor under any program there",
            &r.calibration.hooks_only,
        ),
        (
            "peer record on / off",
            "Tollgate with its defaults over Tollgate with `--socket-lb-peer=false`, both to the ClusterIP: what the getpeername record costs",
            &r.calibration.peer_record,
        ),
    ] {
        calibration_rows.push_str(&format!(
            "| {what} | **{:.4}** ± {:.4} | {:.4} / {:.4} | {meaning} |\n",
            p.ratio.mean, p.ratio.ci95, p.a_on_node1.mean, p.a_on_node2.mean,
        ));
    }
    let mut programs = String::from(
        "| services | program | runs per request | ns per run | ns per request |\n|---|---|---|---|---|\n",
    );
    for c in &r.counts {
        for p in &c.programs {
            programs.push_str(&format!(
                "| {} | `{}` | {:.1} | {:.0} | {:.0} |\n",
                c.services, p.program, p.runs_per_request, p.ns_per_run, p.ns_per_request,
            ));
        }
        let total: f64 = c.programs.iter().map(|p| p.ns_per_request).sum();
        programs.push_str(&format!(
            "| {} | **all** | | | **{total:.0}** |\n",
            c.services
        ));
    }
    let cpu = |runs: &dyn Fn(&CountResult) -> &Vec<Wrk>, f: &dyn Fn(&Wrk) -> f64| {
        let mut v: Vec<f64> = r
            .counts
            .iter()
            .flat_map(|c| runs(c).iter().map(f))
            .collect();
        median(&mut v)
    };
    let body = format!(
        r#"## Service dataplane (issue: eBPF service dataplane)

Measured by `cargo xtask bench dataplane` on {machine} (release build of {commit}). A client pod runs
`{wrk_version}` with `-t1 -c{conns} -d{dur}s -H 'Connection: close'` (every request a new TCP
connection) against nginx (1 worker, `return 200`) in a second pod on the same node.

**Sequential** (node1 only; the issue's measurement as written). Each of {rounds} rounds per
row measures the **limit** — the same traffic to the pod IP with nothing installed
(`tollgate cleanup`) — and, with the agent started with that many Services (the target plus
fillers with {eps} endpoints each), the traffic to the target's **ClusterIP**, and the limit's
own traffic (pod IP, no Service) with the agent installed — what Tollgate costs traffic it does
not translate. The order reverses from round to round (each run leaves its TIME_WAIT entries
to the next). Ratio: the run's rate over the same round's limit, averaged over the rounds, ±
the half-width of the 95 % confidence interval of that mean (Student's t over the rounds); the
lower median of the per-round ratios, what the reports before 2026-12-01 gave, is beside it.
The per-round ratios' standard deviation is {seq_sd} in this run (1–5 % in earlier runs,
depending on the machine's state; back-to-back runs of the limit alone differ by about 2 %),
which is what bounds a row's confidence interval. wrk and nginx share
the 2 cores, so the absolute rates are this machine's, not a NIC's. CPU per run (medians over
every row, in % of one core): wrk {lc:.0} % and nginx {ls:.0} % in the limit runs, {tc:.0} %
and {ts:.0} % through Tollgate. wrk's share includes the kernel work of its system calls, such
as delivering its packets to nginx; whichever of the two is near 100 % sets the rate, so per-
connection work on that side — connect() and its packets — is what these ratios measure.

| services | limit req/s | Tollgate req/s | ratio (goal ≥ 0.97) | lower median | pod IP, Tollgate installed | limit p99 | Tollgate p99 | errors | agent start → ready | agent peak RSS | agent CPU during the run |
|---|---|---|---|---|---|---|---|---|---|---|---|
{rows}
![rate](tests/benchmarks/dataplane-rate.svg)

**Paired** (both nodes at once). Node2 is a copy of node1 (a client pod, an nginx pod; the
target Service has internalTrafficPolicy Local, so each node's pods reach their own nginx
through the ClusterIP). Each round runs wrk on both nodes at the same time: on one node through
Tollgate (agent running there, started with that many Services), on the other node the limit
(nothing installed there). The machine's state, which moves whole runs by several per cent,
then hits both arms alike and drops out of their ratio: the per-round ratios' standard
deviation is {paired_sd} in this run (calibration included). Both CPUs are busy, so the ratio is the relative CPU cost of a request with both ends
of the connection counted, which is stricter than the sequential runs, where wrk's side alone
sets the rate. {pairs} rounds with the agent on node1, then {pairs} with it on node2 (the columns
"A on node1 / node2"): the nodes' own difference cancels in the mean over both. Each round
measures the ClusterIP and, in the next wrk pair, the pod IP through the same agent. Per arm,
the paired rates come out higher than a sequential run's, not half of it: in a sequential run
wrk and nginx together use {busy:.0} % of the two cores' 200 % (limit runs), and on this VM going idle and being woken again (halt exits,
interrupts between the CPUs) is probably what costs the difference; with both CPUs always busy
it goes away.

| services | limit req/s (paired) | Tollgate req/s (paired) | Tollgate / limit, paired | A on node1 / node2 | pod IP, Tollgate installed / limit, paired | A on node1 / node2 |
|---|---|---|---|---|---|---|
{paired_rows}
Calibration, paired the same way and measured once (target Service alone):

| arms A / B | ratio | A on node1 / node2 | what it shows |
|---|---|---|---|
{calibration_rows}
![p99](tests/benchmarks/dataplane-p99.svg)

Programming, in process on real pinned maps (ENLS engine + map writer, {svc} Services × {eps}
endpoints):

| what | measured | goal / for scale |
|---|---|---|
{prog}
Rows "maglev:": the same with `--lb-algorithm maglev` and an externalIP on every Service, so
every service port has a 4093-entry Maglev table, filled again on each endpoint change.

![programming](tests/benchmarks/dataplane-programming.svg)

Why flat: a pod's connect() to a ClusterIP is translated once, in the cgroup hook, by a few
hash lookups whatever the number of Services; the socket's reverse translation goes into the
array slot of its socket cookie (claimed by setting the slot's bit in an 8 KiB bitmap with one
atomic fetch-or, given back by a sock_release hook when the socket closes; the socket's own
storage only when another open socket holds that slot), so there is no table to fill or
evict. The packets then go straight
to the pod with no per-packet NAT. The pod-side TC program decides these packets (TCP
segments other than a bare SYN) from five header fields and one array slot (`tg_ctmark_v1`:
their sources never had a per-packet flow), without the full parse or the conntrack lookup
(≈ 19 ns per run under `BPF_PROG_TEST_RUN`, see "Programs: per-packet cost" below).

Where the rest goes: the paired tables split it. "hooks only / limit" is what the kernel's
hooks cost with programs that return at once (the cgroup socket hooks, and TCX on every pod
packet); the gap from there to "pod IP, Tollgate installed" is what Tollgate's programs cost
traffic they do not translate (the pod-side TC program on every pod packet, the release hook,
connect4's frontend lookup); the gap from that to the ClusterIP column is what translating
adds (the backend choice and the reverse record that lets getpeername() show the service
address, as kube-proxy's DNAT does; "peer record on / off" is that record's share, and
operators who do not need it can turn it off with `--socket-lb-peer=false`). None of it depends
on the number of Services. An older profile, by hand (not by this bench) on 2026-11-30 at
89d5cf4 with `perf record -e cpu-clock -a` (a software clock: this VM has no hardware counters)
over 20-second sequential runs: wrk's thread is the bottleneck there (≈ 97 % of a core while
the machine is ≈ 25 % idle), and the hooks cost it ≈ 0.62–0.65 µs of its ≈ 33 µs per request,
the same with and without translation: the pod-side TC program ≈ 0.32 µs (most of the ten pod
packets are handled on wrk's CPU), the release hook with its cgroup wrapper ≈ 0.12–0.14,
connect4 with its wrapper ≈ 0.08–0.12, the TCX hook in the receive path ≈ 0.05–0.08,
socket-cookie generation ≈ 0.03. A software clock samples nothing while interrupts are off,
so such a profile under-counts; the paired runs measure the whole cost instead.

Kernel program time per request, from one more Tollgate run per row with the kernel's BPF
run-time statistics on (`BPF_ENABLE_STATS`, held only for that run). Each program run then costs
≈ 40–65 ns more (measured by hand, not by this bench, on programs that return at once),
included below. Every request is
one connection: connect, nginx's accept (which runs the getpeername hook), ≈ 10 pod packets,
and two socket closes (the sock_release hook).

{programs}
Raw data: `tests/benchmarks/dataplane.json`."#,
        machine = r.machine,
        commit = r.commit,
        lc = cpu(&|c| &c.limit, &|w| w.client_cpu_pct),
        ls = cpu(&|c| &c.limit, &|w| w.server_cpu_pct),
        tc = cpu(&|c| &c.tollgate, &|w| w.client_cpu_pct),
        ts = cpu(&|c| &c.tollgate, &|w| w.server_cpu_pct),
        busy = cpu(&|c| &c.limit, &|w| w.client_cpu_pct + w.server_cpu_pct),
        seq_sd = sd_range(r.counts.iter().flat_map(|c| [c.ratio, c.ratio_pod_ip])),
        paired_sd = sd_range(
            r.counts
                .iter()
                .flat_map(|c| [c.paired.ratio, c.paired_pod_ip.ratio])
                .chain([
                    r.calibration.same.ratio,
                    r.calibration.hooks_only.ratio,
                    r.calibration.peer_record.ratio,
                ])
        ),
        wrk_version = if r.wrk.is_empty() { "wrk" } else { &r.wrk },
        conns = opts.connections,
        dur = opts.duration_s,
        rounds = opts.rounds,
        pairs = opts.pairs,
        eps = opts.endpoints,
        svc = p.services,
        prog = programming_rows(p) + &programming_rows(m),
    );
    super::update_section(markdown, "dataplane", &body)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arms_parse_with_their_binary_and_arguments_and_reject_the_rest() {
        assert_eq!("limit".parse::<Arm>(), Ok(Arm::Limit));
        assert_eq!("floor".parse::<Arm>(), Ok(Arm::Floor));
        assert_eq!(
            "service,bin=/tmp/t,arg=--socket-lb-peer=false,arg=--xdp-mode=off".parse::<Arm>(),
            Ok(Arm::Agent {
                service: true,
                bin: Some(PathBuf::from("/tmp/t")),
                args: vec!["--socket-lb-peer=false".into(), "--xdp-mode=off".into()],
            })
        );
        assert_eq!(
            "pod-ip".parse::<Arm>(),
            Ok(Arm::Agent {
                service: false,
                bin: None,
                args: vec![],
            })
        );
        for bad in ["", "svc", "limit,arg=x", "service,foo", "pod-ip,bin"] {
            assert!(bad.parse::<Arm>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ratio_is_the_mean_with_its_confidence_interval_and_the_lower_median() {
        let r = Ratio::of(&[0.96, 0.98, 1.00, 0.98]);
        assert!((r.mean - 0.98).abs() < 1e-9);
        // sd = 0.01633 over 4 rounds, t(3) = 3.182.
        assert!(
            (r.ci95 - 3.182 * 0.016_330 / 2.0).abs() < 1e-5,
            "{}",
            r.ci95
        );
        assert!((r.lower_median - 0.98).abs() < 1e-9);
        assert!((r.sd - 0.016_330).abs() < 1e-6, "{}", r.sd);
        let r = Ratio::of(&[0.95, 0.99]);
        assert!((r.lower_median - 0.95).abs() < 1e-9);
        assert!(Ratio::of(&[0.97]).ci95.is_infinite());
        assert_eq!(Ratio::of(&[]).mean, 0.0);
    }

    #[test]
    fn parses_wrk_latency_reports() {
        let text = "Running 8s test @ http://10.97.0.10/\n  1 threads and 16 connections\n  \
            Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   1.02ms  300.00us  \
            12.00ms   90.00%\n  Latency Distribution\n     50%  0.98ms\n     75%    1.10ms\n     \
            90%    1.30ms\n     99%    2.50ms\n  120000 requests in 8.00s, 20.00MB read\n  \
            Socket errors: connect 0, read 3, write 0, timeout 1\nRequests/sec:  15000.12\n\
            Transfer/sec:      2.50MB\n";
        let w = parse_wrk(text).unwrap();
        assert_eq!(w.requests_per_s, 15000.12);
        assert_eq!(w.p50_ms, 0.98);
        assert_eq!(w.p99_ms, 2.5);
        assert_eq!(w.requests, 120000);
        assert_eq!(w.errors, 4);
        assert_eq!(parse_ms("850.00us"), Some(0.85));
        assert_eq!(parse_ms("1.20s"), Some(1200.0));
        assert!(parse_wrk("garbage").is_err());
    }
}
