//! Talking to the Kubernetes API with `kube`: connecting (in-cluster service
//! account, `KUBECONFIG` or a configured kubeconfig), discovering what the
//! server serves, and the canonical form objects are stored in.

pub mod canonical;
pub mod discovery;
pub mod exec;
pub mod gitops;

use std::path::{Path, PathBuf};

/// Why the Kubernetes API could not be used.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// No usable configuration was found.
    #[error(
        "no Kubernetes access: {reason}; run lifeboat inside the cluster with a service account, \
         set KUBECONFIG, or set `kubeconfig` in the job's source"
    )]
    NoAccess {
        /// What failed.
        reason: String,
    },
    /// The configured kubeconfig could not be used.
    #[error("cannot use the kubeconfig {path}: {reason}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
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
            let failed = |reason: String| K8sError::Kubeconfig {
                path: path.to_owned(),
                reason,
            };
            let file =
                kube::config::Kubeconfig::read_from(path).map_err(|e| failed(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| failed(e.to_string()))?
        }
        None if context.is_some() => {
            kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|e| K8sError::NoAccess {
                    reason: e.to_string(),
                })?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| K8sError::NoAccess {
                reason: e.to_string(),
            })?,
    };
    kube::Client::try_from(config).map_err(|e| K8sError::NoAccess {
        reason: e.to_string(),
    })
}
