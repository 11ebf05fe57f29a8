//! Running one job once: open (or create) the repository with the service
//! key, back the source up, commit the snapshot.

use std::path::Path;
use std::sync::Arc;

use crate::backup::{BackupError, BackupReport, Progress, SnapshotBuilder};
use crate::config::{Config, ConfigError, JobConfig};
use crate::hooks::HookRunner;
use crate::repo::config::InitOptions;
use crate::repo::keys::{self, KeyError, Recipient, Recipients, ServiceIdentity};
use crate::repo::{RepoError, Repository, UnlockedRepository};
use crate::sources::volumes::mover::RepositoryAccess;
use crate::sources::{SourceContext, SourceError};
use crate::state::pin::{self, PinError, RepositoryPin};
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
    /// The configured (or pinned) recipients are not the repository's.
    #[error(
        "the restore recipients {source_of_expected} ({expected}) differ from the repository's \
         ({stored}): someone may have replaced its `config` and `keys` to read future backups. \
         Compare with your restore key (`lifeboat keys recipients RESTORE_KEY`); fix `recipients` in \
         [repository] if the configuration is wrong"
    )]
    RecipientsDiffer {
        /// Where the expected recipients come from.
        source_of_expected: &'static str,
        /// As configured or pinned.
        expected: String,
        /// As the repository has them.
        stored: String,
    },
    /// The repository is not the one pinned on first use.
    #[error(
        "the repository at {url} is not the one this service pinned in {pin} ({what}): its `config` \
         or `keys` was replaced, or the URL now names another repository. Nothing was written. \
         If you moved to a new repository on purpose, delete {pin}; otherwise restore the \
         original objects (FORMAT.md, \"Recreating config\")"
    )]
    NotThePinnedRepository {
        /// The store.
        url: String,
        /// The pin file.
        pin: String,
        /// What differs.
        what: String,
    },
    /// The pinned repository lost its `config`.
    #[error(
        "the repository {id} pinned in {pin} has no `config` at {url} any more; lifeboatd never \
         creates a repository where one was. Put `config` back, or recreate it by \
         hand with the restore key (FORMAT.md, \"Recreating config\")"
    )]
    PinnedRepositoryGone {
        /// The store.
        url: String,
        /// The pinned id.
        id: String,
        /// The pin file.
        pin: String,
    },
    /// The repository pin could not be used.
    #[error(transparent)]
    Pin(#[from] PinError),
}

/// Opens the configured repository with the service key, creating the
/// service identity and the repository on first use. A repository created
/// without configured recipients gets a new restore identity beside the
/// service identity; the log says to move it offline.
///
/// The repository is pinned on first use (see [`crate::state::pin`]): its
/// id, `config`, `keys` and restore recipients must stay the same. Configured
/// recipients must equal the repository's exactly; with none configured,
/// the pinned ones must. A location that holds objects but no `config` is
/// never initialised.
///
/// Fails when the store is unreachable, a key is unusable, the recipients
/// differ, or the repository is not the pinned one.
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
    let pin_dir = config.state_folder();
    let pin_path = pin_dir.join(pin::PIN_FILE).display().to_string();
    let pinned = pin::load(&pin_dir)?;
    let repo = match Repository::open(store.clone()).await {
        Ok(repo) => repo,
        Err(RepoError::NotARepository { url }) => {
            if let Some(pinned) = &pinned {
                return Err(JobError::PinnedRepositoryGone {
                    url,
                    id: pinned.fingerprint.id.clone(),
                    pin: pin_path,
                });
            }
            // Before any key is made: a location that holds objects is
            // never initialised.
            Repository::check_location_is_free(&store).await?;
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
    let stored = as_strings(&repo.recipients().restore);
    let expected = match (&pinned, configured.is_empty()) {
        (_, false) => Some(("in the config", as_strings(&configured))),
        (Some(pinned), true) => Some(("pinned", pinned.restore_recipients.clone())),
        (None, true) => None,
    };
    if let Some((source_of_expected, expected)) = expected {
        if !same_set(&expected, &stored) {
            return Err(JobError::RecipientsDiffer {
                source_of_expected,
                expected: expected.join(", "),
                stored: stored.join(", "),
            });
        }
    }
    let unlocked = repo.unlock(service).await?;
    let fingerprint = unlocked.fingerprint().clone();
    match pinned {
        Some(pinned) if pinned.fingerprint != fingerprint => {
            let what = if pinned.fingerprint.id != fingerprint.id {
                format!("id {} instead of {}", fingerprint.id, pinned.fingerprint.id)
            } else if pinned.fingerprint.config_blake3 != fingerprint.config_blake3 {
                "`config` changed".to_owned()
            } else {
                "`keys` changed".to_owned()
            };
            Err(JobError::NotThePinnedRepository {
                url: settings.url.clone(),
                pin: pin_path,
                what,
            })
        }
        Some(_) => Ok(unlocked),
        None => {
            pin::save(
                &pin_dir,
                &RepositoryPin {
                    url: settings.url.clone(),
                    fingerprint: fingerprint.clone(),
                    restore_recipients: stored,
                    pinned: chrono::Utc::now(),
                },
            )?;
            tracing::info!(
                id = %fingerprint.id,
                "pinned the repository {} in {pin_path}",
                settings.url
            );
            Ok(unlocked)
        }
    }
}

fn as_strings(recipients: &[Recipient]) -> Vec<String> {
    recipients.iter().map(ToString::to_string).collect()
}

/// Whether two lists hold the same recipients, in any order.
fn same_set(a: &[String], b: &[String]) -> bool {
    let set = |list: &[String]| {
        list.iter()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
    };
    set(a) == set(b)
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
    let mut attempt = 1;
    let mut repo = repo.clone();
    let mut avoided = Vec::new();
    loop {
        match back_up_once(&repo, config, job, progress.clone()).await {
            Err(JobError::Backup(BackupError::Withdrawn { written, source }))
                if attempt < BACKUP_ATTEMPTS =>
            {
                tracing::info!(job = %job.name, "{source}; running it again");
                // What the withdrawn run wrote is garbage a prune marks at
                // once: never reuse it.
                avoided.extend(written);
                repo = repo.reload().await?;
                repo.avoid_packs(avoided.iter().copied());
                attempt += 1;
            }
            outcome => return outcome,
        }
    }
}

/// Backups run in all when a prune at the same time keeps removing what
/// they reuse; each run after the first stores those blobs anew.
const BACKUP_ATTEMPTS: u32 = 5;

/// One backup of `job`.
async fn back_up_once(
    repo: &UnlockedRepository,
    config: &Config,
    job: &JobConfig,
    progress: Arc<Progress>,
) -> Result<BackupReport, JobError> {
    let mut builder =
        SnapshotBuilder::new(repo, &job.name, job.source.kind()).with_progress(progress);
    let context = SourceContext {
        state_dir: config.state_dir.clone(),
        repository: RepositoryAccess {
            url: config.repository.url.clone(),
            s3: config.repository.s3.clone(),
            service_identity: config.repository.service_identity.clone(),
        },
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
