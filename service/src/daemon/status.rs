//! What each job and task looks like from outside — schedule, what it is
//! doing, its last run, its RPO status — and the RPO watch that logs
//! breaches.
//!
//! A job's last success is the newer of its last successful run in the
//! history and its newest snapshot in the repository, so the watch is right
//! after the state folder is lost and for snapshots `lifeboatd run` made.
//! A job with no snapshot yet counts from the service's start, so a first
//! start is not a breach. A run that was queued before the RPO ran out
//! holds the breach off until it ends: an hourly job with a one-hour RPO
//! does not flap into a breach for the minutes each run takes, but one
//! that fails, or starts late, breaches at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::service::{Activity, Service, Trigger};
use crate::config::cron::{CronSchedule, Timezone};
use crate::repo::snapshot::SourceKind;
use crate::retention::RetentionPolicy;
use crate::state::HistoryError;
use crate::state::history::{JobTotals, RunRecord};

/// How a job stands against its RPO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RpoState {
    /// The newest snapshot is younger than the RPO.
    Ok,
    /// No snapshot yet, and the service has run for less than the RPO.
    Waiting,
    /// The newest snapshot (or the wait for the first) is older than the RPO.
    Breached,
    /// The job is not scheduled.
    Disabled,
}

/// A job's RPO status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RpoStatus {
    /// The objective, in seconds.
    pub rpo_seconds: u64,
    /// When the data of the newest successful backup is from.
    pub last_success: Option<DateTime<Utc>>,
    /// Its age in seconds.
    pub age_seconds: Option<i64>,
    /// Whether the objective is broken (never for a disabled job).
    pub breached: bool,
    /// The same as a word.
    pub state: RpoState,
}

/// Computes a job's RPO status at `now`; `in_flight` is when its current
/// run was queued, if one is queued or running.
pub fn rpo_status(
    rpo: Duration,
    enabled: bool,
    last_success: Option<DateTime<Utc>>,
    in_flight: Option<DateTime<Utc>>,
    service_started: DateTime<Utc>,
    now: DateTime<Utc>,
) -> RpoStatus {
    let limit = chrono::Duration::from_std(rpo).unwrap_or(chrono::Duration::MAX);
    let since = last_success.unwrap_or(service_started);
    let deadline = since
        .checked_add_signed(limit)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let over = now > deadline && in_flight.is_none_or(|queued| queued > deadline);
    let state = match (enabled, last_success, over) {
        (false, _, _) => RpoState::Disabled,
        (true, _, true) => RpoState::Breached,
        (true, Some(_), false) => RpoState::Ok,
        (true, None, false) => RpoState::Waiting,
    };
    RpoStatus {
        rpo_seconds: rpo.as_secs(),
        last_success,
        age_seconds: last_success.map(|t| (now - t).num_seconds()),
        breached: state == RpoState::Breached,
        state,
    }
}

/// What a job or task is doing, for display.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActivityView {
    /// `idle`, `queued` or `running`.
    pub state: &'static str,
    /// Since when it is queued or running.
    pub since: Option<DateTime<Utc>>,
    /// Why it is queued or running.
    pub trigger: Option<Trigger>,
    /// Bytes of source data processed so far by a running backup.
    pub bytes_done: Option<u64>,
}

impl From<Activity> for ActivityView {
    fn from(activity: Activity) -> Self {
        match activity {
            Activity::Idle => Self {
                state: "idle",
                since: None,
                trigger: None,
                bytes_done: None,
            },
            Activity::Queued { since, trigger } => Self {
                state: "queued",
                since: Some(since),
                trigger: Some(trigger),
                bytes_done: None,
            },
            Activity::Running {
                since,
                trigger,
                progress,
                ..
            } => Self {
                state: "running",
                since: Some(since),
                trigger: Some(trigger),
                bytes_done: Some(progress.bytes.load(Ordering::Relaxed)),
            },
        }
    }
}

