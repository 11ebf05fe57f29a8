//! PostgreSQL backups as an operator runs them, against a real server:
//! `lifeboatd run` dumps two databases (several schemas and tables, a
//! partitioned table, an awkward table name, binary data) and the globals,
//! `lifeboat restore` brings the files back, `pg_restore` loads each dump
//! into a new database on the same server, and the restored tables must
//! hold exactly the rows the backup recorded — which are also the rows
//! that were inserted. The snapshot metadata (readable by the service key)
//! must carry the totals and no table or database name.
//!
//! A second test dumps every database while a writer commits rows without
//! pause: the recorded counts must still equal the restored dump's, which
//! holds only because the counts and `pg_dump` share one exported snapshot.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use lifeboat_tests::cli::Installation;
use lifeboat_tests::postgres::PostgresServer;
use serde_json::Value;

/// The backup role's password.
const BACKUP_PASSWORD: &str = "b4ckup pa:ss'word";

/// Rows by (schema, table).
type Counts = BTreeMap<(String, String), u64>;

#[tokio::test]
async fn two_databases_dump_restore_and_match_their_row_counts() -> Result<()> {
    let server = PostgresServer::start().await?;
    let installation = Installation::local()?;
    let expected = fill_databases(&server)?;
    server.create_role("backup", BACKUP_PASSWORD, "")?;
    server.psql("postgres", "GRANT pg_read_all_data TO backup")?;
    std::fs::write(installation.path("pg.pass"), format!("{BACKUP_PASSWORD}\n"))?;
    let source = format!(
        r#"{{ kind = "postgres", dsn = {:?}, databases = ["gitea", "vaultwarden"], password_file = "pg.pass", pg_dump = {:?}, globals = "without-role-passwords" }}"#,
        server.dsn("backup", "postgres"),
        server.bin("pg_dump").display().to_string(),
    );
    installation.write_config(&[], &[("databases", &source)])?;

    let report = installation
        .backup("databases")
        .with_context(|| server.log_tail())?;
    ensure!(
        report["warnings"].as_array().is_some_and(Vec::is_empty),
        "a clean dump has no warnings: {report:#}"
    );

    // The metadata: totals and versions, no names.
    let metadata = installation.latest_metadata("databases")?;
    let tables: usize = expected.values().map(BTreeMap::len).sum();
    let rows: u64 = expected.values().flat_map(BTreeMap::values).sum();
    ensure!(
        metadata["database_count"] == 2
            && metadata["tables"] == tables as u64
            && metadata["rows"] == rows
            && metadata["server_version_num"].as_u64().unwrap_or(0) >= 150000
            && metadata["databases"].as_array().map(Vec::len) == Some(2),
        "metadata has {tables} tables and {rows} rows in 2 databases: {metadata:#}"
    );
    let shown = metadata.to_string();
    for name in [
        "gitea",
        "vaultwarden",
        "issues",
        "comments",
        "Odd",
        "ciphers",
    ] {
        ensure!(
            !shown.contains(name),
            "the service-readable metadata names {name:?}: {shown}"
        );
    }

    // Restore the files, then each dump into a new database.
    let target = installation.path("restored");
    installation
        .restore(&installation.restore_key(), "latest:databases", &target)?
        .ok()?;
    let globals = std::fs::read_to_string(target.join("globals.sql"))?;
    ensure!(
        globals.contains("CREATE ROLE backup"),
        "globals.sql holds the roles:\n{globals:.2000}"
    );
    ensure!(
        !globals.contains("SCRAM-SHA-256$"),
        "without-role-passwords leaves the password hashes out"
    );
    for (database, inserted) in &expected {
        let recorded = recorded_counts(&target, database)?;
        ensure!(
            &recorded == inserted,
            "{database}: recorded counts {recorded:?} differ from the rows inserted {inserted:?}"
        );
        let restored = restore_dump(&server, &target, database)?;
        ensure!(
            restored == recorded,
            "{database}: restored counts {restored:?} differ from the recorded {recorded:?}"
        );
    }
    // The binary column survived byte for byte.
    let digest = "SELECT md5(string_agg(md5(secret), '' ORDER BY id)) FROM ciphers";
    ensure!(
        server.psql("vaultwarden", digest)? == server.psql("restored_vaultwarden", digest)?,
        "vaultwarden.ciphers restored with different bytes"
    );
    Ok(())
}

