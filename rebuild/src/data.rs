//! Volume data back on the nodes after etcd is recovered: the PVs and
//! claims come back with etcd, their host folders do not. For each
//! `volumes` snapshot a restore Job per node runs the lifeboat image on
//! that node with the volumes' host paths mounted and
//! `lifeboat restore ID --in-place --pvc … --allow-root PATH…`; the
//! restore key and the repository credentials reach it through a Secret
//! that lives only as long as the restore. The snapshot's host paths are
//! untrusted: each must be normalised and the path of the restored
//! cluster's PersistentVolume before it is mounted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use lifeboat::k8s::jobs::{Ending, ending};
use lifeboat::restore::in_place::check_host_path;
use lifeboat::sources::volumes::Manifest;
use lifeboat::sources::volumes::mover::pod::{RESTORE_VARIABLES, SECRET_DIR};
use serde_json::{Value, json};

use crate::kubernetes::{KubernetesError, api};
use crate::spec::DataSpec;

/// The field manager of what the rebuild writes.
const MANAGER: &str = "lifeboat-rebuild";
/// The Secret holding the restore key and repository credentials.
pub const SECRET: &str = "lifeboat-rebuild-restore";
/// The Secret's key holding the restore key.
const KEY_FILE: &str = "restore.key";
/// One restore Job: the PVCs of one snapshot on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreJob {
    /// The Job's name.
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// The PVCs (`NAMESPACE/NAME`) and their host paths.
    pub volumes: Vec<(String, String)>,
}

/// Where the Jobs fetch from.
#[derive(Debug, Clone)]
pub struct JobRepository {
    /// The repository URL.
    pub url: String,
    /// Its S3 endpoint, if not AWS.
    pub s3_endpoint: Option<String>,
    /// Whether buckets are addressed by path.
    pub s3_path_style: bool,
}

/// The Jobs restoring the host folders of the snapshot `snapshot_id`
/// whose manifest is `manifest`: one per node, a volume pinned to no node
/// going with the others (the node the snapshot was taken on). Volumes
/// read by movers go back into their claims instead ([`ClaimRestore`]).
///
/// [`ClaimRestore`]: lifeboat::sources::volumes::mover::restore::ClaimRestore
///
/// Fails when a volume's node cannot be told.
pub fn plan_jobs(
    snapshot_id: &str,
    manifest: &Manifest,
) -> Result<Vec<RestoreJob>, KubernetesError> {
    let mut by_node: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut unpinned = Vec::new();
    for volume in manifest.volumes.iter().filter(|v| v.mover.is_none()) {
        let entry = (
            format!("{}/{}", volume.namespace, volume.pvc),
            volume.host_path.display().to_string(),
        );
        check_host_path(&entry.1).map_err(|source| KubernetesError::HostPath {
            snapshot: snapshot_id.to_owned(),
            volume: entry.0.clone(),
            source,
        })?;
        if volume.node.is_empty() {
            unpinned.push(entry);
        } else {
            by_node.entry(volume.node.clone()).or_default().push(entry);
        }
    }
    if !unpinned.is_empty() {
        let mut nodes = by_node.values_mut();
        match (nodes.next(), nodes.next()) {
            (Some(only), None) => only.extend(unpinned),
            _ => {
                return Err(KubernetesError::Unpinned {
                    snapshot: snapshot_id.to_owned(),
                    volumes: unpinned.into_iter().map(|(pvc, _)| pvc).collect(),
                    nodes: by_node.len(),
                });
            }
        }
    }
    let short = &snapshot_id[..snapshot_id.len().min(8)];
    Ok(by_node
        .into_iter()
        .map(|(node, volumes)| RestoreJob {
            name: job_name(short, &node),
            node,
            volumes,
        })
        .collect())
}

/// `lifeboat-restore-SHORT-NODE` as a DNS label (at most 63 characters).
fn job_name(short: &str, node: &str) -> String {
    let node: String = node
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let mut name = format!("lifeboat-restore-{short}-{node}");
    name.truncate(63);
    name.trim_end_matches('-').to_owned()
}

