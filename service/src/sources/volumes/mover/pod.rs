//! The Jobs that work on one claim — a mover reading it, a restore filling
//! it — and the Secret each takes its key and storage credentials from:
//! lifeboat's image as root with only the capabilities given, the claim at
//! [`CLAIM_MOUNT`], the Secret's files at [`SECRET_DIR`] and its
//! variables in the environment, no service account token, placed where
//! the claim's volume can be mounted.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use crate::k8s::K8sError;
use crate::storage::CREDENTIAL_VARIABLES;

/// Where a claim Job finds its Secret's files.
pub const SECRET_DIR: &str = "/var/run/secrets/lifeboat";
/// Where a claim Job mounts its claim.
pub const CLAIM_MOUNT: &str = "/data";
/// How often a running claim Job is looked at.
pub const POLL: Duration = Duration::from_millis(500);

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
