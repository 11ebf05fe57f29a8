//! `lifeboat forget` and `lifeboat prune`: retention by hand. Both work with
//! the service key.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use clap::Args;
use lifeboat::repo::id::SnapshotId;
use lifeboat::repo::prune::{PruneOptions, PruneReport, forget, prune};
use lifeboat::repo::repack::{RepackReport, repack};
use lifeboat::repo::snapshot::human_bytes;
use lifeboat::retention::RetentionPolicy;
use serde::Serialize;

use crate::args::{KeyArgs, RepoArgs};

/// One snapshot's retention decision, as `lifeboat forget` prints it.
#[derive(Serialize)]
struct ForgetRow<'a> {
    id: SnapshotId,
    job: &'a str,
    time: DateTime<Utc>,
    keep: bool,
    /// The rules that keep it (`last`, `daily`, ...); none when forgotten.
    reasons: Vec<&'static str>,
}

/// What `lifeboat prune --json` prints.
#[derive(Serialize)]
struct PruneOutput<'a> {
    /// The repack done first (`--repack`), if any.
    repack: Option<&'a RepackReport>,
    prune: &'a PruneReport,
}

/// Flags of `lifeboat forget`.
#[derive(Debug, Args)]
pub struct ForgetArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    key: KeyArgs,
    /// Only this job's snapshots (default: every job, each on its own).
    #[arg(long)]
    job: Option<String>,
    /// Keep the newest N snapshots.
    #[arg(long, default_value_t = 0)]
    keep_last: u32,
    /// Keep the newest snapshot of each of the last N hours.
    #[arg(long, default_value_t = 0)]
    keep_hourly: u32,
    /// Keep the newest snapshot of each of the last N days.
    #[arg(long, default_value_t = 0)]
    keep_daily: u32,
    /// Keep the newest snapshot of each of the last N weeks.
    #[arg(long, default_value_t = 0)]
    keep_weekly: u32,
    /// Keep the newest snapshot of each of the last N months.
    #[arg(long, default_value_t = 0)]
    keep_monthly: u32,
    /// Keep the newest snapshot of each of the last N years.
    #[arg(long, default_value_t = 0)]
    keep_yearly: u32,
    /// Keep every snapshot younger than this, counted from the newest (e.g. 7d).
    #[arg(long, value_parser = humantime_duration)]
    keep_within: Option<std::time::Duration>,
    /// Show what would be forgotten; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn humantime_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like 7d or 36h: {e}"))
}

/// Runs `lifeboat forget`.
pub async fn run_forget(args: ForgetArgs) -> anyhow::Result<()> {
    let policy = RetentionPolicy {
        keep_last: args.keep_last,
        keep_hourly: args.keep_hourly,
        keep_daily: args.keep_daily,
        keep_weekly: args.keep_weekly,
        keep_monthly: args.keep_monthly,
        keep_yearly: args.keep_yearly,
        keep_within: args.keep_within,
    };
    if !policy.keeps_something() {
        anyhow::bail!("give at least one --keep-* rule; forget never removes every snapshot");
    }
    let repo = args.key.unlock(args.repo.open().await?).await?;
    let mut by_job: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for entry in repo.snapshots().await? {
        if args
            .job
            .as_ref()
            .is_none_or(|job| entry.snapshot.job == *job)
        {
            by_job
                .entry(entry.snapshot.job.clone())
                .or_default()
                .push(entry);
        }
    }
    let mut rows = Vec::new();
    let mut doomed = Vec::new();
    for (job, entries) in &by_job {
        let times: Vec<_> = entries.iter().map(|e| e.snapshot.time).collect();
        for (entry, decision) in entries.iter().zip(policy.apply(&times)) {
            if decision.kept_by.is_empty() {
                doomed.push(entry.id);
            }
            rows.push(ForgetRow {
                id: entry.id,
                job,
                time: entry.snapshot.time,
                keep: !decision.kept_by.is_empty(),
                reasons: decision.kept_by,
            });
        }
    }
    if !args.dry_run {
        forget(&repo, &doomed).await?;
    }
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&rows)?)?;
    } else {
        for row in &rows {
            crate::outln!(
                "{} {} {:<16} {}",
                if row.keep {
                    "keep  "
                } else if args.dry_run {
                    "would forget"
                } else {
                    "forget"
                },
                row.id.short(),
                row.job,
                row.reasons.join(","),
            )?;
        }
        crate::outln!(
            "{} snapshots {}; run `lifeboat prune` to free their space",
            doomed.len(),
            if args.dry_run {
                "would be forgotten"
            } else {
                "forgotten"
            }
        )?;
    }
    Ok(())
}

/// Flags of `lifeboat prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    key: KeyArgs,
    /// How long unused packs wait before deletion; longer than your longest backup.
    #[arg(long, default_value = "24h", value_parser = humantime_duration)]
    grace: std::time::Duration,
    /// First copy the used blobs out of packs at least PERCENT % unused, so
    /// those packs can go too (needs the restore key).
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(1..=100))]
    repack: Option<u8>,
    /// Show what would be marked and deleted; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `lifeboat prune`.
pub async fn run_prune(args: PruneArgs) -> anyhow::Result<()> {
    let repo = args.key.unlock(args.repo.open().await?).await?;
    let options = PruneOptions {
        grace: chrono::Duration::from_std(args.grace)?,
        dry_run: args.dry_run,
    };
    let repacked = match args.repack {
        Some(percent) => {
            let restoring = repo.clone().into_restore("repacking")?;
            Some(repack(&restoring, percent, args.dry_run).await?)
        }
        None => None,
    };
    // Repacking wrote packs and a plan: read the index afresh.
    let repo = match repacked {
        Some(_) => args.key.unlock(args.repo.open().await?).await?,
        None => repo,
    };
    let report = prune(&repo, &options).await?;
    if args.json {
        let value = PruneOutput {
            repack: repacked.as_ref(),
            prune: &report,
        };
        crate::outln!("{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(());
    }
    let verb = if args.dry_run { "would be" } else { "were" };
    if let Some(r) = &repacked {
        crate::outln!(
            "{} packs at least {}% unused {verb} repacked: {} used blobs ({}) copied into {} new packs; {} to reclaim after the grace period",
            r.packs_repacked,
            args.repack.unwrap_or_default(),
            r.blobs_copied,
            human_bytes(r.bytes_copied),
            r.packs_written,
            human_bytes(r.bytes_reclaimable),
        )?;
    }
    let leftovers = report.leftovers_removed;
    if leftovers.files > 0 {
        crate::outln!(
            "{} files ({}) that interrupted backups left were removed",
            leftovers.files,
            human_bytes(leftovers.bytes),
        )?;
    }
    crate::outln!(
        "{} packs stored, {} in use; {} unused packs ({}) {verb} marked, {} marked packs ({}) {verb} deleted, {} index objects rewritten, {} plans waiting for the grace period",
        report.packs_stored,
        report.packs_used,
        report.packs_marked,
        human_bytes(report.bytes_marked),
        report.packs_deleted,
        human_bytes(report.bytes_freed),
        report.indexes_rewritten,
        report.plans_waiting,
    )?;
    Ok(())
}
