//! What the repository holds of a WAL job: which of its runs committed,
//! and how old its newest base backup of the cluster is.

use std::time::Duration;

use super::WalMetadata;
use crate::backup::SnapshotBuilder;

/// What the repository holds of the job, for this cluster.
pub(super) struct JobHistory {
    /// Times of the job's committed snapshots.
    pub(super) committed: Vec<chrono::DateTime<chrono::Utc>>,
    /// When the newest base backup of this cluster was taken.
    pub(super) newest_base: Option<chrono::DateTime<chrono::Utc>>,
}

impl JobHistory {
    /// Reads it; a listing that fails counts as an empty history (the
    /// spool then keeps its segments, and a base backup is taken).
    pub(super) async fn read(
        builder: &SnapshotBuilder,
        job: &str,
        system_identifier: &str,
    ) -> Self {
        let snapshots = match builder.repository().snapshots().await {
            Ok(snapshots) => snapshots,
            Err(e) => {
                tracing::warn!("postgres-wal: cannot list the job's snapshots: {e}");
                Vec::new()
            }
        };
        let ours = snapshots.iter().filter(|e| e.snapshot.job == job);
        let mut history = Self {
            committed: Vec::new(),
            newest_base: None,
        };
        for entry in ours {
            history.committed.push(entry.snapshot.time);
            let metadata = WalMetadata::of(&entry.snapshot);
            if let Some(m) = metadata
                && m.system_identifier == system_identifier
                && m.base_backup.is_some()
            {
                history.newest_base = history.newest_base.max(Some(entry.snapshot.time));
            }
        }
        history
    }

    pub(super) fn base_backup_older_than(&self, every: Duration) -> bool {
        let every = chrono::Duration::from_std(every).unwrap_or(chrono::Duration::MAX);
        self.newest_base
            .is_none_or(|time| chrono::Utc::now() - time >= every)
    }
}
