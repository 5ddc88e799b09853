//! Typed handles on the pinned load-balancing maps, opened by path (the writer, the garbage
//! collector and `tollgate maps` each open their own).

use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray};
use tollgate_common::lb::{
    affinity::{self, AffinityKey, AffinityValue},
    backend::{self, Backend},
    config::{self, Config},
    ct::{self, CtEntry, CtKey},
    feport,
    maglev::{self, Chunk},
    revnat::{self, RevNat},
    sockct::{self, SockCtKey, SockCtValue},
    sockrev::{self, SockRevKey, SockRevValue, port_bit},
    srcrange::{self, SrcRangeKey},
    stats::{self, Counters},
    svc::{self, SvcKey, SvcValue},
    svccidr::{self, SvcCidrKey, SvcCidrValue},
    svcinfo::{self, SvcInfo},
};

use super::{DataplaneError, PinLayout, stats::open_pinned};

pub struct LbMaps {
    pub svc: HashMap<MapData, SvcKey, SvcValue>,
    pub backend: HashMap<MapData, u32, Backend>,
    pub revnat: HashMap<MapData, u32, RevNat>,
    pub ct: HashMap<MapData, CtKey, CtEntry>,
    pub affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    pub sockct: HashMap<MapData, SockCtKey, SockCtValue>,
    pub sockrev: HashMap<MapData, SockRevKey, SockRevValue>,
    pub srcrange: LpmTrie<MapData, SrcRangeKey, u8>,
    pub svccidr: LpmTrie<MapData, SvcCidrKey, SvcCidrValue>,
    /// `tg_cidrbits_v1`: the slices the ServiceCIDRs reach into.
    pub cidr_bits: Array<MapData, u64>,
    pub svcstat: PerCpuArray<MapData, Counters>,
    pub bestat: PerCpuArray<MapData, Counters>,
    pub config: Array<MapData, Config>,
    pub svcinfo: HashMap<MapData, u32, SvcInfo>,
    pub maglev: HashMap<MapData, maglev::Key, Chunk>,
    pub peer_ports: PortFilter,
    pub fe_ports: PortFilter,
    /// The kernel's `max_entries` of the maps that grow with the cluster.
    pub capacity: Capacity,
}

/// How many entries the sized maps hold (as created, which may predate the current flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub svc: usize,
    pub backend: usize,
    pub srcrange: usize,
}

fn max_entries(pins: &PinLayout, name: &'static str) -> Result<usize, DataplaneError> {
    let data =
        MapData::from_pin(pins.map(name)).map_err(|source| DataplaneError::Map { name, source })?;
    let info = data
        .info()
        .map_err(|source| DataplaneError::Map { name, source })?;
    Ok(info.max_entries() as usize)
}

macro_rules! open {
    ($pins:expr, $name:expr, $ty:ident) => {{
        let name: &'static str = $name;
        $ty::try_from(open_pinned($pins, name)?)
            .map_err(|source| DataplaneError::Map { name, source })?
    }};
}

impl LbMaps {
    pub fn open(pins: &PinLayout) -> Result<Self, DataplaneError> {
        Ok(Self {
            svc: open!(pins, svc::NAME, HashMap),
            backend: open!(pins, backend::NAME, HashMap),
            revnat: open!(pins, revnat::NAME, HashMap),
            ct: open!(pins, ct::NAME, HashMap),
            affinity: open!(pins, affinity::NAME, HashMap),
            sockct: open!(pins, sockct::NAME, HashMap),
            sockrev: open!(pins, sockrev::NAME, HashMap),
            srcrange: open!(pins, srcrange::NAME, LpmTrie),
            svccidr: open!(pins, svccidr::NAME, LpmTrie),
            cidr_bits: open!(pins, svccidr::BITS_NAME, Array),
            svcstat: open!(pins, stats::SVC_NAME, PerCpuArray),
            bestat: open!(pins, stats::BACKEND_NAME, PerCpuArray),
            config: open!(pins, config::NAME, Array),
            svcinfo: open!(pins, svcinfo::NAME, HashMap),
            maglev: open!(pins, maglev::NAME, HashMap),
            peer_ports: PortFilter::new(open!(pins, sockrev::PORT_NAME, Array)),
            fe_ports: PortFilter::new(open!(pins, feport::NAME, Array)),
            capacity: Capacity {
                svc: max_entries(pins, svc::NAME)?,
                backend: max_entries(pins, backend::NAME)?,
                srcrange: max_entries(pins, srcrange::NAME)?,
            },
        })
    }
}

/// A port bitmap the programs check before a lookup: `tg_peerport_v1` (the ports a translated
/// TCP socket's peer can have, see `sockrev::PORT_NAME`) and `tg_feport_v1` (the ports
/// frontends have had, see `feport`). Bits are only ever set; `known` caches the words this
/// process has seen, so a port costs map calls once.
pub struct PortFilter {
    map: Array<MapData, u64>,
    known: Vec<u64>,
}

impl PortFilter {
    fn new(map: Array<MapData, u64>) -> Self {
        let words = map.len() as usize;
        Self {
            map,
            known: vec![0; words],
        }
    }

    /// Adds a port (network order) to the filter.
    pub fn allow(&mut self, port_be: u16) -> Result<(), aya::maps::MapError> {
        let (word, bit) = port_bit(port_be);
        let Some(known) = self.known.get_mut(word as usize) else {
            return Ok(());
        };
        if *known & bit != 0 {
            return Ok(());
        }
        let current = self.map.get(&word, 0)?;
        if current & bit == 0 {
            self.map.set(word, current | bit, 0)?;
        }
        *known = current | bit;
        Ok(())
    }

    /// Is the port (network order) in the filter? (Read from the map.)
    pub fn allows(&self, port_be: u16) -> Result<bool, aya::maps::MapError> {
        let (word, bit) = port_bit(port_be);
        Ok(self.map.get(&word, 0)? & bit != 0)
    }
}

/// Sums a per-CPU counter over CPUs.
pub fn sum(values: &aya::maps::PerCpuValues<Counters>) -> Counters {
    values.iter().fold(Counters::default(), |a, c| Counters {
        packets: a.packets + c.packets,
        bytes: a.bytes + c.bytes,
        connections: a.connections + c.connections,
        refused: a.refused + c.refused,
    })
}
