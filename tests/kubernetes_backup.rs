//! Every Kubernetes object, as a user backs them up: `lifeboatd run` with a
//! `kind = "kubernetes"` job against the protocol-level test API server
//! (no real API server can run here) loaded with a home cluster; `lifeboat
//! restore` gives back one canonical YAML document per object, nothing the
//! server owns, nothing that must not be restored, and a second run stores
//! only what changed.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use lifeboat_tests::cli::{Installation, report_item, summary};
use lifeboat_tests::kubernetes::{KubeApiServer, fixtures};
use serde_json::Value;

/// The objects a default backup must leave out, as (group, resource, name).
const LEFT_OUT: &[(&str, &str, &str)] = &[
    ("", "events", "web.17a3"),
    ("", "nodes", "talos-cp-1"),
    ("", "nodes", "talos-worker-1"),
    ("coordination.k8s.io", "leases", "kube-controller-manager"),
    ("storage.k8s.io", "csinodes", "talos-worker-1"),
    ("storage.k8s.io", "volumeattachments", "csi-0a1b2c"),
    ("", "endpoints", "web"),
    ("discovery.k8s.io", "endpointslices", "web-abcde"),
    ("", "configmaps", "scratch"),
];

struct Setup {
    _volumes: tempfile::TempDir,
    server: KubeApiServer,
    installation: Installation,
}

async fn setup(source: &str) -> Result<Setup> {
    let volumes = tempfile::tempdir()?;
    let (_, server, installation) =
        fixtures::installation(volumes.path(), &[("objects", source)]).await?;
    Ok(Setup {
        _volumes: volumes,
        server,
        installation,
    })
}

/// The file a stored object is restored to.
fn object_file(
    root: &Path,
    group: &str,
    resource: &str,
    namespace: &str,
    name: &str,
) -> std::path::PathBuf {
    let group = if group.is_empty() { "core" } else { group };
    let scope = if namespace.is_empty() {
        "_cluster"
    } else {
        namespace
    };
    root.join(group)
        .join(resource)
        .join(scope)
        .join(format!("{name}.yaml"))
}

