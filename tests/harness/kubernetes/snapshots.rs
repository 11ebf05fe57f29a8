//! CSI snapshots, as the external snapshot controller and a CSI driver
//! with snapshot support would make them: the `snapshot.storage.k8s.io/v1`
//! CRDs ([`crds`]), a VolumeSnapshot that copies its source claim's folder
//! when created (ready to use at once, or failed with the reason in
//! `status.error`), and a new claim whose `dataSource` names a
//! VolumeSnapshot provisioned with that copy.
//!
//! Only a CSI volume whose class's driver is the VolumeSnapshotClass's
//! driver can be snapshotted, as with real drivers; the copy keeps owners,
//! modes and times (`cp -a`).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::State;
use super::store::Key;

/// The snapshot API group.
const GROUP: &str = "snapshot.storage.k8s.io";

/// The established CRDs of the snapshot API: VolumeSnapshot (namespaced),
/// VolumeSnapshotClass and VolumeSnapshotContent (cluster-wide).
pub fn crds() -> Vec<Value> {
    [
        ("volumesnapshots", "VolumeSnapshot", "Namespaced"),
        ("volumesnapshotclasses", "VolumeSnapshotClass", "Cluster"),
        ("volumesnapshotcontents", "VolumeSnapshotContent", "Cluster"),
    ]
    .into_iter()
    .map(|(plural, kind, scope)| {
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("{plural}.{GROUP}")},
            "spec": {"group": GROUP, "scope": scope,
                "names": {"plural": plural, "kind": kind},
                "versions": [{"name": "v1", "served": true, "storage": true}]},
            "status": {"conditions": [{"type": "Established", "status": "True"}]}})
    })
    .collect()
}

/// A VolumeSnapshotClass for `driver`.
pub fn class(name: &str, driver: &str) -> Value {
    json!({"apiVersion": format!("{GROUP}/v1"), "kind": "VolumeSnapshotClass",
        "metadata": {"name": name}, "driver": driver, "deletionPolicy": "Delete"})
}

fn core_key(resource: &str, namespace: &str, name: &str) -> Key {
    (
        String::new(),
        resource.to_owned(),
        namespace.to_owned(),
        name.to_owned(),
    )
}

/// Takes the VolumeSnapshot just created at `key`.
pub(crate) fn take(state: &mut State, key: &Key) {
    let status = match copy_source(state, key) {
        Ok((folder, size)) => {
            state
                .snapshot_folders
                .insert((key.2.clone(), key.3.clone()), folder);
            json!({"readyToUse": true, "restoreSize": size,
                "boundVolumeSnapshotContentName": format!("snapcontent-{}-{}", key.2, key.3),
                "creationTime": "2026-11-26T00:00:00Z"})
        }
        Err(message) => json!({"readyToUse": false,
            "error": {"message": message, "time": "2026-11-26T00:00:00Z"}}),
    };
    state.store.set_status(key, status);
}

/// Copies the snapshot's source folder; gives the copy and the volume's
/// size, or why the driver refuses.
fn copy_source(state: &State, key: &Key) -> Result<(PathBuf, Value), String> {
    let snapshot = state.store.get(key).ok_or("the VolumeSnapshot is gone")?;
    let runner = state
        .job_runner
        .as_ref()
        .ok_or("no CSI driver runs (the server runs no Jobs)")?;
    let claim = snapshot["spec"]["source"]["persistentVolumeClaimName"]
        .as_str()
        .ok_or("spec.source.persistentVolumeClaimName is required")?;
    let class_name = snapshot["spec"]["volumeSnapshotClassName"]
        .as_str()
        .ok_or("spec.volumeSnapshotClassName is required (no default class here)")?;
    let class = state
        .store
        .get(&(
            GROUP.to_owned(),
            "volumesnapshotclasses".to_owned(),
            String::new(),
            class_name.to_owned(),
        ))
        .ok_or_else(|| format!("VolumeSnapshotClass {class_name:?} not found"))?;
    let pvc = state
        .store
        .get(&core_key("persistentvolumeclaims", &key.2, claim))
        .ok_or_else(|| format!("persistentvolumeclaim {claim:?} not found"))?;
    let pv_name = pvc["spec"]["volumeName"]
        .as_str()
        .ok_or_else(|| format!("persistentvolumeclaim {claim:?} is not bound"))?;
    let pv = state
        .store
        .get(&core_key("persistentvolumes", "", pv_name))
        .ok_or_else(|| format!("persistentvolume {pv_name:?} not found"))?;
    let csi = &pv["spec"]["csi"];
    if csi["driver"] != class["driver"] {
        return Err(format!(
            "the volume's driver {} is not the class's {}",
            csi["driver"], class["driver"]
        ));
    }
    let source = csi["volumeHandle"]
        .as_str()
        .and_then(|handle| state.csi_folders.get(handle))
        .ok_or_else(|| format!("persistentvolume {pv_name:?} has no folder the driver knows"))?;
    let copy = runner
        .scratch
        .join("snapshots")
        .join(format!("{}-{}", key.2, key.3));
    copy_tree(source, &copy)?;
    Ok((copy, pv["spec"]["capacity"]["storage"].clone()))
}

/// Fills the folder of claim `claim` (just provisioned at `folder`) from
/// the VolumeSnapshot its `dataSource` names, if it names one.
pub(crate) fn fill_from_source(state: &State, claim: &Value, namespace: &str, folder: &Path) {
    let source = &claim["spec"]["dataSource"];
    if source["kind"] != "VolumeSnapshot" || source["apiGroup"] != GROUP {
        return;
    }
    let Some(name) = source["name"].as_str() else {
        return;
    };
    let copy = state
        .snapshot_folders
        .get(&(namespace.to_owned(), name.to_owned()));
    if let Some(Err(e)) = copy.map(|copy| copy_tree(copy, folder)) {
        eprintln!("the test CSI driver could not restore {namespace}/{name}: {e}");
    }
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("creating {}: {e}", to.display()))?;
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from.join("."))
        .arg(to)
        .status()
        .map_err(|e| format!("running cp: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "copying {} to {} failed ({status})",
            from.display(),
            to.display()
        ))
    }
}
