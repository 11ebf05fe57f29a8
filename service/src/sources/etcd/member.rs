//! Finding a member to snapshot: TLS settings from the configured files,
//! connecting to each endpoint in order (over TLS through the shared
//! mutual-TLS connector), `Status` with a leader required, and sorting
//! every failure by its fix.

use std::path::Path;
use std::sync::Arc;

use etcd_client::{Client, ConnectOptions, GetOptions};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use tonic::transport::{Channel, Endpoint, Uri};

use super::{
    AttemptFailure, CredentialProblem, EndpointAttempt, EndpointProblem, EtcdError, EtcdSource,
};
use crate::talos::TalosEndpoint;
use crate::talos::tls::{self as mtls, Failure};

/// The TLS client settings made from the configured files; `None` without
/// a `ca` (then only `http://` endpoints can be used).
#[derive(Clone)]
pub(super) struct Tls(Option<Arc<ClientConfig>>);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Tls").field(&self.0.is_some()).finish()
    }
}

/// Where one endpoint is and how to reach it.
#[derive(Debug, Clone)]
enum Target {
    /// `http://`: plaintext gRPC.
    Plain(String),
    /// `https://`: TLS, with the server named by the endpoint's host.
    Secure(TalosEndpoint, Arc<ClientConfig>),
}

/// A connected member that answered `Status`.
pub(super) struct Member {
    pub(super) endpoint: String,
    pub(super) client: Client,
    pub(super) version: String,
    pub(super) member_id: u64,
    pub(super) cluster_id: u64,
    pub(super) db_size: i64,
    pub(super) db_size_in_use: i64,
    pub(super) raft_term: u64,
    pub(super) raft_index: u64,
}

