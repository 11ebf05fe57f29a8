//! `kind = "kubernetes"`: every object of every served resource, one
//! canonical YAML document per object at
//! `<group>/<resource>/<namespace>/<name>.yaml` (`core` for the core group,
//! `_cluster` for cluster-scoped objects).
//!
//! Discovery finds every group and resource at its preferred version; each
//! listable resource is listed in pages. What the server owns is stripped
//! (see [`crate::k8s::canonical`]); ownerReferences stay (a restore
//! decides). Events, leases, nodes, CSI nodes, volume attachments,
//! controller-made endpoints and non-listable kinds are left out by
//! default, as is any object marked `lifeboat.dev/exclude=true`; CRDs,
//! cluster-scoped objects and Secrets are kept (everything is encrypted).
//!
//! The root file `lifeboat-inventory.json` counts objects per resource and
//! namespace (restore-key only, it names namespaces); the snapshot metadata
//! holds only counts per resource type.

pub mod drill;
pub mod filter;
pub mod restore;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kube::api::{Api, DynamicObject, ListParams};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{SourceContext, SourceError, resolve};
use crate::backup::SnapshotBuilder;
use crate::backup::documents::Documents;
use crate::backup::items::{Item, Outcome};
use crate::k8s::discovery::{ServedResource, discover};
use crate::k8s::{K8sError, canonical, connect};

/// The snapshot's inventory file.
pub const INVENTORY_FILE: &str = "lifeboat-inventory.json";

/// The folder of cluster-scoped objects within a resource's folder.
pub const CLUSTER_SCOPE: &str = "_cluster";

/// Settings of a Kubernetes source.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSource {
    /// A kubeconfig file; default: in-cluster service account or
    /// `KUBECONFIG`.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context; default: its current one.
    #[serde(default)]
    pub context: Option<String>,
    /// Only these namespaces (empty: all).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Never these namespaces.
    #[serde(default)]
    pub exclude_namespaces: Vec<String>,
    /// Only these resources (`deployments.apps`, `apps/deployments`,
    /// `Deployment`); naming a resource skipped by default includes it.
    #[serde(default)]
    pub resources: Vec<String>,
    /// Never these resources.
    #[serde(default)]
    pub exclude_resources: Vec<String>,
    /// Only objects matching this label selector (`app=web,tier!=cache`).
    #[serde(default)]
    pub labels: Option<String>,
    /// Whether cluster-scoped objects are kept (Namespaces of the chosen
    /// namespaces always are).
    #[serde(default = "yes")]
    pub cluster_scoped: bool,
    /// Whether `status` is kept.
    #[serde(default)]
    pub keep_status: bool,
    /// Objects per list request.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
}

fn yes() -> bool {
    true
}

fn default_page_size() -> u32 {
    500
}

/// Why the Kubernetes objects could not be backed up.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    /// The API could not be reached or discovery failed.
    #[error(transparent)]
    Api(#[from] K8sError),
    /// An object could not be written as YAML.
    #[error("cannot write {path} as YAML: {source}")]
    Yaml {
        /// Where it would go.
        path: String,
        /// The serialiser's error.
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// The inventory could not be written as JSON.
    #[error("cannot write {INVENTORY_FILE} as JSON: {source}")]
    Inventory {
        /// The serialiser's error.
        #[source]
        source: serde_json::Error,
    },
}

/// What one resource type holds, per namespace (`_cluster` for
/// cluster-scoped objects).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceInventory {
    /// API group (`""` for core).
    pub group: String,
    /// Version the objects were read at.
    pub version: String,
    /// Plural name.
    pub resource: String,
    /// Kind.
    pub kind: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Objects stored per namespace.
    pub objects: BTreeMap<String, u64>,
}

/// The inventory file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// Every resource with stored objects.
    pub resources: Vec<ResourceInventory>,
    /// Objects left out on purpose, as `resource namespace/name: reason`.
    pub skipped_objects: Vec<String>,
}

