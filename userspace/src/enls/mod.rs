//! The Expected Node-Local State (ENLS): what this node must program, computed from Services,
//! EndpointSlices, this Node and the Pods on it with kube-proxy's semantics, and emitted as
//! incremental changes only when it really changed.
//!
//! ```text
//! SourceEvent ──handle()──▶ records (ingest) ──mark dirty──▶ sync() ──▶ Update {revision, changes}
//! ```
//!
//! A (re-)list is bracketed by `ListBegin`/`ListDone`: objects not seen again are deleted at
//! `ListDone`, objects seen again unchanged change nothing, so a watch restart (410 Gone,
//! reconnect) or a file reload emits only what really differs.

pub mod categorize;
pub mod compute;
pub mod ingest;
pub mod metrics;
pub mod model;
pub mod runner;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::{Instant, SystemTime},
};

use k8s_openapi::api::{
    core::v1::{Node, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::ServiceCIDR,
};
use serde::Serialize;

use self::{
    compute::NodeContext,
    ingest::{IngestConfig, Kind, Rejection, ServiceRecord, SliceRecord},
    metrics::EnlsMetrics,
    model::{IpNet, NodeInfo, ObjKey, PodIdentity, ServiceState},
};

/// Options that shape the node-local state.
#[derive(Debug, Clone)]
pub struct EnlsConfig {
    /// This node's name (the Node object's name; decides which endpoints are local).
    pub node_name: String,
    /// Services labelled `service.kubernetes.io/service-proxy-name` are ours only if the label
    /// equals this.
    pub service_proxy_name: Option<String>,
    /// `--nodeport-addresses`: restrict NodePort frontends to node addresses in these prefixes.
    pub nodeport_addresses: Vec<IpNet>,
    /// `--nodeport-addresses primary`: NodePort frontends on the node's primary IPs only.
    pub nodeport_primary: bool,
    /// The PreferSameTrafficDistribution behaviour (node hints); on by default, as upstream.
    pub prefer_same_node: bool,
}

impl EnlsConfig {
    pub fn new(node_name: &str) -> Self {
        Self {
            node_name: node_name.to_owned(),
            service_proxy_name: None,
            nodeport_addresses: Vec::new(),
            nodeport_primary: false,
            prefer_same_node: true,
        }
    }
}

/// A Kubernetes object as a source delivers it.
#[derive(Debug, Clone)]
pub enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Node(Box<Node>),
    Pod(Box<Pod>),
    ServiceCidr(Box<ServiceCIDR>),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Self::Service(_) => Kind::Service,
            Self::EndpointSlice(_) => Kind::EndpointSlice,
            Self::Node(_) => Kind::Node,
            Self::Pod(_) => Kind::Pod,
            Self::ServiceCidr(_) => Kind::ServiceCidr,
        }
    }

    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            Self::Service(o) => &o.metadata,
            Self::EndpointSlice(o) => &o.metadata,
            Self::Node(o) => &o.metadata,
            Self::Pod(o) => &o.metadata,
            Self::ServiceCidr(o) => &o.metadata,
        }
    }
}

/// What sources send.
#[derive(Debug, Clone)]
pub enum SourceEvent {
    /// A (re-)list of this kind starts: objects not applied before `ListDone` are gone.
    ListBegin(Kind),
    /// An object was listed, added or modified.
    Apply(Object),
    /// An object was deleted.
    Delete(Object),
    /// The (re-)list of this kind is complete.
    ListDone(Kind),
}

/// One service's change: `old` → `new` (`None` = absent).
#[derive(Debug, Clone)]
pub struct ServiceChange {
    pub key: ObjKey,
    pub old: Option<Arc<ServiceState>>,
    pub new: Option<Arc<ServiceState>>,
}

#[derive(Debug, Clone)]
pub struct PodChange {
    pub key: ObjKey,
    pub old: Option<Arc<PodIdentity>>,
    pub new: Option<Arc<PodIdentity>>,
}

