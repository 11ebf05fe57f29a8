//! A protocol-level stand-in for a Talos node's API (apid), because no
//! Talos node can run here.
//!
//! It is a real gRPC server (tonic) on a loopback port that implements
//! `machine.MachineService` — the same package, service, method and message
//! names and field numbers as Talos' `api/machine/machine.proto`, from
//! lifeboat's own protos — over mutual TLS, as apid does:
//!
//! - [`TalosPki`]: an Ed25519 CA like Talos' OS CA, a server certificate
//!   naming `127.0.0.1` (apid's certificates name the node's IPs), client
//!   certificates whose organization is the Talos role (`os:admin`,
//!   `os:etcd:backup`, …; keys written as Talos writes them, `ED25519
//!   PRIVATE KEY`), and a client certificate from another CA;
//! - [`TalosApiServer`]: requires a client certificate signed by the CA,
//!   checks each call's role as Talos' RBAC does (from the certificate),
//!   refuses `node` metadata naming a node it does not proxy to, and
//!   implements `EtcdSnapshot` (a real etcd snapshot file, streamed from
//!   disk in 32 KiB pieces, with [`SnapshotFault`]s), `EtcdStatus`,
//!   `Version`, `Read`, `EtcdRecover` (keeps the uploaded bytes),
//!   `Bootstrap`, `ApplyConfiguration` and `Kubeconfig` (a gzipped tar of
//!   the kubeconfig the test sets);
//! - [`TalosApiServer::talosconfig`]: a talosconfig for it, as talosctl
//!   writes them;
//! - [`TalosApiServer::start_fresh`]: a node of a VM being rebuilt, as
//!   Talos behaves from first boot: powered off (connections are dropped)
//!   until [`TalosApiServer::power_on`], then in maintenance mode (TLS
//!   without client certificates; only `Version` and `ApplyConfiguration`),
//!   and after a config is applied "rebooted" into mutual TLS, with etcd
//!   `Preparing` (`ServiceList`) until `Bootstrap`;
//! - [`TalosApiServer::refuse_once`]: the next call of a method fails with
//!   `Internal`, to test how callers resume.
//!
//! What it cannot show: the behaviour of a real apid/machined (proxying to
//! other nodes, etcd's own snapshot timing, installing to disk and the real
//! reboot). Those parts are proven only against this stand-in.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result};
use lifeboat::talos::proto::common::Data;
use lifeboat::talos::proto::machine::machine_service_server::{
    MachineService, MachineServiceServer,
};
use lifeboat::talos::proto::machine::{
    ApplyConfiguration, ApplyConfigurationRequest, ApplyConfigurationResponse, Bootstrap,
    BootstrapRequest, BootstrapResponse, EtcdMemberStatus, EtcdRecover, EtcdRecoverResponse,
    EtcdSnapshotRequest, EtcdStatus, EtcdStatusResponse, FeaturesInfo, PlatformInfo, ReadRequest,
    ServiceHealth, ServiceInfo, ServiceList, ServiceListResponse, Version, VersionInfo,
    VersionResponse,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ED25519, SanType,
};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

/// The calls a node in maintenance mode answers.
const MAINTENANCE_CALLS: [&str; 2] = ["Version", "ApplyConfiguration"];

/// The size of the pieces a snapshot is sent in (etcd's).
const PIECE: usize = 32 * 1024;

/// A Talos role, as the organization of a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// `os:admin`: everything.
    Admin,
    /// `os:operator`.
    Operator,
    /// `os:reader`.
    Reader,
    /// `os:etcd:backup`: etcd snapshots (the in-cluster backup role).
    EtcdBackup,
}

impl Role {
    /// The role's name in Talos.
    pub fn name(self) -> &'static str {
        match self {
            Self::Admin => "os:admin",
            Self::Operator => "os:operator",
            Self::Reader => "os:reader",
            Self::EtcdBackup => "os:etcd:backup",
        }
    }

    const ALL: [Self; 4] = [Self::Admin, Self::Operator, Self::Reader, Self::EtcdBackup];
}

