//! Applies ENLS changes to the maps, incrementally: one service changing touches only its own
//! entries, and only those whose value differs.
//!
//! Order per frontend, so no reader ever sees a service without backends it should have:
//! new backend entries → slots 1..=n (overwritten in place) → the frontend entry with count n →
//! slots beyond n deleted → backend entries nobody references any more deleted. A reader that
//! read the old, larger count and misses a deleted slot falls back to slot 1.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::IpAddr,
    sync::Arc,
};

use aya::maps::lpm_trie::Key;
use tollgate_common::lb::{
    PROTO_TCP, PROTO_UDP,
    backend::{self, Backend},
    feport, maglev,
    revnat::RevNat,
    scope, sockrev,
    srcrange::{self, SrcRangeKey},
    stats::{self, Counters},
    svc::{self, SvcKey, SvcValue},
    svc_flags,
    svccidr::{self, SvcCidrKey, SvcCidrValue},
    svcinfo::{self, SvcInfo},
};

use super::{
    addr::{port_be, prefix_words, words},
    gc::remove_keys_where,
    lbmaps::LbMaps,
    maglev::{chunks, identity, table},
    sockterm::{Peer, StaleUdpPeer},
};
use crate::enls::{
    ServiceChange,
    model::{
        EndpointAddr, EndpointSet, Frontend, FrontendKind, IpFamily, IpNet, NodeInfo, ObjKey,
        Protocol, ServicePortState, ServiceState,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{map} is full: {needed} more entries needed, {free} free")]
    Capacity {
        map: &'static str,
        needed: usize,
        free: usize,
    },
    #[error("no free {what} ID (limit {limit})")]
    Ids { what: &'static str, limit: u32 },
    #[error("writing {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    /// Another Service holds one of its frontends (two Services with one externalIP, LB IP or
    /// ClusterIP and port): the first keeps it; this one is programmed once it is free.
    #[error("{frontend} is already Service {owner}'s")]
    Taken { frontend: String, owner: ObjKey },
}

/// A frontend as the maps keep it (address, port, protocol); a ClusterIP's other-ports entry
/// is (address, 0, 0).
type Claim = ([u32; 4], u16, u8);

/// A backend's identity: one ID per address, port and protocol, shared by every service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct BackendAddr {
    addr: [u32; 4],
    port: u16,
    proto: u8,
}

#[derive(Debug)]
struct BackendRef {
    id: u32,
    refs: u32,
}

/// Hands out small IDs and takes them back. An ID given back is handed out again as late as
/// possible: first every fresh ID below `preferred`, then the ID free the longest, then fresh
/// IDs up to the limit. Map state that still names a released ID (a socket's or a client's
/// kept backend, a flow's service port) is purged after the change, off the programming path;
/// by the time the ID means something else, that state is long gone. (Reusing the lowest free
/// ID at once sent, now and then, a pod's UDP datagram to another service's backend: the
/// socket's kept backend ID had been given to that backend by the same update.)
#[derive(Debug)]
struct Ids {
    what: &'static str,
    next: u32,
    limit: u32,
    /// Fresh IDs are preferred below this (per-ID counters exist only below it).
    preferred: u32,
    /// Given back, oldest first.
    free: VecDeque<u32>,
}

impl Ids {
    fn new(what: &'static str, limit: u32) -> Self {
        Self::preferring(what, limit, limit)
    }

    fn preferring(what: &'static str, limit: u32, preferred: u32) -> Self {
        Self {
            what,
            next: 1,
            limit,
            preferred: preferred.min(limit),
            free: VecDeque::new(),
        }
    }

    fn take(&mut self) -> Result<u32, WriteError> {
        if self.next < self.preferred {
            self.next += 1;
            return Ok(self.next - 1);
        }
        if let Some(id) = self.free.pop_front() {
            return Ok(id);
        }
        if self.next >= self.limit {
            return Err(WriteError::Ids {
                what: self.what,
                limit: self.limit,
            });
        }
        self.next += 1;
        Ok(self.next - 1)
    }

    fn give(&mut self, id: u32) {
        self.free.push_back(id);
    }

    /// Marks IDs a previous agent used as taken; the unused ones below them become free.
    fn adopt(&mut self, used: &[u32]) {
        let Some(&max) = used.iter().max() else {
            return;
        };
        if max >= self.next {
            let used: HashSet<u32> = used.iter().copied().collect();
            self.free = (1..=max).filter(|i| !used.contains(i)).collect();
            self.next = max + 1;
        }
    }
}

/// One frontend entry (with its slots) as written.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WrittenFrontend {
    key: SvcKey,
    value: SvcValue,
    slots: Vec<u32>,
}

/// One service port (one family) as written.
#[derive(Debug, Clone)]
struct WrittenPort {
    ident: (Arc<str>, Protocol, IpFamily),
    service_id: u32,
    frontends: Vec<WrittenFrontend>,
    /// (frontend address, port, protocol) → rev-NAT ID.
    revnats: Vec<((IpAddr, u16, Protocol), u32)>,
    src_ranges: Vec<SrcRangeKey>,
    src_range_bits: Vec<u32>,
    /// Backends this port holds a reference on.
    backends: Vec<BackendAddr>,
    /// Serving backends (flows to others are stale).
    serving: HashSet<BackendAddr>,
    info: SvcInfo,
}

impl WrittenPort {
    /// The frontends (address, port) as the maps keep them.
    fn frontend_peers(&self) -> Vec<Peer> {
        self.revnats
            .iter()
            .map(|((ip, port, _), _)| (words(*ip), port_be(*port)))
            .collect()
    }
}

#[derive(Debug, Default)]
struct WrittenService {
    ports: Vec<WrittenPort>,
    /// Its ClusterIPs' other-ports entries (REJECT for ports the Service does not define).
    other_ports: Vec<SvcKey>,
}

/// Flows and affinities that must go because a backend stopped serving a service port.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Purge {
    /// (service ID, backend ID) pairs.
    pub pairs: Vec<(u32, u32)>,
    /// Backend IDs gone altogether (they left while no agent ran): state of every service.
    pub backends: Vec<u32>,
    /// Service port IDs gone (while no agent ran): state of every backend.
    pub services: Vec<u32>,
    /// Backends that left a UDP service port: connected sockets still sent to them go.
    pub udp_peers: Vec<StaleUdpPeer>,
}

