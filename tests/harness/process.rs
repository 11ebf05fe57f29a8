//! Server processes that cannot outlive the test that started them.
//!
//! A server runs under a small `sh` watchdog that holds the read end of a
//! pipe from the test process: when the [`ServerProcess`] is dropped, or the
//! test process dies however it dies, the pipe closes and the watchdog stops
//! the server (TERM, then KILL). No server is left behind holding a port.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Runs `"$@"` with stdin from `/dev/null` and stops it once fd 3 (a copy of
/// the watchdog's stdin, the pipe from the test) reaches end of file.
const WATCHDOG: &str = r#"
exec 3<&0
"$@" </dev/null &
server=$!
{ read -r _ <&3; kill -TERM "$server" 2>/dev/null; sleep 3; kill -KILL "$server" 2>/dev/null; } &
wait "$server"
"#;

/// Finds `program` on `PATH` (or in `~/.cargo/bin`, where `cargo install`
/// puts it). Fails with `install`, the command that installs it, so that a
/// test needing a missing server fails and says what to do.
pub fn require_program(program: &str, install: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .map(|cargo| cargo.join("bin"));
    std::env::split_paths(&path)
        .chain(cargo_bin)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .with_context(|| format!("{program} not found on PATH; install it with: {install}"))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A loopback address with a free port.
pub fn free_addr() -> Result<SocketAddr> {
    Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?)))
}

/// A running server process, stopped on drop.
#[derive(Debug)]
pub struct ServerProcess {
    name: String,
    watchdog: Child,
    /// Closing this pipe tells the watchdog to stop the server.
    lifeline: Option<ChildStdin>,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts `program args…` with `envs` added to its environment, its
    /// output appended to `log`.
    pub fn spawn<I, S>(
        name: &str,
        program: &Path,
        args: I,
        envs: &[(&str, &str)],
        log: &Path,
    ) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(WATCHDOG)
            .arg("sh")
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err);
        for (key, value) in envs {
            command.env(key, value);
        }
        let mut watchdog = command
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        let lifeline = watchdog.stdin.take();
        Ok(Self {
            name: name.to_owned(),
            watchdog,
            lifeline,
            log: log.to_owned(),
        })
    }

    /// The last lines of the server's output, for error messages.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.log) {
            let len = file.metadata().map_or(0, |m| m.len());
            let _ = file.seek(SeekFrom::Start(len.saturating_sub(4000)));
            let _ = file.read_to_string(&mut text);
        }
        format!("--- {} ({}) ---\n{text}", self.name, self.log.display())
    }

    /// Fails, with the server's output, if the server has exited.
    pub fn check_running(&mut self) -> Result<()> {
        match self.watchdog.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("{} exited ({status})\n{}", self.name, self.log_tail()),
        }
    }

    /// Polls `probe` until it succeeds, the server exits or `timeout` passes.
    pub async fn wait_until<T, F, Fut>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut probe: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            let error = match probe().await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if Instant::now() > deadline {
                bail!(
                    "{} did not become ready ({what}) within {timeout:?}: {error:#}\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        drop(self.lifeline.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(self.watchdog.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

/// Sends one HTTP/1.1 request to `addr` and returns the status and body.
/// Enough for servers' unsigned set-up calls and readiness probes.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP response from {addr}: {text:.200}"))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Ok((status, body.to_owned()))
}
