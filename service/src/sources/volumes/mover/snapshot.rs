//! Snapshot mode: a claim whose CSI driver has a VolumeSnapshotClass is
//! read point-in-time. Each such claim gets a VolumeSnapshot
//! (`snapshot.storage.k8s.io/v1`) in its namespace, and once that is ready
//! to use a temporary claim made from it (`dataSource`), which the mover
//! mounts instead of the running volume. Both carry the run's labels and
//! go at the end of the run with the movers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};

use super::cleanup::{delete_runs, not_found};
use super::pod::POLL;
use crate::k8s::K8sError;

/// The API group of CSI snapshots.
const GROUP: &str = "snapshot.storage.k8s.io";
/// The annotation marking a driver's default VolumeSnapshotClass.
const DEFAULT_CLASS: &str = "snapshot.storage.kubernetes.io/is-default-class";
/// How long a snapshot may take to become ready to use.
const READY_WITHIN: Duration = Duration::from_secs(15 * 60);

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: "v1".into(),
        api_version: format!("{GROUP}/v1"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

fn snapshots(client: &kube::Client, namespace: Option<&str>) -> Api<DynamicObject> {
    let kind = resource("VolumeSnapshot", "volumesnapshots");
    match namespace {
        Some(namespace) => Api::namespaced_with(client.clone(), namespace, &kind),
        None => Api::all_with(client.clone(), &kind),
    }
}

/// The VolumeSnapshotClass to use per CSI driver: the driver's default
/// class, else its first by name. Empty when the cluster serves no
/// snapshot API.
///
/// Fails when the API refuses the listing.
pub async fn classes(client: &kube::Client) -> Result<BTreeMap<String, String>, K8sError> {
    let api: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &resource("VolumeSnapshotClass", "volumesnapshotclasses"),
    );
    let list = match api.list(&ListParams::default()).await {
        Ok(list) => list.items,
        // No snapshot controller's CRDs: no snapshot API.
        Err(e) if not_found(&e) => return Ok(BTreeMap::new()),
        Err(e) => return Err(K8sError::api("listing VolumeSnapshotClasses", e)),
    };
    let mut chosen: BTreeMap<String, (bool, String)> = BTreeMap::new();
    for class in list {
        let (Some(name), Some(driver)) = (
            class.metadata.name.clone(),
            class.data["driver"].as_str().map(str::to_owned),
        ) else {
            continue;
        };
        let default = class
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DEFAULT_CLASS))
            .is_some_and(|v| v == "true");
        let better = match chosen.get(&driver) {
            None => true,
            Some((was_default, was)) => {
                (default && !was_default) || (default == *was_default && name < *was)
            }
        };
        if better {
            chosen.insert(driver, (default, name));
        }
    }
    Ok(chosen.into_iter().map(|(d, (_, n))| (d, n)).collect())
}

/// One claim to snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotRequest {
    /// The claim's namespace.
    pub namespace: String,
    /// The claim.
    pub claim: String,
    /// The VolumeSnapshotClass.
    pub class: String,
    /// The storage class of the temporary claim (the claim's).
    pub storage_class: String,
    /// The size of the temporary claim when the snapshot names none.
    pub capacity: String,
    /// The name of the VolumeSnapshot and of the temporary claim.
    pub name: String,
}

/// Takes the snapshots of `requests` at once, waits for each to be ready
/// and makes its temporary claim; gives each request's outcome in order.
/// Every object is labelled `labels`.
pub async fn take_all(
    client: &kube::Client,
    requests: &[SnapshotRequest],
    labels: &Value,
) -> Vec<Result<(), String>> {
    let mut outcomes: Vec<Option<Result<(), String>>> = Vec::with_capacity(requests.len());
    for request in requests {
        let created = create_snapshot(client, request, labels).await.err();
        outcomes.push(created.map(Err));
    }
    let started = Instant::now();
    while outcomes.iter().any(Option::is_none) {
        tokio::time::sleep(POLL).await;
        for (request, outcome) in requests.iter().zip(outcomes.iter_mut()) {
            if outcome.is_some() {
                continue;
            }
            *outcome = match readiness(client, request).await {
                Ok(None) if started.elapsed() > READY_WITHIN => Some(Err(format!(
                    "its VolumeSnapshot {}/{} was not ready to use within {}",
                    request.namespace,
                    request.name,
                    humantime::format_duration(READY_WITHIN)
                ))),
                Ok(None) => None,
                Ok(Some(size)) => Some(create_claim(client, request, labels, size).await),
                Err(reason) => Some(Err(reason)),
            };
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err("no outcome".into())))
        .collect()
}

