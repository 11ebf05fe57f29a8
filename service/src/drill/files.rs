//! The drill every kind builds on: restore everything, then read every
//! file back and compare it with the tree.

use std::sync::Arc;

use crate::drill::JobRun;
use crate::restore::files::{RestoreOptions, restore};
use crate::restore::verify::check_restored;

/// Restores the whole snapshot and checks every file's hash.
pub async fn verify(run: &mut JobRun<'_>) {
    let (reader, root) = (run.reader, run.entry.snapshot.root);
    let target = run.scratch.join("data");
    let restored = run
        .step(
            "restore",
            restore(
                &reader.for_walk(),
                root,
                "",
                &target,
                &RestoreOptions::default(),
                Arc::default(),
            ),
        )
        .await;
    let Some(restored) = restored else {
        return;
    };
    run.note(format!(
        "{} files, {} bytes",
        restored.files, restored.bytes
    ));
    verify_tree(run, &target).await;
}

/// Compares everything restored under `target` with the snapshot's tree.
pub async fn verify_tree(run: &mut JobRun<'_>, target: &std::path::Path) {
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
