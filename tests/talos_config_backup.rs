//! The Talos configuration as an operator backs it up: a folder like the
//! one Terraform's Talos provider writes (secrets bundle, control-plane and
//! worker configs, a patch, a talosconfig, and a `.terraform` folder left
//! out) is stored by `lifeboatd run`, restored by `lifeboat restore` byte
//! for byte, and described in the snapshot metadata by counts only. Without
//! a secrets bundle or a talosconfig the run still succeeds but warns, as
//! a rebuild would need them; a talosconfig kept outside the folder can be
//! listed in `files`.
//!
//! The live machine configs are read from the harness's protocol-level
//! stand-in for the Talos API (no Talos node can run here): with an
//! `os:admin` talosconfig each node's config is stored; with a role that
//! may not read it, the run warns and still stores the files.

use anyhow::{Context, Result, ensure};
use lifeboat::sources::talos_config::MACHINE_CONFIG_PATH;
use lifeboat_tests::cli::{Installation, Rng, write_file};
use lifeboat_tests::talos::{Role, TalosApiServer};

const SECRETS: &str = "cluster:\n    id: 0123456789abcdef\n    secret: c2VjcmV0\nsecrets:\n    bootstraptoken: abcdef.0123456789abcdef\n    secretboxencryptionsecret: c2VjcmV0Ym94\ntrustdinfo:\n    token: abcdef.0123456789abcdef\ncerts:\n    etcd:\n        crt: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t\n        key: LS0tLS1CRUdJTiBFQyBQUklWQVRFIEtFWS0tLS0t\n    k8s:\n        crt: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t\n        key: LS0tLS1CRUdJTiBFQyBQUklWQVRFIEtFWS0tLS0t\n    os:\n        crt: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t\n        key: LS0tLS1CRUdJTiBFRDI1NTE5IFBSSVZBVEUgS0VZLS0tLS0=\n";
const CONTROLPLANE: &str = "version: v1alpha1 # Indicates the schema used to decode the contents.\ndebug: false\npersist: true\nmachine:\n    type: controlplane # Defines the role of the machine within the cluster.\n    token: abcdef.0123456789abcdef\n    ca:\n        crt: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t\n    install:\n        disk: /dev/vda\ncluster:\n    id: 0123456789abcdef\n    controlPlane:\n        endpoint: https://10.0.0.10:6443\n";
const WORKER: &str = "version: v1alpha1\ndebug: false\npersist: true\nmachine:\n    type: worker\n    token: abcdef.0123456789abcdef\ncluster:\n    controlPlane:\n        endpoint: https://10.0.0.10:6443\n";
const PATCH: &str = "machine:\n    network:\n        hostname: talos-cp-1\n";
const TALOSCONFIG: &str = "context: homelab\ncontexts:\n    homelab:\n        endpoints:\n            - 10.0.0.10\n        nodes:\n            - 10.0.0.10\n        ca: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t\n        crt: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t\n        key: LS0tLS1CRUdJTiBFRDI1NTE5IFBSSVZBVEUgS0VZLS0tLS0=\n";

/// The files of the folder, relative to it.
const FILES: [(&str, &str); 5] = [
    ("secrets.yaml", SECRETS),
    ("controlplane.yaml", CONTROLPLANE),
    ("worker.yaml", WORKER),
    ("patches/controlplane-1.yaml", PATCH),
    ("talosconfig", TALOSCONFIG),
];

#[test]
fn the_talos_folder_round_trips_and_is_described_by_counts() -> Result<()> {
    let installation = Installation::local()?;
    let talos = installation.path("talos");
    for (name, text) in FILES {
        write_file(&talos.join(name), text.as_bytes())?;
    }
    write_file(
        &talos.join(".terraform/providers/talos"),
        &Rng::new(7).bytes(64 * 1024),
    )?;
    installation.write_config(
        &[],
        &[(
            "talos",
            r#"{ kind = "talos-config", dir = "talos", exclude = [".terraform"] }"#,
        )],
    )?;
    let report = installation.backup("talos")?;
    ensure!(
        report["warnings"].as_array().is_some_and(Vec::is_empty),
        "a complete folder gives no warning: {report:#}"
    );
    let metadata = installation.latest_metadata("talos")?;
    ensure!(
        metadata["secrets_bundle"] == true
            && metadata["talosconfig"] == true
            && metadata["machine_configs"] == 2
            && metadata["controlplane_configs"] == 1
            && metadata["worker_configs"] == 1
            && metadata["patches"] == 1
            && metadata["files"] == 5,
        "the metadata counts what a rebuild needs: {metadata:#}"
    );
    let shown = metadata.to_string();
    let folder = talos.display().to_string();
    for name in [
        "secrets.yaml",
        "controlplane.yaml",
        "worker.yaml",
        "controlplane-1",
        "patches/",
        "homelab",
        folder.as_str(),
    ] {
        ensure!(
            !shown.contains(name),
            "the service-readable metadata names {name:?}: {shown}"
        );
    }

    let target = installation.path("restored");
    installation
        .restore(&installation.restore_key(), "latest:talos", &target)?
        .ok()?;
    let restored = target.join(talos.strip_prefix("/")?);
    for (name, text) in FILES {
        let path = restored.join(name);
        let bytes = std::fs::read(&path).with_context(|| format!("{name} was not restored"))?;
        ensure!(bytes == text.as_bytes(), "{name} restored with other bytes");
    }
    ensure!(
        !restored.join(".terraform").exists(),
        "the excluded .terraform folder stays out"
    );
    Ok(())
}

