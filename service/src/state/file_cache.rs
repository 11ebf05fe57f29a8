//! The file-metadata cache: lets a backup skip reading files whose size,
//! modification time, change time and inode are unchanged since the last
//! backup of the same job into the same repository. For claims read by
//! volume movers, whose caches are objects in the repository, it records
//! which object is each claim's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, params};

use super::{CachedFile, FileStamp, KnownFiles, KnownFilesBuilder};
use crate::repo::id::BlobId;
use crate::repo::index::Index;

/// Migrations, applied in order; the database's `user_version` counts them.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE files (
        repository TEXT NOT NULL,
        job TEXT NOT NULL,
        path BLOB NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        ctime_ns INTEGER NOT NULL,
        inode INTEGER NOT NULL,
        content BLOB NOT NULL,
        PRIMARY KEY (repository, job, path)
    ) WITHOUT ROWID",
    "CREATE TABLE mover_caches (
        repository TEXT NOT NULL,
        job TEXT NOT NULL,
        claim TEXT NOT NULL,
        object TEXT NOT NULL,
        PRIMARY KEY (repository, job, claim)
    ) WITHOUT ROWID",
];

/// A cache failure. The backup goes on without the cache.
#[derive(Debug, thiserror::Error)]
#[error("file cache {path}: {source}; delete it to start afresh (only time is lost)")]
pub struct StateError {
    /// The database file.
    pub path: PathBuf,
    /// SQLite's error.
    #[source]
    pub source: rusqlite::Error,
}

/// The cache database.
#[derive(Debug)]
pub struct FileCache {
    path: PathBuf,
    connection: Connection,
}

