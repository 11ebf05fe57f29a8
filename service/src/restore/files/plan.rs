//! The first phase of a restore: reading the trees, laying out every
//! directory, symlink, hard link and special file below the target, and
//! planning each regular file at its final size with the places (slots)
//! each blob's plaintext goes.

use std::collections::HashSet;

use super::{Plan, PlannedFile, Settle, Slot};
use crate::repo::RepoError;
use crate::repo::id::BlobId;
use crate::repo::reader::BlobReader;
use crate::repo::tree::{Node, NodeKind, Tree};
use crate::restore::RestoreError;
use crate::restore::place::{DirId, Stamp};

/// The setuid and setgid bits.
const SETID_BITS: u32 = 0o6000;

/// A directory still to lay out: its tree, the directory made for it, and
/// its snapshot path.
pub(super) type Subdir = (BlobId, DirId, Vec<u8>);

/// Lays out directories from `queue`, depth first, until the plan holds a
/// full batch of files, the next directory would take it past its limits,
/// or the queue is empty. A batch stays within its limits unless its first
/// directory alone passes them, so its lists never outgrow their room.
pub(super) async fn plan_batch(
    reader: &BlobReader,
    queue: &mut Vec<Subdir>,
    plan: &mut Plan,
) -> Result<(), RestoreError> {
    while !plan.batch_full() {
        let Some((sub, dir, snapshot_dir)) = queue.pop() else {
            break;
        };
        let tree = reader.read_tree(&sub).await?;
        if !plan.takes(&tree) {
            // Laid out first in the next batch (its pack is still spilled).
            queue.push((sub, dir, snapshot_dir));
            break;
        }
        let subdirs = lay_out_entries(reader, tree, dir, &snapshot_dir, plan);
        queue.extend(subdirs);
    }
    Ok(())
}

/// Creates one directory's entries; returns its subdirectories to descend.
/// An entry that cannot be placed safely is refused (in `plan.failed`).
pub(super) fn lay_out_entries(
    reader: &BlobReader,
    tree: Tree,
    dir: DirId,
    snapshot_dir: &[u8],
    plan: &mut Plan,
) -> Vec<Subdir> {
    let mut subdirs = Vec::new();
    let mut seen = HashSet::new();
    for node in tree.entries {
        let name = node.name.0.clone();
        if name.is_empty()
            || name.contains(&b'/')
            || name.contains(&0)
            || name == b"."
            || name == b".."
        {
            plan.report.warnings.push(format!(
                "skipped an entry with the unsafe name {:?}",
                node.name.display()
            ));
            continue;
        }
        let snapshot_path = [snapshot_dir, b"/", name.as_slice()].concat();
        let shown = String::from_utf8_lossy(&snapshot_path).into_owned();
        if !seen.insert(name.clone()) {
            plan.failed.push((
                shown,
                "refused: a second entry of the same name in its directory (the tree is damaged)"
                    .into(),
            ));
            continue;
        }
        let refuse = |plan: &mut Plan, e: std::io::Error| {
            plan.failed.push((shown.clone(), format!("refused: {e}")))
        };
        match node.kind {
            NodeKind::Dir => {
                let made = plan.dirs.make(dir, &name, plan.replace);
                let sub_dir = match made {
                    Ok(sub_dir) => sub_dir,
                    Err(e) => {
                        refuse(plan, e);
                        continue;
                    }
                };
                plan.report.dirs += 1;
                plan.dir_paths.insert(snapshot_path.clone(), sub_dir);
                if let Some(sub) = node.subtree {
                    subdirs.push((sub, sub_dir, snapshot_path));
                }
                plan.dir_metadata
                    .push((sub_dir, Stamp::new(&node, node.mode), shown));
            }
            NodeKind::File => {
                if let Err(e) = plan.dirs.clear(dir, &name, plan.replace) {
                    refuse(plan, e);
                    continue;
                }
                let index = plan.files.len();
                let mut offset = 0;
                for blob in &node.content {
                    let Some(location) = reader.index().get(blob) else {
                        plan.failed.push((
                            shown.clone(),
                            RepoError::MissingBlob { id: *blob }.to_string(),
                        ));
                        break;
                    };
                    let slot = Slot {
                        file: index,
                        offset,
                    };
                    plan.slots.push((*blob, slot));
                    offset += u64::from(location.blob.raw_length);
                }
                plan.note_restored(&snapshot_path);
                plan.foreign_owner |= node.uid != plan.me;
                plan.report.files += 1;
                plan.report.bytes += node.size;
                let mode = allowed_mode(plan, &node, &shown);
                plan.files.push(PlannedFile {
                    dir,
                    name: name.into_boxed_slice(),
                    size: node.size,
                    stamp: Stamp::new(&node, mode),
                });
            }
            NodeKind::Symlink => {
                if let Err(e) = plan.dirs.clear(dir, &name, plan.replace) {
                    refuse(plan, e);
                    continue;
                }
                plan.symlinks.push((dir, node, shown));
                plan.report.others += 1;
            }
            NodeKind::Hardlink => {
                if let Err(e) = plan.dirs.clear(dir, &name, plan.replace) {
                    refuse(plan, e);
                    continue;
                }
                if let Some(link) = &node.link {
                    plan.hardlinks.push((dir, name, link.0.clone(), shown));
                }
                plan.report.others += 1;
            }
            NodeKind::Fifo | NodeKind::Chardev | NodeKind::Blockdev => {
                if node.kind != NodeKind::Fifo && !plan.keep_special {
                    plan.report.special_dropped += 1;
                    plan.report.warnings.push(format!(
                        "{shown}: a device node, not restored (pass --keep-special to restore device nodes)"
                    ));
                    continue;
                }
                let made = plan
                    .dirs
                    .clear(dir, &name, plan.replace)
                    .and_then(|()| plan.dirs.make_special(dir, &name, &node));
                if let Err(e) = made {
                    plan.report
                        .warnings
                        .push(format!("{shown}: cannot create it: {e}"));
                    continue;
                }
                plan.report.others += 1;
                plan.foreign_owner |= node.uid != plan.me;
                let mode = allowed_mode(plan, &node, &shown);
                plan.settle.push(Settle {
                    dir,
                    name,
                    kind: node.kind,
                    stamp: Stamp::new(&node, mode),
                    shown,
                });
            }
        }
    }
    subdirs
}

/// The permission bits `node` is restored with: as stored with
/// `keep_special`, else without setuid/setgid (counted and warned).
fn allowed_mode(plan: &mut Plan, node: &Node, shown: &str) -> u32 {
    let mode = node.mode & 0o7777;
    if plan.keep_special || mode & SETID_BITS == 0 {
        return mode;
    }
    plan.report.special_dropped += 1;
    plan.report.warnings.push(format!(
        "{shown}: its setuid/setgid bits were cleared (pass --keep-special to keep them)"
    ));
    mode & !SETID_BITS
}
