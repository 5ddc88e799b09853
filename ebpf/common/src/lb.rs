//! Service load-balancing maps (Cilium's proven model).
//!
//! - `tg_svc_v1`: per frontend (VIP, port, protocol, scope) one entry with `slot = 0` holding the
//!   backend count and flags, and entries `slot = 1..=count` holding backend IDs; per ClusterIP
//!   one more (port 0, protocol 0) that refuses the ports its Service does not define;
//! - `tg_backend_v1`: backends by ID;
//! - `tg_revnat_v1`: frontend address by frontend (rev-NAT) ID;
//! - `tg_ct_v2`: LRU conntrack for per-packet NAT (traffic from outside, and pod traffic the
//!   socket hooks did not translate);
//! - `tg_ctmark_v1`: which addresses may start a conntrack tuple on a pod-facing interface
//!   (so pod packets of socket-balanced connections skip the conntrack lookup);
//! - `tg_affinity_v1`: LRU ClientIP session affinity;
//! - `tg_sockct_v1` / `tg_sockrev_v1`: per-socket backend choice and reverse translation for the
//!   socket hooks (unconnected UDP, recvmsg, getpeername);
//! - `tg_srcrange_v1`: loadBalancerSourceRanges (LPM);
//! - `tg_maglev_v2`: Maglev tables by (service-port ID, chunk) (`--lb-algorithm maglev`);
//! - `tg_svcstat_v1` / `tg_bestat_v1`: per-CPU counters by service-port ID and backend ID;
//! - `tg_config_v2`: one entry of node-wide settings.
//!
//! Addresses are `[u32; 4]` in network byte order; IPv4 is stored IPv4-mapped
//! (`::ffff:a.b.c.d`), so one code path and one map serve both families.

/// IPv4 `a.b.c.d` (network order, as in a packet) as the IPv4-mapped IPv6 address words.
#[inline(always)]
pub const fn v4_mapped(be_addr: u32) -> [u32; 4] {
    [0, 0, u32::to_be(0x0000_ffff), be_addr]
}

/// Is this (network-order) address IPv4-mapped?
#[inline(always)]
pub const fn is_v4_mapped(addr: &[u32; 4]) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == u32::to_be(0x0000_ffff)
}

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// `SvcKey::scope`: which traffic a frontend entry serves.
pub mod scope {
    /// Pods and host processes (socket hooks, pod-facing TC): ClusterIP → internal set,
    /// external frontends → cluster set.
    pub const INTERNAL: u8 = 0;
    /// Traffic arriving from outside the node, written only where it differs from INTERNAL
    /// (externalTrafficPolicy=Local); lookups fall back to INTERNAL.
    pub const EXTERNAL: u8 = 1;
}

/// `SvcValue::flags` of a frontend entry.
pub mod svc_flags {
    /// An external frontend (NodePort, externalIP, LoadBalancer IP).
    pub const EXTERNAL: u16 = 1;
    /// A LoadBalancer VIP with loadBalancerSourceRanges to enforce.
    pub const SOURCE_RANGES: u16 = 2;
    /// With no backend slots: DROP (endpoints exist, not for this traffic); else REJECT.
    pub const DROP_IF_EMPTY: u16 = 4;
    /// Backends are local only (Local traffic policy): keep the client address (no SNAT).
    pub const LOCAL_ONLY: u16 = 8;
    /// The frontend address is one of this node's addresses (NodePort): SNAT to it.
    pub const NODE_ADDRESS: u16 = 16;
    /// Traffic from outside picks its backend from the service port's Maglev table
    /// (`tg_maglev_v2`, `--lb-algorithm maglev`) while it has one.
    pub const MAGLEV: u16 = 32;
    /// A ClusterIP's entry for the ports and protocols its Service does not define (key
    /// [`super::svc::SvcKey::other_ports`]): no slots, REJECT (kube-proxy nftables), counted
    /// under service-port ID 0.
    pub const OTHER_PORTS: u16 = 64;
}

pub mod svc {
    pub const NAME: &str = "tg_svc_v1";
    pub const CAPACITY: u32 = 262_144;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct SvcKey {
        /// be: frontend address (IPv4-mapped for IPv4).
        pub addr: [u32; 4],
        /// be: frontend port.
        pub port: u16,
        /// IP protocol number.
        pub proto: u8,
        /// One of [`super::scope`].
        pub scope: u8,
        /// host: 0 = the frontend entry, 1..=count = backend slots.
        pub slot: u16,
        pub pad: [u8; 2],
    }
    const _: () = assert!(core::mem::size_of::<SvcKey>() == 24);

