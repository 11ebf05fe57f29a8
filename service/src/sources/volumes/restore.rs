//! Restoring volumes and directories: into a folder, or back in place at
//! the host paths they were read from.
//!
//! Both kinds store their folders at their absolute host paths in the
//! snapshot's tree. A `volumes` snapshot also holds, at its root,
//! [`MANIFEST_FILE`]: the PVCs it holds ([`Manifest`], written by the
//! volumes source), each with the host path of its data; one PVC is
//! restored by its `NAMESPACE/NAME`. A `directory` snapshot has no manifest: its restore
//! units are the top-most directories of the tree that hold anything but
//! directories (or nothing at all) — the backed-up folders, or folders
//! inside them, which restore to the same places.
//!
//! In place, each unit goes back to its own path, which must be empty (or
//! missing) unless forced: nothing above the units is touched, so no
//! parent folder (`/var`, `/mnt/user`) gets the snapshot's owner, mode or
//! times. Those paths come from the repository, so each is checked first
//! ([`crate::restore::in_place`]): normalised, and the live volume's path or under a
//! root the operator allowed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::repo::id::BlobId;
use crate::repo::reader::BlobReader;
use crate::repo::snapshot::SourceKind;
use crate::repo::tree::{NodeKind, Tree};
use crate::restore::RestoreError;
use crate::restore::contents::{read_root_file, root_tree};
use crate::restore::files::{RestoreOptions, RestoreProgress, RestoreReport, restore};
use crate::restore::in_place::{InPlacePolicy, check_host_path};
use crate::sources::volumes::{MANIFEST_FILE, Manifest};

/// One folder restored as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoreUnit {
    /// `NAMESPACE/PVC` for a volume, the path for a directory.
    pub name: String,
    /// Its absolute path in the snapshot (and on the host).
    pub path: String,
}

/// What a volumes or directory snapshot holds.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// The manifest of a volumes snapshot.
    pub manifest: Option<Manifest>,
    /// The folders to restore.
    pub units: Vec<RestoreUnit>,
}

