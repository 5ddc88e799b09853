//! Per-packet service translation at TC: traffic arriving from outside the node (NodePorts,
//! externalIPs, LoadBalancer IPs, ClusterIPs routed to the node) and pod traffic the socket hooks
//! did not translate.
//!
//! A new flow gets two conntrack entries: FORWARD (client → frontend, as it arrives) rewrites
//! the destination to the backend (and the source to an SNAT address when kube-proxy would
//! masquerade); REPLY (backend → client or SNAT address) rewrites it back. A packet whose new
//! source is an address of this node cannot go through the stack's input path (it would be
//! dropped as martian), so it is redirected out through a FIB lookup instead.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_F_INGRESS, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT,
        TC_ACT_UNSPEC, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
        bpf_check_mtu_ret::BPF_MTU_CHK_RET_FRAG_NEEDED, bpf_fib_lookup,
    },
    btf_maps::PerCpuArray,
    helpers::{
        bpf_check_mtu, bpf_csum_diff, bpf_fib_lookup as fib_lookup, bpf_get_prandom_u32,
        bpf_redirect, bpf_redirect_neigh, bpf_skb_change_tail,
    },
    macros::btf_map,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use tollgate_common::lb::{
    PROTO_TCP, PROTO_UDP,
    ct::{CtEntry, CtKey},
    ct_dir, ct_flags, ctmark, feport, is_v4_mapped, md_mode, scope,
    srcrange::SrcRangeKey,
    svc::SvcKey,
    svc_flags,
};

use crate::{
    lb::{self, Frontend},
    maps::{CONFIG, CONNTRACK, CT_MARKS, FRONTEND_PORTS, SOURCE_RANGES},
    pkt::{self, ETH_HLEN, Frame, LATER_FRAGMENT, Pkt, TCP_ACK, TCP_RST, TCP_SYN},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Where the packet came from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// An uplink: a client outside the node.
    Outside,
    /// A pod-facing interface: a pod.
    Pod,
}

type R<T> = Result<T, ()>;

#[inline(always)]
fn load<T: Copy>(ctx: &TcContext, off: usize) -> R<T> {
    // Direct packet access when the bytes are in the linear part (headers nearly always
    // are): a bounds check instead of a helper call per field.
    // The check is for a fixed 16-byte window (every T read here is at most 16 bytes): with
    // `size_of::<T>()` LLVM turns a one-byte check into `<`, which the verifier does not
    // credit with any range.
    const WINDOW: usize = 16;
    let start = ctx.data();
    if core::mem::size_of::<T>() <= WINDOW
        && off <= MAX_HEADERS
        && start + off + WINDOW <= ctx.data_end()
    {
        // SAFETY: bounds-checked against data_end just above; unaligned read.
        return Ok(unsafe { ((start + off) as *const T).read_unaligned() });
    }
    ctx.load::<T>(off).map_err(|_| ())
}

/// [`load`] reads directly up to this offset (the replies REJECT builds read their headers
/// back through it; the translation's parser is `pkt::parse`); it also bounds the offsets for
/// the verifier.
const MAX_HEADERS: usize = 128;

#[inline(always)]
fn l4_flags(p: &Pkt) -> u64 {
    if p.proto == PROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    }
}

/// Rewrites the source (`src`) or destination address, fixing the IPv4 header checksum and the
/// TCP/UDP pseudo-header checksum with the kernel's helpers (correct with offloaded checksums).
#[inline(always)]
fn set_addr(ctx: &TcContext, p: &mut Pkt, src: bool, new: [u32; 4]) -> R<()> {
    let old = if src { p.saddr } else { p.daddr };
    if old == new {
        return Ok(());
    }
    if p.v6 {
        let off = p.l3 + if src { 8 } else { 24 };
        ctx.store(off, &new, 0).map_err(|_| ())?;
        let mut o = old;
        let mut n = new;
        // SAFETY: two 16-byte stack buffers.
        let diff = unsafe { bpf_csum_diff(o.as_mut_ptr(), 16, n.as_mut_ptr(), 16, 0) };
        // A later fragment has no L4 header (its first fragment's checksum covers it).
        if p.frag != LATER_FRAGMENT {
            ctx.l4_csum_replace(
                p.csum_off,
                0,
                diff as u64,
                u64::from(BPF_F_PSEUDO_HDR) | l4_flags(p),
            )
            .map_err(|_| ())?;
        }
    } else {
        let off = p.l3 + if src { 12 } else { 16 };
        ctx.store(off, &new[3], 0).map_err(|_| ())?;
        ctx.l3_csum_replace(p.l3 + 10, u64::from(old[3]), u64::from(new[3]), 4)
            .map_err(|_| ())?;
        // A later fragment has no L4 header (its first fragment's checksum covers it).
        if p.frag != LATER_FRAGMENT {
            ctx.l4_csum_replace(
                p.csum_off,
                u64::from(old[3]),
                u64::from(new[3]),
                u64::from(BPF_F_PSEUDO_HDR) | l4_flags(p) | 4,
            )
            .map_err(|_| ())?;
        }
    }
    if src {
        p.saddr = new;
    } else {
        p.daddr = new;
    }
    Ok(())
}

#[inline(always)]
fn set_port(ctx: &TcContext, p: &mut Pkt, src: bool, new: u16) -> R<()> {
    let old = if src { p.sport } else { p.dport };
    if old == new {
        return Ok(());
    }
    // A later fragment has no ports to rewrite: its first fragment's were.
    if p.frag != LATER_FRAGMENT {
        ctx.store(p.l4 + if src { 0 } else { 2 }, &new, 0)
            .map_err(|_| ())?;
        ctx.l4_csum_replace(p.csum_off, u64::from(old), u64::from(new), l4_flags(p) | 2)
            .map_err(|_| ())?;
    }
    if src {
        p.sport = new;
    } else {
        p.dport = new;
    }
    Ok(())
}

