//! A census: every table's row count in every database, taken at a named
//! restore point, so that a drill can recover to that point and find the
//! same counts ([`drill`](super::drill)).
//!
//! The counts and the restore point must describe the same moment,
//! however busy the server is. One `psql` session per database opens a
//! `REPEATABLE READ` transaction; then, in quick succession, each prints
//! its snapshot (which fixes the commits it sees), the restore point is
//! written, and a transaction of lifeboat's own commits (with
//! `remote_apply`, so the WAL is flushed, and applied on any synchronous
//! standby, through the restore point) before the server's snapshot is
//! read. If every session sees the same commits as that last snapshot,
//! leaving lifeboat's own aside, no transaction ended between the
//! sessions' snapshots and that snapshot.
//!
//! One kind of transaction escapes that comparison: one that wrote its
//! commit record before the restore point but had not yet left the
//! server's list of running transactions when the last snapshot was read.
//! Its id is older than lifeboat's own (ids are handed out in time order),
//! so it is among the running ones that snapshot lists. Each of those is
//! waited for, up to two seconds: one that ends committed may have committed
//! before the restore point, and the attempt is dropped; one that aborts
//! does not matter; one still running after the wait has not committed
//! before the restore point, since nothing holds a commit whose record
//! lifeboat's own commit has flushed and applied. What the sessions count
//! is then exactly what a recovery to the restore point holds. A dropped
//! attempt is made again, a few times.
//!
//! The role needs, beyond `REPLICATION`: `EXECUTE` on
//! `pg_create_restore_point(text)` in the dsn's database (function rights
//! belong to a database) and read access to every table
//! (`pg_read_all_data`, PostgreSQL 14 and later).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::WalError;
use super::names::Lsn;
use crate::backup::SnapshotBuilder;
use crate::backup::stream::StreamChunking;
use crate::sources::SourceError;
use crate::sources::postgres::PostgresError;
use crate::sources::postgres::connection::Connection;
use crate::sources::postgres::session::{self, PsqlSession, TableRows};

/// The file a census is stored as, at the root of the run's snapshot.
pub const CENSUS_FILE: &str = "census.json";

/// Attempts at a census while transactions keep ending.
const ATTEMPTS: u32 = 5;

/// How long a census waits for transactions that may have committed
/// before its restore point to finish ending.
const SETTLE_WAIT: Duration = Duration::from_secs(2);

/// How often their state is asked for meanwhile.
const SETTLE_POLL: Duration = Duration::from_millis(20);

/// Every table's row count at a restore point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Census {
    /// The restore point's name and position.
    pub mark: CensusMark,
    /// When it was taken.
    pub time: DateTime<Utc>,
    /// The databases that accept connections, by name.
    pub databases: Vec<DatabaseCensus>,
}

/// One database's tables in a [`Census`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseCensus {
    /// The database.
    pub database: String,
    /// Its tables, by schema and name.
    pub tables: Vec<TableRows>,
}

/// Where a census was taken: what a snapshot's metadata says of the
/// census it holds (names lifeboat made; no table or database names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CensusMark {
    /// The restore point (`lifeboat-census-…`).
    pub restore_point: String,
    /// The end of its WAL record.
    pub lsn: Lsn,
}

/// Why no census was taken.
#[derive(Debug, thiserror::Error)]
pub enum CensusError {
    /// Connecting, or counting a database's rows.
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    /// The restore point could not be made.
    #[error(
        "cannot make the census's restore point: {message}; in the dsn's database, \
         GRANT EXECUTE ON FUNCTION pg_create_restore_point(text) TO the role"
    )]
    RestorePoint {
        /// psql's error text.
        message: String,
    },
    /// Transactions ended between the sessions' snapshots every time.
    #[error(
        "transactions ended while the census was taken, in each of {attempts} attempts; \
         the next run tries again"
    )]
    Busy {
        /// How many attempts were made.
        attempts: u32,
    },
}

/// Takes a census and stores it in `builder` as [`CENSUS_FILE`]; returns
/// its mark. A census that cannot be taken is a warning, since the WAL is
/// archived all the same.
///
/// Fails when the census cannot be stored.
pub(super) async fn store(
    builder: &mut SnapshotBuilder,
    connection: &Connection,
    psql: &Path,
) -> Result<Option<CensusMark>, SourceError> {
    tracing::info!("postgres-wal: taking a census");
    let census = match take(connection, psql).await {
        Ok(census) => census,
        Err(e) => {
            builder.warn(format!("no census taken: {e}"));
            return Ok(None);
        }
    };
    let text = serde_json::to_vec_pretty(&census).map_err(|e| WalError::Unexpected {
        what: "encoding the census".into(),
        output: e.to_string(),
    })?;
    builder
        .add_stream(
            CENSUS_FILE,
            std::io::Cursor::new(text),
            StreamChunking::Content,
        )
        .await?;
    Ok(Some(census.mark))
}

