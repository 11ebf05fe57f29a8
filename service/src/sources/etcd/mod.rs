//! `kind = "etcd"`: a snapshot of etcd through its v3 API, straight from a
//! member.
//!
//! ```toml
//! [[job]]
//! name = "etcd"
//! source = { kind = "etcd", endpoints = ["https://10.0.0.10:2379"],
//!            ca = "etcd/ca.crt", cert = "etcd/client.crt", key = "etcd/client.key" }
//! ```
//!
//! The endpoints are tried in order; the first member that answers
//! `Maintenance.Status` and has a leader is used. Its `Maintenance.Snapshot`
//! stream goes straight into the repository as the file `etcd.db`, chunked
//! in fixed pages (DESIGN.md: bbolt reuses freed pages all over the file),
//! and is verified on the way ([`snapshot_file`]): a missing or wrong
//! SHA-256 trailer fails the job before the snapshot is committed.
//! `https://` endpoints are reached through the mutual-TLS connector the
//! Talos client uses (`talos::tls::connect`), which finishes the
//! handshake and reads the server's first bytes before gRPC starts, so a
//! refused client certificate is reported as that.
//!
//! The snapshot's metadata (readable with the service key):
//!
//! | field | meaning |
//! |---|---|
//! | `endpoint`, `member_id`, `cluster_id` | the member used (ids in hex, as etcdctl shows them) |
//! | `etcd_version` | the member's etcd version |
//! | `revision`, `key_count` | a count-only range over the whole keyspace taken just before the snapshot |
//! | `revision_exact` | whether the revision was unchanged once the snapshot had begun, i.e. the snapshot holds exactly `revision`; if not, `revision_max` bounds it |
//! | `db_size`, `db_size_in_use` | the member's database size as `Status` reports it |
//! | `snapshot_bytes`, `sha256` | the stored file's size (trailer included) and its trailer |
//! | `raft_term`, `raft_index` | the member's raft position |

pub mod drill;
mod member;
pub mod restore;
pub mod snapshot_file;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::oneshot;
use tokio_util::io::StreamReader;

use self::member::{count_keys, count_keys_with, describe};
use self::snapshot_file::{SnapshotError, VerifyingReader};
use super::{SourceContext, SourceError, resolve};
use crate::backup::stream::StreamChunking;
use crate::backup::{BackupError, SnapshotBuilder};

/// The name of the snapshot file in a backup of an etcd source.
pub const SNAPSHOT_FILE: &str = "etcd.db";

/// Settings of an etcd source.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSource {
    /// Client URLs of the members, tried in order: `https://HOST:2379`
    /// (or `http://` for an etcd without TLS).
    pub endpoints: Vec<String>,
    /// PEM file of the CA that signed the members' server certificates;
    /// needed for `https://` endpoints.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// PEM file of the client certificate (with `key`), when etcd asks
    /// for one (`--client-cert-auth`).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// How long to wait for a connection, an answer or the next piece of
    /// the snapshot (`"30s"`, `"2m"`); default 30 s.
    #[serde(default = "default_timeout", with = "crate::field::duration")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Why an etcd snapshot could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The source names no endpoint.
    #[error(
        "the etcd source has no endpoints; add one, e.g. endpoints = [\"https://10.0.0.10:2379\"]"
    )]
    NoEndpoints,
    /// An endpoint is not a usable URL.
    #[error(
        "etcd endpoint {endpoint:?} {problem}; write it as https://HOST:PORT (or http://HOST:PORT without TLS)"
    )]
    BadEndpoint {
        /// The endpoint as configured.
        endpoint: String,
        /// What is wrong with it.
        #[source]
        problem: EndpointProblem,
    },
    /// `cert` without `key` or the other way round.
    #[error("the etcd source sets `{set}` but not `{missing}`; a client certificate needs both")]
    HalfIdentity {
        /// The one that is set.
        set: &'static str,
        /// The one that is missing.
        missing: &'static str,
    },
    /// An `https://` endpoint without `ca`.
    #[error(
        "etcd endpoint {endpoint} uses TLS but the source has no `ca`; set `ca` to the PEM file of \
         the CA that signed etcd's server certificate (on Talos: the etcd CA of the secrets bundle)"
    )]
    MissingCa {
        /// The endpoint.
        endpoint: String,
    },
    /// A certificate or key file cannot be used.
    #[error("cannot use the etcd {what} file {path}: {problem}; fix `{what}` in the job's source")]
    CredentialFile {
        /// `ca`, `cert` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        problem: CredentialProblem,
    },
    /// No endpoint could be used.
    #[error("no etcd endpoint could be used; tried {}", list_attempts(.attempts))]
    NoHealthyMember {
        /// Each endpoint tried, with why it failed, in order.
        attempts: Vec<EndpointAttempt>,
    },
    /// A request to the chosen member failed.
    #[error("etcd member {endpoint}: {what} failed: {message}")]
    Request {
        /// The endpoint.
        endpoint: String,
        /// Which request.
        what: &'static str,
        /// The error, with its causes.
        message: String,
    },
    /// The snapshot stream broke off.
    #[error(
        "the snapshot stream from etcd member {endpoint} broke off: {message}; nothing was \
         stored, take the backup again"
    )]
    Stream {
        /// The endpoint.
        endpoint: String,
        /// The error, with its causes.
        message: String,
    },
    /// The snapshot arrived whole but failed verification. (`problem` is
    /// spelled out in the message rather than chained as a source, so that
    /// `{:#}` does not print it twice.)
    #[error("etcd member {endpoint}: {problem}")]
    Corrupt {
        /// The endpoint.
        endpoint: String,
        /// What is wrong with the snapshot.
        problem: SnapshotError,
    },
}