impl Purge {
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
            && self.backends.is_empty()
            && self.services.is_empty()
            && self.udp_peers.is_empty()
    }

    pub fn extend(&mut self, other: Purge) {
        self.pairs.extend(other.pairs);
        self.backends.extend(other.backends);
        self.services.extend(other.services);
        self.udp_peers.extend(other.udp_peers);
    }

    /// A UDP backend left: connected sockets sent to it through `frontends` (`None`: any) go.
    fn udp_backend_left(&mut self, b: &BackendAddr, frontends: impl FnOnce() -> Option<Vec<Peer>>) {
        if b.proto == PROTO_UDP {
            self.udp_peers.push(StaleUdpPeer {
                backend: (b.addr, b.port),
                frontends: frontends(),
            });
        }
    }
}

/// What a write did, for metrics and logs.
#[derive(Debug, Default, Clone, Copy)]
pub struct WriteStats {
    pub entries_written: usize,
    pub entries_deleted: usize,
}

pub struct Writer {
    maps: LbMaps,
    services: HashMap<ObjKey, WrittenService>,
    backends: HashMap<BackendAddr, BackendRef>,
    backend_ids: Ids,
    service_ids: Ids,
    revnat_ids: Ids,
    /// Entries in use, for capacity checks.
    svc_entries: usize,
    revnat_entries: usize,
    srcrange_entries: usize,
    node_addresses: Vec<IpAddr>,
    stats: WriteStats,
    /// A previous agent's service ports (from `tg_svcinfo_v1`) not yet claimed by the current
    /// state: a port that is still there keeps its ID (ClientIP affinities are keyed by it).
    adopted_ports: HashMap<SvcInfo, u32>,
    /// A previous agent's (service port ID, backend ID) pairs, from the slots of
    /// `tg_svc_v1`: those the current state no longer serves are purged after adoption.
    adopted_pairs: HashSet<(u32, u32)>,
    /// A previous agent's frontends (address, port, protocol as the maps keep them) not yet
    /// claimed → (frontend ID, service port ID): a frontend still there for the same service
    /// port keeps its ID, so the source ranges keyed by it never name another frontend.
    adopted_frontends: HashMap<Claim, (u32, u32)>,
    /// `--lb-algorithm maglev`: service ports with external frontends get a Maglev table.
    maglev: bool,
    /// Its entries (`--maglev-table-size`, a prime of `maglev::SIZES`).
    maglev_size: u32,
    /// Service port ID → the backend IDs of its Maglev table as written (sorted).
    maglev_tables: HashMap<u32, Vec<u32>>,
    /// Services with ports the programs cannot balance (SCTP) → how many.
    unbalanced: HashMap<ObjKey, usize>,
    /// The Service that wrote each frontend: an entry is only ever written and removed by its
    /// owner, so one Service's change never takes away another's frontend.
    owners: HashMap<Claim, ObjKey>,
    /// A previous agent's frontends → the Service that held them (by the names of its service
    /// ports in `tg_svcinfo_v1`), held for it while the first state is written (until
    /// [`Writer::end_reservations`]): a frontend two Services claim stays with the one that had
    /// it, instead of going to whichever is written first.
    reserved: HashMap<Claim, ObjKey>,
}

/// Can the kernel programs balance this port's protocol? They handle TCP and UDP; an SCTP
/// port is left out of the maps (reported, never half-programmed).
pub fn balanced(port: &ServicePortState) -> bool {
    port.protocol != Protocol::Sctp
}

fn fill(dst: &mut [u8], s: &str) {
    let b = s.as_bytes();
    let n = b.len().min(dst.len().saturating_sub(1));
    dst[..n].copy_from_slice(&b[..n]);
}

/// What `tg_svcinfo_v1` says about a service port (also how a restarted agent recognizes it).
fn port_info(state: &ServiceState, port: &ServicePortState) -> SvcInfo {
    let mut info = SvcInfo::default();
    fill(&mut info.namespace, &state.namespace);
    fill(&mut info.name, &state.name);
    fill(&mut info.port_name, &port.name);
    info.port = port.port;
    info.proto = port.protocol.number();
    info.family = if port.ip_family == IpFamily::IPv4 {
        4
    } else {
        6
    };
    info
}

impl BackendAddr {
    /// What a Maglev table knows it by (the same on every node).
    fn identity(&self) -> [u8; 19] {
        identity(&self.addr, self.port, self.proto)
    }
}

fn backend_addr(e: &EndpointAddr, proto: Protocol) -> BackendAddr {
    BackendAddr {
        addr: words(e.ip),
        port: port_be(e.port),
        proto: proto.number(),
    }
}

impl Writer {
    /// Takes over maps that may already hold a previous agent's state: that state keeps
    /// serving until [`Writer::adopt_done`] removes what the new state no longer has.
    pub fn new(maps: LbMaps) -> Self {
        let backend_capacity = maps.capacity.backend;
        Self {
            maps,
            services: HashMap::new(),
            backends: HashMap::new(),
            // Backend IDs span the backend map; per-backend counters exist for the IDs below
            // tg_bestat_v1's size (handed out before the IDs above it).
            backend_ids: Ids::preferring(
                "backend",
                u32::try_from(backend_capacity)
                    .unwrap_or(u32::MAX - 1)
                    .saturating_add(1),
                stats::CAPACITY,
            ),
            service_ids: Ids::new("service port", stats::CAPACITY),
            revnat_ids: Ids::new("frontend", 1 << 30),
            svc_entries: 0,
            revnat_entries: 0,
            srcrange_entries: 0,
            node_addresses: Vec::new(),
            stats: WriteStats::default(),
            adopted_ports: HashMap::new(),
            adopted_pairs: HashSet::new(),
            adopted_frontends: HashMap::new(),
            maglev: false,
            maglev_size: maglev::DEFAULT_SIZE,
            maglev_tables: HashMap::new(),
            unbalanced: HashMap::new(),
            owners: HashMap::new(),
            reserved: HashMap::new(),
        }
    }

    /// Traffic from outside picks backends by Maglev tables (`--lb-algorithm maglev`); set
    /// before the first state is written.
    pub fn set_maglev(&mut self, on: bool) {
        self.maglev = on;
    }

    /// The Maglev tables' size (one of `maglev::SIZES`; [`maglev::DEFAULT_SIZE`] unless set);
    /// set before the first state is written, with a map sized for it
    /// ([`super::MapSizes::maglev`]).
    pub fn set_maglev_size(&mut self, size: u32) {
        self.maglev_size = size;
    }

    pub fn maps(&mut self) -> &mut LbMaps {
        &mut self.maps
    }

    pub fn programmed_services(&self) -> usize {
        self.services.len()
    }

