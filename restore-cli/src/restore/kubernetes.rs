//! Kubernetes objects: without `--apply`, the YAML documents into
//! `--target`; with it, applied to a cluster with server-side apply in
//! dependency order, with a per-object report.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use lifeboat::k8s::gitops::Action as GitopsAction;
use lifeboat::restore::files::{RestoreOptions, restore};
use lifeboat::sources::kubernetes::restore::documents::load;
use lifeboat::sources::kubernetes::restore::{ApplyOptions, ApplyReport, Existing, Outcome, apply};
use serde::Serialize;

use super::Restoring;

/// What `--json` prints of a Kubernetes restore, beside the snapshot and kind.
#[derive(Serialize)]
struct KubernetesRestored<'a> {
    report: &'a ApplyReport,
}

/// Flags for Kubernetes objects.
#[derive(Debug, Args)]
pub struct KubernetesArgs {
    /// Kubernetes: apply the objects to the cluster (server-side apply,
    /// field manager `lifeboat`); without it the YAML files go to --target.
    #[arg(long)]
    apply: bool,
    /// Kubernetes: the cluster's kubeconfig (default: KUBECONFIG,
    /// ~/.kube/config or in-cluster).
    #[arg(long, requires = "apply")]
    kubeconfig: Option<PathBuf>,
    /// Kubernetes: the kubeconfig context.
    #[arg(long, requires = "apply")]
    context: Option<String>,
    /// Kubernetes: only objects of this namespace (repeatable).
    #[arg(long = "namespace", value_name = "NS", requires = "apply")]
    namespaces: Vec<String>,
    /// Kubernetes: never objects of this namespace (repeatable).
    #[arg(long = "exclude-namespace", value_name = "NS", requires = "apply")]
    exclude_namespaces: Vec<String>,
    /// Kubernetes: only this resource (repeatable; deployments.apps,
    /// apps/deployments or Deployment).
    #[arg(long = "resource", value_name = "RESOURCE", requires = "apply")]
    resources: Vec<String>,
    /// Kubernetes: never this resource (repeatable).
    #[arg(long = "exclude-resource", value_name = "RESOURCE", requires = "apply")]
    exclude_resources: Vec<String>,
    /// Kubernetes: only objects with these labels (`app=web,tier=db`).
    #[arg(long, value_name = "KEY=VALUE,...", requires = "apply")]
    selector: Option<String>,
    /// Kubernetes: apply namespaced objects only, no cluster-scoped ones.
    #[arg(long, requires = "apply")]
    no_cluster_scoped: bool,
    /// Kubernetes: restore namespace OLD as NEW (repeatable).
    #[arg(long = "namespace-map", value_name = "OLD=NEW", requires = "apply")]
    namespace_map: Vec<String>,
    /// Kubernetes: a server-side dry run; nothing changes.
    #[arg(long, requires = "apply")]
    dry_run: bool,
    /// Kubernetes: what to do with objects that exist.
    #[arg(long, value_enum, default_value = "skip", requires = "apply")]
    existing: ExistingArg,
    /// Kubernetes: leave the Flux Kustomizations and HelmReleases and the
    /// Argo CD Applications managing the objects running (by default they
    /// are suspended while the objects are applied, then resumed).
    #[arg(long, requires = "apply")]
    no_suspend: bool,
}

/// `--existing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ExistingArg {
    /// Leave them as they are.
    Skip,
    /// Apply the stored version over them.
    Update,
}

impl KubernetesArgs {
    /// Whether any of these flags was given (the others need `--apply`).
    pub fn given(&self) -> bool {
        self.apply
    }

