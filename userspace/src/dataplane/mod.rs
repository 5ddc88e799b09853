//! The eBPF dataplane: load the embedded kernel object, pin its maps under one bpffs directory,
//! attach its programs (with pinned links, so they keep running while the agent restarts),
//! write the service maps from ENLS changes, and read counters back.

pub mod addr;
mod attach;
pub mod gc;
pub mod held;
pub mod ifwatch;
pub mod inspect;
pub mod lbmaps;
pub mod maglev;
pub mod marks;
/// The kernel object this binary embeds (benchmarks load it without pins).
pub mod object;
mod pins;
pub mod program;
pub mod sockdiag;
pub mod sockterm;
pub mod stats;
pub mod sys;
pub mod traffic;
pub mod writer;

use std::path::{Path, PathBuf};

pub use attach::{AttachError, XdpModeArg};
use aya::{Ebpf, EbpfLoader};
pub use pins::PinLayout;

/// Sizes of the maps that grow with the cluster (`--lb-map-size`, `--ct-map-size`). A map that
/// is already pinned keeps the size it was created with until `tollgate cleanup` removes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSizes {
    /// Service frontends and their backend slots, backends, affinity and source-range entries.
    pub lb: u32,
    /// Connection tracking: per-packet flows and socket-LB choices.
    pub ct: u32,
    /// Maglev table chunks: `maglev::CAPACITY × chunks(--maglev-table-size)`.
    pub maglev: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            lb: tollgate_common::lb::svc::CAPACITY,
            ct: tollgate_common::lb::ct::CAPACITY,
            maglev: Self::maglev_chunks(tollgate_common::lb::maglev::DEFAULT_SIZE),
        }
    }
}

impl MapSizes {
    /// Map values for a table per service port at Maglev table size `size`.
    pub fn maglev_chunks(size: u32) -> u32 {
        use tollgate_common::lb::maglev;
        maglev::CAPACITY * maglev::chunks(size)
    }

    fn entries(&self) -> [(&'static str, u32); 8] {
        use tollgate_common::lb::{affinity, backend, ct, maglev, sockct, sockrev, srcrange, svc};
        [
            (maglev::NAME, self.maglev),
            (svc::NAME, self.lb),
            (backend::NAME, self.lb),
            (affinity::NAME, self.lb),
            (srcrange::NAME, self.lb),
            (ct::NAME, self.ct),
            (sockct::NAME, self.ct),
            (sockrev::NAME, self.ct),
        ]
    }

    fn warn_on_pinned_mismatch(&self, ebpf: &Ebpf) {
        for (name, wanted) in self.entries() {
            let actual = ebpf
                .map(name)
                .and_then(|m| match m {
                    aya::maps::Map::HashMap(d)
                    | aya::maps::Map::LruHashMap(d)
                    | aya::maps::Map::LpmTrie(d) => d.info().ok(),
                    _ => None,
                })
                .map(|i| i.max_entries());
            if let Some(actual) = actual
                && actual != wanted
            {
                tracing::warn!(
                    map = name,
                    pinned = actual,
                    configured = wanted,
                    "the pinned map keeps its size; `tollgate cleanup` (which drops established \
                     flows) lets the configured size take effect"
                );
            }
        }
    }
}

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
    pub const TC_FROM_POD: &str = "tg_tc_from_pod";
    /// cgroup sock_addr programs: socket-level load balancing for pods and host processes.
    pub const SOCK: [&str; 8] = [
        "tg_connect4",
        "tg_connect6",
        "tg_sendmsg4",
        "tg_sendmsg6",
        "tg_recvmsg4",
        "tg_recvmsg6",
        "tg_getpeername4",
        "tg_getpeername6",
    ];
    /// cgroup sock program: a closed TCP socket gives back its reverse-record slot.
    pub const SOCK_RELEASE: &str = "tg_sock_release";
    pub const POD_TC: [&str; 1] = [TC_FROM_POD];
}

/// The loaded kernel object with its maps pinned under [`PinLayout`].
pub struct Dataplane {
    ebpf: Ebpf,
    pins: PinLayout,
    /// The conntrack marks map was created by this load while older maps may have been kept:
    /// [`Dataplane::reseed_marks`] marks the flows again once the new programs are attached.
    marks_created: bool,
}

/// Pinned maps of older agents that this one has replaced (`tg_maglev_v1`: one 4093-entry
/// table per service port, before `--maglev-table-size`).
const RETIRED_MAPS: [&str; 1] = ["tg_maglev_v1"];

