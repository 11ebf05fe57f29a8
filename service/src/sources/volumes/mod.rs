//! `kind = "volumes"`: the data behind PersistentVolumeClaims whose volumes
//! are folders on this node — `hostPath` and `local` PersistentVolumes, as
//! openebs-hostpath (`/var/openebs/local/<pv>`) and local-path-provisioner
//! create them, which other backup tools skip.
//!
//! Each bound claim in scope is matched to its PersistentVolume; its folder
//! is stored at its absolute host path, as a directory job stores folders.
//! A claim whose data this node cannot reach (CSI, NFS, another node, not
//! bound) is reported as skipped with the reason; a claim opted out with
//! the annotation or label `lifeboat.dev/exclude: "true"` too. With a
//! `movers` table every bound claim — hostPath, local, CSI or NFS, on any
//! node — is read by a mover Job instead ([`mover`]).
//!
//! The root file `lifeboat-volumes.json` (restore key only) describes each
//! stored volume — namespace, claim, volume, storage class, capacity,
//! access modes, node, host path — and each skipped one, for `lifeboat
//! restore --in-place`. The metadata holds counts only.
//!
//! Pods that mount a stored claim may declare hooks in annotations
//! ([`crate::hooks::annotations`]); they run around the data read.

pub mod cluster;
pub mod drill;
pub mod mover;
pub mod restore;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, ListParams};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::kubernetes::filter::EXCLUDE_LABEL;
use super::{SourceContext, SourceError, resolve};
use crate::backup::documents::Documents;
use crate::backup::folders::Folder;
use crate::backup::items::{Item, Outcome};
use crate::backup::{BackupError, SnapshotBuilder};
use crate::hooks::{HookRunner, Phase, annotations};
use crate::k8s::{K8sError, connect};
use crate::repo::RepoError;
use cluster::{capacity, claim_users, pinned_nodes, storage_class, unreachable_reason};
use mover::graft::move_claims;
use mover::jobs::{MoverClaim, MoverRun};
use mover::pod::Placement;
use mover::{MODE_ANNOTATION, Mode, MoverSettings};

/// The snapshot's manifest file.
pub const MANIFEST_FILE: &str = "lifeboat-volumes.json";

/// Settings of a volumes source.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumesSource {
    /// A kubeconfig file; default: in-cluster service account or
    /// `KUBECONFIG`.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context; default: its current one.
    #[serde(default)]
    pub context: Option<String>,
    /// This node's name; default: `NODE_NAME` from the environment, else
    /// the host name.
    #[serde(default)]
    pub node: Option<String>,
    /// Only claims in these namespaces (empty: all).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Never claims in these namespaces.
    #[serde(default)]
    pub exclude_namespaces: Vec<String>,
    /// Only claims of these storage classes (empty: all).
    #[serde(default)]
    pub storage_classes: Vec<String>,
    /// Only claims matching this label selector.
    #[serde(default)]
    pub labels: Option<String>,
    /// Glob patterns left out of every volume.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Whether pod annotation hooks run (default true).
    #[serde(default = "yes")]
    pub annotation_hooks: bool,
    /// Read every claim through a mover Job instead of this process's own
    /// view of the node's folders ([`mover`]).
    #[serde(default)]
    pub movers: Option<MoverSettings>,
}

fn yes() -> bool {
    true
}

/// One stored volume, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredVolume {
    /// The claim's namespace.
    pub namespace: String,
    /// The claim.
    pub pvc: String,
    /// The PersistentVolume.
    pub pv: String,
    /// Its storage class (`""` if none).
    pub storage_class: String,
    /// Its capacity (`10Gi`).
    pub capacity: String,
    /// Its access modes.
    pub access_modes: Vec<String>,
    /// The node its data is on (`""` if not pinned).
    pub node: String,
    /// Its path in the snapshot: the data folder on the node for a volume
    /// read in place, `/volumes/NAMESPACE/CLAIM` for one read by a mover.
    pub host_path: PathBuf,
    /// How its mover read it, for a volume read by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mover: Option<MovedBy>,
}

