//! Jobs: their configuration, running one, and the service that runs them
//! on schedules.
//!
//! - [`config`] and [`service_config`]: `lifeboat.toml` and the job files
//!   of the schedules folder; [`timing`]: cron schedules, time zones and
//!   durations in them;
//! - [`job`]: one backup run; [`retention`]: which snapshots to keep;
//! - [`service`]: the running service (no overlap, a global limit,
//!   shutdown); [`runner`]: what one run does; [`scheduler`]: cron entries
//!   and runs made up at start; [`catalog`]: the repository as the service
//!   sees it; [`status`]: job status and the RPO watch; [`starter`]: the
//!   configuration written on a first start.

pub mod catalog;
pub mod config;
pub mod job;
pub mod retention;
pub mod runner;
pub mod scheduler;
pub mod service;
pub mod service_config;
pub mod starter;
pub mod status;
pub mod timing;

pub use config::{Config, ConfigError, JobConfig, RepositoryConfig};
pub use job::{JobError, back_up_job, run_job};
pub use scheduler::Scheduler;
pub use service::{Refusal, Service, Trigger, Work};
