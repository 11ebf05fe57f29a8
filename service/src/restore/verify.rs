//! Checking restored files against the snapshot's tree: every file is
//! there, has the stored size, and each stretch of it hashes (keyed BLAKE3,
//! as at backup) to the blob id the tree lists. Symlinks point where they
//! pointed. This reads the files back from disk, so it proves what landed
//! there, not only what was fetched. It never follows a symlink: a
//! directory is entered only when `lstat` says it is one, a file opened with
//! `O_NOFOLLOW`. Device nodes are not expected: drills do not restore them.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use super::RestoreError;
use crate::errors::WorkerError;
use crate::repo::RepoError;
use crate::repo::id::BlobId;
use crate::repo::reader::{BlobReader, MAX_TREE_DEPTH};
use crate::repo::tree::{NodeKind, Tree};

/// What a check of restored files found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TreeCheck {
    /// Regular files checked.
    pub files: u64,
    /// Bytes read back and hashed.
    pub bytes: u64,
    /// Every difference, one sentence naming the snapshot path.
    pub problems: Vec<String>,
}

/// One file to check: where it is, where it was, and its blobs with lengths.
struct Expected {
    restored: PathBuf,
    shown: String,
    size: u64,
    blobs: Vec<(BlobId, u64)>,
}

/// Files read back at once at most: the tree is walked and its files
/// checked a batch at a time, so memory does not grow with their number.
const CHECK_BATCH: usize = 16_384;

/// A directory still to check: its tree, where it was restored, its
/// snapshot path and its depth.
type Pending = (BlobId, PathBuf, String, usize);

/// Checks the files restored under `restored` against the tree `tree`
/// (whose snapshot path is `shown_prefix`, for messages).
///
/// Fails only when a file's blob is in no index; every difference, and
/// every tree that does not read, is a problem in the result.
pub async fn check_restored(
    reader: &BlobReader,
    tree: Tree,
    shown_prefix: &str,
    restored: &Path,
) -> Result<TreeCheck, RestoreError> {
    let mut check = TreeCheck::default();
    let mut expected = Vec::new();
    let mut queue = Vec::new();
    let mut next = Some((tree, restored.to_owned(), shown_prefix.to_owned(), 0));
    loop {
        if let Some((tree, dir, shown_dir, depth)) = next.take() {
            let at = Place {
                dir: &dir,
                shown_dir: &shown_dir,
                depth,
            };
            check_entries(reader, tree, &at, &mut check, &mut expected, &mut queue)?;
        }
        if expected.len() >= CHECK_BATCH || (queue.is_empty() && !expected.is_empty()) {
            check_files(reader, std::mem::take(&mut expected), &mut check).await?;
        }
        let Some((sub, dir, shown, depth)) = queue.pop() else {
            break;
        };
        match reader.read_tree(&sub).await {
            Ok(subtree) => next = Some((subtree, dir, shown, depth)),
            Err(e) => check.problems.push(format!("{shown}/: {e}")),
        }
    }
    check.problems.sort();
    Ok(check)
}

/// Where a directory being checked lies.
struct Place<'a> {
    dir: &'a Path,
    shown_dir: &'a str,
    depth: usize,
}

/// Checks one directory's entries other than regular files, and lists its
/// files in `expected` and its subdirectories in `queue`.
fn check_entries(
    reader: &BlobReader,
    tree: Tree,
    at: &Place<'_>,
    check: &mut TreeCheck,
    expected: &mut Vec<Expected>,
    queue: &mut Vec<Pending>,
) -> Result<(), RestoreError> {
    for node in tree.entries {
        let path = at.dir.join(OsStr::from_bytes(&node.name.0));
        let shown = format!("{}/{}", at.shown_dir, node.name.display());
        match node.kind {
            NodeKind::Dir => {
                let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
                if !is_dir {
                    check.problems.push(format!("{shown}: directory missing"));
                } else if at.depth >= MAX_TREE_DEPTH {
                    check.problems.push(format!(
                        "{shown}/: lies deeper than {MAX_TREE_DEPTH} directories"
                    ));
                } else if let Some(sub) = node.subtree {
                    queue.push((sub, path, shown, at.depth + 1));
                }
            }
            NodeKind::File => {
                let mut blobs = Vec::with_capacity(node.content.len());
                for id in &node.content {
                    let length = reader
                        .index()
                        .get(id)
                        .map(|l| u64::from(l.blob.raw_length))
                        .ok_or(RepoError::MissingBlob { id: *id })?;
                    blobs.push((*id, length));
                }
                expected.push(Expected {
                    restored: path,
                    shown,
                    size: node.size,
                    blobs,
                });
            }
            NodeKind::Symlink => {
                let want = node
                    .target
                    .as_ref()
                    .map(|t| t.0.clone())
                    .unwrap_or_default();
                match std::fs::read_link(&path) {
                    Ok(got) if got.as_os_str().as_bytes() == want.as_slice() => {}
                    Ok(got) => check.problems.push(format!(
                        "{shown}: symlink points to {} instead of {}",
                        got.display(),
                        String::from_utf8_lossy(&want)
                    )),
                    Err(e) => check
                        .problems
                        .push(format!("{shown}: symlink missing ({e})")),
                }
            }
            NodeKind::Chardev | NodeKind::Blockdev => {}
            NodeKind::Hardlink | NodeKind::Fifo => {
                if std::fs::symlink_metadata(&path).is_err() {
                    check.problems.push(format!("{shown}: missing"));
                }
            }
        }
    }
    Ok(())
}

/// Reads a batch of restored files back, in parallel, and counts them.
async fn check_files(
    reader: &BlobReader,
    expected: Vec<Expected>,
    check: &mut TreeCheck,
) -> Result<(), RestoreError> {
    let reader = reader.clone();
    let outcomes = tokio::task::spawn_blocking(move || {
        expected
            .par_iter()
            .map(|file| (file.size, check_file(&reader, file)))
            .collect::<Vec<_>>()
    })
    .await
    .map_err(WorkerError::stopped("checking restored files"))?;
    for (size, outcome) in outcomes {
        check.files += 1;
        match outcome {
            Ok(()) => check.bytes += size,
            Err(problem) => check.problems.push(problem),
        }
    }
    Ok(())
}

/// Reads one restored file and compares it with its blobs.
fn check_file(reader: &BlobReader, file: &Expected) -> Result<(), String> {
    let shown = &file.shown;
    let mut input = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&file.restored)
        .map_err(|e| format!("{shown}: cannot be read back ({e})"))?;
    let actual = input
        .metadata()
        .map_err(|e| format!("{shown}: cannot be read back ({e})"))?
        .len();
    if actual != file.size {
        return Err(format!(
            "{shown}: {actual} bytes restored, the snapshot holds {}",
            file.size
        ));
    }
    let mut buffer = Vec::new();
    let mut offset = 0u64;
    for (id, length) in &file.blobs {
        buffer.resize(*length as usize, 0);
        input
            .read_exact(&mut buffer)
            .map_err(|e| format!("{shown}: short at byte {offset} ({e})"))?;
        if reader.blob_id(&buffer) != *id {
            return Err(format!(
                "{shown}: the bytes at {offset}..{} differ from the snapshot",
                offset + length
            ));
        }
        offset += length;
    }
    Ok(())
}
