//! The run history: one row per run of a job, prune or check (start, end,
//! result, error, figures, snapshot), and running totals per job that only
//! grow, so Prometheus counters survive restarts and trimming old rows.
//!
//! Like the rest of the state it is a cache of what happened: losing it
//! loses the history, never a backup. The service reads a job's newest
//! snapshot from the repository as well, so the RPO watch survives it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

/// Migrations, applied in order; the database's `user_version` counts them.
const MIGRATIONS: &[&str] = &["CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job TEXT NOT NULL,
        kind TEXT NOT NULL,
        trigger TEXT NOT NULL,
        started_ms INTEGER NOT NULL,
        ended_ms INTEGER,
        result TEXT NOT NULL,
        error TEXT,
        warnings TEXT,
        bytes_read INTEGER NOT NULL DEFAULT 0,
        bytes_stored INTEGER NOT NULL DEFAULT 0,
        files INTEGER NOT NULL DEFAULT 0,
        dedup_ratio REAL,
        snapshot TEXT,
        forgotten INTEGER NOT NULL DEFAULT 0,
        details TEXT
    );
    CREATE INDEX runs_by_job ON runs (job, started_ms);
    CREATE TABLE totals (
        job TEXT NOT NULL,
        result TEXT NOT NULL,
        runs INTEGER NOT NULL,
        bytes_read INTEGER NOT NULL,
        bytes_stored INTEGER NOT NULL,
        PRIMARY KEY (job, result)
    ) WITHOUT ROWID;"];

/// Runs kept per job; older rows are trimmed (totals keep counting).
const ROWS_PER_JOB: i64 = 1000;

/// The history database failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// SQLite failed.
    #[error("run history {path}: {source}; if it is damaged, delete it (only the history is lost)")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The state folder cannot be created.
    #[error("cannot create the state folder {path}: {source}; fix state_dir or its permissions")]
    Folder {
        /// The folder.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A newer lifeboat wrote the database.
    #[error(
        "run history {path} has schema version {found}, newer than this lifeboat's {known}; \
         upgrade lifeboat or move the file away"
    )]
    Newer {
        /// The database file.
        path: PathBuf,
        /// Its version.
        found: usize,
        /// The newest this lifeboat knows.
        known: usize,
    },
    /// The task reading or writing it failed.
    #[error("the run history could not be used: {0}")]
    Unavailable(String),
}

/// How a run ended (or that it has not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunResult {
    /// Still going.
    Running,
    /// A snapshot (or a prune or check) completed.
    Success,
    /// It failed; the error says why.
    Failure,
    /// The service stopped during the run; nothing refers to what it wrote.
    Interrupted,
}

impl RunResult {
    /// The name stored and exported (`success`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Interrupted => "interrupted",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "running" => Self::Running,
            "success" => Self::Success,
            "interrupted" => Self::Interrupted,
            _ => Self::Failure,
        }
    }
}

/// One run as recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    /// Its number.
    pub id: i64,
    /// The job's name (`prune` and `check` for those tasks).
    pub job: String,
    /// `backup`, `prune` or `check`.
    pub kind: String,
    /// `schedule`, `manual` or `make-up`.
    pub trigger: String,
    /// When it started.
    pub started: DateTime<Utc>,
    /// When it ended.
    pub ended: Option<DateTime<Utc>>,
    /// How it ended.
    pub result: RunResult,
    /// Why it failed.
    pub error: Option<String>,
    /// What it skipped or read with trouble, one per line.
    pub warnings: Option<String>,
    /// Bytes of source data read.
    pub bytes_read: u64,
    /// Bytes of new packs stored.
    pub bytes_stored: u64,
    /// Files (and streams) in the snapshot.
    pub files: u64,
    /// Share of the snapshot's data that was already stored (0–1).
    pub dedup_ratio: Option<f64>,
    /// The snapshot written.
    pub snapshot: Option<String>,
    /// Snapshots the retention policy forgot afterwards.
    pub forgotten: u64,
    /// What a prune or check reported.
    pub details: Option<serde_json::Value>,
}