#[inline(always)]
pub(crate) fn key(p: &Pkt) -> CtKey {
    CtKey {
        saddr: p.saddr,
        daddr: p.daddr,
        sport: p.sport,
        dport: p.dport,
        proto: p.proto,
        pad: [0; 3],
    }
}

/// Looks a flow up and refreshes its `last_seen` (at most once a second per flow). The entry
/// is used in place (no copy on the stack).
#[inline(always)]
pub(crate) fn ct_get(k: &CtKey) -> Option<&'static CtEntry> {
    let ptr = CONNTRACK.get_ptr_mut(k)?;
    let now = lb::now_secs();
    // SAFETY: the entry stays valid during this program run (RCU); a racing refresh of
    // last_seen by another CPU is harmless.
    unsafe {
        if (*ptr).last_seen != now {
            (*ptr).last_seen = now;
        }
        Some(&*ptr)
    }
}

/// Sets the conntrack mark of `addr` (before the entries it marks are inserted). False when
/// the slot cannot be written: the flow must then not be created.
#[inline(always)]
fn mark(addr: &[u32; 4]) -> bool {
    match CT_MARKS.get_ptr_mut(ctmark::slot(addr)) {
        Some(m) => {
            // SAFETY: an element of the array map; a plain store of a constant, so concurrent
            // writers agree.
            unsafe { core::ptr::write_volatile(&raw mut (*m).flows, 1) };
            true
        }
        None => false,
    }
}

/// Could a packet from `addr` belong to a conntrack flow? (See `ctmark`: never a false no.)
#[inline(always)]
fn marked(addr: &[u32; 4]) -> bool {
    CT_MARKS
        .get(ctmark::slot(addr))
        .is_none_or(|m| m.flows != 0)
}

/// Is the port (network order) one a frontend has had? (See `feport`: never a false no.)
#[inline(always)]
pub(crate) fn frontend_port(port: u16) -> bool {
    let (word, bit) = feport::port_bit(port);
    FRONTEND_PORTS.get(word).is_none_or(|w| w & bit != 0)
}

/// Can this packet start a flow, and is there a frontend it might be for? A flow starts only
/// at a frontend, so a packet to a port no frontend has had skips the frontend lookup: the
/// SYN of every socket-balanced connection (its destination is the backend's port) and UDP
/// between pods on ports that are not a service's. (XDP's test; the TC hooks also look up
/// addresses inside a ServiceCIDR, see `looked_up`.)
#[inline(always)]
pub(crate) fn may_start_flow(p: &Pkt) -> bool {
    p.may_start_flow() && frontend_port(p.dport)
}

/// Does a packet that may start a flow to `daddr:dport` get the frontend lookup on a TC hook?
/// At a port some frontend has had, and at any port of an address inside a ServiceCIDR: a
/// ClusterIP refuses the ports its Service does not define, an unallocated address drops the
/// packet, as kube-proxy nftables' `cluster-ips-check` does for every port.
#[inline(always)]
fn looked_up(daddr: [u32; 4], dport: u16) -> bool {
    frontend_port(dport) || lb::service_cidr(daddr).is_some()
}

/// Can a packet from `saddr` to port `dport` belong to a conntrack flow? Never a false no.
/// From a pod only if its source is marked (`ctmark`): the pod packets of socket-balanced
/// connections are not. From outside also if its destination port is a frontend's (`feport`):
/// a reply's source is a backend, which is marked, a forward packet goes to a frontend.
/// Traffic to the node itself and between pods of different nodes mostly is neither.
#[inline(always)]
pub(crate) fn may_have_flow(saddr: &[u32; 4], dport: u16, side: Side) -> bool {
    (side == Side::Outside && frontend_port(dport)) || marked(saddr)
}

/// [`fib_redirect`]'s answer for a packet too big for the interface its route leaves by (not a
/// TC verdict; bits 0–15 hold that interface's MTU): the caller answers the sender
/// ([`too_big`]), as a router would.
pub(crate) const TOO_BIG: i32 = 1 << 24;

