//! How `lifeboatd serve` runs: the `[service]` table and the `[prune]` and
//! `[check]` tasks.
//!
//! ```toml
//! [service]
//! listen = "0.0.0.0:8080"            # default 127.0.0.1:8080
//! token_file = "/config/api-token"   # default <state_dir>/api-token, made on first start
//! schedules_dir = "/config/schedules" # default `schedules` beside this file
//! max_concurrent_jobs = 2
//! shutdown_grace = "25s"
//! default_rpo = "24h"
//! rto = "2h"
//! timezone = "Europe/Berlin"
//! ```
//!

use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::cron::{CronSchedule, Timezone};
use crate::field::{duration, optional_duration};
use crate::storage::S3Options;

/// The `[service]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSettings {
    /// Where the HTTP server listens. The default, loopback only, exposes
    /// nothing to the network by accident; containers set `0.0.0.0:8080`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The file holding the API's bearer token; created with a random token
    /// on first start when missing. Default `<state_dir>/api-token`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The folder of job files. Default `schedules` beside the config file
    /// (then it may be missing); a folder given here must exist.
    #[serde(default)]
    pub schedules_dir: Option<PathBuf>,
    /// How many jobs (backups, prune, check) may run at once.
    #[serde(default = "default_concurrency")]
    pub max_concurrent_jobs: NonZeroUsize,
    /// How long running jobs may go on after SIGTERM; keep it below the
    /// orchestrator's kill timeout (Kubernetes: 30 s by default).
    #[serde(default = "default_grace", with = "duration")]
    pub shutdown_grace: Duration,
    /// The RPO of jobs that set none.
    #[serde(default = "default_rpo", with = "duration")]
    pub default_rpo: Duration,
    /// The recovery time objective, shown on the status page and exported
    /// so alerts can compare restore drills against it.
    #[serde(default, with = "optional_duration")]
    pub rto: Option<Duration>,
    /// The time zone of schedules that name none (default UTC).
    #[serde(default)]
    pub timezone: Timezone,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 8080))
}

fn default_concurrency() -> NonZeroUsize {
    NonZeroUsize::MIN.saturating_add(1)
}

fn default_grace() -> Duration {
    Duration::from_secs(25)
}

pub(crate) fn default_rpo() -> Duration {
    Duration::from_secs(24 * 3600)
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            token_file: None,
            schedules_dir: None,
            max_concurrent_jobs: default_concurrency(),
            shutdown_grace: default_grace(),
            default_rpo: default_rpo(),
            rto: None,
            timezone: Timezone::default(),
        }
    }
}

/// The `[prune]` table: removing what no snapshot uses, in two phases.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneTask {
    /// When it runs (cron with seconds).
    pub schedule: CronSchedule,
    /// The schedule's time zone (default: the service's).
    #[serde(default)]
    pub timezone: Option<Timezone>,
    /// How long a pack marked unused waits before deletion; longer than
    /// the longest backup of any other program writing the repository.
    #[serde(default = "default_prune_grace", with = "duration")]
    pub grace: Duration,
    /// Whether it is scheduled.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn default_prune_grace() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// The `[check]` table: verifying the repository with the service key
/// (structure, and a sample of packs against their hashes).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckTask {
    /// When it runs (cron with seconds).
    pub schedule: CronSchedule,
    /// The schedule's time zone (default: the service's).
    #[serde(default)]
    pub timezone: Option<Timezone>,
    /// Percentage of packs downloaded and hashed each time (0–100).
    #[serde(default = "default_subset", deserialize_with = "percentage")]
    pub read_data_subset: f64,
    /// Whether it is scheduled.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn default_subset() -> f64 {
    5.0
}

fn percentage<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let value = f64::deserialize(d)?;
    if (0.0..=100.0).contains(&value) {
        Ok(value)
    } else {
        Err(serde::de::Error::custom(format!(
            "{value} is not a percentage from 0 to 100"
        )))
    }
}

pub(crate) fn yes() -> bool {
    true
}

/// The `[drill]` table: lifeboatd drills restores itself, on a schedule,
/// as `lifeboat drill` does, with the restore key. That key then lives on
/// this host and reads every backup; a CI workflow holding it instead
/// (`deploy/github/restore-drill.yml`) keeps it off the service's host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillTask {
    /// When it runs (cron with seconds; default Sundays at 05:00).
    #[serde(default = "default_drill_schedule")]
    pub schedule: CronSchedule,
    /// The schedule's time zone (default: the service's).
    #[serde(default)]
    pub timezone: Option<Timezone>,
    /// The restore key's identity file (unencrypted: the service cannot
    /// ask for a passphrase).
    pub identity: PathBuf,
    /// The jobs to drill (default: all).
    #[serde(default)]
    pub jobs: Vec<String>,
    /// A PostgreSQL server for the scratch databases of jobs not dumped in
    /// a container (libpq connection string; PGPASSWORD for it).
    #[serde(default)]
    pub pg_url: Option<String>,
    /// The Docker Engine's socket, for jobs dumped in a container.
    #[serde(default = "crate::docker::default_socket")]
    pub docker_socket: PathBuf,
    /// Whether it is scheduled.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn default_drill_schedule() -> CronSchedule {
    "0 0 5 * * SUN"
        .parse()
        .expect("the default drill schedule is a valid cron expression")
}

/// A `[[mirror]]` table: a second store (a folder on Unraid, another
/// bucket) that the `mirror` task keeps a copy of every object in, with
/// the service key's rights only (objects are copied as they are).
///
/// ```toml
/// [[mirror]]
/// name = "unraid"                          # default "mirror"
/// url = "/mnt/user/backups/lifeboat"       # or s3://BUCKET/PREFIX with `s3`
/// schedule = "0 */15 * * * *"              # default; it also runs after each backup and prune
/// grace = "24h"                            # default: the prune task's grace, else 24h
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorTask {
    /// Its name in metrics, on the status page and in `--mirror NAME`.
    #[serde(default = "default_mirror_name")]
    pub name: String,
    /// `s3://bucket/prefix`, `file:///path` or a path.
    pub url: String,
    /// S3 connection settings.
    #[serde(default)]
    pub s3: S3Options,
    /// When the mirror task runs besides after every backup and prune
    /// (cron with seconds; default every 15 minutes).
    #[serde(default = "default_mirror_schedule")]
    pub schedule: CronSchedule,
    /// The schedule's time zone (default: the service's).
    #[serde(default)]
    pub timezone: Option<Timezone>,
    /// How long an object gone from the primary stays on the mirror
    /// (default: the prune task's grace, else 24 h).
    #[serde(default, with = "optional_duration")]
    pub grace: Option<Duration>,
    /// Whether it is kept.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn default_mirror_name() -> String {
    "mirror".into()
}

fn default_mirror_schedule() -> CronSchedule {
    "0 */15 * * * *"
        .parse()
        .expect("the default mirror schedule is a valid cron expression")
}

/// Names of the service's own tasks, which jobs cannot take.
pub const RESERVED_NAMES: [&str; 4] = ["prune", "check", "drill", "mirror"];
