//! The nodes' Talos API: connecting in maintenance mode (no client
//! certificate, the server's certificate pinned or not) or over mutual TLS
//! with the talosconfig of the talos-config snapshot, waiting until a node
//! answers or etcd waits for its bootstrap, and finding the fetched
//! machine configs and talosconfig.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat::sources::talos_config::{TalosFile, inspect_file};
use lifeboat::talos::{Security, TalosClient, TalosConfig, TalosEndpoint, TalosError};

use crate::spec::{ClusterSpec, NodeSpec, Role, SpecError};

/// What went wrong with a node's Talos API or the files it needs.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A node's address is not an endpoint.
    #[error("the Talos endpoint {address:?}; give IP or IP:PORT in the spec")]
    Endpoint {
        /// The address as the spec has it.
        address: String,
        /// Why.
        #[source]
        source: TalosError,
    },
    /// A call failed.
    #[error("the Talos API at {address}")]
    Api {
        /// The node's address.
        address: String,
        /// The client's error.
        #[source]
        source: TalosError,
    },
    /// The node did not answer in time.
    #[error("the Talos API at {address} did not answer within {wait}")]
    NoAnswer {
        /// The node's address.
        address: String,
        /// How long it was waited for.
        wait: String,
        /// The last attempt's error.
        #[source]
        source: Box<NodeError>,
    },
    /// The talos-config snapshot holds no talosconfig.
    #[error(
        "no talosconfig in the talos-config snapshot; the rebuild needs one with an os:admin certificate (check [backups] talos_config)"
    )]
    NoTalosconfig,
    /// The fetched talosconfig cannot be used.
    #[error("the talosconfig {} of the talos-config snapshot", path.display())]
    Talosconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: TalosError,
    },
    /// The maintenance pin of the spec.
    #[error("the maintenance-mode certificate pin")]
    Pin(#[source] SpecError),
    /// No machine config of the node's role was fetched.
    #[error(
        "no {role:?} machine config in the talos-config snapshot; name it with machine_config = \"…\" for node {node}"
    )]
    NoMachineConfig {
        /// The node's role.
        role: Role,
        /// The node.
        node: String,
    },
    /// The machine config cannot be read.
    #[error("cannot read the machine config {}; check machine_config of the node in the spec", path.display())]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// etcd runs already: the node was bootstrapped.
    #[error(
        "etcd on {node} is already Running: it was bootstrapped, and recovering would need a wiped node (talosctl reset)"
    )]
    EtcdRunning {
        /// The bootstrap node.
        node: String,
    },
    /// etcd did not come to wait for its bootstrap.
    #[error("etcd on {node} did not reach Preparing within {wait} (last: {last})")]
    EtcdNotPreparing {
        /// The bootstrap node.
        node: String,
        /// How long it was waited for.
        wait: String,
        /// The last state seen, or the error.
        last: String,
    },
}

/// `host` with apid's port unless one is given.
pub fn with_port(address: &str) -> String {
    if address.contains(':') {
        address.to_owned()
    } else {
        format!("{address}:{}", lifeboat::talos::APID_PORT)
    }
}

/// Connects to the nodes, in maintenance mode or with the fetched
/// talosconfig.
pub struct Nodes<'a> {
    /// The spec (its `[talos]` settings).
    pub spec: &'a ClusterSpec,
    /// The work folder the talos-config snapshot was fetched into.
    pub work: &'a Path,
}

impl Nodes<'_> {
    /// The folder the talos-config snapshot was fetched into.
    pub fn talos_config_dir(&self) -> PathBuf {
        self.work.join("talos-config")
    }

    /// Connects to `address`: with `mutual`, with the talosconfig's
    /// credentials; else without a client certificate (maintenance mode).
    ///
    /// Fails when the address, the talosconfig or the connection fails.
    pub async fn connect(&self, address: &str, mutual: bool) -> Result<TalosClient, NodeError> {
        let endpoint =
            TalosEndpoint::parse(&with_port(address)).map_err(|source| NodeError::Endpoint {
                address: address.to_owned(),
                source,
            })?;
        let security = if mutual {
            let path = find_file(&self.talos_config_dir(), TalosFile::Talosconfig)
                .ok_or(NodeError::NoTalosconfig)?;
            let failed = |source| NodeError::Talosconfig {
                path: path.clone(),
                source,
            };
            let config = TalosConfig::load(Some(&path)).map_err(failed)?;
            let credentials = config
                .context(self.spec.talos.context.as_deref())
                .and_then(|c| c.credentials())
                .map_err(failed)?;
            Security::Mutual(Arc::new(credentials))
        } else {
            Security::Insecure {
                pin_sha256: self.spec.pin().map_err(NodeError::Pin)?,
            }
        };
        TalosClient::connect(&endpoint, &security)
            .await
            .map_err(api(address))
    }

    /// Connects to `address` and asks for the version until it answers,
    /// for at most `[talos] wait`.
    ///
    /// Fails with the last attempt's error when it does not.
    pub async fn wait_for(&self, address: &str, mutual: bool) -> Result<TalosClient, NodeError> {
        let wait = self.spec.talos.wait;
        let deadline = Instant::now() + wait;
        loop {
            let attempt = match self.connect(address, mutual).await {
                Ok(client) => client.version().await.map(|_| client).map_err(api(address)),
                Err(e) => Err(e),
            };
            match attempt {
                Ok(client) => return Ok(client),
                Err(e) if Instant::now() > deadline => {
                    return Err(NodeError::NoAnswer {
                        address: address.to_owned(),
                        wait: humantime::format_duration(wait).to_string(),
                        source: Box::new(e),
                    });
                }
                Err(_) => tokio::time::sleep(crate::POLL).await,
            }
        }
    }

    /// Waits until etcd on the bootstrap node is `Preparing` (waiting for
    /// its bootstrap), for at most `[talos] wait`.
    ///
    /// Fails when etcd runs already, or did not get there in time.
    pub async fn wait_for_etcd(&self) -> Result<String, NodeError> {
        let node = self.spec.bootstrap_node();
        let client = self.connect(&node.endpoint, true).await?;
        etcd_preparing(&client, &node.name, self.spec.talos.wait).await
    }

    /// The machine config fetched for `node`: the one its spec names, else
    /// the first of its role.
    ///
    /// Fails when none of its role was fetched.
    pub fn machine_config(&self, node: &NodeSpec) -> Result<PathBuf, NodeError> {
        let root = self.talos_config_dir();
        if let Some(path) = &node.machine_config {
            return Ok(root.join(path.trim_start_matches('/')));
        }
        let want = match node.role {
            Role::Controlplane => TalosFile::ControlPlaneConfig,
            Role::Worker => TalosFile::WorkerConfig,
        };
        find_file(&root, want).ok_or_else(|| NodeError::NoMachineConfig {
            role: node.role,
            node: node.name.clone(),
        })
    }
}

