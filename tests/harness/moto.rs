//! moto's S3 server: honours `If-None-Match: *` atomically (412), accepts
//! any signature. The server for conditional creates and fault injection.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, bail};
use tempfile::TempDir;

use crate::process::{ServerProcess, free_addr, http_request, require_program};
use crate::s3::S3Target;

/// How to install the server when it is missing.
pub const INSTALL: &str = "pip install 'moto[server]'";

/// A `moto_server` on a loopback port with one empty bucket; stopped on drop.
#[derive(Debug)]
pub struct MotoServer {
    process: ServerProcess,
    addr: SocketAddr,
    _dir: TempDir,
}

impl MotoServer {
    /// The bucket every server starts with.
    pub const BUCKET: &str = "lifeboat-test";

    /// Starts the server, waits until it answers and creates [`Self::BUCKET`].
    ///
    /// Fails with the install command when `moto_server` is missing.
    pub async fn start() -> Result<Self> {
        let program = require_program("moto_server", INSTALL)?;
        let dir = tempfile::tempdir()?;
        let addr = free_addr()?;
        let port = addr.port().to_string();
        let mut process = ServerProcess::spawn(
            "moto_server",
            &program,
            ["-H", "127.0.0.1", "-p", &port],
            &[],
            &dir.path().join("moto.log"),
        )?;
        process
            .wait_until("answering HTTP", Duration::from_secs(60), || {
                http_request(addr, "GET", "/", b"")
            })
            .await?;
        let (status, body) = http_request(addr, "PUT", &format!("/{}", Self::BUCKET), b"").await?;
        if status != 200 {
            bail!(
                "moto_server refused to create bucket {}: HTTP {status} {body}",
                Self::BUCKET
            );
        }
        Ok(Self {
            process,
            addr,
            _dir: dir,
        })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How to reach [`Self::BUCKET`]; moto takes any credentials.
    pub fn target(&self) -> S3Target {
        S3Target {
            bucket: Self::BUCKET.to_owned(),
            endpoint: format!("http://{}", self.addr),
            region: "us-east-1".to_owned(),
            path_style: true,
            access_key_id: "lifeboat-test".to_owned(),
            secret_access_key: "lifeboat-test-secret".to_owned(),
        }
    }

    /// The server's output so far, for failure messages.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}
