//! `lifeboat rebuild`: the flags, turned into the options of
//! [`lifeboat_rebuild`] (which holds the spec, the steps and the state),
//! and the output — the plan, a line per step on standard error, the
//! timed table. The repository is opened and unlocked here, as every
//! command does, and PostgreSQL is restored by `lifeboat restore`'s code.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;
use lifeboat::repo::UnlockedRepository;
use lifeboat::repo::keys::RestoreIdentity;
use lifeboat_rebuild::progress::StepRecord;
use lifeboat_rebuild::spec::{ClusterSpec, PostgresRestore};
use lifeboat_rebuild::{
    CallerError, Observer, RebuildOptions, RepositoryLocation, Restores, effective_configs, plan,
    rebuild,
};

use crate::args::{KeyArgs, RepoArgs};

/// Flags of `lifeboat rebuild`.
#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// The cluster spec (see deploy/rebuild/cluster.example.toml).
    #[arg(long)]
    spec: PathBuf,
    /// Print every step with its domain XML and API calls; change nothing.
    #[arg(long)]
    plan: bool,
    /// Continue an earlier run at its failed step.
    #[arg(long, conflicts_with = "plan")]
    resume: bool,
    /// Destroy and recreate existing VMs and disks of the nodes.
    #[arg(long)]
    replace: bool,
    /// The work folder: fetched backups (secrets: kept 0700), state and
    /// report.
    #[arg(long, default_value = "lifeboat-rebuild")]
    work: PathBuf,
    /// Repository URL (else [backups] repository in the spec).
    #[arg(long, short = 'r', env = "LIFEBOAT_REPOSITORY")]
    repo: Option<String>,
    /// The restore key (else [backups] identity in the spec).
    #[arg(long, short = 'i', env = "LIFEBOAT_IDENTITY")]
    identity: Option<PathBuf>,
}

impl RebuildArgs {
    /// The library's options.
    fn options(&self) -> RebuildOptions {
        RebuildOptions {
            work: self.work.clone(),
            resume: self.resume,
            replace: self.replace,
            repository: self.repo.clone(),
            identity: self.identity.clone(),
        }
    }
}

/// Runs `lifeboat rebuild`.
pub async fn run(args: RebuildArgs) -> anyhow::Result<()> {
    let spec = ClusterSpec::load(&args.spec)?;
    if args.plan {
        let mut text = String::new();
        for (n, step) in plan(&spec).iter().enumerate() {
            let description = step.description.replace('\n', "\n    ");
            text.push_str(&format!("{:>2}. {}\n    {description}\n\n", n + 1, step.id));
        }
        match effective_configs(&spec, &args.work) {
            None => text.push_str(
                "Each node's effective machine config (its patches applied, secrets redacted) \
                 is shown here once a run has fetched the talos-config snapshot into the work folder.\n",
            ),
            Some(configs) => {
                for (node, config) in configs {
                    text.push_str(&format!("--- effective machine config of {node}\n"));
                    match config {
                        Ok(config) => text.push_str(&config),
                        Err(e) => text.push_str(&format!("error: {}\n", lifeboat::errors::describe(&e))),
                    }
                }
            }
        }
        std::io::stdout().lock().write_all(text.as_bytes())?;
        return Ok(());
    }
    let outcome = rebuild(&spec, &args.options(), &Cli, &mut Lines).await?;
    crate::out!("{}", outcome.progress.table())?;
    if let Some(failure) = outcome.failure {
        return Err(failure.into());
    }
    crate::outln!("report: {}", outcome.report.display())?;
    Ok(())
}

/// A line on standard error per step.
struct Lines;

impl Observer for Lines {
    fn started(&mut self, id: &str) {
        eprintln!("lifeboat rebuild: {id} …");
    }

    fn ended(&mut self, record: &StepRecord) {
        eprintln!(
            "lifeboat rebuild: {}: {} ({:.1} s)",
            record.id, record.detail, record.seconds
        );
    }
}

/// The repository and the PostgreSQL restore as the other commands do
/// them.
struct Cli;

#[async_trait::async_trait(?Send)]
impl Restores for Cli {
    async fn unlock(
        &self,
        location: &RepositoryLocation,
        identity: &Path,
    ) -> Result<UnlockedRepository<RestoreIdentity>, CallerError> {
        let repo = RepoArgs {
            repo: Some(location.url.clone()),
            config: None,
            mirror: None,
            s3_endpoint: location.s3.endpoint.clone(),
            s3_region: location.s3.region.clone(),
            s3_path_style: location.s3.path_style,
        };
        let key = KeyArgs {
            identity: identity.to_owned(),
            max_tree_entries: lifeboat::repo::reader::MAX_TREE_ENTRIES,
        };
        let opened = async {
            key.unlock_restore(repo.open().await?, "rebuilding from backups")
                .await
        };
        opened.await.map_err(Caused::boxed)
    }

    async fn restore_postgres(
        &self,
        repo: &UnlockedRepository<RestoreIdentity>,
        entry: &PostgresRestore,
    ) -> Result<(), CallerError> {
        crate::restore::postgres_into(
            repo,
            &entry.snapshot,
            &entry.url,
            entry.create,
            entry.pg_bin.as_deref(),
        )
        .await
        .map_err(Caused::boxed)
    }
}

/// An error of this command kept whole as the cause of the library's
/// (its own message is empty), so that the exit code still finds a
/// wrong key or a missing repository in the chain.
#[derive(Debug)]
struct Caused(anyhow::Error);

impl Caused {
    fn boxed(error: anyhow::Error) -> CallerError {
        Box::new(Self(error))
    }
}

impl std::fmt::Display for Caused {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Ok(())
    }
}

impl std::error::Error for Caused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use lifeboat::repo::RepoError;
    use lifeboat_rebuild::RebuildError;

    use super::*;

    /// A step that failed because the repository is missing exits as
    /// every command does when there is none (10), and says why once.
    #[test]
    fn a_failed_unlock_keeps_the_exit_code_and_the_cause() {
        let cause = anyhow::Error::new(RepoError::NotARepository {
            url: "s3://lifeboat/cluster".into(),
        });
        let failure = RebuildError::Step {
            id: "fetch-backups".into(),
            source: Box::new(RebuildError::Unlock(Caused::boxed(cause))),
        };
        let error = anyhow::Error::from(failure);
        assert_eq!(
            format!("{:?}", crate::exit::code_of(&error)),
            format!("{:?}", std::process::ExitCode::from(10))
        );
        let text = lifeboat::errors::describe(error.as_ref());
        assert!(text.starts_with("step fetch-backups failed"), "{text}");
        assert_eq!(text.matches("no lifeboat repository").count(), 1, "{text}");
        assert!(!text.contains(": :"), "{text}");
    }
}
