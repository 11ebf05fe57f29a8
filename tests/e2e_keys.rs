//! The two keys, as invariant 2 of DESIGN.md states them: the service key
//! backs up, lists and deduplicates, but cannot read file contents or names
//! — proved with lifeboat itself and with the stock `age` tool, object by
//! object. The restore key reads everything. Restore keys can be an existing
//! age identity (a SOPS key) or a passphrase-protected file.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use lifeboat_tests::cli::{Installation, Rng, assert_same_tree, describe, objects, run, summary};
use lifeboat_tests::process::require_program;

/// Strings in the source's names and contents that no object the service
/// key opens may contain.
const NAME_MARKER: &str = "QUARTERLY-PAYROLL-secret";
const DIR_MARKER: &str = "HR-dossiers-private";
const CONTENT_MARKER: &str = "the-CEO-salary-is-a-secret";

const SOURCE: &str = r#"{ kind = "directory", paths = ["src"] }"#;
const PASSPHRASE: &str = "correct horse battery staple";

#[test]
fn service_key_backs_up_lists_and_deduplicates_but_cannot_read() -> Result<()> {
    let installation = Installation::local()?;
    let src = installation.path("src");
    write_marked_source(&src)?;
    // The restore identity lives offline; the service sees only its recipient.
    let offline = installation.path("offline/restore.key");
    std::fs::create_dir_all(installation.path("offline"))?;
    let recipient = generate_key(&installation, &offline)?;
    installation.write_config(&[recipient], &[("home", SOURCE)])?;
    let service_key = installation.service_key();

    let first = installation.backup("home")?;
    ensure!(
        !installation.restore_key().exists(),
        "no restore identity is made when recipients are configured"
    );
    let mut args = arg("-i", &service_key);
    args.push("--json".into());
    let listed = installation
        .lifeboat_repo("snapshots", &args)?
        .ok()?
        .json()?;
    ensure!(
        listed.as_array().map(Vec::len) == Some(1) && listed[0]["job"] == "home",
        "the service key lists the snapshot: {listed:#}"
    );

    // Without the file cache every file is read again, and deduplication
    // against the index (read with the service key) stores no data again.
    std::fs::remove_dir_all(installation.path("state"))?;
    let second = installation.backup("home")?;
    let total = summary(&first, "bytes_total")?;
    ensure!(
        summary(&second, "bytes_read")? == total,
        "the second run reads every file without its cache: {second:#}"
    );
    let added = summary(&second, "bytes_added")?;
    ensure!(
        added < 16 * 1024,
        "the second run stores no file data again, only changed folder trees ({added} bytes of {total}): {second:#}"
    );

    // lifeboat refuses to read names or contents with the service key.
    for command in ["ls", "restore"] {
        let target = installation.path("not-restored");
        let mut args = arg("-i", &service_key);
        args.push("latest".into());
        if command == "restore" {
            args.extend(arg("--target", &target));
        }
        let refused = installation.lifeboat_repo(command, &args)?.failed()?;
        ensure!(
            refused.stderr.contains("needs the restore key"),
            "`lifeboat {command}` with the service key says the restore key is needed\n{}",
            refused.output()
        );
        ensure!(
            !target.exists() || std::fs::read_dir(&target)?.next().is_none(),
            "nothing is restored with the service key"
        );
    }

    // The stock age tool agrees, object by object.
    let repo = installation.repo_dir()?;
    let packs = objects(&repo, "data")?;
    ensure!(!packs.is_empty(), "the backup wrote packs");
    for pack in &packs {
        let opened = age_decrypt(&service_key, pack)?;
        ensure!(
            opened.is_err(),
            "the service key opens the pack {} with `age -d`",
            pack.display()
        );
        age_decrypt(&offline, pack)?.with_context(|| {
            format!(
                "the restore key opens the pack {} with `age -d`",
                pack.display()
            )
        })?;
    }
    let mut metadata = objects(&repo, "index")?;
    metadata.extend(objects(&repo, "snapshots")?);
    metadata.push(repo.join("keys"));
    ensure!(
        metadata.len() >= 4,
        "indexes, snapshots and keys: {metadata:?}"
    );
    let secrets = [
        NAME_MARKER.to_owned(),
        DIR_MARKER.to_owned(),
        CONTENT_MARKER.to_owned(),
        src.display().to_string(),
        installation.root().display().to_string(),
    ];
    let mut jobs_seen = 0;
    for object in &metadata {
        let packed = age_decrypt(&service_key, object)?
            .with_context(|| format!("the service key opens {} with `age -d`", object.display()))?;
        let plain = zstd_decompress(&packed)
            .with_context(|| format!("{} is zstd-compressed JSON", object.display()))?;
        let json: serde_json::Value = serde_json::from_slice(&plain)
            .with_context(|| format!("{} is zstd-compressed JSON", object.display()))?;
        let text = String::from_utf8_lossy(&plain);
        jobs_seen += usize::from(json["job"] == "home");
        for secret in &secrets {
            ensure!(
                !text.contains(secret.as_str()),
                "{} opened with the service key reveals {secret:?}: {json:#}",
                object.display()
            );
        }
    }

    ensure!(
        jobs_seen == 2,
        "the service key reads both snapshot summaries (job \"home\")"
    );

    // The restore key reads it all back.
    let target = installation.path("restored");
    installation
        .restore(&offline, &format!("latest:{}", src.display()), &target)?
        .ok()?;
    assert_same_tree(&describe(&src)?, &describe(&target)?)
}

