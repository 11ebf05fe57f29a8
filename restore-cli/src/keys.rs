//! `lifeboat keys`: make identity files and show their recipients.

use std::path::PathBuf;

use clap::Subcommand;
use lifeboat::repo::keys::{self, AnyIdentity};

use crate::args::passphrase;

/// `lifeboat keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Write a new age identity file (mode 0600) and print its recipient.
    Generate {
        /// The file to create.
        file: PathBuf,
        /// Protect it with a passphrase (LIFEBOAT_PASSPHRASE or a prompt).
        #[arg(long)]
        passphrase: bool,
    },
    /// Print the recipients (public keys) of an identity file.
    Recipients {
        /// The identity file.
        file: PathBuf,
    },
}

/// Runs `lifeboat keys`.
pub fn run(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Generate {
            file,
            passphrase: protect,
        } => {
            let pass = protect
                .then(|| passphrase("passphrase for the new identity: "))
                .transpose()?;
            crate::outln!("{}", keys::generate_identity_file(&file, pass.as_ref())?)?;
        }
        KeysCommand::Recipients { file } => {
            let pass = keys::needs_passphrase(&file)
                .then(|| passphrase(&format!("passphrase for {}: ", file.display())))
                .transpose()?;
            for recipient in AnyIdentity::from_file(&file, pass.as_ref())?.recipients() {
                crate::outln!("{recipient}")?;
            }
        }
    }
    Ok(())
}