/// A client certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// The certificate.
    pub cert_pem: String,
    /// The key, labelled `ED25519 PRIVATE KEY` as Talos writes it.
    pub key_pem: String,
    der: Vec<u8>,
}

/// The certificates of a stand-in node and its clients.
#[derive(Debug, Clone)]
pub struct TalosPki {
    /// The CA (Talos' OS CA): signs the server and the clients.
    pub ca_pem: String,
    /// The server certificate (SAN `127.0.0.1`).
    pub server_cert_pem: String,
    /// Its key.
    pub server_key_pem: String,
    /// The server certificate, DER (what a maintenance-mode pin hashes).
    pub server_cert_der: Vec<u8>,
    /// A client certificate per role.
    pub clients: HashMap<Role, ClientCert>,
    /// A client certificate (role `os:admin`) from another CA.
    pub foreign: ClientCert,
}

impl TalosPki {
    /// Generates Ed25519 certificates, as Talos uses.
    ///
    /// Fails when rcgen fails.
    pub fn generate() -> Result<Self> {
        let ca = new_ca("talos")?;
        let other_ca = new_ca("some other cluster")?;
        let mut server = leaf("apid", None, ExtendedKeyUsagePurpose::ServerAuth)?;
        server.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
        let server_key = KeyPair::generate_for(&PKCS_ED25519)?;
        let server_cert = server.signed_by(&server_key, &ca)?;
        let client =
            |role: Role, issuer: &CertifiedIssuer<'static, KeyPair>| -> Result<ClientCert> {
                let params = leaf("lifeboat", Some(role), ExtendedKeyUsagePurpose::ClientAuth)?;
                let key = KeyPair::generate_for(&PKCS_ED25519)?;
                let cert = params.signed_by(&key, issuer)?;
                Ok(ClientCert {
                    cert_pem: cert.pem(),
                    key_pem: key
                        .serialize_pem()
                        .replace("PRIVATE KEY-----", "ED25519 PRIVATE KEY-----"),
                    der: cert.der().to_vec(),
                })
            };
        let mut clients = HashMap::new();
        for role in Role::ALL {
            clients.insert(role, client(role, &ca)?);
        }
        Ok(Self {
            ca_pem: ca.pem(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            server_cert_der: server_cert.der().to_vec(),
            clients,
            foreign: client(Role::Admin, &other_ca)?,
        })
    }

    fn client(&self, role: Role) -> Result<&ClientCert> {
        self.clients
            .get(&role)
            .with_context(|| format!("no client certificate for {}", role.name()))
    }
}

fn new_ca(organization: &str) -> Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::OrganizationName, organization);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(CertifiedIssuer::self_signed(
        params,
        KeyPair::generate_for(&PKCS_ED25519)?,
    )?)
}

fn leaf(
    name: &str,
    role: Option<Role>,
    usage: ExtendedKeyUsagePurpose,
) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    if let Some(role) = role {
        params
            .distinguished_name
            .push(DnType::OrganizationName, role.name());
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    Ok(params)
}

/// What goes wrong with the next `EtcdSnapshot` streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SnapshotFault {
    /// The whole file.
    #[default]
    None,
    /// Only the first `keep` bytes, then a clean end of the stream.
    Truncate {
        /// Bytes sent.
        keep: u64,
    },
    /// `after` bytes, then an error status (etcd behind the node failed).
    Abort {
        /// Bytes sent before the error.
        after: u64,
    },
    /// `after` bytes, then nothing, with the stream left open.
    Stall {
        /// Bytes sent before the stall.
        after: u64,
    },
    /// The whole file with the last byte of the SHA-256 trailer flipped.
    CorruptTrailer,
}

/// One call the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The method, e.g. `EtcdSnapshot`.
    pub rpc: &'static str,
    /// The `node` metadata, if sent.
    pub node: Option<String>,
    /// The role of the client certificate.
    pub role: Option<Role>,
}

