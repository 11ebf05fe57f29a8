//! Files of a snapshot back into a folder: `SNAPSHOT:PATH`, and whole
//! snapshots of kinds without a restore of their own.

use std::path::Path;

use lifeboat::repo::snapshot::human_bytes;
use lifeboat::restore::files::{RestoreOptions, RestoreReport, restore};
use serde::Serialize;

use super::Restoring;

/// What `--json` prints of a files restore, beside the snapshot and kind.
#[derive(Serialize)]
struct FilesRestored<'a> {
    path: &'a str,
    target: &'a Path,
    seconds: f64,
    report: &'a RestoreReport,
}

/// Splits `SNAPSHOT[:PATH]`; `latest:JOB` names a job, not a path, unless a
/// path follows it (`latest:JOB:/path`).
pub fn split_spec(what: &str) -> (String, String) {
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

/// Restores the files at `path` of the snapshot (all for an empty path)
/// into `--target`.
pub async fn run(restoring: &Restoring<'_>, path: &str) -> anyhow::Result<()> {
    let target = restoring.target("the folder the files go to")?;
    let entry = restoring.entry;
    let started = std::time::Instant::now();
    let options = RestoreOptions {
        force: restoring.force,
        keep_special: restoring.keep_special,
    };
    let report = super::with_progress("restore", |progress| {
        restore(
            restoring.reader,
            entry.snapshot.root,
            path,
            target,
            &options,
            progress,
        )
    })
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    let restored = FilesRestored {
        path,
        target,
        seconds,
        report: &report,
    };
    restoring.print(restored, || {
        let mut text = format!(
            "restored snapshot {}{} into {}: {} files, {} dirs, {} other, {} in {seconds:.1} s",
            entry.id.short(),
            if path.is_empty() {
                String::new()
            } else {
                format!(":{path}")
            },
            target.display(),
            report.files,
            report.dirs,
            report.others,
            human_bytes(report.bytes),
        );
        for warning in &report.warnings {
            text.push_str(&format!("\n  warning: {warning}"));
        }
        text
    })
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
