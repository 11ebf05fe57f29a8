//! Reaching a test S3 server: [`S3Target`], and running a test's body in a
//! child process whose environment holds the server's credentials.
//!
//! lifeboat takes S3 credentials only from the standard AWS chain (the
//! `AWS_*` environment, profiles), as in production. A test process cannot
//! set them for itself: `std::env::set_var` is `unsafe` in edition 2024
//! (the workspace forbids `unsafe`), racy with the other tests' threads, and
//! one process can hold only one set while tests want several (a good key, a
//! wrong one). So a test that drives the store in-process starts its servers,
//! then re-runs itself — the same test binary, that one test — with the
//! target's environment ([`run_in_child`]); the child finds its target with
//! [`child_target`]. Tests that run lifeboat's programs pass
//! [`S3Target::env`] to those commands the same way.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use lifeboat::storage::S3Options;
use serde::{Deserialize, Serialize};

/// Names the test a child process is to run.
const CHILD_TEST_VAR: &str = "LIFEBOAT_TEST_CHILD";
/// Holds the child's [`S3Target`] as JSON.
const CHILD_TARGET_VAR: &str = "LIFEBOAT_TEST_S3_TARGET";
/// Limit on a child test's run.
const CHILD_TIMEOUT: Duration = Duration::from_secs(600);

/// A bucket on a test server and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Target {
    /// The bucket, already created.
    pub bucket: String,
    /// The server's URL, e.g. `http://127.0.0.1:39000`.
    pub endpoint: String,
    /// The region the server expects.
    pub region: String,
    /// Whether the server needs path-style addressing.
    pub path_style: bool,
    /// Access key id allowed on the bucket.
    pub access_key_id: String,
    /// Its secret.
    pub secret_access_key: String,
}

impl S3Target {
    /// Options naming endpoint, region and addressing explicitly.
    pub fn options(&self) -> S3Options {
        S3Options {
            endpoint: Some(self.endpoint.clone()),
            region: Some(self.region.clone()),
            path_style: self.path_style,
        }
    }

    /// The standard AWS environment for this target: credentials, endpoint
    /// (`AWS_ENDPOINT_URL_S3`) and region, with the EC2 metadata lookup off.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_access_key.clone()),
            ("AWS_ENDPOINT_URL_S3", self.endpoint.clone()),
            ("AWS_REGION", self.region.clone()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ]
    }

    /// The same bucket reached through another endpoint (a proxy).
    pub fn via(&self, endpoint: String) -> Self {
        Self {
            endpoint,
            ..self.clone()
        }
    }

    /// The same target with another secret key, to be refused.
    pub fn with_secret(&self, secret_access_key: &str) -> Self {
        Self {
            secret_access_key: secret_access_key.to_owned(),
            ..self.clone()
        }
    }
}

/// In a child started by [`run_in_child`] for `test`, its target; in the
/// test process itself, `None`.
///
/// Fails when the child was started for another test, or its target is garbled.
pub fn child_target(test: &str) -> Result<Option<S3Target>> {
    let Some(running) = std::env::var_os(CHILD_TEST_VAR) else {
        return Ok(None);
    };
    if running != test {
        bail!("child started for test {running:?} is running {test:?}");
    }
    let json =
        std::env::var(CHILD_TARGET_VAR).with_context(|| format!("{CHILD_TARGET_VAR} unset"))?;
    Ok(Some(
        serde_json::from_str(&json).context("parsing the child's S3 target")?,
    ))
}

/// Runs the test `test` (its full libtest name) of the current test binary
/// in a child process with `target`'s environment ([`S3Target::env`]) in
/// place of any inherited `AWS_*` variables, and waits for it.
///
/// Fails when the child fails, times out, or did not run exactly that test.
pub async fn run_in_child(test: &str, target: &S3Target) -> Result<()> {
    let exe: PathBuf = std::env::current_exe().context("finding the test binary")?;
    let mut command = tokio::process::Command::new(&exe);
    command
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AWS_") {
            command.env_remove(key);
        }
    }
    command
        .envs(target.env())
        .env(CHILD_TEST_VAR, test)
        .env(CHILD_TARGET_VAR, serde_json::to_string(target)?);
    let output = tokio::time::timeout(CHILD_TIMEOUT, command.output())
        .await
        .with_context(|| format!("child for {test} did not finish within {CHILD_TIMEOUT:?}"))?
        .with_context(|| format!("running {}", exe.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = format!("--- child stdout ---\n{stdout}\n--- child stderr ---\n{stderr}");
    if !output.status.success() {
        bail!("child for {test} failed ({})\n{report}", output.status);
    }
    // A mistyped name would run nothing and succeed: demand the one test.
    if !stdout.contains("test result: ok. 1 passed") {
        bail!("child for {test} did not run exactly that test\n{report}");
    }
    println!("{report}");
    Ok(())
}
