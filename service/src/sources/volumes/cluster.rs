//! What the cluster says about claims: the pods using them, the nodes
//! their volumes are pinned to, their storage class and capacity.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PersistentVolumeSpec, Pod};
use kube::api::{Api, ListParams};

use crate::k8s::K8sError;

/// The node label PersistentVolumes are pinned with.
const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// The claim's storage class (`""` if none).
pub fn storage_class(claim: &PersistentVolumeClaim) -> String {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .unwrap_or_default()
}

/// The volume's capacity (`10Gi`, `""` if none).
pub fn capacity(spec: &PersistentVolumeSpec) -> String {
    spec.capacity
        .as_ref()
        .and_then(|c| c.get("storage"))
        .map(|q| q.0.clone())
        .unwrap_or_default()
}

/// The pods (name, node) that use each claim (namespace, name), of pods
/// placed on a node and not finished.
///
/// Fails when pods cannot be listed.
pub async fn claim_users(
    client: &kube::Client,
) -> Result<BTreeMap<(String, String), Vec<(String, String)>>, K8sError> {
    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| K8sError::api("listing pods", e))?;
    let mut users: BTreeMap<(String, String), Vec<(String, String)>> = BTreeMap::new();
    for pod in pods.items {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let Some(spec) = pod.spec else { continue };
        let Some(node) = spec.node_name.clone() else {
            continue;
        };
        for volume in spec.volumes.into_iter().flatten() {
            if let Some(claim) = volume.persistent_volume_claim {
                users
                    .entry((namespace.clone(), claim.claim_name))
                    .or_default()
                    .push((name.clone(), node.clone()));
            }
        }
    }
    Ok(users)
}

/// The nodes a volume is pinned to by its node affinity on the host name.
pub fn pinned_nodes(spec: &PersistentVolumeSpec) -> Vec<String> {
    spec.node_affinity
        .as_ref()
        .and_then(|a| a.required.as_ref())
        .map(|r| &r.node_selector_terms)
        .into_iter()
        .flatten()
        .flat_map(|term| term.match_expressions.iter().flatten())
        .filter(|e| e.key == HOSTNAME_LABEL && e.operator == "In")
        .flat_map(|e| e.values.iter().flatten().cloned())
        .collect()
}

/// Why a volume that is not a host folder cannot be read here.
pub fn unreachable_reason(spec: &PersistentVolumeSpec) -> String {
    if let Some(csi) = &spec.csi {
        return format!(
            "it is a CSI volume ({}) whose data is not a folder on this node; back it up where it is stored",
            csi.driver
        );
    }
    if let Some(nfs) = &spec.nfs {
        return format!(
            "it is an NFS volume ({}:{}); back it up on the NFS server (a directory job there)",
            nfs.server, nfs.path
        );
    }
    "its volume type is not a host folder (only hostPath and local volumes are read)".into()
}
