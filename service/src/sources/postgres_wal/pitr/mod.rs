//! Point-in-time recovery: a data directory built from a base backup and
//! the archived WAL up to a target, with the recovery settings written, so
//! that PostgreSQL replays to the target when it starts.
//!
//! - **Base backup**: the newest of the job's cluster that ended before the
//!   target (a time: the snapshot's end; an LSN: its end LSN); `latest`
//!   takes the newest, a named restore point the oldest (lifeboat cannot
//!   know where the name is in the WAL).
//! - **WAL**: every segment from the base backup's start on, from the
//!   snapshots from the base backup's on (for a time target, up to the
//!   first snapshot taken after it, and one more), each segment once: a
//!   complete copy before a `.partial` one, a later `.partial` before an
//!   earlier. A segment missing in between fails the plan, naming it;
//!   nothing is written then.
//! - **Written**: the base backup's files, the segments in `pg_wal` (a
//!   partial one under its segment name: PostgreSQL replays up to its last
//!   whole record), `recovery.signal`, and at the end of
//!   `postgresql.auto.conf` the target, `recovery_target_action = 'promote'`
//!   and `restore_command = 'false'` (PostgreSQL requires one for archive
//!   recovery; the WAL is in `pg_wal` already).
//!
//! The snapshots are untrusted: every WAL file name is parsed, sizes are
//! checked, and the recovery files are written without following links.

mod timeline;
mod write;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use chrono::{DateTime, Utc};

pub use self::timeline::TimelineHistory;
pub use self::write::{Written, go_on, pause_at, recovery_settings, write};
use super::names::{Lsn, SEGMENT_SIZE, Segment, WalFile};
use super::server::BaseBackupRange;
use super::{BASE_FOLDER, WalMetadata};
use crate::repo::RepoError;
use crate::repo::id::SnapshotId;
use crate::repo::reader::BlobReader;
use crate::repo::snapshot::SnapshotEntry;
use crate::repo::tree::NodeKind;
use crate::restore::RestoreError;

/// A history file is a few lines per timeline switch.
const MAX_HISTORY_BYTES: u64 = 1024 * 1024;

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The end of the archived WAL.
    Latest,
    /// The last transaction committed at or before this time.
    Time(DateTime<Utc>),
    /// This WAL position.
    Lsn(Lsn),
    /// A restore point made with `pg_create_restore_point(name)`.
    Name(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Latest => f.write_str("latest"),
            Self::Time(time) => write!(f, "{}", time.to_rfc3339()),
            Self::Lsn(lsn) => write!(f, "LSN {lsn}"),
            Self::Name(name) => write!(f, "restore point {name:?}"),
        }
    }
}

/// Why a text is not a recovery target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a recovery target; give `latest`, a time with its offset \
     (2026-12-06T21:30:00Z, 2026-12-06 22:30:00+01:00), an LSN (0/16B3748) or name:RESTORE_POINT"
)]
pub struct NotATarget(pub String);

impl FromStr for Target {
    type Err = NotATarget;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text == "latest" {
            return Ok(Self::Latest);
        }
        if let Some(name) = text.strip_prefix("name:") {
            let usable = !name.is_empty() && name.len() < 64 && !name.chars().any(char::is_control);
            return usable
                .then(|| Self::Name(name.to_owned()))
                .ok_or_else(|| NotATarget(text.to_owned()));
        }
        if let Ok(lsn) = text.parse() {
            return Ok(Self::Lsn(lsn));
        }
        parse_time(text)
            .map(Self::Time)
            .ok_or_else(|| NotATarget(text.chars().take(60).collect()))
    }
}

/// RFC 3339, with a space for the `T` and PostgreSQL's `+HH` offsets
/// accepted too; a time without an offset is refused (whose clock?).
fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    let text = text.replacen(' ', "T", 1);
    let with_minutes = {
        let tail = text.get(text.len().saturating_sub(3)..).unwrap_or_default();
        let short_offset =
            tail.starts_with(['+', '-']) && tail[1..].bytes().all(|b| b.is_ascii_digit());
        if short_offset {
            format!("{text}:00")
        } else {
            text.clone()
        }
    };
    DateTime::parse_from_rfc3339(&with_minutes)
        .ok()
        .map(|time| time.with_timezone(&Utc))
}

