//! The receiver: `pg_receivewal` kept running for one job while lifeboatd
//! runs, so the server's WAL reaches the spool as it is written.
//!
//! It streams only while it holds the spool's writer lock (a run catching
//! up, or a `pg_receivewal` left by a killed lifeboatd, makes it wait) and
//! only into a spool of the server's cluster (a new cluster's spool is
//! started over by the job's next run, which first stores what is left).
//! When `pg_receivewal` stops — the server restarted, the network broke,
//! the WAL it needs is gone — the receiver says why and starts it again,
//! waiting longer after each failure (up to a minute).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::server::{Receive, receive, server_wal};
use super::spool::Spool;
use super::{PostgresWalSource, WalError};

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The first wait after a failure, and while another writer holds the lock.
const FIRST_BACKOFF: Duration = Duration::from_secs(2);

/// What one job's receiver is doing, for `/metrics` and the status page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReceiverState {
    /// Whether a `pg_receivewal` is streaming into the spool now (this
    /// receiver's, or one another process started).
    pub streaming: bool,
    /// Since when it has been (or stopped being) streaming.
    pub since: Option<DateTime<Utc>>,
    /// Why it last stopped or could not start, if it did.
    pub last_error: Option<String>,
}

/// Shared state of a receiver.
pub type SharedState = Arc<Mutex<ReceiverState>>;

/// Keeps `pg_receivewal` running for `job` until `stop` is cancelled.
pub async fn run(
    source: PostgresWalSource,
    job: String,
    state_dir: PathBuf,
    state: SharedState,
    stop: CancellationToken,
) {
    let mut backoff = FIRST_BACKOFF;
    while !stop.is_cancelled() {
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = stream_once(&source, &job, &state_dir, &state) => outcome,
        };
        match outcome {
            Ok(Ended::Streamed) => backoff = FIRST_BACKOFF,
            Ok(Ended::Waiting(why)) => {
                tracing::debug!(job, "WAL receiver waits: {why}");
                backoff = FIRST_BACKOFF;
            }
            Err(e) => {
                tracing::warn!(
                    job,
                    "WAL receiver stopped: {e}; trying again in {backoff:?}"
                );
                set(&state, false, Some(e.to_string()));
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// How one attempt ended, short of a failure.
enum Ended {
    /// `pg_receivewal` streamed and then exited cleanly.
    Streamed,
    /// It did not start, for the reason given.
    Waiting(&'static str),
}

async fn stream_once(
    source: &PostgresWalSource,
    job: &str,
    state_dir: &std::path::Path,
    state: &SharedState,
) -> Result<Ended, WalError> {
    let spool = Spool::open(state_dir, job).map_err(WalError::spool(state_dir))?;
    let (connection, tools) = (source.connect()?, source.tools());
    let server = server_wal(&connection, &tools).await?;
    let spool_of = spool
        .system_identifier()
        .map_err(WalError::spool(spool.dir()))?;
    if spool_of.as_deref() != Some(server.system_identifier.as_str()) {
        return Ok(Ended::Waiting(
            "the spool is not yet set up for this cluster; the job's next run does it",
        ));
    }
    let Some(lock) = spool.try_lock().map_err(WalError::spool(spool.dir()))? else {
        // A run catching up, or the pg_receivewal of a lifeboatd that was
        // killed: the WAL is being received all the same.
        set(state, true, None);
        return Ok(Ended::Waiting("another pg_receivewal writes the spool"));
    };
    let slot = source.slot.as_deref();
    if slot.is_some() {
        receive(
            &connection,
            &tools,
            &spool,
            &lock,
            slot,
            Receive::CreateSlot,
        )
        .await?;
    }
    tracing::info!(job, "WAL receiver streaming from {}", server.current);
    set(state, true, None);
    let ended = receive(&connection, &tools, &spool, &lock, slot, Receive::Streaming).await;
    set(state, false, ended.as_ref().err().map(ToString::to_string));
    ended.map(|()| Ended::Streamed)
}

fn set(state: &SharedState, streaming: bool, error: Option<String>) {
    let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
    if state.streaming != streaming || state.since.is_none() {
        state.since = Some(Utc::now());
    }
    state.streaming = streaming;
    if error.is_some() || streaming {
        state.last_error = error;
    }
}
