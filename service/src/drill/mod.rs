//! Restore drills: prove that the newest snapshot of each job restores and
//! is what was backed up, and measure how long that takes.
//!
//! For each job, [`prepare`] takes the newest snapshot, checks its age
//! against the job's RPO and makes scratch space; the snapshot kind's own
//! module (`crate::sources::*::drill`, dispatched by
//! `crate::sources::drill_job`) restores and verifies it, recording
//! timed steps in the [`JobRun`]; [`JobRun::finish`] measures it. Every step is timed; the
//! job's wall time is its measured RTO. The [`report`] renders as JSON,
//! JUnit XML ([`junit`]) and Prometheus text ([`metrics`]).

pub mod files;
pub mod junit;
mod memory;
pub mod metrics;
pub mod report;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

pub use self::report::{DrillReport, JobReport, StepReport};
use crate::repo::reader::BlobReader;
use crate::repo::snapshot::SnapshotEntry;

/// What every job's drill shares.
#[derive(Debug, Clone)]
pub struct DrillSettings {
    /// A folder for the restores; each job gets a fresh folder inside it,
    /// removed afterwards.
    pub scratch: PathBuf,
    /// The PostgreSQL server scratch databases are restored into (libpq
    /// connection string; the password from `PGPASSWORD`).
    pub pg_url: Option<String>,
    /// The folder of the PostgreSQL client programs (default: `PATH`).
    pub pg_bin: Option<PathBuf>,
    /// Without `pg_url`: the container to restore scratch databases in
    /// (default: the one a postgres snapshot was dumped in).
    pub pg_container: Option<String>,
    /// The Docker Engine's socket, for containers.
    pub docker_socket: PathBuf,
    /// The most a job's drill may take.
    pub rto_target: Option<Duration>,
    /// How long a throwaway etcd may take to answer.
    pub etcd_wait: Duration,
    /// A kubeconfig of an API server to dry-run Kubernetes objects
    /// against (server-side, nothing is changed).
    pub kube_dry_run: Option<PathBuf>,
    /// Measure each job's peak resident memory of this process
    /// ([`JobReport::peak_rss_bytes`]). It resets the process's
    /// high-water mark, so only where nothing else runs in the process
    /// (`lifeboat drill`), not in the service.
    pub measure_memory: bool,
}

/// One job to drill.
#[derive(Debug, Clone)]
pub struct DrillJob {
    /// Its name.
    pub name: String,
    /// Its RPO: the most its newest snapshot may be old.
    pub rpo: Duration,
}

/// A job's drill in progress: the snapshot, its scratch folder, and the
/// report being filled in.
#[derive(Debug)]
pub struct JobRun<'a> {
    /// Reads the snapshot's blobs.
    pub reader: &'a BlobReader,
    /// The snapshot drilled.
    pub entry: &'a SnapshotEntry,
    /// Every snapshot of the repository (a point-in-time recovery needs
    /// the job's others).
    pub snapshots: &'a [SnapshotEntry],
    /// This job's scratch folder.
    pub scratch: PathBuf,
    /// The drill's settings.
    pub settings: &'a DrillSettings,
    /// The report so far.
    pub report: JobReport,
    /// When the drill started.
    started: Instant,
    /// Whether this process's memory high-water mark was reset for it.
    measuring_memory: bool,
}