/// Sends the packet out of the interface the FIB chooses for its (translated) destination.
#[inline(never)]
pub(crate) fn fib_redirect(ctx: &TcContext, p: &Pkt) -> i32 {
    // SAFETY: plain-old-data struct of the kernel's UAPI.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = if p.v6 { AF_INET6 } else { AF_INET };
    params.l4_protocol = p.proto;
    params.sport = p.sport;
    params.dport = p.dport;
    // SAFETY: the context's __sk_buff; unions of the UAPI struct written as documented.
    unsafe {
        // A plain packet: no tot_len, so the kernel checks the skb against the MTU of the
        // interface the route leaves by. A GSO packet (a TSO burst from a pod, a GRO'd burst
        // from outside: tens of KiB, sent on as segments): the length of one segment, which the
        // kernel checks against the route's MTU. (Its whole length was "too big" for every
        // burst; the kernel's own check passes any GSO packet, whose segments the interface
        // would then drop if they are too big.)
        let gso = (*ctx.skb.skb).gso_size;
        if gso != 0 {
            let l4_header = if p.proto == PROTO_TCP {
                usize::from(load::<u8>(ctx, p.l4 + 12).unwrap_or(5 << 4) >> 4) * 4
            } else {
                8
            };
            params.__bindgen_anon_1.tot_len = (p.l4 - p.l3 + l4_header + gso as usize) as u16;
        }
        params.ifindex = (*ctx.skb.skb).ingress_ifindex;
        if p.v6 {
            params.__bindgen_anon_3.ipv6_src = p.saddr;
            params.__bindgen_anon_4.ipv6_dst = p.daddr;
        } else {
            params.__bindgen_anon_3.ipv4_src = p.saddr[3];
            params.__bindgen_anon_4.ipv4_dst = p.daddr[3];
        }
    }
    // SAFETY: params is a valid stack struct of the size passed.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        if ctx.store(0, &params.dmac, 0).is_err() || ctx.store(6, &params.smac, 0).is_err() {
            return TC_ACT_SHOT;
        }
        // SAFETY: redirect helper; returns TC_ACT_REDIRECT.
        return unsafe { bpf_redirect(params.ifindex, 0) } as i32;
    }
    if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
        // SAFETY: the helper's output member of the union.
        return TOO_BIG | i32::from(unsafe { params.__bindgen_anon_1.mtu_result });
    }
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        // The FIB checked a GSO packet's segments (tot_len) but not a plain packet's length:
        // the kernel checks that only on success. Checked here against the interface's MTU,
        // or the first packets to a backend whose neighbour is not yet resolved would be
        // dropped by the interface instead of answered.
        let mut mtu: u32 = 0;
        // SAFETY: helper valid for TC programs; `mtu` is a stack u32 (0: check the skb).
        let chk = unsafe { bpf_check_mtu(ctx.as_ptr(), params.ifindex, &mut mtu, 0, 0) };
        if chk == i64::from(BPF_MTU_CHK_RET_FRAG_NEEDED) {
            return TOO_BIG | (mtu & 0xffff) as i32;
        }
        // The kernel resolves the neighbour itself.
        // SAFETY: null parameters ask the helper for its own next-hop lookup.
        return unsafe { bpf_redirect_neigh(params.ifindex, core::ptr::null_mut(), 0, 0) } as i32;
    }
    // No route: let the stack decide (and account for) it.
    TC_ACT_OK
}

/// Sends a translated packet of flow `e` on: redirected out through the FIB, or up the stack,
/// and counted. `orig` is the packet as it arrived, for the answer to one too big for its way
/// out (not counted: it never reaches the backend or the client).
#[inline(always)]
fn finish(ctx: &TcContext, p: &mut Pkt, e: &CtEntry, orig: &CtKey) -> i32 {
    let verdict = if e.flags & ct_flags::REDIRECT != 0 {
        let verdict = fib_redirect(ctx, p);
        if verdict & TOO_BIG != 0 {
            return too_big(ctx, p, orig, (verdict & 0xffff) as u32);
        }
        verdict
    } else {
        TC_ACT_OK
    };
    lb::count(e.service_id, e.backend_id, 1, u64::from(p.len), 0, 0);
    verdict
}

/// A translated packet too big for the interface it must leave by (a node-to-node link or
/// tunnel with a smaller MTU than the one it came in on; for a GSO packet, its segments): what
/// the kernel's forwarding does for kube-proxy, which the stack cannot do here (the packet,
/// with the node's own source, would be dropped as martian and the flow black-holed). The
/// packet is put back as its sender sent it (from `orig`, its conntrack key) and answered with
/// an ICMP Fragmentation Needed (IPv4) or an ICMPv6 Packet Too Big carrying that MTU, from the
/// address it was sent to, so the sender's path MTU discovery works through the service. An
/// IPv4 packet without DF gets the same answer (a router would fragment it, which the programs
/// cannot; Linux senders then fragment to the MTU themselves); a later fragment, which quotes
/// no ports a sender could match, is dropped.
#[inline(never)]
fn too_big(ctx: &TcContext, p: &mut Pkt, orig: &CtKey, mtu: u32) -> i32 {
    too_big_inner(ctx, p, orig, mtu).unwrap_or(TC_ACT_SHOT)
}

#[inline(always)]
fn too_big_inner(ctx: &TcContext, p: &mut Pkt, orig: &CtKey, mtu: u32) -> R<i32> {
    if p.frag == LATER_FRAGMENT {
        return Err(());
    }
    set_addr(ctx, p, true, orig.saddr)?;
    set_addr(ctx, p, false, orig.daddr)?;
    set_port(ctx, p, true, orig.sport)?;
    set_port(ctx, p, false, orig.dport)?;
    Ok(if p.v6 {
        // Type 2 (packet too big), code 0, the 32-bit MTU.
        icmp_error(ctx, p, w([2, 0, 0, 0]), mtu.to_be(), false)
    } else {
        // Type 3 (destination unreachable), code 4 (fragmentation needed), the next-hop MTU.
        let m = (mtu as u16).to_be_bytes();
        icmp_error(ctx, p, w([3, 4, 0, 0]), w([0, 0, m[0], m[1]]), false)
    })
}

/// Applies a conntrack entry: `to` replaces the destination (forward) or the source (reply);
/// with SNAT, `nat` replaces the other end.
#[inline(always)]
fn rewrite(ctx: &TcContext, p: &mut Pkt, e: &CtEntry, reply: bool) -> R<()> {
    set_addr(ctx, p, reply, e.to_addr)?;
    set_port(ctx, p, reply, e.to_port)?;
    if e.flags & ct_flags::SNAT != 0 {
        set_addr(ctx, p, !reply, e.nat_addr)?;
        set_port(ctx, p, !reply, e.nat_port)?;
    }
    Ok(())
}

