//! Writing below a restore target through directory descriptors only.
//!
//! A snapshot's tree is untrusted input (the service key can write one), so
//! a restore never resolves a path it joined: every operation is relative to
//! an open directory descriptor and never follows a symlink. Directories are
//! created with `mkdirat` and opened with `O_DIRECTORY|O_NOFOLLOW`, files
//! created with `O_CREAT|O_EXCL|O_NOFOLLOW`, hard links made with `linkat`
//! between descriptors; owners, modes and times are set on an opened
//! descriptor (symlinks and device nodes, which cannot be opened safely, by
//! name with `AT_SYMLINK_NOFOLLOW`). An existing entry is replaced only when
//! asked (`--force`) and never followed: a symlink or file in the way is
//! unlinked, a directory is entered only when it opens as one.
//!
//! Directories are numbered ([`DirId`]); [`Dirs`] keeps a bounded cache of
//! their descriptors and reopens an evicted one by walking down from the
//! target's descriptor, one `O_NOFOLLOW` component at a time.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rustix::fs::{self as fs, AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid};
use rustix::io::Errno;

use crate::repo::tree::{Node, NodeKind};

/// A directory of the restore; [`ROOT`] is the target itself.
pub(super) type DirId = usize;

/// The target directory.
pub(super) const ROOT: DirId = 0;

/// Directory descriptors kept open at once, beside the target's, at most;
/// fewer when the process may open few files.
const CACHED_DIRS: usize = 1024;
/// The share of the process's open-file limit the cache may take.
const LIMIT_SHARE: u64 = 4;

/// Flags every open of a directory uses.
const DIRECTORY: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// The directories of one restore, by id, with a bounded descriptor cache.
pub(super) struct Dirs {
    root: Arc<OwnedFd>,
    /// The parent and name of each directory, and whether this restore
    /// made it (so it held nothing before); the root's entry is unused.
    parents: RwLock<Vec<(DirId, Vec<u8>, bool)>>,
    cache: Mutex<DirCache>,
}

impl Dirs {
    /// Opens the target `path`, which the operator named: it may be reached
    /// through symlinks; everything below it is not.
    pub(super) fn open_target(path: &Path) -> std::io::Result<Self> {
        let root = fs::open(path, DIRECTORY.difference(OFlags::NOFOLLOW), Mode::empty())?;
        Ok(Self {
            root: Arc::new(root),
            parents: RwLock::new(vec![(ROOT, Vec::new(), false)]),
            cache: Mutex::new(DirCache::new()),
        })
    }

    /// The descriptor of directory `id`, from the cache or opened again
    /// from the nearest cached ancestor down.
    pub(super) fn open(&self, id: DirId) -> std::io::Result<Arc<OwnedFd>> {
        let parents = self.parents.read().unwrap_or_else(PoisonError::into_inner);
        let mut chain = Vec::new();
        let mut at = id;
        let mut fd = loop {
            if at == ROOT {
                break self.root.clone();
            }
            if let Some(fd) = self.cached(at) {
                break fd;
            }
            chain.push(at);
            at = parents[at].0;
        };
        while let Some(child) = chain.pop() {
            let opened = Arc::new(fs::openat(
                &*fd,
                &parents[child].1[..],
                DIRECTORY,
                Mode::empty(),
            )?);
            self.remember(child, opened.clone());
            fd = opened;
        }
        Ok(fd)
    }

    /// The path of directory `id` below the target, each name after a `/`
    /// (empty for the target itself).
    pub(super) fn relative_path(&self, id: DirId) -> Vec<u8> {
        let parents = self.parents.read().unwrap_or_else(PoisonError::into_inner);
        let mut names = Vec::new();
        let mut at = id;
        while at != ROOT {
            names.push(&parents[at].1[..]);
            at = parents[at].0;
        }
        let mut path = Vec::new();
        for name in names.iter().rev() {
            path.push(b'/');
            path.extend_from_slice(name);
        }
        path
    }

    /// Whether this restore made directory `id`.
    fn made_here(&self, id: DirId) -> bool {
        let parents = self.parents.read().unwrap_or_else(PoisonError::into_inner);
        parents.get(id).is_some_and(|&(_, _, made)| made)
    }

    fn cached(&self, id: DirId) -> Option<Arc<OwnedFd>> {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
    }

