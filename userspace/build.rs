//! Builds the kernel programs (ebpf/programs) with the nightly toolchain and bpf-linker, release
//! mode with BTF, into OUT_DIR; `src/dataplane/object.rs` embeds the result.
//!
//! `cargo xtask setup` installs what this needs (nightly rust-src, bpf-linker); a missing piece
//! fails here with cargo's or bpf-linker's own message.

use std::path::PathBuf;

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    let ebpf_root = manifest_dir.join("../ebpf/programs");
    let common_root = manifest_dir.join("../ebpf/common");
    // aya-build watches the program crate; the shared layouts live in a second crate.
    println!("cargo:rerun-if-changed={}", common_root.display());
    let ebpf_root = ebpf_root
        .to_str()
        .context("ebpf/programs path is not UTF-8")?
        .to_owned();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tollgate-ebpf",
            root_dir: &ebpf_root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
