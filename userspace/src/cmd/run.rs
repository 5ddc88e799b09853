//! `tollgate run`: the node agent.
//!
//! ```text
//! source ──events──▶ ENLS ──updates──▶ programmer (maps; own thread) ──purges──▶ purge task
//!                      ├── status ──▶ admin (/metrics, /healthz, /livez), --stats
//!                      └── updates ──▶ healthCheckNodePort servers (eTP=Local LoadBalancers)
//! start, health servers, programmer ──▶ Kubernetes Events (with --source kube)
//! interfaces (rtnetlink) ──▶ attach TC to pod-facing interfaces as they appear
//! ```

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};

use super::{EnlsArgs, metadata_proxy};
use crate::{
    admin::{
        self, AdminState, Health,
        service_health::{Listen, ServiceHealthMetrics, ServiceHealthServers},
    },
    dataplane::{
        Dataplane, MapSizes, XdpModeArg,
        ifwatch::{self, Glob, IfEvent},
        lbmaps::LbMaps,
        program::{self, DataplaneMetrics, MetadataRedirect, NodeSettings, Programmer},
        sys,
        traffic::{TrafficCollector, TrafficMetrics},
        writer::Writer,
    },
    enls::{
        Enls, Update,
        metrics::{EnlsMetrics, ProgrammingMetrics},
        model::IpNet,
        runner::{self, EnlsStatus},
    },
    events::{Event, EventMetrics, Events, Regarding},
    metadata::{
        ProxyReady,
        identity::PodIndex,
        metrics::ProxyMetrics,
        proxy::{Limits, Proxy, ProxyConfig},
        rules::Flavor,
    },
    source,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub enls: EnlsArgs,
    /// bpffs directory where maps and links are pinned.
    #[arg(long, default_value = "/sys/fs/bpf/tollgate")]
    pub bpffs: PathBuf,
    /// cgroup v2 directory whose processes (pods and host) get socket-level load balancing.
    /// Default: the cgroup v2 root.
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// Uplink interfaces (traffic from outside the node). Default: the default-route interface.
    #[arg(long, value_delimiter = ',')]
    pub uplinks: Vec<String>,
    /// Pod-facing interfaces (host ends of pod veths), as name patterns; attached as they appear.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "veth*,lxc*,cali*,eni*,gke*,azv*,vxlan_sys_*"
    )]
    pub pod_interfaces: Vec<String>,
    /// How XDP is attached to uplinks.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    pub xdp_mode: XdpModeArg,
    /// getpeername() on a TCP socket the socket hooks balanced to a backend shows the service
    /// address, as with kube-proxy's DNAT (Cilium's socket-LB peer option). `false` skips the
    /// per-connection record this needs (its cost: the `--socket-lb-peer=false` column of
    /// BENCHMARKS.md); such sockets then see the backend's address. UDP is always reversed.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub socket_lb_peer: bool,
    /// Host processes reach NodePorts on loopback addresses (127.0.0.0/8), as with
    /// kube-proxy's iptables mode (`--iptables-localhost-nodeports`): `curl 127.0.0.1:30080`
    /// on a node reaches NodePort 30080 (IPv4 only; never from pods, whose loopback is their
    /// own). With `--nodeport-addresses`, only when that includes 127.0.0.1, as kube-proxy
    /// (and the node's first IPv4 address, where the NodePort is looked up).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub localhost_nodeports: bool,
    /// When a backend leaves a UDP service port, destroy the connected UDP sockets the socket
    /// hooks sent to it (their owners get ECONNABORTED and reconnect to a serving backend), as
    /// Cilium does; kube-proxy reaches the same by deleting the UDP conntrack entries. `false`:
    /// such sockets keep sending to the departed backend until they close.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub socket_lb_terminate_udp: bool,
    /// The socket hooks balance only the node's own (host-network) processes, as Cilium's
    /// `socketLB.hostNamespaceOnly`: a pod's connection to a service keeps the service address
    /// in its socket, and its packets are translated on the pod's interface instead (conntrack
    /// per flow). For service meshes (Istio, Linkerd) whose sidecars redirect by the original
    /// destination, and for sandboxed runtimes (KubeVirt, Kata, gVisor).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub socket_lb_host_namespace_only: bool,
    /// How traffic from outside the node (NodePort, externalIPs, LoadBalancer IPs) picks a
    /// backend for a new flow (Cilium's `bpf-lb-algorithm`): `random`, or `maglev`: consistent
    /// hashing of the client address, ports and protocol over a table per service port
    /// (`--maglev-table-size` entries), which every node fills alike, so a flow that enters
    /// through another node (ECMP, a moved LoadBalancer) reaches the same backend, and a
    /// backend that goes moves little more than its own share. Pods and host processes are balanced at connect
    /// time either way. ClientIP session affinity comes first.
    #[arg(long, value_enum, default_value_t = LbAlgorithm::Random)]
    pub lb_algorithm: LbAlgorithm,
    /// Entries of each Maglev table (Cilium's `bpf-lb-maglev-table-size`): one of the primes
    /// 251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071. At least 100 × a
    /// service port's backends gives the least disruption and the most even shares; each
    /// table takes ⌈M / 4096⌉ × 16 KiB. A pinned map keeps the size it was created for
    /// (`tollgate cleanup` applies a larger one).
    #[arg(long, default_value_t = tollgate_common::lb::maglev::DEFAULT_SIZE, value_parser = parse_maglev_size)]
    pub maglev_table_size: u32,
    /// Source ports for SNAT of translated traffic (outside the kernel's ephemeral range).
    #[arg(long, default_value = "61000-65535", value_parser = parse_range)]
    pub snat_port_range: (u16, u16),
    /// Entries of the service, backend, affinity and source-range maps (Cilium's
    /// `bpf-lb-map-max`). A service that does not fit is reported (log, metric
    /// `tollgate_dataplane_write_errors_total{reason="capacity"}`) and programmed as soon as
    /// room frees up; the others are unaffected.
    #[arg(long, default_value_t = tollgate_common::lb::svc::CAPACITY, value_parser = clap::value_parser!(u32).range(16..=16_777_216))]
    pub lb_map_size: u32,
    /// Entries of the connection-tracking maps (per-packet flows and socket-LB choices).
    #[arg(long, default_value_t = tollgate_common::lb::ct::CAPACITY, value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    pub ct_map_size: u32,
    /// Metadata concealment: `gce` or `aws` redirects pod TCP connections to the metadata
    /// server to the embedded proxy with that cloud's rules; `off` leaves them alone.
    #[arg(long, value_enum, default_value_t = MetadataMode::Off)]
    pub metadata: MetadataMode,
    /// The metadata server whose pod traffic is redirected.
    #[arg(long, default_value = "169.254.169.254")]
    pub metadata_address: std::net::Ipv4Addr,
    /// Its ports that are redirected (at most two; GKE also uses 8080).
    #[arg(long, value_delimiter = ',', default_value = "80", num_args = 1..=2)]
    pub metadata_ports: Vec<u16>,
    /// Where the embedded proxy listens; added to `lo` (scope host) when it is not local.
    #[arg(long, default_value = "169.254.169.252:988")]
    pub metadata_proxy_addr: SocketAddr,
    /// The real metadata server the proxy forwards to.
    #[arg(long, default_value = "http://169.254.169.254")]
    pub metadata_upstream: String,
    /// Policy file: which paths each namespace / service account may read (reloaded on change).
    #[arg(long)]
    pub metadata_policy: Option<PathBuf>,
    /// AWS: reads need an IMDSv2 session token.
    #[arg(long)]
    pub metadata_aws_require_token: bool,
    /// Seconds the metadata server has to answer a forwarded request (then 504).
    #[arg(long, default_value_t = 60)]
    pub metadata_upstream_timeout: u64,
    /// Admin HTTP server: /metrics, /healthz, /livez (kube-proxy's healthz port by default).
    #[arg(long, default_value = "0.0.0.0:10256")]
    pub admin_addr: SocketAddr,
    /// /healthz fails when an update waits longer than this to be programmed (seconds;
    /// kube-proxy's 2 × syncPeriod).
    #[arg(long, default_value_t = 60)]
    pub health_timeout: u64,
    /// The programs' traffic counters on /metrics, read from the maps at each scrape:
    /// `services` (per service port: connections, packets, bytes, refused; per interface and
    /// hook: packets, bytes), `backends` (also per backend address), or `off`.
    #[arg(long, value_enum, default_value_t = TrafficMetrics::Services)]
    pub traffic_metrics: TrafficMetrics,
    /// Serve each LoadBalancer Service with externalTrafficPolicy Local on its
    /// healthCheckNodePort, as kube-proxy does (the cloud's load balancer asks every node
    /// there whether it has local endpoints): on every address, or on this node's addresses in
    /// `--nodeport-addresses`. `false` leaves those ports to something else.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub health_check_node_ports: bool,
    /// Print a line per second on stderr: events, revisions, CPU, RSS.
    #[arg(long)]
    pub stats: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LbAlgorithm {
    Random,
    Maglev,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MetadataMode {
    Off,
    Gce,
    Aws,
}

impl MetadataMode {
    fn flavor(self) -> Option<Flavor> {
        match self {
            MetadataMode::Off => None,
            MetadataMode::Gce => Some(Flavor::Gce),
            MetadataMode::Aws => Some(Flavor::Aws),
        }
    }
}

/// The embedded metadata proxy, bound before the socket hooks redirect anything to it.
struct EmbeddedProxy {
    proxy: Arc<Proxy>,
    listener: tokio::net::TcpListener,
    index: Arc<PodIndex>,
    redirect: MetadataRedirect,
}

async fn embedded_proxy(
    args: &Args,
    flavor: Flavor,
    registry: &mut Registry,
) -> anyhow::Result<EmbeddedProxy> {
    let metrics = ProxyMetrics::register(registry);
    let index = PodIndex::new();
    let cfg = ProxyConfig {
        flavor,
        upstream: args
            .metadata_upstream
            .parse()
            .with_context(|| format!("--metadata-upstream {}", args.metadata_upstream))?,
        upstream_timeout: Duration::from_secs(args.metadata_upstream_timeout.max(1)),
        aws_require_token: args.metadata_aws_require_token,
        identity: Some(index.clone()),
        policy: metadata_proxy::policy_store(args.metadata_policy.as_ref(), &metrics)?,
        limits: Limits::default(),
    };
    let proxy = Proxy::new(cfg, metrics).map_err(anyhow::Error::msg)?;
    let addr = args.metadata_proxy_addr;
    let listener = match metadata_proxy_bind(addr) {
        Ok(l) => l,
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
            crate::netif::add_loopback_address(addr.ip())
                .await
                .with_context(|| format!("making {} local for the metadata proxy", addr.ip()))?;
            metadata_proxy_bind(addr)
                .with_context(|| format!("binding the metadata proxy on {addr}"))?
        }
        Err(e) => {
            return Err(e).with_context(|| format!("binding the metadata proxy on {addr}"));
        }
    };
    Ok(EmbeddedProxy {
        proxy,
        listener,
        index,
        redirect: MetadataRedirect {
            server: std::net::IpAddr::V4(args.metadata_address),
            ports: args.metadata_ports.clone(),
            proxy: addr,
        },
    })
}

