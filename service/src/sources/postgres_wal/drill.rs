//! Drilling a WAL archive: a point-in-time recovery to the end of the
//! archive ([`pitr`](super::pitr)) into the scratch folder, started as a
//! throw-away server on a Unix socket of its own (`--pg-bin` names the
//! server's programs, of the archived major version); it must finish
//! recovery, reach the archive's last segment and let every table of
//! every database be read to the end.
//!
//! When the archive holds a [`census`], recovery first
//! pauses at its restore point, where every table must hold exactly the
//! rows the census counted then; the server is stopped there and
//! recovery goes on to the end when it starts again.
//!
//! The scratch server trusts local connections (its own `hba_file`) and is
//! reached as `PGUSER` (default `postgres`), a role the cluster has. Run
//! as root, it runs as the `postgres` system user (PostgreSQL refuses
//! root), with its data directory in the system's temporary folder, where
//! that user can reach it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use super::census::{self, CENSUS_FILE, Census, DatabaseCensus};
use super::names::{Lsn, SEGMENT_SIZE};
use super::pitr::{self, Target};
use crate::drill::JobRun;
use crate::repo::reader::BlobReader;
use crate::repo::snapshot::SnapshotEntry;
use crate::restore::contents::read_root_file;
use crate::sources::postgres::restore::{PgTarget, PostgresRestoreError};
use crate::sources::postgres::session::PSQL_FLAGS;

/// How long recovery may take before the drill gives up.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Why the scratch server did not serve.
#[derive(Debug, thiserror::Error)]
pub enum ScratchServerError {
    /// A file or process could not be made.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The drill runs as root and there is no user to run PostgreSQL as.
    #[error(
        "the drill runs as root and this machine has no `postgres` user to run PostgreSQL as; \
         create one, or run the drill as another user"
    )]
    NoServerUser,
    /// The server stopped or did not finish recovery.
    #[error("{what}; the end of its log:\n{log}")]
    Failed {
        /// What happened.
        what: String,
        /// The end of the server's log.
        log: String,
    },
}

/// Restores, starts and checks.
pub(crate) async fn verify(run: &mut JobRun<'_>) {
    let (reader, entry, snapshots) = (run.reader, run.entry, run.snapshots);
    let census = run
        .step("read the newest census", async {
            newest_census(reader, snapshots, entry).await
        })
        .await;
    let Some(census) = census else {
        return;
    };
    run.note(match &census {
        Some(census) => format!("restore point {}", census.mark.restore_point),
        None => "none a recovery can stop at".into(),
    });
    let plan = run
        .step("plan the recovery to the end of the archive", async {
            match &census {
                Some(census) => pitr::plan_through(reader, snapshots, entry, census.mark.lsn).await,
                None => pitr::plan(reader, snapshots, entry, &Target::Latest).await,
            }
        })
        .await;
    let Some(plan) = plan else {
        return;
    };
    run.note(format!(
        "base backup {} and {} WAL files through {}",
        plan.base.id.short(),
        plan.files.len(),
        plan.last_segment.name()
    ));
    let scratch = run.scratch.clone();
    let place = run
        .step("make the scratch server's folder", async {
            ScratchPlace::new(&scratch)
        })
        .await;
    let Some(place) = place else {
        return;
    };
    let data = place.data.clone();
    let written = run
        .step("restore the base backup and the WAL", async {
            pitr::write(reader, &plan, &data, Arc::default()).await
        })
        .await;
    if written.is_none() {
        return;
    }
    let bin = run.settings.pg_bin.clone();
    let log = run.scratch.join("postgres.log");
    if let Some(census) = &census
        && !compare_with_census(run, &place, &log, census).await
    {
        return;
    }
    let server = run
        .step("start PostgreSQL and recover", async {
            ScratchServer::start(bin.as_deref(), &place, &log, Ready::Promoted).await
        })
        .await;
    let Some(mut server) = server else {
        return;
    };
    let last_start = Lsn(plan.last_segment.number * SEGMENT_SIZE);
    let reached = run
        .step("check recovery reached the archive's end", async {
            let lsn = server.query("SELECT pg_current_wal_lsn()").await?;
            match lsn.parse::<Lsn>() {
                Ok(at) if at >= last_start => Ok(at),
                _ => Err(server.failure(format!(
                    "recovery ended at {lsn}, before the archive's last segment ({last_start})"
                ))),
            }
        })
        .await;
    if let Some(at) = reached {
        run.note(format!("recovered to {at}"));
    }
    if let Some(found) = count_every_table(run, &server).await {
        run.note(totals(&found));
    }
    server.stop().await;
}

