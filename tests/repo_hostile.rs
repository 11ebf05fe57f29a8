//! Invariant 7 of DESIGN.md: the repository is untrusted input. With only
//! the service key, as a compromised cluster could, the test plants
//! snapshots next to a good one: through the library's own writer (trees
//! with duplicate names, a subtree repeated 2^40 times) and, following
//! FORMAT.md by hand, a pack holding a zstd bomb, a pack whose blob table
//! points outside it and an index object whose entry lies beyond its pack.
//! `check` (with and without `--read-data`) names each damage and exits 1;
//! restore and `ls` fail cleanly and bounded; the drill fails naming it;
//! the good snapshot still restores.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use lifeboat::repo::UnlockedRepository;
use lifeboat::repo::blob::BlobKind;
use lifeboat::repo::id::BlobId;
use lifeboat::repo::keys::AnyIdentity;
use lifeboat::repo::snapshot::{Snapshot, Summary};
use lifeboat::repo::tree::{Node, NodeKind, Tree};
use lifeboat_tests::cli::{Installation, Outcome, assert_same_tree, describe, run, write_file};
use serde_json::{Value, json};

/// The tree-entry bound the commands run with: small, so that the repeated
/// subtree stops quickly (the default is ten million).
const ENTRY_LIMIT: &str = "5000";
/// The forged jobs, besides the good `home`.
const FORGED: [&str; 4] = ["dup", "bomb", "range", "repeat"];

#[test]
fn forged_snapshots_are_named_and_bounded_and_the_good_one_restores() -> Result<()> {
    let installation = Installation::local()?;
    let (restore_key, service_key) = (installation.restore_key(), installation.service_key());
    let mut init = vec!["--pack-size-mib".to_owned(), "1".to_owned()];
    for (flag, path) in [
        ("--restore-identity", &restore_key),
        ("--service-identity", &service_key),
    ] {
        init.extend([flag.to_owned(), path.display().to_string()]);
    }
    installation.lifeboat_repo("init", &init)?.ok()?;
    let src = installation.path("src");
    write_file(&src.join("notes.txt"), b"the good snapshot")?;
    write_file(&src.join("sub/more.txt"), &b"more ".repeat(5000))?;
    let source = format!("{{ kind = \"directory\", paths = [{:?}] }}", src.display());
    let mut jobs = vec![("home", source.as_str())];
    jobs.extend(FORGED.iter().map(|job| (*job, source.as_str())));
    installation.write_config(&[], &jobs)?;
    installation.backup("home")?;
    let good = describe(&src)?;

    let forged = tokio::runtime::Runtime::new()?.block_on(async {
        let repo = lifeboat_tests::repo::unlock(installation.url(), &service_key).await?;
        forge(&repo).await
    })?;
    println!("forged: {forged:#}");

    // `check` reads every tree: it names the duplicate, the repetition and
    // the index entry beyond its pack, and exits 1.
    let report = check(&installation, &[])?;
    let dup = problem(&report, "appears twice")?;
    ensure!(
        affects(&dup, "(dup)") && affects(&dup, "/broken/"),
        "the damaged tree is named with its snapshot and path: {dup:#}"
    );
    let repeat = problem(&report, "entries in all")?;
    ensure!(affects(&repeat, "(repeat)"), "{repeat:#}");
    let range = problem(&report, "outside the blob area")?;
    ensure!(
        range["object"].as_str() == forged["range_index"].as_str(),
        "the index object with the out-of-range entry is named: {range:#}"
    );
    let missing = problem(&report, "blobs are in no index")?;
    ensure!(affects(&missing, "(range)"), "{missing:#}");

    // `--read-data` also decodes every blob: the bomb and the bad table.
    let report = check(&installation, &["--read-data"])?;
    let bomb = problem(&report, "does not match its id")?;
    ensure!(
        bomb["object"].as_str() == forged["bomb_pack"].as_str() && affects(&bomb, "bomb.bin"),
        "the bomb's pack and file are named: {bomb:#}"
    );
    let table = problem(&report, "blob table is damaged")?;
    ensure!(
        table["object"].as_str() == forged["table_pack"].as_str(),
        "the pack with the bad table is named: {table:#}"
    );

    // Restores of the forged snapshots fail cleanly, naming the damage;
    // the bomb's neighbour still restores.
    for (job, named) in [
        ("dup", "appears twice"),
        ("bomb", "bomb.bin"),
        ("range", "far.bin"),
        ("repeat", "entries"),
    ] {
        let target = installation.path(format!("restored-{job}"));
        let failed = restore(&installation, &format!("latest:{job}"), &target)?.failed()?;
        ensure!(
            failed.stderr.contains(named),
            "the restore of {job} names {named:?}\n{}",
            failed.output()
        );
    }
    ensure!(
        std::fs::read(installation.path("restored-bomb/ok.txt"))? == b"still good",
        "the bomb's neighbour is restored"
    );
    for (job, named) in [("dup", "appears twice"), ("repeat", "entries")] {
        let failed = ls(&installation, job)?.failed()?;
        ensure!(
            failed.stderr.contains(named),
            "ls {job}\n{}",
            failed.output()
        );
    }

    // The drill fails each forged job, naming what is wrong; home passes.
    let mut drill = command(&installation)?;
    drill
        .args(["drill", "--config"])
        .arg(installation.config())
        .arg("-i")
        .arg(&restore_key)
        .args(["--report", "drill.json"]);
    let failed = run(&mut drill)?.failed()?;
    let drilled: Value = serde_json::from_slice(&std::fs::read(installation.path("drill.json"))?)?;
    let jobs = drilled["jobs"]
        .as_array()
        .context("no jobs in drill.json")?;
    for job in jobs {
        let name = job["job"].as_str().unwrap_or_default();
        let failures = job["failures"].to_string() + &job["steps"].to_string();
        let named = match name {
            "home" => {
                ensure!(
                    job["failures"].as_array().is_some_and(Vec::is_empty),
                    "the good job passes the drill: {job:#}"
                );
                continue;
            }
            "dup" => "appears twice",
            "bomb" => "bomb.bin",
            "range" => "far.bin",
            _ => "entries",
        };
        ensure!(
            failures.contains(named) && !job["failures"].as_array().is_some_and(Vec::is_empty),
            "the drill of {name} fails naming {named:?}: {job:#}\n{}",
            failed.output()
        );
    }
    ensure!(jobs.len() == 5, "every job was drilled: {drilled:#}");

    let target = installation.path("restored-home");
    restore(&installation, "latest:home", &target)?.ok()?;
    assert_same_tree(&good, &describe(&target.join(src.strip_prefix("/")?))?)?;
    Ok(())
}

