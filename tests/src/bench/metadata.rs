//! Metadata proxy benchmark: k8s-metadata-proxy's published run — `ab -n 200000 -c 200
//! -H 'Metadata-Flavor: Google'` on the token path — against the standalone `tollgate
//! metadata-proxy` in front of a fast local upstream (the metadata-server double), compared in
//! the same run with the same load sent straight to the upstream; then 1,000 concurrent
//! connections. Everything runs in a test-bed network namespace on its loopback.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, bail};
use serde_json::json;

use super::{plot, rss_of};
use crate::{
    BgProcess, Netns, Prefix,
    process::Placement,
    tools::{testbed_bin, tollgate_bin},
};

#[derive(Debug, Clone)]
pub struct Options {
    pub requests: u64,
    pub concurrency: u64,
    pub wide_requests: u64,
    pub wide_concurrency: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            requests: 200_000,
            concurrency: 200,
            wide_requests: 100_000,
            wide_concurrency: 1_000,
        }
    }
}

const TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Ab {
    pub requests_per_s: f64,
    pub complete: u64,
    pub failed: u64,
    pub non_2xx: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// ab stopped on a socket error (a reset, a refused connection).
    pub socket_errors: bool,
}

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub machine: String,
    pub ab: String,
    pub direct: Ab,
    pub proxied: Ab,
    pub ratio: f64,
    pub wide: Ab,
    pub proxy_peak_rss_mib: f64,
    pub proxy_peak_rss_after_wide_mib: f64,
}

fn parse_ab(text: &str, stderr: &str) -> anyhow::Result<Ab> {
    let field = |prefix: &str| -> Option<&str> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .map(|l| l[prefix.len()..].trim())
    };
    let first_num = |s: &str| -> Option<f64> { s.split_whitespace().next()?.parse().ok() };
    let pct = |p: &str| -> Option<f64> {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(p))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
    };
    let requests_per_s = field("Requests per second:")
        .and_then(first_num)
        .with_context(|| format!("no rate in ab output:\n{text}\n{stderr}"))?;
    Ok(Ab {
        requests_per_s,
        complete: field("Complete requests:")
            .and_then(first_num)
            .unwrap_or(0.0) as u64,
        failed: field("Failed requests:").and_then(first_num).unwrap_or(0.0) as u64,
        non_2xx: field("Non-2xx responses:")
            .and_then(first_num)
            .unwrap_or(0.0) as u64,
        p50_ms: pct("50%").unwrap_or(0.0),
        p99_ms: pct("99%").unwrap_or(0.0),
        max_ms: pct("100%").unwrap_or(0.0),
        socket_errors: stderr.contains("apr_socket") || stderr.contains("reset"),
    })
}

fn ab(at: Placement<'_>, url: &str, n: u64, c: u64) -> anyhow::Result<Ab> {
    let mut cmd = Command::new("ab");
    cmd.args(["-q", "-r", "-s", "10", "-H", "Metadata-Flavor: Google"])
        .arg("-n")
        .arg(n.to_string())
        .arg("-c")
        .arg(c.to_string())
        .arg(url);
    let out = at.output(cmd);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let r = parse_ab(&text, &stderr)?;
    eprintln!(
        "metadata: ab -n {n} -c {c} {url}: {:.0} req/s, {} failed, {} non-2xx, p99 {} ms{}",
        r.requests_per_s,
        r.failed,
        r.non_2xx,
        r.p99_ms,
        if r.socket_errors {
            ", socket errors"
        } else {
            ""
        }
    );
    Ok(r)
}

