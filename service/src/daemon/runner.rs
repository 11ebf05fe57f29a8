//! One run of a job or task, from its request to its result.
//!
//! Every run — scheduled, made up at start, or triggered through the API —
//! goes through [`Service::request`]: a job never overlaps itself (a second
//! request while one is queued or running is refused), at most
//! `max_concurrent_jobs` run at once (the others wait for a slot), and once
//! shutdown has begun nothing new starts. A run is then a backup followed
//! by the job's retention, a prune, or a check, recorded in the history.
//!
//! Every run opens the repository afresh with the service key, so it sees
//! what other runs and other programs wrote. Retention forgets snapshot
//! objects only; their data is freed by a later prune.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use serde::Serialize;

use super::job::{JobError, back_up_job};
use super::service::{Activity, Service, Trigger, Work, lock};
use crate::backup::Progress;
use crate::backup::items::Item;
use crate::config::JobConfig;
use crate::errors::describe;
use crate::repo::check::{ReadData, check};
use crate::repo::prune::{PruneOptions, forget, prune};
use crate::repo::{RepoError, UnlockedRepository};
use crate::retention::RetentionPolicy;
use crate::state::{RunFigures, RunResult};

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The backup could not run or failed.
    #[error(transparent)]
    Job(#[from] JobError),
    /// The repository failed during retention, prune or check.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The check found damage.
    #[error(
        "check found {count} problem(s), the first: {first}; run `lifeboat check --read-data` \
         with the restore key to see what they affect"
    )]
    Damaged {
        /// How many problems.
        count: usize,
        /// The first, as `object: message`.
        first: String,
    },
    /// The job is not in the configuration.
    #[error("no job is called {0:?} in the configuration")]
    UnknownJob(String),
    /// A drill could not run.
    #[error(transparent)]
    Drill(#[from] super::drill::DrillError),
    /// A job's drill failed.
    #[error("the drill failed: {0}")]
    DrillFailed(String),
    /// A task ran without its table in the configuration.
    #[error("{0} is not configured; add a [{0}] table")]
    NotConfigured(&'static str),
    /// A mirror could not be synced, or lacks objects.
    #[error("{}", .0.join(" | "))]
    Mirror(Vec<String>),
}

/// Why a run was not started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No such job.
    #[error("no job is called {0:?}; GET /api/v1/jobs lists them")]
    UnknownJob(String),
    /// It is queued or running already.
    #[error(
        "{0} is already queued or running; a job never overlaps itself, try again when it ends"
    )]
    Busy(String),
    /// Shutdown has begun.
    #[error("the service is shutting down; no new runs start")]
    Stopping,
}

impl Service {
    /// Queues `work`; it starts once its jitter (scheduled runs only) has
    /// passed and a slot is free.
    ///
    /// Fails when the job is unknown, already queued or running, or
    /// shutdown has begun.
    pub fn request(self: &Arc<Self>, work: Work, trigger: Trigger) -> Result<(), Refusal> {
        let jitter = match &work {
            Work::Backup(name) => {
                let job = self
                    .config
                    .jobs
                    .iter()
                    .find(|j| j.name == *name)
                    .ok_or_else(|| Refusal::UnknownJob(name.clone()))?;
                job.jitter.filter(|_| trigger == Trigger::Schedule)
            }
            Work::Prune | Work::Check | Work::Drill | Work::Mirror => None,
        };
        let mut runs = lock(&self.runs);
        if self.is_stopping() {
            return Err(Refusal::Stopping);
        }
        {
            let mut activities = lock(&self.activities);
            let activity = activities.entry(work.name().to_owned()).or_default();
            if !matches!(activity, Activity::Idle) {
                return Err(Refusal::Busy(work.name().to_owned()));
            }
            *activity = Activity::Queued {
                since: Utc::now(),
                trigger,
            };
        }
        while runs.try_join_next().is_some() {}
        let delay = jitter.map_or(Duration::ZERO, |max| {
            Duration::from_millis(rand::thread_rng().gen_range(0..=max.as_millis() as u64))
        });
        let service = self.clone();
        runs.spawn(async move { service.execute(work, trigger, delay).await });
        Ok(())
    }

