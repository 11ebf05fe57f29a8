//! lifeboatd's side of the movers: one Secret per namespace and one Job per
//! claim, started within the concurrency limits, watched to their end or
//! their timeout, and deleted at the end of the run whatever happened.
//! Every object is labelled with the run and the volumes job, so the next
//! run deletes what a killed one left.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::cleanup::delete_runs;
use super::ledger::CacheLedger;
use super::parts::{StoredPart, forget_parts, stored_parts};
use super::pod::{
    CLAIM_MOUNT, ClaimJob, JobState, JobWatch, POLL, Placement, SECRET_DIR, create_secret,
};
use super::snapshot::{self, SnapshotRequest};
use super::{MoverSettings, MoverSpec, RepositoryAccess, job_label};
use crate::k8s::K8sError;
use crate::repo::{RepoError, UnlockedRepository};
use crate::sources::volumes::StoredVolume;
use crate::state::pin::RepositoryPin;
use crate::storage::CREDENTIAL_VARIABLES;

/// The label naming what a lifeboat object is.
const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// Its value on movers and their Secrets.
const COMPONENT: &str = "volume-mover";
/// The label holding the run.
pub const RUN_LABEL: &str = "lifeboat.dev/run";
/// The label holding (a hash of) the volumes job.
pub const SOURCE_LABEL: &str = "lifeboat.dev/volumes-job";
/// The Secret's key holding the service identity.
const IDENTITY_FILE: &str = "service.key";
/// The Secret's key holding the [`MoverSpec`].
const SPEC_FILE: &str = "spec.json";

/// Why the movers could not be run at all (one mover's failure is its
/// claim's outcome, not this).
#[derive(Debug, thiserror::Error)]
pub enum MoversError {
    /// The Kubernetes API refused what every mover needs.
    #[error(transparent)]
    Kube(#[from] K8sError),
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// No image is configured and lifeboatd's own cannot be told.
    #[error(
        "the volume movers need an image: {reason}; set `movers.image`, or give lifeboatd POD_NAMESPACE and POD_NAME from the downward API"
    )]
    NoImage {
        /// Why lifeboatd's own image is unknown.
        reason: String,
    },
    /// The service identity could not be read for the movers' Secret.
    #[error("cannot read the service identity {path} for the movers: {source}")]
    Identity {
        /// The file.
        path: std::path::PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// The contents of a run's Secret, and the namespaces it was made in.
struct RunSecret {
    identity: Vec<u8>,
    spec: Vec<u8>,
    /// Each namespace's claims' cache key files.
    cache_keys: BTreeMap<String, Vec<(String, Zeroizing<String>)>>,
    made_in: BTreeSet<String>,
}

/// One claim to move.
#[derive(Debug, Clone)]
pub struct MoverClaim {
    /// What the manifest records of it.
    pub volume: StoredVolume,
    /// Where its mover runs.
    pub placement: Placement,
    /// The VolumeSnapshotClass it is read through, in snapshot mode.
    pub snapshot_class: Option<String>,
}

/// What became of one claim's mover.
#[derive(Debug)]
pub struct MoverOutcome {
    /// The claim.
    pub claim: MoverClaim,
    /// Its Job.
    pub job: String,
    /// The part, or why there is none.
    pub result: Result<StoredPart, String>,
}

/// The movers of one run of volumes job `job`.
pub struct MoverRun<'a> {
    /// The cluster.
    pub client: &'a kube::Client,
    /// The source's `movers` table.
    pub settings: &'a MoverSettings,
    /// The volumes job.
    pub job: &'a str,
    /// The repository, opened with the service key.
    pub repo: &'a UnlockedRepository,
    /// Its settings (URL, S3, service identity file).
    pub repository: &'a RepositoryAccess,
    /// Glob patterns left out of every claim.
    pub exclude: &'a [String],
    /// lifeboatd's state folder, where the movers' caches are recorded.
    pub state_dir: Option<&'a Path>,
}