    /// Service ports left out of the maps because of their protocol (SCTP).
    pub fn unbalanced_ports(&self) -> usize {
        self.unbalanced.values().sum()
    }

    /// The service's ports left out of the maps because of their protocol (SCTP).
    pub fn unbalanced_ports_of(&self, key: &ObjKey) -> usize {
        self.unbalanced.get(key).copied().unwrap_or(0)
    }

    /// Keeps count of a service's SCTP ports (the programmer reports a change of it).
    fn note_unbalanced(&mut self, change: &ServiceChange) {
        let count = change
            .new
            .as_ref()
            .map_or(0, |s| s.ports.iter().filter(|p| !balanced(p)).count());
        if count == 0 {
            self.unbalanced.remove(&change.key);
        } else {
            self.unbalanced.insert(change.key.clone(), count);
        }
    }

    pub fn take_stats(&mut self) -> WriteStats {
        std::mem::take(&mut self.stats)
    }

    pub fn set_node(&mut self, node: &NodeInfo) {
        self.node_addresses = node.addresses.clone();
    }

    /// Makes `tg_svccidr_v1` hold exactly these ServiceCIDR prefixes, and `tg_cidrbits_v1` the
    /// slices they reach into. Prefixes kept keep their counters; entries of a previous run that
    /// are no longer wanted are removed. A slice's bit is set before a prefix in it is written
    /// and cleared after the last one is removed, so the filter never hides a prefix.
    pub fn set_service_cidrs(&mut self, cidrs: &[IpNet]) -> Result<(), WriteError> {
        let wanted: HashSet<(u32, [u32; 4])> = cidrs
            .iter()
            .map(|c| {
                let (addr, bits) = prefix_words(c.addr, c.prefix_len);
                (bits, addr)
            })
            .collect();
        let present: HashSet<(u32, [u32; 4])> = self
            .maps
            .svccidr
            .keys()
            .filter_map(Result::ok)
            .map(|k| (k.prefix_len(), k.data().addr))
            .collect();
        let missing: Vec<&(u32, [u32; 4])> = wanted.difference(&present).collect();
        let free =
            (svccidr::CAPACITY as usize).saturating_sub(present.intersection(&wanted).count());
        if missing.len() > free {
            return Err(WriteError::Capacity {
                map: svccidr::NAME,
                needed: missing.len(),
                free,
            });
        }
        let bits = slice_bits(wanted.iter());
        // Before any prefix is written: what the map has, and the new prefixes' slices.
        self.write_cidr_bits(|word, old| old | bits[word])?;
        for &(bits, addr) in present.difference(&wanted) {
            let _ = self
                .maps
                .svccidr
                .remove(&Key::new(bits, SvcCidrKey { addr }));
            self.stats.entries_deleted += 1;
        }
        for &(bits, addr) in missing {
            self.maps
                .svccidr
                .insert(
                    &Key::new(bits, SvcCidrKey { addr }),
                    SvcCidrValue::default(),
                    0,
                )
                .map_err(|source| WriteError::Map {
                    map: svccidr::NAME,
                    source,
                })?;
            self.stats.entries_written += 1;
        }
        // After the removals: exactly the slices of the prefixes left.
        self.write_cidr_bits(|word, _| bits[word])
    }

    /// Rewrites the words of `tg_cidrbits_v1` that `new(word, old)` changes.
    fn write_cidr_bits(&mut self, new: impl Fn(usize, u64) -> u64) -> Result<(), WriteError> {
        let map_err = |source| WriteError::Map {
            map: svccidr::BITS_NAME,
            source,
        };
        for word in 0..svccidr::WORDS {
            let old = self.maps.cidr_bits.get(&word, 0).map_err(map_err)?;
            let value = new(word as usize, old);
            if value != old {
                self.maps.cidr_bits.set(word, value, 0).map_err(map_err)?;
                self.stats.entries_written += 1;
            }
        }
        Ok(())
    }

    /// What the previous run had and the current state lacks, released and to be purged.
    fn departed_while_down(&mut self) -> Purge {
        let mut purge = Purge::default();
        // Adopted backends the current state does not reference.
        let gone: Vec<(BackendAddr, u32)> = self
            .backends
            .iter()
            .filter(|(_, r)| r.refs == 0)
            .map(|(a, r)| (*a, r.id))
            .collect();
        for (addr, id) in gone {
            self.backends.remove(&addr);
            self.backend_ids.give(id);
            purge.backends.push(id);
            purge.udp_backend_left(&addr, || None);
        }
        // Frontends that are gone (their revnat entries are removed with the other leftovers).
        for (_, (id, _)) in std::mem::take(&mut self.adopted_frontends) {
            self.revnat_ids.give(id);
        }
        // Service ports that are gone: all their state.
        for (_, id) in std::mem::take(&mut self.adopted_ports) {
            self.service_ids.give(id);
            purge.services.push(id);
        }
        // Backends that left a service port that is still there.
        let mut before: HashMap<u32, Vec<u32>> = HashMap::new();
        for (service_id, backend_id) in std::mem::take(&mut self.adopted_pairs) {
            before.entry(service_id).or_default().push(backend_id);
        }
        let by_id: HashMap<u32, BackendAddr> =
            self.backends.iter().map(|(a, r)| (r.id, *a)).collect();
        for port in self.services.values().flat_map(|s| &s.ports) {
            let Some(previous) = before.get(&port.service_id) else {
                continue;
            };
            let serving: HashSet<u32> = port
                .serving
                .iter()
                .filter_map(|b| self.backends.get(b).map(|r| r.id))
                .collect();
            for &backend_id in previous.iter().filter(|id| !serving.contains(id)) {
                purge.pairs.push((port.service_id, backend_id));
                if let Some(b) = by_id.get(&backend_id) {
                    purge.udp_backend_left(b, || Some(port.frontend_peers()));
                }
            }
        }
        purge
    }

