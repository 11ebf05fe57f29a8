//! Running PostgreSQL's client programs (`psql`, `pg_dump`, `pg_dumpall`,
//! `pg_restore`): as child processes of lifeboat, or inside the server's
//! own container through a Docker exec ([`ClientHost`]). Either way a
//! [`ClientCommand`] becomes a [`Client`] with the same pipes, and the
//! password travels only in the program's environment.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use super::PostgresError;
use crate::docker::{Docker, ExecProcess, ExecSpec};

/// The most of a program's stderr kept for an error message.
const STDERR_LIMIT: u64 = 64 * 1024;

/// The exit codes of an exec whose program was not found or could not
/// run (as a shell reports them).
const EXEC_NOT_FOUND: [i64; 2] = [126, 127];

/// A program's stderr, trimmed, at most [`STDERR_LIMIT`] bytes.
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

/// Where the client programs run.
#[derive(Debug, Clone)]
pub(crate) enum ClientHost {
    /// As child processes here.
    Local,
    /// Inside a running container, through the Docker Engine API.
    Container {
        /// The Engine.
        docker: Docker,
        /// The container's name.
        name: String,
    },
}

/// A program to run, with its arguments and environment.
///
/// Never print it with `{:?}` where the password could show: its Debug
/// form is redacted, but the environment it builds is not.
pub(crate) struct ClientCommand {
    program: PathBuf,
    args: Vec<Argument>,
    env: Vec<(&'static str, Zeroizing<String>)>,
    stdin: bool,
    holding: Option<std::fs::File>,
}

/// One argument of a [`ClientCommand`].
#[derive(Debug)]
enum Argument {
    /// Given as it is.
    Plain(OsString),
    /// The input file: its path here; in a container, `stdin_args` (the
    /// program's way to read stdin), the file going to its stdin.
    InputFile {
        /// The file on this host.
        path: PathBuf,
        /// The arguments in its place in a container.
        stdin_args: &'static [&'static str],
    },
}

impl std::fmt::Debug for ClientCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCommand")
            .field("program", &self.program)
            .field("args", &self.args)
            .finish_non_exhaustive()
    }
}

impl ClientCommand {
    /// `program` with no arguments and no stdin.
    pub fn new(program: &Path) -> Self {
        Self {
            program: program.to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            stdin: false,
            holding: None,
        }
    }

    /// Adds an argument.
    pub fn arg(&mut self, arg: impl Into<OsString>) -> &mut Self {
        self.args.push(Argument::Plain(arg.into()));
        self
    }

    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(&mut self, args: I) -> &mut Self {
        self.args
            .extend(args.into_iter().map(|arg| Argument::Plain(arg.into())));
        self
    }

    /// Sets a variable of the program's environment.
    pub fn env(&mut self, name: &'static str, value: &str) -> &mut Self {
        self.env.push((name, Zeroizing::new(value.to_owned())));
        self
    }

    /// Gives the program a stdin to write to ([`Client::stdin`]).
    pub fn stdin_piped(&mut self) -> &mut Self {
        self.stdin = true;
        self
    }

    /// Gives the program `lock` (an open file holding a `flock`) as its
    /// stdin, so that the lock is held as long as the program runs, even
    /// if lifeboat dies first. Only for programs that never read stdin,
    /// run here.
    pub fn holding(&mut self, lock: std::fs::File) -> &mut Self {
        self.holding = Some(lock);
        self
    }

