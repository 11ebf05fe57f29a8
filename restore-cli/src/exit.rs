//! Exit codes and output to standard output.
//!
//! The codes follow restic's documented ones where they mean the same:
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | success (also when standard output was closed early, e.g. by `head`) |
//! | 1 | the command ran and found problems: `check` found damage, a drill failed, a restore is incomplete |
//! | 2 | the command could not run: configuration, connection, store, key file |
//! | 10 | there is no repository at the location |
//! | 12 | the key does not open this repository, or cannot do what was asked |
//! | 64 | usage: unknown flag or subcommand, bad value |

use std::process::ExitCode;

use lifeboat::repo::RepoError;
use lifeboat::repo::keys::KeyError;
use lifeboat::restore::RestoreError;

/// The command ran to its end and found problems (exit code 1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProblemsFound(pub String);

/// Exit code of a command that ran and found problems.
const PROBLEMS: u8 = 1;
/// Exit code of a command that could not run.
const COULD_NOT_RUN: u8 = 2;
/// Exit code when no repository is at the location.
const NO_REPOSITORY: u8 = 10;
/// Exit code when the key does not fit.
const WRONG_KEY: u8 = 12;
/// Exit code of a usage error (sysexits' `EX_USAGE`).
pub const USAGE: u8 = 64;

/// The exit code for a failed command.
pub fn code_of(error: &anyhow::Error) -> ExitCode {
    if is_broken_pipe(error) {
        return ExitCode::SUCCESS;
    }
    let code = error
        .chain()
        .find_map(|cause| {
            if cause.is::<ProblemsFound>() {
                return Some(PROBLEMS);
            }
            if let Some(RestoreError::Incomplete { .. }) = cause.downcast_ref::<RestoreError>() {
                return Some(PROBLEMS);
            }
            match cause.downcast_ref::<RepoError>() {
                Some(RepoError::NotARepository { .. }) => return Some(NO_REPOSITORY),
                Some(RepoError::WrongKey { .. } | RepoError::NeedsRestoreKey { .. }) => {
                    return Some(WRONG_KEY);
                }
                _ => {}
            }
            match cause.downcast_ref::<KeyError>() {
                Some(KeyError::Passphrase { .. } | KeyError::NoIdentity { .. }) => Some(WRONG_KEY),
                _ => None,
            }
        })
        .unwrap_or(COULD_NOT_RUN);
    ExitCode::from(code)
}

/// Whether the command stopped because standard output was closed.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Writes a line to standard output; a closed output (`| head`) is an
/// error that ends the command quietly with success, never a panic.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// Writes to standard output without a newline, as [`outln!`] does.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_tell_problems_from_failures_and_keys() {
        let code = |e: anyhow::Error| format!("{:?}", code_of(&e));
        let problems = anyhow::Error::new(ProblemsFound("2 problems".into()));
        assert_eq!(code(problems), format!("{:?}", ExitCode::from(PROBLEMS)));
        let none = anyhow::Error::new(RepoError::NotARepository { url: "x".into() });
        assert_eq!(code(none), format!("{:?}", ExitCode::from(NO_REPOSITORY)));
        let key = anyhow::Error::new(RepoError::NeedsRestoreKey { what: "ls" });
        assert_eq!(code(key), format!("{:?}", ExitCode::from(WRONG_KEY)));
        let pipe = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("printing");
        assert_eq!(code(pipe), format!("{:?}", ExitCode::SUCCESS));
        let other = anyhow::anyhow!("cannot reach the store");
        assert_eq!(code(other), format!("{:?}", ExitCode::from(COULD_NOT_RUN)));
    }
}
