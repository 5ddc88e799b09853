//! `tollgate metadata-proxy`: the concealing proxy on its own (as k8s-metadata-proxy is run),
//! optionally enforcing pod identity from a source of pods.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};

use crate::{
    admin::{self, AdminState},
    enls::{Enls, EnlsConfig, Update, metrics::EnlsMetrics, runner},
    metadata::{
        self, ProxyReady,
        identity::PodIndex,
        metrics::ProxyMetrics,
        policy::{Policy, PolicyStore},
        proxy::{self, Limits, Proxy, ProxyConfig},
        rules::Flavor,
    },
    source::{self, SourceOptions, SourceSpec},
};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Where the proxy listens.
    #[arg(long, default_value = "127.0.0.1:988")]
    pub listen: SocketAddr,
    /// The real metadata server.
    #[arg(long, default_value = "http://169.254.169.254")]
    pub upstream: String,
    /// Which cloud's rules apply.
    #[arg(long, value_enum, default_value_t = Flavor::Gce)]
    pub flavor: Flavor,
    /// Policy file (per namespace / service account; reloaded when it changes).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// `/metrics`, `/healthz`, `/readyz` (any address: non-localhost is fine).
    #[arg(long, default_value = "127.0.0.1:989")]
    pub metrics_addr: SocketAddr,
    /// AWS: reads need an IMDSv2 session token (X-aws-ec2-metadata-token).
    #[arg(long)]
    pub aws_require_token: bool,
    /// Seconds the upstream has to answer (then 504).
    #[arg(long, default_value_t = 60)]
    pub upstream_timeout: u64,
    /// Seconds a client has to send its request head (then the connection is closed).
    #[arg(long, default_value_t = 10)]
    pub header_timeout: u64,
    /// Connections of one client address served at once (its others wait their turn).
    #[arg(long, default_value_t = Limits::default().connections_per_client)]
    pub max_connections_per_client: usize,
    /// Pods, to enforce identity: `kube` or `file:PATH` (with --node). Without it the
    /// concealment rules apply alone, as with k8s-metadata-proxy.
    #[arg(long, value_parser = clap::value_parser!(SourceSpec), requires = "node")]
    pub source: Option<SourceSpec>,
    /// This node's name (only its pods are known).
    #[arg(long, env = "NODE_NAME")]
    pub node: Option<String>,
    /// kubeconfig for `--source kube`.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// How often a file source checks its file, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub file_poll_ms: u64,
    /// Worker threads serving requests (one serves >10,000 short requests per second).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
}

/// Loads the policy file (if any) and starts watching it.
pub fn policy_store(path: Option<&PathBuf>, metrics: &ProxyMetrics) -> anyhow::Result<PolicyStore> {
    let Some(path) = path else {
        return Ok(PolicyStore::default());
    };
    let policy = Policy::load(path)
        .with_context(|| format!("loading the metadata policy {}", path.display()))?;
    let store = PolicyStore::new(policy);
    let errors = metrics.policy_reload_errors.clone();
    tokio::spawn(
        store
            .clone()
            .watch(path.clone(), Duration::from_secs(2), move |_| {
                errors.inc();
            }),
    );
    Ok(store)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let metrics = ProxyMetrics::register(&mut registry);
    let upstream = args
        .upstream
        .parse()
        .with_context(|| format!("--upstream {}", args.upstream))?;
    let identity = args.source.as_ref().map(|_| PodIndex::new());
    let cfg = ProxyConfig {
        flavor: args.flavor,
        upstream,
        upstream_timeout: Duration::from_secs(args.upstream_timeout.max(1)),
        aws_require_token: args.aws_require_token,
        identity: identity.clone(),
        policy: policy_store(args.policy.as_ref(), &metrics)?,
        limits: Limits {
            header_timeout: Duration::from_secs(args.header_timeout.max(1)),
            connections_per_client: args.max_connections_per_client.max(1),
            ..Limits::default()
        },
    };
    let proxy = Proxy::new(cfg, metrics).map_err(anyhow::Error::msg)?;
    let listener = proxy::bind(args.listen).with_context(|| format!("binding {}", args.listen))?;
    let bound = listener.local_addr()?;

    if let (Some(spec), Some(index)) = (&args.source, identity) {
        let node = args.node.clone().unwrap_or_default();
        let engine = Enls::new(
            EnlsConfig {
                node_name: node.clone(),
                service_proxy_name: None,
                nodeport_addresses: Vec::new(),
                nodeport_primary: false,
                prefer_same_node: true,
            },
            EnlsMetrics::register(&mut registry),
        );
        let (events_tx, events_rx) = mpsc::channel(256);
        let (updates_tx, updates_rx) = mpsc::channel::<Arc<Update>>(64);
        let (status_tx, _status_rx) = watch::channel(runner::EnlsStatus::default());
        let opts = SourceOptions {
            node_name: node,
            service_proxy_name: None,
            kubeconfig: args.kubeconfig.clone(),
            file_poll: Duration::from_millis(args.file_poll_ms.max(10)),
        };
        // The tasks run on (a dropped JoinHandle detaches).
        source::start(spec, &opts, events_tx)
            .await
            .context("starting the source")?;
        tokio::spawn(runner::run(engine, events_rx, vec![updates_tx], status_tx));
        tokio::spawn(metadata::follow_pods(index, updates_rx));
    }

    let state = Arc::new(AdminState {
        registry,
        health: None,
        ready: Some(Arc::new(ProxyReady(proxy.clone()))),
    });
    let (metrics_addr, _admin) = admin::serve(args.metrics_addr, state)
        .await
        .with_context(|| format!("binding {}", args.metrics_addr))?;
    tracing::info!(
        listen = %bound,
        %metrics_addr,
        flavor = args.flavor.as_str(),
        upstream = %args.upstream,
        identity = args.source.is_some(),
        "metadata proxy listening"
    );
    tokio::select! {
        r = crate::signals::terminated() => r?,
        _ = proxy::serve(listener, proxy) => {}
    }
    Ok(())
}
