//! Running one job once: open (or create) the repository with the service
//! key, back the source up, commit the snapshot.

use std::path::Path;
use std::sync::Arc;

use super::config::{Config, ConfigError, JobConfig};
use crate::backup::{BackupError, BackupReport, Progress, SnapshotBuilder};
use crate::hooks::HookRunner;
use crate::repo::config::InitOptions;
use crate::repo::keys::{self, AnyIdentity, KeyError, Recipient, Recipients, ServiceIdentity};
use crate::repo::{RepoError, Repository, UnlockedRepository};
use crate::sources::{SourceContext, SourceError};
use crate::storage::{self, StorageError};

/// Why a job could not run.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be reached.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The backup failed.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// The source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A key could not be used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The configured recipients are not the repository's.
    #[error(
        "the restore recipients in the config ({configured}) differ from the repository's ({stored}); \
         fix `recipients` in [repository]"
    )]
    RecipientsDiffer {
        /// As configured.
        configured: String,
        /// As the repository has them.
        stored: String,
    },
}

/// Opens the configured repository with the service key, creating the
/// service identity and the repository on first use. A repository created
/// without configured recipients gets a new restore identity beside the
/// service identity; the log says to move it offline.
///
/// Fails when the store is unreachable, a key is unusable, or the
/// configured recipients differ from the repository's.
pub async fn open_service_repository(config: &Config) -> Result<UnlockedRepository, JobError> {
    let settings = &config.repository;
    let store = storage::open(&settings.url, &settings.s3).await?;
    let identity_path = &settings.service_identity;
    if !identity_path.exists() {
        if let Some(dir) = identity_path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| KeyError::Write {
                path: dir.to_owned(),
                source,
            })?;
        }
        keys::generate_identity_file(identity_path, None)?;
        tracing::info!("created the service identity {}", identity_path.display());
    }
    let service = ServiceIdentity::from_file(identity_path, None)?;
    let configured: Vec<Recipient> = settings
        .recipients
        .iter()
        .map(|r| r.parse())
        .collect::<Result<_, _>>()?;
    let repo = match Repository::open(store.clone()).await {
        Ok(repo) => repo,
        Err(RepoError::NotARepository { .. }) => {
            let restore = if configured.is_empty() {
                vec![new_restore_identity(identity_path)?]
            } else {
                configured.clone()
            };
            let recipients = Recipients {
                restore,
                service: service.recipients(),
            };
            let repo = Repository::init(store, recipients, &InitOptions::default()).await?;
            tracing::info!("created the repository {}", settings.url);
            repo
        }
        Err(e) => return Err(e.into()),
    };
    let stored = &repo.recipients().restore;
    if !configured.is_empty() && configured.iter().any(|r| !stored.contains(r)) {
        let join = |list: &[Recipient]| {
            list.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(JobError::RecipientsDiffer {
            configured: join(&configured),
            stored: join(stored),
        });
    }
    Ok(repo.unlock(AnyIdentity::Service(service)).await?)
}

/// Generates `restore.key` beside the service identity and says loudly that
/// it belongs offline.
fn new_restore_identity(service_identity: &Path) -> Result<Recipient, KeyError> {
    let path = service_identity.with_file_name("restore.key");
    let recipient = keys::generate_identity_file(&path, None)?;
    tracing::warn!(
        "created the RESTORE identity {} ({recipient}): it is the only key that can read \
         the backups. Copy it somewhere safe and offline (a password manager, paper), \
         then delete it from this machine.",
        path.display()
    );
    Ok(recipient)
}

/// Runs the job `name` once and returns its snapshot.
///
/// Fails when the job does not exist, the repository cannot be opened, or
/// the backup fails; nothing then refers to what was uploaded.
pub async fn run_job(
    config: &Config,
    config_path: &Path,
    name: &str,
    progress: Arc<Progress>,
) -> Result<BackupReport, JobError> {
    let job = config.job(name, config_path)?;
    let repo = open_service_repository(config).await?;
    back_up_job(&repo, config, job, progress).await
}

/// Backs `job` up once into `repo` (opened with the service key) and
/// returns its snapshot.
///
/// Fails when the source or the repository fails; nothing then refers to
/// what was uploaded.
pub async fn back_up_job(
    repo: &UnlockedRepository,
    config: &Config,
    job: &JobConfig,
    progress: Arc<Progress>,
) -> Result<BackupReport, JobError> {
    let mut builder =
        SnapshotBuilder::new(repo, &job.name, job.source.kind()).with_progress(progress);
    let context = SourceContext {
        state_dir: config.state_dir.clone(),
    };
    let (kubeconfig, cluster_context) = job.source.cluster_access();
    let mut runner = HookRunner::new(kubeconfig, cluster_context);
    let mut items = Vec::new();
    let backed_up = job
        .hooks
        .around(
            &mut runner,
            &mut items,
            job.source.back_up(&mut builder, &context),
        )
        .await;
    for item in items {
        builder.record(item);
    }
    let metadata = backed_up?;
    Ok(builder.commit(metadata).await?)
}