#[derive(Debug, Default)]
struct NodeState {
    fault: SnapshotFault,
    calls: Vec<Call>,
    /// Set by ApplyConfiguration; Bootstrap needs it.
    applied_configs: Vec<Vec<u8>>,
    configured: bool,
    recovered: Option<Vec<u8>>,
    bootstrapped: Option<BootstrapRequest>,
    files: HashMap<String, Vec<u8>>,
    /// What `Kubeconfig` hands out (a control-plane node once configured).
    kubeconfig: Option<Vec<u8>>,
    /// Methods whose next call fails with `Internal`.
    refuse: HashSet<&'static str>,
}

#[derive(Debug)]
struct Shared {
    snapshot: PathBuf,
    nodes: HashSet<String>,
    roles: HashMap<Vec<u8>, Role>,
    state: Mutex<NodeState>,
    /// Whether the node runs etcd (a control-plane node).
    control_plane: bool,
    /// Whether the node's VM is running (else connections are dropped).
    powered: AtomicBool,
    /// Whether the node serves the maintenance API (a fresh node until a
    /// config is applied).
    maintenance: AtomicBool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, NodeState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How a stand-in node starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Boot {
    /// A configured control-plane node whose etcd is running.
    Running,
    /// A freshly installed node whose VM is not running yet.
    Fresh,
}

/// The stand-in node, serving on a loopback port until dropped.
#[derive(Debug)]
pub struct TalosApiServer {
    addr: SocketAddr,
    pki: TalosPki,
    shared: Arc<Shared>,
    /// Dropping it stops the server.
    _stop: watch::Sender<()>,
}

impl TalosApiServer {
    /// Starts a node that serves `snapshot` for `EtcdSnapshot` and accepts
    /// the `node` metadata `127.0.0.1` (itself) or none. It is a configured
    /// control-plane node whose etcd is running.
    ///
    /// Fails when the certificates or the listener cannot be made.
    pub async fn start(snapshot: &Path) -> Result<Self> {
        Self::start_with(TalosPki::generate()?, snapshot, Boot::Running, true).await
    }

    /// Starts the node of a VM that is being rebuilt, with the certificates
    /// of `pki` (several nodes of one cluster share them): it drops every
    /// connection until [`power_on`](Self::power_on), then serves the
    /// maintenance API until a config is applied. A control-plane node then
    /// runs etcd `Preparing` until `Bootstrap`; `snapshot` is what it
    /// serves for `EtcdSnapshot`.
    ///
    /// Fails when the listener cannot be made.
    pub async fn start_fresh(pki: &TalosPki, snapshot: &Path, control_plane: bool) -> Result<Self> {
        Self::start_with(pki.clone(), snapshot, Boot::Fresh, control_plane).await
    }

    async fn start_with(
        pki: TalosPki,
        snapshot: &Path,
        boot: Boot,
        control_plane: bool,
    ) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("binding a loopback port for the Talos API stand-in")?;
        let addr = listener.local_addr()?;
        let mut roles: HashMap<Vec<u8>, Role> = pki
            .clients
            .iter()
            .map(|(role, cert)| (cert.der.clone(), *role))
            .collect();
        roles.insert(pki.foreign.der.clone(), Role::Admin);
        let state = match boot {
            Boot::Running => NodeState {
                configured: true,
                bootstrapped: Some(BootstrapRequest::default()),
                ..NodeState::default()
            },
            Boot::Fresh => NodeState::default(),
        };
        let shared = Arc::new(Shared {
            snapshot: snapshot.to_owned(),
            nodes: HashSet::from(["127.0.0.1".to_owned()]),
            roles,
            state: Mutex::new(state),
            control_plane,
            powered: AtomicBool::new(boot == Boot::Running),
            maintenance: AtomicBool::new(boot == Boot::Fresh),
        });
        let identity = Identity::from_pem(&pki.server_cert_pem, &pki.server_key_pem);
        let mutual = ServerTlsConfig::new()
            .identity(identity.clone())
            .client_ca_root(Certificate::from_pem(&pki.ca_pem));
        let maintenance = ServerTlsConfig::new().identity(identity);
        let (stop, stopped) = watch::channel(());
        let to_mutual = serve(mutual, &shared, stopped.clone())?;
        let to_maintenance = serve(maintenance, &shared, stopped.clone())?;
        tokio::spawn(dispatch(
            listener,
            shared.clone(),
            to_mutual,
            to_maintenance,
            stopped,
        ));
        Ok(Self {
            addr,
            pki,
            shared,
            _stop: stop,
        })
    }

