//! The running service: the configuration, the run history, the catalog of
//! the repository, what each job is doing, and shutdown.
//!
//! Runs are requested and carried out by [`super::runner`]. Once shutdown
//! has begun nothing new starts; [`Service::shutdown`] lets running jobs
//! finish within the grace period and then stops them; a stopped backup
//! has written no snapshot, so the repository stays consistent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::catalog::Catalog;
use super::job::{JobError, open_service_repository};
use crate::backup::Progress;
use crate::config::Config;
use crate::drill::DrillReport;
use crate::repo::UnlockedRepository;
use crate::state::{History, HistoryError};

/// What a run does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    /// Back up the job of this name, then apply its retention.
    Backup(String),
    /// Prune the repository.
    Prune,
    /// Check the repository.
    Check,
    /// Drill restores with the restore key.
    Drill,
    /// Copy new objects to the mirrors.
    Mirror,
}

impl Work {
    /// The name runs are recorded under: the job's, or `prune`/`check`.
    pub fn name(&self) -> &str {
        match self {
            Self::Backup(name) => name,
            Self::Prune => "prune",
            Self::Check => "check",
            Self::Drill => "drill",
            Self::Mirror => "mirror",
        }
    }

    /// `backup`, `prune`, `check`, `drill` or `mirror`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Backup(_) => "backup",
            Self::Prune => "prune",
            Self::Check => "check",
            Self::Drill => "drill",
            Self::Mirror => "mirror",
        }
    }
}

/// Why a run was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// Its schedule fired.
    Schedule,
    /// Someone asked through the API.
    Manual,
    /// At start, because waiting for the schedule would break the RPO.
    MakeUp,
}

impl Trigger {
    /// The name recorded in the history.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Schedule => "schedule",
            Self::Manual => "manual",
            Self::MakeUp => "make-up",
        }
    }
}

/// What a job or task is doing now.
#[derive(Debug, Clone, Default)]
pub enum Activity {
    /// Nothing.
    #[default]
    Idle,
    /// Waiting for its jitter delay or a free slot.
    Queued {
        /// Since when.
        since: DateTime<Utc>,
        /// Why.
        trigger: Trigger,
    },
    /// Running.
    Running {
        /// When it was queued.
        queued: DateTime<Utc>,
        /// Since when it runs.
        since: DateTime<Utc>,
        /// Why.
        trigger: Trigger,
        /// Live counters of a backup.
        progress: Arc<Progress>,
    },
}

/// How shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Runs stopped when the grace period ended.
    pub interrupted: usize,
}

/// The running service, shared by the scheduler, the runs and the API.
#[derive(Debug)]
pub struct Service {
    pub(super) config: Config,
    history: Arc<History>,
    catalog: RwLock<Catalog>,
    pub(super) activities: Mutex<HashMap<String, Activity>>,
    pub(super) slots: Arc<Semaphore>,
    pub(super) runs: Mutex<JoinSet<()>>,
    pub(super) stopping: CancellationToken,
    repository_ready: AtomicBool,
    repository_opening: tokio::sync::Mutex<()>,
    last_drill: Mutex<Option<DrillReport>>,
    claims: Mutex<super::claims::ClaimTable>,
    pub(super) wal_receivers: super::wal::Receivers,
    started: DateTime<Utc>,
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Service {
    /// A service for `config` recording into `history`; nothing runs yet.
    pub fn new(config: Config, history: History) -> Arc<Self> {
        let slots = config.service.max_concurrent_jobs.get();
        let last_drill = super::drill::load(&config.state_folder());
        let claims = super::claims::load(&config.state_folder());
        let wal_receivers = super::wal::table(&config);
        Arc::new(Self {
            config,
            history: Arc::new(history),
            catalog: RwLock::default(),
            activities: Mutex::default(),
            slots: Arc::new(Semaphore::new(slots)),
            runs: Mutex::default(),
            stopping: CancellationToken::new(),
            repository_ready: AtomicBool::new(false),
            repository_opening: tokio::sync::Mutex::new(()),
            last_drill: Mutex::new(last_drill),
            claims: Mutex::new(claims),
            wal_receivers,
            started: Utc::now(),
        })
    }

    /// The configuration it runs.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Starts the WAL receivers of the `postgres-wal` jobs; they stop
    /// when the service does.
    pub fn start_wal_receivers(&self) {
        super::wal::start(&self.config, &self.wal_receivers, &self.stopping);
    }

    /// The WAL receivers' states, by job.
    pub fn wal_receivers(&self) -> &super::wal::Receivers {
        &self.wal_receivers
    }

    /// When it started.
    pub fn started(&self) -> DateTime<Utc> {
        self.started
    }

    /// Whether shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.stopping.is_cancelled()
    }

