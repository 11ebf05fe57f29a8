//! Running a program with a time limit, in the foreground ([`run`]) or in
//! the background ([`spawn`], to be killed), and what it printed.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// How long one command may run before the test gives up on it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// A finished command.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The command line, for messages.
    pub command: String,
    /// How it ended.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Outcome {
    /// Itself when the command succeeded.
    ///
    /// Fails, with the command's output, when it did not.
    pub fn ok(self) -> Result<Self> {
        if !self.status.success() {
            bail!(
                "`{}` failed ({})\n{}",
                self.command,
                self.status,
                self.output()
            );
        }
        Ok(self)
    }

    /// Itself when the command failed with an exit code (not a signal).
    ///
    /// Fails, with the command's output, when it succeeded or was killed.
    pub fn failed(self) -> Result<Self> {
        match self.status.code() {
            Some(0) => bail!(
                "`{}` succeeded but should have failed\n{}",
                self.command,
                self.output()
            ),
            None => bail!(
                "`{}` died ({}) instead of failing cleanly\n{}",
                self.command,
                self.status,
                self.output()
            ),
            Some(_) => Ok(self),
        }
    }

    /// Standard output parsed as one JSON value.
    ///
    /// Fails when it is not JSON.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("`{}` printed no JSON\n{}", self.command, self.output()))
    }

    /// Both outputs, labelled, for messages.
    pub fn output(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        )
    }
}

/// Runs a prepared command with a time limit and collects its output.
///
/// Fails when it cannot start or runs longer than two minutes.
pub fn run(command: &mut Command) -> Result<Outcome> {
    let shown = show(command);
    let (mut child, mut stdout, mut stderr) = spawn_logged(command)?;
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{shown}` did not finish within {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Outcome {
        command: shown,
        status,
        stdout: read_all(&mut stdout)?,
        stderr: read_all(&mut stderr)?,
    })
}

/// A command running in the background, its output going to files.
#[derive(Debug)]
pub struct Running {
    command: String,
    child: Child,
    stdout: File,
    stderr: File,
}

impl Running {
    /// Whether it is still running.
    pub fn is_running(&mut self) -> Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    /// Sends SIGKILL and reaps it; returns its output so far.
    ///
    /// Fails when it had already ended: the kill came too late to test anything.
    pub fn kill(mut self) -> Result<Outcome> {
        if let Some(status) = self.child.try_wait()? {
            let done = self.finish(status)?;
            bail!(
                "`{}` ended ({status}) before it could be killed\n{}",
                done.command,
                done.output()
            );
        }
        self.child.kill().context("sending SIGKILL")?;
        let status = self.child.wait()?;
        self.finish(status)
    }

    /// Waits for it to end.
    ///
    /// Fails when it runs longer than two minutes.
    pub fn wait(mut self) -> Result<Outcome> {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return self.finish(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!(
                    "`{}` did not finish within {COMMAND_TIMEOUT:?}",
                    self.command
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn finish(&mut self, status: ExitStatus) -> Result<Outcome> {
        Ok(Outcome {
            command: self.command.clone(),
            status,
            stdout: read_all(&mut self.stdout)?,
            stderr: read_all(&mut self.stderr)?,
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts a command in the background.
///
/// Fails when it cannot start.
pub fn spawn(command: &mut Command) -> Result<Running> {
    let shown = show(command);
    let (child, stdout, stderr) = spawn_logged(command)?;
    Ok(Running {
        command: shown,
        child,
        stdout,
        stderr,
    })
}

fn spawn_logged(command: &mut Command) -> Result<(Child, File, File)> {
    let stdout = tempfile::tempfile()?;
    let stderr = tempfile::tempfile()?;
    let child = command
        .stdin(Stdio::null())
        .stdout(stdout.try_clone()?)
        .stderr(stderr.try_clone()?)
        .spawn()
        .with_context(|| format!("starting `{}`", show(command)))?;
    Ok((child, stdout, stderr))
}

fn read_all(file: &mut File) -> Result<String> {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))?;
    file.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn show(command: &Command) -> String {
    let program = Path::new(command.get_program())
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    std::iter::once(program)
        .chain(command.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}
