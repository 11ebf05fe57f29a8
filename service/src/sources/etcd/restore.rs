//! Restoring etcd: the snapshot file with its SHA-256 trailer checked
//! (ready for `talosctl bootstrap --recover-from` or `etcdutl snapshot
//! restore`), a data dir made from it by etcd's own tool, and a throwaway
//! member on loopback that proves the data dir starts and answers.
//!
//! The data dir is made with `etcdutl snapshot restore` (etcd 3.5+), or
//! `etcdctl snapshot restore` where only etcdctl is installed (etcd 3.4,
//! e.g. Debian's `etcd-client`). Both check the trailer again.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::SNAPSHOT_FILE;
use super::snapshot_file::{VerifiedSnapshot, VerifyFileError, verify_file};
use crate::repo::id::BlobId;
use crate::repo::reader::BlobReader;
use crate::restore::RestoreError;
use crate::restore::files::{RestoreOptions, RestoreProgress, restore};

/// How to install etcd's tools, for error messages.
const INSTALL: &str = "install etcd's tools (Debian: apt-get install etcd-client etcd-server; \
    or etcdutl and etcd from https://github.com/etcd-io/etcd/releases) and put them on PATH";

/// Why a snapshot file could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    /// Reading the snapshot or writing the file failed.
    #[error(transparent)]
    Restore(#[from] RestoreError),
    /// The restored file failed its SHA-256 check.
    #[error(transparent)]
    Verify(#[from] VerifyFileError),
    /// The check stopped before it ended (its thread panicked).
    #[error("the check of the etcd snapshot file stopped: {0}")]
    Stopped(#[source] tokio::task::JoinError),
}

/// Writes the snapshot's `etcd.db` into `dir` and checks its trailer;
/// returns the file and what the check found.
///
/// Fails when the snapshot holds no `etcd.db`, `dir` is not empty (without
/// `force`), data is damaged, or the trailer does not match.
pub async fn restore_snapshot_file(
    reader: &BlobReader,
    root: BlobId,
    dir: &Path,
    force: bool,
    progress: Arc<RestoreProgress>,
) -> Result<(PathBuf, VerifiedSnapshot), SnapshotFileError> {
    restore(
        reader,
        root,
        SNAPSHOT_FILE,
        dir,
        &RestoreOptions {
            force,
            ..RestoreOptions::default()
        },
        progress,
    )
    .await?;
    let file = dir.join(SNAPSHOT_FILE);
    let checked = file.clone();
    let verified = tokio::task::spawn_blocking(move || verify_file(&checked))
        .await
        .map_err(SnapshotFileError::Stopped)??;
    Ok((file, verified))
}

/// The tool that turns a snapshot into a data dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum RestoreTool {
    /// `etcdutl snapshot restore` (etcd 3.5+).
    Etcdutl(PathBuf),
    /// `etcdctl snapshot restore` with `ETCDCTL_API=3` (etcd 3.4).
    Etcdctl(PathBuf),
}

impl RestoreTool {
    /// `etcdutl` from `PATH`, else `etcdctl`.
    ///
    /// Fails, saying how to install them, when neither is there.
    pub fn find() -> Result<Self, RestoreError> {
        if let Some(path) = on_path("etcdutl") {
            return Ok(Self::Etcdutl(path));
        }
        if let Some(path) = on_path("etcdctl") {
            return Ok(Self::Etcdctl(path));
        }
        Err(RestoreError::Tool {
            program: "etcdutl".into(),
            message: "neither etcdutl nor etcdctl is on PATH".into(),
            fix: INSTALL.into(),
        })
    }

    /// The program's path.
    pub fn program(&self) -> &Path {
        match self {
            Self::Etcdutl(path) | Self::Etcdctl(path) => path,
        }
    }
}

/// The member a restored data dir is made for.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its name (`--name`).
    pub name: String,
    /// Its peer URL (`--initial-advertise-peer-urls`).
    pub peer_url: String,
}

