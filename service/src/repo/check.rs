//! Checking a repository end to end.
//!
//! Without reading data: every snapshot's references are indexed, every
//! indexed pack exists with its recorded size, and (with the restore key)
//! every tree reads and every file's blobs are indexed. With `--read-data`,
//! packs are downloaded and hashed against their names, which finds any
//! flipped bit with either key; the restore key also decrypts them and
//! verifies every blob against its id. Problems name the snapshots and
//! files they affect.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::id::{BlobId, PackId};
use super::keys::KeyRole;
use super::reader::{BlobReader, MAX_TREE_DEPTH};
use super::tree::{NodeKind, Tree};
use super::{RepoError, UnlockedRepository, object_id};

/// How much pack data to download and verify.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReadData {
    /// Structure only.
    None,
    /// Every pack.
    All,
    /// This percentage of packs, picked at random.
    Subset(f64),
}

/// One thing found wrong.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// The object concerned.
    pub object: String,
    /// What is wrong.
    pub message: String,
    /// What it makes unrestorable: `snapshot <id>: <path>` entries.
    pub affects: Vec<String>,
}

/// The result of a check.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    /// Snapshots checked.
    pub snapshots: usize,
    /// Packs in the index.
    pub packs: usize,
    /// Packs downloaded and verified.
    pub packs_read: usize,
    /// Blobs verified by decrypting.
    pub blobs_verified: usize,
    /// Trees read.
    pub trees: usize,
    /// Packs stored but in no index (left by interrupted backups; harmless, prune removes them).
    pub unindexed_packs: usize,
    /// Everything wrong.
    pub problems: Vec<Problem>,
}

impl CheckReport {
    /// Whether nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(
        &mut self,
        object: impl Into<String>,
        message: impl Into<String>,
        affects: Vec<String>,
    ) {
        self.problems.push(Problem {
            object: object.into(),
            message: message.into(),
            affects,
        });
    }
}

/// Where each blob is used: `snapshot <short id>: <path>`, a few per blob.
type Users = HashMap<BlobId, Vec<String>>;

