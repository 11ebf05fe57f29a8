//! A real PostgreSQL server (Debian's `postgresql`), as a throw-away cluster
//! in a temporary folder on a free loopback port.
//!
//! `initdb` makes the cluster with password authentication (SCRAM) for
//! every TCP connection and a random superuser password; `postgres` runs in
//! the foreground under the harness's watchdog ([`ServerProcess`]), so it
//! stops with the test however the test ends — no `pg_ctl`-daemonised
//! server is left behind. PostgreSQL refuses to run as root: when the tests
//! run as root the server runs as the `postgres` system user (made by the
//! Debian package), through `setpriv`, which execs it in place so the
//! watchdog's signals reach it. Durability is off (`fsync=off`): the
//! cluster lives for one test.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tempfile::TempDir;

use crate::process::{ServerProcess, free_port};

/// How to install the server when it is missing.
pub const INSTALL: &str = "apt-get install -y postgresql";

/// The superuser `initdb` creates.
pub const SUPERUSER: &str = "postgres";

/// A running PostgreSQL cluster; stopped and deleted on drop.
#[derive(Debug)]
pub struct PostgresServer {
    process: ServerProcess,
    bin: PathBuf,
    port: u16,
    password: String,
    /// When running as root: the user the server runs as, for `setpriv`.
    run_as: Option<(u32, u32)>,
    /// The data directory.
    data: PathBuf,
    /// The socket and the log (and, for a cluster made here, the data).
    dir: TempDir,
}

