//! `lifeboat check`: verify the repository.

use clap::Args;
use lifeboat::repo::check::{ReadData, check};
use lifeboat::repo::mirror::{Comparison, compare};

use crate::args::{KeyArgs, RepoArgs};
use crate::exit::ProblemsFound;

/// Flags of `lifeboat check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    key: KeyArgs,
    /// Download and verify every pack.
    #[arg(long, conflicts_with = "read_data_subset")]
    read_data: bool,
    /// Download and verify this percentage of packs, picked at random.
    #[arg(long, value_name = "PERCENT")]
    read_data_subset: Option<f64>,
    /// With `--mirror`: also compare the mirror's objects with the
    /// repository's (the config's primary), and fail where they differ.
    #[arg(long, requires = "mirror")]
    against_primary: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Compares the mirror `repo` (opened through `--mirror`) with the
/// config's primary repository.
async fn compare_with_primary(
    args: &RepoArgs,
    mirror: &lifeboat::repo::UnlockedRepository<impl lifeboat::repo::keys::KeyRole>,
) -> anyhow::Result<Comparison> {
    let primary_args = RepoArgs {
        mirror: None,
        ..args.clone()
    };
    let primary = primary_args.open().await?;
    Ok(compare(primary.store(), mirror.repository().store()).await?)
}

/// Runs `lifeboat check`; fails (exit 1) when anything is wrong.
pub async fn run(args: CheckArgs) -> anyhow::Result<()> {
    let read_data = match (args.read_data, args.read_data_subset) {
        (true, _) => ReadData::All,
        (false, Some(p)) if (0.0..=100.0).contains(&p) => ReadData::Subset(p),
        (false, Some(p)) => {
            anyhow::bail!("--read-data-subset {p} must be a percentage from 0 to 100")
        }
        (false, None) => ReadData::None,
    };
    let repo = args.key.unlock(args.repo.open().await?).await?;
    if !repo.can_read_data() {
        eprintln!(
            "checking with the service key: trees and blob contents are not verified, only structure and pack hashes"
        );
    }
    let report = check(&repo, read_data).await?;
    let comparison = match args.against_primary {
        true => Some(compare_with_primary(&args.repo, &repo).await?),
        false => None,
    };
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        crate::outln!(
            "{} snapshots, {} packs ({} read), {} trees, {} blobs verified, {} unindexed packs (prune removes them)",
            report.snapshots,
            report.packs,
            report.packs_read,
            report.trees,
            report.blobs_verified,
            report.unindexed_packs
        )?;
        for problem in &report.problems {
            crate::outln!("PROBLEM {}: {}", problem.object, problem.message)?;
            for affected in &problem.affects {
                crate::outln!("  affects {affected}")?;
            }
        }
    }
    if let Some(comparison) = &comparison {
        if !args.json {
            crate::outln!(
                "against the primary: {} object(s) the mirror still lacks (the mirror task copies them), \
                 {} it keeps that the primary deleted (until their grace period ends), {} that differ",
                comparison.missing.len(),
                comparison.extra.len(),
                comparison.differing.len()
            )?;
        }
        if !comparison.differing.is_empty() {
            return Err(ProblemsFound(format!(
                "the mirror and the primary hold different objects under the same names: {}",
                comparison.differing.join(", ")
            ))
            .into());
        }
    }
    if report.is_ok() {
        if !args.json {
            crate::outln!("no problems found")?;
        }
        Ok(())
    } else {
        Err(ProblemsFound(format!("{} problem(s) found", report.problems.len())).into())
    }
}