/// Checks that every volume of `manifest` is where the cluster's
/// PersistentVolume of the same name keeps its data, so a Job mounts only
/// the folders the cluster itself uses.
///
/// Fails naming a volume whose PersistentVolume is missing or elsewhere.
pub async fn check_live_paths(
    client: &kube::Client,
    manifest: &Manifest,
) -> Result<(), KubernetesError> {
    let volumes = Api::<PersistentVolume>::all(client.clone());
    for stored in manifest.volumes.iter().filter(|v| v.mover.is_none()) {
        let claim = format!("{}/{}", stored.namespace, stored.pvc);
        let live = volumes
            .get_opt(&stored.pv)
            .await
            .map_err(api(format!("reading PersistentVolume {}", stored.pv)))?;
        let spec = live.and_then(|pv| pv.spec);
        let path = spec.and_then(|s| {
            s.host_path
                .map(|h| h.path)
                .or_else(|| s.local.map(|l| l.path))
        });
        match path {
            Some(path) if std::path::Path::new(&path) == stored.host_path => {}
            Some(live) => {
                return Err(KubernetesError::PathMismatch {
                    claim,
                    stored: stored.host_path.clone(),
                    pv: stored.pv.clone(),
                    live,
                });
            }
            None => {
                return Err(KubernetesError::NoPersistentVolume {
                    claim,
                    pv: stored.pv.clone(),
                });
            }
        }
    }
    Ok(())
}

/// The Job object for `job`.
pub fn job_object(
    job: &RestoreJob,
    snapshot_id: &str,
    data: &DataSpec,
    image: &str,
    repository: &JobRepository,
) -> Value {
    let mut command = vec![
        "lifeboat".to_owned(),
        "restore".into(),
        snapshot_id.into(),
        "--in-place".into(),
    ];
    for (pvc, _) in &job.volumes {
        command.extend(["--pvc".into(), pvc.clone()]);
    }
    // The container sees only the mounted host paths: allow exactly those.
    for (_, path) in &job.volumes {
        command.extend(["--allow-root".into(), path.clone()]);
    }
    if data.overwrite {
        command.push("--force".into());
    }
    let mut env = vec![
        json!({"name": "LIFEBOAT_REPOSITORY", "value": repository.url}),
        json!({"name": "LIFEBOAT_IDENTITY", "value": format!("{SECRET_DIR}/{KEY_FILE}")}),
    ];
    if let Some(endpoint) = &repository.s3_endpoint {
        env.push(json!({"name": "LIFEBOAT_S3_ENDPOINT", "value": endpoint}));
    }
    if repository.s3_path_style {
        env.push(json!({"name": "LIFEBOAT_S3_PATH_STYLE", "value": "true"}));
    }
    for name in RESTORE_VARIABLES {
        env.push(json!({"name": name, "valueFrom": {"secretKeyRef":
            {"name": SECRET, "key": name, "optional": true}}}));
    }
    let mut mounts =
        vec![json!({"name": "restore-key", "mountPath": SECRET_DIR, "readOnly": true})];
    let mut volumes = vec![
        json!({"name": "restore-key", "secret": {"secretName": SECRET, "defaultMode": 0o400}}),
    ];
    for (i, (_, path)) in job.volumes.iter().enumerate() {
        let name = format!("data-{i}");
        mounts.push(json!({"name": name, "mountPath": path}));
        volumes
            .push(json!({"name": name, "hostPath": {"path": path, "type": "DirectoryOrCreate"}}));
    }
    let labels = json!({
        "app.kubernetes.io/name": "lifeboat",
        "app.kubernetes.io/component": "rebuild-restore",
    });
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job.name, "namespace": data.namespace, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 86_400,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "nodeName": job.node,
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [{
                        "name": "restore",
                        "image": image,
                        "command": command,
                        "env": env,
                        "securityContext": {"runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": false},
                        "volumeMounts": mounts,
                    }],
                    "volumes": volumes,
                },
            },
        },
    })
}

