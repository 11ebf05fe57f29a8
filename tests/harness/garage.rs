//! Garage: a real S3 implementation that checks SigV4 signatures, wants
//! region `garage` and path-style addressing, and (2.x) ignores
//! `If-None-Match`. The server for signatures, listings and ranges.
//!
//! A single node with its own configuration, data and metadata in a
//! temporary directory; the layout, an access key and a bucket are set up
//! through its CLI before [`GarageServer::start`] returns.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tempfile::TempDir;

use crate::process::{ServerProcess, free_port, require_program};
use crate::s3::S3Target;

/// How to install the server when it is missing.
pub const INSTALL: &str = "cargo install garage --locked";
/// How long the node may take to come up.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// A single-node Garage with one empty bucket; stopped on drop.
#[derive(Debug)]
pub struct GarageServer {
    process: ServerProcess,
    program: PathBuf,
    config: PathBuf,
    s3_port: u16,
    key_id: String,
    secret: String,
    _dir: TempDir,
}

impl GarageServer {
    /// The bucket every server starts with.
    pub const BUCKET: &str = "lifeboat-test";
    /// The region Garage is configured with, and wants signed.
    pub const REGION: &str = "garage";

    /// Starts the node, assigns it the whole layout, creates an access key
    /// and [`Self::BUCKET`] and allows the key on it.
    ///
    /// Fails with the install command when `garage` is missing.
    pub async fn start() -> Result<Self> {
        let program = require_program("garage", INSTALL)?;
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("garage.toml");
        let (rpc_port, s3_port, admin_port) = (free_port()?, free_port()?, free_port()?);
        let root = dir.path().display();
        std::fs::write(
            &config,
            format!(
                r#"metadata_dir = "{root}/meta"
data_dir = "{root}/data"
db_engine = "sqlite"
replication_factor = 1

rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{rpc_secret}"

[s3_api]
s3_region = "{region}"
api_bind_addr = "127.0.0.1:{s3_port}"

[admin]
api_bind_addr = "127.0.0.1:{admin_port}"
admin_token = "{admin_token}"
"#,
                rpc_secret = random_hex(32),
                region = Self::REGION,
                admin_token = random_hex(16),
            ),
        )
        .context("writing garage.toml")?;
        let mut process = ServerProcess::spawn(
            "garage",
            &program,
            [Path::new("-c"), &config, Path::new("server")],
            &[("RUST_LOG", "garage=info,garage_net=warn")],
            &dir.path().join("garage.log"),
        )?;

        // `node id` reads only the metadata directory; `status` needs the RPC.
        process
            .wait_until("answering its CLI", BOOT_TIMEOUT, || {
                cli(&program, &config, &["status"])
            })
            .await?;
        let node = cli(&program, &config, &["node", "id", "-q"]).await?;
        let node = node.split('@').next().unwrap_or_default().trim().to_owned();
        cli(
            &program,
            &config,
            &["layout", "assign", "-z", "dc1", "-c", "1G", &node],
        )
        .await?;
        cli(&program, &config, &["layout", "apply", "--version", "1"]).await?;
        process
            .wait_until("healthy layout", BOOT_TIMEOUT, || async {
                let health = json_api(&program, &config, "GetClusterHealth", None).await?;
                match health["status"].as_str() {
                    Some("healthy") => Ok(()),
                    other => bail!("cluster status {other:?}"),
                }
            })
            .await?;

        let key = json_api(
            &program,
            &config,
            "CreateKey",
            Some(r#"{"name":"lifeboat-test"}"#),
        )
        .await?;
        let (Some(key_id), Some(secret)) =
            (key["accessKeyId"].as_str(), key["secretAccessKey"].as_str())
        else {
            bail!("garage CreateKey gave no key: {key}");
        };
        cli(&program, &config, &["bucket", "create", Self::BUCKET]).await?;
        let allow = [
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            Self::BUCKET,
            "--key",
            key_id,
        ];
        cli(&program, &config, &allow).await?;

        Ok(Self {
            key_id: key_id.to_owned(),
            secret: secret.to_owned(),
            process,
            program,
            config,
            s3_port,
            _dir: dir,
        })
    }

    /// How to reach [`Self::BUCKET`] with the key allowed on it.
    pub fn target(&self) -> S3Target {
        S3Target {
            bucket: Self::BUCKET.to_owned(),
            endpoint: format!("http://127.0.0.1:{}", self.s3_port),
            region: Self::REGION.to_owned(),
            path_style: true,
            access_key_id: self.key_id.clone(),
            secret_access_key: self.secret.clone(),
        }
    }

    /// The S3 API's address.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, self.s3_port))
    }

    /// Runs `garage -c CONFIG args…` against this node and returns its output.
    pub async fn cli(&self, args: &[&str]) -> Result<String> {
        cli(&self.program, &self.config, args).await
    }

    /// The server's output so far, for failure messages.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}

/// Runs the garage CLI; fails with its output unless it succeeds.
async fn cli(program: &Path, config: &Path, args: &[&str]) -> Result<String> {
    let output = tokio::process::Command::new(program)
        .arg("-c")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {}", program.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "garage {} failed ({}): {stdout}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}

/// Calls an admin API endpoint through the CLI (`garage json-api`).
async fn json_api(
    program: &Path,
    config: &Path,
    endpoint: &str,
    payload: Option<&str>,
) -> Result<Value> {
    let mut args = vec!["json-api", endpoint];
    args.extend(payload);
    let out = cli(program, config, &args).await?;
    serde_json::from_str(&out).with_context(|| format!("garage json-api {endpoint} gave {out}"))
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}
