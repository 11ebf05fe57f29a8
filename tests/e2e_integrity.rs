//! Invariant 5 of DESIGN.md: a flipped bit anywhere is found by `check`
//! and refused by restore with an error naming what is lost.
//!
//! One repository (1 MiB packs, so a file's data spreads over several),
//! one backup; then one bit at a time is flipped in a pack, an index
//! object, a snapshot object, `config` and `keys`, the damage looked for,
//! and the bit flipped back.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use lifeboat_tests::cli::{
    Installation, Outcome, Rng, TreeDescription, assert_same_tree, describe, flip_bit, object_key,
    objects, write_file,
};
use serde_json::Value;

const SOURCE: &str = r#"{ kind = "directory", paths = ["src"] }"#;

#[test]
fn flipped_bits_are_found_and_named() -> Result<()> {
    let installation = Installation::local()?;
    let repo = installation.repo_dir()?;
    let src = installation.path("src");
    write_source(&src)?;
    let (restore_key, service_key) = (installation.restore_key(), installation.service_key());
    let mut init = vec!["--pack-size-mib".to_owned(), "1".to_owned()];
    for (flag, path) in [
        ("--restore-identity", &restore_key),
        ("--service-identity", &service_key),
    ] {
        init.extend([flag.to_owned(), path.display().to_string()]);
    }
    installation.lifeboat_repo("init", &init)?.ok()?;
    installation.write_config(&[], &[("home", SOURCE)])?;
    installation.backup("home")?;
    let source = describe(&src)?;

    for key in [&restore_key, &service_key] {
        let clean = installation.check(key, &["--read-data"])?.ok()?.json()?;
        ensure!(
            clean["packs_read"].as_u64() >= Some(4),
            "the undamaged repository checks clean, reading every pack: {clean:#}"
        );
    }

    damaged_pack(&installation, &src, &source)?;

    // Small packs: the backup may write more than one index object.
    let index = objects(&repo, "index")?
        .into_iter()
        .next()
        .context("no index object")?;
    flip_bit(&index, len(&index)? / 2, 5)?;
    for key in [&restore_key, &service_key] {
        let report = failed_check(&installation, key)?;
        names_object(&report, &object_key(&repo, &index))?;
    }
    flip_bit(&index, len(&index)? / 2, 5)?;

    let snapshot = single(objects(&repo, "snapshots")?, "snapshot object")?;
    flip_bit(&snapshot, len(&snapshot)? - 40, 0)?;
    for key in [&restore_key, &service_key] {
        let report = failed_check(&installation, key)?;
        names_object(&report, &object_key(&repo, &snapshot))?;
    }
    let refused = installation
        .restore(&restore_key, "latest", &installation.path("no-snapshot"))?
        .failed()?;
    ensure!(
        refused.stderr.contains(&object_key(&repo, &snapshot)),
        "restore names the damaged snapshot object\n{}",
        refused.output()
    );
    flip_bit(&snapshot, len(&snapshot)? - 40, 0)?;

    // `config` is plaintext: a flip that keeps it valid JSON (compression
    // level 3 becomes 2) is caught by the copy sealed in `keys`; one that
    // breaks the JSON is caught on reading.
    let config = repo.join("config");
    let text = std::fs::read_to_string(&config)?;
    let level = text
        .find("\"compression_level\": 3")
        .context("the config names compression level 3")?
        + "\"compression_level\": ".len();
    for (offset, bit) in [(level as u64, 0), (0, 1)] {
        flip_bit(&config, offset, bit)?;
        for key in [&restore_key, &service_key] {
            refused_naming(&installation, key, "config")?;
        }
        flip_bit(&config, offset, bit)?;
    }

    let keys = repo.join("keys");
    flip_bit(&keys, len(&keys)? / 2, 2)?;
    for key in [&restore_key, &service_key] {
        refused_naming(&installation, key, "object keys")?;
    }
    flip_bit(&keys, len(&keys)? / 2, 2)?;

    installation.check(&restore_key, &["--read-data"])?.ok()?;
    Ok(())
}