/// Forward direction of a known flow. Out of line (own stack frame); a failed rewrite drops
/// the packet, which may be half rewritten.
#[inline(never)]
fn apply_forward(ctx: &TcContext, p: &mut Pkt, e: &CtEntry, orig: &CtKey) -> i32 {
    if rewrite(ctx, p, e, false).is_err() {
        return TC_ACT_SHOT;
    }
    finish(ctx, p, e, orig)
}

/// Reply direction of a known flow (see `apply_forward`).
#[inline(never)]
fn apply_reply(ctx: &TcContext, p: &mut Pkt, e: &CtEntry, orig: &CtKey) -> i32 {
    if rewrite(ctx, p, e, true).is_err() {
        return TC_ACT_SHOT;
    }
    finish(ctx, p, e, orig)
}

#[inline(always)]
pub(crate) fn source_allowed(fe: &Frontend, client: &[u32; 4]) -> bool {
    let data = SrcRangeKey {
        rev_nat_id: fe.value.rev_nat_id.to_be(),
        addr: *client,
    };
    SOURCE_RANGES.get(&Key::new(32 + 128, data)).is_some()
}

/// Per-CPU scratch space for the per-packet path: BPF's 512-byte stack cannot hold the packet
/// summary and conntrack key and entry of every frame at once. TC programs run in softirq
/// context on one CPU and never nest, so one buffer per CPU is enough (the socket hooks, which
/// run in preemptible process context, never use it).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Scratch {
    pub pkt: Pkt,
    pub key: CtKey,
    pub entry: CtEntry,
    pub svc_key: SvcKey,
    pub fe: Frontend,
    pub chosen: lb::Chosen,
    pub nat_addr: [u32; 4],
    pub icmp: crate::icmp::Error,
}

#[btf_map(name = "tg_scratch")]
static SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

#[inline(always)]
fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: this CPU's slot; nothing else on this CPU uses it while a TC program runs.
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// A pod packet to the metadata server's redirected ports: its connection did not pass the
/// socket hook's redirect (a raw socket, or a process outside `--cgroup`), so it must not reach
/// the real server.
#[inline(always)]
fn metadata_bypass(daddr: &[u32; 4], dport: u16) -> bool {
    let Some(cfg) = CONFIG.get(0) else {
        return false;
    };
    cfg.md_mode == md_mode::REDIRECT
        && *daddr == cfg.md_addr
        && dport != 0
        && (dport == cfg.md_ports[0] || dport == cfg.md_ports[1])
}

/// The common packet, decided from five header fields before anything is copied to the
/// scratch: a TCP segment (IPv4 or IPv6) that cannot start a flow (not a bare SYN to a port a
/// frontend has had or to an address inside a ServiceCIDR) and cannot belong to one
/// (`may_have_flow`), and from a pod not to the metadata server. The full path would pass it
/// untouched too; this gets there with a fraction of the work. It is every packet of
/// socket-balanced connections (their SYN goes to the backend's port), and nearly every packet
/// of traffic to the node itself and between pods of different nodes, which pay for Tollgate
/// only this.
#[inline(always)]
pub(crate) fn passes<F: Frame>(f: &F, side: Side) -> bool {
    let Some(p) = pkt::tcp_segment(f) else {
        return false;
    };
    let may_start = pkt::bare_syn(p.tcp_flags) && looked_up(p.daddr, p.dport);
    !may_start
        && !(side == Side::Pod && metadata_bypass(&p.daddr, p.dport))
        && !may_have_flow(&p.saddr, p.dport, side)
}

/// Translates a packet on a TC hook. Returns the TC verdict; packets that cannot be parsed
/// pass untouched.
#[inline(always)]
pub fn handle(ctx: &TcContext, side: Side) -> i32 {
    if passes(ctx, side) {
        return TC_ACT_UNSPEC;
    }
    let Some(s) = scratch() else {
        return TC_ACT_UNSPEC;
    };
    if !pkt::parse_into(ctx, &mut s.pkt) {
        return not_tcp_udp(ctx, s, false);
    }
    if side == Side::Pod && s.pkt.proto == PROTO_TCP && metadata_bypass(&s.pkt.daddr, s.pkt.dport) {
        return TC_ACT_SHOT;
    }
    // Most packets cannot have an entry (see `may_have_flow`): they skip the lookup (and
    // building its key).
    if may_have_flow(&s.pkt.saddr, s.pkt.dport, side) {
        s.key = key(&s.pkt);
        if let Some(e) = ct_get(&s.key) {
            return if e.dir == ct_dir::REPLY {
                apply_reply(ctx, &mut s.pkt, e, &s.key)
            } else {
                apply_forward(ctx, &mut s.pkt, e, &s.key)
            };
        }
    }
    let p = &s.pkt;
    if !(p.may_start_flow() && looked_up(p.daddr, p.dport)) {
        return TC_ACT_UNSPEC;
    }
    s.svc_key = SvcKey {
        addr: p.daddr,
        port: p.dport,
        proto: p.proto,
        scope: if side == Side::Outside {
            scope::EXTERNAL
        } else {
            scope::INTERNAL
        },
        slot: 0,
        pad: [0; 2],
    };
    if !lb::frontend_into(&mut s.svc_key, &mut s.fe) {
        return unallocated(&s.pkt);
    }
    let fe = &s.fe;
    let p = &s.pkt;
    if side == Side::Outside
        && fe.value.flags & svc_flags::SOURCE_RANGES != 0
        && !source_allowed(fe, &p.saddr)
    {
        lb::count(fe.value.service_id, 0, 0, 0, 0, 1);
        return TC_ACT_SHOT;
    }
    if fe.value.count == 0 {
        lb::count(fe.value.service_id, 0, 0, 0, 0, 1);
        if fe.value.flags & svc_flags::DROP_IF_EMPTY != 0 {
            return TC_ACT_SHOT;
        }
        return reject(ctx, p);
    }
    if new_flow(s, side) != 0 {
        return TC_ACT_SHOT;
    }
    // Translate with the entry just created (the same path as every later packet).
    s.key = key(&s.pkt);
    match ct_get(&s.key) {
        Some(e) => apply_forward(ctx, &mut s.pkt, e, &s.key),
        None => TC_ACT_SHOT,
    }
}

