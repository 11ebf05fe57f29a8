//! Queries through `psql`: the server's inventory, and sessions, such as
//! the one that holds a database's snapshot open while `pg_dump` runs in
//! it.
//!
//! A [`PsqlSession`] is one `psql` process fed on stdin, in one database.
//! [`PsqlSession::open`] opens a
//! `REPEATABLE READ, READ ONLY` transaction and exports its snapshot
//! (`pg_export_snapshot()`); `pg_dump --snapshot=<id>` then dumps exactly
//! the data this transaction sees, and the row counts taken in it match the
//! dump row for row, however busy the database is. Each batch of commands
//! ends with `\echo <marker>`, so the answer is everything printed before
//! the marker; `ON_ERROR_STOP` makes `psql` exit on any error, with the
//! server's message on stderr.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};

use super::client::{Client, Reader, StderrText, Writer, collect_stderr};
use super::connection::{Connection, hint};
use super::{Hint, PostgresError};

/// `psql` flags: no psqlrc, quiet, unaligned, tuples only, never prompt,
/// stop at the first error.
pub(crate) const PSQL_FLAGS: [&str; 7] = ["-X", "-q", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=1"];

/// Server version and databases, as one JSON line.
const INVENTORY: &str = "SELECT json_build_object(\
    'server_version', current_setting('server_version'), \
    'server_version_num', current_setting('server_version_num')::int, \
    'databases', coalesce((SELECT json_agg(json_build_object('name', datname, 'connectable', datallowconn) ORDER BY datname) \
        FROM pg_database WHERE NOT datistemplate), '[]'::json))";

/// One `SELECT json_build_object(schema, table, count(*))` per table whose
/// data `pg_dump` dumps (ordinary tables and partitions outside the system
/// schemas and extensions), run by `\gexec`: one JSON line per table.
const COUNT_ROWS: &str = "SELECT format('SELECT json_build_object(%L, %L, %L, %L, %L, count(*)) FROM ONLY %I.%I', \
    'schema', n.nspname, 'table', c.relname, 'rows', n.nspname, c.relname) \
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
    WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_' \
    AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
        AND d.objid = c.oid AND d.deptype = 'e') \
    ORDER BY n.nspname, c.relname \\gexec";

/// What the server says about itself.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Inventory {
    /// `server_version`, e.g. `16.4 (Debian 16.4-1.pgdg120+1)`.
    pub server_version: String,
    /// `server_version_num`, e.g. `160004`.
    pub server_version_num: u64,
    /// Every database that is not a template.
    pub databases: Vec<DatabaseInfo>,
}

/// One database of the server.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct DatabaseInfo {
    /// Its name.
    pub name: String,
    /// Whether it accepts connections (`datallowconn`).
    pub connectable: bool,
}

/// The row count of one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRows {
    /// The table's schema.
    pub schema: String,
    /// The table's name.
    pub table: String,
    /// Its rows in the dump's snapshot.
    pub rows: u64,
}

/// Reads the server's version and databases through the dsn's own database.
///
/// Fails when `psql` cannot run or connect (wrong password, unreachable
/// server, the dsn's database missing), or prints something unexpected.
pub(crate) async fn inventory(
    connection: &Connection,
    psql: &Path,
) -> Result<Inventory, PostgresError> {
    let mut command = connection.command(psql);
    command
        .args(PSQL_FLAGS)
        .args(connection.server_argument())
        .arg("-c")
        .arg(INVENTORY);
    let output = connection.start(&command).await?.output().await?;
    if !output.exit.success {
        let message = StderrText::from_bytes(&output.stderr).0;
        return Err(PostgresError::Connect {
            target: "the dsn's database".into(),
            hint: server_hint(&message, connection.password_origin()),
            message,
        });
    }
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(text.trim()).map_err(|e| PostgresError::Unexpected {
        what: format!("the server inventory ({e})"),
        output: text.chars().take(300).collect(),
    })
}

/// The fix for a failing first connection: as [`hint`], and a missing
/// database there is the dsn's own.
fn server_hint(message: &str, password_origin: &str) -> Hint {
    let found = hint(message, password_origin);
    if found.0.is_empty() && message.contains("does not exist") {
        return Hint(
            "name an existing database in the dsn, e.g. postgresql://user@host:5432/postgres"
                .into(),
        );
    }
    found
}

/// A `psql` session in one database, fed on stdin.
pub(crate) struct PsqlSession {
    /// The database (empty: the dsn's own).
    database: String,
    /// The database, as messages name it.
    target: String,
    password_origin: String,
    client: Option<Client>,
    stdin: Writer,
    stdout: Lines<BufReader<Reader>>,
    stderr: Option<tokio::task::JoinHandle<StderrText>>,
    marker: String,
}

impl std::fmt::Debug for PsqlSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PsqlSession")
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

/// Why `psql` stopped answering: its error text and the fix.
#[derive(Debug)]
struct Stopped {
    message: String,
    hint: Hint,
}

