//! Kubernetes objects → compact records, applying kube-proxy's ingestion rules (R1–R8 of
//! `shared/reference/kube-proxy-semantics.md`). Raw objects are dropped after this step, which
//! keeps memory proportional to what the dataplane needs.
//!
//! Outcomes: a record; `None` when a rule says the object is not ours (headless, ExternalName,
//! another proxy's service, another node's pod) — equivalent to the object being absent; or a
//! [`Rejection`] for a malformed object, which the store answers by keeping the previous good
//! version. Field-level problems (one bad externalIP, one unparsable endpoint address) drop only
//! that field and are reported as warnings.

use std::{net::IpAddr, sync::Arc, time::SystemTime};

use k8s_openapi::api::{
    core::v1::{Node, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::ServiceCIDR,
};

use super::model::{IpFamily, IpNet, NodeInfo, ObjKey, PodIdentity, Protocol, ServiceType};

pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
pub const ANNOTATION_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";
pub const TAINT_TO_BE_DELETED: &str = "ToBeDeletedByClusterAutoscaler";
/// API validation limits for EndpointSlices; larger ones cannot come from a real API server.
pub const MAX_SLICE_ENDPOINTS: usize = 1000;
pub const MAX_SLICE_PORTS: usize = 100;
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
    Pod,
    ServiceCidr,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Node,
        Kind::Pod,
        Kind::ServiceCidr,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
            Self::Node => "Node",
            Self::Pod => "Pod",
            Self::ServiceCidr => "ServiceCIDR",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why (part of) an object was not used. Codes are metric label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    MissingName,
    UnknownServiceType,
    InvalidClusterIp,
    InvalidPort,
    InvalidProtocol,
    InvalidIp,
    InvalidSourceRange,
    MissingServiceName,
    InvalidAddressType,
    TooManyEndpoints,
    TooManyPorts,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingName => "missing_name",
            Self::UnknownServiceType => "unknown_service_type",
            Self::InvalidClusterIp => "invalid_cluster_ip",
            Self::InvalidPort => "invalid_port",
            Self::InvalidProtocol => "invalid_protocol",
            Self::InvalidIp => "invalid_ip",
            Self::InvalidSourceRange => "invalid_source_range",
            Self::MissingServiceName => "missing_service_name_label",
            Self::InvalidAddressType => "invalid_address_type",
            Self::TooManyEndpoints => "too_many_endpoints",
            Self::TooManyPorts => "too_many_ports",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {object}: {detail} ({})", reason.as_str())]
pub struct Rejection {
    pub kind: Kind,
    pub object: String,
    pub reason: RejectReason,
    pub detail: String,
}

/// A successfully read object: maybe a record (or `None`: not ours), plus dropped fields.
#[derive(Debug)]
pub struct Ingested<T> {
    pub record: Option<T>,
    pub warnings: Vec<Rejection>,
}

impl<T> Ingested<T> {
    fn skip() -> Self {
        Self {
            record: None,
            warnings: Vec::new(),
        }
    }
}

/// What ingestion needs to know about this agent.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub node_name: String,
    /// Our `--service-proxy-name`: services labelled with another name are skipped.
    pub service_proxy_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortRecord {
    pub name: Arc<str>,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord {
    /// metadata.uid: what the agent's Events about the Service refer to.
    pub uid: Arc<str>,
    pub service_type: ServiceType,
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePortRecord>,
    pub external_ips: Vec<IpAddr>,
    /// LoadBalancer ingress IPs in VIP mode (ipMode ≠ Proxy).
    pub lb_ips: Vec<IpAddr>,
    pub source_ranges: Vec<IpNet>,
    pub affinity_timeout: Option<u32>,
    pub itp_local: bool,
    pub etp_local: bool,
    pub health_check_node_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePort {
    pub name: Arc<str>,
    pub protocol: Protocol,
    pub port: u16,
}

/// Endpoint condition and locality bits.
pub mod ep_flags {
    pub const READY: u8 = 1;
    pub const SERVING: u8 = 2;
    pub const TERMINATING: u8 = 4;
    pub const LOCAL: u8 = 8;
    /// The endpoint has at least one node hint.
    pub const HAS_NODE_HINTS: u8 = 16;
    /// One of its node hints names this node.
    pub const NODE_HINT_ME: u8 = 32;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRecord {
    pub ip: IpAddr,
    pub flags: u8,
    pub zone_hints: Box<[Arc<str>]>,
}

impl EndpointRecord {
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceRecord {
    /// The Service this slice belongs to.
    pub service: ObjKey,
    pub family: IpFamily,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<EndpointRecord>,
    /// `endpoints.kubernetes.io/last-change-trigger-time` (not part of equality in spirit, but
    /// an annotation change alone is harmless: it leaves the computed state unchanged).
    pub trigger_time: Option<SystemTime>,
}

fn object_name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or("<unnamed>")
    )
}

/// The object's key, or a rejection if it has no name.
pub fn key_of(
    kind: Kind,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<ObjKey, Rejection> {
    match meta.name.as_deref() {
        Some(name) if !name.is_empty() => {
            Ok(ObjKey::new(meta.namespace.as_deref().unwrap_or(""), name))
        }
        _ => Err(Rejection {
            kind,
            object: object_name(meta),
            reason: RejectReason::MissingName,
            detail: "metadata.name is missing".into(),
        }),
    }
}

fn port_u16(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p != 0)
}

pub fn service(svc: &Service, cfg: &IngestConfig) -> Result<Ingested<ServiceRecord>, Rejection> {
    let meta = &svc.metadata;
    let object = object_name(meta);
    let reject = |reason, detail: String| Rejection {
        kind: Kind::Service,
        object: object.clone(),
        reason,
        detail,
    };
    key_of(Kind::Service, meta)?;
    // R1: a service claimed by another proxy is not ours.
    if let Some(owner) = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SERVICE_PROXY_NAME))
        && cfg.service_proxy_name.as_deref() != Some(owner.as_str())
    {
        return Ok(Ingested::skip());
    }
    let Some(spec) = svc.spec.as_ref() else {
        return Ok(Ingested::skip());
    };
    let service_type = match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "ClusterIP" => ServiceType::ClusterIP,
        "NodePort" => ServiceType::NodePort,
        "LoadBalancer" => ServiceType::LoadBalancer,
        // R2: ExternalName services have nothing to program.
        "ExternalName" => return Ok(Ingested::skip()),
        other => {
            return Err(reject(
                RejectReason::UnknownServiceType,
                format!("unknown spec.type {other:?}"),
            ));
        }
    };
    // R2: headless services (clusterIP None or empty) are skipped.
    let raw_ips: Vec<&str> = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    };
    if raw_ips.is_empty() || raw_ips.iter().any(|ip| *ip == "None" || ip.is_empty()) {
        return Ok(Ingested::skip());
    }
    let mut cluster_ips = Vec::with_capacity(raw_ips.len());
    for raw in raw_ips {
        let ip = parse_ip(raw).ok_or_else(|| {
            reject(
                RejectReason::InvalidClusterIp,
                format!("cluster IP {raw:?} is not an IP address"),
            )
        })?;
        cluster_ips.push(ip);
    }
    let mut warnings = Vec::new();
    let mut ports = Vec::new();
    for p in spec.ports.iter().flatten() {
        let port = port_u16(p.port).ok_or_else(|| {
            reject(
                RejectReason::InvalidPort,
                format!("port {} is not in 1..=65535", p.port),
            )
        })?;
        let protocol = Protocol::parse(p.protocol.as_deref()).ok_or_else(|| {
            reject(
                RejectReason::InvalidProtocol,
                format!("protocol {:?} is not TCP, UDP or SCTP", p.protocol),
            )
        })?;
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(n) => Some(port_u16(n).ok_or_else(|| {
                reject(
                    RejectReason::InvalidPort,
                    format!("nodePort {n} is not in 1..=65535"),
                )
            })?),
        };
        // A nodePort only counts where the type exposes one.
        let node_port = node_port.filter(|_| service_type != ServiceType::ClusterIP);
        ports.push(ServicePortRecord {
            name: p.name.as_deref().unwrap_or("").into(),
            protocol,
            port,
            node_port,
        });
    }
    let mut external_ips = Vec::new();
    for raw in spec.external_ips.iter().flatten() {
        match parse_ip(raw) {
            Some(ip) => external_ips.push(ip),
            None => warnings.push(reject(
                RejectReason::InvalidIp,
                format!("externalIP {raw:?} is not an IP address; ignored"),
            )),
        }
    }
    let is_lb = service_type == ServiceType::LoadBalancer;
    let mut lb_ips = Vec::new();
    let mut source_ranges = Vec::new();
    if is_lb {
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        for ing in ingress.into_iter().flatten() {
            // R4: only VIP-mode ingress IPs are frontends; Proxy mode means the LB proxies.
            if ing.ip_mode.as_deref() == Some("Proxy") {
                continue;
            }
            if let Some(raw) = ing.ip.as_deref() {
                match parse_ip(raw) {
                    Some(ip) => lb_ips.push(ip),
                    None => warnings.push(reject(
                        RejectReason::InvalidIp,
                        format!("load balancer ingress IP {raw:?} is not an IP address; ignored"),
                    )),
                }
            }
        }
        for raw in spec.load_balancer_source_ranges.iter().flatten() {
            match IpNet::parse(raw) {
                Some(net) => source_ranges.push(net),
                None => warnings.push(reject(
                    RejectReason::InvalidSourceRange,
                    format!("loadBalancerSourceRange {raw:?} is not a CIDR; ignored"),
                )),
            }
        }
    }
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    });
    let etp_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let itp_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    // R4: the health check only exists for LoadBalancer + eTP=Local.
    for v in [&mut cluster_ips, &mut external_ips, &mut lb_ips] {
        v.shrink_to_fit();
    }
    ports.shrink_to_fit();
    source_ranges.shrink_to_fit();
    let health_check_node_port = (is_lb && etp_local)
        .then(|| spec.health_check_node_port.and_then(port_u16))
        .flatten();
    Ok(Ingested {
        record: Some(ServiceRecord {
            uid: meta.uid.as_deref().unwrap_or("").into(),
            service_type,
            cluster_ips,
            ports,
            external_ips,
            lb_ips,
            source_ranges,
            affinity_timeout,
            itp_local,
            etp_local,
            health_check_node_port,
        }),
        warnings,
    })
}

