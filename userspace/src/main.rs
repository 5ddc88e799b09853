//! `tollgate`: the node agent binary.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tollgate::dataplane::{self, Dataplane, PinLayout, XdpModeArg};

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "kube-proxy replacement (eBPF) and metadata concealment node agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent: load and attach the dataplane, keep it programmed.
    Run(RunArgs),
    /// Print the dataplane's pinned maps as readable tables.
    Maps(MapsArgs),
    /// Remove every program, link and pinned map Tollgate created.
    Cleanup(CleanupArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// This node's name (as in the Node object).
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// bpffs directory where maps and links are pinned.
    #[arg(long, default_value = "/sys/fs/bpf/tollgate")]
    bpffs: PathBuf,
    /// Uplink interfaces (traffic from outside the node). Default: the default-route interface.
    #[arg(long, value_delimiter = ',')]
    uplinks: Vec<String>,
    /// How XDP is attached to uplinks.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    xdp_mode: XdpModeArg,
}

#[derive(clap::Args)]
struct MapsArgs {
    /// bpffs directory where the agent pinned its maps.
    #[arg(long, default_value = "/sys/fs/bpf/tollgate")]
    bpffs: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct CleanupArgs {
    /// bpffs directory where the agent pinned its maps and links.
    #[arg(long, default_value = "/sys/fs/bpf/tollgate")]
    bpffs: PathBuf,
}

fn main() -> anyhow::Result<()> {
    tollgate::telemetry::init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args),
        Command::Maps(args) => maps(args),
        Command::Cleanup(args) => {
            let removed = dataplane::cleanup(&args.bpffs)
                .with_context(|| format!("removing pins under {}", args.bpffs.display()))?;
            println!(
                "removed {} pinned objects under {}",
                removed.len(),
                args.bpffs.display()
            );
            Ok(())
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let uplinks = if args.uplinks.is_empty() {
        vec![
            tollgate::netif::default_route_interface()
                .context("finding the default-route interface for --uplinks")?,
        ]
    } else {
        args.uplinks
    };
    let mut dp = Dataplane::load(&args.bpffs).context("loading the dataplane")?;
    for iface in &uplinks {
        dp.attach_uplink_xdp(iface, args.xdp_mode)?;
        dp.attach_tc(iface)?;
    }
    tracing::info!(node = %args.node, ?uplinks, bpffs = %args.bpffs.display(), "tollgate ready");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(tollgate::signals::terminated())?;
    tracing::info!("terminating; programs stay attached through their pinned links");
    Ok(())
}

fn maps(args: MapsArgs) -> anyhow::Result<()> {
    let pins = PinLayout::existing(&args.bpffs);
    let rows = dataplane::stats::iface_stats(&pins)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "interfaces": rows }))?
        );
        return Ok(());
    }
    println!(
        "{:<8} {:<10} {:<12} {:>12} {:>14}",
        "IFINDEX", "IFACE", "HOOK", "PACKETS", "BYTES"
    );
    for r in rows {
        let name = tollgate::netif::name_of(r.ifindex).unwrap_or_else(|| "?".into());
        println!(
            "{:<8} {:<10} {:<12} {:>12} {:>14}",
            r.ifindex, name, r.hook, r.packets, r.bytes
        );
    }
    Ok(())
}