/// Everything that changed between two revisions.
#[derive(Debug, Clone, Default)]
pub struct Update {
    pub revision: u64,
    /// The first update: the state is complete (every source listed) for the first time.
    pub initial: bool,
    pub services: Vec<ServiceChange>,
    pub pods: Vec<PodChange>,
    /// The node's info when it changed (always on the initial update).
    pub node: Option<NodeInfo>,
    /// The cluster's ServiceCIDR prefixes, sorted, when they changed (always on the initial
    /// update).
    pub service_cidrs: Option<Vec<IpNet>>,
    /// `last-change-trigger-time`s of the EndpointSlice changes in this update (for
    /// kubeproxy_network_programming_duration_seconds, observed when programmed).
    pub trigger_times: Vec<SystemTime>,
}

impl Update {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.pods.is_empty()
            && self.node.is_none()
            && self.service_cidrs.is_none()
    }
}

/// The full state, as `tollgate enls` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub node: String,
    pub revision: u64,
    pub services: Vec<Arc<ServiceState>>,
    pub pods: Vec<Arc<PodIdentity>>,
    /// The ServiceCIDR prefixes (traffic to an address inside one that no Service has is
    /// dropped).
    pub service_cidrs: Vec<IpNet>,
}

/// The ENLS engine: records, computed state, revision. Pure and synchronous; see
/// [`runner`] for the task that feeds it.
pub struct Enls {
    cfg: EnlsConfig,
    ingest_cfg: IngestConfig,
    metrics: EnlsMetrics,
    started: SystemTime,

    services: HashMap<ObjKey, ServiceRecord>,
    slices: HashMap<ObjKey, SliceRecord>,
    /// Service → names of its slices, sorted (the merge order is deterministic). A Vec: most
    /// services have one slice, and a set's node would cost ~10× the memory.
    slices_by_service: HashMap<ObjKey, Vec<Arc<str>>>,
    /// Low-cardinality strings (namespaces, port names, zones) shared across records.
    interner: Interner,
    node: Option<NodeInfo>,
    pods: HashMap<ObjKey, Arc<PodIdentity>>,
    /// ServiceCIDR objects' prefixes.
    service_cidrs: HashMap<ObjKey, Vec<IpNet>>,

    listing: [Option<HashSet<ObjKey>>; Kind::ALL.len()],
    synced: [bool; Kind::ALL.len()],
    dirty_services: HashSet<ObjKey>,
    all_services_dirty: bool,
    dirty_pods: HashSet<ObjKey>,
    pending_triggers: Vec<SystemTime>,

    state: BTreeMap<ObjKey, Arc<ServiceState>>,
    pod_state: BTreeMap<ObjKey, Arc<PodIdentity>>,
    node_state: Option<NodeInfo>,
    cidr_state: Vec<IpNet>,
    revision: u64,
    emitted_initial: bool,
    api_events: u64,
}

impl Enls {
    pub fn new(cfg: EnlsConfig, metrics: EnlsMetrics) -> Self {
        let ingest_cfg = IngestConfig {
            node_name: cfg.node_name.clone(),
            service_proxy_name: cfg.service_proxy_name.clone(),
        };
        Self {
            cfg,
            ingest_cfg,
            metrics,
            started: SystemTime::now(),
            services: HashMap::new(),
            slices: HashMap::new(),
            slices_by_service: HashMap::new(),
            interner: Interner::default(),
            node: None,
            pods: HashMap::new(),
            service_cidrs: HashMap::new(),
            listing: Default::default(),
            synced: [false; Kind::ALL.len()],
            dirty_services: HashSet::new(),
            all_services_dirty: false,
            dirty_pods: HashSet::new(),
            pending_triggers: Vec::new(),
            state: BTreeMap::new(),
            pod_state: BTreeMap::new(),
            node_state: None,
            cidr_state: Vec::new(),
            revision: 0,
            emitted_initial: false,
            api_events: 0,
        }
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Objects received from sources so far (list items and watch events).
    pub fn api_events(&self) -> u64 {
        self.api_events
    }

    /// Every source has completed its first list.
    pub fn is_synced(&self) -> bool {
        self.synced.iter().all(|s| *s)
    }

    pub fn node_name(&self) -> &str {
        &self.cfg.node_name
    }

    pub fn services(&self) -> impl Iterator<Item = &Arc<ServiceState>> {
        self.state.values()
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            node: self.cfg.node_name.clone(),
            revision: self.revision,
            services: self.state.values().cloned().collect(),
            pods: self.pod_state.values().cloned().collect(),
            service_cidrs: self.cidr_state.clone(),
        }
    }

