//! PostgreSQL servers inside containers, as on the user's Unraid box:
//! `gitea_postgres` and `vaultwarden_postgres`, each reachable only from
//! inside its container. No Docker daemon can run containers here, so the
//! Docker Engine API is the harness's protocol-level stand-in
//! ([`lifeboat_tests::docker`]): real HTTP over a Unix socket, the real
//! exec endpoints and the multiplexed stream, with each exec run as a local
//! process whose environment (`PATH`, `PGHOST`, `PGPORT`) points at a real
//! PostgreSQL server — one per "container".
//!
//! The tests back up both containers, restore one into a recreated
//! database through `pg_restore` inside its container, drill both (scratch
//! databases in the containers the snapshots came from), check that the
//! password never shows on any process's command line, and that a missing
//! socket, an unknown or stopped container and a container without
//! `pg_dump` each fail naming the fix. A last test has `lifeboatd serve`
//! run the drill itself (`[drill]`) and show it on `/metrics`, the status
//! page and `/api/v1/drill`, also after a restart.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use anyhow::{Context, Result, ensure};
use lifeboat_tests::cli::{Installation, Outcome, run};
use lifeboat_tests::docker::DockerEngine;
use lifeboat_tests::postgres::PostgresServer;
use lifeboat_tests::service::{Lifeboatd, write_service_config};
use serde_json::Value;

/// The role both "containers" connect as (their `POSTGRES_USER`).
const ROLE: &str = "lifeboat";

/// Rows by (schema, table).
type Counts = BTreeMap<(String, String), u64>;

/// A server with the superuser [`ROLE`] of `password` and `database`
/// filled with a few tables.
async fn server_with(
    database: &str,
    password: &str,
    rows: u32,
) -> Result<(PostgresServer, Counts)> {
    let server = PostgresServer::start().await?;
    server.create_role(ROLE, password, "SUPERUSER")?;
    server.psql("postgres", &format!("CREATE DATABASE {database}"))?;
    server.psql(
        database,
        &format!(
            "CREATE TABLE items (id int PRIMARY KEY, body text); \
             INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, {rows}) g; \
             CREATE SCHEMA audit; CREATE TABLE audit.log AS SELECT g AS n FROM generate_series(1, 7) g"
        ),
    )?;
    let counts = server.row_counts(database)?;
    Ok((server, counts))
}

/// Watches every process's command line for `secret` until stopped.
struct CommandLineWatch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(u64, Vec<String>)>,
}

impl CommandLineWatch {
    fn start(secret: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let secret = secret.as_bytes().to_vec();
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut scans, mut hits) = (0u64, Vec::new());
            while !stopping.load(Ordering::Relaxed) {
                scans += 1;
                let Ok(entries) = std::fs::read_dir("/proc") else {
                    break;
                };
                for entry in entries.flatten() {
                    let Ok(line) = std::fs::read(entry.path().join("cmdline")) else {
                        continue;
                    };
                    if line.windows(secret.len()).any(|w| w == secret.as_slice()) {
                        hits.push(String::from_utf8_lossy(&line).replace('\0', " "));
                    }
                }
            }
            (scans, hits)
        });
        Self { stop, thread }
    }

    /// Stops and returns how many scans ran and what they found.
    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// A `postgres` source in the container `name` of `engine`.
fn container_source(engine: &DockerEngine, name: &str, extra: &str) -> String {
    format!(
        r#"{{ kind = "postgres", container = "{name}", docker_socket = {:?}, password_file = "pg.pass"{extra} }}"#,
        engine.socket().display().to_string()
    )
}

