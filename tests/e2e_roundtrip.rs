//! The round trip as an operator runs it: `lifeboatd run` backs up a folder
//! full of awkward entries, `lifeboat restore` brings it back, and every
//! entry must come back as it was — content, kind, mode (setuid, setgid,
//! sticky), owner, mtime (files, folders and symlinks), symlink target,
//! hard-link identity, FIFOs, names that are not UTF-8. Excluded entries
//! stay out; a socket is skipped with a warning and does not fail the run.
//! The file cache makes an unchanged second run read nothing, and a run
//! after one file changed read only that file.
//!
//! Not covered: a file the service cannot read. The tests run as root, who
//! reads a `chmod 000` file anyway, so the socket stands in for "an entry
//! that cannot be stored is reported and skipped".
//!
//! Once against a local repository, once against Garage (`s3://`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use filetime::FileTime;
use lifeboat_tests::GarageServer;
use lifeboat_tests::cli::{
    Installation, Rng, TreeDescription, assert_same_tree, describe, summary, write_file,
};

/// The job's source: the folder `src` of the installation, with one
/// exclude of its own and one for the whole job.
const SOURCE: &str = r#"{ kind = "directory", folders = [{ path = "src", exclude = ["a/b/skipped"] }], exclude = ["*.tmp"] }"#;

/// A name that is not UTF-8 (Latin-1 "café.txt").
const LATIN1_NAME: &[u8] = b"caf\xe9.txt";
/// A folder name that is not UTF-8.
const BYTES_DIR: &[u8] = b"bytes \xff\xfe";

#[test]
fn local_round_trip() -> Result<()> {
    let installation = Installation::local()?;
    round_trip(&installation)
}

#[tokio::test]
async fn garage_round_trip() -> Result<()> {
    let garage = GarageServer::start().await?;
    let installation = Installation::s3(&garage.target(), "e2e-roundtrip")?;
    let result = round_trip(&installation);
    if result.is_err() {
        println!("{}", garage.log_tail());
    }
    result
}

/// The configuration example of README.md is accepted as written: the
/// backup gets past reading the config (and then fails only because the
/// example's folders do not exist here).
#[test]
fn readme_configuration_example_is_accepted() -> Result<()> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))?;
    let section = readme
        .split("## Configuration")
        .nth(1)
        .context("README.md has a Configuration section")?;
    let example = section
        .split("```toml")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .context("the Configuration section has a TOML example")?;
    let job = example
        .lines()
        .find_map(|line| line.trim().strip_prefix("name = "))
        .map(|name| name.trim_matches('"').to_owned())
        .context("the example has a job")?;
    let installation = Installation::local()?;
    std::fs::write(installation.config(), example)?;
    let mut command = installation.command("lifeboatd")?;
    command
        .args(["run", "--config"])
        .arg(installation.config())
        .arg(&job);
    let outcome = lifeboat_tests::cli::run(&mut command)?;
    ensure!(
        !outcome.stderr.contains("lifeboat.toml"),
        "the README's example configuration is rejected\n{}",
        outcome.output()
    );
    Ok(())
}

