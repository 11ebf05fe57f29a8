//! The machine config each node is running, read through the Talos API
//! (`MachineService/Read` of [`MACHINE_CONFIG_PATH`], which needs an
//! `os:admin` talosconfig).
//!
//! The files Terraform wrote say what the cluster should be; the live
//! configs say what it is (after `talosctl edit`, `patch` or an upgrade).
//! Each is stored at the snapshot's root as `live-<node>.yaml`. A node that
//! cannot be read is a warning in the run's result, not a failure: the
//! files were backed up all the same, and a node may be down for the very
//! rebuild this backup is for.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::TalosConfigError;
use crate::backup::stream::StreamChunking;
use crate::backup::{BackupError, SnapshotBuilder};
use crate::sources::{SourceError, resolve};
use crate::talos::{TalosClient, TalosConfig};

/// Where a Talos node keeps its machine config (the STATE partition).
pub const MACHINE_CONFIG_PATH: &str = "/system/state/config.yaml";

/// Settings for reading the nodes' live machine configs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveConfig {
    /// An `os:admin` talosconfig; default: talosctl's search order
    /// (`$TALOSCONFIG`, `~/.talos/config`, the in-cluster mount).
    #[serde(default)]
    pub talosconfig: Option<PathBuf>,
    /// The context; default: the file's current context.
    #[serde(default)]
    pub context: Option<String>,
    /// The nodes to read; default: the context's `nodes` (with none, the
    /// endpoint's own node).
    #[serde(default)]
    pub nodes: Vec<String>,
}

/// What reading the live configs came to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct LiveOutcome {
    /// Configs stored.
    pub read: u64,
    /// Nodes that could not be read (each warned about).
    pub failed: u64,
}

impl LiveConfig {
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        if let Some(path) = &mut self.talosconfig {
            resolve(path, base);
        }
    }

    /// Stores every node's machine config; warns about each node that
    /// cannot be read.
    ///
    /// Fails when the talosconfig cannot be loaded or has no such context,
    /// or when the repository fails.
    pub(super) async fn back_up(
        &self,
        builder: &mut SnapshotBuilder,
    ) -> Result<LiveOutcome, SourceError> {
        let config =
            TalosConfig::load(self.talosconfig.as_deref()).map_err(TalosConfigError::from)?;
        let context = config
            .context(self.context.as_deref())
            .map_err(TalosConfigError::from)?;
        let nodes: Vec<Option<String>> = match (self.nodes.is_empty(), context.nodes.is_empty()) {
            (false, _) => self.nodes.iter().cloned().map(Some).collect(),
            (true, false) => context.nodes.iter().cloned().map(Some).collect(),
            (true, true) => vec![None],
        };
        let mut outcome = LiveOutcome::default();
        let client = match TalosClient::connect_context(context).await {
            Ok(client) => client,
            Err(e) => {
                builder.warn(format!(
                    "talos-config: the live machine configs were not read: {e}; \
                     the files were backed up"
                ));
                outcome.failed = nodes.len() as u64;
                return Ok(outcome);
            }
        };
        for node in &nodes {
            let client = client
                .with_node(node.as_deref())
                .map_err(TalosConfigError::from)?;
            let label = node
                .clone()
                .unwrap_or_else(|| client.endpoint().host().to_owned());
            let name = format!("live-{}.yaml", safe_name(&label));
            let stored = match client.read_stream(MACHINE_CONFIG_PATH).await {
                Ok(reader) => builder
                    .add_stream(&name, reader, StreamChunking::Content)
                    .await
                    .map_err(|e| match e {
                        BackupError::Stream { source, .. } => Ok(source.to_string()),
                        other => Err(other),
                    }),
                Err(e) => Err(Ok(e.to_string())),
            };
            match stored {
                Ok(_) => outcome.read += 1,
                Err(Ok(reason)) => {
                    outcome.failed += 1;
                    builder.warn(format!(
                        "talos-config: the live machine config of {} was not read: {reason}",
                        client.target()
                    ));
                }
                Err(Err(repository)) => return Err(repository.into()),
            }
        }
        Ok(outcome)
    }
}

/// A node name (IP or host name) as a file name: anything but letters,
/// digits, `.`, `-`, `_` and `:` becomes `_`.
fn safe_name(node: &str) -> String {
    node.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_:".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_become_file_names() {
        assert_eq!(safe_name("10.0.0.10"), "10.0.0.10");
        assert_eq!(safe_name("fd00::1"), "fd00::1");
        assert_eq!(safe_name("../x/y"), ".._x_y");
    }
}