/// A packet the parser left alone (not TCP or UDP, or a later fragment it cannot place):
/// perhaps an ICMP error about a translated flow, or a ping or SCTP packet to a Service IP.
/// `leaving`: on an uplink's way out (the node's own packets), where errors are not sent on
/// through the FIB and a refusal goes back into the node.
#[inline(always)]
fn not_tcp_udp(ctx: &TcContext, s: &mut Scratch, leaving: bool) -> i32 {
    if let Some(verdict) = crate::icmp::related(ctx, s, !leaving) {
        return verdict;
    }
    // One header field rules out most of the rest (a tunnel's packets) before the call.
    if crate::other_proto::may_matter(ctx) {
        return crate::other_proto::handle(ctx, s, leaving);
    }
    TC_ACT_UNSPEC
}

/// A packet no frontend matched: dropped if it starts a flow to an address inside a
/// ServiceCIDR (an unallocated Service IP, kube-proxy nftables' DROP), else left alone.
#[inline(always)]
pub(crate) fn unallocated(p: &Pkt) -> i32 {
    if p.may_start_flow()
        && let Some(v) = lb::service_cidr(p.daddr)
    {
        lb::count_unallocated(v);
        return TC_ACT_SHOT;
    }
    TC_ACT_UNSPEC
}

/// A new flow: choose a backend and claim its conntrack entries. Out of line (its own stack
/// frame, not stacked on the translation's). Returns 0 on success.
#[inline(never)]
pub(crate) fn new_flow(s: &mut Scratch, side: Side) -> u32 {
    u32::from(new_flow_inner(s, side).is_err())
}

#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "references into the per-CPU scratch map; by-value copies would use the 512-byte stack"
)]
#[inline(always)]
fn new_flow_inner(s: &mut Scratch, side: Side) -> R<()> {
    if lb::choose(
        &s.fe,
        &s.pkt,
        u32::from(side == Side::Outside),
        &mut s.chosen,
    ) == 0
    {
        return Err(());
    }
    let fe = &s.fe;
    let p = &s.pkt;
    let (backend_id, backend) = (s.chosen.id, s.chosen.backend);
    // Replies come from the backend; a pod's own forward packets come from the pod. Marked
    // before any entry exists, so no packet of the flow can skip its lookup.
    if !mark(&backend.addr) || (side == Side::Pod && !mark(&p.saddr)) {
        return Err(());
    }
    let hairpin = side == Side::Pod && backend.addr == p.saddr;
    let snat = match side {
        // kube-proxy masquerades external traffic under Cluster policy (and ClusterIP traffic
        // from off-cluster sources); Local policy keeps the client address.
        Side::Outside => fe.value.flags & svc_flags::LOCAL_ONLY == 0,
        // A pod reaching itself through its service: it must not see its own address as source.
        Side::Pod => hairpin,
    };
    let mut flags = 0u8;
    let mut nat_port = 0u16;
    s.nat_addr = [0; 4];
    if snat {
        nat_port = snat_source(s, u8::from(hairpin));
        if nat_port == 0 {
            return Err(());
        }
        flags |= ct_flags::SNAT | ct_flags::REDIRECT;
    }
    let nat_addr = s.nat_addr;
    let fe = s.fe;
    let p = s.pkt;
    let now = lb::now_secs();
    // Replies of NodePort flows leave with a node address as their source: redirect them.
    let node_reply = fe.value.flags & svc_flags::NODE_ADDRESS != 0 && side == Side::Outside;
    // Built in scratch space and inserted from there (no stack copies).
    let (saddr, sport, daddr, dport) = (p.saddr, p.sport, p.daddr, p.dport);
    s.key = CtKey {
        saddr: backend.addr,
        daddr: if snat { nat_addr } else { saddr },
        sport: backend.port,
        dport: if snat { nat_port } else { sport },
        proto: s.pkt.proto,
        pad: [0; 3],
    };
    s.entry = CtEntry {
        to_addr: daddr,
        nat_addr: if snat { saddr } else { [0; 4] },
        to_port: dport,
        nat_port: if snat { sport } else { 0 },
        flags: flags | if node_reply { ct_flags::REDIRECT } else { 0 },
        dir: ct_dir::REPLY,
        pad: [0; 2],
        backend_id,
        service_id: fe.value.service_id,
        last_seen: now,
    };
    // With SNAT this replaces the placeholder the port allocation claimed.
    CONNTRACK.insert(&s.key, &s.entry, 0).map_err(|_| ())?;
    s.key = key(&s.pkt);
    s.entry = CtEntry {
        to_addr: backend.addr,
        nat_addr,
        to_port: backend.port,
        nat_port,
        flags,
        dir: ct_dir::FORWARD,
        pad: [0; 2],
        backend_id,
        service_id: fe.value.service_id,
        last_seen: now,
    };
    CONNTRACK.insert(&s.key, &s.entry, 0).map_err(|_| ())?;
    lb::count(fe.value.service_id, backend_id, 0, 0, 1, 0);
    Ok(())
}

