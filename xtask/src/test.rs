//! `cargo xtask test`: every check CI runs, in the order that fails fastest.

use std::process::Command;

use crate::{build, setup, sh};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip the privileged end-to-end tests (network namespaces, BPF).
    #[arg(long)]
    pub no_e2e: bool,
    /// Skip fmt and clippy.
    #[arg(long)]
    pub no_lint: bool,
    /// Only run tests whose name contains this string.
    pub filter: Option<String>,
}

/// `cargo +nightly …` without the outer cargo's toolchain variables leaking in.
pub fn nightly_cargo() -> Command {
    let mut cmd = sh::cmd("cargo");
    cmd.arg("+nightly");
    for var in [
        "RUSTC",
        "RUSTUP_TOOLCHAIN",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

pub fn run(args: TestArgs) -> anyhow::Result<()> {
    setup::run()?;
    if !args.no_lint {
        sh::run(sh::cmd("cargo").args(["fmt", "--all", "--", "--check"]))?;
        sh::run(sh::cmd("cargo").args([
            "clippy",
            "--workspace",
            "--exclude",
            "tollgate-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        // The kernel programs are linted for the target they are built for.
        sh::run(nightly_cargo().args([
            "clippy",
            "--package",
            "tollgate-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
            "--target-dir",
            "target/ebpf-clippy",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    build::build_packages(&["tollgate", "tollgate-tests"], false)?;
    let filter: Vec<String> = args.filter.iter().cloned().collect();

    // Unprivileged tests of every crate but the test bed's end-to-end suites.
    sh::run(
        sh::cmd("cargo")
            .args([
                "test",
                "--workspace",
                "--exclude",
                "tollgate-ebpf",
                "--exclude",
                "tollgate-tests",
            ])
            .arg("--")
            .args(&filter),
    )?;
    sh::run(
        sh::cmd("cargo")
            .args([
                "test",
                "--package",
                "tollgate-tests",
                "--lib",
                "--bins",
                "--",
            ])
            .args(&filter),
    )?;

    if args.no_e2e {
        return Ok(());
    }
    // Leftovers of killed runs first (only objects whose owner process is gone).
    sh::run(sh::cmd(build::target_bin("tollgate-testbed", false)?).arg("clean"))?;
    sh::run(
        sh::cmd("cargo")
            .args(["test", "--package", "tollgate-tests", "--tests", "--"])
            .args(&filter),
    )
}
