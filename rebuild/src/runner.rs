//! Doing the steps of the plan: one [`Runner`] holds what they share (the
//! libvirt connection, the unlocked repository, the work folder) and
//! dispatches each step to the hypervisor, the Talos API, the restore
//! functions of the service library, the Kubernetes API or the caller.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use lifeboat::k8s::gitops::{Action, ManagerResult};
use lifeboat::repo::UnlockedRepository;
use lifeboat::repo::keys::RestoreIdentity;
use lifeboat::repo::snapshot::SourceKind;
use lifeboat::restore::files::RestoreProgress;
use lifeboat::sources::etcd::restore::restore_snapshot_file;
use lifeboat::sources::etcd::snapshot_file::verify_file;
use lifeboat::sources::talos_config::restore::restore_private;
use lifeboat::sources::volumes::Manifest;
use lifeboat::sources::volumes::restore::Layout;
use lifeboat::talos::ApplyMode;

use crate::error::RebuildError;
use crate::hypervisor::Hypervisor;
use crate::kubernetes::{self, KubernetesError};
use crate::plan::{STOPPED_FILE, Step};
use crate::spec::ClusterSpec;
use crate::talos::{self, Nodes};
use crate::workloads as record;
use crate::{RebuildOptions, RepositoryLocation, Restores, data};
use lifeboat::k8s::workloads::{self, WorkloadsError};
use lifeboat::sources::volumes::mover::restore::ClaimRestore;

/// The folder of the work folder the talos-config snapshot goes to.
const TALOS_CONFIG_DIR: &str = "talos-config";
/// The folder of the work folder the etcd snapshot goes to.
const ETCD_DIR: &str = "etcd";

/// What the steps work with.
pub struct Runner<'a> {
    /// The spec.
    spec: ClusterSpec,
    /// The work folder (backups fetched, state, report).
    work: PathBuf,
    /// Recreate existing disks and domains.
    replace: bool,
    /// The repository, if given.
    location: Option<RepositoryLocation>,
    /// The restore key file, if given.
    identity: Option<PathBuf>,
    restores: &'a dyn Restores,
    hypervisor: Option<Hypervisor>,
    repository: Option<UnlockedRepository<RestoreIdentity>>,
}

impl<'a> Runner<'a> {
    /// A runner for `spec` with `options` (over the spec's `[backups]`);
    /// nothing is connected yet.
    pub fn new(spec: ClusterSpec, options: &RebuildOptions, restores: &'a dyn Restores) -> Self {
        let location = options
            .repository
            .clone()
            .or_else(|| spec.backups.repository.clone())
            .map(|url| RepositoryLocation {
                url,
                s3: lifeboat::storage::S3Options {
                    endpoint: spec.backups.s3_endpoint.clone(),
                    region: None,
                    path_style: spec.backups.s3_path_style,
                },
            });
        let identity = options
            .identity
            .clone()
            .or_else(|| spec.backups.identity.clone());
        Self {
            spec,
            work: options.work.clone(),
            replace: options.replace,
            location,
            identity,
            restores,
            hypervisor: None,
            repository: None,
        }
    }

