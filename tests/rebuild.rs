//! `lifeboat rebuild` end to end: the real `lifeboatd` backs up the Talos
//! files, etcd, volume data and a PostgreSQL server; then the real
//! `lifeboat rebuild` defines and starts the VMs on libvirt's real test
//! driver (`test:///default`), brings the nodes up through the Talos API,
//! waits for the Kubernetes API, puts the volume data back by restore Jobs
//! and restores the databases into the real PostgreSQL server.
//!
//! No Talos node and no Kubernetes API server can run here: the nodes are
//! the protocol-level stand-ins of `lifeboat_tests::talos`, which answer
//! only once the rebuild has started their VM (the test powers a stand-in
//! on when the rebuild's state file says the VM was started), serve the
//! maintenance API until a config is applied, keep the bytes `EtcdRecover`
//! uploads and hand out the kubeconfig of the Kubernetes test API server,
//! which runs each restore Job's container as a local process (the real
//! `lifeboat` binary) with its host paths and Secret.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use lifeboat_tests::cli::{self, Installation, Outcome, assert_same_tree, describe, write_file};
use lifeboat_tests::kubernetes::fixtures;
use lifeboat_tests::postgres::PostgresServer;
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

/// Runs `lifeboat rebuild args…` with `env`, powering each stand-in node on once the
/// state file records its VM started.
async fn rebuild(
    install: &Installation,
    args: &[&str],
    work: &Path,
    nodes: &[(&str, &TalosApiServer)],
    env: &[(&str, &str)],
) -> Result<Outcome> {
    let mut command = install.command("lifeboat")?;
    command.arg("rebuild").args(args).envs(env.iter().copied());
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

    // The running cluster: etcd behind the Talos API, the Kubernetes API
    // with local volumes on talos-worker-1, a PostgreSQL server.
    let running = TalosApiServer::start(&snapshot).await?;
    let volumes = dir.path().join("volumes");
    let (cluster, kube, install) = fixtures::installation(&volumes, &[]).await?;
    let postgres = PostgresServer::start().await?;
    postgres.psql("postgres", "CREATE DATABASE shop")?;
    postgres.psql(
        "shop",
        "CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items SELECT generate_series(1, 321)",
    )?;
    let rows = postgres.row_counts("shop")?;
    std::fs::write(install.path("pg.pass"), postgres.superuser_password())?;

    // Backed up: etcd through the Talos API, the Talos files from the
    // folder Terraform writes, the volumes, the database.
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
    let text = |path: &Path| path.display().to_string();
    let talos_source = format!("{{ kind = \"talos-config\", dir = {:?} }}", text(&talos));
    let etcd_source = format!(
        "{{ kind = \"talos-etcd\", talosconfig = {:?} }}",
        text(&live)
    );
    let volumes_source = format!(
        "{{ kind = \"volumes\", kubeconfig = \"kubeconfig\", node = {:?} }}",
        fixtures::NODE
    );
    // The NFS claim apps/media is read by a mover (its CSI volume's folder
    // registered with the server, which runs the mover Jobs).
    let media = dir.path().join("nfs/media");
    write_file(&media.join("films/list.txt"), b"one\ntwo\n")?;
    write_file(&media.join("photos/2026/a.jpg"), &[7u8; 50_000])?;
    kube.set_csi_folder("unraid.tailnet.ts.net#mnt/user/k8s#media", &media);
    kube.run_jobs(cli::binaries()?, &dir.path().join("kubelet"));
    let claims_source = "{ kind = \"volumes\", kubeconfig = \"kubeconfig\", storage_classes = [\"nfs\"], \
         movers = { image = \"ghcr.io/example/lifeboat:test\", timeout = \"1m\" } }";
    let postgres_source = format!(
        "{{ kind = \"postgres\", dsn = {:?}, databases = [\"shop\"], password_file = \"pg.pass\", pg_dump = {:?} }}",
        postgres.superuser_dsn("postgres"),
        text(&postgres.bin("pg_dump")),
    );
    install.write_config(
        &[],
        &[
            ("talos-config", &talos_source),
            ("etcd", &etcd_source),
            ("volumes", &volumes_source),
            ("claims", claims_source),
            ("databases", &postgres_source),
        ],
    )?;
    for job in ["talos-config", "etcd", "volumes", "claims", "databases"] {
        install.backup(job)?;
    }

    // The disaster: the volume data and the database are gone.
    let originals = [
        (
            cluster.postgres_volume.clone(),
            describe(&cluster.postgres_volume)?,
        ),
        (
            cluster.grafana_volume.clone(),
            describe(&cluster.grafana_volume)?,
        ),
    ];
    for (path, _) in &originals {
        std::fs::remove_dir_all(path)?;
    }
    let media_before = describe(&media)?;
    std::fs::remove_dir_all(&media)?;
    std::fs::create_dir_all(&media)?;
    postgres.psql("postgres", "DROP DATABASE shop")?;

    // The rebuilt control plane hands out the kubeconfig of the API server,
    // which runs restore Jobs with the real lifeboat and is not ready at
    // first.
    let kubeconfig = install.path("kubeconfig");
    cp.set_kubeconfig(&std::fs::read_to_string(&kubeconfig)?);
    kube.set_unready(3);
    let backup_writes = kube.writes().len();
    let backup_runs = kube.job_runs().len();
    // Grafana's pod runs under a Deployment's ReplicaSet; Postgres' under
    // its StatefulSet. Both come back with etcd and must be stopped while
    // their volumes are restored.
    kube.load(
        serde_json::json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "grafana-5c6d7", "namespace": "monitoring",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "grafana",
                "uid": "00000000-0000-4000-8000-0000000000ad", "controller": true}]},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "grafana"}},
            "template": {"metadata": {"labels": {"app": "grafana"}}, "spec": {"containers": []}}}}),
    )?;
    kube.edit("", "pods", "monitoring", "grafana-5c6d7-abcde", |pod| {
        pod["metadata"]["ownerReferences"] = serde_json::json!([{"apiVersion": "apps/v1",
            "kind": "ReplicaSet", "name": "grafana-5c6d7",
            "uid": "00000000-0000-4000-8000-0000000000ae", "controller": true}]);
    })?;

    // Per-node patches, as the user's Terraform gives them: the worker a
    // hostname, a Tailscale extension and a disk for Mayastor (strategic
    // merge), the control plane a JSON patch.
    let worker_patch = dir.path().join("patch-w1.yaml");
    std::fs::write(
        &worker_patch,
        "machine:\n  network: {hostname: w1}\n  install:\n    extensions: [{image: ghcr.io/siderolabs/tailscale:1.80.0}]\n\
         ---\napiVersion: v1alpha1\nkind: UserVolumeConfig\nname: mayastor\nprovisioning: {diskSelector: {match: disk.dev_path == '/dev/vdb'}, minSize: 100GiB}\n",
    )?;
    let cp_patch = dir.path().join("patch-cp1.json");
    std::fs::write(
        &cp_patch,
        r#"[{"op": "add", "path": "/machine/network", "value": {"hostname": "cp1"}}]"#,
    )?;
    let work = dir.path().join("work");
    let spec = dir.path().join("cluster.toml");
    let pin = hex_sha256(&pki.server_cert_der);
    std::fs::write(
        &spec,
        format!(
            "[libvirt]\nuri = \"test:///default\"\ndisk_dir = {disks:?}\niso = \"/isos/metal-amd64.iso\"\n\
             [backups]\nrepository = {repo:?}\nidentity = {key:?}\n\
             [talos]\nmaintenance_pin = {pin:?}\nwait = \"60s\"\n\
             [data]\nvolumes = [\"latest:volumes\", \"latest:claims\"]\nimage = \"ghcr.io/example/lifeboat:test\"\nwait = \"60s\"\n\
             [[data.postgres]]\nsnapshot = \"latest:databases\"\nurl = {pg:?}\npg_bin = {pg_bin:?}\n\
             [[node]]\nname = \"cp1\"\nrole = \"controlplane\"\nmac = \"52:54:00:6c:00:01\"\nmaintenance_address = {cp:?}\nendpoint = {cp:?}\npatches = [{cp_patch:?}]\n\
             [[node]]\nname = \"w1\"\nrole = \"worker\"\nmac = \"52:54:00:6c:00:02\"\nmaintenance_address = {w:?}\nendpoint = {w:?}\npatches = [{w_patch:?}]\n",
            disks = text(&dir.path().join("domains")),
            repo = install.url(),
            key = text(&install.restore_key()),
            pg = postgres.superuser_dsn("postgres"),
            pg_bin = text(postgres.bin_dir()),
            cp = cp.endpoint(),
            w = worker.endpoint(),
            cp_patch = text(&cp_patch),
            w_patch = text(&worker_patch),
        ),
    )?;
    let spec_arg = text(&spec);
    let work_arg = text(&work);
    let args = ["--spec", spec_arg.as_str(), "--work", work_arg.as_str()];
    let nodes = [("cp1", &cp), ("w1", &worker)];
    let env = [("PGPASSWORD", postgres.superuser_password())];

    // The plan names every step with the domain XML and the Job, and
    // changes nothing.
    let plan = install
        .lifeboat(&["rebuild", "--spec", spec_arg.as_str(), "--plan"])?
        .ok()?;
    for part in [
        "define:cp1",
        "machine='q35'",
        "host-passthrough",
        "EtcdRecover",
        "bootstrap:cp1",
        "machine.MachineService/Kubeconfig",
        "GET /readyz",
        "kind: Job",
        "--in-place",
        "spec.replicas = 0",
        "postgres:latest:databases",
        "patched with",
        "is shown here once a run has fetched",
    ] {
        ensure!(
            plan.stdout.contains(part),
            "the plan lacks {part}:\n{}",
            plan.stdout
        );
    }
    ensure!(
        !work.exists() && cp.calls().is_empty() && kube.writes().len() == backup_writes,
        "--plan changed something"
    );

    // A node that fails Bootstrap once: the run stops at that step.
    cp.refuse_once("Bootstrap");
    let failed = rebuild(&install, &args, &work, &nodes, &env)
        .await?
        .failed()?;
    ensure!(
        failed.stderr.contains("step bootstrap:cp1 failed") && failed.stderr.contains("--resume"),
        "{}",
        failed.output()
    );
    ensure!(count(&cp, "ApplyConfiguration") == 1 && count(&worker, "ApplyConfiguration") == 1);
    ensure!(count(&cp, "EtcdRecover") == 1);

    // Resumed while restore Jobs fail: it stops at the volumes, naming the
    // Job, with etcd bootstrapped and the kubeconfig fetched.
    let mut resume = args.to_vec();
    resume.push("--resume");
    kube.set_fail_jobs(true);
    let failed = rebuild(&install, &resume, &work, &nodes, &env)
        .await?
        .failed()?;
    ensure!(
        failed.stderr.contains("step volumes:latest:volumes failed")
            && failed.stderr.contains("lifeboat-restore-")
            && failed.stderr.contains(fixtures::NODE),
        "{}",
        failed.output()
    );
    ensure!(count(&cp, "Bootstrap") == 2 && count(&cp, "Kubeconfig") == 1);
    ensure!(
        kube.object("", "pods", "databases", "postgres-0").is_none()
            && kube
                .object("", "pods", "monitoring", "grafana-5c6d7-abcde")
                .is_none(),
        "the workloads using the volumes were not stopped"
    );
    let private = std::fs::metadata(work.join("kubeconfig"))?.permissions();
    ensure!(std::os::unix::fs::PermissionsExt::mode(&private) & 0o077 == 0);

    // Resumed again, it finishes without redoing the steps before it: the
    // failed Job is made again and puts the data back.
    kube.set_fail_jobs(false);
    let done = rebuild(&install, &resume, &work, &nodes, &env)
        .await?
        .ok()?;
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
    ensure!(count(&cp, "Bootstrap") == 2 && count(&cp, "Kubeconfig") == 1);
    ensure!(cp.bootstrapped() == Some((true, false)));
    // Each node received the snapshot's config of its role with its own
    // patches applied, and nothing else changed in it.
    let received = |node: &TalosApiServer| -> Result<Vec<Value>> {
        let applied = node.applied_configs();
        ensure!(applied.len() == 1, "one config applied: {}", applied.len());
        serde_yaml_ng::Deserializer::from_slice(&applied[0])
            .map(|d| Ok(serde::Deserialize::deserialize(d)?))
            .collect()
    };
    let cp_received = received(&cp)?;
    ensure!(
        cp_received
            == [serde_json::json!({"version": "v1alpha1",
                "machine": {"type": "controlplane", "token": "abc", "network": {"hostname": "cp1"}}})],
        "{cp_received:#?}"
    );
    let worker_received = received(&worker)?;
    ensure!(
        worker_received.len() == 2
            && worker_received[0]["machine"]["type"] == "worker"
            && worker_received[0]["machine"]["token"] == "abc"
            && worker_received[0]["machine"]["network"]["hostname"] == "w1"
            && worker_received[0]["machine"]["install"]["extensions"][0]["image"]
                == "ghcr.io/siderolabs/tailscale:1.80.0"
            && worker_received[1]["kind"] == "UserVolumeConfig"
            && worker_received[1]["name"] == "mayastor",
        "{worker_received:#?}"
    );
    // With the backups fetched, the plan shows each node's effective
    // config, the token redacted.
    let replan = install
        .lifeboat(&[
            "rebuild",
            "--spec",
            spec_arg.as_str(),
            "--work",
            work_arg.as_str(),
            "--plan",
        ])?
        .ok()?;
    ensure!(
        replan.stdout.contains("--- effective machine config of w1")
            && replan.stdout.contains("hostname: w1")
            && replan.stdout.contains("UserVolumeConfig")
            && replan.stdout.contains("<redacted>")
            && !replan.stdout.contains("abc"),
        "{}",
        replan.stdout
    );
    let uploaded = cp.recovered().context("nothing was uploaded")?;
    ensure!(
        uploaded == backed_up,
        "the uploaded etcd snapshot differs from the backed-up one"
    );

    // One Job on the volumes' node, host paths mounted read-write, ran the
    // real restore; the data equals the original; the Secret is gone.
    let runs = kube.job_runs()[backup_runs..].to_vec();
    ensure!(runs.len() == 2, "{runs:#?}");
    let run = runs
        .iter()
        .find(|r| r.namespace == "lifeboat")
        .context("the host folders' Job")?;
    ensure!(run.exit_code == Some(0), "{}", run.output);
    ensure!(run.node.as_deref() == Some(fixtures::NODE), "{run:#?}");
    ensure!(run.image == "ghcr.io/example/lifeboat:test");
    ensure!(
        run.command[..2] == ["lifeboat", "restore"] && run.command.contains(&"--in-place".into())
    );
    for (path, before) in &originals {
        ensure!(
            run.host_paths.contains(&(text(path), false)),
            "{} is not mounted: {run:#?}",
            path.display()
        );
        assert_same_tree(before, &describe(path)?)?;
    }
    // The mover's claim came back through a restore Job in its namespace
    // that mounted the claim itself.
    let claim_run = runs
        .iter()
        .find(|r| r.namespace == "apps")
        .context("the claim's restore Job")?;
    ensure!(
        claim_run.exit_code == Some(0)
            && claim_run.claims == [("apps/media".to_owned(), false)]
            && claim_run.host_paths.is_empty(),
        "{claim_run:#?}"
    );
    assert_same_tree(&media_before, &describe(&media)?)?;
    let deleted = kube.writes().into_iter().any(|w| {
        w.verb == "delete" && w.resource == "secrets" && w.name == "lifeboat-rebuild-restore"
    });
    ensure!(deleted, "the restore Secret was not deleted");
    ensure!(
        kube.object("", "secrets", "lifeboat", "lifeboat-rebuild-restore")
            .is_none()
    );
    // The workloads were scaled to zero before the first Job and back to
    // their replicas after the data was restored.
    let writes = kube.writes();
    let position = |verb: &str, resource: &str, name: &str| {
        writes
            .iter()
            .position(|w| w.verb == verb && w.resource == resource && w.name.starts_with(name))
    };
    let stopped = position("patch", "statefulsets", "postgres").context("postgres not stopped")?;
    let first_job = position("create", "jobs", "lifeboat-restore-").context("no Job")?;
    ensure!(
        stopped < first_job,
        "the Job ran before postgres was stopped"
    );
    ensure!(position("patch", "deployments", "grafana").is_some_and(|p| p < first_job));
    // Argo CD manages grafana (its tracking annotation): the Application
    // stops syncing before grafana is scaled down and syncs again after it
    // is scaled back.
    let app_patches: Vec<usize> = (0..writes.len())
        .filter(|&i| writes[i].verb == "patch" && writes[i].resource == "applications")
        .collect();
    let scaled: Vec<usize> = (0..writes.len())
        .filter(|&i| writes[i].verb == "patch" && writes[i].resource == "deployments")
        .collect();
    ensure!(
        app_patches.len() == 2
            && scaled.len() == 2
            && app_patches[0] < scaled[0]
            && app_patches[1] > scaled[1],
        "the Application is suspended around the restore: {writes:#?}"
    );
    let app = kube
        .object("argoproj.io", "applications", "argocd", "grafana")
        .context("the Application")?;
    ensure!(
        app["spec"]["syncPolicy"]["automated"]["selfHeal"] == true
            && app["metadata"]["annotations"]["lifeboat.dev/suspended-from"].is_null(),
        "the Application syncs automatically again: {app:#}"
    );
    for (resource, namespace, name) in [
        ("statefulsets", "databases", "postgres"),
        ("deployments", "monitoring", "grafana"),
    ] {
        let workload = kube
            .object("apps", resource, namespace, name)
            .context("workload")?;
        ensure!(
            workload["spec"]["replicas"] == 1,
            "{name} was not scaled back: {workload:#}"
        );
    }
    ensure!(!work.join("stopped-workloads.json").exists());
    let namespace = kube
        .object("", "namespaces", "", "lifeboat")
        .context("the Jobs' namespace")?;
    ensure!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged",
        "{namespace:#}"
    );
    ensure!(
        postgres.row_counts("shop")? == rows,
        "the database was not restored"
    );

    let report: Value = serde_json::from_slice(&std::fs::read(work.join("rebuild-report.json"))?)?;
    let steps = report["steps"].as_array().context("steps")?;
    let ids: Vec<&str> = steps.iter().filter_map(|s| s["id"].as_str()).collect();
    ensure!(
        ids[15..]
            == [
                "bootstrap:cp1",
                "kubeconfig",
                "kubernetes-api",
                "stop-workloads",
                "volumes:latest:volumes",
                "volumes:latest:claims",
                "remove-restore-secret",
                "start-workloads",
                "postgres:latest:databases"
            ],
        "{report:#}"
    );
    for step in &steps[..19] {
        ensure!(step["status"] == "done-earlier", "{step}");
    }
    for step in &steps[19..] {
        ensure!(step["status"] == "done", "{step}");
    }
    ensure!(report["total_seconds"].as_f64().is_some_and(|t| t > 0.0));
    Ok(())
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}