impl PostgresServer {
    /// Makes a cluster, starts it and waits until it takes connections.
    ///
    /// Fails with the install command when PostgreSQL is missing, and with
    /// the server's log when it does not start.
    pub async fn start() -> Result<Self> {
        let bin = server_bin_dir()?;
        let run_as = unprivileged_user()?;
        let dir = tempfile::Builder::new().prefix("lifeboat-pg").tempdir()?;
        let password = format!("su-{:016x}", rand::random::<u64>());
        let pwfile = dir.path().join("superuser.pass");
        std::fs::write(&pwfile, &password)?;
        if let Some((uid, gid)) = run_as {
            for path in [dir.path(), pwfile.as_path()] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .with_context(|| format!("chown {}", path.display()))?;
            }
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        let data = dir.path().join("data");
        let output = as_server_user(run_as, &bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", SUPERUSER, "-A", "scram-sha-256", "-E", "UTF8"])
            .args(["--locale=C", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .context("running initdb")?;
        ensure!(
            output.status.success(),
            "initdb failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::remove_file(&pwfile)?;

        let port = free_port()?;
        let process = spawn_server(&bin, run_as, &data, dir.path(), port)?;
        let mut server = Self {
            process,
            bin,
            port,
            password,
            run_as,
            data,
            dir,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    /// Starts another server on `data` (a data directory restored from
    /// this one's backups: the same roles and passwords), on a new port,
    /// and waits until it has finished recovery and takes connections.
    ///
    /// Fails with the server's log when it does not get there.
    pub async fn start_restored(&self, data: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("lifeboat-pg").tempdir()?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
            let status = Command::new("chown")
                .arg("-R")
                .arg(format!("{uid}:{gid}"))
                .arg(data)
                .status()?;
            ensure!(status.success(), "chown -R {}", data.display());
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        let port = free_port()?;
        let process = spawn_server(&self.bin, self.run_as, data, dir.path(), port)?;
        let mut server = Self {
            process,
            bin: self.bin.clone(),
            port,
            password: self.password.clone(),
            run_as: self.run_as,
            data: data.to_owned(),
            dir,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    /// Crashes the server (`SIGQUIT` to the postmaster: every process
    /// exits at once, without a checkpoint, as `pg_ctl stop -m immediate`)
    /// and starts it again on the same port; it recovers from its WAL.
    ///
    /// Fails when it does not come back.
    pub async fn crash_and_restart(&mut self) -> Result<()> {
        let pid_file = std::fs::read_to_string(self.data.join("postmaster.pid"))
            .context("reading postmaster.pid")?;
        let pid = pid_file
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let status = Command::new("kill").args(["-QUIT", &pid]).status()?;
        ensure!(status.success(), "kill -QUIT {pid}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.process.check_running().is_ok() {
            ensure!(
                std::time::Instant::now() < deadline,
                "postgres did not stop on SIGQUIT"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.process = spawn_server(
            &self.bin,
            self.run_as,
            &self.data,
            self.dir.path(),
            self.port,
        )?;
        self.wait_ready().await
    }

    /// Waits until the server takes connections and is out of recovery.
    async fn wait_ready(&mut self) -> Result<()> {
        let probe_dsn = self.superuser_dsn("postgres");
        let psql = self.bin("psql");
        let password = self.password.clone();
        self.process
            .wait_until("accepting connections", Duration::from_secs(120), || {
                let mut command = Command::new(&psql);
                command
                    .args([
                        "-X",
                        "-A",
                        "-t",
                        "-w",
                        "-c",
                        "SELECT NOT pg_is_in_recovery()",
                    ])
                    .arg(format!("--dbname={probe_dsn}"))
                    .env("PGPASSWORD", &password);
                async move {
                    let output = command.output()?;
                    ensure!(
                        output.status.success() && output.stdout.starts_with(b"t"),
                        "{}",
                        String::from_utf8_lossy(&output.stderr)
                    );
                    Ok(())
                }
            })
            .await?;
        Ok(())
    }

    /// The folder of the server's programs (`pg_dump`, `pg_restore`, …).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// The server program `name` of this PostgreSQL version.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's password.
    pub fn superuser_password(&self) -> &str {
        &self.password
    }

    /// Lets `role` connect over loopback without a password, as the
    /// official `postgres` image trusts connections over its own socket
    /// (the line goes first in `pg_hba.conf`; the server reloads it).
    ///
    /// Fails when the file cannot be written or the server not reloaded.
    pub fn trust(&self, role: &str) -> Result<()> {
        let hba = self.data.join("pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).context("reading pg_hba.conf")?;
        std::fs::write(&hba, format!("host all {role} 127.0.0.1/32 trust\n{rules}"))
            .context("writing pg_hba.conf")?;
        self.psql("postgres", "SELECT pg_reload_conf()")?;
        Ok(())
    }

    /// A libpq URI for `user` on `database`, without a password.
    pub fn dsn(&self, user: &str, database: &str) -> String {
        format!("postgresql://{user}@127.0.0.1:{}/{database}", self.port)
    }

    /// A libpq URI for the superuser on `database`, without a password.
    pub fn superuser_dsn(&self, database: &str) -> String {
        self.dsn(SUPERUSER, database)
    }

    /// A command for the client program `name` connecting as the superuser
    /// (its password in `PGPASSWORD`, no psqlrc or service files).
    pub fn client(&self, name: &str) -> Command {
        let mut command = Command::new(self.bin(name));
        command
            .env("PGPASSWORD", &self.password)
            .env_remove("PGSERVICEFILE")
            .env_remove("PGPASSFILE");
        command
    }

    /// Runs `sql` in `database` as the superuser and returns what `psql`
    /// prints (unaligned, tuples only).
    ///
    /// Fails with psql's error text when any statement fails.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String> {
        let output = self
            .client("psql")
            .args(["-X", "-q", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=1"])
            .arg(format!("--dbname={}", self.superuser_dsn(database)))
            .arg("-c")
            .arg(sql)
            .output()
            .context("running psql")?;
        if !output.status.success() {
            bail!(
                "psql in {database} failed ({}): {}\nSQL: {sql:.500}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr),
                self.log_tail()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Starts `sql` in `database` as the superuser in the background (e.g.
    /// a writer running while a backup is taken); it is killed on drop.
    ///
    /// Fails when psql cannot start.
    pub fn psql_in_background(&self, database: &str, sql: &str) -> Result<crate::cli::Running> {
        let mut command = self.client("psql");
        command
            .args(["-X", "-q", "-w", "-v", "ON_ERROR_STOP=1"])
            .arg(format!("--dbname={}", self.superuser_dsn(database)))
            .arg("-c")
            .arg(sql);
        crate::cli::spawn(&mut command)
    }

    /// Creates a login role with `password` and the extra `options` (e.g.
    /// `SUPERUSER`, or none).
    ///
    /// Fails when the server refuses.
    pub fn create_role(&self, name: &str, password: &str, options: &str) -> Result<()> {
        self.psql(
            "postgres",
            &format!(
                "CREATE ROLE \"{name}\" LOGIN {options} PASSWORD '{}'",
                password.replace('\'', "''")
            ),
        )?;
        Ok(())
    }

    /// The exact row count of every ordinary table of `database` outside
    /// the system schemas, by (schema, table).
    ///
    /// Fails when a table cannot be counted.
    pub fn row_counts(&self, database: &str) -> Result<BTreeMap<(String, String), u64>> {
        let text = self.psql(
            database,
            "SELECT coalesce(json_agg(json_build_array(n.nspname, c.relname, \
             (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM ONLY %I.%I', \
             n.nspname, c.relname), false, true, '')))[1]::text::bigint)), '[]') \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'",
        )?;
        let rows: Vec<(String, String, u64)> = serde_json::from_str(text.trim())
            .with_context(|| format!("row counts of {database}: {text}"))?;
        Ok(rows
            .into_iter()
            .map(|(schema, table, count)| ((schema, table), count))
            .collect())
    }

    /// The cluster's folder (data, socket, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the server runs as another (unprivileged) user.
    pub fn runs_as_other_user(&self) -> bool {
        self.run_as.is_some()
    }

    /// The server's log so far, for failure messages.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}

/// Starts `postgres` on `data`, its socket in `dir` and its log in
/// `dir/postgres.log`, as `run_as` when given.
fn spawn_server(
    bin: &Path,
    run_as: Option<(u32, u32)>,
    data: &Path,
    dir: &Path,
    port: u16,
) -> Result<ServerProcess> {
    let postgres = bin.join("postgres");
    let mut args: Vec<String> = Vec::new();
    let program = match run_as {
        Some((uid, gid)) => {
            args.extend(setpriv_args(uid, gid));
            args.push(postgres.display().to_string());
            PathBuf::from("setpriv")
        }
        None => postgres.clone(),
    };
    args.extend(["-D".into(), data.display().to_string()]);
    args.extend(["-p".into(), port.to_string()]);
    args.extend(["-k".into(), dir.display().to_string()]);
    for setting in [
        "listen_addresses=127.0.0.1",
        "fsync=off",
        "full_page_writes=off",
        "synchronous_commit=off",
        "max_connections=40",
    ] {
        args.extend(["-c".into(), setting.into()]);
    }
    ServerProcess::spawn("postgres", &program, &args, &[], &dir.join("postgres.log"))
}

/// `/usr/lib/postgresql/<newest>/bin`, the folder with `initdb`.
fn server_bin_dir() -> Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).with_context(|| {
        format!(
            "no PostgreSQL server (initdb) under {}; install it with: {INSTALL}",
            root.display()
        )
    })
}

/// When running as root: the uid and gid of the `postgres` user.
fn unprivileged_user() -> Result<Option<(u32, u32)>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name(SUPERUSER)
        .context("looking up the postgres user")?
        .with_context(|| {
            format!(
                "PostgreSQL cannot run as root and there is no `postgres` user; \
                 install the server with `{INSTALL}` (it creates the user)"
            )
        })?;
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

fn setpriv_args(uid: u32, gid: u32) -> Vec<String> {
    vec![
        format!("--reuid={uid}"),
        format!("--regid={gid}"),
        "--clear-groups".into(),
        "--".into(),
    ]
}

/// A command running `program` as the server's user.
fn as_server_user(run_as: Option<(u32, u32)>, program: &Path) -> Command {
    match run_as {
        Some((uid, gid)) => {
            let mut command = Command::new("setpriv");
            command.args(setpriv_args(uid, gid)).arg(program);
            command
        }
        None => Command::new(program),
    }
}
