//! Backing up folder trees.
//!
//! Each configured folder is stored under its absolute path (intermediate
//! directories included), so one snapshot can hold many folders. Directories
//! are walked in parallel on rayon's pool; each file is read, chunked,
//! hashed and compressed on the thread that found it. A file whose size,
//! times and inode match the file cache is not read again. Entries that
//! cannot be stored (sockets, unreadable files) are skipped with a warning
//! naming them; they never fail the backup.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ffi::OsStr;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::folders::{Excludes, Folder, Layout, LayoutEntry, checked, prepare};
use super::{BackupError, Progress, SnapshotBuilder, add_summary, bump, save_tree};
use crate::errors::WorkerError;
use crate::repo::RepoError;
use crate::repo::blob::BlobKind;
use crate::repo::chunker::Chunking;
use crate::repo::id::BlobId;
use crate::repo::id_set::IdSet;
use crate::repo::keys::KeyRole;
use crate::repo::snapshot::Summary;
use crate::repo::tree::{Node, NodeKind, RawName, Tree};
use crate::repo::writer::BlobWriter;
use crate::state::{CachedFile, FileCache, FileStamp, KnownFiles};

impl<K: KeyRole> SnapshotBuilder<K> {
    /// Backs up `folders` into this snapshot, using the file cache in
    /// `state_dir` when given.
    ///
    /// Fails when a folder does not exist or an exclude pattern is invalid,
    /// or when the repository fails; unreadable entries inside the folders
    /// are skipped with a warning.
    pub async fn add_folders(
        &mut self,
        folders: &[Folder],
        state_dir: Option<&Path>,
    ) -> Result<(), BackupError> {
        let prepared = prepare(folders)?;
        let (entries, _) = self
            .archive(
                CacheUse::State(state_dir.map(Path::to_path_buf)),
                move |archiver| archiver.archive_layout(&prepared, Path::new("/")),
            )
            .await?;
        for node in entries {
            self.add_entry(node)?;
        }
        Ok(())
    }

    /// Backs up `folder` as if it were at `snapshot_path` — a top-level
    /// entry named by its last component, whose hard links name paths
    /// under `snapshot_path` — and returns that entry with what this backup
    /// learnt of its files. A volume mover uses it: the claim is mounted
    /// anywhere, its entry is grafted into the run's snapshot at
    /// `snapshot_path`, and `known` (what the last backup learnt) comes
    /// from and goes back to the mover's cache in the repository.
    ///
    /// Fails as [`Self::add_folders`], and when `snapshot_path` is not
    /// absolute or has no last component.
    pub async fn add_folder_as(
        &mut self,
        folder: &Folder,
        snapshot_path: &Path,
        known: KnownFiles,
    ) -> Result<(Node, Learnt), BackupError> {
        let fail = |reason: &str| BackupError::Source {
            path: folder.path.display().to_string(),
            reason: reason.to_owned(),
        };
        let name = match snapshot_path.file_name() {
            Some(name) if snapshot_path.is_absolute() => name.as_bytes().to_vec(),
            _ => return Err(fail("its place in the snapshot must be an absolute path")),
        };
        let (path, excludes) = checked(folder)?;
        let snapshot_path = snapshot_path.as_os_str().as_bytes().to_vec();
        let (mut entries, learnt) = self
            .archive(CacheUse::Given(known), move |archiver| {
                let meta = std::fs::metadata(&path).map_err(|source| BackupError::Unreadable {
                    path: path.display().to_string(),
                    source,
                })?;
                let mut node = base_node(&name, &meta, NodeKind::Dir);
                bump(&archiver.counts.dirs, 1);
                let place = Place {
                    path: path.clone(),
                    snapshot_path,
                    relative: PathBuf::new(),
                    excludes: &excludes,
                };
                node.subtree = Some(archiver.archive_dir(&place)?);
                Ok(vec![node])
            })
            .await?;
        let node = entries.pop().ok_or_else(|| fail("it has no name"))?;
        self.add_entry(node.clone())?;
        Ok((node, learnt))
    }

