//! New objects written to a file before they are created in a store.
//!
//! A pack is written as it is made into a [`Staged`] file rather than held
//! in memory: a local store then creates the object by linking that very
//! file into place, and an S3 store streams it up from disk. What a backup
//! holds in memory so does not grow with the pack size or the number of
//! packs in flight.
//!
//! A file staged for an upload has no name at all, so a process killed
//! midway leaves nothing behind; one staged for a link needs a name, and a
//! killed process leaves it, which a prune later sweeps.

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Prefix of named staged files; local listings skip them.
pub(crate) const TEMP_PREFIX: &str = ".tmp-";

/// A new object's bytes in a temporary file, made by
/// [`ObjectStore::stage`](super::ObjectStore::stage) and given to
/// [`ObjectStore::put_staged`](super::ObjectStore::put_staged). The file
/// is gone once this is dropped.
#[derive(Debug)]
pub struct Staged {
    path: PathBuf,
    file: File,
    /// Whether `path` is the file's own name, removed on drop (otherwise it
    /// is a `/proc` link to a file without a name).
    named: bool,
}

impl Staged {
    /// Creates an empty staged file with a unique name in `dir`.
    ///
    /// Fails when `dir` cannot hold a new file.
    pub(super) fn create_in(dir: &Path) -> io::Result<Self> {
        let (path, file) = create_named(dir)?;
        Ok(Self {
            path,
            file,
            named: true,
        })
    }

    /// Creates an empty staged file in `dir` that has no name (`O_TMPFILE`,
    /// or a name removed at once where the file system lacks it), read back
    /// through `/proc/self/fd`.
    ///
    /// Fails when `dir` cannot hold a new file or `/proc` is not mounted.
    pub(super) fn anonymous_in(dir: &Path) -> io::Result<Self> {
        let file = anonymous_file(dir)?;
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        std::fs::metadata(&path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{} does not open (is /proc mounted?): {e}", path.display()),
            )
        })?;
        Ok(Self {
            path,
            file,
            named: false,
        })
    }

    /// A path that opens the file while this lives.
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
        if self.named {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Creates a new file in `dir` that has no name (`O_TMPFILE`, or a name
/// removed at once where the file system lacks it), readable and writable
/// by this user only; it is gone once closed.
///
/// Fails when `dir` cannot hold a new file.
pub(crate) fn anonymous_file(dir: &Path) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
    match rustix::fs::open(dir, flags, Mode::from_raw_mode(0o600)) {
        Ok(fd) => Ok(File::from(fd)),
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR) => {
            let (path, file) = create_named(dir)?;
            std::fs::remove_file(&path)?;
            Ok(file)
        }
        Err(e) => Err(e.into()),
    }
}

/// Creates a new file with a unique staged name in `dir`, never opening
/// anything already there.
fn create_named(dir: &Path) -> io::Result<(PathBuf, File)> {
    loop {
        let path = dir.join(format!("{TEMP_PREFIX}{:016x}", rand::random::<u64>()));
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
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

    #[test]
    fn an_anonymous_staged_file_has_no_name_and_reads_back() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut staged = Staged::anonymous_in(dir.path())?;
        staged.write_all(b"upload bytes")?;
        staged.flush()?;
        assert_eq!(
            std::fs::read_dir(dir.path())?.count(),
            0,
            "an anonymous staged file shows in its folder"
        );
        assert_eq!(std::fs::read(staged.path())?, b"upload bytes");
        assert_eq!(
            std::fs::read(staged.path())?,
            b"upload bytes",
            "a second read"
        );
        Ok(())
    }
}
