//! Kubernetes Events, as kube-proxy records them: a Normal `Starting` on the Node when the
//! agent starts, and Warnings on a Service the node cannot serve as asked
//! (`FailedToStartServiceHealthcheck`: its healthCheckNodePort is held by another process;
//! `FailedToProgramService`: its entries did not fit in the maps; `UnsupportedProtocol`: its SCTP
//! ports are left out of the maps). `kubectl describe node` and
//! `kubectl describe service` show them, `kubectl get events` lists them. The log says the same.
//!
//! ```text
//! agent start / health servers / programmer ──▶ Events::record (never waits; drops when
//!     256 are queued) ──▶ publisher task ──▶ kube-rs Recorder ──▶ events.k8s.io/v1 Events
//! ```
//!
//! Only with `--source kube`: a manifest file has no API server to tell. A repeat of the same
//! event within six minutes updates its series (count, last seen) instead of adding another
//! (kube-rs's Recorder). Publishing failures (no RBAC for events, the API server away) are
//! logged and counted, and affect nothing else.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter},
};
use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use tokio::sync::mpsc;

/// The Events' `reportingController`.
pub const CONTROLLER: &str = "tollgate";

/// Events waiting to be published; more are dropped (and counted).
const QUEUE: usize = 256;

/// The API server refuses notes over 1 kB.
const MAX_NOTE: usize = 1024;

type Labels = [(&'static str, &'static str); 1];

/// `tollgate_kubernetes_events_total{result}`: published, failed (the API server refused or
/// could not be reached) or dropped (the queue was full).
#[derive(Clone)]
pub struct EventMetrics {
    events: Family<Labels, Counter>,
}

impl EventMetrics {
    pub fn register(reg: &mut Registry) -> Self {
        let m = Self {
            events: Family::default(),
        };
        reg.register(
            "tollgate_kubernetes_events",
            "Kubernetes Events the agent recorded, by result (published, failed, dropped)",
            m.events.clone(),
        );
        m
    }

    /// Counters registered nowhere (tests, tools).
    pub fn detached() -> Self {
        Self::register(&mut Registry::default())
    }

    fn count(&self, result: &'static str) {
        self.events.get_or_create(&[("result", result)]).inc();
    }
}

/// The object an Event is about.
#[derive(Debug, Clone, PartialEq)]
pub struct Regarding(ObjectReference);

impl Regarding {
    /// A Node, with its name as UID, as kubelet and kube-proxy record it (`kubectl describe
    /// node` looks for that UID).
    pub fn node(name: &str) -> Self {
        Self(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(name.into()),
            uid: Some(name.into()),
            ..ObjectReference::default()
        })
    }

    /// A Service; `uid` as its metadata says (`kubectl describe service` matches it), left out
    /// when unknown.
    pub fn service(namespace: &str, name: &str, uid: &str) -> Self {
        Self(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            uid: (!uid.is_empty()).then(|| uid.into()),
            ..ObjectReference::default()
        })
    }
}

/// One Event to record.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub warning: bool,
    /// Why, in PascalCase (`kubectl describe`'s Reason column).
    pub reason: &'static str,
    /// What was done or tried, in PascalCase.
    pub action: &'static str,
    /// The message, cut to 1 kB.
    pub note: String,
}

/// Where the agent's Events go. Cloning is cheap; every clone feeds the same publisher.
#[derive(Clone)]
pub struct Events {
    node: Arc<str>,
    queue: Option<mpsc::Sender<(Regarding, Event)>>,
    metrics: EventMetrics,
}

impl Events {
    /// Events that are only logged by their callers (the file source: no API server).
    pub fn off(node: &str, metrics: EventMetrics) -> Self {
        Self {
            node: node.into(),
            queue: None,
            metrics,
        }
    }

    /// Publishes through `client` as controller `tollgate`, instance `node`. Must run inside a
    /// tokio runtime (the publisher is its task); ends when every clone is dropped.
    pub fn start(client: Client, node: &str, metrics: EventMetrics) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let reporter = Reporter {
            controller: CONTROLLER.into(),
            instance: Some(node.into()),
        };
        tokio::spawn(publish(
            Recorder::new(client, reporter),
            rx,
            metrics.clone(),
        ));
        Self {
            node: node.into(),
            queue: Some(tx),
            metrics,
        }
    }

    /// This node's name (for notes: "node X failed to …").
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Queues an Event; never waits (callable from any thread).
    pub fn record(&self, regarding: Regarding, mut event: Event) {
        let Some(queue) = &self.queue else {
            return;
        };
        truncate(&mut event.note, MAX_NOTE);
        if queue.try_send((regarding, event)).is_err() {
            self.metrics.count("dropped");
        }
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
}

async fn publish(
    recorder: Recorder,
    mut rx: mpsc::Receiver<(Regarding, Event)>,
    metrics: EventMetrics,
) {
    while let Some((regarding, event)) = rx.recv().await {
        let ev = KubeEvent {
            type_: if event.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: event.reason.into(),
            note: Some(event.note),
            action: event.action.into(),
            secondary: None,
        };
        match recorder.publish(&ev, &regarding.0).await {
            Ok(()) => metrics.count("published"),
            Err(e) => {
                metrics.count("failed");
                tracing::warn!(
                    reason = event.reason,
                    kind = regarding.0.kind.as_deref().unwrap_or(""),
                    name = regarding.0.name.as_deref().unwrap_or(""),
                    "could not record a Kubernetes Event: {e}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_cut_at_a_character_boundary() {
        let mut s = "é".repeat(600);
        truncate(&mut s, MAX_NOTE);
        assert_eq!(s.len(), 1024);
        let mut s = format!("a{}", "é".repeat(600));
        truncate(&mut s, MAX_NOTE);
        assert_eq!(s.len(), 1023);
        let mut s = "short".to_owned();
        truncate(&mut s, MAX_NOTE);
        assert_eq!(s, "short");
    }

    #[test]
    fn references_carry_what_kubectl_describe_matches() {
        let n = Regarding::node("node1").0;
        assert_eq!(
            (n.kind.as_deref(), n.name.as_deref(), n.uid.as_deref()),
            (Some("Node"), Some("node1"), Some("node1"))
        );
        assert_eq!(n.namespace, None);
        let s = Regarding::service("ns", "web", "u-1").0;
        assert_eq!(
            (s.namespace.as_deref(), s.uid.as_deref()),
            (Some("ns"), Some("u-1"))
        );
        assert_eq!(Regarding::service("ns", "web", "").0.uid, None);
    }

    #[tokio::test]
    async fn off_records_nothing_and_counts_nothing() {
        let mut reg = Registry::default();
        let events = Events::off("node1", EventMetrics::register(&mut reg));
        events.record(
            Regarding::node("node1"),
            Event {
                warning: false,
                reason: "Starting",
                action: "StartTollgate",
                note: String::new(),
            },
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(!text.contains("result="), "{text}");
    }
}
