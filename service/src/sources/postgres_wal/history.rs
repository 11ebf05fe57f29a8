//! What the repository holds of a WAL job: which of its runs committed,
//! how old its newest base backup of the cluster is, and whether a run
//! makes the job's newest snapshot redundant.

use std::time::Duration;

use super::WalMetadata;
use super::names::WalFile;
use super::store::Stored;
use crate::backup::SnapshotBuilder;
use crate::repo::id::SnapshotId;

/// What the repository holds of the job, for this cluster.
pub(super) struct JobHistory {
    /// Times of the job's committed snapshots.
    pub(super) committed: Vec<chrono::DateTime<chrono::Utc>>,
    /// When the newest base backup of this cluster was taken.
    pub(super) newest_base: Option<chrono::DateTime<chrono::Utc>>,
    /// When the newest census of this cluster was taken.
    pub(super) newest_census: Option<chrono::DateTime<chrono::Utc>>,
    /// The job's newest snapshot, when it is of this cluster.
    pub(super) newest: Option<(SnapshotId, WalMetadata)>,
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
            newest_census: None,
            newest: None,
        };
        // Oldest first: the last one seen is the newest.
        for entry in ours {
            history.committed.push(entry.snapshot.time);
            let metadata = WalMetadata::of(&entry.snapshot)
                .filter(|m| m.system_identifier == system_identifier);
            if metadata.as_ref().is_some_and(|m| m.base_backup.is_some()) {
                history.newest_base = history.newest_base.max(Some(entry.snapshot.time));
            }
            if metadata.as_ref().is_some_and(|m| m.census.is_some()) {
                history.newest_census = history.newest_census.max(Some(entry.snapshot.time));
            }
            history.newest = metadata.map(|m| (entry.id, m));
        }
        history
    }

    /// The job's newest snapshot, when a run that stored `stored` makes it
    /// redundant: it held no base backup and no complete segment, only the
    /// segment being written, which this run stored again (grown, or
    /// complete). Forgetting it loses nothing, and a job run every minute
    /// keeps about a snapshot per completed segment, not one per run.
    pub(super) fn replaced_by(&self, stored: &Stored) -> Option<SnapshotId> {
        let (id, newest) = self.newest.as_ref()?;
        let held = newest.last_segment.as_deref()?;
        let Some(WalFile::Partial(segment)) = WalFile::parse(held) else {
            return None;
        };
        let only_the_partial = newest.base_backup.is_none()
            && newest.census.is_none()
            && newest.segments == 0
            && newest.partial
            && newest.first_segment.as_deref() == Some(held);
        let stored_again = stored.complete.contains(&segment.name())
            || (stored.partial && stored.last.as_deref() == Some(held));
        (only_the_partial && stored_again).then_some(*id)
    }

    pub(super) fn base_backup_older_than(&self, every: Duration) -> bool {
        older_than(self.newest_base, every)
    }

    pub(super) fn census_older_than(&self, every: Duration) -> bool {
        older_than(self.newest_census, every)
    }
}

/// Whether `newest` is missing or at least `every` ago.
fn older_than(newest: Option<chrono::DateTime<chrono::Utc>>, every: Duration) -> bool {
    let every = chrono::Duration::from_std(every).unwrap_or(chrono::Duration::MAX);
    newest.is_none_or(|time| chrono::Utc::now() - time >= every)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::postgres_wal::census::CensusMark;
    use crate::sources::postgres_wal::names::Lsn;
    use crate::sources::postgres_wal::server::BaseBackupRange;

    const PARTIAL: &str = "000000010000000000000007.partial";

    fn history(segments: u64, last: &str, base: bool) -> JobHistory {
        let first = if segments == 0 {
            last
        } else {
            "000000010000000000000006"
        };
        let metadata = WalMetadata {
            system_identifier: "7".into(),
            server_version_num: 150000,
            segments,
            partial: last.ends_with(".partial"),
            first_segment: Some(first.into()),
            last_segment: Some(last.into()),
            server_lsn: Lsn(0x700_0000),
            base_backup: base.then_some(BaseBackupRange {
                timeline: 1,
                start_lsn: Lsn(0x600_0028),
                end_lsn: Lsn(0x600_0100),
            }),
            received_by: "run".into(),
            census: None,
        };
        JobHistory {
            committed: Vec::new(),
            newest_base: None,
            newest_census: None,
            newest: Some((SnapshotId::from_bytes([1; 32]), metadata)),
        }
    }

    fn stored(complete: &[&str], last: &str) -> Stored {
        Stored {
            complete: complete.iter().map(|s| s.to_string()).collect(),
            partial: last.ends_with(".partial"),
            first: complete.first().map(|s| s.to_string()),
            last: Some(last.into()),
        }
    }

    #[test]
    fn a_snapshot_of_the_partial_segment_alone_is_replaced_by_the_next() {
        let id = Some(SnapshotId::from_bytes([1; 32]));
        let grown = stored(&[], PARTIAL);
        let completed = stored(
            &["000000010000000000000007"],
            "000000010000000000000008.partial",
        );
        assert_eq!(history(0, PARTIAL, false).replaced_by(&grown), id);
        assert_eq!(history(0, PARTIAL, false).replaced_by(&completed), id);
        // What the newer one lacks, or more than the partial, stays.
        let elsewhere = stored(&[], "000000020000000000000007.partial");
        assert_eq!(history(0, PARTIAL, false).replaced_by(&elsewhere), None);
        assert_eq!(history(1, PARTIAL, false).replaced_by(&grown), None);
        assert_eq!(history(0, PARTIAL, true).replaced_by(&grown), None);
        let mut census = history(0, PARTIAL, false);
        if let Some((_, newest)) = &mut census.newest {
            newest.census = Some(CensusMark {
                restore_point: "lifeboat-census-x-1".into(),
                lsn: Lsn(0x700_0100),
            });
        }
        assert_eq!(census.replaced_by(&grown), None);
        let complete = "000000010000000000000007";
        assert_eq!(history(0, complete, false).replaced_by(&completed), None);
    }
}