    /// Starts the node's VM: from now on it answers.
    pub fn power_on(&self) {
        self.shared.powered.store(true, Ordering::SeqCst);
    }

    /// Whether the node's VM was started.
    pub fn is_powered(&self) -> bool {
        self.shared.powered.load(Ordering::SeqCst)
    }

    /// Makes the next call of `rpc` (e.g. `"Bootstrap"`) fail with
    /// `Internal`, as a node that hit a transient error would.
    pub fn refuse_once(&self, rpc: &'static str) {
        self.shared.state().refuse.insert(rpc);
    }

    /// The endpoint, `127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// The certificates.
    pub fn pki(&self) -> &TalosPki {
        &self.pki
    }

    /// Makes the next `EtcdSnapshot` streams go wrong as `fault` says.
    pub fn set_fault(&self, fault: SnapshotFault) {
        self.shared.state().fault = fault;
    }

    /// Makes the node serve `content` for `Read` of `path`.
    pub fn set_file(&self, path: &str, content: &[u8]) {
        self.shared
            .state()
            .files
            .insert(path.into(), content.into());
    }

    /// Makes the node hand out `kubeconfig` for `Kubeconfig` (packed as
    /// Talos does: a gzipped tar holding the file `kubeconfig`).
    pub fn set_kubeconfig(&self, kubeconfig: &str) {
        self.shared.state().kubeconfig = Some(kubeconfig.as_bytes().to_vec());
    }

    /// Makes the node a freshly installed one: no config applied, etcd
    /// empty, waiting for `Bootstrap`.
    pub fn reset_to_unconfigured(&self) {
        let mut state = self.shared.state();
        state.configured = false;
        state.bootstrapped = None;
        state.recovered = None;
    }

    /// The calls received so far.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.state().calls.clone()
    }

    /// The bytes of the last `EtcdRecover` upload.
    pub fn recovered(&self) -> Option<Vec<u8>> {
        self.shared.state().recovered.clone()
    }

    /// The configs applied, in order.
    pub fn applied_configs(&self) -> Vec<Vec<u8>> {
        self.shared.state().applied_configs.clone()
    }

    /// The last `Bootstrap` request since the node was made unconfigured
    /// (a running node reports the default request).
    pub fn bootstrapped(&self) -> Option<(bool, bool)> {
        self.shared
            .state()
            .bootstrapped
            .as_ref()
            .map(|b| (b.recover_etcd, b.recover_skip_hash_check))
    }

    /// A talosconfig (YAML) with one context, `lifeboat-test`, whose
    /// endpoint is this server, with `nodes` and the client certificate of
    /// `role`.
    ///
    /// Fails when the role has no certificate.
    pub fn talosconfig(&self, role: Role, nodes: &[&str]) -> Result<String> {
        let client = self.pki.client(role)?;
        Ok(talosconfig_yaml(
            &[self.endpoint()],
            nodes,
            &self.pki.ca_pem,
            client,
        ))
    }

    /// A talosconfig like [`talosconfig`](Self::talosconfig) whose client
    /// certificate was signed by another CA: the server refuses it.
    pub fn foreign_talosconfig(&self, nodes: &[&str]) -> String {
        talosconfig_yaml(
            &[self.endpoint()],
            nodes,
            &self.pki.ca_pem,
            &self.pki.foreign,
        )
    }
}

