//! The drill every kind builds on: restore everything, then read every
//! file back and compare it with the tree.

use std::path::Path;
use std::sync::Arc;

use crate::drill::JobRun;
use crate::restore::files::{RestoreOptions, RestoreReport, restore};
use crate::restore::verify::check_restored;

/// Restores the whole snapshot and checks every file's hash.
pub async fn verify(run: &mut JobRun<'_>) {
    let target = run.scratch.join("data");
    if restore_all(run, "restore", &target).await.is_some() {
        verify_tree(run, &target).await;
    }
}

/// Restores the whole snapshot into `target` as the step `step`, noting
/// what it wrote; `None` when it failed (the job is failed). Like every
/// walk of a snapshot, it has its own budget of tree entries.
pub async fn restore_all(run: &mut JobRun<'_>, step: &str, target: &Path) -> Option<RestoreReport> {
    let (reader, root) = (run.reader.for_walk(), run.entry.snapshot.root);
    let options = RestoreOptions::default();
    let restored = run
        .step(
            step,
            restore(&reader, root, "", target, &options, Arc::default()),
        )
        .await?;
    run.note(format!(
        "{} files, {} bytes",
        restored.files, restored.bytes
    ));
    Some(restored)
}

/// Compares everything restored under `target` with the snapshot's tree.
pub async fn verify_tree(run: &mut JobRun<'_>, target: &Path) {
    let (reader, root) = (run.reader, run.entry.snapshot.root);
    let checked = run
        .step("verify hashes", async {
            let reader = reader.for_walk();
            check_restored(&reader, reader.read_tree(&root).await?, "", target).await
        })
        .await;
    if let Some(checked) = checked {
        run.note(format!(
            "{} files, {} bytes hashed",
            checked.files, checked.bytes
        ));
        run.fail_on("restored files differ from the snapshot", &checked.problems);
    }
}
