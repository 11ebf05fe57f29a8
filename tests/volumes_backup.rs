//! Volume data and hooks, as a user backs them up with `lifeboatd run`:
//! the claims of the test Kubernetes API server (protocol-level; no real
//! API server can run here) whose hostPath/local volumes are folders on
//! "this node" are stored and restore byte for byte; every other claim is
//! reported with its reason; pod-annotation and configured hooks run in
//! order, around the data read, with their timeouts and failure rules.

use std::path::Path;

use anyhow::{Context, Result, ensure};

use lifeboat_tests::cli::{Installation, describe, report_item, summary, write_file};
use lifeboat_tests::kubernetes::fixtures;
use serde_json::Value;

/// The lines of `path` (none if it does not exist).
fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_on_this_node_round_trip_and_every_other_claim_is_explained() -> Result<()> {
    let volumes = tempfile::tempdir()?;
    let (cluster, _server, installation) = fixtures::volumes_installation(volumes.path()).await?;
    let first = tokio::task::block_in_place(|| installation.backup("volumes"))?;
    for (claim, outcome, reason) in [
        ("databases/data-postgres-0", "stored", "pvc-4f1c2d3e"),
        ("monitoring/grafana", "stored", "local-path"),
        ("apps/media", "skipped", "CSI volume (nfs.csi.k8s.io)"),
        (
            "apps/downloads",
            "skipped",
            "NFS volume (unraid.tailnet.ts.net:/mnt/user/downloads)",
        ),
        (
            "kube-system/etcd-tools",
            "skipped",
            "on node talos-cp-1 and this is talos-worker-1",
        ),
        ("apps/uploads", "skipped", "not bound"),
        ("apps/thumbnails", "skipped", "opted out"),
    ] {
        let found = report_item(&first, "volume", claim)?;
        ensure!(
            found["outcome"] == outcome
                && found["detail"].as_str().is_some_and(|d| d.contains(reason)),
            "{claim} should be {outcome} ({reason}): {found}"
        );
    }
    ensure!(
        lines(&cluster.hook_log)
            == [
                "pre databases/postgres-0 postgres",
                "post databases/postgres-0 postgres"
            ],
        "the pod's annotation hooks ran in its container, pre then post: {:?}",
        lines(&cluster.hook_log)
    );

    let restored = installation.path("restored");
    tokio::task::block_in_place(|| {
        installation.restore(&installation.restore_key(), "latest:volumes", &restored)
    })?
    .ok()?;
    for volume in [&cluster.postgres_volume, &cluster.grafana_volume] {
        let copy = restored.join(volume.strip_prefix("/")?);
        ensure!(
            describe(&copy)? == describe(volume)?,
            "{} restores exactly",
            volume.display()
        );
    }
    let other_node = restored.join(
        volumes
            .path()
            .join("openebs/local/pvc-11aa22bb")
            .strip_prefix("/")?,
    );
    ensure!(!other_node.exists(), "another node's volume is not read");

    let manifest: Value =
        serde_json::from_slice(&std::fs::read(restored.join("lifeboat-volumes.json"))?)?;
    let postgres = manifest["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["pvc"] == "data-postgres-0"))
        .context("no postgres volume in the manifest")?;
    ensure!(
        postgres["namespace"] == "databases"
            && postgres["pv"] == "pvc-4f1c2d3e"
            && postgres["storage_class"] == "openebs-hostpath"
            && postgres["capacity"] == "10Gi"
            && postgres["access_modes"] == serde_json::json!(["ReadWriteOnce"])
            && postgres["node"] == "talos-worker-1"
            && postgres["host_path"] == cluster.postgres_volume.display().to_string(),
        "{manifest:#}"
    );
    ensure!(
        manifest["skipped"].as_array().map(Vec::len) == Some(5),
        "{manifest:#}"
    );
    let metadata = installation.latest_metadata("volumes")?;
    ensure!(
        metadata == serde_json::json!({"volumes": 2, "skipped": 5, "failed": 0}),
        "{metadata}"
    );

    write_file(
        &cluster.postgres_volume.join("global/pg_control"),
        &fixtures::pseudo_random(99, 8192),
    )?;
    let second = tokio::task::block_in_place(|| installation.backup("volumes"))?;
    ensure!(
        summary(&first, "bytes_added")? > 500_000 && summary(&second, "bytes_added")? < 64 * 1024,
        "the second run stores only the changed file: {second:#}"
    );
    Ok(())
}

/// A config whose `appdata` job has `hooks` (TOML arrays of tables).
fn hooked_job(installation: &Installation, hooks: &str) -> Result<()> {
    installation.write_config(
        &[],
        &[("appdata", r#"{ kind = "directory", paths = ["appdata"] }"#)],
    )?;
    let mut text = std::fs::read_to_string(installation.config())?;
    text.push_str(hooks);
    std::fs::write(installation.config(), text)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_run_in_order_around_the_read_and_post_hooks_always_run() -> Result<()> {
    let volumes = tempfile::tempdir()?;
    let (_cluster, _server, installation) = fixtures::installation(volumes.path(), &[]).await?;
    write_file(&installation.path("appdata/app.db"), b"data")?;
    let log = installation.path("hooks.log");
    let marker = installation.path("appdata/frozen");
    hooked_job(
        &installation,
        &format!(
            r#"
[[job.hooks.pre]]
name = "freeze"
command = ["sh", "-c", "echo pre-local >> {log} && echo yes > {marker}"]
[[job.hooks.pre]]
name = "checkpoint"
command = ["sh", "-c", "echo pre-pod $POD_NAME $CONTAINER >> {log}"]
pod = {{ namespace = "databases", selector = "app=postgres", container = "postgres", kubeconfig = "kubeconfig" }}
timeout = "20s"
[[job.hooks.post]]
name = "thaw"
command = ["sh", "-c", "echo post-local >> {log} && rm {marker}"]
"#,
            log = log.display(),
            marker = marker.display()
        ),
    )?;
    let report = tokio::task::block_in_place(|| installation.backup("appdata"))?;
    ensure!(
        lines(&log) == ["pre-local", "pre-pod postgres-0 postgres", "post-local"],
        "{:?}",
        lines(&log)
    );
    ensure!(!marker.exists(), "the post hook ran after the read");
    for name in [
        "pre freeze",
        "pre checkpoint in databases/postgres-0",
        "post thaw",
    ] {
        ensure!(
            report_item(&report, "hook", name)?["outcome"] == "stored",
            "{report:#}"
        );
    }
    let restored = installation.path("restored");
    tokio::task::block_in_place(|| {
        installation.restore(&installation.restore_key(), "latest:appdata", &restored)
    })?
    .ok()?;
    let frozen = restored.join(marker.strip_prefix("/")?);
    ensure!(
        std::fs::read_to_string(&frozen)? == "yes\n",
        "the data was read between the pre and the post hook"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_slow_pre_hook_stops_the_run_unless_told_to_continue() -> Result<()> {
    let volumes = tempfile::tempdir()?;
    let (_cluster, server, installation) = fixtures::installation(volumes.path(), &[]).await?;
    write_file(&installation.path("appdata/app.db"), b"data")?;
    let log = installation.path("hooks.log");

    // A pod hook that outlives its timeout is stopped; the post hook runs.
    hooked_job(
        &installation,
        &format!(
            r#"
[[job.hooks.pre]]
name = "slow"
command = ["sleep", "30"]
pod = {{ namespace = "databases", pvc = "data-postgres-0", kubeconfig = "kubeconfig" }}
timeout = "500ms"
[[job.hooks.pre]]
name = "never"
command = ["sh", "-c", "echo never >> {log}"]
[[job.hooks.post]]
name = "thaw"
command = ["sh", "-c", "echo post >> {log}"]
"#,
            log = log.display()
        ),
    )?;
    let failed =
        tokio::task::block_in_place(|| installation.start_backup("appdata")?.wait())?.failed()?;
    let output = failed.output();
    ensure!(
        output.contains("the pre hook slow failed, so no data was read")
            && output.contains("timed out after 500ms"),
        "{output}"
    );
    ensure!(
        lines(&log) == ["post"],
        "pre hooks stop, post hooks run: {:?}",
        lines(&log)
    );
    let abandoned = (0..50).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        server
            .execs()
            .first()
            .is_some_and(|e| e.abandoned && e.command == ["sleep", "30"])
    });
    ensure!(abandoned, "the exec was cut off: {:?}", server.execs());
    let snapshots = installation.lifeboat_repo(
        "snapshots",
        &[
            "-i",
            installation.service_key().display().to_string().as_str(),
            "--json",
        ],
    )?;
    ensure!(
        snapshots
            .ok()?
            .json()?
            .as_array()
            .is_some_and(Vec::is_empty),
        "no snapshot after a failed pre hook"
    );

    // A failing local hook with on_error = "continue" is reported; the run goes on.
    std::fs::remove_file(&log)?;
    hooked_job(
        &installation,
        &format!(
            r#"
[[job.hooks.pre]]
name = "optional"
command = ["sh", "-c", "echo broken >&2; exit 4"]
on_error = "continue"
[[job.hooks.pre]]
name = "next"
command = ["sh", "-c", "echo next >> {log}"]
"#,
            log = log.display()
        ),
    )?;
    let report = tokio::task::block_in_place(|| installation.backup("appdata"))?;
    let optional = report_item(&report, "hook", "pre optional")?;
    ensure!(
        optional["outcome"] == "failed"
            && optional["detail"]
                .as_str()
                .is_some_and(|d| d.contains("exit status: 4") && d.contains("broken")),
        "{optional}"
    );
    ensure!(lines(&log) == ["next"], "{:?}", lines(&log));

    // A pod hook whose selector matches no running pod fails the run, naming it.
    hooked_job(
        &installation,
        r#"
[[job.hooks.pre]]
name = "missing"
command = ["true"]
pod = { namespace = "apps", selector = "app=nothing", kubeconfig = "kubeconfig" }
"#,
    )?;
    let output = tokio::task::block_in_place(|| installation.start_backup("appdata")?.wait())?
        .failed()?
        .output();
    ensure!(
        output.contains("no running pod in namespace apps matches selector app=nothing"),
        "{output}"
    );
    Ok(())
}

#[test]
fn one_directory_job_holds_many_appdata_folders_each_with_its_excludes() -> Result<()> {
    let installation = Installation::local()?;
    let files = [
        ("appdata/gitea/data/repo.git", true),
        ("appdata/gitea/log/gitea.log", false),
        ("appdata/vaultwarden/db.sqlite3", true),
        ("appdata/vaultwarden/icon_cache/a.png", false),
        ("appdata/plex/Preferences.xml", true),
        ("appdata/plex/Cache/big.bin", false),
        ("appdata/plex/Logs/x.tmp", false),
    ];
    for (path, _) in files {
        write_file(&installation.path(path), path.as_bytes())?;
    }
    installation.write_config(
        &[],
        &[(
            "appdata",
            r#"{ kind = "directory", exclude = ["*.tmp"], folders = [
  { path = "appdata/gitea", exclude = ["log"] },
  { path = "appdata/vaultwarden", exclude = ["icon_cache"] },
  { path = "appdata/plex", exclude = ["Cache/**"] },
] }"#,
        )],
    )?;
    installation.backup("appdata")?;
    let restored = installation.path("restored");
    installation
        .restore(&installation.restore_key(), "latest:appdata", &restored)?
        .ok()?;
    for (path, kept) in files {
        let copy = restored.join(installation.path(path).strip_prefix("/")?);
        ensure!(copy.exists() == kept, "{path} kept: {kept}");
    }
    Ok(())
}
