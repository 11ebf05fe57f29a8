//! `lifeboat init`: create a repository and its keys.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use lifeboat::repo::Repository;
use lifeboat::repo::chunker::Chunking;
use lifeboat::repo::config::InitOptions;
use lifeboat::repo::keys::{self, AnyIdentity, Recipient, Recipients};
use lifeboat::storage;
use serde::Serialize;

use crate::args::{RepoArgs, passphrase};

/// What `lifeboat init --json` prints.
#[derive(Serialize)]
struct Initialised<'a> {
    repository: &'a str,
    id: &'a str,
    restore_recipients: Vec<String>,
    service_recipients: Vec<String>,
    /// Identity files made because they did not exist.
    created_files: &'a [String],
}

/// Flags of `lifeboat init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// A restore recipient (age1…); repeat for several.
    #[arg(long = "recipient")]
    recipients: Vec<String>,
    /// Use the recipients of an existing age identity file (e.g. a SOPS age key) as restore recipients.
    #[arg(long = "recipients-from")]
    recipients_from: Vec<PathBuf>,
    /// Where to write a new restore identity when no recipient is given.
    #[arg(long, default_value = "lifeboat-restore.key")]
    restore_identity: PathBuf,
    /// Protect the new restore identity with a passphrase.
    #[arg(long)]
    passphrase: bool,
    /// The service identity: used if the file exists, generated there if not.
    #[arg(long, default_value = "lifeboat-service.key")]
    service_identity: PathBuf,
    /// Average FastCDC chunk size for files, in KiB (min = avg/2, max = avg*8).
    #[arg(long, default_value_t = 1024)]
    chunk_avg_kib: u32,
    /// Fixed chunk size for page files (etcd), in KiB.
    #[arg(long, default_value_t = 16)]
    page_chunk_kib: u32,
    /// Target pack size in MiB.
    #[arg(long, default_value_t = 16)]
    pack_size_mib: u32,
    /// zstd level (0 = store raw).
    #[arg(long, default_value_t = 3)]
    compression: i32,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `lifeboat init`.
pub async fn run(args: InitArgs) -> anyhow::Result<()> {
    let (url, s3) = args.repo.location()?;
    let avg = args.chunk_avg_kib.saturating_mul(1024);
    let options = InitOptions {
        file_chunking: Chunking::FastCdc {
            min: avg / 2,
            avg,
            max: avg.saturating_mul(8),
        },
        page_chunking: Chunking::Fixed {
            size: args.page_chunk_kib.saturating_mul(1024),
        },
        pack_size: args.pack_size_mib.saturating_mul(1024 * 1024),
        compression_level: args.compression,
    };
    options
        .validate()
        .map_err(anyhow::Error::msg)
        .context("check the init flags")?;

    let mut restore: Vec<Recipient> = args
        .recipients
        .iter()
        .map(|r| r.parse())
        .collect::<Result<_, _>>()?;
    for file in &args.recipients_from {
        let pass = keys::needs_passphrase(file)
            .then(|| passphrase(&format!("passphrase for {}: ", file.display())))
            .transpose()?;
        restore.extend(AnyIdentity::from_file(file, pass.as_ref())?.recipients());
    }
    let mut created = Vec::new();
    if restore.is_empty() {
        let pass = args
            .passphrase
            .then(|| passphrase("passphrase for the new restore identity: "))
            .transpose()?;
        restore.push(keys::generate_identity_file(
            &args.restore_identity,
            pass.as_ref(),
        )?);
        created.push(args.restore_identity.display().to_string());
    }
    if !args.service_identity.exists() {
        keys::generate_identity_file(&args.service_identity, None)?;
        created.push(args.service_identity.display().to_string());
    }
    let service = AnyIdentity::from_file(&args.service_identity, None)?.recipients();
    let store = storage::open(&url, &s3).await?;
    let recipients = Recipients { restore, service };
    let repo = Repository::init(store, recipients.clone(), &options).await?;
    if args.json {
        let value = Initialised {
            repository: &url,
            id: &repo.config().id,
            restore_recipients: recipients.restore.iter().map(ToString::to_string).collect(),
            service_recipients: recipients.service.iter().map(ToString::to_string).collect(),
            created_files: &created,
        };
        crate::outln!("{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(());
    }
    crate::outln!("created repository {} at {url}", repo.config().id)?;
    for r in &recipients.restore {
        crate::outln!("  restore recipient {r}")?;
    }
    for r in &recipients.service {
        crate::outln!(
            "  service recipient {r} ({})",
            args.service_identity.display()
        )?;
    }
    if created
        .iter()
        .any(|c| *c == args.restore_identity.display().to_string())
    {
        crate::outln!(
            "\nThe restore identity {} is the only key that can read your backups.\n\
             Store it offline (password manager, paper, a USB stick in a drawer) and\n\
             delete it from this machine. Give the service only {}.",
            args.restore_identity.display(),
            args.service_identity.display()
        )?;
    }
    Ok(())
}
