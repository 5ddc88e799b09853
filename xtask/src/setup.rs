//! `cargo xtask setup`: make a fresh machine of this kind ready, idempotently and quickly when
//! nothing is missing. Each step checks first and only installs what it does not find.

use std::{path::PathBuf, time::Instant};

use anyhow::{Context as _, bail};

use crate::sh;

/// Command the project (tests, demo, bench) runs → Debian package that provides it.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("bpftool", "bpftool"),
    ("nft", "nftables"),
    ("iptables", "iptables"),
    ("conntrack", "conntrack"),
    ("nginx", "nginx-light"),
    ("wrk", "wrk"),
    ("ab", "apache2-utils"),
    ("iperf3", "iperf3"),
    ("socat", "socat"),
    ("promtool", "prometheus"),
    ("curl", "curl"),
    ("ping", "iputils-ping"),
    ("nsenter", "util-linux"),
    ("cc", "gcc"),
    ("ethtool", "ethtool"),
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const NIGHTLY: &str = "nightly";

pub fn run() -> anyhow::Result<()> {
    let start = Instant::now();
    debian_packages()?;
    nightly_toolchain()?;
    bpf_linker()?;
    bpffs()?;
    cgroup2()?;
    eprintln!("setup: ready ({:.1}s)", start.elapsed().as_secs_f64());
    Ok(())
}

fn is_root() -> bool {
    sh::output(sh::cmd("id").arg("-u")).is_some_and(|uid| uid.trim() == "0")
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(command, _)| sh::which(command).is_none())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {missing:?} and not root: run `apt-get install {}` as root",
            missing.join(" ")
        );
    }
    eprintln!("setup: installing Debian packages {missing:?}");
    let install = |pkgs: &[&str]| {
        sh::run(
            sh::cmd("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(pkgs)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    if install(&missing).is_err() {
        // A fresh machine's package index may be stale or empty.
        sh::run(sh::cmd("apt-get").args(["update", "-q"]))
            .context("apt-get update failed: the Debian package registry must be reachable")?;
        install(&missing).with_context(|| format!("installing Debian packages {missing:?}"))?;
    }
    Ok(())
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    let out = sh::output(sh::cmd("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))
        .context("the nightly toolchain is not usable (`rustc +nightly --print sysroot` failed)")?;
    Ok(PathBuf::from(out.trim()))
}

fn nightly_toolchain() -> anyhow::Result<()> {
    let toolchains = sh::output(sh::cmd("rustup").args(["toolchain", "list"]))
        .context("rustup is missing: it manages the stable and nightly toolchains")?;
    if !toolchains.lines().any(|l| l.starts_with(NIGHTLY)) {
        eprintln!("setup: installing the nightly toolchain");
        sh::run(sh::cmd("rustup").args(["toolchain", "install", NIGHTLY, "--profile", "minimal"]))?;
    }
    let sysroot = nightly_sysroot()?;
    // The kernel programs are built with -Z build-std=core, which needs the library sources.
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        eprintln!("setup: adding rust-src to the nightly toolchain");
        sh::run(sh::cmd("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))?;
    }
    let installed = sh::output(sh::cmd("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))
    .unwrap_or_default();
    for component in ["clippy", "rustfmt"] {
        if !installed.lines().any(|l| l.starts_with(component)) {
            eprintln!("setup: adding {component} to the nightly toolchain");
            sh::run(sh::cmd("rustup").args([
                "component",
                "add",
                component,
                "--toolchain",
                NIGHTLY,
            ]))?;
        }
    }
    Ok(())
}

/// bpf-linker must use the same LLVM as the nightly rustc. The recipe: point LLVM_PREFIX at a
/// directory holding `bin/llvm-config` (any executable) and `lib/libLLVM.so` → the nightly's own
/// libLLVM; the soname link lets bpf-linker also run outside cargo.
fn bpf_linker() -> anyhow::Result<()> {
    let sysroot = nightly_sysroot()?;
    let libllvm = std::fs::read_dir(sysroot.join("lib"))
        .context("reading the nightly toolchain's lib directory")?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .context("the nightly toolchain has no lib/libLLVM.so.* to link bpf-linker against")?;
    let soname = libllvm
        .file_name()
        .context("libLLVM path has no file name")?
        .to_owned();
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let prefix = PathBuf::from(home).join(".local/share/tollgate/llvm-nightly");
    std::fs::create_dir_all(prefix.join("bin"))?;
    std::fs::create_dir_all(prefix.join("lib"))?;
    let llvm_config = prefix.join("bin/llvm-config");
    if !llvm_config.exists() {
        std::fs::write(&llvm_config, "#!/bin/sh\necho 22.1.0\n")?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&llvm_config, std::fs::Permissions::from_mode(0o755))?;
    }
    for name in [std::ffi::OsStr::new("libLLVM.so"), soname.as_os_str()] {
        let link = prefix.join("lib").join(name);
        if std::fs::read_link(&link).ok().as_deref() != Some(libllvm.as_path()) {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&libllvm, &link)
                .with_context(|| format!("linking {} → {}", link.display(), libllvm.display()))?;
        }
    }
    let works = sh::output(sh::cmd("bpf-linker").arg("--version"))
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    if works {
        return Ok(());
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM (about a minute)"
    );
    sh::run(
        sh::cmd("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
                "--force",
                "--locked",
            ])
            .env("LLVM_PREFIX", &prefix),
    )
    .context("installing bpf-linker")?;
    if sh::output(sh::cmd("bpf-linker").arg("--version")).is_none() {
        bail!("bpf-linker was installed but does not run; is ~/.cargo/bin on PATH?");
    }
    Ok(())
}

fn bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        cols.get(1) == Some(&"/sys/fs/bpf") && cols.get(2) == Some(&"bpf")
    });
    if mounted {
        return Ok(());
    }
    if !is_root() {
        bail!("bpffs is not mounted at /sys/fs/bpf and mounting it needs root");
    }
    eprintln!("setup: mounting bpffs at /sys/fs/bpf");
    std::fs::create_dir_all("/sys/fs/bpf")?;
    sh::run(sh::cmd("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

fn cgroup2() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("cgroup2"))
    {
        return Ok(());
    }
    bail!("no cgroup2 file system is mounted; the socket hooks (and their tests) need one")
}
