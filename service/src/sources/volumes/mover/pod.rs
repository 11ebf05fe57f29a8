//! The Jobs that work on one claim — a mover reading it, a restore filling
//! it — and the Secret each takes its key and storage credentials from:
//! lifeboat's image as root with only the capabilities given, the claim at
//! [`CLAIM_MOUNT`], the Secret's files at [`SECRET_DIR`] and its
//! variables in the environment, no service account token, placed where
//! the claim's volume can be mounted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use kube::api::{Api, ListParams, LogParams, PostParams};
use serde_json::{Value, json};

use crate::k8s::K8sError;
use crate::k8s::jobs::{Ending, ending};
use crate::storage::CREDENTIAL_VARIABLES;

/// Where a claim Job finds its Secret's files.
pub const SECRET_DIR: &str = "/var/run/secrets/lifeboat";
/// Where a claim Job mounts its claim.
pub const CLAIM_MOUNT: &str = "/data";
/// How often a running claim Job is looked at.
pub const POLL: Duration = Duration::from_millis(500);
/// At most this many lines of a failed Job's log are kept.
pub const LOG_LINES: i64 = 10;
/// At most this many bytes of a failed Job's log are kept.
pub const LOG_BYTES: i64 = 2048;
/// How long a claim Job's pod may take to start by default.
pub const START_WITHIN: Duration = Duration::from_secs(5 * 60);

/// The environment a process that restores needs from the one that starts
/// it: the storage credentials and the restore key's passphrase.
pub const RESTORE_VARIABLES: [&str; 7] = {
    let [a, b, c, d, e, f] = CREDENTIAL_VARIABLES;
    [a, b, c, d, e, f, "LIFEBOAT_PASSPHRASE"]
};

/// Where a claim Job must run so it can mount its claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// On the node of the pod using the claim (its volume is attached there).
    Node(String),
    /// On one of the nodes the volume's node affinity names.
    Pinned(Vec<String>),
    /// Wherever the scheduler puts it.
    Anywhere,
}

impl Placement {
    /// `Pinned(nodes)`, or `Anywhere` when there are none.
    pub fn pinned(nodes: Vec<String>) -> Self {
        if nodes.is_empty() {
            Self::Anywhere
        } else {
            Self::Pinned(nodes)
        }
    }

    /// The node key the per-node limit counts under, if any.
    pub fn node_key(&self) -> Option<String> {
        match self {
            Self::Node(node) => Some(node.clone()),
            Self::Pinned(nodes) => Some(nodes.join(",")),
            Self::Anywhere => None,
        }
    }
}

/// One claim Job to make.
#[derive(Debug, Clone)]
pub struct ClaimJob {
    /// The Job's name.
    pub name: String,
    /// The claim's namespace.
    pub namespace: String,
    /// The claim.
    pub claim: String,
    /// Whether the claim is mounted read-only.
    pub read_only: bool,
    /// Labels of the Job and its pod.
    pub labels: Value,
    /// Annotations of the Job.
    pub annotations: Value,
    /// The container's name.
    pub container: &'static str,
    /// lifeboat's image.
    pub image: String,
    /// The command and its arguments.
    pub command: Vec<String>,
    /// Literal `{name, value}` environment entries.
    pub env: Vec<Value>,
    /// The Secret mounted at [`SECRET_DIR`].
    pub secret: String,
    /// Variables taken from the Secret when it has them.
    pub variables: &'static [&'static str],
    /// Capabilities added to none.
    pub capabilities: &'static [&'static str],
    /// Where it runs.
    pub placement: Placement,
    /// How long it may run before Kubernetes stops it.
    pub timeout: Duration,
}