/// IPs as kube-proxy reads them: surrounding space ignored, IPv4 with leading zeros accepted
/// (the API server's legacy "sloppy" parse), IPv4-mapped IPv6 kept as written.
pub fn parse_ip(raw: &str) -> Option<IpAddr> {
    let raw = raw.trim();
    if let Ok(ip) = raw.parse() {
        return Some(ip);
    }
    // Sloppy IPv4: "010.001.002.003" means 10.1.2.3 (decimal, not octal).
    let octets: Vec<&str> = raw.split('.').collect();
    if octets.len() == 4 {
        let mut out = [0u8; 4];
        for (o, s) in out.iter_mut().zip(&octets) {
            if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            *o = s.parse().ok()?;
        }
        return Some(IpAddr::from(out));
    }
    None
}

pub fn endpoint_slice(
    slice: &EndpointSlice,
    cfg: &IngestConfig,
) -> Result<Ingested<SliceRecord>, Rejection> {
    let meta = &slice.metadata;
    let object = object_name(meta);
    let reject = |reason, detail: String| Rejection {
        kind: Kind::EndpointSlice,
        object: object.clone(),
        reason,
        detail,
    };
    key_of(Kind::EndpointSlice, meta)?;
    let labels = meta.labels.as_ref();
    // R1: slices of headless services are not for proxies.
    if labels.is_some_and(|l| l.contains_key(LABEL_HEADLESS)) {
        return Ok(Ingested::skip());
    }
    let family = match slice.address_type.as_str() {
        "IPv4" => IpFamily::IPv4,
        "IPv6" => IpFamily::IPv6,
        // R5: FQDN slices are not proxied.
        "FQDN" => return Ok(Ingested::skip()),
        other => {
            return Err(reject(
                RejectReason::InvalidAddressType,
                format!("addressType {other:?} is not IPv4, IPv6 or FQDN"),
            ));
        }
    };
    let service_name = labels
        .and_then(|l| l.get(LABEL_SERVICE_NAME))
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            reject(
                RejectReason::MissingServiceName,
                format!("no {LABEL_SERVICE_NAME} label, so it belongs to no Service"),
            )
        })?;
    if slice.endpoints.len() > MAX_SLICE_ENDPOINTS {
        return Err(reject(
            RejectReason::TooManyEndpoints,
            format!(
                "{} endpoints, more than the API's limit of {MAX_SLICE_ENDPOINTS}",
                slice.endpoints.len()
            ),
        ));
    }
    let raw_ports = slice.ports.as_deref().unwrap_or_default();
    if raw_ports.len() > MAX_SLICE_PORTS {
        return Err(reject(
            RejectReason::TooManyPorts,
            format!(
                "{} ports, more than the API's limit of {MAX_SLICE_PORTS}",
                raw_ports.len()
            ),
        ));
    }
    let mut warnings = Vec::new();
    let mut ports = Vec::with_capacity(raw_ports.len());
    for p in raw_ports {
        // R6: a port without a name is ignored ("" is a valid name: the unnamed port).
        let Some(name) = p.name.as_deref() else {
            continue;
        };
        let port = match p.port {
            Some(n) => match port_u16(n) {
                Some(port) => port,
                None => {
                    warnings.push(reject(
                        RejectReason::InvalidPort,
                        format!("port {name:?} has number {n}, not in 1..=65535; ignored"),
                    ));
                    continue;
                }
            },
            None => continue,
        };
        let Some(protocol) = Protocol::parse(p.protocol.as_deref()) else {
            warnings.push(reject(
                RejectReason::InvalidProtocol,
                format!("port {name:?} has protocol {:?}; ignored", p.protocol),
            ));
            continue;
        };
        ports.push(SlicePort {
            name: name.into(),
            protocol,
            port,
        });
    }
    let mut endpoints = Vec::with_capacity(slice.endpoints.len());
    for ep in &slice.endpoints {
        // R7: only the first address counts.
        let Some(raw) = ep.addresses.first() else {
            continue;
        };
        let Some(ip) = parse_ip(raw) else {
            warnings.push(reject(
                RejectReason::InvalidIp,
                format!("endpoint address {raw:?} is not an IP address; ignored"),
            ));
            continue;
        };
        if IpFamily::of(&ip) != family {
            warnings.push(reject(
                RejectReason::InvalidIp,
                format!(
                    "endpoint address {raw:?} is not {}; ignored",
                    family.as_str()
                ),
            ));
            continue;
        }
        let cond = ep.conditions.as_ref();
        let ready = cond.and_then(|c| c.ready).unwrap_or(true);
        let serving = cond.and_then(|c| c.serving).unwrap_or(true);
        let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
        let local = ep.node_name.as_deref() == Some(cfg.node_name.as_str());
        let hints = ep.hints.as_ref();
        let node_hints: Vec<&str> = hints
            .and_then(|h| h.for_nodes.as_ref())
            .into_iter()
            .flatten()
            .map(|n| n.name.as_str())
            .collect();
        let zone_hints: Box<[Arc<str>]> = hints
            .and_then(|h| h.for_zones.as_ref())
            .into_iter()
            .flatten()
            .map(|z| Arc::<str>::from(z.name.as_str()))
            .collect();
        let mut flags = 0;
        for (set, bit) in [
            (ready, ep_flags::READY),
            (serving, ep_flags::SERVING),
            (terminating, ep_flags::TERMINATING),
            (local, ep_flags::LOCAL),
            (!node_hints.is_empty(), ep_flags::HAS_NODE_HINTS),
            (
                node_hints.contains(&cfg.node_name.as_str()),
                ep_flags::NODE_HINT_ME,
            ),
        ] {
            if set {
                flags |= bit;
            }
        }
        endpoints.push(EndpointRecord {
            ip,
            flags,
            zone_hints,
        });
    }
    ports.shrink_to_fit();
    endpoints.shrink_to_fit();
    let trigger_time = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_TRIGGER_TIME))
        .and_then(|t| parse_rfc3339(t));
    Ok(Ingested {
        record: Some(SliceRecord {
            service: ObjKey::new(meta.namespace.as_deref().unwrap_or(""), service_name),
            family,
            ports,
            endpoints,
            trigger_time,
        }),
        warnings,
    })
}

