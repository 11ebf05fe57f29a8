//! talosconfig files: where they are, their contexts, and the credentials
//! in them.
//!
//! ```yaml
//! context: homelab
//! contexts:
//!   homelab:
//!     endpoints: [10.0.0.10]          # apid addresses; port 50000 unless given
//!     nodes: [10.0.0.10, 10.0.0.11]   # default targets (the `node` metadata)
//!     ca: LS0tLS1CRUdJTi…             # base64 of the PEM of the Talos OS CA
//!     crt: LS0tLS1CRUdJTi…            # base64 PEM client certificate
//!     key: LS0tLS1CRUdJTi…            # base64 PEM key (Talos writes Ed25519
//!                                     # keys as `ED25519 PRIVATE KEY`)
//! ```
//!
//! Without an explicit path the file is looked for as talosctl does:
//! `$TALOSCONFIG`, then `$TALOS_HOME/config` or `~/.talos/config`, then
//! `/var/run/secrets/talos.dev/config` (where Talos' Kubernetes access
//! feature mounts it in a pod). The in-cluster file's certificate is renewed
//! every few hours, so callers load the file for every run and keep nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};
use serde::Deserialize;
use zeroize::{Zeroize, Zeroizing};

use super::{APID_PORT, TalosError};

/// The environment variable naming a talosconfig.
pub const ENV_TALOSCONFIG: &str = "TALOSCONFIG";
/// The environment variable naming the Talos home folder (default `~/.talos`).
pub const ENV_TALOS_HOME: &str = "TALOS_HOME";
/// Where Talos' Kubernetes API access feature mounts the talosconfig of a
/// Talos `ServiceAccount` in a pod.
pub const IN_CLUSTER_PATH: &str = "/var/run/secrets/talos.dev/config";

/// A loaded talosconfig.
#[derive(Debug, Clone)]
pub struct TalosConfig {
    path: PathBuf,
    current: Option<String>,
    contexts: BTreeMap<String, Context>,
}

/// The file as written.
#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    contexts: BTreeMap<String, RawContext>,
}

/// One context as written (unknown fields such as `auth`, `cluster` are
/// ignored).
#[derive(Deserialize)]
struct RawContext {
    #[serde(default)]
    endpoints: Vec<String>,
    /// Deprecated single endpoint, still read by talosctl.
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    nodes: Vec<String>,
    #[serde(default)]
    ca: String,
    #[serde(default)]
    crt: String,
    #[serde(default)]
    key: String,
}