/// Why a point-in-time recovery cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum PitrError {
    /// The snapshot named is not of a `postgres-wal` job.
    #[error(
        "snapshot {id} is not a WAL archive snapshot (kind postgres-wal); name one of the WAL archiving job's snapshots, e.g. latest:JOB"
    )]
    NotWal {
        /// The snapshot.
        id: String,
    },
    /// No base backup can reach the target.
    #[error(
        "no base backup of job {job} can be rolled forward to {target}{oldest}; choose a later target"
    )]
    NoBaseBackup {
        /// The job.
        job: String,
        /// The target.
        target: Target,
        /// The oldest base backup, as a hint.
        oldest: String,
    },
    /// A segment between the base backup and the target is not archived.
    #[error(
        "WAL segment {segment} is missing from the archive of job {job} (needed after base backup \
         {base}); recovery cannot pass it. Choose a target before it, or a base backup after it"
    )]
    MissingSegment {
        /// The job.
        job: String,
        /// The segment's name.
        segment: String,
        /// The base backup's snapshot.
        base: String,
    },
    /// The archive ends before the target or the base backup's end.
    #[error(
        "the archive of job {job} ends at segment {last}, before {what}; wait for the next run, or choose an earlier target"
    )]
    EndsTooSoon {
        /// The job.
        job: String,
        /// The last archived segment.
        last: String,
        /// What it should reach.
        what: String,
    },
    /// The target folder or a recovery file cannot be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Something in the data directory is not what a base backup holds.
    #[error(
        "{path} in the restored base backup is {what}, not a plain {expected}; the snapshot is damaged or forged"
    )]
    Unsafe {
        /// The path.
        path: PathBuf,
        /// What it is.
        what: &'static str,
        /// What it should be.
        expected: &'static str,
    },
    /// Reading the repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// Restoring files failed.
    #[error(transparent)]
    Restore(#[from] RestoreError),
    /// The newest timeline's history file is missing or damaged.
    #[error(
        "the WAL archive's timeline history {file} cannot be used: {problem}; recovery cannot follow the timeline switch. Choose a target before it"
    )]
    BadHistory {
        /// The history file's name.
        file: String,
        /// What is wrong.
        problem: String,
    },
}

/// One WAL file to write, and the snapshot it comes from.
#[derive(Debug, Clone)]
pub struct PlannedFile {
    /// The file as stored.
    pub stored: WalFile,
    /// The snapshot holding it.
    pub snapshot: SnapshotEntry,
}

impl PlannedFile {
    /// Its name in `pg_wal`.
    pub fn written_as(&self) -> String {
        match self.stored {
            WalFile::Partial(segment) => segment.name(),
            other => other.name(),
        }
    }
}

/// What a recovery to a target needs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The job.
    pub job: String,
    /// The target.
    pub target: Target,
    /// The snapshot holding the base backup.
    pub base: SnapshotEntry,
    /// Its place in the WAL.
    pub base_range: BaseBackupRange,
    /// The WAL files, history files first, then segments in order.
    pub files: Vec<PlannedFile>,
    /// The last segment.
    pub last_segment: Segment,
}

/// Plans a recovery of the cluster `chosen` (a snapshot of a WAL archiving
/// job) to `target`, among `snapshots` (all of the repository's).
///
/// Fails when `chosen` is not a WAL snapshot, no base backup fits, a
/// segment is missing, or the archive ends too soon.
pub async fn plan(
    reader: &BlobReader,
    snapshots: &[SnapshotEntry],
    chosen: &SnapshotEntry,
    target: &Target,
) -> Result<Plan, PitrError> {
    plan_from(reader, snapshots, chosen, target, target).await
}

/// Plans a recovery to the archive's end from a base backup that ended
/// by `stop`, so that recovery can first stop there (a drill's census) and
/// then go on.
///
/// Fails as [`plan`] does.
pub async fn plan_through(
    reader: &BlobReader,
    snapshots: &[SnapshotEntry],
    chosen: &SnapshotEntry,
    stop: Lsn,
) -> Result<Plan, PitrError> {
    plan_from(
        reader,
        snapshots,
        chosen,
        &Target::Latest,
        &Target::Lsn(stop),
    )
    .await
}

