//! `cargo xtask demo`: set up, build, and run the demo in a cluster emulated in network
//! namespaces (torn down at the end, also on Ctrl-C).

use std::path::PathBuf;

use crate::{build, setup, sh};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Services and EndpointSlices to serve instead of the embedded tests/demo/services.yaml.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Keep the cluster running after the tour until Ctrl-C.
    #[arg(long)]
    keep: bool,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    setup::run()?;
    build::build_packages(&["tollgate", "tollgate-tests"], false)?;
    sh::run(sh::cmd(build::target_bin("tollgate-testbed", false)?).arg("clean"))?;
    let mut demo = sh::cmd(build::target_bin("tollgate-demo", false)?);
    if let Some(m) = &args.manifest {
        // The demo runs from the workspace root; relative paths are the caller's.
        demo.arg("--manifest").arg(std::path::absolute(m)?);
    }
    if args.keep {
        demo.arg("--keep");
    }
    sh::run(&mut demo)
}
