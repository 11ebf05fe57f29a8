//! Point-in-time recovery against a real PostgreSQL server: lifeboatd
//! archives the WAL (its receiver streaming with `pg_receivewal` from a
//! replication slot, a run every two seconds storing it, base backups
//! every 20 s) while a writer
//! commits one row per transaction; the server is crashed (`SIGQUIT`, as
//! `pg_ctl stop -m immediate`) and lifeboatd is killed (`SIGKILL`, its
//! `pg_receivewal` left running) at random moments, and both come back.
//! Then `lifeboat restore --pitr` rebuilds a data directory for three
//! points in time, a named restore point and `latest`; each, started as a
//! server, must hold exactly the rows committed before its point. The
//! server restored to `latest` is promoted (while the old one went on a
//! little, so that the archive holds WAL past the fork) and archived on:
//! the archive follows its timeline switch without a gap or a new base
//! backup, and a recovery replays across the switch, without the rows of
//! the abandoned branch. The drill of the archive
//! passes; with the snapshots holding one segment deleted, the drill and
//! the restore fail and name that segment.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use lifeboat_tests::cli::{Installation, run};
use lifeboat_tests::postgres::PostgresServer;
use lifeboat_tests::service::{Lifeboatd, write_service_config};
use rand::Rng;
use serde_json::Value;

/// The archiving role's password.
const ARCHIVER_PASSWORD: &str = "wal-archiver-pass";
/// The job.
const JOB: &str = "db-wal";
/// The job's replication slot setting.
const SLOT: &str = ", slot = \"lifeboat\"";
/// Rows written in all.
const ROWS: u64 = 420;
/// The rows committed before the named restore point.
const NAMED_ROWS: u64 = 250;
/// The restore point's name.
const RESTORE_POINT: &str = "before-the-upgrade";

