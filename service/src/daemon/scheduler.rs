//! Cron scheduling with `tokio-cron-scheduler`, and the runs made up at
//! start.
//!
//! Each enabled job with a schedule, and the prune, check and drill tasks, is one
//! cron entry whose only act is [`Service::request`]: overlap, the global
//! limit, jitter and shutdown are the service's business. The scheduler
//! fixes a time zone's UTC offset when an entry is added, so the entries
//! are added afresh whenever a zone's offset changes (daylight saving
//! time); otherwise a daily 03:00 job would run at 02:00 or 04:00 until
//! the next restart.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Offset, TimeZone, Utc};
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

use super::runner::Refusal;
use super::service::{Service, Trigger, Work};
use crate::config::Config;
use crate::config::cron::{CronSchedule, Timezone};

/// The scheduler could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("the cron scheduler could not start ({0}); this is a bug, please report it")]
pub struct SchedulerError(#[from] JobSchedulerError);

/// One cron entry.
#[derive(Debug, Clone)]
struct Entry {
    work: Work,
    schedule: CronSchedule,
    timezone: Timezone,
}

/// The cron entries of a running service.
pub struct Scheduler {
    cron: Arc<tokio::sync::Mutex<JobScheduler>>,
    follow: tokio::task::JoinHandle<()>,
}

fn entries(config: &Config) -> Vec<Entry> {
    let jobs = config.jobs.iter().filter(|j| j.enabled).filter_map(|job| {
        Some(Entry {
            work: Work::Backup(job.name.clone()),
            schedule: job.schedule.clone()?,
            timezone: config.timezone_of(job),
        })
    });
    let zone = |own: Option<Timezone>| own.unwrap_or(config.service.timezone);
    let prune = config.prune.iter().filter(|t| t.enabled).map(|t| Entry {
        work: Work::Prune,
        schedule: t.schedule.clone(),
        timezone: zone(t.timezone),
    });
    let check = config.check.iter().filter(|t| t.enabled).map(|t| Entry {
        work: Work::Check,
        schedule: t.schedule.clone(),
        timezone: zone(t.timezone),
    });
    let drill = config.drill.iter().filter(|t| t.enabled).map(|t| Entry {
        work: Work::Drill,
        schedule: t.schedule.clone(),
        timezone: zone(t.timezone),
    });
    let mirror = config.mirrors.iter().filter(|m| m.enabled).map(|m| Entry {
        work: Work::Mirror,
        schedule: m.schedule.clone(),
        timezone: zone(m.timezone),
    });
    jobs.chain(prune)
        .chain(check)
        .chain(drill)
        .chain(mirror)
        .collect()
}

/// A zone's offset from UTC now, in seconds.
fn offset(timezone: Timezone) -> i32 {
    timezone
        .0
        .offset_from_utc_datetime(&Utc::now().naive_utc())
        .fix()
        .local_minus_utc()
}

/// Asks for a scheduled run; a run still going makes this one skip.
fn fire(service: &Arc<Service>, work: Work) {
    match service.request(work, Trigger::Schedule) {
        Ok(()) | Err(Refusal::Stopping) => {}
        Err(Refusal::Busy(name)) => tracing::info!(
            job = %name,
            "a scheduled run is skipped: the previous run is still queued or running"
        ),
        Err(e) => tracing::warn!("a scheduled run is skipped: {e}"),
    }
}

async fn build(service: &Arc<Service>, entries: &[Entry]) -> Result<JobScheduler, SchedulerError> {
    let cron = JobScheduler::new().await?;
    for entry in entries {
        let (service, work) = (service.clone(), entry.work.clone());
        let job = Job::new_async_tz(entry.schedule.as_str(), entry.timezone.0, move |_, _| {
            let (service, work) = (service.clone(), work.clone());
            Box::pin(async move { fire(&service, work) })
        })?;
        cron.add(job).await?;
    }
    cron.start().await?;
    Ok(cron)
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scheduler")
    }
}

impl Scheduler {
    /// Adds every enabled schedule and starts ticking.
    ///
    /// Fails when the scheduler cannot start.
    pub async fn start(service: &Arc<Service>) -> Result<Self, SchedulerError> {
        let entries = entries(service.config());
        for entry in &entries {
            tracing::info!(
                job = entry.work.name(),
                "scheduled at \"{}\" ({})",
                entry.schedule,
                entry.timezone
            );
        }
        let cron = Arc::new(tokio::sync::Mutex::new(build(service, &entries).await?));
        let follow = tokio::spawn(follow_offsets(service.clone(), entries, cron.clone()));
        Ok(Self { cron, follow })
    }