/// [`plan`], with the base backup chosen for `base_for`.
async fn plan_from(
    reader: &BlobReader,
    snapshots: &[SnapshotEntry],
    chosen: &SnapshotEntry,
    target: &Target,
    base_for: &Target,
) -> Result<Plan, PitrError> {
    let job = chosen.snapshot.job.clone();
    let archive = archive(snapshots, chosen).ok_or_else(|| PitrError::NotWal {
        id: chosen.id.short(),
    })?;
    let (base_at, base_range) = choose_base(&archive, base_for).ok_or_else(|| {
        let oldest = archive
            .iter()
            .find(|(_, m)| m.base_backup.is_some())
            .map(|(e, _)| format!(" (the oldest base backup ended {})", e.snapshot.end_time))
            .unwrap_or_else(|| " (it has none yet)".into());
        PitrError::NoBaseBackup {
            job: job.clone(),
            target: base_for.clone(),
            oldest,
        }
    })?;
    let mut wal = &archive[base_at..];
    if let Target::Time(time) = target
        && let Some(after) = wal.iter().position(|(e, _)| e.snapshot.time > *time)
    {
        wal = &wal[..(after + 2).min(wal.len())];
    }
    let first = base_range.start_lsn.segment();
    let mut best: BTreeMap<(u8, u64, u32), PlannedFile> = BTreeMap::new();
    let mut histories: BTreeMap<u32, crate::repo::tree::Node> = BTreeMap::new();
    for (entry, _) in wal {
        let tree = reader.read_tree(&entry.snapshot.root).await?;
        for node in &tree.entries {
            let Some(file) = std::str::from_utf8(&node.name.0)
                .ok()
                .and_then(WalFile::parse)
            else {
                continue;
            };
            let plausible = node.kind == NodeKind::File
                && match file {
                    WalFile::Segment(_) | WalFile::Partial(_) => node.size == SEGMENT_SIZE,
                    WalFile::History(_) => node.size <= MAX_HISTORY_BYTES,
                };
            let key = match file {
                WalFile::History(timeline) => (0, 0, timeline),
                WalFile::Segment(s) | WalFile::Partial(s) => (1, s.number, s.timeline),
            };
            if !plausible || file.segment().is_some_and(|s| s.number < first) {
                continue;
            }
            if let WalFile::History(timeline) = file {
                histories.insert(timeline, node.clone());
            }
            let replaces = match best.get(&key) {
                None => true,
                // A complete copy stays; a later partial one is longer.
                Some(kept) => !matches!(kept.stored, WalFile::Segment(_)),
            };
            if replaces {
                best.insert(
                    key,
                    PlannedFile {
                        stored: file,
                        snapshot: (*entry).clone(),
                    },
                );
            }
        }
    }
    let files: Vec<PlannedFile> = best.into_values().collect();
    let base = archive[base_at].0;
    let mut segments = base_segments(reader, base).await?;
    segments.extend(files.iter().filter_map(|f| f.stored.segment()));
    let newest = segments
        .iter()
        .map(|s| s.timeline)
        .max()
        .unwrap_or(base_range.timeline);
    let timelines = TimelineHistory::read(reader, &histories, newest, base_range.timeline).await?;
    let check = Continuity {
        job: &job,
        base: &base.id,
        range: base_range,
        timelines: &timelines,
    };
    let last_segment = check.run(&segments, target)?;
    Ok(Plan {
        job,
        target: target.clone(),
        base: base.clone(),
        base_range,
        files,
        last_segment,
    })
}

/// The archive `chosen` belongs to: the snapshots of its job and cluster
/// among `snapshots`, with their metadata, oldest first. `None` when
/// `chosen` is not a WAL snapshot.
pub fn archive<'a>(
    snapshots: &'a [SnapshotEntry],
    chosen: &SnapshotEntry,
) -> Option<Vec<(&'a SnapshotEntry, WalMetadata)>> {
    let cluster = WalMetadata::of(&chosen.snapshot)?.system_identifier;
    let mut archive: Vec<(&SnapshotEntry, WalMetadata)> = snapshots
        .iter()
        .filter(|e| e.snapshot.job == chosen.snapshot.job)
        .filter_map(|e| WalMetadata::of(&e.snapshot).map(|m| (e, m)))
        .filter(|(_, m)| m.system_identifier == cluster)
        .collect();
    archive.sort_by_key(|(e, _)| (e.snapshot.time, e.id));
    Some(archive)
}

/// The complete segments a base backup holds in its own `pg_wal` (the
/// WAL from its start to its end).
async fn base_segments(
    reader: &BlobReader,
    base: &SnapshotEntry,
) -> Result<Vec<Segment>, PitrError> {
    let root = reader.read_tree(&base.snapshot.root).await?;
    let mut tree = root;
    for folder in [BASE_FOLDER, "pg_wal"] {
        let subtree = tree
            .get(folder.as_bytes())
            .filter(|node| node.kind == NodeKind::Dir)
            .and_then(|node| node.subtree);
        let Some(subtree) = subtree else {
            return Ok(Vec::new());
        };
        tree = reader.read_tree(&subtree).await?;
    }
    Ok(tree
        .entries
        .iter()
        .filter(|node| node.kind == NodeKind::File && node.size == SEGMENT_SIZE)
        .filter_map(|node| {
            match std::str::from_utf8(&node.name.0)
                .ok()
                .and_then(WalFile::parse)
            {
                Some(WalFile::Segment(segment)) => Some(segment),
                _ => None,
            }
        })
        .collect())
}

