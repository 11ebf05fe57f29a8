//! Restoring a claim through a restore mover: `lifeboat restore … --pvc
//! NS/NAME --into-claim [NS/NAME]` fills an existing claim or a new one
//! (same or another namespace and storage class, the size and access modes
//! from the manifest) with a Job in the claim's namespace that runs
//! `lifeboat restore` from lifeboat's image with the claim mounted. The
//! restore key and the storage credentials reach it through a Secret that
//! lives as long as the restore; Job and Secret are deleted at the end,
//! also after a failure. The Deployments and StatefulSets whose pods use
//! the claim are scaled to zero around the restore, their Flux and Argo
//! CD managers suspended meanwhile, and both put back afterwards, also
//! after a failure; a pod no workload runs makes the restore refuse.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use super::cleanup::delete_named;
use super::jobs::RUN_LABEL;
use super::pod::{
    CLAIM_MOUNT, ClaimJob, JobState, JobWatch, POLL, Placement, RESTORE_VARIABLES, SECRET_DIR,
    START_WITHIN, create_secret,
};
use super::split_claim;
use crate::k8s::K8sError;
use crate::k8s::gitops::{self, Action, ManagerResult};
use crate::k8s::workloads::{self, Stopped, Workload, WorkloadsError};
use crate::sources::volumes::StoredVolume;
use crate::storage::S3Options;

/// The Secret's key holding the restore identity.
const KEY_FILE: &str = "restore.key";
/// How long the stopped workloads' pods may take to go.
const STOP_WITHIN: Duration = Duration::from_secs(5 * 60);

/// Why a claim could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum ClaimRestoreError {
    /// The target is not `NAMESPACE/NAME`.
    #[error("the claim {0:?} is not NAMESPACE/NAME with Kubernetes names")]
    Claim(String),
    /// A running pod uses the claim and stopping workloads is off.
    #[error(
        "claim {claim} is in use by pod(s) {}; leave out --no-stop to stop its workloads around the restore, or restore into a new claim",
        pods.join(", ")
    )]
    InUse {
        /// The claim.
        claim: String,
        /// The pods.
        pods: Vec<String>,
    },
    /// A pod no Deployment or StatefulSet runs uses the claim.
    #[error(
        "claim {claim} is in use by pod(s) {} that no Deployment or StatefulSet runs, so lifeboat cannot stop them; delete them first, or restore into a new claim",
        pods.join(", ")
    )]
    Unmanaged {
        /// The claim.
        claim: String,
        /// The pods.
        pods: Vec<String>,
    },
    /// The workloads could not be stopped, or pods stayed.
    #[error("stopping the workloads using claim {claim}: {source}")]
    Stop {
        /// The claim.
        claim: String,
        /// Why.
        #[source]
        source: WorkloadsError,
    },
    /// A GitOps manager of the workloads could not be suspended or resumed.
    #[error(
        "{action} {manager}: {reason}; set its field back and remove the annotation lifeboat.dev/suspended-from by hand if it stays suspended"
    )]
    GitOps {
        /// Suspending or resuming.
        action: &'static str,
        /// The manager.
        manager: String,
        /// The server's answer.
        reason: String,
    },
    /// The stopped workloads could not be started again.
    #[error(
        "the restore ran, but starting {workloads} again failed: {source}; scale them back by hand"
    )]
    Start {
        /// The workloads with their replicas.
        workloads: String,
        /// Why.
        #[source]
        source: K8sError,
    },
    /// The API refused something.
    #[error(transparent)]
    Kube(#[from] K8sError),
    /// The restore Job failed or took too long.
    #[error(
        "restoring into claim {claim}: {reason}; Job {job} is deleted with its log: run the restore again and follow it with `kubectl -n {namespace} logs -f -l app.kubernetes.io/component=claim-restore`"
    )]
    Job {
        /// The claim.
        claim: String,
        /// Its namespace.
        namespace: String,
        /// The Job.
        job: String,
        /// What happened.
        reason: String,
    },
}

