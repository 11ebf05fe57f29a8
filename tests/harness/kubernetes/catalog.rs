//! What the test API server serves: the built-in resources of a
//! Kubernetes 1.33 server that the tests need, plus the resources of every
//! established CustomResourceDefinition.

use serde_json::{Value, json};

/// Every verb of a normal resource.
const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// One served resource at one group version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// API group, `""` for the core group.
    pub group: String,
    /// Version, e.g. `v1`.
    pub version: String,
    /// Plural name (the URL segment).
    pub plural: String,
    /// Kind.
    pub kind: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Verbs the resource supports.
    pub verbs: Vec<String>,
    /// Whether it comes from a CRD (lists then carry apiVersion/kind per item).
    pub custom: bool,
}

impl Resource {
    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Whether `verb` is supported.
    pub fn supports(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == verb)
    }

    fn to_discovery(&self) -> Value {
        json!({
            "name": self.plural,
            "singularName": self.kind.to_lowercase(),
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": self.verbs,
        })
    }
}

/// Built-in resources as (group, version, plural, kind, namespaced, verbs).
type Builtin = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    bool,
    &'static [&'static str],
);

const BUILTIN: &[Builtin] = &[
    ("", "v1", "namespaces", "Namespace", false, ALL_VERBS),
    ("", "v1", "configmaps", "ConfigMap", true, ALL_VERBS),
    ("", "v1", "secrets", "Secret", true, ALL_VERBS),
    ("", "v1", "services", "Service", true, ALL_VERBS),
    (
        "",
        "v1",
        "serviceaccounts",
        "ServiceAccount",
        true,
        ALL_VERBS,
    ),
    (
        "",
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        true,
        ALL_VERBS,
    ),
    (
        "",
        "v1",
        "persistentvolumes",
        "PersistentVolume",
        false,
        ALL_VERBS,
    ),
    ("", "v1", "pods", "Pod", true, ALL_VERBS),
    ("", "v1", "endpoints", "Endpoints", true, ALL_VERBS),
    ("", "v1", "events", "Event", true, ALL_VERBS),
    ("", "v1", "nodes", "Node", false, ALL_VERBS),
    ("", "v1", "limitranges", "LimitRange", true, ALL_VERBS),
    ("", "v1", "resourcequotas", "ResourceQuota", true, ALL_VERBS),
    (
        "",
        "v1",
        "componentstatuses",
        "ComponentStatus",
        false,
        &["get", "list"],
    ),
    ("", "v1", "bindings", "Binding", true, &["create"]),
    ("apps", "v1", "deployments", "Deployment", true, ALL_VERBS),
    ("apps", "v1", "statefulsets", "StatefulSet", true, ALL_VERBS),
    ("apps", "v1", "daemonsets", "DaemonSet", true, ALL_VERBS),
    ("apps", "v1", "replicasets", "ReplicaSet", true, ALL_VERBS),
    (
        "apps",
        "v1",
        "controllerrevisions",
        "ControllerRevision",
        true,
        ALL_VERBS,
    ),
    ("batch", "v1", "jobs", "Job", true, ALL_VERBS),
    (
        "admissionregistration.k8s.io",
        "v1",
        "validatingwebhookconfigurations",
        "ValidatingWebhookConfiguration",
        false,
        ALL_VERBS,
    ),
    (
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
        "MutatingWebhookConfiguration",
        false,
        ALL_VERBS,
    ),
    ("batch", "v1", "cronjobs", "CronJob", true, ALL_VERBS),
    (
        "autoscaling",
        "v2",
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
        true,
        ALL_VERBS,
    ),
    (
        "autoscaling",
        "v1",
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
        true,
        ALL_VERBS,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "roles",
        "Role",
        true,
        ALL_VERBS,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "RoleBinding",
        true,
        ALL_VERBS,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "ClusterRole",
        false,
        ALL_VERBS,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
        ALL_VERBS,
    ),
    (
        "storage.k8s.io",
        "v1",
        "storageclasses",
        "StorageClass",
        false,
        ALL_VERBS,
    ),
    (
        "storage.k8s.io",
        "v1",
        "csinodes",
        "CSINode",
        false,
        ALL_VERBS,
    ),
    (
        "storage.k8s.io",
        "v1",
        "csidrivers",
        "CSIDriver",
        false,
        ALL_VERBS,
    ),
    (
        "storage.k8s.io",
        "v1",
        "volumeattachments",
        "VolumeAttachment",
        false,
        ALL_VERBS,
    ),
    (
        "networking.k8s.io",
        "v1",
        "ingresses",
        "Ingress",
        true,
        ALL_VERBS,
    ),
    (
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "NetworkPolicy",
        true,
        ALL_VERBS,
    ),
    (
        "coordination.k8s.io",
        "v1",
        "leases",
        "Lease",
        true,
        ALL_VERBS,
    ),
    (
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "EndpointSlice",
        true,
        ALL_VERBS,
    ),
    ("events.k8s.io", "v1", "events", "Event", true, ALL_VERBS),
    (
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
        ALL_VERBS,
    ),
    (
        "authentication.k8s.io",
        "v1",
        "tokenreviews",
        "TokenReview",
        false,
        &["create"],
    ),
    (
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        true,
        ALL_VERBS,
    ),
];

