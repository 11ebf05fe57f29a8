//! The Docker Engine API over its Unix socket, through `bollard`: finding a
//! running container by name and running a program inside it
//! ([`exec`]), for sources whose servers live in containers on private
//! networks (the user's Unraid databases).
//!
//! Whoever can talk to the socket is root on the host: mounting it `:ro`
//! stops writes to the socket file, not API calls. lifeboat only inspects
//! containers and runs exec instances in them.

pub mod exec;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bollard::query_parameters::{
    ListContainersOptions, StartContainerOptions, StopContainerOptions,
};
use zeroize::Zeroizing;

pub use self::exec::{ExecProcess, ExecSpec};

/// Where the Docker Engine listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// [`DEFAULT_SOCKET`] as a path (a serde default of the settings that
/// name a socket).
pub fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}

/// How long one API call may take, in seconds (exec streams are not
/// limited: a dump runs as long as it needs).
const API_TIMEOUT_SECONDS: u64 = 60;

/// Why the Docker Engine API could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// Nothing answers on the socket.
    #[error(
        "cannot reach the Docker Engine API at {}: {cause}; mount the Docker socket into \
         lifeboat's container (-v /var/run/docker.sock:/var/run/docker.sock) or set \
         docker_socket to where it is",
        socket.display()
    )]
    Unreachable {
        /// The socket.
        socket: PathBuf,
        /// What failed.
        cause: String,
    },
    /// No container has that name.
    #[error(
        "the Docker Engine at {} has no container {name:?} (running: {running}); \
         fix `container` to one of `docker ps --format '{{{{.Names}}}}'`",
        socket.display()
    )]
    NoSuchContainer {
        /// The socket.
        socket: PathBuf,
        /// The name asked for.
        name: String,
        /// The names of the running containers.
        running: String,
    },
    /// The container exists but does not run.
    #[error("container {name:?} is not running (it is {state}); start it (docker start {name})")]
    NotRunning {
        /// The container.
        name: String,
        /// Its state (`exited`, `paused`, …).
        state: String,
    },
    /// An API call failed.
    #[error("the Docker Engine API failed {action}: {cause}")]
    Api {
        /// What was being done.
        action: String,
        /// The daemon's or the connection's error.
        cause: String,
    },
}

/// What lifeboat reads of a running container.
#[derive(Default)]
pub struct Container {
    /// Its environment (`NAME=value`), wiped when dropped: it may hold
    /// the server's passwords.
    env: Zeroizing<Vec<String>>,
}

impl Container {
    /// The value of `name` in the container's environment.
    pub fn env(&self, name: &str) -> Option<&str> {
        self.env.iter().find_map(|entry| {
            entry
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('='))
        })
    }
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Container { env: [redacted] }")
    }
}

/// A running container found by its label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labelled {
    /// Its name.
    pub name: String,
    /// All its labels.
    pub labels: HashMap<String, String>,
    /// The host folders bind-mounted into it, in the daemon's order.
    pub binds: Vec<PathBuf>,
}

/// A connection to one Docker Engine.
#[derive(Debug, Clone)]
pub struct Docker {
    client: bollard::Docker,
    socket: PathBuf,
}

impl Docker {
    /// Connects to the Engine at `socket` and agrees on the API version
    /// (the lower of the daemon's and bollard's).
    ///
    /// Fails when nothing answers there.
    pub async fn connect(socket: &Path) -> Result<Self, DockerError> {
        let unreachable = |cause: String| DockerError::Unreachable {
            socket: socket.to_owned(),
            cause,
        };
        if !socket.exists() {
            return Err(unreachable("there is no such socket".into()));
        }
        let path = socket
            .to_str()
            .ok_or_else(|| unreachable("the path is not UTF-8".into()))?;
        let client = bollard::Docker::connect_with_unix(
            path,
            API_TIMEOUT_SECONDS,
            bollard::API_DEFAULT_VERSION,
        )
        .map_err(|e| unreachable(e.to_string()))?
        .negotiate_version()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
        Ok(Self {
            client,
            socket: socket.to_owned(),
        })
    }

    /// The socket this connection talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The container `name`, which must exist and run.
    ///
    /// Fails naming the running containers when there is none of that
    /// name, and with its state when it is not running.
    pub async fn running_container(&self, name: &str) -> Result<Container, DockerError> {
        match self.client.inspect_container(name, None).await {
            Ok(inspected) => {
                let state = inspected.state.unwrap_or_default();
                if state.running == Some(true) && state.paused != Some(true) {
                    let env = inspected.config.and_then(|c| c.env).unwrap_or_default();
                    return Ok(Container {
                        env: Zeroizing::new(env),
                    });
                }
                let state = state
                    .status
                    .map_or_else(|| "not running".to_owned(), |status| status.to_string());
                Err(DockerError::NotRunning {
                    name: name.to_owned(),
                    state,
                })
            }
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(DockerError::NoSuchContainer {
                socket: self.socket.clone(),
                name: name.to_owned(),
                running: self.running_names().await?,
            }),
            Err(e) => Err(self.failed(&format!("inspecting container {name:?}"), e)),
        }
    }

    /// The running containers carrying `label` (`key=value`, or `key` for
    /// any value), by name.
    ///
    /// Fails when the daemon cannot list them.
    pub async fn labelled(&self, label: &str) -> Result<Vec<Labelled>, DockerError> {
        let options = ListContainersOptions {
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![label.to_owned()],
            )])),
            ..Default::default()
        };
        let listed = self
            .client
            .list_containers(Some(options))
            .await
            .map_err(|e| self.failed(&format!("listing containers labelled {label}"), e))?;
        let mut found: Vec<Labelled> = listed
            .into_iter()
            .filter_map(|summary| {
                let name = summary.names?.first()?.trim_start_matches('/').to_owned();
                let binds = summary
                    .mounts
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|m| m.typ.as_deref() == Some("bind"))
                    .filter_map(|m| m.source.map(PathBuf::from))
                    .collect();
                Some(Labelled {
                    name,
                    labels: summary.labels.unwrap_or_default(),
                    binds,
                })
            })
            .collect();
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    /// Stops the container `name` (SIGTERM, then SIGKILL after its stop
    /// timeout).
    ///
    /// Fails with the daemon's error.
    pub async fn stop(&self, name: &str) -> Result<(), DockerError> {
        self.client
            .stop_container(name, None::<StopContainerOptions>)
            .await
            .map_err(|e| self.failed(&format!("stopping container {name:?}"), e))
    }

    /// Starts the container `name`.
    ///
    /// Fails with the daemon's error.
    pub async fn start(&self, name: &str) -> Result<(), DockerError> {
        self.client
            .start_container(name, None::<StartContainerOptions>)
            .await
            .map_err(|e| self.failed(&format!("starting container {name:?}"), e))
    }

    /// The names of the running containers, sorted, comma-separated.
    async fn running_names(&self) -> Result<String, DockerError> {
        let listed = self
            .client
            .list_containers(None::<ListContainersOptions>)
            .await
            .map_err(|e| self.failed("listing containers", e))?;
        let mut names: Vec<String> = listed
            .into_iter()
            .flat_map(|summary| summary.names.unwrap_or_default())
            .map(|name| name.trim_start_matches('/').to_owned())
            .collect();
        names.sort();
        Ok(if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        })
    }

    fn failed(&self, action: &str, cause: bollard::errors::Error) -> DockerError {
        DockerError::Api {
            action: action.to_owned(),
            cause: cause.to_string(),
        }
    }
}
