//! Running lifeboat's programs as an operator does, and looking at what they
//! leave on disk.
//!
//! - [`binary`]: the real `lifeboat` and `lifeboatd`, built once per test
//!   process with `cargo build --bins` into the test's own target folder
//!   (binaries of other packages are not exposed to integration tests);
//! - [`Installation`]: a temporary folder holding `lifeboat.toml`, keys,
//!   state and (for local repositories) the repository, whose programs run
//!   with a clean environment (`AWS_*` only from the S3 target, no colours);
//! - [`Outcome`]: a finished command, checked with [`Outcome::ok`] or
//!   [`Outcome::failed`], which put the whole output in the error;
//! - [`describe`] and [`assert_same_tree`]: a file tree as `lstat` sees it
//!   (kinds, modes, owners, mtimes, contents, link targets, hard-link
//!   groups), and a readable diff of two;
//! - [`Rng`]: seeded, dependency-free test data; [`flip_bit`] and
//!   [`objects`] to damage and inspect a local repository.

mod command;
mod data;
mod tree;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use tempfile::TempDir;

pub use command::{Outcome, Running, run, spawn};
pub use data::{Rng, flip_bit, object_key, objects, write_file};
pub use tree::{Entry, Kind, TreeDescription, assert_same_tree, content_hash, describe};

use crate::s3::S3Target;

/// The folder holding the workspace's binaries, after building them once.
///
/// Fails with cargo's output when the build fails.
pub fn binaries() -> Result<&'static Path> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_binaries().map_err(|e| format!("{e:#}")))
        .as_deref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The path of the workspace binary `name` (`lifeboat`, `lifeboatd`).
///
/// Fails when it cannot be built.
pub fn binary(name: &str) -> Result<PathBuf> {
    let path = binaries()?.join(name);
    ensure!(
        path.is_file(),
        "{} is missing after `cargo build --bins`",
        path.display()
    );
    Ok(path)
}

