//! The cluster spec of `lifeboat rebuild` (TOML): where the VMs go, the
//! Talos ISO, the backups to rebuild from and each node. Defaults follow
//! the reference cluster: a control plane of 2 vCPU/4 GiB and a worker of
//! 4 vCPU/8 GiB on an Unraid server, disks under `/mnt/user/domains`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

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
    pub fn iso_location(&self) -> anyhow::Result<IsoLocation> {
        let (scheme, rest) = self
            .url
            .split_once("://")
            .filter(|(scheme, _)| matches!(*scheme, "http" | "https"))
            .with_context(|| {
                format!(
                    "image_factory.url {:?}: give http(s)://HOST[:PORT]",
                    self.url
                )
            })?;
        let authority = rest.trim_end_matches('/');
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse()
                    .with_context(|| format!("image_factory.url: port {port:?}"))?,
            ),
            None => (authority, if scheme == "https" { 443 } else { 80 }),
        };
        if host.is_empty() || host.contains('/') {
            bail!(
                "image_factory.url {:?}: give http(s)://HOST[:PORT] without a path",
                self.url
            );
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
    /// The node's Talos API endpoint once configured (`IP` or `IP:PORT`).
    pub endpoint: String,
    /// The machine config inside the talos-config snapshot (default: the
    /// first control-plane or worker config found there, by content).
    #[serde(default)]
    pub machine_config: Option<String>,
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
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the cluster spec {}", path.display()))?;
        let spec: Self = toml::from_str(&text).with_context(|| {
            format!(
                "the cluster spec {} is not valid (see deploy/rebuild/cluster.example.toml)",
                path.display()
            )
        })?;
        spec.check()
            .with_context(|| format!("cluster spec {}", path.display()))?;
        Ok(spec)
    }

    fn check(&self) -> anyhow::Result<()> {
        if !self.nodes.iter().any(|n| n.role == Role::Controlplane) {
            bail!("no node has role = \"controlplane\"; etcd is recovered onto the first one");
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if self.nodes[..i].iter().any(|n| n.name == node.name) {
                bail!(
                    "two nodes are named {:?}; VM names must be unique",
                    node.name
                );
            }
            if node.name.is_empty()
                || !node
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                bail!(
                    "node name {:?}: use letters, digits, '-' and '_'",
                    node.name
                );
            }
        }
        match (&self.libvirt.iso, &self.libvirt.image_factory) {
            (Some(_), None) => {}
            (None, Some(factory)) => {
                if factory.schematic.len() != 64
                    || !factory.schematic.chars().all(|c| c.is_ascii_hexdigit())
                {
                    bail!(
                        "libvirt.image_factory.schematic {:?}: give the schematic id, 64 hex digits",
                        factory.schematic
                    );
                }
                if !factory.version.starts_with('v') || factory.version.contains('/') {
                    bail!(
                        "libvirt.image_factory.version {:?}: give a Talos version such as \"v1.9.5\"",
                        factory.version
                    );
                }
                factory.iso_location()?;
            }
            _ => bail!(
                "give the Talos ISO as either libvirt.iso (a file on the hypervisor) or [libvirt.image_factory] (schematic and version), not both or neither"
            ),
        }
        if !self.data.volumes.is_empty() && self.data.image.is_none() {
            bail!(
                "data.volumes needs data.image: the lifeboat image the restore Jobs run (the one your cluster deploys)"
            );
        }
        if let Some(pin) = &self.talos.maintenance_pin {
            self.pin()
                .with_context(|| format!("talos.maintenance_pin {pin:?}"))?;
        }
        Ok(())
    }

    /// The maintenance-mode certificate pin, decoded.
    ///
    /// Fails when it is not 64 hex digits.
    pub fn pin(&self) -> anyhow::Result<Option<[u8; 32]>> {
        let Some(text) = &self.talos.maintenance_pin else {
            return Ok(None);
        };
        let bytes = hex::decode(text.trim_start_matches("sha256:"))
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .context("give the SHA-256 of the certificate as 64 hex digits")?;
        Ok(Some(bytes))
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
        let spec = |libvirt: &str| -> anyhow::Result<ClusterSpec> {
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
    fn the_example_spec_in_deploy_loads() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rebuild/cluster.example.toml");
        let spec = ClusterSpec::load(&path).expect("the example spec");
        assert_eq!(spec.nodes.len(), 2);
        assert_eq!(spec.data.volumes, ["latest:volumes"]);
        assert_eq!(spec.data.postgres.len(), 1);
    }
}
