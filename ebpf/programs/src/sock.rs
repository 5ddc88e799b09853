//! Socket-level load balancing (cgroup sock_addr hooks): pods and host processes connect
//! straight to a backend, so east-west traffic needs no per-packet NAT.
//!
//! connect/sendmsg rewrite a frontend destination to a backend; recvmsg/getpeername rewrite a
//! backend source back to the frontend, so applications only ever see the service address.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval, bpf_skc_to_mptcp_sock},
    programs::{SockAddrContext, SockContext},
};
use tollgate_common::lb::{
    PROTO_TCP, PROTO_UDP, affinity_kind,
    config::Config,
    is_v4_mapped, md_mode,
    sockct::{SockCtKey, SockCtValue},
    sockrev::{self, SockRevKey, SockRevTcp, SockRevValue},
    svc_flags, v4_mapped,
};

use crate::{
    lb::{self, Frontend},
    maps::{CONFIG, PEER_PORTS, SOCK_CT, SOCK_REV, TCP_REV, TCP_REV_HELD, TCP_REV_SLOTS},
};

/// Verdicts of sock_addr programs.
pub const ALLOW: i32 = 1;
pub const DENY: i32 = 0;
const ECONNREFUSED: i32 = 111;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Connect,
    Sendmsg,
}

// Context fields are read and written one 4-byte word at a time with volatile accesses: the
// verifier allows only 4-byte accesses at a constant offset from the context pointer, and LLVM
// may otherwise copy the address as a byte-wise memcpy or through a derived pointer.

#[inline(always)]
fn dest(ctx: &SockAddrContext, v6: bool) -> ([u32; 4], u16) {
    use core::ptr::read_volatile as rd;
    let sa = ctx.sock_addr;
    // SAFETY: the kernel's bpf_sock_addr for this call; 4-byte loads as the verifier requires.
    unsafe {
        let addr = if v6 {
            [
                rd(&raw const (*sa).user_ip6[0]),
                rd(&raw const (*sa).user_ip6[1]),
                rd(&raw const (*sa).user_ip6[2]),
                rd(&raw const (*sa).user_ip6[3]),
            ]
        } else {
            v4_mapped(rd(&raw const (*sa).user_ip4))
        };
        (addr, rd(&raw const (*sa).user_port) as u16)
    }
}

#[inline(always)]
fn set_dest(ctx: &SockAddrContext, v6: bool, addr: [u32; 4], port: u16) -> bool {
    use core::ptr::write_volatile as wr;
    let sa = ctx.sock_addr;
    // SAFETY: as above; 4-byte stores.
    unsafe {
        if v6 {
            wr(&raw mut (*sa).user_ip6[0], addr[0]);
            wr(&raw mut (*sa).user_ip6[1], addr[1]);
            wr(&raw mut (*sa).user_ip6[2], addr[2]);
            wr(&raw mut (*sa).user_ip6[3], addr[3]);
        } else {
            if !is_v4_mapped(&addr) {
                // An IPv4 socket cannot reach an IPv6 backend.
                return false;
            }
            wr(&raw mut (*sa).user_ip4, addr[3]);
        }
        wr(&raw mut (*sa).user_port, u32::from(port));
    }
    true
}

/// Refuses the call with ECONNREFUSED (kube-proxy's REJECT), not the default EPERM.
#[inline(always)]
fn refuse() -> i32 {
    // SAFETY: cgroup helper; valid for connect and sendmsg hooks.
    unsafe {
        bpf_set_retval(-ECONNREFUSED);
    }
    DENY
}

#[inline(always)]
fn choose(
    ctx: &SockAddrContext,
    fe: &Frontend,
) -> Option<(u32, tollgate_common::lb::backend::Backend)> {
    // The client of a socket is its network namespace (asked only for affinity).
    let client = || {
        // SAFETY: helper valid for sock_addr programs.
        let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
        [netns as u32, (netns >> 32) as u32, 0, 0]
    };
    lb::select(fe, client, affinity_kind::NETNS, None)
}

