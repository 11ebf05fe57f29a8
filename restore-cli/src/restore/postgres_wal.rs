//! A WAL archive: a PostgreSQL data directory recovered to a point in time
//! (`--pitr`, default `latest`), ready to start.

use clap::Args;
use lifeboat::sources::postgres_wal::pitr::{Target, plan, write};

use super::Restoring;

/// Flags for WAL archives.
#[derive(Debug, Args)]
pub struct PitrArgs {
    /// postgres-wal: recover to TARGET: `latest` (the default), a time with
    /// its offset (2026-12-06T21:30:00Z), an LSN (0/16B3748) or
    /// name:RESTORE_POINT.
    #[arg(long, value_name = "TARGET")]
    pitr: Option<Target>,
}

impl PitrArgs {
    /// Whether `--pitr` was given.
    pub fn given(&self) -> bool {
        self.pitr.is_some()
    }
}

/// Writes the data directory for the target into `--target`.
pub async fn run(restoring: &Restoring<'_>, args: &PitrArgs) -> anyhow::Result<()> {
    let dir = restoring.target("the new PostgreSQL data directory")?;
    let target = args.pitr.clone().unwrap_or(Target::Latest);
    let snapshots = restoring.snapshots().await?;
    let planned = plan(restoring.reader, &snapshots, restoring.entry, &target).await?;
    let written = super::with_progress("pitr", |progress| {
        write(restoring.reader, &planned, dir, progress)
    })
    .await?;
    restoring.print(&written, || {
        format!(
            "wrote a PostgreSQL data directory into {} recovering to {}: base backup {} (ended {}), \
             {} WAL files through {}.\nStart it as the server's user (chown -R postgres {dir}; \
             pg_ctl -D {dir} start) with the same major version: it replays the WAL to the \
             target, then promotes and takes connections. Its configuration is the original \
             server's (postgresql.auto.conf ends with the recovery settings).",
            dir.display(),
            written.target,
            &written.base_snapshot[..8.min(written.base_snapshot.len())],
            written.base_time,
            written.wal_files,
            written.last_segment,
            dir = dir.display(),
        )
    })
}
