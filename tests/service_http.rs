//! `lifeboatd serve` seen from outside, over real HTTP on loopback:
//!
//! - `/metrics` parses with a Prometheus text parser, has HELP and TYPE for
//!   every family, counts runs and bytes, and shows an RPO breach;
//! - the API lists jobs, runs, snapshots and tasks, and refuses a trigger
//!   without the bearer token (or with a wrong one);
//! - the status page renders every job with its RPO status;
//! - SIGTERM during a run exits 0: with a short grace period the run is
//!   stopped, with a long one it finishes, and either way the repository
//!   passes `lifeboat check --read-data`;
//! - an invalid job file stops the service from starting, naming the
//!   file, the line and the field.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use lifeboat::state::{History, RunResult};
use lifeboat_tests::cli::{Installation, Rng, write_file};
use lifeboat_tests::service::{Lifeboatd, refused_start, write_service_config, write_sparse};
use prometheus_parse::{Scrape, Value};

const MIB: usize = 1024 * 1024;
const WAIT: Duration = Duration::from_secs(300);

/// The samples of one scrape, by metric name and sorted labels.
struct Metrics {
    scrape: Scrape,
}

impl Metrics {
    fn fetch(service: &Lifeboatd) -> Result<Self> {
        let response = service.get("/metrics")?;
        ensure!(
            response.status == 200,
            "GET /metrics answered {}",
            response.status
        );
        let kind = response.header("content-type").unwrap_or_default();
        ensure!(
            kind.starts_with("text/plain; version=0.0.4"),
            "the Prometheus text format's content type, not {kind:?}"
        );
        let lines = response.body.lines().map(|l| Ok(l.to_owned()));
        Ok(Self {
            scrape: Scrape::parse(lines)?,
        })
    }

    /// The value of `name` with exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: HashMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == name
                    && wanted.len() == s.labels.len()
                    && wanted
                        .iter()
                        .all(|(k, v)| s.labels.get(k) == Some(v.as_str()))
            })
            .map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    }

    fn job(&self, name: &str, job: &str) -> Result<f64> {
        self.value(name, &[("job", job)])
            .with_context(|| format!("no {name}{{job={job:?}}} in /metrics"))
    }
}