    /// Runs `work` with an archiver on the blocking pool, the file cache
    /// `cache` says loaded before and (for the state's) replaced after,
    /// and adds its counts, references and warnings to this snapshot.
    /// Returns the entries, and what it learnt of the files when the
    /// cache was given (empty when the state's cache kept it).
    async fn archive(
        &mut self,
        cache: CacheUse,
        work: impl FnOnce(&Archiver) -> Result<Vec<Node>, BackupError> + Send + 'static,
    ) -> Result<(Vec<Node>, Learnt), BackupError> {
        let repo_id = self.repo.repository().config().id.clone();
        let job = self.job.clone();
        let writer = self.writer.clone();
        let chunking = self.repo.repository().config().file_chunking;
        let progress = self.progress.clone();
        let index = self.repo.index().clone();
        let (entries, learnt, summary, references, warnings) =
            tokio::task::spawn_blocking(move || {
                let (state, known) = match cache {
                    CacheUse::Given(known) => (None, known),
                    CacheUse::State(dir) => {
                        let state = dir.as_deref().and_then(|dir| {
                            FileCache::open(dir)
                                .inspect_err(|e| {
                                    tracing::warn!("working without the file cache: {e}")
                                })
                                .ok()
                        });
                        let known = state
                            .as_ref()
                            .and_then(|c| {
                                c.load(&repo_id, &job, Some(index.clone()))
                                    .inspect_err(|e| tracing::warn!("{e}"))
                                    .ok()
                            })
                            .unwrap_or_default();
                        (state, known)
                    }
                };
                let archiver = Archiver {
                    writer,
                    chunking,
                    known,
                    progress,
                    staging: state.map(Mutex::new),
                    fresh: Mutex::default(),
                    counts: Counts::default(),
                    warnings: Mutex::default(),
                    hardlinks: Mutex::default(),
                    references: Mutex::new(IdSet::over(index)),
                };
                let entries = work(&archiver)?;
                let mut learnt = archiver.fresh.into_inner().unwrap_or_default();
                let state = archiver.staging.and_then(|state| state.into_inner().ok());
                if let Some(mut state) = state {
                    if let Err(e) = state.replace(&repo_id, &job, &learnt) {
                        tracing::warn!("{e}");
                    }
                    learnt = Vec::new();
                }
                Ok::<_, BackupError>((
                    entries,
                    learnt,
                    archiver.counts.summary(),
                    archiver.references.into_inner().unwrap_or_default(),
                    archiver.warnings.into_inner().unwrap_or_default(),
                ))
            })
            .await
            .map_err(WorkerError::stopped("reading files"))
            .map_err(RepoError::from)??;
        add_summary(&mut self.summary, &summary);
        self.references.absorb(references);
        self.warnings.extend(warnings);
        Ok((entries, learnt))
    }
}

/// What a backup learnt of the files it stored (path and what it knows),
/// for the next.
pub type Learnt = Vec<(Vec<u8>, CachedFile)>;

/// Where a backup's file cache comes from and goes to.
enum CacheUse {
    /// The file cache in this state folder, if any.
    State(Option<PathBuf>),
    /// Given by the caller, who keeps what is learnt.
    Given(KnownFiles),
}

#[derive(Debug, Default)]
struct Counts {
    files: AtomicU64,
    dirs: AtomicU64,
    symlinks: AtomicU64,
    others: AtomicU64,
    skipped: AtomicU64,
    files_read: AtomicU64,
    bytes_read: AtomicU64,
    bytes_total: AtomicU64,
}

impl Counts {
    fn summary(&self) -> Summary {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Summary {
            files: get(&self.files),
            dirs: get(&self.dirs),
            symlinks: get(&self.symlinks),
            others: get(&self.others),
            skipped: get(&self.skipped),
            files_read: get(&self.files_read),
            bytes_read: get(&self.bytes_read),
            bytes_total: get(&self.bytes_total),
            ..Summary::default()
        }
    }
}

struct Archiver {
    writer: Arc<BlobWriter>,
    chunking: Chunking,
    /// What the last backup knew of the files.
    known: KnownFiles,
    progress: Arc<Progress>,
    /// The state's file cache, which takes what is learnt a few thousand
    /// files at a time; `None` when the caller keeps it.
    staging: Option<Mutex<FileCache>>,
    /// What was learnt and not yet staged.
    fresh: Mutex<Learnt>,
    counts: Counts,
    warnings: Mutex<Vec<String>>,
    hardlinks: Mutex<HashMap<(u64, u64), RawName>>,
    references: Mutex<IdSet>,
}

/// Where an entry is: on disk, and in the snapshot.
struct Place<'a> {
    path: PathBuf,
    snapshot_path: Vec<u8>,
    relative: PathBuf,
    excludes: &'a Excludes,
}

/// Entries learnt that are handed to the state's file cache at once.
const STAGED_AT_ONCE: usize = 8192;

impl Archiver {
    /// Hands `learnt` to the state's file cache. A failure costs only time:
    /// the files it leaves out are read again by the next backup.
    fn stage(&self, learnt: &[(Vec<u8>, CachedFile)]) {
        let Some(staging) = &self.staging else {
            return;
        };
        let mut cache = staging
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = cache.stage(learnt) {
            tracing::warn!("{e}");
        }
    }

