//! `tollgate`: the node agent binary.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tollgate::{cmd, dataplane};

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
    /// Run the node agent: build the node-local state and keep the dataplane programmed.
    Run(cmd::run::Args),
    /// Print the node-local state (ENLS) as JSON, or every change with --watch.
    Enls(cmd::enls::Args),
    /// Print the dataplane's pinned maps as readable tables.
    Maps(cmd::maps::Args),
    /// Remove every program, link and pinned map Tollgate created.
    Cleanup(CleanupArgs),
}

#[derive(clap::Args)]
struct CleanupArgs {
    /// bpffs directory where the agent pinned its maps and links.
    #[arg(long, default_value = "/sys/fs/bpf/tollgate")]
    bpffs: PathBuf,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn main() -> anyhow::Result<()> {
    tollgate::telemetry::limit_malloc_arenas();
    tollgate::telemetry::init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => runtime()?.block_on(cmd::run::run(args)),
        Command::Enls(args) => runtime()?.block_on(cmd::enls::run(args)),
        Command::Maps(args) => cmd::maps::run(args),
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