    /// Waits for the jitter and a slot, then runs `work`.
    async fn execute(self: Arc<Self>, work: Work, trigger: Trigger, delay: Duration) {
        let _idle = IdleWhenDone {
            service: &self,
            name: work.name(),
        };
        let slots = self.slots.clone();
        let permit = tokio::select! {
            () = self.stopping.cancelled() => return,
            permit = async move {
                tokio::time::sleep(delay).await;
                slots.acquire_owned().await
            } => permit,
        };
        let Ok(_permit) = permit else { return };
        let progress = Arc::new(Progress::default());
        let queued = match self.activity(work.name()) {
            Activity::Queued { since, .. } => since,
            _ => Utc::now(),
        };
        self.set_activity(
            work.name(),
            Activity::Running {
                queued,
                since: Utc::now(),
                trigger,
                progress: progress.clone(),
            },
        );
        run(&self, &work, trigger, progress).await;
    }
}

/// Sets a job's activity back to idle when its run ends, however it ends.
struct IdleWhenDone<'a> {
    service: &'a Service,
    name: &'a str,
}

impl Drop for IdleWhenDone<'_> {
    fn drop(&mut self) {
        self.service.set_activity(self.name, Activity::Idle);
    }
}

/// Runs `work`, recording it in the history and logging its result.
async fn run(service: &Arc<Service>, work: &Work, trigger: Trigger, progress: Arc<Progress>) {
    let started = Utc::now();
    let (name, kind) = (work.name().to_owned(), work.kind());
    tracing::info!(job = %name, kind, trigger = trigger.as_str(), "run started");
    let row = service
        .history(move |h| h.start(&name, kind, trigger.as_str(), started))
        .await
        .map_err(|e| tracing::error!("the run is not recorded: {}", describe(&e)))
        .ok();
    let outcome = match work {
        Work::Backup(name) => back_up(service, name, progress).await,
        Work::Prune => prune_once(service).await,
        Work::Check => check_once(service).await,
        Work::Drill => drill_once(service).await,
        Work::Mirror => mirror_once(service).await,
    };
    let ended = Utc::now();
    let seconds = (ended - started).num_milliseconds() as f64 / 1000.0;
    let (result, figures) = match outcome {
        Ok(figures) => {
            tracing::info!(
                job = work.name(),
                seconds,
                bytes_read = figures.bytes_read,
                bytes_stored = figures.bytes_stored,
                snapshot = figures.snapshot.as_deref().unwrap_or("-"),
                forgotten = figures.forgotten,
                "run succeeded"
            );
            if let Some(warnings) = &figures.warnings {
                tracing::warn!(job = work.name(), "run finished with warnings:\n{warnings}");
            }
            if matches!(work, Work::Backup(_) | Work::Prune) {
                mirror_soon(service);
            }
            (RunResult::Success, figures)
        }
        Err(e) => {
            let error = describe(&e);
            tracing::error!(job = work.name(), seconds, "run failed: {error}");
            let figures = RunFigures {
                error: Some(error),
                ..RunFigures::default()
            };
            (RunResult::Failure, figures)
        }
    };
    if let Some(id) = row {
        if let Err(e) = service
            .history(move |h| h.finish(id, result, ended, &figures))
            .await
        {
            tracing::error!("the run's result is not recorded: {}", describe(&e));
        }
    }
}

