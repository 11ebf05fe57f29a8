//! The Kubernetes API of the rebuilt cluster: connecting with the admin
//! kubeconfig, waiting for `/readyz`, and the errors of every step that
//! talks to it (the restore Jobs of [`crate::data`], the workloads of
//! [`crate::workloads`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lifeboat::k8s::K8sError;
use lifeboat::k8s::workloads::WorkloadsError;
use lifeboat::restore::in_place::HostPathError;

/// What went wrong talking to the Kubernetes API, or with what the steps
/// sent it.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    /// The kubeconfig cannot be used.
    #[error(
        "cannot reach the Kubernetes API with the kubeconfig {}; check [kubernetes] in the spec, or delete it from WORK and resume to fetch it again",
        kubeconfig.display()
    )]
    Connect {
        /// The kubeconfig.
        kubeconfig: PathBuf,
        /// Why.
        #[source]
        source: K8sError,
    },
    /// A GitOps manager could not be listed, suspended or resumed.
    #[error(
        "{action}; the rebuild resumes what it suspended on --resume (or set the field back and remove the annotation lifeboat.dev/suspended-from by hand)"
    )]
    GitOps {
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: K8sError,
    },
    /// The API refused to suspend or resume a GitOps manager.
    #[error(
        "{action}: {reason}; the rebuild retries on --resume (or set the field back and remove the annotation lifeboat.dev/suspended-from by hand)"
    )]
    GitOpsManager {
        /// What was being done, naming the manager.
        action: String,
        /// The server's answer.
        reason: String,
    },
    /// A request failed.
    #[error("{action}")]
    Api {
        /// What was being done, naming the object.
        action: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// `/readyz` did not answer `ok` in time.
    #[error(
        "the Kubernetes API did not become ready within {wait} (last answer: {last}); look at `talosctl -n {endpoint} service kube-apiserver` and etcd"
    )]
    NotReady {
        /// How long it was waited for.
        wait: String,
        /// Its last answer or error.
        last: String,
        /// The bootstrap node's Talos endpoint.
        endpoint: String,
    },
    /// The workloads using the volumes could not be found, stopped or
    /// started.
    #[error("{0}; resume the rebuild once fixed")]
    Workloads(#[from] WorkloadsError),
    /// A snapshot's host path is not one a Job may mount.
    #[error("snapshot {snapshot}, volume {volume}")]
    HostPath {
        /// The snapshot id.
        snapshot: String,
        /// The PVC (`NAMESPACE/NAME`).
        volume: String,
        /// What is wrong with the path.
        #[source]
        source: HostPathError,
    },
    /// Volumes pinned to no node beside volumes of several nodes.
    #[error(
        "snapshot {snapshot} holds volumes pinned to no node ({}) beside volumes of {nodes} nodes; restore them by hand with `lifeboat restore {snapshot} --in-place --pvc NAMESPACE/NAME` on their node",
        volumes.join(", ")
    )]
    Unpinned {
        /// The snapshot id.
        snapshot: String,
        /// The unpinned PVCs.
        volumes: Vec<String>,
        /// How many nodes the others are on.
        nodes: usize,
    },
    /// A volume read by a mover could not be put back into its claim.
    #[error(
        "snapshot {snapshot}: {source}; when the claim's volume is gone with the old cluster (a Mayastor or ZFS pool on new disks), delete the claim and its PersistentVolume and resume: the rebuild makes the claim anew"
    )]
    Claim {
        /// The snapshot id.
        snapshot: String,
        /// Why.
        #[source]
        source: Box<lifeboat::sources::volumes::mover::restore::ClaimRestoreError>,
    },
    /// The live PersistentVolume keeps its data elsewhere.
    #[error(
        "the snapshot puts {claim} at {} but its PersistentVolume {pv} is at {live}; restore it by hand with `lifeboat restore --pvc {claim} --target DIR` and look at it",
        stored.display()
    )]
    PathMismatch {
        /// The PVC (`NAMESPACE/NAME`).
        claim: String,
        /// Its host path in the snapshot.
        stored: PathBuf,
        /// The PersistentVolume.
        pv: String,
        /// Its path in the cluster.
        live: String,
    },
    /// The cluster lacks the snapshot's PersistentVolume.
    #[error(
        "the snapshot holds {claim} of PersistentVolume {pv}, which the cluster has not (as a hostPath or local volume); restore it by hand with `lifeboat restore --pvc {claim} --target DIR`"
    )]
    NoPersistentVolume {
        /// The PVC (`NAMESPACE/NAME`).
        claim: String,
        /// The PersistentVolume.
        pv: String,
    },
    /// An object the rebuild builds is not valid.
    #[error("the {what} the rebuild built is not valid (a bug of lifeboat)")]
    Object {
        /// Which object.
        what: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A restore Job vanished while it was waited for.
    #[error("Job {namespace}/{name} disappeared; resume to make it again")]
    JobGone {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A failed Job does not go away.
    #[error(
        "the failed Job {name} is still there a minute after its deletion; delete it by hand and resume"
    )]
    JobStuck {
        /// Its name.
        name: String,
    },
    /// Restore Jobs failed or did not finish.
    #[error("{}; fix the cause, then run the rebuild again with --resume", failures.join("; "))]
    JobsFailed {
        /// One line per Job.
        failures: Vec<String>,
    },
    /// The Secret holding the restore key cannot be deleted.
    #[error("deleting Secret {namespace}/{name}; delete it by hand, it holds the restore key")]
    RemoveSecret {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The record of stopped workloads cannot be read or written.
    #[error("{action} {}; check the --work folder", path.display())]
    Record {
        /// Reading, writing or removing.
        action: &'static str,
        /// The record.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The record of stopped workloads is damaged.
    #[error(
        "{} is damaged; scale the workloads it names back by hand and delete it",
        path.display()
    )]
    DamagedRecord {
        /// The record.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// A closure turning a client error into [`KubernetesError::Api`].
pub(crate) fn api(action: impl Into<String>) -> impl FnOnce(kube::Error) -> KubernetesError {
    let action = action.into();
    move |source| KubernetesError::Api { action, source }
}

/// A client from `kubeconfig` (and its `context`).
///
/// Fails when the kubeconfig cannot be read or used.
pub async fn connect(
    kubeconfig: &Path,
    context: Option<&str>,
) -> Result<kube::Client, KubernetesError> {
    lifeboat::k8s::connect(Some(kubeconfig), context)
        .await
        .map_err(|source| KubernetesError::Connect {
            kubeconfig: kubeconfig.to_owned(),
            source,
        })
}

/// Asks `/readyz` until it answers `ok`, for at most `wait`.
///
/// Fails with the last answer when it does not; `endpoint` (the bootstrap
/// node's) is named for looking at the API server.
pub async fn wait_until_ready(
    client: &kube::Client,
    wait: Duration,
    endpoint: &str,
) -> Result<String, KubernetesError> {
    let deadline = Instant::now() + wait;
    loop {
        let mut request = http::Request::new(Vec::new());
        *request.uri_mut() = http::Uri::from_static("/readyz");
        let answer = client.request_text(request).await;
        match answer {
            Ok(text) if text.trim() == "ok" => return Ok("/readyz answers ok".into()),
            _ if Instant::now() > deadline => {
                let last = match answer {
                    Ok(text) => text,
                    Err(e) => e.to_string(),
                };
                return Err(KubernetesError::NotReady {
                    wait: humantime::format_duration(wait).to_string(),
                    last,
                    endpoint: endpoint.to_owned(),
                });
            }
            _ => tokio::time::sleep(crate::POLL).await,
        }
    }
}
