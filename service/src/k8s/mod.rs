//! Talking to the Kubernetes API with `kube`: connecting (in-cluster service
//! account, `KUBECONFIG` or a configured kubeconfig), discovering what the
//! server serves, and the canonical form objects are stored in.

pub mod canonical;
pub mod discovery;
pub mod exec;
pub mod gitops;
pub mod jobs;
pub mod workloads;

use std::path::{Path, PathBuf};

/// Why the Kubernetes API could not be used.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// No usable configuration was found.
    #[error(
        "no Kubernetes access: {source}; run lifeboat inside the cluster with a service account, \
         set KUBECONFIG, or set `kubeconfig` in the job's source"
    )]
    NoAccess {
        /// What failed.
        #[source]
        source: AccessError,
    },
    /// The configured kubeconfig could not be used.
    #[error("cannot use the kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// The client's error.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// A request failed.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

/// Why no client could be made without a configured kubeconfig.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// Neither a kubeconfig nor the in-cluster service account is usable.
    #[error(transparent)]
    Infer(#[from] kube::config::InferConfigError),
    /// The kubeconfig found through `KUBECONFIG` or `~/.kube/config` (for a
    /// configured `context`) is unusable.
    #[error(transparent)]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// The configuration found does not make a client.
    #[error(transparent)]
    Client(#[from] kube::Error),
}

impl K8sError {
    /// Wraps a client error with what was being done.
    pub fn api(what: impl Into<String>, source: kube::Error) -> Self {
        Self::Api {
            what: what.into(),
            source,
        }
    }
}

/// A client for the cluster: from `kubeconfig` (and its `context`) when
/// given, else inferred (`KUBECONFIG`, `~/.kube/config`, in-cluster).
pub async fn connect(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<kube::Client, K8sError> {
    let options = kube::config::KubeConfigOptions {
        context: context.map(str::to_owned),
        ..Default::default()
    };
    let config = match kubeconfig {
        Some(path) => {
            let failed = |source| K8sError::Kubeconfig {
                path: path.to_owned(),
                source,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(failed)?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(failed)?
        }
        None if context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(no_access)?,
        None => kube::Config::infer().await.map_err(no_access)?,
    };
    kube::Client::try_from(config).map_err(no_access)
}

fn no_access(cause: impl Into<AccessError>) -> K8sError {
    K8sError::NoAccess {
        source: cause.into(),
    }
}
