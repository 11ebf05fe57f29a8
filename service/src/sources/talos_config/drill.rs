//! Drilling the Talos configuration: restore with mode 0600, compare every
//! file with the tree, parse the YAML.

use std::sync::Arc;

use crate::drill::JobRun;
use crate::sources::talos_config::restore::{check_yaml, restore_private};

/// Restores the files, checks their hashes and parses them.
pub(crate) async fn verify(run: &mut JobRun<'_>) {
    let (reader, root) = (run.reader, run.entry.snapshot.root);
    let target = run.scratch.join("talos");
    let restored = run
        .step(
            "restore",
            restore_private(reader, root, &target, false, Arc::default()),
        )
        .await;
    if restored.is_none() {
        return;
    }
    crate::drill::files::verify_tree(run, &target).await;
    let parsed = run.step("parse YAML", async { check_yaml(&target) }).await;
    if let Some(parsed) = parsed {
        run.note(format!(
            "{} files, {} YAML",
            parsed.files, parsed.yaml_files
        ));
        if parsed.files == 0 {
            run.fail("the snapshot holds no Talos files");
        }
        run.fail_on("Talos files do not parse", &parsed.problems);
    }
}
