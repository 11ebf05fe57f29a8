//! Jobs: their configuration and running one.

pub mod config;
pub mod job;
pub mod retention;

pub use config::{Config, ConfigError, JobConfig, RepositoryConfig};
pub use job::{JobError, run_job};
