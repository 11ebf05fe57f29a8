//! What a backup knows of the files of the last backup of the same files,
//! held compactly for the length of a backup: per file a 16-byte hash of
//! its path, its size, times and inode, and where its data blob ids lie in
//! one list shared by all — about 63 bytes a file and 32 a blob, where a
//! map from path to entry took about 240 bytes a small file. Files known
//! [`KnownFiles::over`] a loaded index keep each blob as its 4-byte index
//! position instead.

use std::sync::Arc;

use hashbrown::HashTable;

use crate::repo::id::BlobId;
use crate::repo::index::Index;

/// What was known of a file when it was last backed up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedFile {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub inode: u64,
    /// Its data blobs, in order.
    pub content: Vec<BlobId>,
}

/// The files known from the last backup, looked up by path.
#[derive(Debug, Default)]
pub struct KnownFiles {
    /// Positions in `files`, by the path hash.
    by_path: HashTable<u32>,
    files: Vec<Known>,
    blobs: BlobList,
}

/// The known files' blobs, one list for all.
#[derive(Debug)]
enum BlobList {
    Ids(Vec<BlobId>),
    /// Positions in an index.
    Positions(Arc<Index>, Vec<u32>),
}

impl Default for BlobList {
    fn default() -> Self {
        Self::Ids(Vec::new())
    }
}

impl BlobList {
    fn len(&self) -> usize {
        match self {
            Self::Ids(ids) => ids.len(),
            Self::Positions(_, positions) => positions.len(),
        }
    }

