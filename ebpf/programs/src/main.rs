//! Tollgate's kernel programs. Entry points are thin: each calls a `try_*`-style function and
//! turns every error into a deliberate verdict.
#![no_std]
#![no_main]
// Atomic fetch-or / and on the reverse-record held bits (see sock::fetch_or).
#![feature(core_intrinsics)]
// Single-instruction unaligned packet loads (see pkt.rs).
#![feature(asm_experimental_arch)]
#![allow(internal_features)]

mod frag;
mod icmp;
mod lb;
mod maps;
mod nat;
mod other_proto;
mod pkt;
mod sock;
mod stats;
mod xdp;

use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    macros::{cgroup_sock, cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, SockContext, TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use tollgate_common::iface_stats::hook;

use crate::{nat::Side, sock::Hook};

/// XDP on uplinks: the fast path for outside traffic that leaves through the same uplink (see
/// `xdp.rs`); everything else passes to TC unmodified.
#[xdp]
pub fn tg_xdp_uplink(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    let len = ctx.data_end().saturating_sub(ctx.data()) as u64;
    stats::count(ifindex, hook::XDP, len);
    xdp::uplink(&ctx)
}

#[inline(always)]
fn count_skb(ctx: &TcContext, hook: u8) {
    // SAFETY: ctx.skb.skb points at the kernel's __sk_buff for the duration of the program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    stats::count(ifindex, hook, u64::from(ctx.len()));
}

#[inline(always)]
fn translate(ctx: &TcContext, side: Side) -> i32 {
    let verdict = nat::handle(ctx, side);
    if verdict == TC_ACT_SHOT {
        log_drop(ctx);
    }
    verdict
}

/// Cold path, out of line so the log record's buffer never adds to the translation's stack.
#[inline(never)]
fn log_drop(ctx: &TcContext) {
    debug!(
        ctx,
        "service packet dropped (no endpoints, source range, or failed translation)"
    );
}

/// TC ingress on uplinks: traffic from outside the node to NodePorts, externalIPs, LB IPs and
/// ClusterIPs, and replies of translated flows.
#[classifier]
pub fn tg_tc_ingress(ctx: TcContext) -> i32 {
    count_skb(&ctx, hook::TC_INGRESS);
    translate(&ctx, Side::Outside)
}

/// TC egress on uplinks: host traffic to a service whose verdict is DROP is dropped here (the
/// socket hook let it through so the client times out, as with kube-proxy), and the node's own
/// ICMP errors about translated packets it forwarded are translated back.
#[classifier]
pub fn tg_tc_egress(ctx: TcContext) -> i32 {
    count_skb(&ctx, hook::TC_EGRESS);
    nat::egress(&ctx)
}

/// TC ingress on pod-facing interfaces (packets from pods): replies of translated flows whose
/// backend is this pod, and service traffic the socket hooks did not translate.
#[classifier]
pub fn tg_tc_from_pod(ctx: TcContext) -> i32 {
    // Not counted per interface: this runs on every pod packet, and the kernel's interface
    // counters already have these numbers.
    translate(&ctx, Side::Pod)
}

macro_rules! sock_program {
    ($name:ident, $attach:ident, $body:expr) => {
        #[cgroup_sock_addr($attach)]
        pub fn $name(ctx: SockAddrContext) -> i32 {
            ($body)(&ctx)
        }
    };
}

sock_program!(tg_connect4, connect4, |c| sock::translate(
    c,
    false,
    Hook::Connect
));
sock_program!(tg_connect6, connect6, |c| sock::translate(
    c,
    true,
    Hook::Connect
));
sock_program!(tg_sendmsg4, sendmsg4, |c| sock::translate(
    c,
    false,
    Hook::Sendmsg
));
sock_program!(tg_sendmsg6, sendmsg6, |c| sock::translate(
    c,
    true,
    Hook::Sendmsg
));
sock_program!(tg_recvmsg4, recvmsg4, |c| sock::reverse(c, false));
sock_program!(tg_recvmsg6, recvmsg6, |c| sock::reverse(c, true));
sock_program!(tg_getpeername4, getpeername4, |c| sock::reverse(c, false));
sock_program!(tg_getpeername6, getpeername6, |c| sock::reverse(c, true));

/// Socket close: a translated TCP socket gives back its reverse-record slot (see `sock.rs`).
#[cgroup_sock(sock_release)]
pub fn tg_sock_release(ctx: SockContext) -> i32 {
    sock::release(&ctx);
    1
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that can reach a panic, so this is never executed.
    loop {}
}