/// A folder holding only eight names of one 4 MiB file: its entries are
/// archived in parallel, so two threads read two names of the file at the
/// same time. All eight must still come back as one inode.
#[test]
fn hard_links_archived_in_parallel_stay_one_file() -> Result<()> {
    let installation = Installation::local()?;
    let src = installation.path("src");
    write_file(
        &src.join("link-0"),
        &Rng::new(0x5eed_0004).bytes(4 * 1024 * 1024),
    )?;
    for i in 1..8 {
        std::fs::hard_link(src.join("link-0"), src.join(format!("link-{i}")))?;
    }
    installation.write_config(
        &[],
        &[("links", r#"{ kind = "directory", paths = ["src"] }"#)],
    )?;
    let report = installation.backup("links")?;
    let expected = describe(&src)?;
    restore_and_compare(&installation, &src, "links", &expected)?;
    ensure!(
        summary(&report, "files_read")? == 1,
        "the file behind eight hard links is read once: {report:#}"
    );
    Ok(())
}

/// A tree of 18,000 files goes to the file cache 8,192 files at a time,
/// and the drill reads it back in batches of 16,384; hard links whose
/// names lie far apart and every folder's time still come back. (The
/// restore's own batches, of 262,144 files, are crossed in a unit test.)
#[test]
fn a_tree_of_many_restore_batches_comes_back_whole() -> Result<()> {
    let installation = Installation::local()?;
    let src = installation.path("src");
    let mut rng = Rng::new(0x5eed_0018);
    for folder in 0..18 {
        let dir = src.join(format!("d{folder:02}"));
        std::fs::create_dir_all(&dir)?;
        for file in 0..1000 {
            let size = 1 + (folder * 1000 + file) % 97;
            write_file(&dir.join(format!("f{file:04}")), &rng.bytes(size))?;
        }
    }
    for (first, other) in [("d00/f0000", "d17/link-a"), ("d09/f0500", "d17/link-b")] {
        std::fs::hard_link(src.join(first), src.join(other))?;
    }
    set_fixed_times(&src)?;
    installation.write_config(
        &[],
        &[("many", r#"{ kind = "directory", paths = ["src"] }"#)],
    )?;
    installation.backup("many")?;
    // What the first run learnt went to the file cache 8,192 files at a
    // time: all of it arrived.
    let second = installation.backup("many")?;
    ensure!(
        summary(&second, "files_read")? == 0,
        "an unchanged second run reads no file: {second:#}"
    );
    let expected = describe(&src)?;
    restore_and_compare(&installation, &src, "many", &expected)?;

    let outcome = installation
        .drill_command()?
        .args(["--job", "many", "--report", "drill.json"])
        .output()?;
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(installation.path("drill.json"))?)?;
    ensure!(outcome.status.success(), "the drill passes: {report:#}");
    let notes = report.to_string();
    ensure!(
        notes.matches("18000 files, ").count() == 2 && notes.contains("bytes hashed"),
        "the drill restored the 18,000 files and hashed every one: {report:#}"
    );
    Ok(())
}

/// Backs up, restores and compares; then the cached and the changed run.
fn round_trip(installation: &Installation) -> Result<()> {
    let src = installation.path("src");
    let left_out = build_source(&src)?;
    installation.write_config(&[], &[("home", SOURCE)])?;

    let first = installation.backup("home")?;
    ensure!(
        summary(&first, "skipped")? == 1,
        "only the socket is skipped: {first:#}"
    );
    let warnings = first["warnings"].to_string();
    ensure!(
        warnings.contains("special/socket"),
        "the skipped socket is named in the warnings: {warnings}"
    );
    ensure!(
        summary(&first, "files_read")? >= 12,
        "the first run reads every file: {first:#}"
    );
    let first_tree = expected_tree(&src, &left_out)?;
    restore_and_compare(installation, &src, "first", &first_tree)?;
    restore_parts(installation, &src)?;

    // Nothing changed: the file cache answers for every file.
    let second = installation.backup("home")?;
    ensure!(
        summary(&second, "files_read")? == 0 && summary(&second, "bytes_read")? == 0,
        "an unchanged second run reads no file: {second:#}"
    );
    let stored = summary(&second, "bytes_stored")?;
    ensure!(
        stored < 64 * 1024,
        "an unchanged second run stores almost nothing, not {stored} bytes: {second:#}"
    );

    // One file changed with its size and mtime kept (as `touch -r` or a
    // careless tool leaves it; only its ctime tells): only it is read.
    let changed = src.join("docs/readme.txt");
    let (seconds, nanos) = first_tree[Path::new("docs/readme.txt")].mtime;
    let mut text = std::fs::read(&changed)?;
    text[0] = b'#';
    std::fs::write(&changed, &text)?;
    set_mtime(&changed, seconds, u32::try_from(nanos)?)?;
    let third = installation.backup("home")?;
    ensure!(
        summary(&third, "files_read")? == 1 && summary(&third, "bytes_read")? == text.len() as u64,
        "only the changed file ({} bytes) is read: {third:#}",
        text.len()
    );
    let expected = expected_tree(&src, &left_out)?;
    restore_and_compare(installation, &src, "third", &expected)?;

    // The first snapshot, by an id prefix, still has the old file.
    let first_id = first["id"]
        .as_str()
        .context("the report has the snapshot id")?;
    let target = installation.path("restored-by-id");
    installation
        .restore(
            &installation.restore_key(),
            &format!("{}:{}", &first_id[..12], src.display()),
            &target,
        )?
        .ok()?;
    assert_same_tree(&first_tree, &describe(&target)?)
        .context("the first snapshot, restored by id prefix, is the first source")?;

    let listed = installation
        .lifeboat_repo(
            "snapshots",
            &[
                "-i",
                &installation.service_key().display().to_string(),
                "--json",
            ],
        )?
        .ok()?
        .json()?;
    ensure!(
        listed.as_array().map(Vec::len) == Some(3),
        "three snapshots are listed: {listed:#}"
    );
    Ok(())
}

/// Restores parts of the latest snapshot: one folder (its contents land in
/// the target) and one file (it lands in the target under its name), the
/// latter through `latest:JOB:PATH`.
fn restore_parts(installation: &Installation, src: &Path) -> Result<()> {
    let folder = installation.path("restored-folder");
    installation
        .restore(
            &installation.restore_key(),
            &format!("latest:{}/modes", src.display()),
            &folder,
        )?
        .ok()?;
    assert_same_tree(&describe(&src.join("modes"))?, &describe(&folder)?)
        .context("restoring the folder modes/")?;

    let file = installation.path("restored-file");
    installation
        .restore(
            &installation.restore_key(),
            &format!("latest:home:{}/bin/random.bin", src.display()),
            &file,
        )?
        .ok()?;
    let mut expected = describe(&src.join("bin"))?;
    expected.retain(|path, _| path == Path::new("random.bin"));
    assert_same_tree(&expected, &describe(&file)?).context("restoring the file bin/random.bin")
}

/// `describe(src)` without the entries that must not be restored.
fn expected_tree(src: &Path, left_out: &[PathBuf]) -> Result<TreeDescription> {
    let mut tree = describe(src)?;
    for path in left_out {
        ensure!(
            tree.remove(path).is_some(),
            "{} should be in the source",
            path.display()
        );
    }
    Ok(tree)
}

/// Restores the source folder of the latest snapshot into a new folder and
/// compares it with `expected`.
fn restore_and_compare(
    installation: &Installation,
    src: &Path,
    name: &str,
    expected: &TreeDescription,
) -> Result<()> {
    let target = installation.path(format!("restored-{name}"));
    let what = format!("latest:{}", src.display());
    let restored = installation
        .restore(&installation.restore_key(), &what, &target)?
        .ok()?
        .json()?;
    let restored_tree = describe(&target)?;
    assert_same_tree(expected, &restored_tree)
        .with_context(|| format!("restore {name} differs from the source: {restored:#}"))
}

/// Builds the source tree; returns the entries that must not come back
/// (excluded, or impossible to back up), relative to `root`.
fn build_source(root: &Path) -> Result<Vec<PathBuf>> {
    let mut rng = Rng::new(0x5eed_0001);
    let at = |relative: &str| root.join(relative);

    write_file(&at("docs/readme.txt"), &rng.text(20_000))?;
    write_file(&at("docs/empty"), b"")?;
    write_file(&at("docs/scratch.tmp"), b"excluded by the job's *.tmp")?;
    write_file(&at("bin/random.bin"), &rng.bytes(3 * 1024 * 1024 + 17))?;
    // Larger than the 8 MiB maximum chunk: read through the streaming chunker.
    write_file(&at("big/large.log"), &rng.text(9 * 1024 * 1024 + 4321))?;
    write_file(&at("a/b/c/d/deep.txt"), b"deep inside\n")?;
    write_file(&at("a/b/skipped/inside.txt"), b"excluded by a/b/skipped")?;
    write_file(&at("a/b/skipped.txt"), b"not excluded: only a/b/skipped is")?;
    std::fs::create_dir_all(at("empty-dir"))?;

    std::fs::create_dir_all(at("links"))?;
    std::os::unix::fs::symlink("../docs/readme.txt", at("links/to-readme"))?;
    std::os::unix::fs::symlink("../nowhere/at/all", at("links/dangling"))?;
    std::os::unix::fs::symlink("/etc/hostname", at("links/absolute"))?;
    std::os::unix::fs::symlink("../a/b", at("links/to-dir"))?;

    // Hard links: three names of one file in two folders, and a pair in a
    // folder whose name is not UTF-8.
    write_file(&at("hard/one"), &rng.bytes(300_000))?;
    std::fs::hard_link(at("hard/one"), at("hard/two"))?;
    std::fs::create_dir_all(at("hard/sub"))?;
    std::fs::hard_link(at("hard/one"), at("hard/sub/three"))?;
    let bytes_dir = at("names").join(OsStr::from_bytes(BYTES_DIR));
    write_file(&bytes_dir.join("first"), &rng.text(50_000))?;
    std::fs::hard_link(bytes_dir.join("first"), bytes_dir.join("second"))?;

    write_file(
        &at("names").join(OsStr::from_bytes(LATIN1_NAME)),
        b"latin-1 name\n",
    )?;
    write_file(&at("names/with space, ünïcödé & $quotes'\""), b"odd\n")?;

    let modes: &[(&str, u32)] = &[
        ("modes/secret", 0o600),
        ("modes/tool", 0o755),
        ("modes/read-only", 0o444),
        ("modes/setuid", 0o4750),
    ];
    for (path, mode) in modes {
        write_file(&at(path), path.as_bytes())?;
        std::fs::set_permissions(at(path), std::fs::Permissions::from_mode(*mode))?;
    }
    std::fs::create_dir_all(at("modes/setgid-dir"))?;
    write_file(&at("modes/setgid-dir/file"), b"in a setgid folder")?;
    std::fs::set_permissions(
        at("modes/setgid-dir"),
        std::fs::Permissions::from_mode(0o2775),
    )?;
    std::fs::create_dir_all(at("modes/sticky-dir"))?;
    std::fs::set_permissions(
        at("modes/sticky-dir"),
        std::fs::Permissions::from_mode(0o1777),
    )?;
    // Another owner (the tests run as root, so restore sets owners too).
    write_file(&at("modes/owned"), b"owned by 1234:5678")?;
    std::os::unix::fs::chown(at("modes/owned"), Some(1234), Some(5678))?;
    std::os::unix::fs::lchown(at("links/absolute"), Some(4321), Some(8765))?;

    std::fs::create_dir_all(at("special"))?;
    nix::unistd::mkfifo(
        &at("special/pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )?;
    // A socket cannot be backed up: skipped with a warning.
    drop(std::os::unix::net::UnixListener::bind(at(
        "special/socket",
    ))?);

    set_fixed_times(root)?;
    Ok(vec![
        PathBuf::from("docs/scratch.tmp"),
        PathBuf::from("a/b/skipped"),
        PathBuf::from("a/b/skipped/inside.txt"),
        PathBuf::from("special/socket"),
    ])
}

/// Sets every entry's mtime (symlinks' own included) to a distinct fixed
/// past time with nanoseconds, deepest entries first so that folders keep
/// theirs.
fn set_fixed_times(root: &Path) -> Result<()> {
    let mut paths: Vec<PathBuf> = describe(root)?.into_keys().collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, relative) in paths.iter().enumerate() {
        let i = i as i64;
        set_mtime(
            &root.join(relative),
            1_500_000_000 + i * 86_400,
            ((i * 7919) % 1_000_000_000) as u32,
        )?;
    }
    Ok(())
}

fn set_mtime(path: &Path, seconds: i64, nanos: u32) -> Result<()> {
    let time = FileTime::from_unix_time(seconds, nanos);
    filetime::set_symlink_file_times(path, time, time)
        .with_context(|| format!("setting the times of {}", path.display()))
}