/// Server-side applies the Jobs' namespace, labelled for Pod Security
/// `privileged` (the Jobs mount host folders, which the `baseline` level
/// Talos enforces by default forbids), and the Secret holding
/// `restore_key` and the repository settings of this environment.
///
/// Fails when the API refuses either.
pub async fn ensure_secret(
    client: &kube::Client,
    namespace: &str,
    restore_key: &[u8],
) -> Result<(), KubernetesError> {
    let params = PatchParams::apply(MANAGER).force();
    let namespace_object = json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace,
            "labels": {"pod-security.kubernetes.io/enforce": "privileged"}}});
    Api::<Namespace>::all(client.clone())
        .patch(namespace, &params, &Patch::Apply(&namespace_object))
        .await
        .map_err(api(format!("applying namespace {namespace}")))?;
    let mut data = BTreeMap::new();
    data.insert(
        KEY_FILE.to_owned(),
        k8s_openapi::ByteString(restore_key.to_vec()),
    );
    for name in RESTORE_VARIABLES {
        if let Ok(value) = std::env::var(name) {
            data.insert(name.to_owned(), k8s_openapi::ByteString(value.into_bytes()));
        }
    }
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(SECRET.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    let mut object = serde_json::to_value(&secret).map_err(|source| KubernetesError::Object {
        what: format!("Secret {namespace}/{SECRET}"),
        source,
    })?;
    object["apiVersion"] = "v1".into();
    object["kind"] = "Secret".into();
    Api::<Secret>::namespaced(client.clone(), namespace)
        .patch(SECRET, &params, &Patch::Apply(&object))
        .await
        .map_err(api(format!("applying Secret {namespace}/{SECRET}")))?;
    Ok(())
}

/// Deletes the Secret; one already gone is fine.
///
/// Fails when the API refuses.
pub async fn remove_secret(
    client: &kube::Client,
    namespace: &str,
) -> Result<bool, KubernetesError> {
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    match secrets.delete(SECRET, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(source) => Err(KubernetesError::RemoveSecret {
            namespace: namespace.to_owned(),
            name: SECRET.to_owned(),
            source,
        }),
    }
}

/// Runs `jobs` (objects from [`job_object`]) to their end: a Job of an
/// earlier run that completed or still runs is kept, a failed one is
/// deleted and made again, then every Job is waited for up to `wait`.
///
/// Fails naming every Job that failed or did not finish in time.
pub async fn run_jobs(
    client: &kube::Client,
    namespace: &str,
    jobs: &[(RestoreJob, Value)],
    wait: Duration,
) -> Result<Vec<String>, KubernetesError> {
    let jobs_api = Api::<Job>::namespaced(client.clone(), namespace);
    let mut lines = Vec::new();
    for (job, object) in jobs {
        let found = jobs_api
            .get_opt(&job.name)
            .await
            .map_err(api(format!("reading Job {namespace}/{}", job.name)))?;
        if let Some(existing) = found {
            match ending(&existing) {
                Some(Ending::Complete) => {
                    lines.push(format!("{} had already completed", job.name));
                    continue;
                }
                None => {
                    lines.push(format!("{} was already running", job.name));
                    continue;
                }
                Some(Ending::Failed(_)) => {
                    jobs_api
                        .delete(&job.name, &DeleteParams::background())
                        .await
                        .map_err(api(format!("deleting the failed Job {}", job.name)))?;
                    wait_until_gone(&jobs_api, &job.name).await?;
                }
            }
        }
        let typed: Job =
            serde_json::from_value(object.clone()).map_err(|source| KubernetesError::Object {
                what: format!("batch/v1 Job {}", job.name),
                source,
            })?;
        jobs_api
            .create(&PostParams::default(), &typed)
            .await
            .map_err(api(format!("creating Job {namespace}/{}", job.name)))?;
    }
    let deadline = Instant::now() + wait;
    let mut failures = Vec::new();
    for (job, _) in jobs {
        loop {
            let current = jobs_api
                .get_opt(&job.name)
                .await
                .map_err(api(format!("reading Job {namespace}/{}", job.name)))?
                .ok_or_else(|| KubernetesError::JobGone {
                    namespace: namespace.to_owned(),
                    name: job.name.clone(),
                })?;
            match ending(&current) {
                Some(Ending::Complete) => {
                    lines.push(format!(
                        "{} on {}: {} volume(s) restored",
                        job.name,
                        job.node,
                        job.volumes.len()
                    ));
                    break;
                }
                Some(Ending::Failed(_)) => {
                    failures.push(format!(
                        "Job {} on node {} failed (see `kubectl -n {namespace} logs job/{}`)",
                        job.name, job.node, job.name
                    ));
                    break;
                }
                None if Instant::now() > deadline => {
                    failures.push(format!(
                        "Job {} on node {} did not finish within {}",
                        job.name,
                        job.node,
                        humantime::format_duration(wait)
                    ));
                    break;
                }
                None => tokio::time::sleep(crate::POLL).await,
            }
        }
    }
    if !failures.is_empty() {
        return Err(KubernetesError::JobsFailed { failures });
    }
    Ok(lines)
}

