//! The status page at `/`: every job with its RPO status, what it is doing
//! and its last runs, the prune and check tasks, and the repository's
//! totals. Plain server-rendered HTML with inline CSS — no script — laid
//! out as one column of cards so it reads on a phone; it reloads itself
//! every 30 seconds.

use std::fmt::Write;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Html;
use axum::routing::get;
use chrono::{DateTime, Utc};

use super::auth::may_read_details;
use super::{AppError, AppState};
use crate::daemon::status::{ActivityView, JobStatus, Overview, RpoState, TaskStatus};
use crate::drill::DrillReport;
use crate::repo::snapshot::human_bytes;
use crate::state::{RunRecord, RunResult};
use crate::text::html::escape;

/// Runs shown per job.
const RUNS_SHOWN: usize = 5;

const STYLE: &str = "
:root{color-scheme:light dark;--ok:#1a7f37;--bad:#cf222e;--wait:#9a6700;--off:#6e7781}
body{font:16px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:60rem;padding:.75rem}
h1{font-size:1.4rem;margin:.2rem 0}h2{font-size:1.15rem;margin:1.2rem 0 .4rem}h3{font-size:1.05rem;margin:0 0 .3rem}
.card{border:1px solid #8884;border-left:.4rem solid var(--off);border-radius:.4rem;padding:.6rem .8rem;margin:.6rem 0}
.ok{border-left-color:var(--ok)}.breached{border-left-color:var(--bad)}.waiting{border-left-color:var(--wait)}
.badge{font-size:.8rem;padding:.1rem .45rem;border-radius:1rem;color:#fff;background:var(--off);white-space:nowrap}
.ok .badge{background:var(--ok)}.breached .badge{background:var(--bad)}.waiting .badge{background:var(--wait)}
.meta{color:#888;font-size:.9rem;margin:.1rem 0}.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:.9rem}th,td{text-align:left;padding:.2rem .5rem .2rem 0;white-space:nowrap}
td.error{white-space:normal;color:var(--bad)}.success{color:var(--ok)}.failure,.interrupted{color:var(--bad)}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.1rem .8rem;margin:0}dt{color:#888}dd{margin:0;overflow-wrap:anywhere}
footer{color:#888;font-size:.85rem;margin:1.5rem 0}
.card .alarm{background:var(--bad)}
@media (max-width:30rem){.wide{display:none}.card{padding:.5rem .6rem}}
";

/// The page route.
pub fn router() -> Router<AppState> {
    Router::new().route("/", get(page))
}

async fn page(State(state): State<AppState>, headers: HeaderMap) -> Result<Html<String>, AppError> {
    let mut overview = state.service.overview().await?;
    let names: Vec<String> = overview.jobs.iter().map(|j| j.name.clone()).collect();
    let mut runs = state
        .service
        .history(move |h| {
            names
                .iter()
                .map(|name| h.recent(Some(name), RUNS_SHOWN))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    if !may_read_details(&headers, &state) {
        let records = overview
            .jobs
            .iter_mut()
            .filter_map(|j| j.last_run.as_mut())
            .chain(
                overview
                    .tasks
                    .iter_mut()
                    .filter_map(|t| t.last_run.as_mut()),
            )
            .chain(runs.iter_mut().flatten());
        for run in records {
            if run.error.is_some() {
                run.error = Some(HIDDEN_ERROR.into());
            }
        }
    }
    Ok(Html(render(&state, &overview, &runs)))
}

/// What a run's error reads as on a page served beyond loopback.
const HIDDEN_ERROR: &str = "failed; the details (paths, names) are in the service's log \
     and at /api/v1/runs with the API token";

/// A duration for people: `45 s`, `12 min`, `3 h 5 min`, `2 d 4 h`.
pub fn short_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    let pair = |big: i64, big_unit: &str, small: i64, small_unit: &str| match small {
        0 => format!("{big} {big_unit}"),
        _ => format!("{big} {big_unit} {small} {small_unit}"),
    };
    match s {
        0..90 => format!("{s} s"),
        90..3600 => format!("{} min", (s + 30) / 60),
        3600..129_600 => pair(s / 3600, "h", s % 3600 / 60, "min"),
        _ => pair(s / 86_400, "d", s % 86_400 / 3600, "h"),
    }
}

fn when(time: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let delta = (now - time).num_seconds();
    let stamp = time.format("%Y-%m-%d %H:%M UTC");
    if delta >= 0 {
        format!(
            "<span title=\"{stamp}\">{} ago</span>",
            short_duration(delta)
        )
    } else {
        format!(
            "<span title=\"{stamp}\">in {}</span>",
            short_duration(-delta)
        )
    }
}

fn render(state: &AppState, overview: &Overview, runs: &[Vec<RunRecord>]) -> String {
    let now = Utc::now();
    let breached = overview.jobs.iter().filter(|j| j.rpo.breached).count();
    let summary = match breached {
        0 => format!("{} jobs, all within their RPO", overview.jobs.len()),
        n => format!("{n} of {} jobs have broken their RPO", overview.jobs.len()),
    };
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"30\"><title>lifeboat: {summary}</title>\
         <style>{STYLE}</style></head><body><header><h1>lifeboat</h1><p class=\"meta\">{summary}{}</p></header>",
        if state.service.is_stopping() {
            " — shutting down"
        } else {
            ""
        }
    );
    html.push_str("<h2>Jobs</h2>");
    if overview.jobs.is_empty() {
        html.push_str("<p>No jobs are configured: add [[job]] tables to lifeboat.toml or a file in the schedules folder.</p>");
    }
    for (i, job) in overview.jobs.iter().enumerate() {
        job_card(
            &mut html,
            job,
            runs.get(i).map_or(&[][..], Vec::as_slice),
            now,
        );
    }
    if !overview.tasks.is_empty() {
        html.push_str("<h2>Maintenance</h2>");
        for task in &overview.tasks {
            task_card(&mut html, task, now);
        }
    }
    if let Some(report) = state.service.last_drill() {
        drill_card(&mut html, &report, now);
    }
    let claims = state.service.claims();
    if !claims.is_empty() {
        claims_card(&mut html, &claims, now);
    }
    let config = state.service.config();
    if config.mirrors.iter().any(|m| m.enabled) {
        let mirrors = crate::daemon::mirror::load(&config.state_folder());
        mirrors_card(&mut html, config, &mirrors, now);
    }
    let receivers = crate::daemon::wal::states(state.service.wal_receivers());
    if !receivers.is_empty() {
        receivers_card(&mut html, &receivers, now);
    }
    let figures = state.service.catalog().figures();
    let _ = write!(
        html,
        "<h2>Repository</h2><div class=\"card\"><dl><dt>Location</dt><dd>{}</dd>",
        escape(&config.repository.url)
    );
    match figures.counted {
        Some(counted) => {
            let _ = write!(
                html,
                "<dt>Size</dt><dd>{} in {} packs</dd><dt>Snapshots</dt><dd>{}</dd><dt>Listed</dt><dd>{}</dd>",
                human_bytes(figures.size_bytes),
                figures.packs,
                figures.snapshots,
                when(counted, now)
            );
        }
        None => html.push_str("<dt>Size</dt><dd>not listed yet (see /readyz)</dd>"),
    }
    if let Some(rto) = config.service.rto {
        let _ = write!(
            html,
            "<dt>RTO target</dt><dd>{}</dd>",
            short_duration(rto.as_secs() as i64)
        );
    }
    let _ = write!(
        html,
        "</dl></div><footer>Updated {} · reloads every 30 s · <a href=\"/metrics\">metrics</a> · \
         <a href=\"/api/v1/jobs\">API</a> · <a href=\"/readyz\">readiness</a></footer></body></html>",
        now.format("%Y-%m-%d %H:%M:%S UTC")
    );
    html
}

fn activity(view: &ActivityView, now: DateTime<Utc>) -> Option<String> {
    let since = view.since?;
    let bytes = view
        .bytes_done
        .map(|b| format!(", {} read so far", human_bytes(b)))
        .unwrap_or_default();
    Some(format!("{} since {}{bytes}", view.state, when(since, now)))
}

fn job_card(html: &mut String, job: &JobStatus, runs: &[RunRecord], now: DateTime<Utc>) {
    let (class, badge) = match job.rpo.state {
        RpoState::Ok => ("ok", "within RPO"),
        RpoState::Waiting => ("waiting", "first backup pending"),
        RpoState::Breached => ("breached", "RPO breached"),
        RpoState::Disabled => ("disabled", "disabled"),
    };
    let name = escape(&job.name);
    let failed = job
        .last_run
        .as_ref()
        .filter(|r| matches!(r.result, RunResult::Failure | RunResult::Interrupted))
        .map(|r| {
            format!(
                " <span class=\"badge alarm\">last run {}</span>",
                r.result.as_str()
            )
        })
        .unwrap_or_default();
    let _ = write!(
        html,
        "<article class=\"card {class}\" id=\"job-{name}\"><h3>{name} <span class=\"badge\">{badge}</span>{failed}</h3>"
    );
    let schedule = match (&job.schedule, job.enabled) {
        (Some(s), true) => format!("<code>{}</code> ({})", escape(s), escape(&job.timezone)),
        (Some(_), false) => "schedule disabled".to_owned(),
        (None, _) => "run by hand only".to_owned(),
    };
    let next = job
        .next_run
        .map(|t| format!(" · next {}", when(t, now)))
        .unwrap_or_default();
    let _ = write!(
        html,
        "<p class=\"meta\">{} · {schedule}{next}</p>",
        job.source_kind
    );
    let rpo = short_duration(job.rpo.rpo_seconds as i64);
    let _ = match job.rpo.last_success {
        Some(t) => write!(
            html,
            "<p>Newest snapshot {}; RPO {rpo}; snapshots kept: {}.</p>",
            when(t, now),
            job.snapshots
        ),
        None => write!(html, "<p>No snapshot yet; RPO {rpo}.</p>"),
    };
    if let Some(now_doing) = activity(&job.activity, now) {
        let _ = write!(html, "<p><strong>{now_doing}</strong></p>");
    }
    if !runs.is_empty() {
        html.push_str("<div class=\"scroll\"><table><thead><tr><th>Started</th><th>Result</th><th>Took</th><th>Read</th><th>Stored</th><th class=\"wide\">Trigger</th></tr></thead><tbody>");
        for run in runs {
            run_row(html, run, now);
        }
        html.push_str("</tbody></table></div>");
    }
    html.push_str("</article>");
}

fn run_row(html: &mut String, run: &RunRecord, now: DateTime<Utc>) {
    let result = run.result.as_str();
    let took = if run.result == RunResult::Running {
        "…".to_owned()
    } else {
        short_duration(run.duration().num_seconds())
    };
    let _ = write!(
        html,
        "<tr><td>{}</td><td class=\"{result}\">{result}</td><td>{took}</td><td>{}</td><td>{}</td><td class=\"wide\">{}</td></tr>",
        when(run.started, now),
        human_bytes(run.bytes_read),
        human_bytes(run.bytes_stored),
        escape(&run.trigger)
    );
    if let Some(error) = &run.error {
        let _ = write!(
            html,
            "<tr><td class=\"error\" colspan=\"6\">{}</td></tr>",
            escape(error)
        );
    }
}

fn task_card(html: &mut String, task: &TaskStatus, now: DateTime<Utc>) {
    let class = match task.last_run.as_ref().map(|r| r.result) {
        Some(RunResult::Success) => "ok",
        Some(RunResult::Failure | RunResult::Interrupted) => "breached",
        _ => "waiting",
    };
    let _ = write!(
        html,
        "<article class=\"card {class}\"><h3>{}</h3><p class=\"meta\"><code>{}</code> ({}){}</p>",
        task.name,
        escape(&task.schedule),
        escape(&task.timezone),
        task.next_run
            .filter(|_| task.enabled)
            .map(|t| format!(" · next {}", when(t, now)))
            .unwrap_or_else(|| " · disabled".into())
    );
    match &task.last_run {
        Some(run) => {
            let _ = write!(
                html,
                "<p>Last run {}: <span class=\"{1}\">{1}</span></p>",
                when(run.started, now),
                run.result.as_str()
            );
            if let Some(error) = &run.error {
                let _ = write!(html, "<p class=\"failure\">{}</p>", escape(error));
            }
        }
        None => html.push_str("<p>Not run yet.</p>"),
    }
    if let Some(now_doing) = activity(&task.activity, now) {
        let _ = write!(html, "<p><strong>{now_doing}</strong></p>");
    }
    html.push_str("</article>");
}

/// Each volumes job's claims: stored, skipped or failed with the reason,
/// their size and when they were last stored.
fn claims_card(html: &mut String, claims: &crate::daemon::claims::ClaimTable, now: DateTime<Utc>) {
    for (job, claims) in claims {
        let _ = write!(
            html,
            "<h2>Volumes of {}</h2><article class=\"card\"><dl>",
            escape(job)
        );
        for (claim, status) in claims {
            let class = match status.outcome {
                crate::backup::items::Outcome::Stored => "success",
                crate::backup::items::Outcome::Skipped => "",
                crate::backup::items::Outcome::Failed => "failure",
            };
            let size = status
                .bytes
                .map(|b| format!(" · {}", crate::repo::snapshot::human_bytes(b)))
                .unwrap_or_default();
            let stored = status
                .last_stored
                .map(|t| format!(" · last stored {}", when(t, now)))
                .unwrap_or_default();
            let _ = write!(
                html,
                "<dt>{}</dt><dd><span class=\"{class}\">{}</span>{size}{stored}<br>{}</dd>",
                escape(claim),
                status.outcome.as_str(),
                escape(&status.detail)
            );
        }
        html.push_str("</dl></article>");
    }
}

/// Each mirror: how far behind it is, what it still lacks, what it
/// keeps that the repository deleted, and why its last sync failed.
fn mirrors_card(
    html: &mut String,
    config: &crate::config::Config,
    table: &crate::daemon::mirror::MirrorTable,
    now: DateTime<Utc>,
) {
    html.push_str("<h2>Mirrors</h2><article class=\"card\"><dl>");
    for task in config.mirrors.iter().filter(|m| m.enabled) {
        let status = table.get(&task.name).cloned().unwrap_or_default();
        let (class, state) = match (&status.last_error, &status.last_report) {
            (Some(_), _) => ("failure", "unreachable"),
            (None, Some(report)) if !report.complete() => ("failure", "behind"),
            (None, Some(_)) => ("success", "in step"),
            (None, None) => ("", "not synced yet"),
        };
        let lag = status
            .lag(now)
            .map(|d| format!(" · lag {}", short_duration(d.num_seconds())))
            .unwrap_or_default();
        let mut detail = String::new();
        if let Some(report) = &status.last_report {
            let _ = write!(
                detail,
                "{} object(s) pending ({}), {} kept until their grace period ends",
                report.pending,
                human_bytes(report.pending_bytes),
                status.gone.len()
            );
        }
        if let Some(error) = &status.last_error {
            detail = error.clone();
        }
        let synced = status
            .last_sync
            .map(|t| format!(" · synced {}", when(t, now)))
            .unwrap_or_default();
        let _ = write!(
            html,
            "<dt>{} ({})</dt><dd><span class=\"{class}\">{state}</span>{lag}{synced}<br>{}</dd>",
            escape(&task.name),
            escape(&task.url),
            escape(&detail)
        );
    }
    html.push_str("</dl></article>");
}

/// Each WAL receiver: streaming or not, since when, and why it stopped.
/// How old the stored WAL is shows on the job's own card (its RPO).
fn receivers_card(
    html: &mut String,
    receivers: &std::collections::BTreeMap<
        String,
        crate::sources::postgres_wal::receiver::ReceiverState,
    >,
    now: DateTime<Utc>,
) {
    html.push_str("<h2>WAL receivers</h2><article class=\"card\"><dl>");
    for (job, receiver) in receivers {
        let (class, state) = if receiver.streaming {
            ("success", "streaming")
        } else {
            ("failure", "not streaming")
        };
        let since = receiver
            .since
            .map(|t| format!(" since {}", when(t, now)))
            .unwrap_or_default();
        let _ = write!(
            html,
            "<dt>{}</dt><dd><span class=\"{class}\">{state}</span>{since}<br>{}</dd>",
            escape(job),
            escape(receiver.last_error.as_deref().unwrap_or_default())
        );
    }
    html.push_str("</dl></article>");
}

/// The last restore drill the service ran: each job's result, RTO and
/// RPO, and the first failure.
fn drill_card(html: &mut String, report: &DrillReport, now: DateTime<Utc>) {
    let (class, result) = if report.passed {
        ("ok", "passed")
    } else {
        ("breached", "failed")
    };
    let _ = write!(
        html,
        "<h2>Restore drill</h2><article class=\"card {class}\"><p>Last drill {}: \
         <span class=\"{class}\">{result}</span> in {}</p><dl>",
        when(report.finished, now),
        short_duration(report.total_seconds.round() as i64)
    );
    for job in &report.jobs {
        let rpo = job
            .rpo_seconds
            .map(|age| format!(", data {} old", short_duration(age.round() as i64)))
            .unwrap_or_default();
        let _ = write!(
            html,
            "<dt>{}</dt><dd>{} · restored in {}{rpo}",
            escape(&job.job),
            if job.passed() { "passed" } else { "FAILED" },
            short_duration(job.rto_seconds.round() as i64)
        );
        if let Some(first) = job.failures.first() {
            let _ = write!(html, "<br><span class=\"failure\">{}</span>", escape(first));
        }
        html.push_str("</dd>");
    }
    html.push_str("</dl></article>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_short() {
        assert_eq!(short_duration(42), "42 s");
        assert_eq!(short_duration(600), "10 min");
        assert_eq!(short_duration(3 * 3600 + 300), "3 h 5 min");
        assert_eq!(short_duration(2 * 86_400 + 4 * 3600), "2 d 4 h");
        assert_eq!(short_duration(3600), "1 h");
        assert_eq!(short_duration(86_400 * 7), "7 d");
    }
}
