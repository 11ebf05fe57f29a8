//! [`UnlockedRepository`]: a repository whose keys and index are loaded,
//! with the key's role in its type.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt as _;

use super::id::{self, BlobId, SnapshotId};
use super::index::Index;
use super::keys::{self, AnyIdentity, ChunkIdKey, KeyRole, RestoreIdentity};
use super::load::{IndexProblems, load_index_and_plans};
use super::pack_file::PackFile;
use super::read_budget::{READ_BUDGET_BYTES, ReadBudget};
use super::snapshot::{Snapshot, SnapshotEntry, SnapshotHeader};
use super::{Fingerprint, RepoError, Repository, meta, object_id, plan, put, reader, writer};
use crate::storage::StorageError;

/// A repository whose keys and index are loaded, unlocked with a key of
/// role `K` (by default the service's). What the role may not do is not
/// there to call: only `UnlockedRepository<RestoreIdentity>` has a
/// [`reader`](UnlockedRepository::reader) of data, trees and names; with
/// [`AnyIdentity`] (a key file whose role is known at run time),
/// [`UnlockedRepository::into_restore`] asks for it.
#[derive(Debug, Clone)]
pub struct UnlockedRepository<K: KeyRole = keys::ServiceIdentity> {
    pub(super) repo: Repository,
    pub(super) fingerprint: Fingerprint,
    pub(super) chunk_key: ChunkIdKey,
    pub(super) identity: K,
    pub(super) index: Arc<Index>,
    pub(super) index_problems: IndexProblems,
    pub(super) tree_entry_limit: u64,
    /// Snapshots read so far, by id: a snapshot object never changes and
    /// its name binds its content, so one read serves every later listing.
    pub(super) snapshot_cache: SnapshotCache,
}

/// Decrypted snapshots without their reference lists, by id, shared by
/// the clones of one unlocking and with the listings handed out.
pub(super) type SnapshotCache = Arc<std::sync::Mutex<HashMap<SnapshotId, Arc<SnapshotHeader>>>>;

/// Snapshot objects fetched at once when listing, at most: fewer when
/// they are large ([`ReadBudget`]).
const SNAPSHOT_READS: usize = 16;

impl<K: KeyRole> UnlockedRepository<K> {
    /// Index objects that could not be read when unlocking, with the reason.
    pub fn index_problems(&self) -> &[(String, String)] {
        &self.index_problems
    }

    /// The opened repository.
    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    /// The repository's id and the hashes of `config` and `keys`.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// The same repository with the prune plans and the index read again.
    ///
    /// Fails as [`Repository::unlock`] does.
    pub async fn reload(&self) -> Result<Self, RepoError> {
        let (index, index_problems) =
            load_index_and_plans(&self.repo.store, &self.identity).await?;
        Ok(Self {
            index: Arc::new(index),
            index_problems,
            ..self.clone()
        })
    }

    /// Never reuses blobs of `packs` in backups from this repository.
    pub fn avoid_packs(&mut self, packs: impl IntoIterator<Item = id::PackId>) {
        Arc::make_mut(&mut self.index).doom(packs);
    }

    /// Checks, once a snapshot referencing `references` is written, that no
    /// prune running meanwhile deleted or marked a pack it reuses: one
    /// holding a referenced blob the loaded index knows, unless the backup
    /// stored that blob again itself (`restored`, from its writer's
    /// [`writer::WriteStats::restored`]).
    ///
    /// Cheap when nothing changed: one listing of `prune/` and one of
    /// `index/`. Every pack a prune deletes is named by a plan until after
    /// the deletion, and its index objects are replaced before it, so a pack
    /// deleted behind the backup's back shows in one of the two. A plan
    /// written after this check was made by a prune that lists snapshots
    /// after its plans, so it sees the new snapshot and keeps its packs.
    ///
    /// Fails with [`RepoError::PrunedDuringBackup`] when one was, or when
    /// the store cannot be read.
    pub async fn confirm_references(
        &self,
        references: &[BlobId],
        restored: &[BlobId],
    ) -> Result<(), RepoError> {
        let own: std::collections::HashSet<&BlobId> = restored.iter().collect();
        let reused: std::collections::HashSet<id::PackId> = references
            .iter()
            .filter(|b| !own.contains(b))
            .filter_map(|b| self.index.get(b).map(|l| l.pack))
            .collect();
        if reused.is_empty() {
            return Ok(());
        }
        let planned = plan::read_plans(&self.repo.store, &self.identity)
            .await?
            .into_iter()
            .flat_map(|(_, plan)| plan.packs)
            .filter(|p| reused.contains(p))
            .count();
        if planned > 0 {
            return Err(RepoError::PrunedDuringBackup { packs: planned });
        }
        let listed: std::collections::HashSet<String> = self
            .repo
            .store
            .list("index/")
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect();
        let unchanged = self
            .index
            .file_packs()
            .keys()
            .all(|id| listed.contains(&id.key()));
        if unchanged {
            return Ok(());
        }
        let (now, _) = load_index_and_plans(&self.repo.store, &self.identity).await?;
        let gone = reused.iter().filter(|p| now.pack(p).is_none()).count();
        if gone > 0 {
            return Err(RepoError::PrunedDuringBackup { packs: gone });
        }
        Ok(())
    }

