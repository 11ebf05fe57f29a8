//! [`TalosClient`]: one gRPC connection to one apid endpoint, and the
//! `machine.MachineService` calls lifeboat makes through it.
//!
//! apid proxies a call to the node named by the `node` gRPC metadata (a node
//! IP or name, as in the talosconfig's `nodes`); without it the endpoint's
//! own node answers. [`TalosClient::with_node`] picks the node; the
//! connection is shared by the clones. [`first_answering`] tries a
//! context's endpoints and nodes in order, as a backup wants ("the first
//! node that answers").
//!
//! Streamed replies (`EtcdSnapshot`, `Read`) come back as a [`DataReader`],
//! an [`AsyncRead`] that yields the bytes as they arrive, so a snapshot is
//! never staged whole; a stream that breaks off becomes a read error that
//! names the call, the node and how far it got.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio_util::io::{ReaderStream, StreamReader};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Request, Status, Streaming};

use super::TalosError;
use super::config::{Context, TalosEndpoint};
use super::proto::common::{Data, Metadata};
use super::proto::machine::apply_configuration_request::Mode;
use super::proto::machine::machine_service_client::MachineServiceClient;
use super::proto::machine::{
    ApplyConfigurationRequest, BootstrapRequest, EtcdSnapshotRequest, ReadRequest,
};
use super::tls::{self, Failure, Security};

pub use super::proto::machine::EtcdMemberStatus;

/// How long a TCP connection and TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest message accepted, as talosctl's limit.
const MAX_MESSAGE: usize = 32 * 1024 * 1024;
/// How long a call, or the next piece of a stream, may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The size of the pieces an upload is sent in.
const UPLOAD_PIECE: usize = 64 * 1024;

/// A connection to one apid endpoint, aimed at one node (or none: the
/// endpoint's own node). Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct TalosClient {
    service: MachineServiceClient<Channel>,
    endpoint: TalosEndpoint,
    node: Option<(String, AsciiMetadataValue)>,
    timeout: Duration,
}

/// The Talos version of a node (the `Version` call).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TalosVersion {
    /// The release, e.g. `v1.11.0`.
    pub tag: String,
    /// The git commit.
    pub sha: String,
    /// The OS and architecture, e.g. `linux/amd64`.
    pub arch: String,
    /// The platform (`metal`, `nocloud`, …) when the node says.
    pub platform: Option<String>,
    /// Whether role-based access control is on.
    pub rbac: bool,
}

/// The state of one service of a node (`ServiceList`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceState {
    /// Talos' name of the state: `Preparing`, `Waiting`, `Running`, …
    pub state: String,
    /// Whether its health check passes.
    pub healthy: bool,
}

/// How a machine configuration is applied (`ApplyConfiguration`'s mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    /// Talos decides whether a reboot is needed.
    Auto,
    /// Apply without rebooting; fails if the change needs a reboot.
    NoReboot,
    /// Apply and reboot (deprecated by Talos in favour of `Auto`).
    Reboot,
    /// Store the config for the next boot.
    Staged,
    /// Apply and roll back unless confirmed within the timeout.
    Try(Duration),
}

/// What the node did with an applied configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// The mode the node chose (`AUTO`, `NO_REBOOT`, `REBOOT`, …).
    pub mode: String,
    /// The node's explanation.
    pub mode_details: String,
    /// Validation warnings about the config.
    pub warnings: Vec<String>,
}

