//! Local state in SQLite: a cache, never the source of truth.
//!
//! Losing the state directory costs time (files are read again), never data:
//! everything here can be rebuilt from the repository or the source. The
//! one exception is the [`pin`] of the repository's identity, whose loss
//! costs the protection it gives until the next first use.

mod database;
mod file_cache;
pub mod history;
pub mod json_file;
mod known_files;
pub mod pin;

pub use file_cache::{FileCache, StateError};
pub use history::{History, HistoryError, RunFigures, RunRecord, RunResult};
pub use known_files::{CachedFile, FileStamp, KnownFiles, KnownFilesBuilder};
