//! Restoring trees into a directory.
//!
//! A batch at a time (at most 262,144 files), the trees are read and every
//! directory and special file is laid out below the target
//! ([`super::place`]: through directory descriptors, never following a
//! link), regular files are planned at their final size, and then the
//! batch's data is fetched pack by pack, a few packs at a time: a pack whose
//! needed blobs make up much of it is downloaded whole and decrypted as its
//! blobs are read, otherwise each blob is fetched with a ranged GET. Each
//! blob is verified and written at its offsets in every file that uses it.
//! Last, hard links, owners, modes and times are set, then symlinks are
//! made (so nothing is ever written through one), then directories'
//! metadata, deepest first so their times stay as stored.
//!
//! The tree is untrusted: an entry whose name is unsafe or repeated, or that
//! cannot be placed without replacing or following something, is refused
//! and named in [`RestoreError::Incomplete`] while the rest is restored.
//! setuid/setgid bits and device nodes are restored only with
//! [`RestoreOptions::keep_special`].
//!
//! This module holds the entry point, its options and report, and the
//! plan both phases share; `plan` lays out the trees and plans which blobs
//! go where (`slots`), `fetch` fetches the packs and writes the blobs into
//! the files.

mod fetch;
mod plan;
mod slots;
#[cfg(test)]
mod tests;

use fetch::{Pace, fetch_data};
use plan::{lay_out_entries, plan_batch};
use slots::{Slot, Slots};

use std::collections::HashMap;
use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use rayon::prelude::*;
use rustix::io::Errno;
use serde::Serialize;

use super::RestoreError;
use super::place::{DirId, Dirs, ROOT, Stamp, set_opened_metadata};
use crate::errors::WorkerError;
use crate::repo::id::BlobId;
use crate::repo::reader::BlobReader;
use crate::repo::tree::{Node, NodeKind, Tree};

/// How to restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Restore into a non-empty target, replacing files of the same names.
    pub force: bool,
    /// Restore setuid/setgid bits and device nodes as stored
    /// (`--keep-special`). Without it the bits are cleared and device
    /// nodes skipped, each counted in [`RestoreReport::special_dropped`].
    pub keep_special: bool,
}

/// Live counters a progress display can poll.
#[derive(Debug, Default)]
pub struct RestoreProgress {
    /// Bytes of file data to write in all.
    pub bytes_total: Arc<AtomicU64>,
    /// Bytes written so far.
    pub bytes_done: Arc<AtomicU64>,
}

/// What a restore did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreReport {
    /// Regular files restored.
    pub files: u64,
    /// Directories restored.
    pub dirs: u64,
    /// Symlinks, hard links and special files restored.
    pub others: u64,
    /// Bytes of file data written.
    pub bytes: u64,
    /// Files whose setuid/setgid bits were cleared and device nodes
    /// skipped, because [`RestoreOptions::keep_special`] was not given.
    pub special_dropped: u64,
    /// Things that could not be restored as stored (e.g. owners when not root).
    pub warnings: Vec<String>,
}

/// One regular file to fill at its size, then settle (owner, mode, times):
/// about 60 bytes and its name, where its node and snapshot path took about
/// 350.
struct PlannedFile {
    dir: DirId,
    name: Box<[u8]>,
    size: u64,
    stamp: Stamp,
}

/// The files of a restore, created once (by whichever of the creator and
/// the first writer comes first) and then opened by directory and name.
/// Each file is settled as soon as its data is complete, by the writer of
/// its last slot (or its creator when it has none), through the descriptor
/// that wrote it.
struct Outputs {
    dirs: Arc<Dirs>,
    /// The snapshot path of the target's directory, for messages.
    snapshot_root: Vec<u8>,
    files: Vec<PlannedFile>,
    /// Per file, what failed in creating or settling it, if anything.
    created: Vec<OnceLock<Result<(), MakeFailed>>>,
    /// Per file, the slots still to write.
    unwritten: Vec<AtomicUsize>,
    as_root: bool,
}

