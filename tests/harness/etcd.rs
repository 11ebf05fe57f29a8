//! A real etcd (Debian's `etcd-server`, 3.4) on free loopback ports with a
//! temporary data folder, plain or with TLS and client-certificate
//! authentication ([`pki::Pki`]); loading keys in batched transactions;
//! `etcdctl` for what an operator would check (`snapshot status`,
//! `snapshot restore`); and [`tamper::TamperProxy`], which damages a
//! snapshot stream on the wire.

pub mod pki;
pub mod tamper;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions, Txn, TxnOp,
};
use serde_json::Value;
use tempfile::TempDir;

use crate::cli::{Outcome, run};
use crate::process::{ServerProcess, free_port, require_program};

pub use pki::{ClientFiles, Pki};
pub use tamper::{Tamper, TamperProxy};

/// How to install etcd and etcdctl when they are missing.
pub const INSTALL: &str = "apt-get install -y etcd-server etcd-client";

/// Keys per transaction when loading (etcd allows 128 by default).
const BATCH: usize = 100;

/// A running etcd member, stopped (and its data removed) on drop.
#[derive(Debug)]
pub struct EtcdServer {
    process: ServerProcess,
    client_port: u16,
    pki: Option<Pki>,
    data_dir: PathBuf,
    _dir: TempDir,
}

impl EtcdServer {
    /// Starts a plaintext etcd and waits until it answers.
    ///
    /// Fails with the install command when etcd is missing, or with its log
    /// when it does not come up.
    pub async fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let data_dir = dir.path().join("data");
        Self::launch(dir, data_dir, None).await
    }

    /// Starts an etcd that serves TLS and requires client certificates
    /// signed by its CA, with certificates generated for the test.
    ///
    /// Fails like [`Self::start`].
    pub async fn start_tls() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let pki = Pki::generate(&dir.path().join("pki"))?;
        let data_dir = dir.path().join("data");
        Self::launch(dir, data_dir, Some(pki)).await
    }

    /// Restores `snapshot` with `etcdctl snapshot restore` (which checks its
    /// SHA-256 trailer) into a new data folder and starts a plaintext etcd
    /// on it.
    ///
    /// Fails when the restore or the start fails.
    pub async fn restore(snapshot: &Path) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let data_dir = dir.path().join("restored");
        let peer_port = free_port()?;
        let mut command = etcdctl()?;
        command
            .args(["snapshot", "restore"])
            .arg(snapshot)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--name", "restored"])
            .arg(format!(
                "--initial-cluster=restored=http://127.0.0.1:{peer_port}"
            ))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
            ));
        run(&mut command)?.ok()?;
        Self::launch_with(dir, data_dir, None, "restored", peer_port).await
    }

    async fn launch(dir: TempDir, data_dir: PathBuf, pki: Option<Pki>) -> Result<Self> {
        let peer_port = free_port()?;
        Self::launch_with(dir, data_dir, pki, "lifeboat-test", peer_port).await
    }

    async fn launch_with(
        dir: TempDir,
        data_dir: PathBuf,
        pki: Option<Pki>,
        name: &str,
        peer_port: u16,
    ) -> Result<Self> {
        let program = require_program("etcd", INSTALL)?;
        let client_port = free_port()?;
        let scheme = if pki.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut args: Vec<String> = vec![
            format!("--name={name}"),
            format!("--data-dir={}", data_dir.display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster={name}={peer_url}"),
            "--initial-cluster-state=new".into(),
            "--logger=zap".into(),
            "--log-level=warn".into(),
        ];
        if let Some(pki) = &pki {
            args.extend([
                format!("--cert-file={}", pki.server_cert.display()),
                format!("--key-file={}", pki.server_key.display()),
                format!("--trusted-ca-file={}", pki.client.ca.display()),
                "--client-cert-auth".into(),
            ]);
        }
        let process = ServerProcess::spawn(
            "etcd",
            &program,
            &args,
            &[],
            &dir.path().join(format!("{name}.log")),
        )?;
        let mut server = Self {
            process,
            client_port,
            pki,
            data_dir,
            _dir: dir,
        };
        let probe = server.clone_connector();
        server
            .process
            .wait_until(
                "answering a count of its keys",
                Duration::from_secs(60),
                || {
                    let probe = probe.clone();
                    async move {
                        let mut client = probe.connect().await?;
                        count_keys(&mut client).await
                    }
                },
            )
            .await?;
        Ok(server)
    }

    fn clone_connector(&self) -> Connector {
        Connector {
            url: self.url(),
            files: self.pki.as_ref().map(|p| p.client.clone()),
        }
    }

    /// The client URL (`http://` or `https://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The client port's address.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    /// The certificates of a TLS server.
    pub fn pki(&self) -> Option<&Pki> {
        self.pki.as_ref()
    }

    /// The member's data folder.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A client of this server (with the trusted client certificate).
    ///
    /// Fails when it cannot connect.
    pub async fn client(&self) -> Result<Client> {
        self.clone_connector().connect().await
    }

    /// `etcdctl` (v3 API) aimed at this server, with its certificates.
    ///
    /// Fails when etcdctl is missing.
    pub fn etcdctl(&self) -> Result<Command> {
        let mut command = etcdctl()?;
        command.arg(format!("--endpoints={}", self.url()));
        if let Some(pki) = &self.pki {
            command
                .arg(format!("--cacert={}", pki.client.ca.display()))
                .arg(format!("--cert={}", pki.client.cert.display()))
                .arg(format!("--key={}", pki.client.key.display()));
        }
        Ok(command)
    }

    /// The server's output so far, for failure messages.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}

/// What it takes to connect a client, without borrowing the server.
#[derive(Debug, Clone)]
struct Connector {
    url: String,
    files: Option<ClientFiles>,
}

impl Connector {
    async fn connect(&self) -> Result<Client> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(60));
        if let Some(files) = &self.files {
            let read = |path: &Path| {
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))
            };
            options = options.with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(read(&files.ca)?))
                    .identity(Identity::from_pem(read(&files.cert)?, read(&files.key)?)),
            );
        }
        Client::connect([self.url.as_str()], Some(options))
            .await
            .with_context(|| format!("connecting to etcd at {}", self.url))
    }
}

