//! Volume movers: the claims of a `volumes` job with `[…movers]` set are
//! read by one short-lived Job per claim instead of by lifeboatd itself.
//!
//! A mover is lifeboat's own image running `lifeboatd mover` in the
//! claim's namespace — a pod can mount only claims of its own namespace —
//! placed on the node of the pod that uses the claim (a ReadWriteOnce
//! volume is attached to one node) or where the volume's node affinity
//! allows. It mounts the claim read-only and holds only the service key,
//! the repository settings and the storage credentials, from a Secret
//! that lives as long as the run: it writes, it cannot read.
//!
//! Each mover commits a *part*: a snapshot of job `JOB.part` whose root
//! holds the claim's folder, and whose metadata (readable with the service
//! key) carries the run, the claim and that folder's entry. lifeboatd
//! grafts each part's entry at `/volumes/NAMESPACE/CLAIM` into the run's
//! one snapshot, with the part's blob references, and forgets the parts
//! once that snapshot is stored. Parts left by a killed run are forgotten
//! by the next.

pub mod cache;
mod cleanup;
pub mod graft;
pub mod jobs;
mod ledger;
pub mod parts;
pub mod pod;
pub mod process;
pub mod restore;
pub mod snapshot;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::repo::tree::Node;
use crate::state::pin::RepositoryPin;
use crate::storage::S3Options;

/// Where the claims' folders are in a run's snapshot.
pub const SNAPSHOT_ROOT: &str = "/volumes";

/// The metadata key of a part's [`Part`].
pub const PART_KEY: &str = "mover";

/// The claim annotation choosing its mode over the storage class's.
pub const MODE_ANNOTATION: &str = "lifeboat.dev/volume-mode";

/// The `movers` table of a volumes source.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoverSettings {
    /// The image movers run (`ghcr.io/…/lifeboat:TAG`); default: the image
    /// of the pod lifeboatd runs in, found through `POD_NAMESPACE` and
    /// `POD_NAME` (the downward API), so movers run the same version.
    #[serde(default)]
    pub image: Option<String>,
    /// Movers running at once in all (default 4).
    #[serde(default = "default_total")]
    pub concurrency: usize,
    /// Movers running at once on one node (default 1).
    #[serde(default = "default_per_node")]
    pub per_node: usize,
    /// How long one mover may run before it is stopped and its claim
    /// fails (default 6h).
    #[serde(default = "default_timeout", with = "crate::field::duration")]
    pub timeout: Duration,
    /// How long a mover's pod may take to start (be scheduled, pull its
    /// image) before its claim fails with the pod's reason (default 5m).
    #[serde(default = "default_start_timeout", with = "crate::field::duration")]
    pub start_timeout: Duration,
    /// The mode per storage class; a class not listed is read from a
    /// snapshot where its driver has a VolumeSnapshotClass, else live.
    #[serde(default)]
    pub modes: BTreeMap<String, Mode>,
}

/// How a claim is read; a claim whose class names none is read from a
/// snapshot when its CSI driver has a VolumeSnapshotClass, else live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A VolumeSnapshot of the claim, through a temporary claim made from
    /// it: point-in-time consistent, the pods' hooks around the snapshot.
    Snapshot,
    /// The running volume, with the pods' annotation hooks around the read.
    Live,
    /// Not at all.
    Skip,
}

impl Mode {
    /// Its name in configs, annotations and the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Self::Snapshot => "snapshot",
            Self::Live => "live",
            Self::Skip => "skip",
        }
    }

    /// Parses an annotation value.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "snapshot" => Some(Self::Snapshot),
            "live" => Some(Self::Live),
            "skip" => Some(Self::Skip),
            _ => None,
        }
    }
}

fn default_total() -> usize {
    4
}

fn default_per_node() -> usize {
    1
}

fn default_start_timeout() -> Duration {
    pod::START_WITHIN
}

fn default_timeout() -> Duration {
    Duration::from_secs(6 * 3600)
}

/// How lifeboatd itself reaches the repository, for the movers' Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryAccess {
    /// The repository URL.
    pub url: String,
    /// Its S3 settings.
    pub s3: S3Options,
    /// The service identity file.
    pub service_identity: PathBuf,
}

/// What a mover is told through its Secret: where the repository is and
/// which one it must be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoverSpec {
    /// The repository URL.
    pub url: String,
    /// Its S3 settings (credentials come from the environment).
    pub s3: S3Options,
    /// The repository it must find there (id, `config`, `keys`).
    pub pin: RepositoryPin,
    /// The volumes job it works for.
    pub job: String,
    /// The run it belongs to.
    pub run: String,
}

/// What a part snapshot's metadata says under [`PART_KEY`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    /// The run it belongs to.
    pub run: String,
    /// `NAMESPACE/CLAIM`.
    pub claim: String,
    /// The claim folder's entry, to graft into the run's snapshot.
    pub entry: Node,
    /// The cache object the mover left for the next (see [`cache`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
}

/// A volumes job's name as a label value and object key part, whatever
/// its spelling: 16 hex digits of its BLAKE3.
pub fn job_label(job: &str) -> String {
    blake3::hash(job.as_bytes()).to_hex()[..16].to_owned()
}

/// The job name of a volumes job's parts.
pub fn part_job(job: &str) -> String {
    format!("{job}.part")
}

/// Where claim `namespace/name` is in the snapshot.
pub fn snapshot_path(namespace: &str, name: &str) -> PathBuf {
    PathBuf::from(SNAPSHOT_ROOT).join(namespace).join(name)
}

/// Splits `NAMESPACE/CLAIM`, each part a Kubernetes name (lowercase
/// letters, digits, `-` and `.`, at most 253 characters, not `.` or `..`).
pub fn split_claim(claim: &str) -> Option<(&str, &str)> {
    let (namespace, name) = claim.split_once('/')?;
    let valid = |part: &str| {
        !part.is_empty()
            && part.len() <= 253
            && part != "."
            && part != ".."
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    (valid(namespace) && valid(name)).then_some((namespace, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_kubernetes_names_and_nothing_else() {
        assert_eq!(split_claim("apps/data-0"), Some(("apps", "data-0")));
        for hostile in [
            "apps", "/x", "apps/", "../x", "apps/..", "a/b/c", "A/b", "a/b c",
        ] {
            assert_eq!(split_claim(hostile), None, "{hostile}");
        }
        assert_eq!(
            snapshot_path("apps", "data-0"),
            PathBuf::from("/volumes/apps/data-0")
        );
    }
}
