//! Tollgate: a node agent that replaces kube-proxy with an eBPF dataplane and conceals the cloud
//! metadata server from pods.
//!
//! Data flow (see DESIGN.md): source → enls → dataplane; metadata; admin.

pub mod admin;
pub mod cmd;
pub mod dataplane;
pub mod enls;
pub mod events;
pub mod metadata;
pub mod netif;
pub mod signals;
pub mod source;
pub mod telemetry;