/// Checks the repository.
///
/// Fails only when the store cannot be listed; everything found wrong is in
/// the report.
pub async fn check(
    repo: &UnlockedRepository<impl KeyRole>,
    read_data: ReadData,
) -> Result<CheckReport, RepoError> {
    let mut report = CheckReport::default();
    let store = repo.repository().store().clone();
    let index = repo.index().clone();
    for (key, error) in repo.index_problems() {
        report.problem(key.clone(), error.clone(), Vec::new());
    }
    let mut users = Users::new();
    let reader = repo.data_reader();

    let snapshots = store.list("snapshots/").await?;
    for object in snapshots {
        let snapshot = match object_id(&object.key, "snapshots/") {
            Ok(id) => repo.read_snapshot(id).await.map(|s| (id, s)),
            Err(e) => Err(e),
        };
        let (id, snapshot) = match snapshot {
            Ok(found) => found,
            Err(e) => {
                report.problem(object.key, e.to_string(), Vec::new());
                continue;
            }
        };
        report.snapshots += 1;
        let label = format!("snapshot {} ({})", id.short(), snapshot.job);
        let missing: Vec<_> = snapshot
            .references
            .iter()
            .filter(|b| !index.contains(b))
            .collect();
        if !missing.is_empty() {
            report.problem(
                object.key.clone(),
                format!("{} referenced blobs are in no index", missing.len()),
                vec![label.clone()],
            );
        }
        if let Some(reader) = &reader {
            let reader = reader.for_walk();
            walk_trees(&reader, &label, snapshot.root, &mut users, &mut report).await;
        }
    }

    let stored = super::prune::stored_packs(&store).await?;
    report.packs = index.packs().count();
    // The blobs a damaged pack takes with it: those read from it.
    let pack_blobs = |pack: &PackId| -> Vec<BlobId> { index.blobs_read_from(pack).collect() };
    let affected_blobs = |blobs: &[BlobId]| -> Vec<String> {
        let mut list: Vec<String> = blobs
            .iter()
            .filter_map(|b| users.get(b))
            .flatten()
            .cloned()
            .collect();
        list.sort();
        list.dedup();
        list
    };
    let affected = |pack: &PackId| affected_blobs(&pack_blobs(pack));
    let mut to_read = Vec::new();
    for (pack, info) in index.packs() {
        match stored.get(pack) {
            None => report.problem(
                pack.key(),
                "indexed pack is missing from the store",
                affected(pack),
            ),
            Some(&size) if size != info.size => report.problem(
                pack.key(),
                format!("size {size} differs from the indexed {}", info.size),
                affected(pack),
            ),
            Some(_) => {
                let picked = match read_data {
                    ReadData::None => false,
                    ReadData::All => true,
                    ReadData::Subset(percent) => rand::random::<f64>() * 100.0 < percent,
                };
                if picked {
                    to_read.push(*pack);
                }
            }
        }
    }
    report.unindexed_packs = stored.keys().filter(|p| index.pack(p).is_none()).count();

    for pack in to_read {
        report.packs_read += 1;
        let Err(message) = read_pack(repo, reader.as_ref(), &pack, &mut report).await else {
            continue;
        };
        // With the restore key, find which blobs the damage reaches: every
        // blob outside the damaged age segments still reads.
        let listed = pack_blobs(&pack);
        let damaged = match &reader {
            Some(reader) => damaged_blobs(reader, &pack, &listed).await,
            None => None,
        };
        match damaged {
            Some(blobs) if !blobs.is_empty() => {
                let total = listed.len();
                let message = format!(
                    "{message} ({} of its {total} blobs are unreadable)",
                    blobs.len()
                );
                report.problem(pack.key(), message, affected_blobs(&blobs));
            }
            _ => report.problem(pack.key(), message, affected(&pack)),
        }
    }
    Ok(report)
}

/// The blobs of a damaged pack that cannot be read one by one; `None` when
/// the pack cannot be read at all.
async fn damaged_blobs(
    reader: &BlobReader,
    pack: &PackId,
    blobs: &[BlobId],
) -> Option<Vec<BlobId>> {
    let read = reader.read_many(pack, blobs).await.ok()?;
    Some(
        read.into_iter()
            .filter(|(_, r)| r.is_err())
            .map(|(id, _)| id)
            .collect(),
    )
}

/// Downloads one pack, checks its name and, with the restore key, every blob.
async fn read_pack(
    repo: &UnlockedRepository<impl KeyRole>,
    reader: Option<&BlobReader>,
    pack: &PackId,
    report: &mut CheckReport,
) -> Result<(), String> {
    let cipher = repo
        .repository()
        .store()
        .get(&pack.key())
        .await
        .map_err(|e| e.to_string())?;
    super::meta::verify_name(&pack.key(), pack.as_bytes(), &cipher).map_err(|e| e.to_string())?;
    let Some(reader) = reader else { return Ok(()) };
    let (reader, pack_id) = (reader.clone(), *pack);
    let index = repo.index().clone();
    let verified = tokio::task::spawn_blocking(move || {
        let plain = reader
            .open_pack(&pack_id, &cipher)
            .map_err(|e| e.to_string())?;
        let table = super::pack::read_table(&plain).map_err(|e| e.to_string())?;
        for blob in &table {
            reader
                .blob_in(&pack_id, &plain, blob)
                .map_err(|e| e.to_string())?;
            let indexed = index.get(&blob.id);
            if indexed.is_some_and(|l| l.pack == pack_id && l.blob != *blob) {
                return Err(format!("blob {} differs from its index entry", blob.id));
            }
        }
        Ok(table.len())
    })
    .await
    .map_err(|e| e.to_string())??;
    report.blobs_verified += verified;
    Ok(())
}

