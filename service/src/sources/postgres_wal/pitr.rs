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

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::names::{Lsn, SEGMENT_SIZE, Segment, WalFile};
use super::server::BaseBackupRange;
use super::{BASE_FOLDER, WalMetadata};
use crate::repo::RepoError;
use crate::repo::id::SnapshotId;
use crate::repo::reader::BlobReader;
use crate::repo::snapshot::SnapshotEntry;
use crate::repo::tree::NodeKind;
use crate::restore::RestoreError;
use crate::restore::files::{RestoreOptions, RestoreProgress, restore};

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
    let job = chosen.snapshot.job.clone();
    let cluster = WalMetadata::of(&chosen.snapshot)
        .ok_or_else(|| PitrError::NotWal {
            id: chosen.id.short(),
        })?
        .system_identifier;
    let mut archive: Vec<(&SnapshotEntry, WalMetadata)> = snapshots
        .iter()
        .filter(|e| e.snapshot.job == job)
        .filter_map(|e| WalMetadata::of(&e.snapshot).map(|m| (e, m)))
        .filter(|(_, m)| m.system_identifier == cluster)
        .collect();
    archive.sort_by_key(|(e, _)| (e.snapshot.time, e.id));
    let (base_at, base_range) = choose_base(&archive, target).ok_or_else(|| {
        let oldest = archive
            .iter()
            .find(|(_, m)| m.base_backup.is_some())
            .map(|(e, _)| format!(" (the oldest base backup ended {})", e.snapshot.end_time))
            .unwrap_or_else(|| " (it has none yet)".into());
        PitrError::NoBaseBackup {
            job: job.clone(),
            target: target.clone(),
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

/// Which timeline the recovery follows where: the newest timeline's
/// history file lists each ancestor and where the next one branched off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineHistory {
    /// The timeline recovery ends on.
    pub newest: u32,
    /// Its ancestors, oldest first, each with the position where it ended.
    pub ancestors: Vec<(u32, Lsn)>,
}

impl TimelineHistory {
    /// Reads the history file of `newest` (none needed when it is the base
    /// backup's own timeline).
    ///
    /// Fails when it is missing, unreadable, or not a history file.
    async fn read(
        reader: &BlobReader,
        histories: &BTreeMap<u32, crate::repo::tree::Node>,
        newest: u32,
        base_timeline: u32,
    ) -> Result<Self, PitrError> {
        let history = || WalFile::History(newest).name();
        if newest <= base_timeline {
            return Ok(Self {
                newest,
                ancestors: Vec::new(),
            });
        }
        let node = histories
            .get(&newest)
            .ok_or_else(|| PitrError::BadHistory {
                file: history(),
                problem: "it is not in the archive".into(),
            })?;
        let text = crate::restore::contents::read_small(reader, node).await?;
        Self::parse(newest, &String::from_utf8_lossy(&text)).map_err(|problem| {
            PitrError::BadHistory {
                file: history(),
                problem,
            }
        })
    }

    /// Parses a history file's lines (`parent<TAB>switch LSN<TAB>reason`).
    pub fn parse(newest: u32, text: &str) -> Result<Self, String> {
        let mut ancestors = Vec::new();
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let mut fields = line.split_whitespace();
            let parsed = match (fields.next(), fields.next()) {
                (Some(timeline), Some(lsn)) => {
                    timeline.parse::<u32>().ok().zip(lsn.parse::<Lsn>().ok())
                }
                _ => None,
            };
            let Some((timeline, switch)) = parsed else {
                return Err(format!(
                    "the line {:?} is not `timeline<TAB>LSN`",
                    line.chars().take(80).collect::<String>()
                ));
            };
            let ordered = ancestors
                .last()
                .is_none_or(|&(t, l): &(u32, Lsn)| timeline > t && switch >= l);
            if !ordered || timeline >= newest {
                return Err(format!("the line {line:?} does not continue the history"));
            }
            ancestors.push((timeline, switch));
        }
        Ok(Self { newest, ancestors })
    }

    /// The timeline whose file of segment `number` recovery reads: the one
    /// that was current at the segment's last byte.
    pub fn timeline_of(&self, number: u64) -> u32 {
        let last_byte = Lsn((number + 1) * SEGMENT_SIZE - 1);
        self.ancestors
            .iter()
            .find(|(_, switch)| last_byte < *switch)
            .map_or(self.newest, |(timeline, _)| *timeline)
    }
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

/// What [`write`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Written {
    /// The data directory.
    pub data_dir: PathBuf,
    /// The base backup's snapshot.
    pub base_snapshot: String,
    /// When that backup ended.
    pub base_time: DateTime<Utc>,
    /// The target, as written.
    pub target: String,
    /// WAL files written.
    pub wal_files: usize,
    /// The last segment.
    pub last_segment: String,
}

/// Writes the data directory of `plan` into `dir` (new or empty).
///
/// Fails when `dir` is not empty, the repository fails, or the base backup
/// holds links where the recovery files go.
pub async fn write(
    reader: &BlobReader,
    plan: &Plan,
    dir: &Path,
    progress: Arc<RestoreProgress>,
) -> Result<Written, PitrError> {
    let fresh = RestoreOptions {
        force: false,
        keep_special: false,
    };
    restore(
        reader,
        plan.base.snapshot.root,
        BASE_FOLDER,
        dir,
        &fresh,
        progress.clone(),
    )
    .await?;
    let wal_dir = dir.join("pg_wal");
    plain_dir(&wal_dir)?;
    let replace = RestoreOptions {
        force: true,
        keep_special: false,
    };
    for file in &plan.files {
        let name = file.stored.name();
        restore(
            reader,
            file.snapshot.snapshot.root,
            &name,
            &wal_dir,
            &replace,
            progress.clone(),
        )
        .await?;
        let written = file.written_as();
        if written != name {
            let (from, to) = (wal_dir.join(&name), wal_dir.join(&written));
            std::fs::rename(&from, &to).map_err(|source| PitrError::Write { path: to, source })?;
        }
    }
    write_new(&dir.join("recovery.signal"), b"")?;
    append(
        &dir.join("postgresql.auto.conf"),
        recovery_settings(&plan.target).as_bytes(),
    )?;
    let standby = dir.join("standby.signal");
    if std::fs::symlink_metadata(&standby).is_ok() {
        std::fs::remove_file(&standby).map_err(|source| PitrError::Write {
            path: standby,
            source,
        })?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|source| {
        PitrError::Write {
            path: dir.to_owned(),
            source,
        }
    })?;
    Ok(Written {
        data_dir: dir.to_owned(),
        base_snapshot: plan.base.id.to_hex(),
        base_time: plan.base.snapshot.end_time,
        target: plan.target.to_string(),
        wal_files: plan.files.len(),
        last_segment: plan.last_segment.name(),
    })
}

/// The lines appended to `postgresql.auto.conf` (later settings win).
pub fn recovery_settings(target: &Target) -> String {
    let mut settings = String::from(
        "\n# Written by lifeboat restore --pitr: the archived WAL is in pg_wal.\n\
         restore_command = 'false'\n\
         recovery_target_timeline = 'latest'\n\
         recovery_target_action = 'promote'\n",
    );
    let quoted = |value: &str| format!("'{}'", value.replace('\'', "''"));
    let line = match target {
        Target::Latest => None,
        Target::Time(time) => Some(format!(
            "recovery_target_time = {}",
            quoted(&time.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string())
        )),
        Target::Lsn(lsn) => Some(format!(
            "recovery_target_lsn = {}",
            quoted(&lsn.to_string())
        )),
        Target::Name(name) => Some(format!("recovery_target_name = {}", quoted(name))),
    };
    if let Some(line) = line {
        settings.push_str(&line);
        settings.push('\n');
    }
    settings
}

/// Fails unless `path` is a folder, not a link to one.
fn plain_dir(path: &Path) -> Result<(), PitrError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(meta) => Err(PitrError::Unsafe {
            path: path.to_owned(),
            what: if meta.is_symlink() {
                "a symbolic link"
            } else {
                "not a folder"
            },
            expected: "folder",
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir(path).map_err(|source| PitrError::Write {
                path: path.to_owned(),
                source,
            })
        }
        Err(source) => Err(PitrError::Write {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Creates `path` holding `bytes`; it must not exist.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), PitrError> {
    open_plain(
        path,
        std::fs::OpenOptions::new().write(true).create_new(true),
        bytes,
    )
}

/// Appends `bytes` to `path`, creating it; never through a link.
fn append(path: &Path, bytes: &[u8]) -> Result<(), PitrError> {
    open_plain(
        path,
        std::fs::OpenOptions::new().append(true).create(true),
        bytes,
    )
}

fn open_plain(
    path: &Path,
    options: &mut std::fs::OpenOptions,
    bytes: &[u8],
) -> Result<(), PitrError> {
    let failed = |source| PitrError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = options
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => PitrError::Unsafe {
                path: path.to_owned(),
                what: "a symbolic link",
                expected: "file",
            },
            _ => failed(e),
        })?;
    if !file.metadata().map_err(failed)?.is_file() {
        return Err(PitrError::Unsafe {
            path: path.to_owned(),
            what: "not a file",
            expected: "file",
        });
    }
    file.write_all(bytes).map_err(failed)
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

    #[test]
    fn the_history_says_which_timeline_holds_each_segment() {
        let text =
            "1\t0/F000100\tno recovery target specified\n\n2\t0/13000000\tat restore point\n";
        let history = TimelineHistory::parse(3, text).expect("a history");
        assert_eq!(
            history.ancestors,
            [(1, Lsn(0xF00_0100)), (2, Lsn(0x1300_0000))]
        );
        assert_eq!(history.timeline_of(0xE), 1);
        assert_eq!(
            history.timeline_of(0xF),
            2,
            "the switch segment is the new timeline's"
        );
        assert_eq!(history.timeline_of(0x12), 2);
        assert_eq!(history.timeline_of(0x13), 3);
        for bad in ["x\t0/1", "2\t0/1\n1\t0/2", "3\t0/1", "1"] {
            assert!(TimelineHistory::parse(3, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn settings_quote_what_they_hold() {
        let settings = recovery_settings(&Target::Name("it's".into()));
        assert!(settings.contains("recovery_target_name = 'it''s'\n"));
        assert!(settings.contains("restore_command = 'false'"));
        assert!(!recovery_settings(&Target::Latest).contains("recovery_target_time ="));
        let time = "2026-12-06T21:29:21.5Z".parse().expect("a time");
        assert!(
            recovery_settings(&time)
                .contains("recovery_target_time = '2026-12-06 21:29:21.500000+00'")
        );
    }
}
