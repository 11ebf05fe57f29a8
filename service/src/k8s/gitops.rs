//! Holding GitOps controllers off the objects lifeboat puts back.
//!
//! Flux (kustomize- and helm-controller) and Argo CD reconcile what they
//! manage back to what Git says; a restore or a rebuild that races them
//! loses, or has a half-restored object reconciled over. So before
//! applying, the managers of the objects are found and paused, and
//! afterwards resumed:
//!
//! - **Found** from the marks they leave on what they apply: Flux's
//!   `kustomize.toolkit.fluxcd.io/{name,namespace}` and
//!   `helm.toolkit.fluxcd.io/{name,namespace}` labels, Argo CD's
//!   `argocd.argoproj.io/tracking-id` annotation or (its default tracking)
//!   `app.kubernetes.io/instance` label — then, through the same marks on
//!   the managers themselves, up to the top (`flux-system` manages the
//!   other Kustomizations).
//! - **Paused** as their own tools pause them: a Flux Kustomization or
//!   HelmRelease with `spec.suspend: true` (what `flux suspend` sets), an
//!   Argo CD Application by removing `spec.syncPolicy.automated`.
//! - **Marked**: each manager paused here carries the annotation
//!   [`SUSPENDED_ANNOTATION`] holding the value it had before. [`resume`]
//!   restores exactly the marked ones — also after a failed apply, and in a
//!   later run after a crash — and never one that someone paused by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use serde::Serialize;
use serde_json::{Value, json};

use crate::k8s::K8sError;
use crate::k8s::discovery::{ServedResource, discover};

/// The annotation on a manager lifeboat paused: the JSON of the field's
/// value before (`null` when it was unset).
pub const SUSPENDED_ANNOTATION: &str = "lifeboat.dev/suspended-from";

/// The largest number of managers followed up from the objects: a forged
/// or looping chain of labels ends here.
const MAX_MANAGERS: usize = 1_000;

/// A kind of GitOps manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum ManagerKind {
    /// A Flux `Kustomization` (kustomize.toolkit.fluxcd.io).
    Kustomization,
    /// A Flux `HelmRelease` (helm.toolkit.fluxcd.io).
    HelmRelease,
    /// An Argo CD `Application` (argoproj.io).
    Application,
}

impl ManagerKind {
    const ALL: [Self; 3] = [Self::HelmRelease, Self::Application, Self::Kustomization];

    /// Its API group.
    pub fn group(self) -> &'static str {
        match self {
            Self::Kustomization => "kustomize.toolkit.fluxcd.io",
            Self::HelmRelease => "helm.toolkit.fluxcd.io",
            Self::Application => "argoproj.io",
        }
    }

    /// Its kind.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Kustomization => "Kustomization",
            Self::HelmRelease => "HelmRelease",
            Self::Application => "Application",
        }
    }

    /// The kind of an object of `group` and `kind`, if it is a manager.
    pub fn of(group: &str, kind: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.group() == group && k.kind() == kind)
    }

    /// The field that pauses it, below `spec`.
    fn field(self) -> &'static [&'static str] {
        match self {
            Self::Kustomization | Self::HelmRelease => &["suspend"],
            Self::Application => &["syncPolicy", "automated"],
        }
    }

    /// The field's value while paused (`null`: removed).
    fn paused(self) -> Value {
        match self {
            Self::Kustomization | Self::HelmRelease => Value::Bool(true),
            Self::Application => Value::Null,
        }
    }

    /// Whether an object of this kind is paused.
    pub fn is_paused(self, object: &Value) -> bool {
        let value = self.value_in(object);
        match self {
            Self::Kustomization | Self::HelmRelease => value == Value::Bool(true),
            Self::Application => value.is_null(),
        }
    }

    /// The pausing field's value in `object` (`null` when unset).
    pub fn value_in(self, object: &Value) -> Value {
        let mut at = &object["spec"];
        for part in self.field() {
            at = &at[part];
        }
        at.clone()
    }

    /// A merge patch setting the pausing field to `value` (`null`
    /// removes it) and the annotation to `annotation` (`null` removes it).
    fn patch(self, value: Value, annotation: Value) -> Value {
        let mut spec = value;
        for part in self.field().iter().rev() {
            spec = json!({ *part: spec });
        }
        json!({
            "metadata": {"annotations": {SUSPENDED_ANNOTATION: annotation}},
            "spec": spec,
        })
    }

    /// Pauses `object` (a manager about to be created by a restore) and
    /// marks it with what it held, unless it is paused already.
    pub fn pause_stored(self, object: &mut Value) {
        if self.is_paused(object) {
            return;
        }
        let before = self.value_in(object);
        merge(
            object,
            &self.patch(self.paused(), Value::String(before.to_string())),
        );
    }
}

