//! `kind = "talos-config"`: the files a Talos cluster rebuild needs.
//!
//! ```toml
//! [[job]]
//! name = "talos-config"
//! source = { kind = "talos-config", dir = "/config/talos", exclude = [".terraform"],
//!            files = ["/root/.talos/talosconfig"],
//!            live = { talosconfig = "/config/talos/talosconfig", nodes = ["10.0.0.10", "10.0.0.11"] } }
//! ```
//!
//! `dir` is the folder Terraform's Talos provider (or `talosctl gen`) writes
//! into; it is backed up whole, like a directory source, under its absolute
//! path. `files` are single files kept elsewhere; each is stored at the
//! snapshot's root under its file name, which must differ from the other
//! files' and from the first folder of `dir` (`config` for `/config/talos`).
//! `live` (optional) also stores the machine config each node is running,
//! read through the Talos API ([`live`]).
//!
//! **These files hold the cluster's certificate authorities and keys**: the
//! secrets bundle (`secrets.yaml`) has the Kubernetes, etcd and Talos CAs,
//! the machine configs (`controlplane.yaml`, `worker.yaml`) embed them, and
//! the talosconfig carries an admin client certificate (as do the live
//! configs). Like everything
//! lifeboat stores they are encrypted to the restore key only: neither the
//! service key nor the bucket's owner can read them.
//!
//! What was found is recognised by content (and by the usual file names):
//! the snapshot metadata says whether a secrets bundle and a talosconfig
//! are present and how many machine configs and patches there are — counts
//! only, no names. A missing secrets bundle or talosconfig is a warning in
//! the run's result, since a rebuild needs both.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod classify;
pub mod drill;
pub mod live;
pub mod restore;

pub use classify::{TalosFile, classify, inspect_file};
pub use live::{LiveConfig, MACHINE_CONFIG_PATH};

use self::classify::{Excludes, inspect_dir};
use super::{SourceContext, SourceError, resolve};
use crate::backup::SnapshotBuilder;
use crate::backup::folders::Folder;
use crate::backup::stream::StreamChunking;

/// Settings of a Talos configuration source.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TalosConfigSource {
    /// The folder holding the Talos files, backed up whole.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Single files elsewhere (e.g. `~/.talos/config`), each stored at the
    /// snapshot's root under its file name.
    #[serde(default)]
    pub files: Vec<PathBuf>,
    /// Glob patterns left out of `dir` (e.g. `.terraform`): without a `/`
    /// they match a name anywhere, with one the path relative to `dir`.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Also store each node's running machine config, read through the
    /// Talos API with an `os:admin` talosconfig.
    #[serde(default)]
    pub live: Option<LiveConfig>,
}

/// Why the Talos configuration could not be backed up.
#[derive(Debug, thiserror::Error)]
pub enum TalosConfigError {
    /// Neither `dir`, `files` nor `live` is set.
    #[error(
        "the talos-config source names no files: set `dir` to the folder your Terraform \
         Talos provider (or `talosctl gen config`) writes to, or list `files`"
    )]
    NothingConfigured,
    /// A listed file cannot be read.
    #[error("cannot read Talos file {path}: {cause}; fix `files` in the job")]
    File {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        cause: std::io::Error,
    },
    /// A listed file is not a regular file.
    #[error("Talos file {path} is not a regular file; list folders as `dir`")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// Two entries would have the same name at the snapshot's root.
    #[error(
        "Talos file {path} would be stored as {name:?} at the snapshot's root, which another \
         file or the first folder of `dir` already is; copy the file into `dir` instead"
    )]
    NameClash {
        /// The file.
        path: PathBuf,
        /// The clashing name.
        name: String,
    },
    /// The talosconfig for the live configs cannot be used.
    #[error("talos-config live machine configs: {0}")]
    Talos(#[from] crate::talos::TalosError),
    /// An exclude pattern is not a valid glob.
    #[error("exclude pattern {pattern:?} of the talos-config source is invalid: {message}")]
    Exclude {
        /// The pattern.
        pattern: String,
        /// The parser's message.
        message: String,
    },
}

/// What the source found: the snapshot metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Findings {
    /// Whether a secrets bundle is among the files.
    pub secrets_bundle: bool,
    /// Whether a talosconfig is among the files.
    pub talosconfig: bool,
    /// Complete machine configs.
    pub machine_configs: u64,
    /// Of them, control-plane configs.
    pub controlplane_configs: u64,
    /// Of them, worker configs.
    pub worker_configs: u64,
    /// Config patches.
    pub patches: u64,
    /// Files inspected in all.
    pub files: u64,
    /// Live machine configs read through the Talos API.
    pub live_configs: u64,
    /// Nodes whose live machine config could not be read.
    pub live_configs_failed: u64,
}

impl Findings {
    fn add(&mut self, kind: TalosFile) {
        self.files += 1;
        match kind {
            TalosFile::SecretsBundle => self.secrets_bundle = true,
            TalosFile::Talosconfig => self.talosconfig = true,
            TalosFile::ControlPlaneConfig => {
                self.machine_configs += 1;
                self.controlplane_configs += 1;
            }
            TalosFile::WorkerConfig => {
                self.machine_configs += 1;
                self.worker_configs += 1;
            }
            TalosFile::MachineConfig => self.machine_configs += 1,
            TalosFile::Patch => self.patches += 1,
            TalosFile::Other => {}
        }
    }
}

