//! Volume movers against the in-process volumes path: the same claims
//! (hostPath volumes of seeded, incompressible data on one node), backed up
//! into a fresh local repository by `lifeboatd run volumes`, once read by
//! lifeboatd itself and once through one mover Job per claim run by the
//! Kubernetes test server as local processes (the real `lifeboatd mover`).
//! Each path then backs the unchanged claims up again, where the file
//! caches (lifeboatd's own, the movers' in the repository) spare reading.
//! Reports the median wall time, lifeboatd's peak RSS and the largest
//! mover's peak RSS of both backups, alternating the two paths in each
//! repetition.
//!
//!     cargo bench -p lifeboat-tests --bench movers
//!     LIFEBOAT_BENCH_CLAIMS=4 LIFEBOAT_BENCH_MIB=16 LIFEBOAT_BENCH_REPS=1 cargo bench -p lifeboat-tests --bench movers
//!
//! Needs `/usr/bin/time`. The movers' figures include what no cluster
//! avoids: each mover opens the repository and loads its index.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use lifeboat_tests::cli::{self, Installation, Rng, write_file};
use lifeboat_tests::kubernetes::KubeApiServer;
use serde_json::{Value, json};

/// The node every volume is on.
const NODE: &str = "bench-node";

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The cluster's objects: `claims` hostPath claims under `data`.
fn objects(data: &Path, claims: usize) -> Vec<Value> {
    let mut objects =
        vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}})];
    for i in 0..claims {
        let path = data.join(format!("pv-{i}")).display().to_string();
        objects.push(json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": format!("pv-{i}")},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                "storageClassName": "openebs-hostpath", "hostPath": {"path": path},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions":
                    [{"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE]}]}]}}}}));
        objects.push(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": format!("data-{i}"), "namespace": "apps"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "openebs-hostpath",
                "volumeName": format!("pv-{i}"), "resources": {"requests": {"storage": "1Gi"}}},
            "status": {"phase": "Bound"}}));
    }
    objects
}

/// Fills each claim's folder with `mib` MiB in 1–4 MiB files.
fn fill(data: &Path, claims: usize, mib: usize) -> Result<()> {
    let mut rng = Rng::new(7);
    for i in 0..claims {
        let mut left = mib << 20;
        let mut n = 0;
        while left > 0 {
            let size = left.min((1 + n % 4) << 20);
            write_file(&data.join(format!("pv-{i}/file-{n}")), &rng.bytes(size))?;
            left -= size;
            n += 1;
        }
    }
    Ok(())
}

