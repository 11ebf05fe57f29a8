//! `/healthz` (the process answers) and `/readyz` (the configuration was
//! valid, the repository is reachable, and the service is not stopping).
//!
//! Readiness reads the repository's `config` object, at most once every
//! ten seconds however often it is asked, so probes cost almost nothing on
//! a paid object store.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::AppState;
use crate::repo::Repository;
use crate::storage;

/// How long a probe's answer is reused.
const PROBE_TTL: Duration = Duration::from_secs(10);
/// How long a probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The last repository probe and when it was made.
#[derive(Debug, Default)]
pub struct ProbeCache(tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>);

/// The health routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// The body of `/readyz`.
#[derive(Serialize)]
struct Readiness {
    ready: bool,
    /// Always `valid`: lifeboatd does not start on an invalid one.
    config: &'static str,
    /// `reachable`, or why the repository is not.
    repository: String,
    /// Whether the service is shutting down.
    stopping: bool,
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let repository = probe(&state).await;
    let stopping = state.service.is_stopping();
    let ready = repository.is_ok() && !stopping;
    let body = Readiness {
        ready,
        config: "valid",
        repository: match repository {
            Ok(()) => "reachable".to_owned(),
            Err(e) => e,
        },
        stopping,
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// Whether the repository answers, from the cache when fresh.
async fn probe(state: &AppState) -> Result<(), String> {
    let mut cached = state.probe.0.lock().await;
    if let Some((at, result)) = cached.as_ref() {
        if at.elapsed() < PROBE_TTL {
            return result.clone();
        }
    }
    let settings = &state.service.config().repository;
    let attempt = async {
        let store = storage::open(&settings.url, &settings.s3)
            .await
            .map_err(|e| e.to_string())?;
        Repository::open(store)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let result = tokio::time::timeout(PROBE_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "{} did not answer within {PROBE_TIMEOUT:?}",
                settings.url
            ))
        });
    if let Err(e) = &result {
        tracing::warn!("not ready: {e}");
    }
    *cached = Some((Instant::now(), result.clone()));
    result
}
