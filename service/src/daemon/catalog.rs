//! What the service knows of its repository: every snapshot's summary and
//! the repository's size, refreshed after each run.
//!
//! Snapshot objects are immutable, so each is read (and decrypted with the
//! service key) once; a refresh lists the store and reads only new ones.
//! The catalog is how the RPO watch and retention see snapshots that the
//! run history does not know (made by `lifeboatd run`, or before the state
//! folder was lost).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::repo::id::SnapshotId;
use crate::repo::snapshot::{SourceKind, Summary};
use crate::repo::{RepoError, UnlockedRepository};
use crate::storage::StorageError;

/// One snapshot, without its list of references.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SnapshotInfo {
    /// Its id.
    pub id: SnapshotId,
    /// The job that made it.
    pub job: String,
    /// The source kind.
    pub source_kind: SourceKind,
    /// The host it ran on.
    pub host: String,
    /// When the backup started: the point in time its data is from.
    pub time: DateTime<Utc>,
    /// When it ended.
    pub end_time: DateTime<Utc>,
    /// Counts and sizes.
    pub summary: Summary,
    /// Whether it can be restored without the job's other snapshots
    /// ([`crate::sources::restorable_alone`]).
    pub restorable_alone: bool,
}

/// Totals of the repository as listed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RepositoryFigures {
    /// Bytes of every object.
    pub size_bytes: u64,
    /// Pack objects.
    pub packs: u64,
    /// Snapshot objects.
    pub snapshots: u64,
    /// Bytes of data the snapshots hold, each snapshot counted in full:
    /// what the repository would take without deduplication and compression.
    pub logical_bytes: u64,
    /// When they were counted.
    pub counted: Option<DateTime<Utc>>,
}

/// The snapshots and figures of the repository.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    snapshots: BTreeMap<SnapshotId, SnapshotInfo>,
    figures: RepositoryFigures,
}

impl Catalog {
    /// Lists the repository and reads the snapshots not seen before.
    ///
    /// Fails when the store cannot be listed or a new snapshot is
    /// unreadable; the catalog then keeps what it had.
    pub async fn refresh(&mut self, repo: &UnlockedRepository) -> Result<(), RepoError> {
        let objects = repo.repository().store().list("").await?;
        let mut figures = RepositoryFigures {
            counted: Some(Utc::now()),
            ..RepositoryFigures::default()
        };
        let mut listed = Vec::new();
        for object in &objects {
            figures.size_bytes += object.size;
            if object.key.starts_with("data/") {
                figures.packs += 1;
            } else if let Some(hex) = object.key.strip_prefix("snapshots/") {
                if let Ok(id) = hex.parse::<SnapshotId>() {
                    listed.push(id);
                }
            }
        }
        let mut snapshots = BTreeMap::new();
        for id in listed {
            let info = match self.snapshots.remove(&id) {
                Some(known) => known,
                None => {
                    let snapshot = match repo.read_snapshot_header(id).await {
                        Ok(snapshot) => snapshot,
                        // Forgotten since the listing, by a concurrent run.
                        Err(RepoError::Storage(StorageError::NotFound { .. })) => continue,
                        Err(e) => return Err(e),
                    };
                    SnapshotInfo {
                        id,
                        restorable_alone: crate::sources::restorable_alone(&snapshot),
                        job: snapshot.job,
                        source_kind: snapshot.source_kind,
                        host: snapshot.host,
                        time: snapshot.time,
                        end_time: snapshot.end_time,
                        summary: snapshot.summary,
                    }
                }
            };
            snapshots.insert(id, info);
        }
        self.snapshots = snapshots;
        self.figures = figures;
        self.count_snapshots();
        Ok(())
    }

    /// Every snapshot, oldest first, of one job or of all.
    pub fn snapshots(&self, job: Option<&str>) -> Vec<SnapshotInfo> {
        let mut list: Vec<SnapshotInfo> = self
            .snapshots
            .values()
            .filter(|s| job.is_none_or(|job| s.job == job))
            .cloned()
            .collect();
        list.sort_by(|a, b| a.time.cmp(&b.time).then(a.id.cmp(&b.id)));
        list
    }

    /// The time of `job`'s newest snapshot.
    pub fn newest_time(&self, job: &str) -> Option<DateTime<Utc>> {
        self.snapshots
            .values()
            .filter(|s| s.job == job)
            .map(|s| s.time)
            .max()
    }

    /// The repository's totals as last counted.
    pub fn figures(&self) -> RepositoryFigures {
        self.figures
    }

    /// Forgets snapshots deleted by this service without listing again.
    pub fn remove(&mut self, ids: &[SnapshotId]) {
        for id in ids {
            self.snapshots.remove(id);
        }
        self.count_snapshots();
    }

    /// Sets the figures that come from the snapshots.
    fn count_snapshots(&mut self) {
        self.figures.snapshots = self.snapshots.len() as u64;
        self.figures.logical_bytes = self.snapshots.values().map(|s| s.summary.bytes_total).sum();
    }
}
