//! The repository the format's unit tests work on (test builds only): a
//! local-directory store in a temporary directory, created with a fresh
//! restore key and service key, and helpers that store blobs and small
//! snapshots through the crate's own writer, and damage stored objects the
//! way a failing disk or a hostile bucket would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::blob::BlobKind;
use super::config::InitOptions;
use super::id::{BlobId, IndexId, PackId, SnapshotId};
use super::index::{Index, IndexFile, IndexedBlob, IndexedPack};
use super::keys::{KeyRole, Recipients, RestoreIdentity, ServiceIdentity, generate_identity_file};
use super::snapshot::{Snapshot, Summary};
use super::tree::{Node, NodeKind, Tree};
use super::writer::{BlobWriter, WriteStats};
use super::{RepoError, Repository, UnlockedRepository};
use crate::storage::{LocalStore, ObjectStore, TEMP_PREFIX};

/// The modification time of every entry [`write_snapshot`] writes.
const MTIME: i64 = 1_764_126_000;

/// A repository in a temporary directory, with its two key files.
pub(crate) struct TestRepo {
    dir: tempfile::TempDir,
    store: Arc<dyn ObjectStore>,
    restore_key: PathBuf,
    service_key: PathBuf,
}

impl TestRepo {
    /// A repository made with the default options (16 MiB packs).
    pub(crate) async fn new() -> anyhow::Result<Self> {
        Self::with_options(&InitOptions::default()).await
    }

    /// A repository made with `options`.
    pub(crate) async fn with_options(options: &InitOptions) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let restore_key = dir.path().join("restore.key");
        let service_key = dir.path().join("service.key");
        let recipients = Recipients {
            restore: vec![generate_identity_file(&restore_key, None)?],
            service: vec![generate_identity_file(&service_key, None)?],
        };
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().join("repo")));
        Repository::init(store.clone(), recipients, options).await?;
        Ok(Self {
            dir,
            store,
            restore_key,
            service_key,
        })
    }

    /// The folder the repository's objects are in.
    pub(crate) fn objects_folder(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    /// The staged files (`.tmp-…`) left in the repository's folder.
    pub(crate) fn staged_files(&self) -> anyhow::Result<Vec<PathBuf>> {
        let mut found = Vec::new();
        let mut folders = vec![self.objects_folder()];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(folder)? {
                let path = entry?.path();
                if path.is_dir() {
                    folders.push(path);
                } else if path
                    .file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with(TEMP_PREFIX))
                {
                    found.push(path);
                }
            }
        }
        Ok(found)
    }

    /// The store the repository is in.
    pub(crate) fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The restore key's identity file.
    pub(crate) fn restore_key(&self) -> &Path {
        &self.restore_key
    }

    /// The service key's identity file.
    pub(crate) fn service_key(&self) -> &Path {
        &self.service_key
    }

    /// The repository, opened afresh.
    pub(crate) async fn open(&self) -> anyhow::Result<Repository> {
        Ok(Repository::open(self.store.clone()).await?)
    }

    /// The repository unlocked with the service key, its index read afresh.
    pub(crate) async fn as_service(&self) -> anyhow::Result<UnlockedRepository<ServiceIdentity>> {
        let key = ServiceIdentity::from_file(&self.service_key, None)?;
        Ok(self.open().await?.unlock(key).await?)
    }

    /// The repository unlocked with the restore key, its index read afresh.
    pub(crate) async fn as_restore(&self) -> anyhow::Result<UnlockedRepository<RestoreIdentity>> {
        let key = RestoreIdentity::from_file(&self.restore_key, None)?;
        Ok(self.open().await?.unlock(key).await?)
    }

    /// The keys of the stored objects under `prefix`, sorted.
    pub(crate) async fn keys(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let mut keys: Vec<String> = self
            .store
            .list(prefix)
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Changes the stored bytes of object `key` in place, behind the
    /// store's back (as bit rot or someone with write access to the bucket
    /// would).
    pub(crate) fn damage(
        &self,
        key: &str,
        change: impl FnOnce(&mut Vec<u8>),
    ) -> anyhow::Result<()> {
        let path = self.dir.path().join("repo").join(key);
        let mut bytes = std::fs::read(&path)?;
        change(&mut bytes);
        std::fs::write(&path, bytes)?;
        Ok(())
    }
}