/// The census of the newest snapshot of the job that holds one a
/// recovery can reach: a base backup ended before its restore point, and
/// the WAL reaches it (received by the census's own run, or followed by a
/// later snapshot). `None` when there is none.
///
/// Fails when the census cannot be read or does not parse.
async fn newest_census(
    reader: &BlobReader,
    snapshots: &[SnapshotEntry],
    chosen: &SnapshotEntry,
) -> Result<Option<Census>, ScratchServerError> {
    let Some(archive) = pitr::archive(snapshots, chosen) else {
        return Ok(None);
    };
    let newest_time = archive.last().map(|(e, _)| e.snapshot.time);
    let based_before = |lsn: Lsn| {
        archive
            .iter()
            .any(|(_, m)| m.base_backup.is_some_and(|b| b.end_lsn <= lsn))
    };
    let usable = archive.iter().rfind(|(e, m)| {
        m.census.as_ref().is_some_and(|c| based_before(c.lsn))
            && (m.received_by == "run" || newest_time.is_some_and(|t| t > e.snapshot.time))
    });
    let Some((entry, _)) = usable else {
        return Ok(None);
    };
    let damaged = |what: String| ScratchServerError::Failed {
        what: format!(
            "the census of snapshot {} {what}; the snapshot is damaged or forged",
            entry.id.short()
        ),
        log: String::new(),
    };
    let root = reader
        .read_tree(&entry.snapshot.root)
        .await
        .map_err(|e| damaged(format!("cannot be read ({e})")))?;
    let bytes = read_root_file(reader, &root, CENSUS_FILE)
        .await
        .map_err(|e| damaged(format!("cannot be read ({e})")))?
        .ok_or_else(|| damaged(format!("has no {CENSUS_FILE}")))?;
    let census: Census =
        serde_json::from_slice(&bytes).map_err(|e| damaged(format!("does not parse ({e})")))?;
    Ok(Some(census))
}

/// Recovers to the census's restore point, pausing there, and compares
/// every table's rows with the census; then stops the server so that
/// recovery goes on to the end when it starts again. Returns whether the
/// drill goes on.
async fn compare_with_census(
    run: &mut JobRun<'_>,
    place: &ScratchPlace,
    log: &Path,
    census: &Census,
) -> bool {
    let bin = run.settings.pg_bin.clone();
    let name = census.mark.restore_point.clone();
    let server = run
        .step(
            &format!("recover to the census's restore point {name}"),
            async {
                pitr::pause_at(&place.data, &name).map_err(ScratchServerError::from)?;
                ScratchServer::start(bin.as_deref(), place, log, Ready::Paused).await
            },
        )
        .await;
    let Some(mut server) = server else {
        return false;
    };
    let found = count_every_table(run, &server).await;
    server.stop().await;
    let Some(found) = found else {
        return false;
    };
    let time = census
        .time
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let compared = run
        .step(&format!("compare every table with the census of {time}"), async {
            let differences = census::differences(census, &found);
            if differences.is_empty() {
                return Ok(());
            }
            let shown = differences.len().min(20);
            Err(ScratchServerError::Failed {
                what: format!(
                    "the recovery to restore point {name} does not hold what the census counted \
                     ({} differences)",
                    differences.len()
                ),
                log: differences[..shown].join("\n"),
            })
        })
        .await;
    if compared.is_none() {
        return false;
    }
    run.note(format!("{}, as counted then", totals(&found)));
    run.step("let recovery go on to the end", async {
        pitr::go_on(&place.data)
    })
    .await
    .is_some()
}

