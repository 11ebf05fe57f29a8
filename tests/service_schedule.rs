//! `lifeboatd serve` running jobs on schedules of a few seconds, as a real
//! process over a local repository:
//!
//! - jobs run on their schedules, never overlap themselves, never exceed
//!   `max_concurrent_jobs`, record every run, and apply their retention;
//! - a restart keeps the history, and makes up a run missed while the
//!   service was down when waiting would break the job's RPO (and only
//!   then);
//! - prune running every two seconds next to backups of data that comes
//!   and goes never loses a chunk: `lifeboat check --read-data` with the
//!   restore key passes, and the latest snapshot restores the source.
//!
//! Timings are generous (minutes) and every wait polls, so a busy machine
//! makes the tests slower, not flaky.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use chrono::Utc;
use lifeboat::state::{History, RunRecord, RunResult};
use lifeboat_tests::cli::{Installation, Rng, assert_same_tree, describe, write_file};
use lifeboat_tests::service::{Lifeboatd, write_service_config, write_sparse};
use serde_json::Value;

const MIB: usize = 1024 * 1024;
const WAIT: Duration = Duration::from_secs(300);

/// Every run the history holds, oldest first.
fn history(installation: &Installation) -> Result<Vec<RunRecord>> {
    let history = History::open(&installation.path("state"))?;
    let mut runs = history.recent(None, 10_000)?;
    runs.reverse();
    Ok(runs)
}

/// The snapshots of `job` as `lifeboat snapshots --json` lists them.
fn snapshots(installation: &Installation, job: &str) -> Result<Vec<Value>> {
    let key = installation.restore_key().display().to_string();
    let listed = installation
        .lifeboat_repo("snapshots", &["-i", &key, "--job", job, "--json"])?
        .ok()?
        .json()?;
    listed
        .as_array()
        .cloned()
        .context("snapshots --json printed no list")
}

fn check_read_data(installation: &Installation) -> Result<()> {
    let report = installation
        .check(&installation.restore_key(), &["--read-data"])?
        .ok()?
        .json()?;
    ensure!(
        report["problems"].as_array().is_some_and(Vec::is_empty),
        "check --read-data found problems: {report:#}"
    );
    Ok(())
}

#[test]
fn scheduled_jobs_run_without_overlap_record_history_and_apply_retention() -> Result<()> {
    let installation = Installation::local()?;
    let mut rng = Rng::new(0x5e41_0001);
    // The first run of "slow" reads 2 GiB (of a sparse file), seconds
    // longer than its one-second schedule: its ticks meanwhile must be
    // skipped, not stacked.
    write_sparse(&installation.path("slow/zeros.img"), 2 << 30)?;
    for i in 0..6 {
        write_file(
            &installation.path(format!("slow/part-{i}.bin")),
            &rng.bytes(4 * MIB),
        )?;
    }
    write_file(&installation.path("quick/notes.txt"), &rng.text(20_000))?;
    write_service_config(
        &installation,
        r#"[service]
max_concurrent_jobs = 1

[[job]]
name = "slow"
source = { kind = "directory", paths = ["slow"] }
schedule = "* * * * * *"
rpo = "1h"

[[job]]
name = "quick"
source = { kind = "directory", paths = ["quick"] }
schedule = "*/2 * * * * *"
rpo = "1h"
retention = { keep_last = 2 }
"#,
    )?;
    let mut service = Lifeboatd::start(&installation)?;
    service.wait_for("5 runs of quick and 3 of slow", WAIT, |s| {
        let quick = s.runs_with("quick", "success")?.len();
        let slow = s.runs_with("slow", "success")?.len();
        Ok((quick >= 5 && slow >= 3).then_some(()))
    })?;
    let exit = service.terminate()?;
    ensure!(
        exit.status.success(),
        "lifeboatd exited with {}\n{}",
        exit.status,
        exit.log
    );
    ensure!(
        exit.log.contains("a scheduled run is skipped"),
        "ticks during a run are skipped and logged:\n{}",
        exit.log
    );

    let runs = history(&installation)?;
    let failed: Vec<_> = runs
        .iter()
        .filter(|r| r.result != RunResult::Success)
        .collect();
    ensure!(failed.is_empty(), "every run succeeds: {failed:#?}");
    // One slot: no two runs of any job overlap in time.
    for pair in runs.windows(2) {
        let ended = pair[0].ended.context("a finished run has an end")?;
        ensure!(
            pair[1].started >= ended,
            "runs overlap with max_concurrent_jobs = 1:\n{:#?}",
            pair
        );
    }
    for run in &runs {
        ensure!(
            run.snapshot.is_some() && run.files >= 1 && run.ended >= Some(run.started),
            "a successful backup records its snapshot, files and times: {run:#?}"
        );
        ensure!(
            ["schedule", "make-up"].contains(&run.trigger.as_str()),
            "runs are scheduled, or made up at the first start: {run:#?}"
        );
    }
    let slow_runs: Vec<_> = runs.iter().filter(|r| r.job == "slow").collect();
    ensure!(
        slow_runs[0].bytes_read >= (2 << 30) + 24 * MIB as u64 && slow_runs[0].bytes_stored > 0,
        "the first slow run reads and stores everything: {:#?}",
        slow_runs[0]
    );
    ensure!(
        slow_runs
            .iter()
            .skip(1)
            .all(|r| r.dedup_ratio.is_some_and(|d| d > 0.99)),
        "later slow runs store nothing new: {slow_runs:#?}"
    );

    // Retention: quick keeps its two newest; slow (no retention) keeps all.
    let quick = snapshots(&installation, "quick")?;
    ensure!(
        quick.len() == 2,
        "keep_last = 2 leaves two snapshots: {quick:#?}"
    );
    let forgotten: u64 = runs
        .iter()
        .filter(|r| r.job == "quick")
        .map(|r| r.forgotten)
        .sum();
    let quick_runs = runs.iter().filter(|r| r.job == "quick").count() as u64;
    ensure!(
        forgotten == quick_runs - 2,
        "each quick run past the second forgot one snapshot ({forgotten} of {quick_runs})"
    );
    let newest: BTreeSet<String> = runs
        .iter()
        .filter(|r| r.job == "quick")
        .rev()
        .take(2)
        .filter_map(|r| r.snapshot.clone())
        .collect();
    let kept: BTreeSet<String> = quick
        .iter()
        .filter_map(|s| s["id"].as_str().map(str::to_owned))
        .collect();
    ensure!(
        newest == kept,
        "the two newest runs' snapshots are kept: {newest:?} vs {kept:?}"
    );
    ensure!(
        snapshots(&installation, "slow")?.len() == slow_runs.len(),
        "every slow run's snapshot is kept"
    );
    check_read_data(&installation)
}

