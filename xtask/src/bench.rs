//! `cargo xtask bench [SUITE]`: release builds, then the benchmark suites; each writes
//! tests/benchmarks/<suite>.json and plots, and rewrites its section of BENCHMARKS.md.

use crate::{build, setup, sh};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Which suite (default: all).
    #[arg(value_enum, default_value_t = Suite::All)]
    pub suite: Suite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    All,
    Enls,
    Dataplane,
    Metadata,
    Programs,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    setup::run()?;
    build::build_packages(&["tollgate", "tollgate-tests"], true)?;
    let bench = build::target_bin("tollgate-bench", true)?;
    let suites: &[&str] = match args.suite {
        Suite::All => &["enls", "programs", "dataplane", "metadata"],
        Suite::Enls => &["enls"],
        Suite::Dataplane => &["dataplane"],
        Suite::Metadata => &["metadata"],
        Suite::Programs => &["programs"],
    };
    for suite in suites {
        sh::run(sh::cmd(&bench).arg(suite))?;
    }
    println!("results: BENCHMARKS.md, tests/benchmarks/");
    Ok(())
}
