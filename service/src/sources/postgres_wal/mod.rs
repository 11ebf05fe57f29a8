//! `kind = "postgres-wal"`: continuous WAL archiving and base backups of a
//! PostgreSQL server, for point-in-time recovery ([`pitr`]).
//!
//! ```toml
//! [[job]]
//! name = "db-wal"
//! schedule = "0 * * * * *"          # how often the WAL is stored: the RPO
//! rpo = "5m"
//! source = { kind = "postgres-wal", dsn = "postgresql://archiver@db:5432/postgres", password_file = "/config/archiver.pass" }
//! ```
//!
//! The role needs `REPLICATION` (and `LOGIN`), and the server
//! `wal_level = replica` (the default) and a free `max_wal_senders` slot.
//!
//! - **Receiving.** lifeboatd keeps `pg_receivewal` running for the job
//!   ([`receiver`]): it holds a replication connection open and writes the
//!   WAL into the job's spool in the state folder as the server writes it,
//!   restarting it when it stops (a server restart, a network cut) and
//!   resuming after the newest segment it has — so a restart of the
//!   server, of lifeboatd or of both loses nothing the server still has.
//!   Without the receiver (`lifeboatd run`), each run catches up itself:
//!   `pg_receivewal --endpos` up to the server's current position. A
//!   replication slot (`slot = "lifeboat"`) makes the server keep the WAL
//!   the archiver has not received yet, however long it is away — at the
//!   price that a receiver gone for good fills the server's disk: drop the
//!   slot (`SELECT pg_drop_replication_slot('lifeboat')`) when you remove
//!   the job. Without a slot, WAL the server recycled while no receiver
//!   ran is lost: the run says so and takes a new base backup at once.
//! - **Storing.** Each run stores the spool's WAL files — complete
//!   segments, the segment being written (`.partial`, so the RPO is the
//!   job's schedule, not a segment's fill time) and timeline history files
//!   — as files at the snapshot's root, deduplicated and encrypted like
//!   everything else. A segment leaves the spool only once a committed
//!   snapshot holds it ([`spool`]). A run that adds only to the segment
//!   being written replaces the job's previous snapshot when that held
//!   nothing else (see `history.rs`).
//! - **Base backups.** A run takes one (`pg_basebackup`, plain format,
//!   without WAL) when the job's newest is older than `base_backup_every`
//!   (default 24 h), and stores it as the folder `base`.
//!
//! - **Census.** With `census_every`, a run takes a [`census`] when the
//!   newest is older: every table's rows at a restore point, stored as
//!   [`CENSUS_FILE`](census::CENSUS_FILE), which the drill recovers to and compares.
//!
//! Retention counts only the snapshots that hold a base backup, and keeps
//! every WAL snapshot from the oldest kept base backup on: each kept base
//! backup can be rolled forward to any later point.
//!
//! The snapshot metadata (service key) holds no names: see [`WalMetadata`].

pub mod census;
pub mod drill;
mod error;
mod history;
pub mod names;
pub mod pitr;
pub mod receiver;
pub(crate) mod server;
pub mod spool;
mod store;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use self::census::CensusMark;
pub use self::error::WalError;
use self::history::JobHistory;
use self::names::WalFile;
use self::server::{BaseBackupRange, Receive, ServerWal, WalTools, base_backup, receive};
use self::spool::{Journal, Spool, WriterLock};
use self::store::{Stored, is_anchor, store_wal};
use super::postgres::client::ClientHost;
use super::postgres::connection::Connection;
use super::postgres::{PostgresError, PostgresSource};
use super::{SourceContext, SourceError, SourceKind, resolve};
use crate::backup::SnapshotBuilder;
use crate::backup::folders::Folder;
use crate::repo::snapshot::Snapshot;

/// The snapshot folder holding a base backup.
pub const BASE_FOLDER: &str = "base";

/// Settings of a WAL archiving source.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresWalSource {
    /// A libpq connection string without a password, of a role with
    /// `REPLICATION`. Empty: libpq's `PG*` variables.
    #[serde(default)]
    pub dsn: String,
    /// A file holding the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// An environment variable of lifeboatd holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// The folder of `pg_receivewal`, `pg_basebackup` and `psql` (of the
    /// server's major version or newer); default: from `PATH`.
    #[serde(default)]
    pub bin: Option<PathBuf>,
    /// How old the newest base backup may get before a run takes a new
    /// one (e.g. "24h", "7d").
    #[serde(default = "default_base_backup_every", with = "crate::field::duration")]
    pub base_backup_every: Duration,
    /// A replication slot to stream from, created if missing.
    #[serde(default)]
    pub slot: Option<String>,
    /// How often a run takes a [`census`] (e.g. "24h"): every table's rows
    /// at a restore point, which a drill recovers to and compares. Off
    /// unless set; the role needs more rights for it (see [`census`]).
    #[serde(default, with = "crate::field::optional_duration")]
    pub census_every: Option<Duration>,
}

