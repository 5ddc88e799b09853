//! Attaching programs with pinned bpf_links.
//!
//! A pinned link keeps its program attached while no agent runs (restart, crash, SIGKILL), so
//! established flows keep their NAT. On start, an existing pinned link is *updated* in place to
//! the freshly loaded program (`BPF_LINK_UPDATE`: atomic, no moment without a program); only a
//! missing link is created and pinned.

use std::{
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, LinkOrder, Program, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc::TcAttachOptions,
    },
};

use super::{DataplaneError, PinLayout};

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("{program} is not loaded")]
    NotLoaded { program: &'static str },
    #[error("attaching {program} to {target}: {source}")]
    Program {
        program: &'static str,
        target: String,
        source: aya::programs::ProgramError,
    },
    #[error("pinned link {path}: {source}")]
    Link { path: PathBuf, source: LinkError },
    #[error("pinning link {path}: {source}")]
    Pin {
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("interface {iface} does not exist")]
    NoInterface { iface: String },
}

/// An interface name as it may appear in a pin name: bpffs rejects names with '.', which
/// interface names may contain (VLANs); ':' never appears in interface names.
fn pin_safe(iface: &str) -> String {
    iface.replace('.', ":")
}

/// The pin target name of an interface: `name#ifindex`, so a re-created interface with the
/// same name never inherits the dead link of its predecessor.
fn iface_target(iface: &str) -> Result<String, AttachError> {
    let c = std::ffi::CString::new(iface).map_err(|_| AttachError::NoInterface {
        iface: iface.to_owned(),
    })?;
    // SAFETY: a valid C string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(AttachError::NoInterface {
            iface: iface.to_owned(),
        });
    }
    Ok(format!("{}#{index}", pin_safe(iface)))
}

