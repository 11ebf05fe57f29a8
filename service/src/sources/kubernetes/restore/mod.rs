//! Putting Kubernetes objects back: the documents of a `kubernetes`
//! snapshot applied with server-side apply (field manager `lifeboat`) in
//! dependency order ([`order`]), waiting for new CRDs to be `Established`
//! before their custom resources.
//!
//! Objects a controller recreates (owned by a controller that is restored
//! too, like a Deployment's ReplicaSets and Pods) are skipped; other owner
//! references are kept, with the owner's new uid, when the owner was
//! applied before the object, and dropped otherwise. Services lose their cluster IPs, which the new
//! cluster assigns. Namespaces can be renamed on the way. One object
//! failing never stops the others; each gets a result. The GitOps
//! controllers managing the objects are paused meanwhile
//! ([`gitops`](crate::k8s::gitops)).

pub mod documents;
pub mod order;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde::Serialize;
use serde_json::Value;

use self::documents::Document;
use crate::k8s::K8sError;
use crate::k8s::discovery::{ServedResource, discover};
use crate::k8s::gitops::{self, ManagerResult};
use crate::sources::kubernetes::filter::names_resource;

/// The field manager lifeboat applies with.
pub const FIELD_MANAGER: &str = "lifeboat";

/// What to do with an object that exists already.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Existing {
    /// Leave it as it is.
    #[default]
    Skip,
    /// Apply the stored version over it.
    Update,
}

/// Which objects to apply, and how.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Only objects of these namespaces (cluster-scoped objects are kept
    /// unless `cluster_scoped` is false).
    pub namespaces: Vec<String>,
    /// Never objects of these namespaces.
    pub exclude_namespaces: Vec<String>,
    /// Only these resources (`deployments.apps`, `apps/deployments`,
    /// `Deployment`).
    pub resources: Vec<String>,
    /// Never these resources.
    pub exclude_resources: Vec<String>,
    /// Only objects with all these labels.
    pub labels: BTreeMap<String, String>,
    /// Whether cluster-scoped objects are applied.
    pub cluster_scoped: bool,
    /// Renames namespaces: old → new.
    pub namespace_map: BTreeMap<String, String>,
    /// Server-side dry run: nothing is changed.
    pub dry_run: bool,
    /// What to do with existing objects.
    pub existing: Existing,
    /// How long a new CRD may take to be established.
    pub crd_timeout: Duration,
    /// Pause the GitOps managers (Flux, Argo CD) of the objects while
    /// they are applied, and resume them afterwards ([`gitops`]).
    pub suspend_gitops: bool,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            exclude_namespaces: Vec::new(),
            resources: Vec::new(),
            exclude_resources: Vec::new(),
            labels: BTreeMap::new(),
            cluster_scoped: true,
            namespace_map: BTreeMap::new(),
            dry_run: false,
            existing: Existing::Skip,
            crd_timeout: Duration::from_secs(60),
            suspend_gitops: true,
        }
    }
}

/// What happened to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It did not exist and was created.
    Created,
    /// It existed and the stored version was applied over it.
    Updated,
    /// Left alone; the reason says why.
    Skipped,
    /// The server refused it; the reason says why.
    Failed,
}

/// One object's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectResult {
    /// `apps/deployments apps/web`.
    pub object: String,
    /// What happened.
    pub outcome: Outcome,
    /// Why, for skipped and failed objects.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// The results of one apply, in apply order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ApplyReport {
    /// Whether it was a dry run.
    pub dry_run: bool,
    /// Every object's result.
    pub objects: Vec<ObjectResult>,
    /// The GitOps managers paused before the apply, then resumed.
    pub gitops: Vec<ManagerResult>,
}

impl ApplyReport {
    /// How many objects had `outcome`.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.objects.iter().filter(|o| o.outcome == outcome).count()
    }

    fn push(&mut self, document: &Document, outcome: Outcome, reason: impl Into<String>) {
        self.objects.push(ObjectResult {
            object: document.label(),
            outcome,
            reason: reason.into(),
        });
    }
}

/// Applies `documents` to the cluster of `client`. Unless it is a dry
/// run or `suspend_gitops` is off, the GitOps managers of the objects are
/// paused first, managers among the documents are created paused, and
/// every manager lifeboat paused is resumed at the end — also when the
/// apply failed.
///
/// Fails only when the server's resources cannot be discovered; each
/// object's own failure is in the report.
pub async fn apply(
    client: &Client,
    documents: Vec<Document>,
    options: &ApplyOptions,
) -> Result<ApplyReport, K8sError> {
    let mut report = ApplyReport {
        dry_run: options.dry_run,
        ..ApplyReport::default()
    };
    let selected: Vec<Document> = documents
        .into_iter()
        .filter(|d| selected(d, options))
        .collect();
    let restored: BTreeSet<(String, String, String, String)> =
        selected.iter().map(identity).collect();
    let mut queue = Vec::new();
    for document in selected {
        match controller_owner(&document, &restored) {
            Some(owner) => report.push(
                &document,
                Outcome::Skipped,
                format!("its controller {owner} is restored and recreates it"),
            ),
            None => queue.push(document),
        }
    }
    queue.sort_by_key(|d| order::rank(&d.group, &d.resource));
    let pausing = options.suspend_gitops && !options.dry_run;
    if pausing {
        let named = queue
            .iter()
            .flat_map(|d| gitops::named_by(&d.object["metadata"]));
        report.gitops = gitops::suspend(client, named).await?;
    }
    let applied = apply_in_order(client, &queue, options, &restored, &mut report).await;
    if pausing {
        report.gitops.extend(gitops::resume(client).await?);
    }
    applied.map(|()| report)
}

