//! The plan of a rebuild: its steps in order for a spec, each step's id
//! in the state file and what it will do (`--plan`), with the exact
//! domain XML, Job and API calls.

use crate::data;
use crate::domain::{domain_xml, pool_xml, volume_xml};
use crate::spec::{ClusterSpec, NodeSpec};
use crate::talos::with_port;

/// The record of the workloads stopped for the volume restore.
pub const STOPPED_FILE: &str = "stopped-workloads.json";

/// One step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Restore the talos-config and etcd snapshots into the work folder.
    FetchBackups,
    /// Create node `i`'s disk.
    Disk(usize),
    /// Define node `i`'s domain.
    Define(usize),
    /// Start node `i`'s VM.
    Start(usize),
    /// Wait for node `i`'s maintenance API.
    Maintenance(usize),
    /// Apply node `i`'s machine config.
    ApplyConfig(usize),
    /// Wait for node `i`'s configured Talos API.
    TalosApi(usize),
    /// Wait for etcd to wait for bootstrap.
    EtcdReady,
    /// Upload the etcd snapshot.
    EtcdRecover,
    /// Bootstrap etcd from it.
    Bootstrap,
    /// Fetch the admin kubeconfig from the bootstrap node.
    Kubeconfig,
    /// Wait for the Kubernetes API's `/readyz`.
    KubernetesApi,
    /// Scale the workloads using the volumes to zero.
    StopWorkloads,
    /// Restore volumes snapshot `k` of `[data] volumes` by Jobs.
    Volumes(usize),
    /// Delete the restore Jobs' Secret.
    RemoveRestoreSecret,
    /// Scale the stopped workloads back.
    StartWorkloads,
    /// Restore `[[data.postgres]]` entry `k`.
    Postgres(usize),
}

/// Every step for `spec`, in order.
pub fn all(spec: &ClusterSpec) -> Vec<Step> {
    let n = spec.nodes.len();
    let mut steps = vec![Step::FetchBackups];
    for make in [
        Step::Disk,
        Step::Define,
        Step::Start,
        Step::Maintenance,
        Step::ApplyConfig,
        Step::TalosApi,
    ] {
        steps.extend((0..n).map(make));
    }
    steps.extend([
        Step::EtcdReady,
        Step::EtcdRecover,
        Step::Bootstrap,
        Step::Kubeconfig,
        Step::KubernetesApi,
    ]);
    if !spec.data.volumes.is_empty() {
        steps.push(Step::StopWorkloads);
        steps.extend((0..spec.data.volumes.len()).map(Step::Volumes));
        steps.extend([Step::RemoveRestoreSecret, Step::StartWorkloads]);
    }
    steps.extend((0..spec.data.postgres.len()).map(Step::Postgres));
    steps
}

impl Step {
    /// The step's id in the state file and report, e.g. `start:talos-cp1`.
    pub fn id(self, spec: &ClusterSpec) -> String {
        let node = |i: usize| spec.nodes[i].name.as_str();
        match self {
            Self::FetchBackups => "fetch-backups".into(),
            Self::Disk(i) => format!("disk:{}", node(i)),
            Self::Define(i) => format!("define:{}", node(i)),
            Self::Start(i) => format!("start:{}", node(i)),
            Self::Maintenance(i) => format!("maintenance-api:{}", node(i)),
            Self::ApplyConfig(i) => format!("apply-config:{}", node(i)),
            Self::TalosApi(i) => format!("talos-api:{}", node(i)),
            Self::EtcdReady => format!("etcd-ready:{}", spec.bootstrap_node().name),
            Self::EtcdRecover => format!("etcd-recover:{}", spec.bootstrap_node().name),
            Self::Bootstrap => format!("bootstrap:{}", spec.bootstrap_node().name),
            Self::Kubeconfig => "kubeconfig".into(),
            Self::KubernetesApi => "kubernetes-api".into(),
            Self::Volumes(k) => format!("volumes:{}", spec.data.volumes[k]),
            Self::RemoveRestoreSecret => "remove-restore-secret".into(),
            Self::StopWorkloads => "stop-workloads".into(),
            Self::StartWorkloads => "start-workloads".into(),
            Self::Postgres(k) => format!("postgres:{}", spec.data.postgres[k].snapshot),
        }
    }

