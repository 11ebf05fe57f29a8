//! `lifeboatd`: the lifeboat service. `lifeboatd run --config FILE JOB`
//! runs one job once.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use lifeboat::backup::{BackupReport, Progress};
use lifeboat::progress::Bar;
use lifeboat::schedule::{Config, run_job};

/// The lifeboat backup service.
#[derive(Debug, Parser)]
#[command(name = "lifeboatd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("lifeboatd: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lifeboatd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config, job, json } => {
            let loaded = Config::load(&config)?;
            let progress = Arc::new(Progress::default());
            let bar = Bar::bytes(&job, progress.bytes.clone(), None);
            let report = run_job(&loaded, &config, &job, progress).await?;
            drop(bar);
            print_report(&report, json)?;
        }
    }
    Ok(())
}

fn print_report(report: &BackupReport, json: bool) -> anyhow::Result<()> {
    let snapshot = &report.snapshot;
    if json {
        let value = serde_json::json!({
            "id": report.id,
            "job": snapshot.job,
            "time": snapshot.time,
            "end_time": snapshot.end_time,
            "summary": snapshot.summary,
            "warnings": report.warnings,
        });
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
    for warning in &report.warnings {
        println!("  skipped {warning}");
    }
    Ok(())
}