/// One restore of a stored claim into a claim of the cluster.
pub struct ClaimRestore<'a> {
    /// The cluster.
    pub client: &'a kube::Client,
    /// The stored volume (from the snapshot's manifest).
    pub source: &'a StoredVolume,
    /// The snapshot's id.
    pub snapshot: String,
    /// The claim to fill (`NAMESPACE/NAME`).
    pub target: String,
    /// The storage class of a new claim; default the stored one.
    pub storage_class: Option<String>,
    /// The image the Job runs (lifeboat's).
    pub image: String,
    /// The repository URL and S3 settings.
    pub url: String,
    /// Its S3 settings.
    pub s3: S3Options,
    /// The restore identity file's bytes.
    pub restore_key: Vec<u8>,
    /// Overwrite what the claim holds.
    pub force: bool,
    /// How long the Job may take.
    pub timeout: Duration,
    /// Stop the Deployments and StatefulSets using the claim around the
    /// restore (and suspend their GitOps managers); else refuse a claim
    /// in use.
    pub stop_workloads: bool,
}

/// What a claim restore did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClaimRestored {
    /// The claim filled.
    pub claim: String,
    /// Whether it was made for the restore.
    pub created: bool,
    /// The restore Job.
    pub job: String,
    /// Where it ran, if placed on a node.
    pub node: Option<String>,
    /// The workloads stopped around it and started again.
    pub stopped: Vec<String>,
    /// The GitOps managers suspended around it and resumed.
    pub suspended: Vec<String>,
}

