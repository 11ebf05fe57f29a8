//! Volumes and directories: the whole snapshot under `--target`, one PVC
//! straight into `--target` (several under it at their host paths), or
//! back at the host paths with `--in-place` (all, or the PVCs named with
//! `--pvc`).

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
    /// Volumes: only this PVC (NAMESPACE/NAME; repeatable).
    #[arg(long = "pvc", value_name = "NAMESPACE/NAME")]
    pvcs: Vec<String>,
}

impl VolumeArgs {
    /// Whether any of these flags was given.
    pub fn given(&self) -> bool {
        self.in_place || !self.pvcs.is_empty()
    }
}

/// Restores a volumes or directory snapshot.
pub async fn run(restoring: &Restoring<'_>, args: &VolumeArgs) -> anyhow::Result<()> {
    if !args.in_place && args.pvcs.is_empty() {
        restoring
            .target("the folder the snapshot goes to, or --in-place for the original paths")?;
        return super::files::run(restoring, "").await;
    }
    let (reader, entry) = (restoring.reader, restoring.entry);
    let layout = Layout::read(reader, entry.snapshot.root).await?;
    let units = layout.select(&args.pvcs)?;
    let placement = if args.in_place {
        Placement::InPlace
    } else {
        let target =
            PathBuf::from(restoring.target("the folder the PVCs' files go to, or --in-place")?);
        match units.as_slice() {
            [_] => Placement::Into(target),
            _ => Placement::Under(target),
        }
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
