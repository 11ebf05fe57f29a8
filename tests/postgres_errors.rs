//! PostgreSQL backups that must fail, against a real server: a wrong
//! password, a database that does not exist, a table the role may not read
//! (after another database was already dumped) and a dsn holding a
//! password each fail `lifeboatd run` with an error naming the cause and
//! the fix, and leave the repository's snapshots as they were.
//!
//! Also: the password reaches `psql`, `pg_dump` and `pg_dumpall` only
//! through their environment — never their command lines — and is printed
//! nowhere. Wrapper scripts standing in for the client programs record
//! what each was started with, then exec the real program.

use std::os::unix::fs::PermissionsExt;

use anyhow::{Context, Result, ensure};
use lifeboat_tests::cli::{Installation, objects};
use lifeboat_tests::postgres::PostgresServer;

const PASSWORD: &str = "right-Pa55word";
const WRONG_PASSWORD: &str = "wrong-Pa55word";

#[tokio::test]
async fn bad_input_fails_clearly_and_commits_nothing() -> Result<()> {
    let server = PostgresServer::start().await?;
    let installation = Installation::local()?;
    server.create_role("backup", PASSWORD, "")?;
    server.psql("postgres", "CREATE DATABASE gitea")?;
    server.psql("postgres", "CREATE DATABASE vault")?;
    server.psql(
        "gitea",
        "CREATE TABLE users (id int); INSERT INTO users SELECT generate_series(1, 100); \
         GRANT SELECT ON users TO backup",
    )?;
    // A table the backup role may not read.
    server.psql(
        "vault",
        "CREATE TABLE locked (id int); INSERT INTO locked VALUES (1)",
    )?;
    std::fs::write(installation.path("right.pass"), format!("{PASSWORD}\n"))?;
    std::fs::write(installation.path("wrong.pass"), WRONG_PASSWORD)?;
    let dsn = server.dsn("backup", "postgres");
    let job = |extra: &str| {
        format!(
            r#"{{ kind = "postgres", dsn = {dsn:?}, globals = "without-role-passwords", {extra} }}"#
        )
    };
    let with_password = format!(
        "postgresql://backup:{PASSWORD}@127.0.0.1:{}/postgres",
        server.port()
    );
    installation.write_config(
        &[],
        &[
            (
                "good",
                &job(r#"databases = ["gitea"], password_file = "right.pass""#),
            ),
            (
                "wrong-password",
                &job(r#"databases = ["gitea"], password_file = "wrong.pass""#),
            ),
            (
                "unknown-database",
                &job(r#"databases = ["gitea", "nosuch"], password_file = "right.pass""#),
            ),
            (
                "denied",
                &job(r#"databases = ["gitea", "vault"], password_file = "right.pass""#),
            ),
            (
                "password-in-dsn",
                &format!(r#"{{ kind = "postgres", dsn = {with_password:?} }}"#),
            ),
        ],
    )?;
    installation
        .backup("good")
        .with_context(|| server.log_tail())?;
    ensure!(
        snapshot_count(&installation)? == 1,
        "the good run made one snapshot"
    );

    let cases: [(&str, &[&str]); 4] = [
        (
            "wrong-password",
            &[
                "password authentication failed for user \"backup\"",
                "check the password in password_file",
                "wrong.pass",
            ],
        ),
        (
            "unknown-database",
            &[
                "database \"nosuch\" does not exist",
                "fix `databases` in the job",
            ],
        ),
        (
            "denied",
            &[
                "database \"vault\" failed",
                "permission denied for table locked",
                "pg_read_all_data",
            ],
        ),
        (
            "password-in-dsn",
            &["dsn holds a password", "password_file or password_env"],
        ),
    ];
    for (job, phrases) in cases {
        let outcome = installation.start_backup(job)?.wait()?.failed()?;
        for phrase in phrases {
            ensure!(
                outcome.stderr.contains(phrase),
                "job {job}: the error says {phrase:?}\n{}",
                outcome.output()
            );
        }
        for secret in [PASSWORD, WRONG_PASSWORD] {
            ensure!(
                !outcome.output().contains(secret),
                "job {job}: a password is printed\n{}",
                outcome.output()
            );
        }
        ensure!(
            snapshot_count(&installation)? == 1,
            "job {job} failed without writing a snapshot"
        );
    }
    Ok(())
}

#[tokio::test]
async fn the_password_reaches_the_clients_only_through_their_environment() -> Result<()> {
    let server = PostgresServer::start().await?;
    let installation = Installation::local()?;
    server.create_role("backup", PASSWORD, "SUPERUSER")?;
    server.psql("postgres", "CREATE DATABASE gitea")?;
    server.psql(
        "gitea",
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2)",
    )?;
    let wrappers = installation.path("bin");
    let log = installation.path("started.log");
    std::fs::create_dir_all(&wrappers)?;
    for program in ["pg_dump", "pg_dumpall", "psql"] {
        let script = format!(
            "#!/bin/sh\nprintf '%s PGPASSWORD=%s ARGS=%s\\n' {program} \"${{PGPASSWORD:+set}}\" \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
            log.display(),
            server.bin(program).display()
        );
        let path = wrappers.join(program);
        std::fs::write(&path, script)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    // The password comes from lifeboatd's environment this time.
    let source = format!(
        r#"{{ kind = "postgres", dsn = {:?}, databases = ["gitea"], password_env = "LB_TEST_PG_PASSWORD", pg_dump = {:?} }}"#,
        server.dsn("backup", "postgres"),
        wrappers.join("pg_dump").display().to_string()
    );
    installation.write_config(&[], &[("db", &source)])?;
    let mut command = installation.command("lifeboatd")?;
    command
        .args(["run", "--config"])
        .arg(installation.config())
        .args(["db", "--json"])
        .env("LB_TEST_PG_PASSWORD", PASSWORD);
    let outcome = lifeboat_tests::cli::run(&mut command)?.ok()?;
    ensure!(
        !outcome.output().contains(PASSWORD),
        "lifeboatd printed the password\n{}",
        outcome.output()
    );

    let started = std::fs::read_to_string(&log)?;
    for program in ["pg_dump", "pg_dumpall", "psql"] {
        ensure!(
            started
                .lines()
                .any(|line| line.starts_with(&format!("{program} "))),
            "{program} was run:\n{started}"
        );
    }
    for line in started.lines() {
        ensure!(
            !line.contains(PASSWORD),
            "a command line holds the password: {line}"
        );
        ensure!(
            line.contains("PGPASSWORD=set"),
            "the password is in every client's environment: {line}"
        );
    }
    ensure!(
        started.lines().any(|line| line.starts_with("pg_dump ")
            && line.contains("--format=custom")
            && line.contains("--snapshot=")),
        "pg_dump dumps in the exported snapshot:\n{started}"
    );
    Ok(())
}

/// The snapshots in the repository, by listing and by object.
fn snapshot_count(installation: &Installation) -> Result<usize> {
    let key = installation.service_key().display().to_string();
    let listed = installation
        .lifeboat_repo("snapshots", &["-i", key.as_str(), "--json"])?
        .ok()?
        .json()?
        .as_array()
        .map(Vec::len)
        .context("`lifeboat snapshots --json` printed no list")?;
    let stored = objects(&installation.repo_dir()?, "snapshots")?.len();
    ensure!(
        listed == stored,
        "{listed} snapshots listed but {stored} snapshot objects stored"
    );
    Ok(listed)
}
