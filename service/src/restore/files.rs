//! Restoring trees into a directory.
//!
//! First the trees are read and every directory, file (at its final size),
//! symlink and special file is laid out. Then data is fetched pack by pack,
//! a few packs at a time: a pack whose needed blobs make up much of it is
//! downloaded whole and decrypted as its blobs are read, otherwise each blob
//! is fetched with a ranged GET. Each blob is verified and written at its offsets in every
//! file that uses it. Last, hard links, owners, modes and times are set,
//! directories deepest first so their times stay as stored.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use filetime::FileTime;
use rayon::prelude::*;
use serde::Serialize;
use tokio::task::JoinSet;

use super::RestoreError;
use crate::repo::RepoError;
use crate::repo::id::{BlobId, PackId};
use crate::repo::pack::PackedBlob;
use crate::repo::reader::BlobReader;
use crate::repo::tree::{Node, NodeKind, Tree};

/// Packs fetched at the same time.
const PARALLEL_PACKS: usize = 2;

/// How to restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Restore into a non-empty target, replacing files of the same names.
    pub force: bool,
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
    /// Things that could not be restored as stored (e.g. owners when not root).
    pub warnings: Vec<String>,
}

/// One regular file to fill.
struct PlannedFile {
    path: PathBuf,
    shown: String,
    size: u64,
}

/// A place where a blob's plaintext goes.
#[derive(Clone, Copy)]
struct Slot {
    file: usize,
    offset: u64,
}

#[derive(Default)]
struct Plan {
    files: Vec<PlannedFile>,
    /// Entries whose metadata is set at the end; directories deepest last.
    metadata: Vec<(PathBuf, Node)>,
    hardlinks: Vec<(PathBuf, Vec<u8>)>,
    slots: HashMap<BlobId, Vec<Slot>>,
    /// Snapshot path → restored path, for hard links.
    restored: HashMap<Vec<u8>, PathBuf>,
    /// Whether existing files of the same names are replaced (`--force`).
    replace: bool,
    /// Files whose blobs are in no index, with the cause.
    missing: Vec<(String, String)>,
    report: RestoreReport,
}

/// Restores the snapshot tree `root`, or its entry at `path` (`/`-separated
/// snapshot path; empty for all), into `target`.
///
/// Fails when the path is not in the snapshot, the target is not empty
/// (without `force`), or the target cannot be written. Files whose data is
/// damaged are named in [`RestoreError::Incomplete`] after everything else
/// is restored.
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

    let (start, snapshot_prefix) = locate(reader, root, path).await?;
    let mut plan = Plan {
        replace: options.force,
        ..Plan::default()
    };
    match start {
        Start::Tree(tree) => plan_tree(reader, tree, target, &snapshot_prefix, &mut plan).await?,
        Start::Node(node) => {
            let dir = Tree {
                entries: vec![node],
            };
            let parent = snapshot_prefix
                .iter()
                .rposition(|&b| b == b'/')
                .map_or(&[][..], |at| &snapshot_prefix[..at]);
            lay_out(reader, dir, target, parent, &mut plan).await?;
        }
    }
    progress
        .bytes_total
        .store(plan.report.bytes, Ordering::Relaxed);

    // Files are created at their final size on the blocking pool while
    // data is already being fetched: a writer that comes first creates the
    // file itself, and neither side truncates what the other wrote.
    let sized: Vec<(PathBuf, u64)> = plan
        .files
        .iter()
        .map(|f| (f.path.clone(), f.size))
        .collect();
    let creating = tokio::task::spawn_blocking(move || {
        sized.par_iter().try_for_each(|(path, size)| {
            open_for_writing(path)
                .and_then(|file| file.set_len(*size))
                .map_err(RestoreError::io("creating", path))
        })
    });
    let (fetched, created) = tokio::join!(fetch_data(reader, &plan, &progress), creating);
    created.map_err(|e| RepoError::Upload(e.to_string()))??;
    let mut failed = fetched?;
    failed.append(&mut plan.missing);

    for (path, link) in &plan.hardlinks {
        match plan.restored.get(link) {
            Some(first) => {
                let _ = std::fs::remove_file(path);
                std::fs::hard_link(first, path).map_err(RestoreError::io("linking", path))?;
            }
            None => plan.report.warnings.push(format!(
                "{}: its hard-link target {} is outside what was restored",
                path.display(),
                String::from_utf8_lossy(link)
            )),
        }
    }
    let mut warnings = Vec::new();
    for (path, node) in plan.metadata.iter().rev() {
        set_metadata(path, node, &mut warnings)
            .map_err(RestoreError::io("setting metadata of", path))?;
    }
    plan.report.warnings.extend(warnings);

    if !failed.is_empty() {
        let (mut files, causes): (Vec<_>, Vec<_>) = failed.into_iter().unzip();
        files.sort();
        files.dedup();
        return Err(RestoreError::Incomplete { files, causes });
    }
    Ok(plan.report)
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

