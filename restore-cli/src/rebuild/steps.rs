//! The steps of a rebuild, in order: what each does (for `--plan`) and
//! doing it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use lifeboat::repo::UnlockedRepository;
use lifeboat::repo::keys::RestoreIdentity;
use lifeboat::restore::files::{RestoreOptions, RestoreProgress, restore};
use lifeboat::sources::etcd::snapshot_file::verify_file;
use lifeboat::sources::talos_config::{TalosFile, inspect_file};
use lifeboat::sources::volumes::Manifest;
use lifeboat::sources::volumes::restore::Layout;
use lifeboat::talos::{ApplyMode, Security, TalosClient, TalosConfig, TalosEndpoint};

use super::data;
use super::domain::{domain_xml, pool_xml, volume_xml};
use super::hypervisor::Hypervisor;
use super::spec::{ClusterSpec, NodeSpec, Role};
use super::workloads::{self, Stopped};
use crate::args::{KeyArgs, RepoArgs};

/// The record of the workloads stopped for the volume restore.
const STOPPED_FILE: &str = "stopped-workloads.json";

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
                "restore snapshot {} into WORK/talos-config and {} into WORK/etcd; verify the etcd snapshot's SHA-256 trailer",
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
                "Talos API {}: machine.MachineService/ApplyConfiguration{{data: {}, mode: AUTO}}, {pin}",
                with_port(&spec.nodes[i].maintenance_address),
                config_name(&spec.nodes[i])
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
                "read the manifests of {}; Kubernetes API: list the pods using their claims, follow each pod's controller to its Deployment or StatefulSet, record them with their replicas in WORK/{STOPPED_FILE}, PATCH (merge) spec.replicas = 0 on each, and wait until no such pod is left (at most {})",
                spec.data.volumes.join(", "),
                humantime::format_duration(spec.data.wait)
            ),
            Self::StartWorkloads => format!(
                "Kubernetes API: PATCH (merge) spec.replicas back to the count recorded in WORK/{STOPPED_FILE} on each stopped workload"
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
         then for each node of the manifest POST a batch/v1 Job in {ns} and wait until it is Complete (at most {wait}); a Job that failed earlier is deleted and made again:\n{yaml}",
        ns = spec.data.namespace,
        secret = data::SECRET,
        wait = humantime::format_duration(spec.data.wait),
    )
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

/// `host` with apid's port unless one is given.
fn with_port(address: &str) -> String {
    if address.contains(':') {
        address.to_owned()
    } else {
        format!("{address}:{}", lifeboat::talos::APID_PORT)
    }
}

/// What the steps work with.
pub struct Runner {
    /// The spec.
    pub spec: ClusterSpec,
    /// The work folder (backups fetched, state, report).
    pub work: PathBuf,
    /// Recreate existing disks and domains.
    pub replace: bool,
    /// The repository.
    pub repo: RepoArgs,
    /// The restore key.
    pub key: Option<KeyArgs>,
    hypervisor: Option<Hypervisor>,
    repository: Option<UnlockedRepository<RestoreIdentity>>,
}

impl Runner {
    /// A runner; nothing is connected yet.
    pub fn new(
        spec: ClusterSpec,
        work: PathBuf,
        replace: bool,
        repo: RepoArgs,
        key: Option<KeyArgs>,
    ) -> Self {
        Self {
            spec,
            work,
            replace,
            repo,
            key,
            hypervisor: None,
            repository: None,
        }
    }

    fn hypervisor(&mut self) -> anyhow::Result<&Hypervisor> {
        if self.hypervisor.is_none() {
            self.hypervisor = Some(Hypervisor::connect(&self.spec.libvirt.uri)?);
        }
        self.hypervisor.as_ref().context("libvirt connection")
    }

