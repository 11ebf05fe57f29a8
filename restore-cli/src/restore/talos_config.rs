//! Talos configuration: every file into `--target` with mode 0600.

use std::path::Path;

use lifeboat::restore::files::RestoreReport;
use lifeboat::sources::talos_config::restore::{YamlCheck, check_yaml, restore_private};
use serde::Serialize;

use super::Restoring;

/// What `--json` prints of a Talos configuration restore, beside the
/// snapshot and kind.
#[derive(Serialize)]
struct TalosConfigRestored<'a> {
    target: &'a Path,
    report: &'a RestoreReport,
    yaml: &'a YamlCheck,
}

/// Restores a talos-config snapshot and checks its YAML parses.
pub async fn run(restoring: &Restoring<'_>) -> anyhow::Result<()> {
    let target = restoring.target("the folder the Talos files go to")?;
    let entry = restoring.entry;
    let report = super::with_progress("restore", |progress| {
        restore_private(
            restoring.reader,
            entry.snapshot.root,
            target,
            restoring.force,
            progress,
        )
    })
    .await?;
    let yaml = check_yaml(target)?;
    let restored = TalosConfigRestored {
        target,
        report: &report,
        yaml: &yaml,
    };
    restoring.print(restored, || {
        let mut text = format!(
            "restored {} Talos files ({} YAML) of snapshot {} into {} with mode 0600",
            yaml.files,
            yaml.yaml_files,
            entry.id.short(),
            target.display()
        );
        for problem in &yaml.problems {
            text.push_str(&format!("\n  warning: {problem}"));
        }
        text
    })
}
