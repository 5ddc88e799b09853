//! Per-CPU packet counters. Writes touch only this CPU's copy, so no cache line is shared.

use tollgate_common::iface_stats::{IfaceStats, IfaceStatsKey};

use crate::maps::IFACE_STATS;

#[inline(always)]
pub fn count(ifindex: u32, hook: u8, bytes: u64) {
    let key = IfaceStatsKey {
        ifindex,
        hook,
        pad: [0; 3],
    };
    if let Some(stats) = IFACE_STATS.get_ptr_mut(key) {
        // SAFETY: per-CPU value of this CPU; no other program instance runs on it concurrently.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += bytes;
        }
        return;
    }
    let first = IfaceStats { packets: 1, bytes };
    // BPF_NOEXIST: if another CPU created the entry meanwhile, this packet is the only one lost
    // from the count, which is preferable to a second lookup on every first packet.
    let _ = IFACE_STATS.insert(key, first, u64::from(aya_ebpf::bindings::BPF_NOEXIST));
}