#[test]
fn metrics_api_and_status_page_show_every_job_and_an_rpo_breach() -> Result<()> {
    let installation = Installation::local()?;
    let mut rng = Rng::new(0x5e41_0010);
    let fine_bytes = rng.bytes(3 * MIB);
    write_file(&installation.path("fine/data.bin"), &fine_bytes)?;
    write_file(&installation.path("late/notes.txt"), &rng.text(10_000))?;
    write_service_config(
        &installation,
        r#"[service]
rto = "2h"

[[job]]
name = "fine"
source = { kind = "directory", paths = ["fine"] }
rpo = "1h"

[[job]]
name = "late"
source = { kind = "directory", paths = ["late"] }
rpo = "3s"

[[job]]
name = "off"
source = { kind = "directory", paths = ["fine"] }
schedule = "0 0 3 * * *"
enabled = false

[check]
schedule = "0 0 4 * * SUN"
"#,
    )?;
    let started = chrono::Utc::now();
    let mut service = Lifeboatd::start(&installation)?;
    ensure!(service.get("/healthz")?.body.trim() == "ok");
    service.wait_for("/readyz to say ready", WAIT, |s| {
        let ready = s.get("/readyz")?;
        Ok((ready.status == 200 && ready.json()?["repository"] == "reachable").then_some(()))
    })?;

    // Mutating needs the token; reading does not.
    let anonymous = service.post("/api/v1/jobs/fine/run", None)?;
    ensure!(
        anonymous.status == 401,
        "no token: {} {}",
        anonymous.status,
        anonymous.body
    );
    ensure!(
        anonymous
            .header("www-authenticate")
            .is_some_and(|h| h.starts_with("Bearer")),
        "a 401 names the Bearer scheme: {:?}",
        anonymous.headers
    );
    let wrong = "0".repeat(64);
    let forged = service.post("/api/v1/jobs/fine/run", Some(&wrong))?;
    ensure!(
        forged.status == 401,
        "a wrong token: {} {}",
        forged.status,
        forged.body
    );
    let unknown = service.post("/api/v1/jobs/nope/run", None)?;
    ensure!(
        unknown.status == 401,
        "without a token, not even the job's existence is told"
    );
    let token = service.token()?;
    let unknown = service.post("/api/v1/jobs/nope/run", Some(&token))?;
    ensure!(
        unknown.status == 404,
        "an unknown job: {} {}",
        unknown.status,
        unknown.body
    );
    ensure!(
        service.runs("fine")?.is_empty(),
        "refused triggers start nothing"
    );

    service.trigger("fine")?;
    service.trigger("late")?;
    service.wait_for("fine and late to succeed", WAIT, |s| {
        let done = s.runs_with("fine", "success")?.len() + s.runs_with("late", "success")?.len();
        Ok((done == 2).then_some(()))
    })?;
    let metrics = service.wait_for("late's RPO breach in /metrics", WAIT, |s| {
        let metrics = Metrics::fetch(s)?;
        Ok((metrics.job("lifeboat_job_rpo_breached", "late")? == 1.0).then_some(metrics))
    })?;

    for family in [
        "lifeboat_job_last_success_timestamp_seconds",
        "lifeboat_job_last_run_duration_seconds",
        "lifeboat_job_runs_total",
        "lifeboat_job_bytes_read_total",
        "lifeboat_job_bytes_stored_total",
        "lifeboat_job_rpo_seconds",
        "lifeboat_job_rpo_breached",
        "lifeboat_repository_size_bytes",
        "lifeboat_repository_packs",
    ] {
        ensure!(
            metrics.scrape.docs.contains_key(family),
            "no HELP for {family}"
        );
    }
    let runs_total = |job, result| {
        metrics.value(
            "lifeboat_job_runs_total",
            &[("job", job), ("result", result)],
        )
    };
    ensure!(
        runs_total("fine", "success") == Some(1.0) && runs_total("fine", "failure") == Some(0.0)
    );
    ensure!(
        runs_total("off", "success") == Some(0.0),
        "a job with no run counts zero"
    );
    let counter = metrics
        .scrape
        .samples
        .iter()
        .find(|s| s.metric == "lifeboat_job_runs_total")
        .map(|s| matches!(s.value, Value::Counter(_)));
    ensure!(counter == Some(true), "runs_total is typed counter");
    ensure!(metrics.job("lifeboat_job_rpo_breached", "fine")? == 0.0);
    ensure!(
        metrics.job("lifeboat_job_rpo_breached", "off")? == 0.0,
        "disabled jobs never breach"
    );
    ensure!(metrics.job("lifeboat_job_rpo_seconds", "late")? == 3.0);
    ensure!(metrics.job("lifeboat_job_bytes_read_total", "fine")? == fine_bytes.len() as f64);
    ensure!(metrics.job("lifeboat_job_bytes_stored_total", "fine")? > 0.0);
    ensure!(metrics.job("lifeboat_job_last_run_duration_seconds", "fine")? > 0.0);
    let last = metrics.job("lifeboat_job_last_success_timestamp_seconds", "fine")?;
    let now = chrono::Utc::now().timestamp() as f64;
    ensure!(
        (started.timestamp() as f64 - 1.0..=now + 1.0).contains(&last),
        "the last success is from this test: {last}"
    );
    ensure!(
        metrics
            .value("lifeboat_repository_size_bytes", &[])
            .is_some_and(|v| v > 0.0)
    );
    ensure!(
        metrics
            .value("lifeboat_repository_packs", &[])
            .is_some_and(|v| v >= 1.0)
    );
    ensure!(metrics.value("lifeboat_rto_target_seconds", &[]) == Some(7200.0));

    // The JSON API.
    let jobs = service.get_json("/api/v1/jobs")?;
    let state = |name: &str| {
        jobs.as_array()
            .and_then(|list| list.iter().find(|j| j["name"] == name))
            .map(|j| j["rpo"]["state"].clone())
    };
    ensure!(state("fine") == Some("ok".into()), "{jobs:#}");
    ensure!(state("late") == Some("breached".into()), "{jobs:#}");
    ensure!(state("off") == Some("disabled".into()), "{jobs:#}");
    let one = service.get_json("/api/v1/jobs/fine")?;
    ensure!(
        one["last_run"]["result"] == "success" && one["snapshots"] == 1,
        "{one:#}"
    );
    ensure!(service.get("/api/v1/jobs/nope")?.status == 404);
    let snapshots = service.get_json("/api/v1/snapshots")?;
    ensure!(
        snapshots.as_array().map(Vec::len) == Some(2),
        "{snapshots:#}"
    );
    let late = service.get_json("/api/v1/snapshots?job=late")?;
    ensure!(
        late[0]["job"] == "late" && late[0]["summary"]["files"] == 1,
        "{late:#}"
    );
    let tasks = service.get_json("/api/v1/tasks")?;
    ensure!(
        tasks[0]["name"] == "check" && tasks[0]["next_run"].is_string(),
        "{tasks:#}"
    );
    let repository = service.get_json("/api/v1/repository")?;
    ensure!(repository["snapshots"] == 2, "{repository:#}");

    // The status page.
    let page = service.get("/")?;
    ensure!(page.status == 200);
    ensure!(
        page.header("content-type")
            .is_some_and(|t| t.starts_with("text/html"))
    );
    for needle in [
        "id=\"job-fine\"",
        "id=\"job-late\"",
        "id=\"job-off\"",
        "RPO breached",
        "within RPO",
        "disabled",
        "name=\"viewport\"",
        "check",
    ] {
        ensure!(
            page.body.contains(needle),
            "the status page lacks {needle:?}:\n{}",
            page.body
        );
    }
    ensure!(
        !page.body.contains("<script"),
        "the status page needs no script"
    );

    service.wait_for("the RPO watch to log the breach", WAIT, |s| {
        Ok(s.log().contains("RPO breached").then_some(()))
    })?;
    let exit = service.terminate()?;
    ensure!(
        exit.status.success(),
        "lifeboatd exited with {}\n{}",
        exit.status,
        exit.log
    );
    ensure!(!exit.log.contains(&token), "the token is never logged");
    Ok(())
}

