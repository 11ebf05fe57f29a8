//! Drilling Kubernetes API objects: restore the documents, compare every
//! file with the tree, parse each as a Kubernetes object, compare the
//! counts per resource and namespace with the recorded inventory and,
//! when a target API server is given, apply everything as a server-side
//! dry run.

use crate::drill::JobRun;
use crate::drill::files::{restore_all, verify_tree};
use crate::sources::kubernetes::restore::documents::{check_inventory, load};
use crate::sources::kubernetes::restore::{ApplyOptions, Existing, Outcome, apply};

/// Restores, parses and counts the objects; dry-runs them when asked.
pub(crate) async fn verify(run: &mut JobRun<'_>) {
    let target = run.scratch.join("objects");
    if restore_all(run, "restore", &target).await.is_none() {
        return;
    }
    verify_tree(run, &target).await;
    let Some((documents, problems)) = run.step("parse objects", async { load(&target) }).await
    else {
        return;
    };
    run.note(format!("{} objects", documents.len()));
    let problems: Vec<String> = problems
        .iter()
        .map(|(path, why)| format!("{}: {why}", path.display()))
        .collect();
    run.fail_on("files are not Kubernetes objects", &problems);
    let counted = run
        .step("compare with the inventory", async {
            check_inventory(&target, &documents).map_err(std::io::Error::other)
        })
        .await;
    if let Some(differences) = counted {
        run.fail_on("object counts differ from the inventory", &differences);
    }
    let Some(kubeconfig) = run.settings.kube_dry_run.clone() else {
        return;
    };
    let dry_run = ApplyOptions {
        dry_run: true,
        existing: Existing::Update,
        ..ApplyOptions::default()
    };
    let applied = run
        .step("server-side dry run", async {
            let client = crate::k8s::connect(Some(&kubeconfig), None).await?;
            apply(&client, documents, &dry_run).await
        })
        .await;
    if let Some(report) = applied {
        run.note(format!(
            "{} accepted, {} skipped",
            report.count(Outcome::Created) + report.count(Outcome::Updated),
            report.count(Outcome::Skipped)
        ));
        let refused: Vec<String> = report
            .objects
            .iter()
            .filter(|o| o.outcome == Outcome::Failed)
            .map(|o| format!("{}: {}", o.object, o.reason))
            .collect();
        run.fail_on("the API server refused objects in a dry run", &refused);
    }
}
