//! `cargo xtask fuzz TARGET`: runs a cargo-fuzz target (installing cargo-fuzz when missing) on
//! the corpus kept in `fuzz/corpus/TARGET`, which grows with what it finds. `cargo xtask test`
//! replays that corpus (as a unit test) without fuzzing.

use crate::{setup, sh, test::nightly_cargo};

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Which target.
    #[arg(value_enum)]
    target: Target,
    /// How long to fuzz.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Target {
    /// Request-target normalisation and the concealment rules.
    Normalize,
    /// Policy files and decisions.
    Policy,
}

pub fn run(args: FuzzArgs) -> anyhow::Result<()> {
    setup::run()?;
    let have = std::process::Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        eprintln!("fuzz: installing cargo-fuzz");
        sh::run(sh::cmd("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let name = match args.target {
        Target::Normalize => "normalize",
        Target::Policy => "policy",
    };
    let corpus = sh::root().join("fuzz/corpus").join(name);
    sh::run(
        nightly_cargo()
            .current_dir(sh::root().join("fuzz"))
            .args(["fuzz", "run", name])
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={}", args.seconds))
            .arg("-max_len=4096"),
    )
}
