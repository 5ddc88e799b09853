//! The Kubernetes source: one kube-rs watcher per kind. The watcher re-lists on 410 Gone or a
//! broken stream; its Init/InitApply/InitDone events map onto ListBegin/Apply/ListDone, so a
//! re-list emits no spurious deletions.

use std::fmt::Debug;

use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Node, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::ServiceCIDR,
};
use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt as _, watcher},
};
use serde::de::DeserializeOwned;
use tokio::{sync::mpsc, task::JoinHandle};

use super::{SourceError, SourceOptions};
use crate::enls::{Object, SourceEvent, ingest};

/// The client for `--kubeconfig`, else the in-cluster config, else `$KUBECONFIG`/`~/.kube`.
pub async fn client(opts: &SourceOptions) -> Result<Client, SourceError> {
    let err = |e: &dyn std::fmt::Display| SourceError::Kube(e.to_string());
    let config = match &opts.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| SourceError::Kube(format!("reading {}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| err(&e))?
        }
        None => Config::infer().await.map_err(|e| err(&e))?,
    };
    Client::try_from(config).map_err(|e| err(&e))
}

/// Objects per list page.
const LIST_PAGE_SIZE: u32 = 100;

/// One watcher per kind, on `client`.
pub fn start(
    client: &Client,
    opts: &SourceOptions,
    tx: mpsc::Sender<SourceEvent>,
) -> Vec<JoinHandle<()>> {
    // R1: without a proxy name, services claimed by any proxy are filtered by the API server;
    // with one, the ENLS keeps ours (and unlabelled ones) and drops the rest.
    // Small pages bound the memory a (re-)list holds at once: a page of objects decoded and
    // buffered in the watcher while the engine digests it.
    let base = watcher::Config::default().page_size(LIST_PAGE_SIZE);
    let services = match &opts.service_proxy_name {
        None => base
            .clone()
            .labels(&format!("!{}", ingest::LABEL_SERVICE_PROXY_NAME)),
        Some(_) => base.clone(),
    };
    let slices = base.clone().labels(&format!("!{}", ingest::LABEL_HEADLESS));
    let node = base
        .clone()
        .fields(&format!("metadata.name={}", opts.node_name));
    let pods = base
        .clone()
        .fields(&format!("spec.nodeName={}", opts.node_name));
    vec![
        spawn_watch(
            Api::<Service>::all(client.clone()),
            services,
            ingest::Kind::Service,
            Needed::Always,
            |o| Object::Service(Box::new(o)),
            tx.clone(),
        ),
        spawn_watch(
            Api::<EndpointSlice>::all(client.clone()),
            slices,
            ingest::Kind::EndpointSlice,
            Needed::Always,
            |o| Object::EndpointSlice(Box::new(o)),
            tx.clone(),
        ),
        spawn_watch(
            Api::<Node>::all(client.clone()),
            node,
            ingest::Kind::Node,
            Needed::Always,
            |o| Object::Node(Box::new(o)),
            tx.clone(),
        ),
        spawn_watch(
            Api::<Pod>::all(client.clone()),
            pods,
            ingest::Kind::Pod,
            Needed::Always,
            |o| Object::Pod(Box::new(o)),
            tx.clone(),
        ),
        spawn_watch(
            Api::<ServiceCIDR>::all(client.clone()),
            base,
            ingest::Kind::ServiceCidr,
            Needed::IfServed {
                without: "traffic to unallocated Service IPs is not dropped",
            },
            |o| Object::ServiceCidr(Box::new(o)),
            tx,
        ),
    ]
}

/// Whether the agent waits for a kind's list before its state is complete.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Needed {
    Always,
    /// ServiceCIDRs (GA in Kubernetes 1.33): an API server that does not serve them, or a role
    /// that may not list them, has none; `without` says what the node does not do then.
    IfServed {
        without: &'static str,
    },
}

/// The API server does not serve the kind (404) or the agent may not list it (403).
fn not_served(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 404 || s.code == 403,
        _ => false,
    }
}

fn spawn_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: ingest::Kind,
    needed: Needed,
    wrap: fn(K) -> Object,
    tx: mpsc::Sender<SourceEvent>,
) -> JoinHandle<()>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = watcher(api, config).default_backoff().boxed();
        let mut listed = false;
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(watcher::Event::Init) => SourceEvent::ListBegin(kind),
                Ok(watcher::Event::InitApply(o) | watcher::Event::Apply(o)) => {
                    SourceEvent::Apply(wrap(o))
                }
                Ok(watcher::Event::Delete(o)) => SourceEvent::Delete(wrap(o)),
                Ok(watcher::Event::InitDone) => {
                    listed = true;
                    SourceEvent::ListDone(kind)
                }
                Err(e)
                    if let Needed::IfServed { without } = needed
                        && not_served(&e) =>
                {
                    // A kind an older API server (or a role without it) does not serve: an
                    // empty list, so the agent is not held up. The watcher keeps retrying
                    // (quietly) and a later list replaces it.
                    if listed {
                        tracing::debug!(%kind, "still cannot list: {e}");
                        continue;
                    }
                    tracing::warn!(%kind, "cannot list it ({e}): taken as none, so {without}, until it can be listed");
                    listed = true;
                    if tx.send(SourceEvent::ListBegin(kind)).await.is_err() {
                        return;
                    }
                    SourceEvent::ListDone(kind)
                }
                Err(e) => {
                    // The watcher backs off and retries (re-listing when needed).
                    tracing::warn!(%kind, "watch failed, retrying: {e}");
                    continue;
                }
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
    })
}
