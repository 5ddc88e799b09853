//! IPv4 and IPv6 fragments (see `tollgate_common::lb::frag`): the first fragment's ports are
//! remembered by (source, destination, identification, protocol) for the later fragments of
//! its datagram.

use aya_ebpf::btf_maps::LruHashMap;
use tollgate_common::lb::frag::{self, Frag6Key, FragKey, FragPorts};

use crate::{
    maps::{FRAGMENTS, FRAGMENTS6},
    pkt::{FIRST_FRAGMENT, Pkt},
};

/// A first fragment: remember its ports (always true). A later fragment: fill its ports from
/// its first; false when the first was not seen (or its entry was evicted).
#[inline(always)]
pub fn ports(p: &mut Pkt) -> bool {
    if p.v6 {
        let k = Frag6Key {
            saddr: p.saddr,
            daddr: p.daddr,
            id: p.frag_id,
            proto: p.proto,
            pad: [0; 3],
        };
        follow(&FRAGMENTS6, k, p)
    } else {
        let k = FragKey {
            saddr: p.saddr[3],
            daddr: p.daddr[3],
            // The IPv4 identification is 16 bits (as it lies in the packet).
            id: p.frag_id as u16,
            proto: p.proto,
            pad: 0,
        };
        follow(&FRAGMENTS, k, p)
    }
}

#[inline(always)]
fn follow<K>(
    map: &LruHashMap<K, FragPorts, { frag::CAPACITY as usize }>,
    k: K,
    p: &mut Pkt,
) -> bool {
    if p.frag == FIRST_FRAGMENT {
        // A failed insert only leaves the later fragments untranslated, as they were.
        let _ = map.insert(
            k,
            FragPorts {
                sport: p.sport,
                dport: p.dport,
            },
            0,
        );
        return true;
    }
    // SAFETY: copied out immediately.
    match unsafe { map.get(k) }.copied() {
        Some(f) => {
            p.sport = f.sport;
            p.dport = f.dport;
            true
        }
        None => false,
    }
}
