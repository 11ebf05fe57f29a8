//! `lifeboatd`: the lifeboat service. `lifeboatd serve --config FILE` runs
//! the jobs on their schedules and serves the status page, metrics and API;
//! `lifeboatd run --config FILE JOB` runs one job once; `lifeboatd mover`
//! is what a volume mover Job runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand, ValueEnum};
use lifeboat::api::{ServeOptions, serve, shutdown_signal};
use lifeboat::backup::items::Item;
use lifeboat::backup::{BackupReport, Progress};
use lifeboat::config::Config;
use lifeboat::daemon::run_job;
use lifeboat::progress::Bar;
use lifeboat::repo::id::SnapshotId;
use lifeboat::repo::snapshot::Summary;
use lifeboat::sources::volumes::mover::process::MoverTask;
use serde::Serialize;

/// The lifeboat backup service.
#[derive(Debug, Parser)]
#[command(name = "lifeboatd", version, about)]
struct Cli {
    /// How logs are written to standard error.
    #[arg(
        long,
        global = true,
        env = "LIFEBOAT_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// Log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service: jobs on their schedules, retention, prune, the RPO
    /// watch, and the status page, metrics and API over HTTP. Stops cleanly
    /// on SIGTERM or SIGINT.
    Serve {
        /// The configuration file; job files are read from its schedules
        /// folder. Default `lifeboat.toml`, written with a starter
        /// configuration (a local repository and a directory job) when missing.
        #[arg(long, short, env = "LIFEBOAT_CONFIG")]
        config: Option<PathBuf>,
        /// Listen on this address instead of `[service] listen`.
        #[arg(long, env = "LIFEBOAT_LISTEN")]
        listen: Option<SocketAddr>,
    },
    /// Run one job once and print its snapshot.
    Run {
        /// The configuration file.
        #[arg(long, short, env = "LIFEBOAT_CONFIG", default_value = "lifeboat.toml")]
        config: PathBuf,
        /// The job's name.
        job: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Store one mounted claim as a part of a volumes run: what a volume
    /// mover Job runs (lifeboatd starts these; see the volumes source's
    /// `movers`). Prints the part snapshot's id.
    Mover {
        /// The mover spec from the run's Secret.
        #[arg(long)]
        spec: PathBuf,
        /// The service identity from the run's Secret.
        #[arg(long)]
        identity: PathBuf,
        /// The claim, `NAMESPACE/NAME`.
        #[arg(long)]
        claim: String,
        /// Where the claim is mounted.
        #[arg(long)]
        folder: PathBuf,
        /// A glob pattern to leave out (repeatable).
        #[arg(long)]
        exclude: Vec<String>,
        /// The claim's cache key file, from the run's Secret.
        #[arg(long)]
        cache_key: Option<PathBuf>,
        /// The cache object the claim's last mover left.
        #[arg(long, requires = "cache_key")]
        cache: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tokio_cron_scheduler=warn".into()),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("lifeboatd: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Blocking work of runs stopped at shutdown must not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lifeboatd: {}", lifeboat::errors::describe(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config, listen } => {
            let options = ServeOptions {
                create_starter: config.is_none(),
                config: config.unwrap_or_else(|| PathBuf::from("lifeboat.toml")),
                listen,
            };
            serve(options, shutdown_signal()).await?;
        }
        Command::Run { config, job, json } => {
            let loaded = Config::load_with_schedules(&config)?;
            let progress = Arc::new(Progress::default());
            let bar = Bar::bytes(&job, progress.bytes.clone(), None);
            let report = run_job(&loaded, &config, &job, progress).await?;
            drop(bar);
            print_report(&report, json)?;
        }
        Command::Mover {
            spec,
            identity,
            claim,
            folder,
            exclude,
            cache_key,
            cache,
        } => {
            let task = MoverTask {
                spec,
                identity,
                claim,
                folder,
                exclude,
                cache_key,
                cache,
            };
            let id = lifeboat::sources::volumes::mover::process::run(&task).await?;
            println!("{id}");
        }
    }
    Ok(())
}

/// What `lifeboatd run --json` prints of a backup.
#[derive(Serialize)]
struct RunOutput<'a> {
    id: SnapshotId,
    job: &'a str,
    time: DateTime<Utc>,
    end_time: DateTime<Utc>,
    summary: &'a Summary,
    warnings: &'a [String],
    items: &'a [Item],
}

fn print_report(report: &BackupReport, json: bool) -> anyhow::Result<()> {
    let snapshot = &report.snapshot;
    if json {
        let value = RunOutput {
            id: report.id,
            job: &snapshot.job,
            time: snapshot.time,
            end_time: snapshot.end_time,
            summary: &snapshot.summary,
            warnings: &report.warnings,
            items: &report.items,
        };
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let s = &snapshot.summary;
    let seconds = (snapshot.end_time - snapshot.time).num_milliseconds() as f64 / 1000.0;
    println!(
        "snapshot {} of job {}: {} files, {} dirs, {} read of {}, {} new in {} packs ({} stored) in {seconds:.1} s",
        report.id.short(),
        snapshot.job,
        s.files,
        s.dirs,
        lifeboat::repo::snapshot::human_bytes(s.bytes_read),
        lifeboat::repo::snapshot::human_bytes(s.bytes_total),
        lifeboat::repo::snapshot::human_bytes(s.bytes_added),
        s.packs_added,
        lifeboat::repo::snapshot::human_bytes(s.bytes_stored),
    );
    for item in &report.items {
        println!("  {}", item.sentence());
    }
    for warning in &report.warnings {
        println!("  warning: {warning}");
    }
    Ok(())
}