/// Applies the ranked `queue`, one result per object in `report`.
async fn apply_in_order(
    client: &Client,
    queue: &[Document],
    options: &ApplyOptions,
    restored: &BTreeSet<(String, String, String, String)>,
    report: &mut ApplyReport,
) -> Result<(), K8sError> {
    let mut served = discover(client).await?.resources;
    let mut new_uids: BTreeMap<(String, String, String, String), String> = BTreeMap::new();
    let mut new_crds: Vec<String> = Vec::new();
    // Namespaces a dry run would create: what goes in them cannot be tried.
    let mut dry_namespaces: BTreeSet<String> = BTreeSet::new();
    let mut crds_settled = false;
    for document in queue {
        let rank = order::rank(&document.group, &document.resource);
        if rank > order::CRDS && !crds_settled {
            crds_settled = true;
            if !new_crds.is_empty() && !options.dry_run {
                wait_established(client, &new_crds, options.crd_timeout).await;
                served = discover(client).await?.resources;
            }
        }
        let mut object = prepare(document, options, restored, &new_uids);
        if options.suspend_gitops && !options.dry_run {
            if let Some(kind) = gitops::ManagerKind::of(&document.group, document.kind()) {
                kind.pause_stored(&mut object);
            }
        }
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let api_version = document.api_version();
        let kind = document.kind();
        let Some(resource) = served
            .iter()
            .find(|r| r.api.api_version == api_version && r.api.kind == kind)
        else {
            if options.dry_run && rank > order::CRDS {
                let reason = format!(
                    "{api_version} {kind} is not served yet; its CRD is only created by a real restore"
                );
                report.push(document, Outcome::Skipped, reason);
            } else {
                let reason = format!(
                    "{api_version} {kind} is not served by this cluster; install its CRD or API first"
                );
                report.push(document, Outcome::Failed, reason);
            }
            continue;
        };
        if resource.namespaced && dry_namespaces.contains(&namespace) {
            let reason = format!("its namespace {namespace} is only created by a real restore");
            report.push(document, Outcome::Skipped, reason);
            continue;
        }
        match apply_one(client, resource, &namespace, &object, options).await {
            Ok((outcome, reason, uid)) => {
                if outcome == Outcome::Created && document.group == "apiextensions.k8s.io" {
                    new_crds.push(document.name.clone());
                }
                if let Some(uid) = uid {
                    new_uids.insert(identity(document), uid);
                }
                if options.dry_run
                    && outcome == Outcome::Created
                    && document.group.is_empty()
                    && document.resource == "namespaces"
                {
                    let name = object["metadata"]["name"].as_str().unwrap_or_default();
                    dry_namespaces.insert(name.to_owned());
                }
                report.push(document, outcome, reason);
            }
            Err(reason) => report.push(document, Outcome::Failed, reason),
        }
    }
    Ok(())
}

/// Applies one object; returns its outcome, a reason and its uid.
async fn apply_one(
    client: &Client,
    resource: &ServedResource,
    namespace: &str,
    object: &Value,
    options: &ApplyOptions,
) -> Result<(Outcome, String, Option<String>), String> {
    let api: Api<DynamicObject> = if resource.namespaced {
        Api::namespaced_with(client.clone(), namespace, &resource.api)
    } else {
        Api::all_with(client.clone(), &resource.api)
    };
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let existing = api.get_opt(name).await.map_err(|e| e.to_string())?;
    if existing.is_some() && options.existing == Existing::Skip {
        return Ok((
            Outcome::Skipped,
            "it exists (--existing=update applies over it)".into(),
            None,
        ));
    }
    let mut params = PatchParams::apply(FIELD_MANAGER).force();
    if options.dry_run {
        params = params.dry_run();
    }
    let applied = api
        .patch(name, &params, &Patch::Apply(object))
        .await
        .map_err(|e| match e {
            kube::Error::Api(status) => status.message,
            other => other.to_string(),
        })?;
    let outcome = if existing.is_some() {
        Outcome::Updated
    } else {
        Outcome::Created
    };
    let uid = (!options.dry_run)
        .then(|| applied.metadata.uid.clone())
        .flatten();
    Ok((outcome, String::new(), uid))
}

