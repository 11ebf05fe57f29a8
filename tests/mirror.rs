//! A mirror repository, as a user runs one: `lifeboatd serve` backs up
//! into a real S3 server (Garage) with a `[[mirror]]` in a local folder.
//! After each backup and prune the mirror task copies the new objects;
//! what the primary's prune deleted stays on the mirror for the grace
//! period; a copy lost on the mirror and a mirror that was gone for a
//! while are caught up; `/metrics` and the status page show its lag; and a
//! restore from the mirror equals a restore from the primary.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use lifeboat_tests::GarageServer;
use lifeboat_tests::cli::{Installation, Rng, assert_same_tree, describe, write_file};
use lifeboat_tests::service::Lifeboatd;

const WAIT: Duration = Duration::from_secs(120);

/// Every object below `dir` (relative keys), recursively.
fn keys_below(dir: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(relative) = path.strip_prefix(dir) {
                found.push(relative.display().to_string());
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Waits for the `n`th run of the mirror task that ended with `result`.
fn mirror_runs(service: &mut Lifeboatd, result: &str, n: usize) -> Result<Vec<serde_json::Value>> {
    service.wait_for(&format!("{n} {result} mirror run(s)"), WAIT, |s| {
        let runs = s.runs_with("mirror", result)?;
        Ok((runs.len() >= n).then_some(runs))
    })
}

/// The value of the series `name{mirror="local"}` on `/metrics`.
fn metric(service: &Lifeboatd, name: &str) -> Result<Option<f64>> {
    let text = service.get("/metrics")?.body;
    let prefix = format!("{name}{{mirror=\"local\"}} ");
    Ok(text
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok()))
}

/// `lifeboat check --mirror local --against-primary` with the restore key.
fn check_against_primary(installation: &Installation) -> Result<lifeboat_tests::cli::Outcome> {
    let mut command = installation.command("lifeboat")?;
    command
        .args(["check", "--config"])
        .arg(installation.config())
        .args(["--mirror", "local", "--against-primary", "-i"])
        .arg(installation.restore_key());
    lifeboat_tests::cli::run(&mut command)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_keeps_up_with_backups_and_prunes_and_restores_as_the_primary() -> Result<()> {
    let garage = GarageServer::start().await?;
    let target = garage.target();
    let installation = Installation::s3(&target, "mirrored")?;
    let mut rng = Rng::new(11);
    for i in 0..6 {
        write_file(
            &installation.path(format!("data/file-{i}.bin")),
            &rng.bytes(300 * 1024),
        )?;
    }
    let mirror_dir = installation.path("mirror");
    let config = format!(
        r#"state_dir = "state"

[repository]
url = {url:?}
service_identity = "keys/service.key"
s3 = {{ endpoint = {endpoint:?}, region = {region:?}, path_style = {path_style} }}

[service]
shutdown_grace = "30s"

[[job]]
name = "files"
source = {{ kind = "directory", paths = ["data"] }}
retention = {{ keep_last = 1 }}

[prune]
schedule = "0 0 0 1 1 *"
grace = "0s"

[[mirror]]
name = "local"
url = "mirror"
schedule = "0 0 0 1 1 *"
grace = "4s"
"#,
        url = installation.url(),
        endpoint = target.endpoint,
        region = target.region,
        path_style = target.path_style,
    );
    std::fs::write(installation.config(), config)?;
    let mut service = Lifeboatd::start(&installation)?;

    // A backup is followed by a mirror run that copies every object.
    service.trigger("files")?;
    mirror_runs(&mut service, "success", 1)?;
    let check = check_against_primary(&installation)?.ok()?;
    ensure!(
        check.stdout.contains("0 object(s) the mirror still lacks")
            && check.stdout.contains("0 that differ"),
        "{}",
        check.stdout
    );
    ensure!(
        metric(&service, "lifeboat_mirror_pending_objects")? == Some(0.0)
            && metric(&service, "lifeboat_mirror_up")? == Some(1.0),
        "{}",
        service.get("/metrics")?.body
    );

    // A copy lost on the mirror (one pack gone) and one cut short are put
    // back by the next run.
    let copied = keys_below(&mirror_dir)?;
    let packs: Vec<&String> = copied.iter().filter(|k| k.starts_with("data/")).collect();
    ensure!(packs.len() >= 2, "packs on the mirror: {copied:?}");
    std::fs::remove_file(mirror_dir.join(packs[0]))?;
    let cut = mirror_dir.join(packs[1]);
    let bytes = std::fs::read(&cut)?;
    std::fs::write(&cut, &bytes[..bytes.len() / 2])?;
    service.trigger("mirror")?;
    mirror_runs(&mut service, "success", 2)?;
    ensure!(
        keys_below(&mirror_dir)? == copied,
        "the lost copies are back"
    );
    ensure!(std::fs::read(&cut)? == bytes, "the cut copy is whole again");

    // The mirror is gone for a while (its disk unmounted: a file where
    // its folder was): the runs fail and say so, the lag shows on the
    // metrics and the status page; once it is back it catches up.
    let parked = installation.path("mirror-parked");
    std::fs::rename(&mirror_dir, &parked)?;
    std::fs::write(&mirror_dir, b"not a folder")?;
    write_file(&installation.path("data/new.bin"), &rng.bytes(200 * 1024))?;
    service.trigger("files")?;
    mirror_runs(&mut service, "failure", 1)?;
    ensure!(
        metric(&service, "lifeboat_mirror_up")? == Some(0.0)
            && metric(&service, "lifeboat_mirror_lag_seconds")?.is_some_and(|lag| lag > 0.0),
        "{}",
        service.get("/metrics")?.body
    );
    let page = service.get("/")?.body;
    ensure!(
        page.contains("<h2>Mirrors</h2>") && page.contains("unreachable"),
        "the status page shows the mirror unreachable: {page}"
    );
    std::fs::remove_file(&mirror_dir)?;
    std::fs::rename(&parked, &mirror_dir)?;
    service.trigger("mirror")?;
    mirror_runs(&mut service, "success", 3)?;
    let check = check_against_primary(&installation)?.ok()?;
    ensure!(
        check.stdout.contains("0 object(s) the mirror still lacks"),
        "{}",
        check.stdout
    );

    // Retention forgot the first snapshot; a prune deletes its data from
    // the primary (grace 0: one run marks, the next deletes). The mirror
    // keeps what the primary deleted for its own grace period, then lets
    // it go.
    service.trigger("prune")?;
    service.wait_for("the first prune", WAIT, |s| {
        Ok((!s.runs_with("prune", "success")?.is_empty()).then_some(()))
    })?;
    service.wait_for("the mirror run after it", WAIT, |s| {
        Ok(
            (s.runs("mirror")?.len() >= 5 && s.runs_with("mirror", "success")?.len() >= 4)
                .then_some(()),
        )
    })?;
    service.trigger("prune")?;
    service.wait_for("the second prune", WAIT, |s| {
        Ok((s.runs_with("prune", "success")?.len() >= 2).then_some(()))
    })?;
    service.wait_for("objects kept past the primary's prune", WAIT, |s| {
        Ok(metric(s, "lifeboat_mirror_awaiting_deletion_objects")?
            .filter(|n| *n > 0.0)
            .map(|_| ()))
    })?;
    let kept = check_against_primary(&installation)?.ok()?;
    ensure!(
        !kept.stdout.contains(" 0 it keeps that the primary deleted"),
        "{}",
        kept.stdout
    );
    std::thread::sleep(Duration::from_secs(5));
    let runs_before = service.runs("mirror")?.len();
    service.trigger("mirror")?;
    service.wait_for("a mirror run after the grace period", WAIT, |s| {
        Ok((s.runs("mirror")?.len() > runs_before
            && metric(s, "lifeboat_mirror_awaiting_deletion_objects")? == Some(0.0))
        .then_some(()))
    })?;
    let agreed = check_against_primary(&installation)?.ok()?;
    ensure!(
        agreed.stdout.contains("0 object(s) the mirror still lacks")
            && agreed
                .stdout
                .contains(" 0 it keeps that the primary deleted"),
        "{}",
        agreed.stdout
    );
    service.terminate()?;

    // The mirror restores what the primary restores.
    let key = installation.restore_key();
    let restore = |from_mirror: bool, target: &Path| -> Result<()> {
        let mut command = installation.command("lifeboat")?;
        command
            .args(["restore", "--config"])
            .arg(installation.config());
        if from_mirror {
            command.args(["--mirror", "local"]);
        }
        command
            .arg("-i")
            .arg(&key)
            .args(["latest:files", "--target"])
            .arg(target);
        lifeboat_tests::cli::run(&mut command)?.ok()?;
        Ok(())
    };
    let (from_primary, from_mirror) = (
        installation.path("restored/primary"),
        installation.path("restored/mirror"),
    );
    restore(false, &from_primary)?;
    restore(true, &from_mirror)?;
    let source = describe(&installation.path("data"))?;
    let restored = |root: &Path| -> Result<_> {
        let data = installation.path("data");
        let relative = data.strip_prefix("/").context("an absolute path")?;
        describe(&root.join(relative))
    };
    assert_same_tree(&source, &restored(&from_primary)?)?;
    assert_same_tree(&source, &restored(&from_mirror)?)?;
    Ok(())
}
