//! `lifeboat rebuild` end to end: the real `lifeboatd` backs up the Talos
//! files and etcd, then the real `lifeboat rebuild` defines and starts the
//! VMs on libvirt's real test driver (`test:///default`) and brings the
//! nodes up through the Talos API.
//!
//! No Talos node can run here: the nodes are the protocol-level stand-ins
//! of `lifeboat_tests::talos`, which answer only once the rebuild has
//! started their VM (the test powers a stand-in on when the rebuild's state
//! file says the VM was started), serve the maintenance API until a config
//! is applied, and keep the bytes `EtcdRecover` uploads.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use lifeboat_tests::cli::{self, Installation, Outcome};
use lifeboat_tests::talos::{Role, TalosApiServer, TalosPki, real_etcd_snapshot};
use serde_json::Value;

/// The steps recorded in the rebuild's state file so far.
fn recorded(work: &Path) -> Vec<Value> {
    std::fs::read(work.join("rebuild-state.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .and_then(|state| state["steps"].as_array().cloned())
        .unwrap_or_default()
}

/// Runs `lifeboat rebuild args…`, powering each stand-in node on once the
/// state file records its VM started.
async fn rebuild(
    install: &Installation,
    args: &[&str],
    work: &Path,
    nodes: &[(&str, &TalosApiServer)],
) -> Result<Outcome> {
    let mut command = install.command("lifeboat")?;
    command.arg("rebuild").args(args);
    let mut running = cli::spawn(&mut command)?;
    while running.is_running()? {
        for step in recorded(work) {
            for (name, node) in nodes {
                if step["id"] == format!("start:{name}") && step["status"] == "done" {
                    node.power_on();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.wait()
}

fn count(node: &TalosApiServer, rpc: &str) -> usize {
    node.calls().iter().filter(|c| c.rpc == rpc).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilds_on_the_libvirt_test_driver_and_resumes_at_the_failed_step() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let snapshot = real_etcd_snapshot(dir.path(), 500).await?;
    let backed_up = std::fs::read(&snapshot)?;

    // The running cluster, backed up: its etcd through the Talos API, its
    // Talos files from the folder Terraform writes.
    let running = TalosApiServer::start(&snapshot).await?;
    let install = Installation::local()?;
    let live = install.path("live-talosconfig");
    std::fs::write(&live, running.talosconfig(Role::Admin, &[])?)?;
    let pki = TalosPki::generate()?;
    let cp = TalosApiServer::start_fresh(&pki, &snapshot, true).await?;
    let worker = TalosApiServer::start_fresh(&pki, &snapshot, false).await?;
    let talos = install.path("talos");
    std::fs::create_dir_all(&talos)?;
    std::fs::write(talos.join("talosconfig"), cp.talosconfig(Role::Admin, &[])?)?;
    let cp_config = "version: v1alpha1\nmachine:\n  type: controlplane\n  token: abc\n";
    let worker_config = "version: v1alpha1\nmachine:\n  type: worker\n  token: abc\n";
    std::fs::write(talos.join("controlplane.yaml"), cp_config)?;
    std::fs::write(talos.join("worker.yaml"), worker_config)?;
    let talos_source = format!(
        "{{ kind = \"talos-config\", dir = {:?} }}",
        talos.display().to_string()
    );
    let etcd_source = format!(
        "{{ kind = \"talos-etcd\", talosconfig = {:?} }}",
        live.display().to_string()
    );
    install.write_config(
        &[],
        &[("talos-config", &talos_source), ("etcd", &etcd_source)],
    )?;
    install.backup("talos-config")?;
    install.backup("etcd")?;

    let work = dir.path().join("work");
    let spec = dir.path().join("cluster.toml");
    let pin = hex_sha256(&pki.server_cert_der);
    std::fs::write(
        &spec,
        format!(
            "[libvirt]\nuri = \"test:///default\"\ndisk_dir = {disks:?}\niso = \"/isos/metal-amd64.iso\"\n\
             [backups]\nrepository = {repo:?}\nidentity = {key:?}\n\
             [talos]\nmaintenance_pin = {pin:?}\nwait = \"60s\"\n\
             [[node]]\nname = \"cp1\"\nrole = \"controlplane\"\nmac = \"52:54:00:6c:00:01\"\nmaintenance_address = {cp:?}\nendpoint = {cp:?}\n\
             [[node]]\nname = \"w1\"\nrole = \"worker\"\nmac = \"52:54:00:6c:00:02\"\nmaintenance_address = {w:?}\nendpoint = {w:?}\n",
            disks = dir.path().join("domains").display().to_string(),
            repo = install.url(),
            key = install.restore_key().display().to_string(),
            cp = cp.endpoint(),
            w = worker.endpoint(),
        ),
    )?;
    let spec_arg = spec.display().to_string();
    let work_arg = work.display().to_string();
    let args = ["--spec", spec_arg.as_str(), "--work", work_arg.as_str()];
    let nodes = [("cp1", &cp), ("w1", &worker)];

    // The plan names every step with the domain XML, and changes nothing.
    let plan = install
        .lifeboat(&["rebuild", "--spec", spec_arg.as_str(), "--plan"])?
        .ok()?;
    for part in [
        "define:cp1",
        "machine='q35'",
        "host-passthrough",
        "EtcdRecover",
        "bootstrap:cp1",
    ] {
        ensure!(
            plan.stdout.contains(part),
            "the plan lacks {part}:\n{}",
            plan.stdout
        );
    }
    ensure!(
        !work.exists() && cp.calls().is_empty(),
        "--plan changed something"
    );

    // A node that fails Bootstrap once: the run stops at that step.
    cp.refuse_once("Bootstrap");
    let failed = rebuild(&install, &args, &work, &nodes).await?.failed()?;
    ensure!(
        failed.stderr.contains("step bootstrap:cp1 failed") && failed.stderr.contains("--resume"),
        "{}",
        failed.output()
    );
    ensure!(count(&cp, "ApplyConfiguration") == 1 && count(&worker, "ApplyConfiguration") == 1);
    ensure!(count(&cp, "EtcdRecover") == 1);

    // Resumed, it finishes without redoing the steps before it.
    let mut resume = args.to_vec();
    resume.push("--resume");
    let done = rebuild(&install, &resume, &work, &nodes).await?.ok()?;
    ensure!(
        done.stdout.contains("total (measured RTO)"),
        "{}",
        done.output()
    );
    ensure!(count(&cp, "ApplyConfiguration") == 1 && count(&worker, "ApplyConfiguration") == 1);
    ensure!(
        count(&cp, "EtcdRecover") == 1,
        "the snapshot was uploaded again"
    );
    ensure!(count(&cp, "Bootstrap") == 2);
    ensure!(cp.bootstrapped() == Some((true, false)));
    ensure!(cp.applied_configs() == [cp_config.as_bytes().to_vec()]);
    ensure!(worker.applied_configs() == [worker_config.as_bytes().to_vec()]);
    let uploaded = cp.recovered().context("nothing was uploaded")?;
    ensure!(
        uploaded == backed_up,
        "the uploaded etcd snapshot differs from the backed-up one"
    );

    let report: Value = serde_json::from_slice(&std::fs::read(work.join("rebuild-report.json"))?)?;
    let steps = report["steps"].as_array().context("steps")?;
    ensure!(steps.len() == 16, "{report:#}");
    for step in &steps[..15] {
        ensure!(step["status"] == "done-earlier", "{step}");
    }
    ensure!(steps[15]["id"] == "bootstrap:cp1" && steps[15]["status"] == "done");
    ensure!(report["total_seconds"].as_f64().is_some_and(|t| t > 0.0));
    Ok(())
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}
