//! The drill as Prometheus text for node-exporter's textfile collector
//! (`--metrics FILE`): per job `lifeboat_drill_success`,
//! `lifeboat_drill_rto_seconds` and `lifeboat_drill_rpo_seconds`, and
//! `lifeboat_drill_last_run_timestamp_seconds`. Alert on
//! `lifeboat_drill_success == 0` and on a stale last run.

use super::report::DrillReport;
use crate::text::prometheus::Exposition;

/// Renders `report` as Prometheus text.
pub fn render(report: &DrillReport) -> String {
    let mut out = Exposition(String::new());
    out.family(
        "lifeboat_drill_success",
        "gauge",
        "Whether the job's last restore drill passed (1) or failed (0).",
    );
    for job in &report.jobs {
        let value = if job.passed() { 1.0 } else { 0.0 };
        out.sample("lifeboat_drill_success", &[("job", &job.job)], value);
    }
    out.family(
        "lifeboat_drill_rto_seconds",
        "gauge",
        "Wall time of the job's last restore drill: its measured recovery time.",
    );
    for job in &report.jobs {
        out.sample(
            "lifeboat_drill_rto_seconds",
            &[("job", &job.job)],
            job.rto_seconds,
        );
    }
    out.family(
        "lifeboat_drill_rpo_seconds",
        "gauge",
        "Age of the job's newest snapshot when the drill ran: the data a restore then would lose.",
    );
    for job in &report.jobs {
        if let Some(age) = job.rpo_seconds {
            out.sample("lifeboat_drill_rpo_seconds", &[("job", &job.job)], age);
        }
    }
    out.family(
        "lifeboat_drill_last_run_timestamp_seconds",
        "gauge",
        "When the last restore drill finished, in seconds since the epoch.",
    );
    out.sample(
        "lifeboat_drill_last_run_timestamp_seconds",
        &[],
        report.finished.timestamp_millis() as f64 / 1000.0,
    );
    out.0
}