impl FileCache {
    /// Opens (creating if needed) the cache in `state_dir`.
    ///
    /// Fails when the database cannot be opened or migrated.
    pub fn open(state_dir: &Path) -> Result<Self, StateError> {
        let path = state_dir.join("files.sqlite");
        let fail = |source| StateError {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(state_dir)
            .map_err(|e| fail(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        let connection = super::database::open(&path, MIGRATIONS).map_err(|e| match e {
            super::database::OpenError::Sqlite(source) => fail(source),
            super::database::OpenError::Newer { found } => {
                fail(rusqlite::Error::InvalidParameterName(format!(
                    "schema version {found} is newer than this lifeboat knows ({})",
                    MIGRATIONS.len()
                )))
            }
        })?;
        Ok(Self { path, connection })
    }

    fn fail(&self, source: rusqlite::Error) -> StateError {
        StateError {
            path: self.path.clone(),
            source,
        }
    }

    /// Every cached file of one job in one repository, by path; with
    /// `index`, only those whose blobs it holds, each kept as its position.
    ///
    /// Fails when the database cannot be read.
    pub fn load(
        &self,
        repository: &str,
        job: &str,
        index: Option<Arc<Index>>,
    ) -> Result<KnownFiles, StateError> {
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT path, size, mtime_ns, ctime_ns, inode, content FROM files \
                 WHERE repository = ?1 AND job = ?2",
            )
            .map_err(|e| self.fail(e))?;
        let mut rows = statement
            .query(params![repository, job])
            .map_err(|e| self.fail(e))?;
        let mut known = index.map(KnownFilesBuilder::over).unwrap_or_default();
        while let Some(row) = rows.next().map_err(|e| self.fail(e))? {
            let read = |row: &rusqlite::Row<'_>| {
                let content = row.get_ref(5)?.as_blob()?;
                Ok::<_, rusqlite::Error>(CachedFile {
                    stamp: FileStamp {
                        size: row.get::<_, i64>(1)? as u64,
                        mtime_ns: row.get(2)?,
                        ctime_ns: row.get(3)?,
                        inode: row.get::<_, i64>(4)? as u64,
                    },
                    content: content
                        .chunks_exact(32)
                        .filter_map(|id| id.try_into().ok().map(BlobId::from_bytes))
                        .collect(),
                })
            };
            let file = read(row).map_err(|e| self.fail(e))?;
            let path = row
                .get_ref(0)
                .and_then(|path| Ok(path.as_blob()?))
                .map_err(|e| self.fail(e))?;
            known.insert(path, &file);
        }
        Ok(known.build())
    }

    /// Sets aside what a backup learnt of some of its files, in a
    /// temporary table of this connection, so that a backup of a million
    /// files need not hold them all until it ends;
    /// [`FileCache::replace`] then makes them the job's cache.
    ///
    /// Fails when the database cannot be written.
    pub fn stage(&mut self, files: &[(Vec<u8>, CachedFile)]) -> Result<(), StateError> {
        let path = self.path.clone();
        let fail = |source| StateError {
            path: path.clone(),
            source,
        };
        self.connection
            .execute(
                "CREATE TEMP TABLE IF NOT EXISTS staged (
                    path BLOB PRIMARY KEY,
                    size INTEGER NOT NULL,
                    mtime_ns INTEGER NOT NULL,
                    ctime_ns INTEGER NOT NULL,
                    inode INTEGER NOT NULL,
                    content BLOB NOT NULL
                ) WITHOUT ROWID",
                [],
            )
            .map_err(fail)?;
        let transaction = self.connection.transaction().map_err(fail)?;
        {
            let mut insert = transaction
                .prepare_cached(
                    "INSERT OR REPLACE INTO temp.staged \
                     (path, size, mtime_ns, ctime_ns, inode, content) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(fail)?;
            for (file_path, file) in files {
                let content: Vec<u8> = file.content.iter().flat_map(|id| *id.as_bytes()).collect();
                insert
                    .execute(params![
                        file_path,
                        file.stamp.size as i64,
                        file.stamp.mtime_ns,
                        file.stamp.ctime_ns,
                        file.stamp.inode as i64,
                        content
                    ])
                    .map_err(fail)?;
            }
        }
        transaction.commit().map_err(fail)
    }

    /// Replaces the cached files of one job with those staged and `files`,
    /// and empties the stage.
    ///
    /// Fails when the database cannot be written.
    pub fn replace(
        &mut self,
        repository: &str,
        job: &str,
        files: &[(Vec<u8>, CachedFile)],
    ) -> Result<(), StateError> {
        self.stage(files)?;
        self.replace_rows("files", (repository, job), |transaction| {
            transaction.execute(
                "INSERT OR REPLACE INTO files \
                 (repository, job, path, size, mtime_ns, ctime_ns, inode, content) \
                 SELECT ?1, ?2, path, size, mtime_ns, ctime_ns, inode, content FROM temp.staged",
                params![repository, job],
            )?;
            transaction.execute("DELETE FROM temp.staged", [])?;
            Ok(())
        })
    }

    /// The cache object of each claim of volumes job `job`.
    ///
    /// Fails when the database cannot be read.
    pub fn mover_caches(
        &self,
        repository: &str,
        job: &str,
    ) -> Result<BTreeMap<String, String>, StateError> {
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT claim, object FROM mover_caches WHERE repository = ?1 AND job = ?2",
            )
            .map_err(|e| self.fail(e))?;
        let rows = statement
            .query_map(params![repository, job], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .map_err(|e| self.fail(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.fail(e))
    }

    /// Replaces the cache objects of volumes job `job` with `objects`
    /// (claim → object).
    ///
    /// Fails when the database cannot be written.
    pub fn replace_mover_caches(
        &mut self,
        repository: &str,
        job: &str,
        objects: &BTreeMap<String, String>,
    ) -> Result<(), StateError> {
        self.replace_rows("mover_caches", (repository, job), |transaction| {
            let mut insert = transaction.prepare_cached(
                "INSERT INTO mover_caches (repository, job, claim, object) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (claim, object) in objects {
                insert.execute(params![repository, job, claim, object])?;
            }
            Ok(())
        })
    }

    /// In one transaction, deletes the rows of `table` of one repository
    /// and job and lets `insert` write their replacements.
    fn replace_rows(
        &mut self,
        table: &str,
        (repository, job): (&str, &str),
        insert: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>,
    ) -> Result<(), StateError> {
        let path = self.path.clone();
        let fail = |source| StateError {
            path: path.clone(),
            source,
        };
        let transaction = self.connection.transaction().map_err(fail)?;
        transaction
            .execute(
                &format!("DELETE FROM {table} WHERE repository = ?1 AND job = ?2"),
                params![repository, job],
            )
            .map_err(fail)?;
        insert(&transaction).map_err(fail)?;
        transaction.commit().map_err(fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(size: u64) -> FileStamp {
        FileStamp {
            size,
            mtime_ns: 1,
            ctime_ns: 2,
            inode: 3,
        }
    }

    #[test]
    fn entries_survive_reopening_and_are_replaced_per_job() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = CachedFile {
            stamp: stamp(5),
            content: vec![BlobId::from_bytes([7; 32])],
        };
        FileCache::open(dir.path())?.replace("repo", "job", &[(b"/a".to_vec(), file.clone())])?;
        let mut cache = FileCache::open(dir.path())?;
        assert_eq!(
            cache.load("repo", "job", None)?.content(b"/a", &file.stamp),
            Some(file.content)
        );
        assert!(cache.load("repo", "other", None)?.is_empty());
        cache.replace("repo", "job", &[])?;
        assert!(cache.load("repo", "job", None)?.is_empty());
        Ok(())
    }

    #[test]
    fn staged_entries_join_the_next_replace_once() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = |size| CachedFile {
            stamp: stamp(size),
            content: vec![BlobId::from_bytes([7; 32]); 2],
        };
        let mut cache = FileCache::open(dir.path())?;
        cache.replace("repo", "job", &[(b"/old".to_vec(), file(1))])?;
        cache.stage(&[(b"/a".to_vec(), file(2)), (b"/b".to_vec(), file(3))])?;
        cache.stage(&[(b"/a".to_vec(), file(4))])?;
        assert_eq!(
            cache.load("repo", "job", None)?.len(),
            1,
            "staged is not yet the cache"
        );
        cache.replace("repo", "job", &[(b"/c".to_vec(), file(5))])?;
        let loaded = cache.load("repo", "job", None)?;
        let found = |path: &[u8], size| loaded.content(path, &stamp(size)).is_some();
        assert_eq!(
            (found(b"/a", 4), found(b"/b", 3), found(b"/c", 5)),
            (true, true, true)
        );
        assert!(!found(b"/a", 2), "the later stage replaces the earlier");
        assert!(!found(b"/old", 1), "the old cache is replaced");
        assert_eq!(loaded.len(), 3);
        assert_eq!(loaded.content(b"/a", &stamp(4)).map(|c| c.len()), Some(2));
        cache.replace("repo", "other", &[])?;
        assert!(
            cache.load("repo", "other", None)?.is_empty(),
            "the stage was emptied"
        );
        Ok(())
    }

    #[test]
    fn mover_cache_objects_are_kept_per_job_and_replaced_whole() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let objects: BTreeMap<String, String> =
            [("apps/a".to_owned(), "caches/x/1".to_owned())].into();
        FileCache::open(dir.path())?.replace_mover_caches("repo", "volumes", &objects)?;
        let mut cache = FileCache::open(dir.path())?;
        assert_eq!(cache.mover_caches("repo", "volumes")?, objects);
        assert!(cache.mover_caches("repo", "other")?.is_empty());
        cache.replace_mover_caches("repo", "volumes", &BTreeMap::new())?;
        assert!(cache.mover_caches("repo", "volumes")?.is_empty());
        Ok(())
    }
}
