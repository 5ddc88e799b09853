//! `tollgate enls`: print the node-local state as JSON (a debugging interface; its shape is
//! documented in README.md and kept stable).

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::EnlsArgs;
use crate::{
    enls::{
        Enls, Update,
        metrics::{EnlsMetrics, ProgrammingMetrics},
        runner::{self, EnlsStatus},
    },
    source::{self, SourceSpec},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Print {
    Changes,
    Summary,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub enls: EnlsArgs,
    /// Keep running and print every change as one JSON line (revision, services upserted or
    /// removed, pods, node).
    #[arg(long)]
    pub watch: bool,
    /// Print a line per second on stderr: events, revisions, CPU, RSS (a file printed once:
    /// one line at the end, with the totals).
    #[arg(long)]
    pub stats: bool,
    /// With --watch: `changes` prints each change in full; `summary` prints one short line
    /// per revision (what changed, how many).
    #[arg(long, value_enum, default_value_t = Print::Changes)]
    pub print: Print,
    /// How long to wait for the first complete state, in seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    args.enls.check()?;
    // A file printed once is read and parsed once, here, and fed to the engine directly; a
    // file that does not parse is an error (there is no last good state to keep).
    if let SourceSpec::File(path) = &args.enls.source
        && !args.watch
    {
        let path = path.clone();
        let (_, events) = tokio::task::spawn_blocking(move || {
            source::file::load(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        })
        .await??;
        let mut engine = Enls::new(args.enls.enls_config(), EnlsMetrics::detached());
        for event in events {
            engine.handle(event);
        }
        let first = engine
            .sync()
            .context("the manifest did not give a complete state")?;
        print_snapshot(&args.enls.node, &first)?;
        if args.stats {
            let (cpu, rss) = runner::process_usage().unwrap_or_default();
            eprintln!(
                "{}  events {}  revision {}  services {}  cpu {:.2} s  rss {:.1} MiB",
                crate::telemetry::utc_now(),
                engine.api_events(),
                engine.revision(),
                engine.services().count(),
                cpu.as_secs_f64(),
                rss as f64 / (1024.0 * 1024.0)
            );
        }
        return Ok(());
    }
    let engine = Enls::new(args.enls.enls_config(), EnlsMetrics::detached());
    let (events_tx, events_rx) = mpsc::channel(256);
    let (updates_tx, mut updates_rx) = mpsc::channel::<Arc<Update>>(64);
    let (status_tx, status_rx) = watch::channel(EnlsStatus::default());
    let _sources = source::start(&args.enls.source, &args.enls.source_options(), events_tx)
        .await
        .context("starting the source")?;
    let engine_task = tokio::spawn(runner::run(engine, events_rx, vec![updates_tx], status_tx));
    if args.stats {
        tokio::spawn(runner::print_stats(status_rx));
    }
    let first = tokio::time::timeout(Duration::from_secs(args.timeout), updates_rx.recv())
        .await
        .with_context(|| {
            format!(
                "no complete state within {}s (is the source reachable?)",
                args.timeout
            )
        })?;
    let Some(first) = first else {
        bail!("the source stopped before the state was complete");
    };
    if !args.watch {
        engine_task.abort();
        return print_snapshot(&args.enls.node, &first);
    }
    let programming = ProgrammingMetrics::detached();
    let mut next = Some(first);
    while let Some(update) = next {
        let line = match args.print {
            Print::Changes => update_json(&update),
            Print::Summary => json!({
                "revision": update.revision,
                "initial": update.initial,
                "services": update.services.len(),
                "pods": update.pods.len(),
                "node": update.node.is_some(),
                "time": crate::telemetry::utc_now(),
            }),
        };
        println!("{}", serde_json::to_string(&line)?);
        programming.programmed(&update.trigger_times);
        next = tokio::select! {
            u = updates_rx.recv() => u,
            _ = crate::signals::terminated() => None,
        };
    }
    Ok(())
}

/// The full state of the first update (it carries every service), pretty-printed.
fn print_snapshot(node: &str, first: &Update) -> anyhow::Result<()> {
    let mut snapshot = json!({
        "node": node,
        "revision": first.revision,
        "services": first.services.iter().filter_map(|c| c.new.clone()).collect::<Vec<_>>(),
        "pods": first.pods.iter().filter_map(|c| c.new.clone()).collect::<Vec<_>>(),
        "service_cidrs": first.service_cidrs.clone().unwrap_or_default(),
    });
    if let Some(info) = &first.node {
        snapshot["node_info"] = serde_json::to_value(info)?;
    }
    println!("{}", serde_json::to_string_pretty(&snapshot)?);
    Ok(())
}

/// One `--watch` line.
pub fn update_json(update: &Update) -> serde_json::Value {
    let services: Vec<serde_json::Value> = update
        .services
        .iter()
        .map(|c| match &c.new {
            Some(s) => json!({"op": "upsert", "service": s}),
            None => json!({"op": "remove", "namespace": &*c.key.namespace, "name": &*c.key.name}),
        })
        .collect();
    let pods: Vec<serde_json::Value> = update
        .pods
        .iter()
        .map(|c| match &c.new {
            Some(p) => json!({"op": "upsert", "pod": p}),
            None => json!({"op": "remove", "namespace": &*c.key.namespace, "name": &*c.key.name}),
        })
        .collect();
    json!({
        "revision": update.revision,
        "initial": update.initial,
        "services": services,
        "pods": pods,
        "node": update.node,
        "service_cidrs": update.service_cidrs,
    })
}
