//! `kind = "talos-etcd"` end to end: the real `lifeboatd` backs up etcd
//! through the Talos API, the real `lifeboat` restores the snapshot, and the
//! restored file is compared byte for byte with what was served.
//!
//! No Talos node can run here. The Talos API is therefore the
//! protocol-level stand-in of `lifeboat_tests::talos`: a real gRPC server
//! with Talos' `machine.MachineService` names and field numbers, mutual TLS
//! with an Ed25519 CA as Talos has, and Talos' role checks. The snapshot it
//! serves is a real one, made by Debian's etcd with `etcdctl snapshot save`.
//! What this proves is lifeboat's side of the wire, not a real apid.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use lifeboat_tests::cli::{self, Installation, Outcome};
use lifeboat_tests::process::free_port;
use lifeboat_tests::talos::{Role, SnapshotFault, TalosApiServer, real_etcd_snapshot};
use serde_json::Value;
use tempfile::TempDir;

/// Keys put into etcd before the snapshot (about 1 MiB of values).
const KEYS: usize = 2000;

/// A stand-in node serving a real etcd snapshot, and a lifeboat
/// installation with a talosconfig for it.
struct Setup {
    _dir: TempDir,
    snapshot: PathBuf,
    server: TalosApiServer,
    install: Arc<Installation>,
}

