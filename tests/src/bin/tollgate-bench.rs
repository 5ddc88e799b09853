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
    /// Metadata proxy: ab on the token path, through the proxy and straight to the upstream.
    Metadata {
        #[arg(long, default_value_t = 200_000)]
        requests: u64,
        #[arg(long, default_value_t = 200)]
        concurrency: u64,
    },
    /// Service dataplane: short-connection rate vs the limit at 1/1k/10k services, and the
    /// time to program one change.
    Dataplane {
        /// Service counts (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1,1000,10000")]
        services: Vec<usize>,
        /// Seconds per wrk run.
        #[arg(long, default_value_t = bench::dataplane::Options::default().duration_s)]
        duration: u64,
        /// Sequential rounds (limit, Tollgate, pod IP with Tollgate installed) per service count.
        #[arg(long, default_value_t = bench::dataplane::Options::default().rounds)]
        rounds: usize,
        /// Paired rounds (both nodes at once) per comparison and orientation.
        #[arg(long, default_value_t = bench::dataplane::Options::default().pairs)]
        pairs: usize,
    },
    /// Two arms at the same time, one on each node, swapped halfway: the ratio of their
    /// request rates, to ≈ ± 0.4 % with the default rounds (e.g. a build against another, end
    /// to end). Prints the result as JSON; writes nothing else.
    Paired {
        /// Arm A: `limit`, `floor`, or `service` / `pod-ip` with `,bin=PATH` and `,arg=ARG`
        /// (repeatable), e.g. `service,bin=/tmp/old/tollgate,arg=--socket-lb-peer=false`.
        #[arg(long)]
        a: bench::dataplane::Arm,
        /// Arm B, as arm A.
        #[arg(long, default_value = "limit")]
        b: bench::dataplane::Arm,
        /// Services (the target plus fillers).
        #[arg(long, default_value_t = 1)]
        services: usize,
        /// Rounds per orientation.
        #[arg(long, default_value_t = 16)]
        rounds: usize,
        /// Seconds per wrk run.
        #[arg(long, default_value_t = 5)]
        duration: u64,
    },
    /// The dataplane's programming times alone (ENLS + map writer in this process, as in
    /// `dataplane`), optionally with Maglev tables of another size. Prints the result as JSON;
    /// writes nothing else.
    Programming {
        /// Services (each with `--endpoints` endpoints).
        #[arg(long, default_value_t = 10_000)]
        services: usize,
        #[arg(long, default_value_t = bench::dataplane::Options::default().endpoints)]
        endpoints: usize,
        /// Changes and adds timed.
        #[arg(long, default_value_t = bench::dataplane::Options::default().changes)]
        changes: usize,
        /// With `--lb-algorithm maglev` and an externalIP on every Service, tables of this size
        /// (`--maglev-table-size`); without it, random selection.
        #[arg(long)]
        maglev_table_size: Option<u32>,
    },
    /// Per-packet cost of the TC and XDP programs (BPF_PROG_TEST_RUN), optionally beside
    /// other builds' kernel objects.
    Programs {
        /// Another build's kernel object to measure alongside, `PATH` or `LABEL=PATH`
        /// (repeatable).
        #[arg(long)]
        object: Vec<String>,
        /// Program runs per test-run call.
        #[arg(long, default_value_t = bench::programs::Options::default().repeat)]
        repeat: u32,
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
        Suite::Metadata {
            requests,
            concurrency,
        } => {
            tollgate_tests::require_root();
            let opts = bench::metadata::Options {
                requests,
                concurrency,
                ..Default::default()
            };
            let report = bench::metadata::run(&opts, &cli.out, &cli.markdown)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Suite::Dataplane {
            services,
            duration,
            rounds,
            pairs,
        } => {
            tollgate_tests::require_root();
            let opts = bench::dataplane::Options {
                counts: services,
                duration_s: duration,
                rounds,
                pairs,
                ..Default::default()
            };
            let report = bench::dataplane::run(&opts, &cli.out, &cli.markdown)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Suite::Paired {
            a,
            b,
            services,
            rounds,
            duration,
        } => {
            tollgate_tests::require_root();
            let opts = bench::dataplane::Options {
                duration_s: duration,
                pairs: rounds,
                ..Default::default()
            };
            let p = bench::dataplane::paired(&a, &b, services, &opts)?;
            println!("{}", serde_json::to_string_pretty(&p)?);
        }
        Suite::Programming {
            services,
            endpoints,
            changes,
            maglev_table_size,
        } => {
            tollgate_tests::require_root();
            let opts = bench::dataplane::Options {
                counts: vec![services],
                endpoints,
                changes,
                ..Default::default()
            };
            let p = bench::dataplane::programming(&opts, maglev_table_size)?;
            println!("{}", serde_json::to_string_pretty(&p)?);
        }
        Suite::Programs { object, repeat } => {
            tollgate_tests::require_root();
            let opts = bench::programs::Options {
                objects: object,
                repeat,
                ..Default::default()
            };
            let report = bench::programs::run(&opts, &cli.out, &cli.markdown)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
    }
    Ok(())
}
