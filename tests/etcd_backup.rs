//! The `etcd` source against a real etcd (Debian's `etcd-server`), run as
//! an operator runs it: `lifeboatd run --config lifeboat.toml etcd`, then
//! `lifeboat snapshots` and `lifeboat restore`, then `etcdctl snapshot
//! status` and `etcdctl snapshot restore` on the restored file and a new
//! etcd started on it. Bad input — no reachable endpoint, certificates
//! from the wrong CA, a snapshot damaged or cut on the wire — fails the job
//! with an error that says what to fix, and leaves no snapshot.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use lifeboat::sources::etcd::snapshot_file::{SnapshotError, VerifyFileError, verify_file};
use lifeboat_tests::cli::{Installation, Outcome, Rng, objects, run};
use lifeboat_tests::etcd::{
    ClientFiles, EtcdServer, Tamper, TamperProxy, count_keys, delete_all, get_value, put_all,
    snapshot_status,
};
use lifeboat_tests::process::free_port;
use serde_json::Value;

/// The job's source table.
fn source(endpoints: &[String], files: Option<(&str, &str, &str)>) -> String {
    let list = endpoints
        .iter()
        .map(|e| format!("{e:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    match files {
        Some((ca, cert, key)) => format!(
            "{{ kind = \"etcd\", endpoints = [{list}], ca = {ca:?}, cert = {cert:?}, key = {key:?}, timeout = \"20s\" }}"
        ),
        None => format!("{{ kind = \"etcd\", endpoints = [{list}], timeout = \"20s\" }}"),
    }
}

/// Copies a CA and client certificate into `dir` under `prefix`, as an
/// operator would keep them beside lifeboat.toml.
fn install_files(files: &ClientFiles, dir: &Path, prefix: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for (from, name) in [
        (&files.ca, "ca.crt"),
        (&files.cert, "client.crt"),
        (&files.key, "client.key"),
    ] {
        std::fs::copy(from, dir.join(format!("{prefix}{name}")))
            .with_context(|| format!("copying {}", from.display()))?;
    }
    Ok(())
}

/// Loads `count` keys of about `size` bytes, then rewrites every fifth and
/// deletes every thirteenth, so that revisions, key count and values all
/// differ from a plain load. Returns the live keys with their values.
async fn load(
    client: &mut etcd_client::Client,
    count: usize,
    size: usize,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut rng = Rng::new(7);
    let mut live = BTreeMap::new();
    let items: Vec<(String, Vec<u8>)> = (0..count)
        .map(|i| (format!("/registry/test/{i:06}"), rng.text(size)))
        .collect();
    live.extend(items.iter().cloned());
    put_all(client, items).await?;
    let rewrites: Vec<(String, Vec<u8>)> = (0..count)
        .step_by(5)
        .map(|i| (format!("/registry/test/{i:06}"), rng.text(size)))
        .collect();
    live.extend(rewrites.iter().cloned());
    put_all(client, rewrites).await?;
    let deleted: Vec<String> = (0..count)
        .step_by(13)
        .map(|i| format!("/registry/test/{i:06}"))
        .collect();
    delete_all(client, &deleted).await?;
    for key in &deleted {
        live.remove(key);
    }
    Ok(live)
}

/// The snapshots `lifeboat snapshots --json` lists.
fn snapshots(installation: &Installation) -> Result<Vec<Value>> {
    let key = installation.restore_key();
    let listing = installation
        .lifeboat_repo("snapshots", &["-i", &key.display().to_string(), "--json"])?
        .ok()?
        .json()?;
    listing
        .as_array()
        .cloned()
        .context("`lifeboat snapshots --json` printed no list")
}

/// Runs `lifeboatd run` for `job`, expecting it to fail; returns its output.
fn failing_backup(installation: &Installation, job: &str) -> Result<Outcome> {
    let mut command = installation.command("lifeboatd")?;
    command
        .args(["run", "--config"])
        .arg(installation.config())
        .args([job, "--json"]);
    run(&mut command)?.failed()
}

/// Fails unless the repository holds no snapshot object.
fn assert_no_snapshot(installation: &Installation) -> Result<()> {
    let written = objects(&installation.repo_dir()?, "snapshots")?;
    ensure!(
        written.is_empty(),
        "a failed etcd backup left snapshot objects: {written:?}"
    );
    Ok(())
}

fn text(value: &Value, field: &str) -> Result<String> {
    value[field]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no text {field} in {value:#}"))
}

fn number(value: &Value, field: &str) -> Result<i64> {
    value[field]
        .as_i64()
        .with_context(|| format!("no number {field} in {value:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_snapshot_restores_into_a_working_etcd_with_the_recorded_keys_and_revision()
-> Result<()> {
    let server = EtcdServer::start_tls().await?;
    let pki = server.pki().context("a TLS server has certificates")?;
    let mut client = server.client().await?;
    let live = load(&mut client, 3000, 1024).await?;
    let (key_count, revision) = count_keys(&mut client).await?;
    ensure!(
        key_count as usize == live.len(),
        "the load left {key_count} keys"
    );
    let status = client.status().await?;
    let member_id = status.header().context("status header")?.member_id();

    let installation = Installation::local()?;
    install_files(&pki.client, &installation.path("pki"), "")?;
    // The first endpoint is closed: the source must move on to the second.
    let closed = format!("https://127.0.0.1:{}", free_port()?);
    installation.write_config(
        &[],
        &[(
            "etcd",
            &source(
                &[closed, server.url()],
                Some(("pki/ca.crt", "pki/client.crt", "pki/client.key")),
            ),
        )],
    )?;
    let report = installation.backup("etcd")?;
    ensure!(
        report["summary"]["files"] == 1,
        "one file, etcd.db, expected: {report:#}"
    );

    let listed = snapshots(&installation)?;
    ensure!(listed.len() == 1, "one snapshot expected: {listed:#?}");
    let snapshot = &listed[0];
    ensure!(snapshot["source_kind"] == "etcd", "{snapshot:#}");
    let metadata = &snapshot["metadata"];
    ensure!(text(metadata, "endpoint")? == server.url(), "{metadata:#}");
    ensure!(number(metadata, "key_count")? == key_count, "{metadata:#}");
    ensure!(number(metadata, "revision")? == revision, "{metadata:#}");
    ensure!(metadata["revision_exact"] == true, "{metadata:#}");
    ensure!(
        text(metadata, "member_id")? == format!("{member_id:016x}"),
        "{metadata:#}"
    );
    ensure!(
        text(metadata, "etcd_version")?.starts_with("3."),
        "{metadata:#}"
    );
    let snapshot_bytes = number(metadata, "snapshot_bytes")? as u64;
    ensure!(snapshot_bytes % 512 == 32, "{metadata:#}");
    ensure!(number(metadata, "db_size")? > 0, "{metadata:#}");
    let sha256 = text(metadata, "sha256")?;
    ensure!(sha256.len() == 64, "{metadata:#}");

    // Restore the file as an operator would, and check it three ways.
    let target = installation.path("restored");
    installation
        .restore(&installation.restore_key(), "latest:etcd", &target)?
        .ok()?;
    let file = target.join("etcd.db");
    ensure!(
        std::fs::metadata(&file)?.len() == snapshot_bytes,
        "restored etcd.db differs in size from the recorded snapshot"
    );
    let verified = verify_file(&file)?;
    ensure!(
        verified.sha256 == sha256,
        "trailer {} != recorded {sha256}",
        verified.sha256
    );
    let status = snapshot_status(&file)?;
    ensure!(
        status.revision == revision,
        "etcdctl snapshot status says revision {}, recorded {revision}",
        status.revision
    );
    ensure!(
        status.total_keys >= key_count as u64,
        "etcdctl counts {} stored revisions for {key_count} keys",
        status.total_keys
    );

    let restored = EtcdServer::restore(&file).await?;
    let mut restored_client = restored.client().await?;
    let (restored_count, restored_revision) = count_keys(&mut restored_client).await?;
    ensure!(
        (restored_count, restored_revision) == (key_count, revision),
        "restored etcd has {restored_count} keys at revision {restored_revision}, \
         recorded {key_count} at {revision}"
    );
    for key in live.keys().step_by(97) {
        let value = get_value(&mut restored_client, key).await?;
        ensure!(
            value.as_deref() == live.get(key).map(Vec::as_slice),
            "restored etcd has a different value for {key}"
        );
    }
    ensure!(
        get_value(&mut restored_client, "/registry/test/000013")
            .await?
            .is_none(),
        "a deleted key came back"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoints_fail_naming_each_one_and_write_no_snapshot() -> Result<()> {
    let installation = Installation::local()?;
    let first = format!("http://127.0.0.1:{}", free_port()?);
    let second = format!("http://127.0.0.1:{}", free_port()?);
    installation.write_config(
        &[],
        &[("etcd", &source(&[first.clone(), second.clone()], None))],
    )?;
    let outcome = failing_backup(&installation, "etcd")?;
    let stderr = &outcome.stderr;
    for needle in [
        "no etcd endpoint could be used",
        &format!("{first}: unreachable"),
        &format!("{second}: unreachable"),
        "that etcd runs there",
    ] {
        ensure!(
            stderr.contains(needle),
            "{needle:?} missing from:\n{stderr}"
        );
    }
    assert_no_snapshot(&installation)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_of_the_wrong_ca_fail_as_tls_errors_and_write_no_snapshot() -> Result<()> {
    let server = EtcdServer::start_tls().await?;
    let pki = server.pki().context("a TLS server has certificates")?;
    let installation = Installation::local()?;
    let dir = installation.path("pki");
    install_files(&pki.client, &dir, "")?;
    install_files(&pki.foreign, &dir, "foreign-")?;
    let url = server.url();
    installation.write_config(
        &[],
        &[
            // A client certificate etcd does not trust.
            (
                "foreign-client",
                &source(
                    std::slice::from_ref(&url),
                    Some((
                        "pki/ca.crt",
                        "pki/foreign-client.crt",
                        "pki/foreign-client.key",
                    )),
                ),
            ),
            // A CA that did not sign etcd's server certificate.
            (
                "foreign-ca",
                &source(
                    std::slice::from_ref(&url),
                    Some(("pki/foreign-ca.crt", "pki/client.crt", "pki/client.key")),
                ),
            ),
            // No client certificate at all.
            (
                "no-client-cert",
                &format!("{{ kind = \"etcd\", endpoints = [{url:?}], ca = \"pki/ca.crt\" }}"),
            ),
        ],
    )?;
    for (job, expected) in [
        ("foreign-client", "etcd refused the client certificate"),
        ("foreign-ca", "etcd's server certificate is not trusted"),
        ("no-client-cert", "etcd refused the client certificate"),
    ] {
        let outcome = failing_backup(&installation, job)?;
        let stderr = &outcome.stderr;
        let label = format!("{url}: TLS handshake failed: {expected}");
        for needle in [label.as_str(), "must be"] {
            ensure!(
                stderr.contains(needle),
                "job {job}: {needle:?} missing from:\n{stderr}"
            );
        }
    }
    assert_no_snapshot(&installation)
}

/// A snapshot damaged on the wire (which neither HTTP/2 nor gRPC notices)
/// fails the job as corrupt; cut short, as broken off. Then the same job
/// without the proxy succeeds, so the failures were the damage's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_damaged_or_cut_on_the_wire_is_refused() -> Result<()> {
    let server = EtcdServer::start().await?;
    let mut client = server.client().await?;
    load(&mut client, 600, 2048).await?;
    let flip = TamperProxy::start(server.addr(), Tamper::FlipByte).await?;
    let cut = TamperProxy::start(server.addr(), Tamper::Cut).await?;
    let installation = Installation::local()?;
    installation.write_config(
        &[],
        &[
            ("flipped", &source(&[flip.url()], None)),
            ("cut", &source(&[cut.url()], None)),
            ("direct", &source(&[server.url()], None)),
        ],
    )?;

    let outcome = failing_backup(&installation, "flipped")?;
    ensure!(
        flip.tampered(),
        "the proxy never reached the snapshot stream"
    );
    for needle in ["is corrupt", "SHA-256 trailer says", &flip.url()] {
        ensure!(
            outcome.stderr.contains(needle),
            "{needle:?} missing from:\n{}",
            outcome.stderr
        );
    }
    assert_no_snapshot(&installation)?;

    let outcome = failing_backup(&installation, "cut")?;
    ensure!(cut.tampered(), "the proxy never cut the snapshot stream");
    ensure!(
        outcome.stderr.contains("broke off"),
        "\"broke off\" missing from:\n{}",
        outcome.stderr
    );
    assert_no_snapshot(&installation)?;

    installation.backup("direct")?;
    ensure!(
        snapshots(&installation)?.len() == 1,
        "the undamaged backup wrote no snapshot"
    );
    Ok(())
}

/// The verifier on real snapshot files made by `etcdctl snapshot save`: a
/// good one passes with the trailer etcd wrote, a flipped byte anywhere in
/// the data and a cut file are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verifier_accepts_etcdctl_snapshots_and_refuses_damaged_ones() -> Result<()> {
    let server = EtcdServer::start().await?;
    let mut client = server.client().await?;
    load(&mut client, 300, 1024).await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("saved.db");
    let mut save = server.etcdctl()?;
    save.args(["snapshot", "save"]).arg(&file);
    run(&mut save)?.ok()?;
    let bytes = std::fs::read(&file)?;
    let verified = verify_file(&file)?;
    ensure!(verified.size == bytes.len() as u64);
    ensure!(verified.sha256 == hex(&bytes[bytes.len() - 32..]));

    for offset in [0, 4096 + 17, bytes.len() / 2, bytes.len() - 33] {
        let mut damaged = bytes.clone();
        damaged[offset] ^= 0x01;
        let path = dir.path().join(format!("flipped-{offset}.db"));
        std::fs::write(&path, &damaged)?;
        match verify_file(&path) {
            Err(VerifyFileError::Invalid {
                source: SnapshotError::Mismatch { .. },
                ..
            }) => {}
            other => anyhow::bail!("byte {offset} flipped: expected a mismatch, got {other:?}"),
        }
    }
    let path = dir.path().join("cut.db");
    std::fs::write(&path, &bytes[..bytes.len() - 4096])?;
    ensure!(
        matches!(
            verify_file(&path),
            Err(VerifyFileError::Invalid {
                source: SnapshotError::Mismatch { .. } | SnapshotError::MissingTrailer { .. },
                ..
            })
        ),
        "a file cut by a page was accepted"
    );
    std::fs::write(&path, &bytes[..bytes.len() - 10])?;
    ensure!(
        matches!(
            verify_file(&path),
            Err(VerifyFileError::Invalid {
                source: SnapshotError::MissingTrailer { .. },
                ..
            })
        ),
        "a file cut inside its trailer was accepted"
    );
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