#[tokio::test]
async fn counts_match_the_dump_while_a_writer_commits() -> Result<()> {
    let server = PostgresServer::start().await?;
    let installation = Installation::local()?;
    server.psql("postgres", "CREATE DATABASE busy")?;
    server.psql(
        "busy",
        "CREATE TABLE ticks (n bigint); \
         CREATE TABLE bulk AS SELECT g AS id, repeat(md5(g::text), 8) AS payload \
           FROM generate_series(1, 150000) g",
    )?;
    std::fs::write(installation.path("pg.pass"), server.superuser_password())?;
    // Every database (no `databases`), as the superuser, with role passwords.
    let source = format!(
        r#"{{ kind = "postgres", dsn = {:?}, password_file = "pg.pass", pg_dump = {:?} }}"#,
        server.superuser_dsn("postgres"),
        server.bin("pg_dump").display().to_string(),
    );
    installation.write_config(&[], &[("all", &source)])?;

    let mut writer = server.psql_in_background(
        "busy",
        "DO $$ BEGIN FOR i IN 1..50000000 LOOP INSERT INTO ticks VALUES (i); COMMIT; PERFORM pg_sleep(0.001); END LOOP; END $$",
    )?;
    wait_for_rows(&server, "busy", "ticks", 200).await?;
    let report = installation
        .backup("all")
        .with_context(|| server.log_tail())?;
    ensure!(writer.is_running()?, "the writer ran through the backup");
    let after: u64 = server
        .psql("busy", "SELECT count(*) FROM ticks")?
        .trim()
        .parse()?;
    drop(writer);

    let target = installation.path("restored");
    installation
        .restore(&installation.restore_key(), "latest:all", &target)?
        .ok()?;
    for name in ["busy.dump", "postgres.dump", "globals.sql"] {
        ensure!(
            target.join(name).is_file(),
            "every database is dumped: {name} missing; report {report:#}"
        );
    }
    let globals = std::fs::read_to_string(target.join("globals.sql"))?;
    ensure!(
        globals.contains("SCRAM-SHA-256$"),
        "globals = \"all\" keeps the role password hashes"
    );
    let recorded = recorded_counts(&target, "busy")?;
    let ticks = recorded
        .get(&("public".to_owned(), "ticks".to_owned()))
        .copied()
        .context("no count for public.ticks")?;
    ensure!(
        ticks >= 200 && ticks < after,
        "the count ({ticks}) was taken while the writer ran (≥ 200 before, {after} after)"
    );
    let restored = restore_dump(&server, &target, "busy")?;
    ensure!(
        restored == recorded,
        "the dump and the counts saw different data: restored {restored:?}, recorded {recorded:?}"
    );
    Ok(())
}

