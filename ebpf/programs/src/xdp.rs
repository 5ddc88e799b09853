//! The XDP fast path on uplinks: service traffic from outside whose translated packet leaves
//! through the same uplink (a NodePort, externalIP or LB VIP whose backend is on another node,
//! and that backend's replies) is translated in place and sent back out with `XDP_TX`, before
//! the kernel allocates an skb.
//!
//! Everything else passes up unmodified: the TC program translates it from the same conntrack
//! entries (a new flow's entries are created here, once). So XDP only ever accelerates, and
//! turning it off (`--xdp-mode off`) changes no behaviour.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, xdp_action},
    btf_maps::PerCpuArray,
    helpers::bpf_fib_lookup as fib_lookup,
    macros::btf_map,
    programs::XdpContext,
};
use tollgate_common::lb::{
    PROTO_TCP, PROTO_UDP, ct::CtEntry, ct_dir, ct_flags, scope, svc::SvcKey, svc_flags,
};

use crate::{
    lb,
    nat::{self, Scratch, Side},
    pkt::{self, ETH_HLEN, LATER_FRAGMENT, Pkt},
};

/// XDP's own scratch space (XDP and TC run one after the other on a CPU, never nested, but a
/// separate buffer keeps that an implementation detail).
#[btf_map(name = "tg_xdp_scratch")]
static XDP_SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + off + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + off) as *mut T)
}

#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    // SAFETY: bounds-checked against data_end; unaligned read.
    ptr_at::<T>(ctx, off).map(|p| unsafe { p.read_unaligned() })
}

#[inline(always)]
fn write<T: Copy>(ctx: &XdpContext, off: usize, v: T) -> Option<()> {
    // SAFETY: bounds-checked against data_end; unaligned write.
    ptr_at::<T>(ctx, off).map(|p| unsafe { p.write_unaligned(v) })
}

