//! The workloads using claims whose data is put back, stopped meanwhile:
//! their Deployments and StatefulSets are scaled to zero (a merge patch of
//! `spec.replicas`, as `kubectl scale` does) and back to their replicas
//! afterwards. Used by the rebuild (pods come back with etcd and start at
//! once, on an empty folder) and by a restore into a claim in use.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::K8sError;
use super::gitops::{self, Named};

/// How often the pods are looked at while waiting for them to go.
const POLL: Duration = Duration::from_millis(500);

/// Why workloads could not be stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadsError {
    /// The API refused something.
    #[error(transparent)]
    Kube(#[from] K8sError),
    /// Pods still use the claims after their workloads were stopped.
    #[error(
        "pods still use the claims after {wait}: {}; stop them by hand, then run again",
        pods.join(", ")
    )]
    PodsRunning {
        /// How long it was waited for.
        wait: String,
        /// The pods (`NAMESPACE/NAME`).
        pods: Vec<String>,
    },
}

fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> K8sError {
    let what = what.into();
    move |source| K8sError::Api { what, source }
}

/// A claim: namespace and PVC name.
pub type Claim = (String, String);

/// The kinds of workload scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
}

/// A workload and the replicas it had before it was stopped.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Workload {
    /// Its kind.
    pub kind: Kind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its replicas before.
    pub replicas: i32,
}

/// What the stop step found and stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopped {
    /// The workloads scaled to zero.
    pub workloads: Vec<Workload>,
    /// Pods using the claims with no Deployment or StatefulSet behind
    /// them (`NAMESPACE/NAME`); they cannot be stopped and keep running.
    pub unmanaged: Vec<String>,
}

impl Stopped {
    /// One line for people.
    pub fn describe(&self) -> String {
        let names: Vec<String> = self
            .workloads
            .iter()
            .map(|w| format!("{:?} {}/{}", w.kind, w.namespace, w.name))
            .collect();
        let mut line = if names.is_empty() {
            "no workload uses the claims".to_owned()
        } else {
            names.join(", ")
        };
        if !self.unmanaged.is_empty() {
            line.push_str(&format!(
                "; left running (no Deployment or StatefulSet to scale): {}",
                self.unmanaged.join(", ")
            ));
        }
        line
    }
}

/// The workloads whose pods use any of `claims`.
///
/// Fails when the API cannot be read.
pub async fn find(client: &kube::Client, claims: &[Claim]) -> Result<Stopped, K8sError> {
    let namespaces: BTreeSet<&str> = claims.iter().map(|(ns, _)| ns.as_str()).collect();
    let mut workloads = BTreeSet::new();
    let mut unmanaged = Vec::new();
    for namespace in namespaces {
        let pods = Api::<Pod>::namespaced(client.clone(), namespace)
            .list(&ListParams::default())
            .await
            .map_err(api(format!("listing the pods of namespace {namespace}")))?;
        for pod in pods.items.iter().filter(|p| uses_any(p, claims)) {
            let name = pod.metadata.name.clone().unwrap_or_default();
            match owner(
                client,
                namespace,
                controller(&pod.metadata.owner_references),
            )
            .await?
            {
                Some(workload) => {
                    workloads.insert(workload);
                }
                None => unmanaged.push(format!("{namespace}/{name}")),
            }
        }
    }
    Ok(Stopped {
        workloads: workloads.into_iter().collect(),
        unmanaged,
    })
}