    /// What the step will do, with the exact XML and API calls.
    pub fn describe(self, spec: &ClusterSpec) -> String {
        let uri = &spec.libvirt.uri;
        let cp = spec.bootstrap_node();
        let pin = match &spec.talos.maintenance_pin {
            Some(pin) => format!("server certificate pinned to sha256:{pin}"),
            None => "server certificate not verified (maintenance mode)".into(),
        };
        match self {
            Self::FetchBackups => format!(
                "restore snapshot {} into WORK/talos-config (files 0600, folders 0700) and the etcd.db of {} into WORK/etcd; verify the etcd snapshot's SHA-256 trailer",
                spec.backups.talos_config, spec.backups.etcd
            ),
            Self::Disk(i) => format!(
                "libvirt {uri}: storage pool (transient use, then undefined)\n{}volume\n{}",
                pool_xml(spec, &spec.nodes[i]),
                volume_xml(&spec.nodes[i])
            ),
            Self::Define(i) => format!(
                "libvirt {uri}: virDomainDefineXMLFlags(VALIDATE) unless a domain {} with MAC {} exists (--replace: destroy, undefine, define)\n{}",
                spec.nodes[i].name,
                spec.nodes[i].mac,
                domain_xml(spec, &spec.nodes[i])
            ),
            Self::Start(i) => format!("libvirt {uri}: virDomainCreate({})", spec.nodes[i].name),
            Self::Maintenance(i) => format!(
                "Talos API {}: machine.MachineService/Version over TLS without client certificate, {pin}; until it answers (at most {})",
                with_port(&spec.nodes[i].maintenance_address),
                humantime::format_duration(spec.talos.wait)
            ),
            Self::ApplyConfig(i) => format!(
                "Talos API {}: machine.MachineService/ApplyConfiguration{{data: {}{}, mode: AUTO}}, {pin}",
                with_port(&spec.nodes[i].maintenance_address),
                config_name(&spec.nodes[i]),
                patch_names(&spec.nodes[i])
            ),
            Self::TalosApi(i) => format!(
                "Talos API {}: machine.MachineService/Version over mutual TLS with the talosconfig from the talos-config snapshot; until it answers",
                with_port(&spec.nodes[i].endpoint)
            ),
            Self::EtcdReady => format!(
                "Talos API {}: machine.MachineService/ServiceList until service etcd is Preparing",
                with_port(&cp.endpoint)
            ),
            Self::EtcdRecover => format!(
                "Talos API {}: machine.MachineService/EtcdRecover(stream common.Data) with the etcd snapshot, trailer included",
                with_port(&cp.endpoint)
            ),
            Self::Bootstrap => format!(
                "Talos API {}: machine.MachineService/Bootstrap{{recover_etcd: true, recover_skip_hash_check: false}}",
                with_port(&cp.endpoint)
            ),
            Self::Kubeconfig => match &spec.kubernetes.kubeconfig {
                Some(path) => format!("use the kubeconfig {}", path.display()),
                None => format!(
                    "Talos API {}: machine.MachineService/Kubeconfig (a gzipped tar holding `kubeconfig`), written to WORK/kubeconfig (0600)",
                    with_port(&cp.endpoint)
                ),
            },
            Self::KubernetesApi => format!(
                "Kubernetes API of the kubeconfig: GET /readyz until it answers ok (at most {})",
                humantime::format_duration(spec.talos.wait)
            ),
            Self::StopWorkloads => format!(
                "read the manifests of {}; Kubernetes API: list the pods using their claims, follow each pod's controller to its Deployment or StatefulSet, record them with their replicas in WORK/{STOPPED_FILE}, {}PATCH (merge) spec.replicas = 0 on each, and wait until no such pod is left (at most {})",
                spec.data.volumes.join(", "),
                if spec.data.suspend_gitops {
                    "suspend the Flux Kustomizations/HelmReleases and Argo CD Applications their labels name (PATCH spec.suspend = true / remove spec.syncPolicy.automated, marked lifeboat.dev/suspended-from), "
                } else {
                    ""
                },
                humantime::format_duration(spec.data.wait)
            ),
            Self::StartWorkloads => format!(
                "Kubernetes API: PATCH (merge) spec.replicas back to the count recorded in WORK/{STOPPED_FILE} on each stopped workload{}",
                if spec.data.suspend_gitops {
                    ", then set back every GitOps manager marked lifeboat.dev/suspended-from"
                } else {
                    ""
                }
            ),
            Self::Volumes(k) => describe_volumes(spec, &spec.data.volumes[k]),
            Self::RemoveRestoreSecret => format!(
                "Kubernetes API: DELETE /api/v1/namespaces/{}/secrets/{}",
                spec.data.namespace,
                data::SECRET
            ),
            Self::Postgres(k) => {
                let entry = &spec.data.postgres[k];
                format!(
                    "restore {} into {}: globals.sql through psql, then pg_restore of each database{}",
                    entry.snapshot,
                    entry.url,
                    if entry.create {
                        " (--create)"
                    } else {
                        " into the existing one"
                    }
                )
            }
        }
    }
}