    /// Makes the program read `file` of this host: here its path is the
    /// next argument; in a container, which cannot see it, `stdin_args`
    /// are (the program's way to read stdin, e.g. `-` or nothing) and the
    /// file is copied into its stdin.
    pub fn input_file(&mut self, file: &Path, stdin_args: &'static [&'static str]) -> &mut Self {
        self.args.push(Argument::InputFile {
            path: file.to_owned(),
            stdin_args,
        });
        self
    }

    /// The program as configured.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Starts the program on `host`.
    ///
    /// Fails, naming the program and how to get it, when it cannot start.
    pub async fn start(&self, host: &ClientHost) -> Result<Client, PostgresError> {
        match host {
            ClientHost::Local => self.start_here(),
            ClientHost::Container { docker, name } => self.start_in(docker, name).await,
        }
    }

    /// The input file, if the program reads one.
    fn file_to_read(&self) -> Option<&Path> {
        self.args.iter().find_map(|arg| match arg {
            Argument::InputFile { path, .. } => Some(path.as_path()),
            Argument::Plain(_) => None,
        })
    }

    /// The arguments here or in a container.
    fn args_for(&self, in_container: bool) -> Vec<OsString> {
        let mut args = Vec::with_capacity(self.args.len());
        for arg in &self.args {
            match arg {
                Argument::Plain(arg) => args.push(arg.clone()),
                Argument::InputFile { stdin_args, .. } if in_container => {
                    args.extend(stdin_args.iter().map(OsString::from));
                }
                Argument::InputFile { path, .. } => args.push(path.as_os_str().to_owned()),
            }
        }
        args
    }

    fn start_here(&self) -> Result<Client, PostgresError> {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(self.args_for(false))
            .stdin(match &self.holding {
                Some(lock) => {
                    Stdio::from(lock.try_clone().map_err(|cause| PostgresError::Spawn {
                        program: self.program.clone(),
                        cause,
                    })?)
                }
                None if self.stdin => Stdio::piped(),
                None => Stdio::null(),
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (name, value) in &self.env {
            command.env(name, value.as_str());
        }
        let mut child = command.spawn().map_err(|cause| PostgresError::Spawn {
            program: self.program.clone(),
            cause,
        })?;
        Ok(Client {
            stdin: child.stdin.take().map(|s| Box::pin(s) as Writer),
            stdout: reader(child.stdout.take()),
            stderr: reader(child.stderr.take()),
            feeder: None,
            program: self.program.clone(),
            running: Running::Here(child),
        })
    }

    async fn start_in(&self, docker: &Docker, container: &str) -> Result<Client, PostgresError> {
        if self.holding.is_some() {
            return Err(PostgresError::Unexpected {
                what: format!("{} in container {container}", self.program.display()),
                output: "a program holding a local lock runs only here".into(),
            });
        }
        let mut cmd = vec![self.program.to_string_lossy().into_owned()];
        for arg in self.args_for(true) {
            cmd.push(arg.into_string().map_err(|arg| PostgresError::Unexpected {
                what: format!("an argument of {} for a container", self.program.display()),
                output: format!("{arg:?} is not UTF-8"),
            })?);
        }
        let spec = ExecSpec {
            cmd,
            env: Zeroizing::new(
                self.env
                    .iter()
                    .map(|(name, value)| format!("{name}={}", value.as_str()))
                    .collect(),
            ),
            user: None,
            stdin: self.stdin || self.file_to_read().is_some(),
        };
        let mut exec = docker.exec(container, spec).await?;
        let (stdin, feeder) = match (self.file_to_read(), exec.stdin.take()) {
            (Some(file), Some(input)) => {
                (None, Some(tokio::spawn(copy_file(file.to_owned(), input))))
            }
            (_, input) => (input, None),
        };
        Ok(Client {
            stdin,
            stdout: reader(exec.stdout.take()),
            stderr: reader(exec.stderr.take()),
            feeder,
            program: self.program.clone(),
            running: Running::InContainer {
                exec,
                container: container.to_owned(),
            },
        })
    }
}

/// Copies `file` into a program's stdin and ends it. A program that
/// stops reading early closes the pipe: [`Input::Closed`], which only
/// matters when the program then fails.
async fn copy_file(file: PathBuf, mut input: Writer) -> Input {
    let mut opened = match tokio::fs::File::open(&file).await {
        Ok(opened) => opened,
        Err(e) => return Input::Failed(format!("opening {}: {e}", file.display())),
    };
    let copied = async {
        tokio::io::copy(&mut opened, &mut input).await?;
        input.shutdown().await
    };
    match copied.await {
        Ok(()) => Input::Done,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Input::Closed,
        Err(e) => Input::Failed(format!(
            "copying {} into the program's stdin: {e}",
            file.display()
        )),
    }
}

/// How copying an input file ended.
#[derive(Debug)]
enum Input {
    /// All of it was written.
    Done,
    /// The program closed its stdin before the end.
    Closed,
    /// Reading the file or writing the pipe failed.
    Failed(String),
}

/// A program's output pipe, here or from a container.
pub(crate) type Reader = Pin<Box<dyn AsyncRead + Send>>;

/// A program's stdin, here or in a container.
pub(crate) type Writer = Pin<Box<dyn AsyncWrite + Send>>;

fn reader(pipe: Option<impl AsyncRead + Send + 'static>) -> Option<Reader> {
    pipe.map(|pipe| Box::pin(pipe) as Reader)
}

/// A running client program.
pub(crate) struct Client {
    /// Its stdin, when asked for.
    pub stdin: Option<Writer>,
    /// Its stdout.
    pub stdout: Option<Reader>,
    /// Its stderr.
    pub stderr: Option<Reader>,
    feeder: Option<JoinHandle<Input>>,
    program: PathBuf,
    running: Running,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("program", &self.program)
            .finish_non_exhaustive()
    }
}

enum Running {
    Here(tokio::process::Child),
    InContainer {
        exec: ExecProcess,
        container: String,
    },
}

/// How a program ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Exit {
    /// Whether it succeeded.
    pub success: bool,
    /// Its status, for messages (`exit status: 1`).
    pub status: String,
}

