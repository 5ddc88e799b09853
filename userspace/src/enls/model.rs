//! The Expected Node-Local State: what THIS node must program, per Service port and IP family.
//!
//! Everything here is plain data with structural equality, so "did it change?" is `==`.

use std::{fmt, net::IpAddr, sync::Arc};

use serde::{Serialize, Serializer};

/// An object's identity: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjKey {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ObjKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum IpFamily {
    IPv4,
    IPv6,
}

impl IpFamily {
    pub const ALL: [IpFamily; 2] = [IpFamily::IPv4, IpFamily::IPv6];

    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::IPv4,
            IpAddr::V6(_) => Self::IPv6,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::IPv4 => "IPv4",
            Self::IPv6 => "IPv6",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    /// Kubernetes spelling; a missing protocol means TCP.
    pub fn parse(s: Option<&str>) -> Option<Self> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }

    /// IANA protocol number, as the dataplane stores it.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    LoadBalancer,
}

/// `ip:port`, IPv6 as `[ip]:port` (serialised as that string).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointAddr {
    pub ip: IpAddr,
    pub port: u16,
}

impl fmt::Display for EndpointAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}", self.port),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}", self.port),
        }
    }
}

impl Serialize for EndpointAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A set of endpoints, sorted, shared between the sets that are equal (the common case:
/// internal = cluster = serving).
pub type EndpointSet = Arc<[EndpointAddr]>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum FrontendKind {
    ClusterIP,
    NodePort,
    ExternalIP,
    LoadBalancer,
}

impl FrontendKind {
    /// NodePorts, externalIPs and LB IPs are "external": traffic to them from outside the node
    /// follows externalTrafficPolicy.
    pub fn is_external(self) -> bool {
        !matches!(self, Self::ClusterIP)
    }
}

/// An address and port where the service port is reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Frontend {
    pub kind: FrontendKind,
    pub ip: IpAddr,
    pub port: u16,
}

/// An IP prefix (loadBalancerSourceRanges, --nodeport-addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl IpNet {
    /// Parses `a.b.c.d/n` or `x::/n`; the address is masked to the prefix.
    pub fn parse(s: &str) -> Option<Self> {
        let (addr, len) = s.trim().split_once('/')?;
        let addr: IpAddr = addr.parse().ok()?;
        let prefix_len: u8 = len.parse().ok()?;
        let max = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if prefix_len > max {
            return None;
        }
        Some(Self {
            addr: mask(addr, prefix_len),
            prefix_len,
        })
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        IpFamily::of(ip) == IpFamily::of(&self.addr) && mask(*ip, self.prefix_len) == self.addr
    }

    pub fn family(&self) -> IpFamily {
        IpFamily::of(&self.addr)
    }
}

fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl Serialize for IpNet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One service port in one IP family, as this node must program it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServicePortState {
    /// The service port's name ("" when unnamed).
    pub name: Arc<str>,
    pub protocol: Protocol,
    pub port: u16,
    pub ip_family: IpFamily,
    pub node_port: Option<u16>,
    /// Sorted.
    pub frontends: Vec<Frontend>,
    /// ClientIP affinity timeout; `None` without affinity.
    pub session_affinity_timeout_seconds: Option<u32>,
    /// loadBalancerSourceRanges of this family (apply to LoadBalancer frontends only).
    pub source_ranges: Vec<IpNet>,
    pub health_check_node_port: Option<u16>,
    pub internal_traffic_policy_local: bool,
    /// Effective: eTP=Local only counts when the port is externally accessible.
    pub external_traffic_policy_local: bool,
    /// kube-proxy's hasAnyEndpoints: with an empty selection, `true` means DROP (endpoints exist
    /// but not for this traffic), `false` means REJECT.
    pub has_endpoints: bool,
    /// What traffic to ClusterIPs uses (per internalTrafficPolicy).
    pub internal_endpoints: EndpointSet,
    /// What traffic arriving from outside the node to external frontends uses (per
    /// externalTrafficPolicy); `None` when the port has no external frontend.
    pub external_endpoints: Option<EndpointSet>,
    /// Cluster-policy endpoints (topology applied); pods and host processes reaching an external
    /// frontend of an eTP=Local service are short-circuited to these. `None` when unused.
    pub cluster_endpoints: Option<EndpointSet>,
    /// Every serving endpoint (ready or terminating): flows to anything else are stale.
    pub serving_endpoints: EndpointSet,
}

impl ServicePortState {
    /// The endpoints traffic to `frontend` uses when it comes from outside the node.
    pub fn endpoints_from_outside(&self, kind: FrontendKind) -> &EndpointSet {
        if kind.is_external() {
            self.external_endpoints
                .as_ref()
                .unwrap_or(&self.internal_endpoints)
        } else {
            &self.internal_endpoints
        }
    }

    /// The endpoints traffic to `frontend` uses when it comes from a pod or host process.
    pub fn endpoints_from_inside(&self, kind: FrontendKind) -> &EndpointSet {
        if kind.is_external() {
            self.cluster_endpoints
                .as_ref()
                .unwrap_or(&self.internal_endpoints)
        } else {
            &self.internal_endpoints
        }
    }
}

/// One Service as this node must program it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceState {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// metadata.uid (empty from a manifest without one): Events refer to the Service by it,
    /// so `kubectl describe service` shows them. Not part of the documented JSON.
    #[serde(skip)]
    pub uid: Arc<str>,
    #[serde(rename = "type")]
    pub service_type: ServiceType,
    /// Sorted by (family, name, protocol).
    pub ports: Vec<ServicePortState>,
    /// Distinct IPs of local Ready endpoints across ports (healthCheckNodePort answers).
    pub local_ready_endpoints: u32,
}

impl ServiceState {
    pub fn key(&self) -> ObjKey {
        ObjKey {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

/// A pod on this node, as the metadata proxy's identity index needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodIdentity {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub uid: Arc<str>,
    pub service_account: Arc<str>,
    pub ips: Vec<IpAddr>,
    pub host_network: bool,
    /// Pending, Running, Succeeded, Failed, Unknown.
    pub phase: Arc<str>,
}

impl PodIdentity {
    /// A pod still owns its IPs unless it has finished (Succeeded/Failed pods' IPs are reused).
    pub fn holds_ips(&self) -> bool {
        !self.host_network && !matches!(&*self.phase, "Succeeded" | "Failed")
    }
}

/// This node, as the ENLS needs it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct NodeInfo {
    pub zone: Option<Arc<str>>,
    /// InternalIP and ExternalIP addresses, in the Node object's order.
    pub addresses: Vec<IpAddr>,
    /// kube-proxy's primary node IPs: per family, the first InternalIP, else the first
    /// ExternalIP (`--nodeport-addresses primary`).
    #[serde(skip)]
    pub primary: Vec<IpAddr>,
    /// kube-proxy's node eligibility: no deletionTimestamp, no ToBeDeletedByClusterAutoscaler.
    pub eligible: bool,
}