/// Backs the job up, then applies its retention.
async fn back_up(
    service: &Service,
    name: &str,
    progress: Arc<Progress>,
) -> Result<RunFigures, RunError> {
    let config = service.config();
    let job: &JobConfig = config
        .jobs
        .iter()
        .find(|j| j.name == name)
        .ok_or_else(|| RunError::UnknownJob(name.to_owned()))?;
    let repo = service.open_repository().await?;
    let report = back_up_job(&repo, config, job, progress).await?;
    service.record_claims(name, &report.items, report.snapshot.end_time);
    let summary = &report.snapshot.summary;
    let mut warnings = report.warnings.clone();
    warnings.extend(
        report
            .items
            .iter()
            .filter(|item| item.needs_attention())
            .map(Item::sentence),
    );
    let mut figures = RunFigures {
        bytes_read: summary.bytes_read,
        bytes_stored: summary.bytes_stored,
        files: summary.files,
        dedup_ratio: (summary.bytes_total > 0).then(|| {
            (1.0 - summary.bytes_added as f64 / summary.bytes_total as f64).clamp(0.0, 1.0)
        }),
        snapshot: Some(report.id.to_hex()),
        ..RunFigures::default()
    };
    let retained = match &job.retention {
        Some(policy) => apply_retention(service, &repo, name, policy).await,
        None => service.refresh_catalog(&repo).await.map(|()| 0),
    };
    match retained {
        Ok(forgotten) => figures.forgotten = forgotten,
        Err(e) => warnings.push(format!(
            "the snapshot is stored, but retention or listing failed: {}; it is tried again after the next run",
            describe(&e)
        )),
    }
    if !warnings.is_empty() {
        figures.warnings = Some(warnings.join("\n"));
    }
    Ok(figures)
}

/// Forgets the job's snapshots its policy does not keep; returns how many.
async fn apply_retention(
    service: &Service,
    repo: &UnlockedRepository,
    job: &str,
    policy: &RetentionPolicy,
) -> Result<u64, RepoError> {
    let mut catalog = service.catalog();
    catalog.refresh(repo).await?;
    let snapshots = catalog.snapshots(Some(job));
    let times: Vec<_> = snapshots
        .iter()
        .map(|s| (s.time, s.restorable_alone))
        .collect();
    let doomed: Vec<_> = snapshots
        .iter()
        .zip(policy.apply_anchored(&times))
        .filter(|(_, decision)| decision.kept_by.is_empty())
        .map(|(snapshot, _)| snapshot.id)
        .collect();
    forget(repo, &doomed).await?;
    catalog.remove(&doomed);
    service.set_catalog(catalog);
    Ok(doomed.len() as u64)
}

/// The grace period a prune uses: the configured one, lengthened so that
/// no pack marked after one of this service's running backups loaded the
/// index can be deleted while that backup runs (it may have reused a blob
/// of that pack before the plan was written). A plan is visible at most
/// the longest prune's duration after its creation time.
async fn prune_grace(service: &Service, configured: Duration) -> Duration {
    let now = Utc::now();
    let Some(oldest) = service.running_backups_since().into_iter().min() else {
        return configured;
    };
    let longest_prune = service
        .history(|h| h.recent(Some("prune"), 100))
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.ended.is_some())
        .map(|r| r.duration())
        .max()
        .unwrap_or_default();
    let needed = (now - oldest) + longest_prune + chrono::Duration::seconds(1);
    configured.max(needed.to_std().unwrap_or_default())
}

/// One drill of the configured jobs; the report is kept whether or not
/// every job passed.
async fn drill_once(service: &Service) -> Result<RunFigures, RunError> {
    let config = service.config();
    let task = config
        .drill
        .as_ref()
        .ok_or(RunError::NotConfigured("drill"))?;
    let report = super::drill::run(config, task).await?;
    service.set_last_drill(report.clone());
    let failed: Vec<String> = report
        .jobs
        .iter()
        .filter(|job| !job.passed())
        .map(|job| format!("{}: {}", job.job, job.failures.join("; ")))
        .collect();
    if !failed.is_empty() {
        return Err(RunError::DrillFailed(format!(
            "{} of {} job(s) failed: {}",
            failed.len(),
            report.jobs.len(),
            failed.join(" | ")
        )));
    }
    Ok(RunFigures {
        details: serde_json::to_string(&report).ok(),
        ..RunFigures::default()
    })
}

