//! The cluster spec of `lifeboat rebuild` (TOML): where the VMs go, the
//! Talos ISO, the backups to rebuild from and each node. Defaults follow
//! the reference cluster: a control plane of 2 vCPU/4 GiB and a worker of
//! 4 vCPU/8 GiB on an Unraid server, disks under `/mnt/user/domains`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What is wrong with a cluster spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file cannot be read.
    #[error("cannot read the cluster spec {}; check --spec", path.display())]
    Read {
        /// The spec file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML of the spec's shape.
    #[error(
        "the cluster spec {} is not valid (see deploy/rebuild/cluster.example.toml)",
        path.display()
    )]
    Parse {
        /// The spec file.
        path: PathBuf,
        /// Where and why.
        #[source]
        source: toml::de::Error,
    },
    /// The spec parses but a value is wrong.
    #[error("cluster spec {}", path.display())]
    Invalid {
        /// The spec file.
        path: PathBuf,
        /// The value and its fix.
        #[source]
        source: Box<SpecError>,
    },
    /// No node is a control-plane node.
    #[error("no node has role = \"controlplane\"; etcd is recovered onto the first one")]
    NoControlPlane,
    /// Two nodes have the same name.
    #[error("two nodes are named {0:?}; VM names must be unique")]
    DuplicateName(String),
    /// A node's name is empty or not a VM name.
    #[error("node name {0:?}: use letters, digits, '-' and '_'")]
    BadName(String),
    /// Neither or both of `libvirt.iso` and `[libvirt.image_factory]`.
    #[error(
        "give the Talos ISO as either libvirt.iso (a file on the hypervisor) or [libvirt.image_factory] (schematic and version), not both or neither"
    )]
    IsoChoice,
    /// The Image Factory schematic is not a schematic id.
    #[error("libvirt.image_factory.schematic {0:?}: give the schematic id, 64 hex digits")]
    Schematic(String),
    /// The Image Factory version is not a Talos version.
    #[error("libvirt.image_factory.version {0:?}: give a Talos version such as \"v1.9.5\"")]
    Version(String),
    /// The Image Factory URL is not `http(s)://HOST[:PORT]`.
    #[error("image_factory.url {0:?}: give http(s)://HOST[:PORT] without a path")]
    FactoryUrl(String),
    /// The Image Factory URL's port is not a port.
    #[error("image_factory.url {url:?}: port {port:?} is not a port number")]
    FactoryPort {
        /// The URL.
        url: String,
        /// The port as written.
        port: String,
        /// Why.
        #[source]
        source: std::num::ParseIntError,
    },
    /// Volumes to restore but no image for the Jobs.
    #[error(
        "data.volumes needs data.image: the lifeboat image the restore Jobs run (the one your cluster deploys)"
    )]
    VolumesNeedImage,
    /// The maintenance pin is not a SHA-256.
    #[error("talos.maintenance_pin {0:?}: give the SHA-256 of the certificate as 64 hex digits")]
    Pin(String),
}

/// The whole spec.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// The hypervisor.
    pub libvirt: LibvirtSpec,
    /// The backups rebuilt from.
    #[serde(default)]
    pub backups: BackupsSpec,
    /// Talos settings shared by the nodes.
    #[serde(default)]
    pub talos: TalosSpec,
    /// How the rebuild reaches the Kubernetes API.
    #[serde(default)]
    pub kubernetes: KubernetesSpec,
    /// The data put back once the cluster answers.
    #[serde(default)]
    pub data: DataSpec,
    /// The nodes, control plane first.
    #[serde(rename = "node")]
    pub nodes: Vec<NodeSpec>,
}

