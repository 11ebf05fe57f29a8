//! Jobs run to their end, as the scheduler, the kubelet and the Job
//! controller would: once [`KubeApiServer::run_jobs`] is set, a new Job's
//! first container runs as a local process standing in for the container,
//! and the Job's status becomes `Complete` or `Failed` by its exit code.
//!
//! The process sees what the pod would see, as far as one machine allows:
//! - `env` with `value` and `valueFrom.secretKeyRef` (from the stored
//!   Secret's `data` or `stringData`);
//! - `hostPath` volumes at their own path (a mount whose path differs from
//!   the host path cannot be shown and fails the Job);
//! - Secret volumes as files in a scratch folder, the mount path in the
//!   command and `env` values rewritten to it;
//! - `persistentVolumeClaim` volumes as the folder behind the claim's
//!   PersistentVolume (its `hostPath` or `local` path, or for a CSI volume
//!   the folder registered for its volume handle with
//!   [`KubeApiServer::set_csi_folder`]), the mount path rewritten to it; as
//!   the kubelet would, a pod fails when its node is not one the volume's
//!   node affinity allows, or when another pod uses a ReadWriteOnce claim
//!   on another node (Multi-Attach);
//! - `emptyDir` volumes as the host's folder at the mount path when there is
//!   one (`/tmp`), else as a scratch folder, rewritten likewise;
//! - a bare command name is looked up in the given binary folder, the
//!   image's stand-in.
//!
//! Each Job gets a pod object labelled `job-name`, Running while its
//! process runs and Succeeded or Failed after; a pod that can only go to a
//! node marked not ready stays Pending and unschedulable, and its process
//! never starts. Deleting a Job deletes its pod and kills its process, as
//! the garbage collector would.
//!
//! [`KubeApiServer::run_jobs`]: super::KubeApiServer::run_jobs
//! [`KubeApiServer::set_csi_folder`]: super::KubeApiServer::set_csi_folder

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde_json::{Value, json};

use super::State;
use super::store::Key;

/// Where Job containers come from.
#[derive(Debug, Clone)]
pub(crate) struct JobRunner {
    /// The folder whose programs stand in for the image's.
    pub(crate) bin_dir: PathBuf,
    /// Where Secret volumes are written.
    pub(crate) scratch: PathBuf,
}

/// One Job run by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRun {
    /// The Job's namespace.
    pub namespace: String,
    /// The Job's name.
    pub name: String,
    /// The node the pod was placed on (`spec.template.spec.nodeName`).
    pub node: Option<String>,
    /// The container's image.
    pub image: String,
    /// The command and arguments, as the Job gave them.
    pub command: Vec<String>,
    /// Host paths mounted, with whether read-only.
    pub host_paths: Vec<(String, bool)>,
    /// Claims mounted (`NAMESPACE/NAME`), with whether read-only.
    pub claims: Vec<(String, bool)>,
    /// The nodes its required node affinity allows on the host name.
    pub affinity: Vec<String>,
    /// The exit code (`None` when it could not start or was killed).
    pub exit_code: Option<i32>,
    /// Its standard output and error.
    pub output: String,
}

/// The status a Job has while its pod runs.
pub(crate) fn active_status() -> Value {
    json!({"active": 1, "startTime": "2026-11-26T00:00:00Z"})
}

/// The status of a Job whose pod ended with `success`.
pub(crate) fn final_status(success: bool) -> Value {
    if success {
        json!({"succeeded": 1, "completionTime": "2026-11-26T00:00:00Z",
            "conditions": [{"type": "Complete", "status": "True"}]})
    } else {
        json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True",
            "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]})
    }
}

