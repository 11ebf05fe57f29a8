//! The Kubernetes manifests and monitoring files under `deploy/` against
//! what lifeboat really does:
//!
//! - the kustomize base and the example overlay render with `kubectl
//!   kustomize`; every document fits its k8s-openapi type with no field
//!   lost, and the custom resources (ServiceMonitor, PrometheusRule,
//!   GrafanaDashboard, Talos' ServiceAccount) have what their CRDs require;
//!   RBAC grants reading everything and, in the pod-exec component, exec;
//! - the rendered ConfigMap's lifeboat.toml and job files load with
//!   lifeboat's own config loader, and every path they name is mounted the
//!   way the service uses it (state writable, keys and host folders
//!   read-only, the talosconfig where the talos-etcd source looks, the
//!   PersistentVolumes' host paths at their own path);
//! - the Talos machine-config patch allows the namespace and role;
//! - the PrometheusRule passes `promtool check rules` and its unit tests
//!   (`promtool test rules`), and every alert points at a runbook section;
//! - every metric the dashboard and the alerts name is in a live scrape of
//!   a real `lifeboatd` after a backup, or in the text file a real
//!   `lifeboat drill` of that backup writes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use lifeboat::config::Config;
use lifeboat::sources::SourceConfig;
use lifeboat::sources::kubernetes::filter::EXCLUDE_LABEL;
use lifeboat::talos::config::IN_CLUSTER_PATH;
use lifeboat_tests::cli::{Installation, write_file};
use lifeboat_tests::deploy::kubernetes::{
    BASE, KUSTOMIZATIONS, OVERLAY, check_document, container, deployment, materialize, mount_of,
    pod_spec, pod_volumes, rendered,
};
use lifeboat_tests::deploy::{
    deploy_dir, describe, find, metric_names, of_kind, r2_variables, round_trip,
};
use lifeboat_tests::process::require_program;
use lifeboat_tests::prometheus::PrometheusServer;
use lifeboat_tests::service::{Lifeboatd, write_service_config};
use serde_json::Value;