impl ClaimJob {
    /// The batch/v1 Job object.
    pub fn object(&self) -> Value {
        let mut env = self.env.clone();
        for variable in self.variables {
            env.push(json!({"name": variable, "valueFrom": {"secretKeyRef":
                {"name": self.secret, "key": variable, "optional": true}}}));
        }
        let mut pod = json!({
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{
                "name": self.container,
                "image": self.image,
                "command": self.command,
                "env": env,
                "securityContext": {
                    "runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": false,
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"], "add": self.capabilities},
                },
                "volumeMounts": [
                    {"name": "secret", "mountPath": SECRET_DIR, "readOnly": true},
                    {"name": "claim", "mountPath": CLAIM_MOUNT, "readOnly": self.read_only},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
            }],
            "volumes": [
                {"name": "secret", "secret": {"secretName": self.secret, "defaultMode": 0o400}},
                {"name": "claim", "persistentVolumeClaim":
                    {"claimName": self.claim, "readOnly": self.read_only}},
                {"name": "tmp", "emptyDir": {}},
            ],
        });
        match &self.placement {
            Placement::Node(node) => pod["nodeName"] = json!(node),
            Placement::Pinned(nodes) => {
                pod["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                    {"nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "kubernetes.io/hostname", "operator": "In", "values": nodes}]}]}}});
            }
            Placement::Anywhere => {}
        }
        json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": self.labels,
                "annotations": self.annotations,
            },
            "spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": self.timeout.as_secs().max(1),
                "ttlSecondsAfterFinished": 3600,
                "template": {"metadata": {"labels": self.labels}, "spec": pod},
            },
        })
    }

    /// Creates the Job; `what` names it in errors (`the mover Job`).
    ///
    /// Fails when the object does not make a Job or the API refuses it.
    pub async fn create(&self, client: &kube::Client, what: &str) -> Result<(), K8sError> {
        let (namespace, name) = (&self.namespace, &self.name);
        let typed: Job = serde_json::from_value(self.object()).map_err(|e| {
            K8sError::api(
                format!("making {what} {namespace}/{name}"),
                kube::Error::SerdeError(e),
            )
        })?;
        Api::<Job>::namespaced(client.clone(), namespace)
            .create(&PostParams::default(), &typed)
            .await
            .map_err(|e| K8sError::api(format!("creating {what} {namespace}/{name}"), e))?;
        Ok(())
    }
}

/// Creates the Secret `namespace/name` labelled `labels`, holding `files`
/// and those of `variables` this process has; `what` names it in errors.
///
/// Fails when the API refuses it.
pub async fn create_secret(
    client: &kube::Client,
    (namespace, name): (&str, &str),
    labels: &Value,
    files: &[(&str, &[u8])],
    variables: &[&str],
    what: &str,
) -> Result<(), K8sError> {
    let mut data = BTreeMap::new();
    for (file, bytes) in files {
        data.insert((*file).to_owned(), k8s_openapi::ByteString(bytes.to_vec()));
    }
    for variable in variables {
        if let Ok(value) = std::env::var(variable) {
            data.insert(
                (*variable).to_owned(),
                k8s_openapi::ByteString(value.into_bytes()),
            );
        }
    }
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: serde_json::from_value(labels.clone()).ok(),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await
        .map_err(|e| K8sError::api(format!("creating {what} {namespace}/{name}"), e))?;
    Ok(())
}

/// Where a claim Job stands, as [`JobWatch::look`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Its pod has not ended yet.
    Running,
    /// It completed.
    Complete,
    /// It failed: the Job's reason and the end of its pod's log.
    Failed {
        /// The Job condition's reason and message.
        reason: String,
        /// The last lines of its pod's log, if it could be read.
        log: Option<String>,
    },
    /// It ran past its timeout.
    Overran,
    /// Its pod did not start within the start timeout: why.
    NotStarted(String),
    /// It is gone.
    Gone,
}

/// One claim Job being watched: when it was made and whether its pod was
/// seen started (after that, the start timeout no longer applies).
#[derive(Debug, Clone)]
pub struct JobWatch {
    /// The Job's namespace.
    pub namespace: String,
    /// The Job.
    pub name: String,
    made: Instant,
    started: bool,
}

impl JobWatch {
    /// Watches the Job `namespace/name`, made now.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            made: Instant::now(),
            started: false,
        }
    }

    /// Looks at the Job once: past `timeout` it has overrun; past
    /// `start_within` without a started pod, it did not start.
    ///
    /// Fails when the API refuses to read the Job or list its pods.
    pub async fn look(
        &mut self,
        client: &kube::Client,
        start_within: Duration,
        timeout: Duration,
    ) -> Result<JobState, K8sError> {
        let (namespace, name) = (&self.namespace, &self.name);
        let current = Api::<Job>::namespaced(client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(|e| K8sError::api(format!("reading Job {namespace}/{name}"), e))?;
        let Some(current) = current else {
            return Ok(JobState::Gone);
        };
        Ok(match ending(&current) {
            Some(Ending::Complete) => JobState::Complete,
            Some(Ending::Failed(reason)) => JobState::Failed {
                reason,
                log: log_tail(client, namespace, name).await,
            },
            None if self.made.elapsed() > timeout => JobState::Overran,
            None if !self.started && self.made.elapsed() > start_within => {
                match not_started(client, namespace, name).await? {
                    None => {
                        self.started = true;
                        JobState::Running
                    }
                    Some(reason) => JobState::NotStarted(reason),
                }
            }
            None => JobState::Running,
        })
    }
}

/// The pods of Job `namespace/job` (labelled `job-name` by the Job
/// controller).
async fn job_pods(
    client: &kube::Client,
    namespace: &str,
    job: &str,
) -> Result<Vec<Pod>, kube::Error> {
    Ok(Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&format!("job-name={job}")))
        .await?
        .items)
}