impl Outputs {
    /// Creates file `index` at its size unless done already; a file
    /// without data is settled right away.
    fn create(&self, index: usize) -> Result<(), RestoreError> {
        let file = &self.files[index];
        self.created[index]
            .get_or_init(|| {
                let opened = self
                    .dirs
                    .create_file(file.dir, &file.name, file.size)
                    .map_err(MakeFailed::Creating)?;
                if self.unwritten[index].load(Ordering::Acquire) == 0 {
                    self.settle(index, &opened).map_err(|e| {
                        MakeFailed::Settling(Errno::from_io_error(&e).unwrap_or(Errno::IO))
                    })?;
                }
                Ok(())
            })
            .map_err(|failed| {
                let (action, errno) = match failed {
                    MakeFailed::Creating(errno) => ("creating", errno),
                    MakeFailed::Settling(errno) => ("setting metadata of", errno),
                };
                self.io_error(index, action, errno.into())
            })
    }

    /// Counts one slot of file `index` written through `opened`; after the
    /// last one, settles the file.
    fn wrote_slot(&self, index: usize, opened: &File) -> Result<(), RestoreError> {
        if self.unwritten[index].fetch_sub(1, Ordering::AcqRel) == 1 {
            self.settle(index, opened)
                .map_err(|e| self.io_error(index, "setting metadata of", e))?;
        }
        Ok(())
    }

    fn settle(&self, index: usize, opened: &File) -> std::io::Result<()> {
        set_opened_metadata(opened, &self.files[index].stamp, self.as_root)
    }

    /// Settles file `index` by its name, when its data did not all arrive.
    fn settle_by_name(&self, index: usize) -> Result<(), RestoreError> {
        let file = &self.files[index];
        self.dirs
            .set_metadata(
                file.dir,
                Some(&file.name),
                NodeKind::File,
                &file.stamp,
                self.as_root,
            )
            .map_err(|e| self.io_error(index, "setting metadata of", e))
    }

    /// The snapshot path of file `index`, for messages.
    fn shown(&self, index: usize) -> String {
        let file = &self.files[index];
        let dir = self.dirs.relative_path(file.dir);
        let path = [&self.snapshot_root[..], &dir, b"/", &file.name].concat();
        String::from_utf8_lossy(&path).into_owned()
    }

    fn io_error(&self, index: usize, action: &'static str, source: std::io::Error) -> RestoreError {
        RestoreError::Io {
            action,
            path: PathBuf::from(self.shown(index)),
            source,
        }
    }
}

/// The step of making a file that failed, and how: 8 bytes a file of a
/// batch, where the step's name would take 24.
#[derive(Debug, Clone, Copy)]
enum MakeFailed {
    Creating(Errno),
    Settling(Errno),
}
const _: () = assert!(size_of::<OnceLock<Result<(), MakeFailed>>>() <= 12);

/// A special file whose owner, mode and times are set at the end.
struct Settle {
    dir: DirId,
    name: Vec<u8>,
    kind: NodeKind,
    stamp: Stamp,
    shown: String,
}

impl Settle {
    /// Sets the entry's owner, mode and times by its name in its directory.
    fn settle_by_name(&self, dirs: &Dirs, as_root: bool) -> Result<(), RestoreError> {
        dirs.set_metadata(self.dir, Some(&self.name), self.kind, &self.stamp, as_root)
            .map_err(|source| settling_failed(&self.shown, source))
    }
}

/// The error for an entry at `shown` whose owner, mode or times could not
/// be set.
fn settling_failed(shown: &str, source: std::io::Error) -> RestoreError {
    RestoreError::Io {
        action: "setting metadata of",
        path: PathBuf::from(shown),
        source,
    }
}

/// How much one batch plans at most: a batch is laid out, then its data
/// is fetched and written, then the next is laid out, so a restore's
/// memory does not grow with the number of files (about 200 bytes a
/// planned file of one blob).
#[derive(Debug, Clone, Copy)]
struct BatchLimits {
    files: usize,
    /// Blob slots (a slot is where one blob's plaintext goes).
    slots: usize,
}

/// 262,144 files or blob slots (about 50 MB of plan at most). A pack whose
/// blobs two batches need is read in part by each, with ranged GETs, and
/// the archiver stores folders side by side in packs, so most packs span
/// batch boundaries: a drill of 10 GiB of mixed files (67,000 files)
/// through a 40 ms store sent 3,434 requests in batches of 65,536 files
/// and 480 in one. Trees of up to this many files restore in one batch.
const BATCH: BatchLimits = BatchLimits {
    files: 262_144,
    slots: 262_144,
};