fn default_base_backup_every() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// What a WAL snapshot's metadata says (readable with the service key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalMetadata {
    /// The cluster (`pg_control_system().system_identifier`): WAL of
    /// another cluster is never mixed in.
    pub system_identifier: String,
    /// The server's `server_version_num`.
    pub server_version_num: u32,
    /// Complete segments stored.
    pub segments: u64,
    /// Whether the segment being written was stored too.
    pub partial: bool,
    /// The oldest and newest segment file stored, if any.
    pub first_segment: Option<String>,
    /// The newest segment stored (complete or partial).
    pub last_segment: Option<String>,
    /// The server's position when the run began: the WAL up to here is
    /// stored, unless the receiver was behind.
    pub server_lsn: names::Lsn,
    /// The base backup this snapshot holds, if any.
    pub base_backup: Option<BaseBackupRange>,
    /// Who received the WAL: `"receiver"` (lifeboatd's) or `"run"`.
    pub received_by: String,
    /// The census this snapshot holds ([`CENSUS_FILE`](census::CENSUS_FILE)), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub census: Option<CensusMark>,
}

impl WalMetadata {
    /// The metadata of a snapshot of this kind, if it reads as such.
    pub fn of<R>(snapshot: &Snapshot<R>) -> Option<Self> {
        (snapshot.source_kind == SourceKind::PostgresWal)
            .then(|| serde_json::from_value(snapshot.metadata.clone()).ok())
            .flatten()
    }
}

