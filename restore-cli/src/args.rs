//! Flags every repository command shares, and turning them into an open
//! repository.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use lifeboat::config::Config;
use lifeboat::repo::keys::{self, AnyIdentity, RestoreIdentity};
use lifeboat::repo::reader::MAX_TREE_ENTRIES;
use lifeboat::repo::{Repository, UnlockedRepository};
use lifeboat::storage::{self, S3Options};

/// Where the repository is.
#[derive(Debug, Clone, Args)]
pub struct RepoArgs {
    /// Repository URL: s3://BUCKET/PREFIX, file:///PATH or a path.
    #[arg(
        long,
        short = 'r',
        env = "LIFEBOAT_REPOSITORY",
        required_unless_present = "config"
    )]
    pub repo: Option<String>,
    /// Take the repository (URL and S3 settings) from this lifeboat.toml.
    #[arg(long, env = "LIFEBOAT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Read the config's `[[mirror]]` of this name instead of the
    /// repository: the same repository, kept by lifeboatd's mirror task
    /// (the fast path when the primary is slow or gone).
    #[arg(long, requires = "config", conflicts_with = "repo")]
    pub mirror: Option<String>,
    /// S3 endpoint URL (else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL).
    #[arg(long, env = "LIFEBOAT_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region (default `auto`, as R2 wants).
    #[arg(long, env = "LIFEBOAT_S3_REGION")]
    pub s3_region: Option<String>,
    /// Address buckets by path (Garage, MinIO).
    #[arg(long, env = "LIFEBOAT_S3_PATH_STYLE")]
    pub s3_path_style: bool,
}

impl RepoArgs {
    /// The URL and S3 settings, from flags over the config file (its
    /// mirror with `--mirror`).
    pub fn location(&self) -> anyhow::Result<(String, S3Options)> {
        let from_config = match &self.config {
            Some(path) => {
                let config = Config::load(path)?;
                match &self.mirror {
                    Some(name) => {
                        let mirror = config
                            .mirrors
                            .iter()
                            .find(|m| m.name == *name)
                            .with_context(|| {
                                let names: Vec<&str> =
                                    config.mirrors.iter().map(|m| m.name.as_str()).collect();
                                format!(
                                    "{} has no [[mirror]] called {name:?}; it has {names:?}",
                                    path.display()
                                )
                            })?;
                        Some((mirror.url.clone(), mirror.s3.clone()))
                    }
                    None => Some((config.repository.url, config.repository.s3)),
                }
            }
            None => None,
        };
        let url = self
            .repo
            .clone()
            .or_else(|| from_config.as_ref().map(|(url, _)| url.clone()))
            .context("give the repository with --repo URL or --config FILE")?;
        let mut s3 = from_config.map(|(_, s3)| s3).unwrap_or_default();
        if self.s3_endpoint.is_some() {
            s3.endpoint.clone_from(&self.s3_endpoint);
        }
        if self.s3_region.is_some() {
            s3.region.clone_from(&self.s3_region);
        }
        s3.path_style |= self.s3_path_style;
        Ok((url, s3))
    }

    /// Opens the repository.
    pub async fn open(&self) -> anyhow::Result<Repository> {
        let (url, s3) = self.location()?;
        let store = storage::open(&url, &s3).await?;
        let repo = Repository::open(store).await?;
        // On standard error, so that output stays machine-readable: an
        // operator compares the id and recipients with the ones they know.
        let join = |list: &[keys::Recipient]| {
            list.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        eprintln!(
            "repository {url}: id {}, restore recipients {}",
            repo.config().id,
            join(&repo.recipients().restore)
        );
        Ok(repo)
    }
}

/// Which key to use.
#[derive(Debug, Clone, Args)]
pub struct KeyArgs {
    /// An age identity file: the restore key (reads everything) or the
    /// service key (lists, checks structure). Passphrase from
    /// LIFEBOAT_PASSPHRASE or a prompt.
    #[arg(long, short = 'i', env = "LIFEBOAT_IDENTITY")]
    pub identity: PathBuf,
    /// Stop a walk of a snapshot's trees (restore, check, ls, a job's
    /// drill) after this many entries: a forged snapshot can repeat a
    /// subtree without end. Raise it for snapshots of more files.
    #[arg(
        long,
        env = "LIFEBOAT_MAX_TREE_ENTRIES",
        value_name = "N",
        default_value_t = MAX_TREE_ENTRIES
    )]
    pub max_tree_entries: u64,
}

impl KeyArgs {
    /// Loads the identity and unlocks `repo` with it, whichever key it is.
    pub async fn unlock(
        &self,
        repo: Repository,
    ) -> anyhow::Result<UnlockedRepository<AnyIdentity>> {
        let identity = self.load(&repo)?;
        Ok(repo
            .unlock(identity)
            .await?
            .with_tree_entry_limit(self.max_tree_entries))
    }

    /// Loads the identity and unlocks `repo` with it for `what`, which
    /// reads data (a sentence such as "restoring").
    ///
    /// Fails when the identity is the service key.
    pub async fn unlock_restore(
        &self,
        repo: Repository,
        what: &'static str,
    ) -> anyhow::Result<UnlockedRepository<RestoreIdentity>> {
        Ok(self.unlock(repo).await?.into_restore(what)?)
    }

    fn load(&self, repo: &Repository) -> anyhow::Result<AnyIdentity> {
        let passphrase = if keys::needs_passphrase(&self.identity) {
            Some(passphrase(&format!(
                "passphrase for {}: ",
                self.identity.display()
            ))?)
        } else {
            None
        };
        let file = AnyIdentity::from_file(&self.identity, passphrase.as_ref())?;
        Ok(repo.identify(file)?)
    }
}

/// A passphrase from LIFEBOAT_PASSPHRASE, else asked on the terminal.
pub fn passphrase(prompt: &str) -> anyhow::Result<keys::SecretString> {
    if let Ok(value) = std::env::var("LIFEBOAT_PASSPHRASE") {
        return Ok(keys::SecretString::from(value));
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("a passphrase is needed: set LIFEBOAT_PASSPHRASE or run on a terminal");
    }
    let value = rpassword::prompt_password(prompt).context("reading the passphrase")?;
    Ok(keys::SecretString::from(value))
}
