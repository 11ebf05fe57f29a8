//! `lifeboat restore`: a snapshot back into files, a folder, an etcd data
//! dir or a database, by the snapshot's source kind.
//!
//! `SNAPSHOT:PATH` always restores the files at PATH ([`files`]). A whole
//! snapshot is restored the way its kind needs: volumes and directories
//! ([`volumes`]), etcd ([`etcd`]), PostgreSQL ([`postgres`]), Talos
//! configuration ([`talos_config`]), Kubernetes objects ([`kubernetes`]),
//! a WAL archive recovered to a point in time ([`postgres_wal`]);
//! any other kind as plain files.

mod etcd;
mod files;
mod kubernetes;
mod postgres;
mod postgres_wal;
mod talos_config;
mod volumes;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use lifeboat::progress::Bar;
use lifeboat::repo::UnlockedRepository;
use lifeboat::repo::id::SnapshotId;
use lifeboat::repo::keys::RestoreIdentity;
use lifeboat::repo::reader::BlobReader;
use lifeboat::repo::snapshot::{SnapshotEntry, SourceKind};
use lifeboat::restore::files::RestoreProgress;
use serde::Serialize;

use crate::args::{KeyArgs, RepoArgs};

/// Flags of `lifeboat restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    key: KeyArgs,
    /// SNAPSHOT[:PATH]: `latest`, `latest:JOB` or an id prefix, then
    /// optionally a path inside it (its contents are restored as files).
    what: String,
    /// The folder to restore into (created if missing; must be empty unless --force).
    #[arg(long, short)]
    target: Option<PathBuf>,
    /// Restore into non-empty folders, replacing files, symlinks and special
    /// files of the same names (never writing through them).
    #[arg(long)]
    force: bool,
    /// Restore setuid/setgid bits and device nodes as stored; without it
    /// the bits are cleared and device nodes skipped, with a warning each.
    #[arg(long)]
    keep_special: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    volumes: volumes::VolumeArgs,
    #[command(flatten)]
    etcd: etcd::EtcdArgs,
    #[command(flatten)]
    postgres: postgres::PostgresArgs,
    #[command(flatten)]
    kubernetes: kubernetes::KubernetesArgs,
    #[command(flatten)]
    pitr: postgres_wal::PitrArgs,
}

/// What every kind's restore gets.
pub struct Restoring<'a> {
    /// Reads the snapshot's blobs.
    pub reader: &'a BlobReader,
    /// The snapshot.
    pub entry: &'a SnapshotEntry,
    /// `--target`.
    pub target: Option<&'a Path>,
    /// `--force`.
    pub force: bool,
    /// `--keep-special`.
    pub keep_special: bool,
    /// `--json`.
    pub json: bool,
    /// The repository, for kinds that restore from several snapshots.
    pub repo: &'a UnlockedRepository<RestoreIdentity>,
    /// The repository's URL and S3 settings and the identity file (`-i`),
    /// for restores run elsewhere (a restore Job).
    pub remote: Option<(String, lifeboat::storage::S3Options, &'a Path)>,
}

impl Restoring<'_> {
    /// Every snapshot of the repository.
    pub async fn snapshots(&self) -> anyhow::Result<Vec<SnapshotEntry>> {
        Ok(self.repo.snapshots().await?)
    }

    /// `--target`, or an error saying the kind needs it.
    pub fn target(&self, why: &str) -> anyhow::Result<&Path> {
        self.target
            .ok_or_else(|| anyhow::anyhow!("give --target DIR: {why}"))
    }

    /// Prints what was restored — the snapshot, its kind and the kind's
    /// `details` — as JSON when `--json`, else `text`.
    pub fn print<Details: Serialize>(
        &self,
        details: Details,
        text: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        if self.json {
            let restored = Restored {
                snapshot: &self.entry.id,
                kind: &self.entry.snapshot.source_kind,
                details,
            };
            crate::outln!("{}", serde_json::to_string_pretty(&restored)?)?;
        } else {
            crate::outln!("{}", text())?;
        }
        Ok(())
    }
}

/// The `--json` output of a restore: what every kind prints, then the
/// kind's own fields.
#[derive(Serialize)]
struct Restored<'a, Details> {
    snapshot: &'a SnapshotId,
    kind: &'a SourceKind,
    #[serde(flatten)]
    details: Details,
}