    fn warn(&self, path: &Path, what: &str) {
        bump(&self.counts.skipped, 1);
        let message = format!("skipped {}: {what}", path.display());
        tracing::warn!("{message}");
        if let Ok(mut warnings) = self.warnings.lock() {
            warnings.push(message);
        }
    }

    /// The top-level entries for a layout under `at`.
    fn archive_layout(&self, layout: &Layout, at: &Path) -> Result<Vec<Node>, BackupError> {
        layout
            .children
            .iter()
            .map(|(name, entry)| {
                let path = at.join(OsStr::from_bytes(name));
                let meta = std::fs::metadata(&path).map_err(|source| BackupError::Unreadable {
                    path: path.display().to_string(),
                    source,
                })?;
                let mut node = base_node(name, &meta, NodeKind::Dir);
                let subtree = match entry {
                    LayoutEntry::Parent(inner) => {
                        let mut tree = Tree {
                            entries: self.archive_layout(inner, &path)?,
                        };
                        self.save_tree(&mut tree)?
                    }
                    LayoutEntry::Folder(folder, excludes) => {
                        bump(&self.counts.dirs, 1);
                        let place = Place {
                            path: folder.clone(),
                            snapshot_path: folder.as_os_str().as_bytes().to_vec(),
                            relative: PathBuf::new(),
                            excludes,
                        };
                        self.archive_dir(&place)?
                    }
                };
                node.subtree = Some(subtree);
                Ok(node)
            })
            .collect()
    }

    fn save_tree(&self, tree: &mut Tree) -> Result<BlobId, RepoError> {
        let mut references = self
            .references
            .lock()
            .map_err(WorkerError::poisoned("the backup's blob references"))?;
        save_tree(&self.writer, tree, &mut references).map(|(id, _)| id)
    }

    /// Stores one directory's tree (and everything below it).
    fn archive_dir(&self, place: &Place<'_>) -> Result<BlobId, RepoError> {
        let mut names = Vec::new();
        match std::fs::read_dir(&place.path) {
            Ok(listing) => {
                for entry in listing {
                    match entry {
                        Ok(entry) => names.push(entry.file_name()),
                        Err(e) => self.warn(&place.path, &format!("listing failed part way: {e}")),
                    }
                }
            }
            Err(e) => self.warn(
                &place.path,
                &format!("cannot list it: {e}; stored as empty"),
            ),
        }
        names.sort();
        let nodes: Vec<Option<Node>> = names
            .par_iter()
            .map(|name| {
                let child = Place {
                    path: place.path.join(name),
                    snapshot_path: [place.snapshot_path.as_slice(), b"/", name.as_bytes()].concat(),
                    relative: place.relative.join(name),
                    excludes: place.excludes,
                };
                if place.excludes.excludes(name, &child.relative) {
                    return Ok(None);
                }
                let node = self.archive_entry(name, &child);
                bump(&self.progress.entries, 1);
                node
            })
            .collect::<Result<_, RepoError>>()?;
        let mut tree = Tree {
            entries: nodes.into_iter().flatten().collect(),
        };
        self.save_tree(&mut tree)
    }

    /// One directory entry as a node; `None` when it is skipped.
    fn archive_entry(&self, name: &OsStr, place: &Place<'_>) -> Result<Option<Node>, RepoError> {
        let meta = match std::fs::symlink_metadata(&place.path) {
            Ok(meta) => meta,
            Err(e) => {
                self.warn(&place.path, &format!("cannot read its metadata: {e}"));
                return Ok(None);
            }
        };
        let name = name.as_bytes();
        let kind = meta.file_type();
        if kind.is_dir() {
            bump(&self.counts.dirs, 1);
            let mut node = base_node(name, &meta, NodeKind::Dir);
            node.subtree = Some(self.archive_dir(place)?);
            return Ok(Some(node));
        }
        if kind.is_symlink() {
            return Ok(match std::fs::read_link(&place.path) {
                Ok(target) => {
                    bump(&self.counts.symlinks, 1);
                    let mut node = base_node(name, &meta, NodeKind::Symlink);
                    node.target = Some(RawName(target.as_os_str().as_bytes().to_vec()));
                    Some(node)
                }
                Err(e) => {
                    self.warn(&place.path, &format!("cannot read the link: {e}"));
                    None
                }
            });
        }
        if kind.is_file() {
            return self.archive_file(name, &meta, place);
        }
        let special = if kind.is_fifo() {
            NodeKind::Fifo
        } else if kind.is_char_device() {
            NodeKind::Chardev
        } else if kind.is_block_device() {
            NodeKind::Blockdev
        } else {
            self.warn(&place.path, "sockets cannot be backed up");
            return Ok(None);
        };
        bump(&self.counts.others, 1);
        let mut node = base_node(name, &meta, special);
        node.rdev = (special != NodeKind::Fifo).then_some(meta.rdev());
        Ok(Some(node))
    }

