//! `lifeboat rebuild`: the Talos cluster rebuilt from its backups in one
//! resumable, timed command — VMs through libvirt, machine configs and
//! etcd through the Talos API, volume data through Kubernetes Jobs,
//! databases with pg_restore.
//!
//! - [`spec`]: the cluster spec (TOML);
//! - [`domain`]: the libvirt XML of a node's VM and disk;
//! - [`hypervisor`]: libvirt calls on one connection;
//! - [`steps`]: the steps, described (`--plan`) and done;
//! - [`data`]: volume data back on the nodes by restore Jobs;
//! - [`workloads`]: the workloads using those volumes stopped meanwhile;
//! - [`progress`]: the state file for `--resume` and the timed report.

mod data;
mod domain;
mod hypervisor;
mod progress;
mod spec;
mod steps;
mod workloads;

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use self::progress::{Progress, Status, StepRecord};
use self::spec::ClusterSpec;
use self::steps::Runner;
use crate::args::{KeyArgs, RepoArgs};

/// How often a rebuild's waits (for a node, etcd, the Kubernetes API, a
/// Job, pods) ask again.
const POLL: Duration = Duration::from_millis(500);

/// Flags of `lifeboat rebuild`.
#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// The cluster spec (see deploy/rebuild/cluster.example.toml).
    #[arg(long)]
    spec: PathBuf,
    /// Print every step with its domain XML and API calls; change nothing.
    #[arg(long)]
    plan: bool,
    /// Continue an earlier run at its failed step.
    #[arg(long, conflicts_with = "plan")]
    resume: bool,
    /// Destroy and recreate existing VMs and disks of the nodes.
    #[arg(long)]
    replace: bool,
    /// The work folder: fetched backups (secrets: kept 0700), state and
    /// report.
    #[arg(long, default_value = "lifeboat-rebuild")]
    work: PathBuf,
    /// Repository URL (else [backups] repository in the spec).
    #[arg(long, short = 'r', env = "LIFEBOAT_REPOSITORY")]
    repo: Option<String>,
    /// The restore key (else [backups] identity in the spec).
    #[arg(long, short = 'i', env = "LIFEBOAT_IDENTITY")]
    identity: Option<PathBuf>,
}

/// Runs `lifeboat rebuild`.
pub async fn run(args: RebuildArgs) -> anyhow::Result<()> {
    let spec = ClusterSpec::load(&args.spec)?;
    let steps = steps::all(&spec);
    if args.plan {
        let mut plan = String::new();
        for (n, step) in steps.iter().enumerate() {
            let description = step.describe(&spec).replace('\n', "\n    ");
            plan.push_str(&format!(
                "{:>2}. {}\n    {description}\n\n",
                n + 1,
                step.id(&spec)
            ));
        }
        std::io::stdout().lock().write_all(plan.as_bytes())?;
        return Ok(());
    }
    std::fs::create_dir_all(&args.work)
        .with_context(|| format!("creating the work folder {}", args.work.display()))?;
    restrict(&args.work)?;
    let mut progress = if args.resume {
        Progress::resume(&args.work)?
    } else {
        Progress::default()
    };
    let repo = RepoArgs {
        repo: args
            .repo
            .clone()
            .or_else(|| spec.backups.repository.clone()),
        config: None,
        s3_endpoint: spec.backups.s3_endpoint.clone(),
        s3_region: None,
        s3_path_style: spec.backups.s3_path_style,
    };
    let key = args
        .identity
        .clone()
        .or_else(|| spec.backups.identity.clone())
        .map(|identity| KeyArgs {
            identity,
            max_tree_entries: lifeboat::repo::reader::MAX_TREE_ENTRIES,
        });
    let mut runner = Runner::new(spec.clone(), args.work.clone(), args.replace, repo, key);
    for step in steps {
        let id = step.id(&spec);
        if progress.is_done(&id) {
            continue;
        }
        eprintln!("lifeboat rebuild: {id} …");
        let started = Instant::now();
        let result = runner.run(step).await;
        let seconds = started.elapsed().as_secs_f64();
        let (status, detail) = match &result {
            Ok(detail) => (Status::Done, detail.clone()),
            Err(e) => (Status::Failed, format!("{e:#}")),
        };
        eprintln!("lifeboat rebuild: {id}: {detail} ({seconds:.1} s)");
        progress.record(
            &args.work,
            StepRecord {
                id: id.clone(),
                status,
                seconds,
                detail,
            },
        )?;
        if let Err(e) = result {
            crate::out!("{}", progress.table())?;
            progress.write(&Progress::report_path(&args.work))?;
            return Err(e.context(format!(
                "step {id} failed; fix the cause, then run the same command with --resume to continue at this step"
            )));
        }
    }
    crate::out!("{}", progress.table())?;
    let report = Progress::report_path(&args.work);
    progress.write(&report)?;
    crate::outln!("report: {}", report.display())?;
    Ok(())
}

/// Keeps the work folder (it holds the cluster's secrets) to its owner.
fn restrict(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {} to its owner", dir.display()))
}