/// One manager: its kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Manager {
    /// Its kind.
    pub kind: ManagerKind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl fmt::Display for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind.kind(), self.namespace, self.name)
    }
}

/// A manager as an object's marks name it: Flux's name it whole; Argo
/// CD's name only the Application (and, for Applications outside Argo
/// CD's own namespace, `NAMESPACE_NAME`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Named {
    /// A Flux manager.
    Flux(Manager),
    /// An Argo CD Application, by its tracking name.
    Argo(String),
}

/// The managers `metadata` (an object's `metadata`) names.
pub fn named_by(metadata: &Value) -> Vec<Named> {
    let labels = &metadata["labels"];
    let label = |key: &str| labels[key].as_str().filter(|v| !v.is_empty());
    let mut named = Vec::new();
    for (kind, prefix) in [
        (ManagerKind::Kustomization, "kustomize.toolkit.fluxcd.io"),
        (ManagerKind::HelmRelease, "helm.toolkit.fluxcd.io"),
    ] {
        let name = label(&format!("{prefix}/name"));
        let namespace = label(&format!("{prefix}/namespace"));
        if let (Some(name), Some(namespace)) = (name, namespace) {
            named.push(Named::Flux(Manager {
                kind,
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            }));
        }
    }
    let tracking = metadata["annotations"]["argocd.argoproj.io/tracking-id"]
        .as_str()
        .and_then(|id| id.split_once(':'))
        .map(|(app, _)| app);
    if let Some(app) = tracking.or_else(|| label("app.kubernetes.io/instance")) {
        named.push(Named::Argo(app.to_owned()));
    }
    named
}

/// What happened to one manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Paused by this run.
    Suspended,
    /// Already paused, not by lifeboat: left as it is and not resumed.
    LeftSuspended,
    /// Paused by an earlier run that did not finish: kept paused, resumed
    /// with the others.
    StillSuspended,
    /// Set back to what it had before lifeboat paused it.
    Resumed,
    /// The request failed; the reason says why.
    Failed,
}

/// One manager's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManagerResult {
    /// `Kustomization flux-system/apps`.
    pub manager: String,
    /// What happened.
    pub action: Action,
    /// Why, for failures.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl ManagerResult {
    fn new(manager: &Manager, action: Action, reason: impl Into<String>) -> Self {
        Self {
            manager: manager.to_string(),
            action,
            reason: reason.into(),
        }
    }
}

/// The served resources of the manager kinds this cluster has.
async fn served_managers(
    client: &Client,
) -> Result<BTreeMap<ManagerKind, ServedResource>, K8sError> {
    let served = discover(client).await?.resources;
    Ok(served
        .into_iter()
        .filter_map(|r| ManagerKind::of(&r.api.group, &r.api.kind).map(|k| (k, r)))
        .collect())
}

fn api(client: &Client, resource: &ServedResource, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, &resource.api)
}

