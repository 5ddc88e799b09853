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
    /// ExternalIP addresses of the Node); or `primary` (alone), as kube-proxy: the Node's
    /// primary IP of each family (its first InternalIP, else its first ExternalIP).
    #[arg(long, value_delimiter = ',', value_parser = parse_nodeport_address)]
    pub nodeport_addresses: Vec<NodePortAddress>,
    /// Honour node hints (trafficDistribution PreferSameNode), as with kube-proxy's
    /// PreferSameTrafficDistribution feature gate.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub prefer_same_node: bool,
    /// How often a file source checks its file for changes, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub file_poll_ms: u64,
}

/// One `--nodeport-addresses` item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodePortAddress {
    Cidr(IpNet),
    /// The Node's primary IPs (kube-proxy's `primary`).
    Primary,
}

fn parse_nodeport_address(s: &str) -> Result<NodePortAddress, String> {
    if s.trim() == "primary" {
        return Ok(NodePortAddress::Primary);
    }
    IpNet::parse(s.trim())
        .map(NodePortAddress::Cidr)
        .ok_or_else(|| format!("{s:?} is neither a CIDR (like 10.0.0.0/8) nor `primary`"))
}

impl EnlsArgs {
    /// Refuses what kube-proxy refuses: `primary` together with CIDRs.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.nodeport_primary() && self.nodeport_addresses.len() > 1 {
            anyhow::bail!("--nodeport-addresses: `primary` cannot be combined with CIDRs");
        }
        Ok(())
    }

    /// The CIDRs of `--nodeport-addresses` (empty: no restriction by prefix).
    pub fn nodeport_prefixes(&self) -> Vec<IpNet> {
        self.nodeport_addresses
            .iter()
            .filter_map(|a| match a {
                NodePortAddress::Cidr(net) => Some(*net),
                NodePortAddress::Primary => None,
            })
            .collect()
    }

    /// `--nodeport-addresses primary`.
    pub fn nodeport_primary(&self) -> bool {
        self.nodeport_addresses.contains(&NodePortAddress::Primary)
    }

    pub fn enls_config(&self) -> EnlsConfig {
        EnlsConfig {
            node_name: self.node.clone(),
            service_proxy_name: self.service_proxy_name.clone(),
            nodeport_addresses: self.nodeport_prefixes(),
            nodeport_primary: self.nodeport_primary(),
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
