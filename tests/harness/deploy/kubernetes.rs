//! Reading rendered Kubernetes documents as the cluster would: the pod
//! of the Deployment, strict checks of every document (k8s-openapi types
//! round-tripped, custom resources against what their CRDs require), and
//! where a path lands among the container's mounts.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PersistentVolumeClaim, PodSpec, Secret, Service,
    ServiceAccount, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde_json::Value;

use super::{deploy_dir, describe, find, render, round_trip};
use crate::cli::write_file;

/// The base, in the layout of a GitOps repository's `kubernetes/` folder.
pub const BASE: &str = "kubernetes/base/lifeboat";

/// The example cluster's overlay.
pub const OVERLAY: &str = "kubernetes/overlays/lifeboat/homelab";

/// The kustomizations under test.
pub const KUSTOMIZATIONS: [&str; 2] = [BASE, OVERLAY];

/// Renders `deploy/<which>`.
///
/// Fails as [`render`] does.
pub fn rendered(which: &str) -> Result<Vec<Value>> {
    render(&deploy_dir().join(which))
}

/// The Deployment `lifeboat`, strictly typed.
///
/// Fails when it is missing or does not fit its type.
pub fn deployment(documents: &[Value]) -> Result<Deployment> {
    round_trip(find(documents, "Deployment", "lifeboat")?)
}

/// The pod template's spec.
pub fn pod_spec(deployment: &Deployment) -> Option<&PodSpec> {
    deployment.spec.template.spec.as_ref()
}

/// The pod's first container.
///
/// Fails when there is none.
pub fn container(deployment: &Deployment) -> Result<Container> {
    pod_spec(deployment)
        .and_then(|s| s.containers.first())
        .cloned()
        .context("the Deployment has no container")
}

/// The pod's volumes.
pub fn pod_volumes(deployment: &Deployment) -> Vec<Volume> {
    pod_spec(deployment)
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default()
}

/// Checks the fields a custom resource's CRD requires.
fn check_custom_resource(document: &Value) -> Result<()> {
    let what = describe(document);
    let spec = &document["spec"];
    ensure!(
        document["metadata"]["name"].is_string(),
        "{what} has no name"
    );
    match (document["apiVersion"].as_str(), document["kind"].as_str()) {
        (Some("monitoring.coreos.com/v1"), Some("ServiceMonitor")) => {
            ensure!(spec["selector"].is_object(), "{what} has no spec.selector");
            let endpoints = spec["endpoints"].as_array().context("no spec.endpoints")?;
            ensure!(!endpoints.is_empty(), "{what} has no endpoint");
            for endpoint in endpoints {
                ensure!(
                    endpoint["port"].is_string(),
                    "{what}: an endpoint without port"
                );
            }
        }
        (Some("monitoring.coreos.com/v1"), Some("PrometheusRule")) => {
            let groups = spec["groups"].as_array().context("no spec.groups")?;
            for group in groups {
                ensure!(group["name"].is_string(), "{what}: a group without name");
                for rule in group["rules"].as_array().context("a group without rules")? {
                    ensure!(rule["expr"].is_string(), "{what}: a rule without expr");
                    ensure!(
                        rule["alert"].is_string() != rule["record"].is_string(),
                        "{what}: a rule needs exactly one of alert and record"
                    );
                }
            }
        }
        (Some("grafana.integreatly.org/v1beta1"), Some("GrafanaDashboard")) => {
            ensure!(
                spec["instanceSelector"].is_object(),
                "{what} has no spec.instanceSelector"
            );
            let sources = [
                "json",
                "gzipJson",
                "url",
                "configMapRef",
                "grafanaCom",
                "jsonnet",
            ];
            ensure!(
                sources.iter().filter(|s| !spec[**s].is_null()).count() == 1,
                "{what} needs exactly one dashboard source"
            );
        }
        (Some("talos.dev/v1alpha1"), Some("ServiceAccount")) => {
            let roles = spec["roles"].as_array().context("no spec.roles")?;
            ensure!(
                roles
                    .iter()
                    .all(|r| r.as_str().is_some_and(|r| r.starts_with("os:"))),
                "{what}: Talos roles are os:…"
            );
        }
        _ => bail!(
            "{what} ({}) is no kind this test knows",
            document["apiVersion"]
        ),
    }
    Ok(())
}

/// Every document either round-trips through its Kubernetes type or is a
/// custom resource with its required fields.
///
/// Fails naming the document and the first field that does not fit.
pub fn check_document(document: &Value) -> Result<()> {
    let kind = document["kind"].as_str().unwrap_or_default();
    match document["apiVersion"]
        .as_str()
        .map(|version| (version, kind))
    {
        Some(("v1", "Namespace")) => round_trip::<Namespace>(document).map(drop),
        Some(("v1", "ServiceAccount")) => round_trip::<ServiceAccount>(document).map(drop),
        Some(("v1", "ConfigMap")) => round_trip::<ConfigMap>(document).map(drop),
        Some(("v1", "Secret")) => round_trip::<Secret>(document).map(drop),
        Some(("v1", "Service")) => round_trip::<Service>(document).map(drop),
        Some(("v1", "PersistentVolumeClaim")) => {
            round_trip::<PersistentVolumeClaim>(document).map(drop)
        }
        Some(("apps/v1", "Deployment")) => round_trip::<Deployment>(document).map(drop),
        Some(("networking.k8s.io/v1", "NetworkPolicy")) => {
            round_trip::<k8s_openapi::api::networking::v1::NetworkPolicy>(document).map(drop)
        }
        Some(("rbac.authorization.k8s.io/v1", "ClusterRole")) => {
            round_trip::<ClusterRole>(document).map(drop)
        }
        Some(("rbac.authorization.k8s.io/v1", "ClusterRoleBinding")) => {
            round_trip::<ClusterRoleBinding>(document).map(drop)
        }
        _ => check_custom_resource(document),
    }
}

/// Where `path` is mounted in the container: the mount and its volume.
///
/// Fails when no mount covers it.
pub fn mount_of<'a>(
    path: &Path,
    mounts: &'a [VolumeMount],
    volumes: &'a [Volume],
) -> Result<(&'a VolumeMount, &'a Volume)> {
    let mount = mounts
        .iter()
        .filter(|m| path.starts_with(&m.mount_path))
        .max_by_key(|m| m.mount_path.len())
        .with_context(|| {
            format!(
                "{} is not on any volume the container mounts",
                path.display()
            )
        })?;
    let volume = volumes
        .iter()
        .find(|v| v.name == mount.name)
        .with_context(|| format!("no volume {}", mount.name))?;
    Ok((mount, volume))
}

/// Writes the files a ConfigMap volume shows under `root`, as the pod
/// sees them below the mount.
///
/// Fails when an item names a key the ConfigMap lacks.
pub fn materialize(map: &ConfigMap, volume: &Volume, root: &Path) -> Result<()> {
    let data = map.data.clone().unwrap_or_default();
    let items = volume
        .config_map
        .as_ref()
        .and_then(|c| c.items.clone())
        .context("the config volume lists its items")?;
    for item in items {
        let text = data
            .get(&item.key)
            .with_context(|| format!("the ConfigMap has no key {}", item.key))?;
        write_file(&root.join(&item.path), text.as_bytes())?;
    }
    Ok(())
}
