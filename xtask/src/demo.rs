//! `cargo xtask demo`: set up, build, and run the demo in a cluster emulated in network
//! namespaces (torn down at the end, also on Ctrl-C).

use crate::{build, setup, sh};

#[derive(clap::Args)]
pub struct DemoArgs {}

pub fn run(_args: DemoArgs) -> anyhow::Result<()> {
    setup::run()?;
    build::build_packages(&["tollgate", "tollgate-tests"], false)?;
    sh::run(sh::cmd(build::target_bin("tollgate-testbed", false)?).arg("clean"))?;
    sh::run(&mut sh::cmd(build::target_bin("tollgate-demo", false)?))
}
