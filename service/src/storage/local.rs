//! A repository in a local directory: the embedded default.
//!
//! Each object is a file under the root; the key's slashes are directories.
//! A create writes a uniquely named temporary file, syncs it, then links it
//! into place with `link(2)`, which fails if the name is taken: the object
//! appears whole or not at all, and an existing one is never replaced.

use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectInfo, ObjectReader, ObjectStore, StorageError};

/// Prefix of temporary files; listings skip them.
const TEMP_PREFIX: &str = ".tmp-";

/// An object store in a directory of the local file system.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// A store rooted at `root`; the directory is created on first write.
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn io(action: &'static str, path: &Path, source: std::io::Error) -> StorageError {
        StorageError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }

    fn not_found(&self, key: &str) -> StorageError {
        StorageError::NotFound {
            store: self.url(),
            key: key.to_owned(),
        }
    }

    fn put_blocking(&self, key: &str, data: &[u8]) -> Result<(), StorageError> {
        let target = self.path(key);
        let dir = target.parent().unwrap_or(&self.root).to_owned();
        std::fs::create_dir_all(&dir).map_err(|e| Self::io("creating directory", &dir, e))?;
        let mut temp = tempfile_in(&dir)?;
        temp.1
            .write_all(data)
            .and_then(|()| temp.1.sync_all())
            .map_err(|e| Self::io("writing", &temp.0, e))?;
        let linked = std::fs::hard_link(&temp.0, &target);
        let _ = std::fs::remove_file(&temp.0);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(StorageError::AlreadyExists {
                    store: self.url(),
                    key: key.to_owned(),
                });
            }
            Err(e) => return Err(Self::io("linking", &target, e)),
        }
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Self::io("syncing directory", &dir, e))
    }

    /// Opens the object `key` for reading, with its path for messages.
    fn open_blocking(&self, key: &str) -> Result<(std::fs::File, PathBuf), StorageError> {
        let path = self.path(key);
        match std::fs::File::open(&path) {
            Ok(file) => Ok((file, path)),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(self.not_found(key)),
            Err(e) => Err(Self::io("opening", &path, e)),
        }
    }

    fn get_range_blocking(&self, key: &str, range: Range<u64>) -> Result<Bytes, StorageError> {
        let (mut file, path) = self.open_blocking(key)?;
        let len = usize::try_from(range.end.saturating_sub(range.start)).unwrap_or(usize::MAX);
        let mut buf = vec![0; len];
        file.seek(SeekFrom::Start(range.start))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(|e| Self::io("reading", &path, e))?;
        Ok(Bytes::from(buf))
    }

    fn list_blocking(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let mut out = Vec::new();
        // Walk only the directory that can hold the prefix.
        let dir_part = prefix.rsplit_once('/').map_or("", |(dir, _)| dir);
        let start = self.root.join(dir_part);
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(Self::io("listing", &dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| Self::io("listing", &dir, e))?;
                let path = entry.path();
                let meta = match entry.metadata() {
                    Ok(meta) => meta,
                    // Deleted since the folder was read (a prune at work).
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(Self::io("reading", &path, e)),
                };
                if meta.is_dir() {
                    stack.push(path);
                    continue;
                }
                if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                    continue;
                }
                let Ok(rel) = path.strip_prefix(&self.root) else {
                    continue;
                };
                let key = rel
                    .to_string_lossy()
                    .replace(std::path::MAIN_SEPARATOR, "/");
                if key.starts_with(prefix) {
                    out.push(ObjectInfo {
                        key,
                        size: meta.len(),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

/// Creates a new, uniquely named temporary file in `dir`.
fn tempfile_in(dir: &Path) -> Result<(PathBuf, std::fs::File), StorageError> {
    loop {
        let name = format!("{TEMP_PREFIX}{:016x}", rand::random::<u64>());
        let path = dir.join(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(LocalStore::io("creating", &path, e)),
        }
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|join| Err(LocalStore::io("running", Path::new("."), join.into())))
}

#[async_trait]
impl ObjectStore for LocalStore {
    fn url(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn has_conditional_create(&self) -> bool {
        true
    }

    async fn put_new(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        let (store, key) = (self.clone(), key.to_owned());
        blocking(move || store.put_blocking(&key, &data)).await
    }

    async fn size(&self, key: &str) -> Result<u64, StorageError> {
        let path = self.path(key);
        match tokio::fs::metadata(&path).await {
            Ok(meta) if meta.is_file() => Ok(meta.len()),
            Ok(_) => Err(self.not_found(key)),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(self.not_found(key)),
            Err(e) => Err(Self::io("reading", &path, e)),
        }
    }

    async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        let path = self.path(key);
        match tokio::fs::read(&path).await {
            Ok(data) => Ok(Bytes::from(data)),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(self.not_found(key)),
            Err(e) => Err(Self::io("reading", &path, e)),
        }
    }

    async fn get_reader(&self, key: &str) -> Result<ObjectReader, StorageError> {
        let (store, key) = (self.clone(), key.to_owned());
        blocking(move || {
            let (file, _) = store.open_blocking(&key)?;
            Ok(Box::new(file) as ObjectReader)
        })
        .await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StorageError> {
        let (store, key) = (self.clone(), key.to_owned());
        blocking(move || store.get_range_blocking(&key, range)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let (store, prefix) = (self.clone(), prefix.to_owned());
        blocking(move || store.list_blocking(&prefix)).await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path(key);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Self::io("deleting", &path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn create_is_exclusive_and_listing_is_sorted() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = LocalStore::new(dir.path().join("repo"));
        store
            .put_new("data/ab/ab01", Bytes::from_static(b"one"))
            .await?;
        store
            .put_new("data/00/0002", Bytes::from_static(b"two"))
            .await?;
        store.put_new("config", Bytes::from_static(b"cfg")).await?;
        let again = store.put_new("config", Bytes::from_static(b"other")).await;
        assert!(matches!(again, Err(StorageError::AlreadyExists { .. })));
        assert_eq!(store.get("config").await?, Bytes::from_static(b"cfg"));
        assert_eq!(store.size("config").await?, 3);
        assert!(matches!(
            store.size("data").await,
            Err(StorageError::NotFound { .. })
        ));
        let keys: Vec<_> = store
            .list("data/")
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, ["data/00/0002", "data/ab/ab01"]);
        assert_eq!(
            store.get_range("data/ab/ab01", 1..3).await?,
            Bytes::from_static(b"ne")
        );
        store.delete("config").await?;
        assert!(matches!(
            store.get("config").await,
            Err(StorageError::NotFound { .. })
        ));
        Ok(())
    }
}
