//! `/api/v1/snapshots` and `/api/v1/repository`: the repository as the
//! service last listed it (after every run, and at start); and
//! `/api/v1/drill`: the report of the service's last restore drill.
//!
//! Snapshot summaries are what the service key can read: times, counts and
//! sizes, never file names or contents.

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{AppError, AppState};
use crate::daemon::catalog::SnapshotInfo;
use crate::drill::DrillReport;

/// The snapshot and repository routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/snapshots", get(snapshots))
        .route("/api/v1/repository", get(repository))
        .route("/api/v1/drill", get(drill))
}

/// The last drill's report (as `lifeboat drill --json` prints it).
async fn drill(State(state): State<AppState>) -> Result<Json<DrillReport>, AppError> {
    state.service.last_drill().map(Json).ok_or_else(|| {
        AppError::NotFound(
            "no drill has run here yet: add a [drill] table to lifeboat.toml, or start one with \
             POST /api/v1/jobs/drill/run"
                .into(),
        )
    })
}

/// Which snapshots to list.
#[derive(Debug, Deserialize)]
struct SnapshotsQuery {
    job: Option<String>,
}

async fn snapshots(
    State(state): State<AppState>,
    Query(query): Query<SnapshotsQuery>,
) -> Result<Json<Vec<SnapshotInfo>>, AppError> {
    let catalog = state.service.catalog();
    if catalog.figures().counted.is_none() {
        return Err(AppError::Unavailable(
            "the repository has not been listed yet; see /readyz".into(),
        ));
    }
    Ok(Json(catalog.snapshots(query.job.as_deref())))
}

/// `GET /api/v1/repository`: where the repository is and how big.
#[derive(Serialize)]
struct RepositoryInfo {
    url: String,
    size_bytes: u64,
    packs: u64,
    snapshots: u64,
    /// When the figures were counted; `None` before the first listing.
    counted: Option<DateTime<Utc>>,
    /// The recovery time objective configured, in seconds.
    rto_seconds: Option<u64>,
}

async fn repository(State(state): State<AppState>) -> Json<RepositoryInfo> {
    let figures = state.service.catalog().figures();
    let config = state.service.config();
    Json(RepositoryInfo {
        url: config.repository.url.clone(),
        size_bytes: figures.size_bytes,
        packs: figures.packs,
        snapshots: figures.snapshots,
        counted: figures.counted,
        rto_seconds: config.service.rto.map(|d| d.as_secs()),
    })
}