/// Where and how the VMs are made.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LibvirtSpec {
    /// The libvirt URI: `qemu+ssh://root@unraid/system` for Unraid,
    /// `qemu:///system` locally.
    pub uri: String,
    /// The folder holding a folder per VM with its disk `vdisk1.img`.
    #[serde(default = "default_disk_dir")]
    pub disk_dir: PathBuf,
    /// The Talos ISO on the hypervisor (`metal-amd64.iso`, or an Image
    /// Factory ISO downloaded there).
    #[serde(default)]
    pub iso: Option<PathBuf>,
    /// Or: the installer ISO of an Image Factory schematic, which the VM
    /// reads over HTTPS (a network CD-ROM).
    #[serde(default)]
    pub image_factory: Option<ImageFactory>,
}

/// An Image Factory ISO: `URL/image/SCHEMATIC/VERSION/metal-amd64.iso`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImageFactory {
    /// The schematic id (64 hex digits, from `POST /schematics`).
    pub schematic: String,
    /// The Talos version, e.g. `v1.9.5`.
    pub version: String,
    /// The factory (default `https://factory.talos.dev`).
    #[serde(default = "default_factory")]
    pub url: String,
}

impl ImageFactory {
    /// The scheme, host, port and path of the ISO.
    ///
    /// Fails when the factory URL is not `http(s)://HOST[:PORT]`.
    pub fn iso_location(&self) -> Result<IsoLocation, SpecError> {
        let (scheme, rest) = self
            .url
            .split_once("://")
            .filter(|(scheme, _)| matches!(*scheme, "http" | "https"))
            .ok_or_else(|| SpecError::FactoryUrl(self.url.clone()))?;
        let authority = rest.trim_end_matches('/');
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse().map_err(|source| SpecError::FactoryPort {
                    url: self.url.clone(),
                    port: port.to_owned(),
                    source,
                })?,
            ),
            None => (authority, if scheme == "https" { 443 } else { 80 }),
        };
        if host.is_empty() || host.contains('/') {
            return Err(SpecError::FactoryUrl(self.url.clone()));
        }
        Ok(IsoLocation {
            scheme: scheme.to_owned(),
            host: host.to_owned(),
            port,
            path: format!("/image/{}/{}/metal-amd64.iso", self.schematic, self.version),
        })
    }
}

/// Where a network CD-ROM reads the ISO from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoLocation {
    /// `https` or `http`.
    pub scheme: String,
    /// The host name.
    pub host: String,
    /// The port.
    pub port: u16,
    /// The ISO's path.
    pub path: String,
}

/// The backups to rebuild from.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackupsSpec {
    /// Repository URL (else `--repo` / LIFEBOAT_REPOSITORY).
    #[serde(default)]
    pub repository: Option<String>,
    /// S3 endpoint of the repository, if not AWS.
    #[serde(default)]
    pub s3_endpoint: Option<String>,
    /// Address buckets by path (Garage, MinIO).
    #[serde(default)]
    pub s3_path_style: bool,
    /// The restore key (else `--identity` / LIFEBOAT_IDENTITY).
    #[serde(default)]
    pub identity: Option<PathBuf>,
    /// The snapshot of the `talos-config` job.
    #[serde(default = "default_talos_config")]
    pub talos_config: String,
    /// The snapshot of the `talos-etcd` (or `etcd`) job.
    #[serde(default = "default_etcd")]
    pub etcd: String,
}

impl Default for BackupsSpec {
    fn default() -> Self {
        Self {
            repository: None,
            s3_endpoint: None,
            s3_path_style: false,
            identity: None,
            talos_config: default_talos_config(),
            etcd: default_etcd(),
        }
    }
}

/// Talos settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TalosSpec {
    /// SHA-256 (hex) of the maintenance-mode server certificate, if pinned.
    #[serde(default)]
    pub maintenance_pin: Option<String>,
    /// The talosconfig context (default: the file's current one).
    #[serde(default)]
    pub context: Option<String>,
    /// How long to wait for a node or etcd, e.g. `"15m"`.
    #[serde(default = "default_wait", with = "lifeboat::field::duration")]
    pub wait: std::time::Duration,
}

impl Default for TalosSpec {
    fn default() -> Self {
        Self {
            maintenance_pin: None,
            context: None,
            wait: default_wait(),
        }
    }
}