/// Waits (up to a minute) until the Job `name` is gone after a delete.
///
/// Fails when it stays.
async fn wait_until_gone(jobs_api: &Api<Job>, name: &str) -> Result<(), KubernetesError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while jobs_api
        .get_opt(name)
        .await
        .map_err(api(format!("reading Job {name}")))?
        .is_some()
    {
        if Instant::now() > deadline {
            return Err(KubernetesError::JobStuck {
                name: name.to_owned(),
            });
        }
        tokio::time::sleep(crate::POLL).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use lifeboat::sources::volumes::StoredVolume;

    use super::*;

    fn volume(pvc: &str, node: &str) -> StoredVolume {
        StoredVolume {
            namespace: "apps".into(),
            pvc: pvc.into(),
            pv: format!("pv-{pvc}"),
            storage_class: "openebs-hostpath".into(),
            capacity: "1Gi".into(),
            access_modes: vec!["ReadWriteOnce".into()],
            node: node.into(),
            host_path: PathBuf::from(format!("/var/openebs/local/pv-{pvc}")),
            mover: None,
        }
    }

    #[test]
    fn one_job_per_node_and_unpinned_volumes_join_the_only_node() -> Result<(), KubernetesError> {
        let manifest = Manifest {
            volumes: vec![volume("a", "w1"), volume("b", ""), volume("c", "w1")],
            skipped: Vec::new(),
        };
        let jobs = plan_jobs("0123456789abcdef", &manifest)?;
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].name, "lifeboat-restore-01234567-w1");
        assert_eq!(jobs[0].volumes.len(), 3);

        let two_nodes = Manifest {
            volumes: vec![volume("a", "w1"), volume("c", "W_2")],
            skipped: Vec::new(),
        };
        let jobs = plan_jobs("0123456789abcdef", &two_nodes)?;
        assert_eq!(
            jobs.iter().map(|j| j.name.as_str()).collect::<Vec<_>>(),
            [
                "lifeboat-restore-01234567-w-2",
                "lifeboat-restore-01234567-w1"
            ]
        );

        let ambiguous = Manifest {
            volumes: vec![volume("a", "w1"), volume("b", ""), volume("c", "w2")],
            skipped: Vec::new(),
        };
        let error = plan_jobs("0123456789abcdef", &ambiguous)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("apps/b"), "{error}");

        let mut forged = volume("a", "w1");
        forged.host_path = PathBuf::from("/var/openebs/../../etc");
        let forged = Manifest {
            volumes: vec![forged],
            skipped: Vec::new(),
        };
        let error = plan_jobs("0123456789abcdef", &forged)
            .err()
            .map(|e| lifeboat::errors::describe(&e))
            .unwrap_or_default();
        assert!(error.contains("normalised"), "{error}");
        Ok(())
    }

    #[test]
    fn the_job_mounts_each_host_path_at_itself_and_is_a_valid_job()
    -> Result<(), Box<dyn std::error::Error>> {
        let job = RestoreJob {
            name: "lifeboat-restore-01234567-w1".into(),
            node: "w1".into(),
            volumes: vec![("apps/a".into(), "/var/openebs/local/pv-a".into())],
        };
        let repository = JobRepository {
            url: "s3://lifeboat/cluster".into(),
            s3_endpoint: Some("https://account.r2.cloudflarestorage.com".into()),
            s3_path_style: false,
        };
        let data = DataSpec {
            overwrite: true,
            ..DataSpec::default()
        };
        let object = job_object(&job, "0123abcd", &data, "ghcr.io/o/lifeboat:1", &repository);
        let typed: Job = serde_json::from_value(object.clone())?;
        let pod = typed
            .spec
            .and_then(|s| s.template.spec)
            .ok_or("no pod spec")?;
        assert_eq!(pod.node_name.as_deref(), Some("w1"));
        let container = &pod.containers[0];
        assert_eq!(
            container.command.as_deref(),
            Some(
                &[
                    "lifeboat",
                    "restore",
                    "0123abcd",
                    "--in-place",
                    "--pvc",
                    "apps/a",
                    "--allow-root",
                    "/var/openebs/local/pv-a",
                    "--force"
                ]
                .map(String::from)[..]
            )
        );
        let mounts = container.volume_mounts.clone().unwrap_or_default();
        assert!(
            mounts
                .iter()
                .any(|m| m.mount_path == "/var/openebs/local/pv-a")
        );
        Ok(())
    }
}