/// Binds a new unbound claim at `key` to a new hostPath PersistentVolume
/// in the runner's scratch folder, as a dynamic provisioner would (only
/// while Jobs run, since only they can use it), filled from the
/// VolumeSnapshot its `dataSource` names.
pub(crate) fn provision(state: &mut State, key: &Key) {
    let Some(runner) = state.job_runner.clone() else {
        return;
    };
    let Some(claim) = state.store.get(key).cloned() else {
        return;
    };
    if claim["spec"]["volumeName"].is_string() {
        return;
    }
    let name = format!("pvc-provisioned-{}-{}", key.2, key.3);
    let folder = runner.scratch.join("provisioned").join(&name);
    if std::fs::create_dir_all(&folder).is_err() {
        return;
    }
    super::snapshots::fill_from_source(state, &claim, &key.2, &folder);
    let volume = json!({"apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {"capacity": claim["spec"]["resources"]["requests"].clone(),
            "accessModes": claim["spec"]["accessModes"].clone(),
            "storageClassName": claim["spec"]["storageClassName"].clone(),
            "hostPath": {"path": folder.display().to_string()},
            "claimRef": {"namespace": key.2, "name": key.3}}});
    state.store.apply(
        (
            String::new(),
            "persistentvolumes".into(),
            String::new(),
            name.clone(),
        ),
        volume,
        "provisioner",
    );
    let mut bound = claim;
    bound["spec"]["volumeName"] = json!(name);
    state.store.delete(key);
    state.store.apply(key.clone(), bound, "provisioner");
    state.store.set_status(key, json!({"phase": "Bound"}));
}

/// The pod the Job controller makes for the Job at `key`, labelled
/// `job-name`: Running, or Pending and unschedulable when it can only go to
/// a node that is not ready. Gives whether its container may run.
pub(crate) fn make_pod(state: &mut State, key: &Key) -> bool {
    let Some(job) = state.store.get(key).cloned() else {
        return false;
    };
    let pod = &job["spec"]["template"]["spec"];
    let node = pod["nodeName"].as_str().map(str::to_owned);
    let allowed = affinity_nodes(pod);
    let only = node.or_else(|| (allowed.len() == 1).then(|| allowed[0].clone()));
    let unready = only.filter(|n| state.unready_nodes.contains(n));
    let status = match &unready {
        Some(node) => json!({"phase": "Pending", "conditions": [{"type": "PodScheduled",
            "status": "False", "reason": "Unschedulable",
            "message": format!("0/3 nodes are available: 1 node(s) had untolerated taint {{node.kubernetes.io/not-ready: }} ({node})")}]}),
        None => json!({"phase": "Running"}),
    };
    let name = format!("{}-pod", key.3);
    let object = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": key.2,
            "labels": {"job-name": key.3, "batch.kubernetes.io/job-name": key.3}},
        "spec": {"nodeName": pod["nodeName"].clone(),
            "containers": [{"name": pod["containers"][0]["name"].clone(),
                "image": pod["containers"][0]["image"].clone()}]}});
    let pod_key = (String::new(), "pods".to_owned(), key.2.clone(), name);
    state.store.apply(pod_key.clone(), object, "job-controller");
    state.store.set_status(&pod_key, status);
    unready.is_none()
}

/// `GET …/pods/NAME/log`: what the process of the pod's Job printed, once
/// it ended (`tailLines` honoured), as the kubelet serves a container log.
pub(crate) async fn log(
    axum::extract::State(state): axum::extract::State<Arc<Mutex<State>>>,
    axum::extract::Path((namespace, pod)): axum::extract::Path<(String, String)>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    if !super::routes::authorized(&headers) {
        return super::routes::failure(
            axum::http::StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized",
        );
    }
    let state = state.lock().unwrap_or_else(|e| e.into_inner());
    let key = (
        String::new(),
        "pods".to_owned(),
        namespace.clone(),
        pod.clone(),
    );
    let Some(object) = state.store.get(&key) else {
        return super::routes::failure(
            axum::http::StatusCode::NOT_FOUND,
            "NotFound",
            format!("pods {pod:?} not found"),
        );
    };
    let job = object["metadata"]["labels"]["job-name"]
        .as_str()
        .unwrap_or_default();
    let output = state
        .job_runs
        .iter()
        .rev()
        .find(|r| r.namespace == namespace && r.name == job)
        .map(|r| r.output.clone())
        .unwrap_or_default();
    let tail = super::routes::query_pairs(query.as_deref())
        .into_iter()
        .find(|(name, _)| name == "tailLines")
        .and_then(|(_, value)| value.parse::<usize>().ok());
    let lines: Vec<&str> = output.lines().collect();
    let start = tail.map_or(0, |n| lines.len().saturating_sub(n));
    lines[start..].join("\n").into_response()
}

