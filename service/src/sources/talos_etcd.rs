//! `kind = "talos-etcd"`: an etcd snapshot through the Talos API
//! (`machine.MachineService/EtcdSnapshot`), for clusters whose etcd is
//! reachable only through Talos.
//!
//! ```toml
//! [[job]]
//! name = "etcd"
//! # All optional: the talosconfig by talosctl's search order
//! # ($TALOSCONFIG, ~/.talos/config, /var/run/secrets/talos.dev/config),
//! # its current context, and the context's nodes.
//! source = { kind = "talos-etcd", talosconfig = "talos/talosconfig",
//!            context = "homelab", nodes = ["10.0.0.10"], timeout = "60s" }
//! ```
//!
//! In the cluster, Talos' `kubernetesTalosAPIAccess` feature with role
//! `os:etcd:backup` mounts a talosconfig at
//! `/var/run/secrets/talos.dev/config` whose certificate is renewed every
//! few hours: the file is loaded afresh for every run, and nothing of it is
//! kept between runs.
//!
//! The context's endpoints are tried in order, and through them the nodes;
//! the first node that answers `Version` is backed up (os:etcd:backup may
//! not ask for the version: a refusal counts as an answer). Its snapshot
//! stream goes straight into the repository as `etcd.db`, chunked in fixed
//! pages, and is verified on the way ([`super::etcd::snapshot_file`]): a stream
//! cut short or a wrong SHA-256 trailer fails the job before the snapshot is
//! committed. The metadata records the node, the endpoint, the Talos
//! version, what `EtcdStatus` tells (member id, db size, raft index; left
//! out when the role may not ask), the size and the trailer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::etcd::SNAPSHOT_FILE;
use super::etcd::snapshot_file::{self, SnapshotError, VerifyingReader};
use super::{SourceContext, SourceError, resolve};
use crate::backup::stream::StreamChunking;
use crate::backup::{BackupError, SnapshotBuilder};
use crate::talos::client::{DEFAULT_TIMEOUT, first_answering};
use crate::talos::{EtcdMemberStatus, TalosClient, TalosConfig, TalosError};

/// Settings of a talos-etcd source.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TalosEtcdSource {
    /// The talosconfig; default: talosctl's search order.
    #[serde(default)]
    pub talosconfig: Option<PathBuf>,
    /// The context; default: the file's current context.
    #[serde(default)]
    pub context: Option<String>,
    /// The control-plane nodes to try, in order; default: the context's
    /// `nodes` (and with none, the endpoint's own node).
    #[serde(default)]
    pub nodes: Vec<String>,
    /// How long to wait for an answer or the next piece of the snapshot
    /// (`"60s"`, `"2m"`); default 60 s.
    #[serde(default = "default_timeout", with = "crate::field::duration")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

/// Why an etcd snapshot through the Talos API failed.
#[derive(Debug, thiserror::Error)]
pub enum TalosEtcdError {
    /// The talosconfig, the connection or a call failed.
    #[error(transparent)]
    Talos(#[from] TalosError),
    /// The snapshot arrived whole but failed verification, or ended early
    /// without its trailer.
    #[error("EtcdSnapshot from {target}: {cause}")]
    Corrupt {
        /// The node and endpoint.
        target: String,
        /// What is wrong with it.
        cause: SnapshotError,
    },
    /// The snapshot stream could not be read to its end.
    #[error("EtcdSnapshot from {target}: {detail}")]
    Stream {
        /// The node and endpoint.
        target: String,
        /// Why.
        detail: String,
    },
}

impl TalosEtcdSource {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if let Some(path) = &mut self.talosconfig {
            resolve(path, base);
        }
    }

