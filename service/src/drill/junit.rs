//! The drill as JUnit XML (`--junit`): one test suite, one test case per
//! job (classname `lifeboat.drill.<kind>`, time its measured RTO), a
//! `<failure>` naming every reason when it failed, and its steps in
//! `<system-out>`. CI systems render this format.

use std::fmt::Write;

use super::report::DrillReport;
use crate::text::xml::escape;

/// Renders `report` as JUnit XML.
pub fn render(report: &DrillReport) -> String {
    let tests = report.jobs.len();
    let failures = report.jobs.iter().filter(|j| !j.passed()).count();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"lifeboat drill\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" time=\"{:.3}\">",
        report.total_seconds
    );
    let _ = writeln!(
        out,
        "  <testsuite name=\"lifeboat drill\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\" time=\"{:.3}\" timestamp=\"{}\">",
        report.total_seconds,
        report.started.format("%Y-%m-%dT%H:%M:%S")
    );
    for job in &report.jobs {
        let _ = writeln!(
            out,
            "    <testcase classname=\"lifeboat.drill.{}\" name=\"{}\" time=\"{:.3}\">",
            escape(job.kind.as_ref().map_or("unknown", |kind| kind.name())),
            escape(&job.job),
            job.rto_seconds
        );
        if !job.passed() {
            let _ = writeln!(
                out,
                "      <failure type=\"DrillFailure\" message=\"{}\">{}</failure>",
                escape(job.failures.first().map_or("", String::as_str)),
                escape(&job.failures.join("\n"))
            );
        }
        let mut steps = format!(
            "snapshot {} rpo {:.0}s of {:.0}s\n",
            job.snapshot.as_deref().unwrap_or("-"),
            job.rpo_seconds.unwrap_or(f64::NAN),
            job.rpo_target_seconds
        );
        for step in &job.steps {
            let _ = writeln!(
                steps,
                "{} {} {:.3}s {}",
                if step.ok { "ok  " } else { "FAIL" },
                step.name,
                step.seconds,
                step.detail
            );
        }
        let _ = writeln!(out, "      <system-out>{}</system-out>", escape(&steps));
        out.push_str("    </testcase>\n");
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}