/// A connection handed to one of a node's servers.
type Connection = std::io::Result<tokio::net::TcpStream>;

/// Starts a gRPC server of the node with `tls`, serving the connections
/// sent into the returned channel until `stopped` fires.
fn serve(
    tls: ServerTlsConfig,
    shared: &Arc<Shared>,
    mut stopped: watch::Receiver<()>,
) -> Result<mpsc::Sender<Connection>> {
    let router = Server::builder()
        .tls_config(tls)
        .context("the stand-in's TLS settings")?
        .add_service(MachineServiceServer::new(Node {
            shared: shared.clone(),
        }));
    let (tx, rx) = mpsc::channel::<Connection>(16);
    tokio::spawn(async move {
        let _ = router
            .serve_with_incoming_shutdown(ReceiverStream::new(rx), async move {
                let _ = stopped.changed().await;
            })
            .await;
    });
    Ok(tx)
}

/// Accepts connections and hands them on as the node's state says: dropped
/// while its VM is off, to the maintenance server (TLS without client
/// certificates) until it is configured, to the mutual-TLS server after.
async fn dispatch(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mutual: mpsc::Sender<Connection>,
    maintenance: mpsc::Sender<Connection>,
    mut stopped: watch::Receiver<()>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.changed() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        if !shared.powered.load(Ordering::SeqCst) {
            drop(stream);
            continue;
        }
        let to = if shared.maintenance.load(Ordering::SeqCst) {
            &maintenance
        } else {
            &mutual
        };
        if to.send(Ok(stream)).await.is_err() {
            return;
        }
    }
}

/// A talosconfig as talosctl writes it: base64 of each PEM.
pub fn talosconfig_yaml(
    endpoints: &[String],
    nodes: &[&str],
    ca_pem: &str,
    client: &ClientCert,
) -> String {
    use base64::Engine as _;
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let list = |items: Vec<String>| {
        items
            .iter()
            .map(|i| format!("\n      - {i:?}"))
            .collect::<String>()
    };
    format!(
        "context: lifeboat-test\ncontexts:\n  lifeboat-test:\n    endpoints:{}\n    nodes:{}\n    ca: {}\n    crt: {}\n    key: {}\n",
        list(endpoints.to_vec()),
        list(nodes.iter().map(|n| (*n).to_owned()).collect()),
        b64(ca_pem),
        b64(&client.cert_pem),
        b64(&client.key_pem),
    )
}

/// The service implementation.
#[derive(Debug)]
struct Node {
    shared: Arc<Shared>,
}

type DataStream = Pin<Box<dyn Stream<Item = Result<Data, Status>> + Send + 'static>>;

impl Node {
    /// Records the call, then checks its `node` metadata and its role as
    /// apid and machined do.
    fn admit<T>(
        &self,
        rpc: &'static str,
        request: &Request<T>,
        allowed: &[Role],
    ) -> Result<(), Status> {
        let node = request
            .metadata()
            .get("node")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let role = request.peer_certs().and_then(|certs| {
            certs
                .first()
                .and_then(|cert| self.shared.roles.get(cert.as_ref()).copied())
        });
        let mut state = self.shared.state();
        state.calls.push(Call {
            rpc,
            node: node.clone(),
            role,
        });
        if state.refuse.remove(rpc) {
            return Err(Status::internal(format!(
                "{rpc} failed on the node (a failure the test injected)"
            )));
        }
        if let Some(node) = node.filter(|n| !self.shared.nodes.contains(n)) {
            return Err(Status::unavailable(format!(
                "connection error: desc = \"transport: Error while dialing: dial tcp {node}:50000: connect: no route to host\""
            )));
        }
        let maintenance = request.peer_certs().is_none_or(|certs| certs.is_empty());
        match role {
            // A connection to the maintenance API (no client certificate).
            _ if maintenance && state.configured => Err(Status::unavailable(
                "the node is rebooting into its configuration: connect with a talosconfig",
            )),
            _ if maintenance && MAINTENANCE_CALLS.contains(&rpc) => Ok(()),
            _ if maintenance => Err(Status::unimplemented(format!(
                "{rpc} is not available in maintenance mode"
            ))),
            Some(role) if allowed.contains(&role) => Ok(()),
            _ => Err(Status::permission_denied("not authorized")),
        }
    }
}