    impl SvcKey {
        /// The key of a ClusterIP's entry for every port and protocol its Service does not
        /// define (port 0, protocol 0: no frontend has them), looked up after a miss.
        #[inline(always)]
        pub const fn other_ports(addr: [u32; 4]) -> Self {
            Self {
                addr,
                port: 0,
                proto: 0,
                scope: super::scope::INTERNAL,
                slot: 0,
                pad: [0; 2],
            }
        }

        /// Is this a ClusterIP's other-ports entry?
        #[inline(always)]
        pub const fn is_other_ports(&self) -> bool {
            self.proto == 0
        }
    }

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct SvcValue {
        /// host: slot entries: the backend ID.
        pub backend_id: u32,
        /// host: frontend entry: number of backend slots.
        pub count: u16,
        /// host: frontend entry: [`super::svc_flags`].
        pub flags: u16,
        /// host: frontend entry: this frontend's ID (key of `tg_revnat_v1`).
        pub rev_nat_id: u32,
        /// host: frontend entry: the service port's ID (counters, affinity).
        pub service_id: u32,
        /// host: frontend entry: ClientIP affinity timeout in seconds; 0 = no affinity.
        pub affinity_timeout: u32,
        /// host: frontend entry with [`super::svc_flags::MAGLEV`]: its table's size M (0, what
        /// an older agent wrote here: [`super::maglev::DEFAULT_SIZE`]).
        pub maglev_size: u32,
    }
    const _: () = assert!(core::mem::size_of::<SvcValue>() == 24);

    crate::impl_pod!(SvcKey, SvcValue);
}

/// `Backend::flags`.
pub mod backend_flags {
    /// The backend runs on this node.
    pub const LOCAL: u8 = 1;
}

pub mod backend {
    pub const NAME: &str = "tg_backend_v1";
    pub const CAPACITY: u32 = 131_072;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct Backend {
        /// be: backend address (IPv4-mapped for IPv4).
        pub addr: [u32; 4],
        /// be: backend port.
        pub port: u16,
        /// IP protocol number.
        pub proto: u8,
        /// [`super::backend_flags`].
        pub flags: u8,
    }
    const _: () = assert!(core::mem::size_of::<Backend>() == 20);

    crate::impl_pod!(Backend);
}

pub mod revnat {
    pub const NAME: &str = "tg_revnat_v1";
    pub const CAPACITY: u32 = 131_072;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct RevNat {
        /// be: frontend address.
        pub addr: [u32; 4],
        /// be: frontend port.
        pub port: u16,
        pub pad: [u8; 2],
    }
    const _: () = assert!(core::mem::size_of::<RevNat>() == 20);

    crate::impl_pod!(RevNat);
}

/// `CtEntry::dir`.
pub mod ct_dir {
    /// Client → frontend, as the packet arrives.
    pub const FORWARD: u8 = 0;
    /// Backend → (client or SNAT address), the reply as it arrives.
    pub const REPLY: u8 = 1;
}

/// `CtEntry::flags`.
pub mod ct_flags {
    /// The source was translated (SNAT) too.
    pub const SNAT: u8 = 1;
    /// After translation the packet is redirected out through the FIB (its source is an
    /// address of this node, which the stack would drop as martian on input).
    pub const REDIRECT: u8 = 2;
}

pub mod ctmark {
    //! A one-sided filter in front of the conntrack lookup for packets from pods (and, with
    //! `feport`, from outside: every reply's source is a backend, marked here). Every
    //! conntrack tuple whose packets arrive on a pod-facing interface has as its source a
    //! backend (replies) or a pod that reached a frontend itself (forward packets of pod
    //! traffic the socket hooks did not translate). Before a flow's entries are inserted, the
    //! slots of those addresses are set; a pod packet whose source's slot is clear cannot match
    //! any entry and skips the lookup. Slots are only ever set (two addresses may share one, a
    //! few pods then take the lookup for nothing), so the filter never hides a flow.
    pub const NAME: &str = "tg_ctmark_v1";
    /// Slots (entries of the array map).
    pub const CAPACITY: u32 = 65_536;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Mark {
        /// host: non-zero once an address of this slot had a conntrack flow.
        pub flows: u32,
    }
    const _: () = assert!(core::mem::size_of::<Mark>() == 4);