/// Lays out a tree and everything below it under `dir`.
async fn plan_tree(
    reader: &BlobReader,
    tree: Tree,
    dir: &Path,
    snapshot_dir: &[u8],
    plan: &mut Plan,
) -> Result<(), RestoreError> {
    let mut queue = vec![(tree, dir.to_owned(), snapshot_dir.to_owned())];
    while let Some((tree, dir, snapshot_dir)) = queue.pop() {
        for (sub, path, snapshot_path) in lay_out_entries(reader, tree, &dir, &snapshot_dir, plan)?
        {
            queue.push((reader.read_tree(&sub).await?, path, snapshot_path));
        }
    }
    Ok(())
}

async fn lay_out(
    reader: &BlobReader,
    tree: Tree,
    dir: &Path,
    snapshot_dir: &[u8],
    plan: &mut Plan,
) -> Result<(), RestoreError> {
    for (sub, path, snapshot_path) in lay_out_entries(reader, tree, dir, snapshot_dir, plan)? {
        let subtree = reader.read_tree(&sub).await?;
        plan_tree(reader, subtree, &path, &snapshot_path, plan).await?;
    }
    Ok(())
}

/// Creates one directory's entries; returns its subdirectories to descend.
fn lay_out_entries(
    reader: &BlobReader,
    tree: Tree,
    dir: &Path,
    snapshot_dir: &[u8],
    plan: &mut Plan,
) -> Result<Vec<(BlobId, PathBuf, Vec<u8>)>, RestoreError> {
    let mut subdirs = Vec::new();
    for node in tree.entries {
        if node.name.0.is_empty()
            || node.name.0.contains(&b'/')
            || node.name.0 == b"."
            || node.name.0 == b".."
        {
            plan.report.warnings.push(format!(
                "skipped an entry with the unsafe name {:?}",
                node.name.display()
            ));
            continue;
        }
        let path = dir.join(OsStr::from_bytes(&node.name.0));
        let snapshot_path = [snapshot_dir, b"/", node.name.0.as_slice()].concat();
        let shown = String::from_utf8_lossy(&snapshot_path).into_owned();
        match node.kind {
            NodeKind::Dir => {
                match std::fs::create_dir(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                        return Err(RestoreError::io("creating", &path)(e));
                    }
                    _ => {}
                }
                plan.report.dirs += 1;
                if let Some(sub) = node.subtree {
                    subdirs.push((sub, path.clone(), snapshot_path));
                }
            }
            NodeKind::File => {
                if plan.replace {
                    let _ = std::fs::remove_file(&path);
                }
                let index = plan.files.len();
                let mut offset = 0;
                for blob in &node.content {
                    let Some(location) = reader.index().get(blob) else {
                        plan.missing.push((
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
                    path: path.clone(),
                    shown,
                    size: node.size,
                });
                plan.restored.insert(snapshot_path, path.clone());
                plan.report.files += 1;
                plan.report.bytes += node.size;
            }
            NodeKind::Symlink => {
                let _ = std::fs::remove_file(&path);
                let target = node
                    .target
                    .as_ref()
                    .map(|t| t.0.clone())
                    .unwrap_or_default();
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(RestoreError::io("linking", &path))?;
                plan.report.others += 1;
            }
            NodeKind::Hardlink => {
                if let Some(link) = &node.link {
                    plan.hardlinks.push((path.clone(), link.0.clone()));
                }
                plan.report.others += 1;
                continue;
            }
            NodeKind::Fifo | NodeKind::Chardev | NodeKind::Blockdev => {
                let _ = std::fs::remove_file(&path);
                if let Err(e) = make_special(&path, &node) {
                    plan.report
                        .warnings
                        .push(format!("{}: cannot create it: {e}", path.display()));
                    continue;
                }
                plan.report.others += 1;
            }
        }
        plan.metadata.push((path, node));
    }
    Ok(subdirs)
}

/// Fetches, verifies and writes every blob; returns the files that failed
/// (snapshot path, cause).
async fn fetch_data(
    reader: &BlobReader,
    plan: &Plan,
    progress: &Arc<RestoreProgress>,
) -> Result<Vec<(String, String)>, RestoreError> {
    let mut by_pack: HashMap<PackId, Vec<BlobId>> = HashMap::new();
    for blob in plan.slots.keys() {
        if let Some(location) = reader.index().get(blob) {
            by_pack.entry(location.pack).or_default().push(*blob);
        }
    }
    let paths: Arc<Vec<PathBuf>> = Arc::new(plan.files.iter().map(|f| f.path.clone()).collect());
    let slots = Arc::new(plan.slots.clone());
    let mut failed = Vec::new();
    let mut running = JoinSet::new();
    let mut packs = by_pack.into_iter();
    loop {
        while running.len() < PARALLEL_PACKS {
            let Some((pack, blobs)) = packs.next() else {
                break;
            };
            let (reader, paths, slots, progress) = (
                reader.clone(),
                paths.clone(),
                slots.clone(),
                progress.clone(),
            );
            running.spawn(async move {
                restore_pack(&reader, pack, blobs, &paths, &slots, &progress).await
            });
        }
        let Some(done) = running.join_next().await else {
            break;
        };
        let outcome = done.map_err(|e| RepoError::Upload(e.to_string()))?;
        for (blob, cause) in outcome? {
            for slot in slots.get(&blob).into_iter().flatten() {
                failed.push((plan.files[slot.file].shown.clone(), cause.clone()));
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
    paths: &Arc<Vec<PathBuf>>,
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
        let (stream_reader, stream_paths, stream_slots, stream_progress) = (
            reader.clone(),
            paths.clone(),
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
                    Ok(data) => {
                        write_slots(&stream_paths, &stream_slots, &blob, data, &stream_progress)?
                    }
                    Err(e) => failed.push((blob, e.to_string())),
                }
            }
            Ok::<_, RestoreError>((failed, stream.unread()))
        })
        .await
        .map_err(|e| RepoError::Upload(e.to_string()))??;
        if !unread.is_empty() {
            failed.extend(read_blob_by_blob(reader, pack, unread, paths, slots, progress).await?);
        }
        return Ok(failed);
    }
    read_blob_by_blob(reader, pack, blobs, paths, slots, progress).await
}