    fn archive_file(
        &self,
        name: &[u8],
        meta: &Metadata,
        place: &Place<'_>,
    ) -> Result<Option<Node>, RepoError> {
        // The first name of a hard-linked file claims it before reading, so
        // that threads archiving its other names store links to it.
        if meta.nlink() > 1 {
            let mut links = self
                .hardlinks
                .lock()
                .map_err(WorkerError::poisoned("the backup's hard-link table"))?;
            match links.entry((meta.dev(), meta.ino())) {
                Entry::Occupied(first) => {
                    bump(&self.counts.others, 1);
                    let mut node = base_node(name, meta, NodeKind::Hardlink);
                    node.link = Some(first.get().clone());
                    return Ok(Some(node));
                }
                Entry::Vacant(slot) => {
                    slot.insert(RawName(place.snapshot_path.clone()));
                }
            }
        }
        let Some(content) = self.file_content(meta, place)? else {
            return Ok(None);
        };
        bump(&self.counts.files, 1);
        bump(&self.counts.bytes_total, meta.len());
        let mut node = base_node(name, meta, NodeKind::File);
        node.size = meta.len();
        node.content = content;
        Ok(Some(node))
    }

    /// The file's data blobs: from the cache when unchanged, else read.
    fn file_content(
        &self,
        meta: &Metadata,
        place: &Place<'_>,
    ) -> Result<Option<Vec<BlobId>>, RepoError> {
        let key = place.path.as_os_str().as_bytes();
        let now = FileStamp {
            size: meta.len(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
            inode: meta.ino(),
        };
        let cached = self
            .known
            .content(key, &now)
            .filter(|content| content.iter().all(|id| self.writer.has(id)));
        let content = match cached {
            Some(cached) => cached,
            None => match self.read_file(&place.path, meta) {
                Ok(content) => content,
                Err(ReadFailure::Repo(e)) => return Err(e),
                Err(ReadFailure::Io(e)) => {
                    self.warn(&place.path, &format!("cannot read it: {e}"));
                    return Ok(None);
                }
            },
        };
        bump(&self.progress.bytes, meta.len());
        let reused: Vec<BlobId> = self.writer.not_stored(&content).collect();
        if let Ok(mut references) = self.references.lock() {
            references.extend(reused);
        }
        let full = self.fresh.lock().ok().and_then(|mut fresh| {
            fresh.push((
                key.to_vec(),
                CachedFile {
                    stamp: now,
                    content: content.clone(),
                },
            ));
            let full = self.staging.is_some() && fresh.len() >= STAGED_AT_ONCE;
            full.then(|| std::mem::take(&mut *fresh))
        });
        if let Some(learnt) = full {
            self.stage(&learnt);
        }
        Ok(Some(content))
    }

    /// Reads and stores the regular file at `path`, which the walk found
    /// with `walked`.
    ///
    /// It is opened without following a symlink (and without blocking on a
    /// FIFO), and must still be the file the walk saw: one swapped for a
    /// link or another file in between is not read through.
    fn read_file(&self, path: &Path, walked: &Metadata) -> Result<Vec<BlobId>, ReadFailure> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)?;
        let opened = file.metadata()?;
        if !opened.is_file() || opened.dev() != walked.dev() || opened.ino() != walked.ino() {
            return Err(ReadFailure::Io(std::io::Error::other(
                "it was replaced by another file or a link while the backup ran",
            )));
        }
        let mut content = Vec::new();
        let mut store = |chunk: &[u8]| -> Result<(), ReadFailure> {
            let (id, _) = self.writer.save(BlobKind::Data, chunk)?;
            content.push(id);
            bump(&self.counts.bytes_read, chunk.len() as u64);
            Ok(())
        };
        // Read into the thread's chunking window whatever the file's size:
        // a buffer per file would be allocated and freed as often as files
        // are read, and kept by the allocator at the largest file's size.
        self.chunking.split(file, &mut store)?;
        bump(&self.counts.files_read, 1);
        Ok(content)
    }
}

/// Why a file's content could not be stored.
enum ReadFailure {
    /// The file: skip it.
    Io(std::io::Error),
    /// The repository: stop.
    Repo(RepoError),
}

impl From<std::io::Error> for ReadFailure {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<RepoError> for ReadFailure {
    fn from(e: RepoError) -> Self {
        Self::Repo(e)
    }
}

/// A node with the metadata every kind records.
fn base_node(name: &[u8], meta: &Metadata, kind: NodeKind) -> Node {
    Node {
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_nsec: u32::try_from(meta.mtime_nsec()).unwrap_or(0),
        ..Node::new(name, kind, meta.mode() & 0o7777, meta.mtime())
    }
}