#[test]
fn restore_recipients_from_an_existing_age_identity() -> Result<()> {
    let installation = Installation::local()?;
    let src = installation.path("src");
    write_marked_source(&src)?;
    let age_keygen = require_program("age-keygen", "apt-get install age")?;
    let sops_key = installation.path("sops-age-key.txt");
    run(Command::new(&age_keygen).arg("-o").arg(&sops_key))?.ok()?;
    let public = run(Command::new(&age_keygen).arg("-y").arg(&sops_key))?
        .ok()?
        .stdout
        .trim()
        .to_owned();

    let mut args = arg("--recipients-from", &sops_key);
    args.extend(arg("--service-identity", &installation.service_key()));
    args.push("--json".into());
    let init = installation.lifeboat_repo("init", &args)?.ok()?.json()?;
    ensure!(
        init["restore_recipients"] == serde_json::json!([public]),
        "the restore recipient is the age key's public key {public}: {init:#}"
    );
    ensure!(
        !installation.path("lifeboat-restore.key").exists()
            && init["created_files"] == serde_json::json!([installation.service_key()]),
        "init creates only the service identity: {init:#}"
    );

    // A config naming another restore recipient is refused, not obeyed.
    let other = generate_key(&installation, &installation.path("other.key"))?;
    installation.write_config(&[other], &[("home", SOURCE)])?;
    let refused = installation.start_backup("home")?.wait()?.failed()?;
    ensure!(
        refused.stderr.contains("differ from the repository's"),
        "a config with other recipients is refused\n{}",
        refused.output()
    );

    installation.write_config(&[public], &[("home", SOURCE)])?;
    installation.backup("home")?;
    let repo = installation.repo_dir()?;
    for pack in objects(&repo, "data")? {
        age_decrypt(&sops_key, &pack)?.with_context(|| {
            format!(
                "`age -d -i {}` opens {}",
                sops_key.display(),
                pack.display()
            )
        })?;
    }
    let target = installation.path("restored");
    installation
        .restore(&sops_key, &format!("latest:{}", src.display()), &target)?
        .ok()?;
    assert_same_tree(&describe(&src)?, &describe(&target)?)
}

