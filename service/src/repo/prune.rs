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

use super::id::{PackId, SnapshotId, content_hash};
use super::index::{BlobSet, IndexFile};
use super::keys::KeyRole;
use super::plan::read_all_plans;
pub use super::plan::{PLAN_PREFIX, PrunePlan};
use super::{RepoError, UnlockedRepository, meta, object_id};
use crate::storage::{ObjectStore, StorageError, Swept};

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
    /// Staged files that crashed creates left in a local store, removed.
    pub leftovers_removed: Swept,
}

/// How long a staged file must have gone unwritten before a prune sweeps
/// it, at least (the grace period when that is longer): far beyond the
/// time it takes to fill and create one pack.
const LEFTOVER_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

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
    // that a copy stored again by a later backup lets its doomed twin go:
    // packs are visited in that order of preference, and each used blob is
    // kept in the first that holds it.
    let mut candidates: Vec<(bool, PackId)> = stored
        .keys()
        .filter(|p| index.pack(p).is_some())
        .map(|p| (planned.contains(p), *p))
        .collect();
    candidates.sort_unstable();
    let mut kept = BlobSet::new(index.clone());
    let mut used_packs: HashSet<PackId> = HashSet::new();
    for (_, pack) in candidates {
        for blob in index.pack_blobs(&pack) {
            if used_blobs.contains(&blob) && kept.insert(&blob) {
                used_packs.insert(pack);
            }
        }
    }
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

    let leftover_age = options.grace.to_std().unwrap_or_default().max(LEFTOVER_AGE);
    report.leftovers_removed = store.sweep_leftovers(leftover_age).await?;
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

