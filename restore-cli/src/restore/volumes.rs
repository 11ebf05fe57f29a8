//! Volumes and directories: the whole snapshot under `--target`, one PVC
//! straight into `--target` (several under it at their host paths), or
//! back at the host paths with `--in-place` (all, or the PVCs named with
//! `--pvc`).
//!
//! In place, a host path from the snapshot is written only when it is the
//! path of the live PersistentVolume (asked of the cluster of `KUBECONFIG`,
//! `~/.kube/config` or the service account, when it answers) or lies under
//! an `--allow-root`. What will be written, and what is refused, is printed
//! (to stderr) before anything is; a refused folder fails the command after
//! the others are restored.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::Api;
use lifeboat::repo::snapshot::human_bytes;
use lifeboat::restore::files::RestoreOptions;
use lifeboat::restore::in_place::InPlacePolicy;
use lifeboat::sources::volumes::Manifest;
use lifeboat::sources::volumes::mover::restore::ClaimRestore;
use lifeboat::sources::volumes::restore::{
    Layout, Placement, RestoreUnit, UnitReport, restore_units,
};
use serde::Serialize;

use super::Restoring;

/// What `--json` prints of a volumes restore, beside the snapshot and kind.
#[derive(Serialize)]
struct VolumesRestored<'a> {
    seconds: f64,
    restored: &'a [UnitReport],
}

/// How long the cluster is given to say where its volumes are.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Flags for volumes and directories.
#[derive(Debug, Args)]
pub struct VolumeArgs {
    /// Volumes and directories: restore to the original host paths; each
    /// must be empty or missing unless --force.
    #[arg(long, conflicts_with = "target")]
    in_place: bool,
    /// Volumes: only this PVC (NAMESPACE/NAME; repeatable).
    #[arg(long = "pvc", value_name = "NAMESPACE/NAME")]
    pvcs: Vec<String>,
    /// With --in-place: also write host paths under this folder
    /// (repeatable); otherwise only a volume's live PersistentVolume path is.
    #[arg(long = "allow-root", value_name = "PATH", requires = "in_place")]
    allow_roots: Vec<PathBuf>,
    /// Volumes: fill this claim of the cluster (NAMESPACE/NAME; without a
    /// value the --pvc itself) through a restore Job in its namespace,
    /// making the claim when it is missing (size and access modes from the
    /// snapshot). Cluster access from KUBECONFIG; the restore key reaches
    /// the Job through a Secret deleted afterwards.
    #[arg(
        long,
        value_name = "NAMESPACE/NAME",
        num_args = 0..=1,
        default_missing_value = "",
        conflicts_with = "in_place"
    )]
    into_claim: Option<String>,
    /// With --into-claim: the storage class of a new claim (default the
    /// stored one).
    #[arg(long, requires = "into_claim")]
    storage_class: Option<String>,
    /// With --into-claim: lifeboat's image for the restore Job.
    #[arg(long, env = "LIFEBOAT_IMAGE", requires = "into_claim")]
    image: Option<String>,
    /// With --into-claim: refuse a claim a running pod uses instead of
    /// scaling its Deployment or StatefulSet to zero around the restore
    /// (its Flux or Argo CD manager suspended meanwhile).
    #[arg(long, requires = "into_claim")]
    pub no_stop: bool,
    /// With --into-claim: how long the restore Job may take.
    #[arg(long, default_value = "6h", value_parser = humantime::parse_duration)]
    claim_timeout: Duration,
}

impl VolumeArgs {
    /// Whether any of these flags was given.
    pub fn given(&self) -> bool {
        self.in_place || !self.pvcs.is_empty() || self.into_claim.is_some()
    }
}

/// Restores a volumes or directory snapshot.
pub async fn run(restoring: &Restoring<'_>, args: &VolumeArgs) -> anyhow::Result<()> {
    if !args.in_place && args.pvcs.is_empty() {
        restoring
            .target("the folder the snapshot goes to, or --in-place for the original paths")?;
        return super::files::run(restoring, "").await;
    }
    let (reader, entry) = (restoring.reader, restoring.entry);
    let layout = Layout::read(reader, entry.snapshot.root).await?;
    if let Some(target) = &args.into_claim {
        return into_claim(restoring, args, &layout, target).await;
    }
    let selected = layout.select(&args.pvcs)?;
    let placement = if args.in_place {
        Placement::InPlace(InPlacePolicy {
            allowed_roots: args.allow_roots.clone(),
            live_paths: match &layout.manifest {
                Some(manifest) => live_paths(manifest).await,
                None => None,
            },
        })
    } else {
        let target =
            PathBuf::from(restoring.target("the folder the PVCs' files go to, or --in-place")?);
        match selected.as_slice() {
            [_] => Placement::Into(target),
            _ => Placement::Under(target),
        }
    };
    let (units, refused) = announce(&selected, &placement);
    let options = RestoreOptions {
        force: restoring.force,
        keep_special: restoring.keep_special,
    };
    let started = std::time::Instant::now();
    let reports = super::with_progress("restore", |progress| {
        restore_units(
            reader,
            entry.snapshot.root,
            &units,
            &placement,
            &options,
            progress,
        )
    })
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    let restored = VolumesRestored {
        seconds,
        restored: &reports,
    };
    restoring.print(restored, || {
        let mut lines = vec![format!(
            "restored {} folder(s) of snapshot {} in {seconds:.1} s:",
            reports.len(),
            entry.id.short()
        )];
        for unit in &reports {
            lines.push(format!(
                "  {} -> {}: {} files, {}",
                unit.unit.name,
                unit.target.display(),
                unit.report.files,
                human_bytes(unit.report.bytes)
            ));
            for warning in &unit.report.warnings {
                lines.push(format!("    warning: {warning}"));
            }
        }
        lines.join("\n")
    })?;
    if !refused.is_empty() {
        anyhow::bail!("{}", refused.join("; "));
    }
    Ok(())
}

