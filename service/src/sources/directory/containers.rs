//! Folders found through Docker labels: the bind mounts of every running
//! container labelled `lifeboat.dev/backup=true` (or the job's label), with
//! hooks named by labels, as Velero and k8up name them with annotations:
//!
//! - `pre.hook.backup.lifeboat.dev/command` and
//!   `post.hook.backup.lifeboat.dev/command`: a JSON array (`["sh", "-c",
//!   "…"]`) run in the container by exec before and after the read; a pre
//!   hook that fails stops the backup;
//! - `lifeboat.dev/stop: "true"`: the container is stopped for the read
//!   and started again afterwards, also when the backup fails.
//!
//! The daemon reports host paths; `mounts` maps a host folder to where
//! lifeboat sees it (`/mnt/user/appdata` at `/data/appdata` in its own
//! container). A bind mount outside every mapped folder is skipped with a
//! warning, never read from somewhere else.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::docker::{Docker, DockerError, ExecSpec, Labelled};

/// The label that selects containers unless the job names another.
pub const DEFAULT_LABEL: &str = "lifeboat.dev/backup=true";
/// The pre hook's label.
pub const PRE_HOOK: &str = "pre.hook.backup.lifeboat.dev/command";
/// The post hook's label.
pub const POST_HOOK: &str = "post.hook.backup.lifeboat.dev/command";
/// The label asking for the container to be stopped during the read.
pub const STOP: &str = "lifeboat.dev/stop";

/// How much of a hook's output is kept for its error message.
const HOOK_OUTPUT_LIMIT: usize = 4096;

/// The `containers` table of a directory source.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSelection {
    /// The label selecting containers (`key=value`, or `key`).
    #[serde(default = "default_label")]
    pub label: String,
    /// The Docker Engine's socket.
    #[serde(default = "crate::docker::default_socket")]
    pub docker_socket: PathBuf,
    /// Host folders and where lifeboat sees them; empty: at the same path.
    #[serde(default)]
    pub mounts: Vec<MountMap>,
}

fn default_label() -> String {
    DEFAULT_LABEL.to_owned()
}

/// One host folder as lifeboat sees it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountMap {
    /// The folder on the host, as the daemon reports mounts.
    pub host: PathBuf,
    /// Where it is mounted into lifeboat.
    pub at: PathBuf,
}

/// Why labelled containers could not be backed up.
#[derive(Debug, thiserror::Error)]
pub enum ContainersError {
    /// The Engine failed.
    #[error(transparent)]
    Docker(#[from] DockerError),
    /// A hook label is not a JSON array of strings.
    #[error(
        "container {container:?}: label {label} must be a JSON array of strings, \
         e.g. [\"sh\", \"-c\", \"sync\"] ({message}); fix the label"
    )]
    BadHook {
        /// The container.
        container: String,
        /// The label.
        label: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A pre hook failed.
    #[error(
        "container {container:?}: the pre hook {command:?} exited with {code}: {output}; nothing was read"
    )]
    PreHookFailed {
        /// The container.
        container: String,
        /// Its command.
        command: Vec<String>,
        /// Its exit code.
        code: i64,
        /// What it printed.
        output: String,
    },
}

/// One container to read, with its hooks.
#[derive(Debug, Clone)]
struct Found {
    name: String,
    folders: Vec<PathBuf>,
    pre: Option<Vec<String>>,
    post: Option<Vec<String>>,
    stop: bool,
}

/// The labelled containers of one run, their folders and their hooks.
#[derive(Debug)]
pub(crate) struct Discovered {
    docker: Docker,
    found: Vec<Found>,
    stopped: Vec<String>,
    /// Mounts not read, one sentence each.
    pub skipped: Vec<String>,
}

