//! The benchmark's floor: Tollgate's hooks with programs that return at once (everything
//! passes, nothing is looked up). Attached in place of the real programs, it measures what the
//! kernel's hooks cost by themselves, so the dataplane benchmark can tell that apart from what
//! Tollgate's programs add. Never loaded by the agent.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action::XDP_PASS},
    macros::{cgroup_sock, cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, SockContext, TcContext, XdpContext},
};

/// cgroup verdict: allow.
const ALLOW: i32 = 1;

#[xdp]
pub fn tg_xdp_uplink(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[classifier]
pub fn tg_tc_ingress(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[classifier]
pub fn tg_tc_egress(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[classifier]
pub fn tg_tc_from_pod(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

macro_rules! sock_programs {
    ($($name:ident: $attach:ident),* $(,)?) => {
        $(
            #[cgroup_sock_addr($attach)]
            pub fn $name(_ctx: SockAddrContext) -> i32 {
                ALLOW
            }
        )*
    };
}

sock_programs!(
    tg_connect4: connect4,
    tg_connect6: connect6,
    tg_sendmsg4: sendmsg4,
    tg_sendmsg6: sendmsg6,
    tg_recvmsg4: recvmsg4,
    tg_recvmsg6: recvmsg6,
    tg_getpeername4: getpeername4,
    tg_getpeername6: getpeername6,
);

#[cgroup_sock(sock_release)]
pub fn tg_sock_release(_ctx: SockContext) -> i32 {
    ALLOW
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