/// How many tables and rows `found` holds, for the report.
fn totals(found: &[DatabaseCensus]) -> String {
    let tables: usize = found.iter().map(|d| d.tables.len()).sum();
    let rows: u64 = found.iter().flat_map(|d| &d.tables).map(|t| t.rows).sum();
    format!("{tables} tables, {rows} rows")
}

/// Counts every table of every database of `server` (a step each), or
/// `None` when a step failed.
async fn count_every_table(
    run: &mut JobRun<'_>,
    server: &ScratchServer,
) -> Option<Vec<DatabaseCensus>> {
    let bin = run.settings.pg_bin.clone();
    let databases = run
        .step("list databases", async {
            server
                .query("SELECT string_agg(datname, E'\\n' ORDER BY datname) FROM pg_database WHERE datallowconn AND NOT datistemplate")
                .await
        })
        .await?;
    let dsn = server.dsn("postgres");
    let target = run
        .step("connect", PgTarget::new(&dsn, bin.as_deref()))
        .await?;
    let mut found = Vec::new();
    for database in databases.lines().filter(|d| !d.is_empty()) {
        let tables = run
            .step(&format!("read every table of {database}"), async {
                target.count_rows(database).await
            })
            .await?;
        found.push(DatabaseCensus {
            database: database.to_owned(),
            tables,
        });
    }
    Some(found)
}

/// Where the scratch server lives: a folder of its own in the system's
/// temporary folder for its socket (whose path must stay under 108 bytes)
/// and `hba_file`, and its data directory — there too when running as
/// root, so that the `postgres` user can reach it, else in the drill's
/// scratch folder. The folder is removed on drop.
struct ScratchPlace {
    socket_dir: PathBuf,
    data: PathBuf,
    server_user: Option<nix::unistd::User>,
}

impl ScratchPlace {
    fn new(scratch: &Path) -> Result<Self, ScratchServerError> {
        let server_user = if nix::unistd::geteuid().is_root() {
            let user = nix::unistd::User::from_name("postgres").ok().flatten();
            Some(user.ok_or(ScratchServerError::NoServerUser)?)
        } else {
            None
        };
        let socket_dir =
            std::env::temp_dir().join(format!("lifeboat-pitr-{:08x}", rand::random::<u32>()));
        std::fs::create_dir(&socket_dir).map_err(|source| ScratchServerError::Io {
            what: format!("making {}", socket_dir.display()),
            source,
        })?;
        let data = match server_user {
            Some(_) => socket_dir.join("data"),
            None => scratch.join("data"),
        };
        Ok(Self {
            socket_dir,
            data,
            server_user,
        })
    }
}

impl Drop for ScratchPlace {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.socket_dir);
    }
}

/// What a scratch server is waited for to be.
#[derive(Debug, Clone, Copy)]
enum Ready {
    /// Recovery ended and the server was promoted.
    Promoted,
    /// Recovery paused at its target, the server open for reading.
    Paused,
}

impl Ready {
    /// A query printing `t` once the server is ready.
    fn query(self) -> &'static str {
        match self {
            Self::Promoted => "SELECT NOT pg_is_in_recovery()",
            Self::Paused => "SELECT pg_is_in_recovery() AND pg_is_wal_replay_paused()",
        }
    }

    /// What did not happen, when it is not.
    fn missed(self) -> &'static str {
        match self {
            Self::Promoted => "recovery did not end",
            Self::Paused => "recovery did not reach its target",
        }
    }
}

/// A PostgreSQL server on a restored data directory, on its own socket.
struct ScratchServer {
    child: tokio::process::Child,
    socket_dir: PathBuf,
    psql: PathBuf,
    user: String,
    log: PathBuf,
}

