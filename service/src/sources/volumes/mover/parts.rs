//! The parts movers stored: each a snapshot of the job's part job holding
//! one claim's folder, found by the run that made it, and forgotten once
//! grafted or left behind.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{PART_KEY, Part, part_job};
use crate::repo::id::SnapshotId;
use crate::repo::prune::forget;
use crate::repo::snapshot::Snapshot;
use crate::repo::tree::{Node, NodeKind};
use crate::repo::{RepoError, UnlockedRepository};

/// A mover's stored part.
#[derive(Debug, Clone)]
pub struct StoredPart {
    /// The part snapshot.
    pub id: SnapshotId,
    /// Its contents (references and summary).
    pub snapshot: Arc<Snapshot>,
    /// The claim folder's entry.
    pub entry: Node,
    /// The cache object its mover left, if any.
    pub cache: Option<String>,
}

/// Forgets the part snapshots of volumes job `job` whose run `doomed`
/// accepts; a part without readable part metadata counts as run `""`.
///
/// Fails when the repository fails.
pub async fn forget_parts(
    repo: &UnlockedRepository,
    job: &str,
    doomed: impl Fn(&str) -> bool,
) -> Result<(), RepoError> {
    let parts_job = part_job(job);
    let ids: Vec<SnapshotId> = repo
        .snapshots()
        .await?
        .into_iter()
        .filter(|entry| entry.snapshot.job == parts_job)
        .filter(|entry| doomed(&part_of(&entry.snapshot).map(|p| p.run).unwrap_or_default()))
        .map(|entry| entry.id)
        .collect();
    if !ids.is_empty() {
        tracing::info!(job, "forgetting {} mover part(s)", ids.len());
    }
    forget(repo, &ids).await
}

/// The parts run `run` of volumes job `job` stored, by claim.
///
/// Fails when the repository fails.
pub(super) async fn stored_parts(
    repo: &UnlockedRepository,
    job: &str,
    run: &str,
) -> Result<BTreeMap<String, StoredPart>, RepoError> {
    let parts_job = part_job(job);
    let mut parts = BTreeMap::new();
    for entry in repo.snapshots().await? {
        if entry.snapshot.job != parts_job {
            continue;
        }
        let Some(part) = part_of(&entry.snapshot).filter(|p| p.run == run) else {
            continue;
        };
        let valid = part.entry.kind == NodeKind::Dir
            && part.entry.subtree.is_some()
            && super::split_claim(&part.claim)
                .is_some_and(|(_, name)| part.entry.name.0 == name.as_bytes());
        if valid {
            // Grafting needs the part's reference list.
            let snapshot = Arc::new(repo.read_snapshot(entry.id).await?);
            parts.insert(
                part.claim.clone(),
                StoredPart {
                    id: entry.id,
                    snapshot,
                    entry: part.entry,
                    cache: part.cache,
                },
            );
        } else {
            tracing::warn!(snapshot = %entry.id, "ignoring a mover part whose entry is not its claim's folder");
        }
    }
    Ok(parts)
}

/// The part metadata of a snapshot, if it has readable part metadata.
fn part_of<R>(snapshot: &Snapshot<R>) -> Option<Part> {
    serde_json::from_value(snapshot.metadata.get(PART_KEY)?.clone()).ok()
}