impl ContainerSelection {
    /// Finds the labelled running containers and their folders.
    ///
    /// Fails when the Engine cannot be reached or a hook label is invalid.
    pub(crate) async fn discover(&self) -> Result<Discovered, ContainersError> {
        let docker = Docker::connect(&self.docker_socket).await?;
        let mut found = Vec::new();
        let mut skipped = Vec::new();
        for container in docker.labelled(&self.label).await? {
            let mut folders = Vec::new();
            for bind in &container.binds {
                match self.local_path(bind) {
                    Some(path) => folders.push(path),
                    None => skipped.push(format!(
                        "container {}: {} is not below a folder of `mounts`; mount it into \
                         lifeboat and map it to read it",
                        container.name,
                        bind.display()
                    )),
                }
            }
            found.push(Found {
                pre: hook(&container, PRE_HOOK)?,
                post: hook(&container, POST_HOOK)?,
                stop: container.labels.get(STOP).is_some_and(|v| v == "true"),
                name: container.name,
                folders,
            });
        }
        Ok(Discovered {
            docker,
            found,
            stopped: Vec::new(),
            skipped,
        })
    }

    /// Where lifeboat sees the host folder `host`.
    fn local_path(&self, host: &Path) -> Option<PathBuf> {
        if self.mounts.is_empty() {
            return Some(host.to_owned());
        }
        self.mounts.iter().find_map(|map| {
            let rest = host.strip_prefix(&map.host).ok()?;
            // Never `..`: the daemon's path is taken as given, not walked.
            rest.components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
                .then(|| map.at.join(rest))
        })
    }
}

/// The command of `label` on `container`, if it has one.
fn hook(container: &Labelled, label: &'static str) -> Result<Option<Vec<String>>, ContainersError> {
    let Some(text) = container.labels.get(label) else {
        return Ok(None);
    };
    let bad = |message: String| ContainersError::BadHook {
        container: container.name.clone(),
        label,
        message,
    };
    let command: Vec<String> = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    if command.is_empty() {
        return Err(bad("it is empty".into()));
    }
    Ok(Some(command))
}

impl Discovered {
    /// Every folder to read, each once, sorted.
    pub fn folders(&self) -> Vec<PathBuf> {
        let mut folders: Vec<PathBuf> = self.found.iter().flat_map(|f| f.folders.clone()).collect();
        folders.sort();
        folders.dedup();
        folders
    }

    /// How many containers were found.
    pub fn count(&self) -> usize {
        self.found.len()
    }

    /// Runs the pre hooks and stops the containers that ask for it, in
    /// name order. What was done is undone by [`Discovered::after`].
    ///
    /// Fails at the first pre hook or stop that fails.
    pub async fn before(&mut self) -> Result<(), ContainersError> {
        for index in 0..self.found.len() {
            let found = self.found[index].clone();
            if let Some(command) = &found.pre {
                let (code, output) = self.run(&found.name, command).await?;
                if code != 0 {
                    return Err(ContainersError::PreHookFailed {
                        container: found.name,
                        command: command.clone(),
                        code,
                        output,
                    });
                }
            }
            if found.stop {
                self.docker.stop(&found.name).await?;
                self.stopped.push(found.name);
            }
        }
        Ok(())
    }

    /// Starts the stopped containers and runs the post hooks; returns the
    /// failures as warnings (the data is read by then).
    pub async fn after(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for name in &self.stopped {
            if let Err(e) = self.docker.start(name).await {
                warnings.push(format!(
                    "container {name:?} was not started again: {e}; start it (docker start {name})"
                ));
            }
        }
        for found in &self.found {
            if let Some(command) = &found.post {
                match self.run(&found.name, command).await {
                    Ok((0, _)) => {}
                    Ok((code, output)) => warnings.push(format!(
                        "container {:?}: the post hook {command:?} exited with {code}: {output}",
                        found.name
                    )),
                    Err(e) => warnings.push(format!(
                        "container {:?}: the post hook failed: {e}",
                        found.name
                    )),
                }
            }
        }
        warnings
    }

    async fn run(
        &self,
        container: &str,
        command: &[String],
    ) -> Result<(i64, String), ContainersError> {
        let spec = ExecSpec {
            cmd: command.to_vec(),
            ..ExecSpec::default()
        };
        Ok(self
            .docker
            .exec(container, spec)
            .await?
            .output(HOOK_OUTPUT_LIMIT)
            .await?)
    }
}
