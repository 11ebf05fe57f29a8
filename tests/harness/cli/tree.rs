//! A file tree as `lstat` sees it, and a readable diff of two trees.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::hash::Hasher;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// What kind of file an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A socket.
    Socket,
    /// A character or block device.
    Device,
}

/// One entry of a tree as `lstat` sees it, with what a restore must keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its kind.
    pub kind: Kind,
    /// Permission bits, with setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time: seconds and nanoseconds.
    pub mtime: (i64, i64),
    /// Size of a regular file; 0 for other kinds.
    pub size: u64,
    /// A hash of a regular file's content.
    pub content: Option<u64>,
    /// A symlink's target.
    pub target: Option<PathBuf>,
    /// For a file sharing its inode with others in the tree: the first of
    /// them (in path order); `None` otherwise.
    pub same_inode_as: Option<PathBuf>,
}

/// A tree: entries by path relative to its root (the root itself left out).
pub type TreeDescription = BTreeMap<PathBuf, Entry>;

/// Describes every entry under `root` without following symlinks.
///
/// Fails when an entry cannot be read.
pub fn describe(root: &Path) -> Result<TreeDescription> {
    let mut tree = TreeDescription::new();
    let mut inodes: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        let dir = root.join(&relative);
        for item in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let item = item?;
            let path = relative.join(item.file_name());
            let full = root.join(&path);
            let meta = std::fs::symlink_metadata(&full)
                .with_context(|| format!("lstat {}", full.display()))?;
            let kind = kind_of(&meta.file_type());
            let mut entry = Entry {
                kind,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                mtime: (meta.mtime(), meta.mtime_nsec()),
                size: 0,
                content: None,
                target: None,
                same_inode_as: None,
            };
            match kind {
                Kind::File => {
                    entry.size = meta.len();
                    entry.content = Some(content_hash(&full)?);
                    if meta.nlink() > 1 {
                        inodes
                            .entry((meta.dev(), meta.ino()))
                            .or_default()
                            .push(path.clone());
                    }
                }
                Kind::Dir => stack.push(path.clone()),
                Kind::Symlink => entry.target = Some(std::fs::read_link(&full)?),
                _ => {}
            }
            tree.insert(path, entry);
        }
    }
    for mut group in inodes.into_values().filter(|g| g.len() > 1) {
        group.sort();
        let first = group[0].clone();
        for path in group {
            if let Some(entry) = tree.get_mut(&path) {
                entry.same_inode_as = Some(first.clone());
            }
        }
    }
    Ok(tree)
}

fn kind_of(kind: &std::fs::FileType) -> Kind {
    if kind.is_file() {
        Kind::File
    } else if kind.is_dir() {
        Kind::Dir
    } else if kind.is_symlink() {
        Kind::Symlink
    } else if kind.is_fifo() {
        Kind::Fifo
    } else if kind.is_socket() {
        Kind::Socket
    } else {
        Kind::Device
    }
}

/// A hash of a file's content, comparable within one test process.
///
/// Fails when the file cannot be read.
pub fn content_hash(path: &Path) -> Result<u64> {
    let mut hasher = std::hash::DefaultHasher::new();
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.write(&buf[..n]);
    }
    Ok(hasher.finish())
}

/// Fails, listing the differences, unless `actual` describes the same tree
/// as `expected`.
pub fn assert_same_tree(expected: &TreeDescription, actual: &TreeDescription) -> Result<()> {
    let mut differences = Vec::new();
    for (path, want) in expected {
        match actual.get(path) {
            None => differences.push(format!("missing {}: {want:?}", path.display())),
            Some(got) if got != want => differences.push(format!(
                "differs {}:\n    expected {want:?}\n    restored {got:?}",
                path.display()
            )),
            Some(_) => {}
        }
    }
    for (path, got) in actual {
        if !expected.contains_key(path) {
            differences.push(format!("unexpected {}: {got:?}", path.display()));
        }
    }
    if differences.is_empty() {
        return Ok(());
    }
    let count = differences.len();
    differences.truncate(30);
    bail!(
        "{count} difference(s) between the trees:\n  {}",
        differences.join("\n  ")
    )
}
