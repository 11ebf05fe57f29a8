//! Restoring PostgreSQL: the globals (roles, tablespaces) with `psql`
//! first, then each database's custom-format dump with `pg_restore`,
//! either creating the database (`--create`) or into an existing one; and
//! counting the restored rows the way the backup counted them, to compare
//! with the recorded [`RowCounts`].
//!
//! The target server is reached like the source: a libpq connection string
//! and libpq's `PG*` variables (`PGPASSWORD`, `PGPASSFILE`), through
//! PostgreSQL's own client programs.

use std::path::{Path, PathBuf};

use crate::repo::reader::BlobReader;
use crate::repo::snapshot::SourceKind;
use crate::repo::tree::Tree;
use crate::restore::RestoreError;
use crate::restore::contents::read_small;
use crate::sources::postgres::client::{ClientCommand, Output, StderrText};
use crate::sources::postgres::connection::{Connection, Tools, hint};
use crate::sources::postgres::session::{PSQL_FLAGS, PsqlSession};
use crate::sources::postgres::{
    GLOBALS_FILE, Globals, PostgresError, PostgresSource, RowCounts, TableRows,
};

/// The variable a restore's password is taken from, as libpq does.
const PASSWORD_VARIABLE: &str = "PGPASSWORD";

/// What can go wrong in a PostgreSQL restore.
#[derive(Debug, thiserror::Error)]
pub enum PostgresRestoreError {
    /// Reading the snapshot or writing the dump files failed, or a client
    /// program failed.
    #[error(transparent)]
    Restore(#[from] RestoreError),
    /// A PostgreSQL client program could not run or connect.
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    /// A SQL script from the snapshot holds a psql meta-command it must not.
    #[error("{file}: {source}")]
    UnsafeScript {
        /// The script, as a path in the snapshot.
        file: String,
        /// The meta-command found.
        #[source]
        source: super::psql_script::ForbiddenMetaCommand,
    },
}

/// Where a dump goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreInto {
    /// `pg_restore --create`: the database is created under its own name.
    Create,
    /// Into this existing database.
    Existing(String),
}

/// How `pg_restore` treats owners and grants.
#[derive(Debug, Clone, Copy, Default)]
pub struct DumpOptions {
    /// `--no-owner --no-privileges`: objects belong to the connecting role
    /// (a scratch server without the original roles).
    pub no_owner: bool,
}

/// A PostgreSQL server to restore into.
#[derive(Debug, Clone)]
pub struct PgTarget {
    connection: Connection,
    tools: Tools,
}

impl PgTarget {
    /// The server of `dsn` (empty: libpq's variables), with the client
    /// programs from `bin_dir` or `PATH`.
    ///
    /// Fails when the dsn holds a password (give it in PGPASSWORD).
    pub async fn new(dsn: &str, bin_dir: Option<&Path>) -> Result<Self, PostgresRestoreError> {
        Self::connect(dsn, bin_dir, None).await
    }

    /// The server in the running container `container` of the Docker
    /// Engine at `socket`, reached as `dsn` reads there (empty: the
    /// container's `POSTGRES_USER` over its socket), with the client
    /// programs of the container (from `bin_dir` in it, or its `PATH`).
    ///
    /// Fails when the dsn holds a password, or the Engine or the
    /// container cannot be used.
    pub async fn in_container(
        socket: &Path,
        container: &str,
        dsn: &str,
        bin_dir: Option<&Path>,
    ) -> Result<Self, PostgresRestoreError> {
        Self::connect(dsn, bin_dir, Some((socket, container))).await
    }

    async fn connect(
        dsn: &str,
        bin_dir: Option<&Path>,
        container: Option<(&Path, &str)>,
    ) -> Result<Self, PostgresRestoreError> {
        let pg_dump = bin_dir.map_or_else(|| PathBuf::from("pg_dump"), |d| d.join("pg_dump"));
        // Programs here read PGPASSWORD themselves; one in a container
        // gets it through the exec's environment.
        let password_env = (container.is_some() && std::env::var_os(PASSWORD_VARIABLE).is_some())
            .then(|| PASSWORD_VARIABLE.to_owned());
        let source = PostgresSource {
            dsn: dsn.to_owned(),
            databases: Vec::new(),
            password_file: None,
            password_env,
            pg_dump: pg_dump.clone(),
            globals: Globals::default(),
            container: container.map(|(_, name)| name.to_owned()),
            user: None,
            docker_socket: container.map_or_else(crate::docker::default_socket, |(socket, _)| {
                socket.to_owned()
            }),
        };
        Ok(Self {
            connection: source.connect().await?,
            tools: Tools::beside(&pg_dump),
        })
    }