#[test]
fn passphrase_protected_restore_identity() -> Result<()> {
    let installation = Installation::local()?;
    let src = installation.path("src");
    write_marked_source(&src)?;
    let restore_key = installation.restore_key();

    let mut args = vec!["--passphrase".into()];
    args.extend(arg("--restore-identity", &restore_key));
    args.extend(arg("--service-identity", &installation.service_key()));
    args.push("--json".into());
    let mut init = installation.command("lifeboat")?;
    init.arg("init")
        .args(installation.repo_args())
        .args(&args)
        .env("LIFEBOAT_PASSPHRASE", PASSPHRASE);
    let init = run(&mut init)?.ok()?.json()?;
    let key_text = std::fs::read_to_string(&restore_key)?;
    ensure!(
        key_text.starts_with("-----BEGIN AGE ENCRYPTED FILE-----")
            && !key_text.contains("AGE-SECRET-KEY"),
        "the restore identity is stored encrypted with the passphrase:\n{key_text}"
    );

    let mut recipients = installation.command("lifeboat")?;
    recipients
        .args(["keys", "recipients"])
        .arg(&restore_key)
        .env("LIFEBOAT_PASSPHRASE", PASSPHRASE);
    let shown = run(&mut recipients)?.ok()?.stdout;
    ensure!(
        serde_json::json!([shown.trim()]) == init["restore_recipients"],
        "`lifeboat keys recipients` shows the repository's restore recipient: {shown} vs {init:#}"
    );

    installation.write_config(&[], &[("home", SOURCE)])?;
    installation.backup("home")?;

    let what = format!("latest:{}", src.display());
    let restore = |target: &Path, passphrase: Option<&str>| -> Result<_> {
        let mut command = installation.command("lifeboat")?;
        command
            .arg("restore")
            .args(installation.repo_args())
            .arg("-i")
            .arg(&restore_key)
            .arg(&what)
            .arg("--target")
            .arg(target);
        if let Some(passphrase) = passphrase {
            command.env("LIFEBOAT_PASSPHRASE", passphrase);
        }
        run(&mut command)
    };

    let wrong = installation.path("wrong");
    let refused = restore(&wrong, Some("incorrect horse"))?.failed()?;
    ensure!(
        refused.stderr.contains("passphrase")
            && refused.stderr.contains(&restore_key.display().to_string()),
        "a wrong passphrase is refused, naming the key file and the passphrase\n{}",
        refused.output()
    );
    ensure!(
        !wrong.exists() || std::fs::read_dir(&wrong)?.next().is_none(),
        "nothing is restored with a wrong passphrase"
    );
    let missing = restore(&wrong, None)?.failed()?;
    ensure!(
        missing.stderr.contains("LIFEBOAT_PASSPHRASE"),
        "without a terminal or LIFEBOAT_PASSPHRASE, restore says how to give the passphrase\n{}",
        missing.output()
    );

    let target = installation.path("restored");
    restore(&target, Some(PASSPHRASE))?.ok()?;
    assert_same_tree(&describe(&src)?, &describe(&target)?)
}

/// A source whose names and contents hold the marker strings.
fn write_marked_source(src: &Path) -> Result<()> {
    let mut rng = Rng::new(0x5eed_0002);
    let mut content = CONTENT_MARKER.repeat(100).into_bytes();
    content.extend(rng.text(10_000));
    lifeboat_tests::cli::write_file(&src.join(format!("{NAME_MARKER}.csv")), &content)?;
    lifeboat_tests::cli::write_file(
        &src.join(DIR_MARKER).join("notes.txt"),
        format!("{CONTENT_MARKER} in a folder\n").as_bytes(),
    )?;
    lifeboat_tests::cli::write_file(&src.join("random.bin"), &rng.bytes(2 * 1024 * 1024))?;
    Ok(())
}

/// `lifeboat keys generate FILE`; returns the recipient it prints.
fn generate_key(installation: &Installation, file: &Path) -> Result<String> {
    let mut args = vec!["keys".to_owned(), "generate".to_owned()];
    args.push(file.display().to_string());
    let recipient = installation.lifeboat(&args)?.ok()?.stdout.trim().to_owned();
    ensure!(
        recipient.starts_with("age1"),
        "`lifeboat keys generate` prints the recipient, not {recipient:?}"
    );
    Ok(recipient)
}

/// A flag and a path as arguments.
fn arg(flag: &str, path: &Path) -> Vec<String> {
    vec![flag.to_owned(), path.display().to_string()]
}

/// `age -d -i IDENTITY FILE`: the plaintext, or `Err` with age's complaint
/// when it cannot decrypt. The outer `Result` fails when age cannot run.
fn age_decrypt(identity: &Path, file: &Path) -> Result<Result<Vec<u8>>> {
    let age = require_program("age", "apt-get install age")?;
    let out = tempfile::NamedTempFile::new()?;
    let outcome = run(Command::new(age)
        .arg("-d")
        .arg("-i")
        .arg(identity)
        .arg("-o")
        .arg(out.path())
        .arg(file))?;
    if !outcome.status.success() {
        return Ok(Err(anyhow::anyhow!(
            "age -d failed ({}): {}",
            outcome.status,
            outcome.stderr
        )));
    }
    Ok(Ok(std::fs::read(out.path())?))
}

/// `zstd -d` of `packed`, with the stock tool.
fn zstd_decompress(packed: &[u8]) -> Result<Vec<u8>> {
    let zstd = require_program("zstd", "apt-get install zstd")?;
    let dir = tempfile::tempdir()?;
    let input: PathBuf = dir.path().join("object.zst");
    std::fs::write(&input, packed)?;
    let output = dir.path().join("object.json");
    run(Command::new(zstd)
        .arg("-d")
        .arg("-q")
        .arg(&input)
        .arg("-o")
        .arg(&output))?
    .ok()?;
    Ok(std::fs::read(output)?)
}
