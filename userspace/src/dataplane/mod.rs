//! The eBPF dataplane: load the embedded kernel object, pin its maps under one bpffs directory,
//! attach its programs (with pinned links, so they keep running while the agent restarts), and
//! read counters back.

mod attach;
mod object;
mod pins;
pub mod stats;

use std::path::{Path, PathBuf};

pub use attach::{AttachError, XdpModeArg};
use aya::{Ebpf, EbpfLoader};
pub use pins::PinLayout;

/// Everything that can go wrong while bringing the dataplane up or reading it.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "pin directory {path} is not on a bpf filesystem (mount one: mount -t bpf bpf /sys/fs/bpf)"
    )]
    NotBpffs { path: PathBuf },
    #[error("cannot prepare pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading the kernel object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name} is missing from the kernel object")]
    MissingProgram { name: &'static str },
    #[error("program {name} failed to load: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("map {name} is missing from the kernel object")]
    MissingMap { name: &'static str },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error(transparent)]
    Attach(#[from] AttachError),
}

/// Program names in the kernel object (also the kernel's program names, ≤ 15 characters).
pub mod programs {
    pub const XDP_UPLINK: &str = "tg_xdp_uplink";
    pub const TC_INGRESS: &str = "tg_tc_ingress";
    pub const TC_EGRESS: &str = "tg_tc_egress";
}

/// The loaded kernel object with its maps pinned under [`PinLayout`].
pub struct Dataplane {
    ebpf: Ebpf,
    pins: PinLayout,
}

impl Dataplane {
    /// Loads every program and opens every map, reusing maps already pinned under `root` (an
    /// agent restart keeps its state) and pinning the ones that are new.
    pub fn load(root: &Path) -> Result<Self, DataplaneError> {
        let pins = PinLayout::prepare(root)?;
        let mut loader = EbpfLoader::new();
        let map_paths: Vec<(&'static str, PathBuf)> = tollgate_common::MAP_NAMES
            .iter()
            .map(|name| (*name, pins.map(name)))
            .collect();
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(object::KERNEL_OBJECT)?;
        for name in [
            programs::XDP_UPLINK,
            programs::TC_INGRESS,
            programs::TC_EGRESS,
        ] {
            attach::load_program(&mut ebpf, name)?;
        }
        Ok(Self { ebpf, pins })
    }

    pub fn pins(&self) -> &PinLayout {
        &self.pins
    }

    /// XDP on an uplink, the fast path for traffic from outside the node.
    pub fn attach_uplink_xdp(&mut self, iface: &str, mode: XdpModeArg) -> Result<(), AttachError> {
        attach::xdp(
            &mut self.ebpf,
            &self.pins,
            programs::XDP_UPLINK,
            iface,
            mode,
        )
    }

    /// TC ingress and egress on an interface (uplink or pod-facing).
    pub fn attach_tc(&mut self, iface: &str) -> Result<(), AttachError> {
        attach::tc(
            &mut self.ebpf,
            &self.pins,
            programs::TC_INGRESS,
            iface,
            aya::programs::TcAttachType::Ingress,
        )?;
        attach::tc(
            &mut self.ebpf,
            &self.pins,
            programs::TC_EGRESS,
            iface,
            aya::programs::TcAttachType::Egress,
        )
    }
}

/// Removes every pinned map and link under `root` (programs detach when their last link goes),
/// then the directory itself. Missing pieces are not an error: cleanup is idempotent.
pub fn cleanup(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    pins::remove_all(root)
}