/// Makes `data_dir` (which must not exist) from the snapshot file with
/// `tool`, as a one-member cluster of `member`.
///
/// Fails with the tool's own message when it refuses (a damaged snapshot,
/// an existing data dir).
pub async fn restore_data_dir(
    tool: &RestoreTool,
    snapshot: &Path,
    data_dir: &Path,
    member: &Member,
) -> Result<(), RestoreError> {
    let mut command = tokio::process::Command::new(tool.program());
    command
        .args(["snapshot", "restore"])
        .arg(snapshot)
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg(format!("--name={}", member.name))
        .arg(format!(
            "--initial-cluster={}={}",
            member.name, member.peer_url
        ))
        .arg(format!("--initial-advertise-peer-urls={}", member.peer_url))
        .env("ETCDCTL_API", "3")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let program = tool.program().display().to_string();
    let output = command.output().await.map_err(|e| RestoreError::Tool {
        program: program.clone(),
        message: e.to_string(),
        fix: INSTALL.into(),
    })?;
    if !output.status.success() {
        return Err(RestoreError::Tool {
            program,
            message: one_line(&output.stderr),
            fix: "check the snapshot file with `etcdutl snapshot status` and that the data dir \
                  does not exist yet"
                .into(),
        });
    }
    Ok(())
}

/// An etcd started on a restored data dir, on loopback ports, stopped
/// when dropped.
#[derive(Debug)]
pub struct ThrowawayEtcd {
    child: tokio::process::Child,
    client_url: String,
    log: PathBuf,
}

/// What a member answers about its keyspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Keyspace {
    /// Keys in the whole keyspace.
    pub key_count: i64,
    /// The current revision.
    pub revision: i64,
}

impl ThrowawayEtcd {
    /// Starts `etcd` on `data_dir` (made for `member`, whose peer URL must
    /// be a free loopback port) on a free loopback client port, logging to
    /// `log`, and waits up to `wait` for it to answer.
    ///
    /// Fails when etcd is missing, exits, or does not answer in time; the
    /// error holds the end of its log.
    pub async fn start(
        data_dir: &Path,
        member: &Member,
        log: &Path,
        wait: Duration,
    ) -> Result<(Self, Keyspace), RestoreError> {
        let program = on_path("etcd").ok_or_else(|| RestoreError::Tool {
            program: "etcd".into(),
            message: "etcd is not on PATH".into(),
            fix: INSTALL.into(),
        })?;
        let client_url = format!("http://127.0.0.1:{}", free_port()?);
        let log_file = std::fs::File::create(log).map_err(RestoreError::io("creating", log))?;
        let log_err = log_file
            .try_clone()
            .map_err(RestoreError::io("creating", log))?;
        let child = tokio::process::Command::new(&program)
            .arg(format!("--name={}", member.name))
            .arg(format!("--data-dir={}", data_dir.display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={}", member.peer_url))
            .arg(format!("--initial-advertise-peer-urls={}", member.peer_url))
            .arg(format!(
                "--initial-cluster={}={}",
                member.name, member.peer_url
            ))
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| RestoreError::Tool {
                program: program.display().to_string(),
                message: e.to_string(),
                fix: INSTALL.into(),
            })?;
        let mut etcd = Self {
            child,
            client_url,
            log: log.to_owned(),
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Ok(Some(status)) = etcd.child.try_wait() {
                return Err(etcd.failed(format!("etcd exited ({status})")));
            }
            let last = match etcd.keyspace().await {
                Ok(keyspace) => return Ok((etcd, keyspace)),
                Err(e) => e,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(etcd.failed(format!(
                    "etcd did not answer within {}: {last}",
                    humantime::format_duration(wait)
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The client URL.
    pub fn client_url(&self) -> &str {
        &self.client_url
    }

    /// Counts the keys of the whole keyspace (a count-only range, as the
    /// backup did) and reads the revision.
    ///
    /// Fails with the client's error text.
    pub async fn keyspace(&self) -> Result<Keyspace, String> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(10));
        let mut client = etcd_client::Client::connect([self.client_url.as_str()], Some(options))
            .await
            .map_err(|e| e.to_string())?;
        let response = client
            .get(
                Vec::<u8>::new(),
                Some(
                    etcd_client::GetOptions::new()
                        .with_all_keys()
                        .with_count_only(),
                ),
            )
            .await
            .map_err(|e| e.to_string())?;
        let revision = response
            .header()
            .map(|h| h.revision())
            .ok_or("an answer without a header")?;
        Ok(Keyspace {
            key_count: response.count(),
            revision,
        })
    }

    fn failed(&self, message: String) -> RestoreError {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        RestoreError::Tool {
            program: "etcd".into(),
            message: format!(
                "{message}; its log ends: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ),
            fix: "check that the data dir was made from this snapshot and that loopback ports are free"
                .into(),
        }
    }
}

/// A free loopback TCP port.
///
/// Fails when none can be bound.
pub fn free_port() -> Result<u16, RestoreError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(RestoreError::io(
            "binding a loopback port",
            Path::new("127.0.0.1"),
        ))
}

/// `name` found in a folder of `PATH`.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A program's stderr on one line.
fn one_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