/// The SNAT source for a new flow: a NodePort's own address (or the node's address for the
/// family) into `s.nat_addr`, and a free source port, claimed by inserting a placeholder reply
/// entry with BPF_NOEXIST (two CPUs cannot claim the same one). Returns the port in network
/// order, 0 when there is none. Out of line, working in scratch space.
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "references into the per-CPU scratch map; by-value copies would use the 512-byte stack"
)]
#[inline(never)]
fn snat_source(s: &mut Scratch, hairpin: u8) -> u16 {
    let Some(cfg) = CONFIG.get(0) else {
        return 0;
    };
    s.nat_addr = if s.fe.value.flags & svc_flags::NODE_ADDRESS != 0 && hairpin == 0 {
        s.pkt.daddr
    } else if is_v4_mapped(&s.pkt.daddr) {
        cfg.snat_v4
    } else {
        cfg.snat_v6
    };
    let (min, max) = (cfg.snat_port_min, cfg.snat_port_max);
    if s.nat_addr == [0; 4] || max < min || min == 0 {
        return 0;
    }
    s.key = CtKey {
        saddr: s.chosen.backend.addr,
        daddr: s.nat_addr,
        sport: s.chosen.backend.port,
        dport: 0,
        proto: s.pkt.proto,
        pad: [0; 3],
    };
    // A placeholder until the flow's entry replaces it.
    s.entry = CtEntry {
        dir: ct_dir::REPLY,
        ..CtEntry::default()
    };
    let span = u32::from(max - min) + 1;
    for _ in 0..8 {
        // SAFETY: helper without preconditions.
        let port = (min + (unsafe { bpf_get_prandom_u32() } % span) as u16).to_be();
        s.key.dport = port;
        if CONNTRACK
            .insert(&s.key, &s.entry, u64::from(BPF_NOEXIST))
            .is_ok()
        {
            return port;
        }
    }
    0
}

/// Folds a 32-bit one's-complement sum (as `bpf_csum_diff` returns it, over bytes in memory
/// order) into the checksum to store as-is in memory order.
#[inline(always)]
fn fold(sum: i64) -> u16 {
    let mut c = sum as u64 & 0xffff_ffff;
    c = (c & 0xffff) + (c >> 16);
    c = (c & 0xffff) + (c >> 16);
    !(c as u16)
}

/// A 32-bit word from its bytes as they lie in the packet.
#[inline(always)]
fn w(b: [u8; 4]) -> u32 {
    u32::from_ne_bytes(b)
}

/// One's-complement sum of `words` (memory order), continuing from `seed`.
#[inline(always)]
fn csum(words: &mut [u32], seed: i64) -> i64 {
    // SAFETY: a stack buffer of exactly the size passed.
    unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            words.as_mut_ptr(),
            (words.len() * 4) as u32,
            seed as u32,
        )
    }
}

/// One's-complement sum of `words` (memory order, read only), continuing from `seed`.
#[inline(always)]
fn csum_ro(words: &[u32; 4], seed: i64) -> i64 {
    // SAFETY: the helper only reads `to`, 16 bytes here.
    unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            words.as_ptr().cast_mut(),
            16,
            seed as u32,
        )
    }
}

/// kube-proxy's REJECT: a TCP SYN gets a reset, a UDP datagram an ICMP (IPv4) or ICMPv6
/// port unreachable, sent back out of the interface it came in on. Anything else is dropped.
#[inline(never)]
fn reject(ctx: &TcContext, p: &Pkt) -> i32 {
    match p.proto {
        PROTO_TCP if p.tcp_flags & TCP_SYN != 0 && p.tcp_flags & TCP_ACK == 0 => tcp_reset(ctx, p),
        PROTO_UDP => port_unreachable(ctx, p, false),
        _ => TC_ACT_SHOT,
    }
}

#[inline(always)]
fn swap_macs(ctx: &TcContext) -> R<()> {
    let dst: [u8; 6] = load(ctx, 0)?;
    let src: [u8; 6] = load(ctx, 6)?;
    ctx.store(0, &src, 0).map_err(|_| ())?;
    ctx.store(6, &dst, 0).map_err(|_| ())
}

/// Sends the answer built in the packet's place back to its sender: out of the interface it
/// came in on, or (`to_host`: a packet the node itself was sending out) into the node, through
/// the interface it was leaving by.
#[inline(always)]
fn bounce(ctx: &TcContext, to_host: bool) -> i32 {
    // SAFETY: the context's __sk_buff; the redirect helper returns TC_ACT_REDIRECT.
    unsafe {
        let skb = ctx.skb.skb;
        if to_host {
            bpf_redirect((*skb).ifindex, u64::from(BPF_F_INGRESS)) as i32
        } else {
            bpf_redirect((*skb).ingress_ifindex, 0) as i32
        }
    }
}

/// kube-proxy's REJECT of a datagram (or, see `other_proto`, of a ping or SCTP packet): an
/// ICMP (IPv4) or ICMPv6 port unreachable, from where it was sent to.
#[inline(always)]
pub(crate) fn port_unreachable(ctx: &TcContext, p: &Pkt, to_host: bool) -> i32 {
    // Destination unreachable, port unreachable: ICMP type 3 code 3, ICMPv6 type 1 code 4.
    let kind = if p.v6 {
        w([1, 4, 0, 0])
    } else {
        w([3, 3, 0, 0])
    };
    icmp_error(ctx, p, kind, 0, to_host)
}

