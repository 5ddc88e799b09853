//! Benchmarks behind `cargo xtask bench`: each suite measures, writes raw results (JSON) and
//! plots (SVG) to `tests/benchmarks/`, and rewrites its own section of BENCHMARKS.md.

pub mod dataplane;
pub mod enls;
pub mod floor;
pub mod metadata;
pub mod plot;
pub mod programs;

use std::{path::Path, time::Duration};

/// The machine a run happened on, printed with every result.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cores} cores, {:.0} GiB RAM, Linux {}",
        mem_kib as f64 / 1024.0 / 1024.0,
        kernel.trim()
    )
}

/// The commit a run measured (`git rev-parse --short HEAD`, "+changes" when the tree differs
/// from it; "unknown" outside a git checkout).
pub fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(rev)
            if git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty()) =>
        {
            format!("{rev}+changes")
        }
        Some(rev) => rev,
        None => "unknown".into(),
    }
}

/// Sorted-sample statistics.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

pub fn summarize(samples: &mut [f64]) -> Summary {
    samples.sort_by(|a, b| a.total_cmp(b));
    let n = samples.len();
    let at = |q: f64| {
        if n == 0 {
            return 0.0;
        }
        let idx = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
        samples[idx]
    };
    Summary {
        n,
        min: samples.first().copied().unwrap_or(0.0),
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: samples.last().copied().unwrap_or(0.0),
        mean: if n == 0 {
            0.0
        } else {
            samples.iter().sum::<f64>() / n as f64
        },
    }
}

pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Peak and current resident set size of a process, in bytes (from /proc/<pid>/status).
pub fn rss_of(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|kib| kib * 1024)
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// Replaces the text between `<!-- bench:NAME:begin -->` and `<!-- bench:NAME:end -->` in
/// `file` (appending the section if it is not there yet).
pub fn update_section(file: &Path, name: &str, body: &str) -> std::io::Result<()> {
    let begin = format!("<!-- bench:{name}:begin -->");
    let end = format!("<!-- bench:{name}:end -->");
    let text = std::fs::read_to_string(file).unwrap_or_else(|_| "# Benchmarks\n".into());
    let section = format!("{begin}\n{}\n{end}", body.trim_end());
    let new = match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if e > b => format!("{}{section}{}", &text[..b], &text[e + end.len()..]),
        _ => format!("{}\n\n{section}\n", text.trim_end()),
    };
    std::fs::write(file, new)
}

/// The first line a tool prints for its version flag (empty when it cannot be run).
pub fn tool_version(tool: &str, flag: &str) -> String {
    std::process::Command::new(tool)
        .arg(flag)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default()
}