impl EtcdSource {
    /// Reads the configured TLS files into client settings.
    pub(super) fn tls(&self) -> Result<Tls, EtcdError> {
        match (&self.cert, &self.key) {
            (Some(_), None) => {
                return Err(EtcdError::HalfIdentity {
                    set: "cert",
                    missing: "key",
                });
            }
            (None, Some(_)) => {
                return Err(EtcdError::HalfIdentity {
                    set: "key",
                    missing: "cert",
                });
            }
            _ => {}
        }
        // Without a CA no https:// endpoint can be used; `target` says so.
        let Some(ca_path) = &self.ca else {
            return Ok(Tls(None));
        };
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(read_certificates("ca", ca_path)?);
        if added == 0 {
            return Err(EtcdError::CredentialFile {
                what: "ca",
                path: ca_path.clone(),
                problem: CredentialProblem::NoTrustAnchor,
            });
        }
        let builder = ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| EtcdError::CredentialFile {
            what: "ca",
            path: ca_path.clone(),
            problem: CredentialProblem::Tls(e),
        })?
        .with_root_certificates(roots);
        let mut config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(read_certificates("cert", cert)?, read_key(key)?)
                .map_err(|e| EtcdError::CredentialFile {
                    what: "key",
                    path: key.clone(),
                    problem: CredentialProblem::KeyMismatch(e),
                })?,
            _ => builder.with_no_client_auth(),
        };
        // gRPC servers require HTTP/2 by ALPN.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Tls(Some(Arc::new(config))))
    }

    /// Connects to the endpoints in order and returns the first member that
    /// answers `Status` with a leader.
    pub(super) async fn first_healthy_member(&self, tls: &Tls) -> Result<Member, EtcdError> {
        if self.endpoints.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        let mut attempts = Vec::new();
        for url in &self.endpoints {
            let target = target(url, tls)?;
            match self.try_member(url, target).await {
                Ok(member) => return Ok(member),
                Err((failure, message)) => {
                    tracing::warn!("etcd endpoint {url} not used: {message}");
                    attempts.push(EndpointAttempt {
                        endpoint: url.clone(),
                        failure,
                        message,
                    });
                }
            }
        }
        Err(EtcdError::NoHealthyMember { attempts })
    }

    /// Opens a gRPC channel to one endpoint. Over TLS the handshake is
    /// done, and the server's first bytes read, before the channel is
    /// handed on, so that a refused client certificate shows as that
    /// (TLS 1.3 reports it only after the handshake).
    async fn channel(&self, target: Target) -> Result<Channel, (AttemptFailure, String)> {
        let result = match target {
            Target::Plain(url) => {
                Endpoint::from_shared(url)
                    .map_err(|e| (AttemptFailure::Unreachable, chain(&e)))?
                    .connect_timeout(self.timeout)
                    .timeout(self.timeout)
                    .connect()
                    .await
            }
            Target::Secure(endpoint, config) => {
                let timeout = self.timeout;
                let remote = endpoint.clone();
                let connector = tower::service_fn(move |_: Uri| {
                    let (remote, config) = (remote.clone(), config.clone());
                    async move {
                        tokio::time::timeout(timeout, mtls::connect(remote, config))
                            .await
                            .map_err(|_| {
                                std::io::Error::new(
                                    std::io::ErrorKind::TimedOut,
                                    "no TLS connection within the timeout",
                                )
                            })?
                    }
                });
                Endpoint::from_shared(format!("http://{endpoint}"))
                    .map_err(|e| (AttemptFailure::Unreachable, chain(&e)))?
                    .timeout(self.timeout)
                    .connect_with_connector(connector)
                    .await
            }
        };
        result.map_err(|e| transport_failure(&e))
    }

    /// Connects to one member and asks for its status.
    async fn try_member(
        &self,
        url: &str,
        target: Target,
    ) -> Result<Member, (AttemptFailure, String)> {
        let channel = self.channel(target).await?;
        // `hasleader`: a member cut off from its cluster refuses, so a
        // stale member is never snapshotted while a healthy one is listed.
        let options = ConnectOptions::new().with_require_leader(true);
        let mut client = Client::from_channel(etcd_client::Channel::Tonic(channel), Some(options))
            .await
            .map_err(|e| request_failure(&e))?;
        let status = client.status().await.map_err(|e| request_failure(&e))?;
        if status.is_learner() {
            return Err((
                AttemptFailure::Unhealthy,
                "the member is a learner (not yet a voting member)".into(),
            ));
        }
        if !status.errors().is_empty() {
            tracing::warn!(
                "etcd member {url} reports errors: {}",
                status.errors().join("; ")
            );
        }
        let header = status.header();
        Ok(Member {
            endpoint: url.to_owned(),
            version: status.version().to_owned(),
            member_id: header.map_or(0, |h| h.member_id()),
            cluster_id: header.map_or(0, |h| h.cluster_id()),
            db_size: status.db_size(),
            db_size_in_use: status.raft_used_db_size(),
            raft_term: status.raft_term(),
            raft_index: status.raft_index(),
            client,
        })
    }
}

/// Counts the keys of the whole keyspace and returns the count and the
/// revision it was taken at.
pub(super) async fn count_keys(member: &mut Member) -> Result<(i64, i64), EtcdError> {
    count_keys_with(&mut member.client)
        .await
        .map_err(|message| EtcdError::Request {
            endpoint: member.endpoint.clone(),
            what: "counting keys (Range, count only)",
            message,
        })
}

pub(super) async fn count_keys_with(client: &mut Client) -> Result<(i64, i64), String> {
    let options = GetOptions::new().with_all_keys().with_count_only();
    let response = client
        .get(Vec::<u8>::new(), Some(options))
        .await
        .map_err(|e| describe(&e))?;
    let revision = response.header().map_or(0, |h| h.revision());
    Ok((response.count(), revision))
}