impl PostgresWalSource {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        for path in [&mut self.password_file, &mut self.bin]
            .into_iter()
            .flatten()
        {
            resolve(path, base);
        }
    }

    /// The client programs.
    pub(crate) fn tools(&self) -> WalTools {
        WalTools::new(self.bin.as_deref())
    }

    /// Checks the connection settings and reads the password.
    ///
    /// Fails as [`Connection::new`] does.
    pub(crate) fn connect(&self) -> Result<Connection, PostgresError> {
        let settings = PostgresSource {
            dsn: self.dsn.clone(),
            databases: Vec::new(),
            password_file: self.password_file.clone(),
            password_env: self.password_env.clone(),
            pg_dump: PathBuf::from("pg_dump"),
            globals: super::postgres::Globals::Skip,
            container: None,
            user: None,
            docker_socket: crate::docker::default_socket(),
        };
        Connection::new(&settings, &self.dsn, ClientHost::Local)
    }

    /// Stores the spool's WAL, after catching up when no receiver runs,
    /// and a base backup when one is due; returns the metadata.
    pub(crate) async fn back_up(
        &self,
        builder: &mut SnapshotBuilder,
        context: &SourceContext,
    ) -> Result<serde_json::Value, SourceError> {
        let state = context
            .state_dir
            .as_deref()
            .ok_or(WalError::NoStateFolder)?;
        let (connection, tools) = (self.connect()?, self.tools());
        let server = server::server_wal(&connection, &tools).await?;
        let spool = Spool::open(state, builder.job()).map_err(WalError::spool(state))?;
        let job = builder.job().to_owned();
        let history = JobHistory::read(builder, &job, &server.system_identifier).await;
        self.settle_spool(&spool, &server, &history, builder)?;

        let lock = spool.try_lock().map_err(WalError::spool(spool.dir()))?;
        // Before the catch-up, which then receives the restore point.
        let census = match self.census_every {
            Some(every) if history.census_older_than(every) => {
                census::store(builder, &connection, &tools.psql).await?
            }
            _ => None,
        };
        let mut base_due = history.base_backup_older_than(self.base_backup_every);
        let mut stored = Stored::default();
        let received = Received {
            connection: &connection,
            tools: &tools,
            spool: &spool,
            system_identifier: &server.system_identifier,
        };
        if let Some(lock) = &lock
            && self
                .catch_up_or_restart(builder, &received, lock, &mut stored, Gap::Archive)
                .await?
        {
            base_due = true;
        }
        let base = if base_due {
            let range = self
                .store_base_backup(builder, &connection, &tools, &spool)
                .await?;
            if let Some(lock) = &lock {
                // The base backup began with a segment switch and a
                // checkpoint, which may have recycled the segment the
                // spool resumes in; the backup holds its own WAL.
                let gap = match history.newest_base {
                    Some(_) => Gap::BeforeBaseBackup,
                    None => Gap::None,
                };
                self.catch_up_or_restart(builder, &received, lock, &mut stored, gap)
                    .await?;
            }
            Some(range)
        } else {
            None
        };
        stored.add(store_wal(builder, &spool, |_| true).await?);
        if let Some(redundant) = history.replaced_by(&stored) {
            builder.supersede(redundant);
        }
        spool
            .write_journal(&Journal {
                job,
                snapshot_time: builder.started(),
                segments: stored.complete.clone(),
            })
            .map_err(WalError::spool(spool.dir()))?;
        let metadata = WalMetadata {
            system_identifier: server.system_identifier,
            server_version_num: server.version_num,
            segments: stored.complete.len() as u64,
            partial: stored.partial,
            first_segment: stored.first,
            last_segment: stored.last,
            server_lsn: server.current,
            base_backup: base,
            received_by: if lock.is_some() { "run" } else { "receiver" }.into(),
            census,
        };
        let metadata = serde_json::to_value(&metadata).map_err(|e| WalError::Unexpected {
            what: "encoding the metadata".into(),
            output: e.to_string(),
        })?;
        Ok(metadata)
    }

    /// Starts the spool over for a new cluster, and deletes the segments
    /// the last run stored once its snapshot is known to be committed.
    fn settle_spool(
        &self,
        spool: &Spool,
        server: &ServerWal,
        history: &JobHistory,
        builder: &mut SnapshotBuilder,
    ) -> Result<(), WalError> {
        let recorded = spool
            .system_identifier()
            .map_err(WalError::spool(spool.dir()))?;
        if recorded.as_deref() != Some(server.system_identifier.as_str()) {
            if let Some(other) = recorded {
                builder.warn(format!(
                    "the server is another PostgreSQL cluster than before (system identifier \
                     {} instead of {other}): archiving starts over with a new base backup",
                    server.system_identifier
                ));
            }
            spool
                .restart_for(&server.system_identifier)
                .map_err(WalError::spool(spool.dir()))?;
            return Ok(());
        }
        if let Some(journal) = spool.journal()
            && history.committed.contains(&journal.snapshot_time)
        {
            spool
                .forget_stored(&journal)
                .map_err(WalError::spool(spool.dir()))?;
        }
        Ok(())
    }

    /// Receives the WAL up to the server's position now, creating the slot
    /// first when one is configured. When the server no longer has the
    /// segment the spool resumes in, stores what the spool holds, starts it
    /// over at the server's position (warning of the `gap` it leaves) and
    /// returns true: a base backup is then due.
    async fn catch_up_or_restart(
        &self,
        builder: &mut SnapshotBuilder,
        received: &Received<'_>,
        lock: &WriterLock,
        stored: &mut Stored,
        gap: Gap,
    ) -> Result<bool, SourceError> {
        let failed = match self.catch_up(received, lock).await {
            Ok(()) => return Ok(false),
            Err(e) => e,
        };
        let fork = match &failed {
            WalError::Receive { .. } => fork(received).await?,
            _ => None,
        };
        match (failed, fork) {
            (WalError::Receive { message, .. }, Some(fork)) => {
                if self
                    .follow_switch(builder, received, lock, stored, fork)
                    .await?
                {
                    return Ok(false);
                }
                builder.warn(format!(
                    "the server's timeline forked from the archived one before the WAL the \
                     spool holds (it was restored to an earlier point and promoted; \
                     pg_receivewal: {message}): archiving starts over on its timeline with a \
                     new base backup"
                ));
            }
            (WalError::Removed { message }, _) => match gap {
                Gap::Archive => builder.warn(WalError::Removed { message }.to_string()),
                Gap::BeforeBaseBackup => builder.warn(format!(
                    "the server recycled the WAL just before this run's base backup before it \
                     was received ({message}): earlier base backups cannot be rolled forward \
                     past it. Run lifeboatd serve, whose receiver streams the WAL as it is \
                     written, or set slot = \"lifeboat\" in the job"
                )),
                Gap::None => {}
            },
            (e, _) => return Err(e.into()),
        }
        stored.add(store_wal(builder, received.spool, |_| true).await?);
        received
            .spool
            .restart_for(received.system_identifier)
            .map_err(WalError::spool(received.spool.dir()))?;
        self.catch_up(received, lock).await?;
        Ok(true)
    }

    /// The server was promoted onto a new timeline at or before the end of
    /// the spool's WAL, so it refuses to stream the spool's timeline from
    /// there. Its history file says where that timeline ended: resumes on
    /// the next timeline at the segment holding the switch (whose file
    /// begins with the old timeline's WAL up to it), so the archive goes on
    /// without a gap. The spool's files of older timelines from that
    /// segment on (WAL the server's history left behind) are stored in this
    /// run first and then leave the spool. Returns whether that caught up
    /// (the anchor is removed again if not).
    async fn follow_switch(
        &self,
        builder: &mut SnapshotBuilder,
        received: &Received<'_>,
        lock: &WriterLock,
        stored: &mut Stored,
        fork: Fork,
    ) -> Result<bool, SourceError> {
        let spool = received.spool;
        let history =
            server::timeline_history(received.connection, received.tools, fork.server).await?;
        let Some(next) = history.branch_segment(fork.spool) else {
            return Ok(false);
        };
        let left_behind = |file: &WalFile| {
            file.segment()
                .is_some_and(|s| s.timeline < next.timeline && s.number >= next.number)
        };
        stored.add(store_wal(builder, spool, left_behind).await?);
        spool
            .remove(left_behind)
            .map_err(WalError::spool(spool.dir()))?;
        spool
            .resume_at(next)
            .map_err(WalError::spool(spool.dir()))?;
        match self.catch_up(received, lock).await {
            Ok(()) => {
                tracing::info!(
                    "postgres-wal: followed the server onto timeline {} at {}",
                    next.timeline,
                    next.name()
                );
                Ok(true)
            }
            Err(_) => {
                let anchor = spool.dir().join(WalFile::Partial(next).name());
                if is_anchor(&anchor) {
                    std::fs::remove_file(&anchor).map_err(WalError::spool(&anchor))?;
                }
                Ok(false)
            }
        }
    }

    /// Receives the WAL up to the server's position now.
    async fn catch_up(&self, received: &Received<'_>, lock: &WriterLock) -> Result<(), WalError> {
        let (connection, tools, spool) = (received.connection, received.tools, received.spool);
        let slot = self.slot.as_deref();
        if slot.is_some() {
            receive(connection, tools, spool, lock, slot, Receive::CreateSlot).await?;
        }
        let now = server::server_wal(connection, tools).await?;
        // An empty spool starts at the server's segment now: left to
        // itself, pg_receivewal would start at the server's position when
        // it connects, which may already be past the end it is given.
        let here = names::Segment {
            timeline: now.timeline,
            number: now.current.segment(),
        };
        spool.anchor(here).map_err(WalError::spool(spool.dir()))?;
        let start = spool
            .resume_position(now.current)
            .map_err(WalError::spool(spool.dir()))?;
        if now.current <= start {
            // Nothing new: pg_receivewal would wait for WAL to come.
            return Ok(());
        }
        // pg_receivewal stops once it has received WAL past the position it
        // is given, so it gets the byte before the server's: asked for the
        // server's own position, it would wait for the next WAL record,
        // which an idle server may not write for minutes.
        let end = names::Lsn(now.current.0 - 1);
        receive(connection, tools, spool, lock, slot, Receive::Until(end)).await
    }

    /// Takes a base backup into the spool and stores it as [`BASE_FOLDER`].
    async fn store_base_backup(
        &self,
        builder: &mut SnapshotBuilder,
        connection: &Connection,
        tools: &WalTools,
        spool: &Spool,
    ) -> Result<BaseBackupRange, SourceError> {
        let dir = spool
            .fresh_base_backup_dir()
            .map_err(WalError::spool(spool.dir()))?;
        tracing::info!("postgres-wal: taking a base backup");
        let range = base_backup(connection, tools, &dir).await;
        let stored = match range {
            Ok(range) => {
                let folder = Folder {
                    path: dir.clone(),
                    exclude: Vec::new(),
                };
                let place = Path::new("/").join(BASE_FOLDER);
                builder
                    .add_folder_as(&folder, &place, Default::default())
                    .await
                    .map(|_| range)
                    .map_err(SourceError::from)
            }
            Err(e) => Err(e.into()),
        };
        spool
            .remove_base_backup_dir()
            .map_err(WalError::spool(spool.dir()))?;
        stored
    }
}

