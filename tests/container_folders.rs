//! A directory job that finds its folders through Docker labels, against
//! the harness's Docker Engine API stand-in (`lifeboat_tests::docker`; no
//! Docker daemon runs here): the bind mounts of the containers labelled
//! `lifeboat.dev/backup=true` are read where `mounts` maps them, a pre hook
//! runs in its container before the read and a post hook after, a
//! container labelled `lifeboat.dev/stop=true` is stopped for the read and
//! started again (also when another container's pre hook fails), and a
//! mount outside the mapped folders is skipped with a warning.

use anyhow::{Result, ensure};
use lifeboat_tests::cli::Installation;
use lifeboat_tests::docker::DockerEngine;

/// Runs a blocking CLI step without stalling the stand-in's runtime.
fn blocking<T>(step: impl FnOnce() -> Result<T>) -> Result<T> {
    tokio::task::block_in_place(step)
}

/// The engine with `app` folders under `seen/appdata` (where lifeboat
/// reads them) that the daemon reports under `host/appdata`.
fn apps(installation: &Installation, engine: &DockerEngine, names: &[&str]) -> Result<()> {
    for name in names {
        let seen = installation.path("seen/appdata").join(name);
        std::fs::create_dir_all(&seen)?;
        std::fs::write(seen.join("config.ini"), format!("[{name}]"))?;
        let env = vec![
            "PATH=/usr/local/bin:/usr/bin:/bin".to_owned(),
            format!("DATA={}", seen.display()),
        ];
        engine.add_container(name, &env)?;
        engine.bind(name, &installation.path("host/appdata").join(name));
    }
    Ok(())
}

fn job(installation: &Installation, engine: &DockerEngine) -> String {
    format!(
        r#"{{ kind = "directory", containers = {{ docker_socket = {:?}, mounts = [{{ host = {:?}, at = {:?} }}] }} }}"#,
        engine.socket().display().to_string(),
        installation.path("host/appdata").display().to_string(),
        installation.path("seen/appdata").display().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelled_containers_are_read_with_their_hooks() -> Result<()> {
    let installation = Installation::local()?;
    let engine = DockerEngine::start().await?;
    apps(
        &installation,
        &engine,
        &["gitea_server", "plex", "vaultwarden"],
    )?;
    for name in ["gitea_server", "vaultwarden"] {
        engine.label(name, "lifeboat.dev/backup", "true");
    }
    engine.label(
        "gitea_server",
        "pre.hook.backup.lifeboat.dev/command",
        r#"["sh", "-c", "echo frozen > \"$DATA/frozen.flag\""]"#,
    );
    engine.label(
        "gitea_server",
        "post.hook.backup.lifeboat.dev/command",
        r#"["sh", "-c", "rm \"$DATA/frozen.flag\""]"#,
    );
    engine.label("vaultwarden", "lifeboat.dev/stop", "true");
    // A labelled container whose data lifeboat cannot see.
    engine.add_container("stray", &[])?;
    engine.label("stray", "lifeboat.dev/backup", "true");
    engine.bind("stray", std::path::Path::new("/srv/elsewhere"));
    installation.write_config(&[], &[("apps", &job(&installation, &engine))])?;

    let report = blocking(|| installation.backup("apps"))?;
    let warnings = report["warnings"].to_string();
    ensure!(
        warnings.contains("container stray: /srv/elsewhere is not below a folder of `mounts`"),
        "the unmapped mount is reported: {warnings}"
    );
    ensure!(
        engine.lifecycle() == ["stop vaultwarden", "start vaultwarden"]
            && engine.is_running("vaultwarden"),
        "vaultwarden was stopped for the read and started again: {:?}",
        engine.lifecycle()
    );
    let seen = installation.path("seen/appdata");
    ensure!(
        !seen.join("gitea_server/frozen.flag").exists(),
        "the post hook ran after the read"
    );
    let target = installation.path("restored");
    blocking(|| {
        installation
            .restore(&installation.restore_key(), "latest:apps", &target)?
            .ok()
    })?;
    let inside = target.join(seen.strip_prefix("/")?);
    for file in [
        "gitea_server/config.ini",
        "gitea_server/frozen.flag",
        "vaultwarden/config.ini",
    ] {
        ensure!(
            inside.join(file).is_file(),
            "{file} is in the snapshot (read after the pre hook)"
        );
    }
    ensure!(
        !inside.join("plex").exists(),
        "an unlabelled container is not read"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pre_hook_stops_the_backup_and_restarts_what_was_stopped() -> Result<()> {
    let installation = Installation::local()?;
    let engine = DockerEngine::start().await?;
    apps(&installation, &engine, &["a_db", "b_app"])?;
    for name in ["a_db", "b_app"] {
        engine.label(name, "lifeboat.dev/backup", "true");
    }
    engine.label("a_db", "lifeboat.dev/stop", "true");
    engine.label(
        "b_app",
        "pre.hook.backup.lifeboat.dev/command",
        r#"["sh", "-c", "echo cannot freeze >&2; exit 3"]"#,
    );
    installation.write_config(&[], &[("apps", &job(&installation, &engine))])?;
    let outcome = blocking(|| installation.start_backup("apps")?.wait()?.failed())?;
    ensure!(
        outcome.stderr.contains("container \"b_app\": the pre hook")
            && outcome.stderr.contains("exited with 3: cannot freeze"),
        "the failing hook is named:\n{}",
        outcome.output()
    );
    ensure!(
        engine.lifecycle() == ["stop a_db", "start a_db"] && engine.is_running("a_db"),
        "a_db is running again: {:?}",
        engine.lifecycle()
    );

    // A hook label that is not a JSON array fails naming the label.
    engine.label("b_app", "pre.hook.backup.lifeboat.dev/command", "sync");
    let outcome = blocking(|| installation.start_backup("apps")?.wait()?.failed())?;
    ensure!(
        outcome
            .stderr
            .contains("label pre.hook.backup.lifeboat.dev/command must be a JSON array of strings"),
        "the bad label is named:\n{}",
        outcome.output()
    );
    Ok(())
}
