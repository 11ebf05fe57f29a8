//! Restoring Kubernetes objects: a `kubernetes` snapshot of the fixture
//! cluster, taken by `lifeboatd run` and restored to files by `lifeboat
//! restore`, is applied with server-side apply to an empty test API server
//! (protocol-level; no real API server can run here), which records the
//! order of the applies: CRDs first and their custom resources only once
//! they are established, namespaces before what lives in them, workloads
//! last, controller-made objects left to their controllers.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use lifeboat::sources::kubernetes::restore::documents::{check_inventory, load};
use lifeboat::sources::kubernetes::restore::order::rank;
use lifeboat::sources::kubernetes::restore::{ApplyOptions, ApplyReport, Existing, Outcome, apply};
use lifeboat_tests::cli::{Installation, write_file};
use lifeboat_tests::kubernetes::{KubeApiServer, fixtures};
use serde_json::{Value, json};

/// Backs up the fixture cluster and restores the snapshot's files.
async fn restored_snapshot() -> Result<(tempfile::TempDir, Installation, PathBuf)> {
    let volumes = tempfile::tempdir()?;
    let source = r#"{ kind = "kubernetes", kubeconfig = "kubeconfig" }"#;
    let (_cluster, _server, installation) =
        fixtures::installation(volumes.path(), &[("objects", source)]).await?;
    tokio::task::block_in_place(|| installation.backup("objects"))?;
    let files = installation.path("objects");
    tokio::task::block_in_place(|| {
        installation.restore(&installation.restore_key(), "latest:objects", &files)
    })?
    .ok()?;
    Ok((volumes, installation, files))
}

/// An empty cluster: only the `default` namespace.
async fn empty_cluster(dir: &std::path::Path) -> Result<(KubeApiServer, kube::Client)> {
    let server = KubeApiServer::start(vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}),
    ])
    .await?;
    connected(server, dir).await
}

/// `server` with a client of its own kubeconfig in `dir`.
async fn connected(
    server: KubeApiServer,
    dir: &std::path::Path,
) -> Result<(KubeApiServer, kube::Client)> {
    let path = dir.join(format!(
        "kubeconfig-{}",
        server.url().replace([':', '/', '.'], "-")
    ));
    server.write_kubeconfig(&path)?;
    let client = lifeboat::k8s::connect(Some(&path), None).await?;
    Ok((server, client))
}