/// Plants the forged snapshots with the service key; returns the keys of
/// the forged objects the checks must name.
async fn forge(repo: &UnlockedRepository<AnyIdentity>) -> Result<Value> {
    let writer = repo.writer();
    let save = |kind, plain: &[u8]| tokio::task::block_in_place(|| writer.save(kind, plain));
    let ok_text = b"still good";
    let (ok_blob, _) = save(BlobKind::Data, ok_text)?;
    let ok = Node {
        size: ok_text.len() as u64,
        content: vec![ok_blob],
        ..Node::new(b"ok.txt", NodeKind::File, 0o644, 1_764_126_000)
    };
    let file = |name: &[u8], size: u64, content: Vec<BlobId>| Node {
        size,
        content,
        ..Node::new(name, NodeKind::File, 0o644, 1_764_126_000)
    };
    let dir = |name: &[u8], subtree: BlobId| Node {
        subtree: Some(subtree),
        ..Node::new(name, NodeKind::Dir, 0o755, 1_764_126_000)
    };
    let store_tree = |entries: Vec<Node>| -> Result<BlobId> {
        let bytes = Tree { entries }.to_bytes()?;
        Ok(save(BlobKind::Tree, &bytes)?.0)
    };
    let mut roots = Vec::new();

    // Two entries of one name.
    let twice = store_tree(vec![
        file(b"x", ok_text.len() as u64, vec![ok_blob]),
        file(b"x", ok_text.len() as u64, vec![ok_blob]),
    ])?;
    roots.push((
        "dup",
        store_tree(vec![dir(b"broken", twice), ok.clone()])?,
        vec![],
    ));

    // A subtree repeated: 40 levels of two names for the same tree.
    let mut level = store_tree(vec![file(b"leaf", ok_text.len() as u64, vec![ok_blob])])?;
    for _ in 0..40 {
        level = store_tree(vec![dir(b"a", level), dir(b"b", level)])?;
    }
    roots.push((
        "repeat",
        store_tree(vec![dir(b"deep", level), ok.clone()])?,
        vec![],
    ));

    // A zstd bomb: 64 KiB declared, 256 MiB inside, a few KiB stored.
    let bomb_plain = vec![0; 64 << 10];
    let bomb_id = writer.blob_id(&bomb_plain);
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 19)?;
    let zeros = vec![0; 1 << 20];
    for _ in 0..256 {
        encoder.write_all(&zeros)?;
    }
    let bomb = encoder.finish()?;
    ensure!(bomb.len() < 32 << 10, "the bomb is small: {}", bomb.len());
    let entry = RawEntry {
        id: bomb_id,
        compressed: true,
        offset: 0,
        length: bomb.len() as u32,
        raw_length: 64 << 10,
    };
    let bomb_pack = forge_pack(repo, &bomb, &[entry], &[entry], 0).await?;
    let bad = store_tree(vec![file(b"bomb.bin", 64 << 10, vec![bomb_id])])?;
    roots.push((
        "bomb",
        store_tree(vec![dir(b"bad", bad), ok.clone()])?,
        vec![bomb_id],
    ));

    // A pack whose table entry points beyond the blob area (its index
    // entry is right), and an index object whose entry lies beyond its pack.
    let odd_plain = b"an odd blob".to_vec();
    let odd_id = writer.blob_id(&odd_plain);
    let right = RawEntry {
        id: odd_id,
        compressed: false,
        offset: 0,
        length: odd_plain.len() as u32,
        raw_length: odd_plain.len() as u32,
    };
    let beyond = RawEntry {
        offset: 1 << 40,
        ..right
    };
    let table_pack = forge_pack(repo, &odd_plain, &[beyond], &[right], 0).await?;
    let far_plain = b"a blob far away".to_vec();
    let far_id = writer.blob_id(&far_plain);
    let far = RawEntry {
        id: far_id,
        compressed: false,
        offset: 0,
        length: far_plain.len() as u32,
        raw_length: far_plain.len() as u32,
    };
    let range_index = forge_pack(repo, &far_plain, &[far], &[far], 1 << 40).await?;
    let odd = store_tree(vec![
        file(b"far.bin", far_plain.len() as u64, vec![far_id]),
        file(b"odd.bin", odd_plain.len() as u64, vec![odd_id]),
    ])?;
    roots.push((
        "range",
        store_tree(vec![dir(b"bad", odd), ok])?,
        vec![odd_id, far_id],
    ));

    writer.finish().await?;
    for (job, root, extra) in roots {
        let mut references = vec![root, ok_blob];
        references.extend(extra);
        references.sort();
        repo.save_snapshot(&Snapshot {
            job: job.into(),
            source_kind: "directory".into(),
            host: "forger".into(),
            time: chrono::Utc::now(),
            end_time: chrono::Utc::now(),
            root,
            summary: Summary::default(),
            metadata: Value::Null,
            references,
        })
        .await?;
    }
    Ok(json!({
        "bomb_pack": bomb_pack.0,
        "table_pack": table_pack.0,
        "range_index": range_index.1,
    }))
}