    pub(crate) async fn back_up(
        &self,
        builder: &mut SnapshotBuilder,
        _context: &SourceContext,
    ) -> Result<serde_json::Value, SourceError> {
        // Loaded for this run only: the in-cluster certificate is renewed.
        let config =
            TalosConfig::load(self.talosconfig.as_deref()).map_err(TalosEtcdError::from)?;
        let context = config
            .context(self.context.as_deref())
            .map_err(TalosEtcdError::from)?;
        let nodes = if self.nodes.is_empty() {
            &context.nodes
        } else {
            &self.nodes
        };
        let (client, version) = first_answering(context, nodes)
            .await
            .map_err(TalosEtcdError::from)?;
        let client = client.with_timeout(self.timeout);
        let target = client.target();
        let status = member_status(&client).await;
        tracing::info!(
            "etcd snapshot through the Talos API from {target} (Talos {})",
            version
                .as_ref()
                .map_or("version not visible to this role", |v| v.tag.as_str())
        );
        let reader = client.etcd_snapshot().await.map_err(TalosEtcdError::from)?;
        let (reader, verification) = VerifyingReader::new(reader);
        builder
            .add_stream(SNAPSHOT_FILE, reader, StreamChunking::Pages)
            .await
            .map_err(|e| stream_error(e, &target))?;
        let verified = match verification.outcome() {
            Some(Ok(verified)) => verified,
            Some(Err(cause)) => return Err(TalosEtcdError::Corrupt { target, cause }.into()),
            None => {
                return Err(TalosEtcdError::Stream {
                    target,
                    detail: "the stream ended unverified".into(),
                }
                .into());
            }
        };
        let mut metadata = serde_json::json!({
            "talosconfig": config.path().display().to_string(),
            "context": context.name,
            "endpoint": client.endpoint().to_string(),
            "node": client.node(),
            "talos_version": version.as_ref().map(|v| v.tag.clone()),
            "talos_arch": version.as_ref().map(|v| v.arch.clone()),
            "snapshot_bytes": verified.size,
            "db_size": verified.db_size(),
            "sha256": verified.sha256,
        });
        if let (Some(status), Some(object)) = (status, metadata.as_object_mut()) {
            object.extend(status_metadata(&status));
        }
        Ok(metadata)
    }
}

/// The node's etcd member status, or `None` when the role may not ask
/// (or the call fails: the status only adds to the metadata).
async fn member_status(client: &TalosClient) -> Option<EtcdMemberStatus> {
    match client.etcd_status().await {
        Ok(status) => Some(status),
        Err(e) if e.is_permission_denied() => {
            tracing::info!("no etcd member status in the metadata: {e}");
            None
        }
        Err(e) => {
            tracing::warn!("no etcd member status in the metadata: {e}");
            None
        }
    }
}

/// The metadata fields from an etcd member status. The member status's
/// `db_size` is the member's database now; the snapshot's own size is
/// `snapshot_bytes`.
fn status_metadata(status: &EtcdMemberStatus) -> serde_json::Map<String, serde_json::Value> {
    let value = serde_json::json!({
        "member_id": format!("{:016x}", status.member_id),
        "leader": format!("{:016x}", status.leader),
        "member_db_size": status.db_size,
        "db_size_in_use": status.db_size_in_use,
        "raft_term": status.raft_term,
        "raft_index": status.raft_index,
        "raft_applied_index": status.raft_applied_index,
        "is_learner": status.is_learner,
        "protocol_version": status.protocol_version,
        "storage_version": status.storage_version,
        "member_errors": status.errors,
    });
    match value {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// A failed stream backup, named by what went wrong.
fn stream_error(error: BackupError, target: &str) -> SourceError {
    let BackupError::Stream { source, .. } = error else {
        return error.into();
    };
    if let Some(cause) = snapshot_file::snapshot_error(&source) {
        return TalosEtcdError::Corrupt {
            target: target.to_owned(),
            cause: cause.clone(),
        }
        .into();
    }
    let detail = source.to_string();
    match source
        .into_inner()
        .map(|inner| inner.downcast::<TalosError>())
    {
        Some(Ok(talos)) => TalosEtcdError::Talos(*talos).into(),
        _ => TalosEtcdError::Stream {
            target: target.to_owned(),
            detail,
        }
        .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_with_defaults() {
        let source: TalosEtcdSource = toml::from_str("").expect("all optional");
        assert_eq!(source.timeout, DEFAULT_TIMEOUT);
        assert!(source.talosconfig.is_none() && source.nodes.is_empty());
        let source: TalosEtcdSource =
            toml::from_str("talosconfig = \"tc\"\nnodes = [\"10.0.0.10\"]\ntimeout = \"2m\"")
                .expect("valid");
        assert_eq!(source.timeout, Duration::from_secs(120));
        let mut resolved = source.clone();
        resolved.resolve_paths(Path::new("/etc/lifeboat"));
        assert_eq!(
            resolved.talosconfig,
            Some(PathBuf::from("/etc/lifeboat/tc"))
        );
        let error = toml::from_str::<TalosEtcdSource>("timeout = \"soon\"").expect_err("bad");
        assert!(error.to_string().contains("not a duration"), "{error}");
        assert!(toml::from_str::<TalosEtcdSource>("endpoint = \"x\"").is_err());
    }

    #[test]
    fn a_corrupt_stream_is_named_with_its_node() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            SnapshotError::MissingTrailer {
                size: 1000,
                remainder: 488,
            },
        );
        let error = stream_error(
            BackupError::Stream {
                name: SNAPSHOT_FILE.into(),
                source: io,
            },
            "node 10.0.0.10 via 10.0.0.10:50000",
        );
        let message = error.to_string();
        assert!(message.contains("node 10.0.0.10"), "{message}");
        assert!(message.contains("no SHA-256 trailer"), "{message}");
    }
}