impl Dataplane {
    /// Loads every program and opens every map, reusing maps already pinned under `root` (an
    /// agent restart keeps its state) and pinning the ones that are new.
    pub fn load(root: &Path, sizes: &MapSizes) -> Result<Self, DataplaneError> {
        let pins = PinLayout::prepare(root)?;
        let mut loader = EbpfLoader::new();
        let map_paths: Vec<(&'static str, PathBuf)> = tollgate_common::MAP_NAMES
            .iter()
            .map(|name| (*name, pins.map(name)))
            .collect();
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        for (name, size) in sizes.entries() {
            loader.map_max_entries(name, size);
        }
        let marks_created = !pins.map(tollgate_common::lb::ctmark::NAME).exists();
        // The frontend-port filter is new while frontends were kept (an agent from before
        // it, or its pin removed by hand): their ports are set before the new programs run.
        let feports_seed = {
            use tollgate_common::lb::{ct, feport, svc};
            !pins.map(feport::NAME).exists()
                && (pins.map(svc::NAME).exists() || pins.map(ct::NAME).exists())
        };
        let held_seed = {
            use tollgate_common::lb::sockrev;
            !pins.map(sockrev::HELD_NAME).exists() && pins.map(sockrev::SLOT_NAME).exists()
        };
        let mut ebpf = loader.load(object::KERNEL_OBJECT)?;
        sizes.warn_on_pinned_mismatch(&ebpf);
        // Maps of an older layout that nothing reads any more (their successors are written
        // again from the state): unpinned, so the kernel frees them.
        for retired in RETIRED_MAPS {
            match std::fs::remove_file(pins.map(retired)) {
                Ok(()) => tracing::info!(map = retired, "removed a retired map's pin"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(map = retired, "cannot remove a retired map's pin: {e}"),
            }
        }
        let names = [
            programs::XDP_UPLINK,
            programs::TC_INGRESS,
            programs::TC_EGRESS,
            programs::TC_FROM_POD,
        ]
        .into_iter()
        .chain(programs::SOCK)
        .chain([programs::SOCK_RELEASE]);
        for name in names {
            attach::load_program(&mut ebpf, name)?;
        }
        for name in tollgate_common::MAP_NAMES {
            if ebpf.map(name).is_none() {
                return Err(DataplaneError::MissingMap { name });
            }
        }
        let dp = Self {
            ebpf,
            pins,
            marks_created,
        };
        if marks_created {
            dp.reseed_marks()?;
        }
        if feports_seed {
            let ports = marks::seed_frontend_ports(&dp.pins)?;
            tracing::info!(
                ports,
                "frontend-port filter set from the kept frontends and flows"
            );
        }
        if held_seed {
            // Before the new programs are attached: from then on only they write the bits.
            let held = held::seed(&dp.pins)?;
            tracing::info!(
                slots = held,
                "reverse-record slots of open sockets marked held"
            );
        }
        Ok(dp)
    }

    /// When this load created the conntrack marks, marks the sources of the conntrack entries
    /// already there (see [`marks`]). Called after loading (before any new program runs) and
    /// again once the pod interfaces run the new programs, for flows the old programs created
    /// in between. A no-op when the marks map was kept.
    pub fn reseed_marks(&self) -> Result<(), DataplaneError> {
        if self.marks_created {
            let set = marks::seed(&self.pins)?;
            if set > 0 {
                tracing::info!(slots = set, "conntrack marks set for existing flows");
            }
        }
        Ok(())
    }

    /// Forwards the programs' log records (aya-log) to this process's log.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        match aya_log::EbpfLogger::init(&mut self.ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::debug!("no kernel log records: {e}");
                None
            }
        }
    }

    pub fn pins(&self) -> &PinLayout {
        &self.pins
    }

    /// An uplink: XDP (unless off) and TC ingress/egress.
    pub fn attach_uplink(&mut self, iface: &str, xdp: XdpModeArg) -> Result<(), AttachError> {
        attach::xdp(&mut self.ebpf, &self.pins, programs::XDP_UPLINK, iface, xdp)?;
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

    /// A pod-facing interface (the host end of a pod's veth): TC ingress, i.e. packets from the
    /// pod. (Nothing runs on packets to pods: the kernel's own interface counters cover them.)
    pub fn attach_pod_interface(&mut self, iface: &str) -> Result<(), AttachError> {
        attach::tc(
            &mut self.ebpf,
            &self.pins,
            programs::TC_FROM_POD,
            iface,
            aya::programs::TcAttachType::Ingress,
        )
    }

    /// A pod-facing interface went away: its links died with it; drop their pins.
    pub fn forget_interface(&mut self, iface: &str) {
        for program in programs::POD_TC {
            attach::unpin_iface(&self.pins, program, iface, None);
        }
    }

    /// The socket hooks, on the cgroup v2 directory holding the pods and host processes.
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<(), AttachError> {
        // The release hook first: a slot connect claims is then always given back.
        let release = [programs::SOCK_RELEASE];
        for program in release.into_iter().chain(programs::SOCK) {
            attach::cgroup(&mut self.ebpf, &self.pins, program, cgroup)?;
        }
        Ok(())
    }
}

impl Dataplane {
    /// Runs a TC or XDP program on a synthetic packet (`BPF_PROG_TEST_RUN`) in the calling
    /// thread's network namespace: returns the verdict and the packet as the program left it.
    /// `ctx` is the raw `__sk_buff` / `xdp_md` input (ifindex fields).
    pub fn test_run(
        &self,
        program: &'static str,
        packet: &[u8],
        ctx: Option<&[u8]>,
    ) -> Result<(u32, Vec<u8>), DataplaneError> {
        use aya::programs::{Program, TestRun as _, TestRunOptions};
        let mut out = vec![0u8; packet.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.data_out = Some(&mut out);
        opts.ctx_in = ctx;
        let result = match self.ebpf.program(program) {
            Some(Program::SchedClassifier(p)) => p.test_run(opts),
            Some(Program::Xdp(p)) => p.test_run(opts),
            _ => return Err(DataplaneError::MissingProgram { name: program }),
        }
        .map_err(|source| DataplaneError::Program {
            name: program,
            source,
        })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }
}

/// Removes every pinned map and link under `root` (programs detach when their last link goes),
/// then the directory itself. Missing pieces are not an error: cleanup is idempotent.
pub fn cleanup(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    pins::remove_all(root)
}
