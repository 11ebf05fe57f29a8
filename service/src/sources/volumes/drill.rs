//! Drilling volumes and directories: the layout read (the manifest's
//! volumes, or a directory snapshot's folders), then every file restored
//! and hashed against the tree.

use super::restore::Layout;
use crate::drill::{JobRun, files};

/// Reads the layout, restores the whole snapshot and checks every file.
pub(crate) async fn verify(run: &mut JobRun<'_>) {
    let (reader, root) = (run.reader, run.entry.snapshot.root);
    let layout = run.step("read layout", Layout::read(reader, root)).await;
    if let Some(layout) = &layout {
        let skipped = layout.manifest.as_ref().map_or(0, |m| m.skipped.len());
        run.note(format!(
            "{} folder(s), {skipped} PVC(s) skipped at backup",
            layout.units.len()
        ));
    }
    files::verify(run).await;
}
