//! `tollgate run`: the node agent.
//!
//! ```text
//! source ──events──▶ ENLS ──updates──▶ subscribers (dataplane writer, metadata identity)
//!                      └── status ──▶ admin (/metrics, /healthz, /livez), --stats
//! ```

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};

use super::EnlsArgs;
use crate::{
    admin::{self, AdminState, Health},
    dataplane::{Dataplane, XdpModeArg},
    enls::{
        Enls, Update,
        metrics::{EnlsMetrics, ProgrammingMetrics},
        runner::{self, EnlsStatus},
    },
    source,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub enls: EnlsArgs,
    /// bpffs directory where maps and links are pinned.
    #[arg(long, default_value = "/sys/fs/bpf/tollgate")]
    pub bpffs: PathBuf,
    /// Uplink interfaces (traffic from outside the node). Default: the default-route interface.
    #[arg(long, value_delimiter = ',')]
    pub uplinks: Vec<String>,
    /// How XDP is attached to uplinks.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    pub xdp_mode: XdpModeArg,
    /// Admin HTTP server: /metrics, /healthz, /livez (kube-proxy's healthz port by default).
    #[arg(long, default_value = "0.0.0.0:10256")]
    pub admin_addr: SocketAddr,
    /// /healthz fails when an update waits longer than this to be programmed (seconds;
    /// kube-proxy's 2 × syncPeriod).
    #[arg(long, default_value_t = 60)]
    pub health_timeout: u64,
    /// Print a line per second on stderr: events, revisions, CPU, RSS.
    #[arg(long)]
    pub stats: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let uplinks = if args.uplinks.is_empty() {
        vec![
            crate::netif::default_route_interface()
                .context("finding the default-route interface for --uplinks")?,
        ]
    } else {
        args.uplinks.clone()
    };
    let mut registry = Registry::default();
    let enls_metrics = EnlsMetrics::register(&mut registry);
    let programming = ProgrammingMetrics::register(&mut registry);
    let health = Health::register(&mut registry, Duration::from_secs(args.health_timeout));

    let mut dp = Dataplane::load(&args.bpffs).context("loading the dataplane")?;
    for iface in &uplinks {
        dp.attach_uplink_xdp(iface, args.xdp_mode)?;
        dp.attach_tc(iface)?;
    }

    let state = Arc::new(AdminState {
        registry,
        health: health.clone(),
    });
    let (admin_addr, _admin) = admin::serve(args.admin_addr, state)
        .await
        .with_context(|| format!("binding the admin server on {}", args.admin_addr))?;
    tracing::info!(%admin_addr, "admin server listening (/metrics, /healthz, /livez)");

    let engine = Enls::new(args.enls.enls_config(), enls_metrics);
    let (events_tx, events_rx) = mpsc::channel(8192);
    let (updates_tx, mut updates_rx) = mpsc::channel::<Arc<Update>>(64);
    let (status_tx, status_rx) = watch::channel(EnlsStatus::default());
    let _sources = source::start(&args.enls.source, &args.enls.source_options(), events_tx)
        .await
        .context("starting the source")?;
    let _engine = tokio::spawn(runner::run(engine, events_rx, vec![updates_tx], status_tx));
    if args.stats {
        tokio::spawn(runner::print_stats(status_rx));
    }
    health.queued();

    let node = args.enls.node.clone();
    let programmer = tokio::spawn(async move {
        while let Some(update) = updates_rx.recv().await {
            if let Some(info) = &update.node {
                health.set_node_eligible(info.eligible);
            }
            programming.programmed(&update.trigger_times);
            health.programmed();
            if update.initial {
                tracing::info!(%node, ?uplinks, revision = update.revision, services = update.services.len(), "tollgate ready");
            }
        }
    });
    tokio::select! {
        r = crate::signals::terminated() => r?,
        _ = programmer => anyhow::bail!("the node-local state stopped"),
    }
    tracing::info!("terminating; programs stay attached through their pinned links");
    Ok(())
}
