//! A protocol-level stand-in for a Kubernetes API server, because no real
//! one can run here.
//!
//! It speaks the real HTTP/JSON API on a loopback port (plain HTTP with a
//! bearer token) to the real `kube` client: discovery (`/api`, `/apis`,
//! `APIResourceList`s, with CRD resources appearing once the CRD is
//! `Established`), list with `limit`/`continue` and label selectors, get,
//! create, server-side apply (`PATCH` with `application/apply-patch+yaml`,
//! `dryRun=All`), JSON merge patch (a workload scaled to 0 loses its pods,
//! as its controllers would do), delete, and `pods/exec` over the websocket channel
//! protocol (`v5.channel.k8s.io`/`v4.channel.k8s.io`), which runs the
//! command as a local process standing in for the container, and `/readyz`.
//! New Jobs complete at once, or run their container as a local process
//! ([`KubeApiServer::run_jobs`]).
//!
//! Like a real server it refuses objects in a namespace that does not
//! exist and custom resources whose CRD is not yet established, and it
//! records every write and exec in order so tests can check what a client
//! did and when.

pub mod catalog;
pub mod exec;
pub mod fixtures;
mod jobs;
mod routes;
pub mod snapshots;
pub mod store;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;

pub use self::jobs::JobRun;

use self::catalog::Resource;
use self::jobs::JobRunner;
use self::store::{Key, Store};

/// The bearer token clients must send.
pub const TOKEN: &str = "lifeboat-test-token";

/// One write the server received, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// `apply`, `create` or `delete`.
    pub verb: String,
    /// API group (`""` for core).
    pub group: String,
    /// Resource plural.
    pub resource: String,
    /// Namespace (`""` for cluster-scoped objects).
    pub namespace: String,
    /// Object name.
    pub name: String,
    /// Whether it was a server-side dry run.
    pub dry_run: bool,
    /// The field manager named by the client.
    pub field_manager: Option<String>,
    /// The HTTP status the server answered.
    pub status: u16,
}

/// One exec the server ran, in start order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    /// Namespace of the pod.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
    /// The command.
    pub command: Vec<String>,
    /// Its exit code, or `None` while running, when it could not start or
    /// when the client went away first.
    pub exit_code: Option<i32>,
    /// Whether the client closed the stream before the command ended.
    pub abandoned: bool,
}

/// The server's state, shared with its request handlers.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) store: Store,
    pub(crate) writes: Vec<Write>,
    pub(crate) execs: Vec<Exec>,
    pub(crate) establish_delay: Duration,
    pub(crate) fail_jobs: bool,
    /// Runs new Jobs' containers as local processes, when set.
    pub(crate) job_runner: Option<JobRunner>,
    /// Jobs created by the current request, to start once it is answered.
    pub(crate) started_jobs: Vec<Key>,
    /// The Jobs run, in the order they ended.
    pub(crate) job_runs: Vec<JobRun>,
    /// How many `/readyz` requests still answer not ready.
    pub(crate) unready: u32,
    /// The folders of CSI volumes, by volume handle.
    pub(crate) csi_folders: HashMap<String, PathBuf>,
    /// Nodes that are not ready: a Job's pod that can only go there stays
    /// Pending, unschedulable.
    pub(crate) unready_nodes: Vec<String>,
    /// The copies VolumeSnapshots hold, by (namespace, name).
    pub(crate) snapshot_folders: HashMap<(String, String), PathBuf>,
    /// CRDs created through the API and when they become established.
    pub(crate) pending_establish: Vec<(Instant, Key)>,
}

impl State {
    /// Establishes the CRDs whose delay has passed.
    pub(crate) fn tick(&mut self) {
        let now = Instant::now();
        let (due, waiting) = std::mem::take(&mut self.pending_establish)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.pending_establish = waiting;
        for (_, key) in due {
            self.store.set_status(&key, routes::established_status());
        }
    }

    /// Built-in resources, then those of established CRDs.
    pub(crate) fn served(&self) -> Vec<Resource> {
        let mut resources = catalog::builtin();
        let crds = catalog::builtin()
            .into_iter()
            .find(|r| r.plural == "customresourcedefinitions");
        if let Some(crds) = crds {
            for crd in self.store.list(&crds, None) {
                if catalog::is_established(crd) {
                    resources.extend(catalog::from_crd(crd));
                }
            }
        }
        resources
    }
}

