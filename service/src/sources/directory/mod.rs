//! `kind = "directory"`: folders of the host, e.g. Unraid's
//! `/mnt/user/appdata/<service>`, each with its own excludes; and the
//! bind mounts of the containers carrying a label ([`containers`]).

pub mod containers;

use std::path::{Path, PathBuf};

use serde::Deserialize;

use self::containers::ContainerSelection;
use super::{SourceContext, SourceError, resolve};
use crate::backup::SnapshotBuilder;
use crate::backup::folders::Folder;

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
    /// Also the bind mounts of the running containers carrying a label.
    #[serde(default)]
    pub containers: Option<ContainerSelection>,
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
        let state = context.state_dir.as_deref();
        let Some(selection) = &self.containers else {
            builder.add_folders(&self.folders(), state).await?;
            return Ok(serde_json::Value::Null);
        };
        let mut discovered = selection.discover().await?;
        for skipped in &discovered.skipped {
            builder.warn(skipped.clone());
        }
        if discovered.count() == 0 {
            builder.warn(format!(
                "no running container carries the label {}; label the containers to back up",
                selection.label
            ));
        }
        let mut folders = self.folders();
        folders.extend(discovered.folders().into_iter().map(|path| Folder {
            path,
            exclude: self.exclude.clone(),
        }));
        let read = match discovered.before().await {
            Ok(()) => builder
                .add_folders(&folders, state)
                .await
                .map_err(SourceError::from),
            Err(e) => Err(e.into()),
        };
        for warning in discovered.after().await {
            builder.warn(warning);
        }
        read?;
        Ok(serde_json::json!({ "containers": discovered.count() }))
    }
}