/// Takes a census of every database that accepts connections.
///
/// Fails when the role cannot connect, count or make a restore point, or
/// when transactions ended during every attempt.
async fn take(connection: &Connection, psql: &Path) -> Result<Census, CensusError> {
    let inventory = session::inventory(connection, psql).await?;
    let databases: Vec<String> = inventory
        .databases
        .into_iter()
        .filter(|d| d.connectable)
        .map(|d| d.name)
        .collect();
    for attempt in 1..=ATTEMPTS {
        // Connections first: the moments that must agree follow each other
        // without a process start between them.
        let mut sessions = Vec::with_capacity(databases.len());
        for database in &databases {
            let mut session = PsqlSession::connect(connection, psql, Some(database)).await?;
            session
                .query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;")
                .await?;
            sessions.push(session);
        }
        let mut coordinator = coordinator(connection, psql).await?;
        let mut seen = Vec::with_capacity(sessions.len());
        for session in &mut sessions {
            seen.push(visibility(session).await?);
        }
        let time = Utc::now();
        let name = format!(
            "lifeboat-census-{}-{attempt}",
            time.format("%Y%m%dT%H%M%S%.3fZ")
        );
        let point = restore_point(&mut coordinator, &name).await?;
        let agreed = seen
            .iter()
            .all(|s| s.same_commits(&point.visibility, Some(point.own_xid)))
            && settled(&mut coordinator, &point).await?;
        let _ = coordinator.close().await;
        if agreed {
            let mut counted = Vec::with_capacity(sessions.len());
            for (database, mut session) in databases.iter().zip(sessions) {
                let tables = session.count_rows().await?;
                session.close().await?;
                counted.push(DatabaseCensus {
                    database: database.clone(),
                    tables,
                });
            }
            return Ok(Census {
                mark: CensusMark {
                    restore_point: name,
                    lsn: point.lsn,
                },
                time,
                databases: counted,
            });
        }
        for session in sessions {
            let _ = session.close().await;
        }
        tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
    }
    Err(CensusError::Busy { attempts: ATTEMPTS })
}

/// A session in the dsn's database, outside the counting transactions,
/// whose commits return once flushed and applied on any synchronous
/// standby.
async fn coordinator(connection: &Connection, psql: &Path) -> Result<PsqlSession, CensusError> {
    let mut session = PsqlSession::connect(connection, psql, None).await?;
    session
        .query("SET synchronous_commit = remote_apply;")
        .await?;
    Ok(session)
}

/// Whether no transaction may have committed before the restore point
/// unseen by the server's snapshot after it: waits for the running ones
/// older than lifeboat's own (see the module's documentation).
async fn settled(coordinator: &mut PsqlSession, point: &RestorePoint) -> Result<bool, CensusError> {
    let mut pending = point.visibility.older_running(point.own_xid);
    let deadline = Instant::now() + SETTLE_WAIT;
    while !pending.is_empty() {
        let list = pending
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let lines = coordinator
            .query(&format!(
                "SELECT coalesce(pg_xact_status(x), 'unknown') FROM unnest('{{{list}}}'::xid8[]) WITH ORDINALITY AS t(x, n) ORDER BY n;"
            ))
            .await?;
        if lines.len() != pending.len() {
            return Err(unexpected("transaction states", &lines.join("\n")));
        }
        let mut running = Vec::new();
        for (xid, state) in pending.iter().zip(&lines) {
            match XactState::parse(state) {
                XactState::Running => running.push(*xid),
                XactState::Aborted => {}
                XactState::MayHaveCommitted => return Ok(false),
            }
        }
        pending = running;
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
    Ok(true)
}

/// What `pg_xact_status` says of a transaction, as far as a census cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum XactState {
    Running,
    Aborted,
    /// Committed, or a state the census cannot rule that out for.
    MayHaveCommitted,
}

impl XactState {
    fn parse(text: &str) -> Self {
        match text.trim() {
            "in progress" => Self::Running,
            "aborted" => Self::Aborted,
            _ => Self::MayHaveCommitted,
        }
    }
}