impl PsqlSession {
    /// Connects to `database` (`None`: the dsn's own) and returns the
    /// session, in no transaction.
    ///
    /// Fails when `psql` cannot run or connect.
    pub async fn connect(
        connection: &Connection,
        psql: &Path,
        database: Option<&str>,
    ) -> Result<Self, PostgresError> {
        let mut command = connection.command(psql);
        command.args(PSQL_FLAGS);
        match database {
            Some(database) => command.arg(connection.database_argument(database)),
            None => command.args(connection.server_argument()),
        };
        command.stdin_piped();
        let target = database.map_or_else(
            || "the dsn's database".to_owned(),
            |name| format!("database {name:?}"),
        );
        let database = database.unwrap_or_default();
        let mut client = connection.start(&command).await?;
        let (Some(stdin), Some(stdout), Some(stderr)) = (
            client.stdin.take(),
            client.stdout.take(),
            client.stderr.take(),
        ) else {
            return Err(PostgresError::Unexpected {
                what: "psql's pipes".into(),
                output: "not all of stdin, stdout and stderr could be opened".into(),
            });
        };
        let mut session = Self {
            database: database.to_owned(),
            target,
            password_origin: connection.password_origin().to_owned(),
            client: Some(client),
            stdin,
            stdout: BufReader::new(stdout).lines(),
            stderr: Some(collect_stderr(stderr)),
            marker: format!("lifeboat-end-of-answer-{:016x}", rand::random::<u64>()),
        };
        session
            .ask("SELECT 1;")
            .await
            .map_err(|stopped| PostgresError::Connect {
                target: session.target.clone(),
                message: stopped.message,
                hint: stopped.hint,
            })?;
        Ok(session)
    }

    /// Connects to `database`, opens the transaction and returns the
    /// session with the exported snapshot's id.
    ///
    /// Fails when `psql` cannot run or connect, or the server refuses the
    /// transaction.
    pub async fn open(
        connection: &Connection,
        psql: &Path,
        database: &str,
    ) -> Result<(Self, String), PostgresError> {
        let mut session = Self::connect(connection, psql, Some(database)).await?;
        let lines = session
            .query(
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;\nSELECT pg_export_snapshot();",
            )
            .await?;
        let snapshot = match lines.as_slice() {
            [id] if is_snapshot_id(id) => id.clone(),
            _ => {
                return Err(PostgresError::Unexpected {
                    what: format!("the snapshot id of database {database:?}"),
                    output: lines.join("\n"),
                });
            }
        };
        Ok((session, snapshot))
    }

    /// Runs `sql` (statements ending in `;`) and returns the lines printed.
    ///
    /// Fails when the server reports an error (which ends the session).
    pub async fn query(&mut self, sql: &str) -> Result<Vec<String>, PostgresError> {
        self.ask(sql).await.map_err(|stopped| PostgresError::Query {
            target: self.target.clone(),
            message: stopped.message,
            hint: stopped.hint,
        })
    }

    /// Counts the rows of every table the dump holds, sorted by schema and
    /// name, in the session's snapshot.
    ///
    /// Fails when a table cannot be read (permissions) or the session ends.
    pub async fn count_rows(&mut self) -> Result<Vec<TableRows>, PostgresError> {
        let lines = self
            .ask(COUNT_ROWS)
            .await
            .map_err(|stopped| PostgresError::Counts {
                database: self.database.clone(),
                message: stopped.message,
                hint: stopped.hint,
            })?;
        let mut tables = lines
            .iter()
            .map(|line| {
                serde_json::from_str::<TableRows>(line).map_err(|e| PostgresError::Unexpected {
                    what: format!("a row count of database {:?} ({e})", self.database),
                    output: line.chars().take(300).collect(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        tables.sort_by(|a, b| (&a.schema, &a.table).cmp(&(&b.schema, &b.table)));
        Ok(tables)
    }

    /// Ends the transaction and `psql`.
    ///
    /// Fails when `psql` reports an error on the way out.
    pub async fn close(mut self) -> Result<(), PostgresError> {
        let written = self.stdin.write_all(b"COMMIT;\n\\q\n").await;
        let _ = self.stdin.shutdown().await;
        let exit = match self.client.take() {
            Some(client) => client.wait().await.map(|exit| exit.success),
            None => Ok(false),
        };
        match (written, exit?) {
            (Ok(()), true) => Ok(()),
            _ => {
                let stopped = self.stopped().await;
                Err(PostgresError::Counts {
                    database: self.database.clone(),
                    message: format!("ending the transaction: {}", stopped.message),
                    hint: stopped.hint,
                })
            }
        }
    }

    /// Sends `commands` and the marker, and returns the lines printed
    /// before the marker.
    async fn ask(&mut self, commands: &str) -> Result<Vec<String>, Stopped> {
        let batch = format!("{commands}\n\\echo {}\n", self.marker);
        let mut lines = Vec::new();
        if self.stdin.write_all(batch.as_bytes()).await.is_ok() && self.stdin.flush().await.is_ok()
        {
            while let Ok(Some(line)) = self.stdout.next_line().await {
                if line == self.marker {
                    return Ok(lines);
                }
                lines.push(line);
            }
        }
        Err(self.stopped().await)
    }

    /// Waits for the stopped `psql` and returns its error text.
    async fn stopped(&mut self) -> Stopped {
        if let Some(client) = self.client.take() {
            let _ = client.wait().await;
        }
        let stderr = match self.stderr.take() {
            Some(task) => task.await.unwrap_or_default(),
            None => StderrText::default(),
        };
        let message = if stderr.0.is_empty() {
            "psql ended without an error message".to_owned()
        } else {
            stderr.0
        };
        Stopped {
            hint: hint(&message, &self.password_origin),
            message,
        }
    }
}

/// Whether `text` looks like a snapshot id (`00000003-0000001B-1`).
fn is_snapshot_id(text: &str) -> bool {
    !text.is_empty() && text.len() <= 64 && text.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_ids_are_recognised() {
        assert!(is_snapshot_id("00000003-0000001B-1"));
        assert!(!is_snapshot_id(""));
        assert!(!is_snapshot_id("ERROR: x"));
    }

    #[test]
    fn row_counts_parse_from_psql_lines() -> Result<(), serde_json::Error> {
        let line = r#"{"schema" : "s2", "table" : "Odd \"name", "rows" : 2}"#;
        let rows: TableRows = serde_json::from_str(line)?;
        assert_eq!(rows.table, "Odd \"name");
        assert_eq!(rows.rows, 2);
        Ok(())
    }
}