    /// Does `step`; returns a line on what was done.
    ///
    /// Fails as the step fails.
    pub async fn run(&mut self, step: Step) -> anyhow::Result<String> {
        let spec = self.spec.clone();
        match step {
            Step::FetchBackups => self.fetch_backups().await,
            Step::Disk(i) => {
                let replace = self.replace;
                self.hypervisor()?
                    .ensure_disk(&spec, &spec.nodes[i], replace)
            }
            Step::Define(i) => {
                let replace = self.replace;
                self.hypervisor()?
                    .ensure_domain(&spec, &spec.nodes[i], replace)
            }
            Step::Start(i) => self.hypervisor()?.start(&spec.nodes[i]),
            Step::Maintenance(i) => {
                let client = self
                    .wait_for(&spec.nodes[i].maintenance_address, false)
                    .await?;
                let version = client.version().await?;
                Ok(format!("maintenance API answers: Talos {}", version.tag))
            }
            Step::ApplyConfig(i) => {
                let node = &spec.nodes[i];
                let path = self.machine_config(node)?;
                let config =
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                let client = self.connect(&node.maintenance_address, false).await?;
                let outcome = client
                    .apply_configuration(Bytes::from(config), ApplyMode::Auto, false)
                    .await?;
                Ok(format!(
                    "applied {} ({}: {})",
                    path.display(),
                    outcome.mode,
                    outcome.mode_details
                ))
            }
            Step::TalosApi(i) => {
                let client = self.wait_for(&spec.nodes[i].endpoint, true).await?;
                Ok(format!(
                    "Talos {} answers over mutual TLS",
                    client.version().await?.tag
                ))
            }
            Step::EtcdReady => {
                let client = self.connect(&spec.bootstrap_node().endpoint, true).await?;
                let deadline = Instant::now() + spec.talos.wait;
                loop {
                    let state = client.service_state("etcd").await;
                    match state {
                        Ok(Some(s)) if s.state == "Preparing" => {
                            return Ok("etcd is Preparing".into());
                        }
                        Ok(Some(s)) if s.state == "Running" => bail!(
                            "etcd on {} is already Running: it was bootstrapped, and recovering would need a wiped node (talosctl reset)",
                            spec.bootstrap_node().name
                        ),
                        _ if Instant::now() > deadline => bail!(
                            "etcd on {} did not reach Preparing within {} (last: {state:?})",
                            spec.bootstrap_node().name,
                            humantime::format_duration(spec.talos.wait)
                        ),
                        _ => tokio::time::sleep(super::POLL).await,
                    }
                }
            }
            Step::EtcdRecover => {
                let path = self.etcd_snapshot()?;
                let verified = verify_file(&path)?;
                let file = tokio::fs::File::open(&path).await?;
                let client = self.connect(&spec.bootstrap_node().endpoint, true).await?;
                client.etcd_recover(file).await?;
                Ok(format!(
                    "uploaded {} ({} bytes of etcd data, trailer verified)",
                    path.display(),
                    verified.db_size()
                ))
            }
            Step::Bootstrap => {
                let client = self.connect(&spec.bootstrap_node().endpoint, true).await?;
                client.bootstrap(true, false).await?;
                Ok("etcd bootstrapped from the snapshot".into())
            }
            Step::Kubeconfig => self.fetch_kubeconfig().await,
            Step::KubernetesApi => self.wait_for_kubernetes().await,
            Step::Volumes(k) => self.restore_volumes(&spec.data.volumes[k]).await,
            Step::StopWorkloads => self.stop_workloads().await,
            Step::StartWorkloads => self.start_workloads().await,
            Step::RemoveRestoreSecret => {
                let client = self.kube().await?;
                let namespace = &spec.data.namespace;
                Ok(if data::remove_secret(&client, namespace).await? {
                    format!("deleted Secret {namespace}/{}", data::SECRET)
                } else {
                    format!("Secret {namespace}/{} was already gone", data::SECRET)
                })
            }
            Step::Postgres(k) => {
                let entry = &spec.data.postgres[k];
                let repo = self.repository().await?;
                let pg_bin = entry.pg_bin.as_deref();
                crate::restore::postgres_into(
                    repo,
                    &entry.snapshot,
                    &entry.url,
                    entry.create,
                    pg_bin,
                )
                .await?;
                Ok(format!("restored {} into {}", entry.snapshot, entry.url))
            }
        }
    }

