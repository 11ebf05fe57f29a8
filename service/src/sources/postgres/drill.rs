//! Drilling PostgreSQL: restore every dump of the snapshot into a scratch
//! database on the given server — or, for a snapshot dumped inside a
//! container, in that container (which has the same extensions), unless
//! another is named — compare each table's rows with the
//! recorded counts, and drop the scratch database. Globals are not applied
//! (they would change the server's roles) but checked as a restore checks
//! them before running them; objects belong to the drill's role
//! (`--no-owner`).

use crate::drill::JobRun;
use crate::drill::files::restore_all;
use crate::sources::postgres::GLOBALS_FILE;
use crate::sources::postgres::restore::{
    DumpOptions, PgTarget, PostgresRestoreError, RestoreInto, check_globals, compare_counts,
    stored_databases,
};

/// Restores and compares every database.
pub(crate) async fn verify(run: &mut JobRun<'_>) {
    let settings = run.settings.clone();
    let recorded = run.entry.snapshot.metadata["container"]
        .as_str()
        .map(str::to_owned);
    let container = settings.pg_container.clone().or(recorded);
    let pg_bin = settings.pg_bin.as_deref();
    let target = match (&settings.pg_url, &container) {
        (Some(url), _) => {
            run.step("connect settings", PgTarget::new(url, pg_bin))
                .await
        }
        (None, Some(container)) => {
            run.step(
                &format!("reach container {container}"),
                PgTarget::in_container(&settings.docker_socket, container, "", pg_bin),
            )
            .await
        }
        (None, None) => {
            run.fail(
                "not verified: a postgres drill needs a server to restore into; give --pg-url \
                 (a libpq connection string of a role that may create databases) and \
                 PGPASSWORD, or --pg-container",
            );
            return;
        }
    };
    let Some(target) = target else {
        return;
    };
    let (reader, root) = (run.reader, run.entry.snapshot.root);
    let files = run.scratch.join("dumps");
    if restore_all(run, "restore dumps", &files).await.is_none() {
        return;
    }
    let globals = files.join(GLOBALS_FILE);
    if globals.exists() {
        run.step("check globals.sql", async { check_globals(&globals) })
            .await;
    }
    let databases = run
        .step("read row counts", async {
            stored_databases(reader, &reader.read_tree(&root).await?).await
        })
        .await;
    let Some(databases) = databases else {
        return;
    };
    if databases.is_empty() {
        run.fail("the snapshot holds no database dump");
    }
    let suffix = format!("{:08x}", rand::random::<u32>());
    for (at, stored) in databases.iter().enumerate() {
        let name = &stored.database;
        let scratch = format!("lifeboat_drill_{suffix}_{at}");
        let dump = files.join(&stored.dump);
        let loaded = run
            .step(&format!("restore {name}"), async {
                target.create_database(&scratch).await?;
                let options = DumpOptions { no_owner: true };
                target
                    .restore_dump(&dump, &RestoreInto::Existing(scratch.clone()), options)
                    .await?;
                target.count_rows(&scratch).await
            })
            .await;
        if let Some(counts) = loaded {
            let problems = compare_counts(name, &stored.tables, &counts);
            run.note(format!(
                "{} tables, {} rows",
                counts.len(),
                counts.iter().map(|t| t.rows).sum::<u64>()
            ));
            run.fail_on(
                &format!("database {name} differs from the backup"),
                &problems,
            );
        }
        run.step(&format!("drop scratch database of {name}"), async {
            target.drop_database(&scratch).await?;
            Ok::<_, PostgresRestoreError>(())
        })
        .await;
    }
}
