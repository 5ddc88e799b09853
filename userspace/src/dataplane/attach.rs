//! Attaching programs with pinned bpf_links.
//!
//! A pinned link keeps its program attached while no agent runs (restart, crash, SIGKILL), so
//! established flows keep their NAT. On start, an existing pinned link is *updated* in place to
//! the freshly loaded program (`BPF_LINK_UPDATE`: atomic, no moment without a program); only a
//! missing link is created and pinned.

use std::path::{Path, PathBuf};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
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
}

/// How XDP is attached to uplinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum XdpModeArg {
    /// Let the kernel pick (native when the driver supports it).
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
    match PinnedLink::from_pin(path) {
        Ok(link) => Ok(Some(FdLink::from(link))),
        Err(LinkError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
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
    let prog: &mut Xdp = ebpf
        .program_mut(program)
        .and_then(|p| p.try_into().ok())
        .ok_or(AttachError::NotLoaded { program })?;
    let path = pins.link(program, iface);
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
    let path = pins.link(program, iface);
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