    fn nodes(&self) -> Nodes<'_> {
        Nodes {
            spec: &self.spec,
            work: &self.work,
        }
    }

    fn hypervisor(&mut self) -> Result<&Hypervisor, RebuildError> {
        let hypervisor = match self.hypervisor.take() {
            Some(connected) => connected,
            None => Hypervisor::connect(&self.spec.libvirt.uri)?,
        };
        Ok(self.hypervisor.insert(hypervisor))
    }

    /// Does `step`; returns a line on what was done.
    ///
    /// Fails as the step fails.
    pub async fn run(&mut self, step: Step) -> Result<String, RebuildError> {
        let spec = self.spec.clone();
        let replace = self.replace;
        let cp = spec.bootstrap_node();
        match step {
            Step::FetchBackups => self.fetch_backups().await,
            Step::Disk(i) => Ok(self
                .hypervisor()?
                .ensure_disk(&spec, &spec.nodes[i], replace)?),
            Step::Define(i) => {
                Ok(self
                    .hypervisor()?
                    .ensure_domain(&spec, &spec.nodes[i], replace)?)
            }
            Step::Start(i) => Ok(self.hypervisor()?.start(&spec.nodes[i])?),
            Step::Maintenance(i) => {
                let address = &spec.nodes[i].maintenance_address;
                let client = self.nodes().wait_for(address, false).await?;
                let version = client.version().await.map_err(talos::api(address))?;
                Ok(format!("maintenance API answers: Talos {}", version.tag))
            }
            Step::ApplyConfig(i) => {
                let node = &spec.nodes[i];
                let path = self.nodes().machine_config(node)?;
                let base = std::fs::read(&path).map_err(|source| talos::NodeError::ReadConfig {
                    path: path.clone(),
                    source,
                })?;
                let config = crate::patches::effective(&base, node)?;
                let address = &node.maintenance_address;
                let client = self.nodes().connect(address, false).await?;
                let outcome = client
                    .apply_configuration(Bytes::from(config), ApplyMode::Auto, false)
                    .await
                    .map_err(talos::api(address))?;
                let patched = match node.patches.len() {
                    0 => String::new(),
                    n => format!(" with {n} patch(es)"),
                };
                Ok(format!(
                    "applied {}{patched} ({}: {})",
                    path.display(),
                    outcome.mode,
                    outcome.mode_details
                ))
            }
            Step::TalosApi(i) => {
                let address = &spec.nodes[i].endpoint;
                let client = self.nodes().wait_for(address, true).await?;
                let version = client.version().await.map_err(talos::api(address))?;
                Ok(format!("Talos {} answers over mutual TLS", version.tag))
            }
            Step::EtcdReady => Ok(self.nodes().wait_for_etcd().await?),
            Step::EtcdRecover => {
                let path = self.etcd_snapshot()?;
                let verified = verify_file(&path).map_err(|source| RebuildError::EtcdSnapshot {
                    path: path.clone(),
                    source,
                })?;
                let file = tokio::fs::File::open(&path)
                    .await
                    .map_err(RebuildError::io("opening the etcd snapshot", &path))?;
                let client = self.nodes().connect(&cp.endpoint, true).await?;
                client
                    .etcd_recover(file)
                    .await
                    .map_err(talos::api(&cp.endpoint))?;
                Ok(format!(
                    "uploaded {} ({} bytes of etcd data, trailer verified)",
                    path.display(),
                    verified.db_size()
                ))
            }
            Step::Bootstrap => {
                let client = self.nodes().connect(&cp.endpoint, true).await?;
                client
                    .bootstrap(true, false)
                    .await
                    .map_err(talos::api(&cp.endpoint))?;
                Ok("etcd bootstrapped from the snapshot".into())
            }
            Step::Kubeconfig => self.fetch_kubeconfig().await,
            Step::KubernetesApi => {
                let client = self.kube().await?;
                Ok(kubernetes::wait_until_ready(&client, spec.talos.wait, &cp.endpoint).await?)
            }
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
                let restores = self.restores;
                let repo = self.repository().await?;
                restores
                    .restore_postgres(repo, entry)
                    .await
                    .map_err(|source| RebuildError::Postgres {
                        snapshot: entry.snapshot.clone(),
                        url: entry.url.clone(),
                        source,
                    })?;
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

    async fn fetch_kubeconfig(&self) -> Result<String, RebuildError> {
        if let Some(path) = &self.spec.kubernetes.kubeconfig {
            std::fs::metadata(path).map_err(RebuildError::io(
                "cannot read the kubeconfig of [kubernetes] in the spec:",
                path,
            ))?;
            return Ok(format!("using {}", path.display()));
        }
        let node = self.spec.bootstrap_node();
        let client = self.nodes().connect(&node.endpoint, true).await?;
        let kubeconfig = client
            .kubeconfig()
            .await
            .map_err(talos::api(&node.endpoint))?;
        let path = self.kubeconfig_path();
        write_private(&path, &kubeconfig)?;
        Ok(format!(
            "admin kubeconfig from {} written to {}",
            node.name,
            path.display()
        ))
    }

    async fn kube(&self) -> Result<kube::Client, RebuildError> {
        let path = self.kubeconfig_path();
        Ok(kubernetes::connect(&path, self.spec.kubernetes.context.as_deref()).await?)
    }

    /// Restores the volumes snapshot `what`: host folders by a Job per
    /// node, claims read by movers by a restore Job per claim.
    async fn restore_volumes(&mut self, what: &str) -> Result<String, RebuildError> {
        let spec = self.spec.clone();
        let image = spec.data.image.clone().ok_or(RebuildError::NoImage)?;
        let location = self.location()?;
        let s3 = location.s3.clone();
        let repository = data::JobRepository {
            url: job_repository_url(&location.url)?,
            s3_endpoint: location.s3.endpoint.clone(),
            s3_path_style: location.s3.path_style,
        };
        let key_file = self.key()?.to_owned();
        let (id, manifest) = self.volume_manifest(what).await?;
        let jobs = data::plan_jobs(&id, &manifest)?;
        let moved: Vec<_> = manifest
            .volumes
            .iter()
            .filter(|v| v.mover.is_some())
            .collect();
        if jobs.is_empty() && moved.is_empty() {
            return Ok(format!("{what} holds no volume data"));
        }
        let restore_key = std::fs::read(&key_file)
            .map_err(RebuildError::io("reading the restore key", &key_file))?;
        let client = self.kube().await?;
        // Volumes read by movers go back into their claims (made anew from
        // the manifest when missing), each through its own restore Job.
        let mut lines = Vec::new();
        for volume in moved {
            let restored = ClaimRestore {
                client: &client,
                source: volume,
                snapshot: id.clone(),
                target: format!("{}/{}", volume.namespace, volume.pvc),
                storage_class: None,
                image: image.clone(),
                url: repository.url.clone(),
                s3: s3.clone(),
                restore_key: restore_key.clone(),
                force: spec.data.overwrite,
                timeout: spec.data.wait,
                // The stop step has stopped the workloads already.
                stop_workloads: false,
            }
            .run()
            .await
            .map_err(|source| KubernetesError::Claim {
                snapshot: id[..8].to_owned(),
                source: Box::new(source),
            })?;
            lines.push(format!(
                "claim {}{} filled by {}",
                restored.claim,
                if restored.created { " (made anew)" } else { "" },
                restored.job
            ));
        }
        if jobs.is_empty() {
            return Ok(format!("snapshot {}: {}", &id[..8], lines.join("; ")));
        }
        data::check_live_paths(&client, &manifest).await?;
        data::ensure_secret(&client, &spec.data.namespace, &restore_key).await?;
        let objects: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                let object = data::job_object(&job, &id, &spec.data, &image, &repository);
                (job, object)
            })
            .collect();
        lines
            .extend(data::run_jobs(&client, &spec.data.namespace, &objects, spec.data.wait).await?);
        Ok(format!("snapshot {}: {}", &id[..8], lines.join("; ")))
    }

    /// The id (hex) and manifest of the volumes snapshot `what`.
    async fn volume_manifest(&mut self, what: &str) -> Result<(String, Manifest), RebuildError> {
        let repo = self.repository().await?;
        let entry = repo
            .find_snapshot(what)
            .await
            .map_err(RebuildError::repo(format!("finding snapshot {what}")))?;
        if entry.snapshot.source_kind != SourceKind::Volumes {
            return Err(RebuildError::NotVolumes {
                what: what.to_owned(),
                kind: entry.snapshot.source_kind.clone(),
            });
        }
        let reader = repo.reader();
        let layout = Layout::read(&reader, entry.snapshot.root)
            .await
            .map_err(|source| RebuildError::Manifest {
                what: what.to_owned(),
                source: Box::new(source),
            })?;
        let manifest = layout.manifest.ok_or_else(|| RebuildError::NoManifest {
            what: what.to_owned(),
        })?;
        Ok((entry.id.to_hex(), manifest))
    }

    /// Scales the workloads using the volumes' claims to zero, recording
    /// them first (an earlier attempt's record is kept).
    async fn stop_workloads(&mut self) -> Result<String, RebuildError> {
        let mut claims = Vec::new();
        for what in self.spec.data.volumes.clone() {
            let (_, manifest) = self.volume_manifest(&what).await?;
            claims.extend(manifest.volumes.into_iter().map(|v| (v.namespace, v.pvc)));
        }
        let client = self.kube().await?;
        let record = self.work.join(STOPPED_FILE);
        let stopped = match record::load(&record)? {
            Some(earlier) => earlier,
            None => {
                let found = workloads::find(&client, &claims).await.map_err(stopping)?;
                record::save(&found, &record)?;
                found
            }
        };
        let mut suspended = String::new();
        if self.spec.data.suspend_gitops {
            let named = workloads::managers(&client, &stopped)
                .await
                .map_err(stopping)?;
            let results = lifeboat::k8s::gitops::suspend(&client, named)
                .await
                .map_err(|source| KubernetesError::GitOps {
                    action: "listing the GitOps managers of the workloads".into(),
                    source,
                })?;
            suspended = gitops_outcome(&results, "suspending")?;
        }
        for workload in &stopped.workloads {
            workloads::scale(&client, workload, 0)
                .await
                .map_err(stopping)?;
        }
        workloads::wait_until_stopped(&client, &claims, &stopped.unmanaged, self.spec.data.wait)
            .await
            .map_err(stopping)?;
        Ok(format!("{suspended}stopped {}", stopped.describe()))
    }

    /// Scales the stopped workloads back to their replicas.
    async fn start_workloads(&self) -> Result<String, RebuildError> {
        let record = self.work.join(STOPPED_FILE);
        let Some(stopped) = record::load(&record)? else {
            return Ok("nothing was stopped".into());
        };
        let client = self.kube().await?;
        for workload in &stopped.workloads {
            workloads::scale(&client, workload, workload.replicas)
                .await
                .map_err(stopping)?;
        }
        let mut resumed = String::new();
        if self.spec.data.suspend_gitops {
            let results = lifeboat::k8s::gitops::resume(&client)
                .await
                .map_err(|source| KubernetesError::GitOps {
                    action: "listing the GitOps managers lifeboat suspended".into(),
                    source,
                })?;
            resumed = gitops_outcome(&results, "resuming")?;
        }
        std::fs::remove_file(&record).map_err(RebuildError::io("removing", &record))?;
        let started: Vec<String> = stopped
            .workloads
            .iter()
            .map(|w| format!("{}/{} to {}", w.namespace, w.name, w.replicas))
            .collect();
        Ok(if started.is_empty() {
            format!("{resumed}nothing was stopped")
        } else {
            format!("{resumed}scaled back {}", started.join(", "))
        })
    }

    fn key(&self) -> Result<&Path, RebuildError> {
        self.identity.as_deref().ok_or(RebuildError::NoRestoreKey)
    }

    fn location(&self) -> Result<&RepositoryLocation, RebuildError> {
        self.location.as_ref().ok_or(RebuildError::NoRepository)
    }

    /// The repository, unlocked with the restore key on first use.
    async fn repository(&mut self) -> Result<&UnlockedRepository<RestoreIdentity>, RebuildError> {
        let repository = match self.repository.take() {
            Some(unlocked) => unlocked,
            None => self
                .restores
                .unlock(self.location()?, self.key()?)
                .await
                .map_err(RebuildError::Unlock)?,
        };
        Ok(self.repository.insert(repository))
    }

    /// Restores the talos-config snapshot (private: files 0600, folders
    /// 0700) and the etcd snapshot's file (its trailer checked) into the
    /// work folder, with the functions `lifeboat restore` uses.
    async fn fetch_backups(&mut self) -> Result<String, RebuildError> {
        let spec = self.spec.clone();
        let work = self.work.clone();
        let repo = self.repository().await?;
        let reader = repo.reader();
        let find = async |what: &str| {
            repo.find_snapshot(what)
                .await
                .map_err(RebuildError::repo(format!("finding snapshot {what}")))
        };
        let restore_failed = |what: &str, target: &Path| {
            let (what, target) = (what.to_owned(), target.to_owned());
            move |source| RebuildError::Restore {
                what,
                target,
                source: Box::new(source),
            }
        };
        let talos_config = find(&spec.backups.talos_config).await?;
        let target = work.join(TALOS_CONFIG_DIR);
        restore_private(
            &reader,
            talos_config.snapshot.root,
            &target,
            true,
            Arc::new(RestoreProgress::default()),
        )
        .await
        .map_err(restore_failed(&spec.backups.talos_config, &target))?;
        let etcd = find(&spec.backups.etcd).await?;
        let target = work.join(ETCD_DIR);
        let (_, verified) = restore_snapshot_file(
            &reader,
            etcd.snapshot.root,
            &target,
            true,
            Arc::new(RestoreProgress::default()),
        )
        .await
        .map_err(|source| RebuildError::FetchEtcdSnapshot {
            what: spec.backups.etcd.clone(),
            target: target.clone(),
            source: Box::new(source),
        })?;
        Ok(format!(
            "{} = {}, {} = {}; etcd snapshot verified ({} bytes)",
            spec.backups.talos_config,
            talos_config.id.short(),
            spec.backups.etcd,
            etcd.id.short(),
            verified.db_size()
        ))
    }

    /// The etcd snapshot file fetched.
    fn etcd_snapshot(&self) -> Result<PathBuf, RebuildError> {
        let path = self
            .work
            .join(ETCD_DIR)
            .join(lifeboat::sources::etcd::SNAPSHOT_FILE);
        if !path.is_file() {
            return Err(RebuildError::NoEtcdSnapshot {
                path,
                snapshot: self.spec.backups.etcd.clone(),
            });
        }
        Ok(path)
    }
}

