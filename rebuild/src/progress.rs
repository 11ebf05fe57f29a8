//! The state file that lets `--resume` continue at the failed step, and
//! the timed report (terminal table and JSON) that gives the measured RTO.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What went wrong with the state file or the report.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// `--resume` without a state file.
    #[error(
        "no state of an earlier run at {}; run without --resume (and the same --work)",
        path.display()
    )]
    NoState {
        /// The state file.
        path: PathBuf,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
    /// The state file is not one.
    #[error(
        "{} is not a rebuild state file; run without --resume to start over",
        path.display()
    )]
    Damaged {
        /// The state file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The state file is of another cluster.
    #[error(
        "{} is the state of a rebuild of another cluster ({recorded}), not of this spec ({this}); give the spec of that run, or another --work without --resume to start over",
        path.display()
    )]
    OtherCluster {
        /// The state file.
        path: PathBuf,
        /// The cluster recorded there.
        recorded: String,
        /// The cluster of this spec.
        this: String,
    },
    /// A file cannot be written.
    #[error("cannot write {}; check the --work folder", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The state cannot be written as JSON.
    #[error("cannot write the rebuild state as JSON")]
    Json(#[source] serde_json::Error),
}

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
    /// The cluster rebuilt ([`ClusterSpec::identity`]); a state file of
    /// another cluster is not resumed. Missing in state files of older
    /// versions, which are resumed.
    ///
    /// [`ClusterSpec::identity`]: crate::spec::ClusterSpec::identity
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
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

    /// A new run's state for the cluster `cluster`.
    pub fn new(cluster: String) -> Self {
        Self {
            cluster: Some(cluster),
            ..Self::default()
        }
    }

    /// Loads the state of an earlier run of the cluster `cluster`, its
    /// done steps marked as done earlier and its failure dropped (so the
    /// failed step runs again).
    ///
    /// Fails when there is no state file, it cannot be read, or it is of
    /// another cluster.
    pub fn resume(work: &Path, cluster: &str) -> Result<Self, StateError> {
        let path = Self::state_path(work);
        let text = std::fs::read_to_string(&path).map_err(|source| StateError::NoState {
            path: path.clone(),
            source,
        })?;
        let mut progress: Self =
            serde_json::from_str(&text).map_err(|source| StateError::Damaged {
                path: path.clone(),
                source,
            })?;
        match &progress.cluster {
            Some(recorded) if recorded != cluster => {
                return Err(StateError::OtherCluster {
                    path,
                    recorded: recorded.clone(),
                    this: cluster.to_owned(),
                });
            }
            _ => progress.cluster = Some(cluster.to_owned()),
        }
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
    pub fn record(&mut self, work: &Path, record: StepRecord) -> Result<(), StateError> {
        self.total_seconds += record.seconds;
        self.steps.push(record);
        self.write(&Self::state_path(work))
    }

    /// Writes the JSON to `path` (whole, then renamed into place).
    ///
    /// Fails when it cannot be written.
    pub fn write(&self, path: &Path) -> Result<(), StateError> {
        let temp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(self).map_err(StateError::Json)?;
        std::fs::write(&temp, json).map_err(|source| StateError::Write {
            path: temp.clone(),
            source,
        })?;
        std::fs::rename(&temp, path).map_err(|source| StateError::Write {
            path: path.to_owned(),
            source,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, status: Status, seconds: f64) -> StepRecord {
        StepRecord {
            id: id.into(),
            status,
            seconds,
            detail: format!("{id} detail"),
        }
    }

    /// A state file as a run that failed at `bootstrap` leaves it.
    fn failed_run(work: &Path) -> Progress {
        let mut progress = Progress::new("test:///default cp1".into());
        progress
            .record(work, record("fetch-backups", Status::Done, 2.0))
            .expect("record");
        progress
            .record(work, record("start:cp1", Status::Done, 1.0))
            .expect("record");
        progress
            .record(work, record("bootstrap:cp1", Status::Failed, 0.5))
            .expect("record");
        progress
    }

    #[test]
    fn resume_keeps_the_done_steps_and_drops_the_failure() {
        let work = tempfile::tempdir().expect("work");
        let written = failed_run(work.path());
        assert_eq!(written.total_seconds, 3.5);
        assert!(!written.is_done("bootstrap:cp1"));

        let resumed = Progress::resume(work.path(), "test:///default cp1").expect("resume");
        assert!(resumed.is_done("fetch-backups") && resumed.is_done("start:cp1"));
        assert!(
            !resumed.is_done("bootstrap:cp1"),
            "the failed step runs again"
        );
        assert!(!resumed.is_done("kubeconfig"));
        assert_eq!(
            resumed
                .steps
                .iter()
                .map(|s| (s.id.as_str(), s.status))
                .collect::<Vec<_>>(),
            [
                ("fetch-backups", Status::DoneEarlier),
                ("start:cp1", Status::DoneEarlier)
            ]
        );
        // The failed attempt's time still counts towards the RTO.
        assert_eq!(resumed.total_seconds, 3.5);
    }

    #[test]
    fn resume_refuses_another_cluster_a_missing_and_a_damaged_state_file() {
        let work = tempfile::tempdir().expect("work");
        let missing = Progress::resume(work.path(), "x").expect_err("no state file");
        assert!(matches!(missing, StateError::NoState { .. }), "{missing:?}");
        assert!(
            missing.to_string().contains("without --resume"),
            "{missing}"
        );

        failed_run(work.path());
        let other = Progress::resume(work.path(), "qemu:///system cp1").expect_err("other");
        match &other {
            StateError::OtherCluster { recorded, this, .. } => {
                assert_eq!(recorded, "test:///default cp1");
                assert_eq!(this, "qemu:///system cp1");
            }
            _ => panic!("{other:?}"),
        }

        std::fs::write(Progress::state_path(work.path()), "{ not json").expect("damage");
        let damaged = Progress::resume(work.path(), "x").expect_err("damaged");
        assert!(matches!(damaged, StateError::Damaged { .. }), "{damaged:?}");
    }

    #[test]
    fn a_state_file_of_an_older_version_without_the_cluster_is_resumed() {
        let work = tempfile::tempdir().expect("work");
        std::fs::write(
            Progress::state_path(work.path()),
            r#"{"steps":[{"id":"fetch-backups","status":"done","seconds":1.0,"detail":"ok"}],"total_seconds":1.0}"#,
        )
        .expect("write");
        let resumed = Progress::resume(work.path(), "test:///default cp1").expect("resume");
        assert!(resumed.is_done("fetch-backups"));
        assert_eq!(resumed.cluster.as_deref(), Some("test:///default cp1"));
    }

    #[test]
    fn the_table_lists_each_step_and_the_measured_rto() {
        let work = tempfile::tempdir().expect("work");
        failed_run(work.path());
        let mut progress = Progress::resume(work.path(), "test:///default cp1").expect("resume");
        progress
            .record(work.path(), record("bootstrap:cp1", Status::Done, 4.0))
            .expect("record");
        let table = progress.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert!(lines[1].starts_with("fetch-backups") && lines[1].contains("done earlier"));
        assert!(lines[3].starts_with("bootstrap:cp1") && lines[3].contains("      4.0"));
        assert!(lines[4].starts_with("total (measured RTO)") && lines[4].ends_with("      7.5"));
    }
}