/// `2026-11-24T03:42:53Z` (also with fractional seconds or a numeric offset).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let (date, rest) = s.split_once('T')?;
    let mut d = date.split('-');
    let (y, mo, da): (i64, u32, u32) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (clock, offset_secs) = if let Some(c) = rest.strip_suffix('Z') {
        (c, 0i64)
    } else {
        let idx = rest.rfind(['+', '-'])?;
        let (c, off) = rest.split_at(idx);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        (
            c,
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60),
        )
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut t = hms.split(':');
    let (h, mi, se): (i64, i64, i64) = (
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().take(9).collect();
        let n: u32 = digits.parse().ok()?;
        n * 10u32.pow(9 - digits.len() as u32)
    };
    // Days since the epoch (civil-from-days inverse, proleptic Gregorian).
    let (y2, m2) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * i64::from(m2) + 2) / 5 + i64::from(da) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset_secs;
    let secs = u64::try_from(secs).ok()?;
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::new(secs, nanos))
}

/// A ServiceCIDR's prefixes (`spec.cidrs`, one per family): the ranges ClusterIPs are
/// allocated from. A prefix that does not parse is skipped with a warning, the others kept.
pub fn service_cidr(obj: &ServiceCIDR) -> Result<Ingested<Vec<IpNet>>, Rejection> {
    let key = key_of(Kind::ServiceCidr, &obj.metadata)?;
    let mut warnings = Vec::new();
    let mut cidrs = Vec::new();
    for s in obj
        .spec
        .as_ref()
        .and_then(|s| s.cidrs.as_ref())
        .into_iter()
        .flatten()
    {
        match IpNet::parse(s) {
            Some(net) if !cidrs.contains(&net) => cidrs.push(net),
            Some(_) => {}
            None => warnings.push(Rejection {
                kind: Kind::ServiceCidr,
                object: key.to_string(),
                reason: RejectReason::InvalidIp,
                detail: format!("spec.cidrs {s:?} is not an IP prefix; ignored"),
            }),
        }
    }
    Ok(Ingested {
        record: Some(cidrs),
        warnings,
    })
}