/// RFC 1624 incremental update of a checksum stored as-is in memory: remove the 16-bit words of
/// `old`, add those of `new` (all in memory order, like the checksum).
#[inline(always)]
fn csum_replace(check: u16, old: &[u32; 4], new: &[u32; 4], old_port: u16, new_port: u16) -> u16 {
    let mut sum = u32::from(!check);
    for i in 0..4 {
        sum += (!old[i] & 0xffff) + (!old[i] >> 16);
        sum += (new[i] & 0xffff) + (new[i] >> 16);
    }
    sum += u32::from(!old_port) + u32::from(new_port);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Rewrites one end (source or destination) of the packet: address, port, and the checksums
/// covering them (IPv4 header; TCP/UDP pseudo header). `ip_words` of an IPv4 address is the
/// mapped form, whose first three words never change.
#[inline(always)]
fn set_end(
    ctx: &XdpContext,
    p: &Pkt,
    src: bool,
    old: ([u32; 4], u16),
    new: ([u32; 4], u16),
) -> Option<()> {
    // Offsets come back from the scratch map as unknown numbers: bound them for the verifier
    // (as the parser does).
    let l4 = p.l4;
    if l4 > pkt::MAX_OFFSET {
        return None;
    }
    let l3 = ETH_HLEN;
    let csum_off = l4 + if p.proto == PROTO_TCP { 16 } else { 6 };
    if p.v6 {
        write(ctx, l3 + if src { 8 } else { 24 }, new.0)?;
    } else {
        write(ctx, l3 + if src { 12 } else { 16 }, new.0[3])?;
        let check: u16 = read(ctx, l3 + 10)?;
        let (o, n) = ([0, 0, 0, old.0[3]], [0, 0, 0, new.0[3]]);
        write(ctx, l3 + 10, csum_replace(check, &o, &n, 0, 0))?;
    }
    if p.frag == LATER_FRAGMENT {
        // No L4 header: the first fragment's ports and checksum were rewritten.
        return Some(());
    }
    write(ctx, l4 + if src { 0 } else { 2 }, new.1)?;
    let check: u16 = read(ctx, csum_off)?;
    if p.proto == PROTO_UDP && check == 0 && !p.v6 {
        // IPv4 UDP without checksum stays without.
        return Some(());
    }
    let (o, n) = if p.v6 {
        (old.0, new.0)
    } else {
        ([0, 0, 0, old.0[3]], [0, 0, 0, new.0[3]])
    };
    let mut c = csum_replace(check, &o, &n, old.1, new.1);
    if p.proto == PROTO_UDP && c == 0 {
        c = 0xffff;
    }
    write(ctx, csum_off, c)
}

/// Translates and transmits back out of the same uplink if the FIB says that is where the
/// translated packet goes and the neighbour is known; otherwise leaves the packet untouched
/// for TC. Out of line: its own stack frame.
#[inline(never)]
fn tx(ctx: &XdpContext, p: &Pkt, e: &CtEntry, reply: u8) -> u32 {
    if e.flags & ct_flags::REDIRECT == 0 {
        return xdp_action::XDP_PASS;
    }
    let snat = e.flags & ct_flags::SNAT != 0;
    // The translated tuple, computed before touching the packet.
    let (mut s, mut d) = ((p.saddr, p.sport), (p.daddr, p.dport));
    if reply != 0 {
        s = (e.to_addr, e.to_port);
        if snat {
            d = (e.nat_addr, e.nat_port);
        }
    } else {
        d = (e.to_addr, e.to_port);
        if snat {
            s = (e.nat_addr, e.nat_port);
        }
    }
    // SAFETY: plain-old-data UAPI struct.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = if p.v6 { 10 } else { 2 };
    params.l4_protocol = p.proto;
    params.sport = s.1;
    params.dport = d.1;
    // SAFETY: the context's xdp_md.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    params.__bindgen_anon_1.tot_len = (p.len as usize).saturating_sub(ETH_HLEN) as u16;
    params.ifindex = ingress;
    if p.v6 {
        params.__bindgen_anon_3.ipv6_src = s.0;
        params.__bindgen_anon_4.ipv6_dst = d.0;
    } else {
        params.__bindgen_anon_3.ipv4_src = s.0[3];
        params.__bindgen_anon_4.ipv4_dst = d.0[3];
    }
    // SAFETY: params is a stack struct of the size passed.
    let rc = unsafe {
        fib_lookup(
            ctx.ctx.cast(),
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 || params.ifindex != ingress {
        return xdp_action::XDP_PASS;
    }
    let ok = set_end(ctx, p, true, (p.saddr, p.sport), s)
        .and_then(|()| set_end(ctx, p, false, (p.daddr, p.dport), d))
        .and_then(|()| write(ctx, 0, params.dmac))
        .and_then(|()| write(ctx, 6, params.smac));
    if ok.is_none() {
        return xdp_action::XDP_ABORTED;
    }
    lb::count(e.service_id, e.backend_id, 1, u64::from(p.len), 0, 0);
    xdp_action::XDP_TX
}

/// The XDP entry's work: returns the XDP verdict.
#[inline(always)]
pub fn uplink(ctx: &XdpContext) -> u32 {
    if nat::passes(ctx, Side::Outside) {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: this CPU's slot; XDP programs do not nest on a CPU.
    let Some(s) = XDP_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p }) else {
        return xdp_action::XDP_PASS;
    };
    if !pkt::parse_into(ctx, &mut s.pkt) {
        return xdp_action::XDP_PASS;
    }
    if nat::may_have_flow(&s.pkt.saddr, s.pkt.dport, Side::Outside) {
        s.key = nat::key(&s.pkt);
        if let Some(e) = nat::ct_get(&s.key) {
            return tx(ctx, &s.pkt, e, u8::from(e.dir == ct_dir::REPLY));
        }
    }
    if !nat::may_start_flow(&s.pkt) {
        return xdp_action::XDP_PASS;
    }
    s.svc_key = SvcKey {
        addr: s.pkt.daddr,
        port: s.pkt.dport,
        proto: s.pkt.proto,
        scope: scope::EXTERNAL,
        slot: 0,
        pad: [0; 2],
    };
    if !lb::frontend_into(&mut s.svc_key, &mut s.fe) {
        return xdp_action::XDP_PASS;
    }
    let fe = &s.fe;
    if fe.value.flags & svc_flags::SOURCE_RANGES != 0 && !nat::source_allowed(fe, &s.pkt.saddr) {
        lb::count(fe.value.service_id, 0, 0, 0, 0, 1);
        return xdp_action::XDP_DROP;
    }
    if fe.value.count == 0 {
        if fe.value.flags & svc_flags::DROP_IF_EMPTY != 0 {
            lb::count(fe.value.service_id, 0, 0, 0, 0, 1);
            return xdp_action::XDP_DROP;
        }
        // REJECT needs a reply packet built: TC does that.
        return xdp_action::XDP_PASS;
    }
    if nat::new_flow(s, Side::Outside) != 0 {
        return xdp_action::XDP_PASS;
    }
    s.key = nat::key(&s.pkt);
    match nat::ct_get(&s.key) {
        Some(e) => tx(ctx, &s.pkt, e, 0),
        None => xdp_action::XDP_PASS,
    }
}
