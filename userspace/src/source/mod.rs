//! Where Kubernetes objects come from: the API server (`kube`) or a manifest file (`file:PATH`).
//! Both deliver [`SourceEvent`]s, with every (re-)list bracketed by `ListBegin`/`ListDone`.

pub mod file;
pub mod kube;
pub mod manifest;

use std::{path::PathBuf, str::FromStr};

use tokio::{sync::mpsc, task::JoinHandle};

use crate::enls::SourceEvent;

/// `--source kube` or `--source file:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    Kube,
    File(PathBuf),
}

impl FromStr for SourceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kube" => Ok(Self::Kube),
            _ => match s.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(Self::File(PathBuf::from(path))),
                _ => Err(format!("{s:?}: expected `kube` or `file:PATH`")),
            },
        }
    }
}

/// What the sources need to know to select objects.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    pub node_name: String,
    pub service_proxy_name: Option<String>,
    /// `--kubeconfig` (kube source); default: in-cluster config, then `$KUBECONFIG`/`~/.kube`.
    pub kubeconfig: Option<PathBuf>,
    /// How often the file source checks its file for changes.
    pub file_poll: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("kubernetes client: {0}")]
    Kube(String),
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
}

/// A started source: its tasks (they send until the channel closes; a dropped handle detaches
/// its task) and, for `kube`, the client they use (for anything else the agent tells the API
/// server, such as Events).
pub struct Started {
    pub tasks: Vec<JoinHandle<()>>,
    pub client: Option<::kube::Client>,
}

/// Starts the source's tasks; they send into `tx` until it closes.
pub async fn start(
    spec: &SourceSpec,
    opts: &SourceOptions,
    tx: mpsc::Sender<SourceEvent>,
) -> Result<Started, SourceError> {
    Ok(match spec {
        SourceSpec::Kube => {
            let client = kube::client(opts).await?;
            Started {
                tasks: kube::start(&client, opts, tx),
                client: Some(client),
            }
        }
        SourceSpec::File(path) => Started {
            tasks: vec![file::start(path.clone(), opts.file_poll, tx)],
            client: None,
        },
    })
}
