//! `lifeboat drill` against real servers: on good data every job passes
//! (directory, etcd through a throwaway etcd, PostgreSQL into scratch
//! databases, Talos files) and the JSON, JUnit and Prometheus reports say
//! so; a flipped bit in a pack fails the drill naming the damaged files;
//! a snapshot older than its RPO, or a drill slower than the RTO target,
//! fails it; a kubernetes snapshot without its inventory fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use lifeboat::backup::SnapshotBuilder;
use lifeboat::backup::folders::Folder;
use lifeboat::backup::stream::StreamChunking;
use lifeboat::drill::{DrillJob, DrillSettings};
use lifeboat::sources::drill_job;
use lifeboat::sources::volumes::MANIFEST_FILE;
use lifeboat_tests::cli::{
    Installation, Outcome, Rng, flip_bit, object_key, objects, run, write_file,
};
use lifeboat_tests::etcd::{EtcdServer, put_all};
use lifeboat_tests::postgres::PostgresServer;
use quick_xml::events::Event;
use serde_json::Value;

/// Runs `lifeboat drill --config lifeboat.toml -i restore.key` with the
/// three reports in the installation folder, and `args`.
fn drill(installation: &Installation, args: &[&str], env: &[(&str, &str)]) -> Result<Outcome> {
    let mut command = installation.drill_command()?;
    command
        .args([
            "--report",
            "drill.json",
            "--junit",
            "drill.xml",
            "--metrics",
            "drill.prom",
        ])
        .args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    run(&mut command)
}

/// The JSON report's jobs by name.
fn job_reports(installation: &Installation) -> Result<BTreeMap<String, Value>> {
    let report: Value = serde_json::from_slice(&std::fs::read(installation.path("drill.json"))?)?;
    let jobs = report["jobs"].as_array().context("no jobs in drill.json")?;
    Ok(jobs
        .iter()
        .map(|j| (j["job"].as_str().unwrap_or_default().to_owned(), j.clone()))
        .collect())
}

