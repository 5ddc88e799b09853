//! `tg_ifstats_v1`: packets and bytes seen by each program hook on each interface.
//!
//! Written by the XDP and TC programs (per-CPU, so no shared cache line is written per packet),
//! read by the agent for `/metrics` and by `tollgate maps`.

/// Map name as it appears in the object file, the kernel and the pin directory.
pub const NAME: &str = "tg_ifstats_v1";
/// Interfaces × hooks that can be tracked at once.
pub const CAPACITY: u32 = 4096;

/// Which program hook counted the packet (`IfaceStatsKey::hook`).
pub mod hook {
    pub const XDP: u8 = 1;
    pub const TC_INGRESS: u8 = 2;
    pub const TC_EGRESS: u8 = 3;

    /// Human name of a hook code, for tables and metric labels.
    pub const fn name(code: u8) -> &'static str {
        match code {
            XDP => "xdp",
            TC_INGRESS => "tc_ingress",
            TC_EGRESS => "tc_egress",
            _ => "unknown",
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IfaceStatsKey {
    /// host: interface index in the agent's network namespace.
    pub ifindex: u32,
    /// host: one of [`hook`].
    pub hook: u8,
    pub pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<IfaceStatsKey>() == 8);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceStats {
    /// host: packets seen.
    pub packets: u64,
    /// host: bytes seen (L2 frame length as the hook saw it).
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<IfaceStats>() == 16);

crate::impl_pod!(IfaceStatsKey, IfaceStats);
