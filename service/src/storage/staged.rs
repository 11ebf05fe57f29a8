//! New objects written to a file before they are created in a store.
//!
//! A pack is written as it is made into a [`Staged`] file rather than held
//! in memory: a local store then creates the object by linking that very
//! file into place, and an S3 store streams it up from disk. What a backup
//! holds in memory so does not grow with the pack size or the number of
//! packs in flight.

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::path::{Path, PathBuf};

/// Prefix of staged files; local listings skip them.
pub(crate) const TEMP_PREFIX: &str = ".tmp-";

/// A new object's bytes in a uniquely named temporary file, made by
/// [`ObjectStore::stage`](super::ObjectStore::stage) and given to
/// [`ObjectStore::put_staged`](super::ObjectStore::put_staged). The file
/// is removed when this is dropped.
#[derive(Debug)]
pub struct Staged {
    path: PathBuf,
    file: File,
}

impl Staged {
    /// Creates an empty staged file in `dir`.
    ///
    /// Fails when `dir` cannot hold a new file.
    pub(super) fn create_in(dir: &Path) -> io::Result<Self> {
        loop {
            let path = dir.join(format!("{TEMP_PREFIX}{:016x}", rand::random::<u64>()));
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => return Ok(Self { path, file }),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Syncs the file's bytes to disk.
    pub(super) fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    /// The bytes written so far.
    ///
    /// Fails when the file's size cannot be read.
    pub fn size(&self) -> io::Result<u64> {
        self.file.metadata().map(|meta| meta.len())
    }
}

impl Write for Staged {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staged_file_is_removed_when_dropped() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut staged = Staged::create_in(dir.path())?;
        staged.write_all(b"pack bytes")?;
        assert_eq!(staged.size()?, 10);
        let path = staged.path().to_owned();
        assert!(
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with(TEMP_PREFIX))
        );
        drop(staged);
        assert!(!path.exists(), "the staged file was left behind");
        Ok(())
    }
}
