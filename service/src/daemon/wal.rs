//! The WAL receivers: while the service runs, one `pg_receivewal` per
//! enabled `postgres-wal` job ([`crate::sources::postgres_wal::receiver`]),
//! and what they report to `/metrics` and the status page.

use std::collections::BTreeMap;
use std::sync::PoisonError;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::sources::SourceConfig;
use crate::sources::postgres_wal::receiver::{self, ReceiverState, SharedState};
use crate::text::prometheus::Exposition;

/// Each receiver's state, by job.
pub type Receivers = BTreeMap<String, SharedState>;

/// A receiver state for every enabled `postgres-wal` job of `config`.
pub(super) fn table(config: &Config) -> Receivers {
    config
        .jobs
        .iter()
        .filter(|job| job.enabled && matches!(job.source, SourceConfig::PostgresWal(_)))
        .map(|job| (job.name.clone(), SharedState::default()))
        .collect()
}

/// Starts the receivers of `receivers` (made by [`table`] from `config`);
/// they stop when `stop` is cancelled.
pub(super) fn start(config: &Config, receivers: &Receivers, stop: &CancellationToken) {
    for job in &config.jobs {
        let (SourceConfig::PostgresWal(source), Some(state)) =
            (&job.source, receivers.get(&job.name))
        else {
            continue;
        };
        tokio::spawn(receiver::run(
            source.clone(),
            job.name.clone(),
            config.state_folder(),
            state.clone(),
            stop.child_token(),
        ));
    }
}

/// A copy of each receiver's state.
pub fn states(receivers: &Receivers) -> BTreeMap<String, ReceiverState> {
    receivers
        .iter()
        .map(|(job, state)| {
            let state = state.lock().unwrap_or_else(PoisonError::into_inner);
            (job.clone(), state.clone())
        })
        .collect()
}

/// `lifeboat_wal_receiver_up{job}`: 1 while a `pg_receivewal` streams
/// (the family is always described, so alerts on it always resolve).
pub fn render(receivers: &Receivers) -> String {
    let mut out = Exposition(String::new());
    let name = "lifeboat_wal_receiver_up";
    out.family(
        name,
        "gauge",
        "Whether a pg_receivewal is streaming WAL into the job's spool (1) or not (0); \
         the job's RPO alert covers WAL that is not stored.",
    );
    for (job, state) in states(receivers) {
        out.sample(name, &[("job", &job)], f64::from(u8::from(state.streaming)));
    }
    out.0
}
