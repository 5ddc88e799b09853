//! `tollgate run`: the node agent.
//!
//! ```text
//! source ──events──▶ ENLS ──updates──▶ programmer (maps) ──purges──▶ purge task
//!                      └── status ──▶ admin (/metrics, /healthz, /livez), --stats
//! interfaces (rtnetlink) ──▶ attach TC to pod-facing interfaces as they appear
//! ```

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};

use super::EnlsArgs;
use crate::{
    admin::{self, AdminState, Health},
    dataplane::{
        Dataplane, MapSizes, XdpModeArg,
        ifwatch::{self, Glob, IfEvent},
        lbmaps::LbMaps,
        program::{self, DataplaneMetrics, NodeSettings, Programmer},
        sys,
        writer::Writer,
    },
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
    /// cgroup v2 directory whose processes (pods and host) get socket-level load balancing.
    /// Default: the cgroup v2 root.
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// Uplink interfaces (traffic from outside the node). Default: the default-route interface.
    #[arg(long, value_delimiter = ',')]
    pub uplinks: Vec<String>,
    /// Pod-facing interfaces (host ends of pod veths), as name patterns; attached as they appear.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "veth*,lxc*,cali*,eni*,gke*,azv*,vxlan_sys_*"
    )]
    pub pod_interfaces: Vec<String>,
    /// How XDP is attached to uplinks.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    pub xdp_mode: XdpModeArg,
    /// Source ports for SNAT of translated traffic (outside the kernel's ephemeral range).
    #[arg(long, default_value = "61000-65535", value_parser = parse_range)]
    pub snat_port_range: (u16, u16),
    /// Entries of the service, backend, affinity and source-range maps (Cilium's
    /// `bpf-lb-map-max`). A service that does not fit is reported (log, metric
    /// `tollgate_dataplane_write_errors_total{reason="capacity"}`) and programmed as soon as
    /// room frees up; the others are unaffected.
    #[arg(long, default_value_t = tollgate_common::lb::svc::CAPACITY, value_parser = clap::value_parser!(u32).range(16..=16_777_216))]
    pub lb_map_size: u32,
    /// Entries of the connection-tracking maps (per-packet flows and socket-LB choices).
    #[arg(long, default_value_t = tollgate_common::lb::ct::CAPACITY, value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    pub ct_map_size: u32,
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

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: expected MIN-MAX"))?;
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|e| format!("{a:?}: {e}"))?,
        b.trim().parse().map_err(|e| format!("{b:?}: {e}"))?,
    );
    if a == 0 || b < a {
        return Err(format!("{s:?}: expected 1 ≤ MIN ≤ MAX"));
    }
    Ok((a, b))
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
    let cgroup = match &args.cgroup {
        Some(c) => c.clone(),
        None => crate::netif::cgroup2_root()
            .context("no cgroup v2 file system is mounted; pass --cgroup")?,
    };
    let mut registry = Registry::default();
    let enls_metrics = EnlsMetrics::register(&mut registry);
    let programming = ProgrammingMetrics::register(&mut registry);
    let dp_metrics = DataplaneMetrics::register(&mut registry);
    let health = Health::register(&mut registry, Duration::from_secs(args.health_timeout));

    let sizes = MapSizes {
        lb: args.lb_map_size,
        ct: args.ct_map_size,
    };
    let mut dp = Dataplane::load(&args.bpffs, &sizes).context("loading the dataplane")?;
    if let Some(logger) = dp.take_logger() {
        tokio::spawn(forward_kernel_logs(logger));
    }
    let writer = Writer::new(LbMaps::open(dp.pins())?);
    let purge_maps = LbMaps::open(dp.pins())?;
    for iface in &uplinks {
        dp.attach_uplink(iface, args.xdp_mode)
            .with_context(|| format!("attaching to uplink {iface}"))?;
    }
    dp.attach_cgroup(&cgroup)
        .with_context(|| format!("attaching socket hooks to cgroup {}", cgroup.display()))?;

    let (if_tx, mut if_rx) = mpsc::channel::<IfEvent>(256);
    let globs: Vec<Glob> = args.pod_interfaces.iter().map(|g| Glob::new(g)).collect();
    let uplink_set = uplinks.clone();
    tokio::spawn(async move {
        if let Err(e) = ifwatch::watch(globs, if_tx).await {
            tracing::error!("watching interfaces: {e}");
        }
    });
    let attacher = tokio::spawn(async move {
        while let Some(event) = if_rx.recv().await {
            match event {
                IfEvent::Up { name, .. } if !uplink_set.contains(&name) => {
                    if let Err(e) = dp.attach_pod_interface(&name) {
                        tracing::warn!(iface = %name, "not attached: {e}");
                    }
                }
                IfEvent::Gone { name, .. } => dp.forget_interface(&name),
                IfEvent::Up { .. } => {}
            }
        }
        dp
    });

    let state = Arc::new(AdminState {
        registry,
        health: health.clone(),
    });
    let (admin_addr, _admin) = admin::serve(args.admin_addr, state)
        .await
        .with_context(|| format!("binding the admin server on {}", args.admin_addr))?;
    tracing::info!(%admin_addr, "admin server listening (/metrics, /healthz, /livez)");

    let engine = Enls::new(args.enls.enls_config(), enls_metrics);
    let (events_tx, events_rx) = mpsc::channel(256);
    let (updates_tx, updates_rx) = mpsc::channel::<Arc<Update>>(64);
    let (status_tx, status_rx) = watch::channel(EnlsStatus::default());
    let _sources = source::start(&args.enls.source, &args.enls.source_options(), events_tx)
        .await
        .context("starting the source")?;
    tokio::spawn(runner::run(engine, events_rx, vec![updates_tx], status_tx));
    if args.stats {
        tokio::spawn(runner::print_stats(status_rx));
    }
    health.queued();

    let settings = NodeSettings {
        host_netns_cookie: sys::netns_cookie()
            .context("reading this network namespace's cookie")?,
        snat_ports: args.snat_port_range,
        uplink_addresses: uplinks
            .iter()
            .flat_map(|u| crate::netif::addresses(u))
            .collect(),
    };
    let (purge_tx, purge_rx) = mpsc::unbounded_channel();
    tokio::spawn(program::purge_task(
        purge_maps,
        dp_metrics.clone(),
        purge_rx,
    ));
    let programmer = Programmer {
        writer,
        settings,
        health,
        programming,
        metrics: dp_metrics,
        purges: purge_tx,
    };
    let note = format!(
        "(node {}, uplinks {:?}, cgroup {})",
        args.enls.node,
        uplinks,
        cgroup.display()
    );
    let programming_task = tokio::spawn(programmer.run(updates_rx, note));
    tokio::select! {
        r = crate::signals::terminated() => r?,
        _ = programming_task => bail!("the node-local state stopped"),
    }
    drop(attacher);
    tracing::info!("terminating; programs stay attached through their pinned links");
    Ok(())
}

async fn forward_kernel_logs(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring-buffer fd for as long as the AsyncFd holds it.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let Ok(mut fd) = registered else {
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