impl KubernetesSource {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if let Some(path) = self.kubeconfig.as_mut() {
            resolve(path, base);
        }
    }

    /// Why `resource` is left out, if it is.
    fn skip_resource(&self, resource: &ServedResource) -> Option<String> {
        let named = |list: &[String]| list.iter().any(|spec| filter::names(spec, resource));
        if named(&self.exclude_resources) {
            return Some("listed in exclude_resources".into());
        }
        if !self.resources.is_empty() {
            if !named(&self.resources) {
                return Some("not listed in resources".into());
            }
            if !resource.supports("list") {
                return Some("it cannot be listed".into());
            }
            return None;
        }
        if let Some(reason) = filter::default_skip(resource) {
            return Some(format!("{reason} (name it in resources to keep it)"));
        }
        let is_namespace = resource.api.group.is_empty() && resource.api.plural == "namespaces";
        if !resource.namespaced && !self.cluster_scoped && !is_namespace {
            return Some("cluster_scoped = false".into());
        }
        None
    }

    /// Whether objects of namespace `namespace` are wanted.
    fn wants_namespace(&self, namespace: &str) -> bool {
        (self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == namespace))
            && !self.exclude_namespaces.iter().any(|n| n == namespace)
    }

    pub(crate) async fn back_up(
        &self,
        builder: &mut SnapshotBuilder,
        _context: &SourceContext,
    ) -> Result<Value, SourceError> {
        let client = connect(self.kubeconfig.as_deref(), self.context.as_deref())
            .await
            .map_err(KubernetesError::from)?;
        let served = discover(&client).await.map_err(KubernetesError::from)?;
        for (group_version, reason) in &served.failed {
            builder.record(Item::new(
                "resource",
                group_version.as_str(),
                Outcome::Failed,
                format!("discovery of this group version failed: {reason}"),
            ));
        }
        let mut documents = Documents::default();
        let mut inventory = Inventory::default();
        let mut counts = BTreeMap::new();
        let mut failed = Vec::new();
        let mut selector_services = None;
        for resource in &served.resources {
            let name = resource.qualified_name();
            if let Some(reason) = self.skip_resource(resource) {
                builder.record(Item::new("resource", name, Outcome::Skipped, reason));
                continue;
            }
            if resource.api.group.is_empty()
                && resource.api.plural == "endpoints"
                && selector_services.is_none()
            {
                selector_services = Some(services_with_selectors(&client).await);
            }
            let services = selector_services.as_ref().and_then(|s| s.as_ref().ok());
            let listed = self.list(&client, resource).await;
            let objects = match listed {
                Ok(objects) => objects,
                Err(e) => {
                    builder.record(Item::new(
                        "resource",
                        name.clone(),
                        Outcome::Failed,
                        e.to_string(),
                    ));
                    failed.push(name);
                    continue;
                }
            };
            let mut entry = ResourceInventory {
                group: resource.api.group.clone(),
                version: resource.api.version.clone(),
                resource: resource.api.plural.clone(),
                kind: resource.api.kind.clone(),
                namespaced: resource.namespaced,
                objects: BTreeMap::new(),
            };
            let mut skipped = 0u64;
            for mut object in objects {
                let namespace = object["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let object_name = object["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let in_scope = if resource.namespaced {
                    self.wants_namespace(&namespace)
                } else if resource.api.group.is_empty() && resource.api.plural == "namespaces" {
                    self.wants_namespace(&object_name)
                } else {
                    true
                };
                if !in_scope {
                    continue;
                }
                if let Some(reason) = filter::skip_object(
                    resource,
                    &object,
                    services.map(Vec::as_slice).unwrap_or_default(),
                ) {
                    skipped += 1;
                    inventory
                        .skipped_objects
                        .push(format!("{name} {namespace}/{object_name}: {reason}"));
                    continue;
                }
                let mtime = created_at(&object);
                canonical::strip(
                    &mut object,
                    &resource.api.api_version,
                    &resource.api.kind,
                    self.keep_status,
                );
                let scope = if resource.namespaced {
                    namespace.as_str()
                } else {
                    CLUSTER_SCOPE
                };
                let file = format!("{object_name}.yaml");
                let group = if resource.api.group.is_empty() {
                    "core"
                } else {
                    resource.api.group.as_str()
                };
                let path = [group, resource.api.plural.as_str(), scope, file.as_str()];
                let yaml = canonical::to_yaml(&object).map_err(|source| KubernetesError::Yaml {
                    path: path.join("/"),
                    source,
                })?;
                documents
                    .insert(&path, yaml.into_bytes(), mtime)
                    .map_err(SourceError::from)?;
                *entry.objects.entry(scope.to_owned()).or_default() += 1;
            }
            let stored: u64 = entry.objects.values().sum();
            let mut detail = format!("{stored} objects");
            if skipped > 0 {
                detail.push_str(&format!(", {skipped} left out (see {INVENTORY_FILE})"));
            }
            builder.record(Item::new("resource", name.clone(), Outcome::Stored, detail));
            if stored > 0 {
                counts.insert(name, stored);
                inventory.resources.push(entry);
            }
        }
        if let Some(Err(e)) = &selector_services {
            builder.warn(format!(
                "could not list Services to tell controller-made Endpoints apart, so all Endpoints were kept: {e}"
            ));
        }
        let objects: u64 = counts.values().sum();
        let inventory_json = serde_json::to_vec_pretty(&inventory)
            .map_err(|source| KubernetesError::Inventory { source })?;
        documents
            .insert(&[INVENTORY_FILE], inventory_json, 0)
            .map_err(SourceError::from)?;
        builder.add_documents(documents).await?;
        if !failed.is_empty() {
            builder.warn(format!(
                "{} resource types could not be listed and are missing from this snapshot: {}",
                failed.len(),
                failed.join(", ")
            ));
        }
        Ok(serde_json::json!({
            "objects": objects,
            "resources": counts,
            "skipped_objects": inventory.skipped_objects.len(),
            "failed_resources": failed.len() + served.failed.len(),
        }))
    }

    /// Every object of `resource` matching the label selector, page by page.
    async fn list(
        &self,
        client: &kube::Client,
        resource: &ServedResource,
    ) -> Result<Vec<Value>, K8sError> {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource.api);
        let mut params = ListParams::default().limit(self.page_size.max(1));
        if let Some(labels) = &self.labels {
            params = params.labels(labels);
        }
        let mut objects = Vec::new();
        loop {
            let page = api
                .list(&params)
                .await
                .map_err(|e| K8sError::api(format!("listing {}", resource.qualified_name()), e))?;
            for item in page.items {
                let value = serde_json::to_value(&item).map_err(|e| {
                    K8sError::api(
                        format!("reading {}", resource.qualified_name()),
                        kube::Error::SerdeError(e),
                    )
                })?;
                objects.push(value);
            }
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => params = params.continue_token(&token),
                _ => break,
            }
        }
        Ok(objects)
    }
}

/// `namespace/name` of every Service with a selector.
async fn services_with_selectors(client: &kube::Client) -> Result<Vec<String>, K8sError> {
    let api: Api<k8s_openapi::api::core::v1::Service> = Api::all(client.clone());
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|e| K8sError::api("listing Services", e))?;
    Ok(list
        .items
        .into_iter()
        .filter(|s| {
            s.spec
                .as_ref()
                .and_then(|spec| spec.selector.as_ref())
                .is_some_and(|s| !s.is_empty())
        })
        .map(|s| {
            format!(
                "{}/{}",
                s.metadata.namespace.unwrap_or_default(),
                s.metadata.name.unwrap_or_default()
            )
        })
        .collect())
}

/// The object's creation time in seconds since the epoch (0 if unknown):
/// a file time that changes only when the object is recreated.
fn created_at(object: &Value) -> i64 {
    object["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map_or(0, |t| t.timestamp())
}

impl From<KubernetesError> for SourceError {
    fn from(e: KubernetesError) -> Self {
        SourceError::Kubernetes(e)
    }
}
