//! What `lifeboatd mover` does inside its Job: opens the repository it was
//! told of with the service key, checks it is the pinned one, stores the
//! mounted claim as a part snapshot — reading only the files its cache
//! does not know unchanged — leaves a new cache, and prints the part's id.

use std::path::{Path, PathBuf};

use super::cache::{self, CacheKey};
use super::{MoverSpec, PART_KEY, Part, part_job, snapshot_path, split_claim};
use crate::backup::folders::Folder;
use crate::backup::{BackupError, SnapshotBuilder};
use crate::repo::id::SnapshotId;
use crate::repo::keys::{KeyError, ServiceIdentity};
use crate::repo::snapshot::SourceKind;
use crate::repo::{RepoError, Repository};
use crate::storage::{self, StorageError};

/// The largest spec file read: it is a few hundred bytes.
const SPEC_LIMIT: u64 = 64 * 1024;

/// One mover's task, from its command line.
#[derive(Debug, Clone)]
pub struct MoverTask {
    /// The [`MoverSpec`] file (from the run's Secret).
    pub spec: PathBuf,
    /// The service identity file (from the run's Secret).
    pub identity: PathBuf,
    /// `NAMESPACE/CLAIM`.
    pub claim: String,
    /// Where the claim is mounted.
    pub folder: PathBuf,
    /// Glob patterns left out.
    pub exclude: Vec<String>,
    /// The claim's cache key file (from the run's Secret), if lifeboatd
    /// keeps a cache for it.
    pub cache_key: Option<PathBuf>,
    /// The claim's cache object the last mover left, if any.
    pub cache: Option<String>,
}

/// Why a mover failed.
#[derive(Debug, thiserror::Error)]
pub enum MoverError {
    /// The spec file could not be read or parsed.
    #[error(
        "cannot use the mover spec {path}: {reason}; lifeboatd writes it into the run's Secret"
    )]
    Spec {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The claim is not `NAMESPACE/CLAIM`.
    #[error("the claim {0:?} is not NAMESPACE/NAME with Kubernetes names")]
    Claim(String),
    /// The service identity could not be read.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The store could not be opened.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The store holds another repository than the one lifeboatd pinned.
    #[error(
        "{url} holds repository {found}, not {pinned} that lifeboatd pinned; a mover never writes elsewhere"
    )]
    NotThePinned {
        /// The store.
        url: String,
        /// What was found (id, or which object changed).
        found: String,
        /// The pinned id.
        pinned: String,
    },
    /// The claim's mount cannot be read.
    #[error(
        "cannot read the claim's mount {path}: {source}; look at the volume's PersistentVolume and its node (is its data still there?)"
    )]
    Mount {
        /// The mount, or the folder under it that could not be read.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Reading or storing the claim failed.
    #[error(transparent)]
    Backup(BackupError),
}

impl From<BackupError> for MoverError {
    fn from(error: BackupError) -> Self {
        match error {
            BackupError::Unreadable { path, source } => Self::Mount { path, source },
            other => Self::Backup(other),
        }
    }
}

/// Stores the claim of `task` as a part snapshot and returns its id.
///
/// Fails when the spec, key or repository is unusable, the repository is
/// not the pinned one, or the claim cannot be stored.
pub async fn run(task: &MoverTask) -> Result<SnapshotId, MoverError> {
    let spec = read_spec(&task.spec)?;
    let (namespace, name) =
        split_claim(&task.claim).ok_or_else(|| MoverError::Claim(task.claim.clone()))?;
    let identity = ServiceIdentity::from_file(&task.identity, None)?;
    let store = storage::open(&spec.url, &spec.s3).await?;
    let repo = Repository::open(store).await?.unlock(identity).await?;
    let found = repo.fingerprint();
    if found != &spec.pin.fingerprint {
        let found = if found.id != spec.pin.fingerprint.id {
            found.id.clone()
        } else {
            format!("{} with a changed `config` or `keys`", found.id)
        };
        return Err(MoverError::NotThePinned {
            url: spec.url,
            found,
            pinned: spec.pin.fingerprint.id,
        });
    }
    let mut builder = SnapshotBuilder::new(&repo, &part_job(&spec.job), SourceKind::Volumes);
    let folder = Folder {
        path: task.folder.clone(),
        exclude: task.exclude.clone(),
    };
    let key = task.cache_key.as_deref().and_then(|path| {
        CacheKey::from_file(path)
            .inspect_err(|e| tracing::warn!("reading every file: {e}"))
            .ok()
    });
    let known = match (&key, &task.cache) {
        (Some(key), Some(object)) if cache::is_cache_of(&spec.job, object) => {
            cache::load(repo.repository().store(), object, key)
                .await
                .inspect_err(|e| tracing::warn!("reading every file: {e}"))
                .unwrap_or_default()
        }
        _ => Default::default(),
    };
    let (entry, learnt) = builder
        .add_folder_as(&folder, &snapshot_path(namespace, name), known)
        .await?;
    let cache = match &key {
        Some(key) => cache::save(repo.repository().store(), &spec.job, learnt, key)
            .await
            .inspect_err(|e| tracing::warn!("the next mover reads every file: {e}"))
            .ok(),
        None => None,
    };
    let part = Part {
        run: spec.run,
        claim: task.claim.clone(),
        entry,
        cache,
    };
    let metadata = serde_json::json!({ PART_KEY: part });
    let report = builder.commit(metadata).await?;
    for warning in &report.warnings {
        tracing::warn!("{warning}");
    }
    Ok(report.id)
}

fn read_spec(path: &Path) -> Result<MoverSpec, MoverError> {
    let fail = |reason: String| MoverError::Spec {
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, SPEC_LIMIT + 1), &mut bytes)
        .map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 > SPEC_LIMIT {
        return Err(fail(format!("it is larger than {SPEC_LIMIT} bytes")));
    }
    serde_json::from_slice(&bytes).map_err(|e| fail(e.to_string()))
}