/// Reads a PEM file, checking that it holds a block of `label`.
fn read_pem(what: &'static str, path: &Path, label: &'static str) -> Result<Vec<u8>, EtcdError> {
    let fail = |problem| EtcdError::CredentialFile {
        what,
        path: path.to_owned(),
        problem,
    };
    let bytes = std::fs::read(path).map_err(|e| fail(CredentialProblem::Read(e)))?;
    let text = String::from_utf8_lossy(&bytes);
    let has_block = text
        .lines()
        .any(|line| line.starts_with("-----BEGIN ") && line.contains(label));
    if !has_block {
        return Err(fail(CredentialProblem::NoPemBlock { label }));
    }
    Ok(bytes)
}

/// An etcd client error with all its causes (its own `source()` is empty).
pub(super) fn describe(error: &etcd_client::Error) -> String {
    match error {
        etcd_client::Error::GRpcStatus(status) => {
            let head = match status.code() {
                tonic::Code::Unknown => status.message().to_owned(),
                code => format!("{}: {}", code.description(), status.message()),
            };
            join_causes(vec![head], std::error::Error::source(status))
        }
        etcd_client::Error::TransportError(e) => chain(e),
        other => other.to_string(),
    }
}

/// An error and its causes, `: `-joined, repeats left out.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    join_causes(vec![error.to_string()], error.source())
}

fn join_causes(
    mut parts: Vec<String>,
    mut next: Option<&(dyn std::error::Error + 'static)>,
) -> String {
    while let Some(cause) = next {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = cause.source();
    }
    parts.retain(|p| !p.is_empty());
    parts.dedup();
    parts.join(": ")
}

/// Where and how to reach `url`.
///
/// Fails when it is not an `http://` or `https://` URL with a host, or is
/// `https://` without a `ca`.
fn target(url: &str, tls: &Tls) -> Result<Target, EtcdError> {
    let bad = |problem| EtcdError::BadEndpoint {
        endpoint: url.to_owned(),
        problem,
    };
    let uri: Uri = url.parse().map_err(|e| bad(EndpointProblem::NotAUrl(e)))?;
    let host = uri.host().ok_or_else(|| bad(EndpointProblem::NoHost))?;
    match uri.scheme_str() {
        Some("http") => Ok(Target::Plain(url.to_owned())),
        Some("https") => {
            let config = tls.0.clone().ok_or_else(|| EtcdError::MissingCa {
                endpoint: url.to_owned(),
            })?;
            let port = uri.port_u16().unwrap_or(2379);
            let endpoint = TalosEndpoint::parse(&format!("{host}:{port}"))
                .map_err(|e| bad(EndpointProblem::Address(e)))?;
            Ok(Target::Secure(endpoint, config))
        }
        Some(other) => Err(bad(EndpointProblem::Scheme(other.to_owned()))),
        None => Err(bad(EndpointProblem::NoScheme)),
    }
}

/// A failed connection, sorted by its fix.
fn transport_failure(error: &(dyn std::error::Error + 'static)) -> (AttemptFailure, String) {
    match mtls::describe_failure(error) {
        Failure::ClientCertificateRejected(detail) => (AttemptFailure::ClientCertificate, detail),
        Failure::ServerNotTrusted(detail) => (AttemptFailure::ServerCertificate, detail),
        Failure::Network(detail) => (classify_network(&detail), detail),
    }
}

/// A failed request: a status with a source failed on our side (the
/// connection); one without is the member's answer (no leader, …).
fn request_failure(error: &etcd_client::Error) -> (AttemptFailure, String) {
    match error {
        etcd_client::Error::GRpcStatus(status) => match std::error::Error::source(status) {
            Some(source) => transport_failure(source),
            None => (AttemptFailure::Unhealthy, describe(error)),
        },
        etcd_client::Error::TransportError(e) => transport_failure(e),
        other => {
            let message = describe(other);
            (classify_network(&message), message)
        }
    }
}

/// Sorts a network error (one without a TLS verdict) by its fix.
fn classify_network(message: &str) -> AttemptFailure {
    let lower = message.to_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| lower.contains(w));
    if has(&["no leader", "learner"]) {
        AttemptFailure::Unhealthy
    } else if has(&["corrupt message", "tls", "handshake", "alert"]) {
        AttemptFailure::Tls
    } else {
        AttemptFailure::Unreachable
    }
}

/// The certificates of a PEM file.
fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, EtcdError> {
    let bytes = read_pem(what, path, "CERTIFICATE")?;
    CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| EtcdError::CredentialFile {
            what,
            path: path.to_owned(),
            problem: CredentialProblem::Certificate(e),
        })
}

