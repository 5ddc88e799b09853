//! The header parser shared by the TC and XDP programs: one bounds check per header, one
//! instruction per field.
//!
//! Header fields sit at any alignment (an IPv4 address behind a 14-byte Ethernet header is
//! 2-byte aligned at best). A Rust unaligned read becomes one byte load per byte on the BPF
//! target, joined with shifts; the loads here are a single instruction instead, which the
//! verifier accepts for packet memory on every kernel with efficient unaligned access (x86-64,
//! arm64; elsewhere the programs would fail to load, not misbehave). Values are the bytes as
//! they lie in the packet (network order).

use core::arch::asm;

use aya_ebpf::programs::{TcContext, XdpContext};
use tollgate_common::lb::{PROTO_TCP, PROTO_UDP, v4_mapped};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// Headers start within this offset (Ethernet + IPv6 + 64 bytes of extension headers, which
/// also covers IPv4 with options); it also bounds the offsets for the verifier.
pub const MAX_OFFSET: usize = ETH_HLEN + 40 + 64;

/// IPv6 extension headers walked before the TCP/UDP header (Hop-by-Hop, Routing, Fragment,
/// Destination Options: each at most once in a real packet).
const MAX_EXT_HEADERS: usize = 4;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTS: u8 = 60;

/// The parts of an IPv4/IPv6 TCP/UDP packet the translation needs.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Pkt {
    pub v6: bool,
    pub l3: usize,
    pub l4: usize,
    pub proto: u8,
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub csum_off: usize,
    pub tcp_flags: u8,
    pub len: u32,
    /// [`NOT_FRAGMENT`], [`FIRST_FRAGMENT`] or [`LATER_FRAGMENT`].
    pub frag: u8,
    /// be: the identification of a fragment's datagram (IPv4: 16 bits, in the low half as
    /// loaded; IPv6: the Fragment header's 32 bits).
    pub frag_id: u32,
}

/// `Pkt::frag`: a whole datagram.
pub const NOT_FRAGMENT: u8 = 0;
/// The first fragment of a datagram: it has the TCP/UDP header.
pub const FIRST_FRAGMENT: u8 = 1;
/// A later fragment: no TCP/UDP header; its ports come from the first (see `frag.rs`).
pub const LATER_FRAGMENT: u8 = 2;
const IP_MF: u16 = 0x2000;

/// TCP header flags.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// A bare SYN (no ACK, RST or FIN): the only TCP segment that starts a flow.
#[inline(always)]
pub fn bare_syn(tcp_flags: u8) -> bool {
    tcp_flags & (TCP_SYN | TCP_RST | TCP_FIN | TCP_ACK) == TCP_SYN
}

impl Pkt {
    /// Can this packet start a flow? Only a bare SYN starts a TCP flow (the rest of a flow we
    /// never saw, or evicted, is left to the stack, where the backend answers it with a reset;
    /// this also spares the service lookup on all but the first packet of connections that are
    /// not ours), any UDP datagram a UDP flow, and a later fragment none: it only follows its
    /// datagram's (see `frag.rs`).
    #[inline(always)]
    pub fn may_start_flow(&self) -> bool {
        self.frag != LATER_FRAGMENT && (self.proto != PROTO_TCP || bare_syn(self.tcp_flags))
    }
}
const IP_OFFSET: u16 = 0x1fff;

/// What the parser needs of a program's packet: an skb at TC, a frame at XDP.
pub trait Frame {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// Makes the first `len` bytes linear, if the context can (TC); false if not.
    fn pull(&self, len: usize) -> bool;
    /// EtherType, host order.
    fn eth_proto(&self) -> Option<u16>;
    /// Length of the whole packet.
    fn len(&self) -> u32;
}

impl Frame for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    #[inline(always)]
    fn pull(&self, len: usize) -> bool {
        self.pull_data(len as u32).is_ok()
    }
    #[inline(always)]
    fn eth_proto(&self) -> Option<u16> {
        // SAFETY: the kernel's __sk_buff for this call.
        Some(u16::from_be(unsafe { (*self.skb.skb).protocol } as u16))
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.skb.skb).len }
    }
}

impl Frame for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn pull(&self, _len: usize) -> bool {
        false
    }
    #[inline(always)]
    fn eth_proto(&self) -> Option<u16> {
        Header::<ETH_HLEN>::at(self, 0).map(|h| u16::from_be(h.u16::<12>()))
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        (XdpContext::data_end(self) - XdpContext::data(self)) as u32
    }
}

