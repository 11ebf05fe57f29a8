//! The TLS side of a Talos API connection.
//!
//! apid speaks gRPC over TLS. With a talosconfig it is mutual TLS: the
//! node's certificate must chain to the context's CA and name the address
//! connected to (Talos puts the node's IPs, its host names and `certSANs`
//! in it, and `talos`/`talos.default` when Kubernetes access is on), and the
//! client presents the context's certificate. A node in maintenance mode
//! (before it has a config) has a self-signed certificate and accepts
//! clients without one: there the server is not verified, as
//! `talosctl --insecure` does, unless a SHA-256 fingerprint of its
//! certificate is pinned.
//!
//! The connection is made here (TCP, then rustls with ALPN `h2`, which gRPC
//! servers require) rather than by tonic, so that both modes share one path
//! and errors can be told apart: `describe_failure` turns a transport
//! error into an unreachable endpoint, an untrusted server or a refused
//! client certificate.

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::TalosError;
use super::config::{Credentials, TalosEndpoint};

/// How a connection authenticates.
#[derive(Debug, Clone)]
pub enum Security {
    /// Mutual TLS with a talosconfig context's credentials: the server is
    /// verified against the context's CA, the client presents its
    /// certificate.
    Mutual(Arc<Credentials>),
    /// Maintenance mode (`talosctl --insecure`): TLS without a client
    /// certificate and without verifying the server, except against
    /// `pin_sha256`, the SHA-256 of the server's certificate (DER), when
    /// given.
    Insecure {
        /// The expected SHA-256 of the server certificate, if pinned.
        pin_sha256: Option<[u8; 32]>,
    },
}

