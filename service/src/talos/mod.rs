//! A client for the Talos machine API (apid, gRPC over mutual TLS on port
//! 50000).
//!
//! - [`config`]: talosconfig files — the search order (`$TALOSCONFIG`,
//!   `~/.talos/config`, `/var/run/secrets/talos.dev/config`), contexts with
//!   endpoints, nodes and base64 PEM credentials;
//! - [`tls`]: the TLS settings: mutual TLS verified against the
//!   talosconfig's CA, or maintenance mode (no server verification, no
//!   client certificate, optionally a pinned server certificate);
//! - [`client`]: [`TalosClient`], one connection to one endpoint, with the
//!   `node` gRPC metadata that makes apid proxy a call to a node, and the
//!   calls lifeboat makes: `EtcdSnapshot`, `EtcdStatus`, `Version`, `Read`,
//!   and for a rebuild `ServiceList`, `EtcdRecover`, `Bootstrap`,
//!   `ApplyConfiguration`;
//! - [`proto`]: the message and service types, generated from lifeboat's
//!   own subset of Talos' protos (`service/proto/`).
//!
//! In the cluster, Talos' `kubernetesTalosAPIAccess` feature mounts a
//! talosconfig whose client certificate is renewed every few hours: load
//! the config afresh for every job run ([`TalosConfig::load`]) and never keep
//! a client across runs.

pub mod client;
pub mod config;
pub mod proto;
pub mod tls;

pub use client::{
    ApplyMode, ApplyOutcome, DataReader, EtcdMemberStatus, ServiceState, TalosClient, TalosVersion,
};
pub use config::{Context, Credentials, TalosConfig, TalosEndpoint};
pub use tls::Security;

/// The port apid listens on.
pub const APID_PORT: u16 = 50000;