/// Creates `gitea` and `vaultwarden` with tables and rows; returns the
/// rows inserted per database and table.
fn fill_databases(server: &PostgresServer) -> Result<BTreeMap<String, Counts>> {
    server.psql("postgres", "CREATE DATABASE gitea")?;
    server.psql("postgres", "CREATE DATABASE vaultwarden")?;
    server.psql(
        "gitea",
        "CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL); \
         INSERT INTO users (name) SELECT 'user' || g FROM generate_series(1, 500) g; \
         CREATE TABLE repos (id serial PRIMARY KEY, owner int REFERENCES users(id), name text); \
         INSERT INTO repos (owner, name) SELECT 1 + g % 500, 'repo' || g FROM generate_series(1, 1200) g; \
         CREATE SCHEMA issues; \
         CREATE TABLE issues.comments (id bigserial PRIMARY KEY, repo int, body text); \
         INSERT INTO issues.comments (repo, body) \
           SELECT 1 + g % 1200, repeat('comment ' || g || ' ', 20) FROM generate_series(1, 3000) g; \
         CREATE TABLE empty_table (x int)",
    )?;
    server.psql(
        "vaultwarden",
        "CREATE TABLE ciphers (id int PRIMARY KEY, secret bytea); \
         INSERT INTO ciphers SELECT g, decode(md5(g::text) || md5((g * 7)::text), 'hex') \
           FROM generate_series(1, 800) g; \
         CREATE TABLE events (at int, what text) PARTITION BY RANGE (at); \
         CREATE TABLE events_old PARTITION OF events FOR VALUES FROM (0) TO (1000); \
         CREATE TABLE events_new PARTITION OF events FOR VALUES FROM (1000) TO (5000); \
         INSERT INTO events SELECT g, 'e' FROM generate_series(0, 2499) g; \
         CREATE TABLE \"Odd \"\"name\" (v text); INSERT INTO \"Odd \"\"name\" VALUES ('a'), ('b'), ('c')",
    )?;
    let table = |schema: &str, name: &str, rows: u64| ((schema.to_owned(), name.to_owned()), rows);
    Ok(BTreeMap::from([
        (
            "gitea".to_owned(),
            BTreeMap::from([
                table("issues", "comments", 3000),
                table("public", "empty_table", 0),
                table("public", "repos", 1200),
                table("public", "users", 500),
            ]),
        ),
        (
            "vaultwarden".to_owned(),
            BTreeMap::from([
                table("public", "Odd \"name", 3),
                table("public", "ciphers", 800),
                table("public", "events_new", 1500),
                table("public", "events_old", 1000),
            ]),
        ),
    ]))
}

/// The counts `<db>.rowcounts.json` recorded.
fn recorded_counts(target: &Path, database: &str) -> Result<Counts> {
    let path = target.join(format!("{database}.rowcounts.json"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let counts: Value = serde_json::from_str(&text)?;
    ensure!(
        counts["database"] == database && counts["dump"] == format!("{database}.dump"),
        "{} names its database and dump: {counts:#}",
        path.display()
    );
    let mut tables = Counts::new();
    for table in counts["tables"].as_array().context("no tables list")? {
        let field = |name: &str| {
            table[name]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("no {name} in {table}"))
        };
        let rows = table["rows"].as_u64().context("no rows")?;
        tables.insert((field("schema")?, field("table")?), rows);
    }
    ensure!(
        counts["total_rows"] == tables.values().sum::<u64>(),
        "total_rows is the sum of the tables' rows: {counts:#}"
    );
    Ok(tables)
}

/// Loads `<db>.dump` into the new database `restored_<db>` with
/// `pg_restore` and returns its row counts.
fn restore_dump(server: &PostgresServer, target: &Path, database: &str) -> Result<Counts> {
    let restored = format!("restored_{database}");
    server.psql("postgres", &format!("CREATE DATABASE {restored}"))?;
    let output = server
        .client("pg_restore")
        .args(["--no-owner", "--exit-on-error", "--single-transaction"])
        .arg(format!("--dbname={}", server.superuser_dsn(&restored)))
        .arg(target.join(format!("{database}.dump")))
        .output()?;
    ensure!(
        output.status.success(),
        "pg_restore of {database} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    server.row_counts(&restored)
}

/// Waits until `table` holds at least `rows` rows.
async fn wait_for_rows(
    server: &PostgresServer,
    database: &str,
    table: &str,
    rows: u64,
) -> Result<()> {
    for _ in 0..300 {
        let count: u64 = server
            .psql(database, &format!("SELECT count(*) FROM {table}"))?
            .trim()
            .parse()?;
        if count >= rows {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("{table} never reached {rows} rows: is the writer running?")
}
