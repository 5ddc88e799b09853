//! Building: the agent (which builds and embeds the kernel programs) and the test-bed binaries.

use std::{
    io::BufRead as _,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::sh;

/// `target/<profile>/<name>`.
pub fn target_bin(name: &str, release: bool) -> anyhow::Result<PathBuf> {
    let path = sh::root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join(name);
    if !path.exists() {
        bail!("{} was not built", path.display());
    }
    Ok(path)
}

pub fn build_packages(packages: &[&str], release: bool) -> anyhow::Result<()> {
    let mut cmd = sh::cmd("cargo");
    cmd.arg("build");
    for p in packages {
        cmd.args(["--package", p]);
    }
    if release {
        cmd.arg("--release");
    }
    sh::run(&mut cmd)
}

/// Builds the agent (its build script compiles ebpf/programs with the nightly toolchain and
/// bpf-linker, release mode, BTF on) and copies the kernel object to `target/bpf/`, where
/// `bpftool` and `llvm-objdump` can inspect it. Returns that path.
pub fn build_ebpf(release: bool) -> anyhow::Result<PathBuf> {
    let mut cmd = Command::new("cargo");
    cmd.args([
        "build",
        "--package",
        "tollgate",
        "--message-format=json-render-diagnostics",
    ]);
    if release {
        cmd.arg("--release");
    }
    eprintln!(
        "$ cargo build --package tollgate{}",
        if release { " --release" } else { "" }
    );
    let mut child = cmd
        .current_dir(sh::root())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo build")?;
    let stdout = child.stdout.take().context("cargo stdout")?;
    let mut out_dir = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] == "build-script-executed"
            && msg["package_id"]
                .as_str()
                .is_some_and(|id| id.contains("/userspace#"))
        {
            out_dir = msg["out_dir"].as_str().map(PathBuf::from);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("building the agent and its kernel programs failed ({status})");
    }
    let object = out_dir
        .context("cargo did not report the agent's build-script output directory")?
        .join("tollgate-ebpf");
    let dest_dir = sh::root().join("target/bpf");
    std::fs::create_dir_all(&dest_dir)?;
    let dest = dest_dir.join("tollgate-ebpf.o");
    std::fs::copy(&object, &dest)
        .with_context(|| format!("copying {} to {}", object.display(), dest.display()))?;
    Ok(dest)
}
