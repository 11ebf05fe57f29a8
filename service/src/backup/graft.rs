//! Entries stored by another process — a volume mover's part snapshot —
//! grafted into this snapshot at a path, with the blobs they reference, so
//! that one snapshot holds what many processes read. The grafting snapshot
//! also forgets the snapshots its grafts came from once it is stored.

use std::collections::BTreeMap;
use std::path::Component;

use super::{BackupError, SnapshotBuilder, add_summary, save_tree};
use crate::errors::WorkerError;
use crate::repo::RepoError;
use crate::repo::id::SnapshotId;
use crate::repo::id_set::IdSet;
use crate::repo::keys::KeyRole;
use crate::repo::snapshot::Snapshot;
use crate::repo::tree::{Node, NodeKind, Tree};

/// One entry to graft.
#[derive(Debug, Clone)]
pub struct Graft {
    /// Where: an absolute path whose last component is the entry's name.
    pub path: std::path::PathBuf,
    /// The entry (a directory with its subtree, as stored).
    pub entry: Node,
    /// The snapshot it comes from: its references and summary join this
    /// snapshot's, and it is forgotten once this snapshot is stored.
    pub from: (SnapshotId, std::sync::Arc<Snapshot>),
}

/// Directories between the root and the grafts.
#[derive(Debug, Default)]
struct Level {
    children: BTreeMap<Vec<u8>, Child>,
}

#[derive(Debug)]
enum Child {
    Entry(Node),
    Dir(Level),
}

impl<K: KeyRole> SnapshotBuilder<K> {
    /// Adds `grafts` as entries of this snapshot, making the directories
    /// above them (root-owned, `0755`, modified now).
    ///
    /// Fails when a path is not absolute, its last component is not the
    /// entry's name, two grafts or a graft and a top-level entry collide,
    /// or the repository fails.
    pub async fn add_grafts(&mut self, grafts: Vec<Graft>) -> Result<(), BackupError> {
        let mut root = Level::default();
        for graft in grafts {
            let bad = |reason: &str| BackupError::Source {
                path: graft.path.display().to_string(),
                reason: reason.to_owned(),
            };
            if !graft.path.has_root() {
                return Err(bad("a graft's path must be absolute"));
            }
            // The first component is the root.
            let names: Vec<Vec<u8>> = graft
                .path
                .components()
                .skip(1)
                .map(|c| match c {
                    Component::Normal(name) => Ok(name.as_encoded_bytes().to_vec()),
                    _ => Err(bad("a graft's path must be absolute and normalised")),
                })
                .collect::<Result<_, _>>()?;
            let Some((last, parents)) = names.split_last() else {
                return Err(bad("nothing can be grafted at the root"));
            };
            if *last != graft.entry.name.0 {
                return Err(bad("a graft's path must end in its entry's name"));
            }
            let mut level = &mut root;
            for name in parents {
                let child = level
                    .children
                    .entry(name.clone())
                    .or_insert_with(|| Child::Dir(Level::default()));
                level = match child {
                    Child::Dir(inner) => inner,
                    Child::Entry(_) => return Err(bad("it lies inside another graft")),
                };
            }
            if level.children.contains_key(last) {
                return Err(bad("two grafts have this path"));
            }
            level
                .children
                .insert(last.clone(), Child::Entry(graft.entry));
            let (id, snapshot) = graft.from;
            add_summary(&mut self.summary, &snapshot.summary);
            self.summary.blobs_added += snapshot.summary.blobs_added;
            self.summary.bytes_added += snapshot.summary.bytes_added;
            self.summary.bytes_stored += snapshot.summary.bytes_stored;
            self.summary.packs_added += snapshot.summary.packs_added;
            self.references.extend(snapshot.references.iter().copied());
            self.superseded.push(id);
        }
        let writer = self.writer.clone();
        let now = chrono::Utc::now().timestamp();
        let (nodes, trees) = tokio::task::spawn_blocking(move || {
            let mut trees = IdSet::default();
            store_level(&writer, root, now, &mut trees).map(|nodes| (nodes, trees))
        })
        .await
        .map_err(WorkerError::stopped("storing grafted directories"))
        .map_err(RepoError::from)??;
        self.references.absorb(trees);
        for node in nodes {
            self.add_entry(node)?;
        }
        Ok(())
    }
}

/// The nodes of `level`, storing the trees of its directories and noting
/// their ids in `trees`.
fn store_level(
    writer: &crate::repo::writer::BlobWriter,
    level: Level,
    now: i64,
    trees: &mut IdSet,
) -> Result<Vec<Node>, RepoError> {
    level
        .children
        .into_iter()
        .map(|(name, child)| match child {
            Child::Entry(node) => Ok(node),
            Child::Dir(inner) => {
                let mut tree = Tree {
                    entries: store_level(writer, inner, now, trees)?,
                };
                let (id, _) = save_tree(writer, &mut tree, trees)?;
                let mut node = Node::new(&name, NodeKind::Dir, 0o755, now);
                node.subtree = Some(id);
                Ok(node)
            }
        })
        .collect()
}