/// Every live object of a manager kind, as JSON.
async fn list_all(client: &Client, resource: &ServedResource) -> Result<Vec<Value>, K8sError> {
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &resource.api);
    let listed = all
        .list(&ListParams::default())
        .await
        .map_err(|source| K8sError::Api {
            what: format!("listing {}", resource.api.plural),
            source,
        })?;
    Ok(listed
        .items
        .into_iter()
        .filter_map(|o| serde_json::to_value(o).ok())
        .collect())
}

/// Pauses every live manager that `named` names, and the managers above
/// them; returns each one's result. Managers not in the cluster are
/// left out (a restore creates them paused: [`ManagerKind::pause_stored`]).
///
/// Fails only when the cluster's resources or Applications cannot be
/// listed; a manager that cannot be paused is a failed result.
pub async fn suspend(
    client: &Client,
    named: impl IntoIterator<Item = Named>,
) -> Result<Vec<ManagerResult>, K8sError> {
    let served = served_managers(client).await?;
    let applications = match served.get(&ManagerKind::Application) {
        Some(resource) => list_all(client, resource).await?,
        None => Vec::new(),
    };
    let mut queue: Vec<Named> = named.into_iter().collect();
    queue.sort();
    queue.dedup();
    queue.reverse();
    let mut seen = BTreeSet::new();
    let mut results = Vec::new();
    while let Some(next) = queue.pop() {
        let Some(manager) = resolve(&next, &applications) else {
            continue;
        };
        let Some(resource) = served.get(&manager.kind) else {
            continue;
        };
        if seen.len() >= MAX_MANAGERS || !seen.insert(manager.clone()) {
            continue;
        }
        let api = api(client, resource, &manager.namespace);
        let live = match api.get_opt(&manager.name).await {
            Ok(Some(live)) => serde_json::to_value(live).unwrap_or_default(),
            Ok(None) => continue,
            Err(e) => {
                results.push(ManagerResult::new(&manager, Action::Failed, e.to_string()));
                continue;
            }
        };
        queue.extend(named_by(&live["metadata"]));
        let kind = manager.kind;
        if live["metadata"]["annotations"][SUSPENDED_ANNOTATION].is_string() {
            results.push(ManagerResult::new(&manager, Action::StillSuspended, ""));
            continue;
        }
        if kind.is_paused(&live) {
            results.push(ManagerResult::new(&manager, Action::LeftSuspended, ""));
            continue;
        }
        let before = kind.value_in(&live).to_string();
        let patch = kind.patch(kind.paused(), Value::String(before));
        results.push(patch_manager(&api, &manager, &patch, Action::Suspended).await);
    }
    Ok(results)
}

/// Merge-patches `manager`; its result is `done` or the failure.
async fn patch_manager(
    api: &Api<DynamicObject>,
    manager: &Manager,
    patch: &Value,
    done: Action,
) -> ManagerResult {
    match api
        .patch(&manager.name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => ManagerResult::new(manager, done, ""),
        Err(e) => ManagerResult::new(manager, Action::Failed, e.to_string()),
    }
}

