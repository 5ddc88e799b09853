//! `cargo xtask bench` runs this: each suite measures, writes tests/benchmarks/*.json and *.svg,
//! and rewrites its section of BENCHMARKS.md.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tollgate_tests::bench;

#[derive(Parser)]
struct Cli {
    /// Where raw results and plots go.
    #[arg(long, default_value = "tests/benchmarks")]
    out: PathBuf,
    /// The markdown file whose sections are rewritten.
    #[arg(long, default_value = "BENCHMARKS.md")]
    markdown: PathBuf,
    #[command(subcommand)]
    suite: Suite,
}

#[derive(Subcommand)]
enum Suite {
    /// Node-local state: 10k services × 10 endpoints.
    Enls {
        #[arg(long, default_value_t = 10_000)]
        services: usize,
        #[arg(long, default_value_t = 10)]
        endpoints: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.suite {
        Suite::Enls {
            services,
            endpoints,
        } => {
            let opts = bench::enls::Options {
                services,
                endpoints,
                ..Default::default()
            };
            let report = bench::enls::run(&opts, &cli.out, &cli.markdown)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
    }
    Ok(())
}
