//! What a drill found, per job and in all: the JSON report (`--report`),
//! and the source of the JUnit and Prometheus renderings.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::repo::snapshot::{SnapshotEntry, SourceKind};

/// One timed step of a job's drill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// What was done (`restore`, `verify hashes`, `start etcd`, …).
    pub name: String,
    /// Its wall time.
    pub seconds: f64,
    /// Whether it succeeded.
    pub ok: bool,
    /// What it found, or why it failed.
    pub detail: String,
}

/// One job's drill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobReport {
    /// The job.
    pub job: String,
    /// The snapshot's source kind.
    pub kind: Option<SourceKind>,
    /// The snapshot drilled (id, hex).
    pub snapshot: Option<String>,
    /// When that snapshot was taken.
    pub snapshot_time: Option<DateTime<Utc>>,
    /// The job's RPO.
    pub rpo_target_seconds: f64,
    /// The snapshot's age at drill time: the data that would be lost now.
    pub rpo_seconds: Option<f64>,
    /// Whether the age exceeds the RPO (or there is no snapshot).
    pub rpo_breached: bool,
    /// The drill's wall time: the measured RTO of this job's data.
    pub rto_seconds: f64,
    /// Whether the wall time exceeds the RTO target.
    pub rto_breached: bool,
    /// lifeboat's own peak resident memory during the job's drill, in
    /// bytes, when measured; the programs it starts (etcd, postgres,
    /// pg_restore) are not counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
    /// The steps, in order.
    pub steps: Vec<StepReport>,
    /// Why the job failed; empty when it passed.
    pub failures: Vec<String>,
}

impl JobReport {
    /// An empty report for `job`.
    pub fn new(job: &str, rpo: Duration) -> Self {
        Self {
            job: job.to_owned(),
            kind: None,
            snapshot: None,
            snapshot_time: None,
            rpo_target_seconds: rpo.as_secs_f64(),
            rpo_seconds: None,
            rpo_breached: false,
            rto_seconds: 0.0,
            rto_breached: false,
            peak_rss_bytes: None,
            steps: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// Notes the snapshot drilled and its age at `now`.
    pub fn set_snapshot(&mut self, entry: &SnapshotEntry, now: DateTime<Utc>) {
        let age = (now - entry.snapshot.time).num_milliseconds().max(0) as f64 / 1000.0;
        self.kind = Some(entry.snapshot.source_kind.clone());
        self.snapshot = Some(entry.id.to_hex());
        self.snapshot_time = Some(entry.snapshot.time);
        self.rpo_seconds = Some(age);
        self.rpo_breached = age > self.rpo_target_seconds;
    }

    /// Whether the job passed: verified, within its RPO and the RTO target.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// A whole drill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillReport {
    /// When it started.
    pub started: DateTime<Utc>,
    /// When it ended.
    pub finished: DateTime<Utc>,
    /// Its wall time (every job, one after the other).
    pub total_seconds: f64,
    /// The RTO target, if any.
    pub rto_target_seconds: Option<f64>,
    /// Whether every job passed.
    pub passed: bool,
    /// The jobs, in the order drilled.
    pub jobs: Vec<JobReport>,
}

impl DrillReport {
    /// The report of `jobs` drilled from `started` to now.
    pub fn new(started: DateTime<Utc>, rto_target: Option<Duration>, jobs: Vec<JobReport>) -> Self {
        let finished = Utc::now();
        Self {
            started,
            finished,
            total_seconds: (finished - started).num_milliseconds().max(0) as f64 / 1000.0,
            rto_target_seconds: rto_target.map(|t| t.as_secs_f64()),
            passed: !jobs.is_empty() && jobs.iter().all(JobReport::passed),
            jobs,
        }
    }

    /// A table for people: one line per job, then the failures.
    pub fn table(&self) -> String {
        let mut lines = vec![format!(
            "{:<20} {:<13} {:<8} {:>10} {:>10} {:>10} {:>8}  {}",
            "JOB", "KIND", "SNAPSHOT", "RPO", "RPO AGE", "RTO", "MEMORY", "RESULT"
        )];
        for job in &self.jobs {
            let snapshot = job
                .snapshot
                .as_deref()
                .map_or("-", |s| &s[..s.len().min(8)]);
            lines.push(format!(
                "{:<20} {:<13} {:<8} {:>10} {:>10} {:>10} {:>8}  {}",
                job.job,
                job.kind.as_ref().map_or("-", |kind| kind.name()),
                snapshot,
                seconds(Some(job.rpo_target_seconds)),
                seconds(job.rpo_seconds),
                seconds(Some(job.rto_seconds)),
                job.peak_rss_bytes
                    .map_or("-".into(), |bytes| format!("{} MiB", bytes >> 20)),
                if job.passed() { "PASS" } else { "FAIL" }
            ));
        }
        let target = self
            .rto_target_seconds
            .map(|t| format!(" (RTO target {} per job)", seconds(Some(t))))
            .unwrap_or_default();
        if self.jobs.iter().any(|j| j.peak_rss_bytes.is_some()) {
            lines.push(
                "MEMORY: lifeboat's own peak resident memory in the job's drill \
                 (etcd, postgres and pg_restore not counted)"
                    .into(),
            );
        }
        lines.push(format!(
            "{} of {} job(s) passed; total {:.1} s{target}",
            self.jobs.iter().filter(|j| j.passed()).count(),
            self.jobs.len(),
            self.total_seconds
        ));
        for job in self.jobs.iter().filter(|j| !j.passed()) {
            for failure in &job.failures {
                lines.push(format!("FAIL {}: {failure}", job.job));
            }
        }
        lines.join("\n")
    }
}

/// A duration for the table: `1h 2m`, `3.4s`, `-`.
fn seconds(value: Option<f64>) -> String {
    match value {
        None => "-".into(),
        Some(s) if s < 60.0 => format!("{s:.1}s"),
        Some(s) => humantime::format_duration(Duration::from_secs(s as u64)).to_string(),
    }
}
