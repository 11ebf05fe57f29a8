//! Volume movers, as a user runs a `volumes` job with `movers` set: every
//! bound claim of a three-node cluster — hostPath, local and CSI alike —
//! is read by a mover Job running the real `lifeboatd mover`, placed where
//! its volume can be mounted, and the run stores one snapshot from which
//! each claim restores with its contents, modes, owners and times.
//!
//! The cluster is the protocol-level test API server (no real API server,
//! kubelet or CSI driver runs here): its Jobs run as local processes, a
//! claim's mount is the folder behind its PersistentVolume (for a CSI
//! volume, a folder registered for its handle), and it refuses pods as the
//! kubelet would (node affinity conflicts, Multi-Attach). What only a real
//! cluster shows: that a CSI driver attaches and mounts the volume
//! read-only, image pulls, and Pod Security admission of the mover pods.
//!
//! A mover reads only the files its claim's cache (an object in the
//! repository only lifeboatd and that claim's movers can open) does not
//! know unchanged.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use lifeboat_tests::cli::{
    self, Installation, assert_same_tree, describe, report_item, write_file,
};
use lifeboat_tests::kubernetes::{KubeApiServer, snapshots};
use lifeboat_tests::service::Lifeboatd;
use serde_json::{Value, json};

/// The movers' image in the tests (the binaries folder stands in for it).
const IMAGE: &str = "ghcr.io/example/lifeboat:test";

fn pv(name: &str, class: &str, source: Value, nodes: &[&str], modes: &[&str]) -> Value {
    let mut pv = json!({"apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": modes,
            "storageClassName": class}});
    for (key, value) in source.as_object().into_iter().flatten() {
        pv["spec"][key] = value.clone();
    }
    if !nodes.is_empty() {
        pv["spec"]["nodeAffinity"] = json!({"required": {"nodeSelectorTerms": [{"matchExpressions":
            [{"key": "kubernetes.io/hostname", "operator": "In", "values": nodes}]}]}});
    }
    pv
}

fn pvc(namespace: &str, name: &str, pv: &str, class: &str, modes: &[&str]) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"accessModes": modes, "storageClassName": class, "volumeName": pv,
            "resources": {"requests": {"storage": "1Gi"}}},
        "status": {"phase": "Bound"}})
}

fn pod(namespace: &str, name: &str, node: &str, claim: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app"}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]},
        "status": {"phase": "Running"}})
}

/// Fills `folder` with files of different modes, owners and times.
fn fill(folder: &Path, seed: u8) -> Result<()> {
    write_file(&folder.join("data/table.bin"), &vec![seed; 300 * 1024])?;
    write_file(
        &folder.join("config.yaml"),
        format!("seed: {seed}\n").as_bytes(),
    )?;
    write_file(&folder.join("secret/key"), b"not for everyone")?;
    std::fs::set_permissions(
        folder.join("secret"),
        std::fs::Permissions::from_mode(0o700),
    )?;
    std::fs::set_permissions(
        folder.join("secret/key"),
        std::fs::Permissions::from_mode(0o400),
    )?;
    std::os::unix::fs::chown(folder.join("data"), Some(999), Some(999))?;
    std::os::unix::fs::chown(folder.join("data/table.bin"), Some(999), Some(999))?;
    std::os::unix::fs::symlink("data/table.bin", folder.join("current"))?;
    let old = filetime::FileTime::from_unix_time(1_700_000_000 + i64::from(seed), 0);
    filetime::set_file_mtime(folder.join("config.yaml"), old)?;
    Ok(())
}

