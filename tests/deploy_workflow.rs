//! `deploy/github/restore-drill.yml` is valid workflow YAML that runs the
//! drill weekly with both reports and uploads them.

use anyhow::{Context, Result, ensure};
use serde_yaml_ng::Value;

#[test]
fn the_drill_workflow_runs_weekly_and_uploads_its_reports() -> Result<()> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/github/restore-drill.yml"
    );
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let workflow: Value = serde_yaml_ng::from_str(&text).context("the workflow is not YAML")?;
    // YAML 1.1 readers take a bare `on` for true; GitHub reads it as the key.
    let on = workflow
        .get("on")
        .or_else(|| workflow.get(Value::Bool(true)))
        .context("no `on`")?;
    let cron = on["schedule"][0]["cron"]
        .as_str()
        .context("no schedule cron")?;
    let fields: Vec<&str> = cron.split_whitespace().collect();
    ensure!(
        fields.len() == 5 && fields[2] == "*" && fields[3] == "*" && fields[4] != "*",
        "a weekly cron (a day of the week, any day of the month): {cron}"
    );
    let jobs = workflow["jobs"].as_mapping().context("no jobs")?;
    ensure!(!jobs.is_empty(), "no jobs");
    let mut drills = 0;
    let mut uploads = 0;
    for (_, job) in jobs {
        ensure!(
            job["runs-on"].as_str().is_some(),
            "every job says where it runs"
        );
        for step in job["steps"].as_sequence().context("a job without steps")? {
            if let Some(run) = step["run"]
                .as_str()
                .filter(|r| r.contains("lifeboat drill"))
            {
                ensure!(
                    run.contains("--report")
                        && run.contains("--junit")
                        && run.contains("--identity"),
                    "the drill writes both reports with the restore key: {run}"
                );
                drills += 1;
            }
            if step["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("actions/upload-artifact@"))
            {
                ensure!(
                    step["if"].as_str() == Some("always()"),
                    "reports are uploaded on failure too"
                );
                let paths = step["with"]["path"].as_str().unwrap_or_default();
                ensure!(
                    paths.contains("drill.json") && paths.contains("drill.xml"),
                    "{paths}"
                );
                uploads += 1;
            }
        }
    }
    ensure!(
        drills == 1 && uploads == 1,
        "one drill step and one upload: {drills}, {uploads}"
    );
    ensure!(
        text.contains("secrets.LIFEBOAT_RESTORE_KEY"),
        "the restore key comes from a secret"
    );
    Ok(())
}