    /// Appends `content`; fails, adding nothing, when the index lacks a
    /// blob of it.
    fn extend(&mut self, content: &[BlobId]) -> Result<(), ()> {
        match self {
            Self::Ids(ids) => ids.extend_from_slice(content),
            Self::Positions(index, positions) => {
                let start = positions.len();
                for id in content {
                    match index.position(id).and_then(|p| u32::try_from(p).ok()) {
                        Some(position) => positions.push(position),
                        None => {
                            positions.truncate(start);
                            return Err(());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The blobs at `range` of the list, if it holds them.
    fn get(&self, range: std::ops::Range<usize>) -> Option<Vec<BlobId>> {
        match self {
            Self::Ids(ids) => ids.get(range).map(<[BlobId]>::to_vec),
            Self::Positions(index, positions) => positions
                .get(range)?
                .iter()
                .map(|&position| index.id_at(position as usize))
                .collect(),
        }
    }
}

/// One file: its path's hash, what was known of it, its blobs' place.
#[derive(Debug, Clone, Copy)]
struct Known {
    path_hash: [u8; 16],
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    inode: u64,
    first_blob: u32,
    blob_count: u32,
}

/// One known file, as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownFile {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub inode: u64,
    /// Its data blobs, in order.
    pub content: Vec<BlobId>,
}

#[cfg(test)]
impl KnownFile {
    /// An owned copy.
    pub fn cached(&self) -> CachedFile {
        CachedFile {
            size: self.size,
            mtime_ns: self.mtime_ns,
            ctime_ns: self.ctime_ns,
            inode: self.inode,
            content: self.content.clone(),
        }
    }
}

impl KnownFiles {
    /// No files yet; their blobs will be kept as positions in `index`, and
    /// a file with a blob `index` lacks is left out (it is read again).
    pub fn over(index: Arc<Index>) -> Self {
        Self {
            blobs: BlobList::Positions(index, Vec::new()),
            ..Self::default()
        }
    }

    /// Adds (or replaces) what is known of the file at `path`. A file
    /// whose blobs would not fit the shared list's 32-bit positions is
    /// left out: it is read again.
    pub fn insert(&mut self, path: &[u8], file: &CachedFile) {
        let (Ok(first_blob), Ok(blob_count)) = (
            u32::try_from(self.blobs.len()),
            u32::try_from(file.content.len()),
        ) else {
            return;
        };
        if first_blob.checked_add(blob_count).is_none() {
            return;
        }
        let Ok(position) = u32::try_from(self.files.len()) else {
            return;
        };
        if self.blobs.extend(&file.content).is_err() {
            return;
        }
        let known = Known {
            path_hash: path_hash(path),
            size: file.size,
            mtime_ns: file.mtime_ns,
            ctime_ns: file.ctime_ns,
            inode: file.inode,
            first_blob,
            blob_count,
        };
        let files = &self.files;
        let found = self
            .by_path
            .find(slot_hash(&known.path_hash), |&at| {
                files[at as usize].path_hash == known.path_hash
            })
            .copied();
        match found {
            // The old entry's blobs stay unused in the list until the end.
            Some(at) => self.files[at as usize] = known,
            None => {
                self.files.push(known);
                let files = &self.files;
                self.by_path
                    .insert_unique(slot_hash(&known.path_hash), position, |&at| {
                        slot_hash(&files[at as usize].path_hash)
                    });
            }
        }
    }

    /// What is known of the file at `path`.
    pub fn get(&self, path: &[u8]) -> Option<KnownFile> {
        let hash = path_hash(path);
        let at = self.by_path.find(slot_hash(&hash), |&at| {
            self.files[at as usize].path_hash == hash
        })?;
        let known = self.files[*at as usize];
        let first = known.first_blob as usize;
        Some(KnownFile {
            size: known.size,
            mtime_ns: known.mtime_ns,
            ctime_ns: known.ctime_ns,
            inode: known.inode,
            content: self.blobs.get(first..first + known.blob_count as usize)?,
        })
    }

    /// How many files are known.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_path.len()
    }

    /// Whether no file is known.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }
}

/// A path's 128-bit BLAKE3 hash: two paths of one backup sharing it is
/// beyond reach, and a shared hash still needs the same size, times and
/// inode to be taken for the same file.
fn path_hash(path: &[u8]) -> [u8; 16] {
    let hash = blake3::hash(path);
    let mut short = [0u8; 16];
    short.copy_from_slice(&hash.as_bytes()[..16]);
    short
}

/// The table's hash of a path hash: its first eight bytes.
fn slot_hash(path_hash: &[u8; 16]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&path_hash[..8]);
    u64::from_le_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64, blobs: &[u8]) -> CachedFile {
        CachedFile {
            size,
            mtime_ns: 7,
            ctime_ns: 8,
            inode: size + 100,
            content: blobs.iter().map(|&b| BlobId::from_bytes([b; 32])).collect(),
        }
    }

    #[test]
    fn files_are_found_by_path_and_replaced() {
        let mut known = KnownFiles::default();
        for n in 0..5000_u64 {
            let blobs: Vec<u8> = (0..(n % 4) as u8).collect();
            known.insert(format!("/data/{n}").as_bytes(), &file(n, &blobs));
        }
        assert_eq!(known.len(), 5000);
        let found = known.get(b"/data/4242").expect("known");
        assert_eq!((found.size, found.inode), (4242, 4342));
        assert_eq!(found.content, file(4242, &[0, 1]).content);
        assert!(known.get(b"/data/5000").is_none());
        assert!(known.get(b"/data/4242/").is_none());

        known.insert(b"/data/7", &file(70, &[9]));
        assert_eq!(known.len(), 5000, "replaced, not added");
        let found = known.get(b"/data/7").expect("known");
        assert_eq!(found.size, 70);
        assert_eq!(found.content, [BlobId::from_bytes([9; 32])]);
        assert!(known.get(b"/data/8").is_some_and(|f| f.size == 8));
    }

    #[test]
    fn files_over_an_index_keep_positions_and_leave_out_unknown_blobs() {
        let ids: Vec<BlobId> = (0..8).map(|b| BlobId::from_bytes([b; 32])).collect();
        let index = crate::repo::test_fixture::index_of(&[&ids[..5], &ids[3..4]]);
        let mut known = KnownFiles::over(index);
        known.insert(b"/a", &file(10, &[4, 3, 4]));
        known.insert(b"/b", &file(20, &[]));
        known.insert(b"/c", &file(30, &[1, 6]));
        known.insert(b"/d", &file(40, &[0]));
        assert_eq!(
            known.len(),
            3,
            "a file with a blob the index lacks was kept"
        );
        assert_eq!(
            known.get(b"/a").map(|f| f.content),
            Some(file(10, &[4, 3, 4]).content)
        );
        assert_eq!(known.get(b"/b").map(|f| f.content), Some(Vec::new()));
        assert!(known.get(b"/c").is_none());
        assert_eq!(
            known.get(b"/d").map(|f| (f.size, f.content)),
            Some((40, file(40, &[0]).content))
        );
        match &known.blobs {
            BlobList::Positions(_, positions) => assert_eq!(positions, &[4, 3, 4, 0]),
            BlobList::Ids(_) => panic!("blobs kept as ids"),
        }
    }
}