struct Plan {
    limits: BatchLimits,
    dirs: Arc<Dirs>,
    /// The snapshot path of the target's directory.
    snapshot_root: Vec<u8>,
    /// The files of the batch.
    files: Vec<PlannedFile>,
    /// Where each blob of the batch goes.
    slots: Vec<(BlobId, Slot)>,
    /// Special files, to settle at the end.
    settle: Vec<Settle>,
    /// Directories in the order they were made (parents first), with
    /// their metadata and shown path.
    dir_metadata: Vec<(DirId, Stamp, String)>,
    /// Symlinks, made last: directory, node and shown path.
    symlinks: Vec<(DirId, Node, String)>,
    /// Hard links: directory, name, snapshot path of the first name, shown path.
    hardlinks: Vec<(DirId, Vec<u8>, Vec<u8>, String)>,
    /// The directories made, by snapshot path, for hard links.
    dir_paths: HashMap<Vec<u8>, DirId>,
    /// The snapshot paths of the regular files restored, hashed (8 bytes a
    /// file, with a seed chosen at random), for hard links: looked up only
    /// once every file is planned, so a list sorted then, where a hash set
    /// took 19 bytes a file.
    restored: Vec<u64>,
    path_hasher: RandomState,
    /// Whether existing files of the same names are replaced (`--force`).
    replace: bool,
    /// Whether setuid/setgid and devices are kept.
    keep_special: bool,
    /// The user running the restore, and whether some entry is owned by
    /// another.
    me: u32,
    foreign_owner: bool,
    /// Entries not restored (snapshot path, cause): data missing from every
    /// index, or refused as unsafe.
    failed: Vec<(String, String)>,
    report: RestoreReport,
}

impl Plan {
    fn new(
        dirs: Dirs,
        snapshot_root: Vec<u8>,
        options: &RestoreOptions,
        limits: BatchLimits,
    ) -> Self {
        let mut dir_paths = HashMap::new();
        dir_paths.insert(snapshot_root.clone(), ROOT);
        Self {
            limits,
            dirs: Arc::new(dirs),
            snapshot_root,
            files: Vec::new(),
            slots: Vec::new(),
            settle: Vec::new(),
            dir_metadata: Vec::new(),
            symlinks: Vec::new(),
            hardlinks: Vec::new(),
            dir_paths,
            restored: Vec::new(),
            path_hasher: RandomState::new(),
            replace: options.force,
            keep_special: options.keep_special,
            me: nix::unistd::getuid().as_raw(),
            foreign_owner: false,
            failed: Vec::new(),
            report: RestoreReport::default(),
        }
    }

    fn batch_full(&self) -> bool {
        self.files.len() >= self.limits.files || self.slots.len() >= self.limits.slots
    }

    /// Whether the batch takes the files of `tree`: within its limits, or
    /// as its first.
    fn takes(&self, tree: &Tree) -> bool {
        let files = tree
            .entries
            .iter()
            .filter(|node| node.kind == NodeKind::File);
        let (count, blobs) = files.fold((0, 0), |(count, blobs), node| {
            (count + 1, blobs + node.content.len())
        });
        (self.files.is_empty() && self.slots.is_empty())
            || (self.files.len() + count <= self.limits.files
                && self.slots.len() + blobs <= self.limits.slots)
    }

    /// Records that the regular file at `snapshot_path` is restored.
    fn note_restored(&mut self, snapshot_path: &[u8]) {
        self.restored.push(self.path_hasher.hash_one(snapshot_path));
    }

    /// The directory and name of the restored regular file at
    /// `snapshot_path`, if this restore made it. Every file is planned by
    /// now, and [`Plan::restored`] sorted.
    fn restored_file<'a>(&self, snapshot_path: &'a [u8]) -> Option<(DirId, &'a [u8])> {
        self.restored
            .binary_search(&self.path_hasher.hash_one(snapshot_path))
            .ok()?;
        let at = snapshot_path.iter().rposition(|&b| b == b'/')?;
        let dir = *self.dir_paths.get(&snapshot_path[..at])?;
        Some((dir, &snapshot_path[at + 1..]))
    }
}