/// Every indexed blob some snapshot references (a referenced blob no index
/// lists has no pack to keep).
///
/// Fails when a snapshot is unreadable.
pub(crate) async fn used_blobs(
    repo: &UnlockedRepository<impl KeyRole>,
) -> Result<BlobSet, RepoError> {
    // Each snapshot read whole once, one at a time: a reference list can
    // name a million blobs.
    let mut used = BlobSet::new(repo.index().clone());
    for object in repo.repository().store().list("snapshots/").await? {
        let read = match object_id::<SnapshotId>(&object.key, "snapshots/") {
            Ok(id) => repo.read_snapshot(id).await,
            Err(e) => Err(e),
        };
        let snapshot = match read {
            Ok(snapshot) => snapshot,
            // Forgotten, or withdrawn by its backup, since the listing.
            Err(RepoError::Storage(StorageError::NotFound { .. })) => continue,
            Err(RepoError::Storage(e)) => return Err(e.into()),
            Err(problem) => {
                return Err(RepoError::Damaged {
                    key: object.key,
                    reason: format!(
                        "{problem}; prune refuses to run while a snapshot is unreadable"
                    ),
                });
            }
        };
        for blob in &snapshot.references {
            used.insert(blob);
        }
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
        let mut file: IndexFile =
            meta::read_named(store, &key, *index_id.as_bytes(), &repo.identity).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::check::{ReadData, check};
    use crate::repo::test_fixture::{TestRepo, WrittenSnapshot, pattern, write_snapshot};
    use crate::storage::TEMP_PREFIX;

    /// Deletes what is due at once: a plan is ripe as soon as it is written.
    const NOW: PruneOptions = PruneOptions {
        grace: chrono::Duration::zero(),
        dry_run: false,
    };

    /// Two snapshots of their own data, each stored as a data and a tree pack.
    async fn old_and_kept(repo: &TestRepo) -> anyhow::Result<(WrittenSnapshot, WrittenSnapshot)> {
        let old = write_snapshot(
            &repo.as_service().await?,
            "old",
            &[("old.bin", pattern(1, 40_000))],
        )
        .await?;
        let kept = write_snapshot(
            &repo.as_service().await?,
            "kept",
            &[
                ("kept.bin", pattern(2, 40_000)),
                ("dir/more.txt", b"more".to_vec()),
            ],
        )
        .await?;
        assert_eq!(repo.keys("data/").await?.len(), 4);
        Ok((old, kept))
    }

    fn pack_keys(snapshot: &WrittenSnapshot) -> Vec<String> {
        let mut keys: Vec<String> = snapshot.stats.packs.iter().map(|p| p.key()).collect();
        keys.sort();
        keys
    }

    #[tokio::test]
    async fn prune_sweeps_staged_files_a_crash_left_once_they_are_old() -> anyhow::Result<()> {
        let repo = TestRepo::new().await?;
        old_and_kept(&repo).await?;
        let folder = repo.objects_folder();
        let old = folder.join(format!("{TEMP_PREFIX}00000000000000b1"));
        let fresh = folder.join(format!("{TEMP_PREFIX}00000000000000b2"));
        for (path, age) in [(&old, LEFTOVER_AGE * 2), (&fresh, LEFTOVER_AGE / 2)] {
            let file = std::fs::File::create(path)?;
            file.set_len(1000)?;
            file.set_modified(std::time::SystemTime::now() - age)?;
        }
        let dry = PruneOptions {
            dry_run: true,
            ..NOW
        };
        let looked = prune(&repo.as_service().await?, &dry).await?;
        assert_eq!(looked.leftovers_removed.files, 0);
        assert!(old.exists(), "a dry run removed a file");

        let swept = prune(&repo.as_service().await?, &NOW).await?;
        assert_eq!(
            (swept.leftovers_removed.files, swept.leftovers_removed.bytes),
            (1, 1000)
        );
        assert_eq!(
            repo.staged_files()?,
            [fresh],
            "a recent staged file was swept"
        );
        Ok(())
    }

    #[tokio::test]
    async fn prune_marks_then_deletes_the_packs_of_a_forgotten_snapshot_only() -> anyhow::Result<()>
    {
        let repo = TestRepo::new().await?;
        let (old, kept) = old_and_kept(&repo).await?;
        forget(&repo.as_service().await?, &[old.id]).await?;
        let listed: Vec<_> = repo.as_service().await?.snapshots().await?;
        assert_eq!(listed.iter().map(|e| e.id).collect::<Vec<_>>(), [kept.id]);

        let marked = prune(&repo.as_service().await?, &NOW).await?;
        assert_eq!(
            (marked.packs_stored, marked.packs_used, marked.packs_marked),
            (4, 2, 2)
        );
        assert_eq!(marked.bytes_marked, old.stats.bytes_stored);
        assert_eq!(marked.packs_deleted, 0, "a pack is first only marked");
        assert_eq!(repo.keys("data/").await?.len(), 4);
        assert_eq!(repo.keys(PLAN_PREFIX).await?.len(), 1);

        let deleted = prune(&repo.as_service().await?, &NOW).await?;
        assert_eq!((deleted.packs_deleted, deleted.packs_marked), (2, 0));
        assert_eq!(deleted.bytes_freed, old.stats.bytes_stored);
        assert_eq!(deleted.indexes_rewritten, 1);
        assert_eq!(repo.keys("data/").await?, pack_keys(&kept));
        let kept_indexes: Vec<String> = kept.stats.indexes.iter().map(|i| i.key()).collect();
        assert_eq!(
            repo.keys("index/").await?,
            kept_indexes,
            "an index object listing only deleted packs is deleted, not rewritten empty"
        );
        assert!(repo.keys(PLAN_PREFIX).await?.is_empty());

        let restore = repo.as_restore().await?;
        assert!(!restore.index().contains(&old.files["old.bin"]));
        let reader = restore.reader();
        assert_eq!(
            reader.read(&kept.files["kept.bin"]).await?,
            pattern(2, 40_000)
        );
        assert_eq!(reader.read(&kept.files["dir/more.txt"]).await?, b"more");
        let report = check(&restore, ReadData::All).await?;
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!((report.snapshots, report.trees), (1, 2));
        Ok(())
    }

    #[tokio::test]
    async fn a_prune_with_nothing_to_do_changes_nothing() -> anyhow::Result<()> {
        let repo = TestRepo::new().await?;
        let (old, _) = old_and_kept(&repo).await?;
        forget(&repo.as_service().await?, &[old.id]).await?;
        prune(&repo.as_service().await?, &NOW).await?;
        prune(&repo.as_service().await?, &NOW).await?;

        let before = repo.keys("").await?;
        let again = prune(&repo.as_service().await?, &NOW).await?;
        assert_eq!((again.packs_stored, again.packs_used), (2, 2), "{again:?}");
        assert_eq!(
            (again.packs_marked, again.packs_deleted, again.plans_waiting),
            (0, 0, 0)
        );
        assert_eq!(again.indexes_rewritten, 0);
        assert_eq!(repo.keys("").await?, before, "no object written or deleted");
        Ok(())
    }

    #[tokio::test]
    async fn a_pack_a_kept_snapshot_uses_is_kept_whole() -> anyhow::Result<()> {
        let repo = TestRepo::new().await?;
        let shared = pattern(3, 30_000);
        let old = write_snapshot(
            &repo.as_service().await?,
            "old",
            &[
                ("shared.bin", shared.clone()),
                ("old.bin", pattern(4, 30_000)),
            ],
        )
        .await?;
        let kept = write_snapshot(
            &repo.as_service().await?,
            "kept",
            &[
                ("shared.bin", shared.clone()),
                ("kept.bin", pattern(5, 30_000)),
            ],
        )
        .await?;
        assert_eq!(old.files["shared.bin"], kept.files["shared.bin"]);
        assert_eq!(kept.stats.blobs_added, 2, "the shared blob is reused");
        forget(&repo.as_service().await?, &[old.id]).await?;

        let marked = prune(&repo.as_service().await?, &NOW).await?;
        assert_eq!((marked.packs_used, marked.packs_marked), (3, 1));
        let deleted = prune(&repo.as_service().await?, &NOW).await?;
        assert_eq!(
            deleted.packs_deleted, 1,
            "only the old snapshot's tree pack"
        );
        let old_tree = old.trees[""];
        let restore = repo.as_restore().await?;
        assert!(!restore.index().contains(&old_tree));
        let reader = restore.reader();
        assert_eq!(reader.read(&kept.files["shared.bin"]).await?, shared);
        assert_eq!(
            reader.read(&old.files["old.bin"]).await?,
            pattern(4, 30_000),
            "an unused blob in a used pack stays until repacked"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_pack_no_index_lists_is_marked_and_deleted() -> anyhow::Result<()> {
        let repo = TestRepo::new().await?;
        old_and_kept(&repo).await?;
        // What a backup killed between uploading a pack and indexing it leaves.
        let orphan = bytes::Bytes::from_static(b"a pack no index lists");
        let orphan_key = PackId::from_bytes(content_hash(&orphan)).key();
        repo.store().put_new(&orphan_key, orphan).await?;

        let marked = prune(&repo.as_service().await?, &NOW).await?;
        assert_eq!(
            (marked.packs_stored, marked.packs_used, marked.packs_marked),
            (5, 4, 1)
        );
        let deleted = prune(&repo.as_service().await?, &NOW).await?;
        assert_eq!((deleted.packs_deleted, deleted.indexes_rewritten), (1, 0));
        let stored = repo.keys("data/").await?;
        assert_eq!(stored.len(), 4);
        assert!(!stored.contains(&orphan_key));
        Ok(())
    }

    #[tokio::test]
    async fn a_dry_run_reports_what_would_happen_and_changes_nothing() -> anyhow::Result<()> {
        let repo = TestRepo::new().await?;
        let (old, _) = old_and_kept(&repo).await?;
        forget(&repo.as_service().await?, &[old.id]).await?;
        let dry = PruneOptions {
            dry_run: true,
            ..NOW
        };

        let before = repo.keys("").await?;
        let would_mark = prune(&repo.as_service().await?, &dry).await?;
        assert_eq!(would_mark.packs_marked, 2);
        assert_eq!(repo.keys("").await?, before, "no plan written");

        prune(&repo.as_service().await?, &NOW).await?;
        let before = repo.keys("").await?;
        let would_delete = prune(&repo.as_service().await?, &dry).await?;
        assert_eq!(
            (would_delete.packs_deleted, would_delete.bytes_freed),
            (2, old.stats.bytes_stored)
        );
        assert_eq!(repo.keys("").await?, before, "nothing deleted");
        Ok(())
    }

    #[tokio::test]
    async fn prune_refuses_to_run_on_a_partly_readable_index() -> anyhow::Result<()> {
        let repo = TestRepo::new().await?;
        let (old, _) = old_and_kept(&repo).await?;
        forget(&repo.as_service().await?, &[old.id]).await?;
        let garbage = bytes::Bytes::from_static(b"not an age file");
        let bad_key = format!("index/{}", hex::encode(content_hash(&garbage)));
        repo.store().put_new(&bad_key, garbage).await?;

        let before = repo.keys("").await?;
        let service = repo.as_service().await?;
        assert_eq!(service.index_problems().len(), 1);
        let refused = prune(&service, &NOW).await.err().map(|e| e.to_string());
        assert!(
            refused
                .as_deref()
                .is_some_and(|e| e.contains(&bad_key) && e.contains("partly readable index")),
            "{refused:?}"
        );
        assert_eq!(repo.keys("").await?, before, "nothing marked or deleted");
        Ok(())
    }
}
