//! Backups and prunes at the same time (issue "lossy stores"): one loop
//! backs up a folder whose contents flip between two versions, so that
//! every backup reuses the blobs of packs that the newest kept snapshot no
//! longer uses; another loop forgets all but the newest snapshot and prunes
//! with a grace period of 0–2 s, far shorter than the rule "longer than the
//! longest backup" allows. For a minute: no backup fails, `check
//! --read-data` is clean afterwards, and every snapshot left restores to
//! one of the two versions exactly.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use lifeboat_tests::cli::{Installation, Rng, TreeDescription, describe, write_file};

const SOURCE: &str = r#"{ kind = "directory", paths = ["src"] }"#;
/// How long both loops run.
const RUN_FOR: Duration = Duration::from_secs(60);
const FILES: usize = 24;
const FILE_SIZE: usize = 256 * 1024;

/// Writes version `flip` (0 or 1) of the source folder.
fn write_version(root: &Path, versions: &[Vec<Vec<u8>>; 2], flip: usize) -> Result<()> {
    for (i, data) in versions[flip].iter().enumerate() {
        write_file(&root.join(format!("file-{i:02}")), data)?;
    }
    Ok(())
}

#[test]
fn backups_never_fail_and_lose_nothing_while_prunes_run() -> Result<()> {
    let installation = Arc::new(Installation::local()?);
    let mut rng = Rng::new(2026);
    let versions = [0, 1].map(|_| (0..FILES).map(|_| rng.bytes(FILE_SIZE)).collect::<Vec<_>>());
    let src = installation.path("src");
    write_version(&src, &versions, 0)?;
    installation.write_config(&[], &[("home", SOURCE)])?;
    installation.backup("home")?;
    let expected: Vec<_> = [0, 1]
        .into_iter()
        .map(|flip| {
            let dir = installation.path(format!("version-{flip}"));
            write_version(&dir, &versions, flip)?;
            describe(&dir)
        })
        .collect::<Result<_>>()?;

    let stop = Arc::new(AtomicBool::new(false));
    let pruner = {
        let (installation, stop) = (installation.clone(), stop.clone());
        std::thread::spawn(move || -> Result<usize> {
            let key = installation.service_key().display().to_string();
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) {
                installation
                    .lifeboat_repo("forget", &["-i", key.as_str(), "--keep-last", "1"])?
                    .ok()?;
                let grace = format!("{}s", rounds % 3);
                installation
                    .lifeboat_repo("prune", &["-i", key.as_str(), "--grace", grace.as_str()])?
                    .ok()?;
                rounds += 1;
            }
            Ok(rounds)
        })
    };

    let started = Instant::now();
    let (mut backups, mut failures) = (0, Vec::new());
    while started.elapsed() < RUN_FOR {
        backups += 1;
        write_version(&src, &versions, backups % 2)?;
        let outcome = installation.start_backup("home")?.wait()?;
        if !outcome.status.success() {
            failures.push(outcome.output());
        }
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = pruner
        .join()
        .map_err(|_| anyhow::anyhow!("the prune loop panicked"))??;
    ensure!(
        failures.is_empty(),
        "{} of {backups} backups failed next to {rounds} prune rounds; the first:\n{}",
        failures.len(),
        failures.first().map_or("", String::as_str)
    );
    ensure!(rounds >= 5, "the prune loop ran only {rounds} rounds");

    let restore_key = installation.restore_key();
    installation.check(&restore_key, &["--read-data"])?.ok()?;
    let key = restore_key.display().to_string();
    let listed = installation
        .lifeboat_repo("snapshots", &["-i", key.as_str(), "--json"])?
        .ok()?
        .json()?;
    let snapshots = listed.as_array().context("snapshots as a list")?;
    ensure!(!snapshots.is_empty(), "a snapshot is left");
    for snapshot in snapshots {
        let id = snapshot["id"].as_str().context("a snapshot id")?;
        let target = installation.path(format!("restored-{id}"));
        installation
            .restore(&restore_key, &format!("{id}:{}", src.display()), &target)?
            .ok()?;
        let restored = describe(&target)?;
        let same = |version: &TreeDescription| {
            restored.len() == version.len()
                && restored
                    .iter()
                    .zip(version)
                    .all(|((a, x), (b, y))| a == b && x.content == y.content)
        };
        ensure!(
            expected.iter().any(same),
            "snapshot {id} restores to neither version"
        );
    }
    Ok(())
}