/// Runs a blocking CLI step without stalling the stand-in's runtime.
fn blocking<T>(step: impl FnOnce() -> Result<T>) -> Result<T> {
    tokio::task::block_in_place(step)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_containers_back_up_restore_and_drill() -> Result<()> {
    let password = format!("c0nt-{:016x}", rand::random::<u64>());
    let (gitea, gitea_rows) = server_with("gitea", &password, 1200).await?;
    let (vaultwarden, vaultwarden_rows) = server_with("vaultwarden", &password, 300).await?;
    let engine = DockerEngine::start().await?;
    for (name, server) in [
        ("gitea_postgres", &gitea),
        ("vaultwarden_postgres", &vaultwarden),
    ] {
        engine.add_container(
            name,
            &DockerEngine::postgres_env(server.bin_dir(), server.port(), ROLE),
        )?;
    }
    let installation = Installation::local()?;
    std::fs::write(installation.path("pg.pass"), format!("{password}\n"))?;
    installation.write_config(
        &[],
        &[
            (
                "gitea-db",
                &container_source(&engine, "gitea_postgres", r#", databases = ["gitea"]"#),
            ),
            (
                "vaultwarden-db",
                &container_source(&engine, "vaultwarden_postgres", ""),
            ),
        ],
    )?;

    let watch = CommandLineWatch::start(&password);
    let backups = blocking(|| {
        Ok((
            installation.backup("gitea-db")?,
            installation.backup("vaultwarden-db")?,
        ))
    });
    let mut scanned = watch.finish();
    let (gitea_report, _) = backups?;
    ensure!(
        gitea_report["warnings"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "a clean dump has no warnings: {gitea_report:#}"
    );

    // What the metadata and the daemon saw.
    let metadata = blocking(|| installation.latest_metadata("gitea-db"))?;
    let gitea_total: u64 = gitea_rows.values().sum();
    ensure!(
        metadata["container"] == "gitea_postgres"
            && metadata["database_count"] == 1
            && metadata["rows"] == gitea_total,
        "gitea-db's metadata names its container and holds {gitea_total} rows: {metadata:#}"
    );
    let metadata = blocking(|| installation.latest_metadata("vaultwarden-db"))?;
    ensure!(
        metadata["container"] == "vaultwarden_postgres" && metadata["database_count"] == 2,
        "vaultwarden-db dumps postgres and vaultwarden: {metadata:#}"
    );
    let execs = engine.execs();
    let programs: Vec<&str> = execs.iter().map(|e| e.cmd[0].as_str()).collect();
    for program in ["pg_dump", "pg_dumpall", "psql"] {
        ensure!(
            programs.contains(&program),
            "{program} ran in a container: {programs:?}"
        );
    }
    for exec in &execs {
        ensure!(
            exec.cmd.iter().all(|arg| !arg.contains(&password)),
            "an exec's command line holds the password: {:?}",
            exec.cmd
        );
        ensure!(
            exec.env.contains(&format!("PGPASSWORD={password}")),
            "the password reaches {} through its environment: {:?}",
            exec.cmd[0],
            exec.env
                .iter()
                .map(|e| e.split('=').next())
                .collect::<Vec<_>>()
        );
    }

    // Restore gitea into its container, into a recreated database.
    gitea.psql("postgres", "DROP DATABASE gitea")?;
    let before = engine.execs().len();
    let socket = engine.socket().display().to_string();
    let staging = installation.path("staging");
    let watch = CommandLineWatch::start(&password);
    let restored = blocking(|| {
        let mut command = installation.restore_command(&installation.restore_key())?;
        command
            .args(["latest:gitea-db", "--pg-container", "gitea_postgres"])
            .args([
                "--docker-socket",
                &socket,
                "--create",
                "--no-globals",
                "--json",
            ])
            .arg("--target")
            .arg(&staging)
            .env("PGPASSWORD", &password);
        run(&mut command)?.ok()
    });
    let restore_scan = watch.finish();
    restored?;
    let counts = gitea.row_counts("gitea")?;
    ensure!(
        counts == gitea_rows,
        "gitea restored in its container holds {counts:?}, not {gitea_rows:?}"
    );
    let restores: Vec<_> = engine.execs()[before..]
        .iter()
        .filter(|e| e.cmd[0] == "pg_restore")
        .cloned()
        .collect();
    ensure!(
        restores.len() == 1
            && restores[0].container == "gitea_postgres"
            && restores[0].attach_stdin
            && restores[0].exit_code == Some(0)
            && !restores[0].cmd.iter().any(|a| a.contains("staging")),
        "pg_restore ran once in gitea_postgres, reading the dump on stdin: {restores:?}"
    );

    // Drill both, each in the container its snapshot came from.
    let before = engine.execs().len();
    let watch = CommandLineWatch::start(&password);
    let drilled = blocking(|| {
        let mut command = installation.drill_command()?;
        command
            .args(["--docker-socket", &socket, "--json"])
            .env("PGPASSWORD", &password);
        run(&mut command)
    });
    let drill_scan = watch.finish();
    let drilled = drilled?;
    let report: Value = drilled.json().with_context(|| drilled.output())?;
    ensure!(
        drilled.status.success() && report["passed"] == true,
        "the drill passes:\n{}",
        drilled.output()
    );
    let jobs = report["jobs"]
        .as_array()
        .context("no jobs in the drill report")?;
    ensure!(jobs.len() == 2, "both jobs were drilled: {report:#}");
    for job in jobs {
        let steps = job["steps"].as_array().map_or(0, Vec::len);
        ensure!(
            job["failures"].as_array().is_some_and(Vec::is_empty) && steps > 3,
            "the drill of {} passes: {job:#}\n{}",
            job["job"],
            drilled.output()
        );
    }
    let drill_execs = &engine.execs()[before..];
    for container in ["gitea_postgres", "vaultwarden_postgres"] {
        ensure!(
            drill_execs
                .iter()
                .any(|e| e.container == container && e.cmd[0] == "pg_restore"),
            "the drill restored in {container}"
        );
    }
    for (server, database) in [(&gitea, "gitea"), (&vaultwarden, "vaultwarden")] {
        let left = server.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'lifeboat_drill_%'",
        )?;
        ensure!(
            left.trim() == "0",
            "the drill dropped its scratch databases beside {database}"
        );
    }
    ensure!(
        vaultwarden.row_counts("vaultwarden")? == vaultwarden_rows,
        "the drill left vaultwarden as it was"
    );

    scanned.0 += restore_scan.0 + drill_scan.0;
    scanned
        .1
        .extend(restore_scan.1.into_iter().chain(drill_scan.1));
    ensure!(
        scanned.0 > 10,
        "the command lines were scanned ({} times)",
        scanned.0
    );
    ensure!(
        scanned.1.is_empty(),
        "the password showed on a command line: {:?}",
        scanned.1
    );
    Ok(())
}

/// Runs the backup of `job` and returns its failed outcome.
fn failing_backup(installation: &Installation, job: &str) -> Result<Outcome> {
    blocking(|| installation.start_backup(job)?.wait()?.failed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_containers_fail_naming_the_fix() -> Result<()> {
    let password = "irrelevant";
    let (server, _) = server_with("gitea", password, 10).await?;
    let engine = DockerEngine::start().await?;
    let env = DockerEngine::postgres_env(server.bin_dir(), server.port(), ROLE);
    engine.add_container("gitea_postgres", &env)?;
    engine.add_container("stopped_postgres", &env)?;
    engine.set_running("stopped_postgres", false);
    // A container without the PostgreSQL client programs on its PATH.
    let bare: Vec<String> = env
        .iter()
        .map(|e| {
            if e.starts_with("PATH=") {
                "PATH=/nonexistent".to_owned()
            } else {
                e.clone()
            }
        })
        .collect();
    engine.add_container("redis", &bare)?;
    let installation = Installation::local()?;
    std::fs::write(installation.path("pg.pass"), password)?;
    let missing_socket = format!(
        r#"{{ kind = "postgres", container = "gitea_postgres", docker_socket = {:?} }}"#,
        installation.path("no-docker.sock").display().to_string()
    );
    installation.write_config(
        &[],
        &[
            ("no-socket", &missing_socket),
            ("unknown", &container_source(&engine, "gitea-db", "")),
            (
                "stopped",
                &container_source(&engine, "stopped_postgres", ""),
            ),
            ("no-pg-dump", &container_source(&engine, "redis", "")),
            (
                "user-and-dsn",
                &container_source(
                    &engine,
                    "gitea_postgres",
                    r#", user = "x", dsn = "host=db""#,
                ),
            ),
        ],
    )?;
    let cases = [
        (
            "no-socket",
            &[
                "cannot reach the Docker Engine API",
                "no-docker.sock",
                "mount the Docker socket",
            ][..],
        ),
        (
            "unknown",
            &[
                "no container \"gitea-db\"",
                "running: gitea_postgres, redis",
                "fix `container`",
            ][..],
        ),
        (
            "stopped",
            &[
                "\"stopped_postgres\" is not running",
                "exited",
                "docker start stopped_postgres",
            ][..],
        ),
        (
            "no-pg-dump",
            &[
                "container \"redis\" has no pg_dump on its PATH",
                "set `pg_dump`",
            ][..],
        ),
        ("user-and-dsn", &["sets both user and dsn"][..]),
    ];
    for (job, expected) in cases {
        let outcome = failing_backup(&installation, job)?;
        for text in expected {
            ensure!(
                outcome.stderr.contains(text),
                "{job}: the error says {text:?}:\n{}",
                outcome.output()
            );
        }
    }
    ensure!(
        engine
            .execs()
            .iter()
            .all(|e| e.container != "stopped_postgres"),
        "nothing ran in the stopped container"
    );
    Ok(())
}

/// `lifeboat_drill_success` by job, from `/metrics`.
fn drill_successes(service: &Lifeboatd) -> Result<BTreeMap<String, f64>> {
    let response = service.get("/metrics")?;
    ensure!(response.status == 200, "GET /metrics: {}", response.status);
    let lines = response.body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines)?;
    let mut found = BTreeMap::new();
    for sample in &scrape.samples {
        if sample.metric == "lifeboat_drill_success"
            && let prometheus_parse::Value::Gauge(value) = sample.value
        {
            {
                found.insert(
                    sample.labels.get("job").unwrap_or_default().to_owned(),
                    value,
                );
            }
        }
    }
    ensure!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "lifeboat_drill_last_run_timestamp_seconds"),
        "the last drill's time is exported"
    );
    Ok(found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_drills_on_its_own_and_exports_the_result() -> Result<()> {
    let password = format!("c0nt-{:016x}", rand::random::<u64>());
    let (server, _) = server_with("gitea", &password, 500).await?;
    // As the official image: its POSTGRES_USER needs no password over the
    // container's socket, so neither the backup nor the drill gives one.
    server.trust(ROLE)?;
    let engine = DockerEngine::start().await?;
    engine.add_container(
        "gitea_postgres",
        &DockerEngine::postgres_env(server.bin_dir(), server.port(), ROLE),
    )?;
    let installation = Installation::local()?;
    std::fs::write(installation.path("su.pass"), server.superuser_password())?;
    let files = installation.path("files");
    std::fs::create_dir_all(&files)?;
    std::fs::write(files.join("notes.txt"), "drilled by the service")?;
    let socket = engine.socket().display().to_string();
    write_service_config(
        &installation,
        &format!(
            r#"[[job]]
name = "files"
source = {{ kind = "directory", paths = [{files:?}] }}

[[job]]
name = "gitea-db"
source = {{ kind = "postgres", container = "gitea_postgres", docker_socket = {socket:?}, databases = ["gitea"] }}

# Dumped over TCP from here: its drill needs a pg_url, which [drill] lacks.
[[job]]
name = "nowhere-db"
source = {{ kind = "postgres", dsn = {dsn:?}, databases = ["gitea"], password_file = "su.pass", pg_dump = {pg_dump:?} }}

[drill]
schedule = "0 0 5 1 1 *"
identity = "keys/restore.key"
docker_socket = {socket:?}
"#,
            files = files.display().to_string(),
            dsn = server.superuser_dsn("postgres"),
            pg_dump = server.bin("pg_dump").display().to_string(),
        ),
    )?;
    let before = engine.execs().len();
    blocking(|| {
        let mut service = Lifeboatd::start(&installation)?;
        for job in ["files", "gitea-db", "nowhere-db"] {
            service.trigger(job)?;
            service.wait_for(
                &format!("a backup of {job}"),
                std::time::Duration::from_secs(120),
                |s| Ok((!s.runs_with(job, "success")?.is_empty()).then_some(())),
            )?;
        }
        service.trigger("drill")?;
        let runs = service.wait_for(
            "the drill to end",
            std::time::Duration::from_secs(180),
            |s| {
                Ok(Some(s.runs("drill")?).filter(|runs| {
                    runs.iter()
                        .any(|r| r["result"] != "running" && !r["ended"].is_null())
                }))
            },
        )?;
        ensure!(
            runs[0]["result"] == "failure"
                && runs[0]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("nowhere-db") && !e.contains("gitea-db:")),
            "the drill run fails for nowhere-db alone: {runs:#?}"
        );
        let report = service.get_json("/api/v1/drill")?;
        let jobs = report["jobs"].as_array().context("jobs in /api/v1/drill")?;
        ensure!(
            jobs.len() == 3 && report["passed"] == false,
            "three jobs drilled: {report:#}"
        );
        let successes = drill_successes(&service)?;
        let expected: BTreeMap<String, f64> =
            [("files", 1.0), ("gitea-db", 1.0), ("nowhere-db", 0.0)]
                .into_iter()
                .map(|(job, v)| (job.to_owned(), v))
                .collect();
        ensure!(
            successes == expected,
            "lifeboat_drill_success {successes:?}"
        );
        let page = service.get("/")?.body;
        ensure!(
            page.contains("Restore drill")
                && page.contains("FAILED")
                && page.contains("not verified"),
            "the status page shows the drill and its failure"
        );
        service.terminate()?;

        // A restarted service still exports the last drill.
        let service = Lifeboatd::start(&installation)?;
        let successes = drill_successes(&service)?;
        ensure!(successes == expected, "after a restart: {successes:?}");
        service.terminate()?;
        Ok(())
    })?;
    ensure!(
        engine.execs()[before..]
            .iter()
            .any(|e| e.container == "gitea_postgres" && e.cmd[0] == "pg_restore"),
        "the service's drill restored gitea in its container"
    );
    ensure!(
        !installation.path("state/drill-scratch").exists(),
        "the drill's scratch folder is removed"
    );
    Ok(())
}
