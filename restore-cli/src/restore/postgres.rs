//! PostgreSQL: without `--pg-url` or `--pg-container`, the dump files into
//! `--target`; with either, `globals.sql` through psql first, then each
//! selected database with `pg_restore`, created (`--create`) or into the
//! existing database of the same name — in a container, psql and
//! pg_restore run inside it and read the files on their stdin.

use std::path::{Path, PathBuf};

use clap::Args;
use lifeboat::restore::files::{RestoreOptions, restore};
use lifeboat::sources::postgres::GLOBALS_FILE;
use lifeboat::sources::postgres::restore::{
    DumpOptions, PgTarget, RestoreInto, has_globals, stored_databases,
};

use serde::Serialize;

use super::Restoring;

/// What `--json` prints of a restore into a server, beside the snapshot
/// and kind.
#[derive(Serialize)]
struct PostgresRestored<'a> {
    /// Whether `globals.sql` was applied.
    globals: bool,
    databases: Vec<DatabaseRestored<'a>>,
    warnings: &'a [String],
    seconds: f64,
}

/// One database restored, with the counts recorded at backup.
#[derive(Serialize)]
struct DatabaseRestored<'a> {
    database: &'a str,
    tables: usize,
    rows: u64,
}

/// Flags for PostgreSQL.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("pg_server").args(["pg_url", "pg_container"])))]
pub struct PostgresArgs {
    /// PostgreSQL: restore into this server (a libpq connection string
    /// without a password, e.g. postgresql://postgres@db:5432/postgres; the
    /// password from PGPASSWORD or ~/.pgpass). Without it the dump files
    /// are written to --target.
    #[arg(long, env = "LIFEBOAT_PG_URL")]
    pg_url: Option<String>,
    /// PostgreSQL: restore into the server running in this Docker
    /// container (e.g. gitea_postgres), with its own psql and pg_restore,
    /// as its POSTGRES_USER over its socket.
    #[arg(long, value_name = "NAME")]
    pg_container: Option<String>,
    /// PostgreSQL: the Docker Engine's socket, for --pg-container.
    #[arg(long, value_name = "PATH", default_value = lifeboat::docker::DEFAULT_SOCKET)]
    docker_socket: PathBuf,
    /// PostgreSQL: the folder of psql and pg_restore (default: PATH; in a
    /// container, a folder inside it).
    #[arg(long)]
    pg_bin: Option<PathBuf>,
    /// PostgreSQL: create each database (pg_restore --create); without it,
    /// each is restored into the existing database of the same name.
    #[arg(long, requires = "pg_server")]
    create: bool,
    /// PostgreSQL: only this database (repeatable; default: all).
    #[arg(long = "database", value_name = "NAME", requires = "pg_server")]
    databases: Vec<String>,
    /// PostgreSQL: do not apply globals.sql (roles, tablespaces).
    #[arg(long, requires = "pg_server")]
    no_globals: bool,
    /// PostgreSQL: objects belong to the connecting role (no owners, no grants).
    #[arg(long, requires = "pg_server")]
    no_owner: bool,
}

impl PostgresArgs {
    /// Every database of a snapshot into the server at `url`, globals
    /// first, each created when `create`; the clients from `pg_bin` (else
    /// PATH).
    pub fn into_server(url: &str, create: bool, pg_bin: Option<&Path>) -> Self {
        Self {
            pg_url: Some(url.to_owned()),
            pg_container: None,
            docker_socket: lifeboat::docker::default_socket(),
            pg_bin: pg_bin.map(Path::to_owned),
            create,
            databases: Vec::new(),
            no_globals: false,
            no_owner: false,
        }
    }

    /// Whether any of these flags was given (the others need `--pg-url`
    /// or `--pg-container`).
    pub fn given(&self) -> bool {
        self.pg_url.is_some() || self.pg_container.is_some() || self.pg_bin.is_some()
    }