/// The repository URL as the Jobs must see it: a local path made absolute.
fn job_repository_url(url: &str) -> Result<String, RebuildError> {
    if url.contains("://") {
        return Ok(url.to_owned());
    }
    Ok(std::path::absolute(url)
        .map_err(RebuildError::io("making absolute the repository path", url))?
        .display()
        .to_string())
}

/// Writes `content` to `path`, readable by its owner only.
fn write_private(path: &Path, content: &[u8]) -> Result<(), RebuildError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(RebuildError::io("writing", path))?;
    file.write_all(content)
        .map_err(RebuildError::io("writing", path))
}

/// The step's words for what happened to the GitOps managers (`""` when
/// none), e.g. `suspended Application argocd/grafana; `.
///
/// Fails naming the first manager that could not be changed.
fn gitops_outcome(results: &[ManagerResult], doing: &str) -> Result<String, KubernetesError> {
    if let Some(failed) = results.iter().find(|r| r.action == Action::Failed) {
        return Err(KubernetesError::GitOpsManager {
            action: format!("{doing} {}", failed.manager),
            reason: failed.reason.clone(),
        });
    }
    let changed: Vec<&str> = results
        .iter()
        .filter(|r| matches!(r.action, Action::Suspended | Action::Resumed))
        .map(|r| r.manager.as_str())
        .collect();
    Ok(if changed.is_empty() {
        String::new()
    } else {
        let verb = if doing == "suspending" {
            "suspended"
        } else {
            "resumed"
        };
        format!("{verb} {}; ", changed.join(", "))
    })
}

/// A failure finding, stopping or starting the volumes' workloads.
fn stopping(error: impl Into<WorkloadsError>) -> KubernetesError {
    KubernetesError::Workloads(error.into())
}
