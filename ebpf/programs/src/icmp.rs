//! ICMP and ICMPv6 errors about translated flows (conntrack's RELATED, which kube-proxy's
//! rules get from the kernel): a backend's port unreachable for a NodePort's UDP datagram, a
//! router's Fragmentation Needed / Packet Too Big for a reply on its way to the client, a time
//! exceeded. The error quotes the packet that caused it as it was on the wire, that is after
//! the translation; it is sent to where that packet came from before it, with the quoted
//! packet translated back, so the sender's stack matches it to its socket (and learns the path
//! MTU).
//!
//! The quoted packet's reverse is a packet of the flow going the error's way: the conntrack
//! entry that translates such a packet gives the error's new destination and the quoted
//! packet's original addresses and ports. The error's own source (a router, the backend) is
//! kept. Errors arriving (uplinks, pods' interfaces) and the node's own, leaving by an uplink
//! (about packets it forwarded to a local backend) are translated. The quoted packet must be a
//! TCP or UDP packet with its ports (IPv4 options and IPv6 extension headers are walked, a
//! later fragment is not matched); anything else passes as before.

use aya_ebpf::{
    bindings::{BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_csum_diff,
    programs::TcContext,
};
use tollgate_common::lb::{
    PROTO_TCP, PROTO_UDP,
    ct::{CtEntry, CtKey},
    ct_dir, ct_flags, v4_mapped,
};

use crate::{
    nat::{self, Scratch},
    pkt::{self, ETH_HLEN, Frame, Header, Pkt},
};

pub(crate) const PROTO_ICMP: u8 = 1;
pub(crate) const PROTO_ICMPV6: u8 = 58;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// ICMP error types: destination unreachable, time exceeded, parameter problem.
const ICMP_ERRORS: [u8; 3] = [3, 11, 12];
/// ICMPv6 error types: destination unreachable, packet too big, time exceeded, parameter
/// problem.
const ICMPV6_ERRORS: [u8; 4] = [1, 2, 3, 4];

/// An ICMP error being translated, kept in the per-CPU scratch (the BPF stack has no room for
/// it on top of the translation's frame): where its parts lie, the quoted packet's tuple, and
/// the tuple the conntrack entry gives (network order).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Error {
    v6: bool,
    /// The error comes from the quoted packet's destination (its own port unreachable), not
    /// from a router on the way.
    from_endpoint: bool,
    proto: u8,
    /// The ICMP header.
    icmp: usize,
    /// The quoted IP header and its TCP/UDP header.
    inner_l3: usize,
    inner_l4: usize,
    saddr: [u32; 4],
    daddr: [u32; 4],
    sport: u16,
    dport: u16,
    /// The quoted packet reversed, as the conntrack entry translates it.
    to_src: [u32; 4],
    to_dst: [u32; 4],
    to_sport: u16,
    to_dport: u16,
    /// The IPv6 address edit in progress (see [`store_addr6`]).
    edit: Edit6,
}

/// An IPv6 address to replace in an ICMPv6 error (`pseudo`: one of the pseudo header's).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Edit6 {
    off: usize,
    pseudo: bool,
    old: [u32; 4],
    new: [u32; 4],
}