/// A three-node cluster: claims on hostPath (w1, in use), CSI Mayastor
/// with snapshots (in use on w2), local (pinned to w3, unused), CSI ZFS
/// without snapshots (unused, anywhere), a ReadWriteOncePod Mayastor claim
/// in use (read from its snapshot) and a ZFS one (skipped), one opted out
/// by mode, one asking for a snapshot its driver cannot take, and one
/// whose folder is gone (its mover fails).
struct Fixture {
    server: KubeApiServer,
    installation: Installation,
    /// Claim → its data folder.
    folders: Vec<(&'static str, PathBuf)>,
    data: tempfile::TempDir,
}

async fn fixture() -> Result<Fixture> {
    let data = tempfile::tempdir()?;
    let folder = |name: &str| data.path().join(name);
    let rwo = ["ReadWriteOnce"];
    let mut objects: Vec<Value> = ["apps", "monitoring", "restored"]
        .iter()
        .map(|name| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
        .collect();
    // Mayastor has a VolumeSnapshotClass, ZFS none.
    objects.extend(snapshots::crds());
    objects.push(snapshots::class(
        "mayastor-snapshots",
        "io.openebs.csi-mayastor",
    ));
    objects.extend([
        pv(
            "pv-postgres",
            "openebs-hostpath",
            json!({"hostPath": {"path": folder("w1/pv-postgres").display().to_string()}}),
            &["w1"],
            &rwo,
        ),
        pvc(
            "apps",
            "postgres-data",
            "pv-postgres",
            "openebs-hostpath",
            &rwo,
        ),
        pod("apps", "postgres-0", "w1", "postgres-data"),
        pv(
            "pv-prometheus",
            "openebs-mayastor",
            json!({"csi": {"driver": "io.openebs.csi-mayastor", "volumeHandle": "mayastor-1"}}),
            &[],
            &rwo,
        ),
        pvc(
            "monitoring",
            "prometheus-db",
            "pv-prometheus",
            "openebs-mayastor",
            &rwo,
        ),
        {
            // Its hooks log which snapshots and movers exist when they run.
            let mut pod = pod("monitoring", "prometheus-0", "w2", "prometheus-db");
            let log = folder("hooks.log").display().to_string();
            let kubelet = folder("kubelet").display().to_string();
            let hook = |phase: &str| {
                json!(["/bin/sh", "-c", format!(
                    "echo {phase}: $(ls {kubelet} {kubelet}/snapshots 2>/dev/null | tr '\\n' ' ') >> {log}")])
                .to_string()
            };
            pod["metadata"]["annotations"] = json!({
                "pre.hook.backup.lifeboat.dev/command": hook("pre"),
                "post.hook.backup.lifeboat.dev/command": hook("post"),
            });
            pod
        },
        pv(
            "pv-archive",
            "local-storage",
            json!({"local": {"path": folder("w3/archive").display().to_string()}}),
            &["w3"],
            &rwo,
        ),
        pvc("apps", "archive", "pv-archive", "local-storage", &rwo),
        pv(
            "pv-cache",
            "openebs-zfs",
            json!({"csi": {"driver": "zfs.csi.openebs.io", "volumeHandle": "zfs-cache"}}),
            &[],
            &rwo,
        ),
        pvc("apps", "cache", "pv-cache", "openebs-zfs", &rwo),
        pv(
            "pv-session",
            "openebs-mayastor",
            json!({"csi": {"driver": "io.openebs.csi-mayastor", "volumeHandle": "mayastor-2"}}),
            &[],
            &["ReadWriteOncePod"],
        ),
        pvc(
            "apps",
            "session",
            "pv-session",
            "openebs-mayastor",
            &["ReadWriteOncePod"],
        ),
        pod("apps", "web-0", "w1", "session"),
        pv(
            "pv-tokens",
            "openebs-zfs",
            json!({"csi": {"driver": "zfs.csi.openebs.io", "volumeHandle": "zfs-tokens"}}),
            &[],
            &["ReadWriteOncePod"],
        ),
        pvc(
            "apps",
            "tokens",
            "pv-tokens",
            "openebs-zfs",
            &["ReadWriteOncePod"],
        ),
        pod("apps", "auth-0", "w3", "tokens"),
        pv(
            "pv-logs",
            "openebs-zfs",
            json!({"csi": {"driver": "zfs.csi.openebs.io", "volumeHandle": "zfs-logs"}}),
            &[],
            &rwo,
        ),
        {
            let mut claim = pvc("apps", "logs", "pv-logs", "openebs-zfs", &rwo);
            claim["metadata"]["annotations"] = json!({"lifeboat.dev/volume-mode": "snapshot"});
            claim
        },
        pv(
            "pv-scratch",
            "openebs-hostpath",
            json!({"hostPath": {"path": folder("w2/scratch").display().to_string()}}),
            &["w2"],
            &rwo,
        ),
        {
            let mut claim = pvc("apps", "scratch", "pv-scratch", "openebs-hostpath", &rwo);
            claim["metadata"]["annotations"] = json!({"lifeboat.dev/volume-mode": "skip"});
            claim
        },
        pv(
            "pv-broken",
            "openebs-hostpath",
            json!({"hostPath": {"path": folder("w2/gone").display().to_string()}}),
            &["w2"],
            &rwo,
        ),
        pvc("apps", "broken", "pv-broken", "openebs-hostpath", &rwo),
    ]);
    let folders = vec![
        ("apps/postgres-data", folder("w1/pv-postgres")),
        ("monitoring/prometheus-db", folder("mayastor/1")),
        ("apps/archive", folder("w3/archive")),
        ("apps/cache", folder("zfs/cache")),
        ("apps/session", folder("mayastor/2")),
    ];
    for (i, (_, path)) in folders.iter().enumerate() {
        fill(path, i as u8 + 1)?;
    }
    std::fs::create_dir_all(folder("w2/scratch"))?;
    let server = KubeApiServer::start(objects).await?;
    server.set_csi_folder("mayastor-1", &folder("mayastor/1"));
    server.set_csi_folder("zfs-cache", &folder("zfs/cache"));
    server.set_csi_folder("mayastor-2", &folder("mayastor/2"));
    std::fs::create_dir_all(folder("zfs/logs"))?;
    server.set_csi_folder("zfs-logs", &folder("zfs/logs"));
    server.run_jobs(cli::binaries()?, &folder("kubelet"));
    let installation = Installation::local()?;
    server.write_kubeconfig(&installation.path("kubeconfig"))?;
    let source = format!(
        r#"{{ kind = "volumes", kubeconfig = "kubeconfig", exclude = ["*.tmp"], movers = {{ image = "{IMAGE}", concurrency = 2, per_node = 1, timeout = "2m" }} }}"#
    );
    installation.write_config(&[], &[("volumes", &source)])?;
    Ok(Fixture {
        server,
        installation,
        folders,
        data,
    })
}

/// The job of each snapshot in the repository, oldest first.
fn snapshot_jobs(installation: &Installation) -> Result<Vec<String>> {
    let key = installation.service_key().display().to_string();
    let list = installation
        .lifeboat_repo("snapshots", &["-i", key.as_str(), "--json"])?
        .ok()?
        .json()?;
    Ok(list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["job"].as_str().map(str::to_owned))
        .collect())
}

/// Mover Jobs, Secrets, VolumeSnapshots and temporary claims the server
/// still holds.
fn leftovers(server: &KubeApiServer) -> Vec<String> {
    server
        .objects()
        .into_iter()
        .filter(|(key, object)| {
            [
                "jobs",
                "secrets",
                "volumesnapshots",
                "persistentvolumeclaims",
            ]
            .contains(&key.1.as_str())
                && object["metadata"]["labels"]["app.kubernetes.io/component"] == "volume-mover"
        })
        .map(|(key, _)| format!("{} {}/{}", key.1, key.2, key.3))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_claim_on_every_node_is_moved_and_restores_into_a_new_place() -> Result<()> {
    let f = fixture().await?;
    let report = tokio::task::block_in_place(|| f.installation.start_backup("volumes")?.wait())?;
    // One claim failed: the run fails, but stores the others.
    let report = report.json()?;
    for (claim, outcome, reason) in [
        ("apps/postgres-data", "stored", "by a mover on w1"),
        (
            "monitoring/prometheus-db",
            "stored",
            "from a VolumeSnapshot by a mover on any node",
        ),
        ("apps/archive", "stored", "by a mover on w3"),
        ("apps/cache", "stored", "by a mover on any node"),
        (
            "apps/session",
            "stored",
            "from a VolumeSnapshot by a mover on any node",
        ),
        (
            "apps/tokens",
            "skipped",
            "ReadWriteOncePod and pod apps/auth-0 uses it",
        ),
        (
            "apps/logs",
            "failed",
            "no VolumeSnapshotClass names its CSI driver zfs.csi.openebs.io",
        ),
        (
            "apps/scratch",
            "skipped",
            "lifeboat.dev/volume-mode is \"skip\"",
        ),
        // What the mover said before its Job went.
        (
            "apps/broken",
            "failed",
            "backoff limit): lifeboatd: cannot read the claim's mount",
        ),
    ] {
        let found = report_item(&report, "volume", claim)?;
        ensure!(
            found["outcome"] == outcome
                && found["detail"].as_str().is_some_and(|d| d.contains(reason)),
            "{claim}: expected {outcome} with {reason:?}, got {found:#}; movers: {:#?}",
            f.server.job_runs()
        );
    }

    // Each mover ran where its volume can be mounted, read-only, with the
    // claim and nothing of the host.
    let runs = f.server.job_runs();
    let run_of = |claim: &str| {
        runs.iter()
            .find(|r| r.claims.iter().any(|(c, _)| c == claim))
            .with_context(|| format!("no mover mounted {claim}: {runs:#?}"))
    };
    let postgres = run_of("apps/postgres-data")?;
    ensure!(postgres.node.as_deref() == Some("w1"), "{postgres:#?}");
    // Mayastor claims are read from their snapshots, through claims made
    // from them, not from the running volumes.
    for claim in ["monitoring/prometheus-db", "apps/session"] {
        ensure!(
            runs.iter()
                .all(|r| r.claims.iter().all(|(c, _)| c != claim)),
            "no mover mounts the running {claim}: {runs:#?}"
        );
    }
    let prometheus = runs
        .iter()
        .find(|r| r.namespace == "monitoring")
        .context("the prometheus mover")?;
    ensure!(
        prometheus.node.is_none()
            && prometheus.claims[0]
                .0
                .starts_with("monitoring/lifeboat-snapshot-"),
        "{prometheus:#?}"
    );
    let snapshotted: Vec<_> = f
        .server
        .writes()
        .into_iter()
        .filter(|w| w.verb == "create" && w.resource == "volumesnapshots" && w.status == 201)
        .map(|w| w.namespace)
        .collect();
    ensure!(
        snapshotted == ["apps", "monitoring"] || snapshotted == ["monitoring", "apps"],
        "one VolumeSnapshot per Mayastor claim: {snapshotted:?}"
    );
    let archive = run_of("apps/archive")?;
    ensure!(
        archive.node.is_none() && archive.affinity == ["w3"],
        "{archive:#?}"
    );
    for run in &runs {
        ensure!(
            run.image == IMAGE && run.claims.iter().all(|(_, ro)| *ro) && run.host_paths.is_empty(),
            "a mover mounts its claim read-only and no host path: {run:#?}"
        );
        ensure!(
            run.claims.len() == 1 && run.claims[0].0.starts_with(&format!("{}/", run.namespace)),
            "a mover runs in its claim's namespace: {run:#?}"
        );
    }
    ensure!(
        runs.iter().filter(|r| r.exit_code == Some(0)).count() == 5,
        "{runs:#?}"
    );
    ensure!(
        leftovers(&f.server).is_empty(),
        "left behind: {:?}",
        leftovers(&f.server)
    );

    // The pods' pre hooks ran before the snapshot was taken, their post
    // hooks once it was taken and the live claims were read, before the
    // snapshot's mover started.
    let hooks = std::fs::read_to_string(f.data.path().join("hooks.log"))?;
    let lines: Vec<&str> = hooks.lines().collect();
    ensure!(
        lines.len() == 2
            && lines[0].starts_with("pre:")
            && !lines[0].contains("monitoring-lifeboat-snapshot")
            && !lines[0].contains("lifeboat-mover-"),
        "{hooks}"
    );
    ensure!(
        lines[1].starts_with("post:")
            && lines[1].contains("monitoring-lifeboat-snapshot-")
            && lines[1].contains("apps-lifeboat-mover-")
            && !lines[1].contains("monitoring-lifeboat-mover-"),
        "{hooks}"
    );

    // One snapshot of the job, no parts left; its manifest records the
    // movers.
    let jobs = snapshot_jobs(&f.installation)?;
    ensure!(jobs == ["volumes"], "one snapshot and no parts: {jobs:?}");

    // Delete the data, then restore each claim elsewhere and compare.
    let originals: Vec<_> = f
        .folders
        .iter()
        .map(|(claim, path)| Ok((*claim, describe(path)?)))
        .collect::<Result<_>>()?;
    for (_, path) in &f.folders {
        std::fs::remove_dir_all(path)?;
    }
    let key = f.installation.restore_key();
    for (claim, original) in &originals {
        let target = f
            .installation
            .path(format!("restored/{}", claim.replace('/', "-")));
        let mut command = f.installation.restore_command(&key)?;
        command
            .args(["latest:volumes", "--pvc", claim, "--target"])
            .arg(&target)
            .arg("--json");
        cli::run(&mut command)?.ok()?;
        assert_same_tree(original, &describe(&target)?)?;
    }

    // Into claims of the cluster, through restore Jobs: each into a new
    // claim in another namespace (one in another storage class), the
    // existing claim of a volume nobody uses, and never a claim a pod no
    // workload runs uses.
    let into_claim = |claim: &str, target: &str, extra: &[&str]| {
        restore_into_claim(&f, &key, claim, target, extra)
    };
    let restored = into_claim(
        "monitoring/prometheus-db",
        "restored/prometheus",
        &["--storage-class", "openebs-hostpath"],
    )?
    .ok()?
    .json()?;
    ensure!(restored["created"] == true, "{restored:#}");
    let claim = f
        .server
        .object("", "persistentvolumeclaims", "restored", "prometheus")
        .context("the new claim")?;
    ensure!(
        claim["spec"]["storageClassName"] == "openebs-hostpath"
            && claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
            && claim["spec"]["accessModes"] == json!(["ReadWriteOnce"]),
        "the new claim is sized and shaped like the stored one: {claim:#}"
    );
    let pv = claim["spec"]["volumeName"].as_str().context("bound")?;
    let folder = f
        .server
        .object("", "persistentvolumes", "", pv)
        .and_then(|pv| pv["spec"]["hostPath"]["path"].as_str().map(PathBuf::from))
        .context("the provisioned folder")?;
    assert_same_tree(&originals[1].1, &describe(&folder)?)?;
    // Every other stored claim, each into a new claim of its class there.
    for (claim, original) in &originals {
        if *claim == "monitoring/prometheus-db" {
            continue;
        }
        let name = claim.replace('/', "-");
        let restored = into_claim(claim, &format!("restored/{name}"), &[])?
            .ok()?
            .json()?;
        ensure!(restored["created"] == true, "{restored:#}");
        let folder = f
            .server
            .object("", "persistentvolumeclaims", "restored", &name)
            .and_then(|c| c["spec"]["volumeName"].as_str().map(str::to_owned))
            .and_then(|pv| f.server.object("", "persistentvolumes", "", &pv))
            .and_then(|pv| pv["spec"]["hostPath"]["path"].as_str().map(PathBuf::from))
            .with_context(|| format!("the folder provisioned for {claim}"))?;
        assert_same_tree(original, &describe(&folder)?)?;
    }
    into_claim("apps/archive", "", &[])?.ok()?;
    assert_same_tree(&originals[2].1, &describe(&f.folders[2].1)?)?;
    let refused = into_claim("apps/postgres-data", "", &[])?;
    ensure!(
        !refused.status.success() && refused.stderr.contains("in use by pod(s) apps/postgres-0"),
        "{}",
        refused.stderr
    );
    ensure!(
        f.server
            .objects()
            .iter()
            .all(|(key, object)| !(key.1 == "jobs" || key.1 == "secrets")
                || object["metadata"]["labels"]["app.kubernetes.io/component"] != "claim-restore"),
        "restore Jobs and Secrets are gone"
    );
    Ok(())
}

/// `lifeboat restore latest:volumes --pvc CLAIM --into-claim TARGET`
/// with lifeboat's image and the fixture's kubeconfig.
fn restore_into_claim(
    f: &Fixture,
    key: &Path,
    claim: &str,
    target: &str,
    extra: &[&str],
) -> Result<cli::Outcome> {
    let mut command = f.installation.restore_command(key)?;
    command
        .args([
            "latest:volumes",
            "--pvc",
            claim,
            "--into-claim",
            target,
            "--json",
        ])
        .args(["--image", IMAGE])
        .args(extra)
        .env("KUBECONFIG", f.installation.path("kubeconfig"));
    let outcome = tokio::task::block_in_place(|| cli::run(&mut command))?;
    if !outcome.status.success() {
        let last = f.server.job_runs().last().map(|r| r.output.clone());
        eprintln!("the last Job's output: {last:?}");
    }
    Ok(outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_in_use_is_restored_with_its_statefulset_and_flux_stopped_around_it() -> Result<()>
{
    let f = fixture().await?;
    tokio::task::block_in_place(|| f.installation.start_backup("volumes")?.wait())?;
    let original = describe(&f.folders[2].1)?;
    std::fs::remove_dir_all(&f.folders[2].1)?;
    // The archive is now used by a StatefulSet that Flux's `apps`
    // Kustomization manages.
    f.server.load(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "flux-system"}}),
    )?;
    f.server
        .load(json!({"apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "kustomizations.kustomize.toolkit.fluxcd.io"},
        "spec": {"group": "kustomize.toolkit.fluxcd.io", "scope": "Namespaced",
            "names": {"plural": "kustomizations", "kind": "Kustomization"},
            "versions": [{"name": "v1", "served": true, "storage": true}]}}))?;
    f.server.load(
        json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
        "metadata": {"name": "apps", "namespace": "flux-system"},
        "spec": {"interval": "10m", "path": "./apps", "suspend": false}}),
    )?;
    f.server
        .load(json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "archive-db", "namespace": "apps",
            "labels": {"kustomize.toolkit.fluxcd.io/name": "apps",
                "kustomize.toolkit.fluxcd.io/namespace": "flux-system"}},
        "spec": {"replicas": 2, "serviceName": "archive-db",
            "selector": {"matchLabels": {"app": "archive-db"}},
            "template": {"metadata": {"labels": {"app": "archive-db"}},
                "spec": {"containers": [{"name": "db", "image": "db"}]}}}}))?;
    let mut pod = pod("apps", "archive-db-0", "w3", "archive");
    pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "StatefulSet",
        "name": "archive-db", "uid": "u-1", "controller": true}]);
    f.server.load(pod)?;

    let key = f.installation.restore_key();
    let refused = restore_into_claim(&f, &key, "apps/archive", "", &["--no-stop"])?;
    ensure!(
        !refused.status.success()
            && refused
                .stderr
                .contains("in use by pod(s) apps/archive-db-0"),
        "{}",
        refused.stderr
    );
    let restored = restore_into_claim(&f, &key, "apps/archive", "", &[])?
        .ok()?
        .json()?;
    ensure!(
        restored["stopped"] == json!(["StatefulSet apps/archive-db (2)"])
            && restored["suspended"] == json!(["Kustomization flux-system/apps"]),
        "{restored:#}"
    );
    assert_same_tree(&original, &describe(&f.folders[2].1)?)?;
    // Scaled to zero, then back to two; Flux suspended, then resumed.
    let patches: Vec<String> = f
        .server
        .writes()
        .into_iter()
        .filter(|w| w.verb == "patch")
        .map(|w| format!("{} {}/{}", w.resource, w.namespace, w.name))
        .collect();
    ensure!(
        patches
            == [
                "kustomizations flux-system/apps",
                "statefulsets apps/archive-db",
                "statefulsets apps/archive-db",
                "kustomizations flux-system/apps",
            ],
        "{patches:?}"
    );
    let set = f
        .server
        .object("apps", "statefulsets", "apps", "archive-db")
        .context("the StatefulSet")?;
    ensure!(set["spec"]["replicas"] == 2, "{set:#}");
    let flux = f
        .server
        .object(
            "kustomize.toolkit.fluxcd.io",
            "kustomizations",
            "flux-system",
            "apps",
        )
        .context("the Kustomization")?;
    ensure!(
        flux["spec"]["suspend"] == false
            && flux["metadata"]["annotations"]["lifeboat.dev/suspended-from"].is_null(),
        "{flux:#}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_run_leaves_nothing_after_the_next() -> Result<()> {
    let f = fixture().await?;
    // Movers of a run that never ends keep their Job until lifeboatd is
    // killed; the next run deletes them and forgets the killed run's parts.
    let running = f.installation.start_backup("volumes")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while leftovers(&f.server).is_empty() {
        ensure!(std::time::Instant::now() < deadline, "no mover started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.kill()?;
    ensure!(
        !leftovers(&f.server).is_empty(),
        "the killed run left its movers"
    );
    // Let the killed run's movers store their parts.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let report =
        tokio::task::block_in_place(|| f.installation.start_backup("volumes")?.wait())?.json()?;
    ensure!(
        report_item(&report, "volume", "apps/cache")?["outcome"] == "stored",
        "{report:#}"
    );
    ensure!(
        leftovers(&f.server).is_empty(),
        "left behind: {:?}",
        leftovers(&f.server)
    );
    let jobs = snapshot_jobs(&f.installation)?;
    ensure!(
        jobs == ["volumes"],
        "the killed run's parts are forgotten: {jobs:?}"
    );
    Ok(())
}

/// How much a stored claim's mover read, from its run item (`…, 0 B read)`).
fn bytes_read(report: &Value, claim: &str) -> Result<String> {
    let item = report_item(report, "volume", claim)?;
    let detail = item["detail"].as_str().unwrap_or_default();
    detail
        .strip_suffix(" read)")
        .and_then(|d| d.rsplit(", ").next())
        .map(str::to_owned)
        .with_context(|| format!("{claim}: no figure of what was read in {item:#}"))
}

/// Every object below `dir`, recursively.
fn objects_below(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    if !dir.exists() {
        return Ok(found);
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(objects_below(&path)?);
        } else {
            found.push(path);
        }
    }
    Ok(found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mover_reads_only_what_changed_since_its_claims_last_mover() -> Result<()> {
    let f = fixture().await?;
    let backup = || -> Result<Value> {
        tokio::task::block_in_place(|| f.installation.start_backup("volumes")?.wait())?.json()
    };
    // Live claims; the two Mayastor ones are read from claims made from
    // their snapshots, which the test server copies anew each run (new
    // inodes and change times, so they are read again; a real CSI clone
    // of a filesystem keeps both).
    let live = ["apps/postgres-data", "apps/archive", "apps/cache"];
    let first = backup()?;
    for claim in live {
        ensure!(
            bytes_read(&first, claim)? != "0 B",
            "{claim} was read: {first:#}"
        );
    }
    let second = backup()?;
    for claim in live {
        ensure!(
            bytes_read(&second, claim)? == "0 B",
            "unchanged {claim} is not read again: {second:#}"
        );
    }
    ensure!(
        bytes_read(&second, "monitoring/prometheus-db")? != "0 B",
        "{second:#}"
    );

    // One changed file is the only one read; the snapshot holds it and the
    // unchanged files, whose content came from the cache.
    let postgres = &f.folders[0].1;
    let changed = postgres.join("config.yaml");
    let mut text = std::fs::read(&changed)?;
    text.extend_from_slice(b"changed: yes\n");
    std::fs::write(&changed, &text)?;
    let third = backup()?;
    ensure!(
        bytes_read(&third, "apps/postgres-data")? == format!("{} B", text.len()),
        "only the changed file is read: {third:#}"
    );
    for claim in ["apps/archive", "apps/cache"] {
        ensure!(bytes_read(&third, claim)? == "0 B", "{third:#}");
    }
    let target = f.installation.path("restored/postgres");
    let mut command = f
        .installation
        .restore_command(&f.installation.restore_key())?;
    command
        .args(["latest:volumes", "--pvc", "apps/postgres-data", "--target"])
        .arg(&target);
    cli::run(&mut command)?.ok()?;
    assert_same_tree(&describe(postgres)?, &describe(&target)?)?;

    // One cache per stored claim, none of which the service key opens.
    let caches_dir = f.installation.repo_dir()?.join("caches");
    let caches = objects_below(&caches_dir)?;
    ensure!(caches.len() == 5, "one cache per stored claim: {caches:?}");
    for cache in &caches {
        let opened = std::process::Command::new("age")
            .arg("-d")
            .arg("-i")
            .arg(f.installation.service_key())
            .arg(cache)
            .output()
            .context("running age (apt-get install age)")?;
        ensure!(
            !opened.status.success() && opened.stdout.is_empty(),
            "the service key opens the mover cache {}",
            cache.display()
        );
    }

    // A lost master key (a new state folder) costs one full read, and the
    // caches it can no longer open are replaced.
    std::fs::remove_file(f.installation.path("state/mover-cache.key"))?;
    let fourth = backup()?;
    for claim in live {
        ensure!(
            bytes_read(&fourth, claim)? != "0 B",
            "{claim} is read again: {fourth:#}"
        );
    }
    let now = objects_below(&caches_dir)?;
    ensure!(
        now.len() == 5 && now.iter().all(|c| !caches.contains(c)),
        "the old caches are replaced: {now:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mover_that_cannot_start_fails_its_claim_with_the_reason_and_the_others_go_on()
-> Result<()> {
    let f = fixture().await?;
    // w3 is not ready: the archive's mover, pinned there, stays Pending.
    f.server.set_node_not_ready("w3");
    let source = format!(
        r#"{{ kind = "volumes", kubeconfig = "kubeconfig", movers = {{ image = "{IMAGE}", start_timeout = "2s", timeout = "2m" }} }}"#
    );
    f.installation.write_config(&[], &[("volumes", &source)])?;
    let report =
        tokio::task::block_in_place(|| f.installation.start_backup("volumes")?.wait())?.json()?;
    let archive = report_item(&report, "volume", "apps/archive")?;
    ensure!(
        archive["outcome"] == "failed"
            && archive["detail"].as_str().is_some_and(|d| {
                d.contains("did not start within 2s")
                    && d.contains("cannot be scheduled")
                    && d.contains("not-ready")
            }),
        "{archive:#}"
    );
    for claim in [
        "apps/postgres-data",
        "apps/cache",
        "monitoring/prometheus-db",
    ] {
        ensure!(
            report_item(&report, "volume", claim)?["outcome"] == "stored",
            "{claim} goes on: {report:#}"
        );
    }
    ensure!(
        leftovers(&f.server).is_empty(),
        "left behind: {:?}",
        leftovers(&f.server)
    );
    ensure!(
        f.server
            .objects()
            .iter()
            .all(|(key, _)| key.1 != "pods" || !key.3.starts_with("lifeboat-mover-")),
        "the movers' pods go with their Jobs"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_shows_every_claim_on_metrics_and_the_status_page() -> Result<()> {
    let f = fixture().await?;
    tokio::task::block_in_place(|| {
        let mut service = Lifeboatd::start(&f.installation)?;
        service.trigger("volumes")?;
        service.wait_for("the volumes run", Duration::from_secs(120), |s| {
            Ok(s.runs("volumes")?
                .into_iter()
                .find(|r| r["ended"].is_string()))
        })?;
        let metrics = service.get("/metrics")?.body;
        for line in [
            r#"lifeboat_volume_stored{job="volumes",claim="apps/cache"} 1"#,
            r#"lifeboat_volume_stored{job="volumes",claim="apps/broken"} 0"#,
            r#"lifeboat_volume_stored{job="volumes",claim="apps/tokens"} 0"#,
            r#"lifeboat_volume_last_success_timestamp_seconds{job="volumes",claim="monitoring/prometheus-db"} "#,
        ] {
            ensure!(metrics.contains(line), "no {line} in\n{metrics}");
        }
        // The mover counted the claim's bytes: three files of fill().
        let bytes = metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(r#"lifeboat_volume_bytes{job="volumes",claim="apps/cache"} "#)
            })
            .and_then(|v| v.parse::<u64>().ok())
            .context("no bytes of apps/cache")?;
        ensure!(bytes > 300 * 1024, "apps/cache holds {bytes} bytes");
        let page = service.get("/")?.body;
        ensure!(
            page.contains("Volumes of volumes")
                && page.contains("apps/broken")
                && page.contains("ReadWriteOncePod"),
            "the status page lists the claims: {page}"
        );
        service.terminate()?;
        // Kept across restarts.
        let service = Lifeboatd::start(&f.installation)?;
        let metrics = service.get("/metrics")?.body;
        ensure!(
            metrics.contains(r#"lifeboat_volume_stored{job="volumes",claim="apps/cache"} 1"#),
            "{metrics}"
        );
        service.terminate()?;
        Ok(())
    })
}