/// A blob-table or index entry, as FORMAT.md lays it out.
#[derive(Debug, Clone, Copy)]
struct RawEntry {
    id: BlobId,
    compressed: bool,
    offset: u64,
    length: u32,
    raw_length: u32,
}

/// Writes, following FORMAT.md by hand, a pack of `stored` with the blob
/// table `table`, and an index object listing it with `indexed` (whose
/// offsets are moved by `shift`). Returns the pack's and the index
/// object's keys.
async fn forge_pack(
    repo: &UnlockedRepository<AnyIdentity>,
    stored: &[u8],
    table: &[RawEntry],
    indexed: &[RawEntry],
    shift: u64,
) -> Result<(String, String)> {
    let mut plain = stored.to_vec();
    for entry in table {
        plain.extend_from_slice(&hex_bytes(&entry.id)?);
        plain.extend_from_slice(&[0, u8::from(entry.compressed)]);
        plain.extend_from_slice(&entry.offset.to_le_bytes());
        plain.extend_from_slice(&entry.length.to_le_bytes());
        plain.extend_from_slice(&entry.raw_length.to_le_bytes());
    }
    plain.extend_from_slice(&(table.len() as u32).to_le_bytes());
    plain.extend_from_slice(&1u32.to_le_bytes());
    plain.extend_from_slice(b"LBPACK\0\0");
    let config = repo.repository().config();
    let cipher = encrypt(&config.restore_recipients, &plain)?;
    let pack_id = blake3::hash(&cipher).to_hex().to_string();
    let pack_key = format!("data/{}/{pack_id}", &pack_id[..2]);
    let payload_offset = payload_offset(&cipher)?;
    let size = cipher.len() as u64;
    let store = repo.repository().store();
    store.put_new(&pack_key, Bytes::from(cipher)).await?;

    let blobs: Vec<Value> = indexed
        .iter()
        .map(|e| {
            json!({ "id": e.id.to_string(), "kind": "data", "compressed": e.compressed,
                    "offset": e.offset + shift, "length": e.length, "raw_length": e.raw_length })
        })
        .collect();
    let index = json!({ "packs": [{ "id": pack_id, "size": size,
                                    "payload_offset": payload_offset, "blobs": blobs }] });
    let packed = zstd::bulk::compress(index.to_string().as_bytes(), 3)?;
    let both: Vec<String> = config
        .restore_recipients
        .iter()
        .chain(&config.service_recipients)
        .cloned()
        .collect();
    let cipher = encrypt(&both, &packed)?;
    let index_key = format!("index/{}", blake3::hash(&cipher).to_hex());
    store.put_new(&index_key, Bytes::from(cipher)).await?;
    Ok((pack_key, index_key))
}