fn result<'a>(
    report: &'a ApplyReport,
    object: &str,
) -> Result<&'a lifeboat::sources::kubernetes::restore::ObjectResult> {
    report
        .objects
        .iter()
        .find(|o| o.object == object)
        .with_context(|| format!("no result for {object}: {report:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_are_applied_in_dependency_order_into_an_empty_cluster() -> Result<()> {
    let (_volumes, installation, files) = restored_snapshot().await?;
    // A kind the new cluster does not serve fails alone.
    write_file(
        &files.join("example.com/gizmos/apps/g1.yaml"),
        b"apiVersion: example.com/v1\nkind: Gizmo\nmetadata:\n  name: g1\n  namespace: apps\n",
    )?;
    let (documents, problems) = load(&files)?;
    ensure!(problems.is_empty(), "{problems:?}");
    let (server, client) = empty_cluster(installation.root()).await?;
    let report = apply(&client, documents.clone(), &ApplyOptions::default()).await?;

    let gizmo = result(&report, "example.com/gizmos apps/g1")?;
    ensure!(
        gizmo.outcome == Outcome::Failed && gizmo.reason.contains("not served"),
        "{gizmo:?}"
    );
    ensure!(report.count(Outcome::Failed) == 1, "{report:#?}");
    for (object, controller) in [
        ("apps/replicasets apps/web-7d9f8c", "Deployment/web"),
        ("pods apps/web-7d9f8c-x2x9q", "ReplicaSet/web-7d9f8c"),
        ("pods databases/postgres-0", "StatefulSet/postgres"),
    ] {
        let skipped = result(&report, object)?;
        ensure!(
            skipped.outcome == Outcome::Skipped && skipped.reason.contains(controller),
            "{skipped:?}"
        );
    }
    ensure!(result(&report, "pods monitoring/grafana-5c6d7-abcde")?.outcome == Outcome::Created);

    let writes: Vec<_> = server
        .writes()
        .into_iter()
        .filter(|w| w.verb == "apply")
        .collect();
    ensure!(
        writes
            .iter()
            .all(|w| w.status < 300 && w.field_manager.as_deref() == Some("lifeboat")),
        "{writes:#?}"
    );
    let ranks: Vec<u8> = writes.iter().map(|w| rank(&w.group, &w.resource)).collect();
    ensure!(
        ranks.windows(2).all(|p| p[0] <= p[1]),
        "applies in dependency order: {ranks:?}"
    );
    let position = |group: &str, resource: &str, name: &str| {
        writes
            .iter()
            .position(|w| w.group == group && w.resource == resource && w.name == name)
            .with_context(|| format!("{group}/{resource} {name} was not applied"))
    };
    ensure!(
        position(
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "kustomizations.kustomize.toolkit.fluxcd.io"
        )? < position("kustomize.toolkit.fluxcd.io", "kustomizations", "apps")?,
        "the CRD comes first; its custom resource was accepted (status < 300), so the CRD was established"
    );
    ensure!(position("", "namespaces", "apps")? < position("", "configmaps", "web-config")?);
    ensure!(
        position("", "persistentvolumes", "pvc-4f1c2d3e")?
            < position("", "persistentvolumeclaims", "data-postgres-0")?
    );

    let deployment = server
        .object("apps", "deployments", "apps", "web")
        .context("no deployment")?;
    let original = documents
        .iter()
        .find(|d| d.resource == "deployments" && d.name == "web")
        .context("no stored deployment")?;
    ensure!(
        deployment["spec"] == original.object["spec"],
        "the spec round-trips"
    );
    let service = server
        .object("", "services", "apps", "web")
        .context("no service")?;
    ensure!(
        service["spec"].get("clusterIP").is_none(),
        "the new cluster assigns cluster IPs: {service}"
    );

    // Applied again, everything exists and is left alone.
    let before = server.writes().len();
    let again = apply(&client, documents, &ApplyOptions::default()).await?;
    ensure!(
        again.count(Outcome::Created) == 0 && again.count(Outcome::Updated) == 0,
        "{again:#?}"
    );
    ensure!(
        server.writes()[before..]
            .iter()
            .all(|w| w.verb != "apply" || w.status >= 300),
        "nothing was written the second time"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_change_nothing_and_namespaces_can_be_renamed() -> Result<()> {
    let (_volumes, installation, files) = restored_snapshot().await?;
    let (documents, _) = load(&files)?;

    let (server, client) = empty_cluster(installation.root()).await?;
    let dry = ApplyOptions {
        dry_run: true,
        ..ApplyOptions::default()
    };
    let report = apply(&client, documents.clone(), &dry).await?;
    ensure!(
        server.writes().iter().all(|w| w.dry_run),
        "every write is a dry run"
    );
    ensure!(
        server.objects().len() == 1,
        "nothing was stored: {:?}",
        server.objects().len()
    );
    let custom = result(
        &report,
        "kustomize.toolkit.fluxcd.io/kustomizations flux-system/apps",
    )?;
    ensure!(custom.outcome == Outcome::Skipped, "{custom:?}");

    let (copy, client) = empty_cluster(installation.root()).await?;
    let renamed = ApplyOptions {
        namespaces: vec!["apps".into()],
        cluster_scoped: false,
        namespace_map: BTreeMap::from([("apps".to_owned(), "apps-copy".to_owned())]),
        existing: Existing::Update,
        ..ApplyOptions::default()
    };
    let report = apply(&client, documents, &renamed).await?;
    ensure!(report.count(Outcome::Failed) == 0, "{report:#?}");
    ensure!(
        copy.object("", "namespaces", "", "apps-copy").is_some(),
        "the namespace is renamed"
    );
    ensure!(
        copy.object("", "configmaps", "apps-copy", "web-config")
            .is_some()
    );
    let binding = copy
        .object(
            "rbac.authorization.k8s.io",
            "rolebindings",
            "apps-copy",
            "web-config-reader",
        )
        .context("no role binding")?;
    ensure!(
        binding["subjects"][0]["namespace"] == "apps-copy",
        "{binding}"
    );
    ensure!(
        copy.objects()
            .iter()
            .all(|((_, _, ns, name), _)| ns != "apps" && name != "lifeboat-reader"),
        "nothing of the old namespace or cluster-scoped"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_documents_match_the_inventory_and_a_lost_one_is_named() -> Result<()> {
    let (_volumes, _installation, files) = restored_snapshot().await?;
    let (documents, problems) = load(&files)?;
    ensure!(problems.is_empty());
    ensure!(
        check_inventory(&files, &documents)
            .map_err(anyhow::Error::msg)?
            .is_empty()
    );
    std::fs::remove_file(files.join("core/secrets/apps/web-secret.yaml"))?;
    std::fs::write(
        files.join("core/configmaps/apps/web-config.yaml"),
        "kind: [",
    )?;
    let (documents, problems) = load(&files)?;
    ensure!(
        problems.len() == 1 && problems[0].0.ends_with("web-config.yaml"),
        "{problems:?}"
    );
    let differences = check_inventory(&files, &documents).map_err(anyhow::Error::msg)?;
    ensure!(
        differences
            == [
                "configmaps in apps: 0 objects restored, 1 recorded",
                "secrets in apps: 0 objects restored, 1 recorded"
            ],
        "{differences:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifeboat_restore_apply_and_drill_work_from_the_command_line() -> Result<()> {
    let (_volumes, installation, _files) = restored_snapshot().await?;
    let (server, _client) = empty_cluster(installation.root()).await?;
    let kubeconfig = installation.path("target-kubeconfig");
    server.write_kubeconfig(&kubeconfig)?;
    let key = installation.restore_key().display().to_string();
    let config = kubeconfig.display().to_string();
    let args = |extra: &[&str]| {
        let mut args = vec![
            "-i",
            key.as_str(),
            "latest:objects",
            "--apply",
            "--kubeconfig",
            config.as_str(),
            "--json",
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };

    let dry = tokio::task::block_in_place(|| {
        installation.lifeboat_repo("restore", &args(&["--dry-run", "--no-suspend"]))
    })?
    .ok()?
    .json()?;
    ensure!(dry["report"]["dry_run"] == true, "{dry:#}");
    ensure!(server.objects().len() == 1, "a dry run stores nothing");

    let applied = tokio::task::block_in_place(|| {
        installation.lifeboat_repo(
            "restore",
            &args(&[
                "--namespace",
                "apps",
                "--namespace-map",
                "apps=apps-restored",
            ]),
        )
    })?
    .ok()?
    .json()?;
    let objects = applied["report"]["objects"]
        .as_array()
        .context("no objects")?;
    ensure!(
        objects.iter().all(|o| o["outcome"] != "failed"),
        "{applied:#}"
    );
    ensure!(
        server
            .object("apps", "deployments", "apps-restored", "web")
            .is_some()
    );

    let refused = tokio::task::block_in_place(|| {
        installation.lifeboat_repo("restore", &args(&["--namespace-map", "apps"]))
    })?
    .failed()?
    .output();
    ensure!(
        refused.contains("--namespace-map \"apps\" is not KEY=VALUE"),
        "{refused}"
    );

    let mut command = installation.command("lifeboat")?;
    command
        .arg("drill")
        .arg("--config")
        .arg(installation.config())
        .arg("-i")
        .arg(installation.restore_key())
        .args([
            "--report",
            "drill.json",
            "--junit",
            "drill.xml",
            "--job",
            "objects",
            "--kube-dry-run",
        ])
        .arg(&kubeconfig);
    tokio::task::block_in_place(|| lifeboat_tests::cli::run(&mut command))?.ok()?;
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(installation.path("drill.json"))?)?;
    let text = report.to_string();
    for step in [
        "parse objects",
        "compare with the inventory",
        "server-side dry run",
    ] {
        ensure!(text.contains(step), "the drill ran {step}: {report:#}");
    }
    Ok(())
}

/// A cluster where Flux and Argo CD run: the managers the snapshot's
/// objects name are live (flux-system above apps, a HelmRelease below it,
/// an Application), one Kustomization was suspended by hand.
async fn gitops_cluster(dir: &std::path::Path) -> Result<(KubeApiServer, kube::Client)> {
    let crd = |plural: &str, group: &str, kind: &str, version: &str| {
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
               "metadata": {"name": format!("{plural}.{group}")},
               "spec": {"group": group, "scope": "Namespaced",
                        "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase()},
                        "versions": [{"name": version, "served": true, "storage": true}]}})
    };
    let flux = |kind: &str,
                version: &str,
                namespace: &str,
                name: &str,
                parent: Option<&str>,
                spec: Value| {
        let group = if kind == "HelmRelease" {
            "helm"
        } else {
            "kustomize"
        };
        let mut labels = json!({});
        if let Some(parent) = parent {
            labels = json!({"kustomize.toolkit.fluxcd.io/name": parent,
                            "kustomize.toolkit.fluxcd.io/namespace": "flux-system"});
        }
        json!({"apiVersion": format!("{group}.toolkit.fluxcd.io/{version}"), "kind": kind,
               "metadata": {"name": name, "namespace": namespace, "labels": labels}, "spec": spec})
    };
    let namespace =
        |name: &str| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    let server = KubeApiServer::start(vec![
        namespace("default"),
        namespace("flux-system"),
        namespace("argocd"),
        namespace("monitoring"),
        crd("kustomizations", "kustomize.toolkit.fluxcd.io", "Kustomization", "v1"),
        crd("helmreleases", "helm.toolkit.fluxcd.io", "HelmRelease", "v2"),
        crd("applications", "argoproj.io", "Application", "v1alpha1"),
        flux("Kustomization", "v1", "flux-system", "flux-system", None, json!({"interval": "10m", "path": "./clusters/home"})),
        flux("Kustomization", "v1", "flux-system", "apps", Some("flux-system"), json!({"interval": "10m", "suspend": false})),
        flux("Kustomization", "v1", "flux-system", "manual", Some("flux-system"), json!({"interval": "1h", "suspend": true})),
        flux("HelmRelease", "v2", "monitoring", "prometheus", Some("apps"), json!({"interval": "30m"})),
        json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
               "metadata": {"name": "grafana", "namespace": "argocd"},
               "spec": {"project": "default", "syncPolicy": {"automated": {"prune": true, "selfHeal": true}}}}),
    ])
    .await?;
    connected(server, dir).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitops_managers_are_suspended_around_the_apply_and_resumed_exactly() -> Result<()> {
    let (_volumes, installation, files) = restored_snapshot().await?;
    // Objects managed by a HelmRelease and by the hand-suspended
    // Kustomization, a webhook, and a kind the cluster does not serve
    // (its apply fails: the managers must still be resumed).
    write_file(
        &files.join("core/configmaps/monitoring/prometheus-rules.yaml"),
        b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: prometheus-rules\n  namespace: monitoring\n  labels:\n    helm.toolkit.fluxcd.io/name: prometheus\n    helm.toolkit.fluxcd.io/namespace: monitoring\n",
    )?;
    write_file(
        &files.join("core/configmaps/apps/by-hand.yaml"),
        b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: by-hand\n  namespace: apps\n  labels:\n    kustomize.toolkit.fluxcd.io/name: manual\n    kustomize.toolkit.fluxcd.io/namespace: flux-system\n",
    )?;
    write_file(
        &files.join("admissionregistration.k8s.io/validatingwebhookconfigurations/_cluster/policy.yaml"),
        b"apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata:\n  name: policy\nwebhooks: []\n",
    )?;
    write_file(
        &files.join("example.com/gizmos/apps/g1.yaml"),
        b"apiVersion: example.com/v1\nkind: Gizmo\nmetadata:\n  name: g1\n  namespace: apps\n",
    )?;
    let (documents, problems) = load(&files)?;
    ensure!(problems.is_empty(), "{problems:?}");
    let (server, client) = gitops_cluster(installation.root()).await?;
    let manager = |group: &str, resource: &str, namespace: &str, name: &str| {
        server
            .object(group, resource, namespace, name)
            .with_context(|| format!("{resource} {namespace}/{name} is gone"))
    };
    let before_app = manager("argoproj.io", "applications", "argocd", "grafana")?;
    let report = apply(&client, documents.clone(), &ApplyOptions::default()).await?;
    ensure!(
        result(&report, "example.com/gizmos apps/g1")?.outcome == Outcome::Failed,
        "{report:#?}"
    );

    let actions: BTreeMap<(String, String), usize> =
        report.gitops.iter().fold(BTreeMap::new(), |mut counts, m| {
            let action = serde_json::to_value(m.action).unwrap_or_default();
            *counts
                .entry((
                    m.manager.clone(),
                    action.as_str().unwrap_or_default().to_owned(),
                ))
                .or_default() += 1;
            counts
        });
    let expected: BTreeMap<(String, String), usize> = [
        ("Kustomization flux-system/flux-system", "suspended"),
        ("Kustomization flux-system/flux-system", "resumed"),
        ("Kustomization flux-system/apps", "suspended"),
        ("Kustomization flux-system/apps", "resumed"),
        ("HelmRelease monitoring/prometheus", "suspended"),
        ("HelmRelease monitoring/prometheus", "resumed"),
        ("Application argocd/grafana", "suspended"),
        ("Application argocd/grafana", "resumed"),
        ("Kustomization flux-system/manual", "left-suspended"),
    ]
    .into_iter()
    .map(|(m, a)| ((m.to_owned(), a.to_owned()), 1))
    .collect();
    ensure!(actions == expected, "{:#?}", report.gitops);

    // Every suspension before the first apply, every resumption after the last.
    let writes = server.writes();
    let is_manager = |w: &lifeboat_tests::kubernetes::Write| {
        ["kustomizations", "helmreleases", "applications"].contains(&w.resource.as_str())
    };
    let first_apply = writes
        .iter()
        .position(|w| w.verb == "apply")
        .context("no apply")?;
    let last_apply = writes
        .iter()
        .rposition(|w| w.verb == "apply")
        .context("no apply")?;
    let patches: Vec<usize> = (0..writes.len())
        .filter(|&i| writes[i].verb == "patch" && is_manager(&writes[i]))
        .collect();
    ensure!(
        patches.len() == 8
            && patches[..4].iter().all(|&i| i < first_apply)
            && patches[4..].iter().all(|&i| i > last_apply)
            && writes
                .iter()
                .all(|w| w.status < 300 || w.resource == "gizmos"),
        "four suspensions before the applies, four resumptions after: {writes:#?}"
    );
    ensure!(
        !writes
            .iter()
            .any(|w| w.verb == "patch" && w.name == "manual"),
        "the hand-suspended Kustomization is never touched"
    );
    let position = |resource: &str, name: &str| {
        writes
            .iter()
            .position(|w| w.verb == "apply" && w.resource == resource && w.name == name)
            .with_context(|| format!("{resource} {name} was not applied"))
    };
    ensure!(
        position("validatingwebhookconfigurations", "policy")? > position("deployments", "web")?,
        "webhooks come after the workloads"
    );

    // Each manager is back as it was, without lifeboat's mark.
    let mark = lifeboat::k8s::gitops::SUSPENDED_ANNOTATION;
    for (group, resource, namespace, name, suspend) in [
        (
            "kustomize.toolkit.fluxcd.io",
            "kustomizations",
            "flux-system",
            "flux-system",
            Value::Null,
        ),
        (
            "kustomize.toolkit.fluxcd.io",
            "kustomizations",
            "flux-system",
            "apps",
            json!(false),
        ),
        (
            "kustomize.toolkit.fluxcd.io",
            "kustomizations",
            "flux-system",
            "manual",
            json!(true),
        ),
        (
            "helm.toolkit.fluxcd.io",
            "helmreleases",
            "monitoring",
            "prometheus",
            Value::Null,
        ),
    ] {
        let live = manager(group, resource, namespace, name)?;
        ensure!(
            live["spec"]["suspend"] == suspend && live["metadata"]["annotations"][mark].is_null(),
            "{name} is as it was: {live:#}"
        );
    }
    let app = manager("argoproj.io", "applications", "argocd", "grafana")?;
    ensure!(
        app["spec"]["syncPolicy"] == before_app["spec"]["syncPolicy"]
            && app["metadata"]["annotations"][mark].is_null(),
        "the Application syncs automatically again: {app:#}"
    );

    // A run that died after suspending leaves its mark: the next run keeps
    // the manager suspended and resumes it. Without suspension, nothing
    // is patched.
    let mut crashed = manager(
        "kustomize.toolkit.fluxcd.io",
        "kustomizations",
        "flux-system",
        "apps",
    )?;
    crashed["spec"]["suspend"] = json!(true);
    crashed["metadata"]["annotations"] = json!({ mark: "false" });
    server.load(crashed)?;
    let options = ApplyOptions {
        resources: vec!["Deployment".into()],
        ..ApplyOptions::default()
    };
    let again = apply(&client, documents.clone(), &options).await?;
    let apps: Vec<_> = again
        .gitops
        .iter()
        .filter(|m| m.manager == "Kustomization flux-system/apps")
        .map(|m| m.action)
        .collect();
    use lifeboat::k8s::gitops::Action;
    ensure!(
        apps == [Action::StillSuspended, Action::Resumed],
        "{:#?}",
        again.gitops
    );
    let apps = manager(
        "kustomize.toolkit.fluxcd.io",
        "kustomizations",
        "flux-system",
        "apps",
    )?;
    ensure!(apps["spec"]["suspend"] == false && apps["metadata"]["annotations"][mark].is_null());
    let patched = server.writes().iter().filter(|w| w.verb == "patch").count();
    let untouched = ApplyOptions {
        suspend_gitops: false,
        ..options
    };
    let plain = apply(&client, documents, &untouched).await?;
    ensure!(plain.gitops.is_empty(), "{:#?}", plain.gitops);
    ensure!(
        server.writes().iter().filter(|w| w.verb == "patch").count() == patched,
        "--no-suspend patches no manager"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managers_restored_into_an_empty_cluster_are_created_suspended_then_resumed() -> Result<()>
{
    let (_volumes, installation, files) = restored_snapshot().await?;
    let (documents, _) = load(&files)?;
    let (server, client) = empty_cluster(installation.root()).await?;
    let report = apply(&client, documents, &ApplyOptions::default()).await?;
    use lifeboat::k8s::gitops::Action;
    let mut resumed: Vec<&str> = report
        .gitops
        .iter()
        .filter(|m| m.action == Action::Resumed)
        .map(|m| m.manager.as_str())
        .collect();
    resumed.sort_unstable();
    ensure!(
        resumed
            == [
                "Application argocd/grafana",
                "Kustomization flux-system/apps"
            ],
        "{:#?}",
        report.gitops
    );
    let apps = server
        .object(
            "kustomize.toolkit.fluxcd.io",
            "kustomizations",
            "flux-system",
            "apps",
        )
        .context("apps restored")?;
    let grafana = server
        .object("argoproj.io", "applications", "argocd", "grafana")
        .context("grafana restored")?;
    ensure!(
        apps["spec"].get("suspend").is_none()
            && grafana["spec"]["syncPolicy"]["automated"]["selfHeal"] == true
            && apps["metadata"]["annotations"][lifeboat::k8s::gitops::SUSPENDED_ANNOTATION]
                .is_null(),
        "restored as stored: {apps:#} {grafana:#}"
    );
    Ok(())
}