    /// Runs `globals.sql` with `psql`; statements that fail (a role that
    /// exists already) are returned as warnings, not errors. The file is
    /// first checked for meta-commands `pg_dumpall` does not write
    /// ([`psql_script`](super::psql_script)).
    ///
    /// Fails when the file holds such a command, or psql cannot run or connect.
    pub async fn apply_globals(&self, file: &Path) -> Result<Vec<String>, PostgresRestoreError> {
        check_globals(file)?;
        let mut command = self.connection.command(&self.tools.psql);
        command
            .args(["-X", "-q", "-w", "-f"])
            .input_file(file, &["-"])
            .args(self.connection.server_argument());
        let output = self.output(&command).await?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.exit.success {
            return Err(self.failed(&self.tools.psql, "applying globals.sql", &stderr));
        }
        Ok(stderr
            .lines()
            .filter(|l| l.contains("ERROR"))
            .map(|l| format!("globals.sql: {}", l.trim()))
            .collect())
    }

    /// Runs one SQL statement in the dsn's database.
    ///
    /// Fails with the server's message.
    async fn execute(&self, sql: &str) -> Result<(), PostgresRestoreError> {
        let mut command = self.connection.command(&self.tools.psql);
        command
            .args(PSQL_FLAGS)
            .args(self.connection.server_argument())
            .arg("-c")
            .arg(sql);
        let output = self.output(&command).await?;
        if !output.exit.success {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(self.failed(&self.tools.psql, sql, &stderr));
        }
        Ok(())
    }

    /// Creates the empty database `name`.
    ///
    /// Fails when it exists or the role may not create databases.
    pub async fn create_database(&self, name: &str) -> Result<(), PostgresRestoreError> {
        self.execute(&format!("CREATE DATABASE {}", quote_ident(name)))
            .await
    }

    /// Drops the database `name`, ending its sessions.
    ///
    /// Fails with the server's message.
    pub async fn drop_database(&self, name: &str) -> Result<(), PostgresRestoreError> {
        self.execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(name)
        ))
        .await
    }

    /// Restores the custom-format `dump` with `pg_restore`.
    ///
    /// Fails with pg_restore's message (it stops at the first error).
    pub async fn restore_dump(
        &self,
        dump: &Path,
        into: &RestoreInto,
        options: DumpOptions,
    ) -> Result<(), PostgresRestoreError> {
        let mut command = self.connection.command(&self.tools.pg_restore);
        command.args(["--no-password", "--exit-on-error"]);
        if options.no_owner {
            command.args(["--no-owner", "--no-privileges"]);
        }
        match into {
            RestoreInto::Create => {
                command
                    .arg("--create")
                    .args(self.connection.server_argument());
            }
            RestoreInto::Existing(database) => {
                // One transaction: a dump that fails half-way leaves the
                // database as it was (`--create` cannot run in one).
                command
                    .arg("--single-transaction")
                    .arg(self.connection.database_argument(database));
            }
        }
        command.input_file(dump, &[]);
        let output = self.output(&command).await?;
        if !output.exit.success {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(self.failed(
                &self.tools.pg_restore,
                &format!("restoring {}", dump.display()),
                &stderr,
            ));
        }
        Ok(())
    }

    /// Counts every table's rows in `database` as the backup did, sorted
    /// by schema and table.
    ///
    /// Fails when psql cannot connect or a table cannot be read.
    pub async fn count_rows(&self, database: &str) -> Result<Vec<TableRows>, PostgresRestoreError> {
        let (mut session, _) =
            PsqlSession::open(&self.connection, &self.tools.psql, database).await?;
        let counts = session.count_rows().await?;
        session.close().await?;
        Ok(counts)
    }

    async fn output(&self, command: &ClientCommand) -> Result<Output, PostgresRestoreError> {
        Ok(self.connection.start(command).await?.output().await?)
    }

    fn failed(&self, program: &Path, what: &str, stderr: &str) -> PostgresRestoreError {
        let message = StderrText::from_bytes(stderr.as_bytes()).0;
        let fix = hint(&message, self.connection.password_origin()).0;
        RestoreError::Tool {
            program: program.display().to_string(),
            message: format!("{what}: {message}"),
            fix: if fix.is_empty() {
                "check the target server and the role's rights (CREATEDB, ownership)".into()
            } else {
                fix
            },
        }
        .into()
    }
}

