//! `/metrics` in the Prometheus text format (0.0.4).
//!
//! Names follow Prometheus conventions: a `lifeboat_` prefix, base units
//! (`_seconds`, `_bytes`), `_total` on counters, one `job` label per backup
//! job. Counters come from the run history's totals, so they survive
//! restarts. Alert on `lifeboat_job_rpo_breached == 1`. When the service
//! drills restores itself (`[drill]`), the last drill's
//! `lifeboat_drill_*` series follow, then one `lifeboat_volume_*` series
//! per claim of each volumes job, then one `lifeboat_mirror_*` series per
//! mirror (alert on `lifeboat_mirror_lag_seconds`), then
//! `lifeboat_wal_receiver_up` per WAL archiving job.

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;

use super::{AppError, AppState};
use crate::daemon::catalog::RepositoryFigures;
use crate::daemon::status::Overview;
use crate::state::history::JobTotals;
use crate::text::prometheus::Exposition;

/// The metrics route.
pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, AppError> {
    let overview = state.service.overview().await?;
    let figures = state.service.catalog().figures();
    let rto = state.service.config().service.rto;
    let mut text = render(&overview, figures, rto);
    // The service's own drills, under the names `lifeboat drill --metrics`
    // writes, so the same alerts read both.
    if let Some(report) = state.service.last_drill() {
        text.push_str(&crate::drill::metrics::render(&report));
    }
    text.push_str(&crate::daemon::claims::render(&state.service.claims()));
    let mirrors = crate::daemon::mirror::load(&state.service.config().state_folder());
    text.push_str(&crate::daemon::mirror::render(&mirrors, chrono::Utc::now()));
    text.push_str(&crate::daemon::wal::render(state.service.wal_receivers()));
    Ok((
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    ))
}

/// Results every job reports a counter for, even at zero.
const RESULTS: [&str; 3] = ["success", "failure", "interrupted"];

fn runs_of(totals: &JobTotals, result: &str) -> f64 {
    totals.runs.get(result).copied().unwrap_or(0) as f64
}

/// Writes every metric.
pub fn render(
    overview: &Overview,
    figures: RepositoryFigures,
    rto: Option<std::time::Duration>,
) -> String {
    let mut out = Exposition(String::new());
    let jobs = &overview.jobs;
    let per_job = |out: &mut Exposition, name, kind, help, value: &dyn Fn(usize) -> Option<f64>| {
        out.family(name, kind, help);
        for (i, job) in jobs.iter().enumerate() {
            if let Some(v) = value(i) {
                out.sample(name, &[("job", &job.name)], v);
            }
        }
    };
    per_job(
        &mut out,
        "lifeboat_job_last_success_timestamp_seconds",
        "gauge",
        "When the data of the job's newest successful backup is from (its start), in seconds since the epoch.",
        &|i| {
            jobs[i]
                .rpo
                .last_success
                .map(|t| t.timestamp_millis() as f64 / 1000.0)
        },
    );
    per_job(
        &mut out,
        "lifeboat_job_last_run_duration_seconds",
        "gauge",
        "How long the job's newest finished run took.",
        &|i| {
            jobs[i]
                .last_run
                .as_ref()
                .map(|r| r.duration().num_milliseconds() as f64 / 1000.0)
        },
    );
    out.family(
        "lifeboat_job_runs_total",
        "counter",
        "Finished runs of the job, by result.",
    );
    for job in jobs {
        for result in RESULTS {
            out.sample(
                "lifeboat_job_runs_total",
                &[("job", &job.name), ("result", result)],
                runs_of(&job.totals, result),
            );
        }
    }
    per_job(
        &mut out,
        "lifeboat_job_bytes_read_total",
        "counter",
        "Bytes of source data the job's runs read.",
        &|i| Some(jobs[i].totals.bytes_read as f64),
    );
    per_job(
        &mut out,
        "lifeboat_job_bytes_stored_total",
        "counter",
        "Bytes of new packs the job's runs stored (compressed and encrypted).",
        &|i| Some(jobs[i].totals.bytes_stored as f64),
    );
    per_job(
        &mut out,
        "lifeboat_job_rpo_seconds",
        "gauge",
        "The job's recovery point objective: the age its newest snapshot may reach.",
        &|i| Some(jobs[i].rpo.rpo_seconds as f64),
    );
    per_job(
        &mut out,
        "lifeboat_job_rpo_breached",
        "gauge",
        "1 when the job's newest snapshot is older than its RPO (never for a disabled job).",
        &|i| Some(f64::from(u8::from(jobs[i].rpo.breached))),
    );
    per_job(
        &mut out,
        "lifeboat_job_running",
        "gauge",
        "1 while a run of the job is going on.",
        &|i| Some(f64::from(u8::from(jobs[i].activity.state == "running"))),
    );
    per_job(
        &mut out,
        "lifeboat_job_snapshots",
        "gauge",
        "The job's snapshots in the repository.",
        &|i| Some(jobs[i].snapshots as f64),
    );
    out.family(
        "lifeboat_task_last_success_timestamp_seconds",
        "gauge",
        "When the newest successful run of the prune or check task started, in seconds since the epoch.",
    );
    for task in &overview.tasks {
        if let Some(t) = task.last_success {
            let value = t.timestamp_millis() as f64 / 1000.0;
            out.sample(
                "lifeboat_task_last_success_timestamp_seconds",
                &[("task", task.name)],
                value,
            );
        }
    }
    out.family(
        "lifeboat_task_runs_total",
        "counter",
        "Finished runs of the prune or check task, by result.",
    );
    for task in &overview.tasks {
        for result in RESULTS {
            out.sample(
                "lifeboat_task_runs_total",
                &[("task", task.name), ("result", result)],
                runs_of(&task.totals, result),
            );
        }
    }
    let repository = [
        (
            "lifeboat_repository_size_bytes",
            "Bytes of every object in the repository, as last listed.",
            figures.size_bytes,
        ),
        (
            "lifeboat_repository_packs",
            "Pack objects in the repository, as last listed.",
            figures.packs,
        ),
        (
            "lifeboat_repository_snapshots",
            "Snapshots in the repository, as last listed.",
            figures.snapshots,
        ),
        (
            "lifeboat_repository_logical_bytes",
            "Bytes of data the repository's snapshots hold, each counted in full; divided by lifeboat_repository_size_bytes it is the deduplication and compression ratio.",
            figures.logical_bytes,
        ),
    ];
    for (name, help, value) in repository {
        out.family(name, "gauge", help);
        if figures.counted.is_some() {
            out.sample(name, &[], value as f64);
        }
    }
    if let Some(rto) = rto {
        out.family(
            "lifeboat_rto_target_seconds",
            "gauge",
            "The configured recovery time objective, to compare restore drills against.",
        );
        out.sample("lifeboat_rto_target_seconds", &[], rto.as_secs_f64());
    }
    out.0
}
