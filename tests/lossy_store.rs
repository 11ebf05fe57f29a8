//! A lossy store: lifeboat's programs against moto (which honours
//! `If-None-Match: *`, so a retried create of a stored object gets a real
//! 412) and Garage, through the [`FaultProxy`] injecting each fault — 503,
//! `SlowDown`, 429, dropped connections, resets before the request is
//! forwarded, lost answers, resets inside the answer's body, trickled
//! answers — and a mix of them.
//!
//! Every test runs the operator's whole cycle through the proxy: two
//! backups, `forget`, two `prune`s (marking, then deleting), `check
//! --read-data` and a restore, whose bytes must equal the source's. With a
//! fault rate that makes success impossible, a backup must fail within
//! bounded time with a message naming the request and the object.
//!
//! The proxy's tasks run on the runtime's worker threads while the test's
//! own thread waits for the programs.
//!
//! `lifeboat init` runs straight against the server: `config` and `keys`
//! are the two objects not named by their content, so their creates stay
//! strict, and a lost answer to one fails the init.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use lifeboat_tests::cli::{Installation, Rng, assert_same_tree, describe, write_file};
use lifeboat_tests::{Fault, FaultProxy, GarageServer, MotoServer, S3Target};

/// The job backed up.
const JOB: (&str, &str) = ("home", r#"{ kind = "directory", paths = ["src"] }"#);
/// Rate of a fault given alone: high enough to strike many times per
/// cycle, low enough that five failed attempts at one request in a row
/// (1 in 100 000) do not happen in a test run.
const RATE: f64 = 0.1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_of_every_write_are_taken_for_success() -> Result<()> {
    // Every object's first PUT lands, and its answer is lost: the SDK's
    // retry then meets 412 for each index object, snapshot and plan.
    let moto = MotoServer::start().await?;
    let proxy = FaultProxy::first_puts(moto.addr(), Fault::LostAnswer).await?;
    let installation = Installation::s3(&moto.target().via(proxy.endpoint()), "lost-answers")?;
    cycle(&installation, &moto.target())?;
    let lost = proxy.served_of(Fault::LostAnswer);
    ensure!(
        lost >= 8,
        "every write lost its answer once, so at least 8: {lost}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_unavailable() -> Result<()> {
    one_fault(Fault::ServiceUnavailable, 1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_down() -> Result<()> {
    one_fault(Fault::SlowDown, 2).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests() -> Result<()> {
    one_fault(Fault::TooManyRequests, 3).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnects() -> Result<()> {
    one_fault(Fault::Disconnect, 4).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_before_forwarding() -> Result<()> {
    one_fault(Fault::ResetBeforeForward, 5).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_at_random() -> Result<()> {
    one_fault(Fault::LostAnswer, 6).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_inside_the_answer() -> Result<()> {
    one_fault(Fault::ResetInBody, 7).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_answers() -> Result<()> {
    one_fault(Fault::SlowBody, 8).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mix_of_every_fault() -> Result<()> {
    let moto = MotoServer::start().await?;
    let rates = mix();
    let proxy = FaultProxy::random(moto.addr(), 9, &rates).await?;
    let installation = Installation::s3(&moto.target().via(proxy.endpoint()), "mix")?;
    cycle(&installation, &moto.target())?;
    ensure!(
        proxy.faults_served() >= 10,
        "{} faults served",
        proxy.faults_served()
    );
    Ok(())
}

/// Garage checks every request's signature: the proxy's forwarding keeps
/// them valid, and the mix is ridden out there too (Garage overwrites
/// instead of answering 412, so a lost answer's retry just succeeds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mix_of_every_fault_on_garage() -> Result<()> {
    let garage = GarageServer::start().await?;
    let rates = mix();
    let proxy = FaultProxy::random(garage.addr(), 10, &rates).await?;
    let installation = Installation::s3(&garage.target().via(proxy.endpoint()), "mix")?;
    let result = cycle(&installation, &garage.target());
    if result.is_err() {
        println!("{}", garage.log_tail());
    }
    result?;
    ensure!(proxy.faults_served() >= 10);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_always_fails_is_given_up_on_in_bounded_time() -> Result<()> {
    let moto = MotoServer::start().await?;
    let proxy = FaultProxy::random(moto.addr(), 11, &[(Fault::ServiceUnavailable, 1.0)]).await?;
    let installation = Installation::s3(&moto.target().via(proxy.endpoint()), "doomed")?;
    init(&installation, &moto.target())?;
    write_source(&installation.path("src"), 1)?;
    installation.write_config(&[], &[JOB])?;
    let started = Instant::now();
    let outcome = installation.start_backup(JOB.0)?.wait()?.failed()?;
    let took = started.elapsed();
    println!("{}", outcome.output());
    // 5 attempts, with at most 1 + 2 + 4 + 8 s of backoff between them.
    ensure!(
        took < Duration::from_secs(40),
        "gave up only after {took:?}"
    );
    let stderr = &outcome.stderr;
    for wanted in [
        "S3 GetObject of config",
        "gave up after 5 attempts",
        "HTTP 503",
        "try again later",
    ] {
        ensure!(
            stderr.contains(wanted),
            "the failure does not say {wanted:?}:\n{stderr}"
        );
    }
    ensure!(proxy.served_of(Fault::ServiceUnavailable) == 5);
    Ok(())
}

/// Every fault at an equal share of [`RATE`] in all.
fn mix() -> Vec<(Fault, f64)> {
    let share = RATE / Fault::ALL.len() as f64;
    Fault::ALL.iter().map(|&fault| (fault, share)).collect()
}

/// The cycle against moto with `fault` at [`RATE`], drawn from `seed`.
async fn one_fault(fault: Fault, seed: u64) -> Result<()> {
    let moto = MotoServer::start().await?;
    let proxy = FaultProxy::random(moto.addr(), seed, &[(fault, RATE)]).await?;
    let installation = Installation::s3(&moto.target().via(proxy.endpoint()), "faults")?;
    let result = cycle(&installation, &moto.target());
    if result.is_err() {
        println!("{}", moto.log_tail());
    }
    result?;
    let served = proxy.served_of(fault);
    ensure!(served >= 3, "{fault:?} served only {served} times");
    Ok(())
}

/// `lifeboat init` with 1 MiB packs straight at `server`, then through
/// the proxy two backups of a changing source, `forget --keep-last 1`,
/// `prune --grace 0s` twice (mark, then delete), `check --read-data`, and
/// a restore equal to the source.
fn cycle(installation: &Installation, server: &S3Target) -> Result<()> {
    init(installation, server)?;
    let src = installation.path("src");
    write_source(&src, 1)?;
    installation.write_config(&[], &[JOB])?;
    installation.backup(JOB.0).context("the first backup")?;
    write_source(&src, 2)?;
    installation.backup(JOB.0).context("the second backup")?;
    let expected = describe(&src)?;

    let service_key = installation.service_key().display().to_string();
    installation
        .lifeboat_repo("forget", &["-i", &service_key, "--keep-last", "1"])?
        .ok()?;
    let mut deleted = 0;
    for _ in 0..2 {
        let report = installation
            .lifeboat_repo("prune", &["-i", &service_key, "--grace", "0s", "--json"])?
            .ok()?
            .json()?;
        deleted += report["prune"]["packs_deleted"].as_u64().unwrap_or(0);
    }
    ensure!(deleted >= 1, "prune deleted the forgotten snapshot's packs");

    installation
        .check(&installation.restore_key(), &["--read-data"])?
        .ok()
        .context("check --read-data after the prunes")?;

    let target = installation.path("restored");
    installation
        .restore(
            &installation.restore_key(),
            &format!("latest:{}", src.display()),
            &target,
        )?
        .ok()?;
    assert_same_tree(&expected, &describe(&target)?).context("the restore differs from the source")
}

/// Creates the repository straight at `server` (not through the proxy),
/// with 1 MiB packs, so that a backup writes several and a forgotten
/// snapshot leaves whole packs unused.
fn init(installation: &Installation, server: &S3Target) -> Result<()> {
    let mut args = vec![
        "-r".to_owned(),
        installation.url().to_owned(),
        "--s3-endpoint".to_owned(),
        server.endpoint.clone(),
        "--s3-region".to_owned(),
        server.region.clone(),
        "--s3-path-style".to_owned(),
        "--pack-size-mib".to_owned(),
        "1".to_owned(),
    ];
    for (flag, path) in [
        ("--restore-identity", installation.restore_key()),
        ("--service-identity", installation.service_key()),
    ] {
        args.extend([flag.to_owned(), path.display().to_string()]);
    }
    installation
        .lifeboat(&[&["init".to_owned()], &args[..]].concat())?
        .ok()?;
    Ok(())
}

/// The source's `version`: files kept across versions, and files of this
/// version only, one of them large enough to fill several packs.
fn write_source(src: &Path, version: u64) -> Result<()> {
    let mut kept = Rng::new(0x1055_0000);
    write_file(&src.join("kept/large.bin"), &kept.bytes(2 * 1024 * 1024))?;
    write_file(&src.join("kept/notes.txt"), &kept.text(40_000))?;
    let versioned = src.join("versioned");
    if versioned.exists() {
        std::fs::remove_dir_all(&versioned)?;
    }
    let mut changing = Rng::new(0x1055_0000 + version);
    for i in 0..20 {
        write_file(
            &versioned.join(format!("{i:02}.bin")),
            &changing.bytes(20_000 + 5_000 * i),
        )?;
    }
    write_file(
        &versioned.join("large.bin"),
        &changing.bytes(3 * 1024 * 1024),
    )?;
    Ok(())
}