    /// The slot of an address (network-order words, IPv4-mapped for IPv4): a multiplicative
    /// hash of the words folded together, the same in the programs and in userspace.
    #[inline(always)]
    pub const fn slot(addr: &[u32; 4]) -> u32 {
        let x = addr[0] ^ addr[1].rotate_left(8) ^ addr[2].rotate_left(16) ^ addr[3];
        x.wrapping_mul(0x9e37_79b1) >> 16
    }
    const _: () = assert!(CAPACITY == 1 << 16);

    crate::impl_pod!(Mark);
}

pub mod feport {
    //! A one-sided filter in front of the conntrack lookup for packets from outside (uplinks),
    //! the counterpart of `ctmark` for pod packets. A conntrack tuple whose packets arrive on
    //! an uplink is either a reply (its source is a backend, which `ctmark` marks) or a
    //! forward packet to a frontend (its destination port is a frontend's port, NodePorts
    //! included). This bitmap holds every port a frontend has had (the agent sets a port's
    //! bit before it writes the frontend, and never clears it); an uplink packet whose source is
    //! unmarked and whose destination port is not in it cannot match any entry and skips the
    //! lookup. Traffic to the node itself and between pods across nodes mostly does. It also
    //! stands in front of the frontend lookup on every hook: a flow starts only at a frontend,
    //! so a packet to a port outside it (the SYN of a socket-balanced connection, which goes
    //! to the backend's port) skips that lookup, unless it is to an address inside a
    //! ServiceCIDR (a ClusterIP's other ports are refused, unallocated addresses dropped).
    pub const NAME: &str = "tg_feport_v1";
    /// u64 words: one bit per port.
    pub const WORDS: u32 = 1024;
    pub use super::sockrev::port_bit;
}

pub mod ct {
    pub const NAME: &str = "tg_ct_v2";
    pub const CAPACITY: u32 = 262_144;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct CtKey {
        /// be: source address of the packet as it arrives.
        pub saddr: [u32; 4],
        /// be: destination address of the packet as it arrives.
        pub daddr: [u32; 4],
        /// be: source port.
        pub sport: u16,
        /// be: destination port.
        pub dport: u16,
        /// IP protocol number.
        pub proto: u8,
        pub pad: [u8; 3],
    }
    const _: () = assert!(core::mem::size_of::<CtKey>() == 40);

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct CtEntry {
        /// be: FORWARD: new destination (the backend); REPLY: new source (the frontend).
        pub to_addr: [u32; 4],
        /// be: FORWARD: new source (SNAT address); REPLY: new destination (the client).
        /// Zero without SNAT.
        pub nat_addr: [u32; 4],
        /// be: port that goes with `to_addr`.
        pub to_port: u16,
        /// be: port that goes with `nat_addr`.
        pub nat_port: u16,
        /// [`super::ct_flags`].
        pub flags: u8,
        /// [`super::ct_dir`]: which way the packets this entry matches go. (The direction is
        /// in the value, not the key, so that a packet needs one lookup: a reply's tuple never
        /// equals another flow's forward tuple, whose destination is a frontend.)
        pub dir: u8,
        pub pad: [u8; 2],
        /// host: the backend (for purging and counters).
        pub backend_id: u32,
        /// host: the service port (counters).
        pub service_id: u32,
        /// host: seconds (CLOCK_MONOTONIC) of the last packet, refreshed at most once a second.
        pub last_seen: u32,
    }
    const _: () = assert!(core::mem::size_of::<CtEntry>() == 52);

    crate::impl_pod!(CtKey, CtEntry);
}

