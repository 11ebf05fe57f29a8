//! Snapshot objects: one backup run's summary, written last.
//!
//! A snapshot (`snapshots/<id>`) is zstd-compressed JSON encrypted to the
//! service and the restore recipients. It names the root tree and lists every
//! blob the snapshot references, so the service can apply retention and
//! prune without reading trees. It holds no file names or contents; sources
//! put only summary figures in `metadata`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::id::{BlobId, SnapshotId};

/// The plaintext of a snapshot object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// The job that made it.
    pub job: String,
    /// The source kind (`directory`, `stream`, `etcd`, …).
    pub source_kind: String,
    /// The host it ran on.
    pub host: String,
    /// When the backup started.
    pub time: DateTime<Utc>,
    /// When it ended.
    pub end_time: DateTime<Utc>,
    /// The root tree.
    pub root: BlobId,
    /// Counts and sizes.
    pub summary: Summary,
    /// Source-specific figures (JSON), e.g. an etcd revision.
    #[serde(default)]
    pub metadata: serde_json::Value,
    /// Every blob (trees and data) the snapshot references, sorted.
    pub references: Vec<BlobId>,
}

impl super::meta::MetaObject for Snapshot {}

/// Counts and sizes of one backup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Summary {
    /// Regular files (and streams).
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Other entries (hard links, FIFOs, devices).
    pub others: u64,
    /// Entries left out (sockets, unreadable files), each reported.
    pub skipped: u64,
    /// Files whose content was read this time.
    pub files_read: u64,
    /// Bytes of file data read.
    pub bytes_read: u64,
    /// Bytes of file data the snapshot holds.
    pub bytes_total: u64,
    /// New blobs stored.
    pub blobs_added: u64,
    /// Plaintext bytes of new blobs.
    pub bytes_added: u64,
    /// Bytes of new packs as stored.
    pub bytes_stored: u64,
    /// New packs written.
    pub packs_added: u64,
}

/// A snapshot with its id.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotEntry {
    /// Its id.
    pub id: SnapshotId,
    /// Its contents.
    pub snapshot: Snapshot,
}

/// A byte count for people: `1.5 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
