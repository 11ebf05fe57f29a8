//! The spool: the folder of lifeboat's state that `pg_receivewal` writes
//! the WAL into, and that each run of the job stores from.
//!
//! - One writer at a time: whoever runs `pg_receivewal` holds an exclusive
//!   `flock` on `.lock`, and hands that lock to the program as its stdin,
//!   so a `pg_receivewal` left running by a killed lifeboatd keeps it until
//!   it exits and no second writer starts meanwhile.
//! - A completed segment is deleted only once a committed snapshot holds
//!   it: a run writes what it stores into `stored.json` before it commits,
//!   and the next run deletes those segments only if the repository holds
//!   that run's snapshot. The newest segment always stays, since
//!   `pg_receivewal` resumes after the newest file it finds.
//! - `system-identifier` pins the spool to one PostgreSQL cluster: a
//!   server that is a new cluster (re-initialised, or restored from a base
//!   backup of another) starts a new spool.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::names::{Lsn, SEGMENT_SIZE, Segment, WalFile};

/// The lock file's name.
const LOCK: &str = ".lock";
/// The journal of the last run's stored segments.
const JOURNAL: &str = "stored.json";
/// The cluster the spool's WAL is from.
const SYSTEM_IDENTIFIER: &str = "system-identifier";
/// Where a base backup is written before it is stored.
const BASE_BACKUP: &str = "base-backup.tmp";

/// A job's spool folder.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

/// The writer's lock; released when dropped (and when every program it
/// was handed to has exited).
#[derive(Debug)]
pub struct WriterLock(File);

impl WriterLock {
    /// A handle on the same lock, for a program's stdin.
    pub fn share(&self) -> io::Result<File> {
        self.0.try_clone()
    }
}

/// A WAL file in the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolFile {
    /// What it is.
    pub file: WalFile,
    /// Where it is.
    pub path: PathBuf,
}

/// What a run stored, written before its snapshot is committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// The job.
    pub job: String,
    /// The snapshot's time (its run's start).
    pub snapshot_time: DateTime<Utc>,
    /// The complete segments it stored, by name.
    pub segments: Vec<String>,
}

