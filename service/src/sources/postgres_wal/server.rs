//! What the archiver asks of the server, through PostgreSQL's own client
//! programs: where its WAL stands (`psql`), the WAL itself
//! (`pg_receivewal`) and base backups (`pg_basebackup`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::WalError;
use super::names::{Lsn, SEGMENT_SIZE};
use super::pitr::TimelineHistory;
use super::spool::{Spool, WriterLock};
use crate::sources::postgres::client::StderrText;
use crate::sources::postgres::connection::{Connection, Hint, hint};
use crate::sources::postgres::session::PSQL_FLAGS;

/// The client programs, from one folder or `PATH`.
#[derive(Debug, Clone)]
pub struct WalTools {
    /// `psql`.
    pub psql: PathBuf,
    /// `pg_receivewal`.
    pub pg_receivewal: PathBuf,
    /// `pg_basebackup`.
    pub pg_basebackup: PathBuf,
}

impl WalTools {
    /// The programs in `bin`, or on `PATH`.
    pub fn new(bin: Option<&Path>) -> Self {
        let program = |name: &str| bin.map_or_else(|| PathBuf::from(name), |dir| dir.join(name));
        Self {
            psql: program("psql"),
            pg_receivewal: program("pg_receivewal"),
            pg_basebackup: program("pg_basebackup"),
        }
    }
}

/// Where the server's WAL stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerWal {
    /// `pg_control_system().system_identifier`: which cluster this is.
    pub system_identifier: String,
    /// `pg_current_wal_flush_lsn()`: flushed so far, which is what a
    /// replication connection is sent.
    pub current: Lsn,
    /// `server_version_num`.
    pub version_num: u32,
    /// The timeline of its last checkpoint: the one it writes.
    pub timeline: u32,
}

/// Reads where the server's WAL stands.
///
/// Fails when psql cannot connect, the server is a standby, or its WAL
/// segments are not of the size lifeboat archives.
pub async fn server_wal(connection: &Connection, tools: &WalTools) -> Result<ServerWal, WalError> {
    const QUERY: &str = "SELECT system_identifier, pg_current_wal_flush_lsn(), \
        current_setting('server_version_num'), \
        (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'), \
        (SELECT timeline_id FROM pg_control_checkpoint()) \
        FROM pg_control_system()";
    let mut command = connection.command(&tools.psql);
    command
        .args(PSQL_FLAGS)
        .args(connection.server_argument())
        .args(["-c", QUERY]);
    let output = connection.start(&command).await?.output().await?;
    if !output.exit.success {
        let message = StderrText::from_bytes(&output.stderr).0;
        return Err(WalError::Server {
            hint: hint(&message, connection.password_origin()),
            message,
        });
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let unexpected = || WalError::Unexpected {
        what: "the server's WAL position".into(),
        output: text.chars().take(200).collect(),
    };
    let fields: Vec<&str> = text.trim().split('|').collect();
    let [system_identifier, current, version, segment_size, timeline] = fields[..] else {
        return Err(unexpected());
    };
    let segment_size: u64 = segment_size.parse().map_err(|_| unexpected())?;
    if segment_size != SEGMENT_SIZE {
        return Err(WalError::SegmentSize { segment_size });
    }
    if system_identifier.is_empty() || !system_identifier.bytes().all(|b| b.is_ascii_digit()) {
        return Err(unexpected());
    }
    Ok(ServerWal {
        system_identifier: system_identifier.to_owned(),
        current: current.parse().map_err(|_| unexpected())?,
        version_num: version.parse().map_err(|_| unexpected())?,
        timeline: timeline.parse().map_err(|_| unexpected())?,
    })
}

/// The server's history of `timeline`: where each of its ancestors ended
/// (`TIMELINE_HISTORY` on a replication connection; timeline 1 has none).
///
/// Fails when psql cannot run the command, or the history does not read
/// as one.
pub async fn timeline_history(
    connection: &Connection,
    tools: &WalTools,
    timeline: u32,
) -> Result<TimelineHistory, WalError> {
    if timeline <= 1 {
        return Ok(TimelineHistory {
            newest: timeline,
            ancestors: Vec::new(),
        });
    }
    let mut command = connection.command(&tools.psql);
    command
        .args(PSQL_FLAGS)
        .arg(connection.replication_argument())
        .args(["-c", &format!("TIMELINE_HISTORY {timeline}")]);
    let output = connection.start(&command).await?.output().await?;
    let text = String::from_utf8_lossy(&output.stdout);
    let unexpected = |problem: String| WalError::Unexpected {
        what: format!("the server's history of timeline {timeline}: {problem}"),
        output: text.chars().take(200).collect(),
    };
    if !output.exit.success {
        return Err(unexpected(StderrText::from_bytes(&output.stderr).0));
    }
    // One row: the file's name, then its content (which may hold `|`).
    let (_, content) = text
        .split_once('|')
        .ok_or_else(|| unexpected("no content".into()))?;
    TimelineHistory::parse(timeline, content).map_err(unexpected)
}

/// How long a run's catch-up may take.
const CATCH_UP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// How `pg_receivewal` runs.
#[derive(Debug, Clone, Copy)]
pub enum Receive {
    /// Until the server has sent `Lsn`, then exit (a run catching up).
    Until(Lsn),
    /// Until the connection ends (the daemon's receiver).
    Streaming,
    /// Creates the replication slot (if missing) and exits.
    CreateSlot,
}

/// Runs `pg_receivewal` into `spool`, holding `lock` as long as it runs;
/// `slot` is the replication slot to stream from, if any.
///
/// Fails when it cannot start, or exits with an error (which names the
/// missing WAL when the server has already removed it).
pub async fn receive(
    connection: &Connection,
    tools: &WalTools,
    spool: &Spool,
    lock: &WriterLock,
    slot: Option<&str>,
    how: Receive,
) -> Result<(), WalError> {
    let mut command = connection.command(&tools.pg_receivewal);
    command
        .arg("--directory")
        .arg(spool.dir())
        .args(["--no-loop", "--no-password", "--status-interval=10"])
        .args(connection.server_argument())
        .holding(lock.share().map_err(|source| WalError::Spool {
            path: spool.dir().to_owned(),
            source,
        })?);
    match how {
        Receive::Until(end) => {
            command.arg(format!("--endpos={end}"));
        }
        Receive::Streaming => {}
        Receive::CreateSlot => {
            command.args(["--create-slot", "--if-not-exists"]);
        }
    }
    if let Some(slot) = slot {
        command.arg(format!("--slot={slot}"));
    }
    if let Receive::Until(end) = how {
        // Names where a run waits, should the server never send `end`.
        let newest = spool
            .files()
            .ok()
            .and_then(|files| files.last().map(|f| f.file.name()));
        tracing::info!(
            spool = %spool.dir().display(),
            newest = newest.as_deref().unwrap_or("none"),
            "postgres-wal: receiving WAL up to {end}"
        );
    }
    let started = std::time::Instant::now();
    let running = connection.start(&command).await?.output();
    let output = match how {
        // A backstop: the position it waits for was flushed already, so
        // it arrives at once unless the connection hangs.
        Receive::Until(end) => tokio::time::timeout(CATCH_UP_TIMEOUT, running)
            .await
            .map_err(|_| WalError::Receive {
                message: format!(
                    "it did not reach {end} within {} minutes",
                    CATCH_UP_TIMEOUT.as_secs() / 60
                ),
                hint: Hint(String::new()),
            })??,
        Receive::Streaming | Receive::CreateSlot => running.await?,
    };
    tracing::debug!(
        "postgres-wal: pg_receivewal ended after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if output.exit.success {
        return Ok(());
    }
    let message = StderrText::from_bytes(&output.stderr).0;
    if message.contains("has already been removed") {
        return Err(WalError::Removed { message });
    }
    Err(WalError::Receive {
        hint: hint(&message, connection.password_origin()),
        message,
    })
}

/// One base backup's place in the WAL, from its `backup_manifest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct BaseBackupRange {
    /// The timeline it was taken on.
    pub timeline: u32,
    /// Where recovery from it starts.
    pub start_lsn: Lsn,
    /// Where it becomes consistent: the WAL up to here is needed.
    pub end_lsn: Lsn,
}