impl RunRecord {
    /// How long it ran (so far, for a running one).
    pub fn duration(&self) -> chrono::Duration {
        self.ended.unwrap_or_else(Utc::now) - self.started
    }
}

/// What a finished run reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunFigures {
    /// Why it failed.
    pub error: Option<String>,
    /// Warnings, one per line.
    pub warnings: Option<String>,
    /// Bytes of source data read.
    pub bytes_read: u64,
    /// Bytes of new packs stored.
    pub bytes_stored: u64,
    /// Files (and streams) in the snapshot.
    pub files: u64,
    /// Share of data already stored (0–1).
    pub dedup_ratio: Option<f64>,
    /// The snapshot written.
    pub snapshot: Option<String>,
    /// Snapshots forgotten by retention.
    pub forgotten: u64,
    /// What a prune or check reported (JSON).
    pub details: Option<String>,
}

/// Counts since the history was created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobTotals {
    /// Finished runs by result name.
    pub runs: BTreeMap<String, u64>,
    /// Bytes of source data read.
    pub bytes_read: u64,
    /// Bytes of new packs stored.
    pub bytes_stored: u64,
}

/// The history database (`history.sqlite` in the state folder).
#[derive(Debug)]
pub struct History {
    path: PathBuf,
    connection: Mutex<Connection>,
}

fn millis(time: DateTime<Utc>) -> i64 {
    time.timestamp_millis()
}

fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

const COLUMNS: &str = "id, job, kind, trigger, started_ms, ended_ms, result, error, warnings, \
     bytes_read, bytes_stored, files, dedup_ratio, snapshot, forgotten, details";

fn record(row: &Row<'_>) -> rusqlite::Result<RunRecord> {
    Ok(RunRecord {
        id: row.get(0)?,
        job: row.get(1)?,
        kind: row.get(2)?,
        trigger: row.get(3)?,
        started: time(row.get(4)?),
        ended: row.get::<_, Option<i64>>(5)?.map(time),
        result: RunResult::parse(&row.get::<_, String>(6)?),
        error: row.get(7)?,
        warnings: row.get(8)?,
        bytes_read: row.get::<_, i64>(9)?.max(0) as u64,
        bytes_stored: row.get::<_, i64>(10)?.max(0) as u64,
        files: row.get::<_, i64>(11)?.max(0) as u64,
        dedup_ratio: row.get(12)?,
        snapshot: row.get(13)?,
        forgotten: row.get::<_, i64>(14)?.max(0) as u64,
        details: row
            .get::<_, Option<String>>(15)?
            .and_then(|text| serde_json::from_str(&text).ok()),
    })
}

