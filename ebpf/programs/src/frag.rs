//! IPv4 fragments (see `tollgate_common::lb::frag`): the first fragment's ports are remembered
//! by (source, destination, IP id, protocol) for the later fragments of its datagram.

use tollgate_common::lb::frag::{FragKey, FragPorts};

use crate::{
    maps::FRAGMENTS,
    pkt::{FIRST_FRAGMENT, Pkt},
};

#[inline(always)]
fn key(p: &Pkt) -> FragKey {
    FragKey {
        saddr: p.saddr[3],
        daddr: p.daddr[3],
        id: p.frag_id,
        proto: p.proto,
        pad: 0,
    }
}

/// A first fragment: remember its ports (always true). A later fragment: fill its ports from
/// its first; false when the first was not seen (or its entry was evicted).
#[inline(always)]
pub fn ports(p: &mut Pkt) -> bool {
    let k = key(p);
    if p.frag == FIRST_FRAGMENT {
        // A failed insert only leaves the later fragments untranslated, as they were.
        let _ = FRAGMENTS.insert(
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
    match unsafe { FRAGMENTS.get(k) }.copied() {
        Some(f) => {
            p.sport = f.sport;
            p.dport = f.dport;
            true
        }
        None => false,
    }
}