pub fn run(opts: &Options, out_dir: &Path, markdown: &Path) -> anyhow::Result<Report> {
    let prefix = Prefix::new();
    let ns = Netns::new(&prefix.child("mdbench"));
    // Short connections by the hundred thousand: reuse TIME_WAIT ports, deep accept queues.
    ns.sysctl("net.ipv4.ip_local_port_range", "1024 65000");
    ns.sysctl("net.ipv4.tcp_tw_reuse", "1");
    ns.sysctl("net.core.somaxconn", "8192");
    ns.sysctl("net.ipv4.tcp_max_syn_backlog", "8192");
    let at = Placement::new(&ns, None);

    let mut double = Command::new(testbed_bin());
    double.args(["metadata-double", "--quiet", "--listen", "127.0.0.1:8080"]);
    let mut double = BgProcess::spawn(&prefix.child("double"), at, double);
    double.wait_for_log("serving metadata", Duration::from_secs(5));
    let mut proxy = Command::new(tollgate_bin());
    proxy
        .args(["metadata-proxy", "--listen", "127.0.0.1:988"])
        .args(["--upstream", "http://127.0.0.1:8080"])
        .args(["--metrics-addr", "127.0.0.1:989"])
        .env("TOLLGATE_LOG", "warn,tollgate=info");
    let mut proxy = BgProcess::spawn(&prefix.child("proxy"), at, proxy);
    proxy.wait_for_log("metadata proxy listening", Duration::from_secs(10));

    let direct_url = format!("http://127.0.0.1:8080{TOKEN_PATH}");
    let proxy_url = format!("http://127.0.0.1:988{TOKEN_PATH}");
    // Warm-up, then the published run through the proxy and straight to the upstream.
    ab(at, &proxy_url, 2_000, 50)?;
    let proxied = ab(at, &proxy_url, opts.requests, opts.concurrency)?;
    let rss = rss_of(proxy.pid()).map(|(hwm, _)| hwm).unwrap_or(0);
    let direct = ab(at, &direct_url, opts.requests, opts.concurrency)?;
    let wide = ab(at, &proxy_url, opts.wide_requests, opts.wide_concurrency)?;
    let rss_wide = rss_of(proxy.pid()).map(|(hwm, _)| hwm).unwrap_or(0);
    if !proxy.alive() {
        bail!("the proxy died:\n{}", proxy.logs());
    }
    let ab_version = super::tool_version("ab", "-V");
    let report = Report {
        machine: super::machine(),
        ab: ab_version,
        ratio: proxied.requests_per_s / direct.requests_per_s.max(1.0),
        direct,
        proxied,
        wide,
        proxy_peak_rss_mib: rss as f64 / 1048576.0,
        proxy_peak_rss_after_wide_mib: rss_wide as f64 / 1048576.0,
    };
    drop(proxy);
    drop(double);
    write(&report, opts, out_dir, markdown)?;
    Ok(report)
}