impl TalosConfig {
    /// The places a talosconfig is looked for when none is given, in order.
    pub fn search_paths() -> Vec<PathBuf> {
        let mut paths = Vec::new();
        if let Some(path) = std::env::var_os(ENV_TALOSCONFIG).filter(|p| !p.is_empty()) {
            paths.push(PathBuf::from(path));
        }
        let home_dir = std::env::var_os(ENV_TALOS_HOME)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".talos")));
        if let Some(dir) = home_dir {
            paths.push(dir.join("config"));
        }
        paths.push(PathBuf::from(IN_CLUSTER_PATH));
        paths
    }

    /// Loads the talosconfig at `path`, or the first that exists of
    /// [`search_paths`](Self::search_paths).
    ///
    /// Fails when no file is found, it cannot be read or it is not a
    /// talosconfig.
    pub fn load(path: Option<&Path>) -> Result<Self, TalosError> {
        let path = match path {
            Some(path) => path.to_owned(),
            None => {
                let candidates = Self::search_paths();
                candidates
                    .iter()
                    .find(|p| p.is_file())
                    .cloned()
                    .ok_or_else(|| TalosError::ConfigNotFound {
                        searched: candidates
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })?
            }
        };
        let text = std::fs::read_to_string(&path).map_err(|cause| TalosError::ConfigRead {
            path: path.clone(),
            cause,
        })?;
        Self::parse(&path, &text)
    }

    /// Reads a talosconfig from `text`; `path` names it in messages.
    ///
    /// Fails when it is not YAML of a talosconfig's shape.
    pub fn parse(path: &Path, text: &str) -> Result<Self, TalosError> {
        let raw: RawConfig =
            serde_yaml_ng::from_str(text).map_err(|e| TalosError::ConfigInvalid {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        let contexts = raw
            .contexts
            .into_iter()
            .map(|(name, raw)| {
                let mut endpoints = raw.endpoints;
                endpoints.extend(raw.target.filter(|t| !t.is_empty()));
                let context = Context {
                    name: name.clone(),
                    path: path.to_owned(),
                    endpoints,
                    nodes: raw.nodes,
                    ca: raw.ca,
                    crt: raw.crt,
                    key: Zeroizing::new(raw.key),
                };
                (name, context)
            })
            .collect();
        Ok(Self {
            path: path.to_owned(),
            current: raw.context.filter(|c| !c.is_empty()),
            contexts,
        })
    }

    /// The file this came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The names of the contexts.
    pub fn context_names(&self) -> impl Iterator<Item = &str> {
        self.contexts.keys().map(String::as_str)
    }

    /// The context `name`, else the file's current context, else its only
    /// context.
    ///
    /// Fails when the named context is missing, or none is named and the
    /// file has no current context and not exactly one.
    pub fn context(&self, name: Option<&str>) -> Result<&Context, TalosError> {
        let known = || {
            let names: Vec<&str> = self.context_names().collect();
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        };
        let chosen = match (name, &self.current) {
            (Some(name), _) => name,
            (None, Some(current)) => current.as_str(),
            (None, None) if self.contexts.len() == 1 => {
                return self
                    .contexts
                    .values()
                    .next()
                    .ok_or_else(|| TalosError::NoContext {
                        path: self.path.clone(),
                        known: known(),
                    });
            }
            (None, None) => {
                return Err(TalosError::NoContext {
                    path: self.path.clone(),
                    known: known(),
                });
            }
        };
        self.contexts
            .get(chosen)
            .ok_or_else(|| TalosError::UnknownContext {
                path: self.path.clone(),
                name: chosen.to_owned(),
                known: known(),
            })
    }
}

/// One context of a talosconfig.
#[derive(Clone)]
pub struct Context {
    /// Its name.
    pub name: String,
    /// The apid addresses to connect to, as written.
    pub endpoints: Vec<String>,
    /// The nodes calls go to by default (through an endpoint).
    pub nodes: Vec<String>,
    path: PathBuf,
    ca: String,
    crt: String,
    key: Zeroizing<String>,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("name", &self.name)
            .field("endpoints", &self.endpoints)
            .field("nodes", &self.nodes)
            .field("path", &self.path)
            .field("key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl Context {
    fn problem(&self, problem: impl Into<String>) -> TalosError {
        TalosError::BadContext {
            path: self.path.clone(),
            context: self.name.clone(),
            problem: problem.into(),
        }
    }

    /// The endpoints, parsed (port 50000 where none is given).
    ///
    /// Fails when there are none or one is not an address.
    pub fn endpoints(&self) -> Result<Vec<TalosEndpoint>, TalosError> {
        if self.endpoints.is_empty() {
            return Err(self.problem(
                "it has no endpoints; add `endpoints: [<control-plane IP>]` \
                 (talosctl config endpoint <IP>)",
            ));
        }
        self.endpoints
            .iter()
            .map(|e| TalosEndpoint::parse(e))
            .collect()
    }

    /// The CA, client certificate and key, decoded.
    ///
    /// Fails when one is missing, not base64 or not PEM of the right kind.
    pub fn credentials(&self) -> Result<Credentials, TalosError> {
        let decode = |field: &str, value: &str| -> Result<Zeroizing<Vec<u8>>, TalosError> {
            if value.trim().is_empty() {
                return Err(self.problem(format!(
                    "`{field}` is missing; a talosconfig for the Talos API needs `ca`, `crt` \
                     and `key` (regenerate it with `talosctl config new` or take it from your \
                     Terraform state)"
                )));
            }
            let compact: String = value.split_whitespace().collect();
            base64::engine::general_purpose::STANDARD
                .decode(compact.as_bytes())
                .map(Zeroizing::new)
                .map_err(|e| self.problem(format!("`{field}` is not base64 ({e})")))
        };
        let ca = decode("ca", &self.ca)?;
        let crt = decode("crt", &self.crt)?;
        let key = decode("key", &self.key)?;
        Credentials::from_pem(&ca, &crt, &key).map_err(|problem| self.problem(problem))
    }
}

/// Decoded credentials of a context: the CA that signs the nodes' apid
/// certificates, and the client certificate and key.
pub struct Credentials {
    /// The trusted CA certificates.
    pub ca: Vec<CertificateDer<'static>>,
    /// The client certificate (and any intermediates).
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("ca", &self.ca.len())
            .field("chain", &self.chain.len())
            .field("key", &"[redacted]")
            .finish()
    }
}

impl Clone for Credentials {
    fn clone(&self) -> Self {
        Self {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Drop for Credentials {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl Credentials {
    /// Credentials from PEM texts of the CA, the client certificate and its
    /// key (`PRIVATE KEY`, Talos' `ED25519 PRIVATE KEY`, `EC PRIVATE KEY`
    /// or `RSA PRIVATE KEY`).
    ///
    /// Fails, with a sentence naming the field, when one holds no usable
    /// PEM block.
    pub fn from_pem(ca: &[u8], crt: &[u8], key: &[u8]) -> Result<Self, String> {
        let certificates =
            |field: &str, text: &[u8]| -> Result<Vec<CertificateDer<'static>>, String> {
                let certs: Vec<_> = pem_blocks(text)
                    .map_err(|e| format!("`{field}` is not PEM ({e})"))?
                    .into_iter()
                    .filter(|block| block.label == "CERTIFICATE")
                    .map(|block| CertificateDer::from(block.der.to_vec()))
                    .collect();
                if certs.is_empty() {
                    return Err(format!("`{field}` holds no PEM CERTIFICATE"));
                }
                Ok(certs)
            };
        let ca = certificates("ca", ca)?;
        let chain = certificates("crt", crt)?;
        let blocks = pem_blocks(key).map_err(|e| format!("`key` is not PEM ({e})"))?;
        let key = blocks
            .into_iter()
            .find_map(|block| {
                let der = block.der.to_vec();
                match block.label.as_str() {
                    "PRIVATE KEY" | "ED25519 PRIVATE KEY" => {
                        Some(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)))
                    }
                    "EC PRIVATE KEY" => Some(PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der))),
                    "RSA PRIVATE KEY" => Some(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der))),
                    _ => None,
                }
            })
            .ok_or_else(|| "`key` holds no PEM private key".to_owned())?;
        Ok(Self { ca, chain, key })
    }

    /// The client key.
    pub(crate) fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }
}

