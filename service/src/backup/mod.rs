//! Turning sources into snapshots.
//!
//! A [`SnapshotBuilder`] collects the top-level entries of one snapshot —
//! folder trees ([`files`]) and named byte streams ([`stream`]) — while a
//! [`BlobWriter`] stores their blobs. [`SnapshotBuilder::commit`] waits for
//! every pack and index to be stored and only then writes the snapshot
//! object, so a crash at any point leaves no snapshot that points at nothing.

pub mod documents;
pub mod files;
pub mod folders;
pub mod graft;
pub mod items;
pub mod stream;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};

use crate::errors::WorkerError;
use crate::repo::blob::BlobKind;
use crate::repo::id::{BlobId, SnapshotId};
use crate::repo::id_set::IdSet;
use crate::repo::keys::{KeyRole, ServiceIdentity};
use crate::repo::snapshot::{Snapshot, SourceKind, Summary};
use crate::repo::tree::{Node, Tree};
use crate::repo::writer::BlobWriter;
use crate::repo::{RepoError, UnlockedRepository};

/// What can stop a backup.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// A configured source path cannot be backed up at all.
    #[error("cannot back up {path}: {reason}")]
    Source {
        /// The path.
        path: String,
        /// Why, and the fix where known.
        reason: String,
    },
    /// A configured folder cannot be found or read.
    #[error("cannot back up {path}: {source}; check the folder list of the job")]
    Unreadable {
        /// The folder, or the folder above one that could not be read.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// An exclude pattern of a folder is not a valid glob.
    #[error("cannot back up {path}: exclude pattern {pattern:?}: {source}")]
    Exclude {
        /// The folder.
        path: String,
        /// The pattern (the folder's patterns, `, `-joined, when only
        /// together they fail).
        pattern: String,
        /// The glob compiler's error.
        #[source]
        source: globset::Error,
    },
    /// Reading a stream failed.
    #[error("reading stream {name}: {source}")]
    Stream {
        /// The stream's name.
        name: String,
        /// The reader's error.
        #[source]
        source: std::io::Error,
    },
    /// A prune running at the same time removed or marked packs the
    /// snapshot reused: it was withdrawn, and the backup should run again
    /// with the index read anew, not reusing `written` either.
    #[error("{source}")]
    Withdrawn {
        /// The packs this backup wrote, which no snapshot refers to now.
        written: Vec<crate::repo::id::PackId>,
        /// Why it was withdrawn.
        #[source]
        source: RepoError,
    },
    /// Two entries of one snapshot have the same name.
    #[error("two sources of one snapshot are both called {0:?}; give them different names")]
    DuplicateName(String),
}

/// Live counters a progress display can poll.
#[derive(Debug, Default)]
pub struct Progress {
    /// Entries done.
    pub entries: AtomicU64,
    /// Bytes of file data processed (read or found unchanged).
    pub bytes: Arc<AtomicU64>,
}

/// A finished backup.
#[derive(Debug, Clone)]
pub struct BackupReport {
    /// The new snapshot.
    pub id: SnapshotId,
    /// Its contents.
    pub snapshot: Snapshot,
    /// Entries skipped or read with trouble, each a sentence naming the path.
    pub warnings: Vec<String>,
    /// What happened to each volume, resource type or hook the source
    /// reported on.
    pub items: Vec<items::Item>,
}

/// One snapshot being built, in a repository unlocked with a key of role
/// `K` (the service's, unless a test or tool says otherwise).
#[derive(Debug)]
pub struct SnapshotBuilder<K: KeyRole = ServiceIdentity> {
    repo: UnlockedRepository<K>,
    writer: Arc<BlobWriter>,
    job: String,
    source_kind: SourceKind,
    start: DateTime<Utc>,
    entries: Vec<Node>,
    summary: Summary,
    references: IdSet,
    warnings: Vec<String>,
    items: Vec<items::Item>,
    progress: Arc<Progress>,
    superseded: Vec<SnapshotId>,
}

impl<K: KeyRole> SnapshotBuilder<K> {
    /// Starts a snapshot of `job`, whose source is of `source_kind`.
    pub fn new(
        repo: &UnlockedRepository<K>,
        job: &str,
        source_kind: impl Into<SourceKind>,
    ) -> Self {
        Self {
            writer: Arc::new(repo.writer()),
            repo: repo.clone(),
            job: job.into(),
            source_kind: source_kind.into(),
            start: Utc::now(),
            entries: Vec::new(),
            summary: Summary::default(),
            references: IdSet::over(repo.index().clone()),
            warnings: Vec::new(),
            items: Vec::new(),
            progress: Arc::default(),
            superseded: Vec::new(),
        }
    }