/// What is wrong with a configured endpoint, as a phrase after its name.
#[derive(Debug, thiserror::Error)]
pub enum EndpointProblem {
    /// It does not parse as a URL.
    #[error("is not a URL ({0})")]
    NotAUrl(#[source] tonic::codegen::http::uri::InvalidUri),
    /// It names no host.
    #[error("has no host")]
    NoHost,
    /// Its host and port do not make an address.
    #[error(transparent)]
    Address(crate::talos::TalosError),
    /// Its scheme is neither `http` nor `https`.
    #[error("has the scheme {0:?}")]
    Scheme(String),
    /// It has no scheme.
    #[error("has no scheme")]
    NoScheme,
}

/// What is wrong with a configured certificate or key file.
#[derive(Debug, thiserror::Error)]
pub enum CredentialProblem {
    /// It cannot be read.
    #[error(transparent)]
    Read(std::io::Error),
    /// It holds no PEM block of the expected label.
    #[error("it holds no PEM {label} block")]
    NoPemBlock {
        /// The label looked for, e.g. `CERTIFICATE`.
        label: &'static str,
    },
    /// A certificate in it does not parse.
    #[error("a certificate in it cannot be read ({0})")]
    Certificate(#[source] rustls::pki_types::pem::Error),
    /// It holds no private key that parses.
    #[error("it holds no usable private key ({0})")]
    Key(#[source] rustls::pki_types::pem::Error),
    /// None of the CA's certificates is a usable trust anchor.
    #[error("none of its certificates can be used as a trust anchor")]
    NoTrustAnchor,
    /// The private key does not belong to the client certificate.
    #[error("it does not suit the certificate in `cert` ({0})")]
    KeyMismatch(#[source] rustls::Error),
    /// The TLS settings cannot be made.
    #[error(transparent)]
    Tls(rustls::Error),
}

/// One endpoint that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointAttempt {
    /// The endpoint.
    pub endpoint: String,
    /// What kind of failure.
    pub failure: AttemptFailure,
    /// The error, with its causes.
    pub message: String,
}

/// Kinds of endpoint failure, each with its own fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptFailure {
    /// Nothing answered (refused, timed out, no route).
    Unreachable,
    /// etcd's server certificate is not signed by the configured `ca` (or
    /// does not name the endpoint's host).
    ServerCertificate,
    /// etcd refused the client certificate, or wanted one and got none.
    ClientCertificate,
    /// Another TLS failure (e.g. TLS spoken to a plaintext port).
    Tls,
    /// The member answered but cannot serve a snapshot now (no leader, a
    /// learner, an error status).
    Unhealthy,
}

impl AttemptFailure {
    fn label_and_fix(self) -> (&'static str, &'static str) {
        match self {
            Self::Unreachable => (
                "unreachable",
                "check the address, port and scheme (https:// when etcd serves TLS), that etcd \
                 runs there, and that this host can reach it",
            ),
            Self::ServerCertificate => (
                "TLS handshake failed: etcd's server certificate is not trusted",
                "`ca` must be the CA that signed etcd's server certificate (on Talos the etcd CA \
                 of the secrets bundle), and the endpoint a host name or IP address that \
                 certificate names",
            ),
            Self::ClientCertificate => (
                "TLS handshake failed: etcd refused the client certificate",
                "`cert`/`key` must be a client certificate signed by the CA etcd trusts for \
                 clients (its --trusted-ca-file), and both must be set",
            ),
            Self::Tls => (
                "TLS handshake failed",
                "check that the endpoint serves TLS (https://) or not (http://) as written",
            ),
            Self::Unhealthy => (
                "member not usable",
                "check the member's health (etcdctl endpoint status) or list a healthy member first",
            ),
        }
    }
}

fn list_attempts(attempts: &[EndpointAttempt]) -> String {
    attempts
        .iter()
        .map(|a| {
            let (label, fix) = a.failure.label_and_fix();
            format!("{}: {label} ({}) — {fix}", a.endpoint, a.message)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl EtcdSource {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        for path in [&mut self.ca, &mut self.cert, &mut self.key]
            .into_iter()
            .flatten()
        {
            resolve(path, base);
        }
    }

    pub(crate) async fn back_up(
        &self,
        builder: &mut SnapshotBuilder,
        _context: &SourceContext,
    ) -> Result<serde_json::Value, SourceError> {
        let tls = self.tls()?;
        let mut member = self.first_healthy_member(&tls).await?;
        let endpoint = member.endpoint.clone();
        tracing::info!(
            "etcd snapshot from {endpoint} (member {:016x}, etcd {}, db {} bytes)",
            member.member_id,
            member.version,
            member.db_size
        );
        let (key_count, revision) = count_keys(&mut member).await?;
        let streaming = member
            .client
            .snapshot()
            .await
            .map_err(|e| EtcdError::Request {
                endpoint: endpoint.clone(),
                what: "Maintenance.Snapshot",
                message: describe(&e),
            })?;
        let (started_tx, started_rx) = oneshot::channel();
        let reader = StreamReader::new(snapshot_stream(streaming, self.timeout, started_tx));
        let (reader, verification) = VerifyingReader::new(reader);
        // Once the first piece has arrived the member has fixed the
        // snapshot's contents: the revision now bounds it from above.
        let mut probe = member.client.clone();
        let after = async move {
            match started_rx.await {
                Ok(()) => count_keys_with(&mut probe).await.ok().map(|(_, rev)| rev),
                Err(_) => None,
            }
        };
        let (stored, revision_after) = tokio::join!(
            builder.add_stream(SNAPSHOT_FILE, reader, StreamChunking::Pages),
            after
        );
        let size = stored.map_err(|e| stream_error(e, &endpoint))?;
        let verified = match verification.outcome() {
            Some(Ok(verified)) => verified,
            Some(Err(problem)) => return Err(EtcdError::Corrupt { endpoint, problem }.into()),
            None => {
                return Err(EtcdError::Stream {
                    endpoint,
                    message: format!("the stream ended unverified after {size} bytes"),
                }
                .into());
            }
        };
        let exact = revision_after == Some(revision);
        let mut metadata = serde_json::json!({
            "endpoint": endpoint,
            "member_id": format!("{:016x}", member.member_id),
            "cluster_id": format!("{:016x}", member.cluster_id),
            "etcd_version": member.version,
            "revision": revision,
            "revision_exact": exact,
            "key_count": key_count,
            "db_size": member.db_size,
            "db_size_in_use": member.db_size_in_use,
            "snapshot_bytes": verified.size,
            "sha256": verified.sha256,
            "raft_term": member.raft_term,
            "raft_index": member.raft_index,
        });
        if let (false, Some(after), Some(object)) =
            (exact, revision_after, metadata.as_object_mut())
        {
            object.insert("revision_max".into(), after.into());
        }
        Ok(metadata)
    }
}

/// The snapshot's pieces as a byte stream; a gRPC error, or `timeout`
/// without a piece, ends it with an error. `started` fires with the first
/// piece.
fn snapshot_stream(
    streaming: etcd_client::SnapshotStreaming,
    timeout: Duration,
    started: oneshot::Sender<()>,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + Unpin + 'static {
    let state = Some((streaming, Some(started)));
    Box::pin(futures_util::stream::unfold(
        state,
        move |state| async move {
            let (mut streaming, mut started) = state?;
            let piece = match tokio::time::timeout(timeout, streaming.message()).await {
                Ok(Ok(Some(response))) => Ok(Bytes::copy_from_slice(response.blob())),
                Ok(Ok(None)) => return None,
                Ok(Err(e)) => Err(std::io::Error::other(describe(&e))),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no data for {}", humantime::format_duration(timeout)),
                )),
            };
            match piece {
                Ok(bytes) => {
                    if let Some(tx) = started.take() {
                        let _ = tx.send(());
                    }
                    Some((Ok(bytes), Some((streaming, started))))
                }
                Err(e) => Some((Err(e), None)),
            }
        },
    ))
}

/// Turns a failed byte-stream backup into the etcd error it stands for.
fn stream_error(error: BackupError, endpoint: &str) -> SourceError {
    match error {
        BackupError::Stream { source, .. } => match snapshot_file::snapshot_error(&source) {
            Some(e) => EtcdError::Corrupt {
                endpoint: endpoint.to_owned(),
                problem: e.clone(),
            }
            .into(),
            None => EtcdError::Stream {
                endpoint: endpoint.to_owned(),
                message: source.to_string(),
            }
            .into(),
        },
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<EtcdSource, toml::de::Error> {
        toml::from_str(toml_text)
    }

    #[test]
    fn settings_parse_with_defaults_and_durations() {
        let source = parse(r#"endpoints = ["https://10.0.0.10:2379"]"#).expect("parses");
        assert_eq!(source.timeout, Duration::from_secs(30));
        assert_eq!(source.ca, None);
        let source = parse(
            r#"endpoints = ["https://a:2379", "https://b:2379"]
               ca = "ca.crt"
               cert = "c.crt"
               key = "c.key"
               timeout = "2m""#,
        )
        .expect("parses");
        assert_eq!(source.timeout, Duration::from_secs(120));
        assert_eq!(source.endpoints.len(), 2);
        let error = parse(
            r#"endpoints = ["x"]
               timeout = "soon""#,
        )
        .expect_err("bad duration");
        assert!(error.to_string().contains("not a duration"), "{error}");
        assert!(
            parse(
                r#"endpoints = ["x"]
               tls = true"#
            )
            .is_err()
        );
    }

    #[test]
    fn relative_credential_paths_follow_the_config_file() {
        let mut source = parse(
            r#"endpoints = ["https://a:2379"]
               ca = "pki/ca.crt"
               cert = "/abs/c.crt""#,
        )
        .expect("parses");
        source.resolve_paths(Path::new("/etc/lifeboat"));
        assert_eq!(source.ca, Some(PathBuf::from("/etc/lifeboat/pki/ca.crt")));
        assert_eq!(source.cert, Some(PathBuf::from("/abs/c.crt")));
    }

    #[test]
    fn the_error_lists_every_endpoint_with_its_fix() {
        let error = EtcdError::NoHealthyMember {
            attempts: vec![
                EndpointAttempt {
                    endpoint: "https://a:2379".into(),
                    failure: AttemptFailure::Unreachable,
                    message: "connection refused".into(),
                },
                EndpointAttempt {
                    endpoint: "https://b:2379".into(),
                    failure: AttemptFailure::ServerCertificate,
                    message: "UnknownIssuer".into(),
                },
            ],
        };
        let message = error.to_string();
        assert!(message.contains("https://a:2379: unreachable"), "{message}");
        assert!(
            message.contains("https://b:2379: TLS handshake failed"),
            "{message}"
        );
    }
}
