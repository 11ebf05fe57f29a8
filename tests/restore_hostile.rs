//! A restore treats the repository as hostile. Snapshots are forged as an
//! attacker holding only the service key can (FORMAT.md: tree and data
//! blobs encrypted to the public recipients through the library's own
//! writer, then a snapshot object), and the real `lifeboat restore` and
//! `lifeboat drill` run on them as root. For each forgery: nothing in a
//! sentinel folder beside the target changes (walked and hashed before and
//! after), the command fails or reports, and the good parts still restore.
//! A forged `globals.sql` is refused before `psql` runs it, against a real
//! PostgreSQL.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use lifeboat::repo::UnlockedRepository;
use lifeboat::repo::blob::BlobKind;
use lifeboat::repo::id::BlobId;
use lifeboat::repo::keys::AnyIdentity;
use lifeboat::repo::snapshot::{Snapshot, Summary};
use lifeboat::repo::tree::{Node, NodeKind, RawName, Tree};
use lifeboat::repo::writer::BlobWriter;
use lifeboat::sources::volumes::MANIFEST_FILE;
use lifeboat_tests::cli::{Installation, Outcome, TreeDescription, describe, run, write_file};
use lifeboat_tests::postgres::PostgresServer;

/// Writes blobs and snapshots with the service key only.
struct Forger {
    repo: UnlockedRepository<AnyIdentity>,
    writer: Option<BlobWriter>,
    references: Vec<BlobId>,
}

impl Forger {
    async fn new(installation: &Installation) -> Result<Self> {
        let repo =
            lifeboat_tests::repo::unlock(installation.url(), &installation.service_key()).await?;
        ensure!(
            !repo.can_read_data(),
            "the forger must hold only the service key"
        );
        let writer = Some(repo.writer());
        Ok(Self {
            repo,
            writer,
            references: Vec::new(),
        })
    }

    fn save(&mut self, kind: BlobKind, plain: &[u8]) -> Result<BlobId> {
        let writer = self.writer.as_ref().context("writer finished")?;
        let (id, _) = tokio::task::block_in_place(|| writer.save(kind, plain))?;
        self.references.push(id);
        Ok(id)
    }

    /// A regular file holding `data`.
    fn file(&mut self, name: &str, data: &[u8], mode: u32) -> Result<Node> {
        let mut node = Node::new(name.as_bytes(), NodeKind::File, mode, 1_600_000_000);
        node.size = data.len() as u64;
        if !data.is_empty() {
            node.content = vec![self.save(BlobKind::Data, data)?];
        }
        Ok(node)
    }

    /// A directory holding `entries` in the order given (not sorted, so
    /// repeated names stay as the attacker put them).
    fn dir(&mut self, name: &str, entries: Vec<Node>) -> Result<Node> {
        let mut node = Node::new(name.as_bytes(), NodeKind::Dir, 0o755, 1_600_000_000);
        node.subtree = Some(self.tree(entries)?);
        Ok(node)
    }

    fn tree(&mut self, entries: Vec<Node>) -> Result<BlobId> {
        let plain = serde_json::to_vec(&Tree { entries })?;
        self.save(BlobKind::Tree, &plain)
    }

    /// The directories of the absolute `path`, the last holding `entries`.
    fn at_path(&mut self, path: &Path, entries: Vec<Node>) -> Result<Node> {
        let parts: Vec<String> = path
            .components()
            .skip(1)
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let (last, above) = parts.split_last().context("a path below /")?;
        let mut node = self.dir(last, entries)?;
        for part in above.iter().rev() {
            node = self.dir(part, vec![node])?;
        }
        Ok(node)
    }

    /// Writes the snapshot of `job` whose root holds `entries`.
    async fn snapshot(&mut self, job: &str, kind: &str, entries: Vec<Node>) -> Result<()> {
        let root = self.tree(entries)?;
        let writer = self.writer.take().context("writer finished")?;
        writer.finish().await?;
        self.writer = Some(self.repo.writer());
        let mut references = std::mem::take(&mut self.references);
        references.sort();
        references.dedup();
        let now = chrono::Utc::now();
        let snapshot = Snapshot {
            job: job.into(),
            source_kind: kind.into(),
            host: "forged".into(),
            time: now,
            end_time: now,
            root,
            summary: Summary::default(),
            metadata: serde_json::Value::Null,
            references,
        };
        self.repo.save_snapshot(&snapshot).await?;
        Ok(())
    }
}

