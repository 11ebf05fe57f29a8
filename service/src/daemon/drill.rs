//! The service's own restore drills (`[drill]`): unlocking the repository
//! with the restore key, drilling the jobs as `lifeboat drill` does, and
//! keeping the last report in the state folder, so `/metrics`, the status
//! page and `/api/v1/drill` show it across restarts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::job::{JobError, open_service_repository};
use crate::config::{Config, DrillTask};
use crate::drill::{DrillReport, DrillSettings, JobReport};
use crate::repo::keys::AnyIdentity;
use crate::repo::{RepoError, Repository};
use crate::sources::drill_jobs;
use crate::storage;

/// The last drill's report, in the state folder.
pub const REPORT_FILE: &str = "drill-report.json";

/// How long a throwaway etcd may take to answer in a drill.
const ETCD_WAIT: Duration = Duration::from_secs(60);

/// The last drill's report kept in `state`, when there is a readable one.
pub(crate) fn load(state: &Path) -> Option<DrillReport> {
    let path = state.join(REPORT_FILE);
    let bytes = std::fs::read(&path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(report) => Some(report),
        Err(e) => {
            tracing::warn!(
                "ignoring the drill report {} ({e}); the next drill replaces it",
                path.display()
            );
            None
        }
    }
}

/// Keeps `report` in `state`, replacing the previous one whole.
fn save(state: &Path, report: &DrillReport) -> std::io::Result<()> {
    std::fs::create_dir_all(state)?;
    let json = serde_json::to_vec_pretty(report).map_err(std::io::Error::other)?;
    let partial: PathBuf = state.join(format!("{REPORT_FILE}.partial"));
    std::fs::write(&partial, json)?;
    std::fs::rename(&partial, state.join(REPORT_FILE))
}

fn log_job(job: &JobReport) {
    tracing::info!(
        job = %job.job,
        passed = job.passed(),
        rto_seconds = job.rto_seconds,
        "drilled"
    );
}

/// Why a drill could not run (a job's failing drill is in its report).
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// The configuration, the store or a key is unusable.
    #[error(transparent)]
    Setup(#[from] JobError),
    /// The repository failed (a wrong restore key among them).
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The scratch folder cannot be made.
    #[error("cannot make the drill's scratch folder {}: {source}; check the state folder's space and permissions", path.display())]
    Scratch {
        /// The folder.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The drill's thread stopped.
    #[error("the drill stopped: {0}")]
    Stopped(String),
}

/// Drills the jobs of `task` with its restore key and keeps the report in
/// the state folder; returns the report.
///
/// Fails when the restore key or the repository cannot be used, or the
/// scratch folder cannot be made.
pub(crate) async fn run(config: &Config, task: &DrillTask) -> Result<DrillReport, DrillError> {
    let jobs = config
        .drill_jobs(&task.jobs, Path::new("lifeboat.toml"))
        .map_err(JobError::from)?;
    // The service key's open checks the repository's pinned identity.
    drop(open_service_repository(config).await?);
    let settings = &config.repository;
    let store = storage::open(&settings.url, &settings.s3)
        .await
        .map_err(JobError::from)?;
    let repo = Repository::open(store).await?;
    let identity = AnyIdentity::from_file(&task.identity, None).map_err(JobError::from)?;
    let identity = repo.identify(identity)?;
    let repo = repo
        .unlock(identity)
        .await?
        .into_restore("drilling restores")?;
    let snapshots = repo.snapshots().await?;
    let state = config.state_folder();
    let scratch = state.join("drill-scratch");
    let fresh = match std::fs::remove_dir_all(&scratch) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => std::fs::create_dir_all(&scratch),
    };
    fresh.map_err(|source| DrillError::Scratch {
        path: scratch.clone(),
        source,
    })?;
    let drill_settings = DrillSettings {
        scratch: scratch.clone(),
        pg_url: task.pg_url.clone(),
        pg_bin: None,
        pg_container: None,
        docker_socket: task.docker_socket.clone(),
        rto_target: config.service.rto,
        etcd_wait: ETCD_WAIT,
        kube_dry_run: None,
        measure_memory: false,
    };
    let reader = repo.reader();
    // The drill's futures are not `Send` for every lifetime (rustc cannot
    // prove it through the kinds' step closures), so they cannot be
    // spawned on the service's runtime: a blocking thread drives them.
    let runtime = tokio::runtime::Handle::current();
    let report = tokio::task::spawn_blocking(move || {
        runtime.block_on(drill_jobs(
            &reader,
            &snapshots,
            &jobs,
            &drill_settings,
            log_job,
        ))
    })
    .await
    .map_err(|e| DrillError::Stopped(e.to_string()))?;
    if let Err(e) = std::fs::remove_dir_all(&scratch) {
        tracing::warn!(
            "the drill's scratch folder {} stays: {e}",
            scratch.display()
        );
    }
    if let Err(e) = save(&state, &report) {
        tracing::warn!("the drill report is not kept in {}: {e}", state.display());
    }
    Ok(report)
}