    /// Uses `progress` for the live counters of this backup.
    pub fn with_progress(mut self, progress: Arc<Progress>) -> Self {
        self.progress = progress;
        self
    }

    /// When the backup started: the snapshot's time.
    pub fn started(&self) -> DateTime<Utc> {
        self.start
    }

    /// The job the snapshot is of.
    pub fn job(&self) -> &str {
        &self.job
    }

    /// The repository being written.
    pub fn repository(&self) -> &UnlockedRepository<K> {
        &self.repo
    }

    /// Adds `warning` (a sentence naming the thing and the fix) to the
    /// run's result; it does not fail the backup.
    pub fn warn(&mut self, warning: impl Into<String>) {
        self.warnings.push(warning.into());
    }

    /// Forgets snapshot `id` once this one is committed: everything it
    /// holds is in this one too.
    pub fn supersede(&mut self, id: SnapshotId) {
        self.superseded.push(id);
    }

    /// Records what happened to one volume, resource type or hook.
    pub fn record(&mut self, item: items::Item) {
        self.items.push(item);
    }

    fn add_entry(&mut self, node: Node) -> Result<(), BackupError> {
        if self.entries.iter().any(|e| e.name == node.name) {
            return Err(BackupError::DuplicateName(node.name.display().into_owned()));
        }
        self.entries.push(node);
        Ok(())
    }

    /// Stores everything added, then writes the snapshot object with
    /// `metadata` (summary figures only: the service key can read them).
    ///
    /// Fails when a pack, index or the snapshot cannot be stored; nothing
    /// then refers to what was uploaded.
    pub async fn commit(
        mut self,
        metadata: serde_json::Value,
    ) -> Result<BackupReport, BackupError> {
        let mut root = Tree {
            entries: std::mem::take(&mut self.entries),
        };
        // Saving may fill a pack and hand it to the uploader, a blocking
        // send: do it on the blocking pool, never on an async thread.
        let (writer, mut references) = (self.writer.clone(), std::mem::take(&mut self.references));
        let (saved, references) = tokio::task::spawn_blocking(move || {
            let saved = save_tree(&writer, &mut root, &mut references);
            (saved, references)
        })
        .await
        .map_err(WorkerError::stopped("saving the root tree"))
        .map_err(RepoError::from)?;
        let (root_id, _) = saved?;
        self.references = references;
        let writer = Arc::try_unwrap(self.writer).map_err(|_| {
            RepoError::from(WorkerError::StillShared {
                what: "the backup's blob writer",
            })
        })?;
        let stats = writer.finish().await?;
        self.summary.blobs_added += stats.blobs_added;
        self.summary.bytes_added += stats.bytes_added;
        self.summary.bytes_stored += stats.bytes_stored;
        self.summary.packs_added += stats.packs.len() as u64;
        let snapshot = Snapshot {
            job: self.job,
            source_kind: self.source_kind,
            host: hostname(),
            time: self.start,
            end_time: Utc::now(),
            root: root_id,
            summary: self.summary,
            metadata,
            references: self.references.into_sorted_with(stats.stored),
        };
        let id = self.repo.save_snapshot(&snapshot).await?;
        if let Err(source) = self
            .repo
            .confirm_references(&snapshot.references, &stats.restored)
            .await
        {
            // Withdrawn: it may point at packs a prune is deleting.
            self.repo
                .repository()
                .store()
                .delete(&id.key())
                .await
                .map_err(RepoError::from)?;
            return Err(BackupError::Withdrawn {
                written: stats.packs,
                source,
            });
        }
        // What the grafts came from (or a snapshot this one replaces) is
        // in this snapshot now; one left behind is only clutter.
        if let Err(e) = crate::repo::prune::forget(&self.repo, &self.superseded).await {
            self.warnings.push(format!(
                "the snapshot is stored, but forgetting the {} snapshot(s) it replaces failed: {e}",
                self.superseded.len()
            ));
        }
        Ok(BackupReport {
            id,
            snapshot,
            warnings: self.warnings,
            items: self.items,
        })
    }
}

/// Stores a tree blob and notes its id among the references, unless the
/// writer stored it now (the snapshot references all the writer stored).
fn save_tree(
    writer: &BlobWriter,
    tree: &mut Tree,
    references: &mut IdSet,
) -> Result<(BlobId, bool), RepoError> {
    let bytes = tree.to_bytes().map_err(|source| RepoError::Encode {
        what: "a tree",
        source,
    })?;
    let saved = writer.save(BlobKind::Tree, &bytes)?;
    references.extend(writer.not_stored(&[saved.0]));
    Ok(saved)
}

