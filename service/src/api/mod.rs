//! The service's HTTP side (axum): health for the orchestrator, metrics for
//! Prometheus, a JSON API under `/api/v1`, and a status page at `/`.
//!
//! [`app`] builds the whole router from an [`AppState`], apart from any
//! listener, so tests drive it with `tower::ServiceExt::oneshot`. Each
//! resource has its own router: [`health`], [`metrics`], [`jobs`],
//! [`snapshots`], [`status_page`]. Reading is open; what changes something
//! (triggering a run) needs the bearer token of [`auth`], and so do
//! `/api/v1` reads when the service listens beyond loopback. Every handler
//! fails with one [`AppError`], which hides the details of server faults
//! from clients and logs them instead. [`serve`] wires the service, the
//! scheduler and the listener together and shuts them down in order.

pub mod auth;
pub mod health;
pub mod jobs;
pub mod metrics;
pub mod serve;
pub mod snapshots;
pub mod status_page;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::daemon::{Refusal, Service};
use crate::state::HistoryError;
pub use auth::ApiToken;
pub use serve::{ServeError, ServeOptions, serve, shutdown_signal};

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The running service.
    pub service: Arc<Service>,
    /// The token mutating requests must bear.
    pub token: Arc<ApiToken>,
    /// The last repository probe of `/readyz`.
    probe: Arc<health::ProbeCache>,
    /// Whether `/api/v1` reads need the token too (listening beyond
    /// loopback), and the status page hides run errors.
    reads_need_token: bool,
}

impl AppState {
    /// State for `service`, with `token` guarding mutating requests; reads
    /// are open, as on a loopback listener.
    pub fn new(service: Arc<Service>, token: ApiToken) -> Self {
        Self {
            service,
            token: Arc::new(token),
            probe: Arc::default(),
            reads_need_token: false,
        }
    }

    /// The same state with `/api/v1` reads needing the token when
    /// `protect` is true. Run errors name host paths, claims and databases:
    /// a service that listens beyond loopback shows them only to holders of
    /// the token.
    pub fn protect_reads(mut self, protect: bool) -> Self {
        self.reads_need_token = protect;
        self
    }

    /// Whether reads need the token.
    pub fn reads_need_token(&self) -> bool {
        self.reads_need_token
    }
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .merge(jobs::router())
        .merge(snapshots::router())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token_for_reads,
        ));
    Router::new()
        .merge(health::router())
        .merge(metrics::router())
        .merge(api)
        .merge(status_page::router())
        .with_state(state)
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// No or a wrong bearer token.
    #[error(
        "this request needs the API token: send `Authorization: Bearer <token>` with the token \
         from the service's token_file"
    )]
    Unauthorized,
    /// A run was not started.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The history failed (a server fault: logged, not shown).
    #[error(transparent)]
    History(#[from] HistoryError),
    /// Something the answer needs is not available yet.
    #[error("{0}")]
    Unavailable(String),
}

