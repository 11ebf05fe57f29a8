//! Errors shared by every layer: [`describe`] makes one line for people out
//! of an error and its causes, and [`WorkerError`] is what a worker task or
//! a lock reports when something panicked.
//!
//! Many error messages already quote their cause (`reading X: permission
//! denied`); printing the whole chain would then say it twice. [`describe`]
//! keeps each cause once.

use std::error::Error;

/// A worker task that stopped before it finished, or a lock left unusable,
/// because code panicked: a bug in lifeboat, never a fault of the data.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A task (on the blocking pool or the runtime) panicked or was
    /// cancelled.
    #[error("{task} stopped before it finished; this is a bug in lifeboat, please report it")]
    Stopped {
        /// What the task was doing ("decrypting a blob").
        task: &'static str,
        /// The runtime's report.
        #[source]
        source: tokio::task::JoinError,
    },
    /// A thread panicked while it held a lock.
    #[error(
        "{what} is unusable because a thread panicked while holding it; this is a bug in \
         lifeboat, please report it"
    )]
    Poisoned {
        /// What the lock guards.
        what: &'static str,
    },
    /// A task still held a shared value when it was to be finished.
    #[error(
        "{what} was still in use by a task when it was to be finished; this is a bug in lifeboat, please report it"
    )]
    StillShared {
        /// The shared value.
        what: &'static str,
    },
}

impl WorkerError {
    /// A mapper of a join error of the task doing `task`.
    pub fn stopped(task: &'static str) -> impl FnOnce(tokio::task::JoinError) -> Self {
        move |source| Self::Stopped { task, source }
    }

    /// A mapper of a poisoned lock guarding `what`.
    pub fn poisoned<T>(what: &'static str) -> impl FnOnce(T) -> Self {
        move |_| Self::Poisoned { what }
    }
}

/// The error's message followed by each cause not already part of it.
pub fn describe(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let part = inner.to_string();
        if !part.is_empty() && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading {0}: {1}")]
    struct Quoting(&'static str, #[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("backup failed")]
    struct Wrapping(#[source] Quoting);

    #[test]
    fn each_cause_appears_once() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied");
        let error = Wrapping(Quoting("/srv", io));
        assert_eq!(
            describe(&error),
            "backup failed: reading /srv: permission denied"
        );
    }
}