    /// Resolves when shutdown begins.
    pub async fn stopping(&self) {
        self.stopping.cancelled().await;
    }

    /// Runs `f` on the history on the blocking pool.
    ///
    /// Fails when the database fails.
    pub async fn history<T: Send + 'static>(
        &self,
        f: impl FnOnce(&History) -> Result<T, HistoryError> + Send + 'static,
    ) -> Result<T, HistoryError> {
        let history = self.history.clone();
        tokio::task::spawn_blocking(move || f(&history))
            .await
            .unwrap_or_else(|e| Err(HistoryError::Unavailable(e.to_string())))
    }

    /// A copy of the catalog as last refreshed.
    pub fn catalog(&self) -> Catalog {
        self.catalog
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the catalog.
    pub(crate) fn set_catalog(&self, catalog: Catalog) {
        *self.catalog.write().unwrap_or_else(PoisonError::into_inner) = catalog;
    }

    /// Lists the repository again and reads new snapshots.
    ///
    /// Fails when the repository cannot be listed or read.
    pub async fn refresh_catalog(
        &self,
        repo: &UnlockedRepository,
    ) -> Result<(), crate::repo::RepoError> {
        let mut catalog = self.catalog();
        catalog.refresh(repo).await?;
        self.set_catalog(catalog);
        Ok(())
    }

    /// Opens the repository with the service key. The first open creates
    /// the keys and the repository when missing, one caller at a time.
    ///
    /// Fails when the store is unreachable or a key is unusable.
    pub async fn open_repository(&self) -> Result<UnlockedRepository, JobError> {
        if self.repository_ready.load(Ordering::Acquire) {
            return open_service_repository(&self.config).await;
        }
        let _only_one = self.repository_opening.lock().await;
        let repo = open_service_repository(&self.config).await?;
        self.repository_ready.store(true, Ordering::Release);
        Ok(repo)
    }

    /// The report of the last drill this service ran, if any.
    pub fn last_drill(&self) -> Option<DrillReport> {
        lock(&self.last_drill).clone()
    }

    pub(super) fn set_last_drill(&self, report: DrillReport) {
        *lock(&self.last_drill) = Some(report);
    }

    /// What each volumes job last did with each claim.
    pub fn claims(&self) -> super::claims::ClaimTable {
        lock(&self.claims).clone()
    }

    /// Records the volume items of `job`'s run that ended at `time`, and
    /// keeps them in the state folder.
    pub(super) fn record_claims(
        &self,
        job: &str,
        items: &[crate::backup::items::Item],
        time: DateTime<Utc>,
    ) {
        let mut claims = lock(&self.claims);
        if super::claims::update(&mut claims, job, items, time) {
            if let Err(e) = super::claims::save(&self.config.state_folder(), &claims) {
                tracing::warn!("keeping the claims' status in the state folder failed: {e}");
            }
        }
    }

    /// What `name` (a job, `prune`, `check` or `drill`) is doing now.
    pub fn activity(&self, name: &str) -> Activity {
        lock(&self.activities)
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// When each backup now running started.
    pub(crate) fn running_backups_since(&self) -> Vec<DateTime<Utc>> {
        let activities = lock(&self.activities);
        self.config
            .jobs
            .iter()
            .filter_map(|job| match activities.get(&job.name) {
                Some(Activity::Running { since, .. }) => Some(*since),
                _ => None,
            })
            .collect()
    }

    pub(super) fn set_activity(&self, name: &str, activity: Activity) {
        lock(&self.activities).insert(name.to_owned(), activity);
    }

    /// Starts no new runs, lets running ones finish within `grace`, then
    /// stops the rest and records them as interrupted.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        self.stopping.cancel();
        let mut runs = std::mem::take(&mut *lock(&self.runs));
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = runs.join_next() => if next.is_none() {
                    return ShutdownReport { interrupted: 0 };
                },
                () = &mut deadline => break,
            }
        }
        runs.abort_all();
        while runs.join_next().await.is_some() {}
        let interrupted = self
            .history(|h| h.interrupt_unfinished())
            .await
            .unwrap_or_else(|e| {
                tracing::error!("{e}");
                0
            });
        ShutdownReport { interrupted }
    }
}