    /// Stops scheduling; runs already started go on.
    pub async fn shutdown(self) {
        self.follow.abort();
        if let Err(e) = self.cron.lock().await.shutdown().await {
            tracing::warn!("stopping the cron scheduler: {e}");
        }
    }
}

/// Rebuilds the entries whenever a zone's offset changes.
async fn follow_offsets(
    service: Arc<Service>,
    entries: Vec<Entry>,
    cron: Arc<tokio::sync::Mutex<JobScheduler>>,
) {
    let offsets = |entries: &[Entry]| {
        entries
            .iter()
            .map(|e| offset(e.timezone))
            .collect::<Vec<_>>()
    };
    let mut known = offsets(&entries);
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let now = offsets(&entries);
        if now == known || service.is_stopping() {
            continue;
        }
        let mut current = cron.lock().await;
        match build(&service, &entries).await {
            Ok(fresh) => {
                if let Err(e) = current.shutdown().await {
                    tracing::warn!("stopping the cron scheduler: {e}");
                }
                *current = fresh;
                known = now;
                tracing::info!("a time zone changed its UTC offset; schedules follow it");
            }
            Err(e) => tracing::error!("{e}"),
        }
    }
}

/// Why `job` should run now, at start, rather than wait for its schedule:
/// it has no snapshot yet, or a run was missed since its last success and
/// waiting for the next one would leave the newest snapshot older than
/// `rpo`. `None` when waiting is fine.
pub fn make_up_reason(
    schedule: &CronSchedule,
    timezone: Timezone,
    rpo: Duration,
    last_success: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<String> {
    let next = schedule.next_after(now, timezone)?;
    let Some(last) = last_success else {
        return Some("it has no snapshot yet".into());
    };
    let missed = schedule.next_after(last, timezone).filter(|t| *t <= now)?;
    let age_at_next = (next - last).to_std().unwrap_or_default();
    (age_at_next > rpo).then(|| {
        format!(
            "its run at {missed} was missed, and waiting for the next at {next} would leave its newest \
             snapshot {} old, beyond its RPO of {}",
            humantime::format_duration(Duration::from_secs(age_at_next.as_secs())),
            humantime::format_duration(rpo)
        )
    })
}

/// Requests a run of every enabled, scheduled job whose RPO needs one now.
///
/// Fails when the history cannot be read.
pub async fn make_up_missed_runs(service: &Arc<Service>) -> Result<(), crate::state::HistoryError> {
    let successes = service.history(|h| h.last_successes()).await?;
    let catalog = service.catalog();
    let config = service.config();
    let now = Utc::now();
    for job in config.jobs.iter().filter(|j| j.enabled) {
        let Some(schedule) = &job.schedule else {
            continue;
        };
        let last = successes
            .get(&job.name)
            .copied()
            .max(catalog.newest_time(&job.name));
        let rpo = config.rpo_of(job);
        if let Some(reason) = make_up_reason(schedule, config.timezone_of(job), rpo, last, now) {
            tracing::info!(job = %job.name, "running now: {reason}");
            if let Err(e) = service.request(Work::Backup(job.name.clone()), Trigger::MakeUp) {
                tracing::info!(job = %job.name, "no make-up run: {e}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_missed_run_is_made_up_only_when_waiting_breaks_the_rpo() -> anyhow::Result<()> {
        let hourly: CronSchedule = "0 0 * * * *".parse().map_err(anyhow::Error::msg)?;
        let utc = Timezone::default();
        let now = Utc
            .with_ymd_and_hms(2026, 5, 1, 12, 30, 0)
            .single()
            .unwrap_or_default();
        let at = |h, m| Utc.with_ymd_and_hms(2026, 5, 1, h, m, 0).single();
        let hour = Duration::from_secs(3600);
        // Last success at 11:00, the 12:00 run missed, the next at 13:00.
        assert!(make_up_reason(&hourly, utc, hour, at(11, 0), now).is_some());
        // The same miss with a relaxed RPO waits for 13:00.
        assert!(make_up_reason(&hourly, utc, 3 * hour, at(11, 0), now).is_none());
        // Last success at 12:00: nothing missed.
        assert!(make_up_reason(&hourly, utc, hour / 2, at(12, 0), now).is_none());
        // Never backed up.
        assert!(make_up_reason(&hourly, utc, 3 * hour, None, now).is_some());
        Ok(())
    }
}
