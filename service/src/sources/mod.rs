//! What is backed up. Each source kind has a settings type (a variant of
//! [`SourceConfig`], the job's `source` table) and feeds a
//! [`SnapshotBuilder`]: folder trees, or named byte streams.

pub mod directory;
pub mod etcd;
pub mod etcd_snapshot;
pub mod kubernetes;
pub mod postgres;
pub mod talos_config;
pub mod talos_etcd;
pub mod volumes;

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::backup::{BackupError, SnapshotBuilder};
/// Relative paths of source tables are taken from the config file's folder.
pub(crate) use crate::field::resolve_path as resolve;

/// A job's `source` table, by `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SourceConfig {
    /// Folders of the host (Unraid shares, appdata).
    Directory(directory::DirectorySource),
    /// An etcd member's snapshot, through the etcd v3 API.
    Etcd(etcd::EtcdSource),
    /// Every Kubernetes object, as canonical YAML.
    Kubernetes(kubernetes::KubernetesSource),
    /// PostgreSQL databases as `pg_dump` dumps, with row counts.
    Postgres(postgres::PostgresSource),
    /// The files a Talos cluster rebuild needs (secrets bundle, machine
    /// configs, talosconfig).
    TalosConfig(talos_config::TalosConfigSource),
    /// An etcd snapshot through the Talos API (`EtcdSnapshot`).
    TalosEtcd(talos_etcd::TalosEtcdSource),
    /// The data folders behind PersistentVolumeClaims on this node.
    Volumes(volumes::VolumesSource),
}

/// What a source needs from the job that runs it.
#[derive(Debug, Clone, Default)]
pub struct SourceContext {
    /// The local state folder (caches), if any.
    pub state_dir: Option<PathBuf>,
}

/// Why a source could not be backed up.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Storing what the source produced failed.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// The etcd snapshot could not be taken or failed verification.
    #[error(transparent)]
    Etcd(#[from] etcd::EtcdError),
    /// A PostgreSQL dump failed.
    #[error(transparent)]
    Postgres(#[from] postgres::PostgresError),
    /// The Kubernetes objects could not be listed or stored.
    #[error(transparent)]
    Kubernetes(kubernetes::KubernetesError),
    /// The Kubernetes API failed.
    #[error(transparent)]
    Kube(#[from] crate::k8s::K8sError),
    /// A pre hook failed, so no data was read.
    #[error(transparent)]
    Hook(#[from] crate::hooks::HookError),
    /// The Talos configuration files could not be read.
    #[error(transparent)]
    TalosConfig(#[from] talos_config::TalosConfigError),
    /// The etcd snapshot through the Talos API could not be taken or
    /// failed verification.
    #[error(transparent)]
    TalosEtcd(#[from] talos_etcd::TalosEtcdError),
}

impl SourceConfig {
    /// The kind's name as configured.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Directory(_) => "directory",
            Self::Etcd(_) => "etcd",
            Self::Kubernetes(_) => "kubernetes",
            Self::Postgres(_) => "postgres",
            Self::TalosConfig(_) => "talos-config",
            Self::TalosEtcd(_) => "talos-etcd",
            Self::Volumes(_) => "volumes",
        }
    }

    /// The kubeconfig and context the source reaches its cluster with, for
    /// the job's pod hooks.
    pub fn cluster_access(&self) -> (Option<PathBuf>, Option<String>) {
        match self {
            Self::Kubernetes(s) => (s.kubeconfig.clone(), s.context.clone()),
            Self::Volumes(s) => (s.kubeconfig.clone(), s.context.clone()),
            _ => (None, None),
        }
    }

    /// Makes relative paths relative to `base` (the config file's folder).
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        match self {
            Self::Directory(source) => source.resolve_paths(base),
            Self::Etcd(source) => source.resolve_paths(base),
            Self::Kubernetes(source) => source.resolve_paths(base),
            Self::Postgres(source) => source.resolve_paths(base),
            Self::TalosConfig(source) => source.resolve_paths(base),
            Self::TalosEtcd(source) => source.resolve_paths(base),
            Self::Volumes(source) => source.resolve_paths(base),
        }
    }

    /// Backs the source up into `builder` and returns the snapshot's
    /// metadata (summary figures the service key may read).
    ///
    /// Fails when the source cannot be read as a whole or the repository
    /// fails; the snapshot is then not committed.
    pub async fn back_up(
        &self,
        builder: &mut SnapshotBuilder,
        context: &SourceContext,
    ) -> Result<serde_json::Value, SourceError> {
        match self {
            Self::Directory(source) => source.back_up(builder, context).await,
            Self::Etcd(source) => source.back_up(builder, context).await,
            Self::Kubernetes(source) => source.back_up(builder, context).await,
            Self::Postgres(source) => source.back_up(builder, context).await,
            Self::TalosConfig(source) => source.back_up(builder, context).await,
            Self::TalosEtcd(source) => source.back_up(builder, context).await,
            Self::Volumes(source) => source.back_up(builder, context).await,
        }
    }
}