/// Adds `from` into `into`.
fn add_summary(into: &mut Summary, from: &Summary) {
    into.files += from.files;
    into.dirs += from.dirs;
    into.symlinks += from.symlinks;
    into.others += from.others;
    into.skipped += from.skipped;
    into.files_read += from.files_read;
    into.bytes_read += from.bytes_read;
    into.bytes_total += from.bytes_total;
}

/// This machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Adds `n` to a counter.
fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::stream::StreamChunking;
    use super::*;
    use crate::repo::Repository;
    use crate::repo::chunker::Chunking;
    use crate::repo::config::InitOptions;
    use crate::repo::keys::{Recipients, ServiceIdentity, generate_identity_file};
    use crate::storage::{LocalStore, ObjectStore};

    #[tokio::test]
    async fn a_root_tree_that_fills_a_pack_is_committed() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (restore, service) = (dir.path().join("r.key"), dir.path().join("s.key"));
        let recipients = Recipients {
            restore: vec![generate_identity_file(&restore, None)?],
            service: vec![generate_identity_file(&service, None)?],
        };
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().join("repo")));
        let options = InitOptions {
            page_chunking: Chunking::Fixed { size: 512 },
            pack_size: 1 << 20,
            ..InitOptions::default()
        };
        let repo = Repository::init(store, recipients, &options).await?;
        let repo = repo
            .unlock(ServiceIdentity::from_file(&service, None)?)
            .await?;
        // 12 MiB in 512-byte pages: the root tree lists ~24k blob ids, more
        // than a pack holds, so saving it hands a full pack to the uploader.
        let data: Vec<u8> = (0..12u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        let mut builder = SnapshotBuilder::new(&repo, "pages", SourceKind::Directory);
        builder
            .add_stream("big", std::io::Cursor::new(data), StreamChunking::Pages)
            .await?;
        let report = builder.commit(serde_json::Value::Null).await?;
        assert!(report.snapshot.summary.packs_added >= 2);
        assert_eq!(report.snapshot.summary.bytes_total, 12 << 20);
        Ok(())
    }

    /// Every blob the snapshot's trees reach, read with the restore key.
    async fn reachable(
        repo: &crate::repo::test_fixture::TestRepo,
        root: BlobId,
    ) -> anyhow::Result<Vec<BlobId>> {
        let reader = repo.as_restore().await?.reader();
        let mut found = std::collections::BTreeSet::new();
        let mut trees = vec![root];
        while let Some(id) = trees.pop() {
            if !found.insert(id) {
                continue;
            }
            for node in reader.read_tree(&id).await?.entries {
                found.extend(node.content.iter().copied());
                trees.extend(node.subtree);
            }
        }
        Ok(found.into_iter().collect())
    }

    #[tokio::test]
    async fn a_snapshot_references_exactly_what_its_trees_reach() -> anyhow::Result<()> {
        let repo = crate::repo::test_fixture::TestRepo::new().await?;
        let data = tempfile::tempdir()?;
        let state = tempfile::tempdir()?;
        std::fs::create_dir_all(data.path().join("sub/deeper"))?;
        std::fs::write(data.path().join("a.txt"), b"alpha")?;
        std::fs::write(
            data.path().join("sub/b.bin"),
            crate::repo::test_fixture::random(3 << 20),
        )?;
        std::fs::write(data.path().join("sub/deeper/c.txt"), b"alpha")?;
        let folders = [folders::Folder {
            path: data.path().to_owned(),
            exclude: Vec::new(),
        }];
        for round in 0..3 {
            if round == 1 {
                std::fs::write(data.path().join("sub/new.txt"), b"new in the second")?;
            }
            let service = repo.as_service().await?;
            let mut builder = SnapshotBuilder::new(&service, "files", SourceKind::Directory);
            builder.add_folders(&folders, Some(state.path())).await?;
            let report = builder.commit(serde_json::Value::Null).await?;
            let snapshot = &report.snapshot;
            assert_eq!(
                snapshot.references,
                reachable(&repo, snapshot.root).await?,
                "round {round}"
            );
            assert!(snapshot.references.len() >= 8, "{:?}", snapshot.references);
            if round == 2 {
                // Every file from the cache: its blobs are referenced as
                // known ones. (A folder above the data, such as the
                // temporary folder, may have changed meanwhile.)
                assert_eq!(snapshot.summary.files_read, 0, "nothing changed");
            }
        }
        Ok(())
    }
}