/// A pod's TCP connection to the metadata server goes to the node-local proxy (its source
/// address unchanged, so the proxy knows the pod); before the proxy is ready it is refused.
/// Host-network sockets (the proxy's own upstream connections included) are left alone.
/// `None`: not metadata traffic.
#[inline(always)]
fn metadata(
    ctx: &SockAddrContext,
    cfg: &Config,
    v6: bool,
    addr: [u32; 4],
    port: u16,
) -> Option<i32> {
    if cfg.md_mode != md_mode::REDIRECT
        || addr != cfg.md_addr
        || port == 0
        || (port != cfg.md_ports[0] && port != cfg.md_ports[1])
    {
        return None;
    }
    // SAFETY: helper valid for sock_addr programs.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    if netns == cfg.host_netns_cookie {
        return Some(ALLOW);
    }
    if cfg.md_ready == 0 {
        return Some(refuse());
    }
    let (proxy, proxy_port) = (cfg.md_proxy_addr, cfg.md_proxy_port);
    if !set_dest(ctx, v6, proxy, proxy_port) {
        return Some(refuse());
    }
    // getpeername() still shows the metadata server.
    remember_tcp(ctx, proxy, proxy_port, addr, port);
    Some(ALLOW)
}

/// A host process's connection to a loopback address (127.0.0.0/8) on a NodePort: that
/// NodePort, found on the node's address (`snat_v4`), as with kube-proxy's iptables mode
/// (`--localhost-nodeports`). A pod's loopback is its own: left alone. Asked only when the
/// destination is no frontend itself; the netns helper only for a loopback destination on a
/// port some frontend has.
#[inline(always)]
fn localhost_nodeport(
    ctx: &SockAddrContext,
    cfg: &Config,
    addr: [u32; 4],
    port: u16,
    proto: u8,
) -> Option<Frontend> {
    // The first octet is the first byte of the (network-order) word.
    if cfg.localhost_nodeports == 0
        || !is_v4_mapped(&addr)
        || addr[3].to_ne_bytes()[0] != 127
        || !crate::nat::frontend_port(port)
    {
        return None;
    }
    // SAFETY: helper valid for sock_addr programs.
    if unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } != cfg.host_netns_cookie {
        return None;
    }
    lb::frontend_inside(cfg.snat_v4, port, proto)
        .filter(|fe| fe.value.flags & svc_flags::NODE_ADDRESS != 0)
}

/// Records which frontend a connecting TCP socket's backend stands for: in the slot of its
/// cookie when that slot is free (or already its own), else in the socket's own storage.
#[inline(always)]
fn remember_tcp(
    ctx: &SockAddrContext,
    backend: [u32; 4],
    backend_port: u16,
    addr: [u32; 4],
    port: u16,
) {
    // An MPTCP subflow: the kernel connects it on behalf of the MPTCP socket the application
    // holds, which is what getpeername() asks, and closes it without the release hook. A
    // record here would never be read and its slot never given back: keep none.
    // SAFETY: the context's socket; the helper accepts any socket and returns NULL for
    // everything but a subflow.
    if !unsafe { bpf_skc_to_mptcp_sock((*ctx.sock_addr).__bindgen_anon_1.sk.cast()) }.is_null() {
        return;
    }
    let rev = SockRevTcp {
        backend_addr: backend,
        addr,
        backend_port,
        port,
        pad: [0; 4],
    };
    // Only for a peer port in the filter (always, once the agent wrote the backend): a slot
    // must be found again by getpeername and given back by sock_release, which both look at
    // the slots only for such ports.
    if may_hold_slot(backend_port) {
        // SAFETY: helper valid for sock_addr programs.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        let index = sockrev::slot(cookie);
        let (word, bit) = sockrev::held_bit(index);
        if let (Some(held), Some(slot)) = (
            TCP_REV_HELD.get_ptr_mut(word),
            TCP_REV_SLOTS.get_ptr_mut(index),
        ) {
            // SAFETY: elements of array maps. Setting the bit claims the slot atomically, so
            // two CPUs never share one; only the owner writes the slot behind it, with plain
            // stores (its cache line is rarely in the cache, and a store does not wait for it).
            unsafe {
                let before = fetch_or(held, bit);
                // Claimed now, or already this socket's (a reconnect overwrites its record).
                if before & bit == 0 || (*slot).cookie == cookie {
                    (*slot).cookie = cookie;
                    (*slot).rev = rev;
                    return;
                }
            }
        }
    }
    // SAFETY: the storage of the socket this call is for (created zeroed if absent).
    let p = unsafe { TCP_REV.get_or_insert_ptr_mut(ctx, None) };
    if !p.is_null() {
        // SAFETY: valid storage of this socket; a reconnect overwrites an earlier translation.
        unsafe { *p = rev };
    }
}

/// Atomic fetch-or (BPF_ATOMIC | BPF_OR | BPF_FETCH): `*p |= bits`; returns the old `*p`.
/// (The BPF target has no `AtomicU64`; the intrinsic lowers to the instruction, which the
/// verifier accepts on map values.)
///
/// # Safety
/// `p` points at a valid, 8-byte-aligned u64 (a map value).
#[inline(always)]
unsafe fn fetch_or(p: *mut u64, bits: u64) -> u64 {
    use core::intrinsics::{AtomicOrdering::SeqCst, atomic_or};
    // SAFETY: as the caller promises.
    unsafe { atomic_or::<u64, u64, { SeqCst }>(p, bits) }
}

