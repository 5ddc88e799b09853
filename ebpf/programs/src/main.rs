//! Tollgate's kernel programs. Entry points are thin: each calls a `try_*` function and turns
//! every error into a deliberate verdict.
#![no_std]
#![no_main]

mod maps;
mod stats;

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use tollgate_common::iface_stats::hook;

/// XDP on uplinks. Today it only counts; the fast path for external service traffic builds on it.
#[xdp]
pub fn tg_xdp_uplink(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    let len = ctx.data_end().saturating_sub(ctx.data()) as u64;
    stats::count(ifindex, hook::XDP, len);
    xdp_action::XDP_PASS
}

/// TC ingress on uplinks and pod-facing interfaces.
#[classifier]
pub fn tg_tc_ingress(ctx: TcContext) -> i32 {
    count_skb(&ctx, hook::TC_INGRESS);
    // TC_ACT_UNSPEC lets the next program in the TCX chain (if any) decide; with none, the
    // packet continues as if no program were attached.
    TC_ACT_UNSPEC
}

/// TC egress on uplinks and pod-facing interfaces.
#[classifier]
pub fn tg_tc_egress(ctx: TcContext) -> i32 {
    count_skb(&ctx, hook::TC_EGRESS);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn count_skb(ctx: &TcContext, hook: u8) {
    // SAFETY: ctx.skb.skb points at the kernel's __sk_buff for the duration of the program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    stats::count(ifindex, hook, u64::from(ctx.len()));
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that can reach a panic, so this is never executed.
    loop {}
}