fn read_yaml(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Every `.yaml` file under `root`, relative.
fn yaml_files(root: &Path) -> Result<BTreeSet<String>> {
    let mut found = BTreeSet::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                found.insert(path.strip_prefix(root)?.display().to_string());
            }
        }
    }
    Ok(found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_object_round_trips_as_canonical_yaml_and_unchanged_objects_deduplicate() -> Result<()>
{
    let Setup {
        _volumes,
        server,
        installation,
    } = setup(r#"{ kind = "kubernetes", kubeconfig = "kubeconfig", page_size = 3 }"#).await?;
    let first = tokio::task::block_in_place(|| installation.backup("objects"))?;
    for (name, outcome) in [
        ("events", "skipped"),
        ("nodes", "skipped"),
        ("coordination.k8s.io/leases", "skipped"),
        ("authentication.k8s.io/tokenreviews", "skipped"),
        ("secrets", "stored"),
        ("apiextensions.k8s.io/customresourcedefinitions", "stored"),
        ("argoproj.io/applications", "stored"),
    ] {
        ensure!(
            report_item(&first, "resource", name)?["outcome"] == outcome,
            "{name} should be {outcome}: {first:#}"
        );
    }
    ensure!(
        report_item(&first, "resource", "configmaps")?["detail"]
            == "3 objects, 1 left out (see lifeboat-inventory.json)",
        "{first:#}"
    );

    let restored = installation.path("restored");
    tokio::task::block_in_place(|| {
        installation.restore(&installation.restore_key(), "latest:objects", &restored)
    })?
    .ok()?;

    let left_out: BTreeSet<(String, String, String)> = LEFT_OUT
        .iter()
        .map(|(g, r, n)| ((*g).to_owned(), (*r).to_owned(), (*n).to_owned()))
        .collect();
    let mut expected = BTreeSet::new();
    for ((group, resource, namespace, name), object) in server.objects() {
        let file = object_file(&restored, &group, &resource, &namespace, &name);
        if left_out.contains(&(group.clone(), resource.clone(), name.clone())) {
            ensure!(!file.exists(), "{} must be left out", file.display());
            continue;
        }
        expected.insert(file.strip_prefix(&restored)?.display().to_string());
        let stored = read_yaml(&file)?;
        let metadata = &stored["metadata"];
        for owned in [
            "uid",
            "resourceVersion",
            "managedFields",
            "creationTimestamp",
            "generation",
        ] {
            ensure!(
                metadata.get(owned).is_none(),
                "{} keeps metadata.{owned}",
                file.display()
            );
        }
        ensure!(
            stored.get("status").is_none(),
            "{} keeps its status",
            file.display()
        );
        ensure!(
            stored["kind"] == object["kind"],
            "{} has kind {}",
            file.display(),
            stored["kind"]
        );
        for field in ["spec", "data", "rules", "subjects", "roleRef"] {
            ensure!(
                stored.get(field) == object.get(field),
                "{}: {field} differs",
                file.display()
            );
        }
        ensure!(
            metadata.get("ownerReferences") == object["metadata"].get("ownerReferences")
                && metadata.get("labels") == object["metadata"].get("labels"),
            "{}: owner references and labels are kept",
            file.display()
        );
    }
    ensure!(
        yaml_files(&restored)? == expected,
        "exactly the expected objects are stored"
    );
    let hpa = read_yaml(&object_file(
        &restored,
        "autoscaling",
        "horizontalpodautoscalers",
        "apps",
        "web",
    ))?;
    ensure!(
        hpa["apiVersion"] == "autoscaling/v2",
        "stored at the preferred version: {hpa}"
    );
    let endpoints = read_yaml(&object_file(
        &restored,
        "",
        "endpoints",
        "apps",
        "unraid-postgres",
    ))?;
    ensure!(
        endpoints["apiVersion"] == "v1",
        "hand-made Endpoints of a selectorless Service are kept"
    );

    let inventory: Value =
        serde_json::from_slice(&std::fs::read(restored.join("lifeboat-inventory.json"))?)?;
    let configmaps = inventory["resources"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["resource"] == "configmaps"))
        .context("no configmaps in the inventory")?;
    ensure!(
        configmaps["objects"] == serde_json::json!({"apps": 1, "kube-system": 1, "monitoring": 1}),
        "{inventory:#}"
    );

    let metadata = installation.latest_metadata("objects")?;
    ensure!(metadata["resources"]["configmaps"] == 3, "{metadata:#}");
    ensure!(metadata["objects"] == expected.len() as u64, "{metadata:#}");
    let readable = metadata.to_string();
    for name in ["flux-system", "web-config", "databases", "postgres-0"] {
        ensure!(
            !readable.contains(name),
            "the service-key metadata names {name}: {readable}"
        );
    }

    server.edit("", "configmaps", "apps", "web-config", |object| {
        object["data"]["LOG_LEVEL"] = "debug".into();
    })?;
    let second = tokio::task::block_in_place(|| installation.backup("objects"))?;
    let (first_added, second_added) = (
        summary(&first, "bytes_added")?,
        summary(&second, "bytes_added")?,
    );
    ensure!(
        first_added > 200_000,
        "the first run stores the 1 MB ConfigMap (compressed): {first_added}"
    );
    ensure!(
        summary(&second, "blobs_added")? <= 6 && second_added < 16 * 1024,
        "one changed object adds its document and the trees above it: {second:#}"
    );
    let again = installation.path("again");
    tokio::task::block_in_place(|| {
        installation.restore(&installation.restore_key(), "latest:objects", &again)
    })?
    .ok()?;
    let changed = read_yaml(&object_file(&again, "", "configmaps", "apps", "web-config"))?;
    ensure!(changed["data"]["LOG_LEVEL"] == "debug", "{changed}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_choose_namespaces_resources_and_labels() -> Result<()> {
    let Setup {
        _volumes,
        server: _server,
        installation,
    } = setup(
        r#"{ kind = "kubernetes", kubeconfig = "kubeconfig", namespaces = ["apps"], exclude_resources = ["Role", "services"], labels = "app=web", cluster_scoped = false }"#,
    )
    .await?;
    let report = tokio::task::block_in_place(|| installation.backup("objects"))?;
    ensure!(
        report_item(&report, "resource", "rbac.authorization.k8s.io/roles")?["outcome"]
            == "skipped",
        "{report:#}"
    );
    let restored = installation.path("restored");
    tokio::task::block_in_place(|| {
        installation.restore(&installation.restore_key(), "latest:objects", &restored)
    })?
    .ok()?;
    let expected: BTreeSet<String> = [
        "apps/deployments/apps/web.yaml",
        "apps/replicasets/apps/web-7d9f8c.yaml",
        "core/configmaps/apps/web-config.yaml",
        "core/pods/apps/web-7d9f8c-x2x9q.yaml",
        "core/secrets/apps/web-secret.yaml",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    ensure!(
        yaml_files(&restored)? == expected,
        "only labelled objects of apps, no cluster-scoped ones: {:#?}",
        yaml_files(&restored)?
    );
    Ok(())
}

#[test]
fn an_unreachable_api_server_fails_the_run_naming_it() -> Result<()> {
    let installation = Installation::local()?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    drop(listener);
    std::fs::write(
        installation.path("kubeconfig"),
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\n\
             users:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n"
        ),
    )?;
    installation.write_config(
        &[],
        &[(
            "objects",
            r#"{ kind = "kubernetes", kubeconfig = "kubeconfig" }"#,
        )],
    )?;
    let failed = installation.start_backup("objects")?.wait()?.failed()?;
    let output = failed.output();
    ensure!(
        output.contains("listing the core API versions (/api)"),
        "{output}"
    );
    let missing = Installation::local()?;
    missing.write_config(
        &[],
        &[(
            "objects",
            r#"{ kind = "kubernetes", kubeconfig = "nowhere.yaml" }"#,
        )],
    )?;
    let output = missing.start_backup("objects")?.wait()?.failed()?.output();
    ensure!(
        output.contains("cannot use the kubeconfig") && output.contains("nowhere.yaml"),
        "{output}"
    );
    Ok(())
}