#[tonic::async_trait]
impl MachineService for Node {
    async fn apply_configuration(
        &self,
        request: Request<ApplyConfigurationRequest>,
    ) -> Result<Response<ApplyConfigurationResponse>, Status> {
        self.admit("ApplyConfiguration", &request, &[Role::Admin])?;
        let request = request.into_inner();
        if request.data.is_empty() {
            return Err(Status::invalid_argument("failed to parse config: empty"));
        }
        let mode = request.mode;
        if !request.dry_run {
            let mut state = self.shared.state();
            state.applied_configs.push(request.data.to_vec());
            state.configured = true;
            self.shared.maintenance.store(false, Ordering::SeqCst);
        }
        Ok(Response::new(ApplyConfigurationResponse {
            messages: vec![ApplyConfiguration {
                metadata: None,
                warnings: Vec::new(),
                mode,
                mode_details: if request.dry_run {
                    "Dry run summary: the config is valid".into()
                } else {
                    "Applied configuration".into()
                },
            }],
        }))
    }

    async fn bootstrap(
        &self,
        request: Request<BootstrapRequest>,
    ) -> Result<Response<BootstrapResponse>, Status> {
        self.admit("Bootstrap", &request, &[Role::Admin])?;
        let request = request.into_inner();
        let mut state = self.shared.state();
        if !state.configured {
            return Err(Status::failed_precondition(
                "bootstrap is not available yet: the machine has no configuration",
            ));
        }
        if !self.shared.control_plane {
            return Err(Status::failed_precondition(
                "bootstrap is only available on control plane nodes",
            ));
        }
        if state.bootstrapped.is_some() {
            return Err(Status::already_exists("etcd data directory is not empty"));
        }
        if request.recover_etcd && state.recovered.is_none() {
            return Err(Status::failed_precondition(
                "no etcd snapshot was uploaded with EtcdRecover",
            ));
        }
        state.bootstrapped = Some(request);
        Ok(Response::new(BootstrapResponse {
            messages: vec![Bootstrap { metadata: None }],
        }))
    }

    async fn etcd_recover(
        &self,
        request: Request<Streaming<Data>>,
    ) -> Result<Response<EtcdRecoverResponse>, Status> {
        self.admit("EtcdRecover", &request, &[Role::Admin])?;
        {
            let state = self.shared.state();
            if !self.shared.control_plane || !state.configured || state.bootstrapped.is_some() {
                return Err(Status::failed_precondition(
                    "etcd is not waiting for bootstrap (service etcd is not Preparing)",
                ));
            }
        }
        let mut stream = request.into_inner();
        let mut received = Vec::new();
        while let Some(piece) = stream.message().await? {
            received.extend_from_slice(&piece.bytes);
        }
        self.shared.state().recovered = Some(received);
        Ok(Response::new(EtcdRecoverResponse {
            messages: vec![EtcdRecover { metadata: None }],
        }))
    }

    type EtcdSnapshotStream = DataStream;

