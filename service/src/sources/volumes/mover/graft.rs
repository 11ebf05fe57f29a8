//! Taking in what the movers stored: each claim's outcome recorded in the
//! run result and the manifest, and each stored part grafted into the
//! run's snapshot at its claim's path.

use super::Mode;
use super::jobs::{MoverClaim, MoverRun};
use super::parts::forget_parts;
use crate::backup::graft::Graft;
use crate::backup::items::{Item, Outcome};
use crate::backup::{BackupError, SnapshotBuilder};
use crate::sources::SourceError;
use crate::sources::volumes::{Manifest, SkippedVolume};

/// Runs the movers of `claims` and grafts what they stored into the
/// snapshot, recording each claim; returns how many failed. `released`
/// (the pods' post hooks) is awaited once nothing needs the pods quiet.
///
/// Fails when the movers cannot be run at all or the grafts not stored.
pub(crate) async fn move_claims(
    movers: &MoverRun<'_>,
    builder: &mut SnapshotBuilder,
    manifest: &mut Manifest,
    claims: Vec<MoverClaim>,
    released: impl std::future::Future<Output = ()>,
) -> Result<u64, SourceError> {
    if claims.is_empty() {
        released.await;
        forget_parts(movers.repo, movers.job, |_| true)
            .await
            .map_err(BackupError::from)?;
        return Ok(0);
    }
    let outcomes = movers.run(claims, released).await?;
    let mut grafts = Vec::new();
    let mut failed = 0;
    for outcome in outcomes {
        let mut volume = outcome.claim.volume;
        let label = format!("{}/{}", volume.namespace, volume.pvc);
        let job = format!("{}/{}", volume.namespace, outcome.job);
        match outcome.result {
            Ok(part) => {
                let bytes = part.snapshot.summary.bytes_total;
                if let Some(moved) = volume.mover.as_mut() {
                    moved.job = job;
                    moved.bytes = bytes;
                }
                builder.record(
                    Item::new(
                        "volume",
                        label,
                        Outcome::Stored,
                        format!(
                            "{}{} by a mover on {} ({}, {}, {}, {} read)",
                            volume.host_path.display(),
                            match volume.mover.as_ref().map(|m| m.mode) {
                                Some(Mode::Snapshot) => " from a VolumeSnapshot",
                                _ => "",
                            },
                            if volume.node.is_empty() {
                                "any node"
                            } else {
                                &volume.node
                            },
                            volume.storage_class,
                            volume.capacity,
                            crate::repo::snapshot::human_bytes(bytes),
                            crate::repo::snapshot::human_bytes(part.snapshot.summary.bytes_read)
                        ),
                    )
                    .with_bytes(bytes),
                );
                grafts.push(Graft {
                    path: volume.host_path.clone(),
                    entry: part.entry,
                    from: (part.id, part.snapshot),
                });
                manifest.volumes.push(volume);
            }
            Err(reason) => {
                failed += 1;
                builder.record(Item::new("volume", label, Outcome::Failed, reason.clone()));
                manifest.skipped.push(SkippedVolume {
                    namespace: volume.namespace,
                    pvc: volume.pvc,
                    pv: volume.pv,
                    reason,
                });
            }
        }
    }
    builder.add_grafts(grafts).await?;
    Ok(failed)
}