/// The JUnit file's test cases: name → failure message (None when passed).
fn junit_cases(path: &Path) -> Result<BTreeMap<String, Option<String>>> {
    let text = std::fs::read_to_string(path)?;
    let mut reader = quick_xml::Reader::from_str(&text);
    let mut cases = BTreeMap::new();
    let mut current = None;
    let mut suites = 0;
    loop {
        match reader
            .read_event()
            .with_context(|| format!("{} is not valid XML", path.display()))?
        {
            Event::Start(e) | Event::Empty(e) => {
                let attribute = |name: &str| -> Result<Option<String>> {
                    for a in e.attributes() {
                        let a = a?;
                        if a.key.as_ref() == name.as_bytes() {
                            return Ok(Some(a.unescape_value()?.into_owned()));
                        }
                    }
                    Ok(None)
                };
                match e.name().as_ref() {
                    b"testsuite" => suites += 1,
                    b"testcase" => {
                        let name = attribute("name")?.context("a testcase without a name")?;
                        ensure!(attribute("time")?.is_some(), "testcase {name} has no time");
                        cases.insert(name.clone(), None);
                        current = Some(name);
                    }
                    b"failure" => {
                        let case = current.clone().context("a failure outside a testcase")?;
                        cases.insert(case, Some(attribute("message")?.unwrap_or_default()));
                    }
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    ensure!(suites == 1, "one testsuite in {}", path.display());
    Ok(cases)
}

/// The Prometheus file's samples: (metric, job label) → value.
fn metrics(path: &Path) -> Result<BTreeMap<(String, String), f64>> {
    let text = std::fs::read_to_string(path)?;
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines)?;
    let mut out = BTreeMap::new();
    for sample in scrape.samples {
        let value = match sample.value {
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
            other => bail!("{} is not a gauge: {other:?}", sample.metric),
        };
        let job = sample.labels.get("job").unwrap_or_default().to_owned();
        out.insert((sample.metric, job), value);
    }
    Ok(out)
}

fn text(path: &Path) -> String {
    path.display().to_string()
}

#[tokio::test]
async fn every_kind_drills_clean_and_the_reports_say_so() -> Result<()> {
    let etcd = EtcdServer::start().await?;
    let mut client = etcd.client().await?;
    let mut rng = Rng::new(5);
    let items: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| (format!("/registry/configmaps/{i:04}"), rng.text(300)))
        .collect();
    put_all(&mut client, items).await?;
    let postgres = PostgresServer::start().await?;
    postgres.psql("postgres", "CREATE DATABASE app")?;
    postgres.psql(
        "app",
        "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 4321); \
         CREATE TABLE empty (x text)",
    )?;

    let installation = Installation::local()?;
    let share = installation.path("share");
    write_file(&share.join("big.bin"), &rng.bytes(2 << 20))?;
    write_file(&share.join("docs/readme.txt"), &rng.text(5_000))?;
    let talos = installation.path("talos");
    write_file(
        &talos.join("controlplane.yaml"),
        b"version: v1alpha1\nmachine:\n  type: controlplane\n",
    )?;
    write_file(
        &talos.join("talosconfig"),
        b"context: home\ncontexts:\n  home: {}\n",
    )?;
    std::fs::write(installation.path("pg.pass"), postgres.superuser_password())?;
    let jobs_config = [
        (
            "share",
            format!("{{ kind = \"directory\", paths = [{:?}] }}", text(&share)),
        ),
        (
            "etcd",
            format!(
                "{{ kind = \"etcd\", endpoints = [{:?}], timeout = \"20s\" }}",
                etcd.url()
            ),
        ),
        (
            "databases",
            format!(
                "{{ kind = \"postgres\", dsn = {:?}, databases = [\"app\"], password_file = \"pg.pass\", pg_dump = {:?} }}",
                postgres.superuser_dsn("postgres"),
                text(&postgres.bin("pg_dump"))
            ),
        ),
        (
            "talos",
            format!("{{ kind = \"talos-config\", dir = {:?} }}", text(&talos)),
        ),
    ];
    let jobs_ref: Vec<(&str, &str)> = jobs_config.iter().map(|(n, s)| (*n, s.as_str())).collect();
    installation.write_config(&[], &jobs_ref)?;
    for (name, _) in &jobs_config {
        installation.backup(name)?;
    }

    let password = postgres.superuser_password().to_owned();
    let url = postgres.superuser_dsn("postgres");
    let bin = text(postgres.bin_dir());
    let outcome = drill(
        &installation,
        &["--pg-url", &url, "--pg-bin", &bin, "--rto-target", "10m"],
        &[("PGPASSWORD", password.as_str())],
    )?
    .ok()?;
    ensure!(
        outcome.stdout.contains("RPO AGE") && outcome.stdout.contains("4 of 4 job(s) passed"),
        "the table shows every job passed:\n{}",
        outcome.output()
    );
    let jobs = job_reports(&installation)?;
    ensure!(jobs.len() == 4, "{jobs:#?}");
    for (name, job) in &jobs {
        ensure!(
            job["failures"].as_array().is_some_and(Vec::is_empty)
                && job["rto_seconds"].as_f64().is_some_and(|s| s > 0.0)
                && job["rpo_seconds"].as_f64().is_some_and(|s| s >= 0.0)
                && job["rpo_breached"] == false
                // lifeboat's own memory: more than its code, less than a
                // restore's budget (a few small files here).
                && job["peak_rss_bytes"]
                    .as_u64()
                    .is_some_and(|b| (4 << 20..100 << 20).contains(&b)),
            "{name} passed with measured RTO, RPO and memory: {job:#}"
        );
    }
    let steps = |job: &str| -> String { jobs[job]["steps"].to_string() };
    ensure!(
        steps("etcd").contains("start etcd") && steps("etcd").contains("300 keys"),
        "the etcd drill started etcd and counted the keys: {}",
        steps("etcd")
    );
    ensure!(
        steps("databases").contains("4321 rows"),
        "the postgres drill counted the restored rows: {}",
        steps("databases")
    );
    ensure!(
        steps("share").contains("verify hashes") && steps("talos").contains("parse YAML"),
        "{jobs:#?}"
    );
    let leftover = postgres.psql(
        "postgres",
        "SELECT count(*) FROM pg_database WHERE datname LIKE 'lifeboat_drill_%'",
    )?;
    ensure!(
        leftover.trim() == "0",
        "scratch databases are dropped: {leftover}"
    );

    let cases = junit_cases(&installation.path("drill.xml"))?;
    ensure!(
        cases.len() == 4 && cases.values().all(Option::is_none),
        "four passing test cases: {cases:?}"
    );
    let samples = metrics(&installation.path("drill.prom"))?;
    for (name, _) in &jobs_config {
        let job = (*name).to_owned();
        ensure!(
            samples.get(&("lifeboat_drill_success".into(), job.clone())) == Some(&1.0)
                && samples.contains_key(&("lifeboat_drill_rto_seconds".into(), job.clone()))
                && samples.contains_key(&("lifeboat_drill_rpo_seconds".into(), job)),
            "metrics for {name}: {samples:?}"
        );
    }
    ensure!(
        samples
            .get(&(
                "lifeboat_drill_last_run_timestamp_seconds".into(),
                String::new()
            ))
            .is_some_and(|t| *t > 1.7e9),
        "{samples:?}"
    );
    Ok(())
}

#[test]
fn a_flipped_bit_fails_the_drill_naming_the_files() -> Result<()> {
    let installation = Installation::local()?;
    let (restore_key, service_key) = (installation.restore_key(), installation.service_key());
    let mut init = vec!["--pack-size-mib".to_owned(), "1".to_owned()];
    for (flag, path) in [
        ("--restore-identity", &restore_key),
        ("--service-identity", &service_key),
    ] {
        init.extend([flag.to_owned(), text(path)]);
    }
    installation.lifeboat_repo("init", &init)?.ok()?;
    let src = installation.path("src");
    let mut rng = Rng::new(9);
    for i in 0..6 {
        write_file(&src.join(format!("file-{i}.bin")), &rng.bytes(900_000))?;
    }
    let source = format!("{{ kind = \"directory\", paths = [{:?}] }}", text(&src));
    installation.write_config(&[], &[("home", &source)])?;
    installation.backup("home")?;
    drill(&installation, &[], &[])?.ok()?;

    let repo = installation.repo_dir()?;
    let mut packs = objects(&repo, "data")?;
    packs.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)));
    let pack = packs.first().context("no pack")?;
    let size = std::fs::metadata(pack)?.len();
    flip_bit(pack, size / 2, 4)?;
    println!("damaged {}", object_key(&repo, pack));

    let failed = drill(&installation, &[], &[])?.failed()?;
    let jobs = job_reports(&installation)?;
    let failures = jobs["home"]["failures"].to_string();
    let named: Vec<String> = (0..6)
        .map(|i| format!("file-{i}.bin"))
        .filter(|name| failures.contains(name.as_str()))
        .collect();
    ensure!(
        !named.is_empty() && failures.contains(&text(&src)),
        "the drill names the damaged files under {}: {failures}\n{}",
        src.display(),
        failed.output()
    );
    ensure!(failed.stdout.contains("FAIL home"), "{}", failed.output());
    let cases = junit_cases(&installation.path("drill.xml"))?;
    ensure!(
        cases["home"]
            .as_deref()
            .is_some_and(|m| m.contains("file-")),
        "the JUnit failure names the files: {cases:?}"
    );
    let samples = metrics(&installation.path("drill.prom"))?;
    ensure!(samples[&("lifeboat_drill_success".into(), "home".into())] == 0.0);
    Ok(())
}