/// A backup job as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    /// Its name.
    pub name: String,
    /// Its source kind.
    pub source_kind: SourceKind,
    /// Whether its schedule runs it.
    pub enabled: bool,
    /// Its cron schedule; `None`: run by hand only.
    pub schedule: Option<String>,
    /// The schedule's time zone.
    pub timezone: String,
    /// When the schedule fires next.
    pub next_run: Option<DateTime<Utc>>,
    /// The longest random delay of scheduled runs, in seconds.
    pub jitter_seconds: Option<u64>,
    /// Its retention; `None` keeps every snapshot.
    pub retention: Option<RetentionPolicy>,
    /// How it stands against its RPO.
    pub rpo: RpoStatus,
    /// What it is doing.
    pub activity: ActivityView,
    /// Its newest finished run.
    pub last_run: Option<RunRecord>,
    /// Its snapshots in the repository.
    pub snapshots: usize,
    /// Its counts since the history began.
    #[serde(skip)]
    pub totals: JobTotals,
}

/// The prune, check or drill task as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TaskStatus {
    /// `prune`, `check` or `drill`.
    pub name: &'static str,
    /// Whether its schedule runs it.
    pub enabled: bool,
    /// Its cron schedule.
    pub schedule: String,
    /// The schedule's time zone.
    pub timezone: String,
    /// When the schedule fires next.
    pub next_run: Option<DateTime<Utc>>,
    /// What it is doing.
    pub activity: ActivityView,
    /// Its newest finished run.
    pub last_run: Option<RunRecord>,
    /// When its newest successful run started.
    pub last_success: Option<DateTime<Utc>>,
    /// Its counts since the history began.
    #[serde(skip)]
    pub totals: JobTotals,
}

/// Every job and task at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// The backup jobs, in configuration order.
    pub jobs: Vec<JobStatus>,
    /// The configured tasks.
    pub tasks: Vec<TaskStatus>,
}

fn next_run(
    schedule: Option<&CronSchedule>,
    timezone: Timezone,
    enabled: bool,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    schedule
        .filter(|_| enabled)
        .and_then(|s| s.next_after(now, timezone))
}

impl Service {
    /// Every job's and task's status now.
    ///
    /// Fails when the history cannot be read.
    pub async fn overview(&self) -> Result<Overview, HistoryError> {
        let (mut last_runs, successes, mut totals) = self
            .history(|h| Ok((h.last_finished()?, h.last_successes()?, h.totals()?)))
            .await?;
        let catalog = self.catalog();
        let config = self.config();
        let now = Utc::now();
        let jobs = config
            .jobs
            .iter()
            .map(|job| {
                let known = successes.get(&job.name).copied();
                let last_success = known.max(catalog.newest_time(&job.name));
                let timezone = config.timezone_of(job);
                let activity = self.activity(&job.name);
                let in_flight = match &activity {
                    Activity::Idle => None,
                    Activity::Queued { since, .. } => Some(*since),
                    Activity::Running { queued, .. } => Some(*queued),
                };
                JobStatus {
                    name: job.name.clone(),
                    source_kind: job.source.kind(),
                    enabled: job.enabled,
                    schedule: job.schedule.as_ref().map(ToString::to_string),
                    timezone: timezone.to_string(),
                    next_run: next_run(job.schedule.as_ref(), timezone, job.enabled, now),
                    jitter_seconds: job.jitter.map(|d| d.as_secs()),
                    retention: job.retention,
                    rpo: rpo_status(
                        config.rpo_of(job),
                        job.enabled,
                        last_success,
                        in_flight,
                        self.started(),
                        now,
                    ),
                    activity: activity.into(),
                    last_run: last_runs.remove(&job.name),
                    snapshots: catalog.snapshots(Some(&job.name)).len(),
                    totals: totals.remove(&job.name).unwrap_or_default(),
                }
            })
            .collect();
        let mut tasks = Vec::new();
        let prune = config
            .prune
            .as_ref()
            .map(|t| ("prune", &t.schedule, t.timezone, t.enabled));
        let check = config
            .check
            .as_ref()
            .map(|t| ("check", &t.schedule, t.timezone, t.enabled));
        let drill = config
            .drill
            .as_ref()
            .map(|t| ("drill", &t.schedule, t.timezone, t.enabled));
        // The mirror task runs on every mirror's schedule; the first's is shown.
        let mirror = config
            .mirrors
            .iter()
            .find(|m| m.enabled)
            .map(|t| ("mirror", &t.schedule, t.timezone, t.enabled));
        for (name, schedule, timezone, enabled) in
            prune.into_iter().chain(check).chain(drill).chain(mirror)
        {
            let timezone = timezone.unwrap_or(config.service.timezone);
            tasks.push(TaskStatus {
                name,
                enabled,
                schedule: schedule.to_string(),
                timezone: timezone.to_string(),
                next_run: next_run(Some(schedule), timezone, enabled, now),
                activity: self.activity(name).into(),
                last_run: last_runs.remove(name),
                last_success: successes.get(name).copied(),
                totals: totals.remove(name).unwrap_or_default(),
            });
        }
        Ok(Overview { jobs, tasks })
    }
}