/// The timelines of a server that writes a newer one than the spool's
/// newest segment: streaming failed because its history forked before it.
#[derive(Debug, Clone, Copy)]
struct Fork {
    /// The timeline of the spool's newest segment.
    spool: u32,
    /// The timeline the server writes.
    server: u32,
}

/// The fork between the spool and the server, if the server writes a
/// newer timeline than the spool's newest segment.
async fn fork(received: &Received<'_>) -> Result<Option<Fork>, WalError> {
    let server = server::server_wal(received.connection, received.tools).await?;
    let spool = received
        .spool
        .newest_timeline()
        .map_err(WalError::spool(received.spool.dir()))?;
    Ok(spool
        .filter(|&timeline| timeline < server.timeline)
        .map(|spool| Fork {
            spool,
            server: server.timeline,
        }))
}

/// What WAL the server recycling a segment before it was received costs,
/// for the run's warning.
#[derive(Debug, Clone, Copy)]
enum Gap {
    /// WAL of the archive: recovery cannot cross it.
    Archive,
    /// The WAL before this run's base backup, which holds its own: only
    /// earlier base backups are cut short.
    BeforeBaseBackup,
    /// Nothing: there is no earlier base backup.
    None,
}

/// Where a run receives WAL from and into.
struct Received<'a> {
    connection: &'a Connection,
    tools: &'a WalTools,
    spool: &'a Spool,
    system_identifier: &'a str,
}