/// Reads every tree of a snapshot, noting which files use which blobs.
async fn walk_trees(
    reader: &BlobReader,
    label: &str,
    root: BlobId,
    users: &mut Users,
    report: &mut CheckReport,
) {
    let mut seen = HashSet::new();
    let mut trees: Subtrees = HashMap::new();
    let mut stack = vec![(root, String::new(), 0)];
    let mut missing: BTreeMap<String, usize> = BTreeMap::new();
    while let Some((tree_id, path, depth)) = stack.pop() {
        note_user(
            users,
            tree_id,
            label,
            if path.is_empty() { "/" } else { &path },
        );
        if !seen.insert(tree_id) {
            continue;
        }
        if depth > MAX_TREE_DEPTH {
            report.problem(
                format!("tree {tree_id}"),
                format!("it lies deeper than {MAX_TREE_DEPTH} directories"),
                vec![format!("{label}: {path}/")],
            );
            continue;
        }
        let tree: Tree = match reader.read_tree(&tree_id).await {
            Ok(tree) => tree,
            Err(e) => {
                report.problem(
                    format!("tree {tree_id}"),
                    e.to_string(),
                    vec![format!("{label}: {path}/")],
                );
                continue;
            }
        };
        report.trees += 1;
        let subtrees = tree
            .entries
            .iter()
            .filter_map(|node| node.subtree)
            .collect();
        trees.insert(tree_id, (tree.entries.len() as u64, subtrees));
        for node in &tree.entries {
            let child = format!("{path}/{}", node.name.display());
            match node.kind {
                NodeKind::Dir => {
                    if let Some(sub) = node.subtree {
                        stack.push((sub, child, depth + 1));
                    }
                }
                NodeKind::File => {
                    for blob in &node.content {
                        note_user(users, *blob, label, &child);
                        if !reader.index().contains(blob) {
                            *missing.entry(child.clone()).or_default() += 1;
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let walked = entries_walked(root, &trees);
    if walked > reader.tree_entry_limit() {
        report.problem(
            format!("tree {root}"),
            format!(
                "its trees name {walked} entries in all, more than a walk reads ({}): a \
                 subtree is repeated over and over",
                reader.tree_entry_limit()
            ),
            vec![format!("{label}: /")],
        );
    }
    for (path, count) in missing {
        report.problem(
            format!("file {path}"),
            format!("{count} of its blobs are in no index"),
            vec![format!("{label}: {path}")],
        );
    }
}

/// Each tree read: its number of entries and its subtrees.
type Subtrees = HashMap<BlobId, (u64, Vec<BlobId>)>;

/// How many entries a walk from `root` visits, each repeated subtree
/// counted every time it is named (saturating). Trees not in `trees` (not
/// readable) count nothing.
fn entries_walked(root: BlobId, trees: &Subtrees) -> u64 {
    let mut total: HashMap<BlobId, u64> = HashMap::new();
    let mut open = HashSet::new();
    let mut stack = vec![(root, false)];
    while let Some((id, children_done)) = stack.pop() {
        if total.contains_key(&id) {
            continue;
        }
        let Some((entries, subtrees)) = trees.get(&id) else {
            total.insert(id, 0);
            continue;
        };
        if children_done {
            let sum = subtrees.iter().fold(*entries, |sum, sub| {
                sum.saturating_add(total.get(sub).copied().unwrap_or(0))
            });
            total.insert(id, sum);
        } else if open.insert(id) {
            stack.push((id, true));
            stack.extend(subtrees.iter().map(|sub| (*sub, false)));
        }
    }
    total.get(&root).copied().unwrap_or(0)
}

fn note_user(users: &mut Users, blob: BlobId, label: &str, path: &str) {
    let list = users.entry(blob).or_default();
    if list.len() < 5 {
        list.push(format!("{label}: {path}"));
    }
}

#[cfg(test)]
mod tests;
