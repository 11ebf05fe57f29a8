//! The source kinds: one module per [`SourceKind`], holding everything the
//! kind means — its settings (a variant of [`SourceConfig`], the job's
//! `source` table), its backup (feeding a [`SnapshotBuilder`] folder trees
//! or named byte streams), the layout it writes into a snapshot (file
//! names, manifests), its restore (`restore`) and how a drill verifies it
//! (`drill`).
//!
//! | kind | module | restores and drills as |
//! |---|---|---|
//! | `directory` | [`directory`] | [`volumes`] (folders at their host paths, no manifest) |
//! | `etcd` | [`etcd`] | itself |
//! | `kubernetes` | [`kubernetes`] | itself |
//! | `postgres` | [`postgres`] | itself |
//! | `postgres-wal` | [`postgres_wal`] | itself (point-in-time recovery) |
//! | `talos-config` | [`talos_config`] | itself |
//! | `talos-etcd` | [`talos_etcd`] | [`etcd`] (the same `etcd.db` layout) |
//! | `volumes` | [`volumes`] | itself |
//!
//! This module is the one place that dispatches on the kind: the backup of
//! a [`SourceConfig`], and [`drill_job`]. Adding a kind is one new module
//! plus one arm in each `match` here (and a [`SourceKind`] variant).

pub mod directory;
pub mod etcd;
pub mod kubernetes;
pub mod postgres;
pub mod postgres_wal;
pub mod talos_config;
pub mod talos_etcd;
pub mod volumes;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::backup::{BackupError, SnapshotBuilder};
use crate::drill::{DrillJob, DrillReport, DrillSettings, JobReport, Prepared};
/// Relative paths of source tables are taken from the config file's folder.
pub(crate) use crate::field::resolve_path as resolve;
use crate::repo::reader::BlobReader;
use crate::repo::snapshot::SnapshotEntry;
pub use crate::repo::snapshot::SourceKind;

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
    /// PostgreSQL WAL, received continuously, and base backups.
    PostgresWal(postgres_wal::PostgresWalSource),
    /// The files a Talos cluster rebuild needs (secrets bundle, machine
    /// configs, talosconfig).
    TalosConfig(talos_config::TalosConfigSource),
    /// An etcd snapshot through the Talos API (`EtcdSnapshot`).
    TalosEtcd(talos_etcd::TalosEtcdSource),
    /// The data folders behind PersistentVolumeClaims on this node.
    Volumes(volumes::VolumesSource),
}

/// What a source needs from the job that runs it.
#[derive(Debug, Clone)]
pub struct SourceContext {
    /// The local state folder (caches), if any.
    pub state_dir: Option<PathBuf>,
    /// The repository's settings, for processes a source starts elsewhere
    /// (volume movers).
    pub repository: volumes::mover::RepositoryAccess,
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
    /// WAL archiving failed.
    #[error(transparent)]
    PostgresWal(#[from] postgres_wal::WalError),
    /// Labelled containers could not be backed up.
    #[error(transparent)]
    Containers(#[from] directory::containers::ContainersError),
    /// The Kubernetes objects could not be listed or stored.
    #[error(transparent)]
    Kubernetes(kubernetes::KubernetesError),
    /// The Kubernetes API failed.
    #[error(transparent)]
    Kube(#[from] crate::k8s::K8sError),
    /// The volume movers could not be run.
    #[error(transparent)]
    Movers(#[from] volumes::mover::jobs::MoversError),
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
    /// The kind of its snapshots.
    pub fn kind(&self) -> SourceKind {
        match self {
            Self::Directory(_) => SourceKind::Directory,
            Self::Etcd(_) => SourceKind::Etcd,
            Self::Kubernetes(_) => SourceKind::Kubernetes,
            Self::Postgres(_) => SourceKind::Postgres,
            Self::PostgresWal(_) => SourceKind::PostgresWal,
            Self::TalosConfig(_) => SourceKind::TalosConfig,
            Self::TalosEtcd(_) => SourceKind::TalosEtcd,
            Self::Volumes(_) => SourceKind::Volumes,
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
            Self::PostgresWal(source) => source.resolve_paths(base),
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
            Self::PostgresWal(source) => source.back_up(builder, context).await,
            Self::TalosConfig(source) => source.back_up(builder, context).await,
            Self::TalosEtcd(source) => source.back_up(builder, context).await,
            Self::Volumes(source) => source.back_up(builder, context).await,
        }
    }
}

/// Whether `snapshot` can be restored on its own: every kind's can, but a
/// WAL archive's only where it holds a base backup (the others extend an
/// earlier one). Retention counts only these
/// ([`crate::retention::RetentionPolicy::apply_anchored`]).
pub fn restorable_alone<R>(snapshot: &crate::repo::snapshot::Snapshot<R>) -> bool {
    match snapshot.source_kind {
        SourceKind::PostgresWal => postgres_wal::WalMetadata::of(snapshot)
            .is_none_or(|metadata| metadata.base_backup.is_some()),
        _ => true,
    }
}

/// Drills each of `jobs` in turn ([`drill_job`]), handing each job's
/// report to `on_done` as it ends; returns the whole drill's report.
pub async fn drill_jobs(
    reader: &BlobReader,
    snapshots: &[SnapshotEntry],
    jobs: &[DrillJob],
    settings: &DrillSettings,
    on_done: fn(&JobReport),
) -> DrillReport {
    let started = Utc::now();
    let mut reports = Vec::with_capacity(jobs.len());
    for job in jobs {
        let report = drill_job(reader, snapshots, job, settings, Utc::now()).await;
        on_done(&report);
        reports.push(report);
    }
    DrillReport::new(started, settings.rto_target, reports)
}

/// Drills `job` with the newest of `snapshots` (all snapshots of the
/// repository), at `now`: [`crate::drill::prepare`] checks the RPO and
/// makes scratch space, the snapshot kind's `drill` module restores and
/// verifies it, [`crate::drill::JobRun::finish`] measures the RTO. Never
/// fails: every failure is in the report.
pub async fn drill_job(
    reader: &BlobReader,
    snapshots: &[SnapshotEntry],
    job: &DrillJob,
    settings: &DrillSettings,
    now: DateTime<Utc>,
) -> JobReport {
    let walker = reader.for_walk();
    let mut run = match crate::drill::prepare(&walker, snapshots, job, settings, now) {
        Prepared::Run(run) => run,
        Prepared::Ended(report) => return report,
    };
    match &run.entry.snapshot.source_kind {
        SourceKind::Directory | SourceKind::Volumes => volumes::drill::verify(&mut run).await,
        SourceKind::Etcd | SourceKind::TalosEtcd => etcd::drill::verify(&mut run).await,
        SourceKind::Kubernetes => kubernetes::drill::verify(&mut run).await,
        SourceKind::Postgres => postgres::drill::verify(&mut run).await,
        SourceKind::PostgresWal => postgres_wal::drill::verify(&mut run).await,
        SourceKind::TalosConfig => talos_config::drill::verify(&mut run).await,
        SourceKind::Other(name) => {
            let reason = format!("not verified: lifeboat cannot drill snapshots of kind {name:?}");
            run.fail(reason);
        }
    }
    run.finish()
}