/// One PEM block.
struct PemBlock {
    label: String,
    der: Zeroizing<Vec<u8>>,
}

/// The PEM blocks of `text`, whatever their labels (Talos uses labels
/// other PEM readers skip, such as `ED25519 PRIVATE KEY`).
fn pem_blocks(text: &[u8]) -> Result<Vec<PemBlock>, String> {
    let text = std::str::from_utf8(text).map_err(|_| "not text".to_owned())?;
    let mut blocks = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in text.lines().map(str::trim) {
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
        {
            open = Some((label.to_owned(), String::new()));
        } else if let Some(label) = line
            .strip_prefix("-----END ")
            .and_then(|rest| rest.strip_suffix("-----"))
        {
            let Some((begun, body)) = open.take() else {
                return Err(format!("END {label} without BEGIN"));
            };
            if begun != label {
                return Err(format!("BEGIN {begun} ends with END {label}"));
            }
            let body = Zeroizing::new(body);
            let der = base64::engine::general_purpose::STANDARD
                .decode(body.as_bytes())
                .map_err(|e| format!("the {label} block is not base64 ({e})"))?;
            blocks.push(PemBlock {
                label: label.to_owned(),
                der: Zeroizing::new(der),
            });
        } else if let Some((_, body)) = &mut open {
            if !line.contains(':') {
                body.push_str(line);
            }
        }
    }
    if let Some((label, _)) = open {
        return Err(format!("the {label} block has no END line"));
    }
    Ok(blocks)
}

/// An apid address: a host (IP or name) and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TalosEndpoint {
    host: String,
    port: u16,
}

