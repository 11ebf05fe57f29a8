//! The cluster the tests back up: `tests/fixtures/kubernetes/cluster.yaml`
//! plus a ~1 MB ConfigMap of Grafana dashboards, and the volume data
//! behind its local PersistentVolumes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cli::Installation;

/// The node the volume tests run as.
pub const NODE: &str = "talos-worker-1";

/// The fixture cluster's objects and volume folders.
#[derive(Debug)]
pub struct Cluster {
    /// Every object, to load into the test server.
    pub objects: Vec<Value>,
    /// The host path of the `databases/data-postgres-0` volume.
    pub postgres_volume: PathBuf,
    /// The host path of the `monitoring/grafana` volume.
    pub grafana_volume: PathBuf,
    /// The file pod-annotation hooks append to.
    pub hook_log: PathBuf,
}

/// The cluster (volume data under `volumes`) served by a test API server,
/// and an installation with `jobs` (name, source) whose folder holds the
/// server's `kubeconfig`.
///
/// Fails when the fixture, the server or the installation cannot be made.
pub async fn installation(
    volumes: &Path,
    jobs: &[(&str, &str)],
) -> Result<(Cluster, super::KubeApiServer, Installation)> {
    let cluster = cluster(volumes)?;
    let server = super::KubeApiServer::start(cluster.objects.clone()).await?;
    let installation = Installation::local()?;
    server.write_kubeconfig(&installation.path("kubeconfig"))?;
    installation.write_config(&[], jobs)?;
    Ok((cluster, server, installation))
}

/// [`installation`] with one job `volumes` backing up the claims of node
/// `talos-worker-1`.
///
/// Fails as [`installation`].
pub async fn volumes_installation(
    volumes: &Path,
) -> Result<(Cluster, super::KubeApiServer, Installation)> {
    let source = r#"{ kind = "volumes", kubeconfig = "kubeconfig", node = "talos-worker-1" }"#;
    installation(volumes, &[("volumes", source)]).await
}

/// Builds the cluster with its volume data under `volumes`.
pub fn cluster(volumes: &Path) -> Result<Cluster> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/kubernetes/cluster.yaml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .replace("${VOLUMES}", &volumes.display().to_string());
    let mut objects = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(&text) {
        let object = Value::deserialize(document).context("parsing the cluster fixture")?;
        objects.push(object);
    }
    objects.push(dashboards());
    let postgres_volume = volumes.join("openebs/local/pvc-4f1c2d3e");
    let grafana_volume = volumes.join("local-path/pvc-9a8b7c6d_monitoring_grafana");
    write_files(
        &postgres_volume,
        &[
            ("PG_VERSION", b"16\n".to_vec()),
            ("base/16384/2619", pseudo_random(7, 96 * 1024)),
            ("global/pg_control", pseudo_random(8, 8192)),
            (
                "pg_wal/000000010000000000000001",
                pseudo_random(9, 256 * 1024),
            ),
        ],
    )?;
    write_files(
        &grafana_volume,
        &[
            ("grafana.db", pseudo_random(10, 200 * 1024)),
            ("plugins/README", b"no plugins\n".to_vec()),
        ],
    )?;
    // The volume of another node exists here too: it must still be skipped.
    write_files(
        &volumes.join("openebs/local/pvc-11aa22bb"),
        &[("tools.bin", b"not ours".to_vec())],
    )?;
    Ok(Cluster {
        objects,
        postgres_volume,
        grafana_volume,
        hook_log: volumes.join("hooks.log"),
    })
}

/// A ConfigMap of about 1 MB, as dashboard provisioning makes them.
fn dashboards() -> Value {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut data = serde_json::Map::new();
    for i in 0..40 {
        let panels: Vec<Value> = (0..60)
            .map(|p| {
                json!({"id": p, "type": "timeseries", "title": format!("panel {p}"),
                    "targets": [{"expr": format!("rate(metric_{}_total[5m])", rng.gen_range(0..10_000))}]})
            })
            .collect();
        let dashboard =
            json!({"title": format!("dashboard {i}"), "uid": format!("d{i:04}"), "panels": panels});
        data.insert(
            format!("dashboard-{i:02}.json"),
            Value::String(dashboard.to_string()),
        );
    }
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "grafana-dashboards", "namespace": "monitoring", "labels": {"grafana_dashboard": "1"}},
        "data": data,
    })
}

/// Deterministic bytes that do not compress.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut bytes = vec![0u8; len];
    rng.fill(bytes.as_mut_slice());
    bytes
}

fn write_files(root: &Path, files: &[(&str, Vec<u8>)]) -> Result<()> {
    for (name, content) in files {
        let path = root.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