#[test]
fn kustomizations_render_into_strict_kubernetes_types() -> Result<()> {
    for which in KUSTOMIZATIONS {
        let documents = rendered(which)?;
        for document in &documents {
            check_document(document).with_context(|| format!("rendering {which}"))?;
        }
        let namespace = of_kind(&documents, "v1", "Namespace");
        ensure!(namespace.len() == 1, "{which}: one Namespace");
        let name = &namespace[0]["metadata"]["name"];
        for document in &documents {
            let scoped = !matches!(
                document["kind"].as_str(),
                Some("Namespace" | "ClusterRole" | "ClusterRoleBinding")
            );
            if scoped {
                ensure!(
                    &document["metadata"]["namespace"] == name,
                    "{which}: {} is not in namespace {name}",
                    describe(document)
                );
            }
        }
        // The bindings name the ServiceAccount the pod runs as.
        let pod = deployment(&documents)?;
        let account = pod_spec(&pod)
            .and_then(|s| s.service_account_name.clone())
            .context("the pod names no ServiceAccount")?;
        find(&documents, "ServiceAccount", &account)?;
        for binding in of_kind(
            &documents,
            "rbac.authorization.k8s.io/v1",
            "ClusterRoleBinding",
        ) {
            let binding: ClusterRoleBinding = round_trip(binding)?;
            let subjects = binding.subjects.unwrap_or_default();
            ensure!(
                subjects.iter().all(|s| s.kind == "ServiceAccount"
                    && s.name == account
                    && s.namespace.as_ref() == name.as_str().map(str::to_owned).as_ref()),
                "{which}: {:?} binds someone other than {account}",
                binding.metadata.name
            );
            find(&documents, "ClusterRole", &binding.role_ref.name)?;
        }
        // Least privilege: reading everything; exec in pods only through the
        // pod-exec component; the movers' Jobs, Secrets, temporary claims
        // and VolumeSnapshots; nothing else.
        for role in of_kind(&documents, "rbac.authorization.k8s.io/v1", "ClusterRole") {
            let role: ClusterRole = round_trip(role)?;
            for rule in role.rules.unwrap_or_default() {
                let resources = rule.resources.clone().unwrap_or_default();
                let reads = rule
                    .verbs
                    .iter()
                    .all(|v| ["get", "list", "watch"].contains(&v.as_str()));
                let exec = resources == ["pods/exec"]
                    && rule
                        .verbs
                        .iter()
                        .all(|v| ["create", "get"].contains(&v.as_str()));
                let groups = rule.api_groups.clone().unwrap_or_default();
                let movers = (groups == ["batch"] && resources == ["jobs"]
                    || groups == [""] && resources == ["secrets"]
                    || groups == [""] && resources == ["persistentvolumeclaims"]
                    || groups == ["snapshot.storage.k8s.io"] && resources == ["volumesnapshots"])
                    && rule
                        .verbs
                        .iter()
                        .all(|v| ["create", "delete", "get", "list"].contains(&v.as_str()));
                ensure!(
                    reads || exec || movers,
                    "{which}: {:?} grants {rule:?}",
                    role.metadata.name
                );
            }
        }
        // The ServiceMonitor selects the Service and scrapes a port it has.
        let service: Service = round_trip(find(&documents, "Service", "lifeboat")?)?;
        let monitor = find(&documents, "ServiceMonitor", "lifeboat")?;
        let labels = service.metadata.labels.clone().unwrap_or_default();
        let selected = monitor["spec"]["selector"]["matchLabels"]
            .as_object()
            .context("the ServiceMonitor selects by matchLabels")?;
        for (key, value) in selected {
            ensure!(
                labels.get(key).map(String::as_str) == value.as_str(),
                "{which}: the ServiceMonitor selects {key}={value}, which the Service lacks"
            );
        }
        let ports: Vec<String> = service
            .spec
            .and_then(|s| s.ports)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| p.name)
            .collect();
        ensure!(
            ports
                .iter()
                .any(|p| Some(p.as_str()) == monitor["spec"]["endpoints"][0]["port"].as_str()),
            "{which}: the ServiceMonitor scrapes a port the Service does not have"
        );
        // The NetworkPolicy guards the pod's http port, for ingress only
        // (lifeboatd must reach R2 and the APIs), and admits named peers.
        let policy: k8s_openapi::api::networking::v1::NetworkPolicy =
            round_trip(find(&documents, "NetworkPolicy", "lifeboat")?)?;
        let policy_spec = policy.spec.context("the NetworkPolicy has a spec")?;
        let pod_labels = pod
            .spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let selected = policy_spec
            .pod_selector
            .as_ref()
            .and_then(|s| s.match_labels.clone())
            .unwrap_or_default();
        ensure!(
            !selected.is_empty(),
            "{which}: the NetworkPolicy selects the pod by labels"
        );
        for (key, value) in selected {
            ensure!(
                pod_labels.get(&key) == Some(&value),
                "{which}: the NetworkPolicy selects {key}={value}, which the pod lacks"
            );
        }
        ensure!(
            policy_spec.policy_types.as_deref() == Some(&["Ingress".to_owned()][..]),
            "{which}: the NetworkPolicy restricts ingress only"
        );
        let rules = policy_spec.ingress.unwrap_or_default();
        ensure!(
            !rules.is_empty()
                && rules.iter().all(|rule| {
                    rule.from.as_ref().is_some_and(|peers| !peers.is_empty())
                        && rule.ports.as_ref().is_some_and(|ports| {
                            ports.iter().all(|p| {
                                matches!(&p.port, Some(IntOrString::String(name)) if name == "http")
                            })
                        })
                }),
            "{which}: every ingress rule names its peers and only the http port: {rules:?}"
        );
        // The dashboard wrapper reads a ConfigMap that holds the JSON.
        let wrapper = find(&documents, "GrafanaDashboard", "lifeboat")?;
        let reference = &wrapper["spec"]["configMapRef"];
        let map = find(
            &documents,
            "ConfigMap",
            reference["name"].as_str().unwrap_or("?"),
        )?;
        let key = reference["key"].as_str().context("configMapRef.key")?;
        let json = map["data"][key]
            .as_str()
            .context("the dashboard ConfigMap lacks the key")?;
        serde_json::from_str::<Value>(json).context("the dashboard in the ConfigMap")?;
    }
    Ok(())
}