/// This node's zone, addresses and eligibility; `None` for any other node.
pub fn node(node: &Node, cfg: &IngestConfig) -> Result<Ingested<NodeInfo>, Rejection> {
    let key = key_of(Kind::Node, &node.metadata)?;
    if *key.name != *cfg.node_name {
        return Ok(Ingested::skip());
    }
    let zone = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_ZONE))
        .filter(|z| !z.is_empty())
        .map(|z| Arc::<str>::from(z.as_str()));
    let mut warnings = Vec::new();
    let mut addresses = Vec::new();
    let mut typed = Vec::new();
    for a in node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
    {
        if a.type_ != "InternalIP" && a.type_ != "ExternalIP" {
            continue;
        }
        match parse_ip(&a.address) {
            Some(ip) => {
                typed.push((a.type_ == "InternalIP", ip));
                if !addresses.contains(&ip) {
                    addresses.push(ip);
                }
            }
            None => warnings.push(Rejection {
                kind: Kind::Node,
                object: key.to_string(),
                reason: RejectReason::InvalidIp,
                detail: format!("{} {:?} is not an IP address; ignored", a.type_, a.address),
            }),
        }
    }
    let deleting = node.metadata.deletion_timestamp.is_some();
    let to_be_deleted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == TAINT_TO_BE_DELETED));
    Ok(Ingested {
        record: Some(NodeInfo {
            zone,
            addresses,
            primary: primary_ips(&typed),
            eligible: !deleting && !to_be_deleted,
        }),
        warnings,
    })
}