    /// Removes every entry a previous agent left that the current state does not have
    /// (called once, after the first complete state is written). Returns how many entries went
    /// and the purge of what changed while no agent ran: backends gone altogether, service
    /// ports gone, and backends that left a service port that is still there (their UDP flows,
    /// affinities, socket choices and connected UDP sockets).
    pub fn adopt_done(&mut self) -> Result<(usize, Purge), WriteError> {
        let purge = self.departed_while_down();
        let ports = || self.services.values().flat_map(|s| &s.ports);
        let wanted_svc: HashSet<SvcKey> = ports()
            .flat_map(|p| &p.frontends)
            .flat_map(|f| {
                (0..=f.slots.len()).map(move |slot| SvcKey {
                    slot: slot as u16,
                    ..f.key
                })
            })
            .chain(
                self.services
                    .values()
                    .flat_map(|s| s.other_ports.iter().copied()),
            )
            .collect();
        let mut removed = remove_keys_where(&mut self.maps.svc, |k| !wanted_svc.contains(k));
        let wanted_backends: HashSet<u32> = self.backends.values().map(|b| b.id).collect();
        removed += remove_keys_where(&mut self.maps.backend, |k| !wanted_backends.contains(k));
        let wanted_revnat: HashSet<u32> = ports()
            .flat_map(|p| p.revnats.iter().map(|(_, id)| *id))
            .collect();
        let wanted_info: HashSet<u32> = ports().map(|p| p.service_id).collect();
        removed += remove_keys_where(&mut self.maps.revnat, |k| !wanted_revnat.contains(k));
        // Names are not counted: they are not state the programs read.
        remove_keys_where(&mut self.maps.svcinfo, |k| !wanted_info.contains(k));
        // Source ranges the current state does not have (a range left or changed, a frontend
        // went): kept, they would allow clients the ranges no longer allow.
        let wanted_ranges: HashSet<(u32, SrcRangeKey)> = ports()
            .flat_map(|p| {
                p.src_range_bits
                    .iter()
                    .copied()
                    .zip(p.src_ranges.iter().copied())
            })
            .collect();
        let stale: Vec<Key<SrcRangeKey>> = self
            .maps
            .srcrange
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted_ranges.contains(&(k.prefix_len(), k.data())))
            .collect();
        removed += stale.len();
        for k in &stale {
            let _ = self.maps.srcrange.remove(k);
        }
        // Maglev tables of service ports gone, or all of them with `--lb-algorithm random`,
        // and chunks past this table size (a previous agent's larger one).
        let (tables, chunks) = (&self.maglev_tables, maglev::chunks(self.maglev_size));
        removed += remove_keys_where(&mut self.maps.maglev, |k| {
            !tables.contains_key(&k.service_id) || k.chunk >= chunks
        });
        Ok((removed, purge))
    }

    /// Takes over a previous agent's IDs (called before the first state is written):
    /// backends keep theirs (from `tg_backend_v1`) and service ports theirs (from
    /// `tg_svcinfo_v1`), so affinity entries, kept socket choices and counters stay
    /// meaningful across restarts; the previous (service port, backend) pairs are noted for
    /// [`Writer::adopt_done`].
    pub fn adopt(&mut self) {
        let existing: Vec<(u32, Backend)> =
            self.maps.backend.iter().filter_map(Result::ok).collect();
        for (id, b) in existing {
            let addr = BackendAddr {
                addr: b.addr,
                port: b.port,
                proto: b.proto,
            };
            self.backends.insert(addr, BackendRef { id, refs: 0 });
        }
        let used: Vec<u32> = self.backends.values().map(|b| b.id).collect();
        self.backend_ids.adopt(&used);
        self.adopted_ports = self
            .maps
            .svcinfo
            .iter()
            .filter_map(Result::ok)
            .map(|(id, info)| (info, id))
            .collect();
        let used: Vec<u32> = self.adopted_ports.values().copied().collect();
        self.service_ids.adopt(&used);
        let (frontends, slots): (Vec<(SvcKey, SvcValue)>, Vec<_>) = self
            .maps
            .svc
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, _)| !k.is_other_ports())
            .partition(|(k, _)| k.slot == 0);
        let services: HashMap<SvcKey, u32> =
            frontends.iter().map(|(k, v)| (*k, v.service_id)).collect();
        self.adopted_frontends = frontends
            .iter()
            .map(|(k, v)| ((k.addr, k.port, k.proto), (v.rev_nat_id, v.service_id)))
            .collect();
        let used: Vec<u32> = self.adopted_frontends.values().map(|(id, _)| *id).collect();
        self.revnat_ids.adopt(&used);
        let holders: HashMap<u32, ObjKey> = self
            .adopted_ports
            .iter()
            .map(|(info, id)| {
                let key = ObjKey::new(
                    &super::inspect::text(&info.namespace),
                    &super::inspect::text(&info.name),
                );
                (*id, key)
            })
            .collect();
        self.reserved = self
            .adopted_frontends
            .iter()
            .filter_map(|(claim, (_, service_id))| Some((*claim, holders.get(service_id)?.clone())))
            .collect();
        self.adopted_pairs = slots
            .iter()
            .filter_map(|(k, v)| {
                let frontend = SvcKey { slot: 0, ..*k };
                services.get(&frontend).map(|&s| (s, v.backend_id))
            })
            .collect();
    }

    /// Lets go of the previous agent's frontends that the Services holding them did not claim
    /// again (called once the first state's changes have all been tried): another Service's
    /// claim waiting for one can then be written.
    pub fn end_reservations(&mut self) {
        // Taken, not cleared: the map's room goes too, and the calls after every later update
        // cost nothing.
        drop(std::mem::take(&mut self.reserved));
    }

    /// Applies one service's change. On error the service keeps its previous programming and
    /// nothing else is affected.
    pub fn apply(&mut self, change: &ServiceChange) -> Result<Purge, WriteError> {
        if let Some(new) = &change.new {
            self.check_claims(&change.key, new)?;
        }
        self.note_unbalanced(change);
        let old = self.services.remove(&change.key);
        let result = match &change.new {
            Some(new) => self.program(new, old.as_ref()),
            None => Ok(WrittenService::default()),
        };
        match result {
            Ok(new) => {
                let purge = self.retire(old.as_ref(), &new);
                for claim in old.iter().flat_map(claims) {
                    if self.owners.get(&claim) == Some(&change.key) {
                        self.owners.remove(&claim);
                    }
                }
                for claim in claims(&new) {
                    self.owners.insert(claim, change.key.clone());
                }
                if !new.ports.is_empty() || !new.other_ports.is_empty() {
                    self.services.insert(change.key.clone(), new);
                }
                Ok(purge)
            }
            Err(e) => {
                if let Some(old) = old {
                    self.services.insert(change.key.clone(), old);
                }
                Err(e)
            }
        }
    }

    fn put_svc(&mut self, key: SvcKey, value: SvcValue) -> Result<(), WriteError> {
        self.maps
            .svc
            .insert(key, value, 0)
            .map_err(|source| WriteError::Map {
                map: svc::NAME,
                source,
            })
    }

    /// Refuses a state with a frontend another Service wrote (before anything is written).
    fn check_claims(&self, key: &ObjKey, state: &ServiceState) -> Result<(), WriteError> {
        let ports = || state.ports.iter().filter(|p| balanced(p));
        let frontends = ports().flat_map(|p| p.frontends.iter().map(move |f| (p.protocol, f)));
        for (proto, fe) in frontends {
            let claim = (words(fe.ip), port_be(fe.port), proto.number());
            let owner = self
                .owners
                .get(&claim)
                .or_else(|| self.reserved.get(&claim));
            if let Some(owner) = owner.filter(|o| *o != key) {
                let at = EndpointAddr {
                    ip: fe.ip,
                    port: fe.port,
                };
                return Err(WriteError::Taken {
                    frontend: format!("{:?} {at}/{}", fe.kind, proto.as_str()),
                    owner: owner.clone(),
                });
            }
        }
        for k in other_ports_keys(state) {
            if let Some(owner) = self.owners.get(&(k.addr, 0, 0)).filter(|o| *o != key) {
                return Err(WriteError::Taken {
                    frontend: format!("ClusterIP {}", super::addr::ip(k.addr)),
                    owner: owner.clone(),
                });
            }
        }
        Ok(())
    }

    fn acquire(&mut self, addr: BackendAddr) -> Result<u32, WriteError> {
        if let Some(r) = self.backends.get_mut(&addr) {
            r.refs += 1;
            return Ok(r.id);
        }
        if self.backends.len() >= self.maps.capacity.backend {
            return Err(WriteError::Capacity {
                map: backend::NAME,
                needed: 1,
                free: 0,
            });
        }
        if addr.proto == PROTO_TCP {
            // Before any socket can be translated to it: getpeername must find its record.
            self.maps
                .peer_ports
                .allow(addr.port)
                .map_err(|source| WriteError::Map {
                    map: sockrev::PORT_NAME,
                    source,
                })?;
        }
        let id = self.backend_ids.take()?;
        let value = Backend {
            addr: addr.addr,
            port: addr.port,
            proto: addr.proto,
            flags: 0,
        };
        if let Err(source) = self.maps.backend.insert(id, value, 0) {
            self.backend_ids.give(id);
            return Err(WriteError::Map {
                map: backend::NAME,
                source,
            });
        }
        self.zero_counters(id, false);
        self.stats.entries_written += 1;
        self.backends.insert(addr, BackendRef { id, refs: 1 });
        Ok(id)
    }

    fn release(&mut self, addr: &BackendAddr) -> Option<u32> {
        let r = self.backends.get_mut(addr)?;
        r.refs = r.refs.saturating_sub(1);
        if r.refs > 0 {
            return None;
        }
        let id = r.id;
        self.backends.remove(addr);
        let _ = self.maps.backend.remove(&id);
        self.stats.entries_deleted += 1;
        self.backend_ids.give(id);
        Some(id)
    }

    fn zero_counters(&mut self, id: u32, service: bool) {
        let cpus = aya::util::nr_cpus().unwrap_or(1);
        let zeros = aya::maps::PerCpuValues::try_from(vec![Counters::default(); cpus]);
        if let Ok(zeros) = zeros {
            let map = if service {
                &mut self.maps.svcstat
            } else {
                &mut self.maps.bestat
            };
            let _ = map.set(id, zeros, 0);
        }
    }

    /// Writes `state` (reusing `old`'s IDs where the port or frontend is the same) and returns
    /// what was written.
    fn program(
        &mut self,
        state: &ServiceState,
        old: Option<&WrittenService>,
    ) -> Result<WrittenService, WriteError> {
        let ports = || state.ports.iter().filter(|p| balanced(p));
        let needed_svc: usize = ports()
            .map(|p| {
                p.frontends
                    .iter()
                    .map(|f| {
                        let inside = 1 + p.endpoints_from_inside(f.kind).len();
                        let outside = if external_entry(p, f.kind) {
                            1 + p.endpoints_from_outside(f.kind).len()
                        } else {
                            0
                        };
                        inside + outside
                    })
                    .sum::<usize>()
            })
            .sum();
        let other_ports = other_ports_keys(state);
        let needed_svc = needed_svc + other_ports.len();
        let old_svc: usize = old
            .map(|o| {
                o.ports
                    .iter()
                    .flat_map(|p| &p.frontends)
                    .map(|f| 1 + f.slots.len())
                    .sum::<usize>()
                    + o.other_ports.len()
            })
            .unwrap_or(0);
        let free = self
            .maps
            .capacity
            .svc
            .saturating_sub(self.svc_entries.saturating_sub(old_svc));
        if needed_svc > free {
            return Err(WriteError::Capacity {
                map: svc::NAME,
                needed: needed_svc,
                free,
            });
        }
        let mut written = WrittenService::default();
        for port in ports() {
            let ident = (port.name.clone(), port.protocol, port.ip_family);
            let prev = old.and_then(|o| o.ports.iter().find(|p| p.ident == ident));
            let adopted = prev
                .is_none()
                .then(|| self.adopted_ports.remove(&port_info(state, port)))
                .flatten();
            let service_id = match (prev, adopted) {
                (Some(p), _) => p.service_id,
                (None, Some(id)) => id,
                (None, None) => {
                    let id = match self.service_ids.take() {
                        Ok(id) => id,
                        Err(e) => {
                            self.undo(written, old);
                            return Err(e);
                        }
                    };
                    self.zero_counters(id, true);
                    id
                }
            };
            let mut out = WrittenPort {
                ident,
                service_id,
                frontends: Vec::new(),
                revnats: Vec::new(),
                src_ranges: Vec::new(),
                src_range_bits: Vec::new(),
                backends: Vec::new(),
                serving: HashSet::new(),
                info: SvcInfo::default(),
            };
            let result = self.program_port(state, port, prev, &mut out);
            written.ports.push(out);
            if let Err(e) = result {
                self.undo(written, old);
                return Err(e);
            }
        }
        if let Err(e) = self.write_other_ports(&other_ports, old, &mut written) {
            self.undo(written, old);
            return Err(e);
        }
        Ok(written)
    }

    /// The ClusterIPs' other-ports entries, after the ports (a ClusterIP refuses only the ports
    /// its Service does not define once those it defines are there). Written once: the value
    /// never changes.
    fn write_other_ports(
        &mut self,
        keys: &[SvcKey],
        old: Option<&WrittenService>,
        out: &mut WrittenService,
    ) -> Result<(), WriteError> {
        let value = SvcValue {
            flags: svc_flags::OTHER_PORTS,
            ..SvcValue::default()
        };
        for key in keys {
            let had = old.is_some_and(|o| o.other_ports.contains(key));
            if !had {
                self.put_svc(*key, value)?;
                self.svc_entries += 1;
                self.stats.entries_written += 1;
            }
            out.other_ports.push(*key);
        }
        Ok(())
    }

    /// Takes back what a failed `program` wrote: entries `old` does not have are removed and
    /// every reference taken is released. (Entries it overwrote are rewritten from `old`'s
    /// record on the next change of this service.)
    fn undo(&mut self, partial: WrittenService, old: Option<&WrittenService>) {
        let keep = WrittenService {
            ports: old.map(|o| o.ports.clone()).unwrap_or_default(),
            other_ports: old.map(|o| o.other_ports.clone()).unwrap_or_default(),
        };
        // A table the failed write replaced may name backends about to be released (whose
        // IDs another backend could take): it goes, and is written again with the service.
        for p in &partial.ports {
            self.remove_maglev(p.service_id);
        }
        // Retiring `partial` against `old` removes only what old does not have (and gives back
        // service IDs old does not use); `old`'s references are untouched because partial
        // holds its own.
        let _ = self.retire(Some(&partial), &keep);
    }

    fn program_port(
        &mut self,
        state: &ServiceState,
        port: &ServicePortState,
        prev: Option<&WrittenPort>,
        out: &mut WrittenPort,
    ) -> Result<(), WriteError> {
        let service_id = out.service_id;
        let proto = port.protocol.number();
        out.serving = port
            .serving_endpoints
            .iter()
            .map(|e| backend_addr(e, port.protocol))
            .collect();
        out.info = port_info(state, port);
        if prev.map(|p| p.info) != Some(out.info) {
            self.maps
                .svcinfo
                .insert(service_id, out.info, 0)
                .map_err(|source| WriteError::Map {
                    map: svcinfo::NAME,
                    source,
                })?;
        }
        for fe in &port.frontends {
            let fkey = (fe.ip, fe.port, port.protocol);
            let rev_nat_id = match prev.and_then(|p| p.revnats.iter().find(|(k, _)| *k == fkey)) {
                Some((_, id)) => *id,
                None => {
                    // A frontend that now belongs to another service port (its address
                    // reassigned) gets a fresh ID: the old one's source ranges stay until the
                    // adoption ends.
                    let key = (words(fe.ip), port_be(fe.port), proto);
                    let id = match self.adopted_frontends.get(&key) {
                        Some(&(id, old_service)) if old_service == service_id => {
                            self.adopted_frontends.remove(&key);
                            id
                        }
                        _ => self.revnat_ids.take()?,
                    };
                    let value = RevNat {
                        addr: words(fe.ip),
                        port: port_be(fe.port),
                        pad: [0; 2],
                    };
                    self.maps
                        .revnat
                        .insert(id, value, 0)
                        .map_err(|source| WriteError::Map {
                            map: tollgate_common::lb::revnat::NAME,
                            source,
                        })?;
                    self.revnat_entries += 1;
                    self.stats.entries_written += 1;
                    id
                }
            };
            out.revnats.push((fkey, rev_nat_id));
            let mut flags = 0u16;
            if fe.kind.is_external() {
                flags |= svc_flags::EXTERNAL;
            }
            if fe.kind == FrontendKind::NodePort {
                flags |= svc_flags::NODE_ADDRESS;
            }
            if fe.kind == FrontendKind::LoadBalancer && !port.source_ranges.is_empty() {
                flags |= svc_flags::SOURCE_RANGES;
                self.source_ranges(port, fe, rev_nat_id, out)?;
            }
            if port.has_endpoints {
                flags |= svc_flags::DROP_IF_EMPTY;
            }
            let base = SvcValue {
                backend_id: 0,
                count: 0,
                flags,
                rev_nat_id,
                service_id,
                affinity_timeout: port.session_affinity_timeout_seconds.unwrap_or(0),
                maglev_size: if self.maglev { self.maglev_size } else { 0 },
            };
            // The entry traffic from outside finds (its own with the Local policy) picks by
            // the Maglev table, which holds that entry's backends.
            let maglev = if self.maglev && fe.kind.is_external() {
                svc_flags::MAGLEV
            } else {
                0
            };
            let inside = port.endpoints_from_inside(fe.kind).clone();
            let mut value = base;
            if !external_entry(port, fe.kind) {
                value.flags |= maglev;
            }
            self.write_frontend(fe, proto, scope::INTERNAL, value, &inside, port, prev, out)?;
            if external_entry(port, fe.kind) {
                let outside = port.endpoints_from_outside(fe.kind).clone();
                let mut value = base;
                value.flags |= svc_flags::LOCAL_ONLY | maglev;
                self.write_frontend(fe, proto, scope::EXTERNAL, value, &outside, port, prev, out)?;
            }
        }
        self.write_maglev(port, service_id)
    }

    /// The service port's Maglev table, from the backends traffic from outside uses (its
    /// external frontends' entries hold references on them): written when it has external
    /// frontends with backends and `--lb-algorithm maglev`, and only when those backends
    /// changed; removed otherwise.
    fn write_maglev(&mut self, port: &ServicePortState, service_id: u32) -> Result<(), WriteError> {
        let external = port.frontends.iter().find(|f| f.kind.is_external());
        let members: Vec<super::maglev::Member> = match external {
            Some(fe) if self.maglev => {
                let set = if external_entry(port, fe.kind) {
                    port.endpoints_from_outside(fe.kind)
                } else {
                    port.endpoints_from_inside(fe.kind)
                };
                set.iter()
                    .filter_map(|e| {
                        let b = backend_addr(e, port.protocol);
                        self.backends.get(&b).map(|r| (b.identity(), r.id))
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        if members.is_empty() {
            self.remove_maglev(service_id);
            return Ok(());
        }
        let mut ids: Vec<u32> = members.iter().map(|(_, id)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        if self.maglev_tables.get(&service_id) == Some(&ids) {
            return Ok(());
        }
        let table = table(&members, self.maglev_size);
        for (chunk, value) in chunks(&table) {
            let key = maglev::Key { service_id, chunk };
            if let Err(source) = self.maps.maglev.insert(key, *value, 0) {
                // No table rather than one of mixed chunks (or chunks nobody records): the
                // port picks at random until the retry writes it whole.
                self.maglev_tables.remove(&service_id);
                self.remove_chunks(service_id);
                return Err(WriteError::Map {
                    map: maglev::NAME,
                    source,
                });
            }
            self.stats.entries_written += 1;
        }
        self.maglev_tables.insert(service_id, ids);
        Ok(())
    }

    fn remove_maglev(&mut self, service_id: u32) {
        if self.maglev_tables.remove(&service_id).is_some() {
            self.remove_chunks(service_id);
        }
    }

    /// Every chunk a table of this size can have, whether written or not.
    fn remove_chunks(&mut self, service_id: u32) {
        for chunk in 0..maglev::chunks(self.maglev_size) {
            if self
                .maps
                .maglev
                .remove(&maglev::Key { service_id, chunk })
                .is_ok()
            {
                self.stats.entries_deleted += 1;
            }
        }
    }

    fn source_ranges(
        &mut self,
        port: &ServicePortState,
        fe: &Frontend,
        rev_nat_id: u32,
        out: &mut WrittenPort,
    ) -> Result<(), WriteError> {
        let mut entries: Vec<(IpAddr, u8)> = port
            .source_ranges
            .iter()
            .map(|r| (r.addr, r.prefix_len))
            .collect();
        // kube-proxy: if a node address is in a range, the LB VIP itself may be a source (the
        // VIP bound locally, looping back).
        if port
            .source_ranges
            .iter()
            .any(|r| self.node_addresses.iter().any(|a| r.contains(a)))
        {
            entries.push((fe.ip, if fe.ip.is_ipv4() { 32 } else { 128 }));
        }
        for (ip, prefix) in entries {
            let (addr, bits) = prefix_words(ip, prefix);
            let data = SrcRangeKey {
                rev_nat_id: rev_nat_id.to_be(),
                addr,
            };
            if self.srcrange_entries >= self.maps.capacity.srcrange {
                return Err(WriteError::Capacity {
                    map: srcrange::NAME,
                    needed: 1,
                    free: 0,
                });
            }
            self.maps
                .srcrange
                .insert(&Key::new(32 + bits, data), 1, 0)
                .map_err(|source| WriteError::Map {
                    map: srcrange::NAME,
                    source,
                })?;
            self.srcrange_entries += 1;
            out.src_ranges.push(data);
            out.src_range_bits.push(32 + bits);
        }
        Ok(())
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "one frontend entry's worth of context"
    )]
    fn write_frontend(
        &mut self,
        fe: &Frontend,
        proto: u8,
        scope: u8,
        mut value: SvcValue,
        set: &EndpointSet,
        port: &ServicePortState,
        prev: Option<&WrittenPort>,
        out: &mut WrittenPort,
    ) -> Result<(), WriteError> {
        let key = SvcKey {
            addr: words(fe.ip),
            port: port_be(fe.port),
            proto,
            scope,
            slot: 0,
            pad: [0; 2],
        };
        // Before the frontend exists: packets of its flows from outside must take the
        // conntrack lookup.
        self.maps
            .fe_ports
            .allow(key.port)
            .map_err(|source| WriteError::Map {
                map: feport::NAME,
                source,
            })?;
        let before = prev.and_then(|p| p.frontends.iter().find(|f| f.key == key));
        let mut slots = Vec::with_capacity(set.len());
        for e in set.iter() {
            let addr = backend_addr(e, port.protocol);
            let id = self.acquire(addr)?;
            out.backends.push(addr);
            slots.push(id);
        }
        for (i, id) in slots.iter().enumerate() {
            if before.and_then(|b| b.slots.get(i)) == Some(id) {
                continue;
            }
            let skey = SvcKey {
                slot: (i + 1) as u16,
                ..key
            };
            let sval = SvcValue {
                backend_id: *id,
                ..SvcValue::default()
            };
            self.put_svc(skey, sval)?;
            self.stats.entries_written += 1;
            if before.is_none_or(|b| i >= b.slots.len()) {
                self.svc_entries += 1;
            }
        }
        value.count = slots.len() as u16;
        if before.map(|b| b.value) != Some(value) {
            self.put_svc(key, value)?;
            self.stats.entries_written += 1;
            if before.is_none() {
                self.svc_entries += 1;
            }
        }
        // Slots beyond the new count go only now that the count no longer covers them.
        if let Some(b) = before {
            for slot in slots.len() + 1..=b.slots.len() {
                let _ = self.maps.svc.remove(&SvcKey {
                    slot: slot as u16,
                    ..key
                });
                self.svc_entries = self.svc_entries.saturating_sub(1);
                self.stats.entries_deleted += 1;
            }
        }
        out.frontends.push(WrittenFrontend { key, value, slots });
        Ok(())
    }

    /// Removes what `old` wrote and `new` did not, releases references, and returns the
    /// (service, backend) pairs whose flows and affinities are now stale.
    fn retire(&mut self, old: Option<&WrittenService>, new: &WrittenService) -> Purge {
        let mut purge = Purge::default();
        let Some(old) = old else {
            return purge;
        };
        for key in &old.other_ports {
            if !new.other_ports.contains(key) {
                let _ = self.maps.svc.remove(key);
                self.svc_entries = self.svc_entries.saturating_sub(1);
                self.stats.entries_deleted += 1;
            }
        }
        for op in &old.ports {
            let np = new.ports.iter().find(|p| p.ident == op.ident);
            for of in &op.frontends {
                let kept = np.and_then(|p| p.frontends.iter().find(|f| f.key == of.key));
                if kept.is_none() {
                    for slot in (1..=of.slots.len()).rev() {
                        let _ = self.maps.svc.remove(&SvcKey {
                            slot: slot as u16,
                            ..of.key
                        });
                    }
                    let _ = self.maps.svc.remove(&of.key);
                    self.svc_entries = self.svc_entries.saturating_sub(1 + of.slots.len());
                    self.stats.entries_deleted += 1 + of.slots.len();
                }
            }
            for (fkey, id) in &op.revnats {
                let kept = np.is_some_and(|p| p.revnats.iter().any(|(k, _)| k == fkey));
                if !kept {
                    let _ = self.maps.revnat.remove(id);
                    self.revnat_entries = self.revnat_entries.saturating_sub(1);
                    self.revnat_ids.give(*id);
                }
            }
            for (data, bits) in op.src_ranges.iter().zip(&op.src_range_bits) {
                let kept = np.is_some_and(|p| {
                    p.src_ranges
                        .iter()
                        .zip(&p.src_range_bits)
                        .any(|(d, b)| d == data && b == bits)
                });
                if !kept {
                    let _ = self.maps.srcrange.remove(&Key::new(*bits, *data));
                    self.srcrange_entries = self.srcrange_entries.saturating_sub(1);
                }
            }
            // Backends that stopped serving this port: their flows and affinities are stale.
            let service_id = op.service_id;
            for b in &op.serving {
                if np.is_none_or(|p| !p.serving.contains(b))
                    && let Some(r) = self.backends.get(b)
                {
                    purge.pairs.push((service_id, r.id));
                    purge.udp_backend_left(b, || Some(op.frontend_peers()));
                }
            }
            if np.is_none() {
                self.remove_maglev(service_id);
                let _ = self.maps.svcinfo.remove(&service_id);
                self.service_ids.give(service_id);
            }
        }
        // Release old references last: new references were taken first, so a backend that
        // stays keeps its entry and ID.
        for op in &old.ports {
            for b in &op.backends {
                self.release(b);
            }
        }
        purge
    }
}

/// What a written Service holds: its frontends and its other-ports entries.
fn claims(written: &WrittenService) -> impl Iterator<Item = Claim> + '_ {
    written
        .ports
        .iter()
        .flat_map(|p| &p.frontends)
        .map(|f| (f.key.addr, f.key.port, f.key.proto))
        .chain(written.other_ports.iter().map(|k| (k.addr, 0, 0)))
}

/// The other-ports entries of the Service's ClusterIPs (one per address, whatever its ports),
/// also for a Service whose ports the programs do not balance (SCTP only): TCP and UDP to its
/// ClusterIP are refused, as kube-proxy's nftables mode does, not dropped as unallocated.
fn other_ports_keys(state: &ServiceState) -> Vec<SvcKey> {
    let mut keys: Vec<SvcKey> = Vec::new();
    for fe in state
        .ports
        .iter()
        .flat_map(|p| &p.frontends)
        .filter(|f| f.kind == FrontendKind::ClusterIP)
    {
        let key = SvcKey::other_ports(words(fe.ip));
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys
}

/// The `tg_cidrbits_v1` words for these prefixes (LPM prefix length, address words).
fn slice_bits<'a>(prefixes: impl Iterator<Item = &'a (u32, [u32; 4])>) -> Vec<u64> {
    let mut words = vec![0u64; svccidr::WORDS as usize];
    for (bits, addr) in prefixes {
        let (first, last) = svccidr::slices(addr, *bits);
        for slice in first..=last {
            let (word, bit) = svccidr::slice_bit(slice);
            words[word as usize] |= bit;
        }
    }
    words
}

/// Does this frontend need its own entry for traffic from outside? Only external frontends
/// of an externalTrafficPolicy=Local port (its backends, and no SNAT, differ from inside).
fn external_entry(port: &ServicePortState, kind: FrontendKind) -> bool {
    kind.is_external() && port.external_traffic_policy_local
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Does the slice filter let `ip` through to the LPM lookup?
    fn passes_filter(words: &[u64], ip: &str) -> bool {
        let (word, bit) = svccidr::slice_bit(svccidr::slice(&words_of(ip)));
        words[word as usize] & bit != 0
    }

    fn words_of(ip: &str) -> [u32; 4] {
        words(ip.parse().unwrap())
    }

    fn bits_for(cidrs: &[&str]) -> Vec<u64> {
        let prefixes: Vec<(u32, [u32; 4])> = cidrs
            .iter()
            .map(|c| {
                let net = IpNet::parse(c).unwrap();
                let (addr, bits) = prefix_words(net.addr, net.prefix_len);
                (bits, addr)
            })
            .collect();
        slice_bits(prefixes.iter())
    }

    #[test]
    fn the_slice_filter_never_hides_a_service_cidr_address_and_skips_pod_addresses() {
        let w = bits_for(&["10.96.0.0/12", "fd00:10:96::/112", "fd00:96::/108"]);
        for inside in [
            "10.96.0.1",
            "10.96.7.7",
            "10.111.255.255",
            "fd00:10:96::a",
            "fd00:10:96::ffff",
            "fd00:96::1",
            "fd00:96::f:ffff",
        ] {
            assert!(passes_filter(&w, inside), "{inside}");
        }
        for outside in [
            "10.95.255.255",
            "10.112.0.0",
            "10.244.1.11",
            "192.168.77.11",
            "fd00:244:1::11",
            "fd00:10:244::5",
        ] {
            assert!(!passes_filter(&w, outside), "{outside}");
        }
        // 16 slices for the /12, one for the /112, 16 for the /108.
        let set: u32 = w.iter().map(|x| x.count_ones()).sum();
        assert_eq!(set, 16 + 1 + 16);
        // An IPv6 prefix shorter than /97 leaves its slice open: every one.
        let all = bits_for(&["fd00::/64"]);
        assert!(all.iter().all(|x| *x == u64::MAX));
    }

    #[test]
    fn ids_are_reused_as_late_as_possible_and_stop_at_the_limit() {
        let mut ids = Ids::preferring("backend", 7, 5);
        let taken: Vec<u32> = (0..3).map(|_| ids.take().unwrap()).collect();
        assert_eq!(taken, [1, 2, 3]);
        // Given back: not handed out while fresh IDs below the preferred bound remain.
        ids.give(2);
        assert_eq!(ids.take().unwrap(), 4);
        ids.give(3);
        ids.give(1);
        // Then the longest free first, then fresh IDs above the bound.
        assert_eq!(ids.take().unwrap(), 2);
        assert_eq!(ids.take().unwrap(), 3);
        assert_eq!(ids.take().unwrap(), 1);
        assert_eq!(ids.take().unwrap(), 5);
        assert_eq!(ids.take().unwrap(), 6);
        assert!(matches!(
            ids.take(),
            Err(WriteError::Ids {
                what: "backend",
                limit: 7
            })
        ));
        ids.give(4);
        assert_eq!(ids.take().unwrap(), 4);
    }

    #[test]
    fn adopted_ids_stay_taken_and_the_gaps_between_them_are_free() {
        let mut ids = Ids::preferring("service port", 100, 4);
        ids.adopt(&[5, 2]);
        // The gaps first (no fresh ID is left below the preferred bound), then fresh IDs.
        assert_eq!(ids.take().unwrap(), 1);
        assert_eq!(ids.take().unwrap(), 3);
        assert_eq!(ids.take().unwrap(), 4);
        assert_eq!(ids.take().unwrap(), 6);
        let mut fresh = Ids::new("backend", 100);
        fresh.adopt(&[]);
        assert_eq!(fresh.take().unwrap(), 1);
    }
}
