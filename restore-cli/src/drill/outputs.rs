//! Writing the drill's files: the JSON report, JUnit XML and Prometheus
//! text, each written to a temporary file and renamed into place, so a
//! reader (node-exporter's textfile collector) never sees half a file.

use std::path::Path;

use anyhow::Context;
use lifeboat::drill::{DrillReport, junit, metrics};

use super::DrillArgs;

/// Writes every file the flags ask for.
pub fn write(report: &DrillReport, args: &DrillArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.report {
        replace(path, &serde_json::to_string_pretty(report)?)?;
    }
    if let Some(path) = &args.junit {
        replace(path, &junit::render(report))?;
    }
    if let Some(path) = &args.metrics {
        replace(path, &metrics::render(report))?;
    }
    Ok(())
}

/// Writes `text` to `path` through a temporary file beside it.
fn replace(path: &Path, text: &str) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?;
    let temporary = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::write(&temporary, text).with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))
}