/// The private key of a PEM file (PKCS #8, PKCS #1 or SEC1).
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, EtcdError> {
    let bytes = read_pem("key", path, "PRIVATE KEY")?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| EtcdError::CredentialFile {
        what: "key",
        path: path.to_owned(),
        problem: CredentialProblem::Key(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<EtcdSource, toml::de::Error> {
        toml::from_str(toml_text)
    }

    #[test]
    fn half_identities_and_missing_ca_are_refused_with_the_fix() {
        let source = parse(
            r#"endpoints = ["https://a:2379"]
               cert = "/nonexistent/c.crt""#,
        )
        .expect("parses");
        let error = source.tls().expect_err("cert without key");
        assert!(error.to_string().contains("not `key`"), "{error}");

        let source = parse(r#"endpoints = ["https://a:2379"]"#).expect("parses");
        let tls = source.tls().expect("no files");
        let error = target("https://a:2379", &tls).expect_err("https without ca");
        assert!(matches!(error, EtcdError::MissingCa { .. }), "{error}");
        for bad in ["10.0.0.1:2379", "ftp://a:2379", "https://"] {
            let error = target(bad, &tls).expect_err(bad);
            assert!(error.to_string().contains("https://HOST:PORT"), "{error}");
        }
        assert!(matches!(
            target("http://10.0.0.1:2379", &tls),
            Ok(Target::Plain(_))
        ));
    }

    #[test]
    fn unreadable_or_wrong_pem_files_are_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, "not a certificate").expect("write");
        let source = EtcdSource {
            endpoints: vec!["https://a:2379".into()],
            ca: Some(ca.clone()),
            cert: None,
            key: None,
            timeout: std::time::Duration::from_secs(30),
        };
        let error = source.tls().expect_err("not PEM");
        let message = error.to_string();
        assert!(message.contains("ca.crt"), "{message}");
        assert!(message.contains("no PEM CERTIFICATE block"), "{message}");
        std::fs::remove_file(&ca).expect("remove");
        let missing = source.tls().expect_err("missing file");
        assert!(missing.to_string().contains("fix `ca`"), "{missing}");
        assert!(
            matches!(
                &missing,
                EtcdError::CredentialFile { problem: CredentialProblem::Read(e), .. }
                    if e.kind() == std::io::ErrorKind::NotFound
            ),
            "{missing:?}"
        );
    }

    #[test]
    fn failures_are_sorted_by_their_fix() {
        let failure = |text: &str| transport_failure(&std::io::Error::other(text.to_owned())).0;
        assert_eq!(
            failure("tcp connect error: Connection refused (os error 111)"),
            AttemptFailure::Unreachable
        );
        assert_eq!(
            failure("invalid peer certificate: UnknownIssuer"),
            AttemptFailure::ServerCertificate
        );
        assert_eq!(
            failure("connection error: received fatal alert: BadCertificate"),
            AttemptFailure::ClientCertificate
        );
        assert_eq!(
            failure("received fatal alert: CertificateRequired"),
            AttemptFailure::ClientCertificate
        );
        assert_eq!(
            failure("received corrupt message of type InvalidContentType"),
            AttemptFailure::Tls
        );
        assert_eq!(
            classify_network("etcdserver: no leader"),
            AttemptFailure::Unhealthy
        );
    }
}