/// The plan of restoring the volumes snapshot `what`, with the Job as it
/// will be sent (its snapshot, node and volumes come from the manifest).
fn describe_volumes(spec: &ClusterSpec, what: &str) -> String {
    let example = data::RestoreJob {
        name: "lifeboat-restore-SNAPSHOT-NODE".into(),
        node: "NODE".into(),
        volumes: vec![("NAMESPACE/PVC".into(), "HOST_PATH".into())],
    };
    let repository = data::JobRepository {
        url: spec
            .backups
            .repository
            .clone()
            .unwrap_or_else(|| "REPOSITORY".into()),
        s3_endpoint: spec.backups.s3_endpoint.clone(),
        s3_path_style: spec.backups.s3_path_style,
    };
    let image = spec.data.image.as_deref().unwrap_or("IMAGE");
    let job = data::job_object(&example, "SNAPSHOT", &spec.data, image, &repository);
    let yaml = serde_yaml_ng::to_string(&job).unwrap_or_else(|e| format!("({e})"));
    format!(
        "restore {what}: read its manifest; Kubernetes API: server-side apply Namespace {ns} (label pod-security.kubernetes.io/enforce=privileged: the Jobs mount host folders) and Secret {ns}/{secret} (the restore key; AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_ENDPOINT_URL(_S3), AWS_REGION and LIFEBOAT_PASSPHRASE as set here), \
         then for each node of the manifest POST a batch/v1 Job in {ns} and wait until it is Complete (at most {wait}); a Job that failed earlier is deleted and made again:\n{yaml}\n         Each volume the manifest says a mover read goes back into its claim instead, as `lifeboat restore {what} --pvc NAMESPACE/NAME --into-claim` does: the claim is made from the manifest when missing (size, access modes, storage class), a Secret and a Job running `lifeboat restore … --target /data` with the claim mounted are made in its namespace, and both are deleted when it is Complete (at most {wait}).",
        ns = spec.data.namespace,
        secret = data::SECRET,
        wait = humantime::format_duration(spec.data.wait),
    )
}

/// `, patched with a.yaml, b.json` (nothing without patches).
fn patch_names(node: &NodeSpec) -> String {
    if node.patches.is_empty() {
        return String::new();
    }
    let names: Vec<String> = node
        .patches
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    format!(", patched with {} in that order", names.join(", "))
}

