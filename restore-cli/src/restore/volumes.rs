//! Volumes and directories: the whole snapshot under `--target`, one PVC
//! straight into `--target`, or every folder (or one PVC) back at its host
//! path with `--in-place`.

use std::path::PathBuf;

use clap::Args;
use lifeboat::repo::snapshot::human_bytes;
use lifeboat::restore::volumes::{Layout, Placement, restore_units};

use super::Restoring;

/// Flags for volumes and directories.
#[derive(Debug, Args)]
pub struct VolumeArgs {
    /// Volumes and directories: restore to the original host paths; each
    /// must be empty or missing unless --force.
    #[arg(long, conflicts_with = "target")]
    in_place: bool,
    /// Volumes: only this PVC (NAMESPACE/NAME).
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pvc: Option<String>,
}

impl VolumeArgs {
    /// Whether any of these flags was given.
    pub fn given(&self) -> bool {
        self.in_place || self.pvc.is_some()
    }
}

/// Restores a volumes or directory snapshot.
pub async fn run(restoring: &Restoring<'_>, args: &VolumeArgs) -> anyhow::Result<()> {
    if !args.in_place && args.pvc.is_none() {
        restoring
            .target("the folder the snapshot goes to, or --in-place for the original paths")?;
        return super::files::run(restoring, "").await;
    }
    let (reader, entry) = (restoring.reader, restoring.entry);
    let layout = Layout::read(reader, entry.snapshot.root).await?;
    let units = layout.select(args.pvc.as_deref())?;
    let placement = if args.in_place {
        Placement::InPlace
    } else {
        Placement::Into(PathBuf::from(
            restoring.target("the folder the PVC's files go to, or --in-place")?,
        ))
    };
    let started = std::time::Instant::now();
    let reports = super::with_progress("restore", |progress| {
        restore_units(
            reader,
            entry.snapshot.root,
            &units,
            &placement,
            restoring.force,
            progress,
        )
    })
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    let value = serde_json::json!({ "snapshot": entry.id, "kind": entry.snapshot.source_kind,
        "seconds": seconds, "restored": reports });
    restoring.print(value, || {
        let mut lines = vec![format!(
            "restored {} folder(s) of snapshot {} in {seconds:.1} s:",
            reports.len(),
            entry.id.short()
        )];
        for unit in &reports {
            lines.push(format!(
                "  {} -> {}: {} files, {}",
                unit.unit.name,
                unit.target.display(),
                unit.report.files,
                human_bytes(unit.report.bytes)
            ));
            for warning in &unit.report.warnings {
                lines.push(format!("    warning: {warning}"));
            }
        }
        lines.join("\n")
    })
}