/// `--localhost-nodeports`, unless `--nodeport-addresses` leaves loopback out (kube-proxy;
/// `primary` does).
fn localhost_nodeports(args: &Args) -> bool {
    let loopback = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    let prefixes = args.enls.nodeport_prefixes();
    args.localhost_nodeports
        && !args.enls.nodeport_primary()
        && (prefixes.is_empty() || prefixes.iter().any(|p| p.contains(&loopback)))
}

/// Where healthCheckNodePort servers listen: every address (empty) without
/// `--nodeport-addresses`, else this namespace's addresses in those prefixes (kube-proxy's
/// choice too; every address, with a warning, when none is).
fn health_check_addresses(prefixes: &[IpNet]) -> Vec<std::net::IpAddr> {
    if prefixes.is_empty() {
        return Vec::new();
    }
    let addresses: Vec<_> = crate::netif::all_addresses()
        .into_iter()
        .filter(|ip| prefixes.iter().any(|p| p.contains(ip)))
        .collect();
    if addresses.is_empty() {
        tracing::warn!(
            ?prefixes,
            "no address of this node is in --nodeport-addresses; healthCheckNodePorts listen on every address"
        );
    }
    addresses
}

fn metadata_proxy_bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    crate::metadata::proxy::bind(addr)
}

fn parse_maglev_size(s: &str) -> Result<u32, String> {
    use tollgate_common::lb::maglev::SIZES;
    let n: u32 = s.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    if SIZES.contains(&n) {
        Ok(n)
    } else {
        Err(format!("{n} is not one of the table sizes {SIZES:?}"))
    }
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: expected MIN-MAX"))?;
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|e| format!("{a:?}: {e}"))?,
        b.trim().parse().map_err(|e| format!("{b:?}: {e}"))?,
    );
    if a == 0 || b < a {
        return Err(format!("{s:?}: expected 1 ≤ MIN ≤ MAX"));
    }
    Ok((a, b))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    args.enls.check()?;
    let uplinks = if args.uplinks.is_empty() {
        vec![
            crate::netif::default_route_interface()
                .context("finding the default-route interface for --uplinks")?,
        ]
    } else {
        args.uplinks.clone()
    };
    let cgroup = match &args.cgroup {
        Some(c) => c.clone(),
        None => crate::netif::cgroup2_root()
            .context("no cgroup v2 file system is mounted; pass --cgroup")?,
    };
    let mut registry = Registry::default();
    let enls_metrics = EnlsMetrics::register(&mut registry);
    let programming = ProgrammingMetrics::register(&mut registry);
    let dp_metrics = DataplaneMetrics::register(&mut registry);
    let health = Health::register(&mut registry, Duration::from_secs(args.health_timeout));
    let hc_metrics = ServiceHealthMetrics::register(&mut registry);
    let event_metrics = EventMetrics::register(&mut registry);

    let sizes = MapSizes {
        lb: args.lb_map_size,
        ct: args.ct_map_size,
        maglev: MapSizes::maglev_chunks(args.maglev_table_size),
    };
    let mut dp = Dataplane::load(&args.bpffs, &sizes).context("loading the dataplane")?;
    if let Some(logger) = dp.take_logger() {
        tokio::spawn(forward_kernel_logs(logger));
    }
    let dp_pins = dp.pins().clone();
    let mut writer = Writer::new(LbMaps::open(dp.pins())?);
    writer.set_maglev(args.lb_algorithm == LbAlgorithm::Maglev);
    writer.set_maglev_size(args.maglev_table_size);
    let purge_maps = LbMaps::open(dp.pins())?;
    // The metadata proxy listens before any pod connection is redirected to it.
    let embedded = match args.metadata.flavor() {
        Some(flavor) => Some(embedded_proxy(&args, flavor, &mut registry).await?),
        None => None,
    };
    let settings = NodeSettings {
        host_netns_cookie: sys::netns_cookie()
            .context("reading this network namespace's cookie")?,
        snat_ports: args.snat_port_range,
        uplink_addresses: uplinks
            .iter()
            .flat_map(|u| crate::netif::addresses(u))
            .collect(),
        metadata: embedded.as_ref().map(|e| e.redirect.clone()),
        tcp_peer: args.socket_lb_peer,
        localhost_nodeports: localhost_nodeports(&args),
        socket_lb_host_only: args.socket_lb_host_namespace_only,
    };
    if let Some(m) = &settings.metadata {
        // Redirected metadata connections keep a reverse record too (getpeername shows the
        // metadata server).
        writer
            .maps()
            .peer_ports
            .allow(m.proxy.port().to_be())
            .context("writing tg_peerport_v1")?;
    }
    // Until the first complete state, pod metadata traffic is refused (fail closed).
    writer
        .maps()
        .config
        .set(0, program::initial_config(&settings), 0)
        .context("writing tg_config_v2")?;
    for iface in &uplinks {
        dp.attach_uplink(iface, args.xdp_mode)
            .with_context(|| format!("attaching to uplink {iface}"))?;
    }
    dp.attach_cgroup(&cgroup)
        .with_context(|| format!("attaching socket hooks to cgroup {}", cgroup.display()))?;

    let (if_tx, mut if_rx) = mpsc::channel::<IfEvent>(256);
    let globs: Vec<Glob> = args.pod_interfaces.iter().map(|g| Glob::new(g)).collect();
    let uplink_set = uplinks.clone();
    tokio::spawn(async move {
        if let Err(e) = ifwatch::watch(globs, if_tx).await {
            tracing::error!("watching interfaces: {e}");
        }
    });
    // The pod interfaces that already exist are covered before the agent says it is ready (a
    // pod's raw packets to the metadata server are dropped only where the program is).
    let (listed_tx, listed_rx) = tokio::sync::oneshot::channel::<()>();
    let mut listed_tx = Some(listed_tx);
    let attacher = tokio::spawn(async move {
        while let Some(event) = if_rx.recv().await {
            match event {
                IfEvent::Up { name, .. } if !uplink_set.contains(&name) => {
                    if let Err(e) = dp.attach_pod_interface(&name) {
                        tracing::warn!(iface = %name, "not attached: {e}");
                    }
                }
                IfEvent::Gone { name, .. } => dp.forget_interface(&name),
                IfEvent::Listed => {
                    if let Err(e) = dp.reseed_marks() {
                        tracing::error!("marking existing flows: {e}");
                    }
                    if let Some(tx) = listed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                IfEvent::Up { .. } => {}
            }
        }
        dp
    });

    registry.register_collector(Box::new(TrafficCollector::new(
        dp_pins,
        args.traffic_metrics,
    )));
    let ready: Option<Arc<dyn crate::admin::ReadyCheck>> = embedded
        .as_ref()
        .map(|e| Arc::new(ProxyReady(e.proxy.clone())) as Arc<dyn crate::admin::ReadyCheck>);
    let state = Arc::new(AdminState {
        registry,
        health: Some(health.clone()),
        ready,
    });
    let (admin_addr, _admin) = admin::serve(args.admin_addr, state)
        .await
        .with_context(|| format!("binding the admin server on {}", args.admin_addr))?;
    tracing::info!(%admin_addr, "admin server listening (/metrics, /healthz, /livez)");

    let engine = Enls::new(args.enls.enls_config(), enls_metrics);
    let (events_tx, events_rx) = mpsc::channel(256);
    let (updates_tx, updates_rx) = mpsc::channel::<Arc<Update>>(64);
    let (status_tx, status_rx) = watch::channel(EnlsStatus::default());
    let sources = source::start(&args.enls.source, &args.enls.source_options(), events_tx)
        .await
        .context("starting the source")?;
    // Events go to the API server through the source's client; a manifest file has none.
    let events = match sources.client {
        Some(client) => Events::start(client, &args.enls.node, event_metrics),
        None => Events::off(&args.enls.node, event_metrics),
    };
    let mut subscribers = vec![updates_tx];
    if args.health_check_node_ports {
        let (hc_tx, hc_rx) = mpsc::channel::<Arc<Update>>(64);
        subscribers.push(hc_tx);
        let listen = if args.enls.nodeport_primary() {
            Listen::NodePrimary
        } else {
            Listen::At(health_check_addresses(&args.enls.nodeport_prefixes()))
        };
        let servers = ServiceHealthServers::new(health.clone(), listen, hc_metrics, events.clone());
        tokio::spawn(servers.follow(hc_rx));
    }
    if let Some(e) = embedded {
        let (pods_tx, pods_rx) = mpsc::channel::<Arc<Update>>(64);
        subscribers.push(pods_tx);
        tokio::spawn(crate::metadata::follow_pods(e.index, pods_rx));
        tracing::info!(
            proxy = %e.redirect.proxy,
            server = %e.redirect.server,
            ports = ?e.redirect.ports,
            "metadata proxy listening; pod connections are refused until the first complete state"
        );
        tokio::spawn(crate::metadata::proxy::serve(e.listener, e.proxy));
    }
    tokio::spawn(runner::run(engine, events_rx, subscribers, status_tx));
    if args.stats {
        tokio::spawn(runner::print_stats(status_rx));
    }
    health.queued();

    let (purge_tx, purge_rx) = mpsc::unbounded_channel();
    tokio::spawn(program::purge_task(
        purge_maps,
        dp_metrics.clone(),
        purge_rx,
        args.socket_lb_terminate_udp.then(|| cgroup.clone()),
    ));
    let programmer = Programmer {
        writer,
        settings,
        health,
        programming,
        metrics: dp_metrics,
        purges: purge_tx,
        events: events.clone(),
    };
    let note = format!(
        "(node {}, uplinks {:?}, cgroup {})",
        args.enls.node,
        uplinks,
        cgroup.display()
    );
    // kube-proxy's Event on its Node when it starts.
    events.record(
        Regarding::node(&args.enls.node),
        Event {
            warning: false,
            reason: "Starting",
            action: "StartTollgate",
            note: format!("Starting tollgate {} {note}.", env!("CARGO_PKG_VERSION")),
        },
    );
    // A failed watch drops the sender (and has logged why): go on without it.
    let _ = listed_rx.await;
    let mut programming = programmer
        .spawn(updates_rx, note)
        .context("starting the programmer thread")?;
    tokio::select! {
        r = crate::signals::terminated() => r?,
        _ = programming.stopped() => bail!("the node-local state stopped"),
    }
    if !programming.stop(Duration::from_secs(10)).await {
        tracing::warn!(
            "an update was still being written after 10 s; terminating anyway (the next start adopts the maps as they are)"
        );
    }
    drop(attacher);
    tracing::info!("terminating; programs stay attached through their pinned links");
    Ok(())
}