impl ScratchServer {
    /// Starts `postgres` on the place's data and waits until it is `ready`.
    async fn start(
        bin: Option<&Path>,
        place: &ScratchPlace,
        log: &Path,
        ready: Ready,
    ) -> Result<Self, ScratchServerError> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| ScratchServerError::Io { what, source }
        };
        let program = |name: &str| bin.map_or_else(|| PathBuf::from(name), |dir| dir.join(name));
        let socket_dir = place.socket_dir.clone();
        let hba = socket_dir.join("hba.conf");
        std::fs::write(&hba, "local all all trust\n")
            .map_err(io("writing the drill's hba_file"))?;
        let log_file = std::fs::File::create(log).map_err(io("creating the server log"))?;
        let mut command = tokio::process::Command::new(program("postgres"));
        command
            .arg("-D")
            .arg(&place.data)
            .args(["-p", "5432", "-k"])
            .arg(&socket_dir)
            .args(["-c", "listen_addresses=", "-c", "archive_mode=off"])
            .args(["-c", "hot_standby=on"])
            .arg("-c")
            .arg(format!("hba_file={}", hba.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        if let Some(user) = &place.server_user {
            chown_all(&socket_dir, user.uid, user.gid)
                .map_err(io("handing the data to postgres"))?;
            command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        let child = command.spawn().map_err(io("starting postgres"))?;
        let mut server = Self {
            child,
            socket_dir,
            psql: program("psql"),
            user: std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into()),
            log: log.to_owned(),
        };
        let deadline = tokio::time::Instant::now() + RECOVERY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(server.failure(format!("postgres stopped ({status})")));
            }
            if let Ok(answer) = server.query(ready.query()).await
                && answer == "t"
            {
                return Ok(server);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(server.failure(format!("{} within 15 minutes", ready.missed())));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// A libpq connection string of `database` on this server.
    fn dsn(&self, database: &str) -> String {
        format!(
            "host={} port=5432 user={} dbname={database}",
            self.socket_dir.display(),
            self.user
        )
    }

    /// The one-line answer of `sql` in the `postgres` database.
    async fn query(&self, sql: &str) -> Result<String, ScratchServerError> {
        let output = tokio::process::Command::new(&self.psql)
            .args(PSQL_FLAGS)
            .arg(format!("--dbname={}", self.dsn("postgres")))
            .args(["-c", sql])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|source| ScratchServerError::Io {
                what: format!("running {}", self.psql.display()),
                source,
            })?;
        if !output.status.success() {
            let message = String::from_utf8_lossy(&output.stderr).trim().to_owned();
            return Err(self.failure(format!("psql failed: {message}")));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// A failure carrying the end of the server's log.
    fn failure(&self, what: String) -> ScratchServerError {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(12).collect();
        ScratchServerError::Failed {
            what,
            log: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        }
    }

    /// Stops the server (fast shutdown, then a kill).
    async fn stop(&mut self) {
        let pid = self.child.id().and_then(|pid| i32::try_from(pid).ok());
        if let Some(pid) = pid.and_then(rustix::process::Pid::from_raw) {
            // SIGINT: PostgreSQL's fast shutdown.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        }
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

impl From<pitr::PitrError> for ScratchServerError {
    fn from(e: pitr::PitrError) -> Self {
        Self::Failed {
            what: e.to_string(),
            log: String::new(),
        }
    }
}

impl From<PostgresRestoreError> for ScratchServerError {
    fn from(e: PostgresRestoreError) -> Self {
        Self::Failed {
            what: e.to_string(),
            log: String::new(),
        }
    }
}

/// Changes the owner of `path` and everything under it (no links followed).
fn chown_all(path: &Path, uid: nix::unistd::Uid, gid: nix::unistd::Gid) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid.as_raw()), Some(gid.as_raw()))?;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_all(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}
