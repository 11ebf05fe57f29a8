//! The Talos API client (`lifeboat::talos`) over the real wire protocol:
//! every call lifeboat makes — `Version`, `EtcdStatus`, `EtcdSnapshot`,
//! `Read`, `ApplyConfiguration`, `EtcdRecover`, `Bootstrap` — against the
//! protocol-level Talos stand-in of `lifeboat_tests::talos` (gRPC over
//! mutual TLS with Talos' names and field numbers; no Talos node can run
//! here), and how the client tells TLS failures apart.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use lifeboat::talos::{ApplyMode, Security, TalosClient, TalosConfig, TalosEndpoint, TalosError};
use lifeboat_tests::talos::{Role, SnapshotFault, TalosApiServer, TalosPki, talosconfig_yaml};
use tempfile::TempDir;
use tokio::io::AsyncReadExt;

/// A stand-in serving a small snapshot-shaped file (the client does not
/// check trailers; the etcd tests use real snapshots).
async fn stand_in() -> Result<(TempDir, TalosApiServer, Vec<u8>)> {
    let dir = tempfile::tempdir()?;
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let path = dir.path().join("snapshot.db");
    std::fs::write(&path, &content)?;
    let server = TalosApiServer::start(&path).await?;
    Ok((dir, server, content))
}

/// A client for `server` with the certificate of `role`, through a
/// talosconfig file as an operator has it.
async fn client(dir: &Path, server: &TalosApiServer, role: Role) -> Result<TalosClient> {
    let path = dir.join(format!("talosconfig-{}", role.name().replace(':', "-")));
    std::fs::write(&path, server.talosconfig(role, &["127.0.0.1"])?)?;
    let config = TalosConfig::load(Some(&path))?;
    let context = config.context(None)?;
    let client = TalosClient::connect_context(context).await?;
    Ok(client.with_node(context.nodes.first().map(String::as_str))?)
}

#[tokio::test]
async fn version_status_snapshot_and_read_with_an_admin_talosconfig() -> Result<()> {
    let (dir, server, content) = stand_in().await?;
    let admin = client(dir.path(), &server, Role::Admin).await?;
    ensure!(admin.target() == format!("node 127.0.0.1 via {}", server.endpoint()));

    let version = admin.version().await?;
    ensure!(
        version.tag == "v1.11.0" && version.arch == "linux/amd64",
        "{version:?}"
    );
    ensure!(version.platform.as_deref() == Some("metal") && version.rbac);

    let status = admin.etcd_status().await?;
    ensure!(status.member_id == 0x8e9e_05c5_2164_694d, "{status:?}");

    let mut snapshot = Vec::new();
    admin
        .etcd_snapshot()
        .await?
        .read_to_end(&mut snapshot)
        .await?;
    ensure!(
        snapshot == content,
        "the snapshot stream differs from the file"
    );

    let config = vec![b'x'; 100_000];
    server.set_file("/system/state/config.yaml", &config);
    ensure!(admin.read("/system/state/config.yaml").await? == config);
    match admin.read("/nonexistent").await {
        Err(TalosError::Rpc {
            rpc: "Read",
            code: tonic::Code::NotFound,
            message,
            ..
        }) => {
            ensure!(message.contains("no such file"), "{message}");
        }
        other => bail!("reading a missing file gave {other:?}"),
    }

    let calls = server.calls();
    ensure!(
        calls
            .iter()
            .all(|c| c.node.as_deref() == Some("127.0.0.1") && c.role == Some(Role::Admin)),
        "every call carries the node metadata and the admin certificate: {calls:?}"
    );
    Ok(())
}

#[tokio::test]
async fn roles_are_enforced_and_reported() -> Result<()> {
    let (dir, server, _) = stand_in().await?;
    let reader = client(dir.path(), &server, Role::Reader).await?;
    let error = reader
        .etcd_snapshot()
        .await
        .err()
        .context("os:reader took a snapshot")?;
    ensure!(error.is_permission_denied(), "{error}");
    ensure!(error.to_string().contains("os:etcd:backup"), "{error}");
    ensure!(
        reader.etcd_status().await.is_ok(),
        "os:reader may ask for the status"
    );

    let backup = client(dir.path(), &server, Role::EtcdBackup).await?;
    let error = backup
        .version()
        .await
        .err()
        .context("os:etcd:backup read the version")?;
    ensure!(error.is_permission_denied(), "{error}");
    ensure!(backup.etcd_status().await.is_ok());

    // A node the endpoint cannot reach is that node's failure, not the
    // endpoint's.
    let elsewhere = backup.with_node(Some("127.0.0.9"))?;
    let error = elsewhere
        .etcd_status()
        .await
        .err()
        .context("an unknown node answered")?;
    ensure!(
        matches!(
            error,
            TalosError::Rpc {
                code: tonic::Code::Unavailable,
                ..
            }
        ) && !error.is_endpoint_failure(),
        "{error:?}"
    );
    ensure!(error.to_string().contains("node 127.0.0.9 via"), "{error}");
    Ok(())
}

