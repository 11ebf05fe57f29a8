//! Invariant 3 of DESIGN.md under SIGKILL: `lifeboatd run` killed part way
//! through a backup leaves a repository that checks clean (packs in no
//! index are garbage for prune, not damage), and the next backup completes
//! and reuses what was uploaded and indexed (an index object is written
//! every 8 packs), storing less than a full backup.
//!
//! The repository has 1 MiB packs so a backup writes many. Each round adds
//! a folder of fresh random data to the source and kills the backup at a
//! point read off the repository itself — after the first packs (none
//! indexed), after the first index object, after the second — so the kill
//! points do not depend on the machine's speed. At the end the latest
//! snapshot is restored and compared with the source.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use lifeboat_tests::cli::{
    Installation, Rng, assert_same_tree, describe, objects, summary, write_file,
};

const SOURCE: &str = r#"{ kind = "directory", paths = ["src"] }"#;
const MIB: u64 = 1024 * 1024;
/// Random data per round: 24 files of 1 MiB, so about 24 packs: two index
/// objects are written well before the last packs.
const FILES_PER_ROUND: u64 = 24;
const FILE_SIZE: u64 = MIB;
/// Packs per index object written during a backup (the writer's constant).
const PACKS_PER_INDEX: u64 = 8;
/// How long a backup may take to reach a kill point.
const KILL_POINT_TIMEOUT: Duration = Duration::from_secs(120);

/// Where to kill a backup, read off the repository.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// This many new packs are stored (and, at that moment, no new index).
    Packs(usize),
    /// This many new index objects are stored.
    Indexes(usize),
}

#[test]
fn killed_backups_leave_a_clean_repository_and_are_resumed() -> Result<()> {
    let installation = Installation::local()?;
    let repo = installation.repo_dir()?;
    let (restore_key, service_key) = (installation.restore_key(), installation.service_key());
    let mut init = vec!["--pack-size-mib".to_owned(), "1".to_owned()];
    for (flag, path) in [
        ("--restore-identity", &restore_key),
        ("--service-identity", &service_key),
    ] {
        init.extend([flag.to_owned(), path.display().to_string()]);
    }
    installation.lifeboat_repo("init", &init)?.ok()?;
    installation.write_config(&[], &[("bulk", SOURCE)])?;
    let src = installation.path("src");
    std::fs::create_dir_all(&src)?;

    let kill_points = [
        KillPoint::Packs(2),
        KillPoint::Indexes(1),
        KillPoint::Indexes(2),
    ];
    for (round, kill_point) in kill_points.into_iter().enumerate() {
        let context = || format!("round {round}, killed at {kill_point:?}");
        let mut rng = Rng::new(0x5eed_0100 + round as u64);
        for file in 0..FILES_PER_ROUND {
            let path = src.join(format!("round-{round}/file-{file:02}.bin"));
            write_file(&path, &rng.bytes(FILE_SIZE as usize))?;
        }
        let indexes_at_kill =
            kill_backup(&installation, &repo, kill_point).with_context(context)?;
        println!(
            "{}: {} packs and {} index objects stored",
            context(),
            objects(&repo, "data")?.len(),
            objects(&repo, "index")?.len()
        );

        let report = installation
            .check(&restore_key, &["--read-data"])?
            .ok()
            .with_context(context)?
            .json()?;
        if matches!(kill_point, KillPoint::Packs(_)) {
            ensure!(
                report["unindexed_packs"].as_u64() >= Some(1),
                "{}: the killed backup's packs are stored but in no index: {report:#}",
                context()
            );
        }

        let resumed = installation.backup("bulk").with_context(context)?;
        let round_bytes = FILES_PER_ROUND * FILE_SIZE;
        // Earlier rounds' files are cached. This round's may be too, when
        // the kill came after the cache was saved: their blobs are indexed.
        ensure!(
            summary(&resumed, "bytes_read")? <= round_bytes,
            "{}: the resumed backup reads no file of earlier rounds: {resumed:#}",
            context()
        );
        // Every indexed pack holds at least half a MiB of this round's data
        // (a pack is sealed under its size only when half full).
        let reused = indexes_at_kill * PACKS_PER_INDEX * MIB / 2;
        let stored = summary(&resumed, "bytes_stored")?;
        println!("{}: the resumed backup stored {stored} bytes", context());
        let limit = (round_bytes + round_bytes / 50).saturating_sub(reused);
        ensure!(
            stored <= limit,
            "{}: the resumed backup stores at most {limit} bytes ({reused} reused), not {stored}: {resumed:#}",
            context()
        );
        if indexes_at_kill > 0 {
            ensure!(
                stored < round_bytes,
                "{}: the resumed backup stores less than a full one",
                context()
            );
        }
    }

    let target = installation.path("restored");
    installation
        .restore(&restore_key, &format!("latest:{}", src.display()), &target)?
        .ok()?;
    assert_same_tree(&describe(&src)?, &describe(&target)?)?;
    installation.check(&service_key, &["--read-data"])?.ok()?;
    Ok(())
}

/// Starts a backup, SIGKILLs it at `kill_point`, and returns how many new
/// index objects were stored when it was killed.
fn kill_backup(installation: &Installation, repo: &Path, kill_point: KillPoint) -> Result<u64> {
    let packs_before = objects(repo, "data")?.len();
    let indexes_before = objects(repo, "index")?.len();
    let snapshots_before = objects(repo, "snapshots")?.len();
    let mut backup = installation.start_backup("bulk")?;
    let deadline = Instant::now() + KILL_POINT_TIMEOUT;
    let new_indexes = loop {
        let packs = objects(repo, "data")?.len() - packs_before;
        let indexes = objects(repo, "index")?.len() - indexes_before;
        let reached = match kill_point {
            KillPoint::Packs(n) => packs >= n,
            KillPoint::Indexes(n) => indexes >= n,
        };
        if reached {
            break indexes;
        }
        if !backup.is_running()? {
            let outcome = backup.wait()?;
            bail!(
                "the backup ended before {kill_point:?} ({packs} new packs, {indexes} new indexes)\n{}",
                outcome.output()
            );
        }
        if Instant::now() > deadline {
            bail!("the backup did not reach {kill_point:?} within {KILL_POINT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    backup.kill()?;
    ensure!(
        objects(repo, "snapshots")?.len() == snapshots_before,
        "a killed backup wrote no snapshot"
    );
    Ok(new_indexes as u64)
}