/// Removes pins of `program` on `iface` other than `keep` (links of earlier interfaces with
/// this name, or the whole set when `keep` is None).
pub(super) fn unpin_iface(pins: &PinLayout, program: &str, iface: &str, keep: Option<&Path>) {
    let prefix = format!("{program}@{}#", pin_safe(iface));
    let Ok(entries) = std::fs::read_dir(pins.root().join("links")) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && Some(e.path().as_path()) != keep {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Drivers of virtual interfaces where native XDP does more harm than good: a frame sent back
/// with XDP_TX loses the skb's checksum-offload state (packets from a local namespace carry
/// only a partial checksum), and there is no NIC work to save.
const VIRTUAL_DRIVERS: &[&str] = &[
    "veth", "bridge", "tun", "dummy", "vxlan", "geneve", "macvlan", "ipvlan",
];

/// How XDP is attached to uplinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum XdpModeArg {
    /// Native XDP on physical NICs; none on virtual interfaces (veth & co.), where TC handles
    /// everything.
    #[default]
    Auto,
    /// Driver (native) mode; fails if the driver lacks XDP support.
    Native,
    /// Generic (skb) mode: works everywhere, slower.
    Generic,
    /// No XDP; TC handles everything.
    Off,
}

impl XdpModeArg {
    fn mode(self) -> Option<XdpMode> {
        match self {
            Self::Auto => Some(XdpMode::Default),
            Self::Native => Some(XdpMode::Driver),
            Self::Generic => Some(XdpMode::Skb),
            Self::Off => None,
        }
    }
}

pub(super) fn load_program(ebpf: &mut Ebpf, name: &'static str) -> Result<(), DataplaneError> {
    let program = ebpf
        .program_mut(name)
        .ok_or(DataplaneError::MissingProgram { name })?;
    let result = match program {
        aya::programs::Program::Xdp(p) => p.load(),
        aya::programs::Program::SchedClassifier(p) => p.load(),
        aya::programs::Program::CgroupSockAddr(p) => p.load(),
        aya::programs::Program::CgroupSock(p) => p.load(),
        _ => {
            return Err(DataplaneError::Program {
                name,
                source: aya::programs::ProgramError::UnexpectedProgramType,
            });
        }
    };
    result.map_err(|source| DataplaneError::Program { name, source })
}

fn pinned(path: &Path) -> Result<Option<FdLink>, AttachError> {
    if !path.exists() {
        return Ok(None);
    }
    match PinnedLink::from_pin(path) {
        Ok(link) => Ok(Some(FdLink::from(link))),
        Err(source) => Err(AttachError::Link {
            path: path.to_owned(),
            source,
        }),
    }
}

fn pin(link: FdLink, path: &Path) -> Result<(), AttachError> {
    link.pin(path).map(drop).map_err(|source| AttachError::Pin {
        path: path.to_owned(),
        source,
    })
}

pub(super) fn xdp(
    ebpf: &mut Ebpf,
    pins: &PinLayout,
    program: &'static str,
    iface: &str,
    mode: XdpModeArg,
) -> Result<(), AttachError> {
    let Some(mode) = mode.mode() else {
        return Ok(());
    };
    if matches!(mode, XdpMode::Default)
        && let Some(driver) = crate::netif::driver(iface)
        && VIRTUAL_DRIVERS.contains(&driver.as_str())
    {
        tracing::info!(
            iface,
            driver,
            "no XDP on a virtual interface (TC translates everything); --xdp-mode native forces it"
        );
        // A previous run's pinned XDP link on this interface goes too.
        unpin_iface(pins, program, iface, None);
        return Ok(());
    }
    let prog: &mut Xdp = ebpf
        .program_mut(program)
        .and_then(|p| p.try_into().ok())
        .ok_or(AttachError::NotLoaded { program })?;
    let path = pins.link(program, &iface_target(iface)?);
    unpin_iface(pins, program, iface, Some(&path));
    let err = |source| AttachError::Program {
        program,
        target: iface.to_owned(),
        source,
    };
    match pinned(&path)? {
        Some(old) => {
            let link = old.try_into().map_err(|source| AttachError::Link {
                path: path.clone(),
                source,
            })?;
            let id = prog.attach_to_link(link).map_err(err)?;
            // The pin still holds the (now updated) link; our handle can go.
            let _ = prog.take_link(id).map_err(err)?;
        }
        None => {
            let id = prog.attach(iface, mode).map_err(err)?;
            let link = prog.take_link(id).map_err(err)?;
            let link: FdLink = link.try_into().map_err(|source| AttachError::Link {
                path: path.clone(),
                source,
            })?;
            pin(link, &path)?;
        }
    }
    tracing::info!(program, iface, "xdp attached");
    Ok(())
}

pub(super) fn tc(
    ebpf: &mut Ebpf,
    pins: &PinLayout,
    program: &'static str,
    iface: &str,
    direction: TcAttachType,
) -> Result<(), AttachError> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(program)
        .and_then(|p| p.try_into().ok())
        .ok_or(AttachError::NotLoaded { program })?;
    let path = pins.link(program, &iface_target(iface)?);
    unpin_iface(pins, program, iface, Some(&path));
    let err = |source| AttachError::Program {
        program,
        target: iface.to_owned(),
        source,
    };
    match pinned(&path)? {
        Some(old) => {
            let link = old.try_into().map_err(|source| AttachError::Link {
                path: path.clone(),
                source,
            })?;
            let id = prog.attach_to_link(link).map_err(err)?;
            let _ = prog.take_link(id).map_err(err)?;
        }
        None => {
            // TCX (kernel ≥ 6.6): no qdisc to manage, and the link can be pinned and updated.
            let id = prog
                .attach_with_options(
                    iface,
                    direction,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(err)?;
            let link = prog.take_link(id).map_err(err)?;
            let link: FdLink = link.try_into().map_err(|source| AttachError::Link {
                path: path.clone(),
                source,
            })?;
            pin(link, &path)?;
        }
    }
    tracing::info!(program, iface, ?direction, "tc attached");
    Ok(())
}

/// Attaches a cgroup program (sock_addr or sock) to the cgroup at `cgroup` as a bpf_link (links
/// always coexist with other programs, and the kernel wants flags 0 for them), pinned; an
/// existing pinned link is updated in place.
pub(super) fn cgroup(
    ebpf: &mut Ebpf,
    pins: &PinLayout,
    program: &'static str,
    cgroup: &Path,
) -> Result<(), AttachError> {
    use std::os::unix::fs::MetadataExt as _;
    let io = |what, source| AttachError::Io {
        what,
        path: cgroup.to_owned(),
        source,
    };
    let dir = std::fs::File::open(cgroup).map_err(|e| io("opening cgroup", e))?;
    let ino = dir.metadata().map_err(|e| io("reading cgroup", e))?.ino();
    let path = pins.link(program, &format!("cgroup-{ino}"));
    let err = |source| AttachError::Program {
        program,
        target: cgroup.display().to_string(),
        source,
    };
    if path.exists() {
        let link = super::sys::obj_get(&path).map_err(|source| AttachError::Io {
            what: "opening pinned link",
            path: path.clone(),
            source,
        })?;
        let fd = ebpf
            .program(program)
            .ok_or(AttachError::NotLoaded { program })?
            .fd()
            .map_err(err)?;
        super::sys::link_update(link.as_fd(), fd.as_fd()).map_err(|source| AttachError::Io {
            what: "updating pinned link",
            path: path.clone(),
            source,
        })?;
    } else {
        // The two program types attach alike but have their own link types.
        let link: FdLink = match ebpf.program_mut(program) {
            Some(Program::CgroupSockAddr(p)) => {
                let id = p.attach(&dir, CgroupAttachMode::Single).map_err(err)?;
                p.take_link(id).map_err(err)?.try_into()
            }
            Some(Program::CgroupSock(p)) => {
                let id = p.attach(&dir, CgroupAttachMode::Single).map_err(err)?;
                p.take_link(id).map_err(err)?.try_into()
            }
            _ => return Err(AttachError::NotLoaded { program }),
        }
        .map_err(|source| AttachError::Link {
            path: path.clone(),
            source,
        })?;
        pin(link, &path)?;
    }
    tracing::info!(program, cgroup = %cgroup.display(), "cgroup hook attached");
    Ok(())
}