/// Runs `cargo build --bins --workspace` (the service and the CLI) into the target
/// folder and profile this test binary was built in (it sits in
/// `<target>/<profile>/deps/`), so the binaries are never stale.
fn build_binaries() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the test binary")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test binary is not in <target>/<profile>/deps")?
        .to_owned();
    let target_dir = profile_dir.parent().context("no target folder")?;
    let profile = profile_dir
        .file_name()
        .and_then(OsStr::to_str)
        .unwrap_or("debug");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("no workspace folder")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&cargo);
    command
        .current_dir(workspace)
        // `--workspace` resolves features as the test build does, so the
        // binaries reuse its dependencies instead of compiling a second set.
        .args(["build", "--bins", "--workspace"])
        .arg("--target-dir")
        .arg(target_dir);
    match profile {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", Path::new(&cargo).display()))?;
    if !output.status.success() {
        bail!(
            "`cargo build --bins` failed ({}); the end-to-end tests need lifeboat and lifeboatd:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(profile_dir)
}

/// A lifeboat installation in a temporary folder: `lifeboat.toml`,
/// `keys/service.key` (and `keys/restore.key` when lifeboatd makes it),
/// `state/`, sources the test writes, and a repository in `repo/` or in a
/// bucket. Removed on drop.
#[derive(Debug)]
pub struct Installation {
    dir: TempDir,
    url: String,
    s3: Option<S3Target>,
}

impl Installation {
    /// An installation whose repository is the local folder `repo/`.
    ///
    /// Fails when the temporary folder cannot be made.
    pub fn local() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let url = dir.path().join("repo").display().to_string();
        Self::create(dir, url, None)
    }

    /// An installation whose repository is `s3://BUCKET/prefix` on `target`.
    ///
    /// Fails when the temporary folder cannot be made.
    pub fn s3(target: &S3Target, prefix: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let url = format!("s3://{}/{prefix}", target.bucket);
        Self::create(dir, url, Some(target.clone()))
    }

    fn create(dir: TempDir, url: String, s3: Option<S3Target>) -> Result<Self> {
        std::fs::create_dir_all(dir.path().join("keys"))?;
        Ok(Self { dir, url, s3 })
    }

    /// The installation's folder.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the installation's folder.
    pub fn path(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// The repository URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The local repository folder.
    ///
    /// Fails for an S3 repository.
    pub fn repo_dir(&self) -> Result<PathBuf> {
        ensure!(self.s3.is_none(), "{} is not a local repository", self.url);
        Ok(PathBuf::from(&self.url))
    }

    /// `keys/service.key`.
    pub fn service_key(&self) -> PathBuf {
        self.path("keys/service.key")
    }

    /// `keys/restore.key`.
    pub fn restore_key(&self) -> PathBuf {
        self.path("keys/restore.key")
    }

    /// The config file, `lifeboat.toml`.
    pub fn config(&self) -> PathBuf {
        self.path("lifeboat.toml")
    }

    /// Writes `lifeboat.toml` for the repository with `keys/service.key`,
    /// restore `recipients` and one job per `(name, source)`, where `source`
    /// is the TOML inline table of the job's source. The file cache is in
    /// `state/`, the default beside the config.
    ///
    /// Fails when the file cannot be written.
    pub fn write_config(&self, recipients: &[String], jobs: &[(&str, &str)]) -> Result<()> {
        let mut text = format!(
            "[repository]\nurl = {url:?}\nservice_identity = \"keys/service.key\"\nrecipients = {recipients:?}\n",
            url = self.url,
        );
        if let Some(s3) = &self.s3 {
            text.push_str(&format!(
                "s3 = {{ endpoint = {:?}, region = {:?}, path_style = {} }}\n",
                s3.endpoint, s3.region, s3.path_style
            ));
        }
        for (name, source) in jobs {
            text.push_str(&format!("\n[[job]]\nname = {name:?}\nsource = {source}\n"));
        }
        std::fs::write(self.config(), text).context("writing lifeboat.toml")
    }

    /// The flags that name the repository: `-r URL` and, for S3, the
    /// endpoint, region and addressing.
    pub fn repo_args(&self) -> Vec<String> {
        let mut args = vec!["-r".to_owned(), self.url.clone()];
        if let Some(s3) = &self.s3 {
            args.extend(["--s3-endpoint".to_owned(), s3.endpoint.clone()]);
            args.extend(["--s3-region".to_owned(), s3.region.clone()]);
            if s3.path_style {
                args.push("--s3-path-style".to_owned());
            }
        }
        args
    }

    /// A command for the workspace binary `program` (`lifeboat`,
    /// `lifeboatd`) run in the installation's folder, with no inherited
    /// `AWS_*`, `LIFEBOAT_*` or `RUST_LOG` variables, colours off, and the
    /// S3 target's credentials (only the credentials: endpoint and region
    /// come from the config or flags, as an operator gives them).
    ///
    /// Fails when the binary cannot be built.
    pub fn command(&self, program: &str) -> Result<Command> {
        let mut command = Command::new(binary(program)?);
        command.current_dir(self.root());
        for (key, _) in std::env::vars_os() {
            let name = key.to_string_lossy();
            if name.starts_with("AWS_") || name.starts_with("LIFEBOAT_") || name == "RUST_LOG" {
                command.env_remove(&key);
            }
        }
        command.env("NO_COLOR", "1");
        if let Some(s3) = &self.s3 {
            command
                .env("AWS_ACCESS_KEY_ID", &s3.access_key_id)
                .env("AWS_SECRET_ACCESS_KEY", &s3.secret_access_key)
                .env("AWS_EC2_METADATA_DISABLED", "true");
        }
        Ok(command)
    }

    /// Runs `lifeboat args…`.
    ///
    /// Fails when it cannot run; check the outcome with [`Outcome::ok`].
    pub fn lifeboat<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<Outcome> {
        run(self.command("lifeboat")?.args(args))
    }

    /// Runs `lifeboat COMMAND <repo flags> args…` (e.g. `snapshots`, `check`).
    ///
    /// Fails when it cannot run; check the outcome with [`Outcome::ok`].
    pub fn lifeboat_repo<S: AsRef<OsStr>>(&self, subcommand: &str, args: &[S]) -> Result<Outcome> {
        let mut command = self.command("lifeboat")?;
        command.arg(subcommand).args(self.repo_args()).args(args);
        run(&mut command)
    }

    /// Starts `lifeboatd run --config lifeboat.toml JOB --json` in the background.
    ///
    /// Fails when it cannot start.
    pub fn start_backup(&self, job: &str) -> Result<Running> {
        let mut command = self.command("lifeboatd")?;
        command
            .args(["run", "--config"])
            .arg(self.config())
            .args([job, "--json"]);
        spawn(&mut command)
    }

    /// Runs `lifeboatd run --config lifeboat.toml JOB --json` and returns
    /// its report (`id`, `summary`, `warnings`, …).
    ///
    /// Fails when the backup fails or prints no JSON.
    pub fn backup(&self, job: &str) -> Result<Value> {
        self.start_backup(job)?.wait()?.ok()?.json()
    }

    /// The metadata of `job`'s newest snapshot, read with the service key
    /// (`lifeboat snapshots --json`).
    pub fn latest_metadata(&self, job: &str) -> Result<Value> {
        let key = self.service_key().display().to_string();
        let list = self
            .lifeboat_repo("snapshots", &["-i", key.as_str(), "--job", job, "--json"])?
            .ok()?
            .json()?;
        list.as_array()
            .and_then(|all| all.last())
            .map(|snapshot| snapshot["metadata"].clone())
            .with_context(|| format!("no snapshot of {job}: {list:#}"))
    }

    /// A `lifeboat restore <repo flags> -i KEY` command, to add the
    /// snapshot and flags to and run.
    ///
    /// Fails when the binary cannot be built.
    pub fn restore_command(&self, key: &Path) -> Result<Command> {
        let mut command = self.command("lifeboat")?;
        command
            .arg("restore")
            .args(self.repo_args())
            .arg("-i")
            .arg(key);
        Ok(command)
    }

    /// Restores `what` (`SNAPSHOT[:PATH]`) with the identity `key` into
    /// `target`, as `lifeboat restore --keep-special --json` (the tests
    /// restore their own backups, setuid bits and devices included).
    ///
    /// Fails when it cannot run; check the outcome with [`Outcome::ok`].
    pub fn restore(&self, key: &Path, what: &str, target: &Path) -> Result<Outcome> {
        let mut command = self.restore_command(key)?;
        command
            .arg(what)
            .arg("--target")
            .arg(target)
            .args(["--keep-special", "--json"]);
        run(&mut command)
    }

    /// A `lifeboat drill --config lifeboat.toml -i keys/restore.key`
    /// command, to add flags to and run.
    ///
    /// Fails when the binary cannot be built.
    pub fn drill_command(&self) -> Result<Command> {
        let mut command = self.command("lifeboat")?;
        command
            .arg("drill")
            .arg("--config")
            .arg(self.config())
            .arg("-i")
            .arg(self.restore_key());
        Ok(command)
    }

    /// Runs `lifeboat check -i KEY args… --json` and returns the outcome.
    ///
    /// Fails when it cannot run.
    pub fn check(&self, key: &Path, args: &[&str]) -> Result<Outcome> {
        let mut command = self.command("lifeboat")?;
        command
            .arg("check")
            .args(self.repo_args())
            .arg("-i")
            .arg(key)
            .args(args)
            .arg("--json");
        run(&mut command)
    }
}

/// A summary figure of a `lifeboatd run --json` report.
///
/// Fails when the report has no such number.
pub fn summary(report: &Value, field: &str) -> Result<u64> {
    report["summary"][field]
        .as_u64()
        .with_context(|| format!("no summary.{field} in the backup report {report:#}"))
}

/// The item of kind `kind` (`volume`, `resource`, …) named `name` in a
/// `lifeboatd run --json` report.
///
/// Fails when the report has no such item.
pub fn report_item<'a>(report: &'a Value, kind: &str, name: &str) -> Result<&'a Value> {
    report["items"]
        .as_array()
        .and_then(|items| {
            items
                .iter()
                .find(|i| i["kind"] == kind && i["name"] == name)
        })
        .with_context(|| format!("no {kind} item {name} in the backup report {report:#}"))
}