/// Why the pod of Job `namespace/job` is not running yet, or `None` once
/// one is running or has run.
///
/// Fails when the API refuses to list pods.
async fn not_started(
    client: &kube::Client,
    namespace: &str,
    job: &str,
) -> Result<Option<String>, K8sError> {
    let pods = job_pods(client, namespace, job)
        .await
        .map_err(|e| K8sError::api(format!("listing the pods of Job {namespace}/{job}"), e))?;
    let phase = |pod: &Pod| pod.status.as_ref().and_then(|s| s.phase.clone());
    if pods
        .iter()
        .any(|p| phase(p).is_some_and(|p| p != "Pending"))
    {
        return Ok(None);
    }
    if let Some(pod) = pods.first() {
        return Ok(Some(pending_reason(pod)));
    }
    // No pod: the Job controller's events say why (admission, quota).
    let events = Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().fields(&format!("involvedObject.name={job}")))
        .await
        .map(|list| list.items)
        .unwrap_or_default();
    let refused = events
        .iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(job))
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter_map(|e| e.message.clone())
        .next_back();
    Ok(Some(match refused {
        Some(message) => format!("the Job made no pod: {message}"),
        None => "the Job made no pod (Pod Security admission or a quota may refuse it)".into(),
    }))
}

/// The last lines of the log of Job `namespace/job`'s pod (at most
/// [`LOG_LINES`] lines and [`LOG_BYTES`] bytes, control characters
/// dropped, lines joined by ` / `), or `None` when there is none or it
/// cannot be read: what a failed Job said before it goes with its log.
async fn log_tail(client: &kube::Client, namespace: &str, job: &str) -> Option<String> {
    let listed = job_pods(client, namespace, job).await.ok()?;
    let name = listed.first()?.metadata.name.clone()?;
    let params = LogParams {
        tail_lines: Some(LOG_LINES),
        limit_bytes: Some(LOG_BYTES),
        ..LogParams::default()
    };
    let log = Api::<Pod>::namespaced(client.clone(), namespace)
        .logs(&name, &params)
        .await
        .ok()?;
    let lines: Vec<String> = log
        .lines()
        .map(|line| line.chars().filter(|c| !c.is_control()).collect::<String>())
        .map(|line| line.trim().to_owned())
        .filter(|line| !line.is_empty())
        .collect();
    let start = lines.len().saturating_sub(LOG_LINES as usize);
    let mut tail = lines[start..].join(" / ");
    if tail.len() > LOG_BYTES as usize {
        let mut cut = tail.len() - LOG_BYTES as usize;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail.drain(..cut);
    }
    (!tail.is_empty()).then_some(tail)
}

/// Why a Pending pod is not running: a container's waiting reason (an
/// image that cannot be pulled), else why it is not scheduled (no ready
/// node it may go to).
fn pending_reason(pod: &Pod) -> String {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let status = pod.status.as_ref();
    let waiting = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
        .find(|w| w.reason.as_deref() != Some("ContainerCreating"));
    if let Some(waiting) = waiting {
        return format!(
            "its pod {name} waits: {} {}",
            waiting.reason.as_deref().unwrap_or("waiting"),
            waiting.message.as_deref().unwrap_or_default()
        )
        .trim_end()
        .to_owned();
    }
    let unscheduled = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False");
    match unscheduled {
        Some(condition) => format!(
            "its pod {name} cannot be scheduled: {}",
            condition
                .message
                .as_deref()
                .or(condition.reason.as_deref())
                .unwrap_or("no reason given")
        ),
        None => format!("its pod {name} is still Pending"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(status: Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "m-1"}, "status": status}))
            .expect("a pod")
    }

    #[test]
    fn a_pending_pod_says_why() {
        let pulling = pod(
            json!({"phase": "Pending", "containerStatuses": [{"name": "mover",
            "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff",
                "message": "Back-off pulling image \"ghcr.io/x/lifeboat:v9\""}}}]}),
        );
        assert_eq!(
            pending_reason(&pulling),
            "its pod m-1 waits: ImagePullBackOff Back-off pulling image \"ghcr.io/x/lifeboat:v9\""
        );
        let unscheduled = pod(
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled",
            "status": "False", "reason": "Unschedulable", "message": "0/5 nodes are available"}]}),
        );
        assert_eq!(
            pending_reason(&unscheduled),
            "its pod m-1 cannot be scheduled: 0/5 nodes are available"
        );
        assert_eq!(
            pending_reason(&pod(json!({"phase": "Pending"}))),
            "its pod m-1 is still Pending"
        );
    }
}