/// How a mover read a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedBy {
    /// The mode used.
    pub mode: Mode,
    /// The mover Job (`NAMESPACE/NAME`).
    pub job: String,
    /// Bytes of file data in the claim.
    pub bytes: u64,
}

/// One claim left out, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedVolume {
    /// The claim's namespace.
    pub namespace: String,
    /// The claim.
    pub pvc: String,
    /// The PersistentVolume, if bound.
    pub pv: String,
    /// Why.
    pub reason: String,
}

/// The manifest file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Volumes whose data is in the snapshot.
    pub volumes: Vec<StoredVolume>,
    /// Claims whose data is not, with the reason.
    pub skipped: Vec<SkippedVolume>,
}

/// What the movers' decisions look at: the volumes by name, the pods
/// (name, node) using each claim, the VolumeSnapshotClass of each CSI
/// driver that has one.
struct ClusterView<'a> {
    volumes: &'a BTreeMap<String, PersistentVolume>,
    users: &'a BTreeMap<(String, String), Vec<(String, String)>>,
    snapshot_classes: &'a BTreeMap<String, String>,
}

/// What became of one claim.
enum Decision {
    Store(StoredVolume),
    Move(MoverClaim),
    Skip(String),
    Fail(String),
}

impl VolumesSource {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if let Some(path) = self.kubeconfig.as_mut() {
            resolve(path, base);
        }
    }

    /// This node's name.
    fn node_name(&self) -> String {
        self.node
            .clone()
            .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()))
            .unwrap_or_else(crate::backup::hostname)
    }

    pub(crate) async fn back_up(
        &self,
        builder: &mut SnapshotBuilder,
        context: &SourceContext,
    ) -> Result<Value, SourceError> {
        let client = connect(self.kubeconfig.as_deref(), self.context.as_deref()).await?;
        let mut params = ListParams::default();
        if let Some(labels) = &self.labels {
            params = params.labels(labels);
        }
        let claims = Api::<PersistentVolumeClaim>::all(client.clone())
            .list(&params)
            .await
            .map_err(|e| K8sError::api("listing PersistentVolumeClaims", e))?
            .items;
        let volumes: BTreeMap<String, PersistentVolume> =
            Api::<PersistentVolume>::all(client.clone())
                .list(&ListParams::default())
                .await
                .map_err(|e| K8sError::api("listing PersistentVolumes", e))?
                .items
                .into_iter()
                .filter_map(|pv| pv.metadata.name.clone().map(|name| (name, pv)))
                .collect();
        let (users, snapshot_classes) = match &self.movers {
            Some(_) => (
                claim_users(&client).await?,
                mover::snapshot::classes(&client).await?,
            ),
            None => (BTreeMap::new(), BTreeMap::new()),
        };
        let node = self.node_name();
        let mut manifest = Manifest::default();
        let mut to_move = Vec::new();
        let mut failed = 0u64;
        for claim in &claims {
            let namespace = claim.metadata.namespace.clone().unwrap_or_default();
            let name = claim.metadata.name.clone().unwrap_or_default();
            let label = format!("{namespace}/{name}");
            let pv = claim
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.clone())
                .unwrap_or_default();
            let decision = match &self.movers {
                Some(settings) => {
                    let cluster = ClusterView {
                        volumes: &volumes,
                        users: &users,
                        snapshot_classes: &snapshot_classes,
                    };
                    self.decide_mover(claim, &cluster, settings)
                }
                None => self.decide(claim, &volumes, &node),
            };
            match decision {
                Decision::Store(volume) => {
                    builder.record(Item::new(
                        "volume",
                        label,
                        Outcome::Stored,
                        format!(
                            "{} ({}, {})",
                            volume.host_path.display(),
                            volume.storage_class,
                            volume.capacity
                        ),
                    ));
                    manifest.volumes.push(volume);
                }
                Decision::Move(claim) => to_move.push(claim),
                Decision::Skip(reason) => {
                    builder.record(Item::new("volume", label, Outcome::Skipped, reason.clone()));
                    manifest.skipped.push(SkippedVolume {
                        namespace,
                        pvc: name,
                        pv,
                        reason,
                    });
                }
                Decision::Fail(reason) => {
                    failed += 1;
                    builder.record(Item::new("volume", label, Outcome::Failed, reason.clone()));
                    manifest.skipped.push(SkippedVolume {
                        namespace,
                        pvc: name,
                        pv,
                        reason,
                    });
                }
            }
        }
        let claims_read: Vec<(String, String)> = manifest
            .volumes
            .iter()
            .chain(to_move.iter().map(|c| &c.volume))
            .map(|v| (v.namespace.clone(), v.pvc.clone()))
            .collect();
        let mut runner = HookRunner::new(self.kubeconfig.clone(), self.context.clone());
        let (pre, post) = if self.annotation_hooks && !claims_read.is_empty() {
            let (pre, pre_problems) =
                annotations::pod_hooks(&client, &claims_read, Phase::Pre).await?;
            let (post, post_problems) =
                annotations::pod_hooks(&client, &claims_read, Phase::Post).await?;
            for problem in pre_problems.into_iter().chain(post_problems) {
                builder.record(Item::new(
                    "hook",
                    "pod annotation",
                    Outcome::Failed,
                    problem,
                ));
            }
            (pre, post)
        } else {
            (Vec::new(), Vec::new())
        };
        let mut items = Vec::new();
        let mut post_ran = false;
        let pre_result = runner.run_phase(Phase::Pre, &pre, &mut items).await;
        let stored = match (pre_result, &self.movers) {
            (Err(e), _) => Err(SourceError::Hook(e)),
            (Ok(()), None) => self.store(builder, &manifest, context).await,
            (Ok(()), Some(settings)) => {
                let (repo, job) = (builder.repository().clone(), builder.job().to_owned());
                let movers = MoverRun {
                    client: &client,
                    settings,
                    job: &job,
                    repo: &repo,
                    repository: &context.repository,
                    exclude: &self.exclude,
                    state_dir: context.state_dir.as_deref(),
                };
                let released = async {
                    runner.run_phase(Phase::Post, &post, &mut items).await.ok();
                    post_ran = true;
                };
                move_claims(&movers, builder, &mut manifest, to_move, released)
                    .await
                    .map(|failures| failed += failures)
            }
        };
        if !post_ran {
            runner.run_phase(Phase::Post, &post, &mut items).await.ok();
        }
        for item in items {
            builder.record(item);
        }
        stored?;
        write_manifest(builder, &manifest).await?;
        Ok(serde_json::json!({
            "volumes": manifest.volumes.len(),
            "skipped": manifest.skipped.len() as u64 - failed,
            "failed": failed,
        }))
    }

    /// Stores the volumes' folders.
    async fn store(
        &self,
        builder: &mut SnapshotBuilder,
        manifest: &Manifest,
        context: &SourceContext,
    ) -> Result<(), SourceError> {
        let folders: Vec<Folder> = manifest
            .volumes
            .iter()
            .map(|v| Folder {
                path: v.host_path.clone(),
                exclude: self.exclude.clone(),
            })
            .collect();
        if !folders.is_empty() {
            builder
                .add_folders(&folders, context.state_dir.as_deref())
                .await?;
        }
        Ok(())
    }

    /// Whether and how `claim` is read by a mover.
    fn decide_mover(
        &self,
        claim: &PersistentVolumeClaim,
        cluster: &ClusterView<'_>,
        settings: &MoverSettings,
    ) -> Decision {
        let (pv_name, pv_spec) = match self.admit(claim, cluster.volumes) {
            Ok(found) => found,
            Err(reason) => return Decision::Skip(reason),
        };
        let meta = &claim.metadata;
        let namespace = meta.namespace.clone().unwrap_or_default();
        let name = meta.name.clone().unwrap_or_default();
        let class = storage_class(claim);
        let annotated = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(MODE_ANNOTATION));
        let driver = pv_spec.csi.as_ref().map(|c| c.driver.as_str());
        let snapshot_class = driver
            .and_then(|d| cluster.snapshot_classes.get(d))
            .cloned();
        let chosen = match annotated {
            Some(text) => match Mode::parse(text) {
                Some(mode) => Some(mode),
                None => {
                    return Decision::Fail(format!(
                        "its annotation {MODE_ANNOTATION}: {text:?} is not \"snapshot\", \"live\" or \"skip\""
                    ));
                }
            },
            None => settings.modes.get(&class).copied(),
        };
        let by = if annotated.is_some() {
            format!("its annotation {MODE_ANNOTATION}")
        } else {
            format!("the movers' mode for storage class {class:?}")
        };
        let mode = match (chosen, &snapshot_class) {
            (Some(Mode::Skip), _) => return Decision::Skip(format!("{by} is \"skip\"")),
            (Some(Mode::Snapshot), None) => {
                return Decision::Fail(match driver {
                    Some(driver) => format!(
                        "{by} is \"snapshot\" but no VolumeSnapshotClass names its CSI driver {driver}; \
                         install the CSI snapshot controller and a class for it, or choose \"live\""
                    ),
                    None => format!(
                        "{by} is \"snapshot\" but it is not a CSI volume, which alone can be snapshotted; choose \"live\""
                    ),
                });
            }
            (Some(mode), _) => mode,
            (None, Some(_)) => Mode::Snapshot,
            (None, None) => Mode::Live,
        };
        let access_modes = pv_spec.access_modes.clone().unwrap_or_default();
        let used_by = cluster
            .users
            .get(&(namespace.clone(), name.clone()))
            .cloned()
            .unwrap_or_default();
        let once_pod = access_modes.iter().any(|m| m == "ReadWriteOncePod")
            || claim
                .spec
                .as_ref()
                .and_then(|s| s.access_modes.as_ref())
                .is_some_and(|m| m.iter().any(|m| m == "ReadWriteOncePod"));
        if let (true, Some((pod, _)), Mode::Live) = (once_pod, used_by.first(), mode) {
            return Decision::Skip(format!(
                "it is ReadWriteOncePod and pod {namespace}/{pod} uses it, so no mover can mount it live; \
                 back it up from inside that pod or stop it for the run"
            ));
        }
        let pinned = pinned_nodes(pv_spec);
        // A claim made from a snapshot is a new volume, placed by its
        // provisioner where the mover lands.
        let placement = match (mode, used_by.first()) {
            (Mode::Snapshot, _) => Placement::Anywhere,
            (_, Some((_, node))) => Placement::Node(node.clone()),
            (_, None) if !pinned.is_empty() => Placement::Pinned(pinned.clone()),
            (_, None) => Placement::Anywhere,
        };
        let node = match &placement {
            Placement::Node(node) => node.clone(),
            _ => pinned.join(","),
        };
        Decision::Move(MoverClaim {
            volume: StoredVolume {
                host_path: mover::snapshot_path(&namespace, &name),
                namespace,
                pvc: name,
                pv: pv_name,
                storage_class: class,
                capacity: capacity(pv_spec),
                access_modes,
                node,
                mover: Some(MovedBy {
                    mode,
                    job: String::new(),
                    bytes: 0,
                }),
            },
            placement,
            snapshot_class: snapshot_class.filter(|_| mode == Mode::Snapshot),
        })
    }

    /// The claim's volume, if the claim is in scope and bound; else why it
    /// is skipped.
    fn admit<'a>(
        &self,
        claim: &PersistentVolumeClaim,
        volumes: &'a BTreeMap<String, PersistentVolume>,
    ) -> Result<(String, &'a k8s_openapi::api::core::v1::PersistentVolumeSpec), String> {
        let meta = &claim.metadata;
        let namespace = meta.namespace.as_deref().unwrap_or_default();
        let opted_out = |map: &Option<BTreeMap<String, String>>| {
            map.as_ref()
                .and_then(|m| m.get(EXCLUDE_LABEL))
                .is_some_and(|v| v == "true")
        };
        if opted_out(&meta.annotations) || opted_out(&meta.labels) {
            return Err(format!("opted out with {EXCLUDE_LABEL}: \"true\""));
        }
        if !self.namespaces.is_empty() && !self.namespaces.iter().any(|n| n == namespace) {
            return Err("its namespace is not in namespaces".into());
        }
        if self.exclude_namespaces.iter().any(|n| n == namespace) {
            return Err("its namespace is in exclude_namespaces".into());
        }
        let class = storage_class(claim);
        if !self.storage_classes.is_empty() && !self.storage_classes.contains(&class) {
            return Err(format!(
                "its storage class {class:?} is not in storage_classes"
            ));
        }
        let phase = claim
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        let bound = claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .filter(|_| phase == "Bound");
        let Some(pv_name) = bound else {
            return Err(format!("it is not bound to a volume (phase {phase:?})"));
        };
        let Some(pv) = volumes.get(&pv_name) else {
            return Err(format!("its PersistentVolume {pv_name} does not exist"));
        };
        let Some(pv_spec) = pv.spec.as_ref() else {
            return Err(format!("its PersistentVolume {pv_name} has no spec"));
        };
        Ok((pv_name, pv_spec))
    }

    /// Whether and how `claim` is backed up on `node` by this process.
    fn decide(
        &self,
        claim: &PersistentVolumeClaim,
        volumes: &BTreeMap<String, PersistentVolume>,
        node: &str,
    ) -> Decision {
        let (pv_name, pv_spec) = match self.admit(claim, volumes) {
            Ok(found) => found,
            Err(reason) => return Decision::Skip(reason),
        };
        let meta = &claim.metadata;
        let namespace = meta.namespace.as_deref().unwrap_or_default();
        let path = pv_spec
            .host_path
            .as_ref()
            .map(|h| h.path.clone())
            .or_else(|| pv_spec.local.as_ref().map(|l| l.path.clone()));
        let Some(path) = path else {
            return Decision::Skip(unreachable_reason(pv_spec));
        };
        let pinned = pinned_nodes(pv_spec);
        if !pinned.is_empty() && !pinned.iter().any(|n| n == node) {
            return Decision::Skip(format!(
                "its data is on node {} and this is {node}; run a volumes job on that node",
                pinned.join(", ")
            ));
        }
        let host_path = PathBuf::from(&path);
        if !host_path.is_dir() {
            let reason = format!(
                "its data folder {path} is not on this node (mount the host path into lifeboat's container)"
            );
            return if pinned.is_empty() {
                Decision::Skip(reason)
            } else {
                Decision::Fail(reason)
            };
        }
        Decision::Store(StoredVolume {
            namespace: namespace.to_owned(),
            pvc: meta.name.clone().unwrap_or_default(),
            pv: pv_name,
            storage_class: storage_class(claim),
            capacity: capacity(pv_spec),
            access_modes: pv_spec.access_modes.clone().unwrap_or_default(),
            node: pinned.join(","),
            host_path,
            mover: None,
        })
    }
}

/// Stores the manifest as a root file.
async fn write_manifest(
    builder: &mut SnapshotBuilder,
    manifest: &Manifest,
) -> Result<(), SourceError> {
    let json = serde_json::to_vec_pretty(manifest).map_err(|source| {
        BackupError::from(RepoError::Encode {
            what: MANIFEST_FILE,
            source,
        })
    })?;
    let mut documents = Documents::default();
    documents.insert(&[MANIFEST_FILE], json, 0)?;
    builder.add_documents(documents).await?;
    Ok(())
}