async fn forward_kernel_logs(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring-buffer fd for as long as the AsyncFd holds it.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let Ok(mut fd) = registered else {
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maglev_table_sizes_are_cilium_primes_only() {
        assert_eq!(parse_maglev_size("16381"), Ok(16381));
        assert_eq!(parse_maglev_size(" 4093 "), Ok(4093));
        let e = parse_maglev_size("4000").unwrap_err();
        assert!(
            e.contains("not one of the table sizes") && e.contains("131071"),
            "{e}"
        );
        assert!(parse_maglev_size("big").is_err());
    }

    #[test]
    fn nodeport_addresses_take_cidrs_or_primary_alone() {
        #[derive(clap::Parser)]
        struct Run {
            #[command(flatten)]
            args: Args,
        }
        let parse = |v: &str| {
            <Run as clap::Parser>::try_parse_from([
                "run",
                "--node",
                "n",
                "--source",
                "kube",
                "--nodeport-addresses",
                v,
            ])
            .map(|r| r.args)
        };
        let primary = parse("primary").unwrap();
        assert!(primary.enls.check().is_ok());
        assert!(primary.enls.nodeport_primary());
        assert!(primary.enls.nodeport_prefixes().is_empty());
        assert!(
            !localhost_nodeports(&primary),
            "primary leaves loopback out"
        );
        let cidrs = parse("10.0.0.0/8,127.0.0.0/8").unwrap();
        assert!(!cidrs.enls.nodeport_primary());
        assert_eq!(cidrs.enls.nodeport_prefixes().len(), 2);
        assert!(localhost_nodeports(&cidrs));
        let mixed = parse("primary,10.0.0.0/8").unwrap();
        let e = mixed.enls.check().unwrap_err().to_string();
        assert!(e.contains("cannot be combined"), "{e}");
        let e = parse("nodes").err().unwrap().to_string();
        assert!(e.contains("neither a CIDR"), "{e}");
    }
}