/// Takes a base backup (plain format, with the WAL from its start to its
/// end in its `pg_wal`, so that it is usable even where the archive
/// missed the segment switch it begins with) into `dir`, and reads its
/// WAL range.
///
/// Fails when pg_basebackup fails, or the backup has no manifest (a
/// server older than PostgreSQL 13).
pub async fn base_backup(
    connection: &Connection,
    tools: &WalTools,
    dir: &Path,
) -> Result<BaseBackupRange, WalError> {
    let mut command = connection.command(&tools.pg_basebackup);
    command
        .arg("--pgdata")
        .arg(dir)
        .args([
            "--format=plain",
            "--wal-method=stream",
            "--checkpoint=fast",
            "--no-sync",
            "--no-password",
        ])
        .args(connection.server_argument());
    let output = connection.start(&command).await?.output().await?;
    if !output.exit.success {
        let message = StderrText::from_bytes(&output.stderr).0;
        return Err(WalError::BaseBackup {
            hint: hint(&message, connection.password_origin()),
            message,
        });
    }
    read_manifest(&dir.join("backup_manifest"))
}

/// The WAL range of a `backup_manifest` (PostgreSQL 13 and newer).
fn read_manifest(path: &Path) -> Result<BaseBackupRange, WalError> {
    #[derive(Deserialize)]
    struct Manifest {
        #[serde(rename = "WAL-Ranges")]
        wal_ranges: Vec<Range>,
    }
    #[derive(Deserialize)]
    struct Range {
        #[serde(rename = "Timeline")]
        timeline: u32,
        #[serde(rename = "Start-LSN")]
        start: Lsn,
        #[serde(rename = "End-LSN")]
        end: Lsn,
    }
    let unexpected = |output: String| WalError::Unexpected {
        what: format!("the base backup's manifest {}", path.display()),
        output,
    };
    let file = std::fs::File::open(path).map_err(|e| unexpected(e.to_string()))?;
    let manifest: Manifest = serde_json::from_reader(std::io::BufReader::new(file))
        .map_err(|e| unexpected(e.to_string()))?;
    // A backup taken on one timeline has one range; the newest one's is
    // where it ends.
    match (manifest.wal_ranges.first(), manifest.wal_ranges.last()) {
        (Some(first), Some(last)) => Ok(BaseBackupRange {
            timeline: last.timeline,
            start_lsn: first.start,
            end_lsn: last.end,
        }),
        _ => Err(unexpected("no WAL-Ranges".into())),
    }
}