impl Spool {
    /// The spool of `job` under the state folder `state_dir`, created
    /// (owner-only) when missing.
    pub fn open(state_dir: &Path, job: &str) -> io::Result<Self> {
        let stem = crate::sources::postgres::connection::file_stem(job);
        let dir = state_dir.join("wal").join(format!("job-{stem}"));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        Ok(Self { dir })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the writer's lock if nobody holds it.
    pub fn try_lock(&self) -> io::Result<Option<WriterLock>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.dir.join(LOCK))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(WriterLock(file))),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The WAL files, oldest first; anything else in the folder is left
    /// alone. A complete segment of the wrong size is left out (a copy
    /// cut short is not a segment).
    pub fn files(&self) -> io::Result<Vec<SpoolFile>> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Some(file) = entry.file_name().to_str().and_then(WalFile::parse) else {
                continue;
            };
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                // Renamed from .partial since the listing.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let complete_size = !matches!(file, WalFile::Segment(_)) || meta.len() == SEGMENT_SIZE;
            if meta.is_file() && complete_size {
                files.push(SpoolFile {
                    file,
                    path: entry.path(),
                });
            }
        }
        files.sort_by_key(|f| order(&f.file));
        Ok(files)
    }

    /// Where `pg_receivewal` starts streaming into this spool: after the
    /// newest complete segment, at the start of a partial one, or (empty)
    /// at the start of the segment holding `server`, the server's position.
    pub fn resume_position(&self, server: Lsn) -> io::Result<Lsn> {
        let newest = self.files()?.into_iter().rev().find_map(|f| match f.file {
            WalFile::Segment(s) => Some(Lsn((s.number + 1) * SEGMENT_SIZE)),
            WalFile::Partial(s) => Some(Lsn(s.number * SEGMENT_SIZE)),
            WalFile::History(_) => None,
        });
        Ok(newest.unwrap_or(Lsn(server.segment() * SEGMENT_SIZE)))
    }

    /// Marks where the next `pg_receivewal` starts when the spool holds no
    /// WAL yet: an empty (sparse) `.partial` file of `segment`, which it
    /// takes as the segment it was writing. Without it, it would start at
    /// the server's position of that later moment, and what the server
    /// wrote in between would never be received.
    pub fn anchor(&self, segment: Segment) -> io::Result<()> {
        if self.files()?.iter().any(|f| f.file.segment().is_some()) {
            return Ok(());
        }
        self.resume_at(segment)
    }

    /// Makes `pg_receivewal` resume at the start of `segment` (an empty
    /// `.partial` file of it, newer than every other file).
    pub fn resume_at(&self, segment: Segment) -> io::Result<()> {
        let path = self.dir.join(WalFile::Partial(segment).name());
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)?;
        file.set_len(SEGMENT_SIZE)
    }

    /// Removes the WAL files that are `unwanted`.
    pub fn remove(&self, unwanted: impl Fn(&WalFile) -> bool) -> io::Result<()> {
        for file in self.files()? {
            if unwanted(&file.file) {
                remove_if_present(&file.path)?;
            }
        }
        Ok(())
    }

    /// The timeline of the newest segment in the spool, if any.
    pub fn newest_timeline(&self) -> io::Result<Option<u32>> {
        Ok(self
            .files()?
            .iter()
            .rev()
            .find_map(|f| f.file.segment())
            .map(|s| s.timeline))
    }

    /// The cluster the spool holds WAL of, if recorded.
    pub fn system_identifier(&self) -> io::Result<Option<String>> {
        match std::fs::read_to_string(self.dir.join(SYSTEM_IDENTIFIER)) {
            Ok(text) => Ok(Some(text.trim().to_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Starts the spool over for the cluster `system_identifier`: its WAL
    /// files and journal are deleted (whatever of them was stored is in
    /// the repository).
    pub fn restart_for(&self, system_identifier: &str) -> io::Result<()> {
        self.remove(|_| true)?;
        remove_if_present(&self.dir.join(JOURNAL))?;
        std::fs::write(self.dir.join(SYSTEM_IDENTIFIER), system_identifier)
    }

    /// The last run's journal, if any (an unreadable one counts as none:
    /// its segments are then kept, and stored again).
    pub fn journal(&self) -> Option<Journal> {
        crate::state::json_file::load(&self.dir, JOURNAL, "its segments are stored again")
    }

    /// Records what this run stores, before its snapshot is committed.
    pub fn write_journal(&self, journal: &Journal) -> io::Result<()> {
        crate::state::json_file::save(&self.dir, JOURNAL, journal)
    }

    /// Deletes the complete segments `journal` names, except the newest
    /// WAL file of the spool (where `pg_receivewal` resumes). Call it only
    /// once the journal's snapshot is known to be committed.
    pub fn forget_stored(&self, journal: &Journal) -> io::Result<u64> {
        let files = self.files()?;
        let newest = files
            .iter()
            .filter(|f| f.file.segment().is_some())
            .max_by_key(|f| order(&f.file))
            .map(|f| f.file);
        let mut deleted = 0;
        for file in &files {
            let stored = matches!(file.file, WalFile::Segment(_))
                && journal.segments.contains(&file.file.name());
            if stored && Some(file.file) != newest {
                remove_if_present(&file.path)?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// The folder a base backup is written into, emptied first.
    pub fn fresh_base_backup_dir(&self) -> io::Result<PathBuf> {
        let dir = self.dir.join(BASE_BACKUP);
        self.remove_base_backup_dir()?;
        Ok(dir)
    }

    /// Deletes the base backup's folder, once stored (or failed).
    pub fn remove_base_backup_dir(&self) -> io::Result<()> {
        match std::fs::remove_dir_all(self.dir.join(BASE_BACKUP)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// History files first, then segments by number and timeline, a complete
/// segment before a partial one of the same name.
fn order(file: &WalFile) -> (u8, u64, u32, u8) {
    match file {
        WalFile::History(timeline) => (0, 0, *timeline, 0),
        WalFile::Segment(s) => (1, s.number, s.timeline, 0),
        WalFile::Partial(s) => (1, s.number, s.timeline, 1),
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::postgres_wal::names::Segment;

    fn segment(number: u64) -> WalFile {
        WalFile::Segment(Segment {
            timeline: 1,
            number,
        })
    }

    #[test]
    fn stored_segments_go_but_the_newest_file_stays() -> io::Result<()> {
        let state = tempfile::tempdir()?;
        let spool = Spool::open(state.path(), "db")?;
        for number in 1..=3 {
            let file = File::create(spool.dir().join(segment(number).name()))?;
            file.set_len(SEGMENT_SIZE)?;
        }
        // A cut copy is not a segment; other files are not WAL.
        File::create(spool.dir().join(segment(4).name()))?.set_len(100)?;
        std::fs::write(spool.dir().join("notes.txt"), "x")?;
        let names: Vec<String> = spool.files()?.iter().map(|f| f.file.name()).collect();
        assert_eq!(
            names,
            [1, 2, 3].map(|n| segment(n).name()),
            "only whole segments"
        );

        let journal = Journal {
            job: "db".into(),
            snapshot_time: Utc::now(),
            segments: [1, 2, 3].map(|n| segment(n).name()).to_vec(),
        };
        spool.write_journal(&journal)?;
        assert_eq!(spool.journal(), Some(journal.clone()));
        assert_eq!(spool.forget_stored(&journal)?, 2);
        let left: Vec<String> = spool.files()?.iter().map(|f| f.file.name()).collect();
        assert_eq!(left, [segment(3).name()], "the newest stays for resuming");
        Ok(())
    }

    #[test]
    fn an_empty_spool_is_anchored_where_receiving_resumes() -> io::Result<()> {
        let state = tempfile::tempdir()?;
        let spool = Spool::open(state.path(), "db")?;
        let at = Segment {
            timeline: 2,
            number: 7,
        };
        spool.anchor(at)?;
        assert_eq!(
            spool.resume_position(Lsn(9 * SEGMENT_SIZE))?,
            Lsn(7 * SEGMENT_SIZE)
        );
        spool.anchor(Segment { number: 9, ..at })?;
        assert_eq!(
            spool.files()?.len(),
            1,
            "a spool with WAL is not anchored again"
        );
        Ok(())
    }

    #[test]
    fn one_writer_holds_the_lock() -> io::Result<()> {
        let state = tempfile::tempdir()?;
        let spool = Spool::open(state.path(), "../db")?;
        assert!(spool.dir().starts_with(state.path().join("wal")));
        let held = spool.try_lock()?.expect("the first writer gets the lock");
        assert!(spool.try_lock()?.is_none(), "a second writer waits");
        let shared = held.share()?;
        drop(held);
        assert!(
            spool.try_lock()?.is_none(),
            "a program handed the lock keeps it"
        );
        drop(shared);
        assert!(spool.try_lock()?.is_some());
        Ok(())
    }
}
