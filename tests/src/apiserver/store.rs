//! The double's object store: a global resourceVersion, a bounded event log for resuming
//! watches (older versions answer 410 Gone), and a broadcast of live events.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
};

use serde_json::{Value, json};
use tokio::sync::broadcast;

/// A resource type the double serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    pub kind: &'static str,
    pub plural: &'static str,
    /// `v1` or `group/version`.
    pub api_version: &'static str,
    pub namespaced: bool,
}

pub const RESOURCES: &[Resource] = &[
    Resource {
        kind: "Service",
        plural: "services",
        api_version: "v1",
        namespaced: true,
    },
    Resource {
        kind: "EndpointSlice",
        plural: "endpointslices",
        api_version: "discovery.k8s.io/v1",
        namespaced: true,
    },
    Resource {
        kind: "Node",
        plural: "nodes",
        api_version: "v1",
        namespaced: false,
    },
    Resource {
        kind: "Pod",
        plural: "pods",
        api_version: "v1",
        namespaced: true,
    },
    Resource {
        kind: "ServiceCIDR",
        plural: "servicecidrs",
        api_version: "networking.k8s.io/v1",
        namespaced: false,
    },
    Resource {
        kind: "Event",
        plural: "events",
        api_version: "events.k8s.io/v1",
        namespaced: true,
    },
    Resource {
        kind: "ConfigMap",
        plural: "configmaps",
        api_version: "v1",
        namespaced: true,
    },
];

pub fn resource_by_kind(kind: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.kind == kind)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change, with the object before it (to tell selector entries and exits apart).
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub kind: &'static str,
    pub event: EventType,
    pub old: Option<Value>,
    pub new: Value,
}

pub type Key = (&'static str, String, String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("conflict on {0}: the object has been modified")]
    Conflict(String),
    #[error("invalid object: {0}")]
    Invalid(String),
    #[error("too old resource version: {requested} ({oldest})")]
    Gone { requested: u64, oldest: u64 },
}

impl StoreError {
    pub fn code(&self) -> u16 {
        match self {
            Self::NotFound(_) => 404,
            Self::AlreadyExists(_) | Self::Conflict(_) => 409,
            Self::Invalid(_) => 422,
            Self::Gone { .. } => 410,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "NotFound",
            Self::AlreadyExists(_) => "AlreadyExists",
            Self::Conflict(_) => "Conflict",
            Self::Invalid(_) => "Invalid",
            Self::Gone { .. } => "Expired",
        }
    }

    /// The `Status` object the API server answers with.
    pub fn status(&self) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Status", "metadata": {},
            "status": "Failure", "message": self.to_string(),
            "reason": self.reason(), "code": self.code(),
        })
    }
}

pub struct Store {
    pub rv: u64,
    pub objects: BTreeMap<Key, Value>,
    log: VecDeque<Arc<Change>>,
    log_capacity: usize,
    /// Events with rv ≤ this are forgotten: resuming from before it answers 410.
    compacted: u64,
    uid: u64,
    pub tx: broadcast::Sender<Arc<Change>>,
}

impl Store {
    pub fn new(log_capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(65_536);
        Self {
            rv: 1,
            objects: BTreeMap::new(),
            log: VecDeque::new(),
            log_capacity,
            compacted: 1,
            uid: 0,
            tx,
        }
    }

    fn record(&mut self, kind: &'static str, event: EventType, old: Option<Value>, new: Value) {
        let change = Arc::new(Change {
            rv: self.rv,
            kind,
            event,
            old,
            new,
        });
        self.log.push_back(change.clone());
        while self.log.len() > self.log_capacity {
            if let Some(c) = self.log.pop_front() {
                self.compacted = c.rv;
            }
        }
        let _ = self.tx.send(change);
    }

    /// Forgets the event log: every watch resuming from an older version gets 410 Gone.
    pub fn compact(&mut self) {
        self.log.clear();
        self.compacted = self.rv;
    }