/// Deletes the pods of the Job at `key`, as the garbage collector would.
pub(crate) fn collect_pods(state: &mut State, key: &Key) {
    let pods: Vec<Key> = state
        .store
        .all()
        .filter(|(k, pod)| {
            k.1 == "pods" && k.2 == key.2 && pod["metadata"]["labels"]["job-name"] == key.3.as_str()
        })
        .map(|(k, _)| k.clone())
        .collect();
    for pod in pods {
        state.store.delete(&pod);
    }
}

/// Runs the Job at `key` in the background and records the run.
pub(crate) fn spawn(state: Arc<Mutex<State>>, key: Key) {
    tokio::spawn(async move {
        let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
        let (job, runner, cluster) = {
            let guard = lock();
            let job = guard.store.get(&key).cloned();
            let cluster = Cluster {
                secrets: secrets_of(&guard, &key.2),
                objects: guard
                    .store
                    .all()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                csi_folders: guard.csi_folders.clone(),
            };
            (job, guard.job_runner.clone(), cluster)
        };
        let (Some(job), Some(runner)) = (job, runner) else {
            return;
        };
        let run = run(&job, &key, &runner, &cluster, state.clone()).await;
        let mut guard = lock();
        let success = run.exit_code == Some(0);
        guard.store.set_status(&key, final_status(success));
        let pod = (
            String::new(),
            "pods".to_owned(),
            key.2.clone(),
            format!("{}-pod", key.3),
        );
        if guard.store.get(&pod).is_some() {
            let phase = if success { "Succeeded" } else { "Failed" };
            guard.store.set_status(&pod, json!({"phase": phase}));
        }
        guard.job_runs.push(run);
    });
}

/// What a Job's pod sees of the cluster when it starts.
struct Cluster {
    /// The Secrets of its namespace, each as its decoded keys.
    secrets: HashMap<String, HashMap<String, Vec<u8>>>,
    /// Every object.
    objects: HashMap<Key, Value>,
    /// Folders of CSI volumes by volume handle.
    csi_folders: HashMap<String, PathBuf>,
}

/// The Secrets of `namespace`, each as its decoded keys.
fn secrets_of(state: &State, namespace: &str) -> HashMap<String, HashMap<String, Vec<u8>>> {
    let mut secrets = HashMap::new();
    for (key, secret) in state.store.all() {
        if key.0.is_empty() && key.1 == "secrets" && key.2 == namespace {
            secrets.insert(key.3.clone(), secret_data(secret));
        }
    }
    secrets
}

fn secret_data(secret: &Value) -> HashMap<String, Vec<u8>> {
    let mut data = HashMap::new();
    if let Some(encoded) = secret["data"].as_object() {
        for (name, value) in encoded {
            let bytes = value
                .as_str()
                .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok());
            if let Some(bytes) = bytes {
                data.insert(name.clone(), bytes);
            }
        }
    }
    if let Some(plain) = secret["stringData"].as_object() {
        for (name, value) in plain {
            if let Some(text) = value.as_str() {
                data.insert(name.clone(), text.as_bytes().to_vec());
            }
        }
    }
    data
}

async fn run(
    job: &Value,
    key: &Key,
    runner: &JobRunner,
    cluster: &Cluster,
    state: Arc<Mutex<State>>,
) -> JobRun {
    let pod = &job["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let strings = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| i.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut command = strings(&container["command"]);
    command.extend(strings(&container["args"]));
    let mut record = JobRun {
        namespace: key.2.clone(),
        name: key.3.clone(),
        node: pod["nodeName"].as_str().map(str::to_owned),
        image: container["image"].as_str().unwrap_or_default().to_owned(),
        command: command.clone(),
        host_paths: Vec::new(),
        claims: Vec::new(),
        affinity: affinity_nodes(pod),
        exit_code: None,
        output: String::new(),
    };
    let prepared = prepare(pod, container, key, runner, cluster, &mut record);
    let (rewrites, env) = match prepared {
        Ok(prepared) => prepared,
        Err(problem) => {
            record.output = problem;
            return record;
        }
    };
    // A path under a mount becomes the path under its folder: the longest
    // mount path that is the text or a parent of it, replaced once.
    let rewrite = |text: &str| {
        rewrites
            .iter()
            .filter(|(from, _)| {
                text == from
                    || text
                        .strip_prefix(from.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            })
            .max_by_key(|(from, _)| from.len())
            .map(|(from, to)| format!("{to}{}", &text[from.len()..]))
            .unwrap_or_else(|| text.to_owned())
    };
    let Some(program) = command.first() else {
        record.output = "the container has no command".into();
        return record;
    };
    let local = runner.bin_dir.join(program);
    let program = if !program.contains('/') && local.is_file() {
        local
    } else {
        PathBuf::from(program)
    };
    let child = tokio::process::Command::new(&program)
        .args(command[1..].iter().map(|a| rewrite(a)))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, rewrite(v))))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let output = match child {
        Ok(child) => until_deleted(child.wait_with_output(), &state, key).await,
        Err(e) => Err(e),
    };
    match output {
        Ok(output) => {
            record.exit_code = output.status.code();
            record.output = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Err(e) => record.output = format!("{}: {e}", program.display()),
    }
    record
}