pub mod maglev {
    //! Maglev consistent hashing (`--lb-algorithm maglev`), for traffic from outside the node
    //! only, as in Cilium: pods and host processes are balanced per socket at connect time and
    //! need no hashing. Per service port with external frontends, one table of M backend
    //! IDs (M from [`SIZES`], [`DEFAULT_SIZE`] unless configured), filled by the Maglev algorithm (Eisenbud et al., NSDI 2016) from the backends'
    //! addresses, so every node fills the same table from the same backends: a flow from
    //! outside reaches the same backend whichever node it enters, and a backend that goes moves
    //! little more than its own share of flows. The programs take entry `hash % M`, the
    //! hash being [`hash`] of the packet's client address, ports and protocol, which every node
    //! computes alike (the destination is left out, so a NodePort gives the same choice on
    //! every node).
    pub const NAME: &str = "tg_maglev_v2";
    /// Table sizes M (`--maglev-table-size`, Cilium's `bpf-lb-maglev-table-size` choices):
    /// primes; M ≥ 100 × the backends gives the least disruption and the most even shares.
    pub const SIZES: [u32; 10] = [
        251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071,
    ];
    /// The default M (and what a frontend entry's `maglev_size` of 0, written by an older
    /// agent, means).
    pub const DEFAULT_SIZE: u32 = 4093;
    /// Entries per map value: a table of M entries is ⌈M / CHUNK⌉ values, keyed by
    /// (service port, chunk); entry `i` is entry `i % CHUNK` of chunk `i / CHUNK`.
    pub const CHUNK: u32 = 4096;
    /// Tables: at most one per service port (the map holds `CAPACITY × chunks(M)` values).
    pub const CAPACITY: u32 = super::stats::CAPACITY;

    /// Map values a table of `size` entries takes.
    pub const fn chunks(size: u32) -> u32 {
        size.div_ceil(CHUNK)
    }

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct Key {
        /// host: the service port's ID.
        pub service_id: u32,
        /// host: which CHUNK entries of its table.
        pub chunk: u32,
    }
    const _: () = assert!(core::mem::size_of::<Key>() == 8);

    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Chunk {
        /// Backend IDs (`tg_backend_v1`); entries past the table's size are 0.
        pub backends: [u32; CHUNK as usize],
    }
    const _: () = assert!(core::mem::size_of::<Chunk>() == 4 * CHUNK as usize);

    crate::impl_pod!(Key, Chunk);

    #[inline(always)]
    const fn mix(h: u32, word: u32) -> u32 {
        let k = word
            .wrapping_mul(0xcc9e_2d51)
            .rotate_left(15)
            .wrapping_mul(0x1b87_3593);
        (h ^ k)
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64)
    }

    /// The flow hash (MurmurHash3's mixing over the fields as they lie in the packet: addresses
    /// as `[u32; 4]` words, IPv4-mapped, and ports in network order).
    #[inline(always)]
    pub const fn hash(saddr: &[u32; 4], sport: u16, dport: u16, proto: u8) -> u32 {
        let mut h = 0x7467_6d67; // "tgmg"
        h = mix(h, saddr[0]);
        h = mix(h, saddr[1]);
        h = mix(h, saddr[2]);
        h = mix(h, saddr[3]);
        h = mix(h, ((sport as u32) << 16) | dport as u32);
        h = mix(h, proto as u32);
        h ^= 24;
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^ (h >> 16)
    }
}

/// `AffinityKey::kind`.
pub mod affinity_kind {
    /// `client` is the client's IP address (traffic seen per packet).
    pub const CLIENT_IP: u8 = 0;
    /// `client[0..2]` is the socket's network-namespace cookie (socket hooks: a pod).
    pub const NETNS: u8 = 1;
}

pub mod affinity {
    pub const NAME: &str = "tg_affinity_v1";
    pub const CAPACITY: u32 = 65_536;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct AffinityKey {
        /// be: client address, or (host) netns cookie in words 0..2 (see `kind`).
        pub client: [u32; 4],
        /// host: the service port.
        pub service_id: u32,
        /// [`super::affinity_kind`].
        pub kind: u8,
        pub pad: [u8; 3],
    }
    const _: () = assert!(core::mem::size_of::<AffinityKey>() == 24);

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct AffinityValue {
        /// host: the backend chosen last.
        pub backend_id: u32,
        /// host: seconds (CLOCK_MONOTONIC) of the last use.
        pub last_used: u32,
    }
    const _: () = assert!(core::mem::size_of::<AffinityValue>() == 8);

    crate::impl_pod!(AffinityKey, AffinityValue);
}

