//! Drilling a WAL archive: a point-in-time recovery to the end of the
//! archive ([`pitr`](super::pitr)) into the scratch folder, started as a
//! throw-away server on a Unix socket of its own (`--pg-bin` names the
//! server's programs, of the archived major version); it must finish
//! recovery, reach the archive's last segment and let every table of
//! every database be read to the end.
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

use super::names::{Lsn, SEGMENT_SIZE};
use super::pitr::{self, Target};
use crate::drill::JobRun;
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
    let plan = run
        .step("plan the recovery to the end of the archive", async {
            pitr::plan(reader, snapshots, entry, &Target::Latest).await
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
    let server = run
        .step("start PostgreSQL and recover", async {
            ScratchServer::start(bin.as_deref(), &place, &log).await
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
    let dsn = server.dsn("postgres");
    let databases = run
        .step("list databases", async {
            server
                .query("SELECT string_agg(datname, E'\\n') FROM pg_database WHERE datallowconn AND NOT datistemplate")
                .await
        })
        .await
        .unwrap_or_default();
    let target = run
        .step("connect", PgTarget::new(&dsn, bin.as_deref()))
        .await;
    if let Some(target) = target {
        let mut totals = (0, 0);
        for database in databases.lines().filter(|d| !d.is_empty()) {
            let counted = run
                .step(&format!("read every table of {database}"), async {
                    target.count_rows(database).await
                })
                .await;
            if let Some(tables) = counted {
                totals.0 += tables.len();
                totals.1 += tables.iter().map(|t| t.rows).sum::<u64>();
            }
        }
        run.note(format!("{} tables, {} rows", totals.0, totals.1));
    }
    server.stop().await;
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

/// A PostgreSQL server on a restored data directory, on its own socket.
struct ScratchServer {
    child: tokio::process::Child,
    socket_dir: PathBuf,
    psql: PathBuf,
    user: String,
    log: PathBuf,
}

impl ScratchServer {
    /// Starts `postgres` on the place's data and waits until recovery has ended.
    async fn start(
        bin: Option<&Path>,
        place: &ScratchPlace,
        log: &Path,
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
            if let Ok(answer) = server.query("SELECT pg_is_in_recovery()").await
                && answer == "f"
            {
                return Ok(server);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(server.failure("recovery did not end within 15 minutes".into()));
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