impl History {
    /// Opens (creating and migrating if needed) the history in `state_dir`.
    ///
    /// Fails when the folder or database cannot be created, or the database
    /// is damaged or from a newer lifeboat.
    pub fn open(state_dir: &Path) -> Result<Self, HistoryError> {
        let path = state_dir.join("history.sqlite");
        let fail = |source| HistoryError::Sqlite {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(|source| HistoryError::Folder {
            path: state_dir.to_owned(),
            source,
        })?;
        let connection = super::database::open(&path, MIGRATIONS).map_err(|e| match e {
            super::database::OpenError::Sqlite(source) => fail(source),
            super::database::OpenError::Newer { found } => HistoryError::Newer {
                path: path.clone(),
                found,
                known: MIGRATIONS.len(),
            },
        })?;
        Ok(Self {
            path,
            connection: Mutex::new(connection),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, HistoryError> {
        let mut connection = self
            .connection
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut connection).map_err(|source| HistoryError::Sqlite {
            path: self.path.clone(),
            source,
        })
    }

    /// Records the start of a run and returns its number.
    ///
    /// Fails when the database cannot be written.
    pub fn start(
        &self,
        job: &str,
        kind: &str,
        trigger: &str,
        started: DateTime<Utc>,
    ) -> Result<i64, HistoryError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO runs (job, kind, trigger, started_ms, result) VALUES (?1, ?2, ?3, ?4, 'running')",
                params![job, kind, trigger, millis(started)],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    /// Records how run `id` ended and adds it to its job's totals.
    ///
    /// Fails when the database cannot be written.
    pub fn finish(
        &self,
        id: i64,
        result: RunResult,
        ended: DateTime<Utc>,
        figures: &RunFigures,
    ) -> Result<(), HistoryError> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE runs SET ended_ms = ?2, result = ?3, error = ?4, warnings = ?5, bytes_read = ?6, \
                 bytes_stored = ?7, files = ?8, dedup_ratio = ?9, snapshot = ?10, forgotten = ?11, \
                 details = ?12 \
                 WHERE id = ?1",
                params![
                    id,
                    millis(ended),
                    result.as_str(),
                    figures.error,
                    figures.warnings,
                    figures.bytes_read as i64,
                    figures.bytes_stored as i64,
                    figures.files as i64,
                    figures.dedup_ratio,
                    figures.snapshot,
                    figures.forgotten as i64,
                    figures.details,
                ],
            )?;
            let job: String = tx.query_row("SELECT job FROM runs WHERE id = ?1", [id], |r| r.get(0))?;
            count(&tx, &job, result, figures.bytes_read, figures.bytes_stored)?;
            tx.execute(
                "DELETE FROM runs WHERE job = ?1 AND id NOT IN \
                 (SELECT id FROM runs WHERE job = ?1 ORDER BY id DESC LIMIT ?2)",
                params![job, ROWS_PER_JOB],
            )?;
            tx.commit()
        })
    }

    /// Marks runs left `running` by a service that stopped without
    /// finishing them as interrupted; returns how many there were.
    ///
    /// Fails when the database cannot be written.
    pub fn interrupt_unfinished(&self) -> Result<usize, HistoryError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let jobs: Vec<String> = tx
                .prepare("SELECT job FROM runs WHERE result = 'running'")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for job in &jobs {
                count(&tx, job, RunResult::Interrupted, 0, 0)?;
            }
            tx.execute(
                "UPDATE runs SET result = 'interrupted', error = 'the service stopped during the run' \
                 WHERE result = 'running'",
                [],
            )?;
            tx.commit()?;
            Ok(jobs.len())
        })
    }

    /// The newest runs, of one job or of all, newest first.
    ///
    /// Fails when the database cannot be read.
    pub fn recent(&self, job: Option<&str>, limit: usize) -> Result<Vec<RunRecord>, HistoryError> {
        self.with(|c| {
            let limit = limit.min(10_000) as i64;
            let mut statement = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM runs WHERE ?1 IS NULL OR job = ?1 ORDER BY id DESC LIMIT ?2"
            ))?;
            let rows = statement.query_map(params![job, limit], record)?;
            rows.collect()
        })
    }

    /// The newest run of `job` with `result`, if any.
    ///
    /// Fails when the database cannot be read.
    pub fn last_with(
        &self,
        job: &str,
        result: RunResult,
    ) -> Result<Option<RunRecord>, HistoryError> {
        self.with(|c| {
            c.query_row(
                &format!(
                    "SELECT {COLUMNS} FROM runs WHERE job = ?1 AND result = ?2 ORDER BY id DESC LIMIT 1"
                ),
                params![job, result.as_str()],
                record,
            )
            .optional()
        })
    }

    /// The newest finished run of every job, by job name.
    ///
    /// Fails when the database cannot be read.
    pub fn last_finished(&self) -> Result<BTreeMap<String, RunRecord>, HistoryError> {
        self.with(|c| {
            let mut statement = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM runs WHERE id IN \
                 (SELECT MAX(id) FROM runs WHERE result != 'running' GROUP BY job)"
            ))?;
            let rows = statement.query_map([], record)?;
            rows.map(|r| r.map(|r| (r.job.clone(), r))).collect()
        })
    }

    /// When the newest successful run of every job started, by job name.
    ///
    /// Fails when the database cannot be read.
    pub fn last_successes(&self) -> Result<BTreeMap<String, DateTime<Utc>>, HistoryError> {
        self.with(|c| {
            let mut statement = c.prepare_cached(
                "SELECT job, MAX(started_ms) FROM runs WHERE result = 'success' GROUP BY job",
            )?;
            let rows = statement.query_map([], |r| Ok((r.get(0)?, time(r.get(1)?))))?;
            rows.collect()
        })
    }

    /// Totals of every job ever recorded, by job name.
    ///
    /// Fails when the database cannot be read.
    pub fn totals(&self) -> Result<BTreeMap<String, JobTotals>, HistoryError> {
        self.with(|c| {
            let mut totals: BTreeMap<String, JobTotals> = BTreeMap::new();
            let mut statement =
                c.prepare_cached("SELECT job, result, runs, bytes_read, bytes_stored FROM totals")?;
            let mut rows = statement.query([])?;
            while let Some(row) = rows.next()? {
                let entry = totals.entry(row.get(0)?).or_default();
                entry
                    .runs
                    .insert(row.get(1)?, row.get::<_, i64>(2)?.max(0) as u64);
                entry.bytes_read += row.get::<_, i64>(3)?.max(0) as u64;
                entry.bytes_stored += row.get::<_, i64>(4)?.max(0) as u64;
            }
            Ok(totals)
        })
    }
}