    fn options(&self) -> anyhow::Result<ApplyOptions> {
        let pairs = |text: &str, what: &str| -> anyhow::Result<(String, String)> {
            text.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .filter(|(k, v)| !k.is_empty() && !v.is_empty())
                .ok_or_else(|| anyhow::anyhow!("{what} {text:?} is not KEY=VALUE"))
        };
        let labels = match &self.selector {
            Some(selector) => selector
                .split(',')
                .map(|l| pairs(l, "--selector label"))
                .collect::<anyhow::Result<BTreeMap<_, _>>>()?,
            None => BTreeMap::new(),
        };
        let namespace_map = self
            .namespace_map
            .iter()
            .map(|m| pairs(m, "--namespace-map"))
            .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
        Ok(ApplyOptions {
            namespaces: self.namespaces.clone(),
            exclude_namespaces: self.exclude_namespaces.clone(),
            resources: self.resources.clone(),
            exclude_resources: self.exclude_resources.clone(),
            labels,
            cluster_scoped: !self.no_cluster_scoped,
            namespace_map,
            dry_run: self.dry_run,
            existing: match self.existing {
                ExistingArg::Skip => Existing::Skip,
                ExistingArg::Update => Existing::Update,
            },
            suspend_gitops: !self.no_suspend,
            ..ApplyOptions::default()
        })
    }
}

/// Restores a kubernetes snapshot.
pub async fn run(restoring: &Restoring<'_>, args: &KubernetesArgs) -> anyhow::Result<()> {
    if !args.apply {
        return super::files::run(restoring, "").await;
    }
    let options = args.options()?;
    let scratch = tempfile::tempdir()?;
    let folder = match restoring.target {
        Some(target) => target.to_owned(),
        None => scratch.path().join("objects"),
    };
    let entry = restoring.entry;
    let restore_options = RestoreOptions {
        force: restoring.force,
        ..RestoreOptions::default()
    };
    super::with_progress("restore", |progress| {
        restore(
            restoring.reader,
            entry.snapshot.root,
            "",
            &folder,
            &restore_options,
            progress,
        )
    })
    .await?;
    let (documents, problems) = load(&folder)?;
    for (path, why) in &problems {
        eprintln!(
            "warning: {} is not a Kubernetes object and is left out: {why}",
            path.display()
        );
    }
    let client =
        lifeboat::k8s::connect(args.kubeconfig.as_deref(), args.context.as_deref()).await?;
    let total = documents.len();
    eprintln!(
        "applying {total} objects of snapshot {}{}",
        entry.id.short(),
        if options.dry_run {
            " (server-side dry run)"
        } else {
            ""
        }
    );
    let report = apply(&client, documents, &options).await?;
    let failed = report.count(Outcome::Failed);
    let restored = KubernetesRestored { report: &report };
    restoring.print(restored, || {
        let mut text = String::new();
        for manager in &report.gitops {
            let action = serde_json::to_value(manager.action)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            text.push_str(&format!("gitops   {action:<15} {}", manager.manager));
            if !manager.reason.is_empty() {
                text.push_str(&format!(": {}", manager.reason));
            }
            text.push('\n');
        }
        for object in &report.objects {
            let outcome = serde_json::to_value(object.outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            text.push_str(&format!("{outcome:<8} {}", object.object));
            if !object.reason.is_empty() {
                text.push_str(&format!(": {}", object.reason));
            }
            text.push('\n');
        }
        text.push_str(&format!(
            "{} created, {} updated, {} skipped, {failed} failed{}",
            report.count(Outcome::Created),
            report.count(Outcome::Updated),
            report.count(Outcome::Skipped),
            if report.dry_run {
                " (dry run: nothing changed)"
            } else {
                ""
            }
        ));
        text
    })?;
    if failed > 0 {
        anyhow::bail!("{failed} objects were not applied; see the report above");
    }
    let stuck = report
        .gitops
        .iter()
        .filter(|m| m.action == GitopsAction::Failed)
        .count();
    if stuck > 0 {
        anyhow::bail!(
            "{stuck} GitOps managers could not be suspended or resumed; see the report above \
             (a later `lifeboat restore --apply` resumes those lifeboat suspended)"
        );
    }
    Ok(())
}