    pub fn key_of(res: &Resource, obj: &Value) -> Result<Key, StoreError> {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| StoreError::Invalid("metadata.name is required".into()))?;
        let ns = if res.namespaced {
            obj.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .unwrap_or("default")
        } else {
            ""
        };
        Ok((res.kind, ns.to_owned(), name.to_owned()))
    }

    fn stamp(
        &mut self,
        res: &Resource,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), StoreError> {
        let Some(map) = obj.as_object_mut() else {
            return Err(StoreError::Invalid("not a JSON object".into()));
        };
        map.insert("apiVersion".into(), res.api_version.into());
        map.insert("kind".into(), res.kind.into());
        let meta = map
            .entry("metadata")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| StoreError::Invalid("metadata is not an object".into()))?;
        if res.namespaced && !meta.contains_key("namespace") {
            meta.insert("namespace".into(), "default".into());
        }
        meta.insert("resourceVersion".into(), self.rv.to_string().into());
        let (uid, created) = match old {
            Some(o) => (
                o.pointer("/metadata/uid").cloned().unwrap_or_default(),
                o.pointer("/metadata/creationTimestamp")
                    .cloned()
                    .unwrap_or_default(),
            ),
            None => {
                self.uid += 1;
                (
                    format!("00000000-0000-4000-8000-{:012x}", self.uid).into(),
                    "2026-01-01T00:00:00Z".into(),
                )
            }
        };
        meta.insert("uid".into(), uid);
        meta.insert("creationTimestamp".into(), created);
        Ok(())
    }

    pub fn create(&mut self, res: &'static Resource, mut obj: Value) -> Result<Value, StoreError> {
        let key = Self::key_of(res, &obj)?;
        if self.objects.contains_key(&key) {
            return Err(StoreError::AlreadyExists(format!(
                "{} {}/{}",
                res.kind, key.1, key.2
            )));
        }
        self.rv += 1;
        self.stamp(res, &mut obj, None)?;
        self.objects.insert(key, obj.clone());
        self.record(res.kind, EventType::Added, None, obj.clone());
        Ok(obj)
    }

    /// PUT semantics: the object must exist; a stale resourceVersion is a conflict.
    pub fn update(&mut self, res: &'static Resource, mut obj: Value) -> Result<Value, StoreError> {
        let key = Self::key_of(res, &obj)?;
        let Some(old) = self.objects.get(&key).cloned() else {
            return Err(StoreError::NotFound(format!(
                "{} {}/{}",
                res.kind, key.1, key.2
            )));
        };
        let given = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str);
        let current = old
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str);
        if given.is_some_and(|g| !g.is_empty() && Some(g) != current) {
            return Err(StoreError::Conflict(format!(
                "{} {}/{}",
                res.kind, key.1, key.2
            )));
        }
        self.rv += 1;
        self.stamp(res, &mut obj, Some(&old))?;
        self.objects.insert(key, obj.clone());
        self.record(res.kind, EventType::Modified, Some(old), obj.clone());
        Ok(obj)
    }

    /// Create or update, ignoring resourceVersion (the test driver's convenience).
    pub fn apply(&mut self, res: &'static Resource, mut obj: Value) -> Result<Value, StoreError> {
        let key = Self::key_of(res, &obj)?;
        if self.objects.contains_key(&key) {
            if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("resourceVersion");
            }
            self.update(res, obj)
        } else {
            self.create(res, obj)
        }
    }

    pub fn delete(
        &mut self,
        res: &'static Resource,
        ns: &str,
        name: &str,
    ) -> Result<Value, StoreError> {
        let ns = if res.namespaced { ns } else { "" };
        let key = (res.kind, ns.to_owned(), name.to_owned());
        let Some(mut old) = self.objects.remove(&key) else {
            return Err(StoreError::NotFound(format!("{} {ns}/{name}", res.kind)));
        };
        self.rv += 1;
        if let Some(meta) = old.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), self.rv.to_string().into());
        }
        self.record(res.kind, EventType::Deleted, Some(old.clone()), old.clone());
        Ok(old)
    }

    /// Changes of `kind` after `rv`, or 410 if some of them were forgotten.
    pub fn changes_since(&self, kind: &str, rv: u64) -> Result<Vec<Arc<Change>>, StoreError> {
        if rv < self.compacted {
            return Err(StoreError::Gone {
                requested: rv,
                oldest: self.compacted,
            });
        }
        Ok(self
            .log
            .iter()
            .filter(|c| c.rv > rv && c.kind == kind)
            .cloned()
            .collect())
    }
}
