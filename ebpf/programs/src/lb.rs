//! Frontend lookup and backend choice, shared by the socket hooks and the per-packet path.

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    maps::lpm_trie::Key,
};
use tollgate_common::lb::{
    affinity::{AffinityKey, AffinityValue},
    affinity_kind,
    backend::Backend,
    maglev, scope,
    stats::Counters,
    svc::{SvcKey, SvcValue},
    svc_flags,
    svccidr::{self, SvcCidrKey, SvcCidrValue},
};

use crate::{
    maps::{
        AFFINITY, BACKEND_STATS, BACKENDS, CIDR_BITS, MAGLEV, SERVICE_CIDRS, SERVICE_STATS,
        SERVICES,
    },
    pkt::Pkt,
};

/// Seconds of CLOCK_MONOTONIC (what userspace compares `last_seen`/`last_used` with).
#[inline(always)]
pub fn now_secs() -> u32 {
    // SAFETY: helper without preconditions.
    (unsafe { bpf_ktime_get_ns() } / 1_000_000_000) as u32
}

/// A frontend entry found for a destination.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Frontend {
    pub key: SvcKey,
    pub value: SvcValue,
}

#[inline(always)]
fn lookup(key: SvcKey) -> Option<Frontend> {
    // SAFETY: the value is copied out immediately.
    let value = *unsafe { SERVICES.get(key) }?;
    Some(Frontend { key, value })
}

/// For pods and host processes.
#[inline(always)]
pub fn frontend_inside(addr: [u32; 4], port: u16, proto: u8) -> Option<Frontend> {
    lookup(SvcKey {
        addr,
        port,
        proto,
        scope: scope::INTERNAL,
        slot: 0,
        pad: [0; 2],
    })
}

/// A ClusterIP's entry for the ports and protocols its Service does not define (REJECT), for
/// a destination no frontend matched.
#[inline(always)]
pub fn other_ports(addr: [u32; 4]) -> Option<Frontend> {
    lookup(SvcKey::other_ports(addr))
}

/// The ServiceCIDR prefix `addr` is inside, if any (the caller having found no frontend: an
/// unallocated Service IP).
#[inline(always)]
pub fn service_cidr(addr: [u32; 4]) -> Option<&'static SvcCidrValue> {
    let (word, bit) = svccidr::slice_bit(svccidr::slice(&addr));
    if CIDR_BITS.get(word).is_some_and(|w| w & bit == 0) {
        return None;
    }
    SERVICE_CIDRS.get(&Key::new(128, SvcCidrKey { addr }))
}

/// Counts a connection dropped for an unallocated address of the prefix `v`.
#[inline(always)]
pub fn count_unallocated(v: &SvcCidrValue) {
    // SAFETY: a map value (8-byte aligned, writable by programs), shared by every CPU: an
    // atomic add (BPF_ATOMIC | BPF_ADD).
    unsafe {
        use core::intrinsics::{AtomicOrdering::Relaxed, atomic_xadd};
        atomic_xadd::<u64, u64, { Relaxed }>(core::ptr::from_ref(&v.dropped).cast_mut(), 1);
    }
}

/// Looks `key` (slot 0) up, falling back to the internal scope for an external lookup and then
/// to the address's [`other_ports`] entry; fills `out` in place (for callers short of stack).
/// Returns whether it was found.
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "references into the per-CPU scratch map (via the caller); by-value copies would use the 512-byte stack"
)]
#[inline(always)]
pub fn frontend_into(key: &mut SvcKey, out: &mut Frontend) -> bool {
    // SAFETY: copied out immediately.
    let mut found = unsafe { SERVICES.get(&*key) }.copied();
    if found.is_none() && key.scope == scope::EXTERNAL {
        key.scope = scope::INTERNAL;
        // SAFETY: as above.
        found = unsafe { SERVICES.get(&*key) }.copied();
    }
    if found.is_none() {
        *key = SvcKey::other_ports(key.addr);
        // SAFETY: as above.
        found = unsafe { SERVICES.get(&*key) }.copied();
    }
    match found {
        Some(value) => {
            out.key = *key;
            out.value = value;
            true
        }
        None => false,
    }
}

#[inline(always)]
pub fn backend(id: u32) -> Option<Backend> {
    // SAFETY: copied out immediately.
    unsafe { BACKENDS.get(id) }.copied()
}

#[inline(always)]
fn slot(fe: &Frontend, slot: u16) -> Option<u32> {
    let mut key = fe.key;
    key.slot = slot;
    // SAFETY: copied out immediately.
    unsafe { SERVICES.get(key) }.map(|v| v.backend_id)
}