impl MoverRun<'_> {
    /// Removes what earlier runs left, snapshots the claims in snapshot
    /// mode, moves the live claims, awaits `released` (the pods' post
    /// hooks: nothing needs them quiet any more), moves the snapshots and
    /// removes this run's objects again, also when moving failed; then
    /// records the caches the movers left.
    /// `released` is awaited exactly once, whatever happens.
    ///
    /// Fails when the Secret's contents cannot be made, the API refuses a
    /// listing or delete, or the parts cannot be listed.
    pub async fn run(
        &self,
        claims: Vec<MoverClaim>,
        released: impl std::future::Future<Output = ()>,
    ) -> Result<Vec<MoverOutcome>, MoversError> {
        let run = format!("{:016x}", rand::random::<u64>());
        let repository = &self.repo.repository().config().id;
        let mut ledger = CacheLedger::open(self.state_dir, repository, self.job);
        let moved_claims: Vec<String> = claims.iter().map(|c| claim_label(&c.volume)).collect();
        let begun = self.begin(&run, &claims, ledger.as_ref()).await;
        let (image, mut secret) = match begun {
            Ok(begun) => begun,
            Err(e) => {
                released.await;
                return Err(e);
            }
        };
        let (snapshotted, live): (Vec<MoverClaim>, Vec<MoverClaim>) =
            claims.into_iter().partition(|c| c.snapshot_class.is_some());
        let requests: Vec<SnapshotRequest> = snapshotted
            .iter()
            .map(|claim| self.snapshot_request(&run, claim))
            .collect();
        let taken = snapshot::take_all(self.client, &requests, &self.labels(&run)).await;
        let ledger_now = ledger.as_ref();
        let live_moved = self
            .move_claims(&run, &image, live, &mut secret, ledger_now)
            .await;
        released.await;
        let mut ready = Vec::new();
        let mut ended = Vec::new();
        for ((claim, request), outcome) in snapshotted.into_iter().zip(requests).zip(taken) {
            match outcome {
                Ok(()) => ready.push(claim),
                Err(reason) => ended.push((claim, request.name, Err(reason))),
            }
        }
        let moved = match live_moved {
            Ok(live) => self
                .move_claims(&run, &image, ready, &mut secret, ledger_now)
                .await
                .map(|snapshots| {
                    ended.extend(live);
                    ended.extend(snapshots);
                }),
            Err(e) => Err(e),
        };
        let removed = self.remove_objects(|object_run| object_run == run).await;
        moved?;
        removed?;
        let mut parts = stored_parts(self.repo, self.job, &run).await?;
        if let Some(ledger) = ledger.as_mut() {
            let left = parts
                .iter()
                .filter_map(|(claim, part)| Some((claim.clone(), part.cache.clone()?)))
                .collect();
            ledger
                .settle(self.repo.repository().store(), &moved_claims, left)
                .await;
        }
        Ok(ended
            .into_iter()
            .map(|(claim, job, ended)| {
                let result = ended.and_then(|()| {
                    parts.remove(&claim_label(&claim.volume)).ok_or_else(|| {
                        format!("its mover {job} finished but stored no part snapshot")
                    })
                });
                MoverOutcome { claim, job, result }
            })
            .collect())
    }

    /// The image and the run's Secret contents, once what earlier runs
    /// left is removed and forgotten.
    async fn begin(
        &self,
        run: &str,
        claims: &[MoverClaim],
        ledger: Option<&CacheLedger>,
    ) -> Result<(String, RunSecret), MoversError> {
        let image = match &self.settings.image {
            Some(image) => image.clone(),
            None => own_image(self.client).await?,
        };
        let secret = self.run_secret(run, claims, ledger)?;
        self.remove_objects(|object_run| object_run != run).await?;
        forget_parts(self.repo, self.job, |_| true).await?;
        if let Some(ledger) = ledger {
            ledger.sweep(self.repo.repository().store()).await;
        }
        Ok((image, secret))
    }

    /// What the run's Secret holds: the service identity, the spec and
    /// the claims' cache keys.
    fn run_secret(
        &self,
        run: &str,
        claims: &[MoverClaim],
        ledger: Option<&CacheLedger>,
    ) -> Result<RunSecret, MoversError> {
        let mut cache_keys: BTreeMap<String, Vec<_>> = BTreeMap::new();
        if let Some(ledger) = ledger {
            for claim in claims {
                let key = ledger.key(&claim_label(&claim.volume)).to_hex();
                cache_keys
                    .entry(claim.volume.namespace.clone())
                    .or_default()
                    .push((cache_key_file(&claim.volume), key));
            }
        }
        let identity = std::fs::read(&self.repository.service_identity).map_err(|source| {
            MoversError::Identity {
                path: self.repository.service_identity.clone(),
                source,
            }
        })?;
        let spec = MoverSpec {
            url: self.repository.url.clone(),
            s3: self.repository.s3.clone(),
            pin: RepositoryPin {
                url: self.repository.url.clone(),
                fingerprint: self.repo.fingerprint().clone(),
                restore_recipients: self
                    .repo
                    .repository()
                    .recipients()
                    .restore
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                pinned: chrono::Utc::now(),
            },
            job: self.job.to_owned(),
            run: run.to_owned(),
        };
        let spec = serde_json::to_vec(&spec).map_err(|source| RepoError::Encode {
            what: "the mover spec",
            source,
        })?;
        Ok(RunSecret {
            identity,
            spec,
            cache_keys,
            made_in: BTreeSet::new(),
        })
    }

    fn snapshot_request(&self, run: &str, claim: &MoverClaim) -> SnapshotRequest {
        let volume = &claim.volume;
        SnapshotRequest {
            namespace: volume.namespace.clone(),
            claim: volume.pvc.clone(),
            class: claim.snapshot_class.clone().unwrap_or_default(),
            storage_class: volume.storage_class.clone(),
            capacity: volume.capacity.clone(),
            name: snapshot_name(run, volume),
        }
    }

    /// Starts and watches the movers within the limits, making the run's
    /// Secret in each namespace it is not in yet.
    async fn move_claims(
        &self,
        run: &str,
        image: &str,
        claims: Vec<MoverClaim>,
        secret: &mut RunSecret,
        ledger: Option<&CacheLedger>,
    ) -> Result<Vec<(MoverClaim, String, Result<(), String>)>, MoversError> {
        let mut pending: VecDeque<MoverClaim> = claims.into();
        let mut running: Vec<(MoverClaim, JobWatch)> = Vec::new();
        let mut outcomes = Vec::new();
        let total = self.settings.concurrency.max(1);
        let per_node = self.settings.per_node.max(1);
        loop {
            while running.len() < total {
                let busy = |key: &Option<String>| {
                    key.as_ref().is_some_and(|key| {
                        running
                            .iter()
                            .filter(|(c, _)| c.placement.node_key().as_ref() == Some(key))
                            .count()
                            >= per_node
                    })
                };
                let Some(next) = pending.iter().position(|c| !busy(&c.placement.node_key())) else {
                    break;
                };
                let Some(claim) = pending.remove(next) else {
                    break;
                };
                let namespace = claim.volume.namespace.clone();
                let name = job_name(run, &claim.volume);
                let started = async {
                    if !secret.made_in.contains(&namespace) {
                        self.create_secret(run, &namespace, secret).await?;
                        secret.made_in.insert(namespace.clone());
                    }
                    self.claim_job(run, image, &name, &claim, ledger)
                        .create(self.client, "the mover Job")
                        .await
                };
                match started.await {
                    Ok(()) => {
                        let watch = JobWatch::new(&namespace, &name);
                        running.push((claim, watch));
                    }
                    Err(e) => outcomes.push((claim, name, Err(crate::errors::describe(&e)))),
                }
            }
            if running.is_empty() && pending.is_empty() {
                return Ok(outcomes);
            }
            tokio::time::sleep(POLL).await;
            let mut still = Vec::new();
            for (claim, mut watch) in running {
                match self.watch(&mut watch).await {
                    None => still.push((claim, watch)),
                    Some(ended) => outcomes.push((claim, watch.name, ended)),
                }
            }
            running = still;
        }
    }

    /// Whether the mover `watch` follows ended: `None` while it runs, else
    /// whether it completed or why it failed. A mover whose pod has not
    /// started within the start timeout or that runs past its timeout is
    /// deleted.
    async fn watch(&self, watch: &mut JobWatch) -> Option<Result<(), String>> {
        let settings = self.settings;
        let state = watch
            .look(self.client, settings.start_timeout, settings.timeout)
            .await;
        let (namespace, name) = (&watch.namespace, &watch.name);
        // The Job goes at the end of the run, its log with it.
        let logs = format!(
            "its log goes with it at the end of the run: follow the next run with \
             `kubectl -n {namespace} logs -f -l {COMPONENT_LABEL}={COMPONENT}`"
        );
        let stop = || async {
            let jobs = Api::<Job>::namespaced(self.client.clone(), namespace);
            if let Err(e) = jobs.delete(name, &DeleteParams::background()).await {
                tracing::warn!("stopping the mover {namespace}/{name}: {e}");
            }
        };
        match state {
            Ok(JobState::Running) => None,
            Ok(JobState::Complete) => Some(Ok(())),
            Ok(JobState::Failed { reason, log }) => {
                let said = log.map(|tail| format!(": {tail}")).unwrap_or_default();
                Some(Err(format!(
                    "its mover {namespace}/{name} failed ({reason}){said}; {logs}"
                )))
            }
            Ok(JobState::Overran) => {
                stop().await;
                Some(Err(format!(
                    "its mover {namespace}/{name} did not finish within {} (the movers' timeout); {logs}",
                    humantime::format_duration(settings.timeout)
                )))
            }
            Ok(JobState::NotStarted(reason)) => {
                stop().await;
                Some(Err(format!(
                    "its mover {namespace}/{name} did not start within {} (the movers' start_timeout): {reason}",
                    humantime::format_duration(settings.start_timeout)
                )))
            }
            Ok(JobState::Gone) => Some(Err(format!("its Job {namespace}/{name} disappeared"))),
            Err(e) => Some(Err(crate::errors::describe(&e))),
        }
    }

    fn labels(&self, run: &str) -> Value {
        json!({
            "app.kubernetes.io/name": "lifeboat",
            COMPONENT_LABEL: COMPONENT,
            RUN_LABEL: run,
            SOURCE_LABEL: job_label(self.job),
        })
    }

    /// Creates the run's Secret in `namespace`, with the keys of that
    /// namespace's claims' caches.
    async fn create_secret(
        &self,
        run: &str,
        namespace: &str,
        secret: &RunSecret,
    ) -> Result<(), K8sError> {
        let mut files = vec![
            (IDENTITY_FILE, secret.identity.as_slice()),
            (SPEC_FILE, secret.spec.as_slice()),
        ];
        for (file, key) in secret.cache_keys.get(namespace).into_iter().flatten() {
            files.push((file.as_str(), key.as_bytes()));
        }
        create_secret(
            self.client,
            (namespace, &secret_name(run)),
            &self.labels(run),
            &files,
            &CREDENTIAL_VARIABLES,
            "the movers' Secret",
        )
        .await
    }

    /// The Job of the mover `name` of `claim`.
    fn claim_job(
        &self,
        run: &str,
        image: &str,
        name: &str,
        claim: &MoverClaim,
        ledger: Option<&CacheLedger>,
    ) -> ClaimJob {
        let volume = &claim.volume;
        let mut command = vec![
            "lifeboatd".to_owned(),
            "mover".into(),
            "--spec".into(),
            format!("{SECRET_DIR}/{SPEC_FILE}"),
            "--identity".into(),
            format!("{SECRET_DIR}/{IDENTITY_FILE}"),
            "--claim".into(),
            claim_label(volume),
            "--folder".into(),
            CLAIM_MOUNT.into(),
        ];
        for pattern in self.exclude {
            command.extend(["--exclude".into(), pattern.clone()]);
        }
        if let Some(ledger) = ledger {
            let key_file = format!("{SECRET_DIR}/{}", cache_key_file(volume));
            command.extend(["--cache-key".into(), key_file]);
            if let Some(object) = ledger.object(&claim_label(volume)) {
                command.extend(["--cache".into(), object.to_owned()]);
            }
        }
        ClaimJob {
            name: name.to_owned(),
            namespace: volume.namespace.clone(),
            claim: match claim.snapshot_class {
                Some(_) => snapshot_name(run, volume),
                None => volume.pvc.clone(),
            },
            read_only: true,
            labels: self.labels(run),
            annotations: json!({"lifeboat.dev/volumes-job": self.job,
                "lifeboat.dev/claim": claim_label(volume)}),
            container: "mover",
            image: image.to_owned(),
            command,
            env: Vec::new(),
            secret: secret_name(run),
            variables: &CREDENTIAL_VARIABLES,
            // Root reads every file of the claim. DAC_OVERRIDE, not
            // DAC_READ_SEARCH: Pod Security `baseline` (Talos' default)
            // allows only the former; the claim and the root filesystem
            // are read-only, so it grants no writes.
            capabilities: &["DAC_OVERRIDE"],
            placement: claim.placement.clone(),
            timeout: self.settings.timeout,
        }
    }

    /// Deletes the movers and Secrets of this volumes job whose run
    /// `doomed` accepts, in every namespace.
    async fn remove_objects(&self, doomed: impl Fn(&str) -> bool) -> Result<(), K8sError> {
        let selector = format!(
            "{COMPONENT_LABEL}={COMPONENT},{SOURCE_LABEL}={}",
            job_label(self.job)
        );
        let params = ListParams::default().labels(&selector);
        let client = self.client;
        delete_runs(
            &Api::<Job>::all(client.clone()),
            |namespace| Api::namespaced(client.clone(), namespace),
            (&params, RUN_LABEL),
            &doomed,
            "mover Jobs",
        )
        .await?;
        snapshot::remove(client, &params, RUN_LABEL, &doomed).await?;
        delete_runs(
            &Api::<Secret>::all(client.clone()),
            |namespace| Api::namespaced(client.clone(), namespace),
            (&params, RUN_LABEL),
            &doomed,
            "mover Secrets",
        )
        .await?;
        Ok(())
    }
}

