//! etcd: the snapshot file with its SHA-256 trailer verified, ready for
//! `talosctl bootstrap --recover-from` or `etcdutl snapshot restore`; with
//! `--data-dir`, also the data dir made from it by etcdutl (or etcdctl).

use std::path::{Path, PathBuf};

use clap::Args;
use lifeboat::sources::etcd::restore::{
    Member, RestoreTool, restore_data_dir, restore_snapshot_file,
};
use serde::Serialize;

use super::Restoring;

/// What `--json` prints of an etcd restore, beside the snapshot and kind.
#[derive(Serialize)]
struct EtcdRestored<'a> {
    /// The snapshot file written.
    file: &'a Path,
    bytes: u64,
    /// Its SHA-256 trailer, verified.
    sha256: &'a str,
    /// The revision and key count recorded at backup, when recorded.
    revision: Option<i64>,
    key_count: Option<u64>,
    /// The data dir made from it (`--data-dir`), and with which tool.
    data_dir: Option<&'a Path>,
    tool: Option<&'a RestoreTool>,
}

/// Flags for etcd.
#[derive(Debug, Args)]
pub struct EtcdArgs {
    /// etcd: also make this data dir from the snapshot (it must not exist)
    /// with `etcdutl snapshot restore`, or etcdctl where etcdutl is missing.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// etcd: the member name of the restored data dir.
    #[arg(long, default_value = "default", requires = "data_dir")]
    etcd_name: String,
    /// etcd: the member's peer URL in the restored data dir.
    #[arg(long, default_value = "http://localhost:2380", requires = "data_dir")]
    etcd_peer_url: String,
}

impl EtcdArgs {
    /// Whether any of these flags was given (the others need `--data-dir`).
    pub fn given(&self) -> bool {
        self.data_dir.is_some()
    }
}

/// Restores an etcd snapshot.
pub async fn run(restoring: &Restoring<'_>, args: &EtcdArgs) -> anyhow::Result<()> {
    let target = restoring.target("the folder etcd.db is written to")?;
    let entry = restoring.entry;
    let (file, verified) = super::with_progress("etcd.db", |progress| {
        restore_snapshot_file(
            restoring.reader,
            entry.snapshot.root,
            target,
            restoring.force,
            progress,
        )
    })
    .await?;
    let mut tool = None;
    if let Some(data_dir) = &args.data_dir {
        let found = RestoreTool::find()?;
        let member = Member {
            name: args.etcd_name.clone(),
            peer_url: args.etcd_peer_url.clone(),
        };
        restore_data_dir(&found, &file, data_dir, &member).await?;
        tool = Some(found);
    }
    let metadata = &entry.snapshot.metadata;
    let restored = EtcdRestored {
        file: &file,
        bytes: verified.size,
        sha256: &verified.sha256,
        revision: metadata["revision"].as_i64(),
        key_count: metadata["key_count"].as_u64(),
        data_dir: args.data_dir.as_deref(),
        tool: tool.as_ref(),
    };
    restoring.print(restored, || {
        let mut text = format!(
            "wrote {} ({} bytes, SHA-256 trailer verified) from snapshot {} taken {}",
            file.display(),
            verified.size,
            entry.id.short(),
            entry.snapshot.time.format("%Y-%m-%d %H:%M:%S UTC"),
        );
        if let Some(revision) = metadata["revision"].as_i64() {
            text.push_str(&format!(
                "\n  recorded: revision {revision}, {} keys",
                metadata["key_count"]
            ));
        }
        match &args.data_dir {
            Some(dir) => text.push_str(&format!(
                "\n  data dir {} made for member {} ({})",
                dir.display(),
                args.etcd_name,
                args.etcd_peer_url
            )),
            None => text.push_str(&format!(
                "\n  next: talosctl bootstrap --recover-from={}  (or etcdutl snapshot restore)",
                file.display()
            )),
        }
        text
    })
}
