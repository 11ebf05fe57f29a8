//! `kind = "postgres"`: PostgreSQL databases as `pg_dump` custom-format
//! dumps, for the one-hour database RPO.
//!
//! ```toml
//! [[job]]
//! name = "databases"
//! source = { kind = "postgres", dsn = "postgresql://backup@db:5432/postgres",
//!            databases = ["gitea", "vaultwarden"], password_file = "/config/pg.pass" }
//! ```
//!
//! For each database (the listed ones, or every non-template database that
//! accepts connections) a `psql` session opens a `REPEATABLE READ`
//! transaction and exports its snapshot; `pg_dump --format=custom
//! --snapshot=<id>` streams the dump straight into the repository while the
//! session counts the rows of every table in that same snapshot, so the
//! recorded counts match the dump exactly. `pg_dumpall --globals-only` adds
//! roles and tablespaces. A snapshot holds, at its root:
//!
//! - `globals.sql` — roles and tablespaces (plain SQL, for `psql`);
//! - `<db>.dump` — one custom-format dump per database (for `pg_restore`),
//!   uncompressed so that unchanged tables deduplicate between runs (the
//!   repository compresses with zstd anyway);
//! - `<db>.rowcounts.json` — [`RowCounts`]: every table's row count at dump
//!   time, to verify a restore.
//!
//! `<db>` is the database name with `%`, `/` and control characters
//! percent-encoded. Table and database names appear only in these files,
//! which only the restore key can read; the snapshot metadata, which the
//! service key reads, holds no names: `server_version`,
//! `server_version_num`, `pg_dump_version`, `globals`, `database_count`,
//! the totals `tables` and `rows`, and `databases`, one `{tables, rows,
//! dump_bytes}` per database in the order they were dumped (the job's
//! order, or by name when dumping all).
//!
//! A server in a container on a private network (an Unraid database that
//! only its app's network reaches) is dumped from inside that container:
//! with `container = "gitea_postgres"` the same programs run there through
//! the Docker Engine API ([`crate::docker`]), as the role `user` (default:
//! the container's `POSTGRES_USER`, else `postgres`) over the container's
//! own socket, and the dump streams out of the exec. The metadata then
//! also names the container, so a drill can restore into it.
//!
//! Any failure (wrong password, unknown database, a `pg_dump` error) fails
//! the job with the client program's own error text and a fix; nothing is
//! committed then.

pub(crate) mod client;
pub(crate) mod connection;
pub mod drill;
pub mod psql_script;
pub mod restore;
pub(crate) mod session;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use connection::Hint;
pub use session::TableRows;

use self::client::{ClientCommand, ClientHost, DumpProcess, StderrText};
use self::connection::{Connection, Tools, file_stem, hint};
use self::session::{Inventory, PsqlSession};
use super::{SourceContext, SourceError, resolve};
use crate::backup::SnapshotBuilder;
use crate::backup::stream::StreamChunking;
use crate::docker::{Docker, DockerError};

/// The snapshot file holding `pg_dumpall --globals-only`.
pub const GLOBALS_FILE: &str = "globals.sql";

/// Settings of a PostgreSQL source.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSource {
    /// A libpq connection string (`postgresql://user@host:5432/postgres` or
    /// `host=… user=…`) without a password; its database is the one the
    /// server's inventory is read from. Empty: libpq's `PG*` variables.
    #[serde(default)]
    pub dsn: String,
    /// The databases to dump; empty: every database that is not a template
    /// and accepts connections.
    #[serde(default)]
    pub databases: Vec<String>,
    /// A file holding the password (one line; a trailing newline is not
    /// part of it), e.g. a mounted Kubernetes secret.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// An environment variable of lifeboatd holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// The `pg_dump` to run: a name found on `PATH` or a path, to choose a
    /// version (it must be of the server's major version or newer).
    /// `pg_dumpall` and `psql` are taken from the same folder.
    #[serde(default = "default_pg_dump")]
    pub pg_dump: PathBuf,
    /// What `pg_dumpall --globals-only` stores.
    #[serde(default)]
    pub globals: Globals,
    /// The Docker container the server runs in: the programs then run
    /// inside it (found on its `PATH`, or `pg_dump` as a path in it) and
    /// the dsn is read there.
    #[serde(default)]
    pub container: Option<String>,
    /// With `container`: the role to connect as over the container's
    /// socket, when there is no dsn (default: the container's
    /// `POSTGRES_USER`, else `postgres`).
    #[serde(default)]
    pub user: Option<String>,
    /// With `container`: the Docker Engine's socket.
    #[serde(default = "crate::docker::default_socket")]
    pub docker_socket: PathBuf,
}

