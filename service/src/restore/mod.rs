//! Turning snapshots back into data.
//!
//! [`files`] restores a snapshot's trees into a directory: the round trip of
//! folder and stream backups. Every blob read is verified against its id;
//! a damaged blob fails only the files that use it, and the error names them.

pub mod files;
pub mod kubernetes;

use std::path::PathBuf;

use crate::repo::RepoError;

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
    /// Some files could not be restored because their data is damaged or missing.
    #[error(
        "{} file(s) could not be restored because their data is damaged or missing: {}{}",
        .files.len(),
        .files.iter().take(20).cloned().collect::<Vec<_>>().join(", "),
        if .files.len() > 20 { ", …" } else { "" }
    )]
    Incomplete {
        /// The files, as paths in the snapshot.
        files: Vec<String>,
        /// The damage found.
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
