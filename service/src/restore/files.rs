//! Restoring trees into a directory.
//!
//! First the trees are read and every directory and special file is laid
//! out below the target ([`super::place`]: through directory descriptors,
//! never following a link), regular files are planned at their final size.
//! Then data is fetched pack by pack, a few packs at a time: a pack whose
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

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use rayon::prelude::*;
use rustix::io::Errno;
use serde::Serialize;
use tokio::task::JoinSet;

use super::RestoreError;
use super::place::{DirId, Dirs, ROOT};
use crate::errors::WorkerError;
use crate::repo::RepoError;
use crate::repo::id::{BlobId, PackId};
use crate::repo::pack::PackedBlob;
use crate::repo::reader::BlobReader;
use crate::repo::tree::{Node, NodeKind, Tree};

/// Packs fetched at the same time.
const PARALLEL_PACKS: usize = 2;

/// The setuid and setgid bits.
const SETID_BITS: u32 = 0o6000;

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

/// One regular file to fill: its directory, name and size.
struct PlannedFile {
    dir: DirId,
    name: Vec<u8>,
    shown: String,
    size: u64,
}

/// The files of a restore, created once (by whichever of the creator and
/// the first writer comes first) and then opened by directory and name.
struct Outputs {
    dirs: Dirs,
    files: Vec<PlannedFile>,
    created: Vec<OnceLock<Result<(), Errno>>>,
}

impl Outputs {
    /// Creates file `index` at its size unless done already.
    fn create(&self, index: usize) -> Result<(), RestoreError> {
        let file = &self.files[index];
        self.created[index]
            .get_or_init(|| self.dirs.create_file(file.dir, &file.name, file.size))
            .map_err(|e| RestoreError::Io {
                action: "creating",
                path: PathBuf::from(&file.shown),
                source: e.into(),
            })
    }
}

/// A place where a blob's plaintext goes.
#[derive(Clone, Copy)]
struct Slot {
    file: usize,
    offset: u64,
}

/// An entry other than a directory or symlink whose owner, mode and times
/// are set at the end.
struct Settle {
    dir: DirId,
    node: Node,
    mode: u32,
    shown: String,
}

impl Settle {
    fn io_error(&self, source: std::io::Error) -> RestoreError {
        RestoreError::Io {
            action: "setting metadata of",
            path: PathBuf::from(&self.shown),
            source,
        }
    }
}

struct Plan {
    dirs: Dirs,
    files: Vec<PlannedFile>,
    /// Files and special files, to settle after the data is written.
    settle: Vec<Settle>,
    /// Directories in the order they were made (parents first).
    dir_metadata: Vec<Settle>,
    /// Symlinks, made last: directory, node and shown path.
    symlinks: Vec<(DirId, Node, String)>,
    /// Hard links: directory, name, snapshot path of the first name, shown path.
    hardlinks: Vec<(DirId, Vec<u8>, Vec<u8>, String)>,
    slots: HashMap<BlobId, Vec<Slot>>,
    /// Snapshot path → planned file, for hard links.
    restored: HashMap<Vec<u8>, usize>,
    /// Whether existing files of the same names are replaced (`--force`).
    replace: bool,
    /// Whether setuid/setgid and devices are kept.
    keep_special: bool,
    /// Entries not restored (snapshot path, cause): data missing from every
    /// index, or refused as unsafe.
    failed: Vec<(String, String)>,
    report: RestoreReport,
}

