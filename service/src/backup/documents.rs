//! Backing up small files made in memory: Kubernetes objects as YAML,
//! manifests of what a backup holds. They are stored as an ordinary folder
//! tree, so `lifeboat restore` gives them back as files.

use std::collections::BTreeMap;

use super::{BackupError, SnapshotBuilder, bump};
use crate::errors::WorkerError;
use crate::repo::RepoError;
use crate::repo::blob::BlobKind;
use crate::repo::id::BlobId;
use crate::repo::keys::KeyRole;
use crate::repo::tree::{Node, NodeKind, Tree};
use crate::repo::writer::BlobWriter;

/// A folder tree of in-memory files.
#[derive(Debug, Default)]
pub struct Documents {
    root: BTreeMap<String, Entry>,
}

#[derive(Debug)]
enum Entry {
    File { content: Vec<u8>, mtime: i64 },
    Dir(BTreeMap<String, Entry>),
}

impl Documents {
    /// Adds the file at `path` (folders are created as needed), with its
    /// modification time in seconds since the epoch: give a time that only
    /// changes with the content, so unchanged trees deduplicate.
    ///
    /// Fails when a component is empty or contains `/`, or the path is
    /// taken or runs through a file.
    pub fn insert(
        &mut self,
        path: &[&str],
        content: Vec<u8>,
        mtime: i64,
    ) -> Result<(), BackupError> {
        let invalid = |reason: &str| BackupError::Source {
            path: path.join("/"),
            reason: reason.into(),
        };
        let Some((name, folders)) = path.split_last() else {
            return Err(invalid("an empty path"));
        };
        if path
            .iter()
            .any(|c| c.is_empty() || c.contains('/') || *c == "." || *c == "..")
        {
            return Err(invalid("a path component is empty, `.`, `..` or holds `/`"));
        }
        let mut dir = &mut self.root;
        for folder in folders {
            let entry = dir
                .entry((*folder).to_owned())
                .or_insert_with(|| Entry::Dir(BTreeMap::new()));
            dir = match entry {
                Entry::Dir(inner) => inner,
                Entry::File { .. } => return Err(invalid("a file is in the way")),
            };
        }
        if dir.contains_key(*name) {
            return Err(BackupError::DuplicateName(path.join("/")));
        }
        dir.insert((*name).to_owned(), Entry::File { content, mtime });
        Ok(())
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.root.is_empty()
    }
}

impl<K: KeyRole> SnapshotBuilder<K> {
    /// Stores `documents` as top-level entries of this snapshot.
    ///
    /// Fails when a top-level name is taken or the repository fails.
    pub async fn add_documents(&mut self, documents: Documents) -> Result<(), BackupError> {
        let writer = self.writer.clone();
        let chunking = self.repo.repository().config().file_chunking;
        let progress = self.progress.clone();
        let (nodes, stored) = tokio::task::spawn_blocking(move || {
            let mut stored = Stored::default();
            let mut store = |tree: BTreeMap<String, Entry>| -> Result<Vec<Node>, RepoError> {
                tree.into_iter()
                    .map(|(name, entry)| {
                        store_entry(&writer, chunking, &name, entry, &mut stored, &progress)
                    })
                    .collect()
            };
            store(documents.root).map(|nodes| (nodes, stored))
        })
        .await
        .map_err(WorkerError::stopped("storing documents"))
        .map_err(RepoError::from)??;
        self.summary.files += stored.files;
        self.summary.dirs += stored.dirs;
        self.summary.files_read += stored.files;
        self.summary.bytes_read += stored.bytes;
        self.summary.bytes_total += stored.bytes;
        self.references.extend(stored.references);
        for node in nodes {
            self.add_entry(node)?;
        }
        Ok(())
    }
}

/// Counts and blob ids of what was stored.
#[derive(Debug, Default)]
struct Stored {
    files: u64,
    dirs: u64,
    bytes: u64,
    references: Vec<BlobId>,
}

fn store_entry(
    writer: &BlobWriter,
    chunking: crate::repo::chunker::Chunking,
    name: &str,
    entry: Entry,
    stored: &mut Stored,
    progress: &super::Progress,
) -> Result<Node, RepoError> {
    let mut node = Node::new(name.as_bytes(), NodeKind::File, 0o600, 0);
    match entry {
        Entry::File { content, mtime } => {
            chunking.split_bytes(&content, |chunk| -> Result<(), RepoError> {
                let (id, _) = writer.save(BlobKind::Data, chunk)?;
                node.content.push(id);
                Ok(())
            })?;
            stored.references.extend(node.content.iter().copied());
            stored.files += 1;
            stored.bytes += content.len() as u64;
            bump(&progress.bytes, content.len() as u64);
            node.size = content.len() as u64;
            node.mtime = mtime;
        }
        Entry::Dir(children) => {
            let entries = children
                .into_iter()
                .map(|(child, entry)| {
                    store_entry(writer, chunking, &child, entry, stored, progress)
                })
                .collect::<Result<Vec<_>, _>>()?;
            // A folder's time is its newest entry's: stable while nothing changes.
            node.mtime = entries.iter().map(|e| e.mtime).max().unwrap_or(0);
            let bytes = Tree { entries }
                .to_bytes()
                .map_err(|source| RepoError::Encode {
                    what: "a tree",
                    source,
                })?;
            let (id, _) = writer.save(BlobKind::Tree, &bytes)?;
            stored.references.push(id);
            stored.dirs += 1;
            node.kind = NodeKind::Dir;
            node.mode = 0o700;
            node.subtree = Some(id);
        }
    }
    Ok(node)
}
