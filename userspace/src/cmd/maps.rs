//! `tollgate maps`: the pinned maps as readable tables.

use std::path::PathBuf;

use crate::dataplane::{self, PinLayout};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// bpffs directory where the agent pinned its maps.
    #[arg(long, default_value = "/sys/fs/bpf/tollgate")]
    pub bpffs: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
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
        let name = crate::netif::name_of(r.ifindex).unwrap_or_else(|| "?".into());
        println!(
            "{:<8} {:<10} {:<12} {:>12} {:>14}",
            r.ifindex, name, r.hook, r.packets, r.bytes
        );
    }
    Ok(())
}
