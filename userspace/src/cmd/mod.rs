//! The `tollgate` subcommands.

pub mod enls;
pub mod maps;
pub mod metadata_proxy;
pub mod run;

use std::path::PathBuf;

use crate::{
    enls::{EnlsConfig, model::IpNet},
    source::{SourceOptions, SourceSpec},
};

/// Options shared by everything that builds the node-local state (`run`, `enls`).
#[derive(clap::Args, Debug, Clone)]
pub struct EnlsArgs {
    /// Where objects come from: `kube` (the API server) or `file:PATH` (a manifest file with
    /// Services, EndpointSlices, Nodes and Pods, re-read when it changes).
    #[arg(long, value_parser = clap::value_parser!(SourceSpec))]
    pub source: SourceSpec,
    /// This node's name (as in the Node object).
    #[arg(long, env = "NODE_NAME")]
    pub node: String,
    /// kubeconfig for `--source kube` (default: in-cluster, then $KUBECONFIG / ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Serve services labelled service.kubernetes.io/service-proxy-name=NAME (besides
    /// unlabelled ones); services claimed by other names are skipped.
    #[arg(long)]
    pub service_proxy_name: Option<String>,
    /// Only node addresses in these CIDRs get NodePort frontends (default: all InternalIP and
    /// ExternalIP addresses of the Node).
    #[arg(long, value_delimiter = ',', value_parser = parse_cidr)]
    pub nodeport_addresses: Vec<IpNet>,
    /// Honour node hints (trafficDistribution PreferSameNode), as with kube-proxy's
    /// PreferSameTrafficDistribution feature gate.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub prefer_same_node: bool,
    /// How often a file source checks its file for changes, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub file_poll_ms: u64,
}

fn parse_cidr(s: &str) -> Result<IpNet, String> {
    IpNet::parse(s).ok_or_else(|| format!("{s:?} is not a CIDR (like 10.0.0.0/8)"))
}

impl EnlsArgs {
    pub fn enls_config(&self) -> EnlsConfig {
        EnlsConfig {
            node_name: self.node.clone(),
            service_proxy_name: self.service_proxy_name.clone(),
            nodeport_addresses: self.nodeport_addresses.clone(),
            prefer_same_node: self.prefer_same_node,
        }
    }

    pub fn source_options(&self) -> SourceOptions {
        SourceOptions {
            node_name: self.node.clone(),
            service_proxy_name: self.service_proxy_name.clone(),
            kubeconfig: self.kubeconfig.clone(),
            file_poll: std::time::Duration::from_millis(self.file_poll_ms.max(10)),
        }
    }
}