/// All a program printed, and how it ended.
#[derive(Debug)]
pub(crate) struct Output {
    /// How it ended.
    pub exit: Exit,
    /// Its stdout.
    pub stdout: Vec<u8>,
    /// Its stderr.
    pub stderr: Vec<u8>,
}

impl Client {
    /// Waits for the program to end (its output read or dropped first).
    ///
    /// Fails when it cannot be waited for, when a container has no such
    /// program, or when copying its input file failed.
    pub async fn wait(mut self) -> Result<Exit, PostgresError> {
        drop(self.stdin.take());
        let exit = match self.running {
            Running::Here(mut child) => {
                let status = child.wait().await.map_err(|cause| PostgresError::Spawn {
                    program: self.program.clone(),
                    cause,
                })?;
                Exit {
                    success: status.success(),
                    status: status.to_string(),
                }
            }
            Running::InContainer { exec, container } => {
                let code = exec.wait().await?;
                if EXEC_NOT_FOUND.contains(&code) {
                    return Err(PostgresError::NotInContainer {
                        program: self.program.clone(),
                        container,
                    });
                }
                Exit {
                    success: code == 0,
                    status: format!("exit code: {code}"),
                }
            }
        };
        let input = match self.feeder.take() {
            Some(feeder) => feeder
                .await
                .unwrap_or_else(|e| Input::Failed(e.to_string())),
            None => Input::Done,
        };
        match input {
            Input::Failed(message) => Err(PostgresError::Unexpected {
                what: format!("the input of {}", self.program.display()),
                output: message,
            }),
            Input::Closed if exit.success => Ok(exit),
            Input::Closed => Ok(Exit {
                status: format!("{} before reading all its input", exit.status),
                ..exit
            }),
            Input::Done => Ok(exit),
        }
    }

    /// Reads all the program prints and waits for it.
    ///
    /// Fails as [`Client::wait`] does.
    pub async fn output(mut self) -> Result<Output, PostgresError> {
        let stdout = read_all(self.stdout.take());
        let stderr = read_all(self.stderr.take());
        let (stdout, stderr) = tokio::join!(stdout, stderr);
        Ok(Output {
            exit: self.wait().await?,
            stdout,
            stderr,
        })
    }

    /// Stops the program (its output is no longer read).
    pub async fn kill(self) {
        match self.running {
            Running::Here(mut child) => {
                let _ = child.kill().await;
            }
            Running::InContainer { exec, .. } => exec.kill(),
        }
    }
}

async fn read_all(pipe: Option<Reader>) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_end(&mut bytes).await;
    }
    bytes
}

/// Reads `stderr` to its end (keeping the first [`STDERR_LIMIT`] bytes) in
/// a task, so the program never blocks on a full pipe.
pub(crate) fn collect_stderr(stderr: Reader) -> JoinHandle<StderrText> {
    tokio::spawn(async move {
        let mut kept = Vec::new();
        let mut limited = stderr.take(STDERR_LIMIT);
        let _ = limited.read_to_end(&mut kept).await;
        // Drain the rest so the program can finish.
        let mut rest = limited.into_inner();
        let _ = tokio::io::copy(&mut rest, &mut tokio::io::sink()).await;
        StderrText::from_bytes(&kept)
    })
}

/// A running dump program whose stdout is being stored.
#[derive(Debug)]
pub(crate) struct DumpProcess {
    client: Client,
    stderr: Option<JoinHandle<StderrText>>,
}

impl DumpProcess {
    /// Starts `command` on `host` and returns its stdout, to be streamed,
    /// and the process.
    ///
    /// Fails when the program cannot start.
    pub async fn start(
        command: &ClientCommand,
        host: &ClientHost,
    ) -> Result<(Reader, Self), PostgresError> {
        let mut client = command.start(host).await?;
        let stderr = client.stderr.take().map(collect_stderr);
        let stdout = client
            .stdout
            .take()
            .ok_or_else(|| PostgresError::Unexpected {
                what: format!("{}'s stdout", command.program().display()),
                output: "the pipe could not be opened".into(),
            })?;
        Ok((stdout, Self { client, stderr }))
    }

    /// Stops the program (its output is no longer read).
    pub async fn kill(self) {
        self.client.kill().await;
    }

    /// Waits for the program to end; returns its stderr when it failed.
    ///
    /// Fails with the program's error text when it exits unsuccessfully,
    /// and as [`Client::wait`] does.
    pub async fn finish(mut self) -> Result<Result<(), StderrText>, PostgresError> {
        let exit = self.client.wait().await?;
        let stderr = match self.stderr.take() {
            Some(task) => task.await.unwrap_or_default(),
            None => StderrText::default(),
        };
        Ok(match exit {
            Exit { success: true, .. } => Ok(()),
            Exit { status, .. } if stderr.0.is_empty() => {
                Err(StderrText(format!("it ended with {status}")))
            }
            _ => Err(stderr),
        })
    }
}