/// Restores blobs of one pack with ranged GETs of the segments that hold
/// them; returns the blobs that failed, with the cause.
async fn read_blob_by_blob(
    reader: &BlobReader,
    pack: PackId,
    blobs: Vec<BlobId>,
    paths: &Arc<Vec<PathBuf>>,
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
                let (paths, slots, progress) = (paths.clone(), slots.clone(), progress.clone());
                tokio::task::spawn_blocking(move || {
                    write_slots(&paths, &slots, &blob, &data, &progress)
                })
                .await
                .map_err(|e| RepoError::Upload(e.to_string()))??;
            }
            Err(e) => failed.push((blob, e.to_string())),
        }
    }
    Ok(failed)
}

/// Writes a blob's plaintext everywhere it belongs.
fn write_slots(
    paths: &[PathBuf],
    slots: &HashMap<BlobId, Vec<Slot>>,
    blob: &BlobId,
    data: &[u8],
    progress: &RestoreProgress,
) -> Result<(), RestoreError> {
    for slot in slots.get(blob).into_iter().flatten() {
        let path = &paths[slot.file];
        let io = |source| RestoreError::Io {
            action: "writing",
            path: path.clone(),
            source,
        };
        let file = open_for_writing(path).map_err(io)?;
        file.write_all_at(data, slot.offset).map_err(io)?;
        progress
            .bytes_done
            .fetch_add(data.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// Opens a restored file for writing, creating it if needed, never
/// truncating it.
fn open_for_writing(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// Creates a FIFO or device node.
fn make_special(path: &Path, node: &Node) -> nix::Result<()> {
    use nix::sys::stat::{Mode, SFlag, mknod};
    let mode = Mode::from_bits_truncate(node.mode & 0o7777);
    let kind = match node.kind {
        NodeKind::Fifo => SFlag::S_IFIFO,
        NodeKind::Chardev => SFlag::S_IFCHR,
        _ => SFlag::S_IFBLK,
    };
    mknod(path, kind, mode, node.rdev.unwrap_or(0))
}

/// Sets owner, mode and times of a restored entry. Owners are set only when
/// running as root; elsewhere a differing owner is noted once.
fn set_metadata(path: &Path, node: &Node, warnings: &mut Vec<String>) -> std::io::Result<()> {
    let mtime = FileTime::from_unix_time(node.mtime, node.mtime_nsec);
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::lchown(path, Some(node.uid), Some(node.gid))?;
    } else if warnings.is_empty() && (node.uid != nix::unistd::getuid().as_raw()) {
        warnings.push("owners were not restored: run as root to restore them".into());
    }
    if node.kind != NodeKind::Symlink {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(node.mode))?;
    }
    // By path, never by opening the entry: opening a FIFO would block.
    filetime::set_symlink_file_times(path, mtime, mtime)
}