/// Logs each job's RPO breach when it begins and when it ends, checking
/// every few seconds until shutdown begins.
pub async fn watch_rpo(service: Arc<Service>) {
    let mut breached: BTreeSet<String> = BTreeSet::new();
    let mut warned_history = false;
    loop {
        match service.overview().await {
            Ok(overview) => {
                let now: BTreeMap<&str, &RpoStatus> = overview
                    .jobs
                    .iter()
                    .map(|j| (j.name.as_str(), &j.rpo))
                    .collect();
                for (job, status) in &now {
                    let was = breached.contains(*job);
                    let age = status
                        .age_seconds
                        .map(|s| {
                            humantime::format_duration(Duration::from_secs(s.max(0) as u64))
                                .to_string()
                        })
                        .unwrap_or_else(|| "no snapshot yet".into());
                    let rpo = humantime::format_duration(Duration::from_secs(status.rpo_seconds));
                    if status.breached && !was {
                        tracing::warn!(
                            job,
                            "RPO breached: the newest snapshot is {age} old, the RPO is {rpo}"
                        );
                        breached.insert((*job).to_owned());
                    } else if !status.breached && was {
                        tracing::info!(
                            job,
                            "RPO met again: the newest snapshot is {age} old, the RPO is {rpo}"
                        );
                        breached.remove(*job);
                    }
                }
            }
            Err(e) if !warned_history => {
                tracing::error!("the RPO watch cannot read the history: {e}");
                warned_history = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            () = service.stopping() => return,
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpo_counts_from_the_last_success_or_the_start() {
        let now = Utc::now();
        let hour = Duration::from_secs(3600);
        let ago = |minutes: i64| now - chrono::Duration::minutes(minutes);
        let status = |enabled, last, flight, started| {
            rpo_status(hour, enabled, last, flight, started, now).state
        };
        assert_eq!(status(true, Some(ago(30)), None, ago(600)), RpoState::Ok);
        assert_eq!(
            status(true, Some(ago(90)), None, ago(600)),
            RpoState::Breached
        );
        assert_eq!(status(true, None, None, ago(10)), RpoState::Waiting);
        assert_eq!(status(true, None, None, ago(61)), RpoState::Breached);
        assert_eq!(
            status(false, Some(ago(900)), None, ago(600)),
            RpoState::Disabled
        );
        assert!(!rpo_status(hour, false, None, None, ago(900), now).breached);
        // A run queued in time holds the breach off; one queued late does not.
        assert_eq!(
            status(true, Some(ago(62)), Some(ago(3)), ago(600)),
            RpoState::Ok
        );
        assert_eq!(
            status(true, Some(ago(70)), Some(ago(5)), ago(600)),
            RpoState::Breached
        );
    }
}