    async fn etcd_snapshot(
        &self,
        request: Request<EtcdSnapshotRequest>,
    ) -> Result<Response<Self::EtcdSnapshotStream>, Status> {
        self.admit(
            "EtcdSnapshot",
            &request,
            &[Role::Admin, Role::Operator, Role::EtcdBackup],
        )?;
        let fault = self.shared.state().fault;
        let path = self.shared.snapshot.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            if let Err(status) = send_snapshot(&path, fault, &tx).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn etcd_status(
        &self,
        request: Request<()>,
    ) -> Result<Response<EtcdStatusResponse>, Status> {
        self.admit(
            "EtcdStatus",
            &request,
            &[Role::Admin, Role::Operator, Role::Reader, Role::EtcdBackup],
        )?;
        if self.shared.state().bootstrapped.is_none() {
            return Err(Status::unavailable("etcd is not running"));
        }
        let size = std::fs::metadata(&self.shared.snapshot)
            .map(|m| m.len())
            .unwrap_or(0);
        let db_size = i64::try_from(size.saturating_sub(32)).unwrap_or(i64::MAX);
        Ok(Response::new(EtcdStatusResponse {
            messages: vec![EtcdStatus {
                metadata: None,
                member_status: Some(EtcdMemberStatus {
                    protocol_version: "3.5.0".into(),
                    db_size,
                    db_size_in_use: db_size / 2,
                    leader: 0x8e9e_05c5_2164_694d,
                    raft_index: 4242,
                    raft_term: 7,
                    raft_applied_index: 4242,
                    errors: Vec::new(),
                    is_learner: false,
                    member_id: 0x8e9e_05c5_2164_694d,
                    storage_version: "3.6.0".into(),
                }),
            }],
        }))
    }

    type KubeconfigStream = DataStream;

    async fn kubeconfig(
        &self,
        request: Request<()>,
    ) -> Result<Response<Self::KubeconfigStream>, Status> {
        self.admit("Kubeconfig", &request, &[Role::Admin])?;
        let state = self.shared.state();
        if !self.shared.control_plane || !state.configured {
            return Err(Status::failed_precondition(
                "kubeconfig is only available on configured control plane nodes",
            ));
        }
        let kubeconfig = state
            .kubeconfig
            .clone()
            .ok_or_else(|| Status::unavailable("the Kubernetes API is not up yet"))?;
        let archive = tar_gz("kubeconfig", &kubeconfig)
            .map_err(|e| Status::internal(format!("packing the kubeconfig: {e}")))?;
        Ok(Response::new(Box::pin(tokio_stream::iter(pieces(
            &archive,
        )))))
    }

    type ReadStream = DataStream;

    async fn read(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        self.admit("Read", &request, &[Role::Admin])?;
        let path = request.into_inner().path;
        let content = self
            .shared
            .state()
            .files
            .get(&path)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("open {path}: no such file or directory")))?;
        Ok(Response::new(Box::pin(tokio_stream::iter(pieces(
            &content,
        )))))
    }

    async fn service_list(
        &self,
        request: Request<()>,
    ) -> Result<Response<ServiceListResponse>, Status> {
        self.admit(
            "ServiceList",
            &request,
            &[Role::Admin, Role::Operator, Role::Reader],
        )?;
        let state = self.shared.state();
        let service = |id: &str, state: &str| ServiceInfo {
            id: id.into(),
            state: state.into(),
            health: Some(ServiceHealth {
                unknown: false,
                healthy: state == "Running",
                last_message: String::new(),
            }),
        };
        let mut services = vec![service("apid", "Running"), service("machined", "Running")];
        if self.shared.control_plane && state.configured {
            let etcd = if state.bootstrapped.is_some() {
                "Running"
            } else {
                "Preparing"
            };
            services.push(service("etcd", etcd));
        }
        Ok(Response::new(ServiceListResponse {
            messages: vec![ServiceList {
                metadata: None,
                services,
            }],
        }))
    }

    async fn version(&self, request: Request<()>) -> Result<Response<VersionResponse>, Status> {
        self.admit(
            "Version",
            &request,
            &[Role::Admin, Role::Operator, Role::Reader],
        )?;
        Ok(Response::new(VersionResponse {
            messages: vec![Version {
                metadata: None,
                version: Some(VersionInfo {
                    tag: "v1.11.0".into(),
                    sha: "lifeboat-stand-in".into(),
                    built: String::new(),
                    go_version: String::new(),
                    os: "linux".into(),
                    arch: "amd64".into(),
                }),
                platform: Some(PlatformInfo {
                    name: "metal".into(),
                    mode: "metal".into(),
                }),
                features: Some(FeaturesInfo { rbac: true }),
            }],
        }))
    }
}