/// The built-in resources.
pub fn builtin() -> Vec<Resource> {
    BUILTIN
        .iter()
        .map(
            |&(group, version, plural, kind, namespaced, verbs)| Resource {
                group: group.into(),
                version: version.into(),
                plural: plural.into(),
                kind: kind.into(),
                namespaced,
                verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
                custom: false,
            },
        )
        .collect()
}

/// The resources an established CRD serves (one per served version).
pub fn from_crd(crd: &Value) -> Vec<Resource> {
    let spec = &crd["spec"];
    let (Some(group), Some(plural), Some(kind)) = (
        spec["group"].as_str(),
        spec["names"]["plural"].as_str(),
        spec["names"]["kind"].as_str(),
    ) else {
        return Vec::new();
    };
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["served"].as_bool().unwrap_or(false))
        .filter_map(|v| v["name"].as_str())
        .map(|version| Resource {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            kind: kind.into(),
            namespaced,
            verbs: ALL_VERBS.iter().map(|v| (*v).to_owned()).collect(),
            custom: true,
        })
        .collect()
}

/// Whether a CRD has the `Established` condition.
pub fn is_established(crd: &Value) -> bool {
    crd["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Established" && c["status"] == "True")
}

/// The preferred version of a group among `resources`: the first listed
/// (built-ins list theirs first; a CRD's storage version comes first).
pub fn preferred_version<'a>(resources: &'a [Resource], group: &str) -> Option<&'a str> {
    resources
        .iter()
        .find(|r| r.group == group)
        .map(|r| r.version.as_str())
}

/// `/api`: the core group's versions.
pub fn core_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}],
    })
}

/// `/apis`: every group with its versions.
pub fn group_list(resources: &[Resource]) -> Value {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for r in resources.iter().filter(|r| !r.group.is_empty()) {
        match groups.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, versions)) if !versions.contains(&r.version) => {
                versions.push(r.version.clone());
            }
            Some(_) => {}
            None => groups.push((r.group.clone(), vec![r.version.clone()])),
        }
    }
    let groups: Vec<Value> = groups
        .iter()
        .map(|(group, versions)| {
            let entries: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
                .collect();
            let preferred = preferred_version(resources, group).unwrap_or("v1");
            json!({
                "name": group,
                "versions": entries,
                "preferredVersion": {"groupVersion": format!("{group}/{preferred}"), "version": preferred},
            })
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/api/v1` or `/apis/GROUP/VERSION`: the resources of one group version,
/// with the `pods/exec` subresource where pods are served.
pub fn resource_list(resources: &[Resource], group: &str, version: &str) -> Option<Value> {
    let served: Vec<&Resource> = resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    let first = served.first()?;
    let mut list: Vec<Value> = served.iter().map(|r| r.to_discovery()).collect();
    if served.iter().any(|r| r.plural == "pods") {
        list.push(json!({"name": "pods/exec", "singularName": "", "namespaced": true, "kind": "PodExecOptions", "verbs": ["create", "get"]}));
        list.push(json!({"name": "pods/status", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get", "patch", "update"]}));
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": first.api_version(),
        "resources": list,
    }))
}
