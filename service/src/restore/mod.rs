//! Turning snapshots back into data.
//!
//! [`files`] restores a snapshot's trees into a directory: the round trip of
//! folder and stream backups, writing only below its target through
//! directory descriptors ([`place`]). Every blob read is verified against
//! its id; a damaged blob fails only the files that use it, and the error
//! names them. [`in_place`] checks the host paths a snapshot names.
//! Each source kind's own restore is in its module (`crate::sources::*::
//! restore`), built on these. [`contents`] reads a snapshot's small files
//! into memory, [`verify`] compares restored files with the tree.

pub mod contents;
pub mod files;
pub mod in_place;
mod place;
pub mod verify;

use std::path::PathBuf;

use crate::repo::RepoError;
use crate::repo::snapshot::SourceKind;

/// What can go wrong in a restore.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The path asked for is not in the snapshot.
    #[error("{path:?} is not in the snapshot; list its contents with `lifeboat ls`")]
    NoSuchPath {
        /// The path asked for.
        path: String,
    },
    /// The target holds files already.
    #[error("{target} is not empty; restore into an empty or new directory, or pass --force")]
    TargetNotEmpty {
        /// The target.
        target: PathBuf,
    },
    /// Writing the target failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A program lifeboat runs (etcdutl, etcd, pg_restore, psql) failed.
    #[error("{program} failed: {message}; {fix}")]
    Tool {
        /// The program.
        program: String,
        /// Its error text.
        message: String,
        /// What to do about it.
        fix: String,
    },
    /// The snapshot is not of the kind this restore needs, or lacks a file it should hold.
    #[error("snapshot of kind \"{kind}\": {message}")]
    WrongSnapshot {
        /// The snapshot's source kind.
        kind: SourceKind,
        /// What is wrong, and the fix.
        message: String,
    },
    /// A worker task failed because code panicked.
    #[error(transparent)]
    Worker(#[from] crate::errors::WorkerError),
    /// A host path from the snapshot was refused.
    #[error(transparent)]
    HostPath(#[from] in_place::HostPathError),
    /// Some entries could not be restored because their data is damaged or
    /// missing, or because they were refused as unsafe (the first cause is
    /// shown).
    #[error(
        "{} file(s) could not be restored because their data is damaged or missing or they were refused as unsafe: {}{} (first cause: {})",
        .files.len(),
        .files.iter().take(20).cloned().collect::<Vec<_>>().join(", "),
        if .files.len() > 20 { ", …" } else { "" },
        .causes.first().map_or("", String::as_str)
    )]
    Incomplete {
        /// The entries, as paths in the snapshot.
        files: Vec<String>,
        /// The damage or refusal found.
        causes: Vec<String>,
    },
}

impl RestoreError {
    /// A mapper of I/O errors while doing `action` to `path`.
    pub(crate) fn io<'a>(
        action: &'static str,
        path: &'a std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Self + 'a {
        move |source| Self::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}