pub mod frag {
    //! IPv4 and IPv6 fragments. Only a datagram's first fragment carries the TCP/UDP header
    //! whose ports select the conntrack entry; kube-proxy's conntrack reassembles, the
    //! per-packet path here remembers instead (as Cilium does): the first fragment's ports are
    //! kept by (source, destination, IP id, protocol), and the later fragments of the datagram
    //! are translated with them — their addresses only: they carry no L4 header, and the L4
    //! checksum, which covers the whole datagram, is fixed in the first fragment. A later
    //! fragment that comes before its first, or whose entry was evicted, passes untranslated.
    //! Later fragments never start a flow or get a REJECT reply. LRU: entries are not removed
    //! otherwise. IPv4 datagrams in `tg_frag_v1`, IPv6 ones (Fragment extension header, 32-bit
    //! identification) in `tg_frag6_v1`.
    pub const NAME: &str = "tg_frag_v1";
    pub const NAME6: &str = "tg_frag6_v1";
    /// Entries of each of the two maps.
    pub const CAPACITY: u32 = 8_192;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct FragKey {
        /// be: source address.
        pub saddr: u32,
        /// be: destination address.
        pub daddr: u32,
        /// be: the IPv4 identification shared by the datagram's fragments.
        pub id: u16,
        /// IP protocol number.
        pub proto: u8,
        pub pad: u8,
    }
    const _: () = assert!(core::mem::size_of::<FragKey>() == 12);

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Frag6Key {
        /// be: source address.
        pub saddr: [u32; 4],
        /// be: destination address.
        pub daddr: [u32; 4],
        /// be: the Fragment header's identification shared by the datagram's fragments.
        pub id: u32,
        /// The protocol after the Fragment header (TCP or UDP).
        pub proto: u8,
        pub pad: [u8; 3],
    }
    const _: () = assert!(core::mem::size_of::<Frag6Key>() == 40);

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct FragPorts {
        /// be: the first fragment's source port.
        pub sport: u16,
        /// be: the first fragment's destination port.
        pub dport: u16,
    }
    const _: () = assert!(core::mem::size_of::<FragPorts>() == 4);

    crate::impl_pod!(FragKey, Frag6Key, FragPorts);
}

pub mod sockct {
    //! Unconnected-UDP sockets keep their backend per frontend (kube-proxy's conntrack gives a
    //! UDP "flow" one backend); purged when the backend goes away.
    pub const NAME: &str = "tg_sockct_v1";
    pub const CAPACITY: u32 = 65_536;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct SockCtKey {
        /// host: socket cookie.
        pub cookie: u64,
        /// be: frontend address.
        pub addr: [u32; 4],
        /// be: frontend port.
        pub port: u16,
        /// IP protocol number.
        pub proto: u8,
        pub pad: [u8; 5],
    }
    const _: () = assert!(core::mem::size_of::<SockCtKey>() == 32);

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct SockCtValue {
        /// host: the chosen backend.
        pub backend_id: u32,
        /// host: the service port (to purge when the backend leaves it).
        pub service_id: u32,
    }
    const _: () = assert!(core::mem::size_of::<SockCtValue>() == 8);

    crate::impl_pod!(SockCtKey, SockCtValue);
}

pub mod sockrev {
    //! For recvmsg/getpeername: what a socket talking to a backend believes it talks to.
    //! UDP sockets (which may talk to several frontends) use the LRU map `tg_sockrev_v1`,
    //! keyed by socket cookie and backend. A connected TCP socket has one peer; its record
    //! lives in one of two places, and nothing is ever evicted:
    //!
    //! - a slot of the array `tg_tcpslot_v1`, chosen by the socket cookie's low bits
    //!   (cookies only grow, so live sockets spread over the slots like a ring). Who holds a
    //!   slot is one bit in `tg_tcpheld_v1` (8 KiB, so it stays in the CPU cache while the
    //!   3 MiB of slots do not): connect claims the slot by setting its bit with an atomic
    //!   fetch-or and then writes its cookie and record there; the cgroup sock_release program
    //!   clears the bit when the slot's cookie is the closing socket's. A socket that never held
    //!   a slot (an untranslated connection to a backend port) is told so by the bit alone,
    //!   without reading the slot. No allocation, no hash: the cheap path nearly every
    //!   connection takes;
    //! - when that slot is held by another live socket, the socket's own storage
    //!   (`tg_tcprev_v1`, `BPF_MAP_TYPE_SK_STORAGE`), allocated at connect and freed with the
    //!   socket (it costs about 0.5 µs more per connection, measured).
    //!
    //! A slot's record is the socket's while its bit is set and its cookie is the socket's
    //! (cookies are never reused, so a slot whose bit is clear may keep the cookie of a closed
    //! socket: it can never answer for another socket). Both programs that look at the slots
    //! for a socket that may never have been translated (getpeername, sock_release) first
    //! check the peer port against `tg_peerport_v1`; connect claims a slot only for a backend
    //! port in it (else the record goes to socket storage), so a held slot is always found
    //! again and given back. MPTCP subflows (connected by the kernel for the application's
    //! MPTCP socket, and closed without the release hook) get no record: getpeername() on an
    //! MPTCP socket shows the backend.
    //!
    //! A slot whose owner closed while no release program was attached stays held; connections
    //! that land on it take the socket-storage path. When the held bits are new but the slots
    //! were kept (an upgrade from an agent before them, which marked a held slot by a non-zero
    //! cookie and emptied it at close), the agent sets the bit of every slot with a cookie
    //! before the new programs run. The kernel has no key iteration for socket storage, so
    //! `bpftool map dump` cannot list it; the slot array and the bits dump like any array.
    pub const NAME: &str = "tg_sockrev_v1";
    pub const CAPACITY: u32 = 131_072;
    pub const TCP_NAME: &str = "tg_tcprev_v1";
    pub const SLOT_NAME: &str = "tg_tcpslot_v1";
    /// Slots in `tg_tcpslot_v1` (a power of two: the slot is `cookie & (SLOTS - 1)`).
    pub const SLOTS: u32 = 65_536;