impl ClaimRestore<'_> {
    /// Stops the workloads using the claim (suspending their GitOps
    /// managers), makes the claim if missing, runs the restore Job, removes
    /// it and its Secret, and starts the workloads again — also when the
    /// restore failed.
    ///
    /// Fails when the claim is in use and cannot be freed, the API
    /// refuses, or the Job fails.
    pub async fn run(&self) -> Result<ClaimRestored, ClaimRestoreError> {
        let (namespace, name) = split_claim(&self.target)
            .ok_or_else(|| ClaimRestoreError::Claim(self.target.clone()))?;
        let (stopped, suspended) = self.stop_users(namespace, name).await?;
        let filled = self.fill(namespace, name).await;
        let started = self.start_users(&stopped, &suspended).await;
        let mut restored = filled?;
        started?;
        restored.stopped = stopped.workloads.iter().map(describe).collect();
        restored.suspended = suspended;
        Ok(restored)
    }

    /// Frees the claim: nothing when no pod uses it, else its workloads
    /// stopped (given back with the managers suspended).
    async fn stop_users(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<(Stopped, Vec<String>), ClaimRestoreError> {
        let claim = [(namespace.to_owned(), name.to_owned())];
        let users = crate::sources::volumes::cluster::claim_users(self.client).await?;
        let pods: Vec<String> = users
            .get(&claim[0])
            .into_iter()
            .flatten()
            .map(|(pod, _)| format!("{namespace}/{pod}"))
            .collect();
        if pods.is_empty() {
            return Ok((Stopped::default(), Vec::new()));
        }
        if !self.stop_workloads {
            return Err(ClaimRestoreError::InUse {
                claim: self.target.clone(),
                pods,
            });
        }
        let found = workloads::find(self.client, &claim).await?;
        if !found.unmanaged.is_empty() {
            return Err(ClaimRestoreError::Unmanaged {
                claim: self.target.clone(),
                pods: found.unmanaged,
            });
        }
        let named = workloads::managers(self.client, &found).await?;
        let results = gitops::suspend(self.client, named).await?;
        let suspended = changed(&results, Action::Suspended);
        if let Some(failed) = results.iter().find(|r| r.action == Action::Failed) {
            let error = ClaimRestoreError::GitOps {
                action: "suspending",
                manager: failed.manager.clone(),
                reason: failed.reason.clone(),
            };
            self.start_users(&Stopped::default(), &suspended).await?;
            return Err(error);
        }
        let mut stopping = Ok(());
        for workload in &found.workloads {
            stopping = workloads::scale(self.client, workload, 0)
                .await
                .map_err(WorkloadsError::from);
            if stopping.is_err() {
                break;
            }
        }
        if stopping.is_ok() {
            stopping = workloads::wait_until_stopped(self.client, &claim, &[], STOP_WITHIN).await;
        }
        if let Err(source) = stopping {
            self.start_users(&found, &suspended).await?;
            return Err(ClaimRestoreError::Stop {
                claim: self.target.clone(),
                source,
            });
        }
        Ok((found, suspended))
    }

    /// Scales `stopped` back and resumes the managers lifeboat suspended
    /// when it suspended any.
    async fn start_users(
        &self,
        stopped: &Stopped,
        suspended: &[String],
    ) -> Result<(), ClaimRestoreError> {
        for workload in &stopped.workloads {
            workloads::scale(self.client, workload, workload.replicas)
                .await
                .map_err(|source| ClaimRestoreError::Start {
                    workloads: stopped
                        .workloads
                        .iter()
                        .map(describe)
                        .collect::<Vec<_>>()
                        .join(", "),
                    source,
                })?;
        }
        if suspended.is_empty() {
            return Ok(());
        }
        let results = gitops::resume(self.client).await?;
        match results.iter().find(|r| r.action == Action::Failed) {
            Some(failed) => Err(ClaimRestoreError::GitOps {
                action: "resuming",
                manager: failed.manager.clone(),
                reason: failed.reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Makes the claim if missing and fills it through the restore Job,
    /// which is removed with its Secret.
    async fn fill(&self, namespace: &str, name: &str) -> Result<ClaimRestored, ClaimRestoreError> {
        let claims = Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), namespace);
        let existing = claims
            .get_opt(name)
            .await
            .map_err(|e| K8sError::api(format!("reading claim {}", self.target), e))?;
        let created = existing.is_none();
        if created {
            let object = self.claim_object(namespace, name);
            let typed: PersistentVolumeClaim = serde_json::from_value(object).map_err(|e| {
                K8sError::api(
                    format!("making claim {}", self.target),
                    kube::Error::SerdeError(e),
                )
            })?;
            claims
                .create(&PostParams::default(), &typed)
                .await
                .map_err(|e| K8sError::api(format!("creating claim {}", self.target), e))?;
        }
        let run = format!("{:016x}", rand::random::<u64>());
        let job = format!("lifeboat-restore-{run}");
        let node = existing
            .as_ref()
            .and_then(|c| c.spec.as_ref())
            .and_then(|s| s.volume_name.clone());
        let pinned = match node {
            Some(pv) => pinned_nodes(self.client, &pv).await?,
            None => Vec::new(),
        };
        let result = self.run_job(namespace, name, &run, &job, &pinned).await;
        let removed_job = delete_named::<Job>(self.client, namespace, &job).await;
        let removed_secret = delete_named::<Secret>(self.client, namespace, &job).await;
        result?;
        removed_job?;
        removed_secret?;
        Ok(ClaimRestored {
            claim: self.target.clone(),
            created,
            job: format!("{namespace}/{job}"),
            node: pinned.first().cloned(),
            stopped: Vec::new(),
            suspended: Vec::new(),
        })
    }

    async fn run_job(
        &self,
        namespace: &str,
        name: &str,
        run: &str,
        job: &str,
        pinned: &[String],
    ) -> Result<(), ClaimRestoreError> {
        let labels = json!({
            "app.kubernetes.io/name": "lifeboat",
            "app.kubernetes.io/component": "claim-restore",
            RUN_LABEL: run,
        });
        create_secret(
            self.client,
            (namespace, job),
            &labels,
            &[(KEY_FILE, &self.restore_key)],
            &RESTORE_VARIABLES,
            "the restore Secret",
        )
        .await?;
        self.claim_job(namespace, name, job, labels, pinned)
            .create(self.client, "the restore Job")
            .await?;
        let fail = |reason: String| ClaimRestoreError::Job {
            claim: self.target.clone(),
            namespace: namespace.to_owned(),
            job: job.to_owned(),
            reason,
        };
        let mut watch = JobWatch::new(namespace, job);
        loop {
            match watch.look(self.client, START_WITHIN, self.timeout).await? {
                JobState::Running => tokio::time::sleep(POLL).await,
                JobState::Complete => return Ok(()),
                JobState::Failed { reason, log } => {
                    let said = log.map(|tail| format!(": {tail}")).unwrap_or_default();
                    return Err(fail(format!("its Job failed ({reason}){said}")));
                }
                JobState::Overran => {
                    return Err(fail(format!(
                        "its Job did not finish within {}",
                        humantime::format_duration(self.timeout)
                    )));
                }
                JobState::NotStarted(reason) => {
                    return Err(fail(format!(
                        "its Job did not start within {}: {reason}",
                        humantime::format_duration(START_WITHIN)
                    )));
                }
                JobState::Gone => return Err(fail("its Job disappeared".into())),
            }
        }
    }

    /// A new claim like the stored one.
    fn claim_object(&self, namespace: &str, name: &str) -> Value {
        let modes = if self.source.access_modes.is_empty() {
            vec!["ReadWriteOnce".to_owned()]
        } else {
            self.source.access_modes.clone()
        };
        let class = self
            .storage_class
            .clone()
            .unwrap_or_else(|| self.source.storage_class.clone());
        let mut spec = json!({
            "accessModes": modes,
            "resources": {"requests": {"storage": if self.source.capacity.is_empty() { "1Gi" } else { &self.source.capacity }}},
        });
        if !class.is_empty() {
            spec["storageClassName"] = json!(class);
        }
        json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": namespace,
                "annotations": {"lifeboat.dev/restored-from": format!("{}/{} of snapshot {}", self.source.namespace, self.source.pvc, self.snapshot)}},
            "spec": spec,
        })
    }

    /// The restore Job `job` filling the claim `namespace/name`.
    fn claim_job(
        &self,
        namespace: &str,
        name: &str,
        job: &str,
        labels: Value,
        pinned: &[String],
    ) -> ClaimJob {
        let mut command = vec![
            "lifeboat".to_owned(),
            "restore".into(),
            self.snapshot.clone(),
            "--pvc".into(),
            format!("{}/{}", self.source.namespace, self.source.pvc),
            "--target".into(),
            CLAIM_MOUNT.into(),
        ];
        if self.force {
            command.push("--force".into());
        }
        let mut env = vec![
            json!({"name": "LIFEBOAT_REPOSITORY", "value": self.url}),
            json!({"name": "LIFEBOAT_IDENTITY", "value": format!("{SECRET_DIR}/{KEY_FILE}")}),
        ];
        if let Some(endpoint) = &self.s3.endpoint {
            env.push(json!({"name": "LIFEBOAT_S3_ENDPOINT", "value": endpoint}));
        }
        if self.s3.path_style {
            env.push(json!({"name": "LIFEBOAT_S3_PATH_STYLE", "value": "true"}));
        }
        ClaimJob {
            name: job.to_owned(),
            namespace: namespace.to_owned(),
            claim: name.to_owned(),
            read_only: false,
            labels,
            annotations: json!({}),
            container: "restore",
            image: self.image.clone(),
            command,
            env,
            secret: job.to_owned(),
            variables: &RESTORE_VARIABLES,
            // Root writes every owner and mode back; CHOWN, FOWNER,
            // DAC_OVERRIDE and FSETID are within Pod Security baseline.
            capabilities: &["CHOWN", "FOWNER", "DAC_OVERRIDE", "FSETID"],
            placement: Placement::pinned(pinned.to_vec()),
            timeout: self.timeout,
        }
    }
}

/// The nodes the PersistentVolume `pv` is pinned to.
async fn pinned_nodes(client: &kube::Client, pv: &str) -> Result<Vec<String>, K8sError> {
    let volume = Api::<k8s_openapi::api::core::v1::PersistentVolume>::all(client.clone())
        .get_opt(pv)
        .await
        .map_err(|e| K8sError::api(format!("reading PersistentVolume {pv}"), e))?;
    Ok(volume
        .and_then(|v| v.spec)
        .map(|s| crate::sources::volumes::cluster::pinned_nodes(&s))
        .unwrap_or_default())
}

/// `StatefulSet apps/db (1)`.
fn describe(workload: &Workload) -> String {
    format!(
        "{:?} {}/{} ({})",
        workload.kind, workload.namespace, workload.name, workload.replicas
    )
}

/// The managers whose result is `action`.
fn changed(results: &[ManagerResult], action: Action) -> Vec<String> {
    results
        .iter()
        .filter(|r| r.action == action)
        .map(|r| r.manager.clone())
        .collect()
}