/// Restores the one `--pvc` into the cluster's claim `target` (`""`: the
/// same claim).
async fn into_claim(
    restoring: &Restoring<'_>,
    args: &VolumeArgs,
    layout: &Layout,
    target: &str,
) -> anyhow::Result<()> {
    let [pvc] = args.pvcs.as_slice() else {
        anyhow::bail!("--into-claim restores one claim: give exactly one --pvc NAMESPACE/NAME");
    };
    let source = layout
        .manifest
        .as_ref()
        .and_then(|m| {
            m.volumes
                .iter()
                .find(|v| format!("{}/{}", v.namespace, v.pvc) == *pvc)
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "snapshot {} holds no volume {pvc}",
                restoring.entry.id.short()
            )
        })?;
    let image = args.image.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "give --image (or LIFEBOAT_IMAGE): lifeboat's image, which the restore Job runs"
        )
    })?;
    let (url, s3, identity) = restoring
        .remote
        .clone()
        .ok_or_else(|| anyhow::anyhow!("--into-claim needs the repository's location"))?;
    let restore_key = std::fs::read(identity)
        .map_err(|e| anyhow::anyhow!("reading the identity {}: {e}", identity.display()))?;
    let client = lifeboat::k8s::connect(None, None).await?;
    let target = if target.is_empty() {
        pvc.clone()
    } else {
        target.to_owned()
    };
    eprintln!("will restore {pvc} into claim {target} through a restore Job");
    let restored = ClaimRestore {
        client: &client,
        source,
        snapshot: restoring.entry.id.to_hex(),
        target,
        storage_class: args.storage_class.clone(),
        image,
        url,
        s3,
        restore_key,
        force: restoring.force,
        timeout: args.claim_timeout,
        stop_workloads: !args.no_stop,
    }
    .run()
    .await?;
    restoring.print(&restored, || {
        let mut line = format!(
            "restored {pvc} of snapshot {} into claim {}{} with Job {}",
            restoring.entry.id.short(),
            restored.claim,
            if restored.created {
                " (made for it)"
            } else {
                ""
            },
            restored.job
        );
        if !restored.stopped.is_empty() {
            line.push_str(&format!(
                "; stopped and started again: {}",
                restored.stopped.join(", ")
            ));
        }
        if !restored.suspended.is_empty() {
            line.push_str(&format!(
                "; suspended and resumed: {}",
                restored.suspended.join(", ")
            ));
        }
        line
    })
}

/// Prints where each unit goes, or why it may not; returns the units to
/// restore and the refusals.
fn announce(units: &[RestoreUnit], placement: &Placement) -> (Vec<RestoreUnit>, Vec<String>) {
    let (mut allowed, mut refused) = (Vec::new(), Vec::new());
    for unit in units {
        match placement.target_of(unit) {
            Ok(target) => {
                eprintln!("will restore {} into {}", unit.name, target.display());
                allowed.push(unit.clone());
            }
            Err(e) => {
                eprintln!("refused: {e}");
                refused.push(e.to_string());
            }
        }
    }
    (allowed, refused)
}

/// The live paths of the manifest's volumes by `NAMESPACE/PVC`, from the
/// cluster's PersistentVolumes; `None` (said on stderr) when the cluster
/// cannot be asked.
async fn live_paths(manifest: &Manifest) -> Option<BTreeMap<String, String>> {
    let asked = tokio::time::timeout(CLUSTER_TIMEOUT, async {
        let client = lifeboat::k8s::connect(None, None).await?;
        let volumes = Api::<PersistentVolume>::all(client);
        let mut paths = BTreeMap::new();
        for stored in &manifest.volumes {
            let live = volumes.get_opt(&stored.pv).await?;
            let spec = live.and_then(|pv| pv.spec);
            let path = spec.and_then(|s| {
                s.host_path
                    .map(|h| h.path)
                    .or_else(|| s.local.map(|l| l.path))
            });
            if let Some(path) = path {
                paths.insert(format!("{}/{}", stored.namespace, stored.pvc), path);
            }
        }
        anyhow::Ok(paths)
    })
    .await;
    match asked {
        Ok(Ok(paths)) => Some(paths),
        Ok(Err(e)) => {
            eprintln!(
                "the cluster could not be asked where its volumes are ({e:#}); only paths under --allow-root are written"
            );
            None
        }
        Err(_) => {
            eprintln!(
                "the cluster did not answer within {} s; only paths under --allow-root are written",
                CLUSTER_TIMEOUT.as_secs()
            );
            None
        }
    }
}
