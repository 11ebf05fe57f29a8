//! `lifeboat restore` for each source kind, as an operator runs it during
//! an incident: back up (with `lifeboatd run`, or for volumes a snapshot
//! built per the volumes manifest contract), wipe the originals, restore,
//! and compare with what was there — volumes (from the volumes source
//! against the protocol-level Kubernetes API test server, and built per
//! the manifest contract) and directories in place and into folders, etcd into a verified snapshot file and a data dir a real
//! etcd starts on, PostgreSQL into the real server with `--create`, Talos
//! files with mode 0600.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use lifeboat::backup::SnapshotBuilder;
use lifeboat::backup::folders::Folder;
use lifeboat::backup::stream::StreamChunking;
use lifeboat::sources::etcd::restore::{Member, ThrowawayEtcd};
use lifeboat::sources::volumes::MANIFEST_FILE;
use lifeboat_tests::cli::{
    Installation, Outcome, Rng, TreeDescription, assert_same_tree, describe, run, write_file,
};
use lifeboat_tests::etcd::{EtcdServer, count_keys, put_all};
use lifeboat_tests::kubernetes::fixtures;
use lifeboat_tests::postgres::PostgresServer;
use lifeboat_tests::process::free_port;

/// Runs `lifeboat restore <repo> -i restore.key args…` with `env`.
fn restore(installation: &Installation, args: &[&str], env: &[(&str, &str)]) -> Result<Outcome> {
    let mut command = installation.command("lifeboat")?;
    command
        .arg("restore")
        .args(installation.repo_args())
        .arg("-i")
        .arg(installation.restore_key())
        .args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    run(&mut command)
}

/// Fills `dir` with a few files, a nested folder and a symlink.
fn fill(dir: &Path, seed: u64) -> Result<TreeDescription> {
    let mut rng = Rng::new(seed);
    write_file(&dir.join("data.bin"), &rng.bytes(300_000))?;
    write_file(&dir.join("conf/app.conf"), &rng.text(2_000))?;
    write_file(&dir.join("conf/deep/x.txt"), b"x")?;
    std::os::unix::fs::symlink("conf/app.conf", dir.join("current"))?;
    describe(dir)
}

fn text(path: &Path) -> String {
    path.display().to_string()
}