    /// The slot of a socket cookie.
    #[inline(always)]
    pub const fn slot(cookie: u64) -> u32 {
        (cookie & (SLOTS as u64 - 1)) as u32
    }

    /// Which slots are held: one bit per slot, `SLOTS / 64` u64 words.
    pub const HELD_NAME: &str = "tg_tcpheld_v1";
    pub const HELD_WORDS: u32 = SLOTS / 64;

    /// The word of `tg_tcpheld_v1` and the bit in it of a slot.
    #[inline(always)]
    pub const fn held_bit(slot: u32) -> (u32, u64) {
        (slot / 64, 1 << (slot % 64))
    }

    /// Socket storage of a translated TCP socket.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct SockRevTcp {
        /// be: backend address the socket was connected to.
        pub backend_addr: [u32; 4],
        /// be: frontend address the socket asked for.
        pub addr: [u32; 4],
        /// be: backend port.
        pub backend_port: u16,
        /// be: frontend port.
        pub port: u16,
        pub pad: [u8; 4],
    }
    const _: () = assert!(core::mem::size_of::<SockRevTcp>() == 40);

    /// Ports a translated TCP socket's peer can have (every TCP backend's port and the
    /// metadata proxy's), a bitmap of `PORT_WORDS` u64 words in `tg_peerport_v1`, indexed by
    /// the port in network order as the kernel hands it over. getpeername and sock_release look
    /// at the slots only for a peer port in it, so accepted connections (whose peer port is a
    /// client's ephemeral port) skip them. The agent sets bits and never clears them (a bit
    /// cleared under an open socket would hide its record), so the filter only grows.
    pub const PORT_NAME: &str = "tg_peerport_v1";
    pub const PORT_WORDS: u32 = 1024;

    /// The bitmap word and bit of a port (network order).
    #[inline(always)]
    pub const fn port_bit(port_be: u16) -> (u32, u64) {
        ((port_be >> 6) as u32, 1 << (port_be & 63))
    }

    /// A slot of `tg_tcpslot_v1`: a connected TCP socket's record.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct TcpRevSlot {
        /// host: cookie of the socket that last held the slot (0 = never held); it holds the
        /// slot while the slot's bit in `tg_tcpheld_v1` is set.
        pub cookie: u64,
        /// The record, valid while `cookie` holds the slot.
        pub rev: SockRevTcp,
    }
    const _: () = assert!(core::mem::size_of::<TcpRevSlot>() == 48);

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct SockRevKey {
        /// host: socket cookie.
        pub cookie: u64,
        /// be: backend address.
        pub addr: [u32; 4],
        /// be: backend port.
        pub port: u16,
        pub pad: [u8; 6],
    }
    const _: () = assert!(core::mem::size_of::<SockRevKey>() == 32);

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct SockRevValue {
        /// be: frontend address.
        pub addr: [u32; 4],
        /// be: frontend port.
        pub port: u16,
        pub pad: [u8; 2],
    }
    const _: () = assert!(core::mem::size_of::<SockRevValue>() == 20);

    crate::impl_pod!(SockRevKey, SockRevValue, SockRevTcp, TcpRevSlot);
}

