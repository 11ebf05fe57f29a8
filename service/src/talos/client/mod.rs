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
//! an [`AsyncRead`](tokio::io::AsyncRead) that yields the bytes as they arrive, so a snapshot is
//! never staged whole; a stream that breaks off becomes a read error that
//! names the call, the node and how far it got.
//!
//! This module holds the connection and the choice of endpoint and node;
//! `calls` the machine API calls, `stream` the streamed readers and the
//! upload stream.

mod calls;
mod stream;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Request, Status};

use super::TalosError;
use super::config::{Context, TalosEndpoint};
use super::proto::common::Metadata;
use super::proto::machine::machine_service_client::MachineServiceClient;
use super::tls::{self, Failure, Security};

pub use super::proto::machine::EtcdMemberStatus;
pub use stream::DataReader;

/// How long a TCP connection and TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest message accepted, as talosctl's limit.
const MAX_MESSAGE: usize = 32 * 1024 * 1024;
/// How long a call, or the next piece of a stream, may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

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

    fn empty(&self, rpc: &'static str, missing: &'static str) -> TalosError {
        TalosError::EmptyReply {
            rpc,
            target: self.target(),
            missing,
        }
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
