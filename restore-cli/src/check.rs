//! `lifeboat check`: verify the repository.

use clap::Args;
use lifeboat::repo::check::{ReadData, check};

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
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
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
    if report.is_ok() {
        if !args.json {
            crate::outln!("no problems found")?;
        }
        Ok(())
    } else {
        Err(ProblemsFound(format!("{} problem(s) found", report.problems.len())).into())
    }
}
