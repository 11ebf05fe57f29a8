//! Child processes of the PostgreSQL client programs: starting them with a
//! clear error when they are missing, keeping their stderr for messages,
//! and streaming a dump's stdout while the child runs.

use std::path::Path;
use std::process::ExitStatus;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr, ChildStdout};
use tokio::task::JoinHandle;

use super::PostgresError;

/// The most of a child's stderr kept for an error message.
const STDERR_LIMIT: u64 = 64 * 1024;

/// A child's stderr, trimmed, at most [`STDERR_LIMIT`] bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct StderrText(pub String);

impl StderrText {
    /// The text of `bytes` on one line (lines trimmed and joined by a
    /// space), invalid UTF-8 replaced.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let limit = bytes.len().min(STDERR_LIMIT as usize);
        let text = String::from_utf8_lossy(&bytes[..limit]);
        Self(
            text.lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .collect::<Vec<_>>()
                .join(" "),
        )
    }
}

/// Starts `command` (running `program`).
///
/// Fails, naming the program and how to get it, when it cannot start.
pub(crate) fn spawn(
    command: &mut tokio::process::Command,
    program: &Path,
) -> Result<Child, PostgresError> {
    command.spawn().map_err(|cause| PostgresError::Spawn {
        program: program.to_owned(),
        cause,
    })
}

/// Runs `command` (running `program`) to its end and returns what it
/// printed and how it exited.
///
/// Fails, naming the program, when it cannot start or be waited for.
pub(crate) async fn output(
    command: &mut tokio::process::Command,
    program: &Path,
) -> Result<std::process::Output, PostgresError> {
    spawn(command, program)?
        .wait_with_output()
        .await
        .map_err(|cause| PostgresError::Spawn {
            program: program.to_owned(),
            cause,
        })
}

/// Reads `stderr` to its end (keeping the first [`STDERR_LIMIT`] bytes) in
/// a task, so the child never blocks on a full pipe.
pub(crate) fn collect_stderr(stderr: ChildStderr) -> JoinHandle<StderrText> {
    tokio::spawn(async move {
        let mut kept = Vec::new();
        let mut limited = stderr.take(STDERR_LIMIT);
        let _ = limited.read_to_end(&mut kept).await;
        // Drain the rest so the child can finish.
        let mut rest = limited.into_inner();
        let _ = tokio::io::copy(&mut rest, &mut tokio::io::sink()).await;
        StderrText::from_bytes(&kept)
    })
}

/// A running dump program whose stdout is being stored.
#[derive(Debug)]
pub(crate) struct DumpProcess {
    child: Child,
    stderr: Option<JoinHandle<StderrText>>,
}

impl DumpProcess {
    /// Starts `command` (running `program`) and returns its stdout, to be
    /// streamed, and the process.
    ///
    /// Fails when the program cannot start.
    pub fn start(
        command: &mut tokio::process::Command,
        program: &Path,
    ) -> Result<(ChildStdout, Self), PostgresError> {
        let mut child = spawn(command, program)?;
        let stderr = child.stderr.take().map(collect_stderr);
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| PostgresError::Unexpected {
                what: format!("{}'s stdout", program.display()),
                output: "the pipe could not be opened".into(),
            })?;
        Ok((stdout, Self { child, stderr }))
    }

    /// Stops the program (its output is no longer read).
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// Waits for the program to end; returns its stderr when it failed.
    ///
    /// Fails with the program's error text when it exits unsuccessfully.
    pub async fn finish(mut self) -> Result<(), StderrText> {
        let status: Result<ExitStatus, _> = self.child.wait().await;
        let stderr = match self.stderr.take() {
            Some(task) => task.await.unwrap_or_default(),
            None => StderrText::default(),
        };
        match status {
            Ok(status) if status.success() => Ok(()),
            Ok(status) if stderr.0.is_empty() => Err(StderrText(format!("it ended with {status}"))),
            Ok(_) => Err(stderr),
            Err(e) => Err(StderrText(format!("waiting for it failed: {e}"))),
        }
    }
}