/// The index in `archive` of the base backup to start from.
fn choose_base(
    archive: &[(&SnapshotEntry, WalMetadata)],
    target: &Target,
) -> Option<(usize, BaseBackupRange)> {
    let mut bases = archive
        .iter()
        .enumerate()
        .filter_map(|(at, (entry, m))| m.base_backup.map(|range| (at, *entry, range)));
    let fits = |(_, entry, range): &(usize, &SnapshotEntry, BaseBackupRange)| match target {
        Target::Latest | Target::Name(_) => true,
        Target::Time(time) => entry.snapshot.end_time <= *time,
        Target::Lsn(lsn) => range.end_lsn <= *lsn,
    };
    let chosen = match target {
        Target::Name(_) => bases.next(),
        _ => bases.rfind(fits),
    };
    chosen.map(|(at, _, range)| (at, range))
}

/// Checks that the archive holds every segment a recovery reads.
struct Continuity<'a> {
    job: &'a str,
    base: &'a SnapshotId,
    range: BaseBackupRange,
    timelines: &'a TimelineHistory,
}

impl Continuity<'_> {
    /// Checks that every segment from the base backup's start to the last
    /// one needed is among `segments`, on the timeline recovery reads it
    /// from; returns the last one.
    fn run(&self, segments: &[Segment], target: &Target) -> Result<Segment, PitrError> {
        let present: std::collections::HashSet<(u32, u64)> =
            segments.iter().map(|s| (s.timeline, s.number)).collect();
        let ends_too_soon = |last: String, what: String| PitrError::EndsTooSoon {
            job: self.job.to_owned(),
            last,
            what,
        };
        let newest = self.timelines.newest;
        let last_needed = match target {
            Target::Lsn(lsn) => lsn.segment(),
            _ => segments
                .iter()
                .filter(|s| s.timeline == newest)
                .map(|s| s.number)
                .max()
                .unwrap_or_default(),
        };
        let start = self.range.start_lsn.segment();
        let at = |number: u64| Segment {
            timeline: self.timelines.timeline_of(number),
            number,
        };
        let mut reached = None;
        for number in start..=last_needed.max(start) {
            let segment = at(number);
            if !present.contains(&(segment.timeline, number)) {
                if number > last_needed || segments.iter().all(|s| s.number <= number) {
                    break;
                }
                return Err(PitrError::MissingSegment {
                    job: self.job.to_owned(),
                    segment: segment.name(),
                    base: self.base.short(),
                });
            }
            reached = Some(segment);
        }
        let Some(last) = reached else {
            return Err(ends_too_soon(
                "(none)".into(),
                format!("the start of base backup {}", self.base.short()),
            ));
        };
        if self.range.end_lsn.segment() > last.number {
            return Err(ends_too_soon(
                last.name(),
                format!(
                    "the end of base backup {} ({})",
                    self.base.short(),
                    self.range.end_lsn
                ),
            ));
        }
        if let Target::Lsn(lsn) = target
            && lsn.segment() > last.number
        {
            return Err(ends_too_soon(last.name(), format!("{lsn}")));
        }
        Ok(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_read_as_operators_write_them() {
        assert_eq!("latest".parse(), Ok(Target::Latest));
        assert_eq!("0/3000028".parse(), Ok(Target::Lsn(Lsn(0x300_0028))));
        assert_eq!(
            "name:before-upgrade".parse(),
            Ok(Target::Name("before-upgrade".into()))
        );
        let time = DateTime::parse_from_rfc3339("2026-12-06T21:29:21.515146Z")
            .map(|t| t.with_timezone(&Utc))
            .expect("a time");
        for text in [
            "2026-12-06T21:29:21.515146Z",
            "2026-12-06 21:29:21.515146+00",
            "2026-12-06 22:29:21.515146+01:00",
        ] {
            assert_eq!(text.parse(), Ok(Target::Time(time)), "{text}");
        }
        for bad in ["", "yesterday", "2026-12-06 21:29:21", "name:", "0/zz"] {
            assert!(bad.parse::<Target>().is_err(), "{bad:?}");
        }
    }
}
