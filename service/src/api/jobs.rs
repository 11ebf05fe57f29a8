//! `/api/v1/jobs`, `/api/v1/runs` and `/api/v1/tasks`: what each job and
//! task is doing, its history, and triggering a run (with the token).
//!
//! - `GET /api/v1/jobs`, `GET /api/v1/jobs/{name}`: schedule, activity,
//!   last run and RPO status;
//! - `GET /api/v1/jobs/{name}/runs?limit=N`, `GET /api/v1/runs?job=NAME&limit=N`:
//!   runs, newest first (default 50, at most 1000);
//! - `POST /api/v1/jobs/{name}/run`: queue a run now (of a job, or of the
//!   `prune`, `check`, `drill` or `mirror` task when configured); 202 when queued,
//!   409 while one is queued or running, 503 during shutdown;
//! - `GET /api/v1/tasks`: the prune and check tasks.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::auth::Authorized;
use super::{AppError, AppState};
use crate::daemon::status::{JobStatus, TaskStatus};
use crate::daemon::{Trigger, Work};
use crate::state::RunRecord;

/// The job and run routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/jobs", get(list))
        .route("/api/v1/jobs/{name}", get(one))
        .route("/api/v1/jobs/{name}/runs", get(job_runs))
        .route("/api/v1/jobs/{name}/run", post(trigger))
        .route("/api/v1/runs", get(runs))
        .route("/api/v1/tasks", get(tasks))
}

/// How many runs to list.
#[derive(Debug, Deserialize)]
struct RunsQuery {
    job: Option<String>,
    limit: Option<usize>,
}

impl RunsQuery {
    fn limit(&self) -> usize {
        self.limit.unwrap_or(50).clamp(1, 1000)
    }
}

async fn list(State(state): State<AppState>) -> Result<Json<Vec<JobStatus>>, AppError> {
    Ok(Json(state.service.overview().await?.jobs))
}

fn unknown(name: &str) -> AppError {
    AppError::NotFound(format!(
        "no job is called {name:?}; GET /api/v1/jobs lists them"
    ))
}

async fn one(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<JobStatus>, AppError> {
    state
        .service
        .overview()
        .await?
        .jobs
        .into_iter()
        .find(|j| j.name == name)
        .map(Json)
        .ok_or_else(|| unknown(&name))
}

async fn job_runs(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<RunsQuery>,
) -> Result<Json<Vec<RunRecord>>, AppError> {
    if !state.service.config().jobs.iter().any(|j| j.name == name) {
        return Err(unknown(&name));
    }
    let limit = query.limit();
    let runs = state
        .service
        .history(move |h| h.recent(Some(&name), limit))
        .await?;
    Ok(Json(runs))
}

async fn runs(
    State(state): State<AppState>,
    Query(query): Query<RunsQuery>,
) -> Result<Json<Vec<RunRecord>>, AppError> {
    let limit = query.limit();
    let runs = state
        .service
        .history(move |h| h.recent(query.job.as_deref(), limit))
        .await?;
    Ok(Json(runs))
}

async fn tasks(State(state): State<AppState>) -> Result<Json<Vec<TaskStatus>>, AppError> {
    Ok(Json(state.service.overview().await?.tasks))
}

/// The answer to a run requested through the API.
#[derive(Serialize)]
struct Queued {
    job: String,
    state: &'static str,
    /// Where the run will be listed.
    runs: String,
}

async fn trigger(
    _: Authorized,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<Queued>), AppError> {
    let config = state.service.config();
    let (work, runs) = match name.as_str() {
        "prune" if config.prune.is_some() => (Work::Prune, "/api/v1/runs?job=prune".to_owned()),
        "check" if config.check.is_some() => (Work::Check, "/api/v1/runs?job=check".to_owned()),
        "drill" if config.drill.is_some() => (Work::Drill, "/api/v1/runs?job=drill".to_owned()),
        "mirror" if !config.mirrors.is_empty() => {
            (Work::Mirror, "/api/v1/runs?job=mirror".to_owned())
        }
        _ => (
            Work::Backup(name.clone()),
            format!("/api/v1/jobs/{name}/runs"),
        ),
    };
    state.service.request(work, Trigger::Manual)?;
    tracing::info!(job = %name, "run requested through the API");
    let body = Queued {
        runs,
        job: name,
        state: "queued",
    };
    Ok((StatusCode::ACCEPTED, Json(body)))
}
