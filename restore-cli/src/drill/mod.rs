//! `lifeboat drill`: restore the newest snapshot of each job into scratch
//! space, verify it, and report the measured RTO and each job's RPO as a
//! table, JSON, JUnit XML and Prometheus text. Exits non-zero when any job
//! fails verification or breaches its RPO or the RTO target.

mod outputs;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use lifeboat::config::Config;
use lifeboat::drill::DrillSettings;
use lifeboat::sources::drill_jobs;

use crate::args::{KeyArgs, RepoArgs};
use crate::exit::ProblemsFound;

/// Flags of `lifeboat drill`.
#[derive(Debug, Args)]
pub struct DrillArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    key: KeyArgs,
    /// Drill only this job (repeatable; default: every job of the config).
    #[arg(long = "job", value_name = "NAME")]
    jobs: Vec<String>,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Write a JUnit XML report here.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Write Prometheus metrics here (node-exporter's textfile collector).
    #[arg(long, value_name = "FILE")]
    metrics: Option<PathBuf>,
    /// Fail a job whose drill takes longer (default: [service] rto in the config).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    rto_target: Option<Duration>,
    /// The PostgreSQL server to restore scratch databases into (libpq
    /// connection string without a password; PGPASSWORD for it).
    #[arg(long, env = "LIFEBOAT_PG_URL")]
    pg_url: Option<String>,
    /// Without --pg-url: restore the scratch databases in this Docker
    /// container (default: the container a snapshot was dumped in).
    #[arg(long, value_name = "NAME")]
    pg_container: Option<String>,
    /// The Docker Engine's socket, for containers.
    #[arg(long, value_name = "PATH", default_value = lifeboat::docker::DEFAULT_SOCKET)]
    docker_socket: PathBuf,
    /// The folder of psql and pg_restore (default: PATH).
    #[arg(long)]
    pg_bin: Option<PathBuf>,
    /// Scratch folder for the restores (default: a new temporary folder).
    #[arg(long)]
    scratch: Option<PathBuf>,
    /// How long a throwaway etcd may take to start.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    etcd_wait: Duration,
    /// Kubernetes: also apply the objects as a server-side dry run to the
    /// API server of this kubeconfig (nothing is changed).
    #[arg(long, value_name = "KUBECONFIG")]
    kube_dry_run: Option<PathBuf>,
    /// Print the JSON report on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

/// Runs `lifeboat drill`.
pub async fn run(args: DrillArgs) -> anyhow::Result<()> {
    let config_path =
        args.repo.config.clone().context(
            "give the jobs to drill with --config lifeboat.toml (the file lifeboatd uses)",
        )?;
    let config = Config::load_with_schedules(&config_path)?;
    let jobs = config.drill_jobs(&args.jobs, &config_path)?;
    let repo = args
        .key
        .unlock_restore(args.repo.open().await?, "drilling restores")
        .await?;
    let reader = repo.reader();
    let snapshots = repo.snapshots().await?;
    let scratch_dir;
    let scratch = match &args.scratch {
        Some(dir) => dir.clone(),
        None => {
            scratch_dir = tempfile::Builder::new()
                .prefix("lifeboat-drill-")
                .tempdir()?;
            scratch_dir.path().to_owned()
        }
    };
    let rto_target = args.rto_target.or(config.service.rto);
    let settings = DrillSettings {
        scratch,
        pg_url: args.pg_url.clone(),
        pg_bin: args.pg_bin.clone(),
        pg_container: args.pg_container.clone(),
        docker_socket: args.docker_socket.clone(),
        rto_target,
        etcd_wait: args.etcd_wait,
        kube_dry_run: args.kube_dry_run.clone(),
        measure_memory: true,
    };
    let report = drill_jobs(&reader, &snapshots, &jobs, &settings, |report| {
        let memory = report
            .peak_rss_bytes
            .map(|bytes| format!(", at most {} MiB resident", bytes >> 20))
            .unwrap_or_default();
        eprintln!(
            "{}: {} in {:.1} s{memory}",
            report.job,
            if report.passed() { "passed" } else { "FAILED" },
            report.rto_seconds
        );
    })
    .await;
    outputs::write(&report, &args)?;
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        crate::outln!("{}", report.table())?;
    }
    if report.passed {
        Ok(())
    } else {
        let failed = report.jobs.iter().filter(|j| !j.passed()).count();
        Err(ProblemsFound(format!(
            "the drill failed: {failed} of {} job(s)",
            report.jobs.len()
        ))
        .into())
    }
}