/// The crypto provider (aws-lc-rs, as the rest of lifeboat's TLS).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The rustls client settings for `security`.
///
/// Fails when the CA holds no usable certificate or the key does not suit
/// the certificate.
pub fn client_config(security: &Security) -> Result<ClientConfig, TalosError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TalosError::Tls {
            problem: e.to_string(),
        })?;
    let mut config = match security {
        Security::Mutual(credentials) => {
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(credentials.ca.iter().cloned());
            if added == 0 {
                return Err(TalosError::Tls {
                    problem: "the talosconfig's `ca` holds no certificate that can be used as a \
                              trust anchor; take `ca` from this cluster's talosconfig"
                        .into(),
                });
            }
            builder
                .with_root_certificates(roots)
                .with_client_auth_cert(credentials.chain.clone(), credentials.key().clone_key())
                .map_err(|e| TalosError::Tls {
                    problem: format!(
                        "the talosconfig's `crt` and `key` cannot be used together ({e}); take \
                         both from the same talosconfig"
                    ),
                })?
        }
        Security::Insecure { pin_sha256 } => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(UnverifiedServer {
                pin_sha256: *pin_sha256,
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Opens a TCP connection to `endpoint`, does the TLS handshake (naming the
/// server by the endpoint's host, an IP address or a DNS name) and waits
/// for the server's first bytes.
///
/// In TLS 1.3 the client's handshake ends before the server has judged the
/// client certificate; a refusal arrives as an alert afterwards, and the
/// HTTP/2 layer may report it only as a closed connection. An HTTP/2 server
/// speaks first (its SETTINGS frame), so reading its first bytes here turns
/// a refused certificate into an error of the connection, with the alert.
pub(crate) async fn connect(
    endpoint: TalosEndpoint,
    config: Arc<ClientConfig>,
) -> std::io::Result<TokioIo<Primed<TlsStream<TcpStream>>>> {
    let server_name = ServerName::try_from(endpoint.host().to_owned())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let tcp = TcpStream::connect((endpoint.host(), endpoint.port())).await?;
    tcp.set_nodelay(true)?;
    let mut tls = TlsConnector::from(config).connect(server_name, tcp).await?;
    let mut head = vec![0; 16 * 1024];
    let n = tls.read(&mut head).await?;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the server closed the connection right after the TLS handshake",
        ));
    }
    head.truncate(n);
    Ok(TokioIo::new(Primed {
        head,
        read: 0,
        inner: tls,
    }))
}

/// A stream whose first bytes were read already: they are read again
/// first.
#[derive(Debug)]
pub(crate) struct Primed<S> {
    head: Vec<u8>,
    read: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Primed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.read < this.head.len() {
            let n = buf.remaining().min(this.head.len() - this.read);
            buf.put_slice(&this.head[this.read..this.read + n]);
            this.read += n;
            if this.read == this.head.len() {
                this.head = Vec::new();
                this.read = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Primed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accepts any server certificate (maintenance mode), or only the pinned
/// one; handshake signatures are still checked, so a pin proves the server
/// holds the certificate's key.
#[derive(Debug)]
struct UnverifiedServer {
    pin_sha256: Option<[u8; 32]>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for UnverifiedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.pin_sha256 {
            Some(pin) if Sha256::digest(end_entity.as_ref()).as_slice() != pin => {
                Err(rustls::Error::General(format!(
                    "the server certificate's SHA-256 is {}, not the pinned {}",
                    hex::encode(Sha256::digest(end_entity.as_ref())),
                    hex::encode(pin)
                )))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// What a transport failure means for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The server refused our certificate (a TLS alert about certificates).
    ClientCertificateRejected(String),
    /// Our side refused the server's certificate.
    ServerNotTrusted(String),
    /// No TLS verdict in the chain: the network (refused, timed out, reset).
    Network(String),
}

/// Classifies `error` by the rustls error somewhere in its chain (I/O
/// errors hide theirs behind `get_ref`), and flattens the chain into one
/// readable line.
pub(crate) fn describe_failure(error: &(dyn StdError + 'static)) -> Failure {
    let mut parts: Vec<String> = Vec::new();
    let mut verdict = None;
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            verdict = verdict.or_else(|| classify_rustls(tls));
        }
        current = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
    }
    let detail = parts.join(": ");
    // Some layers (h2) keep only the text of the I/O error that held the
    // rustls error: read rustls' wording then.
    let verdict = verdict.or_else(|| classify_text(&detail));
    match verdict {
        Some(Verdict::Rejected) => Failure::ClientCertificateRejected(detail),
        Some(Verdict::Untrusted) => Failure::ServerNotTrusted(detail),
        None => Failure::Network(detail),
    }
}

enum Verdict {
    Rejected,
    Untrusted,
}

fn classify_rustls(error: &rustls::Error) -> Option<Verdict> {
    match error {
        rustls::Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::CertificateRequired
            | AlertDescription::DecryptError,
        ) => Some(Verdict::Rejected),
        rustls::Error::InvalidCertificate(_) | rustls::Error::General(_) => {
            Some(Verdict::Untrusted)
        }
        _ => None,
    }
}

/// The verdict from rustls' messages: "received fatal alert: UnknownCA",
/// "invalid peer certificate: UnknownIssuer".
fn classify_text(detail: &str) -> Option<Verdict> {
    const REJECTIONS: [&str; 9] = [
        "BadCertificate",
        "UnsupportedCertificate",
        "CertificateRevoked",
        "CertificateExpired",
        "CertificateUnknown",
        "UnknownCA",
        "AccessDenied",
        "CertificateRequired",
        "DecryptError",
    ];
    if let Some((_, alert)) = detail.split_once("received fatal alert: ") {
        let name: String = alert
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect();
        return REJECTIONS
            .contains(&name.as_str())
            .then_some(Verdict::Rejected);
    }
    detail
        .contains("invalid peer certificate")
        .then_some(Verdict::Untrusted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_reveal_the_tls_alert_inside() {
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(AlertDescription::UnknownCA),
        );
        match describe_failure(&alert) {
            Failure::ClientCertificateRejected(detail) => {
                assert!(detail.contains("UnknownCA"), "{detail}");
            }
            other => panic!("expected a rejected certificate, got {other:?}"),
        }
        let untrusted = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(matches!(
            describe_failure(&untrusted),
            Failure::ServerNotTrusted(_)
        ));
        assert!(matches!(
            describe_failure(&std::io::Error::other(
                "connection error: received fatal alert: CertificateRequired"
            )),
            Failure::ClientCertificateRejected(_)
        ));
        assert!(matches!(
            describe_failure(&std::io::Error::other(
                "received fatal alert: InternalError"
            )),
            Failure::Network(_)
        ));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(matches!(describe_failure(&refused), Failure::Network(_)));
    }

    #[test]
    fn insecure_mode_needs_no_credentials_and_offers_h2() {
        let config = client_config(&Security::Insecure { pin_sha256: None }).expect("config");
        assert_eq!(config.alpn_protocols, [b"h2".to_vec()]);
    }
}