/// Atomic `*p &= bits` (BPF_ATOMIC | BPF_AND).
///
/// # Safety
/// As [`fetch_or`].
#[inline(always)]
unsafe fn and(p: *mut u64, bits: u64) {
    use core::intrinsics::{AtomicOrdering::SeqCst, atomic_and};
    // SAFETY: as the caller promises.
    unsafe { atomic_and::<u64, u64, { SeqCst }>(p, bits) };
}

/// Can a TCP socket whose peer has this port (network order; 0 = none) hold a slot? False
/// means it certainly does not; a peer port of 0 (a socket whose connect failed) says nothing.
#[inline(always)]
fn may_hold_slot(peer_port: u16) -> bool {
    let (word, bit) = sockrev::port_bit(peer_port);
    peer_port == 0 || PEER_PORTS.get(word).is_some_and(|w| w & bit != 0)
}

/// The record of a TCP socket whose peer has `peer_port`, if connect translated it: its slot,
/// else its own storage.
#[inline(always)]
fn recall_tcp(ctx: &SockAddrContext, peer_port: u16) -> Option<SockRevTcp> {
    if may_hold_slot(peer_port) {
        // SAFETY: helper valid for sock_addr programs (the cookie exists if connect recorded).
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        if let Some(slot) = TCP_REV_SLOTS.get_ptr(sockrev::slot(cookie)) {
            // SAFETY: an element of the array map; a slot holding this cookie is this socket's.
            unsafe {
                if (*slot).cookie == cookie {
                    return Some((*slot).rev);
                }
            }
        }
    }
    // SAFETY: the storage of this call's socket, if it has one (no lookup otherwise).
    let p = unsafe { TCP_REV.get_ptr_mut(ctx) };
    // SAFETY: valid storage of this socket, copied out.
    (!p.is_null()).then(|| unsafe { *p })
}

/// sock_release: a closed TCP socket gives its cookie slot back.
#[inline(always)]
pub fn release(ctx: &SockContext) {
    // SAFETY: the kernel's bpf_sock for this call (dst_port: network order in the low 16 bits).
    let (proto, peer_port) = unsafe { ((*ctx.sock).protocol, (*ctx.sock).dst_port) };
    // The low byte, as connect reads it (MPTCP's 262 counts as TCP there too).
    if proto as u8 != PROTO_TCP || !may_hold_slot(peer_port) {
        return;
    }
    // SAFETY: helper valid for cgroup sock programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let index = sockrev::slot(cookie);
    let (word, bit) = sockrev::held_bit(index);
    let Some(held) = TCP_REV_HELD.get_ptr_mut(word) else {
        return;
    };
    // SAFETY: elements of array maps. The bit first: a socket that never held a slot (an
    // untranslated connection to a backend port) stops here, without reading the slot. The bit
    // is cleared only by the socket whose cookie is in the slot, and nobody else writes a held
    // slot, so the check cannot go stale before the clear.
    unsafe {
        if *held & bit != 0
            && TCP_REV_SLOTS
                .get_ptr(index)
                .is_some_and(|slot| (*slot).cookie == cookie)
        {
            and(held, !bit);
        }
    }
}

