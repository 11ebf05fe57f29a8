//! Index objects: where every blob lives.
//!
//! An index object (`index/<id>`) is zstd-compressed JSON encrypted to the
//! service and the restore recipients, listing packs and the blobs in each.
//! Writers add one index object every few packs and at the end of a backup,
//! so a crash loses at most the last few packs' entries (their packs stay
//! as unreferenced garbage until prune). The in-memory [`Index`] is the union
//! of all index objects.
//!
//! An index object read back is validated ([`IndexFile::validate`]): every
//! offset and length it gives lies within its pack's recorded size, so
//! readers can trust them before allocating or seeking.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::blob::BlobKind;
use super::id::{BlobId, IndexId, PackId};
use super::pack::PackedBlob;

/// One pack as an index object lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexedPack {
    /// The pack.
    pub id: PackId,
    /// Its size as stored.
    pub size: u64,
    /// Where the age payload starts (header plus nonce length).
    pub payload_offset: u64,
    /// Its blobs.
    pub blobs: Vec<IndexedBlob>,
}

/// One blob as an index object lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexedBlob {
    /// The blob.
    pub id: BlobId,
    /// What it holds.
    pub kind: BlobKind,
    /// Whether stored as a zstd frame.
    pub compressed: bool,
    /// Start of its stored bytes in the pack's plaintext.
    pub offset: u64,
    /// Stored length.
    pub length: u32,
    /// Plaintext length.
    pub raw_length: u32,
}

impl From<&PackedBlob> for IndexedBlob {
    fn from(blob: &PackedBlob) -> Self {
        Self {
            id: blob.id,
            kind: blob.kind,
            compressed: blob.compressed,
            offset: blob.offset,
            length: blob.length,
            raw_length: blob.raw_length,
        }
    }
}

impl IndexedBlob {
    /// As a pack's blob table would list it.
    pub fn as_packed(&self) -> PackedBlob {
        PackedBlob {
            id: self.id,
            kind: self.kind,
            compressed: self.compressed,
            offset: self.offset,
            length: self.length,
            raw_length: self.raw_length,
        }
    }
}

/// The plaintext of an index object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexFile {
    /// The packs it lists.
    pub packs: Vec<IndexedPack>,
}

impl IndexFile {
    /// Checks every pack and blob entry: a pack's payload starts within it,
    /// and each blob passes [`PackedBlob::check`] against the pack's payload
    /// size (an upper bound of its plaintext).
    ///
    /// Fails with the first entry that does not fit.
    pub fn validate(&self) -> Result<(), String> {
        for pack in &self.packs {
            let payload = pack.size.checked_sub(pack.payload_offset).ok_or_else(|| {
                format!(
                    "pack {}: its payload offset {} lies beyond its size {}",
                    pack.id, pack.payload_offset, pack.size
                )
            })?;
            for blob in &pack.blobs {
                blob.as_packed()
                    .check(payload)
                    .map_err(|e| format!("pack {}, blob {}: {}", pack.id, blob.id, e.reason()))?;
            }
        }
        Ok(())
    }
}

impl super::meta::MetaObject for IndexFile {
    fn validate(&self) -> Result<(), String> {
        IndexFile::validate(self)
    }
}

/// Where a blob is: its pack and place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    /// The pack holding it.
    pub pack: PackId,
    /// Its entry.
    pub blob: PackedBlob,
}

/// What the repository knows of a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackInfo {
    /// Its size as stored.
    pub size: u64,
    /// Where the age payload starts.
    pub payload_offset: u64,
    /// How many blobs it holds.
    pub blobs: u32,
}

/// A blob's entry as the index holds it in memory: its pack by number,
/// and its place without the id (the key) — 24 bytes, where a
/// [`BlobLocation`] takes 88. A million blobs are the whole index of a
/// terabyte; every byte here is a megabyte of every process's memory.
#[derive(Debug, Clone, Copy)]
struct Entry {
    offset: u64,
    pack: u32,
    length: u32,
    raw_length: u32,
    kind: BlobKind,
    compressed: bool,
}

/// Every blob and pack of the repository, from all index objects.
#[derive(Debug, Default, Clone)]
pub struct Index {
    blobs: HashMap<BlobId, Entry>,
    /// The packs by number, as [`Entry::pack`] names them.
    pack_ids: Vec<PackId>,
    pack_numbers: HashMap<PackId, u32>,
    packs: HashMap<PackId, PackInfo>,
    pack_blobs: HashMap<PackId, Vec<BlobId>>,
    files: HashMap<IndexId, Vec<PackId>>,
    doomed: HashSet<PackId>,
}