impl Layout {
    /// Reads the layout of the snapshot `root`: the manifest's volumes when
    /// there is one, else the tree's top-most directories holding files.
    ///
    /// Fails when the tree or the manifest cannot be read or parsed.
    pub async fn read(reader: &BlobReader, root: BlobId) -> Result<Self, RestoreError> {
        let tree = root_tree(reader, root).await?;
        if let Some(bytes) = read_root_file(reader, &tree, MANIFEST_FILE).await? {
            let manifest: Manifest =
                serde_json::from_slice(&bytes).map_err(|e| RestoreError::WrongSnapshot {
                    kind: SourceKind::Volumes,
                    message: format!("{MANIFEST_FILE} does not parse ({e})"),
                })?;
            let units = manifest
                .volumes
                .iter()
                .map(|v| RestoreUnit {
                    name: format!("{}/{}", v.namespace, v.pvc),
                    path: v.host_path.display().to_string(),
                })
                .collect();
            return Ok(Self {
                manifest: Some(manifest),
                units,
            });
        }
        let mut units = Vec::new();
        let mut queue = vec![(tree, String::new())];
        while let Some((tree, prefix)) = queue.pop() {
            for node in tree.entries {
                let (NodeKind::Dir, Some(sub)) = (node.kind, node.subtree) else {
                    continue;
                };
                let path = format!("{prefix}/{}", node.name.display());
                let subtree = reader.read_tree(&sub).await?;
                if subtree.entries.is_empty()
                    || subtree.entries.iter().any(|n| n.kind != NodeKind::Dir)
                {
                    units.push(RestoreUnit {
                        name: path.clone(),
                        path,
                    });
                } else {
                    queue.push((subtree, path));
                }
            }
        }
        units.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Self {
            manifest: None,
            units,
        })
    }

    /// The units of the PVCs `NAMESPACE/NAME` in `pvcs`, or all units when
    /// it is empty.
    ///
    /// Fails, listing what there is, when a PVC is not in the snapshot.
    pub fn select(&self, pvcs: &[String]) -> Result<Vec<RestoreUnit>, RestoreError> {
        if pvcs.is_empty() {
            return Ok(self.units.clone());
        }
        let Some(manifest) = &self.manifest else {
            return Err(RestoreError::WrongSnapshot {
                kind: SourceKind::Directory,
                message: "a directory snapshot holds no PVCs; leave out --pvc".into(),
            });
        };
        let mut selected = Vec::new();
        for wanted in pvcs {
            if let Some(unit) = self.units.iter().find(|u| &u.name == wanted) {
                selected.push(unit.clone());
                continue;
            }
            let skipped = manifest
                .skipped
                .iter()
                .find(|s| &format!("{}/{}", s.namespace, s.pvc) == wanted)
                .map(|s| format!(" (the backup skipped it: {})", s.reason))
                .unwrap_or_default();
            return Err(RestoreError::NoSuchPath {
                path: format!(
                    "PVC {wanted}{skipped}; the snapshot holds: {}",
                    self.units
                        .iter()
                        .map(|u| u.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        Ok(selected)
    }
}

/// Where units go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Each unit back at its own host path, where the policy allows it.
    InPlace(InPlacePolicy),
    /// Each unit under this folder at its absolute path
    /// (`TARGET/var/openebs/local/pvc-…`).
    Under(PathBuf),
    /// The one unit's contents straight into this folder.
    Into(PathBuf),
}

impl Placement {
    /// Where `unit` is restored to.
    ///
    /// Fails when its path from the snapshot is not normalised (unless it
    /// goes straight into a folder), or an in-place restore may not write
    /// there.
    pub fn target_of(&self, unit: &RestoreUnit) -> Result<PathBuf, RestoreError> {
        match self {
            Self::InPlace(policy) => {
                policy.check(&unit.name, &unit.path)?;
                Ok(PathBuf::from(&unit.path))
            }
            Self::Under(dir) => {
                check_host_path(&unit.path)?;
                Ok(dir.join(unit.path.trim_start_matches('/')))
            }
            Self::Into(dir) => Ok(dir.clone()),
        }
    }
}

/// One unit's restore.
#[derive(Debug, Clone, Serialize)]
pub struct UnitReport {
    /// The unit.
    pub unit: RestoreUnit,
    /// Where it went.
    pub target: PathBuf,
    /// What was restored.
    pub report: RestoreReport,
}

/// Restores `units` of the snapshot `root` as `placement` says. Every
/// target is checked (its path, and for emptiness unless `force`) before
/// anything is written.
///
/// Fails when a target is refused or not empty, a path is missing from the
/// snapshot, a target cannot be written, or data is damaged (naming the
/// files).
pub async fn restore_units(
    reader: &BlobReader,
    root: BlobId,
    units: &[RestoreUnit],
    placement: &Placement,
    options: &RestoreOptions,
    progress: Arc<RestoreProgress>,
) -> Result<Vec<UnitReport>, RestoreError> {
    if let (Placement::Into(_), [_, _, ..]) = (placement, units) {
        return Err(RestoreError::WrongSnapshot {
            kind: SourceKind::Volumes,
            message: "only one volume can be restored straight into a folder".into(),
        });
    }
    let mut targets = Vec::with_capacity(units.len());
    for unit in units {
        let target = placement.target_of(unit)?;
        if !options.force {
            refuse_non_empty(&target)?;
        }
        targets.push(target);
    }
    let mut reports = Vec::with_capacity(units.len());
    for (unit, target) in units.iter().zip(targets) {
        let report = restore(reader, root, &unit.path, &target, options, progress.clone()).await?;
        reports.push(UnitReport {
            unit: unit.clone(),
            target,
            report,
        });
    }
    Ok(reports)
}

/// Fails when `dir` exists and holds anything.
fn refuse_non_empty(dir: &Path) -> Result<(), RestoreError> {
    let holds_anything = std::fs::read_dir(dir).is_ok_and(|mut listing| listing.next().is_some());
    if holds_anything {
        return Err(RestoreError::TargetNotEmpty {
            target: dir.to_owned(),
        });
    }
    Ok(())
}

/// The tree at the absolute snapshot path `path`.
///
/// Fails when it is not a directory of the snapshot.
pub async fn tree_at(reader: &BlobReader, root: BlobId, path: &str) -> Result<Tree, RestoreError> {
    let mut tree = reader.read_tree(&root).await?;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let missing = || RestoreError::NoSuchPath { path: path.into() };
        let node = tree.get(part.as_bytes()).ok_or_else(missing)?;
        let sub = node.subtree.filter(|_| node.kind == NodeKind::Dir);
        tree = reader.read_tree(&sub.ok_or_else(missing)?).await?;
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_contract_parses() -> anyhow::Result<()> {
        let text = r#"{"volumes":[{"namespace":"apps","pvc":"data","pv":"pvc-1","storage_class":"openebs-hostpath","capacity":"1Gi","access_modes":["ReadWriteOnce"],"node":"w1","host_path":"/var/openebs/local/pvc-1"}],"skipped":[{"namespace":"apps","pvc":"nfs","pv":"pv-9","reason":"not a host path"}]}"#;
        let manifest: Manifest = serde_json::from_str(text)?;
        assert_eq!(
            manifest.volumes[0].host_path,
            Path::new("/var/openebs/local/pvc-1")
        );
        assert_eq!(manifest.skipped[0].reason, "not a host path");
        let layout = Layout {
            units: vec![RestoreUnit {
                name: "apps/data".into(),
                path: "/var/openebs/local/pvc-1".into(),
            }],
            manifest: Some(manifest),
        };
        assert_eq!(layout.select(&["apps/data".into()])?.len(), 1);
        let missing = layout
            .select(&["apps/nfs".into()])
            .err()
            .map(|e| e.to_string());
        assert!(
            missing
                .as_deref()
                .unwrap_or_default()
                .contains("not a host path"),
            "{missing:?}"
        );
        let placed = Placement::Under("/restore".into()).target_of(&layout.units[0])?;
        assert_eq!(placed, Path::new("/restore/var/openebs/local/pvc-1"));
        Ok(())
    }
}