fn default_pg_dump() -> PathBuf {
    PathBuf::from("pg_dump")
}

/// Which cluster-wide objects (roles, tablespaces) are stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Globals {
    /// Roles with their password hashes, and tablespaces (needs a superuser).
    #[default]
    All,
    /// Roles without passwords (`--no-role-passwords`), for a role that is
    /// not a superuser.
    WithoutRolePasswords,
    /// No `globals.sql`.
    Skip,
}

/// `<db>.rowcounts.json`: the row count of every table of one database, in
/// the snapshot its dump was taken in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowCounts {
    /// The database.
    pub database: String,
    /// The dump file in the snapshot.
    pub dump: String,
    /// The server's `server_version`.
    pub server_version: String,
    /// Every table whose data the dump holds, by schema and name.
    pub tables: Vec<TableRows>,
    /// The sum of the tables' rows.
    pub total_rows: u64,
}

/// Why a PostgreSQL source could not be backed up.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// Both password settings are given.
    #[error("the postgres source sets both password_file and password_env; keep one")]
    TwoPasswords,
    /// The dsn carries a password, which would be visible in the process list.
    #[error(
        "the postgres dsn holds a password, which would show in the process list; \
         remove it from the dsn and give it with password_file or password_env"
    )]
    PasswordInDsn,
    /// The password file cannot be read.
    #[error(
        "cannot read the PostgreSQL password file {path}: {cause}; fix password_file in the job"
    )]
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        cause: std::io::Error,
    },
    /// The password variable is not set (or not UTF-8).
    #[error(
        "the environment variable {name} (password_env) is not set; \
         set it in lifeboatd's environment or fix password_env in the job"
    )]
    PasswordEnv {
        /// The variable.
        name: String,
    },
    /// The configured password is empty.
    #[error("the PostgreSQL password from {origin} is empty; put the password there")]
    EmptyPassword {
        /// Where it came from.
        origin: String,
    },
    /// `user` is set without `container`.
    #[error(
        "the postgres source sets user without container; put the role into the dsn \
         (postgresql://ROLE@host/postgres), or name the container"
    )]
    UserWithoutContainer,
    /// Both `user` and `dsn` are set for a container.
    #[error("the postgres source sets both user and dsn; keep one (the dsn names its role)")]
    UserAndDsn,
    /// The Docker Engine could not run the programs in the container.
    #[error(transparent)]
    Container(#[from] DockerError),
    /// The container has no such program.
    #[error(
        "container {container:?} has no {} on its PATH; name the PostgreSQL server's own \
         container, or set `pg_dump` in the job to pg_dump's path inside it",
        program.display()
    )]
    NotInContainer {
        /// The program.
        program: PathBuf,
        /// The container.
        container: String,
    },
    /// A client program cannot be started.
    #[error(
        "cannot run {}: {cause}; install the PostgreSQL client programs \
         (Debian: apt-get install postgresql-client) or set `pg_dump` in the job to the \
         pg_dump to use (pg_dumpall and psql must be beside it)",
        program.display()
    )]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The operating system's error.
        cause: std::io::Error,
    },
    /// Connecting failed.
    #[error("cannot connect to PostgreSQL ({target}): {message}{hint}")]
    Connect {
        /// Which connection: the dsn's database or a database to dump.
        target: String,
        /// psql's error text.
        message: String,
        /// The fix, when known.
        hint: Hint,
    },
    /// A listed database is not on the server.
    #[error(
        "database {database:?} does not exist on the server (it has: {known}); fix `databases` in the job"
    )]
    NoSuchDatabase {
        /// The database.
        database: String,
        /// The server's databases.
        known: String,
    },
    /// The server has no database to dump.
    #[error(
        "the server has no database to back up (only templates, or none accepting connections)"
    )]
    NothingToBackUp,
    /// `pg_dump` failed.
    #[error("pg_dump of database {database:?} failed: {message}{hint}")]
    Dump {
        /// The database.
        database: String,
        /// pg_dump's error text.
        message: String,
        /// The fix, when known.
        hint: Hint,
    },
    /// `pg_dumpall --globals-only` failed.
    #[error("pg_dumpall --globals-only failed: {message}{hint}")]
    Globals {
        /// pg_dumpall's error text.
        message: String,
        /// The fix, when known.
        hint: Hint,
    },
    /// A query in a database failed.
    #[error("a query in {target} failed: {message}{hint}")]
    Query {
        /// The database, as a message names it.
        target: String,
        /// psql's error text.
        message: String,
        /// The fix, when known.
        hint: Hint,
    },
    /// Counting a database's rows failed.
    #[error("counting the rows of database {database:?} failed: {message}{hint}")]
    Counts {
        /// The database.
        database: String,
        /// psql's error text.
        message: String,
        /// The fix, when known.
        hint: Hint,
    },
    /// A client program printed something lifeboat does not understand.
    #[error(
        "unexpected output from a PostgreSQL client program ({what}): {output:?}; check the pg_dump setting names a PostgreSQL installation"
    )]
    Unexpected {
        /// What was being read.
        what: String,
        /// The start of the output.
        output: String,
    },
}

