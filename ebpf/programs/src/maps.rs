//! Every map the programs use, declared once with BTF so `bpftool map dump` prints field names.
//! Names, capacities and layouts come from `tollgate_common`.

use aya_ebpf::{btf_maps::PerCpuHashMap, macros::btf_map};
use tollgate_common::iface_stats::{self, IfaceStats, IfaceStatsKey};

#[btf_map(name = "tg_ifstats_v1")]
pub static IFACE_STATS: PerCpuHashMap<
    IfaceStatsKey,
    IfaceStats,
    { iface_stats::CAPACITY as usize },
> = PerCpuHashMap::new();
