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

/// The plaintext of a snapshot object: with its reference list (`R` a
/// `Vec<BlobId>`, the default) as written and as prune and check read it,
/// or without it ([`SnapshotHeader`]) as listings read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot<R = Vec<BlobId>> {
    /// The job that made it.
    pub job: String,
    /// The kind of source it was taken from.
    pub source_kind: SourceKind,
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
    /// Every blob (trees and data) the snapshot references, sorted; this
    /// includes every blob its backup stored, even one no tree came to
    /// name (the first chunks of a file that then could not be read).
    pub references: R,
}

impl super::meta::MetaObject for Snapshot {}

/// A snapshot as a listing reads it: everything but the reference list,
/// which can name a million blobs (32 MB) and which only prune and check
/// need. They read each snapshot whole, one at a time.
pub type SnapshotHeader = Snapshot<Unread>;

impl super::meta::MetaObject for SnapshotHeader {}

/// A reference list skipped unread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unread;

impl<'de> Deserialize<'de> for Unread {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(deserializer).map(|_| Unread)
    }
}

/// The kind of source a snapshot was taken from, stored as its name
/// (`directory`, `etcd`, …). Each kind decides the layout of its snapshots'
/// trees; the repository itself treats every kind alike. A name this
/// version does not know (a newer kind, or a forged one) reads as
/// [`SourceKind::Other`], so such a snapshot still lists and prunes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum SourceKind {
    /// `directory`: host folders.
    Directory,
    /// `etcd`: an etcd snapshot through the etcd v3 API.
    Etcd,
    /// `kubernetes`: API objects as canonical YAML.
    Kubernetes,
    /// `postgres`: PostgreSQL dumps.
    Postgres,
    /// `postgres-wal`: PostgreSQL WAL and base backups.
    PostgresWal,
    /// `talos-config`: the files a Talos rebuild needs.
    TalosConfig,
    /// `talos-etcd`: an etcd snapshot through the Talos API.
    TalosEtcd,
    /// `volumes`: the data behind PersistentVolumeClaims.
    Volumes,
    /// A kind this version does not know, by its stored name.
    Other(String),
}

impl SourceKind {
    /// Every kind this version knows.
    pub const KNOWN: [SourceKind; 8] = [
        Self::Directory,
        Self::Etcd,
        Self::Kubernetes,
        Self::Postgres,
        Self::PostgresWal,
        Self::TalosConfig,
        Self::TalosEtcd,
        Self::Volumes,
    ];

    /// The stored name, as in a job's `source.kind`.
    pub fn name(&self) -> &str {
        match self {
            Self::Directory => "directory",
            Self::Etcd => "etcd",
            Self::Kubernetes => "kubernetes",
            Self::Postgres => "postgres",
            Self::PostgresWal => "postgres-wal",
            Self::TalosConfig => "talos-config",
            Self::TalosEtcd => "talos-etcd",
            Self::Volumes => "volumes",
            Self::Other(name) => name,
        }
    }
}

impl From<String> for SourceKind {
    fn from(name: String) -> Self {
        Self::KNOWN
            .into_iter()
            .find(|kind| kind.name() == name)
            .unwrap_or(Self::Other(name))
    }
}

impl From<&str> for SourceKind {
    fn from(name: &str) -> Self {
        Self::from(name.to_owned())
    }
}

impl From<SourceKind> for String {
    fn from(kind: SourceKind) -> Self {
        match kind {
            SourceKind::Other(name) => name,
            known => known.name().to_owned(),
        }
    }
}

impl std::fmt::Display for SourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

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

/// A listed snapshot with its id.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotEntry {
    /// Its id.
    pub id: SnapshotId,
    /// Its contents but the reference list.
    pub snapshot: std::sync::Arc<SnapshotHeader>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_stored_as_their_names() -> Result<(), serde_json::Error> {
        for kind in SourceKind::KNOWN {
            let stored = serde_json::to_string(&kind)?;
            assert_eq!(stored, format!("\"{}\"", kind.name()));
            assert_eq!(serde_json::from_str::<SourceKind>(&stored)?, kind);
        }
        assert_eq!(
            serde_json::to_string(&SourceKind::TalosConfig)?,
            "\"talos-config\""
        );
        Ok(())
    }

    #[test]
    fn an_unknown_name_reads_and_writes_back_unchanged() -> Result<(), serde_json::Error> {
        let kind: SourceKind = serde_json::from_str("\"mysql\"")?;
        assert_eq!(kind, SourceKind::Other("mysql".into()));
        assert_eq!(serde_json::to_string(&kind)?, "\"mysql\"");
        Ok(())
    }
}