/// Reaching the Kubernetes API after bootstrap.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSpec {
    /// An admin kubeconfig; default: the one the bootstrap node hands out
    /// (`Kubeconfig` of the Talos API), saved as `WORK/kubeconfig`.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Its context (default: the file's current one).
    #[serde(default)]
    pub context: Option<String>,
}

/// Volume data and databases restored after etcd.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// Snapshots of `volumes` jobs, each put back by a restore Job on the
    /// node its manifest names (e.g. `["latest:volumes"]`).
    #[serde(default)]
    pub volumes: Vec<String>,
    /// The lifeboat image the restore Jobs run (the one your cluster
    /// deploys, e.g. `ghcr.io/OWNER/lifeboat:0.1.0`); needed with `volumes`.
    #[serde(default)]
    pub image: Option<String>,
    /// The namespace of the restore Jobs and their Secret.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Restore over folders that already hold files (`--force`): pods that
    /// started before their data was back may have written to them.
    #[serde(default)]
    pub overwrite: bool,
    /// How long a restore Job may take, e.g. `"2h"`.
    #[serde(default = "default_job_wait", with = "lifeboat::field::duration")]
    pub wait: std::time::Duration,
    /// Databases restored from here with `pg_restore`.
    #[serde(default)]
    pub postgres: Vec<PostgresRestore>,
    /// Suspend the Flux and Argo CD managers of the stopped workloads
    /// while their volumes are restored (they would scale them back up),
    /// and resume them afterwards.
    #[serde(default = "default_true")]
    pub suspend_gitops: bool,
}

impl Default for DataSpec {
    fn default() -> Self {
        Self {
            volumes: Vec::new(),
            image: None,
            namespace: default_namespace(),
            overwrite: false,
            wait: default_job_wait(),
            postgres: Vec::new(),
            suspend_gitops: true,
        }
    }
}

/// One PostgreSQL snapshot restored into a server.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresRestore {
    /// The snapshot, e.g. `latest:postgres`.
    pub snapshot: String,
    /// The server: a libpq URL without password (PGPASSWORD or ~/.pgpass).
    pub url: String,
    /// Create each database (`pg_restore --create`); else restore into the
    /// existing ones.
    #[serde(default = "default_true")]
    pub create: bool,
    /// The folder of psql and pg_restore (default: PATH).
    #[serde(default)]
    pub pg_bin: Option<PathBuf>,
}

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs etcd and the Kubernetes control plane.
    Controlplane,
    /// Runs workloads.
    Worker,
}

/// One node.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// The VM's name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// vCPUs (default: 2 control plane, 4 worker).
    #[serde(default)]
    pub vcpus: Option<u32>,
    /// Memory in MiB (default: 4096 control plane, 8192 worker).
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Disk size in GiB (default: 32 control plane, 64 worker).
    #[serde(default)]
    pub disk_gib: Option<u64>,
    /// The NIC's MAC address (keep it: DHCP leases and Talos' addresses
    /// follow it).
    pub mac: String,
    /// The host bridge.
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// The address the node has in maintenance mode (first boot).
    pub maintenance_address: String,
    /// The node's Talos API endpoint once configured: `IP`, `IP:PORT` or a
    /// name (e.g. Tailscale MagicDNS; its certificate must hold the name,
    /// `machine.certSANs`).
    pub endpoint: String,
    /// The machine config inside the talos-config snapshot (default: the
    /// first control-plane or worker config found there, by content).
    #[serde(default)]
    pub machine_config: Option<String>,
    /// This node's patches to that config, applied in order: YAML
    /// strategic-merge documents or JSON (RFC 6902) patches, as talosctl
    /// and the Terraform Talos provider take them ([`crate::patches`]).
    #[serde(default)]
    pub patches: Vec<PathBuf>,
}

impl NodeSpec {
    /// vCPUs, defaulted by role.
    pub fn vcpus(&self) -> u32 {
        self.vcpus.unwrap_or(match self.role {
            Role::Controlplane => 2,
            Role::Worker => 4,
        })
    }

