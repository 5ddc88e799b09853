//! `cargo xtask …`: the project's own commands. The two a newcomer needs are `demo` and `test`;
//! both start with `setup`, which installs whatever this machine lacks.

mod bench;
mod build;
mod demo;
mod fuzz;
mod setup;
mod sh;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Tollgate's development commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing (Debian packages, nightly rust-src, bpf-linker) and mount bpffs.
    Setup,
    /// Build the kernel programs (release, BTF) and the agent that embeds them.
    BuildEbpf {
        /// Build the agent in release mode too.
        #[arg(long)]
        release: bool,
    },
    /// Run every check: fmt, clippy (userspace and eBPF), unit tests, privileged e2e tests.
    Test(test::TestArgs),
    /// Build and run the demo: a cluster emulated in network namespaces, fed from a manifest.
    Demo(demo::DemoArgs),
    /// Run the benchmarks (release build) and update BENCHMARKS.md and tests/benchmarks/.
    Bench(bench::BenchArgs),
    /// Fuzz the metadata proxy's normalisation and policy (cargo-fuzz; grows fuzz/corpus).
    Fuzz(fuzz::FuzzArgs),
    /// Remove test-bed leftovers of killed runs (namespaces, cgroups, bpffs directories).
    CleanTestbed {
        /// Also remove objects of test runs that are still alive.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::BuildEbpf { release } => {
            setup::run()?;
            let object = build::build_ebpf(release)?;
            println!("kernel object: {}", object.display());
            Ok(())
        }
        Command::Test(args) => test::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Fuzz(args) => fuzz::run(args),
        Command::CleanTestbed { force } => {
            build::build_packages(&["tollgate-tests"], false)?;
            let mut args = vec!["clean"];
            if force {
                args.push("--force");
            }
            sh::run(sh::cmd(build::target_bin("tollgate-testbed", false)?).args(args))
        }
    }
}