fn config_name(node: &NodeSpec) -> String {
    match &node.machine_config {
        Some(path) => format!("{path} from the talos-config snapshot"),
        None => format!(
            "the {:?} machine config found in the talos-config snapshot",
            node.role
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::spec;

    const WITH_DATA: &str = r#"
        [backups]
        repository = "s3://lifeboat/cluster"
        [data]
        volumes = ["latest:volumes", "abcd1234"]
        image = "ghcr.io/example/lifeboat:1"
        [[data.postgres]]
        snapshot = "latest:databases"
        url = "postgresql://postgres@db/postgres"
        create = false
    "#;

    fn ids(spec: &ClusterSpec) -> Vec<String> {
        all(spec).into_iter().map(|s| s.id(spec)).collect()
    }

    #[test]
    fn each_node_is_made_phase_by_phase_then_etcd_is_recovered_onto_the_control_plane() {
        let spec = spec("");
        assert_eq!(
            ids(&spec),
            [
                "fetch-backups",
                "disk:w1",
                "disk:cp1",
                "define:w1",
                "define:cp1",
                "start:w1",
                "start:cp1",
                "maintenance-api:w1",
                "maintenance-api:cp1",
                "apply-config:w1",
                "apply-config:cp1",
                "talos-api:w1",
                "talos-api:cp1",
                // The worker is listed first; etcd goes to the control plane.
                "etcd-ready:cp1",
                "etcd-recover:cp1",
                "bootstrap:cp1",
                "kubeconfig",
                "kubernetes-api",
            ]
        );
    }

    #[test]
    fn data_steps_follow_the_cluster_and_workloads_are_stopped_around_the_volumes() {
        let spec = spec(WITH_DATA);
        let steps = ids(&spec);
        assert_eq!(
            steps[18..],
            [
                "stop-workloads",
                "volumes:latest:volumes",
                "volumes:abcd1234",
                "remove-restore-secret",
                "start-workloads",
                "postgres:latest:databases",
            ]
        );
        // Postgres alone needs no Jobs, so nothing is stopped.
        let only_postgres = crate::testing::spec(
            "[[data.postgres]]\nsnapshot = \"latest:db\"\nurl = \"postgresql://db/postgres\"",
        );
        let steps = ids(&only_postgres);
        assert_eq!(steps[18..], ["postgres:latest:db"]);
        assert!(!steps.iter().any(|id| id.contains("workloads")));
    }

    #[test]
    fn ids_are_unique_so_resume_can_tell_the_steps_apart() {
        let spec = spec(WITH_DATA);
        let ids = ids(&spec);
        let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "{ids:?}");
    }

    #[test]
    fn the_plan_names_the_calls_addresses_and_objects_of_each_step() {
        let spec = spec(WITH_DATA);
        let plan = crate::plan(&spec);
        let described = |id: &str| {
            plan.iter()
                .find(|s| s.id == id)
                .map(|s| s.description.clone())
                .unwrap_or_else(|| panic!("no step {id}"))
        };
        let define = described("define:cp1");
        assert!(define.contains("<name>cp1</name>"), "{define}");
        assert!(define.contains("52:54:00:00:00:01"), "{define}");
        // The default apid port is added; a given one is kept.
        assert!(described("maintenance-api:w1").contains("10.0.0.51:50000"));
        assert!(described("etcd-recover:cp1").contains("10.0.0.10:50001"));
        assert!(
            described("maintenance-api:w1").contains("not verified"),
            "no pin: the plan says the certificate is not checked"
        );
        assert!(described("apply-config:w1").contains("Worker machine config"));
        let volumes = described("volumes:abcd1234");
        assert!(volumes.contains("kind: Job"), "{volumes}");
        assert!(volumes.contains("ghcr.io/example/lifeboat:1"), "{volumes}");
        assert!(volumes.contains("s3://lifeboat/cluster"), "{volumes}");
        assert!(described("remove-restore-secret").contains(data::SECRET));
        assert!(described("postgres:latest:databases").contains("into the existing one"));
        assert!(described("kubeconfig").contains("WORK/kubeconfig (0600)"));
        assert!(described("fetch-backups").contains("WORK/talos-config (files 0600"));
    }

    #[test]
    fn a_pinned_maintenance_certificate_and_a_given_kubeconfig_are_in_the_plan() {
        let pin = "ab".repeat(32);
        let spec = spec(&format!(
            "[talos]\nmaintenance_pin = \"{pin}\"\n[kubernetes]\nkubeconfig = \"/etc/admin.conf\""
        ));
        let plan = crate::plan(&spec);
        let maintenance = &plan[7];
        assert_eq!(maintenance.id, "maintenance-api:w1");
        assert!(
            maintenance
                .description
                .contains(&format!("pinned to sha256:{pin}")),
            "{}",
            maintenance.description
        );
        let kubeconfig = plan.iter().find(|s| s.id == "kubeconfig").expect("step");
        assert_eq!(kubeconfig.description, "use the kubeconfig /etc/admin.conf");
    }
}