/// The body of every error answer.
#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::NotFound(_) | Self::Refused(Refusal::UnknownJob(_)) => StatusCode::NOT_FOUND,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Refused(Refusal::Busy(_)) => StatusCode::CONFLICT,
            Self::Refused(Refusal::Stopping) | Self::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::History(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!("request failed: {}", crate::errors::describe(&self));
            "internal error; the service's log has the details".to_owned()
        } else {
            self.to_string()
        };
        let body = Json(ErrorBody { error: message });
        if status == StatusCode::UNAUTHORIZED {
            let challenge = [(header::WWW_AUTHENTICATE, "Bearer realm=\"lifeboat\"")];
            return (status, challenge, body).into_response();
        }
        (status, body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::state::History;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn state(dir: &std::path::Path) -> anyhow::Result<AppState> {
        let text = "[repository]\nurl = \"repo\"\nservice_identity = \"keys/service.key\"\n\
                    [[job]]\nname = \"docs\"\nsource = { kind = \"directory\", paths = [\"docs\"] }\n\
                    schedule = \"0 0 * * * *\"\nrpo = \"1h\"\n";
        let config = Config::parse(text, &dir.join("lifeboat.toml"))?;
        let service = Service::new(config, History::open(&dir.join("state"))?);
        Ok(AppState::new(service, ApiToken::new(TOKEN)))
    }

    async fn call(
        state: &AppState,
        method: &str,
        uri: &str,
        token: Option<&str>,
    ) -> anyhow::Result<(StatusCode, String)> {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = app(state.clone())
            .oneshot(request.body(Body::empty())?)
            .await?;
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await?;
        Ok((status, String::from_utf8(body.to_vec())?))
    }

    #[tokio::test]
    async fn routes_answer_and_a_trigger_needs_the_token_and_never_overlaps() -> anyhow::Result<()>
    {
        let dir = tempfile::tempdir()?;
        let state = state(dir.path())?;
        assert_eq!(
            call(&state, "GET", "/healthz", None).await?.0,
            StatusCode::OK
        );
        let (status, body) = call(&state, "GET", "/api/v1/jobs", None).await?;
        assert_eq!(status, StatusCode::OK);
        let jobs: serde_json::Value = serde_json::from_str(&body)?;
        assert_eq!(jobs[0]["name"], "docs");
        assert_eq!(jobs[0]["rpo"]["state"], "waiting");
        assert!(jobs[0]["next_run"].is_string());

        let run = "/api/v1/jobs/docs/run";
        assert_eq!(
            call(&state, "POST", run, None).await?.0,
            StatusCode::UNAUTHORIZED
        );
        let wrong = Some("0123456789abcdef0123456789abcdeX");
        assert_eq!(
            call(&state, "POST", run, wrong).await?.0,
            StatusCode::UNAUTHORIZED
        );
        let unknown = call(&state, "POST", "/api/v1/jobs/nope/run", Some(TOKEN)).await?;
        assert_eq!(unknown.0, StatusCode::NOT_FOUND, "{}", unknown.1);
        assert_eq!(
            call(&state, "POST", run, Some(TOKEN)).await?.0,
            StatusCode::ACCEPTED
        );
        let again = call(&state, "POST", run, Some(TOKEN)).await?;
        assert_eq!(again.0, StatusCode::CONFLICT, "{}", again.1);

        let (status, metrics) = call(&state, "GET", "/metrics", None).await?;
        assert_eq!(status, StatusCode::OK);
        assert!(metrics.contains("# TYPE lifeboat_job_runs_total counter"));
        assert!(metrics.contains("lifeboat_job_rpo_breached{job=\"docs\"} 0"));
        let (status, page) = call(&state, "GET", "/", None).await?;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("id=\"job-docs\""));
        let missing = call(&state, "GET", "/api/v1/jobs/nope", None).await?;
        assert_eq!(missing.0, StatusCode::NOT_FOUND);
        assert!(missing.1.contains("GET /api/v1/jobs lists them"));

        let report = state
            .service
            .shutdown(std::time::Duration::from_secs(30))
            .await;
        assert_eq!(report.interrupted, 0);
        let refused = call(&state, "POST", run, Some(TOKEN)).await?;
        assert_eq!(refused.0, StatusCode::SERVICE_UNAVAILABLE);
        Ok(())
    }

    #[tokio::test]
    async fn beyond_loopback_reads_need_the_token_and_the_page_hides_errors() -> anyhow::Result<()>
    {
        let dir = tempfile::tempdir()?;
        let state = state(dir.path())?.protect_reads(true);
        let secret = "cannot read /var/openebs/local/pvc-secret-db";
        state
            .service
            .history(move |h| {
                let id = h.start("docs", "backup", "schedule", chrono::Utc::now())?;
                let figures = crate::state::RunFigures {
                    error: Some(secret.into()),
                    ..crate::state::RunFigures::default()
                };
                h.finish(
                    id,
                    crate::state::RunResult::Failure,
                    chrono::Utc::now(),
                    &figures,
                )
            })
            .await?;
        for uri in [
            "/api/v1/jobs",
            "/api/v1/runs",
            "/api/v1/snapshots",
            "/api/v1/tasks",
        ] {
            let (status, body) = call(&state, "GET", uri, None).await?;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}: {body}");
            assert!(!body.contains("pvc-secret"), "{body}");
        }
        let (status, runs) = call(&state, "GET", "/api/v1/runs", Some(TOKEN)).await?;
        assert_eq!(status, StatusCode::OK);
        assert!(runs.contains("pvc-secret-db"), "{runs}");
        for open in ["/healthz", "/metrics"] {
            assert_eq!(
                call(&state, "GET", open, None).await?.0,
                StatusCode::OK,
                "{open}"
            );
        }
        let (status, page) = call(&state, "GET", "/", None).await?;
        assert_eq!(status, StatusCode::OK);
        assert!(
            !page.contains("pvc-secret") && page.contains("API token"),
            "{page}"
        );
        let (_, page) = call(&state, "GET", "/", Some(TOKEN)).await?;
        assert!(
            page.contains("pvc-secret-db"),
            "the token shows the details"
        );
        Ok(())
    }

    #[tokio::test]
    async fn server_faults_are_hidden_from_clients() -> anyhow::Result<()> {
        let fault = AppError::History(HistoryError::Unavailable("secret detail".into()));
        let response = fault.into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await?;
        let text = String::from_utf8(body.to_vec())?;
        assert!(!text.contains("secret") && text.contains("log"), "{text}");
        Ok(())
    }
}