    fn remember(&self, id: DirId, fd: Arc<OwnedFd>) {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, fd);
    }

    /// Creates the directory `name` in `parent` (mode 0700 until its
    /// metadata is set), or enters an existing one that opens as a
    /// directory without following a link. With `replace`, a non-directory
    /// in the way is unlinked first; without, it is an error.
    pub(super) fn make(&self, parent: DirId, name: &[u8], replace: bool) -> std::io::Result<DirId> {
        let parent_fd = self.open(parent)?;
        let made = fs::mkdirat(&*parent_fd, name, Mode::RWXU);
        let fd = match made {
            Ok(()) | Err(Errno::EXIST) => {
                match fs::openat(&*parent_fd, name, DIRECTORY, Mode::empty()) {
                    Err(Errno::LOOP | Errno::NOTDIR) if replace => {
                        fs::unlinkat(&*parent_fd, name, AtFlags::empty())?;
                        fs::mkdirat(&*parent_fd, name, Mode::RWXU)?;
                        fs::openat(&*parent_fd, name, DIRECTORY, Mode::empty())?
                    }
                    Err(Errno::LOOP | Errno::NOTDIR) => return Err(in_the_way()),
                    other => other?,
                }
            }
            Err(e) => return Err(e.into()),
        };
        let mut parents = self.parents.write().unwrap_or_else(PoisonError::into_inner);
        let id = parents.len();
        parents.push((parent, name.to_vec(), made.is_ok()));
        drop(parents);
        self.remember(id, Arc::new(fd));
        Ok(id)
    }

    /// Makes room for a non-directory entry `name` in `dir`: with
    /// `replace`, unlinks a file, symlink or special file there; a
    /// directory in the way is an error either way.
    ///
    /// A directory this restore made holds only what it put there, each
    /// name once, so nothing is looked up in it.
    pub(super) fn clear(&self, dir: DirId, name: &[u8], replace: bool) -> std::io::Result<()> {
        if self.made_here(dir) {
            return Ok(());
        }
        let dir_fd = self.open(dir)?;
        match fs::statat(&*dir_fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
            Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => Err(
                std::io::Error::other("a directory of that name is in the target; remove it"),
            ),
            Ok(_) if replace => Ok(fs::unlinkat(&*dir_fd, name, AtFlags::empty())?),
            Ok(_) => Err(in_the_way()),
        }
    }

    /// Creates the regular file `name` in `dir` at `size` bytes; it must not
    /// exist. Returns it open for writing.
    pub(super) fn create_file(&self, dir: DirId, name: &[u8], size: u64) -> Result<File, Errno> {
        let dir_fd = self
            .open(dir)
            .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let file = fs::openat(&*dir_fd, name, flags, Mode::RUSR | Mode::WUSR)?;
        fs::ftruncate(&file, size)?;
        Ok(File::from(file))
    }

    /// Opens the regular file `name` in `dir` for writing, never through a link.
    pub(super) fn open_file(&self, dir: DirId, name: &[u8]) -> std::io::Result<File> {
        let dir_fd = self.open(dir)?;
        let flags = OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        Ok(File::from(fs::openat(
            &*dir_fd,
            name,
            flags,
            Mode::empty(),
        )?))
    }

    /// Creates the FIFO or (`Chardev`, `Blockdev`) device node `name` in `dir`.
    pub(super) fn make_special(&self, dir: DirId, name: &[u8], node: &Node) -> std::io::Result<()> {
        let kind = match node.kind {
            NodeKind::Fifo => FileType::Fifo,
            NodeKind::Chardev => FileType::CharacterDevice,
            _ => FileType::BlockDevice,
        };
        let dir_fd = self.open(dir)?;
        Ok(fs::mknodat(
            &*dir_fd,
            name,
            kind,
            Mode::RUSR | Mode::WUSR,
            node.rdev.unwrap_or(0),
        )?)
    }

    /// Makes `name` in `dir` a further name of the file `first_name` in
    /// `first_dir` (links are not followed).
    pub(super) fn hard_link(
        &self,
        (first_dir, first_name): (DirId, &[u8]),
        dir: DirId,
        name: &[u8],
    ) -> std::io::Result<()> {
        let (from, to) = (self.open(first_dir)?, self.open(dir)?);
        Ok(fs::linkat(
            &*from,
            first_name,
            &*to,
            name,
            AtFlags::empty(),
        )?)
    }

    /// Creates the symlink `name` in `dir` pointing at `target` and sets its
    /// owner (as root) and times.
    pub(super) fn symlink(
        &self,
        dir: DirId,
        name: &[u8],
        target: &[u8],
        stamp: &Stamp,
        as_root: bool,
    ) -> std::io::Result<()> {
        let dir_fd = self.open(dir)?;
        fs::symlinkat(target, &*dir_fd, name)?;
        if as_root {
            fs::chownat(
                &*dir_fd,
                name,
                stamp.uid(),
                stamp.gid(),
                AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
        Ok(fs::utimensat(
            &*dir_fd,
            name,
            &stamp.times(),
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// Sets owner (as root), permission bits and times of the `kind` entry
    /// `name` in `dir` (for a directory: of `dir` itself when `name` is
    /// `None`) to `stamp`.
    pub(super) fn set_metadata(
        &self,
        dir: DirId,
        name: Option<&[u8]>,
        kind: NodeKind,
        stamp: &Stamp,
        as_root: bool,
    ) -> std::io::Result<()> {
        let fd = match (name, kind) {
            (None, _) => self.open(dir)?,
            (Some(name), NodeKind::Chardev | NodeKind::Blockdev) => {
                return self.set_device_metadata(dir, name, stamp, as_root);
            }
            (Some(name), kind) => {
                // A FIFO opened for reading without blocking does not wait
                // for a writer; a regular file is only opened, never read.
                let flags = OFlags::RDONLY
                    | OFlags::NOFOLLOW
                    | OFlags::CLOEXEC
                    | OFlags::NOCTTY
                    | OFlags::NONBLOCK;
                let fd = fs::openat(&*self.open(dir)?, name, flags, Mode::empty())?;
                let found = FileType::from_raw_mode(fs::fstat(&fd)?.st_mode);
                let expected = if kind == NodeKind::Fifo {
                    FileType::Fifo
                } else {
                    FileType::RegularFile
                };
                if found != expected {
                    return Err(in_the_way());
                }
                Arc::new(fd)
            }
        };
        set_opened_metadata(&*fd, stamp, as_root)
    }

    /// A device node cannot be opened without side effects: its owner and
    /// times are set by name without following links, its mode by name
    /// after checking it is still the device this restore made.
    fn set_device_metadata(
        &self,
        dir: DirId,
        name: &[u8],
        stamp: &Stamp,
        as_root: bool,
    ) -> std::io::Result<()> {
        let dir_fd = self.open(dir)?;
        let kind =
            FileType::from_raw_mode(fs::statat(&*dir_fd, name, AtFlags::SYMLINK_NOFOLLOW)?.st_mode);
        if !matches!(kind, FileType::CharacterDevice | FileType::BlockDevice) {
            return Err(in_the_way());
        }
        if as_root {
            fs::chownat(
                &*dir_fd,
                name,
                stamp.uid(),
                stamp.gid(),
                AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
        fs::chmodat(&*dir_fd, name, stamp.permissions(), AtFlags::empty())?;
        Ok(fs::utimensat(
            &*dir_fd,
            name,
            &stamp.times(),
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }
}

/// Sets owner (as root), permission bits and times of the opened entry
/// `fd` to `stamp`.
pub(super) fn set_opened_metadata(
    fd: impl AsFd,
    stamp: &Stamp,
    as_root: bool,
) -> std::io::Result<()> {
    // The owner first: a change of owner clears setuid and setgid.
    if as_root {
        fs::fchown(&fd, stamp.uid(), stamp.gid())?;
    }
    fs::fchmod(&fd, stamp.permissions())?;
    Ok(fs::futimens(&fd, &stamp.times())?)
}

/// What a restored entry is settled with: its owner, the permission bits
/// it is allowed and its modification time (24 bytes, where its node takes
/// about 200).
#[derive(Debug, Clone, Copy)]
pub(super) struct Stamp {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime_nsec: u32,
    mtime: i64,
}

impl Stamp {
    /// `node`'s owner and time with the permission bits of `mode`.
    pub(super) fn new(node: &Node, mode: u32) -> Self {
        Self {
            uid: node.uid,
            gid: node.gid,
            mode: mode & 0o7777,
            mtime_nsec: node.mtime_nsec,
            mtime: node.mtime,
        }
    }

    /// The stored owner; `u32::MAX` (-1, "no change" to the kernel) keeps it.
    fn uid(&self) -> Option<Uid> {
        (self.uid != u32::MAX).then(|| Uid::from_raw(self.uid))
    }

    fn gid(&self) -> Option<Gid> {
        (self.gid != u32::MAX).then(|| Gid::from_raw(self.gid))
    }

    fn permissions(&self) -> Mode {
        Mode::from_raw_mode(self.mode)
    }

    /// The stored modification time, also as the access time; nanoseconds
    /// out of range are clamped.
    fn times(&self) -> Timestamps {
        let at = Timespec {
            tv_sec: self.mtime,
            tv_nsec: self.mtime_nsec.min(999_999_999).into(),
        };
        Timestamps {
            last_access: at,
            last_modification: at,
        }
    }
}

/// Open directory descriptors, at most [`CACHED_DIRS`] and a quarter of the
/// open-file limit; when full, the least recently used half is closed. A
/// restore writes in the order the backup read, so recently used
/// directories are the ones needed next.
struct DirCache {
    open: HashMap<DirId, (Arc<OwnedFd>, u64)>,
    clock: u64,
    capacity: usize,
}

impl DirCache {
    fn new() -> Self {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        let allowed = limit.map_or(CACHED_DIRS, |limit| {
            usize::try_from(limit / LIMIT_SHARE).unwrap_or(CACHED_DIRS)
        });
        Self {
            open: HashMap::new(),
            clock: 0,
            capacity: allowed.clamp(2, CACHED_DIRS),
        }
    }

    fn get(&mut self, id: DirId) -> Option<Arc<OwnedFd>> {
        self.clock += 1;
        let (fd, used) = self.open.get_mut(&id)?;
        *used = self.clock;
        Some(fd.clone())
    }

    fn insert(&mut self, id: DirId, fd: Arc<OwnedFd>) {
        if self.open.len() >= self.capacity {
            let mut uses: Vec<u64> = self.open.values().map(|(_, used)| *used).collect();
            let middle = uses.len() / 2;
            let (_, &mut oldest_kept, _) = uses.select_nth_unstable(middle);
            self.open.retain(|_, (_, used)| *used >= oldest_kept);
        }
        self.clock += 1;
        self.open.insert(id, (fd, self.clock));
    }

    #[cfg(test)]
    fn clear(&mut self) {
        self.open.clear();
    }
}

/// The error for an entry whose name is taken by something else.
fn in_the_way() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        "something else of that name is in the target (pass --force to replace it)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_followed_and_evicted_directories_reopen() -> anyhow::Result<()> {
        let scratch = tempfile::tempdir()?;
        let (target, outside) = (
            scratch.path().join("target"),
            scratch.path().join("outside"),
        );
        std::fs::create_dir_all(&target)?;
        std::fs::create_dir_all(&outside)?;
        std::os::unix::fs::symlink(&outside, target.join("link"))?;
        std::os::unix::fs::symlink(outside.join("file"), target.join("dangling"))?;
        let dirs = Dirs::open_target(&target)?;

        let refused = dirs.make(ROOT, b"link", false).err().map(|e| e.kind());
        assert_eq!(refused, Some(std::io::ErrorKind::AlreadyExists));
        let replaced = dirs.make(ROOT, b"link", true)?;
        assert!(std::fs::symlink_metadata(target.join("link"))?.is_dir());
        assert!(dirs.create_file(ROOT, b"dangling", 3).is_err(), "O_EXCL");
        dirs.clear(ROOT, b"dangling", true)?;
        dirs.create_file(ROOT, b"dangling", 3)?;
        assert!(!outside.join("file").exists());

        // More directories than the cache holds, each reopened by walking.
        let mut deepest = replaced;
        for i in 0..CACHED_DIRS + 10 {
            deepest = dirs.make(deepest, format!("d{i}").as_bytes(), false)?;
        }
        dirs.create_file(deepest, b"leaf", 0)?;
        dirs.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        dirs.open_file(deepest, b"leaf")?;
        assert_eq!(std::fs::read_dir(&outside)?.count(), 0);
        Ok(())
    }

    #[test]
    fn only_a_directory_found_in_the_target_is_searched_for_what_is_in_the_way()
    -> anyhow::Result<()> {
        let scratch = tempfile::tempdir()?;
        std::fs::create_dir_all(scratch.path().join("found"))?;
        std::fs::write(scratch.path().join("found/taken"), b"theirs")?;
        let dirs = Dirs::open_target(scratch.path())?;

        let found = dirs.make(ROOT, b"found", false)?;
        let refused = dirs.clear(found, b"taken", false).err().map(|e| e.kind());
        assert_eq!(refused, Some(std::io::ErrorKind::AlreadyExists));
        dirs.clear(found, b"free", false)?;

        let made = dirs.make(ROOT, b"made", false)?;
        assert!(dirs.made_here(made) && !dirs.made_here(found) && !dirs.made_here(ROOT));
        dirs.clear(made, b"taken", false)?;
        dirs.create_file(made, b"taken", 1)?;
        assert!(
            dirs.create_file(made, b"taken", 1).is_err(),
            "a second create of one name is refused by O_EXCL"
        );
        Ok(())
    }
}
