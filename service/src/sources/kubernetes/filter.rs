//! Which resources and objects a Kubernetes backup leaves out, and why.

use serde_json::Value;

use crate::k8s::discovery::ServedResource;

/// The label that opts one object out of backups (on a PVC, as an
/// annotation too, it opts its volume data out instead).
pub const EXCLUDE_LABEL: &str = "lifeboat.dev/exclude";

/// Why a resource is left out by default, if it is: what the cluster
/// recreates by itself or what must never be restored.
pub fn default_skip(resource: &ServedResource) -> Option<&'static str> {
    let api = &resource.api;
    match (api.group.as_str(), api.plural.as_str()) {
        ("" | "events.k8s.io", "events") => Some("events are transient records, not state"),
        ("coordination.k8s.io", "leases") => {
            Some("leases are leader-election locks their holders renew")
        }
        ("", "nodes") => Some("nodes register themselves when they join"),
        ("storage.k8s.io", "csinodes") => Some("CSI node objects are written by each kubelet"),
        ("storage.k8s.io", "volumeattachments") => {
            Some("volume attachments are made by the attach/detach controller")
        }
        ("", "componentstatuses") => Some("component statuses are computed live"),
        ("metrics.k8s.io", _) => Some("metrics are computed live"),
        _ if !resource.supports("list") => Some("it cannot be listed"),
        _ => None,
    }
}

/// Whether `spec` (as written in a job's `resources`) names `resource`:
/// `deployments`, `deployments.apps`, `apps/deployments` or the kind
/// `Deployment` (case-insensitive).
pub fn names(spec: &str, resource: &ServedResource) -> bool {
    let api = &resource.api;
    names_resource(spec, &api.group, &api.plural, &api.kind)
}

/// Whether `spec` names the resource `plural` of `group` with `kind`, as
/// [`names`].
pub fn names_resource(spec: &str, group: &str, plural: &str, kind: &str) -> bool {
    let spec = spec.trim().to_ascii_lowercase();
    let plural = plural.to_ascii_lowercase();
    let group = group.to_ascii_lowercase();
    spec == plural && (group.is_empty() || !spec.contains('.'))
        || spec == kind.to_ascii_lowercase()
        || spec == format!("{plural}.{group}")
        || spec == format!("{group}/{plural}")
        || (group.is_empty() && spec == format!("core/{plural}"))
}

/// Why one object is left out, if it is.
///
/// `selector_services` are the `namespace/name`s of Services with a
/// selector: their Endpoints are the endpoints controller's.
pub fn skip_object(
    resource: &ServedResource,
    object: &Value,
    selector_services: &[String],
) -> Option<String> {
    let metadata = &object["metadata"];
    if metadata["labels"][EXCLUDE_LABEL].as_str() == Some("true") {
        return Some(format!("marked {EXCLUDE_LABEL}=true"));
    }
    let api = &resource.api;
    match (api.group.as_str(), api.plural.as_str()) {
        ("", "endpoints") => {
            let key = format!(
                "{}/{}",
                metadata["namespace"].as_str().unwrap_or_default(),
                metadata["name"].as_str().unwrap_or_default()
            );
            selector_services
                .contains(&key)
                .then(|| "the endpoints controller rebuilds it from its Service's selector".into())
        }
        ("discovery.k8s.io", "endpointslices") => {
            let manager = metadata["labels"]["endpointslice.kubernetes.io/managed-by"].as_str();
            matches!(
                manager,
                Some(
                    "endpointslice-controller.k8s.io" | "endpointslicemirroring-controller.k8s.io"
                )
            )
            .then(|| "the EndpointSlice controller rebuilds it".into())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use kube::discovery::ApiResource;
    use serde_json::json;

    use super::*;

    fn resource(group: &str, plural: &str, kind: &str, verbs: &[&str]) -> ServedResource {
        ServedResource {
            api: ApiResource {
                group: group.into(),
                version: "v1".into(),
                api_version: if group.is_empty() {
                    "v1".into()
                } else {
                    format!("{group}/v1")
                },
                kind: kind.into(),
                plural: plural.into(),
            },
            namespaced: true,
            verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        }
    }

    #[test]
    fn resources_are_named_as_kubectl_users_write_them() {
        let deployments = resource("apps", "deployments", "Deployment", &["list"]);
        for spec in [
            "deployments.apps",
            "apps/deployments",
            "Deployment",
            "deployments",
        ] {
            assert!(names(spec, &deployments), "{spec}");
        }
        assert!(!names("deployments.extensions", &deployments));
        let secrets = resource("", "secrets", "Secret", &["list"]);
        assert!(names("secrets", &secrets) && names("core/secrets", &secrets));
    }

    #[test]
    fn controller_owned_endpoints_and_opted_out_objects_are_skipped() {
        let endpoints = resource("", "endpoints", "Endpoints", &["list"]);
        let object = json!({"metadata": {"name": "web", "namespace": "apps"}});
        assert!(skip_object(&endpoints, &object, &["apps/web".into()]).is_some());
        assert!(skip_object(&endpoints, &object, &[]).is_none());
        let marked = json!({"metadata": {"name": "x", "labels": {EXCLUDE_LABEL: "true"}}});
        let configmaps = resource("", "configmaps", "ConfigMap", &["list"]);
        assert!(skip_object(&configmaps, &marked, &[]).is_some());
        assert!(
            default_skip(&resource(
                "authentication.k8s.io",
                "tokenreviews",
                "TokenReview",
                &["create"]
            ))
            .is_some()
        );
        assert!(default_skip(&configmaps).is_none());
    }
}