/// A folder whose `lifeboatd` records each run's peak RSS (KiB) in
/// `rss/` and then is the real one.
fn measuring_bin_dir(root: &Path) -> Result<PathBuf> {
    let dir = root.join("image-bin");
    std::fs::create_dir_all(dir.join("rss"))?;
    let script = format!(
        "#!/bin/sh\nexec /usr/bin/time -f %M -o \"{}/rss/$$\" \"{}\" \"$@\"\n",
        dir.display(),
        cli::binary("lifeboatd")?.display()
    );
    let wrapper = dir.join("lifeboatd");
    std::fs::write(&wrapper, script)?;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

/// One backup's figures: seconds, lifeboatd's peak RSS, the largest
/// mover's peak RSS (KiB).
struct Figures {
    seconds: f64,
    rss_kib: u64,
    mover_rss_kib: Option<u64>,
    bytes_read: u64,
}

/// Backs the claims up twice into a new repository, `movers` or not, and
/// returns the figures of the first backup and of the no-change second.
async fn back_up(data: &Path, claims: usize, movers: bool) -> Result<[Figures; 2]> {
    let server = KubeApiServer::start(objects(data, claims)).await?;
    let installation = Installation::local()?;
    let bin = measuring_bin_dir(installation.root())?;
    server.run_jobs(&bin, &installation.path("kubelet"));
    server.write_kubeconfig(&installation.path("kubeconfig"))?;
    let source = if movers {
        r#"{ kind = "volumes", kubeconfig = "kubeconfig", movers = { image = "bench", concurrency = 2, per_node = 2 } }"#
            .to_owned()
    } else {
        format!(r#"{{ kind = "volumes", kubeconfig = "kubeconfig", node = "{NODE}" }}"#)
    };
    installation.write_config(&[], &[("volumes", &source)])?;
    let first = run_once(&installation, &bin, claims, movers)?;
    let second = run_once(&installation, &bin, claims, movers)?;
    // What a no-change run reads is the manifest it writes itself.
    ensure!(
        second.bytes_read < 64 * 1024,
        "the no-change backup read {} bytes of the claims",
        second.bytes_read
    );
    Ok([first, second])
}

/// One `lifeboatd run volumes`, timed.
fn run_once(
    installation: &Installation,
    bin: &Path,
    claims: usize,
    movers: bool,
) -> Result<Figures> {
    let rss_dir = bin.join("rss");
    if rss_dir.exists() {
        std::fs::remove_dir_all(&rss_dir)?;
        std::fs::create_dir_all(&rss_dir)?;
    }
    let lifeboatd = installation.command("lifeboatd")?;
    let time_file = installation.path("time.txt");
    let mut command = Command::new("/usr/bin/time");
    command
        .args(["-f", "%e %M", "-o"])
        .arg(&time_file)
        .arg(lifeboatd.get_program())
        .args(["run", "--config"])
        .arg(installation.config())
        .args(["volumes", "--json"])
        .current_dir(installation.root());
    let outcome = tokio::task::block_in_place(|| cli::run(&mut command))?.ok()?;
    let report = outcome.json()?;
    let stored = report["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["outcome"] == "stored")
        .count();
    ensure!(
        stored == claims,
        "{stored} of {claims} claims stored: {report:#}"
    );
    let text = std::fs::read_to_string(&time_file)?;
    let mut fields = text.split_whitespace();
    let seconds = fields
        .next()
        .and_then(|s| s.parse().ok())
        .context("no time")?;
    let rss_kib = fields
        .next()
        .and_then(|s| s.parse().ok())
        .context("no RSS")?;
    let mover_rss_kib = std::fs::read_dir(&rss_dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| t.trim().parse::<u64>().ok())
        .max();
    ensure!(
        movers == mover_rss_kib.is_some(),
        "movers ran: {}",
        mover_rss_kib.is_some()
    );
    let bytes_read = report["summary"]["bytes_read"]
        .as_u64()
        .context("no bytes_read in the report")?;
    Ok(Figures {
        seconds,
        rss_kib,
        mover_rss_kib,
        bytes_read,
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let claims = setting("LIFEBOAT_BENCH_CLAIMS", 8);
    let mib = setting("LIFEBOAT_BENCH_MIB", 64);
    let reps = setting("LIFEBOAT_BENCH_REPS", 3);
    let data = tempfile::tempdir()?;
    fill(data.path(), claims, mib)?;
    println!(
        "{claims} claims of {mib} MiB, {reps} repetition(s): a first backup into a new local repository, then a no-change one"
    );
    // [path][backup]: path 0 in-process, 1 movers; backup 0 first, 1 no-change.
    let mut figures: [[Vec<Figures>; 2]; 2] = Default::default();
    for rep in 0..reps {
        for movers in [rep % 2 == 1, rep % 2 == 0] {
            let [first, second] = back_up(data.path(), claims, movers).await?;
            for (backup, f) in [("first", &first), ("no-change", &second)] {
                println!(
                    "  rep {rep} {:>10} {backup:>9}: {:.2} s, lifeboatd {} MiB{}",
                    if movers { "movers" } else { "in-process" },
                    f.seconds,
                    f.rss_kib / 1024,
                    f.mover_rss_kib
                        .map(|k| format!(", largest mover {} MiB", k / 1024))
                        .unwrap_or_default()
                );
            }
            let path = &mut figures[usize::from(movers)];
            path[0].push(first);
            path[1].push(second);
        }
    }
    let summary = |figures: &[Figures]| {
        let mut seconds: Vec<f64> = figures.iter().map(|f| f.seconds).collect();
        let mut rss: Vec<f64> = figures.iter().map(|f| f.rss_kib as f64 / 1024.0).collect();
        let mut mover: Vec<f64> = figures
            .iter()
            .filter_map(|f| f.mover_rss_kib.map(|k| k as f64 / 1024.0))
            .collect();
        (median(&mut seconds), median(&mut rss), median(&mut mover))
    };
    let total = (claims * mib) as f64;
    for (backup, name) in ["first", "no-change"].iter().enumerate() {
        let (a_s, a_rss, _) = summary(&figures[0][backup]);
        let (b_s, b_rss, b_mover) = summary(&figures[1][backup]);
        println!(
            "median {name:>9}  in-process: {a_s:.2} s ({:.0} MiB/s), lifeboatd {a_rss:.0} MiB",
            total / a_s
        );
        println!(
            "median {name:>9}      movers: {b_s:.2} s ({:.0} MiB/s), lifeboatd {b_rss:.0} MiB, largest mover {b_mover:.0} MiB",
            total / b_s
        );
        println!("{name} backup, movers / in-process time: {:.2}×", b_s / a_s);
    }
    Ok(())
}
