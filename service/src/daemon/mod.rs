//! The daemon: running jobs, on their schedules or when triggered.
//!
//! - [`job`]: one backup run; [`runner`]: requesting a run (no overlap, a
//!   global limit) and what one run of a job, prune or check does;
//!   [`service`]: the running service's state and shutdown; [`scheduler`]: cron entries and runs made up at
//!   start; [`catalog`]: the repository as the service sees it;
//!   [`status`]: job status and the RPO watch; [`mirror`]: the mirror
//!   task's syncs and their state; [`wal`]: the WAL receivers of
//!   `postgres-wal` jobs.
//!
//! What it reads is in [`crate::config`]; which snapshots it keeps is in
//! [`crate::retention`].

pub mod catalog;
pub mod claims;
pub mod drill;
pub mod job;
pub mod mirror;
pub mod runner;
pub mod scheduler;
pub mod service;
pub mod status;
pub mod wal;

pub use job::{JobError, back_up_job, run_job};
pub use runner::Refusal;
pub use scheduler::Scheduler;
pub use service::{Service, Trigger, Work};