impl JobRun<'_> {
    /// Runs `work` as the step `name`, timing it; a failure is recorded
    /// (failing the job) and gives `None`.
    pub async fn step<T, E: std::error::Error + 'static>(
        &mut self,
        name: &str,
        work: impl Future<Output = Result<T, E>>,
    ) -> Option<T> {
        let started = Instant::now();
        let outcome = work.await;
        self.record(name, started, outcome)
    }

    /// Records the outcome of the step `name`, begun at `started`; a
    /// failure fails the job and gives `None`.
    fn record<T, E: std::error::Error + 'static>(
        &mut self,
        name: &str,
        started: Instant,
        outcome: Result<T, E>,
    ) -> Option<T> {
        let seconds = started.elapsed().as_secs_f64();
        let (value, ok, detail) = match outcome {
            Ok(value) => (Some(value), true, String::new()),
            Err(e) => (None, false, crate::errors::describe(&e)),
        };
        if !ok {
            self.fail(format!("{name}: {detail}"));
        }
        self.report.steps.push(StepReport {
            name: name.to_owned(),
            seconds,
            ok,
            detail,
        });
        value
    }

    /// Adds a note to the last step (what it found).
    pub fn note(&mut self, note: impl Into<String>) {
        if let Some(step) = self.report.steps.last_mut() {
            if !step.detail.is_empty() {
                step.detail.push_str("; ");
            }
            step.detail.push_str(&note.into());
        }
    }

    /// Ends the drill: removes the scratch folder, takes the job's wall
    /// time as its measured RTO and checks it against the target.
    pub fn finish(self) -> JobReport {
        let _ = std::fs::remove_dir_all(&self.scratch);
        let mut report = self.report;
        report.rto_seconds = self.started.elapsed().as_secs_f64();
        if self.measuring_memory {
            report.peak_rss_bytes = memory::peak_bytes();
        }
        let over = self
            .settings
            .rto_target
            .filter(|target| report.rto_seconds > target.as_secs_f64());
        if let Some(target) = over {
            report.rto_breached = true;
            report.failures.push(format!(
                "RTO target breached: the drill took {:.1} s, the target is {}",
                report.rto_seconds,
                humantime::format_duration(target)
            ));
        }
        report
    }

    /// Fails the job with `reason`.
    pub fn fail(&mut self, reason: impl Into<String>) {
        self.report.failures.push(reason.into());
    }

    /// Fails the job when `problems` is not empty, naming them (the first
    /// 20); `what` says what was checked.
    pub fn fail_on(&mut self, what: &str, problems: &[String]) {
        if problems.is_empty() {
            return;
        }
        let shown = problems
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ");
        let more = if problems.len() > 20 { "; …" } else { "" };
        self.fail(format!(
            "{what}: {} problem(s): {shown}{more}",
            problems.len()
        ));
    }
}

/// A job's drill before its kind's verification: either a run ready to
/// restore into its (created) scratch folder, or the report of a drill that
/// ended early (no snapshot, no scratch folder).
#[derive(Debug)]
pub enum Prepared<'a> {
    /// Ready: verify with the snapshot kind's drill, then [`JobRun::finish`].
    Run(JobRun<'a>),
    /// Ended: nothing to verify.
    Ended(JobReport),
}

/// Starts the drill of `job` with the newest of `snapshots` (all snapshots
/// of the repository), at `now`: checks its age against the RPO and
/// creates its scratch folder. Never fails: every failure is in the report.
pub fn prepare<'a>(
    reader: &'a BlobReader,
    snapshots: &'a [SnapshotEntry],
    job: &DrillJob,
    settings: &'a DrillSettings,
    now: DateTime<Utc>,
) -> Prepared<'a> {
    let measuring_memory = settings.measure_memory && memory::reset_peak();
    let started = Instant::now();
    let mut report = JobReport::new(&job.name, job.rpo);
    let Some(entry) = snapshots.iter().rev().find(|e| e.snapshot.job == job.name) else {
        report.failures.push(format!(
            "no snapshot of job {:?} in the repository: run it (`lifeboatd run --config … {}`) \
             and drill again",
            job.name, job.name
        ));
        report.rpo_breached = true;
        return Prepared::Ended(report);
    };
    report.set_snapshot(entry, now);
    if report.rpo_breached {
        let age = report.rpo_seconds.unwrap_or_default();
        report.failures.push(format!(
            "RPO breached: the newest snapshot is {} old, the RPO is {}",
            humantime::format_duration(Duration::from_secs(age as u64)),
            humantime::format_duration(job.rpo)
        ));
    }
    let scratch = settings
        .scratch
        .join(format!("{}-{}", safe(&job.name), entry.id.short()));
    let mut run = JobRun {
        reader,
        entry,
        snapshots,
        scratch,
        settings,
        report,
        started,
        measuring_memory,
    };
    let created = std::fs::create_dir_all(&run.scratch);
    match run.record("prepare scratch", Instant::now(), created) {
        Some(()) => Prepared::Run(run),
        None => Prepared::Ended(run.finish()),
    }
}

/// A job name as a folder name.
fn safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