/// The commits `session`'s transaction sees (its first query fixes them).
async fn visibility(session: &mut PsqlSession) -> Result<Visibility, CensusError> {
    let lines = session.query("SELECT pg_current_snapshot();").await?;
    match lines.as_slice() {
        [text] => Visibility::parse(text).ok_or_else(|| unexpected("a snapshot", text)),
        _ => Err(unexpected("a snapshot", &lines.join("\n"))),
    }
}

/// A restore point made, lifeboat's transaction that flushed it, and the
/// server's snapshot after that.
struct RestorePoint {
    lsn: Lsn,
    own_xid: u64,
    visibility: Visibility,
}

/// Makes restore point `name`, commits a transaction of its own (whose
/// synchronous commit flushes the WAL through the restore point, so every
/// transaction that committed before it has ended), then reads the
/// server's snapshot.
async fn restore_point(
    coordinator: &mut PsqlSession,
    name: &str,
) -> Result<RestorePoint, CensusError> {
    let made = coordinator
        .query(&format!(
            "SELECT pg_create_restore_point('{}');",
            name.replace('\'', "''")
        ))
        .await
        .map_err(|e| match e {
            PostgresError::Query { message, .. } => CensusError::RestorePoint { message },
            other => other.into(),
        })?;
    let own = coordinator
        .query("BEGIN;\nSELECT pg_current_xact_id();\nCOMMIT;\nSELECT pg_current_snapshot();")
        .await?;
    match (made.as_slice(), own.as_slice()) {
        ([lsn], [xid, visibility]) => Ok(RestorePoint {
            lsn: lsn
                .parse()
                .map_err(|_| unexpected("a restore point's LSN", lsn))?,
            own_xid: xid
                .parse()
                .map_err(|_| unexpected("a transaction id", xid))?,
            visibility: Visibility::parse(visibility)
                .ok_or_else(|| unexpected("a snapshot", visibility))?,
        }),
        _ => Err(unexpected(
            "the census's restore point",
            &[made, own].concat().join("\n"),
        )),
    }
}

fn unexpected(what: &str, output: &str) -> CensusError {
    PostgresError::Unexpected {
        what: what.into(),
        output: output.chars().take(300).collect(),
    }
    .into()
}

/// The commits a snapshot sees, as `pg_current_snapshot()` prints it
/// (`xmin:xmax:xip,…`): every transaction before `xmin`, and those before
/// `xmax` that are not `running`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Visibility {
    xmin: u64,
    xmax: u64,
    running: BTreeSet<u64>,
}

/// The most transaction ids two snapshots are compared across; past it
/// they count as different (the attempt is made again).
const MAX_SPAN: u64 = 1 << 20;

impl Visibility {
    fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split(':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let running = match parts.next()? {
            "" => BTreeSet::new(),
            list => list
                .split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<BTreeSet<u64>>>()?,
        };
        (parts.next().is_none() && xmin <= xmax && running.len() <= MAX_SPAN as usize).then_some(
            Self {
                xmin,
                xmax,
                running,
            },
        )
    }

    /// The transactions it lists as running that began before `xid`.
    fn older_running(&self, xid: u64) -> Vec<u64> {
        self.running.range(..xid).copied().collect()
    }

    fn sees(&self, xid: u64) -> bool {
        xid < self.xmin || (xid < self.xmax && !self.running.contains(&xid))
    }

    /// Whether both see the same commits, `except` aside.
    fn same_commits(&self, other: &Self, except: Option<u64>) -> bool {
        let from = self.xmin.min(other.xmin);
        let to = self.xmax.max(other.xmax);
        to - from <= MAX_SPAN
            && (from..to)
                .filter(|xid| Some(*xid) != except)
                .all(|xid| self.sees(xid) == other.sees(xid))
    }
}