#[test]
fn the_rendered_config_loads_and_every_path_it_names_is_mounted() -> Result<()> {
    for which in KUSTOMIZATIONS {
        let documents = rendered(which)?;
        let pod = deployment(&documents)?;
        let container = container(&pod)?;
        let volumes = pod_volumes(&pod);
        let mounts = container.volume_mounts.clone().unwrap_or_default();

        // `lifeboatd serve --config FILE`, FILE on the ConfigMap's volume.
        let args = container.args.clone().unwrap_or_default();
        ensure!(
            args.first().map(String::as_str) == Some("serve"),
            "{which}: {args:?}"
        );
        let file = args
            .windows(2)
            .find(|w| w[0] == "--config")
            .map(|w| PathBuf::from(&w[1]))
            .context("the container gives --config")?;
        let (mount, volume) = mount_of(&file, &mounts, &volumes)?;
        let map_name = volume
            .config_map
            .as_ref()
            .map(|c| c.name.clone())
            .context("the config file is on a ConfigMap")?;
        let map: ConfigMap = round_trip(find(&documents, "ConfigMap", &map_name)?)?;
        let root = tempfile::tempdir()?;
        materialize(&map, volume, root.path())?;
        let local = root.path().join(file.strip_prefix(&mount.mount_path)?);
        let config = Config::load_with_schedules(&local)
            .with_context(|| format!("{which}: lifeboat refuses the rendered config"))?;
        ensure!(!config.jobs.is_empty(), "{which}: no jobs");

        // The port: config, container, probes, Service.
        let port = config.service.listen.port();
        ensure!(
            config.service.listen.ip().is_unspecified(),
            "{which}: lifeboatd must listen on all interfaces in a pod"
        );
        let container_port = container
            .ports
            .clone()
            .unwrap_or_default()
            .into_iter()
            .find(|p| p.name.as_deref() == Some("http"))
            .context("no port named http")?;
        ensure!(
            container_port.container_port == i32::from(port),
            "{which}: port"
        );
        let grace = pod_spec(&pod)
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        ensure!(
            config.service.shutdown_grace.as_secs() < u64::try_from(grace)?,
            "{which}: shutdown_grace must end before Kubernetes kills the pod"
        );
        for (probe, path) in [
            (container.liveness_probe.as_ref(), "/healthz"),
            (container.readiness_probe.as_ref(), "/readyz"),
        ] {
            let get = probe.and_then(|p| p.http_get.as_ref()).context("a probe")?;
            ensure!(get.path.as_deref() == Some(path), "{which}: probe path");
        }

        // State: writable. Keys: a Secret holding the file. Talos: the
        // Secret Talos makes for the ServiceAccount resource, where the
        // source looks. Host folders: read-only.
        let state = config.state_dir.clone().context("state_dir")?;
        let (state_mount, _) = mount_of(&state, &mounts, &volumes)?;
        ensure!(
            state_mount.read_only != Some(true),
            "{which}: state must be writable"
        );
        let key = &config.repository.service_identity;
        let (key_mount, key_volume) = mount_of(key, &mounts, &volumes)?;
        ensure!(key_mount.read_only == Some(true), "{which}: keys read-only");
        let secret_name = key_volume
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.clone())
            .context("the service key comes from a Secret")?;
        if which.contains("overlays") {
            let secret: Secret = round_trip(find(&documents, "Secret", &secret_name)?)?;
            let file_name = key.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            ensure!(
                secret
                    .string_data
                    .unwrap_or_default()
                    .contains_key(file_name),
                "{which}: Secret {secret_name} has no {file_name}"
            );
        }
        for job in &config.jobs {
            if let SourceConfig::TalosEtcd(source) = &job.source {
                ensure!(
                    source.talosconfig.is_none(),
                    "{which}: in-cluster talosconfig"
                );
                let path = Path::new(IN_CLUSTER_PATH);
                let (talos_mount, talos_volume) = mount_of(path, &mounts, &volumes)?;
                ensure!(
                    talos_mount.read_only == Some(true),
                    "{which}: talos read-only"
                );
                let secret = talos_volume
                    .secret
                    .as_ref()
                    .and_then(|s| s.secret_name.clone())
                    .context("the talosconfig comes from a Secret")?;
                let account = find(&documents, "ServiceAccount", &secret)?;
                ensure!(
                    account["apiVersion"] == "talos.dev/v1alpha1",
                    "{which}: {secret}"
                );
                ensure!(
                    path.strip_prefix(&talos_mount.mount_path)? == Path::new("config"),
                    "{which}: Talos' Secret holds the talosconfig as `config`"
                );
                let roles = &account["spec"]["roles"];
                ensure!(
                    roles == &serde_json::json!(["os:etcd:backup"]),
                    "{which}: {roles}"
                );
            }
            if let SourceConfig::Volumes(source) = &job.source {
                ensure!(source.kubeconfig.is_none(), "{which}: in-cluster access");
                if let Some(movers) = &source.movers {
                    check_movers(which, movers, &container, &documents)?;
                } else {
                    // The PersistentVolumes' host paths are read as they are:
                    // mounted read-only at the same path, on the pod's node.
                    let volume_root = pod_volumes(&pod)
                        .into_iter()
                        .find_map(|v| v.host_path.map(|h| h.path))
                        .context("no hostPath volume for the volumes job")?;
                    let (host, volume) = mount_of(Path::new(&volume_root), &mounts, &volumes)?;
                    ensure!(host.read_only == Some(true), "{which}: volumes read-only");
                    ensure!(
                        host.mount_path == volume_root
                            && volume.host_path.as_ref().map(|h| h.path.as_str())
                                == Some(&volume_root),
                        "{which}: {volume_root} must be mounted at its own path"
                    );
                    let node = container
                        .env
                        .clone()
                        .unwrap_or_default()
                        .into_iter()
                        .find(|e| e.name == "NODE_NAME")
                        .and_then(|e| e.value_from)
                        .and_then(|v| v.field_ref)
                        .map(|f| f.field_path);
                    ensure!(
                        source.node.is_some() || node.as_deref() == Some("spec.nodeName"),
                        "{which}: NODE_NAME must come from spec.nodeName"
                    );
                }
                // Its own state changes while it runs: the claim opts out.
                let (_, state_volume) = mount_of(&state, &mounts, &volumes)?;
                if let Some(claim) = &state_volume.persistent_volume_claim {
                    let pvc = find(&documents, "PersistentVolumeClaim", &claim.claim_name)?;
                    ensure!(
                        pvc["metadata"]["annotations"][EXCLUDE_LABEL] == "true",
                        "{which}: the volumes job would back up lifeboat's own state"
                    );
                }
            }
            if let SourceConfig::Kubernetes(source) = &job.source {
                ensure!(source.kubeconfig.is_none(), "{which}: in-cluster access");
                let automount = pod_spec(&pod).and_then(|s| s.automount_service_account_token);
                ensure!(automount != Some(false), "{which}: the pod needs its token");
                let reads_all = of_kind(&documents, "rbac.authorization.k8s.io/v1", "ClusterRole")
                    .iter()
                    .filter_map(|r| r["rules"].as_array())
                    .flatten()
                    .any(|r| {
                        r["resources"] == serde_json::json!(["*"])
                            && r["apiGroups"] == serde_json::json!(["*"])
                            && r["verbs"]
                                .as_array()
                                .is_some_and(|v| v.contains(&"list".into()))
                    });
                ensure!(
                    reads_all,
                    "{which}: the kubernetes job needs list on every resource"
                );
            }
            if let SourceConfig::Directory(source) = &job.source {
                for folder in source.folders() {
                    let (host, volume) = mount_of(&folder.path, &mounts, &volumes)?;
                    ensure!(
                        host.read_only == Some(true),
                        "{which}: {} read-only",
                        job.name
                    );
                    ensure!(
                        volume.host_path.is_some(),
                        "{which}: {} is a host folder",
                        job.name
                    );
                }
            }
        }

        // R2: the container's environment comes from the R2 Secret.
        let from = container.env_from.clone().unwrap_or_default();
        let r2 = from
            .iter()
            .find_map(|e| e.secret_ref.as_ref().map(|s| s.name.clone()))
            .context("the container takes its environment from a Secret")?;
        if which.contains("overlays") {
            let secret: Secret = round_trip(find(&documents, "Secret", &r2)?)?;
            let names: BTreeSet<String> =
                secret.string_data.unwrap_or_default().into_keys().collect();
            ensure!(
                names == r2_variables(),
                "{which}: Secret {r2} holds {names:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn both_talos_generations_let_the_namespace_hold_the_role() -> Result<()> {
    let read = |name: &str| -> Result<Value> {
        let path = deploy_dir().join("talos").join(name);
        Ok(serde_yaml_ng::from_str(&std::fs::read_to_string(&path)?)?)
    };
    // Before Talos 1.14: the v1alpha1 machine.features block.
    let patch = read("patch-kubernetes-talos-api-access.yaml")?;
    let before = patch["machine"]["features"]["kubernetesTalosAPIAccess"].clone();
    ensure!(before["enabled"] == true, "{before}");
    // Talos 1.14 and later: its own document.
    let document = read("kubetalosapiaccessconfig-lifeboat.yaml")?;
    ensure!(
        document["apiVersion"] == "v1alpha1" && document["kind"] == "KubeTalosAPIAccessConfig",
        "{document}"
    );
    for access in [&before, &document] {
        talos_access_allows_the_account(access)?;
    }
    // The Terraform snippet hands the provider one or the other.
    let text = std::fs::read_to_string(deploy_dir().join("talos/talos-api-access.tf"))?;
    let body: hcl::Body = hcl::from_str(&text).context("talos-api-access.tf is not HCL")?;
    let locals: Vec<hcl::Block> = body
        .into_blocks()
        .filter(|b| b.identifier.as_str() == "locals")
        .collect();
    ensure!(
        locals.len() == 1
            && text.contains("kubetalosapiaccessconfig-lifeboat.yaml")
            && text.contains("patch-kubernetes-talos-api-access.yaml")
            && text.contains("config_patches"),
        "{text}"
    );
    Ok(())
}

/// Whether a Talos API access setting grants the Talos ServiceAccount of
/// the base its namespace and roles.
fn talos_access_allows_the_account(access: &Value) -> Result<()> {
    let documents = rendered(BASE)?;
    let account = of_kind(&documents, "talos.dev/v1alpha1", "ServiceAccount");
    ensure!(account.len() == 1, "one Talos ServiceAccount");
    let namespace = &account[0]["metadata"]["namespace"];
    let allowed = access["allowedKubernetesNamespaces"]
        .as_array()
        .context("allowedKubernetesNamespaces")?;
    ensure!(
        allowed.contains(namespace),
        "{namespace} is not allowed: {allowed:?}"
    );
    let roles = access["allowedRoles"].as_array().context("allowedRoles")?;
    for role in account[0]["spec"]["roles"].as_array().context("roles")? {
        ensure!(roles.contains(role), "{role} is not allowed: {roles:?}");
    }
    Ok(())
}

/// The GitHub anchors of the headings of `deploy/README.md`.
fn runbook_anchors() -> Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(deploy_dir().join("README.md"))?;
    Ok(text
        .lines()
        .filter_map(|line| line.strip_prefix('#'))
        .map(|heading| {
            heading
                .trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect())
}

/// The PrometheusRule of the base.
fn prometheus_rule() -> Result<Value> {
    let documents = rendered(BASE)?;
    Ok(find(&documents, "PrometheusRule", "lifeboat")?.clone())
}

fn promtool(args: &[&str], dir: &Path) -> Result<String> {
    let program = require_program("promtool", "apt-get install prometheus")?;
    let output = Command::new(program).args(args).current_dir(dir).output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(output.status.success(), "promtool {args:?} failed:\n{text}");
    Ok(text)
}

#[test]
fn alert_rules_pass_promtool_and_point_at_the_runbook() -> Result<()> {
    let rule = prometheus_rule()?;
    let dir = tempfile::tempdir()?;
    let rules = serde_yaml_ng::to_string(&rule["spec"])?;
    std::fs::write(dir.path().join("lifeboat-rules.yaml"), rules)?;
    let tests = deploy_dir().join("monitoring/lifeboat-rules.test.yaml");
    std::fs::copy(&tests, dir.path().join("lifeboat-rules.test.yaml"))?;
    let checked = promtool(&["check", "rules", "lifeboat-rules.yaml"], dir.path())?;
    ensure!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "lifeboat-rules.test.yaml"], dir.path())?;
    ensure!(tested.contains("SUCCESS"), "{tested}");

    // The unit tests see the RPO alert fire: a broken rule fails them.
    let unit: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&tests)?)?;
    let fires = unit["tests"].as_array().into_iter().flatten().any(|t| {
        t["alert_rule_test"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| {
                a["alertname"] == "LifeboatRPOBreached"
                    && a["exp_alerts"].as_array().is_some_and(|e| !e.is_empty())
            })
    });
    ensure!(fires, "no unit test expects LifeboatRPOBreached to fire");

    let anchors = runbook_anchors()?;
    let mut alerts = BTreeSet::new();
    for group in rule["spec"]["groups"].as_array().context("groups")? {
        for rule in group["rules"].as_array().context("rules")? {
            let name = rule["alert"].as_str().context("only alerts here")?;
            alerts.insert(name.to_owned());
            let annotations = &rule["annotations"];
            ensure!(annotations["summary"].is_string(), "{name} has no summary");
            let runbook = annotations["runbook_url"].as_str().context("runbook_url")?;
            let anchor = runbook
                .strip_prefix("deploy/README.md#")
                .with_context(|| format!("{name}: {runbook} is no section of deploy/README.md"))?;
            ensure!(
                anchors.contains(anchor),
                "{name}: deploy/README.md has no #{anchor}"
            );
        }
    }
    for wanted in [
        "LifeboatRPOBreached",
        "LifeboatRunsFailing",
        "LifeboatDown",
        "LifeboatNotScraped",
        "LifeboatDrillFailed",
        "LifeboatCheckFailed",
    ] {
        ensure!(alerts.contains(wanted), "no alert {wanted}");
    }
    Ok(())
}