    /// The index as loaded.
    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    /// The identity it was unlocked with.
    pub fn identity(&self) -> &K {
        &self.identity
    }

    /// Whether the restore key unlocked it (so packs can be read).
    pub fn can_read_data(&self) -> bool {
        keys::sealed::Role::restore_identity(&self.identity).is_some()
    }

    /// A reader of data when the key is the restore key, for what reads
    /// data only when it can (a check). Private to the repository format.
    pub(super) fn data_reader(&self) -> Option<reader::BlobReader> {
        keys::sealed::Role::restore_identity(&self.identity)
            .map(|identity| self.reader_with(identity.clone()))
    }

    fn reader_with(&self, identity: RestoreIdentity) -> reader::BlobReader {
        reader::BlobReader::new(
            self.repo.store.clone(),
            identity,
            self.chunk_key.clone(),
            self.index.clone(),
        )
        .with_tree_entry_limit(self.tree_entry_limit)
    }

    /// A writer of new blobs (needs only public keys).
    pub fn writer(&self) -> writer::BlobWriter {
        writer::BlobWriter::start(
            self.repo.store.clone(),
            self.repo.recipients.clone(),
            self.chunk_key.clone(),
            self.index.clone(),
            &self.repo.config,
        )
    }

    /// The same repository, whose readers return at most `limit` tree
    /// entries per walk (default [`reader::MAX_TREE_ENTRIES`]).
    pub fn with_tree_entry_limit(mut self, limit: u64) -> Self {
        self.tree_entry_limit = limit;
        self
    }

    /// Writes a snapshot object: the last step of a backup. It is sealed
    /// into a file the store stages, not into memory: the references of a
    /// million blobs are some 35 MB of ciphertext.
    ///
    /// Fails when the store cannot be written.
    pub async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<SnapshotId, RepoError> {
        let staged = PackFile::new(self.repo.store.stage()?);
        let written = meta::seal_into(snapshot, self.repo.recipients.both(), staged)
            .map_err(|source| RepoError::Crypt {
                key: "snapshots/".into(),
                source,
            })?
            .finish();
        let id = SnapshotId::from_bytes(written.hash);
        put::put_staged_content_named(
            self.repo.store.as_ref(),
            &id.key(),
            written.staged,
            written.size,
        )
        .await?;
        Ok(id)
    }