    /// Memory in MiB, defaulted by role.
    pub fn memory_mib(&self) -> u64 {
        self.memory_mib.unwrap_or(match self.role {
            Role::Controlplane => 4096,
            Role::Worker => 8192,
        })
    }

    /// Disk size in GiB, defaulted by role.
    pub fn disk_gib(&self) -> u64 {
        self.disk_gib.unwrap_or(match self.role {
            Role::Controlplane => 32,
            Role::Worker => 64,
        })
    }
}

fn default_disk_dir() -> PathBuf {
    PathBuf::from("/mnt/user/domains")
}
fn default_bridge() -> String {
    "br0".into()
}
fn default_talos_config() -> String {
    "latest:talos-config".into()
}
fn default_etcd() -> String {
    "latest:etcd".into()
}
fn default_factory() -> String {
    "https://factory.talos.dev".into()
}
fn default_namespace() -> String {
    "lifeboat".into()
}
fn default_job_wait() -> std::time::Duration {
    std::time::Duration::from_secs(2 * 60 * 60)
}
fn default_true() -> bool {
    true
}
fn default_wait() -> std::time::Duration {
    std::time::Duration::from_secs(15 * 60)
}

impl ClusterSpec {
    /// Reads and checks the spec at `path`.
    ///
    /// Fails when the file cannot be read, is not valid TOML of this shape,
    /// has no control-plane node, or repeats a name.
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.to_owned(),
            source,
        })?;
        let spec: Self = toml::from_str(&text).map_err(|source| SpecError::Parse {
            path: path.to_owned(),
            source,
        })?;
        spec.check().map_err(|e| SpecError::Invalid {
            path: path.to_owned(),
            source: Box::new(e),
        })?;
        Ok(spec)
    }

    /// Checks what TOML cannot: a control-plane node, unique VM names,
    /// one Talos ISO, an image for the restore Jobs, the pin.
    ///
    /// Fails naming the first wrong value and its fix.
    pub fn check(&self) -> Result<(), SpecError> {
        if !self.nodes.iter().any(|n| n.role == Role::Controlplane) {
            return Err(SpecError::NoControlPlane);
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if self.nodes[..i].iter().any(|n| n.name == node.name) {
                return Err(SpecError::DuplicateName(node.name.clone()));
            }
            if node.name.is_empty()
                || !node
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(SpecError::BadName(node.name.clone()));
            }
        }
        match (&self.libvirt.iso, &self.libvirt.image_factory) {
            (Some(_), None) => {}
            (None, Some(factory)) => {
                if factory.schematic.len() != 64
                    || !factory.schematic.chars().all(|c| c.is_ascii_hexdigit())
                {
                    return Err(SpecError::Schematic(factory.schematic.clone()));
                }
                if !factory.version.starts_with('v') || factory.version.contains('/') {
                    return Err(SpecError::Version(factory.version.clone()));
                }
                factory.iso_location()?;
            }
            _ => return Err(SpecError::IsoChoice),
        }
        if !self.data.volumes.is_empty() && self.data.image.is_none() {
            return Err(SpecError::VolumesNeedImage);
        }
        self.pin()?;
        Ok(())
    }

    /// The maintenance-mode certificate pin, decoded.
    ///
    /// Fails when it is not 64 hex digits.
    pub fn pin(&self) -> Result<Option<[u8; 32]>, SpecError> {
        let Some(text) = &self.talos.maintenance_pin else {
            return Ok(None);
        };
        let bytes = hex::decode(text.trim_start_matches("sha256:"))
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| SpecError::Pin(text.clone()))?;
        Ok(Some(bytes))
    }

    /// What names the cluster in a state file: the hypervisor and each
    /// node's name, role and MAC. A state file of another identity is not
    /// resumed; the rest of the spec may change between runs (a fix of
    /// the failed step's cause often is a change of the spec).
    pub fn identity(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}/{:?}/{}", n.name, n.role, n.mac.to_ascii_lowercase()))
            .collect();
        format!("{} {}", self.libvirt.uri, nodes.join(" "))
    }

    /// The first control-plane node (etcd is recovered onto it).
    pub fn bootstrap_node(&self) -> &NodeSpec {
        self.nodes
            .iter()
            .find(|n| n.role == Role::Controlplane)
            .unwrap_or(&self.nodes[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_reference_cluster() {
        let spec: ClusterSpec = toml::from_str(
            r#"
            [libvirt]
            uri = "test:///default"
            iso = "/mnt/user/isos/metal-amd64.iso"
            [[node]]
            name = "cp1"
            role = "controlplane"
            mac = "52:54:00:00:00:01"
            maintenance_address = "10.0.0.50"
            endpoint = "10.0.0.10"
            [[node]]
            name = "w1"
            role = "worker"
            mac = "52:54:00:00:00:02"
            maintenance_address = "10.0.0.51"
            endpoint = "10.0.0.11"
            "#,
        )
        .expect("spec");
        spec.check().expect("valid");
        assert_eq!(
            (spec.nodes[0].vcpus(), spec.nodes[0].memory_mib()),
            (2, 4096)
        );
        assert_eq!(
            (spec.nodes[1].vcpus(), spec.nodes[1].memory_mib()),
            (4, 8192)
        );
        assert_eq!(spec.libvirt.disk_dir, PathBuf::from("/mnt/user/domains"));
        assert_eq!(spec.nodes[0].bridge, "br0");
        assert_eq!(spec.backups.etcd, "latest:etcd");
    }

    #[test]
    fn the_iso_is_a_file_or_an_image_factory_schematic() {
        let spec = |libvirt: &str| -> Result<ClusterSpec, Box<dyn std::error::Error>> {
            let spec: ClusterSpec = toml::from_str(&format!(
                "[libvirt]\nuri = \"test:///default\"\n{libvirt}\n\
                 [[node]]\nname = \"cp1\"\nrole = \"controlplane\"\nmac = \"52:54:00:00:00:01\"\n\
                 maintenance_address = \"10.0.0.50\"\nendpoint = \"10.0.0.10\"\n"
            ))?;
            spec.check()?;
            Ok(spec)
        };
        let schematic = "ab".repeat(32);
        let factory = spec(&format!(
            "[libvirt.image_factory]\nschematic = \"{schematic}\"\nversion = \"v1.9.5\"\nurl = \"http://127.0.0.1:8080\""
        ))
        .expect("a factory");
        let at = factory
            .libvirt
            .image_factory
            .as_ref()
            .map(ImageFactory::iso_location)
            .transpose()
            .expect("location");
        assert_eq!(
            at,
            Some(IsoLocation {
                scheme: "http".into(),
                host: "127.0.0.1".into(),
                port: 8080,
                path: format!("/image/{schematic}/v1.9.5/metal-amd64.iso"),
            })
        );
        for (libvirt, says) in [
            ("", "either libvirt.iso"),
            (
                &format!(
                    "iso = \"/a.iso\"\n[libvirt.image_factory]\nschematic = \"{schematic}\"\nversion = \"v1\""
                ),
                "not both",
            ),
            (
                "[libvirt.image_factory]\nschematic = \"tailscale\"\nversion = \"v1.9.5\"",
                "64 hex digits",
            ),
            (
                &format!("[libvirt.image_factory]\nschematic = \"{schematic}\"\nversion = \"1.9\""),
                "Talos version",
            ),
        ] {
            let error = spec(libvirt)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.contains(says), "{libvirt}: {error}");
        }
    }

    #[test]
    fn wrong_values_are_refused_naming_the_value_and_the_fix() {
        let mut spec = crate::testing::spec("");
        spec.nodes[0].name = "cp1".into();
        assert!(matches!(spec.check(), Err(SpecError::DuplicateName(name)) if name == "cp1"));

        let mut spec = crate::testing::spec("");
        spec.nodes[0].name = "w 1".into();
        let error = spec.check().expect_err("a space");
        assert!(error.to_string().contains("letters, digits"), "{error}");

        let mut spec = crate::testing::spec("");
        spec.nodes.retain(|n| n.role == Role::Worker);
        assert!(matches!(spec.check(), Err(SpecError::NoControlPlane)));

        let mut spec = crate::testing::spec("");
        spec.data.volumes = vec!["latest:volumes".into()];
        let error = spec.check().expect_err("no image");
        assert!(error.to_string().contains("data.image"), "{error}");
        spec.data.image = Some("ghcr.io/o/lifeboat:1".into());
        spec.check().expect("with an image");

        let mut spec = crate::testing::spec("");
        spec.talos.maintenance_pin = Some("sha256:abcd".into());
        assert!(matches!(spec.check(), Err(SpecError::Pin(_))));
        spec.talos.maintenance_pin = Some(format!("sha256:{}", "0f".repeat(32)));
        assert_eq!(spec.pin().expect("a pin"), Some([0x0f; 32]));

        let factory = |url: &str| ImageFactory {
            schematic: "ab".repeat(32),
            version: "v1.9.5".into(),
            url: url.into(),
        };
        for url in ["ftp://factory", "https://factory/path", "https://"] {
            let error = factory(url).iso_location().expect_err(url);
            assert!(
                matches!(error, SpecError::FactoryUrl(_)),
                "{url}: {error:?}"
            );
        }
        let error = factory("https://factory:http")
            .iso_location()
            .expect_err("port");
        assert!(error.to_string().contains("\"http\""), "{error}");
        assert_eq!(
            factory("https://factory.example/")
                .iso_location()
                .map(|at| at.port)
                .ok(),
            Some(443)
        );
    }

    #[test]
    fn loading_names_the_file_and_what_is_wrong_in_it() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("cluster.toml");
        let error = ClusterSpec::load(&path).expect_err("no file");
        assert!(matches!(error, SpecError::Read { .. }), "{error:?}");
        assert!(error.to_string().contains("--spec"), "{error}");

        std::fs::write(
            &path,
            "[libvirt]\nuri = \"test:///default\"\nisos = \"x\"\n",
        )
        .expect("write");
        let error = ClusterSpec::load(&path).expect_err("unknown field");
        assert!(matches!(error, SpecError::Parse { .. }), "{error:?}");
        assert!(
            lifeboat::errors::describe(&error).contains("isos"),
            "the cause names the field: {}",
            lifeboat::errors::describe(&error)
        );

        std::fs::write(
            &path,
            "node = []\n[libvirt]\nuri = \"test:///default\"\niso = \"/a.iso\"\n",
        )
        .expect("write");
        let error = ClusterSpec::load(&path).expect_err("no nodes");
        let text = lifeboat::errors::describe(&error);
        assert!(
            text.starts_with(&format!("cluster spec {}", path.display()))
                && text.contains("controlplane"),
            "{text}"
        );
    }

    #[test]
    fn the_identity_is_the_hypervisor_and_each_nodes_name_role_and_mac() {
        let spec = crate::testing::spec("");
        assert_eq!(
            spec.identity(),
            "test:///default w1/Worker/52:54:00:00:00:02 cp1/Controlplane/52:54:00:00:00:01"
        );
        let mut fixed = spec.clone();
        fixed.talos.wait = std::time::Duration::from_secs(1);
        fixed.data.namespace = "other".into();
        assert_eq!(
            fixed.identity(),
            spec.identity(),
            "other settings may change"
        );
        fixed.nodes[0].mac = "52:54:00:00:00:03".into();
        assert_ne!(fixed.identity(), spec.identity());
    }

    #[test]
    fn the_example_spec_in_deploy_loads() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rebuild/cluster.example.toml");
        let spec = ClusterSpec::load(&path).expect("the example spec");
        assert_eq!(spec.nodes.len(), 2);
        assert_eq!(spec.data.volumes, ["latest:volumes"]);
        assert_eq!(spec.data.postgres.len(), 1);
    }
}