/// Parses an ICMP or ICMPv6 error quoting a TCP or UDP packet into `e`; `None` for anything
/// else.
#[inline(always)]
fn parse<F: Frame>(f: &F, e: &mut Error) -> Option<()> {
    let (v6, icmp, outer_src) = match f.eth_proto()? {
        ETH_P_IP => {
            let h = Header::<20>::at(f, ETH_HLEN)?;
            let vihl = h.u8::<0>();
            // Not a fragment after the first (it has no ICMP header).
            if vihl >> 4 != 4
                || h.u8::<9>() != PROTO_ICMP
                || u16::from_be(h.u16::<6>()) & 0x1fff != 0
            {
                return None;
            }
            (
                false,
                ETH_HLEN + usize::from(vihl & 0x0f) * 4,
                v4_mapped(h.u32::<12>()),
            )
        }
        ETH_P_IPV6 => {
            let h = Header::<40>::at(f, ETH_HLEN)?;
            // Read before the walk, which may pull the packet (and so invalidate `h`).
            let src = [h.u32::<8>(), h.u32::<12>(), h.u32::<16>(), h.u32::<20>()];
            let (l4, next, frag, _) = pkt::ipv6_payload(f, ETH_HLEN + 40, h.u8::<6>())?;
            if next != PROTO_ICMPV6 || frag == pkt::LATER_FRAGMENT {
                return None;
            }
            (true, l4, src)
        }
        _ => return None,
    };
    let kind = Header::<4>::at(f, icmp)?.u8::<0>();
    let inner_l3 = icmp + 8;
    e.v6 = v6;
    e.icmp = icmp;
    e.inner_l3 = inner_l3;
    if v6 {
        if !ICMPV6_ERRORS.contains(&kind) {
            return None;
        }
        let h = Header::<40>::at(f, inner_l3)?;
        // Read before the walk, which may pull the packet (and so invalidate `h`).
        e.saddr = [h.u32::<8>(), h.u32::<12>(), h.u32::<16>(), h.u32::<20>()];
        e.daddr = [h.u32::<24>(), h.u32::<28>(), h.u32::<32>(), h.u32::<36>()];
        let next = h.u8::<6>();
        // The quoted packet's extension headers (a first fragment's Fragment header); a later
        // fragment has no ports to match.
        let (l4, next, frag, _) = pkt::ipv6_payload(f, inner_l3 + 40, next)?;
        if frag == pkt::LATER_FRAGMENT {
            return None;
        }
        e.inner_l4 = l4;
        e.proto = next;
    } else {
        if !ICMP_ERRORS.contains(&kind) {
            return None;
        }
        let h = Header::<20>::at(f, inner_l3)?;
        let vihl = h.u8::<0>();
        // IPv4 with its options; not a later fragment (it has no ports to match).
        if vihl >> 4 != 4 || vihl & 0x0f < 5 || u16::from_be(h.u16::<6>()) & 0x1fff != 0 {
            return None;
        }
        e.inner_l4 = inner_l3 + usize::from(vihl & 0x0f) * 4;
        e.proto = h.u8::<9>();
        e.saddr = v4_mapped(h.u32::<12>());
        e.daddr = v4_mapped(h.u32::<16>());
    }
    if e.proto != PROTO_TCP && e.proto != PROTO_UDP {
        return None;
    }
    let ports = Header::<4>::at(f, e.inner_l4)?;
    e.sport = ports.u16::<0>();
    e.dport = ports.u16::<2>();
    e.from_endpoint = outer_src == e.daddr;
    Some(())
}

/// Translates an ICMP error about a translated flow and returns the TC verdict; `None` when the
/// packet is not such an error (it passes as before). Works in the per-CPU scratch `s`.
/// `redirect`: the error may be sent on through the FIB as its flow's packets are (not on the
/// way out, where the node's own errors about the packets it forwarded already are).
#[inline(never)]
pub fn related(ctx: &TcContext, s: &mut Scratch, redirect: bool) -> Option<i32> {
    parse(ctx, &mut s.icmp)?;
    let e = &s.icmp;
    // A packet of the flow going the error's way is the quoted one reversed.
    s.key = CtKey {
        saddr: e.daddr,
        daddr: e.saddr,
        sport: e.dport,
        dport: e.sport,
        proto: e.proto,
        pad: [0; 3],
    };
    let entry = nat::ct_get(&s.key)?;
    translated(&mut s.icmp, entry);
    let redirect = redirect && entry.flags & ct_flags::REDIRECT != 0;
    Some(translate(ctx, s, redirect).unwrap_or(TC_ACT_SHOT))
}

/// The reversed quoted packet as `entry` translates it, into `e.to_*`. FORWARD rewrites the
/// destination (and with SNAT the source), REPLY the source (and with SNAT the destination).
#[inline(always)]
fn translated(e: &mut Error, entry: &CtEntry) {
    e.to_src = e.daddr;
    e.to_sport = e.dport;
    e.to_dst = e.saddr;
    e.to_dport = e.sport;
    let snat = entry.flags & ct_flags::SNAT != 0;
    if entry.dir == ct_dir::FORWARD {
        e.to_dst = entry.to_addr;
        e.to_dport = entry.to_port;
        if snat {
            e.to_src = entry.nat_addr;
            e.to_sport = entry.nat_port;
        }
    } else {
        e.to_src = entry.to_addr;
        e.to_sport = entry.to_port;
        if snat {
            e.to_dst = entry.nat_addr;
            e.to_dport = entry.nat_port;
        }
    }
}

type R<T> = Result<T, ()>;