    fn reject(&self, r: &Rejection) {
        tracing::warn!(kind = %r.kind, object = %r.object, reason = r.reason.as_str(), "skipping malformed input: {}", r.detail);
        self.metrics.rejected(r.kind, r.reason);
    }

    pub fn handle(&mut self, event: SourceEvent) {
        match event {
            SourceEvent::ListBegin(kind) => {
                self.listing[kind.index()] = Some(HashSet::new());
            }
            SourceEvent::ListDone(kind) => self.list_done(kind),
            SourceEvent::Apply(obj) => {
                self.count_event(obj.kind());
                self.apply(obj);
            }
            SourceEvent::Delete(obj) => {
                self.count_event(obj.kind());
                match ingest::key_of(obj.kind(), obj.meta()) {
                    Ok(key) => self.remove(obj.kind(), &key),
                    Err(r) => self.reject(&r),
                }
            }
        }
    }

    fn count_event(&mut self, kind: Kind) {
        self.api_events += 1;
        self.metrics.api_event(kind);
    }

    fn apply(&mut self, obj: Object) {
        let kind = obj.kind();
        let key = match ingest::key_of(kind, obj.meta()) {
            Ok(key) => ObjKey {
                namespace: self.interner.get(&key.namespace),
                name: key.name,
            },
            Err(r) => return self.reject(&r),
        };
        if let Some(seen) = self.listing[kind.index()].as_mut() {
            // Seen in this list even if malformed: its last good version stays.
            seen.insert(key.clone());
        }
        match obj {
            Object::Service(svc) => match ingest::service(&svc, &self.ingest_cfg) {
                Ok(ing) => {
                    ing.warnings.iter().for_each(|w| self.reject(w));
                    match ing.record {
                        Some(rec) => self.set_service(key, rec),
                        None => self.remove(kind, &key),
                    }
                }
                Err(r) => self.reject(&r),
            },
            Object::EndpointSlice(slice) => {
                match ingest::endpoint_slice(&slice, &self.ingest_cfg) {
                    Ok(ing) => {
                        ing.warnings.iter().for_each(|w| self.reject(w));
                        match ing.record {
                            Some(rec) => self.set_slice(key, rec),
                            None => self.remove(kind, &key),
                        }
                    }
                    Err(r) => self.reject(&r),
                }
            }
            Object::Node(node) => match ingest::node(&node, &self.ingest_cfg) {
                Ok(ing) => {
                    ing.warnings.iter().for_each(|w| self.reject(w));
                    if let Some(info) = ing.record {
                        self.set_node(Some(info));
                    }
                }
                Err(r) => self.reject(&r),
            },
            Object::Pod(pod) => match ingest::pod(&pod, &self.ingest_cfg) {
                Ok(ing) => {
                    ing.warnings.iter().for_each(|w| self.reject(w));
                    match ing.record {
                        Some(rec) => {
                            if self.pods.get(&key).map(|p| &**p) != Some(&rec) {
                                self.pods.insert(key.clone(), Arc::new(rec));
                                self.dirty_pods.insert(key);
                            }
                        }
                        None => self.remove(kind, &key),
                    }
                }
                Err(r) => self.reject(&r),
            },
            Object::ServiceCidr(obj) => match ingest::service_cidr(&obj) {
                Ok(ing) => {
                    ing.warnings.iter().for_each(|w| self.reject(w));
                    if let Some(cidrs) = ing.record {
                        self.service_cidrs.insert(key, cidrs);
                    }
                }
                Err(r) => self.reject(&r),
            },
        }
    }