/// `len` bytes of a fixed pattern that depends on `seed` (compressible a
/// little: zstd keeps it unless it saves 1/32).
/// An index of `packs`, each pack's blobs as ids (100-byte data blobs).
pub(crate) fn index_of(packs: &[&[BlobId]]) -> Arc<Index> {
    let packs = packs
        .iter()
        .zip(1u8..)
        .map(|(ids, n)| IndexedPack {
            id: PackId::from_bytes([n; 32]),
            size: 1 << 20,
            payload_offset: 0,
            blobs: ids
                .iter()
                .zip(0u64..)
                .map(|(&id, at)| IndexedBlob {
                    id,
                    kind: BlobKind::Data,
                    compressed: false,
                    offset: at * 100,
                    length: 100,
                    raw_length: 100,
                })
                .collect(),
        })
        .collect();
    let mut index = Index::default();
    index.add_file(IndexId::from_bytes([0; 32]), IndexFile { packs });
    Arc::new(index)
}

pub(crate) fn pattern(seed: u32, len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect()
}

/// `len` random bytes: incompressible, so stored raw and at a known size.
pub(crate) fn random(len: usize) -> Vec<u8> {
    (0..len).map(|_| rand::random::<u8>()).collect()
}

/// Saves `blobs` with `writer`, off the async threads (a save blocks), and
/// gives the writer back unfinished with each blob's id and whether it was
/// new.
pub(crate) async fn save_blobs(
    writer: BlobWriter,
    kind: BlobKind,
    blobs: Vec<Vec<u8>>,
) -> anyhow::Result<(BlobWriter, Vec<(BlobId, bool)>)> {
    let (writer, saved) = tokio::task::spawn_blocking(move || {
        let saved = blobs
            .iter()
            .map(|plain| writer.save(kind, plain))
            .collect::<Result<Vec<_>, RepoError>>();
        (writer, saved)
    })
    .await?;
    Ok((writer, saved?))
}

/// Stores `blobs` with one writer of `repo` and finishes it.
pub(crate) async fn store_blobs(
    repo: &UnlockedRepository<impl KeyRole>,
    kind: BlobKind,
    blobs: Vec<Vec<u8>>,
) -> anyhow::Result<(Vec<BlobId>, WriteStats)> {
    let (writer, saved) = save_blobs(repo.writer(), kind, blobs).await?;
    let stats = writer.finish().await?;
    Ok((saved.into_iter().map(|(id, _)| id).collect(), stats))
}

/// The packs a writer stored, as the index objects it wrote list them.
pub(crate) async fn written_packs(
    repo: &TestRepo,
    stats: &WriteStats,
) -> anyhow::Result<Vec<IndexedPack>> {
    let index = repo.as_service().await?.index().clone();
    stats
        .packs
        .iter()
        .map(|id| {
            index
                .indexed_pack(id)
                .ok_or_else(|| anyhow::anyhow!("pack {id} is not indexed"))
        })
        .collect()
}

/// Stores one data blob with a writer of its own.
pub(crate) async fn store_blob(
    repo: &UnlockedRepository<impl KeyRole>,
    data: Vec<u8>,
) -> anyhow::Result<BlobId> {
    let (ids, _) = store_blobs(repo, BlobKind::Data, vec![data]).await?;
    ids.into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("a saved blob has no id"))
}

/// A snapshot of job `job` with root `root`, referencing `references`.
pub(crate) fn snapshot(job: &str, root: BlobId, mut references: Vec<BlobId>) -> Snapshot {
    references.sort();
    references.dedup();
    Snapshot {
        job: job.into(),
        source_kind: "test".into(),
        host: "h".into(),
        time: chrono::Utc::now(),
        end_time: chrono::Utc::now(),
        root,
        summary: Summary::default(),
        metadata: serde_json::Value::Null,
        references,
    }
}