impl TalosClient {
    /// Connects to `endpoint` (TCP and TLS handshake) with `security`; calls
    /// go to the endpoint's own node until [`with_node`](Self::with_node).
    ///
    /// Fails when the endpoint cannot be reached within 10 s, or the TLS
    /// settings cannot be built or are refused.
    pub async fn connect(
        endpoint: &TalosEndpoint,
        security: &Security,
    ) -> Result<Self, TalosError> {
        let config = Arc::new(tls::client_config(security)?);
        // The scheme only labels requests: the connector below does TLS.
        let uri = format!("http://{endpoint}");
        let target = endpoint.clone();
        let connector =
            tower::service_fn(move |_: Uri| tls::connect(target.clone(), config.clone()));
        let channel = Endpoint::from_shared(uri)
            .map_err(|e| TalosError::BadEndpoint {
                endpoint: endpoint.to_string(),
                problem: e.to_string(),
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .connect_with_connector(connector)
            .await
            .map_err(|e| transport_error(endpoint, &e))?;
        let service = MachineServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Ok(Self {
            service,
            endpoint: endpoint.clone(),
            node: None,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Connects with a talosconfig context's credentials to the first of
    /// its endpoints that accepts a connection.
    ///
    /// Fails when the credentials are unusable or no endpoint can be
    /// reached (naming each endpoint's failure).
    pub async fn connect_context(context: &Context) -> Result<Self, TalosError> {
        let security = Security::Mutual(Arc::new(context.credentials()?));
        let mut failures = Vec::new();
        for endpoint in context.endpoints()? {
            match Self::connect(&endpoint, &security).await {
                Ok(client) => return Ok(client),
                Err(e) => failures.push(e),
            }
        }
        Err(combine(failures))
    }

    /// This client aimed at `node` (the `node` gRPC metadata), or at the
    /// endpoint's own node for `None`.
    ///
    /// Fails when `node` is not printable ASCII.
    pub fn with_node(&self, node: Option<&str>) -> Result<Self, TalosError> {
        let node = match node {
            None => None,
            Some(node) => {
                let value = MetadataValue::try_from(node).map_err(|_| TalosError::BadEndpoint {
                    endpoint: node.to_owned(),
                    problem: "a node must be an IP address or host name (printable ASCII)".into(),
                })?;
                Some((node.to_owned(), value))
            }
        };
        Ok(Self {
            node,
            ..self.clone()
        })
    }

    /// This client with `timeout` for each call's answer and for each
    /// next piece of a streamed reply (default [`DEFAULT_TIMEOUT`]).
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self {
            timeout,
            ..self.clone()
        }
    }

    /// The endpoint connected to.
    pub fn endpoint(&self) -> &TalosEndpoint {
        &self.endpoint
    }

    /// The node calls go to, if one was chosen.
    pub fn node(&self) -> Option<&str> {
        self.node.as_ref().map(|(name, _)| name.as_str())
    }

    /// The node and endpoint, for messages.
    pub fn target(&self) -> String {
        match self.node() {
            Some(node) => format!("node {node} via {}", self.endpoint),
            None => self.endpoint.to_string(),
        }
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some((_, value)) = &self.node {
            request.metadata_mut().insert("node", value.clone());
        }
        request
    }

    /// Awaits a call's answer within the timeout.
    async fn call<T>(
        &self,
        rpc: &'static str,
        answer: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, TalosError> {
        match tokio::time::timeout(self.timeout, answer).await {
            Err(_) => Err(TalosError::Timeout {
                rpc,
                target: self.target(),
                after: self.timeout,
            }),
            Ok(Err(status)) => Err(self.status_error(rpc, &status)),
            Ok(Ok(response)) => Ok(response.into_inner()),
        }
    }

    fn status_error(&self, rpc: &'static str, status: &Status) -> TalosError {
        status_error(rpc, &self.endpoint, &self.target(), status)
    }

    fn check_metadata(
        &self,
        rpc: &'static str,
        metadata: Option<&Metadata>,
    ) -> Result<(), TalosError> {
        match metadata {
            Some(metadata) if !metadata.error.is_empty() => Err(TalosError::NodeFailed {
                rpc,
                target: self.target(),
                message: metadata.error.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// The node's Talos version.
    ///
    /// Fails when the call fails or the reply has no version.
    pub async fn version(&self) -> Result<TalosVersion, TalosError> {
        const RPC: &str = "Version";
        let reply = self
            .call(RPC, self.service.clone().version(self.request(())))
            .await?;
        let message = reply.messages.into_iter().next();
        self.check_metadata(RPC, message.as_ref().and_then(|m| m.metadata.as_ref()))?;
        let message = message.ok_or_else(|| self.empty(RPC, "a version"))?;
        let version = message
            .version
            .ok_or_else(|| self.empty(RPC, "a version"))?;
        Ok(TalosVersion {
            tag: version.tag,
            sha: version.sha,
            arch: format!("{}/{}", version.os, version.arch),
            platform: message.platform.map(|p| p.name).filter(|n| !n.is_empty()),
            rbac: message.features.is_some_and(|f| f.rbac),
        })
    }

    fn empty(&self, rpc: &'static str, missing: &'static str) -> TalosError {
        TalosError::EmptyReply {
            rpc,
            target: self.target(),
            missing,
        }
    }

    /// The etcd member status of the node (roles os:admin, os:operator,
    /// os:reader, os:etcd:backup).
    ///
    /// Fails when the call fails (a missing role is
    /// [`TalosError::PermissionDenied`]) or the reply has no status.
    pub async fn etcd_status(&self) -> Result<EtcdMemberStatus, TalosError> {
        const RPC: &str = "EtcdStatus";
        let reply = self
            .call(RPC, self.service.clone().etcd_status(self.request(())))
            .await?;
        let message = reply.messages.into_iter().next();
        self.check_metadata(RPC, message.as_ref().and_then(|m| m.metadata.as_ref()))?;
        message
            .and_then(|m| m.member_status)
            .ok_or_else(|| self.empty(RPC, "a member status"))
    }

    /// The state of the node's service `id` (e.g. `etcd`: `Preparing`
    /// while it waits for `Bootstrap`, then `Running`), or `None` when the
    /// node does not run it (roles os:admin, os:operator, os:reader).
    ///
    /// Fails when the call fails.
    pub async fn service_state(&self, id: &str) -> Result<Option<ServiceState>, TalosError> {
        const RPC: &str = "ServiceList";
        let reply = self
            .call(RPC, self.service.clone().service_list(self.request(())))
            .await?;
        let message = reply.messages.into_iter().next();
        self.check_metadata(RPC, message.as_ref().and_then(|m| m.metadata.as_ref()))?;
        let message = message.ok_or_else(|| self.empty(RPC, "a service list"))?;
        Ok(message
            .services
            .into_iter()
            .find(|s| s.id == id)
            .map(|s| ServiceState {
                state: s.state,
                healthy: s.health.is_some_and(|h| h.healthy && !h.unknown),
            }))
    }

    /// Starts an etcd snapshot of the node: the bbolt database followed by
    /// its SHA-256 trailer, read as it arrives (roles os:admin, os:operator,
    /// os:etcd:backup). The trailer is not checked here.
    ///
    /// Fails when the call is refused; a stream that breaks later fails
    /// the reads.
    pub async fn etcd_snapshot(&self) -> Result<DataReader, TalosError> {
        const RPC: &str = "EtcdSnapshot";
        let stream = self
            .call(
                RPC,
                self.service
                    .clone()
                    .etcd_snapshot(self.request(EtcdSnapshotRequest {})),
            )
            .await?;
        Ok(self.reader(RPC, stream))
    }

    /// Starts reading the file `path` of the node (e.g.
    /// `/system/state/config.yaml`, the machine config; os:admin).
    ///
    /// Fails when the call is refused; a stream that breaks later fails
    /// the reads.
    pub async fn read_stream(&self, path: &str) -> Result<DataReader, TalosError> {
        const RPC: &str = "Read";
        let stream = self
            .call(
                RPC,
                self.service
                    .clone()
                    .read(self.request(ReadRequest { path: path.into() })),
            )
            .await?;
        Ok(self.reader(RPC, stream))
    }

    /// Reads the whole file `path` of the node.
    ///
    /// Fails when the call fails or the stream breaks off.
    pub async fn read(&self, path: &str) -> Result<Vec<u8>, TalosError> {
        let mut reader = self.read_stream(path).await?;
        let mut content = Vec::new();
        reader
            .read_to_end(&mut content)
            .await
            .map_err(|e| into_talos_error(e, "Read", &self.target()))?;
        Ok(content)
    }

    /// The admin kubeconfig a control-plane node hands out (os:admin; what
    /// `talosctl kubeconfig` writes), taken out of the gzipped tar archive
    /// the node streams.
    ///
    /// Fails when the call fails, the stream breaks off, or the archive
    /// holds no `kubeconfig` file.
    pub async fn kubeconfig(&self) -> Result<Vec<u8>, TalosError> {
        const RPC: &str = "Kubeconfig";
        let stream = self
            .call(RPC, self.service.clone().kubeconfig(self.request(())))
            .await?;
        let mut archive = Vec::new();
        self.reader(RPC, stream)
            .read_to_end(&mut archive)
            .await
            .map_err(|e| into_talos_error(e, RPC, &self.target()))?;
        file_from_tar_gz(&archive, "kubeconfig").map_err(|problem| TalosError::BadReply {
            rpc: RPC,
            target: self.target(),
            problem,
        })
    }

    fn reader(&self, rpc: &'static str, stream: Streaming<Data>) -> DataReader {
        DataReader {
            inner: StreamReader::new(DataStream {
                inner: stream,
                client: self.clone(),
                rpc,
                received: 0,
                idle: Box::pin(tokio::time::sleep(self.timeout)),
            }),
        }
    }

    /// Uploads an etcd snapshot (the file as `EtcdSnapshot` gave it,
    /// trailer included) for a following
    /// [`bootstrap(true, …)`](Self::bootstrap) (os:admin; the node's etcd
    /// must be waiting for bootstrap).
    ///
    /// Fails when `snapshot` fails to read (the upload is then cut short and
    /// must not be bootstrapped from), or the node refuses the upload.
    pub async fn etcd_recover<R>(&self, snapshot: R) -> Result<(), TalosError>
    where
        R: AsyncRead + Send + Unpin + 'static,
    {
        const RPC: &str = "EtcdRecover";
        let failure = Arc::new(Mutex::new(None));
        let upload = UploadStream {
            reader: ReaderStream::with_capacity(snapshot, UPLOAD_PIECE),
            failure: failure.clone(),
        };
        let result = self
            .service
            .clone()
            .etcd_recover(self.request(upload))
            .await;
        let read_failure = failure.lock().ok().and_then(|mut f| f.take());
        if let Some(cause) = read_failure {
            return Err(TalosError::Upload {
                rpc: RPC,
                target: self.target(),
                cause,
            });
        }
        let reply = result.map_err(|s| self.status_error(RPC, &s))?.into_inner();
        for message in &reply.messages {
            self.check_metadata(RPC, message.metadata.as_ref())?;
        }
        Ok(())
    }

    /// Makes a control-plane node create a new single-member etcd cluster;
    /// with `recover_etcd`, from the snapshot uploaded with
    /// [`etcd_recover`](Self::etcd_recover) (`skip_hash_check` for a raw
    /// copy of a data directory, which has no trailer). os:admin.
    ///
    /// Fails as Talos does: `FailedPrecondition` before the node may
    /// bootstrap, `AlreadyExists` when etcd already has data.
    pub async fn bootstrap(
        &self,
        recover_etcd: bool,
        skip_hash_check: bool,
    ) -> Result<(), TalosError> {
        const RPC: &str = "Bootstrap";
        let reply = self
            .call(
                RPC,
                self.service
                    .clone()
                    .bootstrap(self.request(BootstrapRequest {
                        recover_etcd,
                        recover_skip_hash_check: skip_hash_check,
                    })),
            )
            .await?;
        for message in &reply.messages {
            self.check_metadata(RPC, message.metadata.as_ref())?;
        }
        Ok(())
    }

    /// Applies the machine configuration `config` (YAML) in `mode`; with
    /// `dry_run` the node only validates it. On a node in maintenance mode
    /// connect with [`Security::Insecure`].
    ///
    /// Fails when the node refuses the config (the message says why).
    pub async fn apply_configuration(
        &self,
        config: Bytes,
        mode: ApplyMode,
        dry_run: bool,
    ) -> Result<ApplyOutcome, TalosError> {
        const RPC: &str = "ApplyConfiguration";
        let (mode, try_mode_timeout) = match mode {
            ApplyMode::Auto => (Mode::Auto, None),
            ApplyMode::NoReboot => (Mode::NoReboot, None),
            ApplyMode::Reboot => (Mode::Reboot, None),
            ApplyMode::Staged => (Mode::Staged, None),
            ApplyMode::Try(timeout) => (
                Mode::Try,
                Some(prost_types::Duration {
                    seconds: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
                    nanos: i32::try_from(timeout.subsec_nanos()).unwrap_or(0),
                }),
            ),
        };
        let reply = self
            .call(
                RPC,
                self.service
                    .clone()
                    .apply_configuration(self.request(ApplyConfigurationRequest {
                        data: config,
                        mode: mode.into(),
                        dry_run,
                        try_mode_timeout,
                    })),
            )
            .await?;
        let message = reply.messages.into_iter().next();
        self.check_metadata(RPC, message.as_ref().and_then(|m| m.metadata.as_ref()))?;
        let message = message.ok_or_else(|| self.empty(RPC, "an outcome"))?;
        let mode = Mode::try_from(message.mode)
            .map(|m| m.as_str_name().to_owned())
            .unwrap_or_else(|_| format!("mode {}", message.mode));
        Ok(ApplyOutcome {
            mode,
            mode_details: message.mode_details,
            warnings: message.warnings,
        })
    }
}

/// Connects with `context` and returns a client aimed at the first of
/// `nodes` that answers `Version` (trying each endpoint in turn), with that
/// version. An empty `nodes` means the endpoint's own node. A node that
/// refuses `Version` for lack of a role has answered all the same (Talos
/// allows `Version` to os:admin, os:operator and os:reader, not to
/// os:etcd:backup, the in-cluster backup role): its version is `None`.
///
/// Fails when no endpoint and node answer; a failure of the endpoint as a
/// whole (unreachable, certificate refused) is not retried per node.
pub async fn first_answering(
    context: &Context,
    nodes: &[String],
) -> Result<(TalosClient, Option<TalosVersion>), TalosError> {
    let security = Security::Mutual(Arc::new(context.credentials()?));
    let targets: Vec<Option<&str>> = if nodes.is_empty() {
        vec![None]
    } else {
        nodes.iter().map(|n| Some(n.as_str())).collect()
    };
    let mut failures = Vec::new();
    for endpoint in context.endpoints()? {
        let client = match TalosClient::connect(&endpoint, &security).await {
            Ok(client) => client,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        for node in &targets {
            let client = client.with_node(*node)?;
            match client.version().await {
                Ok(version) => return Ok((client, Some(version))),
                Err(e) if e.is_permission_denied() => return Ok((client, None)),
                Err(e) if e.is_endpoint_failure() => {
                    failures.push(e);
                    break;
                }
                Err(e) => {
                    tracing::warn!("{e}; trying the next node");
                    failures.push(e);
                }
            }
        }
    }
    Err(combine(failures))
}

/// The content of the file `name` in the gzipped tar `archive`.
fn file_from_tar_gz(archive: &[u8], name: &str) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let entries = tar
        .entries()
        .map_err(|e| format!("not a gzipped tar archive ({e})"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("a broken tar archive ({e})"))?;
        let path = entry
            .path()
            .map_err(|e| format!("a tar entry without a usable name ({e})"))?;
        if path.as_os_str() == name {
            let mut content = Vec::new();
            entry
                .read_to_end(&mut content)
                .map_err(|e| format!("cannot read {name} from the archive ({e})"))?;
            return Ok(content);
        }
    }
    Err(format!("the archive holds no file named {name}"))
}

/// One error for several attempts: the error itself when there was one.
fn combine(mut failures: Vec<TalosError>) -> TalosError {
    if failures.len() == 1 {
        if let Some(only) = failures.pop() {
            return only;
        }
    }
    TalosError::Unreachable {
        endpoint: "any endpoint or node of the context".into(),
        detail: failures
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// A failed connection, classified.
fn transport_error(
    endpoint: &TalosEndpoint,
    error: &(dyn std::error::Error + 'static),
) -> TalosError {
    let endpoint = endpoint.to_string();
    match tls::describe_failure(error) {
        Failure::ClientCertificateRejected(detail) => {
            TalosError::ClientCertificateRejected { endpoint, detail }
        }
        Failure::ServerNotTrusted(detail) => TalosError::ServerNotTrusted { endpoint, detail },
        Failure::Network(detail) => TalosError::Unreachable { endpoint, detail },
    }
}

/// A failed call, classified: a status with a source failed on our side of
/// the wire (the connection), one without came from the server.
fn status_error(
    rpc: &'static str,
    endpoint: &TalosEndpoint,
    target: &str,
    status: &Status,
) -> TalosError {
    if let Some(source) = std::error::Error::source(status) {
        let endpoint = endpoint.to_string();
        return match tls::describe_failure(source) {
            Failure::ClientCertificateRejected(detail) => {
                TalosError::ClientCertificateRejected { endpoint, detail }
            }
            Failure::ServerNotTrusted(detail) => TalosError::ServerNotTrusted { endpoint, detail },
            Failure::Network(detail) if status.code() == Code::Unavailable => {
                TalosError::Unreachable { endpoint, detail }
            }
            Failure::Network(detail) => TalosError::Rpc {
                rpc,
                target: target.to_owned(),
                code: status.code(),
                message: detail,
            },
        };
    }
    match status.code() {
        Code::PermissionDenied => TalosError::PermissionDenied {
            rpc,
            target: target.to_owned(),
            message: status.message().to_owned(),
        },
        code => TalosError::Rpc {
            rpc,
            target: target.to_owned(),
            code,
            message: status.message().to_owned(),
        },
    }
}

/// The [`TalosError`] inside an I/O error from a [`DataReader`], or a new
/// one for another I/O error.
fn into_talos_error(error: io::Error, rpc: &'static str, target: &str) -> TalosError {
    let detail = error.to_string();
    match error
        .into_inner()
        .map(|inner| inner.downcast::<TalosError>())
    {
        Some(Ok(talos)) => *talos,
        _ => TalosError::StreamBroken {
            rpc,
            target: target.to_owned(),
            received: 0,
            detail,
        },
    }
}

/// The bytes of a streamed reply (`EtcdSnapshot`, `Read`) as they arrive.
/// A failure of the stream is a read error of kind `Other` whose inner
/// error is a [`TalosError`] naming the call, the node and the bytes
/// received.
pub struct DataReader {
    inner: StreamReader<DataStream, Bytes>,
}

impl std::fmt::Debug for DataReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stream = self.inner.get_ref();
        f.debug_struct("DataReader")
            .field("rpc", &stream.rpc)
            .field("target", &stream.client.target())
            .field("received", &stream.received)
            .finish()
    }
}

impl AsyncRead for DataReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// The pieces of a streamed reply, failures turned into I/O errors.
struct DataStream {
    inner: Streaming<Data>,
    client: TalosClient,
    rpc: &'static str,
    received: u64,
    /// Fires when the next piece is overdue.
    idle: Pin<Box<tokio::time::Sleep>>,
}

impl Stream for DataStream {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Pending => match this.idle.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(()) => {
                    Poll::Ready(Some(Err(io::Error::other(TalosError::StreamBroken {
                        rpc: this.rpc,
                        target: this.client.target(),
                        received: this.received,
                        detail: format!(
                            "no data for {} (raise the source's `timeout` if the node is \
                             only slow)",
                            humantime::format_duration(this.client.timeout)
                        ),
                    }))))
                }
            },
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Ok(piece))) => {
                let deadline = tokio::time::Instant::now() + this.client.timeout;
                this.idle.as_mut().reset(deadline);
                if let Err(e) = this
                    .client
                    .check_metadata(this.rpc, piece.metadata.as_ref())
                {
                    return Poll::Ready(Some(Err(io::Error::other(e))));
                }
                this.received += piece.bytes.len() as u64;
                Poll::Ready(Some(Ok(piece.bytes)))
            }
            Poll::Ready(Some(Err(status))) => {
                let cause = this.client.status_error(this.rpc, &status);
                let error = match cause {
                    _ if this.received == 0 => cause,
                    // The call and node are named once, by the break.
                    TalosError::Rpc { code, message, .. } => TalosError::StreamBroken {
                        rpc: this.rpc,
                        target: this.client.target(),
                        received: this.received,
                        detail: format!("{code:?}: {message}"),
                    },
                    other => TalosError::StreamBroken {
                        rpc: this.rpc,
                        target: this.client.target(),
                        received: this.received,
                        detail: other.to_string(),
                    },
                };
                Poll::Ready(Some(Err(io::Error::other(error))))
            }
        }
    }
}

/// A reader as a stream of `common.Data` pieces; a read failure ends the
/// stream early and is kept for the caller.
struct UploadStream<R> {
    reader: ReaderStream<R>,
    failure: Arc<Mutex<Option<io::Error>>>,
}

impl<R: AsyncRead + Unpin> Stream for UploadStream<R> {
    type Item = Data;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.reader).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Ok(bytes))) => Poll::Ready(Some(Data {
                metadata: None,
                bytes,
            })),
            Poll::Ready(Some(Err(e))) => {
                if let Ok(mut slot) = self.failure.lock() {
                    *slot = Some(e);
                }
                Poll::Ready(None)
            }
        }
    }
}