/// Inserts row `id` in its own transaction (committed before psql
/// returns, even with the harness's `synchronous_commit=off`) and returns
/// the server's clock right after the commit.
fn insert(server: &PostgresServer, id: u64) -> Result<String> {
    let output = server
        .client("psql")
        .args(["-X", "-q", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=1"])
        .arg(format!("--dbname={}", server.superuser_dsn("app")))
        .args(["-c", "SET synchronous_commit = on"])
        .args([
            "-c",
            &format!("INSERT INTO events VALUES ({id}, clock_timestamp())"),
        ])
        .args(["-c", "SELECT clock_timestamp()"])
        .output()
        .context("running psql")?;
    ensure!(
        output.status.success(),
        "insert {id}: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        server.log_tail()
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The job's snapshots (`lifeboat snapshots --json`, service key), oldest first.
fn snapshots(installation: &Installation) -> Result<Vec<Value>> {
    let key = installation.service_key().display().to_string();
    let list = installation
        .lifeboat_repo("snapshots", &["-i", key.as_str(), "--job", JOB, "--json"])?
        .ok()?
        .json()?;
    Ok(list.as_array().cloned().unwrap_or_default())
}

/// Restores the archive to `target` into `dir`; returns the outcome.
fn restore_pitr(
    installation: &Installation,
    target: &str,
    dir: &Path,
) -> Result<lifeboat_tests::cli::Outcome> {
    let mut command = installation.restore_command(&installation.restore_key())?;
    command
        .arg(format!("latest:{JOB}"))
        .arg("--pitr")
        .arg(target)
        .arg("--target")
        .arg(dir)
        .arg("--json");
    run(&mut command)
}

/// Writes the configuration: the WAL job archiving `server` (a run every
/// two seconds, a base backup every `base_every`, and the `extra` source
/// settings).
fn write_job(
    installation: &Installation,
    server: &PostgresServer,
    base_every: &str,
    extra: &str,
) -> Result<()> {
    write_service_config(
        installation,
        &format!(
            "[[job]]\nname = \"{JOB}\"\nschedule = \"*/2 * * * * *\"\nrpo = \"1m\"\n\
             source = {{ kind = \"postgres-wal\", dsn = {:?}, password_file = \"archiver.pass\", \
             bin = {:?}, base_backup_every = {base_every:?}{extra} }}\n",
            server.dsn("archiver", "postgres"),
            server.bin_dir().display().to_string(),
        ),
    )
}

/// `(count, max id)` of the events a restored data directory holds.
async fn restored_rows(server: &PostgresServer, dir: &Path) -> Result<(u64, u64)> {
    promoted_rows(&server.start_restored(dir).await?)
}

/// `(count, max id)` of the events `server` holds.
fn promoted_rows(server: &PostgresServer) -> Result<(u64, u64)> {
    let text = server.psql(
        "app",
        "SELECT count(*) || ' ' || coalesce(max(id), 0) FROM events",
    )?;
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(count)), Some(Ok(max))) => Ok((count, max)),
        _ => bail!("unexpected count: {text:?}"),
    }
}

#[tokio::test]
async fn archived_wal_recovers_exactly_the_rows_committed_before_each_point() -> Result<()> {
    let mut server = PostgresServer::start().await?;
    let installation = Installation::local()?;
    server.create_role("archiver", ARCHIVER_PASSWORD, "REPLICATION")?;
    server.psql("postgres", "CREATE DATABASE app")?;
    server.psql(
        "app",
        "CREATE TABLE events (id bigint PRIMARY KEY, at timestamptz NOT NULL)",
    )?;
    std::fs::write(installation.path("archiver.pass"), ARCHIVER_PASSWORD)?;
    write_job(&installation, &server, "20s", SLOT)?;
    let mut service = Lifeboatd::start(&installation)?;
    service.wait_for("the first snapshot", Duration::from_secs(60), |_| {
        Ok((!snapshots(&installation)?.is_empty()).then_some(()))
    })?;

    // Crashes and kills at random moments, targets at fixed rows.
    let mut rng = rand::thread_rng();
    let crashes = [rng.gen_range(60..120), rng.gen_range(260..300)];
    let kills = [rng.gen_range(130..200), rng.gen_range(310..360)];
    let target_rows = [100_u64, 250, 390];
    let mut targets = BTreeMap::new();
    let mut last_commit = String::new();
    for id in 1..=ROWS {
        last_commit = insert(&server, id)?;
        if target_rows.contains(&id) {
            targets.insert(id, last_commit.clone());
            if id == NAMED_ROWS {
                server.psql(
                    "postgres",
                    &format!("SELECT pg_create_restore_point('{RESTORE_POINT}')"),
                )?;
            }
            // Commits after a target are a second later: no clock tie.
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        if crashes.contains(&id) {
            server.crash_and_restart().await?;
        }
        if kills.contains(&id) {
            drop(service);
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..2000))).await;
            service = Lifeboatd::start(&installation)?;
        }
        if id % 97 == 0 {
            // A checkpoint lets the server recycle WAL the archive must
            // already have.
            server.psql("postgres", "SELECT pg_switch_wal(); CHECKPOINT")?;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..25))).await;
    }
    // A few complete segments (and a second table, 4 rows now and 3 more
    // later, which the drill counts too).
    server.psql("postgres", "CREATE TABLE filler (n int)")?;
    for n in 0..4 {
        server.psql("postgres", &format!("INSERT INTO filler VALUES ({n})"))?;
        server.psql("postgres", "SELECT pg_switch_wal()")?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let done = chrono::Utc::now();
    let metrics = service.get("/metrics")?.body;
    ensure!(
        metrics.contains(&format!("lifeboat_wal_receiver_up{{job=\"{JOB}\"}} 1")),
        "the receiver streams:\n{metrics}\n--- log ---\n{}",
        service.log()
    );
    service.wait_for(
        "a run after the last commit",
        Duration::from_secs(60),
        |_| {
            let newest = snapshots(&installation)?.last().cloned();
            let time = newest
                .and_then(|s| s["time"].as_str().map(str::to_owned))
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok());
            Ok(time
                .filter(|t| *t > done + chrono::Duration::seconds(1))
                .map(|_| ()))
        },
    )?;
    let exit = service.terminate()?;
    ensure!(
        exit.status.success(),
        "lifeboatd stops cleanly:\n{}",
        exit.log
    );
    // A last run without the service: it catches up to the server's
    // position and takes no base backup, so the archive ends where the
    // spool does (a server restored from it continues that timeline).
    write_job(&installation, &server, "1h", SLOT)?;
    installation.backup(JOB)?;
    // Runs that add only to the segment being written replace the run
    // before them when it held nothing else: the archive keeps about a
    // snapshot per completed segment, not one per run. (The checkpoint
    // writes into a new segment; the first run stores its start and the
    // segment before, the second the start alone.)
    server.psql("postgres", "CHECKPOINT")?;
    installation.backup(JOB)?;
    installation.backup(JOB)?;
    let before = snapshots(&installation)?.len();
    installation.backup(JOB)?;
    let after = snapshots(&installation)?.len();
    ensure!(
        after == before,
        "a run storing only the grown partial segment replaces the one before: {before} snapshots, then {after}"
    );
    let all = snapshots(&installation)?;
    let bases = all
        .iter()
        .filter(|s| !s["metadata"]["base_backup"].is_null())
        .count();
    ensure!(
        bases >= 2,
        "base backups every 20 s: {bases} in {} snapshots",
        all.len()
    );

    let scratch = tempfile::tempdir()?;
    for (rows, time) in &targets {
        let dir = scratch.path().join(format!("at-{rows}"));
        let outcome = restore_pitr(&installation, time, &dir)?
            .ok()
            .with_context(|| archive_summary(&all))?;
        let restored = restored_rows(&server, &dir)
            .await
            .with_context(|| outcome.stdout.clone())?;
        ensure!(
            restored == (*rows, *rows),
            "recovered to {time}: expected exactly rows 1..={rows}, found (count, max) {restored:?}\n{}",
            outcome.stdout
        );
    }
    let named = scratch.path().join("named");
    let outcome = restore_pitr(&installation, &format!("name:{RESTORE_POINT}"), &named)?.ok()?;
    ensure!(
        restored_rows(&server, &named).await? == (NAMED_ROWS, NAMED_ROWS),
        "recovered to the restore point made after row {NAMED_ROWS}:\n{}",
        outcome.stdout
    );
    let latest = scratch.path().join("latest");
    restore_pitr(&installation, "latest", &latest)?.ok()?;
    // The old server goes on a little and the spool receives it: the
    // restored server forks before the end of the spool's WAL, as after a
    // recovery to an earlier point.
    server.psql(
        "app",
        "INSERT INTO events SELECT g, now() FROM generate_series(10001, 10005) g",
    )?;
    installation.backup(JOB)?;
    let promoted = server.start_restored(&latest).await?;
    ensure!(
        promoted_rows(&promoted)? == (ROWS, ROWS),
        "latest holds every committed row (last commit {last_commit})"
    );

    // The restored server is the same cluster on a new timeline: archiving
    // it follows the switch, and the next recovery replays across it.
    drop(server);
    let server = promoted;
    write_job(&installation, &server, "1h", "")?;
    server.psql(
        "app",
        &format!(
            "INSERT INTO events SELECT g, now() FROM generate_series({}, {}) g",
            ROWS + 1,
            ROWS + 30
        ),
    )?;
    server.psql("postgres", "SELECT pg_switch_wal()")?;
    let report = installation
        .backup(JOB)
        .with_context(|| server.log_tail())?;
    // The server refuses to stream the old timeline from where the spool
    // ends, past its switch: the run reads the server's history and
    // resumes on the new timeline where it branched off. No warning, no
    // new base backup, no gap.
    ensure!(
        report["warnings"]
            .as_array()
            .is_none_or(|warnings| warnings.is_empty()),
        "archiving the promoted server follows its switch: {report:#}"
    );
    let metadata = installation.latest_metadata(JOB)?;
    ensure!(
        metadata["last_segment"]
            .as_str()
            .is_some_and(|s| s.starts_with("00000002"))
            && metadata["base_backup"].is_null(),
        "the archive holds timeline 2, continuing from the old base backups: {metadata:#}"
    );
    // Three more runs, each after a completed segment: a segment leaves
    // the spool once a later one is there and a committed snapshot holds
    // it, so the last run lacks the first's, and the gap made below has
    // WAL after it.
    for n in 4..7 {
        // Two transactions: the switch flushes the committed row.
        server.psql("postgres", &format!("INSERT INTO filler VALUES ({n})"))?;
        server.psql("postgres", "SELECT pg_switch_wal()")?;
        installation
            .backup(JOB)
            .with_context(|| server.log_tail())?;
    }
    let across = scratch.path().join("across");
    restore_pitr(&installation, "latest", &across)?.ok()?;
    ensure!(
        restored_rows(&server, &across).await? == (ROWS + 30, ROWS + 30),
        "recovery replays across the timeline switch"
    );
    let rows = ROWS + 30;

    // A census, taken while a writer commits fifty rows a second
    // (the role may now make restore points and read every table), then
    // ten more rows the census does not count.
    server.psql(
        "postgres",
        "GRANT EXECUTE ON FUNCTION pg_create_restore_point(text) TO archiver; \
         GRANT pg_read_all_data TO archiver",
    )?;
    server.psql("app", "CREATE TABLE busy (n bigint)")?;
    write_job(&installation, &server, "1h", ", census_every = \"1h\"")?;
    let report = {
        let writer = BusyWriter::start(&server);
        let report = installation.backup(JOB);
        ensure!(writer.stop()? > 0, "the writer committed during the census");
        report?
    };
    ensure!(
        report["warnings"]
            .as_array()
            .is_none_or(|warnings| warnings.is_empty())
            && !installation.latest_metadata(JOB)?["census"].is_null(),
        "the run takes a census: {report:#}"
    );
    server.psql(
        "app",
        &format!(
            "INSERT INTO events SELECT g, now() FROM generate_series({}, {}) g",
            rows + 1,
            rows + 10
        ),
    )?;
    server.psql("postgres", "SELECT pg_switch_wal()")?;
    installation.backup(JOB)?;
    let busy: u64 = server
        .psql("app", "SELECT count(*) FROM busy")?
        .trim()
        .parse()?;

    // The drill recovers to the census and finds every table as counted
    // then, goes on to the archive's end and reads every table.
    let mut drill = installation.drill_command()?;
    drill
        .args(["--job", JOB, "--json", "--pg-bin"])
        .arg(server.bin_dir());
    let report: Value = run(&mut drill)?.ok()?.json()?;
    let steps = report["jobs"][0]["steps"].to_string();
    ensure!(
        steps.contains("compare every table with the census")
            && steps.contains("3 tables, ")
            && steps.contains("rows, as counted then"),
        "the drill compares the census: {report:#}"
    );
    ensure!(
        steps.contains(&format!("3 tables, {} rows", rows + 10 + 7 + busy)),
        "the drill recovers every row and reads it: {report:#}"
    );

    // One segment lost from the archive: the drill and the restore name it.
    let all = snapshots(&installation)?;
    let missing = lose_a_segment(&installation, &all)?;
    let mut drill = installation.drill_command()?;
    drill
        .args(["--job", JOB, "--json", "--pg-bin"])
        .arg(server.bin_dir());
    let failed = run(&mut drill)?.failed()?;
    ensure!(
        failed.stdout.contains(&missing),
        "the drill names the missing segment {missing}:\n{}",
        failed.stdout
    );
    let refused = restore_pitr(&installation, "latest", &scratch.path().join("gap"))?.failed()?;
    ensure!(
        refused.stderr.contains(&missing),
        "the restore names the missing segment {missing}:\n{}",
        refused.stderr
    );
    Ok(())
}