/// Waits until every CRD of `names` is established, or the timeout.
async fn wait_established(client: &Client, names: &[String], timeout: Duration) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + timeout;
    for name in names {
        loop {
            let established = api.get_opt(name).await.ok().flatten().is_some_and(|crd| {
                crd.status
                    .and_then(|s| s.conditions)
                    .into_iter()
                    .flatten()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            if established || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// (group, kind, namespace, name) of a document.
fn identity(document: &Document) -> (String, String, String, String) {
    (
        document.group.clone(),
        document.kind().to_owned(),
        document.namespace.clone(),
        document.name.clone(),
    )
}

/// The group of an `apiVersion`.
fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(group, _)| group)
}

/// The identity an owner reference of an object in `namespace` points at.
fn owner_identity(reference: &Value, namespace: &str) -> (String, String, String, String) {
    (
        group_of(reference["apiVersion"].as_str().unwrap_or_default()).to_owned(),
        reference["kind"].as_str().unwrap_or_default().to_owned(),
        namespace.to_owned(),
        reference["name"].as_str().unwrap_or_default().to_owned(),
    )
}

/// `Kind/name` of the restored controller that owns `document`, if any.
fn controller_owner(
    document: &Document,
    restored: &BTreeSet<(String, String, String, String)>,
) -> Option<String> {
    document.object["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .filter(|r| r["controller"].as_bool() == Some(true))
        .find(|r| restored.contains(&owner_identity(r, &document.namespace)))
        .map(|r| {
            format!(
                "{}/{}",
                r["kind"].as_str().unwrap_or_default(),
                r["name"].as_str().unwrap_or_default()
            )
        })
}

/// Whether the options select `document`.
fn selected(document: &Document, options: &ApplyOptions) -> bool {
    let named = |list: &[String]| {
        list.iter()
            .any(|spec| names_resource(spec, &document.group, &document.resource, document.kind()))
    };
    if named(&options.exclude_resources)
        || (!options.resources.is_empty() && !named(&options.resources))
    {
        return false;
    }
    let namespace = if document.group.is_empty() && document.resource == "namespaces" {
        Some(document.name.as_str())
    } else if document.namespace.is_empty() {
        None
    } else {
        Some(document.namespace.as_str())
    };
    let in_scope = match namespace {
        Some(ns) => {
            !options.exclude_namespaces.iter().any(|n| n == ns)
                && (options.namespaces.is_empty() || options.namespaces.iter().any(|n| n == ns))
        }
        None => options.cluster_scoped,
    };
    if !in_scope {
        return false;
    }
    let labels = &document.object["metadata"]["labels"];
    options
        .labels
        .iter()
        .all(|(key, value)| labels[key].as_str() == Some(value))
}

/// The object as it is applied: namespaces renamed, owner references
/// resolved, what the new cluster assigns removed.
fn prepare(
    document: &Document,
    options: &ApplyOptions,
    restored: &BTreeSet<(String, String, String, String)>,
    new_uids: &BTreeMap<(String, String, String, String), String>,
) -> Value {
    let mut object = document.object.clone();
    let rename = |ns: &str| {
        options
            .namespace_map
            .get(ns)
            .cloned()
            .unwrap_or_else(|| ns.to_owned())
    };
    let metadata = &mut object["metadata"];
    if let Some(ns) = metadata["namespace"].as_str().map(rename) {
        metadata["namespace"] = Value::String(ns);
    }
    if document.group.is_empty() && document.resource == "namespaces" {
        metadata["name"] = Value::String(rename(&document.name));
    }
    if let Some(references) = metadata
        .get_mut("ownerReferences")
        .and_then(Value::as_array_mut)
    {
        references.retain_mut(|reference| {
            let owner = owner_identity(reference, &document.namespace);
            match (restored.contains(&owner), new_uids.get(&owner)) {
                (true, Some(uid)) => {
                    reference["uid"] = Value::String(uid.clone());
                    true
                }
                _ => false,
            }
        });
        if references.is_empty() {
            if let Some(map) = metadata.as_object_mut() {
                map.remove("ownerReferences");
            }
        }
    }
    if let Some(subjects) = object.get_mut("subjects").and_then(Value::as_array_mut) {
        for subject in subjects {
            if let Some(ns) = subject["namespace"].as_str().map(rename) {
                subject["namespace"] = Value::String(ns);
            }
        }
    }
    match (document.group.as_str(), document.resource.as_str()) {
        ("", "services") => {
            if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
                if spec.get("clusterIP").and_then(Value::as_str) != Some("None") {
                    spec.remove("clusterIP");
                    spec.remove("clusterIPs");
                }
            }
        }
        ("", "persistentvolumes") => {
            if let Some(claim) = object["spec"]
                .get_mut("claimRef")
                .and_then(Value::as_object_mut)
            {
                claim.remove("uid");
                claim.remove("resourceVersion");
                if let Some(ns) = claim.get("namespace").and_then(Value::as_str).map(rename) {
                    claim.insert("namespace".into(), Value::String(ns));
                }
            }
        }
        _ => {}
    }
    object
}