/// Restores the snapshot tree `root`, or its entry at `path` (`/`-separated
/// snapshot path; empty for all), into `target`.
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
    if !options.force && target.exists() {
        let mut listing = std::fs::read_dir(target).map_err(RestoreError::io("listing", target))?;
        if listing.next().is_some() {
            return Err(RestoreError::TargetNotEmpty {
                target: target.into(),
            });
        }
    }
    std::fs::create_dir_all(target).map_err(RestoreError::io("creating", target))?;
    let dirs = Dirs::open_target(target).map_err(RestoreError::io("opening", target))?;

    let (start, snapshot_prefix) = locate(reader, root, path).await?;
    let mut plan = Plan {
        dirs,
        files: Vec::new(),
        settle: Vec::new(),
        dir_metadata: Vec::new(),
        symlinks: Vec::new(),
        hardlinks: Vec::new(),
        slots: HashMap::new(),
        restored: HashMap::new(),
        replace: options.force,
        keep_special: options.keep_special,
        failed: Vec::new(),
        report: RestoreReport::default(),
    };
    match start {
        Start::Tree(tree) => plan_tree(reader, tree, ROOT, &snapshot_prefix, &mut plan).await?,
        Start::Node(node) => {
            let dir = Tree {
                entries: vec![node],
            };
            let parent = snapshot_prefix
                .iter()
                .rposition(|&b| b == b'/')
                .map_or(&[][..], |at| &snapshot_prefix[..at]);
            plan_tree(reader, dir, ROOT, parent, &mut plan).await?;
        }
    }
    progress
        .bytes_total
        .store(plan.report.bytes, Ordering::Relaxed);

    let Plan {
        dirs,
        files,
        settle,
        dir_metadata,
        symlinks,
        hardlinks,
        slots,
        restored,
        failed: mut refused,
        mut report,
        ..
    } = plan;
    let outputs = Arc::new(Outputs {
        created: files.iter().map(|_| OnceLock::new()).collect(),
        dirs,
        files,
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
    let (fetched, created) =
        tokio::join!(fetch_data(reader, &outputs, &slots, &progress), creating);
    created.map_err(WorkerError::stopped("creating the restored files"))??;
    let mut failed = fetched?;
    failed.append(&mut refused);

    let dirs = &outputs.dirs;
    let as_root = nix::unistd::geteuid().is_root();
    for (dir, name, link, shown) in &hardlinks {
        let Some(&first) = restored.get(link) else {
            report.warnings.push(format!(
                "{shown}: its hard-link target {} is outside what was restored",
                String::from_utf8_lossy(link)
            ));
            continue;
        };
        let first = &outputs.files[first];
        if let Err(e) = dirs.hard_link((first.dir, &first.name), *dir, name) {
            failed.push((shown.clone(), format!("cannot link it: {e}")));
        }
    }
    let me = nix::unistd::getuid().as_raw();
    if !as_root && settle.iter().any(|s| s.node.uid != me) {
        report
            .warnings
            .push("owners were not restored: run as root to restore them".into());
    }
    for entry in &settle {
        dirs.set_metadata(
            entry.dir,
            Some(&entry.node.name.0),
            &entry.node,
            entry.mode,
            as_root,
        )
        .map_err(|e| entry.io_error(e))?;
    }
    for (dir, node, shown) in &symlinks {
        let target = node
            .target
            .as_ref()
            .map(|t| t.0.as_slice())
            .unwrap_or_default();
        if let Err(e) = dirs.symlink(*dir, &node.name.0, target, node, as_root) {
            failed.push((shown.clone(), format!("cannot make the symlink: {e}")));
        }
    }
    for entry in dir_metadata.iter().rev() {
        dirs.set_metadata(entry.dir, None, &entry.node, entry.mode, as_root)
            .map_err(|e| entry.io_error(e))?;
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

/// Lays out a tree and everything below it in directory `dir`.
async fn plan_tree(
    reader: &BlobReader,
    tree: Tree,
    dir: DirId,
    snapshot_dir: &[u8],
    plan: &mut Plan,
) -> Result<(), RestoreError> {
    let mut queue = vec![(tree, dir, snapshot_dir.to_owned())];
    while let Some((tree, dir, snapshot_dir)) = queue.pop() {
        for (sub, sub_dir, snapshot_path) in lay_out_entries(reader, tree, dir, &snapshot_dir, plan)
        {
            queue.push((reader.read_tree(&sub).await?, sub_dir, snapshot_path));
        }
    }
    Ok(())
}

/// Creates one directory's entries; returns its subdirectories to descend.
/// An entry that cannot be placed safely is refused (in `plan.failed`).
fn lay_out_entries(
    reader: &BlobReader,
    tree: Tree,
    dir: DirId,
    snapshot_dir: &[u8],
    plan: &mut Plan,
) -> Vec<(BlobId, DirId, Vec<u8>)> {
    let mut subdirs = Vec::new();
    let mut seen = HashSet::new();
    for node in tree.entries {
        let name = node.name.0.clone();
        if name.is_empty()
            || name.contains(&b'/')
            || name.contains(&0)
            || name == b"."
            || name == b".."
        {
            plan.report.warnings.push(format!(
                "skipped an entry with the unsafe name {:?}",
                node.name.display()
            ));
            continue;
        }
        let snapshot_path = [snapshot_dir, b"/", name.as_slice()].concat();
        let shown = String::from_utf8_lossy(&snapshot_path).into_owned();
        if !seen.insert(name.clone()) {
            plan.failed.push((
                shown,
                "refused: a second entry of the same name in its directory (the tree is damaged)"
                    .into(),
            ));
            continue;
        }
        let refuse = |plan: &mut Plan, e: std::io::Error| {
            plan.failed.push((shown.clone(), format!("refused: {e}")))
        };
        match node.kind {
            NodeKind::Dir => {
                let made = plan.dirs.make(dir, &name, plan.replace);
                let sub_dir = match made {
                    Ok(sub_dir) => sub_dir,
                    Err(e) => {
                        refuse(plan, e);
                        continue;
                    }
                };
                plan.report.dirs += 1;
                if let Some(sub) = node.subtree {
                    subdirs.push((sub, sub_dir, snapshot_path));
                }
                let mode = node.mode & 0o7777;
                plan.dir_metadata.push(Settle {
                    dir: sub_dir,
                    node,
                    mode,
                    shown,
                });
            }
            NodeKind::File => {
                if let Err(e) = plan.dirs.clear(dir, &name, plan.replace) {
                    refuse(plan, e);
                    continue;
                }
                let index = plan.files.len();
                let mut offset = 0;
                for blob in &node.content {
                    let Some(location) = reader.index().get(blob) else {
                        plan.failed.push((
                            shown.clone(),
                            RepoError::MissingBlob { id: *blob }.to_string(),
                        ));
                        break;
                    };
                    plan.slots.entry(*blob).or_default().push(Slot {
                        file: index,
                        offset,
                    });
                    offset += u64::from(location.blob.raw_length);
                }
                plan.files.push(PlannedFile {
                    dir,
                    name,
                    shown: shown.clone(),
                    size: node.size,
                });
                plan.restored.insert(snapshot_path, index);
                plan.report.files += 1;
                plan.report.bytes += node.size;
                let mode = allowed_mode(plan, &node, &shown);
                plan.settle.push(Settle {
                    dir,
                    node,
                    mode,
                    shown,
                });
            }
            NodeKind::Symlink => {
                if let Err(e) = plan.dirs.clear(dir, &name, plan.replace) {
                    refuse(plan, e);
                    continue;
                }
                plan.symlinks.push((dir, node, shown));
                plan.report.others += 1;
            }
            NodeKind::Hardlink => {
                if let Err(e) = plan.dirs.clear(dir, &name, plan.replace) {
                    refuse(plan, e);
                    continue;
                }
                if let Some(link) = &node.link {
                    plan.hardlinks.push((dir, name, link.0.clone(), shown));
                }
                plan.report.others += 1;
            }
            NodeKind::Fifo | NodeKind::Chardev | NodeKind::Blockdev => {
                if node.kind != NodeKind::Fifo && !plan.keep_special {
                    plan.report.special_dropped += 1;
                    plan.report.warnings.push(format!(
                        "{shown}: a device node, not restored (pass --keep-special to restore device nodes)"
                    ));
                    continue;
                }
                let made = plan
                    .dirs
                    .clear(dir, &name, plan.replace)
                    .and_then(|()| plan.dirs.make_special(dir, &name, &node));
                if let Err(e) = made {
                    plan.report
                        .warnings
                        .push(format!("{shown}: cannot create it: {e}"));
                    continue;
                }
                plan.report.others += 1;
                let mode = allowed_mode(plan, &node, &shown);
                plan.settle.push(Settle {
                    dir,
                    node,
                    mode,
                    shown,
                });
            }
        }
    }
    subdirs
}

/// The permission bits `node` is restored with: as stored with
/// `keep_special`, else without setuid/setgid (counted and warned).
fn allowed_mode(plan: &mut Plan, node: &Node, shown: &str) -> u32 {
    let mode = node.mode & 0o7777;
    if plan.keep_special || mode & SETID_BITS == 0 {
        return mode;
    }
    plan.report.special_dropped += 1;
    plan.report.warnings.push(format!(
        "{shown}: its setuid/setgid bits were cleared (pass --keep-special to keep them)"
    ));
    mode & !SETID_BITS
}

/// Fetches, verifies and writes every blob; returns the files that failed
/// (snapshot path, cause).
async fn fetch_data(
    reader: &BlobReader,
    outputs: &Arc<Outputs>,
    slots: &Arc<HashMap<BlobId, Vec<Slot>>>,
    progress: &Arc<RestoreProgress>,
) -> Result<Vec<(String, String)>, RestoreError> {
    let mut by_pack: HashMap<PackId, Vec<BlobId>> = HashMap::new();
    for blob in slots.keys() {
        if let Some(location) = reader.index().get(blob) {
            by_pack.entry(location.pack).or_default().push(*blob);
        }
    }
    let mut failed = Vec::new();
    let mut running = JoinSet::new();
    let mut packs = by_pack.into_iter();
    loop {
        while running.len() < PARALLEL_PACKS {
            let Some((pack, blobs)) = packs.next() else {
                break;
            };
            let (reader, outputs, slots, progress) = (
                reader.clone(),
                outputs.clone(),
                slots.clone(),
                progress.clone(),
            );
            running.spawn(async move {
                restore_pack(&reader, pack, blobs, &outputs, &slots, &progress).await
            });
        }
        let Some(done) = running.join_next().await else {
            break;
        };
        let outcome = done.map_err(WorkerError::stopped("restoring a pack"))?;
        for (blob, cause) in outcome? {
            for slot in slots.get(&blob).into_iter().flatten() {
                failed.push((outputs.files[slot.file].shown.clone(), cause.clone()));
            }
        }
    }
    Ok(failed)
}

/// Restores the blobs of one pack; returns the blobs that failed, with the cause.
async fn restore_pack(
    reader: &BlobReader,
    pack: PackId,
    blobs: Vec<BlobId>,
    outputs: &Arc<Outputs>,
    slots: &Arc<HashMap<BlobId, Vec<Slot>>>,
    progress: &Arc<RestoreProgress>,
) -> Result<Vec<(BlobId, String)>, RestoreError> {
    let index = reader.index();
    let wanted: Vec<PackedBlob> = blobs
        .iter()
        .filter_map(|b| index.get(b))
        .map(|l| l.blob)
        .collect();
    let needed: u64 = wanted.iter().map(|b| u64::from(b.length)).sum();
    let size = index.pack(&pack).map_or(0, |p| p.size);
    if needed * 4 >= size {
        let whole = match reader.fetch_pack(&pack).await {
            Ok(whole) => whole,
            Err(e) => return Ok(blobs.into_iter().map(|b| (b, e.to_string())).collect()),
        };
        let (stream_reader, stream_outputs, stream_slots, stream_progress) = (
            reader.clone(),
            outputs.clone(),
            slots.clone(),
            progress.clone(),
        );
        // Blobs are decrypted, verified and written one at a time as the
        // pack is read, so only its ciphertext and one blob are held. A
        // damaged 64 KiB segment stops the stream: the blobs from there on
        // are read blob by blob instead, which saves every blob outside it.
        let (mut failed, unread) = tokio::task::spawn_blocking(move || {
            let mut stream = stream_reader.stream_pack(&pack, &whole, wanted);
            let mut failed = Vec::new();
            while let Some((blob, data)) = stream.next_blob() {
                match data {
                    Ok(data) => write_slots(
                        &stream_outputs,
                        &stream_slots,
                        &blob,
                        data,
                        &stream_progress,
                    )?,
                    Err(e) => failed.push((blob, e.to_string())),
                }
            }
            Ok::<_, RestoreError>((failed, stream.unread()))
        })
        .await
        .map_err(WorkerError::stopped("streaming a pack"))??;
        if !unread.is_empty() {
            failed.extend(read_blob_by_blob(reader, pack, unread, outputs, slots, progress).await?);
        }
        return Ok(failed);
    }
    read_blob_by_blob(reader, pack, blobs, outputs, slots, progress).await
}

/// Restores blobs of one pack with ranged GETs of the segments that hold
/// them; returns the blobs that failed, with the cause.
async fn read_blob_by_blob(
    reader: &BlobReader,
    pack: PackId,
    blobs: Vec<BlobId>,
    outputs: &Arc<Outputs>,
    slots: &Arc<HashMap<BlobId, Vec<Slot>>>,
    progress: &Arc<RestoreProgress>,
) -> Result<Vec<(BlobId, String)>, RestoreError> {
    let mut failed = Vec::new();
    let read = match reader.read_many(&pack, &blobs).await {
        Ok(read) => read,
        Err(e) => return Ok(blobs.into_iter().map(|b| (b, e.to_string())).collect()),
    };
    for (blob, data) in read {
        match data {
            Ok(data) => {
                let (outputs, slots, progress) = (outputs.clone(), slots.clone(), progress.clone());
                tokio::task::spawn_blocking(move || {
                    write_slots(&outputs, &slots, &blob, &data, &progress)
                })
                .await
                .map_err(WorkerError::stopped("writing restored data"))??;
            }
            Err(e) => failed.push((blob, e.to_string())),
        }
    }
    Ok(failed)
}

/// Writes a blob's plaintext everywhere it belongs.
fn write_slots(
    outputs: &Outputs,
    slots: &HashMap<BlobId, Vec<Slot>>,
    blob: &BlobId,
    data: &[u8],
    progress: &RestoreProgress,
) -> Result<(), RestoreError> {
    for slot in slots.get(blob).into_iter().flatten() {
        outputs.create(slot.file)?;
        let planned = &outputs.files[slot.file];
        let io = |source| RestoreError::Io {
            action: "writing",
            path: PathBuf::from(&planned.shown),
            source,
        };
        let file = outputs
            .dirs
            .open_file(planned.dir, &planned.name)
            .map_err(io)?;
        file.write_all_at(data, slot.offset).map_err(io)?;
        progress
            .bytes_done
            .fetch_add(data.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}