/// A running test API server; it stops when dropped.
#[derive(Debug)]
pub struct KubeApiServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl KubeApiServer {
    /// Starts a server holding `objects` (CRDs among them are established
    /// at once).
    pub async fn start(objects: Vec<Value>) -> Result<Self> {
        let state = Arc::new(Mutex::new(State {
            store: Store::default(),
            writes: Vec::new(),
            execs: Vec::new(),
            establish_delay: Duration::from_millis(300),
            fail_jobs: false,
            job_runner: None,
            started_jobs: Vec::new(),
            job_runs: Vec::new(),
            unready: 0,
            csi_folders: HashMap::new(),
            unready_nodes: Vec::new(),
            snapshot_folders: HashMap::new(),
            pending_establish: Vec::new(),
        }));
        let server = {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .context("binding the Kubernetes test API server")?;
            let addr = listener.local_addr()?;
            let app = routes::router(state.clone());
            let task = tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    eprintln!("the Kubernetes test API server stopped: {e}");
                }
            });
            Self { addr, state, task }
        };
        for object in objects {
            server.load(object)?;
        }
        Ok(server)
    }

    /// Stores `object` as if it had always been there (no write recorded);
    /// a CRD is established at once.
    pub fn load(&self, mut object: Value) -> Result<()> {
        let mut state = self.state();
        let served = state.served();
        let (resource, key) = routes::locate(&served, &object)
            .with_context(|| format!("the fixture object {object} has no served resource"))?;
        if resource.plural == "customresourcedefinitions" {
            object["status"] = routes::established_status();
        }
        state.store.apply(key, object, "fixture");
        Ok(())
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig for this server to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
             clusters:\n- name: test\n  cluster:\n    server: {}\n\
             users:\n- name: lifeboat\n  user:\n    token: {TOKEN}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: lifeboat\n",
            self.url()
        );
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// How long after its creation a CRD becomes established.
    pub fn set_establish_delay(&self, delay: Duration) {
        self.state().establish_delay = delay;
    }

    /// Makes Jobs created from now on fail instead of complete.
    pub fn set_fail_jobs(&self, fail: bool) {
        self.state().fail_jobs = fail;
    }

    /// Makes Jobs created from now on run their first container as a local
    /// process (see [`jobs`](self::jobs)): a bare command name is taken
    /// from `bin_dir`, Secret volumes are written under `scratch`.
    pub fn run_jobs(&self, bin_dir: &Path, scratch: &Path) {
        self.state().job_runner = Some(JobRunner {
            bin_dir: bin_dir.to_owned(),
            scratch: scratch.to_owned(),
        });
    }

    /// Marks `node` not ready: a Job's pod placed on it (by `nodeName` or a
    /// required node affinity naming only it) stays Pending, unschedulable,
    /// and its container never runs.
    pub fn set_node_not_ready(&self, node: &str) {
        self.state().unready_nodes.push(node.to_owned());
    }

    /// Makes a Job that mounts a claim bound to the CSI volume `handle`
    /// see `folder`, as a node with that volume attached would.
    pub fn set_csi_folder(&self, handle: &str, folder: &Path) {
        self.state()
            .csi_folders
            .insert(handle.to_owned(), folder.to_owned());
    }

    /// The Jobs run to their end so far.
    pub fn job_runs(&self) -> Vec<JobRun> {
        self.state().job_runs.clone()
    }

    /// Makes the next `count` requests for `/readyz` answer 500, as an API
    /// server whose etcd is still starting does.
    pub fn set_unready(&self, count: u32) {
        self.state().unready = count;
    }

    /// The writes received so far, in order.
    pub fn writes(&self) -> Vec<Write> {
        self.state().writes.clone()
    }

    /// The execs run so far, in start order.
    pub fn execs(&self) -> Vec<Exec> {
        self.state().execs.clone()
    }

    /// The stored object, if any.
    pub fn object(
        &self,
        group: &str,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let key: Key = (group.into(), resource.into(), namespace.into(), name.into());
        self.state().store.get(&key).cloned()
    }

    /// Every stored object with its key.
    pub fn objects(&self) -> Vec<(Key, Value)> {
        self.state()
            .store
            .all()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Changes a stored object in place, as another client would (the
    /// resource version moves on; no write is recorded).
    pub fn edit(
        &self,
        group: &str,
        resource: &str,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value),
    ) -> Result<()> {
        let key: Key = (group.into(), resource.into(), namespace.into(), name.into());
        let mut state = self.state();
        let mut object = state
            .store
            .get(&key)
            .cloned()
            .with_context(|| format!("no object {key:?} to edit"))?;
        change(&mut object);
        state.store.delete(&key);
        state.store.apply(key, object, "test-edit");
        Ok(())
    }

    /// Removes a stored object, as another client would.
    pub fn remove(&self, group: &str, resource: &str, namespace: &str, name: &str) {
        let key: Key = (group.into(), resource.into(), namespace.into(), name.into());
        self.state().store.delete(&key);
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