/// connect/sendmsg. Never fails the call except to REJECT: on any error it proceeds
/// untranslated.
#[inline(always)]
pub fn translate(ctx: &SockAddrContext, v6: bool, hook: Hook) -> i32 {
    // SAFETY: reading the kernel's context.
    let proto = unsafe { (*ctx.sock_addr).protocol } as u8;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return ALLOW;
    }
    let (addr, port) = dest(ctx, v6);
    // Node settings, read once (the metadata redirect and the TCP reverse record use them).
    let cfg = CONFIG.get(0);
    if proto == PROTO_TCP
        && hook == Hook::Connect
        && let Some(verdict) = cfg.and_then(|c| metadata(ctx, c, v6, addr, port))
    {
        return verdict;
    }
    let Some(fe) = lb::frontend_inside(addr, port, proto)
        .or_else(|| cfg.and_then(|c| localhost_nodeport(ctx, c, addr, port, proto)))
        .or_else(|| lb::other_ports(addr))
    else {
        // An unallocated address inside a ServiceCIDR: kube-proxy drops the packets. A pod's
        // are dropped on its interface, where a SYN retransmitted once the Service is
        // programmed (a ClusterIP used the moment it is allocated) is translated, as
        // kube-proxy's rules catch the retransmit. A host process's packets pass no hook of
        // ours later: its call fails with EPERM (what a netfilter drop on the way out gives a
        // UDP sender).
        return match lb::service_cidr(addr) {
            Some(v) if in_host_netns(ctx, cfg) => {
                lb::count_unallocated(v);
                DENY
            }
            _ => ALLOW,
        };
    };
    if left_to_packets(ctx, cfg) {
        return ALLOW;
    }
    if fe.value.count == 0 {
        lb::count(fe.value.service_id, 0, 0, 0, 0, 1);
        // DROP: let the packet leave unchanged; the per-packet path drops it, so the client
        // sees a timeout as with kube-proxy. REJECT (no endpoints, or a port the ClusterIP's
        // Service does not define): refuse at once.
        if fe.value.flags & svc_flags::DROP_IF_EMPTY != 0 {
            return ALLOW;
        }
        return refuse();
    }
    // Only UDP state is keyed by the socket cookie (TCP keeps its state in socket storage).
    let cookie = if proto == PROTO_UDP {
        // SAFETY: helper valid for sock_addr programs.
        unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
    } else {
        0
    };
    let chosen = if hook == Hook::Sendmsg {
        // An unconnected UDP socket keeps its backend per frontend, like a conntrack entry.
        let key = SockCtKey {
            cookie,
            addr,
            port,
            proto,
            pad: [0; 5],
        };
        // SAFETY: copied out immediately.
        let kept = unsafe { SOCK_CT.get(key) }
            .copied()
            .and_then(|v| lb::backend(v.backend_id).map(|b| (v.backend_id, b)));
        match kept {
            Some(c) => Some(c),
            None => {
                let c = choose(ctx, &fe);
                if let Some((id, _)) = c {
                    let _ = SOCK_CT.insert(
                        key,
                        SockCtValue {
                            backend_id: id,
                            service_id: fe.value.service_id,
                        },
                        0,
                    );
                    lb::count(fe.value.service_id, id, 0, 0, 1, 0);
                }
                c
            }
        }
    } else {
        let c = choose(ctx, &fe);
        if let Some((id, _)) = c {
            lb::count(fe.value.service_id, id, 0, 0, 1, 0);
        }
        c
    };
    let Some((_, backend)) = chosen else {
        return ALLOW;
    };
    if !set_dest(ctx, v6, backend.addr, backend.port) {
        return ALLOW;
    }
    if proto == PROTO_TCP {
        if cfg.is_none_or(|c| c.tcp_peer_off == 0) {
            remember_tcp(ctx, backend.addr, backend.port, addr, port);
        }
    } else {
        let rev = SockRevKey {
            cookie,
            addr: backend.addr,
            port: backend.port,
            pad: [0; 6],
        };
        let _ = SOCK_REV.insert(
            rev,
            SockRevValue {
                addr,
                port,
                pad: [0; 2],
            },
            0,
        );
    }
    ALLOW
}

/// A host-network socket (the agent's own network namespace)?
#[inline(always)]
fn in_host_netns(ctx: &SockAddrContext, cfg: Option<&Config>) -> bool {
    // SAFETY: helper valid for sock_addr programs.
    cfg.is_some_and(|c| unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } == c.host_netns_cookie)
}

/// Pods' sockets left as they are (`--socket-lb-host-namespace-only`): their packets are
/// translated (or dropped) on their interface.
#[inline(always)]
fn left_to_packets(ctx: &SockAddrContext, cfg: Option<&Config>) -> bool {
    cfg.is_some_and(|c| {
        c.socket_lb_host_only != 0
            // SAFETY: helper valid for sock_addr programs.
            && unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } != c.host_netns_cookie
    })
}

/// recvmsg/getpeername: a backend source becomes the frontend the socket asked for.
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext, v6: bool) -> i32 {
    let (addr, port) = dest(ctx, v6);
    // SAFETY: reading the kernel's context.
    if unsafe { (*ctx.sock_addr).protocol } as u8 == PROTO_TCP {
        if let Some(rev) = recall_tcp(ctx, port)
            && rev.backend_addr == addr
            && rev.backend_port == port
        {
            set_dest(ctx, v6, rev.addr, rev.port);
        }
        return ALLOW;
    }
    // SAFETY: helper valid for sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockRevKey {
        cookie,
        addr,
        port,
        pad: [0; 6],
    };
    // SAFETY: copied out immediately.
    if let Some(fe) = unsafe { SOCK_REV.get(key) }.copied() {
        set_dest(ctx, v6, fe.addr, fe.port);
    }
    ALLOW
}