/// Runs `work` with restore counters shown as a bar with ETA on the
/// terminal, labelled `label`, until it ends.
pub async fn with_progress<T, Work>(
    label: &str,
    work: impl FnOnce(Arc<RestoreProgress>) -> Work,
) -> T
where
    Work: Future<Output = T>,
{
    let progress = Arc::new(RestoreProgress::default());
    let bar = Bar::bytes(
        label,
        progress.bytes_done.clone(),
        Some(progress.bytes_total.clone()),
    );
    let outcome = work(progress).await;
    drop(bar);
    outcome
}

/// Runs `lifeboat restore`.
pub async fn run(args: RestoreArgs) -> anyhow::Result<()> {
    let repo = args
        .key
        .unlock_restore(args.repo.open().await?, "restoring")
        .await?;
    let (spec, path) = files::split_spec(&args.what);
    let entry = repo.find_snapshot(&spec).await?;
    let reader = repo.reader();
    let restoring = Restoring {
        reader: &reader,
        entry: &entry,
        target: args.target.as_deref(),
        force: args.force,
        keep_special: args.keep_special,
        json: args.json,
        repo: &repo,
        remote: {
            let (url, s3) = args.repo.location()?;
            Some((url, s3, args.key.identity.as_path()))
        },
    };
    let kind = &entry.snapshot.source_kind;
    refuse_foreign_flags(&args, kind, !path.is_empty())?;
    if !path.is_empty() {
        return files::run(&restoring, &path).await;
    }
    match kind {
        SourceKind::Directory | SourceKind::Volumes => {
            volumes::run(&restoring, &args.volumes).await
        }
        SourceKind::Etcd | SourceKind::TalosEtcd => etcd::run(&restoring, &args.etcd).await,
        SourceKind::Postgres => postgres::run(&restoring, &args.postgres).await,
        SourceKind::PostgresWal => postgres_wal::run(&restoring, &args.pitr).await,
        SourceKind::TalosConfig => talos_config::run(&restoring).await,
        SourceKind::Kubernetes => kubernetes::run(&restoring, &args.kubernetes).await,
        SourceKind::Other(_) => files::run(&restoring, "").await,
    }
}

/// Restores the postgres snapshot `what` of `repo` into the server at
/// `url`, as `lifeboat restore WHAT --pg-url URL [--create] [--pg-bin DIR]`
/// does.
///
/// Fails when the snapshot is not a postgres one or a restore fails.
pub async fn postgres_into(
    repo: &UnlockedRepository<RestoreIdentity>,
    what: &str,
    url: &str,
    create: bool,
    pg_bin: Option<&Path>,
) -> anyhow::Result<()> {
    let entry = repo.find_snapshot(what).await?;
    if entry.snapshot.source_kind != SourceKind::Postgres {
        anyhow::bail!(
            "snapshot {what} is of kind \"{}\", not postgres",
            entry.snapshot.source_kind
        );
    }
    let reader = repo.reader();
    let restoring = Restoring {
        reader: &reader,
        entry: &entry,
        target: None,
        force: false,
        keep_special: false,
        json: false,
        repo,
        remote: None,
    };
    let args = postgres::PostgresArgs::into_server(url, create, pg_bin);
    postgres::run(&restoring, &args).await
}

/// Fails when flags of another kind (or any kind's flags with `:PATH`)
/// are given: they would be ignored, and the restore would not be the one
/// asked for.
fn refuse_foreign_flags(
    args: &RestoreArgs,
    kind: &SourceKind,
    with_path: bool,
) -> anyhow::Result<()> {
    let groups: [(bool, &str, &[SourceKind]); 5] = [
        (
            args.volumes.given(),
            "--in-place/--pvc",
            &[SourceKind::Directory, SourceKind::Volumes],
        ),
        (
            args.etcd.given(),
            "--data-dir",
            &[SourceKind::Etcd, SourceKind::TalosEtcd],
        ),
        (
            args.postgres.given(),
            "--pg-url/--pg-container/--pg-bin",
            &[SourceKind::Postgres],
        ),
        (
            args.kubernetes.given(),
            "--apply",
            &[SourceKind::Kubernetes],
        ),
        (args.pitr.given(), "--pitr", &[SourceKind::PostgresWal]),
    ];
    for (given, flags, kinds) in groups {
        if given && with_path {
            anyhow::bail!(
                "{flags} does not apply to SNAPSHOT:PATH, which restores plain files; leave it out"
            );
        }
        if given && !kinds.contains(kind) {
            let names: Vec<&str> = kinds.iter().map(SourceKind::name).collect();
            anyhow::bail!(
                "{flags} is for {} snapshots and this one is of kind \"{kind}\"; leave it out",
                names.join(" and ")
            );
        }
    }
    Ok(())
}
