//! The crate's error: each module's narrower error (spec, hypervisor,
//! Talos nodes, Kubernetes, state file) wrapped whole, and what the steps
//! themselves run into — the repository, the restore functions of the
//! service library, the work folder.

use std::path::PathBuf;

use lifeboat::repo::RepoError;
use lifeboat::restore::RestoreError;
use lifeboat::sources::etcd::snapshot_file::VerifyFileError;

use crate::CallerError;
use crate::hypervisor::HypervisorError;
use crate::kubernetes::KubernetesError;
use crate::progress::StateError;
use crate::spec::SpecError;
use crate::talos::NodeError;

/// Why a rebuild, or one of its steps, failed. Every message names what
/// failed and, where known, the fix.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// The cluster spec is wrong.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// libvirt refused.
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    /// A node's Talos API failed, or a file it needs is missing.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The Kubernetes API failed, or what was sent to it.
    #[error(transparent)]
    Kubernetes(#[from] KubernetesError),
    /// A node's patches do not apply.
    #[error(transparent)]
    Patch(#[from] crate::patches::PatchError),
    /// The state file or the report.
    #[error(transparent)]
    State(#[from] StateError),
    /// A step failed; the run stopped there.
    #[error(
        "step {id} failed; fix the cause, then run the same command with --resume to continue at this step"
    )]
    Step {
        /// The step's id.
        id: String,
        /// Why.
        #[source]
        source: Box<RebuildError>,
    },
    /// No repository was given.
    #[error("give the repository with --repo URL or [backups] repository in the spec")]
    NoRepository,
    /// No restore key was given.
    #[error("give the restore key with --identity FILE or [backups] identity in the spec")]
    NoRestoreKey,
    /// The caller could not unlock the repository.
    #[error("cannot open the repository with the restore key")]
    Unlock(#[source] CallerError),
    /// The repository failed.
    #[error("{action}")]
    Repository {
        /// What was being done, naming the snapshot.
        action: String,
        /// Why.
        #[source]
        source: RepoError,
    },
    /// A restore into the work folder failed.
    #[error("restoring {what} into {}", target.display())]
    Restore {
        /// The snapshot.
        what: String,
        /// The folder.
        target: PathBuf,
        /// Why.
        #[source]
        source: Box<RestoreError>,
    },
    /// The etcd snapshot could not be fetched into the work folder, or
    /// failed its SHA-256 check there.
    #[error("restoring the etcd snapshot {what} into {}", target.display())]
    FetchEtcdSnapshot {
        /// The snapshot.
        what: String,
        /// The folder.
        target: PathBuf,
        /// Why.
        #[source]
        source: Box<lifeboat::sources::etcd::restore::SnapshotFileError>,
    },
    /// A volumes snapshot's manifest cannot be read.
    #[error("reading the volumes manifest of snapshot {what}")]
    Manifest {
        /// The snapshot as named.
        what: String,
        /// Why.
        #[source]
        source: Box<RestoreError>,
    },
    /// A snapshot of `[data] volumes` is of another kind.
    #[error(
        "[data] volumes names {what}, a snapshot of kind \"{kind}\"; name snapshots of volumes jobs"
    )]
    NotVolumes {
        /// The snapshot as named.
        what: String,
        /// Its kind.
        kind: lifeboat::repo::snapshot::SourceKind,
    },
    /// A volumes snapshot without a manifest.
    #[error("snapshot {what} has no volumes manifest; name a snapshot of a volumes job")]
    NoManifest {
        /// The snapshot as named.
        what: String,
    },
    /// The restore Jobs have no image.
    #[error("set data.image in the spec: the lifeboat image the restore Jobs run")]
    NoImage,
    /// The fetched etcd snapshot is gone.
    #[error(
        "{} is missing: the etcd snapshot {snapshot} holds no etcd.db; run the rebuild from the start or check [backups] etcd",
        path.display()
    )]
    NoEtcdSnapshot {
        /// Where it should be.
        path: PathBuf,
        /// The snapshot as named in the spec.
        snapshot: String,
    },
    /// The fetched etcd snapshot fails its check.
    #[error(
        "the etcd snapshot {} fails its check; run the rebuild from the start (without --resume) to fetch it again",
        path.display()
    )]
    EtcdSnapshot {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: VerifyFileError,
    },
    /// The caller's PostgreSQL restore failed.
    #[error("restoring {snapshot} into {url}")]
    Postgres {
        /// The snapshot.
        snapshot: String,
        /// The server.
        url: String,
        /// Why.
        #[source]
        source: CallerError,
    },
    /// A file or folder of the rebuild cannot be used.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl RebuildError {
    /// A closure turning an I/O error on `path` into [`RebuildError::Io`].
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }

    /// A closure turning a repository error into
    /// [`RebuildError::Repository`].
    pub(crate) fn repo(action: impl Into<String>) -> impl FnOnce(RepoError) -> Self {
        let action = action.into();
        move |source| Self::Repository { action, source }
    }
}