/// Asks for etcd's state until it is `Preparing`.
async fn etcd_preparing(
    client: &TalosClient,
    node: &str,
    wait: Duration,
) -> Result<String, NodeError> {
    let deadline = Instant::now() + wait;
    loop {
        let state = client.service_state("etcd").await;
        match state {
            Ok(Some(s)) if s.state == "Preparing" => return Ok("etcd is Preparing".into()),
            Ok(Some(s)) if s.state == "Running" => {
                return Err(NodeError::EtcdRunning {
                    node: node.to_owned(),
                });
            }
            _ if Instant::now() > deadline => {
                return Err(NodeError::EtcdNotPreparing {
                    node: node.to_owned(),
                    wait: humantime::format_duration(wait).to_string(),
                    last: format!("{state:?}"),
                });
            }
            _ => tokio::time::sleep(crate::POLL).await,
        }
    }
}

/// A closure turning a client error at `address` into [`NodeError::Api`].
pub(crate) fn api(address: &str) -> impl FnOnce(TalosError) -> NodeError + '_ {
    move |source| NodeError::Api {
        address: address.to_owned(),
        source,
    }
}

/// The first file under `root` of kind `want` (sorted by path).
pub fn find_file(root: &Path, want: TalosFile) -> Option<PathBuf> {
    let mut stack = vec![root.to_owned()];
    let mut found = Vec::new();
    while let Some(dir) = stack.pop() {
        for item in std::fs::read_dir(&dir).ok()?.flatten() {
            let path = item.path();
            match item.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() && inspect_file(&path) == want => found.push(path),
                _ => {}
            }
        }
    }
    found.sort();
    found.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::spec;

    fn machine_config(role: &str) -> String {
        format!("version: v1alpha1\nmachine:\n  type: {role}\ncluster:\n  clusterName: home\n")
    }

    #[test]
    fn each_node_gets_the_machine_config_of_its_role_or_the_one_it_names() {
        let work = tempfile::tempdir().expect("work");
        let spec = spec("");
        let nodes = Nodes {
            spec: &spec,
            work: work.path(),
        };
        let root = nodes.talos_config_dir();
        std::fs::create_dir_all(root.join("b/nested")).expect("dirs");
        std::fs::write(
            root.join("b/nested/cp.yaml"),
            machine_config("controlplane"),
        )
        .expect("cp");
        std::fs::write(root.join("a-patch.yaml"), "machine:\n  network: {}\n").expect("patch");

        let (worker, cp) = (&spec.nodes[0], &spec.nodes[1]);
        assert_eq!(
            nodes.machine_config(cp).expect("found"),
            root.join("b/nested/cp.yaml")
        );
        let missing = nodes.machine_config(worker).expect_err("no worker config");
        assert!(
            matches!(&missing, NodeError::NoMachineConfig { role: Role::Worker, node } if node == "w1"),
            "{missing:?}"
        );
        assert!(
            missing.to_string().contains("machine_config = "),
            "{missing}"
        );

        // The first by path when there are several.
        std::fs::write(root.join("a-worker.yaml"), machine_config("worker")).expect("worker");
        std::fs::write(root.join("z-worker.yaml"), machine_config("worker")).expect("worker");
        assert_eq!(
            nodes.machine_config(worker).expect("found"),
            root.join("a-worker.yaml")
        );
        // A named one wins, below the fetched folder even when absolute.
        let mut named = worker.clone();
        named.machine_config = Some("/z-worker.yaml".into());
        assert_eq!(
            nodes.machine_config(&named).expect("named"),
            root.join("z-worker.yaml")
        );
        assert_eq!(find_file(&root, TalosFile::Talosconfig), None);
    }

    #[test]
    fn apids_port_is_added_unless_given() {
        assert_eq!(with_port("10.0.0.1"), "10.0.0.1:50000");
        assert_eq!(with_port("10.0.0.1:50001"), "10.0.0.1:50001");
    }

    #[tokio::test]
    async fn mutual_tls_needs_the_talosconfig_of_the_snapshot() {
        let work = tempfile::tempdir().expect("work");
        let spec = spec("");
        let nodes = Nodes {
            spec: &spec,
            work: work.path(),
        };
        let Err(error) = nodes.connect("127.0.0.1", true).await else {
            panic!("connected without a talosconfig");
        };
        assert!(matches!(error, NodeError::NoTalosconfig), "{error:?}");
    }
}
