//! Every map the programs use, declared once with BTF so `bpftool map dump` prints field names.
//! Names, capacities and layouts come from `tollgate_common`.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, SkStorage},
    macros::btf_map,
};
use tollgate_common::{
    iface_stats::{self, IfaceStats, IfaceStatsKey},
    lb::{
        affinity::{self, AffinityKey, AffinityValue},
        backend::{self, Backend},
        config::Config,
        ct::{self, CtEntry, CtKey},
        ctmark::{self, Mark},
        feport,
        frag::{self, Frag6Key, FragKey, FragPorts},
        maglev,
        revnat::{self, RevNat},
        sockct::{self, SockCtKey, SockCtValue},
        sockrev::{self, SockRevKey, SockRevTcp, SockRevValue, TcpRevSlot},
        srcrange::{self, SrcRangeKey},
        stats::{self, Counters},
        svc::{self, SvcKey, SvcValue},
        svccidr::{self, SvcCidrKey, SvcCidrValue},
        svcinfo::{self, SvcInfo},
    },
};

#[btf_map(name = "tg_ifstats_v1")]
pub static IFACE_STATS: PerCpuHashMap<
    IfaceStatsKey,
    IfaceStats,
    { iface_stats::CAPACITY as usize },
> = PerCpuHashMap::new();

#[btf_map(name = "tg_svc_v1")]
pub static SERVICES: HashMap<SvcKey, SvcValue, { svc::CAPACITY as usize }> = HashMap::new();

#[btf_map(name = "tg_backend_v1")]
pub static BACKENDS: HashMap<u32, Backend, { backend::CAPACITY as usize }> = HashMap::new();

#[btf_map(name = "tg_revnat_v1")]
pub static REVNAT: HashMap<u32, RevNat, { revnat::CAPACITY as usize }> = HashMap::new();

#[btf_map(name = "tg_ct_v2")]
pub static CONNTRACK: LruHashMap<CtKey, CtEntry, { ct::CAPACITY as usize }> = LruHashMap::new();

#[btf_map(name = "tg_ctmark_v1")]
pub static CT_MARKS: Array<Mark, { ctmark::CAPACITY as usize }> = Array::new();

/// Bitmap of the ports frontends have had: uplink packets to other ports from unmarked
/// sources skip the conntrack lookup (see `feport`).
#[btf_map(name = "tg_feport_v1")]
pub static FRONTEND_PORTS: Array<u64, { feport::WORDS as usize }> = Array::new();

/// The ports of IPv4 datagrams whose first fragment was seen, for their later fragments (see
/// `frag`).
#[btf_map(name = "tg_frag_v1")]
pub static FRAGMENTS: LruHashMap<FragKey, FragPorts, { frag::CAPACITY as usize }> =
    LruHashMap::new();

/// The same for IPv6 datagrams.
#[btf_map(name = "tg_frag6_v1")]
pub static FRAGMENTS6: LruHashMap<Frag6Key, FragPorts, { frag::CAPACITY as usize }> =
    LruHashMap::new();

#[btf_map(name = "tg_affinity_v1")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue, { affinity::CAPACITY as usize }> =
    LruHashMap::new();

#[btf_map(name = "tg_sockct_v1")]
pub static SOCK_CT: LruHashMap<SockCtKey, SockCtValue, { sockct::CAPACITY as usize }> =
    LruHashMap::new();

#[btf_map(name = "tg_sockrev_v1")]
pub static SOCK_REV: LruHashMap<SockRevKey, SockRevValue, { sockrev::CAPACITY as usize }> =
    LruHashMap::new();

/// Connected TCP sockets' translation whose cookie slot was taken, in the socket's own storage
/// (see `sockrev`).
#[btf_map(name = "tg_tcprev_v1")]
pub static TCP_REV: SkStorage<SockRevTcp> = SkStorage::new();

/// Connected TCP sockets' translation, one slot per live socket by cookie (see `sockrev`).
#[btf_map(name = "tg_tcpslot_v1")]
pub static TCP_REV_SLOTS: Array<TcpRevSlot, { sockrev::SLOTS as usize }> = Array::new();
/// Which of those slots are held, one bit each (see `sockrev`).
#[btf_map(name = "tg_tcpheld_v1")]
pub static TCP_REV_HELD: Array<u64, { sockrev::HELD_WORDS as usize }> = Array::new();

/// Bitmap of the ports a translated TCP socket's peer can have (see `sockrev`).
#[btf_map(name = "tg_peerport_v1")]
pub static PEER_PORTS: Array<u64, { sockrev::PORT_WORDS as usize }> = Array::new();

/// Maglev tables by (service-port ID, chunk) (see `maglev`), allocated as they are written
/// (16 KiB a chunk, only with `--lb-algorithm maglev`). Sized at load for the configured
/// table size (`CAPACITY × chunks(M)`).
#[btf_map(name = "tg_maglev_v2")]
pub static MAGLEV: HashMap<
    maglev::Key,
    maglev::Chunk,
    { maglev::CAPACITY as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

#[btf_map(name = "tg_srcrange_v1")]
pub static SOURCE_RANGES: LpmTrie<
    SrcRangeKey,
    u8,
    { srcrange::CAPACITY as usize },
    { BPF_F_NO_PREALLOC as usize },
> = LpmTrie::new();

#[btf_map(name = "tg_svccidr_v1")]
pub static SERVICE_CIDRS: LpmTrie<
    SvcCidrKey,
    SvcCidrValue,
    { svccidr::CAPACITY as usize },
    { BPF_F_NO_PREALLOC as usize },
> = LpmTrie::new();

/// The slices of the address space the ServiceCIDRs reach into (see `svccidr::BITS_NAME`).
#[btf_map(name = "tg_cidrbits_v1")]
pub static CIDR_BITS: Array<u64, { svccidr::WORDS as usize }> = Array::new();

#[btf_map(name = "tg_svcstat_v1")]
pub static SERVICE_STATS: PerCpuArray<Counters, { stats::CAPACITY as usize }> = PerCpuArray::new();

#[btf_map(name = "tg_bestat_v1")]
pub static BACKEND_STATS: PerCpuArray<Counters, { stats::CAPACITY as usize }> = PerCpuArray::new();

/// Written by userspace only (names for readers); declared here so it carries BTF.
#[btf_map(name = "tg_svcinfo_v1")]
pub static SERVICE_INFO: HashMap<u32, SvcInfo, { svcinfo::CAPACITY as usize }> = HashMap::new();

#[btf_map(name = "tg_config_v2")]
pub static CONFIG: Array<Config, 1> = Array::new();