fn write(r: &Report, opts: &Options, out_dir: &Path, markdown: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out_dir)?;
    std::fs::write(
        out_dir.join("metadata.json"),
        serde_json::to_string_pretty(&json!(r))?,
    )?;
    std::fs::write(
        out_dir.join("metadata-rate.svg"),
        plot::bars(
            &format!(
                "ab -n {} -c {} on the token path (requests per second)",
                opts.requests, opts.concurrency
            ),
            "requests per second",
            &[
                ("k8s-metadata-proxy (published, 0.5 CPU)".into(), 794.0),
                ("Tollgate proxy".into(), r.proxied.requests_per_s),
                ("upstream directly".into(), r.direct.requests_per_s),
            ],
            Some(("goal 8,000".into(), 8000.0)),
        ),
    )?;
    let verdict = |ok: bool| if ok { "met" } else { "**not met**" };
    let body = format!(
        r#"## Metadata proxy (issue: metadata concealment)

Measured by `cargo xtask bench metadata` on {machine} (release build). In a test-bed network
namespace, on its loopback: the metadata-server double (`tollgate-testbed metadata-double`,
one tokio worker) as the fast local upstream, the standalone `tollgate metadata-proxy` (GCE
rules, defaults: one tokio worker, at most 32 upstream connections, at most 64 connections of
one client address served at once while its others wait accepted) in front of it, and
`{ab}` — all sharing the 2 cores. Every request is a new connection (ab speaks HTTP/1.0 without keep-alive); the proxy keeps a pool of
keep-alive connections to the upstream.

| run | req/s | failed | non-2xx | p50 | p99 | max | goal |
|---|---|---|---|---|---|---|---|
| `ab -n {n} -c {c}` through the proxy | **{pr:.0}** | {pf} | {pn} | {p50} ms | {p99} ms | {pmax} ms | ≥ 8,000 req/s, 0 failed: {g1} |
| the same, straight to the upstream | {dr:.0} | {df} | {dn} | {d50} ms | {d99} ms | {dmax} ms | — |
| proxy / upstream | **{ratio:.2}** | | | | | | ≥ 0.5: {g2} |
| `ab -n {wn} -c {wc}` through the proxy | {wr:.0} | {wf} | {wnx} | {w50} ms | {w99} ms | {wmax} ms | no resets: {g3} |

Proxy peak RSS (VmHWM) after the c={c} run: **{rss:.1} MiB** (goal ≤ 16 MiB: {g4}); after the
c={wc} run: {rss2:.1} MiB.

![rate](tests/benchmarks/metadata-rate.svg)

For scale, k8s-metadata-proxy's README reports 794 req/s at 500m CPU (with the real GCE
metadata server's latency included, on other hardware), and connection resets above 200
concurrent connections. Raw data: `tests/benchmarks/metadata.json`."#,
        machine = r.machine,
        ab = if r.ab.is_empty() { "ab" } else { &r.ab },
        n = opts.requests,
        c = opts.concurrency,
        wn = opts.wide_requests,
        wc = opts.wide_concurrency,
        pr = r.proxied.requests_per_s,
        pf = r.proxied.failed,
        pn = r.proxied.non_2xx,
        p50 = r.proxied.p50_ms,
        p99 = r.proxied.p99_ms,
        pmax = r.proxied.max_ms,
        dr = r.direct.requests_per_s,
        df = r.direct.failed,
        dn = r.direct.non_2xx,
        d50 = r.direct.p50_ms,
        d99 = r.direct.p99_ms,
        dmax = r.direct.max_ms,
        ratio = r.ratio,
        wr = r.wide.requests_per_s,
        wf = r.wide.failed,
        wnx = r.wide.non_2xx,
        w50 = r.wide.p50_ms,
        w99 = r.wide.p99_ms,
        wmax = r.wide.max_ms,
        rss = r.proxy_peak_rss_mib,
        rss2 = r.proxy_peak_rss_after_wide_mib,
        g1 = verdict(r.proxied.requests_per_s >= 8000.0 && r.proxied.failed == 0),
        g2 = verdict(r.ratio >= 0.5),
        g3 = verdict(!r.wide.socket_errors && r.wide.failed == 0),
        g4 = verdict(r.proxy_peak_rss_mib <= 16.0),
    );
    super::update_section(markdown, "metadata", &body)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ab_reports() {
        let text = "Concurrency Level:      200\nTime taken for tests:   10.1 seconds\n\
            Complete requests:      200000\nFailed requests:        0\nNon-2xx responses:      3\n\
            Requests per second:    19801.98 [#/sec] (mean)\n\
            Percentage of the requests served within a certain time (ms)\n  50%      9\n  \
            99%     21\n 100%   1033 (longest request)\n";
        let r = parse_ab(text, "").unwrap();
        assert_eq!(r.requests_per_s, 19801.98);
        assert_eq!((r.complete, r.failed, r.non_2xx), (200000, 0, 3));
        assert_eq!((r.p50_ms, r.p99_ms, r.max_ms), (9.0, 21.0, 1033.0));
        assert!(!r.socket_errors);
        assert!(parse_ab("", "apr_socket_recv: Connection reset by peer (104)").is_err());
    }
}
