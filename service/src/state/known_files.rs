//! What a backup knows of the files of the last backup of the same files,
//! held compactly for the length of a backup. A file is found by its
//! fingerprint, a 16-byte hash of its path and [`FileStamp`]: one whose
//! stamp changed is not found, and that is all a backup asks. Each file
//! takes 24 bytes in one sorted array, found through a table of where
//! each leading-bits bucket starts, and its blobs lie in one list shared by
//! all — where a hash table of path hashes and stamps took 66 bytes a file,
//! and a map from path to entry about 240. Files known
//! [`KnownFilesBuilder::over`] a loaded index keep each blob as its 4-byte
//! index position instead of its 32-byte id.

use std::sync::Arc;

use crate::repo::id::BlobId;
use crate::repo::index::Index;

/// What a file's metadata says of its data: when none of it changed, the
/// data is taken to be unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub inode: u64,
}

/// What was known of a file when it was last backed up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedFile {
    /// Its metadata then.
    pub stamp: FileStamp,
    /// Its data blobs, in order.
    pub content: Vec<BlobId>,
}

/// The files known from the last backup, found by path and stamp.
#[derive(Debug, Default)]
pub struct KnownFiles {
    /// Sorted by fingerprint, one per fingerprint.
    files: Vec<Known>,
    /// Where the files of each bucket start in `files`, and where the last
    /// ends; a bucket is a fingerprint's leading `bucket_bits` bits.
    starts: Vec<u32>,
    bucket_bits: u32,
    blobs: BlobList,
}

/// Collects [`KnownFiles`].
#[derive(Debug, Default)]
pub struct KnownFilesBuilder {
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

    fn shrink_to_fit(&mut self) {
        match self {
            Self::Ids(ids) => ids.shrink_to_fit(),
            Self::Positions(_, positions) => positions.shrink_to_fit(),
        }
    }
}

/// One file: its fingerprint and its blobs' place in the shared list.
#[derive(Debug, Clone, Copy)]
struct Known {
    fingerprint: [u8; 16],
    first_blob: u32,
    blob_count: u32,
}

impl KnownFilesBuilder {
    /// No files yet; their blobs will be kept as positions in `index`, and
    /// a file with a blob `index` lacks is left out (it is read again).
    pub fn over(index: Arc<Index>) -> Self {
        Self {
            blobs: BlobList::Positions(index, Vec::new()),
            ..Self::default()
        }
    }

    /// Adds what is known of the file at `path`; of two entries for the
    /// same path and stamp, one is kept. A file whose blobs
    /// would not fit the shared list's 32-bit positions is left out: it is
    /// read again.
    pub fn insert(&mut self, path: &[u8], file: &CachedFile) {
        let (Ok(first_blob), Ok(blob_count)) = (
            u32::try_from(self.blobs.len()),
            u32::try_from(file.content.len()),
        ) else {
            return;
        };
        if first_blob.checked_add(blob_count).is_none() || self.files.len() >= u32::MAX as usize {
            return;
        }
        if self.blobs.extend(&file.content).is_err() {
            return;
        }
        self.files.push(Known {
            fingerprint: fingerprint(path, &file.stamp),
            first_blob,
            blob_count,
        });
    }

    /// The files, ready to be looked up.
    pub fn build(self) -> KnownFiles {
        let Self {
            mut files,
            mut blobs,
        } = self;
        // In place: a stable sort would take half as much again.
        files.sort_unstable_by_key(|known| known.fingerprint);
        files.dedup_by_key(|known| known.fingerprint);
        files.shrink_to_fit();
        blobs.shrink_to_fit();
        // Four to eight files a bucket: half a megabyte of starts for a
        // million files.
        let bucket_bits = (files.len() / 4).max(1).ilog2().min(24);
        let buckets = 1usize << bucket_bits;
        let mut starts = Vec::with_capacity(buckets + 1);
        let mut at = 0;
        for bucket in 0..buckets {
            while files
                .get(at)
                .is_some_and(|known| bucket_of(&known.fingerprint, bucket_bits) < bucket)
            {
                at += 1;
            }
            starts.push(at as u32);
        }
        starts.push(files.len() as u32);
        KnownFiles {
            files,
            starts,
            bucket_bits,
            blobs,
        }
    }
}

impl KnownFiles {
    /// The blobs of the file at `path` if it was known with `stamp`.
    pub fn content(&self, path: &[u8], stamp: &FileStamp) -> Option<Vec<BlobId>> {
        let fingerprint = fingerprint(path, stamp);
        let bucket = bucket_of(&fingerprint, self.bucket_bits);
        let start = *self.starts.get(bucket)? as usize;
        let end = *self.starts.get(bucket + 1)? as usize;
        let bucket = self.files.get(start..end)?;
        let at = bucket
            .binary_search_by_key(&fingerprint, |known| known.fingerprint)
            .ok()?;
        let known = bucket[at];
        let first = known.first_blob as usize;
        self.blobs.get(first..first + known.blob_count as usize)
    }