/// Streams the snapshot file from disk into `tx`, as `fault` says.
async fn send_snapshot(
    path: &Path,
    fault: SnapshotFault,
    tx: &mpsc::Sender<Result<Data, Status>>,
) -> Result<(), Status> {
    let io = |e: std::io::Error| Status::internal(format!("reading {}: {e}", path.display()));
    let mut file = tokio::fs::File::open(path).await.map_err(io)?;
    let size = file.metadata().await.map_err(io)?.len();
    let limit = match fault {
        SnapshotFault::Truncate { keep } => keep.min(size),
        SnapshotFault::Abort { after } | SnapshotFault::Stall { after } => after.min(size),
        SnapshotFault::None | SnapshotFault::CorruptTrailer => size,
    };
    let mut sent = 0u64;
    let mut buf = vec![0u8; PIECE];
    while sent < limit {
        let want = usize::try_from(limit - sent).map_or(PIECE, |left| left.min(PIECE));
        let n = file.read(&mut buf[..want]).await.map_err(io)?;
        if n == 0 {
            break;
        }
        let mut piece = buf[..n].to_vec();
        if fault == SnapshotFault::CorruptTrailer
            && sent + n as u64 == size
            && let Some(last) = piece.last_mut()
        {
            *last ^= 0x01;
        }
        sent += n as u64;
        let data = Data {
            metadata: None,
            bytes: piece.into(),
        };
        if tx.send(Ok(data)).await.is_err() {
            return Ok(());
        }
    }
    match fault {
        SnapshotFault::Abort { .. } => Err(Status::unavailable(
            "failed to stream etcd snapshot: rpc error: code = Unavailable desc = error reading from server: EOF",
        )),
        SnapshotFault::Stall { .. } => {
            // Hold the stream open until the client gives up.
            tx.closed().await;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Makes a real etcd snapshot file in `dir`: starts Debian's etcd, puts
/// `keys` keys of 512 bytes, and saves a snapshot with
/// `etcdctl snapshot save` (which keeps etcd's SHA-256 trailer).
///
/// Fails with the install command when etcd is missing, or when etcd or
/// etcdctl fail.
pub async fn real_etcd_snapshot(dir: &Path, keys: usize) -> Result<PathBuf> {
    let etcd = crate::etcd::EtcdServer::start().await?;
    let mut client = etcd.client().await?;
    crate::etcd::put_all(
        &mut client,
        (0..keys).map(|i| (format!("/registry/test/{i:06}"), vec![(i % 251) as u8; 512])),
    )
    .await?;
    let path = dir.join("etcd-snapshot.db");
    let mut save = etcd.etcdctl()?;
    save.args(["snapshot", "save"]).arg(&path);
    crate::cli::run(&mut save)?.ok()?;
    let size = std::fs::metadata(&path)?.len();
    anyhow::ensure!(
        size % 512 == 32,
        "etcdctl saved {size} bytes, not a snapshot with a SHA-256 trailer"
    );
    Ok(path)
}

/// `content` as the `common.Data` pieces of a streamed reply.
fn pieces(content: &[u8]) -> Vec<Result<Data, Status>> {
    content
        .chunks(PIECE)
        .map(|piece| {
            Ok(Data {
                metadata: None,
                bytes: piece.to_vec().into(),
            })
        })
        .collect()
}

/// A gzipped tar archive holding one file `name` with `content`.
fn tar_gz(name: &str, content: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut archive = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o600);
    header.set_cksum();
    archive.append_data(&mut header, name, content)?;
    archive.into_inner()?.finish()
}
