//! `lifeboat snapshots` and `lifeboat ls`.

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use lifeboat::repo::id::SnapshotId;
use lifeboat::repo::reader::MAX_TREE_DEPTH;
use lifeboat::repo::snapshot::{SnapshotEntry, SourceKind, Summary, human_bytes};
use lifeboat::repo::tree::NodeKind;
use serde::Serialize;

use crate::args::{KeyArgs, RepoArgs};

/// One snapshot as `lifeboat snapshots --json` prints it (without its
/// tree and references).
#[derive(Serialize)]
struct SnapshotRow<'a> {
    id: &'a SnapshotId,
    job: &'a str,
    source_kind: &'a SourceKind,
    host: &'a str,
    time: DateTime<Utc>,
    end_time: DateTime<Utc>,
    summary: &'a Summary,
    metadata: &'a serde_json::Value,
}

impl<'a> SnapshotRow<'a> {
    fn of(entry: &'a SnapshotEntry) -> Self {
        let s = &entry.snapshot;
        Self {
            id: &entry.id,
            job: &s.job,
            source_kind: &s.source_kind,
            host: &s.host,
            time: s.time,
            end_time: s.end_time,
            summary: &s.summary,
            metadata: &s.metadata,
        }
    }
}

/// One entry as `lifeboat ls --json` prints it, a JSON object per line.
#[derive(Serialize)]
struct EntryRow<'a> {
    path: &'a str,
    #[serde(rename = "type")]
    kind: NodeKind,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: i64,
    /// A symlink's target, lossily as text.
    target: Option<String>,
}

/// Flags of `lifeboat snapshots`.
#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    key: KeyArgs,
    /// Only this job's snapshots.
    #[arg(long)]
    job: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `lifeboat snapshots`: works with either key.
pub async fn snapshots(args: SnapshotsArgs) -> anyhow::Result<()> {
    let repo = args.key.unlock(args.repo.open().await?).await?;
    let all: Vec<_> = repo
        .snapshots()
        .await?
        .into_iter()
        .filter(|e| args.job.as_ref().is_none_or(|job| e.snapshot.job == *job))
        .collect();
    if args.json {
        let list: Vec<_> = all.iter().map(SnapshotRow::of).collect();
        crate::outln!("{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(());
    }
    crate::outln!(
        "{:<10} {:<20} {:<16} {:<10} {:>8} {:>10} {:>10}",
        "ID",
        "TIME (UTC)",
        "JOB",
        "KIND",
        "FILES",
        "SIZE",
        "ADDED"
    )?;
    for e in &all {
        let s = &e.snapshot;
        crate::outln!(
            "{:<10} {:<20} {:<16} {:<10} {:>8} {:>10} {:>10}",
            e.id.short(),
            s.time.format("%Y-%m-%d %H:%M:%S"),
            s.job,
            s.source_kind,
            s.summary.files,
            human_bytes(s.summary.bytes_total),
            human_bytes(s.summary.bytes_stored),
        )?;
    }
    crate::outln!("{} snapshots", all.len())?;
    Ok(())
}

/// Flags of `lifeboat ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    key: KeyArgs,
    /// The snapshot: `latest`, `latest:JOB` or an id prefix.
    snapshot: String,
    /// A folder inside it (default: everything).
    path: Option<String>,
    /// Print JSON (one object per entry).
    #[arg(long)]
    json: bool,
}

/// Runs `lifeboat ls`: needs the restore key (names are encrypted to it only).
pub async fn ls(args: LsArgs) -> anyhow::Result<()> {
    let repo = args
        .key
        .unlock_restore(args.repo.open().await?, "listing files")
        .await?;
    let entry = repo.find_snapshot(&args.snapshot).await?;
    let reader = repo.reader();
    let start = args.path.clone().unwrap_or_default();
    let mut tree = reader.read_tree(&entry.snapshot.root).await?;
    let mut prefix = String::new();
    for part in start.split('/').filter(|p| !p.is_empty()) {
        let node = tree
            .get(part.as_bytes())
            .filter(|n| n.kind == NodeKind::Dir)
            .and_then(|n| n.subtree)
            .ok_or_else(|| {
                anyhow::anyhow!("{start:?} is not a folder of snapshot {}", entry.id.short())
            })?;
        tree = reader.read_tree(&node).await?;
        prefix = format!("{prefix}/{part}");
    }
    let mut stack = vec![(tree, prefix, 0)];
    let mut rows = Vec::new();
    while let Some((tree, dir, depth)) = stack.pop() {
        for node in tree.entries.iter().rev() {
            let path = format!("{dir}/{}", node.name.display());
            if let (NodeKind::Dir, Some(sub)) = (node.kind, node.subtree) {
                if depth >= MAX_TREE_DEPTH {
                    anyhow::bail!("{path}/ lies deeper than {MAX_TREE_DEPTH} directories");
                }
                let subtree = reader
                    .read_tree(&sub)
                    .await
                    .with_context(|| format!("cannot list {path}/"))?;
                stack.push((subtree, path.clone(), depth + 1));
            }
            rows.push((path, node.clone()));
        }
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, node) in rows {
        if args.json {
            let row = EntryRow {
                path: &path,
                kind: node.kind,
                mode: node.mode,
                uid: node.uid,
                gid: node.gid,
                size: node.size,
                mtime: node.mtime,
                target: node.target.as_ref().map(|t| t.display().into_owned()),
            };
            crate::outln!("{}", serde_json::to_string(&row)?)?;
        } else {
            let kind = match node.kind {
                NodeKind::Dir => 'd',
                NodeKind::Symlink => 'l',
                NodeKind::Hardlink => 'h',
                NodeKind::File => '-',
                _ => 's',
            };
            let target = node
                .target
                .as_ref()
                .map(|t| format!(" -> {}", t.display()))
                .unwrap_or_default();
            crate::outln!(
                "{kind}{:04o} {:>6}:{:<6} {:>10} {path}{target}",
                node.mode,
                node.uid,
                node.gid,
                node.size
            )?;
        }
    }
    Ok(())
}