impl Index {
    /// Adds the entries of one index object.
    pub fn add_file(&mut self, id: IndexId, file: IndexFile) {
        self.files
            .insert(id, file.packs.iter().map(|p| p.id).collect());
        for pack in file.packs {
            self.add_pack(&pack);
        }
    }

    /// Adds one pack's entries.
    pub fn add_pack(&mut self, pack: &IndexedPack) {
        self.packs.insert(
            pack.id,
            PackInfo {
                size: pack.size,
                payload_offset: pack.payload_offset,
                blobs: u32::try_from(pack.blobs.len()).unwrap_or(u32::MAX),
            },
        );
        self.pack_blobs
            .insert(pack.id, pack.blobs.iter().map(|b| b.id).collect());
        let number = match self.pack_numbers.get(&pack.id) {
            Some(number) => *number,
            None => {
                let number = u32::try_from(self.pack_ids.len()).unwrap_or(u32::MAX);
                self.pack_ids.push(pack.id);
                self.pack_numbers.insert(pack.id, number);
                number
            }
        };
        self.blobs.reserve(pack.blobs.len());
        for blob in &pack.blobs {
            self.blobs.entry(blob.id).or_insert(Entry {
                offset: blob.offset,
                pack: number,
                length: blob.length,
                raw_length: blob.raw_length,
                kind: blob.kind,
                compressed: blob.compressed,
            });
        }
    }

    /// The location `entry` of blob `id` stands for.
    fn location(&self, id: BlobId, entry: &Entry) -> Option<BlobLocation> {
        Some(BlobLocation {
            pack: *self.pack_ids.get(entry.pack as usize)?,
            blob: PackedBlob {
                id,
                kind: entry.kind,
                compressed: entry.compressed,
                offset: entry.offset,
                length: entry.length,
                raw_length: entry.raw_length,
            },
        })
    }

    /// Where `id` is stored, if anywhere.
    pub fn get(&self, id: &BlobId) -> Option<BlobLocation> {
        self.location(*id, self.blobs.get(id)?)
    }

    /// Whether `id` is stored.
    pub fn contains(&self, id: &BlobId) -> bool {
        self.blobs.contains_key(id)
    }

    /// Whether a new backup may reuse the stored `id`: it is stored in a
    /// pack that no prune plan is about to delete.
    pub fn reusable(&self, id: &BlobId) -> bool {
        self.get(id)
            .is_some_and(|location| !self.doomed.contains(&location.pack))
    }

    /// Marks packs a prune plan will delete: their blobs are not reused.
    pub fn doom(&mut self, packs: impl IntoIterator<Item = PackId>) {
        self.doomed.extend(packs);
    }

    /// The blobs a pack holds.
    pub fn pack_blobs(&self, id: &PackId) -> &[BlobId] {
        self.pack_blobs.get(id).map_or(&[], Vec::as_slice)
    }

    /// The packs an index object lists.
    pub fn file_packs(&self) -> &HashMap<IndexId, Vec<PackId>> {
        &self.files
    }

    /// What is known of a pack.
    pub fn pack(&self, id: &PackId) -> Option<&PackInfo> {
        self.packs.get(id)
    }

    /// Every pack.
    pub fn packs(&self) -> impl Iterator<Item = (&PackId, &PackInfo)> {
        self.packs.iter()
    }

    /// Every blob.
    pub fn blobs(&self) -> impl Iterator<Item = (BlobId, BlobLocation)> + '_ {
        self.blobs
            .iter()
            .filter_map(|(id, entry)| Some((*id, self.location(*id, entry)?)))
    }

    /// Number of distinct blobs.
    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64, payload_offset: u64, offset: u64, length: u32) -> IndexFile {
        IndexFile {
            packs: vec![IndexedPack {
                id: PackId::from_bytes([1; 32]),
                size,
                payload_offset,
                blobs: vec![IndexedBlob {
                    id: BlobId::from_bytes([2; 32]),
                    kind: BlobKind::Data,
                    compressed: false,
                    offset,
                    length,
                    raw_length: length,
                }],
            }],
        }
    }

    #[test]
    fn entries_outside_their_pack_are_refused() {
        assert!(file(1000, 200, 0, 800).validate().is_ok());
        assert!(file(1000, 200, 1, 800).validate().is_err());
        assert!(file(100, 200, 0, 0).validate().is_err());
        assert!(file(u64::MAX, 0, u64::MAX, 5).validate().is_err());
        assert!(file(u64::MAX, 0, 0, u32::MAX).validate().is_err());
    }
}