async fn create_snapshot(
    client: &kube::Client,
    request: &SnapshotRequest,
    labels: &Value,
) -> Result<(), String> {
    let object = json!({
        "apiVersion": format!("{GROUP}/v1"),
        "kind": "VolumeSnapshot",
        "metadata": {"name": request.name, "namespace": request.namespace, "labels": labels},
        "spec": {
            "volumeSnapshotClassName": request.class,
            "source": {"persistentVolumeClaimName": request.claim},
        },
    });
    let typed: DynamicObject =
        serde_json::from_value(object).map_err(|e| format!("making its VolumeSnapshot: {e}"))?;
    snapshots(client, Some(&request.namespace))
        .create(&PostParams::default(), &typed)
        .await
        .map_err(|e| {
            format!(
                "creating its VolumeSnapshot {}/{} (class {}): {e}",
                request.namespace, request.name, request.class
            )
        })?;
    Ok(())
}

/// `Some(size)` once the snapshot is ready to use (its restore size, if
/// it names one), `None` while it is not; why not when it failed.
async fn readiness(
    client: &kube::Client,
    request: &SnapshotRequest,
) -> Result<Option<Option<String>>, String> {
    let what = format!("its VolumeSnapshot {}/{}", request.namespace, request.name);
    let current = snapshots(client, Some(&request.namespace))
        .get_opt(&request.name)
        .await
        .map_err(|e| format!("reading {what}: {e}"))?
        .ok_or_else(|| format!("{what} disappeared"))?;
    let status = &current.data["status"];
    if let Some(message) = status["error"]["message"].as_str() {
        return Err(format!(
            "{what} failed: {message}; see `kubectl -n {} describe volumesnapshot {}` on the next run",
            request.namespace, request.name
        ));
    }
    if status["readyToUse"] != Value::Bool(true) {
        return Ok(None);
    }
    Ok(Some(status["restoreSize"].as_str().map(str::to_owned)))
}

async fn create_claim(
    client: &kube::Client,
    request: &SnapshotRequest,
    labels: &Value,
    size: Option<String>,
) -> Result<(), String> {
    let size = size
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| request.capacity.clone());
    let mut spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": if size.is_empty() { "1Gi" } else { &size }}},
        "dataSource": {"apiGroup": GROUP, "kind": "VolumeSnapshot", "name": request.name},
    });
    if !request.storage_class.is_empty() {
        spec["storageClassName"] = json!(request.storage_class);
    }
    let object = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": request.name, "namespace": request.namespace, "labels": labels},
        "spec": spec,
    });
    let typed: PersistentVolumeClaim = serde_json::from_value(object)
        .map_err(|e| format!("making the claim from its VolumeSnapshot: {e}"))?;
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), &request.namespace)
        .create(&PostParams::default(), &typed)
        .await
        .map_err(|e| {
            format!(
                "creating the claim {}/{} from its VolumeSnapshot: {e}",
                request.namespace, request.name
            )
        })?;
    Ok(())
}

/// Deletes the temporary claims and VolumeSnapshots listed with `params`
/// whose run (label `run_label`) `doomed` accepts, in every namespace.
///
/// Fails when the API refuses a listing or a delete.
pub async fn remove(
    client: &kube::Client,
    params: &ListParams,
    run_label: &str,
    doomed: &impl Fn(&str) -> bool,
) -> Result<(), K8sError> {
    delete_runs(
        &Api::<PersistentVolumeClaim>::all(client.clone()),
        |namespace| Api::namespaced(client.clone(), namespace),
        (params, run_label),
        doomed,
        "the movers' temporary claims",
    )
    .await?;
    delete_runs(
        &snapshots(client, None),
        |namespace| snapshots(client, Some(namespace)),
        (params, run_label),
        doomed,
        "the movers' VolumeSnapshots",
    )
    .await
}