fn symlink(name: &str, target: &Path) -> Node {
    let mut node = Node::new(name.as_bytes(), NodeKind::Symlink, 0o777, 1_600_000_000);
    node.target = Some(RawName(target.as_os_str().as_encoded_bytes().to_vec()));
    node
}

/// A folder beside the targets that no restore may change.
struct Sentinel {
    path: PathBuf,
    before: TreeDescription,
}

impl Sentinel {
    fn new(installation: &Installation) -> Result<Self> {
        let path = installation.path("sentinel");
        write_file(&path.join("secret.txt"), b"the operator's own file\n")?;
        write_file(&path.join("sub/keep.conf"), b"keep = true\n")?;
        std::fs::set_permissions(
            path.join("secret.txt"),
            std::fs::Permissions::from_mode(0o640),
        )?;
        let before = describe(&path)?;
        Ok(Self { path, before })
    }

    fn unchanged(&self, case: &str) -> Result<()> {
        let after = describe(&self.path)?;
        lifeboat_tests::cli::assert_same_tree(&self.before, &after)
            .with_context(|| format!("{case}: the sentinel folder changed"))
    }
}

fn restore(installation: &Installation, args: &[&str]) -> Result<Outcome> {
    let mut command = installation.command("lifeboat")?;
    command
        .arg("restore")
        .args(installation.repo_args())
        .arg("-i")
        .arg(installation.restore_key())
        .args(args)
        .env("KUBECONFIG", installation.path("no-kubeconfig"));
    run(&mut command)
}

fn text(path: &Path) -> String {
    path.display().to_string()
}