/// Waits for `output` unless the Job at `key` is deleted first, which
/// drops (and so kills) the process.
async fn until_deleted(
    output: impl std::future::Future<Output = std::io::Result<std::process::Output>>,
    state: &Arc<Mutex<State>>,
    key: &Key,
) -> std::io::Result<std::process::Output> {
    let deleted = async {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let gone = state
                .lock()
                .map(|s| s.store.get(key).is_none())
                .unwrap_or(true);
            if gone {
                return;
            }
        }
    };
    tokio::select! {
        output = output => output,
        () = deleted => Err(std::io::Error::other("killed: its Job was deleted")),
    }
}

/// The nodes a pod's required node affinity allows on the host name.
fn affinity_nodes(pod: &Value) -> Vec<String> {
    let terms = &pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    terms
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| t["matchExpressions"].as_array().into_iter().flatten())
        .filter(|e| e["key"] == "kubernetes.io/hostname" && e["operator"] == "In")
        .flat_map(|e| e["values"].as_array().into_iter().flatten())
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// The folder behind claim `namespace/claim` as the pod on `node` (when
/// placed) would mount it.
///
/// Fails as the kubelet or scheduler would refuse the pod.
fn claim_folder(
    cluster: &Cluster,
    namespace: &str,
    claim: &str,
    pod_name: &str,
    node: Option<&str>,
) -> Result<PathBuf, String> {
    let get = |resource: &str, namespace: &str, name: &str| {
        cluster.objects.get(&(
            String::new(),
            resource.to_owned(),
            namespace.to_owned(),
            name.to_owned(),
        ))
    };
    let pvc = get("persistentvolumeclaims", namespace, claim)
        .ok_or_else(|| format!("persistentvolumeclaim {claim:?} not found"))?;
    let pv_name = pvc["spec"]["volumeName"]
        .as_str()
        .ok_or_else(|| format!("persistentvolumeclaim {claim:?} is not bound"))?;
    let pv = get("persistentvolumes", "", pv_name)
        .ok_or_else(|| format!("persistentvolume {pv_name:?} not found"))?;
    let spec = &pv["spec"];
    let pinned = affinity_nodes(&json!({"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": spec["nodeAffinity"]["required"]}}}));
    if let Some(node) = node {
        if !pinned.is_empty() && !pinned.iter().any(|p| p == node) {
            return Err(format!(
                "volume node affinity conflict: {pv_name} is on {}, the pod on {node}",
                pinned.join(",")
            ));
        }
        let once = pvc["spec"]["accessModes"].as_array().is_some_and(|m| {
            m.iter()
                .all(|m| m == "ReadWriteOnce" || m == "ReadWriteOncePod")
        });
        for ((_, resource, pod_namespace, other), object) in &cluster.objects {
            if resource != "pods" || pod_namespace != namespace || other == pod_name {
                continue;
            }
            let uses = object["spec"]["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|v| v["persistentVolumeClaim"]["claimName"] == claim);
            let elsewhere = object["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| n != node);
            if once && uses && elsewhere {
                return Err(format!(
                    "Multi-Attach error for volume {pv_name}: it is already used by pod {other} on another node"
                ));
            }
        }
    }
    let path = spec["hostPath"]["path"]
        .as_str()
        .or_else(|| spec["local"]["path"].as_str())
        .map(PathBuf::from)
        .or_else(|| {
            spec["csi"]["volumeHandle"]
                .as_str()
                .and_then(|handle| cluster.csi_folders.get(handle).cloned())
        });
    path.ok_or_else(|| format!("persistentvolume {pv_name:?} has no folder the test server knows"))
}

/// Name and value pairs.
type Pairs = Vec<(String, String)>;

/// The path rewrites for Secret volumes and the container's environment.
///
/// Fails, naming the problem, as the kubelet would refuse the pod.
fn prepare(
    pod: &Value,
    container: &Value,
    key: &Key,
    runner: &JobRunner,
    cluster: &Cluster,
    record: &mut JobRun,
) -> Result<(Pairs, Pairs), String> {
    let secrets = &cluster.secrets;
    let node = pod["nodeName"].as_str();
    let volumes: HashMap<&str, &Value> = pod["volumes"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|v| Some((v["name"].as_str()?, v)))
                .collect()
        })
        .unwrap_or_default();
    let mut rewrites = Vec::new();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let name = mount["name"].as_str().unwrap_or_default();
        let path = mount["mountPath"].as_str().unwrap_or_default();
        let read_only = mount["readOnly"].as_bool().unwrap_or(false);
        let volume = volumes
            .get(name)
            .ok_or_else(|| format!("volumeMount {name:?} names no volume"))?;
        if let Some(host) = volume["hostPath"]["path"].as_str() {
            if host != path {
                return Err(format!(
                    "the test server runs containers on the host: hostPath {host} must be mounted at its own path, not {path}"
                ));
            }
            record.host_paths.push((host.to_owned(), read_only));
        } else if let Some(secret) = volume["secret"]["secretName"].as_str() {
            let data = secrets
                .get(secret)
                .ok_or_else(|| format!("secret {secret:?} not found"))?;
            let folder = runner
                .scratch
                .join(format!("{}-{}", key.2, key.3))
                .join(path.trim_start_matches('/'));
            write_secret_files(&folder, data)?;
            rewrites.push((path.to_owned(), folder.display().to_string()));
        } else if let Some(claim) = volume["persistentVolumeClaim"]["claimName"].as_str() {
            let folder = claim_folder(cluster, &key.2, claim, &key.3, node)?;
            let read_only =
                read_only || volume["persistentVolumeClaim"]["readOnly"].as_bool() == Some(true);
            record
                .claims
                .push((format!("{}/{claim}", key.2), read_only));
            rewrites.push((path.to_owned(), folder.display().to_string()));
        } else if volume.get("emptyDir").is_some() && Path::new(path).is_dir() {
            // The host's own folder (`/tmp`) serves: paths under it in the
            // command (the tests' repositories) stay as they are.
        } else if volume.get("emptyDir").is_some() {
            let folder = runner.scratch.join(format!("{}-{}-{name}", key.2, key.3));
            std::fs::create_dir_all(&folder).map_err(|e| format!("{}: {e}", folder.display()))?;
            rewrites.push((path.to_owned(), folder.display().to_string()));
        } else {
            return Err(format!(
                "volume {name:?} is of a kind the test server cannot run"
            ));
        }
    }
    let mut env = Vec::new();
    for variable in container["env"].as_array().into_iter().flatten() {
        let name = variable["name"].as_str().unwrap_or_default().to_owned();
        if let Some(value) = variable["value"].as_str() {
            env.push((name, value.to_owned()));
            continue;
        }
        let reference = &variable["valueFrom"]["secretKeyRef"];
        let (Some(secret), Some(field)) = (reference["name"].as_str(), reference["key"].as_str())
        else {
            continue;
        };
        match secrets.get(secret).and_then(|data| data.get(field)) {
            Some(bytes) => env.push((name, String::from_utf8_lossy(bytes).into_owned())),
            None if reference["optional"].as_bool() == Some(true) => {}
            None => return Err(format!("secret {secret:?} has no key {field:?} for {name}")),
        }
    }
    Ok((rewrites, env))
}

fn write_secret_files(folder: &Path, data: &HashMap<String, Vec<u8>>) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(folder).map_err(|e| format!("{}: {e}", folder.display()))?;
    for (name, bytes) in data {
        let file = folder.join(name);
        std::fs::write(&file, bytes).map_err(|e| format!("{}: {e}", file.display()))?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("{}: {e}", file.display()))?;
    }
    Ok(())
}