    /// The kubeconfig the rebuild uses.
    fn kubeconfig_path(&self) -> PathBuf {
        self.spec
            .kubernetes
            .kubeconfig
            .clone()
            .unwrap_or_else(|| self.work.join("kubeconfig"))
    }

    async fn fetch_kubeconfig(&self) -> anyhow::Result<String> {
        if let Some(path) = &self.spec.kubernetes.kubeconfig {
            std::fs::metadata(path).with_context(|| {
                format!(
                    "the kubeconfig {} of [kubernetes] in the spec",
                    path.display()
                )
            })?;
            return Ok(format!("using {}", path.display()));
        }
        let node = self.spec.bootstrap_node();
        let client = self.connect(&node.endpoint, true).await?;
        let kubeconfig = client.kubeconfig().await?;
        let path = self.kubeconfig_path();
        write_private(&path, &kubeconfig)?;
        Ok(format!(
            "admin kubeconfig from {} written to {}",
            node.name,
            path.display()
        ))
    }

    async fn kube(&self) -> anyhow::Result<kube::Client> {
        let path = self.kubeconfig_path();
        Ok(lifeboat::k8s::connect(Some(&path), self.spec.kubernetes.context.as_deref()).await?)
    }

    /// Asks `/readyz` until it answers `ok`.
    async fn wait_for_kubernetes(&self) -> anyhow::Result<String> {
        let client = self.kube().await?;
        let deadline = Instant::now() + self.spec.talos.wait;
        loop {
            let request = http::Request::get("/readyz").body(Vec::new())?;
            let answer = client.request_text(request).await;
            match answer {
                Ok(text) if text.trim() == "ok" => return Ok("/readyz answers ok".into()),
                _ if Instant::now() > deadline => {
                    let last = match answer {
                        Ok(text) => text,
                        Err(e) => e.to_string(),
                    };
                    bail!(
                        "the Kubernetes API did not become ready within {} (last answer: {last}); look at `talosctl -n {} service kube-apiserver` and etcd",
                        humantime::format_duration(self.spec.talos.wait),
                        self.spec.bootstrap_node().endpoint
                    )
                }
                _ => tokio::time::sleep(super::POLL).await,
            }
        }
    }

