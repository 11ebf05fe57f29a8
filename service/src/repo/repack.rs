//! Repacking: copying the used blobs of mostly unused packs into new packs
//! and naming the old ones in a prune plan, so that a later prune deletes
//! them once the grace period has passed. Packs are encrypted to the restore
//! key only, so this needs the restore key: the service can delete wholly
//! unused packs, never rewrite partly used ones.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::id::{BlobId, PackId};
use super::keys::RestoreIdentity;
use super::plan::read_all_plans;
use super::prune::{require_whole_index, used_blobs, write_plan};
use super::{RepoError, UnlockedRepository};
use crate::errors::WorkerError;

/// What a repack did (or would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepackReport {
    /// Packs whose used blobs were copied (and that are now marked).
    pub packs_repacked: usize,
    /// Blobs copied.
    pub blobs_copied: usize,
    /// Their stored size in the old packs.
    pub bytes_copied: u64,
    /// Unused bytes the marked packs will free.
    pub bytes_reclaimable: u64,
    /// New packs written.
    pub packs_written: usize,
}

/// Repacks every pack of which at least `unused_percent` % of the stored
/// bytes is used by no snapshot (and that no plan names yet).
///
/// Fails when a snapshot or index is
/// unreadable, or when a copied blob cannot be read: nothing is marked then.
pub async fn repack(
    repo: &UnlockedRepository<RestoreIdentity>,
    unused_percent: u8,
    dry_run: bool,
) -> Result<RepackReport, RepoError> {
    let reader = repo.reader();
    require_whole_index(repo, "repack")?;
    let used = used_blobs(repo).await?;
    let planned: HashSet<PackId> = read_all_plans(repo.repository().store(), repo.identity())
        .await?
        .into_iter()
        .flat_map(|(_, plan)| plan.packs)
        .collect();
    let index = repo.index();
    let mut candidates: HashMap<PackId, Vec<BlobId>> = HashMap::new();
    let mut report = RepackReport::default();
    for (pack, _) in index.packs() {
        if planned.contains(pack) {
            continue;
        }
        let length = |b: &BlobId| index.get(b).map_or(0, |l| u64::from(l.blob.length));
        let total: u64 = index.pack_blobs(pack).map(|b| length(&b)).sum();
        let kept: Vec<BlobId> = index
            .pack_blobs(pack)
            .filter(|b| used.contains(b))
            .collect();
        let kept_bytes: u64 = kept.iter().map(length).sum();
        let unused = total - kept_bytes.min(total);
        if kept.is_empty() || total == 0 || unused * 100 < u64::from(unused_percent) * total {
            continue;
        }
        report.packs_repacked += 1;
        report.blobs_copied += kept.len();
        report.bytes_copied += kept_bytes;
        report.bytes_reclaimable += unused;
        candidates.insert(*pack, kept);
    }
    if dry_run || candidates.is_empty() {
        return Ok(report);
    }
    let writer = std::sync::Arc::new(repo.writer());
    for (pack, blobs) in &candidates {
        for (id, plain) in reader.read_many(pack, blobs).await? {
            let plain = plain?;
            let kind = index
                .get(&id)
                .map(|l| l.blob.kind)
                .ok_or(RepoError::MissingBlob { id })?;
            let writer = writer.clone();
            tokio::task::spawn_blocking(move || writer.copy(kind, &plain))
                .await
                .map_err(WorkerError::stopped("copying a blob"))??;
        }
    }
    let writer = std::sync::Arc::try_unwrap(writer).map_err(|_| WorkerError::StillShared {
        what: "the repack's blob writer",
    })?;
    let stats = writer.finish().await?;
    report.packs_written = stats.packs.len();
    write_plan(repo, candidates.into_keys().collect(), chrono::Utc::now()).await?;
    Ok(report)
}