/// Rewrites the error: the quoted packet becomes the translated one reversed (from `to_dst` to
/// `to_src`), and the error goes where that came from: to `to_dst`. An error the quoted
/// packet's destination sent itself (a backend's port unreachable) comes from `to_src`, as with
/// conntrack; a router's keeps its address.
#[inline(always)]
fn translate(ctx: &TcContext, s: &mut Scratch, redirect: bool) -> R<i32> {
    let e = &mut s.icmp;
    let csum = e.icmp + 2;
    if e.v6 {
        // ICMPv6's checksum covers a pseudo header with the outer addresses and the whole
        // message, the quoted addresses included. One edit at a time, in the scratch.
        e.edit = Edit6 {
            off: ETH_HLEN + 8,
            pseudo: true,
            old: e.daddr,
            new: if e.from_endpoint { e.to_src } else { e.daddr },
        };
        store_addr6(ctx, &e.edit, csum)?;
        e.edit.off = ETH_HLEN + 24;
        e.edit.old = ctx.load::<[u32; 4]>(ETH_HLEN + 24).map_err(|_| ())?;
        e.edit.new = e.to_dst;
        store_addr6(ctx, &e.edit, csum)?;
        e.edit.off = e.inner_l3 + 8;
        e.edit.pseudo = false;
        e.edit.old = e.saddr;
        store_addr6(ctx, &e.edit, csum)?;
        e.edit.off = e.inner_l3 + 24;
        e.edit.old = e.daddr;
        e.edit.new = e.to_src;
        store_addr6(ctx, &e.edit, csum)?;
    } else {
        // The outer header's checksum; the ICMP checksum does not cover it.
        let to = ctx.load::<u32>(ETH_HLEN + 16).map_err(|_| ())?;
        if e.from_endpoint {
            store_addr4(ctx, ETH_HLEN + 12, e.daddr[3], e.to_src[3], ETH_HLEN + 10)?;
        }
        store_addr4(ctx, ETH_HLEN + 16, to, e.to_dst[3], ETH_HLEN + 10)?;
        // The quoted header's addresses and its checksum change by opposite amounts, so the
        // ICMP checksum over them stays right.
        let check = e.inner_l3 + 10;
        store_addr4(ctx, e.inner_l3 + 12, e.saddr[3], e.to_dst[3], check)?;
        store_addr4(ctx, e.inner_l3 + 16, e.daddr[3], e.to_src[3], check)?;
    }
    // The quoted ports, in the ICMP checksum.
    store_port(ctx, e.inner_l4, e.sport, e.to_dport, csum)?;
    store_port(ctx, e.inner_l4 + 2, e.dport, e.to_sport, csum)?;
    if !redirect {
        return Ok(TC_ACT_OK);
    }
    let (v6, icmp, to_dst) = (e.v6, e.icmp, e.to_dst);
    s.pkt = Pkt {
        v6,
        l3: ETH_HLEN,
        l4: icmp,
        proto: if v6 { PROTO_ICMPV6 } else { PROTO_ICMP },
        daddr: to_dst,
        len: Frame::len(ctx),
        ..Pkt::default()
    };
    // An error is never too big for its way out (at most 576 bytes of IPv4, 1280 of IPv6).
    Ok(match nat::fib_redirect(ctx, &s.pkt) {
        v if v & nat::TOO_BIG != 0 => TC_ACT_SHOT,
        v => v,
    })
}

/// Stores a quoted port at `off`, updating the ICMP checksum at `csum`.
#[inline(always)]
fn store_port(ctx: &TcContext, off: usize, old: u16, new: u16, csum: usize) -> R<()> {
    if old == new {
        return Ok(());
    }
    ctx.store(off, &new, 0).map_err(|_| ())?;
    ctx.l4_csum_replace(csum, u64::from(old), u64::from(new), 2)
        .map_err(|_| ())
}

/// Stores an IPv4 address at `off`, updating the IPv4 header checksum at `check`.
#[inline(always)]
fn store_addr4(ctx: &TcContext, off: usize, old: u32, new: u32, check: usize) -> R<()> {
    if old == new {
        return Ok(());
    }
    ctx.store(off, &new, 0).map_err(|_| ())?;
    ctx.l3_csum_replace(check, u64::from(old), u64::from(new), 4)
        .map_err(|_| ())
}

/// Stores `edit.new` at `edit.off` and updates the ICMPv6 checksum at `csum`. Out of line (the
/// BPF backend fails on four inlined copies).
#[inline(never)]
fn store_addr6(ctx: &TcContext, edit: &Edit6, csum: usize) -> R<()> {
    if edit.old == edit.new {
        return Ok(());
    }
    ctx.store(edit.off, &edit.new, 0).map_err(|_| ())?;
    let (mut o, mut n) = (edit.old, edit.new);
    // SAFETY: two 16-byte stack buffers.
    let diff = unsafe { bpf_csum_diff(o.as_mut_ptr(), 16, n.as_mut_ptr(), 16, 0) };
    let flags = if edit.pseudo {
        u64::from(BPF_F_PSEUDO_HDR)
    } else {
        0
    };
    ctx.l4_csum_replace(csum, 0, diff as u64, flags)
        .map_err(|_| ())
}
