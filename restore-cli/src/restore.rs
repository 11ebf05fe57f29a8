//! `lifeboat restore`: files of a snapshot back into a folder.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use lifeboat::progress::Bar;
use lifeboat::restore::files::{RestoreOptions, RestoreProgress, restore};

use crate::args::{KeyArgs, RepoArgs};

/// Flags of `lifeboat restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    key: KeyArgs,
    /// SNAPSHOT[:PATH]: `latest`, `latest:JOB` or an id prefix, then
    /// optionally a path inside it (its contents are restored).
    what: String,
    /// The folder to restore into (created if missing; must be empty unless --force).
    #[arg(long, short)]
    target: PathBuf,
    /// Restore into a non-empty folder, replacing files of the same names.
    #[arg(long)]
    force: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Splits `SNAPSHOT[:PATH]`; `latest:JOB` names a job, not a path, unless a
/// path follows it (`latest:JOB:/path`).
fn split_spec(what: &str) -> (String, String) {
    let mut parts = what.splitn(3, ':');
    let first = parts.next().unwrap_or_default().to_owned();
    match (first.as_str(), parts.next(), parts.next()) {
        ("latest", Some(second), Some(path)) => (format!("latest:{second}"), path.to_owned()),
        ("latest", Some(second), None) if !second.starts_with('/') => {
            (format!("latest:{second}"), String::new())
        }
        (_, Some(second), rest) => (
            first,
            [Some(second), rest]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(":"),
        ),
        (_, None, _) => (first, String::new()),
    }
}

/// Runs `lifeboat restore`.
pub async fn run(args: RestoreArgs) -> anyhow::Result<()> {
    let repo = args.key.unlock(args.repo.open().await?).await?;
    let (spec, path) = split_spec(&args.what);
    let entry = repo.find_snapshot(&spec).await?;
    let reader = repo.reader("restoring files")?;
    let progress = Arc::new(RestoreProgress::default());
    let bar = Bar::bytes(
        "restore",
        progress.bytes_done.clone(),
        Some(progress.bytes_total.clone()),
    );
    let started = std::time::Instant::now();
    let report = restore(
        &reader,
        entry.snapshot.root,
        &path,
        &args.target,
        &RestoreOptions { force: args.force },
        progress,
    )
    .await;
    drop(bar);
    let report = report?;
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        let value = serde_json::json!({ "snapshot": entry.id, "path": path, "target": args.target,
            "seconds": seconds, "report": report });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!(
            "restored snapshot {}{} into {}: {} files, {} dirs, {} other, {} in {seconds:.1} s",
            entry.id.short(),
            if path.is_empty() {
                String::new()
            } else {
                format!(":{path}")
            },
            args.target.display(),
            report.files,
            report.dirs,
            report.others,
            lifeboat::repo::snapshot::human_bytes(report.bytes),
        );
        for warning in &report.warnings {
            println!("  warning: {warning}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::split_spec;

    #[test]
    fn snapshot_specs_split_into_snapshot_and_path() {
        let split = |s: &str| {
            let (a, b) = split_spec(s);
            (a, b)
        };
        assert_eq!(split("latest"), ("latest".into(), String::new()));
        assert_eq!(
            split("latest:/srv/data"),
            ("latest".into(), "/srv/data".into())
        );
        assert_eq!(split("latest:home"), ("latest:home".into(), String::new()));
        assert_eq!(
            split("latest:home:/srv"),
            ("latest:home".into(), "/srv".into())
        );
        assert_eq!(split("ab12:/srv/a:b"), ("ab12".into(), "/srv/a:b".into()));
    }
}