/// An IPv4 header without options, checksum filled in.
#[inline(always)]
fn ipv4_header(total_len: u16, proto: u8, saddr: u32, daddr: u32) -> [u32; 5] {
    let l = total_len.to_be_bytes();
    let mut ip = [
        w([0x45, 0, l[0], l[1]]),
        w([0, 0, 0x40, 0]),
        w([64, proto, 0, 0]),
        saddr,
        daddr,
    ];
    let c = fold(csum(&mut ip, 0)).to_ne_bytes();
    ip[2] = w([64, proto, c[0], c[1]]);
    ip
}

#[inline(never)]
fn tcp_reset(ctx: &TcContext, p: &Pkt) -> i32 {
    tcp_reset_inner(ctx, p).unwrap_or(TC_ACT_SHOT)
}

#[inline(always)]
fn tcp_reset_inner(ctx: &TcContext, p: &Pkt) -> R<i32> {
    // The reset has a plain IP header (no IPv4 options, no IPv6 extension headers): its TCP
    // header goes right behind it, wherever the SYN's was.
    let l4 = p.l3 + if p.v6 { 40 } else { 20 };
    let seq: u32 = load(ctx, p.l4 + 4)?;
    let doff = usize::from(load::<u8>(ctx, p.l4 + 12)? >> 4) * 4;
    let payload = (p.len as usize).saturating_sub(p.l4 + doff);
    let ack = u32::from_be(seq)
        .wrapping_add(1)
        .wrapping_add(payload as u32)
        .to_be_bytes();
    let total = l4 + 20;
    // SAFETY: helper on our own skb; shrinks it to the headers.
    if unsafe { bpf_skb_change_tail(ctx.as_ptr().cast(), total as u32, 0) } != 0 {
        return Err(());
    }
    swap_macs(ctx)?;
    let (sp, dp) = (p.dport.to_ne_bytes(), p.sport.to_ne_bytes());
    // Ports swapped, seq 0, ack = their seq + 1 + payload, data offset 5, RST|ACK, window 0.
    let mut tcp = [
        w([sp[0], sp[1], dp[0], dp[1]]),
        0,
        w(ack),
        w([5 << 4, TCP_RST | TCP_ACK, 0, 0]),
        0,
    ];
    let seed = if p.v6 {
        let mut ph = [0u32; 10];
        ph[..4].copy_from_slice(&p.daddr);
        ph[4..8].copy_from_slice(&p.saddr);
        ph[8] = w([0, 0, 0, 20]);
        ph[9] = w([0, 0, 0, PROTO_TCP]);
        csum(&mut ph, 0)
    } else {
        let mut ph = [p.daddr[3], p.saddr[3], w([0, PROTO_TCP, 0, 20])];
        csum(&mut ph, 0)
    };
    let c = fold(csum(&mut tcp, seed)).to_ne_bytes();
    tcp[4] = w([c[0], c[1], 0, 0]);
    if p.v6 {
        let ip6 = [w([0x60, 0, 0, 0]), w([0, 20, PROTO_TCP, 64])];
        ctx.store(p.l3, &ip6, 0).map_err(|_| ())?;
        ctx.store(p.l3 + 8, &p.daddr, 0).map_err(|_| ())?;
        ctx.store(p.l3 + 24, &p.saddr, 0).map_err(|_| ())?;
    } else {
        let ip = ipv4_header(40, PROTO_TCP, p.daddr[3], p.saddr[3]);
        ctx.store(p.l3, &ip, 0).map_err(|_| ())?;
    }
    ctx.store(l4, &tcp, 0).map_err(|_| ())?;
    Ok(bounce(ctx, false))
}

/// Bytes of the TCP or UDP header an ICMP error here quotes: UDP's 8 (ports, length,
/// checksum), TCP's first 20 (RFC 792's "64 bits" would cut it before its checksum, which a
/// packet whose checksum the device completes, CHECKSUM_PARTIAL, must keep); of any other
/// protocol's, RFC 792's 8.
#[inline(always)]
fn quoted_l4(p: &Pkt) -> usize {
    if p.proto == PROTO_TCP { 20 } else { 8 }
}

/// The quoted TCP/UDP header's words as they will be on the wire. A GSO packet's checksum is
/// left for the device to complete (CHECKSUM_PARTIAL from its csum_start, the TCP/UDP header,
/// to the end, which after the cut is the quote): the device (or the kernel for it) will store
/// the one's complement of the sum of those bytes in the checksum field at `field`. The ICMP
/// checksum must cover that value, so it is computed here the same way. (A plain packet
/// carries its final checksum, except one from a local socket over a veth, whose receivers do
/// not verify checksums.)
#[inline(always)]
fn as_sent(gso: bool, l4: &mut [u32], field: usize) {
    if !gso {
        return;
    }
    let (word, half) = (field / 4, field % 4);
    if word >= l4.len() || half > 2 {
        return;
    }
    let c = fold(csum(l4, 0)).to_ne_bytes();
    let mut b = l4[word].to_ne_bytes();
    b[half] = c[0];
    b[half + 1] = c[1];
    l4[word] = u32::from_ne_bytes(b);
}

