//! Opening a state database: WAL journal, a busy timeout for concurrent
//! writers, and versioned migrations applied in one write transaction, so
//! two processes opening a new database at once cannot both migrate it.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

/// Why a state database could not be opened.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// SQLite failed.
    Sqlite(rusqlite::Error),
    /// The database was written by a newer lifeboat.
    Newer {
        /// Its schema version.
        found: usize,
    },
}

impl From<rusqlite::Error> for OpenError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sqlite(e)
    }
}

/// Opens (creating if needed) the database at `path` and applies the
/// `migrations` it lacks; its `user_version` counts those applied.
pub(crate) fn open(path: &Path, migrations: &[&str]) -> Result<Connection, OpenError> {
    let mut connection = Connection::open(path)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    connection.busy_timeout(Duration::from_secs(10))?;
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: usize = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > migrations.len() {
        return Err(OpenError::Newer { found: version });
    }
    for (number, migration) in migrations.iter().enumerate().skip(version) {
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", number + 1)?;
    }
    tx.commit()?;
    Ok(connection)
}
