//! Forgetting snapshots and pruning what no snapshot uses, with the service
//! key alone and without locks.
//!
//! Prune works in two phases. A run marks the packs no snapshot uses (and
//! packs no index lists, left by interrupted backups) in a prune plan object
//! (`prune/<id>`, encrypted to both keys). A later run, once the plan is
//! older than the grace period, deletes those of its packs that are still
//! unused: it first writes index objects without them, then deletes the old
//! index objects, then the packs, then the plan. A backup never reuses a blob
//! of a pack that a plan names, and the grace period covers backups that
//! loaded the index before the plan was written, so a backup running at the
//! same time never loses a chunk it reused. Repacking partly used packs
//! needs to decrypt them and is therefore not something the service can do.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::id::{BlobId, PackId, SnapshotId, content_hash};
use super::index::IndexFile;
use super::keys::KeyRole;
use super::plan::read_all_plans;
pub use super::plan::{PLAN_PREFIX, PrunePlan};
use super::{RepoError, UnlockedRepository, meta};
use crate::storage::ObjectStore;

/// How to prune.
#[derive(Debug, Clone, Copy)]
pub struct PruneOptions {
    /// How long a marked pack waits before it is deleted; must exceed the
    /// longest backup.
    pub grace: chrono::Duration,
    /// Report only; change nothing.
    pub dry_run: bool,
}

/// What a prune did (or would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// Packs in the store.
    pub packs_stored: usize,
    /// Packs some snapshot uses.
    pub packs_used: usize,
    /// Packs newly marked for deletion.
    pub packs_marked: usize,
    /// Their size.
    pub bytes_marked: u64,
    /// Packs deleted.
    pub packs_deleted: usize,
    /// Their size.
    pub bytes_freed: u64,
    /// Index objects rewritten without deleted packs.
    pub indexes_rewritten: usize,
    /// Plans still waiting for their grace period.
    pub plans_waiting: usize,
}

/// Deletes snapshot objects.
///
/// Fails when the store refuses a delete.
pub async fn forget(
    repo: &UnlockedRepository<impl KeyRole>,
    snapshots: &[SnapshotId],
) -> Result<(), RepoError> {
    for id in snapshots {
        repo.repository().store().delete(&id.key()).await?;
    }
    Ok(())
}

/// Runs one prune round: deletes what plans past their grace period still
/// find unused, and marks what is newly unused.
///
/// Fails, changing nothing, when any snapshot or index object is
/// unreadable: pruning on partial knowledge could delete data in use.
pub async fn prune(
    repo: &UnlockedRepository<impl KeyRole>,
    options: &PruneOptions,
) -> Result<PruneReport, RepoError> {
    require_whole_index(repo, "prune")?;
    let store = repo.repository().store().clone();
    let index = repo.index();
    // Plans before snapshots: a plan this round deletes from was written
    // before the snapshots are listed, so a backup that reused one of its
    // packs has either written its snapshot by then (and the pack is used)
    // or sees the plan when it confirms its snapshot, and withdraws it.
    let plans = read_all_plans(&store, repo.identity()).await?;
    let used_blobs = used_blobs(repo).await?;
    let stored = stored_packs(&store).await?;
    let now = Utc::now();
    let planned: HashSet<PackId> = plans
        .iter()
        .flat_map(|(_, plan)| plan.packs.iter().copied())
        .collect();
    // Each used blob is kept in one pack, preferably one no plan names, so
    // that a copy stored again by a later backup lets its doomed twin go.
    let mut keeper: HashMap<BlobId, PackId> = HashMap::new();
    for pack in stored.keys().filter(|p| index.pack(p).is_some()) {
        for blob in index
            .pack_blobs(pack)
            .iter()
            .filter(|b| used_blobs.contains(b))
        {
            let candidate = (planned.contains(pack), *pack);
            keeper
                .entry(*blob)
                .and_modify(|best| {
                    if candidate < (planned.contains(best), *best) {
                        *best = *pack;
                    }
                })
                .or_insert(*pack);
        }
    }
    let used_packs: HashSet<PackId> = keeper.into_values().collect();
    let unused = |pack: &PackId| !used_packs.contains(pack);
    let mut report = PruneReport {
        packs_stored: stored.len(),
        packs_used: used_packs.len(),
        ..PruneReport::default()
    };

    let mut doomed = HashSet::new();
    let mut ripe_plans = Vec::new();
    let mut waiting: HashSet<PackId> = HashSet::new();
    for (key, plan) in plans {
        if plan.created + options.grace <= now {
            doomed.extend(
                plan.packs
                    .into_iter()
                    .filter(|p| stored.contains_key(p) && unused(p)),
            );
            ripe_plans.push(key);
        } else {
            report.plans_waiting += 1;
            waiting.extend(plan.packs);
        }
    }

    let fresh: Vec<PackId> = stored
        .keys()
        .filter(|p| unused(p) && !doomed.contains(*p) && !waiting.contains(*p))
        .copied()
        .collect();
    report.packs_marked = fresh.len();
    report.bytes_marked = fresh.iter().map(|p| stored[p]).sum();
    report.packs_deleted = doomed.len();
    report.bytes_freed = doomed.iter().map(|p| stored[p]).sum();
    if options.dry_run {
        return Ok(report);
    }

    if !doomed.is_empty() {
        report.indexes_rewritten = rewrite_indexes(repo, &doomed).await?;
        for pack in &doomed {
            store.delete(&pack.key()).await?;
        }
    }
    for key in ripe_plans {
        store.delete(&key).await?;
    }
    if !fresh.is_empty() {
        write_plan(repo, fresh, now).await?;
    }
    Ok(report)
}

