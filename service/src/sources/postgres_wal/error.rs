//! Why WAL could not be archived.

use std::path::{Path, PathBuf};

use crate::sources::postgres::PostgresError;
use crate::sources::postgres::connection::Hint;

/// Why WAL could not be archived.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// Connection settings, password or client programs.
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    /// lifeboatd runs without a state folder.
    #[error(
        "a postgres-wal job needs lifeboat's state folder for its WAL spool; \
         run it under lifeboatd with state_dir set"
    )]
    NoStateFolder,
    /// The spool cannot be used.
    #[error(
        "the WAL spool {path} cannot be used: {source}; check the state folder's disk and permissions"
    )]
    Spool {
        /// The folder or file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The server's WAL position could not be read.
    #[error("cannot read the server's WAL position: {message}{hint}")]
    Server {
        /// psql's error text.
        message: String,
        /// The fix, when known.
        hint: Hint,
    },
    /// The server's segments are not 16 MiB.
    #[error(
        "the server's WAL segments are {segment_size} bytes; lifeboat archives 16 MiB segments \
         (initdb's default) only"
    )]
    SegmentSize {
        /// `wal_segment_size`.
        segment_size: u64,
    },
    /// `pg_receivewal` failed.
    #[error("pg_receivewal failed: {message}{hint}")]
    Receive {
        /// Its error text.
        message: String,
        /// The fix, when known.
        hint: Hint,
    },
    /// The server recycled WAL that was never received.
    #[error(
        "the server no longer has WAL the archive needs ({message}): point-in-time recovery into \
         the time since the last stored segment is impossible; a new base backup is taken. \
         To prevent it, set slot = \"lifeboat\" in the job (the server then keeps the WAL until \
         it is received) or raise wal_keep_size"
    )]
    Removed {
        /// pg_receivewal's error text.
        message: String,
    },
    /// `pg_basebackup` failed.
    #[error("pg_basebackup failed: {message}{hint}")]
    BaseBackup {
        /// Its error text.
        message: String,
        /// The fix, when known.
        hint: Hint,
    },
    /// A client program printed something lifeboat does not understand.
    #[error("unexpected output from PostgreSQL ({what}): {output:?}")]
    Unexpected {
        /// What was being read.
        what: String,
        /// The start of the output.
        output: String,
    },
}

impl WalError {
    pub(super) fn spool(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Spool {
            path: path.to_owned(),
            source,
        }
    }
}