/// kube-proxy's primary node IPs (`GetNodeHostIPs`): per family, the first InternalIP, else the
/// first ExternalIP; `typed` is (is InternalIP, address) in the Node object's order.
fn primary_ips(typed: &[(bool, IpAddr)]) -> Vec<IpAddr> {
    let mut primary: Vec<IpAddr> = Vec::new();
    for internal in [true, false] {
        for &(_, ip) in typed.iter().filter(|(i, _)| *i == internal) {
            if !primary.iter().any(|p| p.is_ipv4() == ip.is_ipv4()) {
                primary.push(ip);
            }
        }
    }
    primary
}

/// A pod on this node (its identity for the metadata proxy); `None` for other nodes' pods.
pub fn pod(pod: &Pod, cfg: &IngestConfig) -> Result<Ingested<PodIdentity>, Rejection> {
    let key = key_of(Kind::Pod, &pod.metadata)?;
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.node_name.as_deref()) != Some(cfg.node_name.as_str()) {
        return Ok(Ingested::skip());
    }
    let status = pod.status.as_ref();
    let mut warnings = Vec::new();
    let mut raw_ips: Vec<&str> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .collect();
    if raw_ips.is_empty()
        && let Some(ip) = status.and_then(|s| s.pod_ip.as_deref())
    {
        raw_ips.push(ip);
    }
    let mut ips = Vec::new();
    for raw in raw_ips {
        match parse_ip(raw) {
            Some(ip) => ips.push(ip),
            None => warnings.push(Rejection {
                kind: Kind::Pod,
                object: key.to_string(),
                reason: RejectReason::InvalidIp,
                detail: format!("pod IP {raw:?} is not an IP address; ignored"),
            }),
        }
    }
    Ok(Ingested {
        record: Some(PodIdentity {
            namespace: key.namespace,
            name: key.name,
            uid: pod.metadata.uid.as_deref().unwrap_or("").into(),
            service_account: spec
                .and_then(|s| s.service_account_name.as_deref())
                .unwrap_or("default")
                .into(),
            ips,
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            phase: status
                .and_then(|s| s.phase.as_deref())
                .unwrap_or("Pending")
                .into(),
        }),
        warnings,
    })
}
