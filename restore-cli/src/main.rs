//! `lifeboat`: the restore command line. Parses flags, runs the command,
//! maps the result to an exit code.

mod args;
mod check;
mod drill;
mod exit;
mod init;
mod keys;
mod list;
mod prune;
mod rebuild;
mod restore;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// lifeboat: restore and inspect lifeboat backups.
#[derive(Debug, Parser)]
#[command(name = "lifeboat", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a repository and its keys.
    Init(init::InitArgs),
    /// List snapshots (either key).
    Snapshots(list::SnapshotsArgs),
    /// List the files of a snapshot (restore key).
    Ls(list::LsArgs),
    /// Restore a snapshot: files, volumes, etcd, PostgreSQL, Talos config,
    /// Kubernetes objects (restore key).
    Restore(Box<restore::RestoreArgs>),
    /// Restore the newest snapshots into scratch space, verify them, measure RTO and RPO (restore key).
    Drill(drill::DrillArgs),
    /// Verify the repository.
    Check(check::CheckArgs),
    /// Forget snapshots by a retention policy (either key).
    Forget(prune::ForgetArgs),
    /// Delete packs no snapshot uses, after a grace period (either key).
    Prune(prune::PruneArgs),
    /// Rebuild the Talos cluster: VMs through libvirt, configs and etcd
    /// through the Talos API, timed and resumable.
    Rebuild(rebuild::RebuildArgs),
    /// Create identity files, show recipients.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let usage = e.use_stderr();
            // Help and version go to standard output; a closed one is fine.
            let _ = e.print();
            return if usage {
                ExitCode::from(exit::USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("lifeboat: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Init(args) => init::run(args).await,
            Command::Snapshots(args) => list::snapshots(args).await,
            Command::Ls(args) => list::ls(args).await,
            Command::Restore(args) => restore::run(*args).await,
            Command::Drill(args) => drill::run(args).await,
            Command::Check(args) => check::run(args).await,
            Command::Forget(args) => prune::run_forget(args).await,
            Command::Prune(args) => prune::run_prune(args).await,
            Command::Rebuild(args) => rebuild::run(args).await,
            Command::Keys(command) => keys::run(command),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if exit::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lifeboat: {}", lifeboat::errors::describe(e.as_ref()));
            exit::code_of(&e)
        }
    }
}
