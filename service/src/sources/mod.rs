//! What is backed up. Each source kind has its own settings and knows how
//! to feed a [`SnapshotBuilder`](crate::backup::SnapshotBuilder).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::backup::files::Folder;

/// A job's `source` table, by `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SourceConfig {
    /// Folders of the host (Unraid shares, appdata).
    Directory {
        /// Folders, all with the job-wide excludes.
        #[serde(default)]
        paths: Vec<PathBuf>,
        /// Folders with excludes of their own.
        #[serde(default)]
        folders: Vec<Folder>,
        /// Glob patterns left out of every folder.
        #[serde(default)]
        exclude: Vec<String>,
    },
}

impl SourceConfig {
    /// The kind's name as configured.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Directory { .. } => "directory",
        }
    }

    /// Makes relative paths relative to `base`.
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        match self {
            Self::Directory { paths, folders, .. } => {
                for path in paths
                    .iter_mut()
                    .chain(folders.iter_mut().map(|f| &mut f.path))
                {
                    if path.is_relative() {
                        *path = base.join(&*path);
                    }
                }
            }
        }
    }

    /// A directory source's folders, each with its excludes and the job's.
    pub fn folders(&self) -> Vec<Folder> {
        match self {
            Self::Directory {
                paths,
                folders,
                exclude,
            } => paths
                .iter()
                .map(|path| Folder {
                    path: path.clone(),
                    exclude: exclude.clone(),
                })
                .chain(folders.iter().map(|f| Folder {
                    path: f.path.clone(),
                    exclude: f.exclude.iter().chain(exclude).cloned().collect(),
                }))
                .collect(),
        }
    }
}
