//! Source IP → pod, from the ENLS' pod index (the pods of this node).
//!
//! Only pods that hold their IPs count: a Succeeded or Failed pod's IP may already belong to a
//! new pod, and hostNetwork pods share the node's addresses (and are never redirected). Two
//! live pods claiming one IP is an inconsistency the proxy refuses to guess about.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
};

use crate::enls::{PodChange, model::ObjKey, model::PodIdentity};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Pod(Arc<PodIdentity>),
    Unknown,
    Ambiguous(usize),
}

#[derive(Debug, Default)]
struct Inner {
    pods: HashMap<ObjKey, Arc<PodIdentity>>,
    by_ip: HashMap<IpAddr, Vec<ObjKey>>,
}

/// Shared between the ENLS subscriber (writes) and the proxy (reads).
#[derive(Debug, Default)]
pub struct PodIndex {
    inner: RwLock<Inner>,
    synced: AtomicBool,
}

impl PodIndex {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Applies the pod changes of one ENLS update; `initial` marks the index complete.
    pub fn apply(&self, changes: &[PodChange], initial: bool) {
        let mut g = match self.inner.write() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        };
        for c in changes {
            if let Some(old) = g.pods.remove(&c.key) {
                for ip in &old.ips {
                    if let Some(keys) = g.by_ip.get_mut(ip) {
                        keys.retain(|k| *k != c.key);
                        if keys.is_empty() {
                            g.by_ip.remove(ip);
                        }
                    }
                }
            }
            if let Some(new) = &c.new
                && new.holds_ips()
            {
                for ip in &new.ips {
                    g.by_ip.entry(*ip).or_default().push(c.key.clone());
                }
                g.pods.insert(c.key.clone(), new.clone());
            }
        }
        drop(g);
        if initial {
            self.synced.store(true, Ordering::SeqCst);
        }
    }

    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    pub fn len(&self) -> usize {
        self.inner.read().map(|g| g.pods.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn lookup(&self, ip: IpAddr) -> Lookup {
        // An IPv4-mapped IPv6 peer (a dual-stack listener) is the IPv4 pod.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        let g = match self.inner.read() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        };
        match g.by_ip.get(&ip).map(Vec::as_slice) {
            None | Some([]) => Lookup::Unknown,
            Some([one]) => g
                .pods
                .get(one)
                .map(|p| Lookup::Pod(p.clone()))
                .unwrap_or(Lookup::Unknown),
            Some(many) => Lookup::Ambiguous(many.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, phase: &str, host: bool) -> PodChange {
        PodChange {
            key: ObjKey::new("ns", name),
            old: None,
            new: Some(Arc::new(PodIdentity {
                namespace: "ns".into(),
                name: name.into(),
                uid: format!("uid-{name}").into(),
                service_account: format!("sa-{name}").into(),
                ips: vec![ip.parse().unwrap()],
                host_network: host,
                phase: phase.into(),
            })),
        }
    }

    fn gone(name: &str) -> PodChange {
        PodChange {
            key: ObjKey::new("ns", name),
            old: None,
            new: None,
        }
    }

    fn name(l: Lookup) -> String {
        match l {
            Lookup::Pod(p) => p.name.to_string(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn ip_reuse_and_finished_pods() {
        let idx = PodIndex::new();
        assert!(!idx.synced());
        idx.apply(&[pod("a", "10.0.0.1", "Running", false)], true);
        assert!(idx.synced());
        assert_eq!(name(idx.lookup("10.0.0.1".parse().unwrap())), "a");
        assert_eq!(name(idx.lookup("::ffff:10.0.0.1".parse().unwrap())), "a");
        // a finishes; its IP goes to b.
        idx.apply(
            &[
                pod("a", "10.0.0.1", "Succeeded", false),
                pod("b", "10.0.0.1", "Pending", false),
            ],
            false,
        );
        assert_eq!(name(idx.lookup("10.0.0.1".parse().unwrap())), "b");
        // Two live pods with one IP: no guess.
        idx.apply(&[pod("c", "10.0.0.1", "Running", false)], false);
        assert_eq!(
            idx.lookup("10.0.0.1".parse().unwrap()),
            Lookup::Ambiguous(2)
        );
        idx.apply(&[gone("b")], false);
        assert_eq!(name(idx.lookup("10.0.0.1".parse().unwrap())), "c");
        // hostNetwork pods are never identified by the node's address.
        idx.apply(&[pod("h", "192.168.77.11", "Running", true)], false);
        assert_eq!(
            idx.lookup("192.168.77.11".parse().unwrap()),
            Lookup::Unknown
        );
        assert_eq!(idx.len(), 1);
    }
}