/// Parses the packet; `None` for anything the translation leaves alone (not IP, not TCP/UDP,
/// an IPv6 Routing header with segments left or AH/ESP, more than 64 bytes of IPv6 extension
/// headers, headers cut short). A later fragment comes back without ports (`frag` =
/// [`LATER_FRAGMENT`]; see [`parse_into`]).
#[inline(always)]
pub fn parse<F: Frame>(f: &F) -> Option<Pkt> {
    let mut p = parse_ip(f)?;
    if p.proto != PROTO_TCP && p.proto != PROTO_UDP {
        return None;
    }
    if p.frag == LATER_FRAGMENT {
        return Some(p);
    }
    let l4 = p.l4;
    (p.csum_off, p.tcp_flags, p.sport, p.dport) = if p.proto == PROTO_TCP {
        let h = Header::<14>::at(f, l4)?;
        (l4 + 16, h.u8::<13>(), h.u16::<0>(), h.u16::<2>())
    } else {
        let h = Header::<4>::at(f, l4)?;
        (l4 + 6, 0, h.u16::<0>(), h.u16::<2>())
    };
    Some(p)
}

/// The IP part of [`parse`], whatever the upper-layer protocol (`proto`; ports, flags and
/// `csum_off` zero): `None` for what is not IP, an IPv6 Routing header with segments left and
/// headers cut short.
#[inline(always)]
pub fn parse_ip<F: Frame>(f: &F) -> Option<Pkt> {
    let l3 = ETH_HLEN;
    let (v6, l4, proto, saddr, daddr, frag, frag_id) = match f.eth_proto()? {
        ETH_P_IP => {
            let h = Header::<20>::at(f, l3)?;
            let vihl = h.u8::<0>();
            let ihl = usize::from(vihl & 0x0f) * 4;
            if vihl >> 4 != 4 || ihl < 20 {
                return None;
            }
            let fo = u16::from_be(h.u16::<6>());
            let frag = if fo & IP_OFFSET != 0 {
                LATER_FRAGMENT
            } else if fo & IP_MF != 0 {
                FIRST_FRAGMENT
            } else {
                NOT_FRAGMENT
            };
            let (s, d) = (h.u32::<12>(), h.u32::<16>());
            let (proto, id) = (h.u8::<9>(), u32::from(h.u16::<4>()));
            (false, l3 + ihl, proto, v4_mapped(s), v4_mapped(d), frag, id)
        }
        ETH_P_IPV6 => {
            let h = Header::<40>::at(f, l3)?;
            let s = [h.u32::<8>(), h.u32::<12>(), h.u32::<16>(), h.u32::<20>()];
            let d = [h.u32::<24>(), h.u32::<28>(), h.u32::<32>(), h.u32::<36>()];
            let (l4, proto, frag, id) = ipv6_payload(f, l3 + 40, h.u8::<6>())?;
            (true, l4, proto, s, d, frag, id)
        }
        _ => return None,
    };
    Some(Pkt {
        v6,
        l3,
        l4,
        proto,
        saddr,
        daddr,
        sport: 0,
        dport: 0,
        csum_off: 0,
        tcp_flags: 0,
        len: f.len(),
        frag,
        frag_id,
    })
}

/// Could the packet's upper-layer protocol be one of `protos`? Reads only the IPv4 Protocol or
/// the IPv6 Next Header field: an IPv6 packet whose next header is an extension header
/// [`ipv6_payload`] walks may be (the full parse tells). For deciding before [`parse_ip`]
/// that most packets (a tunnel's) are not of interest.
#[inline(always)]
pub fn may_carry<F: Frame>(f: &F, protos: &[u8]) -> bool {
    match f.eth_proto() {
        Some(ETH_P_IP) => {
            Header::<20>::at(f, ETH_HLEN).is_some_and(|h| protos.contains(&h.u8::<9>()))
        }
        Some(ETH_P_IPV6) => Header::<40>::at(f, ETH_HLEN).is_some_and(|h| {
            let next = h.u8::<6>();
            protos.contains(&next)
                || matches!(
                    next,
                    IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_FRAGMENT | IPV6_DEST_OPTS
                )
        }),
        _ => false,
    }
}

/// Walks the IPv6 extension headers from `off` (`next`: the IPv6 header's Next Header) to the
/// upper-layer header: its offset and protocol, and the fragment kind and identification of a
/// Fragment header. A later fragment stops at its Fragment header (what follows is the middle
/// of the datagram). `None` for a Routing header with segments left (the destination is not
/// the final one, so neither the frontend nor the pseudo-header checksum is) and for headers
/// cut short; anything else (AH, ESP, more headers than walked) comes back as the protocol,
/// which the caller leaves alone.
#[inline(always)]
pub(crate) fn ipv6_payload<F: Frame>(
    f: &F,
    mut off: usize,
    mut next: u8,
) -> Option<(usize, u8, u8, u32)> {
    let (mut frag, mut id) = (NOT_FRAGMENT, 0u32);
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            IPV6_HOP_BY_HOP | IPV6_DEST_OPTS | IPV6_ROUTING => {
                let h = Header::<8>::at(f, off)?;
                if next == IPV6_ROUTING && h.u8::<3>() != 0 {
                    return None;
                }
                next = h.u8::<0>();
                off += (usize::from(h.u8::<1>()) + 1) * 8;
            }
            IPV6_FRAGMENT => {
                let h = Header::<8>::at(f, off)?;
                // Offset (13 bits, in 8-byte units), 2 reserved bits, M (more fragments).
                let fo = u16::from_be(h.u16::<2>());
                next = h.u8::<0>();
                id = h.u32::<4>();
                off += 8;
                if fo & !7 != 0 {
                    frag = LATER_FRAGMENT;
                    break;
                }
                // An atomic fragment (offset 0, no more) is the whole datagram.
                if fo & 1 != 0 {
                    frag = FIRST_FRAGMENT;
                }
            }
            _ => break,
        }
    }
    Some((off, next, frag, id))
}

