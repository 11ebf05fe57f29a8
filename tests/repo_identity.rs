//! The repository's identity is pinned (issue "lossy stores"): `lifeboatd`
//! never initialises a location that holds objects, remembers the
//! repository it first used and refuses a replaced `config` or `keys`, and
//! the CLI's exit codes tell problems from failures. A closed standard
//! output ends a command quietly.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use lifeboat::repo::Repository;
use lifeboat::repo::config::InitOptions;
use lifeboat::repo::keys::{AnyIdentity, Recipients, generate_identity_file};
use lifeboat::storage::{LocalStore, ObjectStore};
use lifeboat_tests::cli::{Installation, Rng, write_file};

const SOURCE: &str = r#"{ kind = "directory", paths = ["src"] }"#;

/// An installation whose `lifeboatd` made the keys and the repository
/// (no recipients configured), with one backup of a small folder.
fn backed_up() -> Result<Installation> {
    let installation = Installation::local()?;
    let mut rng = Rng::new(7);
    for i in 0..20 {
        write_file(
            &installation.path(format!("src/file-{i}")),
            &rng.bytes(4096),
        )?;
    }
    installation.write_config(&[], &[("home", SOURCE)])?;
    installation.backup("home")?;
    Ok(installation)
}

fn read(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

#[test]
fn a_missing_config_is_refused_never_reinitialised() -> Result<()> {
    let installation = backed_up()?;
    let repo = installation.repo_dir()?;
    let (keys, restore_key) = (
        read(&repo.join("keys"))?,
        read(&installation.restore_key())?,
    );
    std::fs::rename(repo.join("config"), installation.path("config.moved"))?;

    let refused = installation.start_backup("home")?.wait()?.failed()?;
    ensure!(
        refused.stderr.contains("no `config`") && refused.stderr.contains("FORMAT.md"),
        "the refusal says what is wrong and the way out: {}",
        refused.output()
    );
    // Without the pin (a lost state folder) the location is still refused:
    // it holds objects.
    std::fs::remove_dir_all(installation.path("state"))?;
    let refused = installation.start_backup("home")?.wait()?.failed()?;
    ensure!(
        refused.stderr.contains("holds") && refused.stderr.contains("no `config`"),
        "a non-empty location is never initialised: {}",
        refused.output()
    );
    ensure!(!repo.join("config").exists(), "no new config was written");
    ensure!(read(&repo.join("keys"))? == keys, "keys is untouched");
    ensure!(
        read(&installation.restore_key())? == restore_key,
        "no new restore key is made for an existing repository"
    );

    std::fs::rename(installation.path("config.moved"), repo.join("config"))?;
    installation.backup("home")?;
    let restored = installation.path("restored");
    installation
        .restore(&installation.restore_key(), "latest", &restored)?
        .ok()?;
    Ok(())
}

/// Replaces `config` and `keys` of the installation's repository by those
/// of a new repository with the same service recipient and the restore
/// recipients `restore` (what a bucket writer without any key can make).
fn replace_config_and_keys(installation: &Installation, restore: Vec<String>) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let repo = installation.repo_dir()?;
    let forged = tempfile::tempdir()?;
    let forged = forged.path();
    runtime.block_on(async {
        let original = Repository::open(Arc::new(LocalStore::new(repo.clone()))).await?;
        let recipients = Recipients {
            restore: restore
                .iter()
                .map(|r| r.parse())
                .collect::<Result<_, _>>()?,
            service: original.recipients().service.clone(),
        };
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(forged.to_owned()));
        Repository::init(store, recipients, &InitOptions::default()).await?;
        anyhow::Ok(())
    })?;
    for name in ["config", "keys"] {
        std::fs::copy(forged.join(name), repo.join(name))?;
    }
    Ok(())
}