impl TalosEndpoint {
    /// Parses `10.0.0.10`, `10.0.0.10:50000`, `talos.default`,
    /// `[fd00::1]:50000`, `fd00::1` or `https://10.0.0.10:50000`; the port
    /// defaults to 50000.
    ///
    /// Fails when the text is empty or the port is not a number.
    pub fn parse(text: &str) -> Result<Self, TalosError> {
        let bad = |problem: &str| TalosError::BadEndpoint {
            endpoint: text.to_owned(),
            problem: problem.to_owned(),
        };
        let mut rest = text.trim();
        if let Some((_, after)) = rest.split_once("://") {
            rest = after;
        }
        if let Some((authority, _)) = rest.split_once('/') {
            rest = authority;
        }
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 address in [ ] lacks its ]"))?;
            let port = match after.strip_prefix(':') {
                Some(port) => Some(port),
                None if after.is_empty() => None,
                None => return Err(bad("unexpected text after ]")),
            };
            (host, port)
        } else if rest.matches(':').count() == 1 {
            let (host, port) = rest.split_once(':').unwrap_or((rest, ""));
            (host, Some(port))
        } else {
            // No colon, or a bare IPv6 address.
            (rest, None)
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            Some(port) => port
                .parse()
                .map_err(|_| bad("the port is not a number from 1 to 65535"))?,
            None => APID_PORT,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }

    /// The host: an IP address or a name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for TalosEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => write!(f, "[{}]:{}", self.host, self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT_PEM: &str = "-----BEGIN CERTIFICATE-----\nAAECAw==\n-----END CERTIFICATE-----\n";
    const KEY_PEM: &str =
        "-----BEGIN ED25519 PRIVATE KEY-----\nBAUG\n-----END ED25519 PRIVATE KEY-----\n";

    fn b64(text: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    fn config_text() -> String {
        format!(
            "context: b\ncontexts:\n  a:\n    endpoints: [10.0.0.1]\n  b:\n    endpoints:\n      - 10.0.0.10\n      - \"[fd00::1]:6000\"\n    nodes: [10.0.0.11]\n    ca: {ca}\n    crt: {ca}\n    key: {key}\n    cluster: homelab\n",
            ca = b64(CERT_PEM),
            key = b64(KEY_PEM),
        )
    }

    #[test]
    fn the_current_context_and_its_credentials() {
        let config =
            TalosConfig::parse(Path::new("talosconfig"), &config_text()).expect("valid config");
        let context = config.context(None).expect("current context");
        assert_eq!(context.name, "b");
        assert_eq!(context.nodes, ["10.0.0.11"]);
        let endpoints = context.endpoints().expect("endpoints");
        assert_eq!(endpoints[0].to_string(), "10.0.0.10:50000");
        assert_eq!(endpoints[1].to_string(), "[fd00::1]:6000");
        let credentials = context.credentials().expect("credentials");
        assert_eq!(credentials.ca[0].as_ref(), &[0, 1, 2, 3]);
        assert!(
            matches!(credentials.key(), PrivateKeyDer::Pkcs8(k) if k.secret_pkcs8_der() == [4, 5, 6])
        );
        assert!(!format!("{credentials:?}{context:?}").contains("BAUG"));
    }

    #[test]
    fn missing_and_unknown_contexts_name_the_known_ones() {
        let config = TalosConfig::parse(Path::new("tc"), &config_text()).expect("valid config");
        let error = config.context(Some("c")).expect_err("no context c");
        assert!(error.to_string().contains("a, b"), "{error}");
        let missing_key = config
            .context(Some("a"))
            .expect("context a")
            .credentials()
            .expect_err("a has no credentials");
        assert!(
            missing_key.to_string().contains("`ca` is missing"),
            "{missing_key}"
        );

        let two = TalosConfig::parse(
            Path::new("tc"),
            "contexts:\n  a: {endpoints: [x]}\n  b: {endpoints: [y]}\n",
        )
        .expect("valid config");
        assert!(matches!(
            two.context(None),
            Err(TalosError::NoContext { .. })
        ));
        let one = TalosConfig::parse(Path::new("tc"), "contexts:\n  only: {endpoints: [x]}\n")
            .expect("valid config");
        assert_eq!(one.context(None).expect("the only context").name, "only");
    }

    #[test]
    fn bad_files_are_named() {
        let error = TalosConfig::parse(Path::new("/x/tc"), "contexts: [1, 2]").expect_err("bad");
        assert!(error.to_string().contains("/x/tc"), "{error}");
        let error = TalosConfig::load(Some(Path::new("/nonexistent/talosconfig")))
            .expect_err("missing file");
        assert!(matches!(error, TalosError::ConfigRead { .. }), "{error}");
    }

    #[test]
    fn endpoints_parse_like_talosctl() {
        let cases = [
            ("10.0.0.1", "10.0.0.1", 50000),
            ("10.0.0.1:6443", "10.0.0.1", 6443),
            ("talos.default", "talos.default", 50000),
            ("https://cp.example:50001/", "cp.example", 50001),
            ("fd00::1", "fd00::1", 50000),
            ("[fd00::1]", "fd00::1", 50000),
            ("[fd00::1]:7", "fd00::1", 7),
        ];
        for (text, host, port) in cases {
            let endpoint = TalosEndpoint::parse(text).expect(text);
            assert_eq!((endpoint.host(), endpoint.port()), (host, port), "{text}");
        }
        for bad in ["", "host:port", "[fd00::1", "[::1]x", "h:99999"] {
            assert!(TalosEndpoint::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn pem_blocks_keep_any_label_and_reject_broken_ones() {
        let blocks = pem_blocks(format!("junk\n{CERT_PEM}{KEY_PEM}").as_bytes()).expect("pem");
        let labels: Vec<_> = blocks.iter().map(|b| b.label.as_str()).collect();
        assert_eq!(labels, ["CERTIFICATE", "ED25519 PRIVATE KEY"]);
        assert!(pem_blocks(b"-----BEGIN X-----\nAAAA\n").is_err());
        assert!(pem_blocks(b"-----BEGIN X-----\n!!\n-----END X-----\n").is_err());
    }
}