/// A snapshot whose root is the data blob `blob`, for tests that look only
/// at what the service key sees (which never walks trees).
pub(crate) fn snapshot_of(blob: BlobId) -> Snapshot {
    snapshot("j", blob, vec![blob])
}

/// What [`write_snapshot`] stored.
#[derive(Debug)]
pub(crate) struct WrittenSnapshot {
    /// The snapshot object.
    pub(crate) id: SnapshotId,
    /// Its content.
    pub(crate) snapshot: Snapshot,
    /// Each file's path (from the root, without a leading `/`) and data blob.
    pub(crate) files: BTreeMap<String, BlobId>,
    /// Each directory's path (`""` for the root) and tree blob.
    pub(crate) trees: BTreeMap<String, BlobId>,
    /// What its writer stored.
    pub(crate) stats: WriteStats,
}

/// Backs up `files` (`path` → content; a `/` in a path makes directories)
/// as a snapshot of job `job`: each file is one data blob, each directory a
/// tree blob, stored with one writer, then the snapshot object is written.
pub(crate) async fn write_snapshot(
    repo: &UnlockedRepository<impl KeyRole>,
    job: &str,
    files: &[(&str, impl AsRef<[u8]>)],
) -> anyhow::Result<WrittenSnapshot> {
    let owned: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(path, data)| ((*path).to_owned(), data.as_ref().to_vec()))
        .collect();
    let writer = repo.writer();
    let (writer, stored) = tokio::task::spawn_blocking(move || {
        let mut stored = Stored::default();
        let root = stored.directory(&writer, "", &owned);
        (writer, root.map(|root| (root, stored)))
    })
    .await?;
    let (root, stored) = stored?;
    let stats = writer.finish().await?;
    let references = stored.files.values().chain(stored.trees.values()).copied();
    let snapshot = snapshot(job, root, references.collect());
    let id = repo.save_snapshot(&snapshot).await?;
    Ok(WrittenSnapshot {
        id,
        snapshot,
        files: stored.files,
        trees: stored.trees,
        stats,
    })
}

/// The blobs [`write_snapshot`] saved, by path.
#[derive(Default)]
struct Stored {
    files: BTreeMap<String, BlobId>,
    trees: BTreeMap<String, BlobId>,
}

impl Stored {
    /// Saves the files under directory `at` and its tree; returns the tree.
    fn directory(
        &mut self,
        writer: &BlobWriter,
        at: &str,
        files: &[(String, Vec<u8>)],
    ) -> Result<BlobId, RepoError> {
        let mut entries = Vec::new();
        let mut subdirectories: BTreeMap<&str, Vec<(String, Vec<u8>)>> = BTreeMap::new();
        for (path, data) in files {
            match path.split_once('/') {
                Some((dir, rest)) => subdirectories
                    .entry(dir)
                    .or_default()
                    .push((rest.to_owned(), data.clone())),
                None => {
                    let (blob, _) = writer.save(BlobKind::Data, data)?;
                    self.files.insert(join(at, path), blob);
                    entries.push(Node {
                        size: data.len() as u64,
                        content: vec![blob],
                        ..Node::new(path.as_bytes(), NodeKind::File, 0o644, MTIME)
                    });
                }
            }
        }
        for (name, files) in subdirectories {
            let subtree = self.directory(writer, &join(at, name), &files)?;
            entries.push(Node {
                subtree: Some(subtree),
                ..Node::new(name.as_bytes(), NodeKind::Dir, 0o755, MTIME)
            });
        }
        let bytes = Tree { entries }
            .to_bytes()
            .map_err(|source| RepoError::Encode {
                what: "a test tree",
                source,
            })?;
        let (tree, _) = writer.save(BlobKind::Tree, &bytes)?;
        self.trees.insert(at.to_owned(), tree);
        Ok(tree)
    }
}

fn join(at: &str, name: &str) -> String {
    if at.is_empty() {
        name.to_owned()
    } else {
        format!("{at}/{name}")
    }
}
