//! The order objects are applied in, so that what an object refers to
//! exists first: CRDs (then waited for), namespaces, storage, RBAC,
//! service accounts, Secrets, ConfigMaps, everything else, workloads, and
//! last admission webhooks and aggregated APIs, whose backing Services
//! only answer once their workloads run (a webhook applied first would make
//! every create it matches fail).

/// The apply rank of a resource; lower goes first.
pub fn rank(group: &str, resource: &str) -> u8 {
    match (group, resource) {
        ("apiextensions.k8s.io", "customresourcedefinitions") => 0,
        ("", "namespaces") => 1,
        ("storage.k8s.io", "storageclasses") => 2,
        ("", "persistentvolumes") => 3,
        ("", "persistentvolumeclaims") => 4,
        ("rbac.authorization.k8s.io", "clusterroles") => 5,
        ("rbac.authorization.k8s.io", "roles") => 6,
        ("rbac.authorization.k8s.io", "clusterrolebindings" | "rolebindings") => 7,
        ("", "serviceaccounts") => 8,
        ("", "secrets") => 9,
        ("", "configmaps") => 10,
        ("apps", "deployments" | "statefulsets" | "daemonsets" | "replicasets")
        | ("batch", "jobs" | "cronjobs")
        | ("", "pods" | "replicationcontrollers") => 12,
        (
            "admissionregistration.k8s.io",
            "validatingwebhookconfigurations" | "mutatingwebhookconfigurations",
        )
        | ("apiregistration.k8s.io", "apiservices") => 13,
        _ => 11,
    }
}

/// The rank after which the API is asked again what it serves: custom
/// resources of the CRDs just created are only served once established.
pub const CRDS: u8 = 0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_come_first_and_workloads_last() {
        let order = [
            ("apiextensions.k8s.io", "customresourcedefinitions"),
            ("", "namespaces"),
            ("storage.k8s.io", "storageclasses"),
            ("", "persistentvolumes"),
            ("", "persistentvolumeclaims"),
            ("rbac.authorization.k8s.io", "clusterroles"),
            ("rbac.authorization.k8s.io", "rolebindings"),
            ("", "serviceaccounts"),
            ("", "secrets"),
            ("", "configmaps"),
            ("kustomize.toolkit.fluxcd.io", "kustomizations"),
            ("apps", "deployments"),
            (
                "admissionregistration.k8s.io",
                "validatingwebhookconfigurations",
            ),
        ];
        let ranks: Vec<u8> = order.iter().map(|(g, r)| rank(g, r)).collect();
        assert!(ranks.windows(2).all(|w| w[0] < w[1]), "{ranks:?}");
    }
}