/// A backend choice (out of line: [`choose`] keeps its lookups in its own stack frame).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Chosen {
    pub id: u32,
    pub backend: Backend,
}

/// [`select`] for a packet's new flow, in its own stack frame; returns 1 with `out` filled,
/// or 0. Traffic from outside (`outside` = 1) to a frontend with a Maglev table picks by
/// the flow's hash.
#[inline(never)]
pub fn choose(fe: &Frontend, p: &Pkt, outside: u32, out: &mut Chosen) -> u32 {
    let hash = (outside != 0 && fe.value.flags & svc_flags::MAGLEV != 0)
        .then(|| maglev::hash(&p.saddr, p.sport, p.dport, p.proto));
    match select(fe, || p.saddr, affinity_kind::CLIENT_IP, hash) {
        Some((id, backend)) => {
            *out = Chosen { id, backend };
            1
        }
        None => 0,
    }
}

/// The backend the service port's Maglev table holds for `hash`, if it has a table.
#[inline(always)]
fn maglev_pick(fe: &Frontend, hash: u32) -> Option<(u32, Backend)> {
    let size = match fe.value.maglev_size {
        0 => maglev::DEFAULT_SIZE,
        m => m,
    };
    let index = hash % size;
    let key = maglev::Key {
        service_id: fe.value.service_id,
        chunk: index / maglev::CHUNK,
    };
    // SAFETY: one element read out of the chunk at once.
    let chunk = unsafe { MAGLEV.get(key) }?;
    // CHUNK is a power of two: the mask bounds the index for the verifier.
    let id = *chunk.backends.get((index & (maglev::CHUNK - 1)) as usize)?;
    backend(id).map(|b| (id, b))
}

/// Picks a backend: the affine one while its affinity is fresh, else the Maglev table's for
/// `hash` (when given and the service port has a table), else a random slot (no shared cursor
/// is written per connection). `client` identifies the client for affinity; it and the clock
/// are read only for a service with ClientIP affinity (both are helper calls, and this runs on
/// every connection).
#[inline(always)]
pub fn select(
    fe: &Frontend,
    client: impl FnOnce() -> [u32; 4],
    client_kind: u8,
    hash: Option<u32>,
) -> Option<(u32, Backend)> {
    let count = fe.value.count;
    if count == 0 {
        return None;
    }
    let timeout = fe.value.affinity_timeout;
    let affinity = (timeout != 0).then(|| {
        let key = AffinityKey {
            client: client(),
            service_id: fe.value.service_id,
            kind: client_kind,
            pad: [0; 3],
        };
        (key, now_secs())
    });
    if let Some((akey, now)) = affinity
        // SAFETY: copied out immediately.
        && let Some(a) = unsafe { AFFINITY.get(akey) }.copied()
        && now.wrapping_sub(a.last_used) <= timeout
        && let Some(b) = backend(a.backend_id)
    {
        let _ = AFFINITY.insert(
            akey,
            AffinityValue {
                backend_id: a.backend_id,
                last_used: now,
            },
            0,
        );
        return Some((a.backend_id, b));
    }
    let (id, b) = match hash.and_then(|h| maglev_pick(fe, h)) {
        Some(chosen) => chosen,
        None => {
            // SAFETY: helper without preconditions.
            let rnd = unsafe { bpf_get_prandom_u32() };
            let pick = (rnd % u32::from(count)) as u16 + 1;
            // A shrinking service may have lost the picked slot between the two lookups.
            let id = match slot(fe, pick) {
                Some(id) => id,
                None => slot(fe, 1)?,
            };
            (id, backend(id)?)
        }
    };
    if let Some((akey, now)) = affinity {
        let _ = AFFINITY.insert(
            akey,
            AffinityValue {
                backend_id: id,
                last_used: now,
            },
            0,
        );
    }
    Some((id, b))
}

/// Adds to this CPU's counters of a service port and a backend.
#[inline(always)]
pub fn count(
    service_id: u32,
    backend_id: u32,
    packets: u64,
    bytes: u64,
    connections: u64,
    refused: u64,
) {
    for (map, id) in [(&SERVICE_STATS, service_id), (&BACKEND_STATS, backend_id)] {
        if let Some(c) = map.get_ptr_mut(id) {
            // SAFETY: this CPU's slot of a per-CPU array; nothing else writes it concurrently.
            unsafe {
                let c: &mut Counters = &mut *c;
                c.packets += packets;
                c.bytes += bytes;
                c.connections += connections;
                c.refused += refused;
            }
        }
    }
}
