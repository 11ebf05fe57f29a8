//! A protocol-level stand-in for the Docker Engine API, because no Docker
//! daemon can run containers here.
//!
//! It listens on a Unix socket in a temporary folder and speaks the real
//! HTTP/1.1 API (with or without a `/v1.NN` version prefix) to the real
//! `bollard` client: `/_ping`, `/version`, `GET /containers/json`,
//! `GET /containers/{name}/json` (state and environment),
//! `POST /containers/{name}/exec`, `POST /exec/{id}/start` — answered with
//! `101 UPGRADED` and then the raw hijacked stream: stdin from the client,
//! stdout and stderr back in the multiplexed framing (an 8-byte header of
//! stream type and big-endian length per frame) — and `GET /exec/{id}/json`
//! with the exit code.
//!
//! A "container" is a name, a running flag and an environment; an exec
//! runs its command as a local process with only that environment plus
//! the exec's own (its `PATH` decides which programs the container has), in
//! the container's own empty folder. A command not on that `PATH` fails as
//! runc reports it: the OCI error on stdout and exit code 127. Every exec
//! created is recorded so tests can check what a client sent.

mod exec;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result};
use tempfile::TempDir;

/// The API version the stand-in reports (Docker 27, as on Unraid 7).
pub const API_VERSION: &str = "1.47";

/// One container.
#[derive(Debug, Clone)]
pub struct Container {
    /// Whether it runs.
    pub running: bool,
    /// Its environment (`NAME=value`).
    pub env: Vec<String>,
    /// Its working folder.
    pub dir: PathBuf,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Host folders bind-mounted into it.
    pub binds: Vec<PathBuf>,
}

/// One exec a client created.
#[derive(Debug, Clone)]
pub struct ExecRecord {
    /// Its id.
    pub id: String,
    /// The container.
    pub container: String,
    /// The command line.
    pub cmd: Vec<String>,
    /// The environment it added.
    pub env: Vec<String>,
    /// Whether stdin was attached.
    pub attach_stdin: bool,
    /// Its exit code, once it ended.
    pub exit_code: Option<i64>,
    /// Whether it has been started.
    pub started: bool,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    containers: BTreeMap<String, Container>,
    execs: Vec<ExecRecord>,
    /// `stop NAME` / `start NAME`, in order.
    lifecycle: Vec<String>,
}

pub(crate) type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The running stand-in; stops when dropped.
#[derive(Debug)]
pub struct DockerEngine {
    dir: TempDir,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl DockerEngine {
    /// Starts the stand-in on a new socket.
    ///
    /// Fails when the socket cannot be bound.
    pub async fn start() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("lifeboat-docker")
            .tempdir()?;
        let socket = dir.path().join("docker.sock");
        let listener = tokio::net::UnixListener::bind(&socket)
            .with_context(|| format!("binding {}", socket.display()))?;
        let state = Shared::default();
        let app = exec::router(state.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("docker stand-in stopped: {e}");
            }
        });
        Ok(Self { dir, state, task })
    }

    /// The socket clients connect to.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    /// Adds (or replaces) the running container `name` with `env`.
    ///
    /// Fails when its folder cannot be made.
    pub fn add_container(&self, name: &str, env: &[String]) -> Result<()> {
        let dir = self.dir.path().join("containers").join(name);
        std::fs::create_dir_all(&dir)?;
        lock(&self.state).containers.insert(
            name.to_owned(),
            Container {
                running: true,
                env: env.to_vec(),
                dir,
                labels: BTreeMap::new(),
                binds: Vec::new(),
            },
        );
        Ok(())
    }

    /// Gives the container `name` a label.
    pub fn label(&self, name: &str, key: &str, value: &str) {
        if let Some(container) = lock(&self.state).containers.get_mut(name) {
            container.labels.insert(key.to_owned(), value.to_owned());
        }
    }

    /// Bind-mounts the host folder `host` into the container `name`.
    pub fn bind(&self, name: &str, host: &Path) {
        if let Some(container) = lock(&self.state).containers.get_mut(name) {
            container.binds.push(host.to_owned());
        }
    }

    /// Every stop and start asked for, in order (`stop NAME`, `start NAME`).
    pub fn lifecycle(&self) -> Vec<String> {
        lock(&self.state).lifecycle.clone()
    }

    /// Whether the container `name` runs.
    pub fn is_running(&self, name: &str) -> bool {
        lock(&self.state)
            .containers
            .get(name)
            .is_some_and(|c| c.running)
    }

    /// Marks the container `name` running or stopped.
    pub fn set_running(&self, name: &str, running: bool) {
        if let Some(container) = lock(&self.state).containers.get_mut(name) {
            container.running = running;
        }
    }

    /// Every exec created so far, in order.
    pub fn execs(&self) -> Vec<ExecRecord> {
        lock(&self.state).execs.clone()
    }

    /// A container's environment for a PostgreSQL server reached over
    /// loopback: libpq's `PGHOST`/`PGPORT` stand in for the container's own
    /// socket, and `PATH` holds the client programs of `bin`.
    pub fn postgres_env(bin: &Path, port: u16, superuser: &str) -> Vec<String> {
        vec![
            format!("PATH={}:/usr/local/bin:/usr/bin:/bin", bin.display()),
            "PGHOST=127.0.0.1".into(),
            format!("PGPORT={port}"),
            format!("POSTGRES_USER={superuser}"),
            "PG_MAJOR=stand-in".into(),
        ]
    }
}

impl Drop for DockerEngine {
    fn drop(&mut self) {
        self.task.abort();
    }
}