/// The manager `named` names: Flux's as named, an Argo CD Application
/// by its tracking name among the live `applications` (none when no
/// Application has it — `app.kubernetes.io/instance` is also Helm's).
fn resolve(named: &Named, applications: &[Value]) -> Option<Manager> {
    match named {
        Named::Flux(manager) => Some(manager.clone()),
        Named::Argo(app) => applications.iter().find_map(|a| {
            let (namespace, name) = (
                a["metadata"]["namespace"].as_str()?,
                a["metadata"]["name"].as_str()?,
            );
            (name == app || format!("{namespace}_{name}") == *app).then(|| Manager {
                kind: ManagerKind::Application,
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
        }),
    }
}

/// Sets every manager lifeboat paused (every one carrying
/// [`SUSPENDED_ANNOTATION`]) back to what it had, and removes the mark.
///
/// Fails only when the managers cannot be listed; one that cannot be
/// resumed is a failed result (and stays marked, for the next run).
pub async fn resume(client: &Client) -> Result<Vec<ManagerResult>, K8sError> {
    let mut results = Vec::new();
    for (kind, resource) in served_managers(client).await? {
        for live in list_all(client, &resource).await? {
            let metadata = &live["metadata"];
            let Some(before) = metadata["annotations"][SUSPENDED_ANNOTATION].as_str() else {
                continue;
            };
            let manager = Manager {
                kind,
                namespace: metadata["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                name: metadata["name"].as_str().unwrap_or_default().to_owned(),
            };
            let Ok(before) = serde_json::from_str::<Value>(before) else {
                let reason = format!(
                    "its {SUSPENDED_ANNOTATION} annotation is not JSON; set the field and remove the annotation by hand"
                );
                results.push(ManagerResult::new(&manager, Action::Failed, reason));
                continue;
            };
            let patch = kind.patch(before, Value::Null);
            let api = api(client, &resource, &manager.namespace);
            results.push(patch_manager(&api, &manager, &patch, Action::Resumed).await);
        }
    }
    Ok(results)
}

/// Merges a JSON merge patch into `target` (RFC 7386: `null` removes).
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(target) = target {
        for (name, value) in fields {
            if value.is_null() {
                target.remove(name);
            } else {
                merge(target.entry(name.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flux_and_argo_marks_name_their_managers() {
        let metadata = json!({
            "labels": {
                "kustomize.toolkit.fluxcd.io/name": "apps",
                "kustomize.toolkit.fluxcd.io/namespace": "flux-system",
                "helm.toolkit.fluxcd.io/name": "grafana",
            },
            "annotations": {"argocd.argoproj.io/tracking-id": "argocd_shop:apps/Deployment:shop/web"},
        });
        let named = named_by(&metadata);
        assert_eq!(
            named,
            vec![
                Named::Flux(Manager {
                    kind: ManagerKind::Kustomization,
                    namespace: "flux-system".into(),
                    name: "apps".into(),
                }),
                Named::Argo("argocd_shop".into()),
            ],
            "a HelmRelease label without its namespace names nothing"
        );
        let applications = [json!({"metadata": {"namespace": "argocd", "name": "shop"}})];
        let resolved = resolve(&named[1], &applications);
        assert_eq!(
            resolved.map(|m| m.to_string()).as_deref(),
            Some("Application argocd/shop")
        );
        assert_eq!(resolve(&Named::Argo("nginx".into()), &applications), None);
    }

    #[test]
    fn pausing_a_stored_manager_marks_what_it_had_and_resuming_restores_it() {
        let automated = json!({"prune": true, "selfHeal": true});
        let mut app =
            json!({"spec": {"project": "default", "syncPolicy": {"automated": automated}}});
        let kind = ManagerKind::Application;
        kind.pause_stored(&mut app);
        assert!(kind.is_paused(&app));
        let mark = app["metadata"]["annotations"][SUSPENDED_ANNOTATION]
            .as_str()
            .map(str::to_owned);
        assert_eq!(mark, Some(automated.to_string()));
        let before: Value = serde_json::from_str(&mark.unwrap_or_default()).unwrap_or_default();
        merge(&mut app, &kind.patch(before, Value::Null));
        assert_eq!(app["spec"]["syncPolicy"]["automated"], automated);
        assert_eq!(app["metadata"]["annotations"], json!({}));

        let mut ks = json!({"spec": {"interval": "10m"}});
        ManagerKind::Kustomization.pause_stored(&mut ks);
        assert_eq!(ks["spec"]["suspend"], true);
        merge(
            &mut ks,
            &ManagerKind::Kustomization.patch(Value::Null, Value::Null),
        );
        assert_eq!(
            ks["spec"],
            json!({"interval": "10m"}),
            "an unset field is unset again"
        );

        let mut suspended = json!({"spec": {"suspend": true}});
        ManagerKind::HelmRelease.pause_stored(&mut suspended);
        assert!(
            suspended["metadata"].is_null(),
            "a paused manager is not marked"
        );
    }
}
