//! The configuration: `lifeboat.toml`, the repository and the jobs, and
//! the job files beside it.
//!
//! ```toml
//! [repository]
//! url = "s3://backups/homelab"            # or a local path
//! service_identity = "/config/service.key"
//! recipients = ["age1…"]                  # restore recipients
//! s3 = { endpoint = "https://<account>.r2.cloudflarestorage.com" }
//!
//! [[job]]
//! name = "appdata"
//! source = { kind = "directory", paths = ["/mnt/user/appdata"] }
//! schedule = "0 15 * * * *"               # cron with seconds; none: run by hand only
//! timezone = "Europe/Berlin"              # default: [service] timezone, else UTC
//! rpo = "1h"                              # default: [service] default_rpo
//! retention = { keep_hourly = 48, keep_daily = 14 }  # none: keep every snapshot
//! jitter = "2m"                           # random delay of scheduled runs
//! enabled = true
//! ```
//!
//! The `[service]`, `[prune]` and `[check]` tables are described in
//! [`service`], the job files of the schedules folder in [`schedules`].
//! Relative paths are taken from the folder of the file that gives them.
//! Errors name the file, the line and the field.
//!
//! - [`file`](mod@file): [`Config`], the whole configuration, and reading
//!   `lifeboat.toml`; [`job`]: one `[[job]]` and where it was defined;
//! - [`service`]: how `lifeboatd serve` runs, its prune and check tasks;
//!   [`schedules`]: the job files of the schedules folder;
//! - [`cron`]: cron schedules and time zones; durations and relative
//!   paths are in [`crate::field`], below every module with a
//!   configuration table;
//! - [`starter`]: the configuration written on a first start.
//!
//! The tables of what a job backs up and of its hooks belong to
//! [`crate::sources`] and [`crate::hooks`]; retention rules to
//! [`crate::retention`].

use std::path::PathBuf;

pub mod cron;
pub mod file;
pub mod job;
pub mod schedules;
pub mod service;
pub mod starter;

pub use cron::{CronSchedule, Timezone};
pub use file::{Config, RepositoryConfig};
pub use job::{JobConfig, Origin};
pub use service::{CheckTask, DrillTask, PruneTask, ServiceSettings};

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a wrong field (the message gives line and field).
    #[error("config {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line, column and field.
        message: String,
    },
    /// No job of that name.
    #[error("config {path} has no job {name:?}; its jobs are: {known}")]
    NoJob {
        /// The file.
        path: PathBuf,
        /// The name asked for.
        name: String,
        /// The jobs it has.
        known: String,
    },
}