impl Setup {
    async fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let snapshot = real_etcd_snapshot(dir.path(), KEYS).await?;
        let server = TalosApiServer::start(&snapshot).await?;
        let install = Arc::new(Installation::local()?);
        Ok(Self {
            _dir: dir,
            snapshot,
            server,
            install,
        })
    }

    /// Writes `talosconfig` into the installation and a config with the
    /// jobs `(name, source)`.
    fn configure(&self, talosconfig: &str, jobs: &[(&str, &str)]) -> Result<PathBuf> {
        let path = self.install.path("talosconfig");
        std::fs::write(&path, talosconfig)?;
        self.install.write_config(&[], jobs)?;
        Ok(path)
    }

    /// Runs `lifeboatd run --config … JOB --json` with `envs`, off the
    /// async runtime (the stand-in serves on it meanwhile).
    async fn run(&self, job: &str, envs: &[(&str, &Path)]) -> Result<Outcome> {
        let mut command = self.install.command("lifeboatd")?;
        command
            .args(["run", "--config"])
            .arg(self.install.config())
            .args([job, "--json"]);
        for (key, value) in envs {
            command.env(key, value);
        }
        tokio::task::spawn_blocking(move || cli::run(&mut command)).await?
    }

    /// The snapshots in the repository, as `lifeboat snapshots --json`.
    async fn snapshots(&self) -> Result<Vec<Value>> {
        let install = self.install.clone();
        tokio::task::spawn_blocking(move || {
            let key = install.service_key();
            let outcome = install
                .lifeboat_repo(
                    "snapshots",
                    &["-i".as_ref(), key.as_os_str(), "--json".as_ref()],
                )?
                .ok()?;
            let list = outcome.json()?;
            list.as_array()
                .cloned()
                .with_context(|| format!("snapshots --json printed {list}"))
        })
        .await?
    }

    /// Runs the job, which must fail with a message containing every one
    /// of `expected`, and checks that no snapshot was written.
    async fn expect_failure(&self, job: &str, expected: &[&str]) -> Result<String> {
        let outcome = self.run(job, &[]).await?.failed()?;
        eprintln!(
            "REVIEW {job}: {}",
            outcome.stderr.lines().last().unwrap_or_default()
        );
        for text in expected {
            ensure!(
                outcome.stderr.contains(text),
                "the error does not say {text:?}:\n{}",
                outcome.output()
            );
        }
        let snapshots = self.snapshots().await?;
        ensure!(
            snapshots.is_empty(),
            "a failed backup left snapshots: {snapshots:#?}"
        );
        Ok(outcome.stderr)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backs_up_etcd_through_the_talos_api_and_restores_it_byte_for_byte() -> Result<()> {
    let setup = Setup::new().await?;
    let served = std::fs::read(&setup.snapshot)?;
    // The in-cluster role, os:etcd:backup, and a first node the endpoint
    // cannot reach: the second node answers.
    let talosconfig = setup.configure(
        &setup
            .server
            .talosconfig(Role::EtcdBackup, &["127.0.0.9", "127.0.0.1"])?,
        &[
            ("etcd", "{ kind = \"talos-etcd\" }"),
            (
                "etcd-admin",
                "{ kind = \"talos-etcd\", talosconfig = \"admin-talosconfig\", \
                 context = \"lifeboat-test\", nodes = [\"127.0.0.1\"] }",
            ),
        ],
    )?;
    std::fs::write(
        setup.install.path("admin-talosconfig"),
        setup.server.talosconfig(Role::Admin, &[])?,
    )?;

    // Found through $TALOSCONFIG, the first place of talosctl's search order.
    let report = setup
        .run("etcd", &[("TALOSCONFIG", talosconfig.as_path())])
        .await?
        .ok()?
        .json()?;
    ensure!(
        cli::summary(&report, "bytes_total")? == served.len() as u64,
        "the backup read a different size than served: {report:#}"
    );

    // Restore with the restore key and compare with the served file.
    let target = setup.install.path("restored");
    let install = setup.install.clone();
    let restore_target = target.clone();
    tokio::task::spawn_blocking(move || {
        install
            .restore(
                &install.restore_key(),
                "latest:etcd:/etcd.db",
                &restore_target,
            )?
            .ok()
    })
    .await??;
    let restored_path = target.join("etcd.db");
    let restored = std::fs::read(&restored_path)
        .with_context(|| format!("reading {}", restored_path.display()))?;
    ensure!(
        restored == served,
        "the restored etcd.db ({} bytes) differs from the served snapshot ({} bytes)",
        restored.len(),
        served.len()
    );
    // etcd itself accepts the restored file.
    let status =
        tokio::task::spawn_blocking(move || lifeboat_tests::etcd::snapshot_status(&restored_path))
            .await??;
    ensure!(status.revision > 0, "etcdctl sees {status:?}");

    // What lifeboat recorded.
    let snapshots = setup.snapshots().await?;
    ensure!(
        snapshots.len() == 1,
        "expected one snapshot: {snapshots:#?}"
    );
    let metadata = &snapshots[0]["metadata"];
    let trailer = hex_string(&served[served.len() - 32..]);
    let expected = [
        ("node", Value::from("127.0.0.1")),
        ("endpoint", Value::from(setup.server.endpoint())),
        ("context", Value::from("lifeboat-test")),
        ("sha256", Value::from(trailer)),
        ("snapshot_bytes", Value::from(served.len())),
        ("db_size", Value::from(served.len() - 32)),
        ("member_id", Value::from("8e9e05c52164694d")),
        ("raft_index", Value::from(4242)),
        // os:etcd:backup may not call Version.
        ("talos_version", Value::Null),
    ];
    for (field, value) in expected {
        ensure!(
            metadata[field] == value,
            "metadata {field} is {}, expected {value}: {metadata:#}",
            metadata[field]
        );
    }
    ensure!(snapshots[0]["source_kind"] == "talos-etcd");

    // The calls, as apid saw them: the unreachable node first, then the
    // snapshot from the node that answered, with the backup role.
    let calls = setup.server.calls();
    let seen: Vec<(&str, Option<&str>)> =
        calls.iter().map(|c| (c.rpc, c.node.as_deref())).collect();
    ensure!(
        seen == [
            ("Version", Some("127.0.0.9")),
            ("Version", Some("127.0.0.1")),
            ("EtcdStatus", Some("127.0.0.1")),
            ("EtcdSnapshot", Some("127.0.0.1")),
        ],
        "unexpected calls {seen:?}"
    );
    ensure!(calls.iter().all(|c| c.role == Some(Role::EtcdBackup)));

    // The admin job: its own talosconfig (relative to the config file),
    // the version recorded, and the same snapshot deduplicated.
    let report = setup.run("etcd-admin", &[]).await?.ok()?.json()?;
    let added = cli::summary(&report, "bytes_added")?;
    ensure!(
        added < served.len() as u64 / 20,
        "the same snapshot again added {added} bytes: {report:#}"
    );
    let snapshots = setup.snapshots().await?;
    let admin = snapshots
        .iter()
        .find(|s| s["job"] == "etcd-admin")
        .with_context(|| format!("no etcd-admin snapshot: {snapshots:#?}"))?;
    ensure!(
        admin["metadata"]["talos_version"] == "v1.11.0",
        "{:#}",
        admin["metadata"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_another_ca_is_refused_and_nothing_is_stored() -> Result<()> {
    let setup = Setup::new().await?;
    setup.configure(
        &setup.server.foreign_talosconfig(&["127.0.0.1"]),
        &[(
            "etcd",
            "{ kind = \"talos-etcd\", talosconfig = \"talosconfig\" }",
        )],
    )?;
    setup
        .expect_failure(
            "etcd",
            &[
                &format!(
                    "the Talos API at {} rejected the client certificate",
                    setup.server.endpoint()
                ),
                "talosctl config new",
            ],
        )
        .await?;
    ensure!(
        !setup.server.calls().iter().any(|c| c.rpc == "EtcdSnapshot"),
        "a refused client reached EtcdSnapshot"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_stream_fails_the_job_and_stores_no_snapshot() -> Result<()> {
    let setup = Setup::new().await?;
    let size = std::fs::metadata(&setup.snapshot)?.len();
    // Whole pages only, as if the node had stopped early and cleanly.
    setup.server.set_fault(SnapshotFault::Truncate {
        keep: size / 2 / 4096 * 4096,
    });
    setup.configure(
        &setup.server.talosconfig(Role::EtcdBackup, &["127.0.0.1"])?,
        &[(
            "etcd",
            "{ kind = \"talos-etcd\", talosconfig = \"talosconfig\" }",
        )],
    )?;
    setup
        .expect_failure(
            "etcd",
            &[
                "EtcdSnapshot from node 127.0.0.1",
                "carries no SHA-256 trailer",
                "take the backup again",
            ],
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_trailer_fails_the_job_and_stores_no_snapshot() -> Result<()> {
    let setup = Setup::new().await?;
    setup.server.set_fault(SnapshotFault::CorruptTrailer);
    setup.configure(
        &setup.server.talosconfig(Role::EtcdBackup, &["127.0.0.1"])?,
        &[(
            "etcd",
            "{ kind = \"talos-etcd\", talosconfig = \"talosconfig\" }",
        )],
    )?;
    setup
        .expect_failure(
            "etcd",
            &[
                "EtcdSnapshot from node 127.0.0.1",
                "is corrupt",
                "SHA-256 trailer says",
            ],
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_broken_off_by_the_node_fails_the_job() -> Result<()> {
    let setup = Setup::new().await?;
    setup
        .server
        .set_fault(SnapshotFault::Abort { after: 64 * 1024 });
    setup.configure(
        &setup.server.talosconfig(Role::EtcdBackup, &["127.0.0.1"])?,
        &[(
            "etcd",
            "{ kind = \"talos-etcd\", talosconfig = \"talosconfig\" }",
        )],
    )?;
    setup
        .expect_failure(
            "etcd",
            &[
                "the EtcdSnapshot stream from node 127.0.0.1",
                "broke off after 65536 bytes",
                "error reading from server",
            ],
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_times_out() -> Result<()> {
    let setup = Setup::new().await?;
    setup
        .server
        .set_fault(SnapshotFault::Stall { after: 32 * 1024 });
    setup.configure(
        &setup.server.talosconfig(Role::EtcdBackup, &["127.0.0.1"])?,
        &[(
            "etcd",
            "{ kind = \"talos-etcd\", talosconfig = \"talosconfig\", timeout = \"2s\" }",
        )],
    )?;
    setup
        .expect_failure(
            "etcd",
            &[
                "broke off after 32768 bytes",
                "no data for 2s",
                "raise the source's `timeout`",
            ],
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_is_named() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // A stand-in only for its certificates: the talosconfig points at a
    // port where nothing listens.
    let server = TalosApiServer::start(&dir.path().join("unused")).await?;
    let install = Arc::new(Installation::local()?);
    let dead = format!("127.0.0.1:{}", free_port()?);
    let talosconfig = server
        .talosconfig(Role::EtcdBackup, &["127.0.0.1"])?
        .replace(&server.endpoint(), &dead);
    std::fs::write(install.path("talosconfig"), talosconfig)?;
    install.write_config(
        &[],
        &[(
            "etcd",
            "{ kind = \"talos-etcd\", talosconfig = \"talosconfig\" }",
        )],
    )?;
    let mut command = install.command("lifeboatd")?;
    command
        .args(["run", "--config"])
        .arg(install.config())
        .args(["etcd", "--json"]);
    let outcome = tokio::task::spawn_blocking(move || cli::run(&mut command))
        .await??
        .failed()?;
    let expected = format!("cannot reach the Talos API at {dead}");
    ensure!(
        outcome.stderr.contains(&expected) && outcome.stderr.contains("port 50000"),
        "the error does not say {expected:?}:\n{}",
        outcome.output()
    );
    Ok(())
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
