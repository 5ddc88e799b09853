//! Pings and SCTP to Service IPs. kube-proxy's nftables rules check every protocol
//! (`cluster-ips-check`, for packets conntrack sees as NEW): a packet to a ClusterIP that no
//! service port takes is refused with an ICMP port unreachable from it, one to an unallocated
//! address inside a ServiceCIDR is dropped. The per-packet path does the same for the packets
//! of other protocols than TCP and UDP that clients send to services: ICMP queries (a ping) and
//! SCTP (which the programs do not balance, so an SCTP Service's packets are refused as any
//! other port's). Without this they leave by the default route (Cilium's pings to service IPs
//! loop until their TTL runs out, cilium#14118). Tunnels and routing protocols (IPIP, GRE, ESP,
//! VRRP, ...), which carry node-to-node traffic at high rates and are never sent to a
//! service, are not looked up. Only ClusterIPs are refused, as kube-proxy does: externalIPs
//! and LoadBalancer IPs may be other hosts' addresses too.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    programs::TcContext,
};

use crate::{
    icmp::{PROTO_ICMP, PROTO_ICMPV6},
    lb,
    nat::{self, Scratch},
    pkt::{self, Header, LATER_FRAGMENT},
};

/// ICMP queries, which conntrack sees as NEW: echo, timestamp, information and address mask
/// requests. Every other ICMP message (errors, replies) is not.
const ICMP_QUERIES: [u8; 4] = [8, 13, 15, 17];
/// ICMPv6's: echo request, node information query.
const ICMPV6_QUERIES: [u8; 2] = [128, 139];
const PROTO_SCTP: u8 = 132;

/// Could [`handle`] do anything with the packet? One header field rules out most packets (a
/// tunnel's); callers ask before the call, which by itself costs ≈ 10 ns.
#[inline(always)]
pub fn may_matter(ctx: &TcContext) -> bool {
    pkt::may_carry(ctx, &[PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP])
}

/// Decides a packet that is neither TCP nor UDP (nor an ICMP error about a translated flow)
/// and returns the TC verdict: an ICMP query or an SCTP packet (each can start a flow,
/// conntrack's NEW) to a Service IP is refused or dropped; anything else passes. `to_host`: the
/// packet is the node's own, leaving by an uplink, so a refusal goes into the node. Works in
/// the per-CPU scratch `s`.
#[inline(never)]
pub fn handle(ctx: &TcContext, s: &mut Scratch, to_host: bool) -> i32 {
    let Some(p) = pkt::parse_ip(ctx) else {
        return TC_ACT_UNSPEC;
    };
    // A later fragment follows its first, which is decided here (conntrack reassembles first).
    let icmp = if p.v6 { PROTO_ICMPV6 } else { PROTO_ICMP };
    if (p.proto != icmp && p.proto != PROTO_SCTP) || p.frag == LATER_FRAGMENT {
        return TC_ACT_UNSPEC;
    }
    // The 8 bytes after the IP headers that an ICMP error quotes (RFC 792); an ICMP message's
    // type is the first.
    let head = Header::<8>::at(ctx, p.l4).map(|h| h.u8::<0>());
    let starts_flow = match head {
        _ if p.proto == PROTO_SCTP => true,
        Some(kind) if p.v6 => ICMPV6_QUERIES.contains(&kind),
        Some(kind) => ICMP_QUERIES.contains(&kind),
        None => false,
    };
    if !starts_flow {
        return TC_ACT_UNSPEC;
    }
    if let Some(fe) = lb::other_ports(p.daddr) {
        lb::count(fe.value.service_id, 0, 0, 0, 0, 1);
        if head.is_none() {
            // Nothing to quote: a packet cut short.
            return TC_ACT_SHOT;
        }
        s.pkt = p;
        return nat::port_unreachable(ctx, &s.pkt, to_host);
    }
    nat::unallocated(&p)
}