impl TalosConfigSource {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if let Some(dir) = &mut self.dir {
            resolve(dir, base);
        }
        if let Some(live) = &mut self.live {
            live.resolve_paths(base);
        }
        for file in &mut self.files {
            resolve(file, base);
        }
    }

    /// Stores `dir` and `files`, then inspects them; returns the
    /// [`Findings`] as metadata and warns when a rebuild would lack the
    /// secrets bundle or the talosconfig.
    pub(crate) async fn back_up(
        &self,
        builder: &mut SnapshotBuilder,
        context: &SourceContext,
    ) -> Result<serde_json::Value, SourceError> {
        if self.dir.is_none() && self.files.is_empty() && self.live.is_none() {
            return Err(TalosConfigError::NothingConfigured.into());
        }
        let excludes = Excludes::new(&self.exclude)?;
        let names = self.root_names()?;
        for path in &self.files {
            let meta = tokio::fs::metadata(path)
                .await
                .map_err(|cause| TalosConfigError::File {
                    path: path.clone(),
                    cause,
                })?;
            if !meta.is_file() {
                return Err(TalosConfigError::NotAFile { path: path.clone() }.into());
            }
        }
        if let Some(dir) = &self.dir {
            let folder = Folder {
                path: dir.clone(),
                exclude: self.exclude.clone(),
            };
            builder
                .add_folders(&[folder], context.state_dir.as_deref())
                .await?;
        }
        for (path, name) in self.files.iter().zip(&names) {
            let file =
                tokio::fs::File::open(path)
                    .await
                    .map_err(|cause| TalosConfigError::File {
                        path: path.clone(),
                        cause,
                    })?;
            builder
                .add_stream(name, file, StreamChunking::Content)
                .await?;
        }

        let live = match &self.live {
            Some(live) => live.back_up(builder).await?,
            None => live::LiveOutcome::default(),
        };

        let dir = self.dir.clone();
        let files = self.files.clone();
        let mut findings = tokio::task::spawn_blocking(move || {
            let mut findings = Findings::default();
            if let Some(dir) = &dir {
                inspect_dir(dir, &excludes, &mut findings);
            }
            for file in &files {
                findings.add(inspect_file(file));
            }
            findings
        })
        .await
        .unwrap_or_default();
        findings.live_configs = live.read;
        findings.live_configs_failed = live.failed;
        let place = self.describe();
        if !findings.secrets_bundle {
            builder.warn(format!(
                "talos-config: no secrets bundle (secrets.yaml) in {place}; a rebuild needs it \
                 to make machine configs with the cluster's CAs: write it there \
                 (`talosctl gen secrets`, or Terraform: yamlencode(talos_machine_secrets.<name>.machine_secrets))"
            ));
        }
        if !findings.talosconfig {
            builder.warn(format!(
                "talos-config: no talosconfig in {place}; a rebuild needs it to reach the \
                 Talos API: write it there (Terraform: talos_client_configuration.<name>.talos_config)"
            ));
        }
        Ok(serde_json::to_value(&findings).unwrap_or_default())
    }

    /// The root names of `files`, in order.
    ///
    /// Fails when a file has no name, or two entries would share one.
    fn root_names(&self) -> Result<Vec<String>, TalosConfigError> {
        let mut taken: Vec<String> = self
            .dir
            .iter()
            .filter_map(|dir| {
                dir.components().find_map(|c| match c {
                    std::path::Component::Normal(name) => Some(name.to_string_lossy().into_owned()),
                    _ => None,
                })
            })
            .collect();
        let mut names = Vec::with_capacity(self.files.len());
        for path in &self.files {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| TalosConfigError::NotAFile { path: path.clone() })?;
            if taken.contains(&name) {
                return Err(TalosConfigError::NameClash {
                    path: path.clone(),
                    name,
                });
            }
            taken.push(name.clone());
            names.push(name);
        }
        Ok(names)
    }

    /// The configured places, for warnings.
    fn describe(&self) -> String {
        self.dir
            .iter()
            .chain(&self.files)
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_count_what_a_rebuild_needs() {
        let mut findings = Findings::default();
        for kind in [
            TalosFile::ControlPlaneConfig,
            TalosFile::WorkerConfig,
            TalosFile::Patch,
            TalosFile::Other,
        ] {
            findings.add(kind);
        }
        assert!(!findings.secrets_bundle && !findings.talosconfig);
        assert_eq!(findings.machine_configs, 2);
        assert_eq!(findings.files, 4);
        findings.add(TalosFile::SecretsBundle);
        assert!(findings.secrets_bundle);
    }

    #[test]
    fn root_names_must_not_clash() {
        let source = TalosConfigSource {
            dir: Some("/config/talos".into()),
            files: vec!["/root/.talos/config".into()],
            exclude: Vec::new(),
            live: None,
        };
        assert!(matches!(
            source.root_names(),
            Err(TalosConfigError::NameClash { .. })
        ));
        let source = TalosConfigSource {
            dir: Some("/srv/talos".into()),
            files: vec!["/root/.talos/config".into()],
            exclude: Vec::new(),
            live: None,
        };
        assert_eq!(source.root_names().ok(), Some(vec!["config".to_owned()]));
    }
}