#[tokio::test]
async fn volumes_and_directories_restore_in_place_and_into_folders() -> Result<()> {
    let installation = Installation::local()?;
    let (share_a, share_b) = (
        installation.path("host/srv/a"),
        installation.path("host/srv/b"),
    );
    let (pvc_one, pvc_two) = (
        installation.path("host/var/openebs/local/pvc-1"),
        installation.path("host/var/openebs/local/pvc-2"),
    );
    let originals: Vec<(PathBuf, TreeDescription)> = vec![
        (share_a.clone(), fill(&share_a, 1)?),
        (share_b.clone(), fill(&share_b, 2)?),
        (pvc_one.clone(), fill(&pvc_one, 3)?),
        (pvc_two.clone(), fill(&pvc_two, 4)?),
    ];
    let source = format!(
        "{{ kind = \"directory\", paths = [{:?}, {:?}] }}",
        text(&share_a),
        text(&share_b)
    );
    installation.write_config(&[], &[("shares", &source)])?;
    installation.backup("shares")?;

    // A volumes snapshot as the volumes source writes it.
    let repo =
        lifeboat_tests::repo::unlock(installation.url(), &installation.service_key()).await?;
    let mut builder = SnapshotBuilder::new(&repo, "volumes", "volumes");
    let folders: Vec<Folder> = [&pvc_one, &pvc_two]
        .iter()
        .map(|path| Folder {
            path: (*path).clone(),
            exclude: Vec::new(),
        })
        .collect();
    builder.add_folders(&folders, None).await?;
    let manifest = serde_json::json!({
        "volumes": [
            {"namespace": "apps", "pvc": "one", "pv": "pvc-1", "storage_class": "openebs-hostpath",
             "capacity": "1Gi", "access_modes": ["ReadWriteOnce"], "node": "worker-1", "host_path": text(&pvc_one)},
            {"namespace": "apps", "pvc": "two", "pv": "pvc-2", "storage_class": "openebs-hostpath",
             "capacity": "1Gi", "access_modes": ["ReadWriteOnce"], "node": "worker-1", "host_path": text(&pvc_two)},
        ],
        "skipped": [{"namespace": "apps", "pvc": "cache", "pv": "pvc-9", "reason": "emptyDir-backed"}],
    });
    builder
        .add_stream(
            MANIFEST_FILE,
            std::io::Cursor::new(serde_json::to_vec(&manifest)?),
            StreamChunking::Content,
        )
        .await?;
    builder.commit(serde_json::json!({ "volumes": 2 })).await?;

    for (path, _) in &originals {
        std::fs::remove_dir_all(path)?;
    }
    let same = |at: usize| -> Result<()> {
        let (path, before) = &originals[at];
        assert_same_tree(before, &describe(path)?)
            .with_context(|| format!("{} after restore", path.display()))
    };

    // Directory job: every folder back in place, where the operator allows.
    let host = text(&installation.path("host"));
    let refused = restore(&installation, &["latest:shares", "--in-place"], &[])?.failed()?;
    ensure!(
        refused.stderr.contains("--allow-root") && !share_a.exists(),
        "without --allow-root a directory job is not restored in place:\n{}",
        refused.output()
    );
    let args = ["latest:shares", "--in-place", "--allow-root", host.as_str()];
    restore(&installation, &args, &[])?.ok()?;
    same(0)?;
    same(1)?;
    let refused = restore(&installation, &args, &[])?.failed()?;
    ensure!(
        refused.stderr.contains("not empty") && refused.stderr.contains("--force"),
        "an in-place restore over data is refused:\n{}",
        refused.output()
    );
    restore(
        &installation,
        &[
            "latest:shares",
            "--in-place",
            "--force",
            "--allow-root",
            &host,
        ],
        &[],
    )?
    .ok()?;
    same(0)?;

    // Volumes: one PVC in place, the other into a folder, then all.
    let outcome = restore(
        &installation,
        &[
            "latest:volumes",
            "--in-place",
            "--pvc",
            "apps/one",
            "--json",
            "--allow-root",
            &host,
        ],
        &[],
    )?
    .ok()?;
    let restored = outcome.json()?;
    ensure!(
        restored["restored"].as_array().map(Vec::len) == Some(1),
        "one PVC restored: {restored:#}"
    );
    same(2)?;
    ensure!(!pvc_two.exists(), "--pvc apps/one restored only that PVC");
    let elsewhere = installation.path("pvc-two-copy");
    restore(
        &installation,
        &[
            "latest:volumes",
            "--pvc",
            "apps/two",
            "--target",
            &text(&elsewhere),
        ],
        &[],
    )?
    .ok()?;
    assert_same_tree(&originals[3].1, &describe(&elsewhere)?)?;
    restore(
        &installation,
        &[
            "latest:volumes",
            "--in-place",
            "--force",
            "--allow-root",
            &host,
        ],
        &[],
    )?
    .ok()?;
    same(2)?;
    same(3)?;

    let unknown = restore(
        &installation,
        &["latest:volumes", "--in-place", "--pvc", "apps/cache"],
        &[],
    )?
    .failed()?;
    ensure!(
        unknown.stderr.contains("emptyDir-backed") && unknown.stderr.contains("apps/one"),
        "a skipped PVC is named with the reason and what there is:\n{}",
        unknown.output()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_of_the_volumes_source_restore_in_place_and_drill_clean() -> Result<()> {
    let volumes = tempfile::tempdir()?;
    let (cluster, _server, installation) = fixtures::volumes_installation(volumes.path()).await?;
    tokio::task::block_in_place(|| installation.backup("volumes"))?;
    let stored = [&cluster.postgres_volume, &cluster.grafana_volume];
    let before: Vec<TreeDescription> = stored
        .iter()
        .map(|path| describe(path))
        .collect::<Result<_>>()?;
    for path in stored {
        std::fs::remove_dir_all(path)?;
    }
    // No --allow-root: the live PersistentVolumes of the cluster (asked
    // over the real API) say where the claims' data belongs.
    let kubeconfig = text(&installation.path("kubeconfig"));
    let outcome = tokio::task::block_in_place(|| {
        restore(
            &installation,
            &["latest:volumes", "--in-place", "--json"],
            &[("KUBECONFIG", kubeconfig.as_str())],
        )
    })?
    .ok()?;
    let report = outcome.json()?;
    ensure!(
        report["restored"].as_array().map(Vec::len) == Some(2),
        "both stored claims restored: {report:#}"
    );
    for (path, want) in stored.iter().zip(&before) {
        assert_same_tree(want, &describe(path)?)
            .with_context(|| format!("{} after restore", path.display()))?;
    }
    let mut command = installation.drill_command()?;
    let drilled = tokio::task::block_in_place(|| run(&mut command))?.ok()?;
    ensure!(
        drilled.stdout.contains("1 of 1 job(s) passed"),
        "{}",
        drilled.output()
    );
    Ok(())
}

#[tokio::test]
async fn etcd_restores_to_a_verified_file_and_a_data_dir_etcd_starts_on() -> Result<()> {
    let server = EtcdServer::start().await?;
    let mut client = server.client().await?;
    let mut rng = Rng::new(11);
    let items: Vec<(String, Vec<u8>)> = (0..500)
        .map(|i| (format!("/registry/pods/{i:04}"), rng.text(200)))
        .collect();
    put_all(&mut client, items).await?;
    let (keys, revision) = count_keys(&mut client).await?;
    let installation = Installation::local()?;
    let source = format!(
        "{{ kind = \"etcd\", endpoints = [{:?}], timeout = \"20s\" }}",
        server.url()
    );
    installation.write_config(&[], &[("etcd", &source)])?;
    installation.backup("etcd")?;
    drop(client);
    drop(server);

    let target = installation.path("etcd-restore");
    let data_dir = installation.path("etcd-data");
    let peer = format!("http://127.0.0.1:{}", free_port()?);
    let outcome = restore(
        &installation,
        &[
            "latest:etcd",
            "--target",
            &text(&target),
            "--data-dir",
            &text(&data_dir),
            "--etcd-name",
            "restored",
            "--etcd-peer-url",
            &peer,
            "--json",
        ],
        &[],
    )?
    .ok()?;
    let report = outcome.json()?;
    ensure!(
        report["revision"] == revision && report["key_count"] == keys,
        "the restore shows the recorded revision {revision} and {keys} keys: {report:#}"
    );
    ensure!(
        report["sha256"].as_str().map(str::len) == Some(64)
            && target.join("etcd.db").is_file()
            && data_dir.join("member").is_dir(),
        "etcd.db written and the data dir made: {report:#}"
    );
    let member = Member {
        name: "restored".into(),
        peer_url: peer,
    };
    let log = installation.path("etcd.log");
    let (_etcd, keyspace) =
        ThrowawayEtcd::start(&data_dir, &member, &log, Duration::from_secs(60)).await?;
    ensure!(
        (keyspace.key_count, keyspace.revision) == (keys, revision),
        "the restored member holds {keyspace:?}, the backup had {keys} keys at {revision}"
    );

    // A second restore into the same folder is refused without --force.
    let refused = restore(
        &installation,
        &["latest:etcd", "--target", &text(&target)],
        &[],
    )?
    .failed()?;
    ensure!(refused.stderr.contains("not empty"), "{}", refused.output());
    // Flags of another kind are refused, not ignored.
    let foreign = restore(&installation, &["latest:etcd", "--in-place"], &[])?.failed()?;
    ensure!(
        foreign.stderr.contains("--in-place") && foreign.stderr.contains("\"etcd\""),
        "{}",
        foreign.output()
    );
    Ok(())
}

#[tokio::test]
async fn postgres_restores_globals_then_databases_with_create() -> Result<()> {
    let server = PostgresServer::start().await?;
    server.psql("postgres", "CREATE ROLE shopkeeper LOGIN")?;
    server.psql("postgres", "CREATE DATABASE shop OWNER shopkeeper")?;
    server.psql("postgres", "CREATE DATABASE notes")?;
    server.psql(
        "shop",
        "CREATE TABLE items (id int PRIMARY KEY, name text); \
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 1234) g; \
         CREATE SCHEMA audit; CREATE TABLE audit.log (at timestamptz, line text); \
         INSERT INTO audit.log SELECT now(), md5(g::text) FROM generate_series(1, 77) g; \
         ALTER TABLE items OWNER TO shopkeeper",
    )?;
    server.psql(
        "notes",
        "CREATE TABLE notes (body text); INSERT INTO notes VALUES ('a'), ('b')",
    )?;
    let expected = (server.row_counts("shop")?, server.row_counts("notes")?);
    let installation = Installation::local()?;
    std::fs::write(installation.path("pg.pass"), server.superuser_password())?;
    let source = format!(
        "{{ kind = \"postgres\", dsn = {:?}, databases = [\"shop\", \"notes\"], password_file = \"pg.pass\", pg_dump = {:?} }}",
        server.superuser_dsn("postgres"),
        text(&server.bin("pg_dump")),
    );
    installation.write_config(&[], &[("databases", &source)])?;
    installation.backup("databases")?;

    // Wipe: the databases and the role.
    server.psql("postgres", "DROP DATABASE shop")?;
    server.psql("postgres", "DROP DATABASE notes")?;
    server.psql("postgres", "DROP ROLE shopkeeper")?;

    let password = server.superuser_password().to_owned();
    let env = [("PGPASSWORD", password.as_str())];
    let url = server.superuser_dsn("postgres");
    let bin = text(server.bin_dir());
    let outcome = restore(
        &installation,
        &[
            "latest:databases",
            "--pg-url",
            &url,
            "--pg-bin",
            &bin,
            "--create",
            "--json",
        ],
        &env,
    )?
    .ok()?;
    let report = outcome.json()?;
    ensure!(
        report["globals"] == true && report["databases"].as_array().map(Vec::len) == Some(2),
        "globals and both databases restored: {report:#}"
    );
    ensure!(
        server.row_counts("shop")? == expected.0 && server.row_counts("notes")? == expected.1,
        "restored rows differ from the originals"
    );
    let owner = server.psql(
        "shop",
        "SELECT tableowner FROM pg_tables WHERE tablename = 'items'",
    )?;
    ensure!(
        owner.trim() == "shopkeeper",
        "the role came back first from globals.sql: {owner}"
    );

    // Into an existing, emptied database, one database only.
    server.psql("postgres", "DROP DATABASE notes")?;
    server.psql("postgres", "CREATE DATABASE notes")?;
    restore(
        &installation,
        &[
            "latest:databases",
            "--pg-url",
            &url,
            "--pg-bin",
            &bin,
            "--database",
            "notes",
            "--no-globals",
        ],
        &env,
    )?
    .ok()?;
    ensure!(
        server.row_counts("notes")? == expected.1,
        "notes restored into the existing database"
    );

    let unknown = restore(
        &installation,
        &["latest:databases", "--pg-url", &url, "--database", "nosuch"],
        &env,
    )?
    .failed()?;
    ensure!(
        unknown.stderr.contains("nosuch") && unknown.stderr.contains("shop"),
        "an unknown database is named with what there is:\n{}",
        unknown.output()
    );
    Ok(())
}

#[test]
fn talos_config_restores_private_files() -> Result<()> {
    let installation = Installation::local()?;
    let dir = installation.path("talos");
    let files = [
        (
            "secrets.yaml",
            "cluster:\n  id: abc\n  secret: def\nsecrets:\n  bootstraptoken: x.y\ntrustdinfo:\n  token: t\ncerts:\n  etcd:\n    crt: LS0t\n    key: LS0t\n",
        ),
        (
            "controlplane.yaml",
            "version: v1alpha1\nmachine:\n  type: controlplane\ncluster:\n  clusterName: home\n",
        ),
        (
            "worker.yaml",
            "version: v1alpha1\nmachine:\n  type: worker\n",
        ),
        (
            "talosconfig",
            "context: home\ncontexts:\n  home:\n    endpoints: [10.0.0.10]\n",
        ),
    ];
    for (name, content) in files {
        write_file(&dir.join(name), content.as_bytes())?;
        std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o644))?;
    }
    let source = format!("{{ kind = \"talos-config\", dir = {:?} }}", text(&dir));
    installation.write_config(&[], &[("talos", &source)])?;
    installation.backup("talos")?;
    std::fs::remove_dir_all(&dir)?;

    let target = installation.path("talos-restored");
    let outcome = restore(
        &installation,
        &["latest:talos", "--target", &text(&target), "--json"],
        &[],
    )?
    .ok()?;
    let report = outcome.json()?;
    ensure!(
        report["yaml"]["yaml_files"] == 4,
        "four YAML files: {report:#}"
    );
    let restored_dir = target.join(dir.strip_prefix("/")?);
    for (name, content) in files {
        let path = restored_dir.join(name);
        ensure!(
            std::fs::read_to_string(&path)? == content,
            "{name} restored as it was"
        );
        let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
        ensure!(mode == 0o600, "{name} has mode {mode:o}, not 600");
    }
    Ok(())
}