/// Why a Talos API call, or getting ready for one, failed. Every message
/// names what failed and, where known, the fix.
#[derive(Debug, thiserror::Error)]
pub enum TalosError {
    /// No talosconfig in any of the places looked at.
    #[error(
        "no talosconfig found (looked at {searched}); give the file with `talosconfig = \"…\"` \
         in the job's source or the TALOSCONFIG environment variable, or create one with \
         `talosctl gen config` / your Terraform Talos provider output"
    )]
    ConfigNotFound {
        /// The paths tried, in order.
        searched: String,
    },
    /// A talosconfig exists but cannot be read.
    #[error("cannot read talosconfig {path}: {cause}")]
    ConfigRead {
        /// The file.
        path: std::path::PathBuf,
        /// The operating system's error.
        cause: std::io::Error,
    },
    /// A talosconfig is not valid YAML of the expected shape.
    #[error("talosconfig {path} is not valid: {message}")]
    ConfigInvalid {
        /// The file.
        path: std::path::PathBuf,
        /// The parser's message.
        message: String,
    },
    /// No context was asked for and the file names no current one.
    #[error(
        "talosconfig {path} has no current context; name one with `context = \"…\"` in the \
         job's source (its contexts: {known})"
    )]
    NoContext {
        /// The file.
        path: std::path::PathBuf,
        /// The contexts it has.
        known: String,
    },
    /// The context asked for is not in the file.
    #[error("talosconfig {path} has no context {name:?}; its contexts: {known}")]
    UnknownContext {
        /// The file.
        path: std::path::PathBuf,
        /// The name asked for.
        name: String,
        /// The contexts it has.
        known: String,
    },
    /// A context lacks something a connection needs, or holds it in a form
    /// that cannot be used.
    #[error("talosconfig {path}, context {context:?}: {problem}")]
    BadContext {
        /// The file.
        path: std::path::PathBuf,
        /// The context.
        context: String,
        /// What is wrong, and the fix.
        problem: String,
    },
    /// An endpoint or node address cannot be parsed.
    #[error("Talos endpoint {endpoint:?} is not an address: {problem}")]
    BadEndpoint {
        /// As written.
        endpoint: String,
        /// What is wrong.
        problem: String,
    },
    /// The TLS settings could not be built from the credentials.
    #[error("cannot set up TLS for the Talos API: {problem}")]
    Tls {
        /// What is wrong, and the fix.
        problem: String,
    },
    /// No connection could be made to the endpoint.
    #[error(
        "cannot reach the Talos API at {endpoint}: {detail}; check the address, that the node \
         is up and that port {port} is reachable from here",
        port = APID_PORT
    )]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// The network's error.
        detail: String,
    },
    /// The server's certificate is not trusted by the talosconfig's CA (or
    /// does not name the address connected to).
    #[error(
        "the Talos API at {endpoint} presented a certificate that the talosconfig does not \
         trust ({detail}); check that the context's `ca` is this cluster's, and connect by an \
         address the node's certificate names (its IPs, or `certSANs` of the machine config)"
    )]
    ServerNotTrusted {
        /// The endpoint.
        endpoint: String,
        /// rustls' verdict.
        detail: String,
    },
    /// The server refused the client certificate.
    #[error(
        "the Talos API at {endpoint} rejected the client certificate ({detail}): it is not \
         signed by this cluster's Talos CA, or it has expired; use a talosconfig of this \
         cluster (`talosctl config new`, or in the cluster the Talos ServiceAccount's secret, \
         which is renewed every few hours)"
    )]
    ClientCertificateRejected {
        /// The endpoint.
        endpoint: String,
        /// The TLS alert or error.
        detail: String,
    },
    /// The talosconfig's role may not make this call.
    #[error(
        "{rpc} on {target} was refused: {message}; the talosconfig's role lacks the right \
         (Talos allows EtcdSnapshot to os:admin, os:operator and os:etcd:backup; EtcdStatus \
         also to os:reader; Version and ServiceList to os:admin, os:operator and os:reader; Read, Bootstrap, \
         EtcdRecover and ApplyConfiguration to os:admin)"
    )]
    PermissionDenied {
        /// The call.
        rpc: &'static str,
        /// The node and endpoint.
        target: String,
        /// The server's message.
        message: String,
    },
    /// The call failed on the server or on the way.
    #[error("{rpc} on {target} failed: {code:?}: {message}")]
    Rpc {
        /// The call.
        rpc: &'static str,
        /// The node and endpoint.
        target: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's message and the transport's causes.
        message: String,
    },
    /// No answer, or no next piece of a stream, within the timeout.
    #[error(
        "{rpc} on {target} gave no answer within {}; the node may be overloaded or the \
         network path broken — retry, or raise the source's `timeout`",
        humantime::format_duration(*after)
    )]
    Timeout {
        /// The call.
        rpc: &'static str,
        /// The node and endpoint.
        target: String,
        /// The timeout.
        after: std::time::Duration,
    },
    /// A streamed reply broke off part way.
    #[error(
        "the {rpc} stream from {target} broke off after {received} bytes: {detail}; retry, and \
         look at the node's logs (`talosctl logs`, `talosctl dmesg`) if it repeats"
    )]
    StreamBroken {
        /// The call.
        rpc: &'static str,
        /// The node and endpoint.
        target: String,
        /// Bytes received before the break.
        received: u64,
        /// Why.
        detail: String,
    },
    /// A reply arrived whole but does not hold what the call promises.
    #[error("the {rpc} reply from {target} is not usable: {problem}")]
    BadReply {
        /// The call.
        rpc: &'static str,
        /// The node and endpoint.
        target: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The node answered with an error in the reply's metadata (apid's way
    /// of reporting a failure on the node it proxied to).
    #[error("{rpc} on {target} failed on the node: {message}")]
    NodeFailed {
        /// The call.
        rpc: &'static str,
        /// The node and endpoint.
        target: String,
        /// The node's message.
        message: String,
    },
    /// The reply lacked what the call is for.
    #[error("{rpc} on {target} answered without {missing}")]
    EmptyReply {
        /// The call.
        rpc: &'static str,
        /// The node and endpoint.
        target: String,
        /// What was missing.
        missing: &'static str,
    },
    /// Reading the data to upload failed.
    #[error("reading the data for {rpc} to {target}: {cause}")]
    Upload {
        /// The call.
        rpc: &'static str,
        /// The node and endpoint.
        target: String,
        /// The reader's error.
        cause: std::io::Error,
    },
}

impl TalosError {
    /// Whether the server refused the call for lack of a role (callers may
    /// go on without what the call would have told them).
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, Self::PermissionDenied { .. })
    }

    /// Whether the failure concerns the connection to the endpoint as a
    /// whole (unreachable, untrusted, refused certificate) rather than one
    /// node behind it: another node through the same endpoint would fail
    /// the same way.
    pub fn is_endpoint_failure(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. }
                | Self::ServerNotTrusted { .. }
                | Self::ClientCertificateRejected { .. }
                | Self::Tls { .. }
        )
    }
}
