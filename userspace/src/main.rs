//! `tollgate`: the node agent binary.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tollgate::{cmd, dataplane};

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "kube-proxy replacement (eBPF) and metadata concealment node agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent: build the node-local state and keep the dataplane programmed.
    Run(cmd::run::Args),
    /// Print the node-local state (ENLS) as JSON, or every change with --watch.
    Enls(cmd::enls::Args),
    /// Print the dataplane's pinned maps as readable tables.
    Maps(cmd::maps::Args),
    /// Remove every program, link and pinned map Tollgate created.
    Cleanup(CleanupArgs),
    /// Run the concealing metadata proxy on its own (`run --metadata` embeds it).
    MetadataProxy(cmd::metadata_proxy::Args),
}

#[derive(clap::Args)]
struct CleanupArgs {
    /// bpffs directory where the agent pinned its maps and links.
    #[arg(long, default_value = "/sys/fs/bpf/tollgate")]
    bpffs: PathBuf,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    runtime_with(2)
}

fn runtime_with(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn main() -> anyhow::Result<()> {
    tollgate::telemetry::limit_malloc_arenas();
    tollgate::telemetry::init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => runtime()?.block_on(cmd::run::run(args)),
        Command::Enls(args) => runtime()?.block_on(cmd::enls::run(args)),
        Command::Maps(args) => cmd::maps::run(args),
        Command::MetadataProxy(args) => {
            runtime_with(args.workers)?.block_on(cmd::metadata_proxy::run(args))
        }
        Command::Cleanup(args) => {
            let removed = dataplane::cleanup(&args.bpffs)
                .with_context(|| format!("removing pins under {}", args.bpffs.display()))?;
            println!(
                "removed {} pinned objects under {}",
                removed.len(),
                args.bpffs.display()
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{apps::v1::DaemonSet, rbac::v1::ClusterRole};

    use super::*;

    fn deploy(name: &str) -> String {
        let path = format!("{}/../deploy/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn the_daemonset_runs_a_command_line_the_agent_accepts() {
        let ds: DaemonSet = serde_saphyr::from_str(&deploy("daemonset.yaml")).unwrap();
        let spec = ds.spec.unwrap().template.spec.unwrap();
        assert_eq!(spec.host_network, Some(true));
        let container = &spec.containers[0];
        let args: Vec<String> = container
            .args
            .clone()
            .unwrap()
            .into_iter()
            .map(|a| a.replace("$(NODE_NAME)", "node1"))
            .collect();
        let cli = Cli::try_parse_from(std::iter::once("tollgate".to_owned()).chain(args))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(cli.command, Command::Run(_)));
        // Every path the arguments name is mounted from the host.
        let mounts: Vec<String> = container
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.clone())
            .collect();
        for arg in container.args.iter().flatten() {
            if let Some((_, path)) = arg.split_once('=')
                && path.starts_with('/')
            {
                assert!(
                    mounts.iter().any(|m| path.starts_with(m.as_str())),
                    "{arg} is not under a mounted volume {mounts:?}"
                );
            }
        }
    }

    #[test]
    fn the_metadata_policy_config_map_holds_a_valid_policy() {
        let cm: k8s_openapi::api::core::v1::ConfigMap =
            serde_saphyr::from_str(&deploy("metadata-policy.yaml")).unwrap();
        let ds: DaemonSet = serde_saphyr::from_str(&deploy("daemonset.yaml")).unwrap();
        let spec = ds.spec.unwrap().template.spec.unwrap();
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| {
                v.config_map
                    .as_ref()
                    .is_some_and(|c| c.name == cm.metadata.name.clone().unwrap())
            })
            .expect("the DaemonSet mounts the ConfigMap");
        let mount = spec.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == volume.name)
            .expect("mounted in the container");
        let args = spec.containers[0].args.clone().unwrap_or_default();
        let data = cm.data.unwrap();
        let (key, text) = data.iter().next().unwrap();
        assert!(
            args.contains(&format!("--metadata-policy={}/{key}", mount.mount_path)),
            "{args:?}"
        );
        let policy = tollgate::metadata::policy::Policy::parse(text).unwrap();
        let token: Vec<String> = "computeMetadata/v1/instance/service-accounts/default/token"
            .split('/')
            .map(String::from)
            .collect();
        use tollgate::metadata::rules::Class;
        assert!(
            policy
                .decide(Some(("web", "default")), &token, Class::Ordinary)
                .is_err()
        );
        assert!(
            policy
                .decide(Some(("node-tools", "x")), &token, Class::Ordinary)
                .is_ok()
        );
    }

    #[test]
    fn the_cluster_role_lets_the_agent_list_and_watch_its_sources() {
        let text = deploy("rbac.yaml");
        let role: ClusterRole = text
            .split("\n---")
            .filter_map(|doc| serde_saphyr::from_str::<serde_json::Value>(doc).ok())
            .find(|v| v["kind"] == "ClusterRole")
            .map(|v| serde_json::from_value(v).unwrap())
            .expect("a ClusterRole in deploy/rbac.yaml");
        for (group, resource) in [
            ("", "services"),
            ("", "nodes"),
            ("", "pods"),
            ("discovery.k8s.io", "endpointslices"),
        ] {
            let allowed = role.rules.iter().flatten().any(|r| {
                r.api_groups.iter().flatten().any(|g| g == group)
                    && r.resources.iter().flatten().any(|x| x == resource)
                    && ["list", "watch"]
                        .iter()
                        .all(|v| r.verbs.iter().any(|x| x == v))
            });
            assert!(allowed, "list+watch on {group}/{resource}");
        }
        // The Events the agent records (kube-rs's Recorder creates, then patches a series).
        let events = role.rules.iter().flatten().any(|r| {
            r.api_groups.iter().flatten().any(|g| g == "events.k8s.io")
                && r.resources.iter().flatten().any(|x| x == "events")
                && ["create", "patch"]
                    .iter()
                    .all(|v| r.verbs.iter().any(|x| x == v))
        });
        assert!(events, "create+patch on events.k8s.io/events");
    }

    #[test]
    fn the_daemonset_can_be_given_the_api_servers_own_address() {
        // Without kube-proxy the `kubernetes` ClusterIP works only once the agent runs: the
        // in-cluster client's two variables come from the optional ConfigMap when it exists.
        let ds: DaemonSet = serde_saphyr::from_str(&deploy("daemonset.yaml")).unwrap();
        let spec = ds.spec.unwrap().template.spec.unwrap();
        let env = spec.containers[0].env.clone().unwrap_or_default();
        for (name, key) in [
            ("KUBERNETES_SERVICE_HOST", "host"),
            ("KUBERNETES_SERVICE_PORT", "port"),
        ] {
            let var = env
                .iter()
                .find(|e| e.name == name)
                .unwrap_or_else(|| panic!("{name} is not set"));
            let r = var
                .value_from
                .as_ref()
                .and_then(|v| v.config_map_key_ref.as_ref())
                .unwrap_or_else(|| panic!("{name} is not from a ConfigMap"));
            assert_eq!(
                (r.name.as_str(), r.key.as_str(), r.optional),
                ("tollgate-api-server", key, Some(true)),
                "{name}"
            );
        }
    }
}