    /// How many files are known.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether no file is known.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// A file's 128-bit BLAKE3 hash of its path and stamp: two files of one
/// backup sharing it is beyond reach.
fn fingerprint(path: &[u8], stamp: &FileStamp) -> [u8; 16] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&(path.len() as u64).to_le_bytes());
    hasher.update(path);
    hasher.update(&stamp.size.to_le_bytes());
    hasher.update(&stamp.mtime_ns.to_le_bytes());
    hasher.update(&stamp.ctime_ns.to_le_bytes());
    hasher.update(&stamp.inode.to_le_bytes());
    let mut short = [0u8; 16];
    short.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    short
}

/// The bucket of `fingerprint`: its leading `bits` bits.
fn bucket_of(fingerprint: &[u8; 16], bits: u32) -> usize {
    let mut first = [0u8; 8];
    first.copy_from_slice(&fingerprint[..8]);
    (u64::from_be_bytes(first) >> 1 >> (63 - bits)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64, blobs: &[u8]) -> CachedFile {
        CachedFile {
            stamp: FileStamp {
                size,
                mtime_ns: 7,
                ctime_ns: 8,
                inode: size + 100,
            },
            content: blobs.iter().map(|&b| BlobId::from_bytes([b; 32])).collect(),
        }
    }

    #[test]
    fn files_are_found_by_path_and_stamp() {
        let mut builder = KnownFilesBuilder::default();
        for n in 0..5000_u64 {
            let blobs: Vec<u8> = (0..(n % 4) as u8).collect();
            builder.insert(format!("/data/{n}").as_bytes(), &file(n, &blobs));
        }
        builder.insert(b"/data/7", &file(7, &[1, 2]));
        let known = builder.build();
        assert_eq!(known.len(), 5000, "the same path and stamp is one file");
        let stamp = file(4242, &[]).stamp;
        assert_eq!(
            known.content(b"/data/4242", &stamp),
            Some(file(4242, &[0, 1]).content)
        );
        assert!(
            [file(7, &[0, 1, 2]).content, file(7, &[1, 2]).content].contains(
                &known
                    .content(b"/data/7", &file(7, &[]).stamp)
                    .unwrap_or_default()
            ),
            "one of the two entries is kept"
        );
        assert_eq!(
            known.content(b"/data/8", &file(8, &[]).stamp),
            Some(Vec::new())
        );
        assert!(
            known
                .content(b"/data/5000", &file(5000, &[]).stamp)
                .is_none()
        );
        assert!(known.content(b"/data/4242/", &stamp).is_none());
        for changed in [
            FileStamp {
                size: 4243,
                ..stamp
            },
            FileStamp {
                mtime_ns: 6,
                ..stamp
            },
            FileStamp {
                ctime_ns: 9,
                ..stamp
            },
            FileStamp { inode: 1, ..stamp },
        ] {
            assert!(
                known.content(b"/data/4242", &changed).is_none(),
                "found with {changed:?}"
            );
        }
        for n in 0..5000_u64 {
            let path = format!("/data/{n}");
            assert!(
                known
                    .content(path.as_bytes(), &file(n, &[]).stamp)
                    .is_some(),
                "{path}"
            );
        }
    }

    #[test]
    fn no_files_find_nothing() {
        let known = KnownFilesBuilder::default().build();
        assert!(known.is_empty());
        assert!(known.content(b"/a", &file(1, &[]).stamp).is_none());
        assert!(
            KnownFiles::default()
                .content(b"/a", &file(1, &[]).stamp)
                .is_none()
        );
    }

    #[test]
    fn files_over_an_index_keep_positions_and_leave_out_unknown_blobs() {
        let ids: Vec<BlobId> = (0..8).map(|b| BlobId::from_bytes([b; 32])).collect();
        let index = crate::repo::test_fixture::index_of(&[&ids[..5], &ids[3..4]]);
        let mut builder = KnownFilesBuilder::over(index);
        builder.insert(b"/a", &file(10, &[4, 3, 4]));
        builder.insert(b"/b", &file(20, &[]));
        builder.insert(b"/c", &file(30, &[1, 6]));
        builder.insert(b"/d", &file(40, &[0]));
        let known = builder.build();
        assert_eq!(
            known.len(),
            3,
            "a file with a blob the index lacks was kept"
        );
        let content = |path: &[u8], size| known.content(path, &file(size, &[]).stamp);
        assert_eq!(content(b"/a", 10), Some(file(10, &[4, 3, 4]).content));
        assert_eq!(content(b"/b", 20), Some(Vec::new()));
        assert!(content(b"/c", 30).is_none());
        assert_eq!(content(b"/d", 40), Some(file(40, &[0]).content));
        match &known.blobs {
            BlobList::Positions(_, positions) => assert_eq!(positions, &[4, 3, 4, 0]),
            BlobList::Ids(_) => panic!("blobs kept as ids"),
        }
    }
}