/// Refuses to go on when some index object was unreadable: deciding what
/// is unused on partial knowledge could delete data in use.
pub(crate) fn require_whole_index(
    repo: &UnlockedRepository<impl KeyRole>,
    what: &str,
) -> Result<(), RepoError> {
    match repo.index_problems().first() {
        Some((key, problem)) => Err(RepoError::Damaged {
            key: key.clone(),
            reason: format!("{problem}; {what} refuses to run on a partly readable index"),
        }),
        None => Ok(()),
    }
}

/// Every blob some snapshot references.
///
/// Fails when a snapshot is unreadable.
pub(crate) async fn used_blobs(
    repo: &UnlockedRepository<impl KeyRole>,
) -> Result<HashSet<BlobId>, RepoError> {
    let (snapshots, problems) = repo.read_snapshots().await?;
    if let Some((key, problem)) = problems.into_iter().next() {
        return Err(RepoError::Damaged {
            key,
            reason: format!("{problem}; prune refuses to run while a snapshot is unreadable"),
        });
    }
    let mut used = HashSet::new();
    for entry in snapshots {
        used.extend(entry.snapshot.references);
    }
    Ok(used)
}

/// Every pack in the store, with its size.
///
/// Fails when the store cannot be listed.
pub(crate) async fn stored_packs(
    store: &Arc<dyn ObjectStore>,
) -> Result<HashMap<PackId, u64>, RepoError> {
    Ok(store
        .list("data/")
        .await?
        .into_iter()
        .filter_map(|o| Some((o.key.rsplit('/').next()?.parse().ok()?, o.size)))
        .collect())
}

/// Writes a prune plan naming `packs`.
pub(crate) async fn write_plan(
    repo: &UnlockedRepository<impl KeyRole>,
    packs: Vec<PackId>,
    created: DateTime<Utc>,
) -> Result<(), RepoError> {
    let plan = PrunePlan { created, packs };
    let cipher = meta::seal(&plan, repo.repository().recipients().both()).map_err(|source| {
        RepoError::Crypt {
            key: PLAN_PREFIX.into(),
            source,
        }
    })?;
    let key = format!("{PLAN_PREFIX}{}", hex::encode(content_hash(&cipher)));
    super::put::put_content_named(repo.repository().store().as_ref(), &key, cipher.into()).await?;
    Ok(())
}

/// Replaces every index object that lists a doomed pack by one without it;
/// returns how many were replaced.
async fn rewrite_indexes(
    repo: &UnlockedRepository<impl KeyRole>,
    doomed: &HashSet<PackId>,
) -> Result<usize, RepoError> {
    let store = repo.repository().store();
    let mut rewritten = 0;
    for (index_id, packs) in repo.index().file_packs() {
        if !packs.iter().any(|p| doomed.contains(p)) {
            continue;
        }
        let key = index_id.key();
        let cipher = store.get(&key).await?;
        let mut file: IndexFile =
            meta::open(&cipher, repo.metadata_identities()).map_err(|e| e.at(&key))?;
        file.packs.retain(|p| !doomed.contains(&p.id));
        if !file.packs.is_empty() {
            super::writer::write_index(store.as_ref(), repo.repository().recipients(), &file.packs)
                .await?;
        }
        store.delete(&key).await?;
        rewritten += 1;
    }
    Ok(rewritten)
}