/// Every query of the dashboard (panels and template variables).
fn dashboard_queries(dashboard: &Value) -> Result<Vec<(String, String)>> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().context("panels")? {
        let title = panel["title"].as_str().unwrap_or("?").to_owned();
        let targets = panel["targets"]
            .as_array()
            .context("a panel without targets")?;
        ensure!(!targets.is_empty(), "panel {title} has no query");
        for target in targets {
            let expr = target["expr"].as_str().context("a target without expr")?;
            queries.push((title.clone(), expr.to_owned()));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .context("templating")?
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            queries.push((
                format!("${}", variable["name"].as_str().unwrap_or("?")),
                query.to_owned(),
            ));
        }
    }
    Ok(queries)
}

#[test]
fn dashboard_and_alerts_name_only_metrics_lifeboatd_exports() -> Result<()> {
    let path = deploy_dir().join(BASE).join("dashboards/lifeboat.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    let queries = dashboard_queries(&dashboard)?;
    for (panel, expr) in &queries {
        ensure!(
            !metric_names(expr).is_empty(),
            "{panel}: {expr} names no lifeboat metric"
        );
    }
    let rule = prometheus_rule()?;
    let alert_exprs: Vec<String> = rule["spec"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["expr"].as_str().map(str::to_owned))
        .collect();

    // A real lifeboatd, after a backup of data that deduplicates well.
    let installation = Installation::local()?;
    let block: Vec<u8> = (0..4096u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
    let mut data = Vec::new();
    for _ in 0..64 {
        data.extend_from_slice(&block);
    }
    write_file(&installation.path("docs/a.bin"), &data)?;
    write_file(&installation.path("docs/b.bin"), &data)?;
    write_service_config(
        &installation,
        "[service]\nrto = \"2h\"\n\n[[job]]\nname = \"docs\"\nsource = { kind = \"directory\", paths = [\"docs\"] }\nschedule = \"0 0 0 1 1 *\"\nrpo = \"1h\"\n\n[prune]\nschedule = \"0 0 3 * * *\"\n\n[check]\nschedule = \"0 0 4 * * *\"\n",
    )?;
    let mut service = Lifeboatd::start(&installation)?;
    // The job has no snapshot yet, so lifeboatd may have started its first
    // run by itself; a trigger then finds it busy (409), which is fine.
    let token = service.token()?;
    let queued = service.post("/api/v1/jobs/docs/run", Some(&token))?;
    ensure!(
        [202, 409].contains(&queued.status),
        "trigger: {}",
        queued.body
    );
    let scrape = service.wait_for(
        "a backup counted in /metrics",
        Duration::from_secs(300),
        |s| {
            let body = s.get("/metrics")?.body;
            let logical = sample(&body, "lifeboat_repository_logical_bytes");
            Ok(logical.filter(|v| *v > 0.0).map(|_| body))
        },
    )?;
    let exported: BTreeSet<String> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    for (panel, expr) in &queries {
        for name in metric_names(expr) {
            ensure!(
                exported.contains(&name),
                "dashboard panel {panel:?} queries {name}, which lifeboatd does not export:\n{scrape}"
            );
        }
    }
    cluster_label_selects_every_series(&installation, &service, &queries, &scrape)?;
    service.terminate()?;
    // The drill alerts read what `lifeboat drill --metrics` writes: run a
    // real drill of that backup and take the names from its text file.
    let drill = installation.lifeboat(&[
        "drill",
        "--config",
        "lifeboat.toml",
        "--identity",
        "keys/restore.key",
        "--metrics",
        "drill.prom",
    ])?;
    drill.ok()?;
    let drill_metrics = std::fs::read_to_string(installation.path("drill.prom"))?;
    ensure!(
        drill_metrics.contains("lifeboat_drill_success{job=\"docs\"} 1"),
        "the drill reports per job: {drill_metrics}"
    );
    let written: BTreeSet<String> = drill_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    for expr in &alert_exprs {
        for name in metric_names(expr) {
            ensure!(
                exported.contains(&name) || written.contains(&name),
                "the alert {expr:?} needs {name}, which neither lifeboatd nor the drill exports"
            );
        }
    }
    // The ratio panel divides what the snapshots hold by what the bucket
    // holds: two identical, repetitive files store far less than they are.
    let logical = sample(&scrape, "lifeboat_repository_logical_bytes").unwrap_or_default();
    let size = sample(&scrape, "lifeboat_repository_size_bytes").unwrap_or_default();
    ensure!(
        logical == (2 * data.len()) as f64,
        "logical bytes {logical}"
    );
    ensure!(
        size > 0.0 && logical / size > 4.0,
        "ratio {logical} / {size}"
    );
    Ok(())
}

/// Scrapes `service` with a real Prometheus configured from the overlay's
/// ServiceMonitor and checks that every lifeboat series carries the
/// overlay's `cluster` label, and that every dashboard query, with the
/// cluster chosen, finds the series of every metric `scrape` has samples of.
fn cluster_label_selects_every_series(
    installation: &Installation,
    service: &Lifeboatd,
    queries: &[(String, String)],
    scrape: &str,
) -> Result<()> {
    let overlay = rendered(OVERLAY)?;
    let endpoint = &find(&overlay, "ServiceMonitor", "lifeboat")?["spec"]["endpoints"][0];
    let cluster = endpoint["relabelings"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["targetLabel"] == "cluster")
        .and_then(|r| r["replacement"].as_str())
        .context("the overlay's ServiceMonitor sets no cluster label")?;
    ensure!(
        cluster == "homelab",
        "the example overlay's cluster: {cluster}"
    );
    let dir = installation.path("prometheus");
    std::fs::create_dir_all(&dir)?;
    let mut prometheus = PrometheusServer::scraping(&dir, service.addr(), endpoint)?;
    // Three scrapes, so that increase() and delta() have samples to compare.
    prometheus.wait_for(
        "count_over_time(lifeboat_repository_size_bytes[1m]) >= 3",
        Duration::from_secs(60),
    )?;
    let series = prometheus.series(r#"{__name__=~"lifeboat_.*"}"#)?;
    ensure!(!series.is_empty(), "Prometheus holds no lifeboat series");
    for labels in &series {
        ensure!(
            labels.get("cluster").and_then(Value::as_str) == Some(cluster),
            "a series without cluster={cluster}: {labels:?}"
        );
    }
    let with_samples = |name: &str| {
        scrape
            .lines()
            .filter_map(|l| l.strip_prefix(name))
            .any(|rest| rest.starts_with(['{', ' ']))
    };
    for (panel, expr) in queries {
        let expr = expr.replace("$cluster", cluster).replace("$job", ".*");
        ensure!(
            panel == "$cluster" || expr.contains(&format!("cluster=\"{cluster}\"")),
            "dashboard {panel:?}: {expr} does not select the cluster"
        );
        if !metric_names(&expr).iter().all(|name| with_samples(name)) {
            continue;
        }
        let found = match expr.strip_prefix("label_values(") {
            // A Grafana variable: label_values(SELECTOR, LABEL).
            Some(rest) => {
                let (selector, label) = rest
                    .trim_end_matches(')')
                    .rsplit_once(',')
                    .context("label_values(selector, label)")?;
                let values: BTreeSet<String> = prometheus
                    .series(selector.trim())?
                    .iter()
                    .filter_map(|s| s.get(label.trim())?.as_str().map(str::to_owned))
                    .collect();
                if panel == "$cluster" {
                    ensure!(
                        values == BTreeSet::from([cluster.to_owned()]),
                        "the cluster variable offers {values:?}"
                    );
                }
                values.len()
            }
            None => prometheus.query(&expr)?.len(),
        };
        ensure!(
            found > 0,
            "dashboard {panel:?}: {expr} finds nothing in Prometheus"
        );
    }
    Ok(())
}

/// The value of an unlabelled sample in a scrape.
fn sample(scrape: &str, name: &str) -> Option<f64> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix(name))
        .find_map(|rest| rest.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The volume movers can run: lifeboatd finds its own image through the
/// downward API (unless one is set), and a ClusterRole bound to its
/// service account lets it make and delete Jobs and Secrets everywhere.
fn check_movers(
    which: &str,
    movers: &lifeboat::sources::volumes::mover::MoverSettings,
    container: &k8s_openapi::api::core::v1::Container,
    documents: &[Value],
) -> Result<()> {
    if movers.image.is_none() {
        for (name, path) in [
            ("POD_NAMESPACE", "metadata.namespace"),
            ("POD_NAME", "metadata.name"),
        ] {
            let from = container
                .env
                .iter()
                .flatten()
                .find(|e| e.name == name)
                .and_then(|e| e.value_from.as_ref())
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.as_str());
            ensure!(
                from == Some(path),
                "{which}: the movers' image comes from lifeboatd's pod: {name} must come from {path}"
            );
        }
    }
    let grants = |group: &str, resource: &str, verbs: &[&str]| {
        of_kind(documents, "rbac.authorization.k8s.io/v1", "ClusterRole")
            .iter()
            .filter(|role| {
                let name = role["metadata"]["name"].clone();
                of_kind(
                    documents,
                    "rbac.authorization.k8s.io/v1",
                    "ClusterRoleBinding",
                )
                .iter()
                .any(|b| {
                    b["roleRef"]["name"] == name
                        && b["subjects"]
                            .as_array()
                            .is_some_and(|s| s.iter().any(|s| s["name"] == "lifeboat"))
                })
            })
            .filter_map(|r| r["rules"].as_array())
            .flatten()
            .any(|rule| {
                let has = |field: &str, value: &str| {
                    rule[field]
                        .as_array()
                        .is_some_and(|v| v.iter().any(|v| v == value || v == "*"))
                };
                has("apiGroups", group)
                    && has("resources", resource)
                    && verbs.iter().all(|verb| has("verbs", verb))
            })
    };
    ensure!(
        grants("batch", "jobs", &["create", "delete", "get", "list"]),
        "{which}: the movers need create/delete/get/list on Jobs"
    );
    ensure!(
        grants("", "secrets", &["create", "delete", "list"]),
        "{which}: the movers need create/delete/list on Secrets"
    );
    Ok(())
}