fn hex_bytes(id: &BlobId) -> Result<Vec<u8>> {
    let text = id.to_string();
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).context("a blob id is hex"))
        .collect()
}

/// Encrypts `plain` to the age recipients `recipients` (`age1…`).
fn encrypt(recipients: &[String], plain: &[u8]) -> Result<Vec<u8>> {
    let parsed: Vec<age::x25519::Recipient> = recipients
        .iter()
        .map(|r| r.parse().map_err(|e| anyhow::anyhow!("recipient {r}: {e}")))
        .collect::<Result<_>>()?;
    let encryptor =
        age::Encryptor::with_recipients(parsed.iter().map(|r| r as &dyn age::Recipient))?;
    let mut out = Vec::new();
    let mut writer = encryptor.wrap_output(&mut out)?;
    writer.write_all(plain)?;
    writer.finish()?;
    Ok(out)
}

/// Where an age file's payload starts: after the header's MAC line and the
/// 16-byte nonce (FORMAT.md, "Packs").
fn payload_offset(cipher: &[u8]) -> Result<u64> {
    let mac = cipher
        .windows(5)
        .position(|w| w == b"\n--- ")
        .context("an age header")?
        + 1;
    let end = mac
        + cipher[mac..]
            .iter()
            .position(|&b| b == b'\n')
            .context("a MAC line")?
        + 1;
    Ok(end as u64 + 16)
}

/// A `lifeboat` command with the small tree-entry bound.
fn command(installation: &Installation) -> Result<Command> {
    let mut command = installation.command("lifeboat")?;
    command.env("LIFEBOAT_MAX_TREE_ENTRIES", ENTRY_LIMIT);
    Ok(command)
}

/// `lifeboat check -i restore.key args… --json`, which must fail; its report.
fn check(installation: &Installation, args: &[&str]) -> Result<Value> {
    let mut command = command(installation)?;
    command
        .arg("check")
        .args(installation.repo_args())
        .arg("-i")
        .arg(installation.restore_key())
        .args(args)
        .arg("--json");
    let outcome = run(&mut command)?.failed()?;
    ensure!(outcome.status.code() == Some(1), "{}", outcome.output());
    outcome.json()
}

/// `lifeboat restore … SNAPSHOT --target TARGET --json` with the restore key.
fn restore(installation: &Installation, what: &str, target: &Path) -> Result<Outcome> {
    let mut command = command(installation)?;
    command
        .arg("restore")
        .args(installation.repo_args())
        .arg("-i")
        .arg(installation.restore_key())
        .arg(what)
        .arg("--target")
        .arg(target)
        .arg("--json");
    run(&mut command)
}

/// `lifeboat ls … -i restore.key latest:JOB`.
fn ls(installation: &Installation, job: &str) -> Result<Outcome> {
    let mut command = command(installation)?;
    command
        .arg("ls")
        .args(installation.repo_args())
        .arg("-i")
        .arg(installation.restore_key())
        .arg(format!("latest:{job}"));
    run(&mut command)
}

/// The first problem whose message contains `text`.
fn problem(report: &Value, text: &str) -> Result<Value> {
    report["problems"]
        .as_array()
        .and_then(|all| {
            all.iter()
                .find(|p| p["message"].as_str().is_some_and(|m| m.contains(text)))
        })
        .cloned()
        .with_context(|| format!("no problem says {text:?}: {report:#}"))
}

/// Whether a problem's `affects` names `text`.
fn affects(problem: &Value, text: &str) -> bool {
    problem["affects"].as_array().is_some_and(|all| {
        all.iter()
            .any(|a| a.as_str().is_some_and(|a| a.contains(text)))
    })
}