/// Restores the snapshot tree `root`, or its entry at `path` (`/`-separated
/// snapshot path; empty for all), into `target`.
///
/// Directories are laid out and files planned a batch at a time, and each
/// batch's data is fetched and written before the next is planned.
///
/// Fails when the path is not in the snapshot, the target is not empty
/// (without `force`), or the target cannot be written. Entries whose data
/// is damaged, or that are refused as unsafe (a repeated name, something in
/// the way that `force` does not replace), are named in
/// [`RestoreError::Incomplete`] after everything else is restored.
pub async fn restore(
    reader: &BlobReader,
    root: BlobId,
    path: &str,
    target: &Path,
    options: &RestoreOptions,
    progress: Arc<RestoreProgress>,
) -> Result<RestoreReport, RestoreError> {
    restore_in_batches(reader, root, path, target, options, progress, BATCH).await
}

/// [`restore`] with batches of at most `limits`.
async fn restore_in_batches(
    reader: &BlobReader,
    root: BlobId,
    path: &str,
    target: &Path,
    options: &RestoreOptions,
    progress: Arc<RestoreProgress>,
    limits: BatchLimits,
) -> Result<RestoreReport, RestoreError> {
    if !options.force && target.exists() {
        // A fresh ext4 filesystem (a new claim's volume) holds an empty
        // `lost+found`: that counts as empty.
        let listing = std::fs::read_dir(target).map_err(RestoreError::io("listing", target))?;
        for entry in listing {
            let entry = entry.map_err(RestoreError::io("listing", target))?;
            let empty_lost_found = entry.file_name() == "lost+found"
                && entry.file_type().is_ok_and(|t| t.is_dir())
                && std::fs::read_dir(entry.path()).is_ok_and(|mut d| d.next().is_none());
            if !empty_lost_found {
                return Err(RestoreError::TargetNotEmpty {
                    target: target.into(),
                });
            }
        }
    }
    std::fs::create_dir_all(target).map_err(RestoreError::io("creating", target))?;
    let dirs = Dirs::open_target(target).map_err(RestoreError::io("opening", target))?;

    let (start, snapshot_prefix) = locate(reader, root, path).await?;
    let (tree, snapshot_dir) = match start {
        Start::Tree(tree) => (tree, snapshot_prefix),
        Start::Node(node) => {
            let parent = snapshot_prefix
                .iter()
                .rposition(|&b| b == b'/')
                .map_or(&[][..], |at| &snapshot_prefix[..at]);
            let tree = Tree {
                entries: vec![node],
            };
            (tree, parent.to_vec())
        }
    };
    let mut plan = Plan::new(dirs, snapshot_dir.clone(), options, limits);
    let mut queue = lay_out_entries(reader, tree, ROOT, &snapshot_dir, &mut plan);
    let as_root = nix::unistd::geteuid().is_root();
    let mut pace = Pace::default();
    let mut failed = Vec::new();
    loop {
        plan_batch(reader, &mut queue, &mut plan).await?;
        progress
            .bytes_total
            .store(plan.report.bytes, Ordering::Relaxed);
        failed.append(&mut write_batch(reader, &mut plan, &mut pace, &progress, as_root).await?);
        if queue.is_empty() {
            break;
        }
    }
    finish(plan, failed, as_root)
}