/// The fields of a TCP segment (IPv4 without options, or IPv6 without extension headers: what
/// nearly every packet is) that decide whether it needs the full parse; network order,
/// IPv4-mapped for IPv4.
#[derive(Clone, Copy)]
pub struct Segment {
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    pub dport: u16,
    pub tcp_flags: u8,
}

/// Reads a [`Segment`] without building a [`Pkt`]; `None` for anything else (IP options, IPv6
/// extension headers, UDP, fragments after the first, headers cut short), which takes
/// [`parse`].
#[inline(always)]
pub fn tcp_segment<F: Frame>(f: &F) -> Option<Segment> {
    // Addresses are read before the TCP header: pulling it would invalidate the IP header.
    let (saddr, daddr, l4) = match f.eth_proto()? {
        ETH_P_IP => {
            let ip = Header::<20>::at(f, ETH_HLEN)?;
            if ip.u8::<0>() != 0x45
                || ip.u8::<9>() != PROTO_TCP
                || u16::from_be(ip.u16::<6>()) & IP_OFFSET != 0
            {
                return None;
            }
            (
                v4_mapped(ip.u32::<12>()),
                v4_mapped(ip.u32::<16>()),
                ETH_HLEN + 20,
            )
        }
        ETH_P_IPV6 => {
            let ip = Header::<40>::at(f, ETH_HLEN)?;
            if ip.u8::<6>() != PROTO_TCP {
                return None;
            }
            (
                [
                    ip.u32::<8>(),
                    ip.u32::<12>(),
                    ip.u32::<16>(),
                    ip.u32::<20>(),
                ],
                [
                    ip.u32::<24>(),
                    ip.u32::<28>(),
                    ip.u32::<32>(),
                    ip.u32::<36>(),
                ],
                ETH_HLEN + 40,
            )
        }
        _ => return None,
    };
    let tcp = Header::<14>::at(f, l4)?;
    Some(Segment {
        saddr,
        daddr,
        dport: tcp.u16::<2>(),
        tcp_flags: tcp.u8::<13>(),
    })
}

/// [`parse`] into `out` (a per-CPU scratch entry: no copy of the packet on the stack), with an
/// IPv4 fragment's ports remembered (first) or recalled (later, see `frag.rs`); false for
/// anything the translation leaves alone, a later fragment whose first was not seen included.
#[inline(always)]
pub fn parse_into<F: Frame>(f: &F, out: &mut Pkt) -> bool {
    match parse(f) {
        Some(p) => {
            *out = p;
            out.frag == NOT_FRAGMENT || crate::frag::ports(out)
        }
        None => false,
    }
}

/// `Header::$ty::<OFF>()`: the `$ty` at byte `OFF` of the header, one load instruction (the
/// offset is the instruction's own, so the verifier sees the checked pointer).
macro_rules! load {
    ($ty:ident, $width:literal) => {
        #[inline(always)]
        pub fn $ty<const OFF: usize>(self) -> $ty {
            const { assert!(OFF + core::mem::size_of::<$ty>() <= N) };
            let v: u64;
            // SAFETY: a load inside the checked bytes.
            unsafe {
                asm!(concat!("{v} = *(", $width, " *)({p} + {o})"), p = in(reg) self.at,
                    o = const OFF, v = lateout(reg) v,
                    options(pure, readonly, nostack, preserves_flags));
            }
            v as $ty
        }
    };
}

/// `N` bytes of the packet from a header's offset, checked to lie in the linear data.
#[derive(Clone, Copy)]
pub struct Header<const N: usize> {
    at: usize,
}

impl<const N: usize> Header<N> {
    /// The `N` bytes at `off`; when they are not in the linear data (rare at TC: locally made
    /// and forwarded packets keep their headers there) they are pulled in first where the
    /// context can. `None` for a packet shorter than that.
    #[inline(always)]
    pub fn at<F: Frame>(f: &F, off: usize) -> Option<Self> {
        if off > MAX_OFFSET {
            return None;
        }
        if let Some(h) = Self::linear(f, off) {
            return Some(h);
        }
        if !f.pull(off + N) {
            return None;
        }
        Self::linear(f, off)
    }

    #[inline(always)]
    fn linear<F: Frame>(f: &F, off: usize) -> Option<Self> {
        // The bound is checked on the pointer the loads use (with the field offset inside the
        // load instruction), so the verifier credits every load.
        let at = f.data() + off;
        (at + N <= f.data_end()).then_some(Self { at })
    }

    load!(u8, "u8");
    load!(u16, "u16");
    load!(u32, "u32");
}
