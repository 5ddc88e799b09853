//! Helper processes for the test bed: traffic generators and servers that run inside test-bed
//! namespaces and cgroups (so the cgroup socket hooks see their sockets), plus the leftover sweep.

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tollgate-testbed")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Remove leftovers of killed test runs (only objects carrying the test-bed marker).
    Clean {
        /// Remove every test-bed object, even those of runs still alive.
        #[arg(long)]
        force: bool,
    },
    /// Echo UDP datagrams back to their sender until killed.
    UdpEcho {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Serve TCP and UDP until killed, answering `<name> <client address>`.
    Serve {
        #[arg(long)]
        name: String,
        #[arg(long, value_delimiter = ',')]
        tcp: Vec<SocketAddr>,
        #[arg(long, value_delimiter = ',')]
        udp: Vec<SocketAddr>,
    },
    /// COUNT exchanges with a service, each on a new connection; prints a JSON tally.
    Connect {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: u64,
        #[arg(long, value_enum, default_value_t = tollgate_tests::traffic::Mode::Tcp)]
        mode: tollgate_tests::traffic::Mode,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// Pause between exchanges.
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
    },
    /// One TCP connection exchanging LINES lines, INTERVAL apart; prints a JSON tally.
    Session {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 10)]
        lines: u64,
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// A metadata-server double (GCE and AWS answers); one JSON line per request on stdout.
    MetadataDouble {
        #[arg(long, value_delimiter = ',')]
        listen: Vec<SocketAddr>,
        /// No per-request lines (benchmarks).
        #[arg(long)]
        quiet: bool,
        /// IMDS reads need a session token.
        #[arg(long)]
        aws_require_token: bool,
    },
    /// Send COUNT datagrams one after another, each waiting (≤ 1 s) for its echo; prints JSON.
    UdpPing {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 100)]
        count: u32,
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Clean { force } => {
            let report = tollgate_tests::sweep::sweep_stale(force);
            if report.removed.is_empty() {
                println!("no test-bed leftovers");
            }
            for line in report.removed {
                println!("removed {line}");
            }
            Ok(())
        }
        Cmd::Serve { name, tcp, udp } => {
            tollgate_tests::traffic::serve(&name, &tcp, &udp)?;
            Ok(())
        }
        Cmd::Connect {
            to,
            count,
            mode,
            timeout_ms,
            interval_ms,
        } => {
            let t = tollgate_tests::traffic::connect(
                to,
                count,
                mode,
                Duration::from_millis(timeout_ms),
                Duration::from_millis(interval_ms),
            );
            println!("{}", serde_json::to_string(&t)?);
            Ok(())
        }
        Cmd::Session {
            to,
            lines,
            interval_ms,
            timeout_ms,
        } => {
            let t = tollgate_tests::traffic::session(
                to,
                lines,
                Duration::from_millis(interval_ms),
                Duration::from_millis(timeout_ms),
            );
            println!("{}", serde_json::to_string(&t)?);
            Ok(())
        }
        Cmd::MetadataDouble {
            listen,
            quiet,
            aws_require_token,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let opts = tollgate_tests::metadata_double::Options {
                    quiet,
                    aws_require_token,
                    record: None,
                };
                let mut tasks = Vec::new();
                for addr in &listen {
                    let l = tokio::net::TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("binding {addr}"))?;
                    tasks.push(tokio::spawn(tollgate_tests::metadata_double::serve(
                        l,
                        opts.clone(),
                    )));
                }
                println!("serving metadata on {listen:?}");
                for t in tasks {
                    let _ = t.await;
                }
                anyhow::Ok(())
            })
        }
        Cmd::UdpEcho { listen } => {
            let sock = UdpSocket::bind(listen).with_context(|| format!("binding {listen}"))?;
            println!("listening on {listen}");
            let mut buf = [0u8; 65536];
            loop {
                let (n, from) = sock.recv_from(&mut buf)?;
                sock.send_to(&buf[..n], from)?;
            }
        }
        Cmd::UdpPing { to, count, size } => {
            let bind: SocketAddr = if to.is_ipv4() {
                "0.0.0.0:0".parse()?
            } else {
                "[::]:0".parse()?
            };
            let sock = UdpSocket::bind(bind)?;
            sock.set_read_timeout(Some(Duration::from_secs(1)))?;
            let payload = vec![0x5a; size];
            let mut buf = [0u8; 65536];
            let (mut received, start) = (0u32, Instant::now());
            for _ in 0..count {
                sock.send_to(&payload, to)?;
                if let Ok((n, _)) = sock.recv_from(&mut buf)
                    && n == size
                {
                    received += 1;
                }
            }
            println!(
                "{}",
                serde_json::json!({
                    "sent": count,
                    "received": received,
                    "elapsed_ms": start.elapsed().as_millis() as u64,
                })
            );
            Ok(())
        }
    }
}
