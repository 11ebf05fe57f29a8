//! A repository in a local directory: the embedded default.
//!
//! Each object is a file under the root; the key's slashes are directories.
//! A create writes a uniquely named temporary file ([`Staged`]), syncs it,
//! then links it into place with `link(2)`, which fails if the name is
//! taken: the object appears whole or not at all, and an existing one is
//! never replaced. A staged pack is made in the root, so that it is linked
//! into place without a copy.

use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectInfo, ObjectReader, ObjectStore, Staged, StorageError, Swept, TEMP_PREFIX};

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
        let dir = self.folder_of(key)?;
        let mut staged =
            Staged::create_in(&dir).map_err(|e| Self::io("creating a file in", &dir, e))?;
        staged
            .write_all(data)
            .map_err(|e| Self::io("writing", staged.path(), e))?;
        self.link_blocking(key, &dir, staged)
    }

    /// The folder object `key` goes in, created.
    fn folder_of(&self, key: &str) -> Result<PathBuf, StorageError> {
        let dir = self.path(key).parent().unwrap_or(&self.root).to_owned();
        std::fs::create_dir_all(&dir).map_err(|e| Self::io("creating directory", &dir, e))?;
        Ok(dir)
    }

    /// Syncs `staged` and links it into place as `key` in `dir` (its
    /// folder, made), then syncs `dir`. Where the file system cannot link
    /// across folders (a union of disks such as Unraid's user shares may
    /// not), the file is first copied beside its place.
    fn link_blocking(&self, key: &str, dir: &Path, mut staged: Staged) -> Result<(), StorageError> {
        let target = self.path(key);
        staged
            .sync()
            .map_err(|e| Self::io("writing", staged.path(), e))?;
        let mut linked = std::fs::hard_link(staged.path(), &target);
        if linked
            .as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::CrossesDevices)
        {
            let mut beside =
                Staged::create_in(dir).map_err(|e| Self::io("creating a file in", dir, e))?;
            std::fs::File::open(staged.path())
                .and_then(|mut file| std::io::copy(&mut file, &mut beside))
                .and_then(|_| beside.sync())
                .map_err(|e| Self::io("copying", beside.path(), e))?;
            staged = beside;
            linked = std::fs::hard_link(staged.path(), &target);
        }
        drop(staged);
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
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Self::io("syncing directory", dir, e))
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
        self.walk_files(&self.root.join(dir_part), |path, meta, staged| {
            if staged {
                return Ok(());
            }
            let Ok(rel) = path.strip_prefix(&self.root) else {
                return Ok(());
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
            Ok(())
        })?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn sweep_blocking(&self, older_than: Duration) -> Result<Swept, StorageError> {
        let mut swept = Swept::default();
        let cutoff = SystemTime::now().checked_sub(older_than);
        self.walk_files(&self.root, |path, meta, staged| {
            let stale = meta
                .modified()
                .ok()
                .zip(cutoff)
                .is_some_and(|(modified, cutoff)| modified < cutoff);
            if !staged || !stale {
                return Ok(());
            }
            match std::fs::remove_file(path) {
                Ok(()) => {
                    swept.files += 1;
                    swept.bytes += meta.len();
                    Ok(())
                }
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Self::io("removing", path, e)),
            }
        })?;
        Ok(swept)
    }

    /// Calls `visit` with every file below `start` (symlinks are not
    /// followed), its metadata, and whether it is a staged file.
    fn walk_files(
        &self,
        start: &Path,
        mut visit: impl FnMut(&Path, &std::fs::Metadata, bool) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let mut stack = vec![start.to_owned()];
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
                let staged = entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX);
                visit(&path, &meta, staged)?;
            }
        }
        Ok(())
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

    fn stage(&self) -> Result<Staged, StorageError> {
        std::fs::create_dir_all(&self.root)
            .and_then(|()| Staged::create_in(&self.root))
            .map_err(|e| Self::io("creating a file in", &self.root, e))
    }

    async fn put_staged(&self, key: &str, staged: Staged) -> Result<(), StorageError> {
        let (store, key) = (self.clone(), key.to_owned());
        blocking(move || {
            let dir = store.folder_of(&key)?;
            store.link_blocking(&key, &dir, staged)
        })
        .await
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

    async fn sweep_leftovers(&self, older_than: Duration) -> Result<Swept, StorageError> {
        let store = self.clone();
        blocking(move || store.sweep_blocking(older_than)).await
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
    async fn a_sweep_removes_only_staged_files_long_unwritten() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = LocalStore::new(dir.path().join("repo"));
        store
            .put_new("data/ab/ab01", Bytes::from_static(b"object"))
            .await?;
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        let mut planted = Vec::new();
        for (folder, name, modified) in [
            ("", ".tmp-00000000000000a1", hour_ago),
            ("data/ab", ".tmp-00000000000000a2", hour_ago),
            ("data/ab", ".tmp-00000000000000a3", SystemTime::now()),
            ("data/ab", "ab02", hour_ago),
        ] {
            let path = dir.path().join("repo").join(folder).join(name);
            let file = std::fs::File::create(&path)?;
            file.set_len(7)?;
            file.set_modified(modified)?;
            planted.push(path);
        }
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside)?;
        let outside = outside.join(".tmp-00000000000000a4");
        std::fs::File::create(&outside)?.set_modified(hour_ago)?;
        std::os::unix::fs::symlink(dir.path().join("outside"), dir.path().join("repo/data/cd"))?;

        let swept = store.sweep_leftovers(Duration::from_secs(600)).await?;

        assert_eq!(
            swept,
            Swept {
                files: 2,
                bytes: 14
            }
        );
        assert!(!planted[0].exists() && !planted[1].exists());
        assert!(planted[2].exists(), "a staged file being written was swept");
        assert!(planted[3].exists(), "an object was swept");
        assert!(outside.exists(), "a symlink was followed out of the store");
        assert_eq!(
            store.get("data/ab/ab01").await?,
            Bytes::from_static(b"object")
        );
        Ok(())
    }

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

    #[tokio::test]
    async fn a_staged_object_is_linked_into_place_once() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("repo");
        let store = LocalStore::new(root.clone());
        let mut staged = store.stage()?;
        staged.write_all(b"a pack")?;
        let path = staged.path().to_owned();
        assert!(path.starts_with(&root), "staged outside the store's folder");
        assert!(store.list("").await?.is_empty(), "a staged file was listed");
        store.put_staged("data/ab/ab01", staged).await?;
        assert_eq!(
            store.get("data/ab/ab01").await?,
            Bytes::from_static(b"a pack")
        );
        assert!(!path.exists(), "the staged file was left behind");

        let mut again = store.stage()?;
        again.write_all(b"another")?;
        let again_path = again.path().to_owned();
        let refused = store.put_staged("data/ab/ab01", again).await;
        assert!(matches!(refused, Err(StorageError::AlreadyExists { .. })));
        assert!(
            !again_path.exists(),
            "a refused staged file was left behind"
        );
        assert_eq!(
            store.get("data/ab/ab01").await?,
            Bytes::from_static(b"a pack")
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_file_staged_on_another_file_system_is_copied_into_place() -> anyhow::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir()?;
        let elsewhere = tempfile::tempdir_in("/dev/shm")?;
        anyhow::ensure!(
            dir.path().metadata()?.dev() != elsewhere.path().metadata()?.dev(),
            "the test needs /dev/shm on a file system of its own"
        );
        let store = LocalStore::new(dir.path().join("repo"));
        let mut staged = Staged::create_in(elsewhere.path())?;
        staged.write_all(b"a pack from afar")?;
        store.put_staged("data/cd/cd01", staged).await?;
        assert_eq!(
            store.get("data/cd/cd01").await?,
            Bytes::from_static(b"a pack from afar")
        );
        assert_eq!(std::fs::read_dir(elsewhere.path())?.count(), 0);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("repo/data/cd"))?
            .map(|entry| entry.map(|entry| entry.file_name()))
            .collect::<Result<_, _>>()?;
        assert_eq!(left, ["cd01"], "a copy was left beside the object");
        Ok(())
    }
}