#[test]
fn an_old_snapshot_breaches_the_rpo_and_a_slow_drill_the_rto() -> Result<()> {
    let installation = Installation::local()?;
    let (fresh, stale) = (installation.path("fresh"), installation.path("stale"));
    write_file(&fresh.join("a.txt"), b"fresh")?;
    write_file(&stale.join("b.txt"), b"stale")?;
    let stale_source = format!(
        "{{ kind = \"directory\", paths = [{:?}] }}\nrpo = \"1s\"",
        text(&stale)
    );
    let fresh_source = format!(
        "{{ kind = \"directory\", paths = [{:?}] }}\nrpo = \"1h\"",
        text(&fresh)
    );
    installation.write_config(&[], &[("stale", &stale_source), ("fresh", &fresh_source)])?;
    installation.backup("stale")?;
    installation.backup("fresh")?;
    std::thread::sleep(Duration::from_millis(1500));

    let failed = drill(&installation, &[], &[])?.failed()?;
    let jobs = job_reports(&installation)?;
    ensure!(
        jobs["stale"]["rpo_breached"] == true
            && jobs["stale"]["failures"]
                .to_string()
                .contains("RPO breached")
            && jobs["stale"]["rpo_seconds"]
                .as_f64()
                .is_some_and(|s| s > 1.0),
        "the stale job breaches its 1 s RPO: {:#}\n{}",
        jobs["stale"],
        failed.output()
    );
    ensure!(
        jobs["fresh"]["failures"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "the fresh job passes: {:#}",
        jobs["fresh"]
    );
    let samples = metrics(&installation.path("drill.prom"))?;
    ensure!(
        samples[&("lifeboat_drill_success".into(), "stale".into())] == 0.0
            && samples[&("lifeboat_drill_success".into(), "fresh".into())] == 1.0
            && samples[&("lifeboat_drill_rpo_seconds".into(), "stale".into())] > 1.0
    );

    let slow = drill(
        &installation,
        &["--job", "fresh", "--rto-target", "1ns"],
        &[],
    )?
    .failed()?;
    let jobs_now = job_reports(&installation)?;
    ensure!(
        jobs_now.len() == 1
            && jobs_now["fresh"]["failures"]
                .to_string()
                .contains("RTO target breached"),
        "--job picks one job and a 1 ns RTO target is breached: {jobs_now:#?}\n{}",
        slow.output()
    );
    let unknown = drill(&installation, &["--job", "nosuch"], &[])?.failed()?;
    ensure!(
        unknown.stderr.contains("nosuch") && unknown.stderr.contains("fresh"),
        "{}",
        unknown.output()
    );
    Ok(())
}

#[tokio::test]
async fn volumes_verify_and_a_kubernetes_snapshot_without_inventory_fails() -> Result<()> {
    let installation = Installation::local()?;
    let data = installation.path("var/openebs/local/pvc-7");
    write_file(&data.join("db/data.bin"), &Rng::new(3).bytes(400_000))?;
    let source = format!("{{ kind = \"directory\", paths = [{:?}] }}", text(&data));
    installation.write_config(&[], &[("seed", &source)])?;
    installation.backup("seed")?;
    let repo =
        lifeboat_tests::repo::unlock(installation.url(), &installation.service_key()).await?;

    let mut volumes = SnapshotBuilder::new(&repo, "volumes", "volumes");
    volumes
        .add_folders(
            &[Folder {
                path: data.clone(),
                exclude: Vec::new(),
            }],
            None,
        )
        .await?;
    let manifest = serde_json::json!({"volumes": [{"namespace": "db", "pvc": "data", "pv": "pvc-7",
        "storage_class": "openebs-hostpath", "capacity": "5Gi", "access_modes": ["ReadWriteOnce"],
        "node": "worker-1", "host_path": text(&data)}], "skipped": []});
    volumes
        .add_stream(
            MANIFEST_FILE,
            std::io::Cursor::new(serde_json::to_vec(&manifest)?),
            StreamChunking::Content,
        )
        .await?;
    volumes.commit(Value::Null).await?;
    let mut objects_snapshot = SnapshotBuilder::new(&repo, "objects", "kubernetes");
    objects_snapshot
        .add_stream(
            "configmap-x.yaml",
            std::io::Cursor::new(b"apiVersion: v1\nkind: ConfigMap\n".to_vec()),
            StreamChunking::Content,
        )
        .await?;
    objects_snapshot.commit(Value::Null).await?;

    let reader_repo = lifeboat_tests::repo::unlock(installation.url(), &installation.restore_key())
        .await?
        .into_restore("drill test")?;
    let reader = reader_repo.reader();
    let snapshots = reader_repo.snapshots().await?;
    let scratch = tempfile::tempdir()?;
    let settings = DrillSettings {
        scratch: scratch.path().to_owned(),
        pg_url: None,
        pg_bin: None,
        pg_container: None,
        docker_socket: lifeboat::docker::default_socket(),
        rto_target: None,
        etcd_wait: Duration::from_secs(30),
        kube_dry_run: None,
        measure_memory: false,
    };
    let job = |name: &str| DrillJob {
        name: name.into(),
        rpo: Duration::from_secs(3600),
    };
    let now = chrono::Utc::now();
    let volume_report = drill_job(&reader, &snapshots, &job("volumes"), &settings, now).await;
    ensure!(
        volume_report.passed(),
        "the volumes snapshot drills clean: {volume_report:#?}"
    );
    ensure!(
        serde_json::to_string(&volume_report.steps)?.contains("1 folder(s)"),
        "{volume_report:#?}"
    );
    let objects_report = drill_job(&reader, &snapshots, &job("objects"), &settings, now).await;
    ensure!(
        !objects_report.passed()
            && objects_report
                .failures
                .iter()
                .any(|f| f.contains("lifeboat-inventory.json")),
        "a kubernetes snapshot is checked against its inventory: {objects_report:#?}"
    );
    let scratch_left: Vec<PathBuf> = std::fs::read_dir(scratch.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    ensure!(
        scratch_left.is_empty(),
        "job scratch folders are removed: {scratch_left:?}"
    );
    Ok(())
}
