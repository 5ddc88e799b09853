//! `tollgate maps`: the pinned maps as readable tables (the node settings, service → frontends
//! → backends with counters, then interface counters), or JSON.

use std::path::PathBuf;

use crate::dataplane::{self, PinLayout, inspect};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// bpffs directory where the agent pinned its maps.
    #[arg(long, default_value = "/sys/fs/bpf/tollgate")]
    pub bpffs: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let pins = PinLayout::existing(&args.bpffs);
    let node = inspect::node(&pins)?;
    let services = inspect::services(&pins)?;
    let other_ports = inspect::other_ports(&pins)?;
    let service_cidrs = inspect::service_cidrs(&pins)?;
    let interfaces = dataplane::stats::iface_stats(&pins)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "node": node,
                "services": services,
                "other_ports": other_ports,
                "service_cidrs": service_cidrs,
                "interfaces": interfaces,
            }))?
        );
        return Ok(());
    }
    match &node {
        Some(n) => {
            println!(
                "NODE  ready {}  snat {} / {} ports {}  socket-lb-peer {}  localhost-nodeports {}  socket-lb-host-namespace-only {}",
                n.ready,
                n.snat_v4.as_deref().unwrap_or("-"),
                n.snat_v6.as_deref().unwrap_or("-"),
                n.snat_ports,
                n.socket_lb_peer,
                n.localhost_nodeports,
                n.socket_lb_host_namespace_only
            );
            println!("      metadata {}", n.metadata);
        }
        None => println!("NODE  no settings written yet"),
    }
    println!();
    println!(
        "{:<32} {:<12} {:<11} {:<28} {:<8} {:>7} {:>9} {:>11} {:>7}",
        "SERVICE", "PORT", "KIND", "FRONTEND", "SCOPE", "CONNS", "PACKETS", "BYTES", "REFUSED"
    );
    for s in &services {
        let port = format!(
            "{}/{}",
            if s.port_name.is_empty() {
                s.port.to_string()
            } else {
                s.port_name.clone()
            },
            s.protocol
        );
        let name = format!("{}/{}", s.namespace, s.name);
        for (i, f) in s.frontends.iter().enumerate() {
            let (n, p, c) = if i == 0 {
                (name.as_str(), port.as_str(), s.counters)
            } else {
                ("", "", Default::default())
            };
            let counters = if i == 0 {
                format!(
                    "{:>7} {:>9} {:>11} {:>7}",
                    c.connections, c.packets, c.bytes, c.refused
                )
            } else {
                String::new()
            };
            println!(
                "{:<32} {:<12} {:<11} {:<28} {:<8} {counters}",
                n, p, f.kind, f.address, f.scope
            );
            if f.backends.is_empty() {
                let verdict = if f.flags.contains(&"drop-if-empty") {
                    "DROP"
                } else {
                    "REJECT"
                };
                println!(
                    "{:<32} {:<12} {:<11}   └─ no backends: {verdict}",
                    "", "", ""
                );
            }
            for b in &f.backends {
                println!(
                    "{:<32} {:<12} {:<11}   └─ {:<23} {:<8} {:>7} {:>9} {:>11}",
                    "",
                    "",
                    "",
                    b.address,
                    format!("#{}", b.id),
                    b.counters.connections,
                    b.counters.packets,
                    b.counters.bytes
                );
            }
        }
    }
    if !other_ports.cluster_ips.is_empty() {
        const SHOWN: usize = 8;
        let ips = &other_ports.cluster_ips;
        let more = ips.len().saturating_sub(SHOWN);
        println!(
            "{:<32} {:<12} {:<11} {:<38} {:>36}",
            "(ports no Service defines)",
            "*",
            "ClusterIP",
            format!("{} addresses: REJECT", ips.len()),
            other_ports.refused
        );
        println!(
            "{:<32} {:<12} {:<11}   └─ {}{}",
            "",
            "",
            "",
            ips[..ips.len().min(SHOWN)].join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
    }
    for c in &service_cidrs {
        println!(
            "{:<32} {:<12} {:<11} {:<38} {:>36}",
            "(unallocated Service IPs)",
            "*",
            "ServiceCIDR",
            format!("{}: DROP", c.cidr),
            c.dropped
        );
    }
    println!();
    println!(
        "{:<8} {:<12} {:<12} {:>12} {:>14}",
        "IFINDEX", "IFACE", "HOOK", "PACKETS", "BYTES"
    );
    for r in interfaces {
        let name = crate::netif::name_of(r.ifindex).unwrap_or_else(|| "?".into());
        println!(
            "{:<8} {:<12} {:<12} {:>12} {:>14}",
            r.ifindex, name, r.hook, r.packets, r.bytes
        );
    }
    Ok(())
}