/// The databases a postgres snapshot holds: their `*.rowcounts.json`
/// files (name, dump file, recorded row counts), by name.
///
/// Fails when a row-count file cannot be read or parsed.
pub async fn stored_databases(
    reader: &BlobReader,
    root: &Tree,
) -> Result<Vec<RowCounts>, RestoreError> {
    let mut databases = Vec::new();
    for node in &root.entries {
        if !node.name.0.ends_with(b".rowcounts.json") {
            continue;
        }
        let bytes = read_small(reader, node).await?;
        let counts: RowCounts =
            serde_json::from_slice(&bytes).map_err(|e| RestoreError::WrongSnapshot {
                kind: SourceKind::Postgres,
                message: format!("{} does not parse ({e})", node.name.display()),
            })?;
        databases.push(counts);
    }
    databases.sort_by(|a, b| a.database.cmp(&b.database));
    Ok(databases)
}

/// Reads a restored `globals.sql` and checks it for meta-commands
/// `pg_dumpall` does not write ([`psql_script`](super::psql_script)). The
/// file must be a regular file; a symlink in its place is not followed.
///
/// Fails when it cannot be read, is not a regular file, or holds such a
/// command.
pub fn check_globals(file: &Path) -> Result<(), PostgresRestoreError> {
    use rustix::fs::{Mode, OFlags};
    let reading = |source| RestoreError::Io {
        action: "reading",
        path: file.to_owned(),
        source,
    };
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let opened = rustix::fs::open(file, flags, Mode::empty()).map_err(|e| reading(e.into()))?;
    let mut opened = std::fs::File::from(opened);
    if !opened.metadata().map_err(reading)?.is_file() {
        return Err(reading(std::io::Error::other("not a regular file")).into());
    }
    let mut script = Vec::new();
    std::io::Read::read_to_end(&mut opened, &mut script).map_err(reading)?;
    super::psql_script::check(&script).map_err(|source| PostgresRestoreError::UnsafeScript {
        file: GLOBALS_FILE.into(),
        source,
    })
}

/// Whether the snapshot holds `globals.sql`.
pub fn has_globals(root: &Tree) -> bool {
    root.get(GLOBALS_FILE.as_bytes()).is_some()
}

/// The differences between recorded and restored row counts, one sentence
/// per table; empty when they are equal.
pub fn compare_counts(
    database: &str,
    recorded: &[TableRows],
    restored: &[TableRows],
) -> Vec<String> {
    let key = |t: &TableRows| (t.schema.clone(), t.table.clone());
    let restored_by: std::collections::BTreeMap<_, _> =
        restored.iter().map(|t| (key(t), t.rows)).collect();
    let recorded_by: std::collections::BTreeMap<_, _> =
        recorded.iter().map(|t| (key(t), t.rows)).collect();
    let mut problems = Vec::new();
    for ((schema, table), rows) in &recorded_by {
        match restored_by.get(&(schema.clone(), table.clone())) {
            Some(got) if got == rows => {}
            Some(got) => problems.push(format!(
                "{database}: {schema}.{table} has {got} rows restored, {rows} recorded"
            )),
            None => problems.push(format!(
                "{database}: {schema}.{table} is missing after restore"
            )),
        }
    }
    for (schema, table) in restored_by.keys() {
        if !recorded_by.contains_key(&(schema.clone(), table.clone())) {
            problems.push(format!(
                "{database}: {schema}.{table} was not recorded at backup"
            ));
        }
    }
    problems
}

/// `name` as a quoted SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(table: &str, rows: u64) -> TableRows {
        TableRows {
            schema: "public".into(),
            table: table.into(),
            rows,
        }
    }

    #[test]
    fn differences_name_the_table() {
        let recorded = [rows("a", 3), rows("b", 1)];
        let restored = [rows("a", 2), rows("c", 0)];
        let problems = compare_counts("db", &recorded, &restored);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("public.a has 2 rows restored, 3 recorded"));
        assert!(compare_counts("db", &recorded, &recorded).is_empty());
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
