//! The task that feeds the engine from the sources and hands updates to subscribers (the
//! dataplane writer, the metadata proxy's identity index, `tollgate enls --watch`).

use std::{sync::Arc, time::Duration};

use tokio::sync::{mpsc, watch};

use super::{Enls, SourceEvent, Update};

/// Events drained in one go before a sync: a burst becomes one revision, while a flood cannot
/// postpone syncing for long.
const MAX_BATCH: usize = 4096;

/// Where the engine stands, for health, readiness and `--stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnlsStatus {
    /// Every source has listed once and the first update went out.
    pub synced: bool,
    pub revision: u64,
    pub api_events: u64,
    pub services: usize,
}

/// Runs until every event sender is gone. Each subscriber receives every update, in order;
/// a slow subscriber slows the engine (bounded channels) rather than losing updates.
pub async fn run(
    mut engine: Enls,
    mut events: mpsc::Receiver<SourceEvent>,
    subscribers: Vec<mpsc::Sender<Arc<Update>>>,
    status: watch::Sender<EnlsStatus>,
) -> Enls {
    let mut subscribers = subscribers;
    while let Some(event) = events.recv().await {
        engine.handle(event);
        for _ in 0..MAX_BATCH {
            match events.try_recv() {
                Ok(event) => engine.handle(event),
                Err(_) => break,
            }
        }
        if let Some(update) = engine.sync() {
            tracing::debug!(
                revision = update.revision,
                services = update.services.len(),
                pods = update.pods.len(),
                "node-local state changed"
            );
            let update = Arc::new(update);
            let mut alive = Vec::with_capacity(subscribers.len());
            for sub in subscribers.drain(..) {
                if sub.send(update.clone()).await.is_ok() {
                    alive.push(sub);
                }
            }
            subscribers = alive;
        }
        let snapshot = EnlsStatus {
            synced: engine.revision() > 0,
            revision: engine.revision(),
            api_events: engine.api_events(),
            services: engine.services().count(),
        };
        status.send_if_modified(|s| {
            let changed = *s != snapshot;
            *s = snapshot;
            changed
        });
    }
    engine
}

/// CPU time (user + system) and resident set size of this process, from /proc/self.
pub fn process_usage() -> Option<(Duration, u64)> {
    usage_from("/proc/self/stat")
}

/// The same for another process (benchmarks watch the agent with it).
pub fn process_usage_of(pid: u32) -> Option<(Duration, u64)> {
    usage_from(&format!("/proc/{pid}/stat"))
}

fn usage_from(path: &str) -> Option<(Duration, u64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based) → 11 and 12 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()?
        .max(1);
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
    Some((Duration::from_millis(ticks * 1000 / hz), rss_pages * page))
}

/// Prints a line per second like kpng's `--stats`: time, API events, revisions, CPU, RSS, and
/// how many revisions the events became.
pub async fn print_stats(mut status: watch::Receiver<EnlsStatus>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut prev_cpu = process_usage().map(|(c, _)| c).unwrap_or_default();
    let mut prev = *status.borrow();
    eprintln!("time                 events  (+/s)  revisions  (+/s)  rev/events  cpu%   rss_MiB");
    loop {
        tick.tick().await;
        if status.has_changed().is_err() {
            return;
        }
        let now = *status.borrow_and_update();
        let (cpu, rss) = process_usage().unwrap_or_default();
        let cpu_pct = (cpu.saturating_sub(prev_cpu)).as_secs_f64() * 100.0;
        prev_cpu = cpu;
        let ratio = if now.api_events == 0 {
            0.0
        } else {
            now.revision as f64 / now.api_events as f64 * 100.0
        };
        eprintln!(
            "{}  {:>7} {:>6}  {:>9} {:>6}  {:>9.2}%  {:>5.1}  {:>7.1}",
            crate::telemetry::utc_now(),
            now.api_events,
            now.api_events.saturating_sub(prev.api_events),
            now.revision,
            now.revision.saturating_sub(prev.revision),
            ratio,
            cpu_pct,
            rss as f64 / (1024.0 * 1024.0)
        );
        prev = now;
    }
}