/// Waits until `job` is running and has read some data.
fn wait_until_reading(service: &mut Lifeboatd, job: &str) -> Result<()> {
    service.wait_for(&format!("{job} to be reading"), WAIT, |s| {
        let status = s.get_json(&format!("/api/v1/jobs/{job}"))?;
        let activity = &status["activity"];
        Ok(
            (activity["state"] == "running" && activity["bytes_done"].as_u64() > Some(0))
                .then_some(()),
        )
    })
}

fn check_read_data(installation: &Installation) -> Result<serde_json::Value> {
    let report = installation
        .check(&installation.restore_key(), &["--read-data"])?
        .ok()?
        .json()?;
    ensure!(
        report["problems"].as_array().is_some_and(Vec::is_empty),
        "check --read-data found problems: {report:#}"
    );
    Ok(report)
}

#[test]
fn sigterm_during_a_run_exits_zero_and_leaves_a_clean_repository() -> Result<()> {
    let installation = Installation::local()?;
    // 4 GiB of a sparse file take seconds to read on any machine, so the
    // run is still going when the signal comes.
    write_sparse(&installation.path("big/zeros.img"), 4 << 30)?;
    let mut rng = Rng::new(0x5e41_0020);
    for i in 0..4 {
        write_file(
            &installation.path(format!("big/part-{i:02}.bin")),
            &rng.bytes(4 * MIB),
        )?;
    }
    let config = |grace: &str| {
        format!(
            "[service]\nshutdown_grace = \"{grace}\"\n\n[[job]]\nname = \"big\"\n\
             source = {{ kind = \"directory\", paths = [\"big\"] }}\nrpo = \"1h\"\n"
        )
    };

    // A grace period shorter than the run: the run is stopped.
    write_service_config(&installation, &config("1s"))?;
    let mut service = Lifeboatd::start(&installation)?;
    service.trigger("big")?;
    wait_until_reading(&mut service, "big")?;
    let exit = service.terminate()?;
    ensure!(
        exit.status.success(),
        "lifeboatd exited with {}\n{}",
        exit.status,
        exit.log
    );
    ensure!(
        exit.log
            .contains("stopped 1 run(s) at the end of the grace period"),
        "the stopped run is logged:\n{}",
        exit.log
    );
    let history = History::open(&installation.path("state"))?;
    let runs = history.recent(Some("big"), 10)?;
    ensure!(
        runs.len() == 1 && runs[0].result == RunResult::Interrupted,
        "the run is recorded as interrupted: {runs:#?}"
    );
    drop(history);
    let report = check_read_data(&installation)?;
    ensure!(
        report["snapshots"] == 0,
        "the stopped run wrote no snapshot: {report:#}"
    );

    // A long grace period: the run finishes, and nothing new starts.
    write_service_config(&installation, &config("5m"))?;
    let mut service = Lifeboatd::start(&installation)?;
    service.trigger("big")?;
    wait_until_reading(&mut service, "big")?;
    service.send_sigterm()?;
    service.wait_for("/readyz to report the shutdown", WAIT, |s| {
        let ready = s.get("/readyz")?;
        Ok((ready.status == 503 && ready.json()?["stopping"] == true).then_some(()))
    })?;
    let token = service.token()?;
    let refused = service.post("/api/v1/jobs/big/run", Some(&token))?;
    if refused.status != 503 && refused.status != 409 {
        bail!(
            "a trigger during shutdown: {} {}",
            refused.status,
            refused.body
        );
    }
    let exit = service.wait_exit()?;
    ensure!(
        exit.status.success(),
        "lifeboatd exited with {}\n{}",
        exit.status,
        exit.log
    );
    let history = History::open(&installation.path("state"))?;
    let runs = history.recent(Some("big"), 10)?;
    ensure!(
        runs.len() == 2 && runs[0].result == RunResult::Success && runs[0].snapshot.is_some(),
        "the run under way finished within the grace period: {runs:#?}"
    );
    let report = check_read_data(&installation)?;
    ensure!(report["snapshots"] == 1, "{report:#}");
    Ok(())
}

#[test]
fn an_invalid_job_file_stops_the_start_naming_file_line_and_field() -> Result<()> {
    let installation = Installation::local()?;
    write_service_config(&installation, "[service]\nmax_concurrent_jobs = 1\n")?;
    write_file(
        &installation.path("schedules/bad.toml"),
        b"# a job with a five-field schedule\n[[job]]\nname = \"etcd\"\nschedule = \"0 5 * * *\"\nsource = { kind = \"directory\", paths = [\"x\"] }\n",
    )?;
    let log = refused_start(&installation)?;
    for needle in [
        "bad.toml",
        "line 4",
        "schedule",
        "seconds",
        "does not start",
    ] {
        ensure!(log.contains(needle), "the refusal names {needle:?}:\n{log}");
    }
    ensure!(
        !installation.path("state/history.sqlite").exists(),
        "nothing of an invalid configuration runs"
    );
    Ok(())
}