pub mod srcrange {
    //! loadBalancerSourceRanges: LPM over (frontend ID, client address).
    pub const NAME: &str = "tg_srcrange_v1";
    pub const CAPACITY: u32 = 65_536;

    /// The LPM data after the kernel's leading `prefixlen`: the prefix length counts the 32
    /// bits of `rev_nat_id` plus the range's bits (96 more for an IPv4 range, IPv4-mapped).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct SrcRangeKey {
        /// be: the frontend ID (big-endian so it is the most significant bits).
        pub rev_nat_id: u32,
        /// be: client address prefix.
        pub addr: [u32; 4],
    }
    const _: () = assert!(core::mem::size_of::<SrcRangeKey>() == 20);

    crate::impl_pod!(SrcRangeKey);
}

pub mod svccidr {
    //! The cluster's ServiceCIDRs (`networking.k8s.io/v1`): the ranges ClusterIPs come from. A
    //! new connection to an address inside one that no frontend has is dropped (kube-proxy
    //! nftables' "unallocated IP inside a ServiceCIDR": it would otherwise follow the node's
    //! routes, typically the default route out of the node).
    pub const NAME: &str = "tg_svccidr_v1";
    pub const CAPACITY: u32 = 1024;

    /// A one-sided filter in front of the LPM lookup (which costs a SYN or datagram ~13 ns):
    /// one bit per "slice" of the address space, set for every slice a prefix reaches into.
    /// An address's slice folds its first 112 bits into 16 (the XOR of their 16-bit chunks,
    /// IPv4-mapped: the IPv4 address's first two octets flipped): a prefix of /112 or longer
    /// (IPv4: /16) is in one slice, one of /97–/111 (IPv4: /1–/15) in an aligned block of them,
    /// a shorter IPv6 one in all. Pod and node addresses fall in other slices than the
    /// ServiceCIDRs, so their traffic skips the lookup; a collision only costs the lookup.
    pub const BITS_NAME: &str = "tg_cidrbits_v1";
    /// u64 words: one bit per slice.
    pub const WORDS: u32 = 1024;

    /// The slice of an address as stored (network-order words).
    #[inline(always)]
    pub fn slice(addr: &[u32; 4]) -> u16 {
        let [a, b, c, d] = addr.map(|w| {
            let o = w.to_ne_bytes();
            (
                u16::from_be_bytes([o[0], o[1]]),
                u16::from_be_bytes([o[2], o[3]]),
            )
        });
        a.0 ^ a.1 ^ b.0 ^ b.1 ^ c.0 ^ c.1 ^ d.0
    }

    /// The word of the bitmap holding a slice's bit, and the bit.
    #[inline(always)]
    pub fn slice_bit(slice: u16) -> (u32, u64) {
        (u32::from(slice >> 6), 1u64 << (slice & 63))
    }

    /// The first and last slice a prefix (`addr` masked to `bits` of the 128, IPv4 mapped)
    /// reaches into: its free bits among 96–111 vary the slice's low bits.
    pub fn slices(addr: &[u32; 4], bits: u32) -> (u16, u16) {
        let s = slice(addr);
        match bits {
            0..=96 => (0, u16::MAX),
            112.. => (s, s),
            _ => {
                let free = (1u16 << (112 - bits)) - 1;
                (s & !free, s | free)
            }
        }
    }

    /// The LPM data after the kernel's leading `prefixlen`: the prefix (be), IPv4 as
    /// IPv4-mapped (its prefix length plus 96).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct SvcCidrKey {
        pub addr: [u32; 4],
    }
    const _: () = assert!(core::mem::size_of::<SvcCidrKey>() == 16);

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct SvcCidrValue {
        /// host: new connections (and the packets of sockets) dropped or refused for an
        /// unallocated address of this prefix (atomic adds: shared by every CPU).
        pub dropped: u64,
    }

    crate::impl_pod!(SvcCidrKey, SvcCidrValue);
}

