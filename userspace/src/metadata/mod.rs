//! Metadata concealment, userspace half: the proxy pod connections to the metadata server are
//! redirected to (by the socket hooks, see `dataplane`), with its target normalisation, the
//! flavour's concealment rules, pod identity from the ENLS pod index, and per-pod policy.
//!
//! Data flow: request → [`target`] (parse once) → [`rules`] (flavour) → [`identity`] (source
//! IP → pod) → [`policy`] (namespace / service account) → upstream, with [`metrics`] throughout.

pub mod identity;
pub mod invariants;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod rules;
pub mod target;

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::enls::Update;

/// Feeds the pod index from ENLS updates until the ENLS stops.
pub async fn follow_pods(index: Arc<identity::PodIndex>, mut updates: mpsc::Receiver<Arc<Update>>) {
    while let Some(u) = updates.recv().await {
        index.apply(&u.pods, u.initial);
    }
}

/// `/readyz` of a proxy.
pub struct ProxyReady(pub Arc<proxy::Proxy>);

impl crate::admin::ReadyCheck for ProxyReady {
    fn check(&self) -> futures::future::BoxFuture<'_, Result<String, String>> {
        Box::pin(self.0.self_check())
    }
}