    fn set_service(&mut self, key: ObjKey, mut rec: ServiceRecord) {
        if self.services.get(&key) == Some(&rec) {
            return;
        }
        for p in &mut rec.ports {
            p.name = self.interner.get(&p.name);
        }
        self.services.insert(key.clone(), rec);
        self.metrics.service_changed();
        self.dirty_services.insert(key);
    }

    fn set_slice(&mut self, key: ObjKey, mut rec: SliceRecord) {
        rec.service.namespace = self.interner.get(&rec.service.namespace);
        for p in &mut rec.ports {
            p.name = self.interner.get(&p.name);
        }
        for ep in &mut rec.endpoints {
            for z in ep.zone_hints.iter_mut() {
                *z = self.interner.get(z);
            }
        }
        if let Some(old) = self.slices.get(&key) {
            if *old == rec {
                return;
            }
            if old.service != rec.service {
                let old_service = old.service.clone();
                self.unindex_slice(&old_service, &key);
                self.dirty_services.insert(old_service);
            }
        }
        if let Some(t) = rec.trigger_time
            && t >= self.started
        {
            self.pending_triggers.push(t);
            self.metrics.queued_now();
        }
        let names = self
            .slices_by_service
            .entry(rec.service.clone())
            .or_default();
        if let Err(at) = names.binary_search(&key.name) {
            names.insert(at, key.name.clone());
        }
        self.dirty_services.insert(rec.service.clone());
        self.slices.insert(key, rec);
        self.metrics.endpoints_changed();
    }

    fn unindex_slice(&mut self, service: &ObjKey, slice: &ObjKey) {
        if let Some(names) = self.slices_by_service.get_mut(service) {
            names.retain(|n| *n != slice.name);
            if names.is_empty() {
                self.slices_by_service.remove(service);
            }
        }
    }

    fn set_node(&mut self, info: Option<NodeInfo>) {
        if self.node != info {
            self.node = info;
            // Zone and addresses feed every service's topology and NodePort frontends.
            self.all_services_dirty = true;
        }
    }

    fn remove(&mut self, kind: Kind, key: &ObjKey) {
        match kind {
            Kind::Service => {
                if self.services.remove(key).is_some() {
                    self.metrics.service_changed();
                    self.dirty_services.insert(key.clone());
                }
            }
            Kind::EndpointSlice => {
                if let Some(old) = self.slices.remove(key) {
                    self.unindex_slice(&old.service, key);
                    self.metrics.endpoints_changed();
                    self.dirty_services.insert(old.service);
                }
            }
            Kind::Node => {
                if *key.name == *self.cfg.node_name {
                    self.set_node(None);
                }
            }
            Kind::Pod => {
                if self.pods.remove(key).is_some() {
                    self.dirty_pods.insert(key.clone());
                }
            }
            Kind::ServiceCidr => {
                self.service_cidrs.remove(key);
            }
        }
    }

    fn list_done(&mut self, kind: Kind) {
        self.synced[kind.index()] = true;
        let Some(seen) = self.listing[kind.index()].take() else {
            return;
        };
        let gone: Vec<ObjKey> = match kind {
            Kind::Service => self
                .services
                .keys()
                .filter(|k| !seen.contains(*k))
                .cloned()
                .collect(),
            Kind::EndpointSlice => self
                .slices
                .keys()
                .filter(|k| !seen.contains(*k))
                .cloned()
                .collect(),
            Kind::Pod => self
                .pods
                .keys()
                .filter(|k| !seen.contains(*k))
                .cloned()
                .collect(),
            Kind::ServiceCidr => self
                .service_cidrs
                .keys()
                .filter(|k| !seen.contains(*k))
                .cloned()
                .collect(),
            Kind::Node => {
                let me = seen.iter().any(|k| *k.name == *self.cfg.node_name);
                if !me {
                    self.set_node(None);
                }
                Vec::new()
            }
        };
        for key in gone {
            self.remove(kind, &key);
        }
    }