pub mod stats {
    //! Per-CPU counters, indexed by service-port ID (`tg_svcstat_v1`) and backend ID
    //! (`tg_bestat_v1`). IDs start at 1: service-port ID 0 counts the connections refused for
    //! ports no Service of their ClusterIP defines.
    pub const SVC_NAME: &str = "tg_svcstat_v1";
    pub const BACKEND_NAME: &str = "tg_bestat_v1";
    /// IDs must stay below this.
    pub const CAPACITY: u32 = 65_536;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Counters {
        /// host: packets translated per packet (TC/XDP).
        pub packets: u64,
        /// host: bytes translated per packet (TC/XDP).
        pub bytes: u64,
        /// host: new connections (socket hooks and new per-packet flows).
        pub connections: u64,
        /// host: connections refused or dropped for lack of endpoints or by source ranges.
        pub refused: u64,
    }
    const _: () = assert!(core::mem::size_of::<Counters>() == 32);

    crate::impl_pod!(Counters);
}

pub mod svcinfo {
    //! Names of service ports by ID, for `tollgate maps`, metrics and `bpftool` readers (the
    //! programs never read it).
    pub const NAME: &str = "tg_svcinfo_v1";
    pub const CAPACITY: u32 = super::stats::CAPACITY;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct SvcInfo {
        /// NUL-padded namespace.
        pub namespace: [u8; 64],
        /// NUL-padded service name.
        pub name: [u8; 64],
        /// NUL-padded port name ("" for an unnamed port).
        pub port_name: [u8; 16],
        /// host: service port.
        pub port: u16,
        /// IP protocol number.
        pub proto: u8,
        /// 4 or 6.
        pub family: u8,
        pub pad: [u8; 4],
    }
    const _: () = assert!(core::mem::size_of::<SvcInfo>() == 152);

    impl Default for SvcInfo {
        fn default() -> Self {
            Self {
                namespace: [0; 64],
                name: [0; 64],
                port_name: [0; 16],
                port: 0,
                proto: 0,
                family: 0,
                pad: [0; 4],
            }
        }
    }

    crate::impl_pod!(SvcInfo);
}

/// `Config::md_mode`.
pub mod md_mode {
    /// Metadata traffic is left alone.
    pub const OFF: u8 = 0;
    /// Pod TCP connections to the metadata server go to the node-local proxy.
    pub const REDIRECT: u8 = 1;
}

pub mod config {
    pub const NAME: &str = "tg_config_v2";

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Config {
        /// host: cookie of the node's own network namespace (host processes).
        pub host_netns_cookie: u64,
        /// be: source address for SNAT of IPv4 traffic to non-node frontends (IPv4-mapped).
        pub snat_v4: [u32; 4],
        /// be: source address for SNAT of IPv6 traffic to non-node frontends.
        pub snat_v6: [u32; 4],
        /// host: SNAT source ports are drawn from `snat_port_min..=snat_port_max`.
        pub snat_port_min: u16,
        pub snat_port_max: u16,
        /// host: 1 once the agent has programmed its first complete state.
        pub ready: u8,
        /// [`super::md_mode`].
        pub md_mode: u8,
        /// host: 1 once the metadata proxy listens and knows this node's pods. Until then pod
        /// connections to the metadata server are refused (fail closed).
        pub md_ready: u8,
        /// host: 1 = TCP connect() keeps no reverse translation, so getpeername() on a socket
        /// balanced to a backend shows the backend (`--socket-lb-peer=false`; 0, the default
        /// and what an older agent wrote here, shows the service address as with kube-proxy).
        pub tcp_peer_off: u8,
        /// be: the metadata server's address (IPv4-mapped), e.g. 169.254.169.254.
        pub md_addr: [u32; 4],
        /// be: where pod connections to it go: the node-local proxy (IPv4-mapped or IPv6).
        pub md_proxy_addr: [u32; 4],
        /// be: the metadata server's ports that are redirected (0 = unused).
        pub md_ports: [u16; 2],
        /// be: the proxy's port.
        pub md_proxy_port: u16,
        /// host: 1 = a host process's connection to a loopback address (127.0.0.0/8) on a
        /// NodePort goes to that NodePort, looked up on `snat_v4` (`--localhost-nodeports`; 0,
        /// what an older agent wrote here, leaves loopback alone).
        pub localhost_nodeports: u8,
        /// host: 1 = the socket hooks balance only the node's own processes; pods' service
        /// traffic leaves their sockets unchanged and is translated per packet on their
        /// interface, so a service mesh's sidecar sees the service address
        /// (`--socket-lb-host-namespace-only`; 0, what an older agent wrote here, balances
        /// pods' sockets too).
        pub socket_lb_host_only: u8,
    }
    const _: () = assert!(core::mem::size_of::<Config>() == 88);

    crate::impl_pod!(Config);
}