/// An installation with a repository (made by a first backup) and a sentinel.
async fn setup(jobs: &[&str]) -> Result<(Installation, Sentinel)> {
    let installation = Installation::local()?;
    let seed = installation.path("seed");
    write_file(&seed.join("a.txt"), b"seed")?;
    let source = format!("{{ kind = \"directory\", paths = [{:?}] }}", text(&seed));
    let mut all = vec![("seed", source.as_str())];
    all.extend(jobs.iter().map(|job| (*job, source.as_str())));
    installation.write_config(&[], &all)?;
    installation.backup("seed")?;
    let sentinel = Sentinel::new(&installation)?;
    Ok((installation, sentinel))
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_trees_never_write_outside_the_target() -> Result<()> {
    let (installation, sentinel) = setup(&["link-dir"]).await?;
    let secret = sentinel.path.join("secret.txt");
    let mut forger = Forger::new(&installation).await?;

    // A symlink, then a directory of the same name holding a file: a walk
    // that ignores "already exists" writes through the link.
    let planted = forger.file("secret.txt", b"owned\n", 0o4755)?;
    let inside = forger.dir("a", vec![planted])?;
    let good = forger.file("good.txt", b"good data\n", 0o644)?;
    forger
        .snapshot(
            "link-dir",
            "directory",
            vec![symlink("a", &sentinel.path), inside, good],
        )
        .await?;
    // A symlink to a file, then a file of the same name.
    let over = forger.file("b", b"truncated you\n", 0o644)?;
    let good = forger.file("good.txt", b"good data\n", 0o644)?;
    forger
        .snapshot(
            "link-file",
            "directory",
            vec![symlink("b", &secret), over, good],
        )
        .await?;
    // A dangling symlink to an outside path, then a file of that name.
    let created = sentinel.path.join("created-by-restore");
    let new = forger.file("c", b"new file outside\n", 0o644)?;
    let good = forger.file("good.txt", b"good data\n", 0o644)?;
    forger
        .snapshot(
            "dangling",
            "directory",
            vec![symlink("c", &created), new, good],
        )
        .await?;

    for (job, name) in [("link-dir", "a"), ("link-file", "b"), ("dangling", "c")] {
        let target = installation.path(format!("restored-{job}"));
        let outcome = restore(
            &installation,
            &[&format!("latest:{job}"), "--target", &text(&target)],
        )?
        .failed()?;
        // A second entry of the same name makes the tree damaged (FORMAT.md,
        // "Valid trees"): the whole folder is refused, naming the entry. The
        // restorer's own refusal of a repeated name, should validation ever
        // let one through, is tested in `restore::place`.
        ensure!(
            outcome.stderr.contains(&format!("entry \"{name}\""))
                && outcome.stderr.contains("the name appears twice"),
            "{job}: the refusal names the entry:\n{}",
            outcome.output()
        );
        sentinel.unchanged(job)?;
        ensure!(!created.exists(), "{job}: a file was created outside");
        ensure!(
            std::fs::symlink_metadata(target.join(name)).is_err(),
            "{job}: nothing of the damaged folder is restored"
        );
    }

    // The drill restores the same way, so it fails and escapes nowhere.
    let mut drill = installation.drill_command()?;
    drill
        .args(["--job", "link-dir"])
        .env("KUBECONFIG", installation.path("no-kubeconfig"));
    let drilled = run(&mut drill)?.failed()?;
    ensure!(
        drilled.output().contains("link-dir")
            && drilled.output().contains("the name appears twice"),
        "the drill names the refusal:\n{}",
        drilled.output()
    );
    sentinel.unchanged("drill")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn force_replaces_links_in_the_target_without_following_them() -> Result<()> {
    let (installation, sentinel) = setup(&[]).await?;
    let mut forger = Forger::new(&installation).await?;
    let x = forger.file("x", b"inside\n", 0o644)?;
    let a = forger.dir("a", vec![x])?;
    let b = forger.file("b", b"replaced\n", 0o600)?;
    forger.snapshot("plain", "directory", vec![a, b]).await?;

    // The live folder holds symlinks where the snapshot has a directory and
    // a file (a compromised workload can plant them).
    let target = installation.path("live");
    std::fs::create_dir_all(&target)?;
    std::os::unix::fs::symlink(&sentinel.path, target.join("a"))?;
    std::os::unix::fs::symlink(sentinel.path.join("secret.txt"), target.join("b"))?;
    restore(
        &installation,
        &["latest:plain", "--target", &text(&target), "--force"],
    )?
    .ok()?;
    sentinel.unchanged("--force over symlinks")?;
    ensure!(std::fs::symlink_metadata(target.join("a"))?.is_dir());
    ensure!(std::fs::read(target.join("a/x"))? == b"inside\n");
    let b = std::fs::symlink_metadata(target.join("b"))?;
    ensure!(b.is_file() && b.mode() & 0o7777 == 0o600, "b is a new file");
    ensure!(std::fs::read(target.join("b"))? == b"replaced\n");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn setuid_bits_and_devices_need_keep_special_and_owners_are_restored() -> Result<()> {
    let (installation, sentinel) = setup(&[]).await?;
    ensure!(
        nix::unistd::geteuid().is_root(),
        "this test checks owners and device nodes and must run as root"
    );
    let mut forger = Forger::new(&installation).await?;
    let mut suid = forger.file("suid", b"#!/bin/sh\n", 0o4755)?;
    (suid.uid, suid.gid) = (1234, 5678);
    let mut device = Node::new(b"null", NodeKind::Chardev, 0o666, 1_600_000_000);
    device.rdev = Some(nix::sys::stat::makedev(1, 3));
    let fifo = Node::new(b"pipe", NodeKind::Fifo, 0o620, 1_600_000_000);
    let mut shared = forger.dir("shared", Vec::new())?;
    shared.mode = 0o2775;
    forger
        .snapshot("special", "directory", vec![device, fifo, shared, suid])
        .await?;

    let plain = installation.path("plain");
    let outcome = restore(
        &installation,
        &["latest:special", "--target", &text(&plain), "--json"],
    )?
    .ok()?;
    let report = &outcome.json()?["report"];
    ensure!(report["special_dropped"] == 2, "{report:#}");
    let suid = std::fs::symlink_metadata(plain.join("suid"))?;
    ensure!(
        suid.mode() & 0o7777 == 0o755 && (suid.uid(), suid.gid()) == (1234, 5678),
        "setuid cleared, owner restored: {:o} {}:{}",
        suid.mode(),
        suid.uid(),
        suid.gid()
    );
    ensure!(
        !plain.join("null").exists(),
        "no device without --keep-special"
    );
    ensure!(
        std::fs::symlink_metadata(plain.join("pipe"))?
            .file_type()
            .is_fifo()
    );
    ensure!(std::fs::metadata(plain.join("shared"))?.mode() & 0o7777 == 0o2775);

    let kept = installation.path("kept");
    restore(
        &installation,
        &["latest:special", "--target", &text(&kept), "--keep-special"],
    )?
    .ok()?;
    let suid = std::fs::symlink_metadata(kept.join("suid"))?;
    ensure!(suid.mode() & 0o7777 == 0o4755 && suid.uid() == 1234);
    let mem = std::fs::symlink_metadata(kept.join("null"))?;
    ensure!(mem.file_type().is_char_device() && mem.rdev() == nix::sys::stat::makedev(1, 3));
    sentinel.unchanged("special")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_host_paths_are_refused_in_place() -> Result<()> {
    let (installation, sentinel) = setup(&[]).await?;
    let mut forger = Forger::new(&installation).await?;
    let good_path = installation.path("host/var/openebs/local/pvc-good");
    let climbing = format!("{}/../../sentinel", text(&installation.path("host/var")));
    let manifest = serde_json::json!({
        "volumes": [
            {"namespace": "apps", "pvc": "good", "pv": "pvc-good", "storage_class": "openebs-hostpath",
             "capacity": "1Gi", "access_modes": ["ReadWriteOnce"], "node": "", "host_path": text(&good_path)},
            {"namespace": "apps", "pvc": "evil", "pv": "pvc-evil", "storage_class": "openebs-hostpath",
             "capacity": "1Gi", "access_modes": ["ReadWriteOnce"], "node": "", "host_path": text(&sentinel.path)},
            {"namespace": "apps", "pvc": "climb", "pv": "pvc-climb", "storage_class": "openebs-hostpath",
             "capacity": "1Gi", "access_modes": ["ReadWriteOnce"], "node": "", "host_path": climbing},
        ],
        "skipped": [],
    });
    let manifest = forger.file(MANIFEST_FILE, &serde_json::to_vec(&manifest)?, 0o600)?;
    // The good volume and the sentinel's path, both below the
    // installation's folder.
    let data = forger.file("db.bin", b"volume data\n", 0o600)?;
    let pvc = forger.dir("pvc-good", vec![data])?;
    let local = forger.dir("local", vec![pvc])?;
    let openebs = forger.dir("openebs", vec![local])?;
    let var = forger.dir("var", vec![openebs])?;
    let host = forger.dir("host", vec![var])?;
    let planted = forger.file("secret.txt", b"owned\n", 0o644)?;
    let evil = forger.dir("sentinel", vec![planted])?;
    let top = forger.at_path(installation.root(), vec![host, evil])?;
    forger
        .snapshot("volumes", "volumes", vec![manifest, top])
        .await?;

    let host_root = installation.path("host");
    let outcome = restore(
        &installation,
        &[
            "latest:volumes",
            "--in-place",
            "--allow-root",
            &text(&host_root),
        ],
    )?
    .failed()?;
    let stderr = &outcome.stderr;
    ensure!(
        stderr.contains(&text(&sentinel.path))
            && stderr.contains("--allow-root")
            && stderr.contains("normalised"),
        "the refusals name the paths and the flag:\n{}",
        outcome.output()
    );
    ensure!(
        stderr.contains(&format!("will restore apps/good into {}", text(&good_path))),
        "the plan is printed first:\n{}",
        outcome.output()
    );
    ensure!(std::fs::read(good_path.join("db.bin"))? == b"volume data\n");
    sentinel.unchanged("in place")?;

    // Without --allow-root and without a cluster, nothing is written.
    std::fs::remove_dir_all(&good_path)?;
    let refused = restore(&installation, &["latest:volumes", "--in-place"])?.failed()?;
    ensure!(
        refused.stderr.contains("could not be asked") && !good_path.exists(),
        "{}",
        refused.output()
    );
    sentinel.unchanged("in place without roots")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_globals_sql_never_reaches_psql_and_the_dumps_still_restore() -> Result<()> {
    let server = PostgresServer::start().await?;
    server.psql("postgres", "CREATE DATABASE shop")?;
    server.psql(
        "shop",
        "CREATE TABLE items (id int); INSERT INTO items SELECT generate_series(1, 321)",
    )?;
    let expected = server.row_counts("shop")?;
    let installation = Installation::local()?;
    std::fs::write(installation.path("pg.pass"), server.superuser_password())?;
    let source = format!(
        "{{ kind = \"postgres\", dsn = {:?}, databases = [\"shop\"], password_file = \"pg.pass\", pg_dump = {:?} }}",
        server.superuser_dsn("postgres"),
        text(&server.bin("pg_dump")),
    );
    installation.write_config(&[], &[("databases", &source)])?;
    installation.backup("databases")?;
    let sentinel = Sentinel::new(&installation)?;

    // The attacker holds the cluster and can run pg_dump itself; the test
    // takes the genuine dump and row counts for brevity, and plants a
    // globals.sql whose second line runs a shell through psql.
    let genuine = installation.path("genuine");
    restore(
        &installation,
        &["latest:databases", "--target", &text(&genuine)],
    )?
    .ok()?;
    let mut forger = Forger::new(&installation).await?;
    let pwned = sentinel.path.join("pwned");
    let script = format!("CREATE ROLE planted;\n\\! touch {}\n", text(&pwned));
    let mut entries = vec![forger.file("globals.sql", script.as_bytes(), 0o600)?];
    for listed in std::fs::read_dir(&genuine)? {
        let name = listed?.file_name().to_string_lossy().into_owned();
        if name != "globals.sql" {
            let data = std::fs::read(genuine.join(&name))?;
            entries.push(forger.file(&name, &data, 0o600)?);
        }
    }
    entries.sort_by(|a, b| a.name.0.cmp(&b.name.0));
    forger.snapshot("databases", "postgres", entries).await?;
    server.psql("postgres", "DROP DATABASE shop")?;

    let password = server.superuser_password().to_owned();
    let (url, bin) = (server.superuser_dsn("postgres"), text(server.bin_dir()));
    let into_server = |extra: &[&str]| -> Result<Outcome> {
        let mut command = installation.command("lifeboat")?;
        command
            .arg("restore")
            .args(installation.repo_args())
            .arg("-i")
            .arg(installation.restore_key())
            .args([
                "latest:databases",
                "--pg-url",
                &url,
                "--pg-bin",
                &bin,
                "--create",
            ])
            .args(extra)
            .env("PGPASSWORD", &password);
        run(&mut command)
    };
    let refused = into_server(&[])?.failed()?;
    ensure!(
        refused.stderr.contains("globals.sql: line 2")
            && refused.stderr.contains("meta-command \\!"),
        "the refusal names the file, the line and the command:\n{}",
        refused.output()
    );
    ensure!(!pwned.exists(), "psql ran the shell command");
    sentinel.unchanged("globals.sql")?;
    let planted = server.psql(
        "postgres",
        "SELECT count(*) FROM pg_roles WHERE rolname = 'planted'",
    )?;
    let shop = server.psql(
        "postgres",
        "SELECT count(*) FROM pg_database WHERE datname = 'shop'",
    )?;
    ensure!(
        planted.trim() == "0" && shop.trim() == "0",
        "nothing ran before the refusal: roles {planted}, databases {shop}"
    );

    // The dumps, the good part, restore without the globals.
    into_server(&["--no-globals"])?.ok()?;
    ensure!(
        server.row_counts("shop")? == expected,
        "the dump restores without the globals"
    );

    // The drill does not run the globals, but checks them as a restore would.
    let mut drill = installation.drill_command()?;
    drill
        .args(["--job", "databases", "--pg-url", &url, "--pg-bin", &bin])
        .env("PGPASSWORD", &password);
    let drilled = run(&mut drill)?.failed()?;
    ensure!(
        drilled.output().contains("check globals.sql")
            && drilled.output().contains("meta-command \\!"),
        "the drill fails naming the script:\n{}",
        drilled.output()
    );
    ensure!(!pwned.exists(), "the drill ran the shell command");
    sentinel.unchanged("drill")?;
    Ok(())
}