/// The image of the pod this process runs in (`POD_NAMESPACE`/`POD_NAME`):
/// its container called `lifeboatd`, else its first.
///
/// Fails when either variable is missing or the pod cannot be read.
async fn own_image(client: &kube::Client) -> Result<String, MoversError> {
    let variable = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| MoversError::NoImage {
                reason: format!("{name} is not set"),
            })
    };
    let (namespace, name) = (variable("POD_NAMESPACE")?, variable("POD_NAME")?);
    let pod = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), &namespace)
        .get(&name)
        .await
        .map_err(|e| MoversError::NoImage {
            reason: format!("reading its own pod {namespace}/{name}: {e}"),
        })?;
    let containers = pod.spec.map(|s| s.containers).unwrap_or_default();
    containers
        .iter()
        .find(|c| c.name == "lifeboatd")
        .or(containers.first())
        .and_then(|c| c.image.clone())
        .ok_or_else(|| MoversError::NoImage {
            reason: format!("its pod {namespace}/{name} names no image"),
        })
}

fn claim_label(volume: &StoredVolume) -> String {
    format!("{}/{}", volume.namespace, volume.pvc)
}

fn secret_name(run: &str) -> String {
    format!("lifeboat-mover-{run}")
}

/// `lifeboat-mover-RUN-HASH`: unique per claim, a valid DNS label.
fn job_name(run: &str, volume: &StoredVolume) -> String {
    format!("lifeboat-mover-{run}-{}", claim_hash(volume))
}

/// `lifeboat-snapshot-RUN-HASH`: the VolumeSnapshot and temporary claim of
/// a claim in snapshot mode.
fn snapshot_name(run: &str, volume: &StoredVolume) -> String {
    format!("lifeboat-snapshot-{run}-{}", claim_hash(volume))
}

/// The run Secret's file holding `volume`'s cache key.
fn cache_key_file(volume: &StoredVolume) -> String {
    format!("cache-{}.key", claim_hash(volume))
}

fn claim_hash(volume: &StoredVolume) -> String {
    blake3::hash(claim_label(volume).as_bytes()).to_hex()[..12].to_owned()
}
