//! The state file that lets `--resume` continue at the failed step, and
//! the timed report (terminal table and JSON) that gives the measured RTO.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Done in this run.
    Done,
    /// Done by an earlier run (skipped on resume).
    DoneEarlier,
    /// Failed.
    Failed,
}

/// One step's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    /// The step id.
    pub id: String,
    /// How it ended.
    pub status: Status,
    /// Its wall time in seconds.
    pub seconds: f64,
    /// What was done, or the error.
    pub detail: String,
}

/// The state file / report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    /// The steps recorded, in order.
    pub steps: Vec<StepRecord>,
    /// The wall time of all steps, over all runs, in seconds.
    pub total_seconds: f64,
}

impl Progress {
    /// The state file in `work`.
    pub fn state_path(work: &Path) -> PathBuf {
        work.join("rebuild-state.json")
    }

    /// The report file in `work`.
    pub fn report_path(work: &Path) -> PathBuf {
        work.join("rebuild-report.json")
    }

    /// Loads the state of an earlier run, its done steps marked as done
    /// earlier and its failure dropped.
    ///
    /// Fails when there is no state file or it cannot be read.
    pub fn resume(work: &Path) -> anyhow::Result<Self> {
        let path = Self::state_path(work);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no state of an earlier run at {}; run without --resume (and the same --work)",
                path.display()
            )
        })?;
        let mut progress: Self = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a rebuild state file", path.display()))?;
        progress.steps.retain(|s| s.status != Status::Failed);
        for step in &mut progress.steps {
            step.status = Status::DoneEarlier;
        }
        Ok(progress)
    }

    /// Whether step `id` was done already.
    pub fn is_done(&self, id: &str) -> bool {
        self.steps
            .iter()
            .any(|s| s.id == id && s.status != Status::Failed)
    }

    /// Records a step and writes the state file.
    ///
    /// Fails when the file cannot be written.
    pub fn record(&mut self, work: &Path, record: StepRecord) -> anyhow::Result<()> {
        self.total_seconds += record.seconds;
        self.steps.push(record);
        self.write(&Self::state_path(work))
    }

    /// Writes the JSON to `path` (whole, then renamed into place).
    ///
    /// Fails when it cannot be written.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let temp = path.with_extension("json.tmp");
        std::fs::write(&temp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", temp.display()))?;
        std::fs::rename(&temp, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// The report as a table.
    pub fn table(&self) -> String {
        let width = self
            .steps
            .iter()
            .map(|s| s.id.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let mut out = format!("{:<width$}  {:<12}  {:>9}\n", "step", "status", "seconds");
        for step in &self.steps {
            let status = match step.status {
                Status::Done => "done",
                Status::DoneEarlier => "done earlier",
                Status::Failed => "FAILED",
            };
            out.push_str(&format!(
                "{:<width$}  {status:<12}  {:>9.1}\n",
                step.id, step.seconds
            ));
        }
        out.push_str(&format!(
            "{:<width$}  {:<12}  {:>9.1}\n",
            "total (measured RTO)", "", self.total_seconds
        ));
        out
    }
}