    /// Recomputes what changed since the last sync. Returns `None` until every source has
    /// listed once, and when nothing changed (no revision for irrelevant events).
    pub fn sync(&mut self) -> Option<Update> {
        if !self.is_synced() {
            return None;
        }
        let start = Instant::now();
        let dirty: Vec<ObjKey> = if std::mem::take(&mut self.all_services_dirty) {
            self.dirty_services.clear();
            let mut all: BTreeSet<ObjKey> = self.services.keys().cloned().collect();
            all.extend(self.state.keys().cloned());
            all.into_iter().collect()
        } else {
            let mut d: Vec<ObjKey> = self.dirty_services.drain().collect();
            d.sort();
            d
        };
        let ctx = NodeContext {
            node: self.node.as_ref(),
            nodeport_addresses: &self.cfg.nodeport_addresses,
            nodeport_primary: self.cfg.nodeport_primary,
            prefer_same_node: self.cfg.prefer_same_node,
        };
        let mut update = Update::default();
        for key in dirty {
            let new = self.services.get(&key).map(|rec| {
                let slices: Vec<&SliceRecord> = self
                    .slices_by_service
                    .get(&key)
                    .into_iter()
                    .flatten()
                    .filter_map(|name| {
                        self.slices.get(&ObjKey {
                            namespace: key.namespace.clone(),
                            name: name.clone(),
                        })
                    })
                    .collect();
                compute::service_state(&key, rec, &slices, ctx)
            });
            let old = self.state.get(&key);
            if old.map(|o| &**o) == new.as_ref() {
                continue;
            }
            let new = new.map(Arc::new);
            let old = match &new {
                Some(n) => self.state.insert(key.clone(), n.clone()),
                None => self.state.remove(&key),
            };
            self.metrics
                .service_replaced(old.as_deref(), new.as_deref());
            update.services.push(ServiceChange { key, old, new });
        }
        let mut dirty_pods: Vec<ObjKey> = self.dirty_pods.drain().collect();
        dirty_pods.sort();
        for key in dirty_pods {
            let new = self.pods.get(&key).cloned();
            if self.pod_state.get(&key) == new.as_ref() {
                continue;
            }
            let old = match &new {
                Some(n) => self.pod_state.insert(key.clone(), n.clone()),
                None => self.pod_state.remove(&key),
            };
            update.pods.push(PodChange { key, old, new });
        }
        let initial = !self.emitted_initial;
        if initial || self.node_state != self.node {
            self.node_state = self.node.clone();
            update.node = Some(self.node.clone().unwrap_or_default());
        }
        let mut cidrs: Vec<IpNet> = self.service_cidrs.values().flatten().copied().collect();
        cidrs.sort();
        cidrs.dedup();
        if initial || self.cidr_state != cidrs {
            self.cidr_state = cidrs.clone();
            update.service_cidrs = Some(cidrs);
        }
        update.trigger_times = std::mem::take(&mut self.pending_triggers);
        self.metrics.synced(start.elapsed());
        if update.is_empty() && !initial {
            return None;
        }
        self.emitted_initial = true;
        self.revision += 1;
        update.revision = self.revision;
        update.initial = initial;
        self.metrics
            .revision(self.revision, self.state.len(), self.pod_state.len());
        Some(update)
    }
}

/// Shares one allocation per distinct string. Only for low-cardinality values (namespaces, port
/// names, zones): entries are never dropped.
#[derive(Default)]
struct Interner(std::collections::HashSet<Arc<str>>);

impl Interner {
    fn get(&mut self, s: &Arc<str>) -> Arc<str> {
        if let Some(existing) = self.0.get(s) {
            return existing.clone();
        }
        self.0.insert(s.clone());
        s.clone()
    }
}

#[cfg(test)]
mod tests;