/// Commits a row into `busy` over and over, each in its own transaction,
/// until stopped.
struct BusyWriter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Result<u64>>,
}

impl BusyWriter {
    fn start(server: &PostgresServer) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut command = server.client("psql");
        command
            .args(["-X", "-q", "-w", "-v", "ON_ERROR_STOP=1"])
            .arg(format!("--dbname={}", server.superuser_dsn("app")))
            .stdin(std::process::Stdio::piped());
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            use std::io::Write;
            let mut psql = command.spawn().context("starting psql")?;
            let mut input = psql.stdin.take().context("psql's stdin")?;
            let mut written = 0;
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                writeln!(input, "INSERT INTO busy VALUES ({written});")?;
                input.flush()?;
                written += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            drop(input);
            ensure!(psql.wait()?.success(), "the busy writer's psql failed");
            Ok(written)
        });
        Self { stop, thread }
    }

    /// Stops it; returns how many rows it sent.
    fn stop(self) -> Result<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the busy writer panicked"))?
    }
}

/// What each snapshot of the archive holds, for failure messages.
fn archive_summary(all: &[Value]) -> String {
    all.iter()
        .map(|s| {
            let m = &s["metadata"];
            format!(
                "{} {} {}..{} ({} complete, partial {}) base {} by {}",
                s["id"]
                    .as_str()
                    .unwrap_or_default()
                    .get(..8)
                    .unwrap_or_default(),
                s["time"],
                m["first_segment"],
                m["last_segment"],
                m["segments"],
                m["partial"],
                m["base_backup"],
                m["received_by"],
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Deletes every snapshot object holding the newest complete segment after
/// the newest base backup's end that the newest snapshot (which holds
/// later WAL) does not hold, and returns the first segment left without
/// a holder.
fn lose_a_segment(installation: &Installation, all: &[Value]) -> Result<String> {
    let restore_key = installation.restore_key().display().to_string();
    let newest_base = all
        .iter()
        .rposition(|s| !s["metadata"]["base_backup"].is_null())
        .context("no base backup")?;
    let end_lsn = all[newest_base]["metadata"]["base_backup"]["end_lsn"]
        .as_str()
        .context("end_lsn")?;
    let base_end_segment = lsn_segment(end_lsn)?;
    let newest = all
        .last()
        .and_then(|s| s["id"].as_str())
        .context("no snapshot")?;
    let mut holders: BTreeMap<u64, (String, Vec<String>)> = BTreeMap::new();
    for snapshot in &all[newest_base + 1..] {
        let id = snapshot["id"].as_str().context("snapshot id")?;
        let listing = installation
            .lifeboat_repo("ls", &["-i", restore_key.as_str(), id, "--json"])?
            .ok()?;
        for line in listing.stdout.lines() {
            let Ok(entry) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let name = entry["path"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches('/');
            let number = (name.len() == 24)
                .then(|| u64::from_str_radix(&name[16..], 16).ok())
                .flatten()
                .filter(|n| *n > base_end_segment);
            if let Some(number) = number {
                let held = holders
                    .entry(number)
                    .or_insert_with(|| (name.to_owned(), Vec::new()));
                held.1.push(id.to_owned());
            }
        }
    }
    let (_, doomed) = holders
        .values()
        .rev()
        .find(|(_, ids)| !ids.iter().any(|id| id == newest))
        .with_context(|| format!("no segment the newest snapshot lacks: {holders:?}"))?;
    let repo = installation.repo_dir()?;
    for id in doomed {
        std::fs::remove_file(repo.join("snapshots").join(id))
            .with_context(|| format!("deleting snapshot {id}"))?;
    }
    // Those snapshots may have held older segments alone too: recovery
    // stops at the first segment left without a holder.
    let lost = holders
        .values()
        .find(|(_, ids)| ids.iter().all(|id| doomed.contains(id)))
        .map(|(name, _)| name.clone())
        .context("no segment lost")?;
    Ok(lost)
}

/// The segment number (low part; the test's WAL stays under 4 GiB) of an LSN.
fn lsn_segment(lsn: &str) -> Result<u64> {
    let (high, low) = lsn.split_once('/').context("an LSN")?;
    ensure!(u64::from_str_radix(high, 16)? == 0, "a small LSN");
    Ok(u64::from_str_radix(low, 16)? / (16 * 1024 * 1024))
}

/// A run without the service against a server that writes nothing: it
/// catches up to the server's position and ends, rather than waiting for
/// WAL past it (pg_receivewal stops only once it has received WAL beyond
/// the position it is given, and an idle server may write none for
/// minutes).
#[tokio::test]
async fn a_run_against_an_idle_server_ends() -> Result<()> {
    let server = PostgresServer::start().await?;
    let installation = Installation::local()?;
    server.create_role("archiver", ARCHIVER_PASSWORD, "REPLICATION")?;
    std::fs::write(installation.path("archiver.pass"), ARCHIVER_PASSWORD)?;
    write_job(&installation, &server, "1h", "")?;
    // The first run takes the base backup. Then WAL the archive lacks; the
    // background writer's last record follows it within 15 s.
    installation.backup(JOB)?;
    server.psql("postgres", "CREATE TABLE written_after (n int)")?;
    let position = || server.psql("postgres", "SELECT pg_current_wal_flush_lsn()");
    // Idle: no WAL for longer than the background writer's 15 s.
    let (mut last, mut since) = (position()?, std::time::Instant::now());
    let waiting = std::time::Instant::now();
    while since.elapsed() < Duration::from_secs(17) {
        ensure!(
            waiting.elapsed() < Duration::from_secs(90),
            "the server kept writing WAL"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = position()?;
        if now != last {
            (last, since) = (now, std::time::Instant::now());
        }
    }
    let idle = last.trim().to_owned();
    let mut running = installation.start_backup(JOB)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while running.is_running()? {
        if std::time::Instant::now() > deadline {
            let outcome = running.kill()?;
            bail!(
                "a run against an idle server still waits after 30 s:\n{}",
                outcome.stderr
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    running.wait()?.ok()?;
    let metadata = installation.latest_metadata(JOB)?;
    ensure!(
        metadata["server_lsn"].as_str() == Some(idle.as_str())
            && metadata["last_segment"].is_string(),
        "the run stored the WAL up to the idle server's position {idle}: {metadata:#}"
    );
    Ok(())
}

#[tokio::test]
async fn a_census_is_drilled_once_a_base_backup_precedes_it() -> Result<()> {
    let server = PostgresServer::start().await?;
    let installation = Installation::local()?;
    server.create_role("archiver", ARCHIVER_PASSWORD, "REPLICATION")?;
    server.psql(
        "postgres",
        "GRANT EXECUTE ON FUNCTION pg_create_restore_point(text) TO archiver; \
         GRANT pg_read_all_data TO archiver; CREATE TABLE counted (n int); \
         INSERT INTO counted VALUES (1), (2)",
    )?;
    std::fs::write(installation.path("archiver.pass"), ARCHIVER_PASSWORD)?;
    let drill_steps = || -> Result<String> {
        let mut drill = installation.drill_command()?;
        drill
            .args(["--job", JOB, "--json", "--pg-bin"])
            .arg(server.bin_dir());
        let report: Value = run(&mut drill)?.ok()?.json()?;
        Ok(report["jobs"][0]["steps"].to_string())
    };
    // The first run takes its census before its base backup, which is
    // the archive's first: no recovery can stop at that census.
    write_job(&installation, &server, "1h", ", census_every = \"1h\"")?;
    installation.backup(JOB)?;
    ensure!(
        !installation.latest_metadata(JOB)?["census"].is_null(),
        "the first run takes a census"
    );
    let steps = drill_steps()?;
    ensure!(
        steps.contains("none a recovery can stop at")
            && !steps.contains("compare every table")
            && steps.contains("1 tables, 2 rows"),
        "the drill leaves a census it cannot reach aside: {steps}"
    );
    // A later census follows the base backup: the drill stops there. (The
    // harness's server commits asynchronously: these rows are flushed at
    // once, so the run's catch-up receives them.)
    server.psql(
        "postgres",
        "SET synchronous_commit = on; INSERT INTO counted VALUES (3)",
    )?;
    write_job(&installation, &server, "1h", ", census_every = \"1s\"")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    installation.backup(JOB)?;
    server.psql(
        "postgres",
        "SET synchronous_commit = on; INSERT INTO counted VALUES (4)",
    )?;
    installation.backup(JOB)?;
    let steps = drill_steps()?;
    ensure!(
        steps.contains("1 tables, 3 rows, as counted then") && steps.contains("1 tables, 4 rows"),
        "the drill compares the census after the base backup: {steps}"
    );

    // A transaction that has written a row and stays open across a census
    // is waited for and then left out: it commits after the restore point.
    let open = OpenTransaction::start(&server, "postgres", "INSERT INTO counted VALUES (5)")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    installation.backup(JOB)?;
    open.commit()?;
    write_job(&installation, &server, "1h", ", census_every = \"1h\"")?;
    installation.backup(JOB)?;
    let steps = drill_steps()?;
    ensure!(
        steps.contains("1 tables, 4 rows, as counted then") && steps.contains("1 tables, 5 rows"),
        "the census leaves the open transaction's row out: {steps}"
    );
    Ok(())
}

/// A transaction that has done a statement and waits, open, to commit.
struct OpenTransaction {
    psql: std::process::Child,
    input: std::process::ChildStdin,
}

impl OpenTransaction {
    /// Opens it and runs `statement` in it; returns once the server lists
    /// it as an idle transaction holding an id.
    fn start(server: &PostgresServer, database: &str, statement: &str) -> Result<Self> {
        use std::io::Write;
        let mut psql = server
            .client("psql")
            .args(["-X", "-q", "-w", "-v", "ON_ERROR_STOP=1"])
            .arg(format!("--dbname={}", server.superuser_dsn(database)))
            .stdin(std::process::Stdio::piped())
            .spawn()
            .context("starting psql")?;
        let mut input = psql.stdin.take().context("psql's stdin")?;
        writeln!(
            input,
            "SET synchronous_commit = on; SET application_name = 'held'; BEGIN; {statement};"
        )?;
        input.flush()?;
        let held = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'held' \
                    AND state = 'idle in transaction' AND backend_xid IS NOT NULL";
        for _ in 0..200 {
            if server.psql("postgres", held)?.trim() == "1" {
                return Ok(Self { psql, input });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!("the open transaction did not start")
    }

    /// Commits it and ends the session.
    fn commit(mut self) -> Result<()> {
        use std::io::Write;
        writeln!(self.input, "COMMIT;")?;
        drop(self.input);
        ensure!(
            self.psql.wait()?.success(),
            "the open transaction's psql failed"
        );
        Ok(())
    }
}