    /// Restores the volumes snapshot `what` by a Job per node.
    async fn restore_volumes(&mut self, what: &str) -> anyhow::Result<String> {
        let spec = self.spec.clone();
        let image = spec
            .data
            .image
            .clone()
            .context("set data.image in the spec: the lifeboat image the restore Jobs run")?;
        let (url, s3) = self.repo.location()?;
        let repository = data::JobRepository {
            url: job_repository_url(&url)?,
            s3_endpoint: s3.endpoint,
            s3_path_style: s3.path_style,
        };
        let key_file = self.key()?.identity.clone();
        let (id, manifest) = self.volume_manifest(what).await?;
        let jobs = data::plan_jobs(&id, &manifest)?;
        if jobs.is_empty() {
            return Ok(format!("{what} holds no volume data"));
        }
        let restore_key = std::fs::read(&key_file)
            .with_context(|| format!("reading the restore key {}", key_file.display()))?;
        let client = self.kube().await?;
        data::check_live_paths(&client, &manifest).await?;
        data::ensure_secret(&client, &spec.data.namespace, &restore_key).await?;
        let objects: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                let object = data::job_object(&job, &id, &spec.data, &image, &repository);
                (job, object)
            })
            .collect();
        let lines = data::run_jobs(&client, &spec.data.namespace, &objects, spec.data.wait).await?;
        Ok(format!("snapshot {}: {}", &id[..8], lines.join("; ")))
    }

    /// The id (hex) and manifest of the volumes snapshot `what`.
    async fn volume_manifest(&mut self, what: &str) -> anyhow::Result<(String, Manifest)> {
        let repo = self.repository().await?;
        let entry = repo.find_snapshot(what).await?;
        if entry.snapshot.source_kind != lifeboat::repo::snapshot::SourceKind::Volumes {
            bail!(
                "[data] volumes names {what}, a snapshot of kind \"{}\"; name snapshots of volumes jobs",
                entry.snapshot.source_kind
            );
        }
        let reader = repo.reader();
        let layout = Layout::read(&reader, entry.snapshot.root).await?;
        let manifest = layout
            .manifest
            .with_context(|| format!("snapshot {what} has no volumes manifest"))?;
        Ok((entry.id.to_hex(), manifest))
    }

    /// Scales the workloads using the volumes' claims to zero, recording
    /// them first (an earlier attempt's record is kept).
    async fn stop_workloads(&mut self) -> anyhow::Result<String> {
        let mut claims = Vec::new();
        for what in self.spec.data.volumes.clone() {
            let (_, manifest) = self.volume_manifest(&what).await?;
            claims.extend(manifest.volumes.into_iter().map(|v| (v.namespace, v.pvc)));
        }
        let client = self.kube().await?;
        let record = self.work.join(STOPPED_FILE);
        let stopped = match Stopped::load(&record)? {
            Some(earlier) => earlier,
            None => {
                let found = workloads::find(&client, &claims).await?;
                found.save(&record)?;
                found
            }
        };
        for workload in &stopped.workloads {
            workloads::scale(&client, workload, 0).await?;
        }
        workloads::wait_until_stopped(&client, &claims, &stopped.unmanaged, self.spec.data.wait)
            .await?;
        Ok(format!("stopped {}", stopped.describe()))
    }

    /// Scales the stopped workloads back to their replicas.
    async fn start_workloads(&self) -> anyhow::Result<String> {
        let record = self.work.join(STOPPED_FILE);
        let Some(stopped) = Stopped::load(&record)? else {
            return Ok("nothing was stopped".into());
        };
        let client = self.kube().await?;
        for workload in &stopped.workloads {
            workloads::scale(&client, workload, workload.replicas).await?;
        }
        std::fs::remove_file(&record).with_context(|| format!("removing {}", record.display()))?;
        let started: Vec<String> = stopped
            .workloads
            .iter()
            .map(|w| format!("{}/{} to {}", w.namespace, w.name, w.replicas))
            .collect();
        Ok(if started.is_empty() {
            "nothing was stopped".into()
        } else {
            format!("scaled back {}", started.join(", "))
        })
    }

    fn key(&self) -> anyhow::Result<&KeyArgs> {
        self.key
            .as_ref()
            .context("give the restore key with --identity FILE or [backups] identity in the spec")
    }

    /// The repository, unlocked with the restore key on first use.
    async fn repository(&mut self) -> anyhow::Result<&UnlockedRepository<RestoreIdentity>> {
        if self.repository.is_none() {
            let repo = self
                .key()?
                .unlock_restore(self.repo.open().await?, "rebuilding from backups")
                .await?;
            self.repository = Some(repo);
        }
        self.repository.as_ref().context("the repository")
    }

    async fn fetch_backups(&mut self) -> anyhow::Result<String> {
        let spec = self.spec.clone();
        let work = self.work.clone();
        let repo = self.repository().await?;
        let reader = repo.reader();
        let mut lines = Vec::new();
        for (what, folder) in [
            (&spec.backups.talos_config, "talos-config"),
            (&spec.backups.etcd, "etcd"),
        ] {
            let entry = repo.find_snapshot(what).await?;
            let target = work.join(folder);
            restore(
                &reader,
                entry.snapshot.root,
                "",
                &target,
                &RestoreOptions {
                    force: true,
                    ..RestoreOptions::default()
                },
                Arc::new(RestoreProgress::default()),
            )
            .await
            .with_context(|| format!("restoring {what} into {}", target.display()))?;
            lines.push(format!("{what} = {}", entry.id.short()));
        }
        let verified = verify_file(&self.etcd_snapshot()?)?;
        Ok(format!(
            "{}; etcd snapshot verified ({} bytes)",
            lines.join(", "),
            verified.db_size()
        ))
    }

    /// The etcd snapshot file fetched.
    fn etcd_snapshot(&self) -> anyhow::Result<PathBuf> {
        let path = self
            .work
            .join("etcd")
            .join(lifeboat::sources::etcd::SNAPSHOT_FILE);
        if !path.is_file() {
            bail!(
                "{} is missing: the etcd snapshot {} holds no etcd.db; run the rebuild from the start or check [backups] etcd",
                path.display(),
                self.spec.backups.etcd
            );
        }
        Ok(path)
    }

    fn machine_config(&self, node: &NodeSpec) -> anyhow::Result<PathBuf> {
        let root = self.work.join("talos-config");
        if let Some(path) = &node.machine_config {
            return Ok(root.join(path.trim_start_matches('/')));
        }
        let want = match node.role {
            Role::Controlplane => TalosFile::ControlPlaneConfig,
            Role::Worker => TalosFile::WorkerConfig,
        };
        find_file(&root, want).with_context(|| {
            format!("no {:?} machine config in the talos-config snapshot; name it with machine_config = \"…\" for node {}", node.role, node.name)
        })
    }

    async fn connect(&self, address: &str, mutual: bool) -> anyhow::Result<TalosClient> {
        let endpoint = TalosEndpoint::parse(&with_port(address))?;
        let security = if mutual {
            let root = self.work.join("talos-config");
            let path = find_file(&root, TalosFile::Talosconfig)
                .context("no talosconfig in the talos-config snapshot; the rebuild needs one with an os:admin certificate")?;
            let config = TalosConfig::load(Some(&path))?;
            Security::Mutual(Arc::new(
                config
                    .context(self.spec.talos.context.as_deref())?
                    .credentials()?,
            ))
        } else {
            Security::Insecure {
                pin_sha256: self.spec.pin()?,
            }
        };
        Ok(TalosClient::connect(&endpoint, &security).await?)
    }

    /// Connects to `address` and asks for the version until it answers.
    async fn wait_for(&self, address: &str, mutual: bool) -> anyhow::Result<TalosClient> {
        let deadline = Instant::now() + self.spec.talos.wait;
        loop {
            let attempt = match self.connect(address, mutual).await {
                Ok(client) => client
                    .version()
                    .await
                    .map(|_| client)
                    .map_err(anyhow::Error::from),
                Err(e) => Err(e),
            };
            match attempt {
                Ok(client) => return Ok(client),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!(
                        "the Talos API at {address} did not answer within {}",
                        humantime::format_duration(self.spec.talos.wait)
                    )));
                }
                Err(_) => tokio::time::sleep(super::POLL).await,
            }
        }
    }
}

/// The repository URL as the Jobs must see it: a local path made absolute.
fn job_repository_url(url: &str) -> anyhow::Result<String> {
    if url.contains("://") {
        return Ok(url.to_owned());
    }
    Ok(std::path::absolute(url)
        .with_context(|| format!("the repository path {url}"))?
        .display()
        .to_string())
}

/// Writes `content` to `path`, readable by its owner only.
fn write_private(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(content)
        .with_context(|| format!("writing {}", path.display()))
}

/// The first file under `root` of kind `want` (sorted by path).
fn find_file(root: &Path, want: TalosFile) -> Option<PathBuf> {
    let mut stack = vec![root.to_owned()];
    let mut found = Vec::new();
    while let Some(dir) = stack.pop() {
        for item in std::fs::read_dir(&dir).ok()?.flatten() {
            let path = item.path();
            match item.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() && inspect_file(&path) == want => found.push(path),
                _ => {}
            }
        }
    }
    found.sort();
    found.into_iter().next()
}