#[test]
fn missing_rebuild_files_are_warned_about() -> Result<()> {
    let installation = Installation::local()?;
    let talos = installation.path("talos");
    for (name, text) in &FILES[1..4] {
        write_file(&talos.join(name), text.as_bytes())?;
    }
    // The talosconfig lives elsewhere, under a name of its own.
    let elsewhere = installation.path("home/.talos/homelab-talosconfig");
    write_file(&elsewhere, TALOSCONFIG.as_bytes())?;
    installation.write_config(
        &[],
        &[
            ("bare", r#"{ kind = "talos-config", dir = "talos" }"#),
            (
                "with-files",
                r#"{ kind = "talos-config", dir = "talos", files = ["home/.talos/homelab-talosconfig"] }"#,
            ),
            ("nothing", r#"{ kind = "talos-config" }"#),
        ],
    )?;

    let bare = installation.backup("bare")?;
    let warnings = bare["warnings"].to_string();
    ensure!(
        warnings.contains("no secrets bundle (secrets.yaml)")
            && warnings.contains("no talosconfig")
            && warnings.contains(&talos.display().to_string()),
        "both missing files are warned about, naming the folder: {warnings}"
    );
    let metadata = installation.latest_metadata("bare")?;
    ensure!(
        metadata["secrets_bundle"] == false
            && metadata["talosconfig"] == false
            && metadata["machine_configs"] == 2,
        "the metadata says what is missing: {metadata:#}"
    );

    let with_files = installation.backup("with-files")?;
    let warnings = with_files["warnings"].to_string();
    ensure!(
        warnings.contains("no secrets bundle") && !warnings.contains("no talosconfig"),
        "a listed talosconfig counts: {warnings}"
    );
    let target = installation.path("restored");
    installation
        .restore(&installation.restore_key(), "latest:with-files", &target)?
        .ok()?;
    let restored = std::fs::read(target.join("homelab-talosconfig"))?;
    ensure!(
        restored == TALOSCONFIG.as_bytes(),
        "a listed file is restored at the snapshot's root"
    );
    ensure!(
        std::fs::read(target.join(talos.strip_prefix("/")?).join("worker.yaml"))?
            == WORKER.as_bytes(),
        "the folder is restored beside it"
    );

    let nothing = installation.start_backup("nothing")?.wait()?.failed()?;
    ensure!(
        nothing.stderr.contains("set `dir` to the folder"),
        "a source without files says what to set\n{}",
        nothing.output()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_machine_configs_are_read_through_the_talos_api() -> Result<()> {
    let installation = Installation::local()?;
    let talos = installation.path("talos");
    for (name, text) in FILES {
        write_file(&talos.join(name), text.as_bytes())?;
    }
    let not_served = installation.path("etcd-snapshot-not-served");
    write_file(&not_served, b"unused")?;
    let server = TalosApiServer::start(&not_served).await?;
    let live = format!("{CONTROLPLANE}# edited on the node\n");
    server.set_file(MACHINE_CONFIG_PATH, live.as_bytes());
    write_file(
        &installation.path("admin-talosconfig"),
        server.talosconfig(Role::Admin, &["127.0.0.1"])?.as_bytes(),
    )?;
    write_file(
        &installation.path("reader-talosconfig"),
        server.talosconfig(Role::Reader, &[])?.as_bytes(),
    )?;
    installation.write_config(
        &[],
        &[
            (
                "live",
                r#"{ kind = "talos-config", dir = "talos", live = { talosconfig = "admin-talosconfig" } }"#,
            ),
            (
                "live-denied",
                r#"{ kind = "talos-config", dir = "talos", live = { talosconfig = "reader-talosconfig", nodes = ["127.0.0.1"] } }"#,
            ),
        ],
    )?;

    let report = tokio::task::block_in_place(|| installation.backup("live"))?;
    ensure!(
        report["warnings"].as_array().is_some_and(Vec::is_empty),
        "reading the live config gives no warning: {report:#}"
    );
    let metadata = installation.latest_metadata("live")?;
    ensure!(
        metadata["live_configs"] == 1 && metadata["live_configs_failed"] == 0,
        "one live config was read: {metadata:#}"
    );
    let target = installation.path("restored");
    tokio::task::block_in_place(|| {
        installation.restore(&installation.restore_key(), "latest:live", &target)
    })?
    .ok()?;
    ensure!(
        std::fs::read(target.join("live-127.0.0.1.yaml"))? == live.as_bytes(),
        "the node's config is restored byte for byte"
    );

    let denied = tokio::task::block_in_place(|| installation.backup("live-denied"))?;
    let warnings = denied["warnings"].to_string();
    ensure!(
        warnings.contains("live machine config of node 127.0.0.1"),
        "a node that refuses Read is warned about: {warnings}"
    );
    let metadata = installation.latest_metadata("live-denied")?;
    ensure!(
        metadata["live_configs"] == 0
            && metadata["live_configs_failed"] == 1
            && metadata["secrets_bundle"] == true,
        "the files are stored without the live config: {metadata:#}"
    );
    Ok(())
}
