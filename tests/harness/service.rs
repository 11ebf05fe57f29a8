//! `lifeboatd serve` under test: started in an [`Installation`] on a free
//! loopback port, reached over real HTTP, stopped with a real SIGTERM.
//!
//! - [`write_service_config`]: `lifeboat.toml` with a `[service]` table and
//!   jobs given as TOML text; [`write_sparse`]: source data that takes long
//!   to read but no space;
//! - [`Lifeboatd`]: the running service: HTTP requests ([`Lifeboatd::get`],
//!   [`Lifeboatd::trigger`]), polling ([`Lifeboatd::wait_for`]) that fails
//!   with the service's log when it dies or the time runs out, and
//!   [`Lifeboatd::terminate`];
//! - [`Response`]: a status, headers and a body, with JSON parsing.
//!
//! The HTTP client is a few lines of HTTP/1.1 over a `TcpStream`
//! (`Connection: close`, chunked bodies decoded), so the tests see exactly
//! what the server sends.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::cli::Installation;
use crate::process::free_addr;

/// How long the service may take to answer `/healthz` after starting.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopped service may take to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Writes `lifeboat.toml`: the installation's repository with
/// `keys/service.key` (the restore key is made as `keys/restore.key`),
/// state in `state/`, then `extra` verbatim: a `[service]` table, jobs,
/// `[prune]` or `[check]`. Relative paths in `extra` are taken from the
/// installation's folder.
///
/// Fails when the file cannot be written.
pub fn write_service_config(installation: &Installation, extra: &str) -> Result<()> {
    let text = format!(
        "state_dir = \"state\"\n\n[repository]\nurl = {:?}\nservice_identity = \"keys/service.key\"\n\n{extra}\n",
        installation.url()
    );
    std::fs::write(installation.config(), text).context("writing lifeboat.toml")
}

/// Creates `path` as a sparse file of `len` zero bytes: it takes no disk
/// space, but a backup reads (and chunks and hashes) every byte, so a run
/// over it lasts seconds on any machine — long enough to signal it or to
/// overlap its schedule.
///
/// Fails when the file cannot be created.
pub fn write_sparse(path: &std::path::Path, len: u64) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    File::create(path)
        .and_then(|file| file.set_len(len))
        .with_context(|| format!("creating the sparse file {}", path.display()))
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
}

impl Response {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The body as JSON.
    ///
    /// Fails when it is not JSON.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("not JSON (status {}): {:.300}", self.status, self.body))
    }
}

/// Sends one request and reads the whole response.
///
/// Fails when the server cannot be reached or answers with no HTTP.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer to {method} {path}"))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP response to {method} {path}: {text:.200}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status line in the answer to {method} {path}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &str) -> Result<String> {
    let mut body = String::new();
    loop {
        let (size, after) = rest
            .split_once("\r\n")
            .context("a chunk without its size")?;
        let size = usize::from_str_radix(size.trim(), 16).context("a chunk size")?;
        if size == 0 {
            return Ok(body);
        }
        ensure!(after.len() >= size, "a chunk cut short");
        body.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
}

/// A running `lifeboatd serve`, killed on drop if still running.
#[derive(Debug)]
pub struct Lifeboatd {
    child: Child,
    addr: SocketAddr,
    stderr: File,
    token: Option<String>,
    root: PathBuf,
}

/// How a stopped service ended.
#[derive(Debug)]
pub struct Exit {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it logged.
    pub log: String,
}