/// One's-complement sum of the quote at `quote` (the IP header with its options or extension
/// headers, `p.l4 - p.l3` bytes, then [`quoted_l4`] bytes of the TCP/UDP header; `gso`: of a
/// GSO packet, see [`as_sent`]), continuing from `seed`.
#[inline(always)]
fn quote_sum(ctx: &TcContext, p: &Pkt, quote: usize, gso: bool, seed: i64) -> R<i64> {
    let hdr = p.l4 - p.l3;
    // The IP headers word by word (at most 40 + 64 bytes), summed as 32-bit words with the
    // carries kept, then folded to 32 bits as `bpf_csum_diff` returns sums.
    let mut sum = seed as u64 & 0xffff_ffff;
    for i in 0..(pkt::MAX_OFFSET - ETH_HLEN) / 4 {
        if i * 4 >= hdr {
            break;
        }
        sum += u64::from(load::<u32>(ctx, quote + i * 4)?);
    }
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    let sum = sum as i64;
    let l4 = quote + hdr;
    if p.proto == PROTO_TCP {
        let mut t: [u32; 5] = load(ctx, l4)?;
        as_sent(gso, &mut t, 16);
        Ok(csum(&mut t, sum))
    } else {
        let mut u: [u32; 2] = load(ctx, l4)?;
        as_sent(gso, &mut u, 6);
        Ok(csum(&mut u, sum))
    }
}

/// An ICMP or ICMPv6 error about the packet `p` (its first word `kind`, type and code, the
/// second `rest`), from the address `p` was sent to, back out of the interface it came in on.
/// It quotes the IP header (with its options or extension headers) and the first
/// [`quoted_l4`] bytes of the TCP/UDP header (RFC 4443 asks for as much as fits; this is what
/// a sender needs to match its socket, and what kube-proxy's REJECT sends). The error itself
/// has a plain IP header.
#[inline(never)]
fn icmp_error(ctx: &TcContext, p: &Pkt, kind: u32, rest: u32, to_host: bool) -> i32 {
    icmp_error_inner(ctx, p, kind, rest, to_host).unwrap_or(TC_ACT_SHOT)
}

#[inline(always)]
fn icmp_error_inner(ctx: &TcContext, p: &Pkt, kind: u32, rest: u32, to_host: bool) -> R<i32> {
    use crate::icmp::{PROTO_ICMP, PROTO_ICMPV6};
    let ip_len = if p.v6 { 40 } else { 20 };
    if p.l3 != ETH_HLEN || p.l4 > pkt::MAX_OFFSET {
        return Err(());
    }
    // Read before the cut, which turns a GSO packet into a plain one (its checksum is still
    // the device's to complete).
    // SAFETY: the context's __sk_buff.
    let gso = unsafe { (*ctx.skb.skb).gso_size } != 0;
    // Cut the packet to the quote, then make room for the new IP and ICMP headers in front of
    // it (cut first: less to move, and a GSO packet no longer is one).
    // SAFETY: helper on our own skb.
    if unsafe { bpf_skb_change_tail(ctx.as_ptr().cast(), (p.l4 + quoted_l4(p)) as u32, 0) } != 0 {
        return Err(());
    }
    ctx.adjust_room((ip_len + 8) as i32, BPF_ADJ_ROOM_MAC, 0)
        .map_err(|_| ())?;
    swap_macs(ctx)?;
    let len = 8 + (p.l4 - p.l3) + quoted_l4(p);
    let mut head = [kind, rest];
    let seed = if p.v6 {
        // The pseudo header: from where the packet was sent to, back to its sender.
        let mut tail = [w([0, 0, 0, len as u8]), w([0, 0, 0, PROTO_ICMPV6])];
        csum_ro(&p.saddr, csum_ro(&p.daddr, csum(&mut tail, 0)))
    } else {
        0
    };
    let seed = csum(&mut head, seed);
    let c = fold(quote_sum(ctx, p, ETH_HLEN + ip_len + 8, gso, seed)?).to_ne_bytes();
    let k = kind.to_ne_bytes();
    let head = [w([k[0], k[1], c[0], c[1]]), rest];
    if p.v6 {
        let ip6 = [w([0x60, 0, 0, 0]), w([0, len as u8, PROTO_ICMPV6, 64])];
        ctx.store(ETH_HLEN, &ip6, 0).map_err(|_| ())?;
        ctx.store(ETH_HLEN + 8, &p.daddr, 0).map_err(|_| ())?;
        ctx.store(ETH_HLEN + 24, &p.saddr, 0).map_err(|_| ())?;
    } else {
        let ip = ipv4_header((20 + len) as u16, PROTO_ICMP, p.daddr[3], p.saddr[3]);
        ctx.store(ETH_HLEN, &ip, 0).map_err(|_| ())?;
    }
    ctx.store(ETH_HLEN + ip_len, &head, 0).map_err(|_| ())?;
    Ok(bounce(ctx, to_host))
}

/// Packets leaving by an uplink: host traffic to a frontend without backends and a DROP
/// verdict is dropped; the node's own ICMP errors about packets of translated flows it
/// forwarded (a local backend's interface with a smaller MTU than the uplink, a backend gone)
/// are translated back for the client, as conntrack does for kube-proxy; the node's pings
/// and SCTP packets to Service IPs (no socket hook sees a ping) are refused or dropped as a
/// pod's are (`other_proto`).
#[inline(always)]
pub fn egress(ctx: &TcContext) -> i32 {
    let Some(s) = scratch() else {
        return TC_ACT_UNSPEC;
    };
    if !pkt::parse_into(ctx, &mut s.pkt) {
        return not_tcp_udp(ctx, s, true);
    }
    let p = &s.pkt;
    match lb::frontend_inside(p.daddr, p.dport, p.proto) {
        Some(fe) if fe.value.count == 0 && fe.value.flags & svc_flags::DROP_IF_EMPTY != 0 => {
            TC_ACT_SHOT
        }
        _ => TC_ACT_UNSPEC,
    }
}