/// Whether `pod` mounts one of `claims`.
fn uses_any(pod: &Pod, claims: &[Claim]) -> bool {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    pod.spec
        .iter()
        .flat_map(|spec| spec.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .any(|c| {
            claims
                .iter()
                .any(|(ns, pvc)| ns == namespace && *pvc == c.claim_name)
        })
}

fn controller(references: &Option<Vec<OwnerReference>>) -> Option<&OwnerReference> {
    references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// The Deployment or StatefulSet behind a pod's controller, with its
/// replicas.
async fn owner(
    client: &kube::Client,
    namespace: &str,
    reference: Option<&OwnerReference>,
) -> Result<Option<Workload>, K8sError> {
    let Some(reference) = reference else {
        return Ok(None);
    };
    let workload = |kind, name: &str, replicas: Option<i32>| Workload {
        kind,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        replicas: replicas.unwrap_or(1),
    };
    match reference.kind.as_str() {
        "StatefulSet" => {
            let set = Api::<StatefulSet>::namespaced(client.clone(), namespace)
                .get_opt(&reference.name)
                .await
                .map_err(api(format!(
                    "reading StatefulSet {namespace}/{}",
                    reference.name
                )))?;
            Ok(set.map(|s| {
                let replicas = s.spec.replicas;
                workload(Kind::StatefulSet, &reference.name, replicas)
            }))
        }
        "ReplicaSet" => {
            let set = Api::<ReplicaSet>::namespaced(client.clone(), namespace)
                .get_opt(&reference.name)
                .await
                .map_err(api(format!(
                    "reading ReplicaSet {namespace}/{}",
                    reference.name
                )))?;
            let Some(deployment) = set
                .as_ref()
                .and_then(|s| controller(&s.metadata.owner_references))
                .filter(|r| r.kind == "Deployment")
            else {
                return Ok(None);
            };
            let found = Api::<Deployment>::namespaced(client.clone(), namespace)
                .get_opt(&deployment.name)
                .await
                .map_err(api(format!(
                    "reading Deployment {namespace}/{}",
                    deployment.name
                )))?;
            Ok(found.map(|d| {
                let replicas = d.spec.replicas;
                workload(Kind::Deployment, &deployment.name, replicas)
            }))
        }
        _ => Ok(None),
    }
}

/// The GitOps managers the stopped workloads' marks name
/// ([`gitops::named_by`]).
///
/// Fails when a workload cannot be read.
pub async fn managers(client: &kube::Client, stopped: &Stopped) -> Result<Vec<Named>, K8sError> {
    let mut named = Vec::new();
    for workload in &stopped.workloads {
        let (namespace, name) = (&workload.namespace, &workload.name);
        let action = || format!("reading {:?} {namespace}/{name}", workload.kind);
        let metadata = match workload.kind {
            Kind::Deployment => Api::<Deployment>::namespaced(client.clone(), namespace)
                .get_opt(name)
                .await
                .map_err(api(action()))?
                .map(|w| w.metadata),
            Kind::StatefulSet => Api::<StatefulSet>::namespaced(client.clone(), namespace)
                .get_opt(name)
                .await
                .map_err(api(action()))?
                .map(|w| w.metadata),
        };
        if let Some(metadata) = metadata.and_then(|m| serde_json::to_value(m).ok()) {
            named.extend(gitops::named_by(&metadata));
        }
    }
    Ok(named)
}

/// Sets the workload's replicas.
///
/// Fails when the API refuses.
pub async fn scale(
    client: &kube::Client,
    workload: &Workload,
    replicas: i32,
) -> Result<(), K8sError> {
    let patch = Patch::Merge(json!({"spec": {"replicas": replicas}}));
    let params = PatchParams::default();
    let (namespace, name) = (&workload.namespace, &workload.name);
    let result = match workload.kind {
        Kind::Deployment => Api::<Deployment>::namespaced(client.clone(), namespace)
            .patch(name, &params, &patch)
            .await
            .map(drop),
        Kind::StatefulSet => Api::<StatefulSet>::namespaced(client.clone(), namespace)
            .patch(name, &params, &patch)
            .await
            .map(drop),
    };
    result.map_err(api(format!(
        "scaling {:?} {namespace}/{name} to {replicas}",
        workload.kind
    )))
}

/// Waits until no pod but `unmanaged` ones uses `claims`.
///
/// Fails naming the pods still there after `wait`.
pub async fn wait_until_stopped(
    client: &kube::Client,
    claims: &[Claim],
    unmanaged: &[String],
    wait: Duration,
) -> Result<(), WorkloadsError> {
    let deadline = Instant::now() + wait;
    let namespaces: BTreeSet<&str> = claims.iter().map(|(ns, _)| ns.as_str()).collect();
    loop {
        let mut running = Vec::new();
        for namespace in &namespaces {
            let pods = Api::<Pod>::namespaced(client.clone(), namespace)
                .list(&ListParams::default())
                .await
                .map_err(api(format!("listing the pods of namespace {namespace}")))?;
            for pod in pods.items.iter().filter(|p| uses_any(p, claims)) {
                let name = format!(
                    "{namespace}/{}",
                    pod.metadata.name.as_deref().unwrap_or_default()
                );
                if !unmanaged.contains(&name) {
                    running.push(name);
                }
            }
        }
        if running.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(WorkloadsError::PodsRunning {
                wait: humantime::format_duration(wait).to_string(),
                pods: running,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}