/// `etcdctl` with the v3 API selected.
///
/// Fails with the install command when it is missing.
pub fn etcdctl() -> Result<Command> {
    let mut command = Command::new(require_program("etcdctl", INSTALL)?);
    command.env("ETCDCTL_API", "3");
    Ok(command)
}

/// The number of keys and the current revision, from a count-only range
/// over the whole keyspace.
///
/// Fails when the request fails.
pub async fn count_keys(client: &mut Client) -> Result<(i64, i64)> {
    let response = client
        .get(
            Vec::<u8>::new(),
            Some(GetOptions::new().with_all_keys().with_count_only()),
        )
        .await
        .context("counting keys")?;
    let revision = response
        .header()
        .map(|h| h.revision())
        .context("a range answer without a header")?;
    Ok((response.count(), revision))
}

/// Puts every `(key, value)` in transactions of 100; returns the revision
/// after the last.
///
/// Fails when a transaction fails.
pub async fn put_all<I>(client: &mut Client, items: I) -> Result<i64>
where
    I: IntoIterator<Item = (String, Vec<u8>)>,
{
    let mut revision = 0;
    let mut ops = Vec::with_capacity(BATCH);
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        ops.clear();
        ops.extend(
            items
                .by_ref()
                .take(BATCH)
                .map(|(key, value)| TxnOp::put(key, value, None)),
        );
        let response = client
            .txn(Txn::new().and_then(ops.clone()))
            .await
            .context("a batch of puts")?;
        ensure!(response.succeeded(), "a batch of puts was not applied");
        revision = response.header().map_or(revision, |h| h.revision());
    }
    Ok(revision)
}

/// Deletes `keys` in transactions of 100.
///
/// Fails when a transaction fails.
pub async fn delete_all(client: &mut Client, keys: &[String]) -> Result<()> {
    for batch in keys.chunks(BATCH) {
        let ops: Vec<TxnOp> = batch
            .iter()
            .map(|key| TxnOp::delete(key.as_str(), None))
            .collect();
        client
            .txn(Txn::new().and_then(ops))
            .await
            .context("a batch of deletes")?;
    }
    Ok(())
}

/// The value of `key`, if any.
///
/// Fails when the request fails.
pub async fn get_value(client: &mut Client, key: &str) -> Result<Option<Vec<u8>>> {
    let response = client.get(key, None).await.context("get")?;
    Ok(response.kvs().first().map(|kv| kv.value().to_vec()))
}

/// What `etcdctl snapshot status -w json` says of a snapshot file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotStatus {
    /// etcd's hash of the key-value data (not the SHA-256 trailer).
    pub hash: u64,
    /// The revision the snapshot holds.
    pub revision: i64,
    /// Keys in bbolt's `key` bucket: every stored revision of every key.
    pub total_keys: u64,
    /// Bytes of the database.
    pub total_size: u64,
}

/// Runs `etcdctl snapshot status -w json FILE`.
///
/// Fails when etcdctl rejects the file or prints something else.
pub fn snapshot_status(file: &Path) -> Result<SnapshotStatus> {
    let mut command = etcdctl()?;
    command.args(["snapshot", "status", "-w", "json"]).arg(file);
    let outcome: Outcome = run(&mut command)?.ok()?;
    let value: Value = outcome.json()?;
    let field = |name: &str| {
        value[name]
            .as_u64()
            .with_context(|| format!("no {name} in `etcdctl snapshot status`: {value}"))
    };
    let revision = value["revision"]
        .as_i64()
        .with_context(|| format!("no revision in `etcdctl snapshot status`: {value}"))?;
    if revision <= 0 {
        bail!("`etcdctl snapshot status` reports revision {revision}");
    }
    Ok(SnapshotStatus {
        hash: field("hash")?,
        revision,
        total_keys: field("totalKey")?,
        total_size: field("totalSize")?,
    })
}