    /// Every readable snapshot, oldest first. An unreadable snapshot object
    /// is skipped with a warning, so that one damaged object blocks no backup
    /// or restore; [`UnlockedRepository::read_snapshots`] reports them.
    ///
    /// Fails when the store fails.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotEntry>, RepoError> {
        let (entries, problems) = self.read_snapshots().await?;
        for (key, problem) in &problems {
            tracing::warn!(object = %key, "skipping an unreadable snapshot object: {problem}");
        }
        Ok(entries)
    }

    /// Every readable snapshot, oldest first, and the snapshot objects that
    /// could not be read, with the reason.
    ///
    /// Fails when the store fails.
    pub async fn read_snapshots(
        &self,
    ) -> Result<(Vec<SnapshotEntry>, Vec<(String, String)>), RepoError> {
        let listed = self.repo.store.list("snapshots/").await?;
        let budget = &ReadBudget::new(READ_BUDGET_BYTES);
        let reads: Vec<_> = futures_util::stream::iter(listed)
            .map(|object| async move {
                let read = match object_id::<SnapshotId>(&object.key, "snapshots/") {
                    Ok(id) => match self.cached_snapshot(id) {
                        Some(snapshot) => Ok((id, snapshot)),
                        None => {
                            let _held = budget.hold(object.size).await;
                            self.read_snapshot_header(id)
                                .await
                                .map(|snapshot| (id, Arc::new(snapshot)))
                        }
                    },
                    Err(e) => Err(e),
                };
                (object.key, read)
            })
            .buffered(SNAPSHOT_READS)
            .collect()
            .await;
        let mut entries = Vec::with_capacity(reads.len());
        let mut problems = Vec::new();
        for (key, read) in reads {
            match read {
                Ok((id, snapshot)) => entries.push(SnapshotEntry { id, snapshot }),
                // Forgotten, or withdrawn by its backup, since the listing.
                Err(RepoError::Storage(StorageError::NotFound { .. })) => {}
                Err(RepoError::Storage(e)) => return Err(e.into()),
                Err(e) => problems.push((key, e.to_string())),
            }
        }
        entries.sort_by(|a, b| a.snapshot.time.cmp(&b.snapshot.time).then(a.id.cmp(&b.id)));
        if let Ok(mut cache) = self.snapshot_cache.lock() {
            // Only what the store still lists: forgotten snapshots go.
            cache.clear();
            cache.extend(entries.iter().map(|e| (e.id, e.snapshot.clone())));
        }
        Ok((entries, problems))
    }

    /// The snapshot `id` if an earlier listing read it.
    fn cached_snapshot(&self, id: SnapshotId) -> Option<Arc<SnapshotHeader>> {
        self.snapshot_cache.lock().ok()?.get(&id).cloned()
    }

    /// Reads one snapshot.
    ///
    /// Fails when it is missing, damaged or not readable with this key.
    pub async fn read_snapshot(&self, id: SnapshotId) -> Result<Snapshot, RepoError> {
        self.read_snapshot_as(id).await
    }

    /// Reads one snapshot without its reference list.
    ///
    /// Fails as [`UnlockedRepository::read_snapshot`] does.
    pub async fn read_snapshot_header(&self, id: SnapshotId) -> Result<SnapshotHeader, RepoError> {
        self.read_snapshot_as(id).await
    }

    /// Reads one snapshot whole or without its reference list, parsed as
    /// its bytes arrive ([`meta::read_named`]).
    async fn read_snapshot_as<T: meta::MetaObject + Send + 'static>(
        &self,
        id: SnapshotId,
    ) -> Result<T, RepoError> {
        meta::read_named(&self.repo.store, &id.key(), *id.as_bytes(), &self.identity).await
    }

    /// Finds a snapshot by `latest`, `latest:JOB` or an id prefix.
    ///
    /// Fails when none or several match.
    pub async fn find_snapshot(&self, spec: &str) -> Result<SnapshotEntry, RepoError> {
        let all = self.snapshots().await?;
        let none = || RepoError::NoSnapshot { spec: spec.into() };
        if let Some(rest) = spec.strip_prefix("latest") {
            let job = rest.strip_prefix(':');
            if !rest.is_empty() && job.is_none() {
                return Err(none());
            }
            return all
                .into_iter()
                .rev()
                .find(|e| job.is_none_or(|job| e.snapshot.job == job))
                .ok_or_else(none);
        }
        let prefix = spec.to_ascii_lowercase();
        let mut matching = all
            .into_iter()
            .filter(|e| e.id.to_hex().starts_with(&prefix));
        match (matching.next(), matching.next()) {
            (Some(entry), None) if !prefix.is_empty() => Ok(entry),
            (Some(_), Some(_)) => Err(RepoError::AmbiguousSnapshot { spec: spec.into() }),
            _ => Err(none()),
        }
    }
}

impl UnlockedRepository<RestoreIdentity> {
    /// A reader of blobs: data, trees and names.
    pub fn reader(&self) -> reader::BlobReader {
        self.reader_with(self.identity.clone())
    }
}

impl UnlockedRepository<AnyIdentity> {
    /// The same repository as unlocked with the restore key, for `what`
    /// (a sentence such as "restoring").
    ///
    /// Fails with [`RepoError::NeedsRestoreKey`] when the key is the
    /// service key.
    pub fn into_restore(
        self,
        what: &'static str,
    ) -> Result<UnlockedRepository<RestoreIdentity>, RepoError> {
        let Some(identity) = self.identity.as_restore().cloned() else {
            return Err(RepoError::NeedsRestoreKey { what });
        };
        Ok(UnlockedRepository {
            repo: self.repo,
            fingerprint: self.fingerprint,
            chunk_key: self.chunk_key,
            identity,
            index: self.index,
            index_problems: self.index_problems,
            tree_entry_limit: self.tree_entry_limit,
            snapshot_cache: self.snapshot_cache,
        })
    }
}