impl Lifeboatd {
    /// Starts `lifeboatd serve --config lifeboat.toml --listen 127.0.0.1:PORT`
    /// in the installation and waits until `/healthz` answers.
    ///
    /// Fails, with its log, when it exits or does not answer within a minute.
    pub fn start(installation: &Installation) -> Result<Self> {
        let addr = free_addr()?;
        let stderr = tempfile::tempfile()?;
        let mut command: Command = installation.command("lifeboatd")?;
        command
            .arg("serve")
            .arg("--config")
            .arg(installation.config())
            .arg("--listen")
            .arg(addr.to_string())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr.try_clone()?);
        let child = command.spawn().context("starting lifeboatd serve")?;
        let mut service = Self {
            child,
            addr,
            stderr,
            token: None,
            root: installation.root().to_owned(),
        };
        service.wait_for("/healthz to answer", START_TIMEOUT, |s| {
            Ok(s.get("/healthz").ok().filter(|r| r.status == 200))
        })?;
        Ok(service)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        let mut file = &self.stderr;
        let mut text = String::new();
        let _ = file.seek(SeekFrom::Start(0));
        let _ = file.read_to_string(&mut text);
        text
    }

    /// `GET path`.
    ///
    /// Fails when the service cannot be reached.
    pub fn get(&self, path: &str) -> Result<Response> {
        request(self.addr, "GET", path, &[])
    }

    /// `GET path`, which must answer 200 with JSON.
    ///
    /// Fails otherwise, with the body.
    pub fn get_json(&self, path: &str) -> Result<Value> {
        let response = self.get(path)?;
        ensure!(
            response.status == 200,
            "GET {path} answered {}: {}",
            response.status,
            response.body
        );
        response.json()
    }

    /// `POST path` with `Authorization: Bearer token` when a token is given.
    ///
    /// Fails when the service cannot be reached.
    pub fn post(&self, path: &str, token: Option<&str>) -> Result<Response> {
        match token {
            Some(token) => {
                let bearer = format!("Bearer {token}");
                request(self.addr, "POST", path, &[("Authorization", &bearer)])
            }
            None => request(self.addr, "POST", path, &[]),
        }
    }

    /// The API token from `state/api-token`.
    ///
    /// Fails when the file is not there.
    pub fn token(&mut self) -> Result<String> {
        if self.token.is_none() {
            let path = self.root.join("state/api-token");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            self.token = Some(text.trim().to_owned());
        }
        self.token.clone().context("no token")
    }

    /// Queues a run of `job` through the API, with the token.
    ///
    /// Fails unless the service answers 202.
    pub fn trigger(&mut self, job: &str) -> Result<()> {
        let token = self.token()?;
        let response = self.post(&format!("/api/v1/jobs/{job}/run"), Some(&token))?;
        ensure!(
            response.status == 202,
            "triggering {job} answered {}: {}",
            response.status,
            response.body
        );
        Ok(())
    }

    /// The recorded runs of `job` (or of the `prune` or `check` task),
    /// newest first.
    ///
    /// Fails when the API does not answer with a list.
    pub fn runs(&self, job: &str) -> Result<Vec<Value>> {
        let value = self.get_json(&format!("/api/v1/runs?job={job}&limit=1000"))?;
        value
            .as_array()
            .cloned()
            .with_context(|| format!("runs of {job} are not a list: {value}"))
    }

    /// Runs of `job` that ended with `result` (`success`, `failure`, …).
    ///
    /// Fails when the API does not answer.
    pub fn runs_with(&self, job: &str, result: &str) -> Result<Vec<Value>> {
        Ok(self
            .runs(job)?
            .into_iter()
            .filter(|r| r["result"] == result)
            .collect())
    }

    /// Polls `probe` every 100 ms until it returns a value.
    ///
    /// Fails, with the service's log, when it exits, `probe` fails, or
    /// `timeout` passes.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut(&Self) -> Result<Option<T>>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "lifeboatd exited ({status}) while waiting for {what}\n--- log ---\n{}",
                    self.log()
                );
            }
            if let Some(value) = probe(self)
                .with_context(|| format!("waiting for {what}\n--- log ---\n{}", self.log()))?
            {
                return Ok(value);
            }
            if Instant::now() > deadline {
                bail!(
                    "{what} did not happen within {timeout:?}\n--- log ---\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends SIGTERM.
    ///
    /// Fails when `kill` fails.
    pub fn send_sigterm(&self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .context("running kill -TERM")?;
        ensure!(status.success(), "kill -TERM {} failed", self.child.id());
        Ok(())
    }

    /// Waits for it to exit.
    ///
    /// Fails when it runs on for two minutes.
    pub fn wait_exit(mut self) -> Result<Exit> {
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Exit {
                    status,
                    log: self.log(),
                });
            }
            if Instant::now() > deadline {
                bail!(
                    "lifeboatd did not exit within {EXIT_TIMEOUT:?}\n--- log ---\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits for it to exit.
    ///
    /// Fails when the signal cannot be sent or it runs on for two minutes.
    pub fn terminate(self) -> Result<Exit> {
        self.send_sigterm()?;
        self.wait_exit()
    }
}

impl Drop for Lifeboatd {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `lifeboatd serve` expecting it to refuse to start; returns its
/// log.
///
/// Fails when it starts (answers or keeps running for 30 s) or is killed.
pub fn refused_start(installation: &Installation) -> Result<String> {
    let addr = free_addr()?;
    let mut command = installation.command("lifeboatd")?;
    command
        .arg("serve")
        .arg("--config")
        .arg(installation.config())
        .arg("--listen")
        .arg(addr.to_string());
    let outcome = crate::cli::run(&mut command)?;
    let outcome = outcome.failed()?;
    Ok(outcome.stderr)
}