/// Adds one finished run to the totals.
fn count(
    tx: &rusqlite::Transaction<'_>,
    job: &str,
    result: RunResult,
    bytes_read: u64,
    bytes_stored: u64,
) -> rusqlite::Result<usize> {
    tx.execute(
        "INSERT INTO totals (job, result, runs, bytes_read, bytes_stored) VALUES (?1, ?2, 1, ?3, ?4) \
         ON CONFLICT (job, result) DO UPDATE SET runs = runs + 1, \
         bytes_read = bytes_read + excluded.bytes_read, bytes_stored = bytes_stored + excluded.bytes_stored",
        params![job, result.as_str(), bytes_read as i64, bytes_stored as i64],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_totals_survive_reopening() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let start = Utc::now();
        {
            let history = History::open(dir.path())?;
            let ok = history.start("etcd", "backup", "schedule", start)?;
            let figures = RunFigures {
                bytes_read: 100,
                bytes_stored: 10,
                files: 1,
                dedup_ratio: Some(0.9),
                snapshot: Some("ab".into()),
                ..RunFigures::default()
            };
            history.finish(ok, RunResult::Success, start, &figures)?;
            history.start("etcd", "backup", "manual", start)?;
        }
        let history = History::open(dir.path())?;
        assert_eq!(history.interrupt_unfinished()?, 1);
        let runs = history.recent(Some("etcd"), 10)?;
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].result, RunResult::Interrupted);
        assert_eq!(runs[1].snapshot.as_deref(), Some("ab"));
        let success = history.last_with("etcd", RunResult::Success)?;
        assert_eq!(
            history
                .last_successes()?
                .get("etcd")
                .map(|t| t.timestamp_millis()),
            Some(start.timestamp_millis())
        );
        assert_eq!(
            history.last_finished()?.get("etcd").map(|r| r.result),
            Some(RunResult::Interrupted)
        );
        assert_eq!(success.map(|r| r.bytes_read), Some(100));
        let totals = history.totals()?;
        let etcd = totals.get("etcd").cloned().unwrap_or_default();
        assert_eq!(etcd.runs.get("success"), Some(&1));
        assert_eq!(etcd.runs.get("interrupted"), Some(&1));
        assert_eq!((etcd.bytes_read, etcd.bytes_stored), (100, 10));
        assert!(history.recent(Some("other"), 10)?.is_empty());
        Ok(())
    }
}
