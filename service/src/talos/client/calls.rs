//! The `machine.MachineService` calls lifeboat makes through a
//! [`TalosClient`]: the unary ones (`Version`, `EtcdStatus`, `ServiceList`,
//! `Bootstrap`, `ApplyConfiguration`), the streamed replies (`EtcdSnapshot`,
//! `Read`, `Kubeconfig`) and the `EtcdRecover` upload.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::io::ReaderStream;

use super::super::TalosError;
use super::super::proto::machine::apply_configuration_request::Mode;
use super::super::proto::machine::{
    ApplyConfigurationRequest, BootstrapRequest, EtcdSnapshotRequest, ReadRequest,
};
use super::stream::UploadStream;
use super::{
    ApplyMode, ApplyOutcome, DataReader, EtcdMemberStatus, ServiceState, TalosClient, TalosVersion,
    into_talos_error,
};

/// The size of the pieces an upload is sent in.
const UPLOAD_PIECE: usize = 64 * 1024;

impl TalosClient {
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