#[test]
fn replaced_config_and_keys_are_refused_by_the_pin_and_by_configured_recipients() -> Result<()> {
    let installation = backed_up()?;
    let ours = AnyIdentity::from_file(&installation.restore_key(), None)?
        .recipients()
        .first()
        .context("the restore key has a recipient")?
        .to_string();
    let attacker = generate_identity_file(&installation.path("attacker.key"), None)?.to_string();
    replace_config_and_keys(&installation, vec![ours.clone(), attacker.clone()])?;

    // No recipients configured: the pin made on first use refuses them.
    let refused = installation.start_backup("home")?.wait()?.failed()?;
    ensure!(
        refused.stderr.contains("pinned") && refused.stderr.contains(&attacker),
        "the pinned recipients refuse the added one: {}",
        refused.output()
    );
    // Configured recipients must equal the repository's, not be a subset.
    installation.write_config(std::slice::from_ref(&ours), &[("home", SOURCE)])?;
    let refused = installation.start_backup("home")?.wait()?.failed()?;
    ensure!(
        refused.stderr.contains("in the config") && refused.stderr.contains(&attacker),
        "configured recipients are compared exactly: {}",
        refused.output()
    );
    // A replacement with exactly our recipients still changes `keys` (a new
    // chunk-id key), which the pin refuses.
    replace_config_and_keys(&installation, vec![ours])?;
    let refused = installation.start_backup("home")?.wait()?.failed()?;
    ensure!(
        refused.stderr.contains("not the one this service pinned"),
        "a replaced config is refused: {}",
        refused.output()
    );
    let snapshots = std::fs::read_dir(installation.repo_dir()?.join("snapshots"))?.count();
    ensure!(
        snapshots == 1,
        "nothing was backed up into the forged repository"
    );
    Ok(())
}

#[test]
fn exit_codes_tell_problems_from_failures_and_a_closed_output_is_success() -> Result<()> {
    let installation = Installation::local()?;
    let mut rng = Rng::new(11);
    for i in 0..3000 {
        write_file(
            &installation.path(format!("src/d{}/f-{i}", i % 30)),
            &rng.bytes(16),
        )?;
    }
    installation.write_config(&[], &[("home", SOURCE)])?;
    installation.backup("home")?;
    let restore_key = installation.restore_key().display().to_string();
    let service_key = installation.service_key().display().to_string();

    // `lifeboat ls … | head -1`: the pipe closes after one line.
    let mut command = installation.command("lifeboat")?;
    command
        .arg("ls")
        .args(installation.repo_args())
        .args(["-i", &restore_key, "latest"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first)?;
    ensure!(!first.is_empty(), "ls printed a line");
    let output = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success() && !stderr.contains("panicked"),
        "a closed stdout ends ls quietly with success ({}): {stderr}",
        output.status
    );

    let code = |outcome: lifeboat_tests::cli::Outcome| outcome.status.code();
    let missing = installation.path("nowhere").display().to_string();
    let no_repo = installation.lifeboat(&["snapshots", "-r", &missing, "-i", &service_key])?;
    ensure!(code(no_repo) == Some(10), "no repository: 10");
    let needs_restore = installation.lifeboat_repo("ls", &["-i", &service_key, "latest"])?;
    ensure!(
        code(needs_restore) == Some(12),
        "the service key cannot list files: 12"
    );
    let usage = installation.lifeboat(&["snapshots", "--no-such-flag"])?;
    ensure!(code(usage) == Some(64), "usage: 64");
    let clean = installation.check(&installation.restore_key(), &["--read-data"])?;
    ensure!(code(clean) == Some(0), "a clean check: 0");
    let pack = lifeboat_tests::cli::objects(&installation.repo_dir()?, "data")?
        .into_iter()
        .next()
        .context("no pack")?;
    lifeboat_tests::cli::flip_bit(&pack, 200, 3)?;
    let damaged = installation.check(&installation.restore_key(), &["--read-data"])?;
    ensure!(code(damaged) == Some(1), "damage found: 1");
    std::fs::write(installation.path("not-a-key"), "nothing here")?;
    let bad_key = installation.lifeboat_repo("snapshots", &["-i", "not-a-key"])?;
    ensure!(code(bad_key) == Some(12), "an unusable key file: 12");
    Ok(())
}
