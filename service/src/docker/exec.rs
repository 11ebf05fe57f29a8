//! Running a program inside a container: an exec instance created with
//! its command and environment, started attached, its multiplexed output
//! split back into stdout and stderr, and its exit code read when the
//! stream ends.
//!
//! Secrets go into the exec's environment ([`ExecSpec::env`]), which the
//! daemon hands to the process and never shows in a process list; the
//! command line ([`ExecSpec::cmd`]) is visible to everyone on the host.

use std::pin::Pin;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use futures_util::StreamExt;
use tokio::io::{AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use super::{Docker, DockerError};

/// How many bytes of each output stream wait for their reader.
const PIPE_CAPACITY: usize = 256 * 1024;

/// How long the daemon may take to report an ended exec's exit code.
const EXIT_DEADLINE: Duration = Duration::from_secs(10);

/// What to run in a container.
#[derive(Default)]
pub struct ExecSpec {
    /// The program and its arguments (resolved on the container's `PATH`).
    pub cmd: Vec<String>,
    /// `NAME=value` entries added to the container's environment; wiped
    /// from lifeboat's memory when dropped.
    pub env: Zeroizing<Vec<String>>,
    /// The user to run as (`postgres`, `999:999`); empty: the container's.
    pub user: Option<String>,
    /// Whether the program reads a stdin lifeboat writes.
    pub stdin: bool,
}

/// A program running in a container.
pub struct ExecProcess {
    docker: Docker,
    id: String,
    /// Its stdin, when [`ExecSpec::stdin`] was set; shut it down to end
    /// the input.
    pub stdin: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    /// Its stdout.
    pub stdout: Option<DuplexStream>,
    /// Its stderr.
    pub stderr: Option<DuplexStream>,
    pump: JoinHandle<Result<(), String>>,
}

impl std::fmt::Debug for ExecProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecProcess").field("id", &self.id).finish()
    }
}

impl Docker {
    /// Starts `spec` in the running container `container`.
    ///
    /// Fails when the daemon refuses the exec (no such container, not
    /// running) or the stream cannot be opened.
    pub async fn exec(&self, container: &str, spec: ExecSpec) -> Result<ExecProcess, DockerError> {
        let options = CreateExecOptions {
            cmd: Some(spec.cmd.clone()),
            env: Some(spec.env.to_vec()),
            user: spec.user.clone(),
            attach_stdin: Some(spec.stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            ..Default::default()
        };
        let program = spec.cmd.first().cloned().unwrap_or_default();
        let created = self
            .client
            .create_exec(container, options)
            .await
            .map_err(|e| {
                self.failed(
                    &format!("creating an exec of {program} in {container:?}"),
                    e,
                )
            })?;
        let started = self
            .client
            .start_exec(
                &created.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: None,
                }),
            )
            .await
            .map_err(|e| self.failed(&format!("starting {program} in {container:?}"), e))?;
        let StartExecResults::Attached { output, input } = started else {
            return Err(DockerError::Api {
                action: format!("starting {program} in {container:?}"),
                cause: "the daemon started it detached".into(),
            });
        };
        let (stdout_reader, stdout_writer) = tokio::io::duplex(PIPE_CAPACITY);
        let (stderr_reader, stderr_writer) = tokio::io::duplex(PIPE_CAPACITY);
        let pump = tokio::spawn(pump(output, stdout_writer, stderr_writer));
        Ok(ExecProcess {
            docker: self.clone(),
            id: created.id,
            stdin: spec.stdin.then_some(input),
            stdout: Some(stdout_reader),
            stderr: Some(stderr_reader),
            pump,
        })
    }
}

/// Copies the multiplexed output into the two pipes until it ends. A pipe
/// whose reader is gone takes no more; when stdout's is gone the stream is
/// dropped, which closes the connection and with it the program's output.
async fn pump(
    mut output: Pin<
        Box<dyn futures_util::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>,
    >,
    mut stdout: DuplexStream,
    mut stderr: DuplexStream,
) -> Result<(), String> {
    let mut stderr_open = true;
    while let Some(frame) = output.next().await {
        match frame.map_err(|e| e.to_string())? {
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                if stdout.write_all(&message).await.is_err() {
                    return Ok(());
                }
            }
            LogOutput::StdErr { message } => {
                if stderr_open && stderr.write_all(&message).await.is_err() {
                    stderr_open = false;
                }
            }
            LogOutput::StdIn { .. } => {}
        }
    }
    Ok(())
}

impl ExecProcess {
    /// Waits for the output to end and returns the program's exit code.
    /// Read stdout and stderr first (or drop them): a full pipe holds the
    /// program.
    ///
    /// Fails when the stream broke or the daemon does not report an exit.
    pub async fn wait(mut self) -> Result<i64, DockerError> {
        drop(self.stdin.take());
        let broken = |cause: String| DockerError::Api {
            action: "reading a program's output from its exec stream".into(),
            cause,
        };
        match (&mut self.pump).await {
            Ok(Ok(())) => {}
            Ok(Err(cause)) => return Err(broken(cause)),
            Err(e) => return Err(broken(e.to_string())),
        }
        let started = tokio::time::Instant::now();
        loop {
            let inspected = self
                .docker
                .client
                .inspect_exec(&self.id)
                .await
                .map_err(|e| self.docker.failed("reading an exec's exit code", e))?;
            match (inspected.running, inspected.exit_code) {
                (Some(false), Some(code)) => return Ok(code),
                _ if started.elapsed() > EXIT_DEADLINE => {
                    return Err(DockerError::Api {
                        action: "reading an exec's exit code".into(),
                        cause: format!(
                            "its output ended but the daemon still reports it running after {}s",
                            EXIT_DEADLINE.as_secs()
                        ),
                    });
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Waits for the program, keeping what it printed (stdout and stderr
    /// together, at most `limit` bytes).
    ///
    /// Fails as [`ExecProcess::wait`] does.
    pub async fn output(mut self, limit: usize) -> Result<(i64, String), DockerError> {
        use tokio::io::AsyncReadExt;
        let read = |pipe: Option<DuplexStream>| async move {
            let mut kept = Vec::new();
            if let Some(pipe) = pipe {
                let mut limited = pipe.take(limit as u64);
                let _ = limited.read_to_end(&mut kept).await;
                let _ = tokio::io::copy(&mut limited.into_inner(), &mut tokio::io::sink()).await;
            }
            kept
        };
        let (out, err) = tokio::join!(read(self.stdout.take()), read(self.stderr.take()));
        let code = self.wait().await?;
        let text = String::from_utf8_lossy(&[out, err].concat())
            .trim()
            .to_owned();
        Ok((code, text))
    }

    /// Stops reading: the connection closes, so the program's next write
    /// fails and it ends (a dump program exits on a closed output).
    pub fn kill(self) {
        self.pump.abort();
    }
}
