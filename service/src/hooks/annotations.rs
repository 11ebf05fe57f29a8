//! Hooks declared on pods, in the annotation style backup users know:
//!
//! ```yaml
//! pre.hook.backup.lifeboat.dev/command: '["/bin/sh", "-c", "psql -c CHECKPOINT"]'
//! pre.hook.backup.lifeboat.dev/container: postgres     # default: the first
//! pre.hook.backup.lifeboat.dev/timeout: 60s            # default: 30s
//! pre.hook.backup.lifeboat.dev/on-error: Continue      # default: Fail
//! post.hook.backup.lifeboat.dev/command: '...'
//! ```
//!
//! A volume job runs them for the running pods that mount its claims.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams};

use super::{OnError, Phase, Place, Planned};
use crate::k8s::K8sError;

/// The annotation prefix of a phase's hook.
fn prefix(phase: Phase) -> String {
    format!("{}.hook.backup.lifeboat.dev/", phase.as_str())
}

/// The running pods in `namespace` that match `selector` and (when given)
/// mount the claim `pvc`: each pod's name and default container.
pub async fn running_pods(
    client: &Client,
    namespace: &str,
    selector: Option<&str>,
    pvc: Option<&str>,
) -> Result<Vec<(String, Option<String>)>, K8sError> {
    let pods = list_pods(client, namespace, selector).await?;
    Ok(pods
        .iter()
        .filter(|pod| is_running(pod) && pvc.is_none_or(|claim| mounts(pod, claim)))
        .filter_map(|pod| Some((pod.metadata.name.clone()?, default_container(pod))))
        .collect())
}

/// The container `kubectl exec` would pick: the one named by the
/// `kubectl.kubernetes.io/default-container` annotation, else the first.
fn default_container(pod: &Pod) -> Option<String> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("kubectl.kubernetes.io/default-container"))
        .cloned()
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .map(|c| c.name.clone())
        })
}

async fn list_pods(
    client: &Client,
    namespace: &str,
    selector: Option<&str>,
) -> Result<Vec<Pod>, K8sError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut params = ListParams::default();
    if let Some(selector) = selector {
        params = params.labels(selector);
    }
    api.list(&params)
        .await
        .map(|list| list.items)
        .map_err(|e| K8sError::api(format!("listing the pods of {namespace}"), e))
}

fn is_running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// Whether `pod` mounts the claim `claim`.
fn mounts(pod: &Pod, claim: &str) -> bool {
    pod.spec
        .as_ref()
        .and_then(|spec| spec.volumes.as_ref())
        .into_iter()
        .flatten()
        .any(|v| {
            v.persistent_volume_claim
                .as_ref()
                .is_some_and(|c| c.claim_name == claim)
        })
}

/// The annotation hooks of `phase` of the running pods that mount any of
/// `claims` (`(namespace, claim)` pairs), one per pod, in pod order.
/// Malformed annotations are returned as errors naming the pod.
pub async fn pod_hooks(
    client: &Client,
    claims: &[(String, String)],
    phase: Phase,
) -> Result<(Vec<Planned>, Vec<String>), K8sError> {
    let mut namespaces: Vec<&str> = claims.iter().map(|(ns, _)| ns.as_str()).collect();
    namespaces.dedup();
    let mut hooks = Vec::new();
    let mut problems = Vec::new();
    for namespace in namespaces {
        for pod in list_pods(client, namespace, None).await? {
            let uses_claim = claims
                .iter()
                .any(|(ns, claim)| ns == namespace && mounts(&pod, claim));
            if !is_running(&pod) || !uses_claim {
                continue;
            }
            match hook_of(&pod, phase) {
                Ok(Some(hook)) => hooks.push(hook),
                Ok(None) => {}
                Err(problem) => problems.push(problem),
            }
        }
    }
    Ok((hooks, problems))
}

/// The pod's hook for `phase`, if it declares one.
fn hook_of(pod: &Pod, phase: Phase) -> Result<Option<Planned>, String> {
    let Some(annotations) = pod.metadata.annotations.as_ref() else {
        return Ok(None);
    };
    let prefix = prefix(phase);
    let get = |field: &str| annotations.get(&format!("{prefix}{field}"));
    let Some(command) = get("command") else {
        return Ok(None);
    };
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let bad = |what: String| format!("pod {namespace}/{name}: annotation {prefix}{what}");
    let command: Vec<String> = if command.trim_start().starts_with('[') {
        serde_json::from_str(command)
            .map_err(|e| bad(format!("command is not a JSON list of strings: {e}")))?
    } else {
        vec!["/bin/sh".into(), "-c".into(), command.clone()]
    };
    if command.is_empty() {
        return Err(bad("command is empty".into()));
    }
    let timeout = match get("timeout") {
        Some(text) => humantime::parse_duration(text)
            .map_err(|e| bad(format!("timeout {text:?} is not a duration like 30s: {e}")))?,
        None => Duration::from_secs(30),
    };
    let on_error = match get("on-error").map(|v| v.to_ascii_lowercase()) {
        None => OnError::Fail,
        Some(v) if v == "fail" => OnError::Fail,
        Some(v) if v == "continue" => OnError::Continue,
        Some(v) => return Err(bad(format!("on-error {v:?} must be Fail or Continue"))),
    };
    let container = get("container").cloned().or_else(|| default_container(pod));
    Ok(Some(Planned {
        name: "(pod annotation)".into(),
        command,
        place: Place::Pod {
            namespace,
            pod: name,
            container,
            kubeconfig: None,
        },
        timeout,
        on_error,
    }))
}