    /// The server to restore into, when one is named.
    async fn server(&self) -> anyhow::Result<Option<PgTarget>> {
        let pg_bin = self.pg_bin.as_deref();
        Ok(match (&self.pg_url, &self.pg_container) {
            (Some(url), _) => Some(PgTarget::new(url, pg_bin).await?),
            (None, Some(container)) => {
                Some(PgTarget::in_container(&self.docker_socket, container, "", pg_bin).await?)
            }
            (None, None) => None,
        })
    }
}

/// Restores a postgres snapshot.
pub async fn run(restoring: &Restoring<'_>, args: &PostgresArgs) -> anyhow::Result<()> {
    let Some(server) = args.server().await? else {
        return super::files::run(restoring, "").await;
    };
    let (reader, entry) = (restoring.reader, restoring.entry);
    let tree = reader.read_tree(&entry.snapshot.root).await?;
    let stored = stored_databases(reader, &tree).await?;
    for wanted in &args.databases {
        if !stored.iter().any(|d| &d.database == wanted) {
            anyhow::bail!(
                "snapshot {} holds no database {wanted:?}; it holds: {}",
                entry.id.short(),
                stored
                    .iter()
                    .map(|d| d.database.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let selected: Vec<_> = stored
        .iter()
        .filter(|d| args.databases.is_empty() || args.databases.contains(&d.database))
        .collect();
    let staging_dir;
    let staging = match restoring.target {
        Some(target) => {
            let used = std::fs::read_dir(target).is_ok_and(|mut l| l.next().is_some());
            if used && !restoring.force {
                anyhow::bail!(
                    "{} is not empty; stage the dumps in an empty or new folder, or pass --force",
                    target.display()
                );
            }
            target.to_owned()
        }
        None => {
            staging_dir = tempfile::tempdir()?;
            staging_dir.path().to_owned()
        }
    };
    let mut names: Vec<&str> = selected.iter().map(|d| d.dump.as_str()).collect();
    let globals = !args.no_globals && has_globals(&tree);
    if globals {
        names.push(GLOBALS_FILE);
    }
    let started = std::time::Instant::now();
    for name in &names {
        // The folder was checked above; each file joins the ones before.
        let options = RestoreOptions {
            force: true,
            ..RestoreOptions::default()
        };
        super::with_progress(name, |progress| {
            restore(
                reader,
                entry.snapshot.root,
                name,
                &staging,
                &options,
                progress,
            )
        })
        .await?;
    }
    let mut warnings = Vec::new();
    if globals {
        warnings.extend(server.apply_globals(&staging.join(GLOBALS_FILE)).await?);
    }
    let mut restored = Vec::new();
    for database in &selected {
        let name = &database.database;
        eprintln!("pg_restore {name} …");
        let into = if args.create {
            RestoreInto::Create
        } else {
            RestoreInto::Existing(name.clone())
        };
        let options = DumpOptions {
            no_owner: args.no_owner,
        };
        server
            .restore_dump(&staging.join(&database.dump), &into, options)
            .await?;
        restored.push(DatabaseRestored {
            database: name,
            tables: database.tables.len(),
            rows: database.total_rows,
        });
    }
    let seconds = started.elapsed().as_secs_f64();
    let value = PostgresRestored {
        globals,
        databases: restored,
        warnings: &warnings,
        seconds,
    };
    restoring.print(value, || {
        let mut lines = vec![format!(
            "restored {} database(s) of snapshot {} in {seconds:.1} s{}",
            selected.len(),
            entry.id.short(),
            if globals { ", globals first" } else { "" }
        )];
        for database in &selected {
            lines.push(format!(
                "  {}: {} tables, {} rows recorded at backup",
                database.database,
                database.tables.len(),
                database.total_rows
            ));
        }
        for warning in &warnings {
            lines.push(format!("  warning: {warning}"));
        }
        lines.join("\n")
    })
}