/// A flipped bit in a pack holding file data: `check --read-data` names the
/// pack and the files, with either key; restore names the same files and
/// restores all others.
fn damaged_pack(installation: &Installation, src: &Path, source: &TreeDescription) -> Result<()> {
    let repo = installation.repo_dir()?;
    let restore_key = installation.restore_key();
    // The biggest packs hold only file data (folder trees are written
    // last); take the first whose damage touches only files.
    let mut packs = objects(&repo, "data")?;
    ensure!(packs.len() >= 4, "1 MiB packs: {packs:?}");
    packs.sort_by_key(|p| std::cmp::Reverse(len(p).unwrap_or(0)));
    let mut chosen = None;
    for pack in packs.iter().take(3) {
        let offset = len(pack)? / 2;
        flip_bit(pack, offset, 3)?;
        let report = failed_check(installation, &restore_key)?;
        let problem = names_object(&report, &object_key(&repo, pack))?;
        let files = affected_files(&problem, src)?;
        if !files.is_empty() && files.iter().all(|f| source.contains_key(f)) {
            chosen = Some((pack.clone(), offset, files));
            break;
        }
        flip_bit(pack, offset, 3)?;
    }
    let Some((pack, offset, files)) = chosen else {
        bail!("no big pack's damage is reported as touching files only");
    };
    println!("damaged {} affects {files:?}", object_key(&repo, &pack));
    let report = failed_check(installation, &installation.service_key())?;
    names_object(&report, &object_key(&repo, &pack))?;

    let target = installation.path("restored-damaged");
    let what = format!("latest:{}", src.display());
    let refused = installation
        .restore(&restore_key, &what, &target)?
        .failed()?;
    let named: BTreeSet<PathBuf> = src_paths_named(&refused.stderr, src);
    ensure!(
        named == files,
        "restore names exactly the damaged files {files:?}, not {named:?}\n{}",
        refused.output()
    );
    let mut expected = source.clone();
    let mut restored = describe(&target)?;
    for file in &files {
        expected.remove(file);
        restored.remove(file);
    }
    assert_same_tree(&expected, &restored)
        .context("every undamaged file is restored despite the damaged pack")?;
    flip_bit(&pack, offset, 3)
}

/// Files of `src` named in `affects` of a check problem
/// (`snapshot <id> (<job>): <path>`), relative to `src`.
fn affected_files(problem: &Value, src: &Path) -> Result<BTreeSet<PathBuf>> {
    let affects = problem["affects"]
        .as_array()
        .context("a problem lists what it affects")?;
    Ok(affects
        .iter()
        .filter_map(Value::as_str)
        .filter_map(|a| a.split_once("): ").map(|(_, path)| path))
        .filter_map(|path| {
            Path::new(path)
                .strip_prefix(src)
                .ok()
                .map(Path::to_path_buf)
        })
        .collect())
}

/// The paths under `src` that `text` names, relative to `src`.
fn src_paths_named(text: &str, src: &Path) -> BTreeSet<PathBuf> {
    let prefix = format!("{}/", src.display());
    text.split([',', ' ', '\n', ':'])
        .filter_map(|word| word.strip_prefix(&prefix))
        .map(PathBuf::from)
        .collect()
}

/// `lifeboat check --read-data --json` with `key`, which must fail; its report.
fn failed_check(installation: &Installation, key: &Path) -> Result<Value> {
    let outcome = installation.check(key, &["--read-data"])?.failed()?;
    outcome.json()
}

/// The problem of `report` about `object`.
fn names_object(report: &Value, object: &str) -> Result<Value> {
    report["problems"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["object"] == object)
        .cloned()
        .with_context(|| format!("check names the damaged {object}: {report:#}"))
}

/// `check` with `key` fails before it starts, naming `what`.
fn refused_naming(installation: &Installation, key: &Path, what: &str) -> Result<Outcome> {
    let outcome = installation.check(key, &["--read-data"])?.failed()?;
    ensure!(
        outcome.stderr.contains(what),
        "check with {} names {what}\n{}",
        key.display(),
        outcome.output()
    );
    Ok(outcome)
}

fn single(mut found: Vec<PathBuf>, what: &str) -> Result<PathBuf> {
    ensure!(found.len() == 1, "one {what} expected: {found:?}");
    found.pop().context("none")
}

fn len(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)?.len())
}

/// Twelve small text files and eight random 600 KiB files, all in one
/// folder (so no folder tree is written before all file data).
fn write_source(src: &Path) -> Result<()> {
    let mut rng = Rng::new(0x5eed_0003);
    for i in 0..12 {
        write_file(&src.join(format!("note-{i:02}.txt")), &rng.text(2_000))?;
    }
    for i in 0..8 {
        write_file(&src.join(format!("part-{i}.bin")), &rng.bytes(600 * 1024))?;
    }
    Ok(())
}
