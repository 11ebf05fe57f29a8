//! `kind = "directory"`: folders of the host, e.g. Unraid's
//! `/mnt/user/appdata/<service>`, each with its own excludes.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{SourceContext, SourceError, resolve};
use crate::backup::SnapshotBuilder;
use crate::backup::files::Folder;

/// Settings of a directory source.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectorySource {
    /// Folders, all with the job-wide excludes.
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    /// Folders with excludes of their own (the job-wide ones apply too).
    #[serde(default)]
    pub folders: Vec<Folder>,
    /// Glob patterns left out of every folder.
    #[serde(default)]
    pub exclude: Vec<String>,
}

impl DirectorySource {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        for path in self
            .paths
            .iter_mut()
            .chain(self.folders.iter_mut().map(|f| &mut f.path))
        {
            resolve(path, base);
        }
    }

    /// Every folder with its excludes and the job's.
    pub fn folders(&self) -> Vec<Folder> {
        let plain = self.paths.iter().map(|path| Folder {
            path: path.clone(),
            exclude: self.exclude.clone(),
        });
        let own = self.folders.iter().map(|f| Folder {
            path: f.path.clone(),
            exclude: f.exclude.iter().chain(&self.exclude).cloned().collect(),
        });
        plain.chain(own).collect()
    }

    pub(crate) async fn back_up(
        &self,
        builder: &mut SnapshotBuilder,
        context: &SourceContext,
    ) -> Result<serde_json::Value, SourceError> {
        builder
            .add_folders(&self.folders(), context.state_dir.as_deref())
            .await?;
        Ok(serde_json::Value::Null)
    }
}