#[test]
fn a_restart_keeps_history_and_makes_up_a_missed_run_only_when_the_rpo_needs_it() -> Result<()> {
    let installation = Installation::local()?;
    write_file(&installation.path("data/a.txt"), &Rng::new(7).text(5_000))?;
    let jobs = |schedule: &str| {
        format!(
            r#"[[job]]
name = "tight"
source = {{ kind = "directory", paths = ["data"] }}
schedule = "{schedule}"
rpo = "8s"

[[job]]
name = "relaxed"
source = {{ kind = "directory", paths = ["data"] }}
schedule = "{schedule}"
rpo = "1d"
"#
        )
    };
    write_service_config(&installation, &jobs("*/3 * * * * *"))?;
    let mut service = Lifeboatd::start(&installation)?;
    service.wait_for("both jobs to succeed twice", WAIT, |s| {
        let tight = s.runs_with("tight", "success")?.len();
        let relaxed = s.runs_with("relaxed", "success")?.len();
        Ok((tight >= 2 && relaxed >= 2).then_some(()))
    })?;
    let exit = service.terminate()?;
    ensure!(
        exit.status.success(),
        "lifeboatd exited with {}\n{}",
        exit.status,
        exit.log
    );
    let before = history(&installation)?;

    // Down for a while; then restart with a once-a-minute schedule whose
    // last tick was two seconds ago (missed) and whose next is a minute
    // away: waiting breaks tight's 8 s RPO, not relaxed's day.
    std::thread::sleep(Duration::from_secs(3));
    let second = (Utc::now().timestamp() + 58) % 60;
    write_service_config(&installation, &jobs(&format!("{second} * * * * *")))?;
    let restarted = Utc::now();
    let mut service = Lifeboatd::start(&installation)?;
    let made_up = service.wait_for("tight's make-up run", WAIT, |s| {
        Ok(s.runs_with("tight", "success")?
            .into_iter()
            .find(|r| r["trigger"] == "make-up" && r["id"].as_i64() > before.last().map(|r| r.id)))
    })?;
    let started: chrono::DateTime<Utc> = serde_json::from_value(made_up["started"].clone())?;
    ensure!(
        started - restarted < chrono::Duration::seconds(30),
        "the make-up run starts at once: {made_up:#}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let relaxed_after: Vec<Value> = service
        .runs("relaxed")?
        .into_iter()
        .filter(|r| r["id"].as_i64() > before.last().map(|r| r.id))
        .collect();
    ensure!(
        relaxed_after.is_empty(),
        "relaxed, whose RPO allows waiting, is not made up: {relaxed_after:#?}"
    );
    let exit = service.terminate()?;
    ensure!(
        exit.status.success(),
        "lifeboatd exited with {}\n{}",
        exit.status,
        exit.log
    );
    ensure!(
        exit.log.contains("was missed") && exit.log.contains("beyond its RPO"),
        "the log says why the run was made up:\n{}",
        exit.log
    );

    let after = history(&installation)?;
    ensure!(
        after.len() > before.len() && after[..before.len()] == before[..],
        "the history from before the restart is kept as it was"
    );
    Ok(())
}

/// Makes `dir` hold a random subset of `pool` (each file's name is its
/// index), so content disappears and comes back between backups.
fn shuffle_source(dir: &Path, pool: &[Vec<u8>], rng: &mut Rng) -> Result<()> {
    for (i, content) in pool.iter().enumerate() {
        let path = dir.join(format!("blob-{i}.bin"));
        if rng.below(2) == 0 {
            if !path.exists() {
                write_file(&path, content)?;
            }
        } else if path.exists() {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

#[test]
fn prune_while_backups_run_never_loses_data() -> Result<()> {
    let installation = Installation::local()?;
    let src = installation.path("churn");
    let mut rng = Rng::new(0x5e41_0003);
    let pool: Vec<Vec<u8>> = (0..8).map(|_| rng.bytes(MIB)).collect();
    shuffle_source(&src, &pool, &mut rng)?;
    write_file(&installation.path("steady/base.bin"), &rng.bytes(8 * MIB))?;
    write_service_config(
        &installation,
        r#"[service]
max_concurrent_jobs = 3
shutdown_grace = "2m"

[[job]]
name = "churn"
source = { kind = "directory", paths = ["churn"] }
schedule = "*/2 * * * * *"
rpo = "1h"
retention = { keep_last = 1 }

[[job]]
name = "steady"
source = { kind = "directory", paths = ["steady", "churn"] }
schedule = "*/3 * * * * *"
rpo = "1h"
retention = { keep_last = 1 }

[prune]
schedule = "*/2 * * * * *"
grace = "1s"
"#,
    )?;
    let mut service = Lifeboatd::start(&installation)?;
    // Keep changing the source while backups and prunes run, until prune
    // has deleted packs a few times.
    let deleted = |s: &Lifeboatd| -> Result<u64> {
        Ok(s.runs_with("prune", "success")?
            .iter()
            .filter_map(|r| r["details"]["packs_deleted"].as_u64())
            .sum())
    };
    service.wait_for("prune to delete packs 3 times", WAIT, |s| {
        shuffle_source(&src, &pool, &mut rng)?;
        std::thread::sleep(Duration::from_millis(300));
        let rounds = s
            .runs_with("prune", "success")?
            .iter()
            .filter(|r| r["details"]["packs_deleted"].as_u64() > Some(0))
            .count();
        Ok((rounds >= 3).then_some(()))
    })?;
    ensure!(deleted(&service)? >= 3, "prune deleted packs");
    // A last backup of the final source, started after the last change.
    let last_id = service
        .runs("churn")?
        .first()
        .and_then(|r| r["id"].as_i64());
    service.wait_for("a churn run started after the last change", WAIT, |s| {
        Ok(s.runs_with("churn", "success")?
            .into_iter()
            .filter(|r| r["id"].as_i64() > last_id)
            .nth(1))
    })?;
    let exit = service.terminate()?;
    ensure!(
        exit.status.success(),
        "lifeboatd exited with {}\n{}",
        exit.status,
        exit.log
    );
    let failed: Vec<_> = history(&installation)?
        .into_iter()
        .filter(|r| r.result != RunResult::Success)
        .collect();
    ensure!(
        failed.is_empty(),
        "every backup and prune succeeds: {failed:#?}"
    );

    check_read_data(&installation)?;
    let latest = snapshots(&installation, "churn")?;
    let id = latest
        .last()
        .and_then(|s| s["id"].as_str())
        .context("churn has a snapshot")?;
    let target = installation.path("restored");
    installation
        .restore(
            &installation.restore_key(),
            &format!("{id}:{}", src.display()),
            &target,
        )?
        .ok()?;
    assert_same_tree(&describe(&src)?, &describe(&target)?)
        .context("the latest churn snapshot restores the final source")
}