/// Queues a mirror run after a backup or prune changed the repository,
/// when mirrors are configured; one already queued or running will see
/// the change, or the next will.
fn mirror_soon(service: &Arc<Service>) {
    if service.config().mirrors.iter().any(|m| m.enabled) {
        match service.request(Work::Mirror, Trigger::Schedule) {
            Ok(()) | Err(Refusal::Busy(_) | Refusal::Stopping) => {}
            Err(e) => tracing::warn!("the mirrors are not synced now: {e}"),
        }
    }
}

/// One sync of every mirror.
async fn mirror_once(service: &Service) -> Result<RunFigures, RunError> {
    let config = service.config();
    if !config.mirrors.iter().any(|m| m.enabled) {
        return Err(RunError::NotConfigured("[mirror]"));
    }
    let repo = service.open_repository().await?;
    let (table, failures) = super::mirror::sync_all(config, repo.repository().store()).await;
    for (name, status) in &table {
        if let Some(report) = &status.last_report {
            tracing::info!(
                mirror = %name,
                "mirror: {} objects ({} bytes) copied, {} deleted, {} waiting out the grace period, {} pending",
                report.copied,
                report.copied_bytes,
                report.deleted,
                report.awaiting_deletion,
                report.pending
            );
        }
    }
    if !failures.is_empty() {
        return Err(RunError::Mirror(failures));
    }
    Ok(RunFigures {
        details: Some(details("the mirror reports", &table)?),
        ..RunFigures::default()
    })
}

/// One prune round.
async fn prune_once(service: &Service) -> Result<RunFigures, RunError> {
    let task = service
        .config()
        .prune
        .as_ref()
        .ok_or(RunError::NotConfigured("prune"))?;
    let repo = service.open_repository().await?;
    let grace = prune_grace(service, task.grace).await;
    let options = PruneOptions {
        grace: chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX),
        dry_run: false,
    };
    let report = prune(&repo, &options).await?;
    if let Err(e) = service.refresh_catalog(&repo).await {
        tracing::warn!(
            "the repository could not be listed after pruning: {}",
            describe(&e)
        );
    }
    tracing::info!(
        "prune: {} packs stored, {} in use; {} newly marked unused, {} deleted ({} bytes freed), {} plans waiting for their grace period of {}; {} files interrupted backups left removed",
        report.packs_stored,
        report.packs_used,
        report.packs_marked,
        report.packs_deleted,
        report.bytes_freed,
        report.plans_waiting,
        humantime::format_duration(grace),
        report.leftovers_removed.files,
    );
    Ok(RunFigures {
        details: Some(details("the prune report", &report)?),
        ..RunFigures::default()
    })
}

/// The figures of a check run, kept in its run record.
#[derive(Serialize)]
struct CheckFigures {
    snapshots: usize,
    packs: usize,
    packs_read: usize,
    unindexed_packs: usize,
    problems: usize,
}

/// A run's figures as the JSON its run record keeps.
fn details(what: &'static str, figures: &impl Serialize) -> Result<String, RepoError> {
    serde_json::to_string(figures).map_err(|source| RepoError::Encode { what, source })
}

/// One check with the service key.
async fn check_once(service: &Service) -> Result<RunFigures, RunError> {
    let task = service
        .config()
        .check
        .as_ref()
        .ok_or(RunError::NotConfigured("check"))?;
    let repo = service.open_repository().await?;
    let read_data = match task.read_data_subset {
        p if p <= 0.0 => ReadData::None,
        p if p >= 100.0 => ReadData::All,
        p => ReadData::Subset(p),
    };
    let report = check(&repo, read_data).await?;
    let figures = CheckFigures {
        snapshots: report.snapshots,
        packs: report.packs,
        packs_read: report.packs_read,
        unindexed_packs: report.unindexed_packs,
        problems: report.problems.len(),
    };
    if let Some(first) = report.problems.first() {
        return Err(RunError::Damaged {
            count: report.problems.len(),
            first: format!("{}: {}", first.object, first.message),
        });
    }
    Ok(RunFigures {
        details: Some(details("the check figures", &figures)?),
        ..RunFigures::default()
    })
}