/// What differs between a census and the counts found: one line per
/// database or table whose rows differ, that is missing, or that is new.
pub fn differences(census: &Census, found: &[DatabaseCensus]) -> Vec<String> {
    type Tables<'a> = BTreeMap<(&'a str, &'a str), u64>;
    fn tables(database: &DatabaseCensus) -> Tables<'_> {
        database
            .tables
            .iter()
            .map(|t| ((t.schema.as_str(), t.table.as_str()), t.rows))
            .collect()
    }
    let then: BTreeMap<&str, Tables<'_>> = census
        .databases
        .iter()
        .map(|d| (d.database.as_str(), tables(d)))
        .collect();
    let now: BTreeMap<&str, Tables<'_>> = found
        .iter()
        .map(|d| (d.database.as_str(), tables(d)))
        .collect();
    let mut lines = Vec::new();
    for (database, counted) in &then {
        let Some(present) = now.get(database) else {
            lines.push(format!("database {database:?} is missing"));
            continue;
        };
        for ((schema, table), rows) in counted {
            match present.get(&(*schema, *table)) {
                None => lines.push(format!("{database}: table {schema}.{table} is missing")),
                Some(found) if found != rows => lines.push(format!(
                    "{database}: {schema}.{table} has {found} rows, {rows} at the census"
                )),
                Some(_) => {}
            }
        }
        for (schema, table) in present.keys().filter(|key| !counted.contains_key(*key)) {
            lines.push(format!(
                "{database}: table {schema}.{table} was not there at the census"
            ));
        }
    }
    for database in now.keys().filter(|d| !then.contains_key(*d)) {
        lines.push(format!("database {database:?} was not there at the census"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, rows: u64) -> TableRows {
        TableRows {
            schema: "public".into(),
            table: name.into(),
            rows,
        }
    }

    fn database(name: &str, tables: Vec<TableRows>) -> DatabaseCensus {
        DatabaseCensus {
            database: name.into(),
            tables,
        }
    }

    #[test]
    fn every_difference_is_named() {
        let census = Census {
            mark: CensusMark {
                restore_point: "lifeboat-census-x-1".into(),
                lsn: Lsn(0x100_0028),
            },
            time: Utc::now(),
            databases: vec![
                database("app", vec![table("events", 250), table("gone", 1)]),
                database("other", vec![]),
            ],
        };
        let same = census.databases.clone();
        assert!(differences(&census, &same).is_empty());
        let found = vec![
            database("app", vec![table("events", 251), table("new", 0)]),
            database("later", vec![]),
        ];
        assert_eq!(
            differences(&census, &found),
            [
                "app: public.events has 251 rows, 250 at the census",
                "app: table public.gone is missing",
                "app: table public.new was not there at the census",
                "database \"other\" is missing",
                "database \"later\" was not there at the census",
            ]
        );
    }

    #[test]
    fn snapshots_see_the_same_commits_or_not() {
        let parse = |text: &str| Visibility::parse(text).unwrap_or_else(|| panic!("{text}"));
        let before = parse("750:753:750,752");
        // The same commits, written differently: 753 began and runs.
        assert!(before.same_commits(&parse("750:754:750,752,753"), None));
        // 752 ended.
        assert!(!before.same_commits(&parse("750:753:750"), None));
        // Lifeboat's own 754 ended; then 755 too.
        assert!(before.same_commits(&parse("750:755:750,752,753"), Some(754)));
        assert!(!before.same_commits(&parse("750:756:750,752,753"), Some(754)));
        assert!(Visibility::parse("1:2:x").is_none());
        assert!(Visibility::parse("5:2:").is_none());
        assert!(Visibility::parse("1:2:3:4").is_none());
        assert!(!parse("1:1:").same_commits(&parse("1:9999999:"), None));
    }

    #[test]
    fn transactions_older_than_lifeboats_own_are_the_ones_waited_for() {
        let after = Visibility::parse("750:760:750,752,757,759").expect("a snapshot");
        assert_eq!(after.older_running(757), [750, 752]);
        assert_eq!(after.older_running(750), Vec::<u64>::new());
        assert_eq!(XactState::parse("in progress"), XactState::Running);
        assert_eq!(XactState::parse("aborted"), XactState::Aborted);
        for state in ["committed", "unknown", "", "in"] {
            assert_eq!(XactState::parse(state), XactState::MayHaveCommitted);
        }
    }

    #[test]
    fn a_census_reads_back_as_written() -> Result<(), serde_json::Error> {
        let census = Census {
            mark: CensusMark {
                restore_point: "lifeboat-census-x-1".into(),
                lsn: Lsn(0x100_0028),
            },
            time: Utc::now(),
            databases: vec![database("app", vec![table("events", 3)])],
        };
        let text = serde_json::to_string(&census)?;
        assert_eq!(serde_json::from_str::<Census>(&text)?, census);
        assert!(
            serde_json::from_str::<Census>(&text.replace("\"time\"", "\"x\":1,\"time\"")).is_err()
        );
        Ok(())
    }
}