#[tokio::test]
async fn apply_recover_and_bootstrap_as_a_rebuild_does() -> Result<()> {
    let (dir, server, content) = stand_in().await?;
    server.reset_to_unconfigured();
    let admin = client(dir.path(), &server, Role::Admin).await?;

    match admin.bootstrap(true, false).await {
        Err(TalosError::Rpc {
            code: tonic::Code::FailedPrecondition,
            ..
        }) => {}
        other => bail!("bootstrap before a config gave {other:?}"),
    }
    let config = Bytes::from_static(b"version: v1alpha1\nmachine:\n  type: controlplane\n");
    let dry = admin
        .apply_configuration(config.clone(), ApplyMode::Auto, true)
        .await?;
    ensure!(
        dry.mode == "AUTO" && dry.mode_details.contains("Dry run"),
        "{dry:?}"
    );
    ensure!(
        server.applied_configs().is_empty(),
        "a dry run applied the config"
    );
    let applied = admin
        .apply_configuration(
            config.clone(),
            ApplyMode::Try(std::time::Duration::from_secs(60)),
            false,
        )
        .await?;
    ensure!(applied.mode == "TRY", "{applied:?}");
    ensure!(server.applied_configs() == [config.to_vec()]);

    let file = tokio::fs::File::open(dir.path().join("snapshot.db")).await?;
    admin.etcd_recover(file).await?;
    ensure!(
        server.recovered().as_deref() == Some(content.as_slice()),
        "the uploaded snapshot differs from the file"
    );
    admin.bootstrap(true, false).await?;
    ensure!(server.bootstrapped() == Some((true, false)));
    match admin.bootstrap(true, false).await {
        Err(TalosError::Rpc {
            code: tonic::Code::AlreadyExists,
            ..
        }) => {}
        other => bail!("a second bootstrap gave {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn a_broken_stream_names_the_call_the_node_and_the_bytes() -> Result<()> {
    let (dir, server, _) = stand_in().await?;
    server.set_fault(SnapshotFault::Abort { after: 65536 });
    let admin = client(dir.path(), &server, Role::Admin).await?;
    let mut sink = Vec::new();
    let error = admin
        .etcd_snapshot()
        .await?
        .read_to_end(&mut sink)
        .await
        .err()
        .context("a broken stream read to its end")?;
    ensure!(sink.len() == 65536, "{} bytes before the break", sink.len());
    match error.get_ref().and_then(|e| e.downcast_ref::<TalosError>()) {
        Some(TalosError::StreamBroken {
            rpc: "EtcdSnapshot",
            received: 65536,
            target,
            ..
        }) => {
            ensure!(target.starts_with("node 127.0.0.1"), "{target}");
        }
        other => bail!("expected a broken EtcdSnapshot stream, got {other:?} ({error})"),
    }
    Ok(())
}

#[tokio::test]
async fn the_server_must_be_signed_by_the_talosconfig_ca_and_named_by_the_endpoint() -> Result<()> {
    let (dir, server, _) = stand_in().await?;
    let admin_cert = server.pki().clients[&Role::Admin].clone();

    // Another cluster's CA.
    let other = TalosPki::generate()?;
    let yaml = talosconfig_yaml(&[server.endpoint()], &[], &other.ca_pem, &admin_cert);
    let path = dir.path().join("other-ca");
    std::fs::write(&path, yaml)?;
    let config = TalosConfig::load(Some(&path))?;
    match TalosClient::connect_context(config.context(None)?).await {
        Err(TalosError::ServerNotTrusted { detail, .. }) => {
            // Both CAs are named like Talos' (O=talos): the signature fails.
            ensure!(detail.contains("invalid peer certificate"), "{detail}");
        }
        other => bail!("a server of another CA gave {other:?}"),
    }

    // The right CA, but a name the certificate does not hold (it names
    // 127.0.0.1, as apid's certificates name the node's IPs).
    let by_name = server.endpoint().replace("127.0.0.1", "localhost");
    let yaml = talosconfig_yaml(&[by_name], &[], &server.pki().ca_pem, &admin_cert);
    std::fs::write(&path, yaml)?;
    let config = TalosConfig::load(Some(&path))?;
    match TalosClient::connect_context(config.context(None)?).await {
        Err(error @ TalosError::ServerNotTrusted { .. }) => {
            ensure!(error.to_string().contains("certSANs"), "{error}");
        }
        other => bail!("a name outside the certificate gave {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn maintenance_mode_skips_server_verification_but_honours_a_pin() -> Result<()> {
    let (_dir, server, _) = stand_in().await?;
    let endpoint = TalosEndpoint::parse(&server.endpoint())?;

    // A wrong pin is refused before anything is sent.
    let wrong = Security::Insecure {
        pin_sha256: Some([7; 32]),
    };
    match TalosClient::connect(&endpoint, &wrong).await {
        Err(TalosError::ServerNotTrusted { detail, .. }) => {
            ensure!(detail.contains("not the pinned"), "{detail}");
        }
        other => bail!("a wrong pin gave {other:?}"),
    }

    // Unverified, without a client certificate: this stand-in is a
    // configured node that requires one, so the call is refused with a
    // message about the client certificate (a node in maintenance mode
    // would answer).
    let insecure = Security::Insecure { pin_sha256: None };
    let result = match TalosClient::connect(&endpoint, &insecure).await {
        Ok(client) => client.version().await.map(|_| ()),
        Err(e) => Err(e),
    };
    match result {
        Err(TalosError::ClientCertificateRejected { .. }) => {}
        other => bail!("no client certificate gave {other:?}"),
    }

    // Mutual TLS from credentials given directly works too.
    let pki = server.pki();
    let admin = &pki.clients[&Role::Admin];
    let credentials = lifeboat::talos::Credentials::from_pem(
        pki.ca_pem.as_bytes(),
        admin.cert_pem.as_bytes(),
        admin.key_pem.as_bytes(),
    )
    .map_err(anyhow::Error::msg)?;
    let client = TalosClient::connect(&endpoint, &Security::Mutual(Arc::new(credentials))).await?;
    ensure!(client.version().await?.tag == "v1.11.0");
    Ok(())
}