/// The snapshot file of `database`'s dump.
pub fn dump_file(database: &str) -> String {
    format!("{}.dump", file_stem(database))
}

/// The snapshot file of `database`'s [`RowCounts`].
pub fn row_counts_file(database: &str) -> String {
    format!("{}.rowcounts.json", file_stem(database))
}

/// What one database's backup recorded, for the metadata.
#[derive(Debug, Serialize)]
struct DatabaseFigures {
    tables: u64,
    rows: u64,
    dump_bytes: u64,
}

impl PostgresSource {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if let Some(path) = &mut self.password_file {
            resolve(path, base);
        }
        // In a container, pg_dump is a path inside it.
        if self.container.is_none() && self.pg_dump.components().count() > 1 {
            resolve(&mut self.pg_dump, base);
        }
    }

    /// The connection: the programs run here, or in the container (which
    /// must run), with the dsn read there.
    ///
    /// Fails on contradicting settings, an unreadable password, or a
    /// Docker Engine or container that cannot be used.
    pub(crate) async fn connect(&self) -> Result<Connection, PostgresError> {
        let Some(name) = &self.container else {
            if self.user.is_some() {
                return Err(PostgresError::UserWithoutContainer);
            }
            return Connection::new(self, &self.dsn, ClientHost::Local);
        };
        if self.user.is_some() && !self.dsn.trim().is_empty() {
            return Err(PostgresError::UserAndDsn);
        }
        let docker = Docker::connect(&self.docker_socket).await?;
        let container = docker.running_container(name).await?;
        let dsn = if self.dsn.trim().is_empty() {
            let role = self
                .user
                .as_deref()
                .or(container.env("POSTGRES_USER"))
                .unwrap_or("postgres");
            format!("user={} dbname=postgres", connection::quote_value(role))
        } else {
            self.dsn.clone()
        };
        let host = ClientHost::Container {
            docker,
            name: name.clone(),
        };
        Connection::new(self, &dsn, host)
    }

    /// Dumps the globals and every database into `builder`; returns the
    /// metadata (versions, counts and totals, no names).
    pub(crate) async fn back_up(
        &self,
        builder: &mut SnapshotBuilder,
        _context: &SourceContext,
    ) -> Result<serde_json::Value, SourceError> {
        let connection = self.connect().await?;
        let tools = Tools::beside(&self.pg_dump);
        let pg_dump_version = program_version(&connection, &tools.pg_dump).await?;
        let inventory = session::inventory(&connection, &tools.psql).await?;
        let databases = self.selected(&inventory)?;
        if self.globals != Globals::Skip {
            self.dump_globals(builder, &connection, &tools).await?;
        }
        let mut figures = Vec::with_capacity(databases.len());
        for database in &databases {
            tracing::info!("postgres: dumping database {database:?}");
            figures.push(dump_database(builder, &connection, &tools, &inventory, database).await?);
        }
        Ok(serde_json::json!({
            "server_version": inventory.server_version,
            "server_version_num": inventory.server_version_num,
            "pg_dump_version": pg_dump_version,
            "container": self.container,
            "globals": self.globals,
            "database_count": figures.len(),
            "tables": figures.iter().map(|f| f.tables).sum::<u64>(),
            "rows": figures.iter().map(|f| f.rows).sum::<u64>(),
            "databases": figures,
        }))
    }

    /// The databases to dump, in the configured order, each once.
    ///
    /// Fails when a listed database is not on the server, or none is.
    fn selected(&self, inventory: &Inventory) -> Result<Vec<String>, PostgresError> {
        if self.databases.is_empty() {
            let all: Vec<String> = inventory
                .databases
                .iter()
                .filter(|d| d.connectable)
                .map(|d| d.name.clone())
                .collect();
            if all.is_empty() {
                return Err(PostgresError::NothingToBackUp);
            }
            return Ok(all);
        }
        let mut seen = HashSet::new();
        let mut selected = Vec::new();
        for database in &self.databases {
            if !inventory.databases.iter().any(|d| d.name == *database) {
                return Err(PostgresError::NoSuchDatabase {
                    database: database.clone(),
                    known: inventory
                        .databases
                        .iter()
                        .map(|d| d.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            if seen.insert(database.as_str()) {
                selected.push(database.clone());
            }
        }
        Ok(selected)
    }

    /// Streams `pg_dumpall --globals-only` into [`GLOBALS_FILE`].
    async fn dump_globals(
        &self,
        builder: &mut SnapshotBuilder,
        connection: &Connection,
        tools: &Tools,
    ) -> Result<(), SourceError> {
        let mut command = connection.command(&tools.pg_dumpall);
        command.args(["--globals-only", "--no-password"]);
        if self.globals == Globals::WithoutRolePasswords {
            command.arg("--no-role-passwords");
        }
        command.args(connection.server_argument());
        let failed = |stderr: StderrText| {
            let mut fix = hint(&stderr.0, connection.password_origin());
            if self.globals == Globals::All && stderr.0.contains("permission denied") {
                fix = Hint(
                    "reading role passwords needs a superuser: set globals = \
                     \"without-role-passwords\" in the job, or make the role a superuser"
                        .into(),
                );
            }
            PostgresError::Globals {
                message: stderr.0,
                hint: fix,
            }
        };
        stream_child(builder, GLOBALS_FILE, &command, connection, failed).await?;
        Ok(())
    }
}

/// Dumps one database in an exported snapshot while counting its rows in
/// that snapshot; stores the dump and its [`RowCounts`].
async fn dump_database(
    builder: &mut SnapshotBuilder,
    connection: &Connection,
    tools: &Tools,
    inventory: &Inventory,
    database: &str,
) -> Result<DatabaseFigures, SourceError> {
    let (mut session, snapshot) = PsqlSession::open(connection, &tools.psql, database).await?;
    let mut command = connection.command(&tools.pg_dump);
    command
        .args(["--format=custom", "--compress=0", "--no-password"])
        .arg(format!("--snapshot={snapshot}"))
        .arg(connection.database_argument(database));
    let dump = dump_file(database);
    let failed = |stderr: StderrText| PostgresError::Dump {
        database: database.to_owned(),
        hint: hint(&stderr.0, connection.password_origin()),
        message: stderr.0,
    };
    let (dumped, counted) = tokio::join!(
        stream_child(builder, &dump, &command, connection, failed),
        session.count_rows()
    );
    // A failing count ends the session and with it the exported snapshot,
    // which then fails pg_dump ("invalid snapshot identifier"): the count's
    // error is the cause to report.
    let tables = counted?;
    let dump_bytes = dumped?;
    session.close().await?;
    let counts = RowCounts {
        database: database.to_owned(),
        dump,
        server_version: inventory.server_version.clone(),
        total_rows: tables.iter().map(|t| t.rows).sum(),
        tables,
    };
    let json = serde_json::to_vec_pretty(&counts).map_err(|e| PostgresError::Unexpected {
        what: "encoding the row counts".into(),
        output: e.to_string(),
    })?;
    builder
        .add_stream(
            &row_counts_file(database),
            std::io::Cursor::new(json),
            StreamChunking::Content,
        )
        .await?;
    Ok(DatabaseFigures {
        tables: counts.tables.len() as u64,
        rows: counts.total_rows,
        dump_bytes,
    })
}

/// Runs `command` and stores its stdout as `name`; returns the bytes
/// stored. The program's failure (`failed` of its stderr) wins over the
/// repository's, since a failing program is the cause of a short stream.
async fn stream_child(
    builder: &mut SnapshotBuilder,
    name: &str,
    command: &ClientCommand,
    connection: &Connection,
    failed: impl FnOnce(StderrText) -> PostgresError,
) -> Result<u64, SourceError> {
    let (stdout, process) = DumpProcess::start(command, connection.host()).await?;
    match builder
        .add_stream(name, stdout, StreamChunking::Content)
        .await
    {
        Ok(bytes) => match process.finish().await? {
            Ok(()) => Ok(bytes),
            Err(stderr) => Err(failed(stderr).into()),
        },
        Err(e) => {
            process.kill().await;
            Err(e.into())
        }
    }
}

/// The first line of `program --version`, which also shows it can run.
///
/// Fails when it cannot run.
async fn program_version(connection: &Connection, program: &Path) -> Result<String, PostgresError> {
    let mut command = connection.command(program);
    command.arg("--version");
    let output = connection.start(&command).await?.output().await?;
    let text = String::from_utf8_lossy(&output.stdout);
    match text.lines().next() {
        Some(line) if output.exit.success && !line.trim().is_empty() => Ok(line.trim().to_owned()),
        _ => Err(PostgresError::Unexpected {
            what: format!("{} --version", program.display()),
            output: StderrText::from_bytes(&output.stderr).0,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::SourceConfig;

    fn parse(text: &str) -> Result<SourceConfig, toml::de::Error> {
        #[derive(Deserialize)]
        struct Job {
            source: SourceConfig,
        }
        toml::from_str::<Job>(text).map(|job| job.source)
    }

    #[test]
    fn settings_parse_with_defaults() -> Result<(), toml::de::Error> {
        let source = parse(
            r#"source = { kind = "postgres", dsn = "postgresql://backup@db:5432/postgres", databases = ["gitea"], password_env = "PGPASS" }"#,
        )?;
        let SourceConfig::Postgres(source) = source else {
            panic!("not a postgres source: {source:?}");
        };
        assert_eq!(source.databases, ["gitea"]);
        assert_eq!(source.pg_dump, PathBuf::from("pg_dump"));
        assert_eq!(source.globals, Globals::All);
        assert!(parse(r#"source = { kind = "postgres", pasword_file = "x" }"#).is_err());
        let source =
            parse(r#"source = { kind = "postgres", globals = "without-role-passwords" }"#)?;
        assert!(matches!(
            source,
            SourceConfig::Postgres(PostgresSource {
                globals: Globals::WithoutRolePasswords,
                ..
            })
        ));
        Ok(())
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let mut source = PostgresSource {
            dsn: String::new(),
            databases: Vec::new(),
            password_file: Some("pg.pass".into()),
            password_env: None,
            pg_dump: "pg_dump".into(),
            globals: Globals::All,
            container: None,
            user: None,
            docker_socket: crate::docker::default_socket(),
        };
        source.resolve_paths(Path::new("/config"));
        assert_eq!(source.password_file, Some(PathBuf::from("/config/pg.pass")));
        assert_eq!(source.pg_dump, PathBuf::from("pg_dump"));
        source.pg_dump = "bin/pg_dump".into();
        source.resolve_paths(Path::new("/config"));
        assert_eq!(source.pg_dump, PathBuf::from("/config/bin/pg_dump"));
    }

    #[test]
    fn file_names_encode_the_database() {
        assert_eq!(dump_file("gitea"), "gitea.dump");
        assert_eq!(row_counts_file("a/b"), "a%2Fb.rowcounts.json");
    }
}