/// Creates the batch's files, fetches and writes their data, and settles
/// those whose data did not all arrive; returns what failed.
async fn write_batch(
    reader: &BlobReader,
    plan: &mut Plan,
    pace: &mut Pace,
    progress: &Arc<RestoreProgress>,
    as_root: bool,
) -> Result<Vec<(String, String)>, RestoreError> {
    let files = std::mem::take(&mut plan.files);
    let slots = Slots::new(std::mem::take(&mut plan.slots));
    let mut slot_counts = vec![0; files.len()];
    for slot in slots.all() {
        slot_counts[slot.file] += 1;
    }
    let outputs = Arc::new(Outputs {
        created: files.iter().map(|_| OnceLock::new()).collect(),
        unwritten: slot_counts.into_iter().map(AtomicUsize::new).collect(),
        dirs: plan.dirs.clone(),
        snapshot_root: plan.snapshot_root.clone(),
        files,
        as_root,
    });
    // Files are created at their final size on the blocking pool while
    // data is already being fetched: a writer that comes first creates the
    // file itself, and each file is created exactly once.
    let creating = {
        let outputs = outputs.clone();
        tokio::task::spawn_blocking(move || {
            (0..outputs.files.len())
                .into_par_iter()
                .try_for_each(|index| outputs.create(index))
        })
    };
    let slots = Arc::new(slots);
    let (fetched, created) = tokio::join!(
        fetch_data(reader, &outputs, &slots, progress, pace),
        creating
    );
    created.map_err(WorkerError::stopped("creating the restored files"))??;
    let failed = fetched?;

    // Files whose data did not all arrive are settled as they are.
    for (index, unwritten) in outputs.unwritten.iter().enumerate() {
        if unwritten.load(Ordering::Acquire) > 0 {
            outputs.settle_by_name(index)?;
        }
    }
    Ok(failed)
}

/// Makes the hard links, settles special files, makes the symlinks and
/// sets the directories' metadata, deepest first.
fn finish(
    mut plan: Plan,
    mut failed: Vec<(String, String)>,
    as_root: bool,
) -> Result<RestoreReport, RestoreError> {
    let mut report = std::mem::take(&mut plan.report);
    failed.append(&mut plan.failed);
    if !as_root && plan.foreign_owner {
        report
            .warnings
            .push("owners were not restored: run as root to restore them".into());
    }
    plan.restored.sort_unstable();
    let dirs = &plan.dirs;
    for (dir, name, link, shown) in &plan.hardlinks {
        let Some(first) = plan.restored_file(link) else {
            report.warnings.push(format!(
                "{shown}: its hard-link target {} is outside what was restored",
                String::from_utf8_lossy(link)
            ));
            continue;
        };
        if let Err(e) = dirs.hard_link(first, *dir, name) {
            failed.push((shown.clone(), format!("cannot link it: {e}")));
        }
    }
    for entry in &plan.settle {
        entry.settle_by_name(dirs, as_root)?;
    }
    for (dir, node, shown) in &plan.symlinks {
        let target = node
            .target
            .as_ref()
            .map(|t| t.0.as_slice())
            .unwrap_or_default();
        let stamp = Stamp::new(node, node.mode);
        if let Err(e) = dirs.symlink(*dir, &node.name.0, target, &stamp, as_root) {
            failed.push((shown.clone(), format!("cannot make the symlink: {e}")));
        }
    }
    for (dir, stamp, shown) in plan.dir_metadata.iter().rev() {
        dirs.set_metadata(*dir, None, NodeKind::Dir, stamp, as_root)
            .map_err(|source| settling_failed(shown, source))?;
    }

    if !failed.is_empty() {
        let (mut files, causes): (Vec<_>, Vec<_>) = failed.into_iter().unzip();
        files.sort();
        files.dedup();
        return Err(RestoreError::Incomplete { files, causes });
    }
    Ok(report)
}

enum Start {
    Tree(Tree),
    Node(Node),
}

/// Finds the tree or node at `path`, and its snapshot path.
async fn locate(
    reader: &BlobReader,
    root: BlobId,
    path: &str,
) -> Result<(Start, Vec<u8>), RestoreError> {
    let mut tree = reader.read_tree(&root).await?;
    let mut at = Vec::new();
    let mut parts = path.split('/').filter(|p| !p.is_empty()).peekable();
    while let Some(part) = parts.next() {
        let missing = || RestoreError::NoSuchPath { path: path.into() };
        let node = tree.get(part.as_bytes()).cloned().ok_or_else(missing)?;
        at.push(b'/');
        at.extend_from_slice(part.as_bytes());
        match (node.kind, node.subtree) {
            (NodeKind::Dir, Some(sub)) => tree = reader.read_tree(&sub).await?,
            _ if parts.peek().is_none() => return Ok((Start::Node(node), at)),
            _ => return Err(missing()),
        }
    }
    Ok((Start::Tree(tree), at))
}
