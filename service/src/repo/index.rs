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
//! offset and length it gives lies within its pack's recorded size, which
//! is below [`MAX_PACK_SIZE`], so readers can trust them before allocating
//! or seeking.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use hashbrown::{HashTable, hash_table};

use serde::{Deserialize, Serialize};

use super::blob::{BlobKind, MAX_TREE_BLOB};
use super::id::{BlobId, IndexId, PackId};
use super::pack::PackedBlob;

/// The largest pack an index may list: 4 GiB, so that a blob's offset in
/// it takes 32 bits. Writers make packs of at most 128 MiB and a tree blob
/// of at most as much again.
pub const MAX_PACK_SIZE: u64 = u32::MAX as u64;

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
            if pack.size > MAX_PACK_SIZE {
                return Err(format!(
                    "pack {}: its size {} is beyond the {MAX_PACK_SIZE} bytes a pack may have",
                    pack.id, pack.size
                ));
            }
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

/// A blob's entry as the index holds it in memory: its id, its pack by
/// number and its place — 48 bytes, where a [`BlobLocation`] takes 88.
/// A million blobs are the whole index of a terabyte; every byte here is a
/// megabyte of every process's memory.
#[derive(Debug, Clone, Copy)]
struct Entry {
    id: BlobId,
    /// Below [`MAX_PACK_SIZE`].
    offset: u32,
    pack: u32,
    length: u32,
    /// The plaintext length in the low bits, and the three flags above.
    raw_and_flags: u32,
}

/// The entry is of a tree blob.
const TREE: u32 = 1 << 31;
/// The blob is stored as a zstd frame.
const COMPRESSED: u32 = 1 << 30;
/// This is the blob's first entry, the one [`Index::get`] gives; later
/// entries are copies in other packs.
const FIRST: u32 = 1 << 29;
/// The bits of `raw_and_flags` that hold the plaintext length.
const RAW_LENGTH: u32 = FIRST - 1;
const _: () = assert!(MAX_TREE_BLOB <= RAW_LENGTH && super::blob::MAX_DATA_BLOB <= RAW_LENGTH);

impl Entry {
    /// The entry of `blob` in pack number `pack`, not yet marked first, if
    /// its offset and lengths fit (those of a validated index object do).
    fn new(blob: &IndexedBlob, pack: u32) -> Option<Self> {
        if blob.raw_length > RAW_LENGTH {
            return None;
        }
        let mut flags = 0;
        if blob.kind == BlobKind::Tree {
            flags |= TREE;
        }
        if blob.compressed {
            flags |= COMPRESSED;
        }
        Some(Self {
            id: blob.id,
            offset: u32::try_from(blob.offset).ok()?,
            pack,
            length: blob.length,
            raw_and_flags: blob.raw_length | flags,
        })
    }

    fn first(&self) -> bool {
        self.raw_and_flags & FIRST != 0
    }

    /// The entry as a pack's blob table lists it.
    fn packed(&self) -> PackedBlob {
        PackedBlob {
            id: self.id,
            kind: if self.raw_and_flags & TREE != 0 {
                BlobKind::Tree
            } else {
                BlobKind::Data
            },
            compressed: self.raw_and_flags & COMPRESSED != 0,
            offset: u64::from(self.offset),
            length: self.length,
            raw_length: self.raw_and_flags & RAW_LENGTH,
        }
    }
}

/// A pack as the index holds it: what is known of it, and where its
/// entries lie in [`Index::entries`]. A pack listed again with more blobs
/// gets a continuation record for them.
#[derive(Debug, Clone, Copy)]
struct PackEntry {
    id: PackId,
    info: PackInfo,
    first_entry: usize,
    /// The record holding what a later listing of the pack added.
    more: Option<u32>,
    /// Whether this record continues an earlier one of the same pack.
    continues: bool,
}

/// Every blob and pack of the repository, from all index objects.
///
/// The entries of all packs lie in one array, pack after pack, and a hash
/// table of positions in it finds a blob by id: about 61 bytes a blob,
/// where a map from id to place takes twice as many (and twice that again
/// while it grows). The table's hasher is seeded at random, so ids a
/// hostile index chooses cannot make lookups collide.
#[derive(Debug, Default, Clone)]
pub struct Index {
    entries: Vec<Entry>,
    by_id: HashTable<u32>,
    hasher: RandomState,
    packs: Vec<PackEntry>,
    pack_numbers: HashMap<PackId, u32>,
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

    /// Adds one pack's entries. A pack listed again (by another index
    /// object) keeps what it was first listed with, and gains the blobs the
    /// new listing adds. A blob whose offset or length a validated index
    /// object could not hold is left out.
    pub fn add_pack(&mut self, pack: &IndexedPack) {
        let Ok(number) = u32::try_from(self.packs.len()) else {
            return;
        };
        let known = self.pack_numbers.get(&pack.id).copied();
        let listed: HashSet<BlobId> = self.pack_blobs(&pack.id).collect();
        let blobs: Vec<Entry> = pack
            .blobs
            .iter()
            .filter(|b| !listed.contains(&b.id))
            .filter_map(|b| Entry::new(b, number))
            .collect();
        if known.is_some() && blobs.is_empty() {
            return;
        }
        // Positions are u32: four billion entries would take 192 GB here
        // before this refuses to add more.
        if u32::try_from(self.entries.len() + blobs.len()).is_err() {
            return;
        }
        let count = u32::try_from(blobs.len()).unwrap_or(u32::MAX);
        match known {
            Some(first) => {
                let last = self.chain(first).last().unwrap_or(first as usize);
                self.packs[last].more = Some(number);
                let info = &mut self.packs[first as usize].info;
                info.blobs = info.blobs.saturating_add(count);
            }
            None => {
                self.pack_numbers.insert(pack.id, number);
            }
        }
        self.packs.push(PackEntry {
            id: pack.id,
            info: PackInfo {
                size: pack.size,
                payload_offset: pack.payload_offset,
                blobs: count,
            },
            first_entry: self.entries.len(),
            more: None,
            continues: known.is_some(),
        });
        self.entries.reserve(blobs.len());
        self.by_id.reserve(blobs.len(), |&position| {
            self.hasher.hash_one(self.entries[position as usize].id)
        });
        for mut blob in blobs {
            let position = self.entries.len() as u32;
            let hash = self.hasher.hash_one(blob.id);
            let entries = &self.entries;
            if let hash_table::Entry::Vacant(slot) = self.by_id.entry(
                hash,
                |&p| entries[p as usize].id == blob.id,
                |&p| self.hasher.hash_one(entries[p as usize].id),
            ) {
                slot.insert(position);
                blob.raw_and_flags |= FIRST;
            }
            self.entries.push(blob);
        }
    }

    /// The records of the pack whose first record is `number`.
    fn chain(&self, number: u32) -> impl Iterator<Item = usize> + '_ {
        std::iter::successors(Some(number as usize), |&n| {
            self.packs.get(n)?.more.map(|m| m as usize)
        })
    }

    /// The location `entry` stands for.
    fn location(&self, entry: &Entry) -> BlobLocation {
        BlobLocation {
            pack: self.packs[entry.pack as usize].id,
            blob: entry.packed(),
        }
    }

    /// Entries, counting every copy of a blob.
    pub(crate) fn positions(&self) -> usize {
        self.entries.len()
    }

    /// The blob of the entry at `position` (below [`Index::positions`]).
    pub(crate) fn id_at(&self, position: usize) -> Option<BlobId> {
        self.entries.get(position).map(|entry| entry.id)
    }

    /// The position of `id`'s first entry.
    pub(crate) fn position(&self, id: &BlobId) -> Option<usize> {
        let position = self.by_id.find(self.hasher.hash_one(id), |&p| {
            self.entries[p as usize].id == *id
        })?;
        Some(*position as usize)
    }

    /// The first entry of `id`.
    fn entry(&self, id: &BlobId) -> Option<&Entry> {
        Some(&self.entries[self.position(id)?])
    }

    /// Where `id` is stored, if anywhere.
    pub fn get(&self, id: &BlobId) -> Option<BlobLocation> {
        self.entry(id).map(|entry| self.location(entry))
    }

    /// Whether `id` is stored.
    pub fn contains(&self, id: &BlobId) -> bool {
        self.entry(id).is_some()
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

    /// The entries of the record numbered `number`.
    fn record_entries(&self, number: usize) -> &[Entry] {
        let Some(pack) = self.packs.get(number) else {
            return &[];
        };
        let end = self
            .packs
            .get(number + 1)
            .map_or(self.entries.len(), |next| next.first_entry);
        &self.entries[pack.first_entry..end]
    }

    /// The entries listed for pack `id`.
    fn pack_entries(&self, id: &PackId) -> impl Iterator<Item = &Entry> + '_ {
        let first = self.pack_numbers.get(id).copied();
        first
            .into_iter()
            .flat_map(|number| self.chain(number))
            .flat_map(|n| self.record_entries(n))
    }

    /// The blobs a pack holds, as its index objects list them.
    pub fn pack_blobs(&self, id: &PackId) -> impl Iterator<Item = BlobId> + '_ {
        self.pack_entries(id).map(|entry| entry.id)
    }

    /// Pack `id` as its index objects list it, with every entry.
    #[cfg(test)]
    pub(crate) fn indexed_pack(&self, id: &PackId) -> Option<IndexedPack> {
        let info = self.pack(id)?;
        Some(IndexedPack {
            id: *id,
            size: info.size,
            payload_offset: info.payload_offset,
            blobs: self
                .pack_entries(id)
                .map(|entry| IndexedBlob::from(&self.location(entry).blob))
                .collect(),
        })
    }

    /// The blobs a pack holds that are read from it: those stored in no
    /// pack added before it.
    pub fn blobs_read_from(&self, id: &PackId) -> impl Iterator<Item = BlobId> + '_ {
        self.pack_entries(id)
            .filter(|entry| entry.first())
            .map(|entry| entry.id)
    }

    /// The packs an index object lists.
    pub fn file_packs(&self) -> &HashMap<IndexId, Vec<PackId>> {
        &self.files
    }

    /// What is known of a pack.
    pub fn pack(&self, id: &PackId) -> Option<&PackInfo> {
        let number = *self.pack_numbers.get(id)?;
        Some(&self.packs.get(number as usize)?.info)
    }

    /// Every pack.
    pub fn packs(&self) -> impl Iterator<Item = (&PackId, &PackInfo)> {
        self.packs
            .iter()
            .filter(|pack| !pack.continues)
            .map(|pack| (&pack.id, &pack.info))
    }

    /// Every blob, where it is read from.
    pub fn blobs(&self) -> impl Iterator<Item = (BlobId, BlobLocation)> + '_ {
        self.entries
            .iter()
            .filter(|entry| entry.first())
            .map(|entry| (entry.id, self.location(entry)))
    }

    /// Number of distinct blobs.
    pub fn blob_count(&self) -> usize {
        self.by_id.len()
    }
}

/// A set of blobs the index knows, one bit each: a million used blobs in
/// 125 KB, where a hash set of their ids takes 64 MB.
#[derive(Debug, Clone)]
pub struct BlobSet {
    index: Arc<Index>,
    bits: Vec<u64>,
}

impl BlobSet {
    /// An empty set of `index`'s blobs.
    pub fn new(index: Arc<Index>) -> Self {
        let bits = vec![0; index.positions().div_ceil(64)];
        Self { index, bits }
    }

    /// Where `id`'s bit is, if the index knows it.
    fn bit(&self, id: &BlobId) -> Option<(usize, u64)> {
        let position = self.index.position(id)?;
        Some((position / 64, 1 << (position % 64)))
    }

    /// Adds `id`; returns whether it was new. A blob the index does not
    /// know is not added.
    pub fn insert(&mut self, id: &BlobId) -> bool {
        self.insert_known(id).unwrap_or(false)
    }

    /// Adds `id` when the index knows it, returning whether it was new;
    /// `None` for a blob the index does not know.
    pub(crate) fn insert_known(&mut self, id: &BlobId) -> Option<bool> {
        let (word, mask) = self.bit(id)?;
        let new = self.bits[word] & mask == 0;
        self.bits[word] |= mask;
        Some(new)
    }

    /// Whether `id` is in the set.
    pub fn contains(&self, id: &BlobId) -> bool {
        self.contains_known(id).unwrap_or(false)
    }

    /// Whether `id` is in the set, or `None` when the index does not know
    /// it.
    pub(crate) fn contains_known(&self, id: &BlobId) -> Option<bool> {
        let (word, mask) = self.bit(id)?;
        Some(self.bits[word] & mask != 0)
    }

    /// How many blobs are in the set.
    pub(crate) fn len(&self) -> usize {
        self.bits
            .iter()
            .map(|word| word.count_ones() as usize)
            .sum()
    }

    /// The blobs in the set, in index order.
    pub(crate) fn into_ids(self) -> impl Iterator<Item = BlobId> {
        let Self { index, bits } = self;
        bits.into_iter()
            .enumerate()
            .flat_map(|(word, bits)| {
                (0..64)
                    .filter(move |bit| bits & (1 << bit) != 0)
                    .map(move |bit| word * 64 + bit)
            })
            .filter_map(move |position| index.id_at(position))
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
        assert!(
            file(MAX_PACK_SIZE, 0, MAX_PACK_SIZE - 10, 10)
                .validate()
                .is_ok()
        );
        let beyond = file(MAX_PACK_SIZE + 1, 0, 0, 10).validate();
        assert!(beyond.is_err_and(|e| e.contains("beyond")));
    }

    #[test]
    fn an_entry_gives_back_what_was_indexed() {
        let blobs = [
            (BlobKind::Tree, true, MAX_PACK_SIZE - 100, 90, MAX_TREE_BLOB),
            (BlobKind::Tree, false, 0, 7, 7),
            (BlobKind::Data, true, 12, 0, 1),
            (
                BlobKind::Data,
                false,
                5,
                super::super::blob::MAX_DATA_BLOB,
                super::super::blob::MAX_DATA_BLOB,
            ),
        ];
        let mut index = Index::default();
        let indexed: Vec<IndexedBlob> = blobs
            .iter()
            .enumerate()
            .map(
                |(n, &(kind, compressed, offset, length, raw_length))| IndexedBlob {
                    id: blob(n as u8),
                    kind,
                    compressed,
                    offset,
                    length,
                    raw_length,
                },
            )
            .collect();
        let listed = IndexedPack {
            id: PackId::from_bytes([1; 32]),
            size: MAX_PACK_SIZE,
            payload_offset: 0,
            blobs: indexed.clone(),
        };
        index.add_pack(&listed);
        for blob in &indexed {
            assert_eq!(index.get(&blob.id).map(|l| l.blob), Some(blob.as_packed()));
        }
        // Entries no validated index object holds are left out.
        let mut unfit = pack(2, &[20, 21, 22]);
        unfit.blobs[0].offset = MAX_PACK_SIZE + 1;
        unfit.blobs[1].raw_length = RAW_LENGTH + 1;
        index.add_pack(&unfit);
        assert!(!index.contains(&blob(20)) && !index.contains(&blob(21)));
        assert!(index.contains(&blob(22)));
        assert_eq!(std::mem::size_of::<Entry>(), 48);
    }

    fn pack(pack: u8, blobs: &[u8]) -> IndexedPack {
        IndexedPack {
            id: PackId::from_bytes([pack; 32]),
            size: 1 << 20,
            payload_offset: 0,
            blobs: blobs
                .iter()
                .enumerate()
                .map(|(n, b)| IndexedBlob {
                    id: BlobId::from_bytes([*b; 32]),
                    kind: BlobKind::Data,
                    compressed: false,
                    offset: n as u64 * 100,
                    length: 100,
                    raw_length: 100,
                })
                .collect(),
        }
    }

    fn blob(n: u8) -> BlobId {
        BlobId::from_bytes([n; 32])
    }

    #[test]
    fn a_blob_stored_twice_is_read_from_the_pack_added_first() {
        let mut index = Index::default();
        index.add_pack(&pack(1, &[10, 11]));
        index.add_pack(&pack(2, &[11, 12]));
        let first = PackId::from_bytes([1; 32]);
        let second = PackId::from_bytes([2; 32]);
        assert_eq!(index.blob_count(), 3);
        assert_eq!(index.get(&blob(11)).map(|l| l.pack), Some(first));
        assert_eq!(index.get(&blob(11)).map(|l| l.blob.offset), Some(100));
        assert_eq!(index.get(&blob(12)).map(|l| l.pack), Some(second));
        assert_eq!(index.get(&blob(12)).map(|l| l.blob.offset), Some(100));
        assert!(index.get(&blob(13)).is_none());
        assert_eq!(
            index.pack_blobs(&second).collect::<Vec<_>>(),
            [blob(11), blob(12)]
        );
        assert_eq!(
            index.blobs_read_from(&second).collect::<Vec<_>>(),
            [blob(12)]
        );
        let mut listed: Vec<_> = index.blobs().map(|(id, l)| (id, l.pack)).collect();
        listed.sort();
        assert_eq!(
            listed,
            [(blob(10), first), (blob(11), first), (blob(12), second)]
        );
        assert_eq!(index.pack(&second).map(|p| p.blobs), Some(2));
    }

    #[test]
    fn a_pack_listed_again_gains_only_the_blobs_it_did_not_list() {
        let mut index = Index::default();
        index.add_pack(&pack(1, &[10, 11]));
        index.add_pack(&pack(2, &[12]));
        index.add_pack(&pack(1, &[11, 20]));
        index.add_pack(&pack(1, &[10, 11, 20]));
        index.add_pack(&pack(1, &[12, 21]));
        let id = PackId::from_bytes([1; 32]);
        let listed = index.pack_blobs(&id).collect::<Vec<_>>();
        assert_eq!(listed, [blob(10), blob(11), blob(20), blob(12), blob(21)]);
        assert_eq!(index.packs().count(), 2);
        assert_eq!(index.pack(&id).map(|p| p.blobs), Some(5));
        assert_eq!(index.get(&blob(11)).map(|l| l.blob.offset), Some(100));
        assert_eq!(index.get(&blob(20)).map(|l| l.blob.offset), Some(100));
        assert_eq!(
            index.get(&blob(12)).map(|l| l.pack),
            Some(PackId::from_bytes([2; 32]))
        );
        assert_eq!(index.get(&blob(21)).map(|l| l.pack), Some(id));
        assert_eq!(index.blobs_read_from(&id).count(), 4);
        assert_eq!(index.blob_count(), 5);
    }

    #[test]
    fn every_blob_is_found_after_the_table_grows() {
        let mut index = Index::default();
        let mut ids = Vec::new();
        for p in 0..64u32 {
            let blobs: Vec<IndexedBlob> = (0..200u32)
                .map(|n| {
                    let id =
                        BlobId::from_bytes(*blake3::hash(&(p * 1000 + n).to_le_bytes()).as_bytes());
                    ids.push((id, p));
                    IndexedBlob {
                        id,
                        kind: BlobKind::Tree,
                        compressed: true,
                        offset: u64::from(n),
                        length: 1,
                        raw_length: 2,
                    }
                })
                .collect();
            let mut bytes = [0; 32];
            bytes[..4].copy_from_slice(&p.to_le_bytes());
            index.add_pack(&IndexedPack {
                id: PackId::from_bytes(bytes),
                size: 1000,
                payload_offset: 0,
                blobs,
            });
        }
        assert_eq!(index.blob_count(), ids.len());
        for (id, p) in ids {
            let location = index.get(&id).expect("indexed blob found");
            assert_eq!(location.pack.as_bytes()[..4], p.to_le_bytes());
            assert_eq!(location.blob.kind, BlobKind::Tree);
        }
    }

    #[test]
    fn a_blob_set_holds_only_known_blobs() {
        let mut index = Index::default();
        index.add_pack(&pack(1, &[10, 11]));
        index.add_pack(&pack(2, &[11, 12]));
        let mut set = BlobSet::new(Arc::new(index));
        assert!(set.insert(&blob(11)));
        assert!(!set.insert(&blob(11)));
        assert!(!set.insert(&blob(99)));
        assert!(set.contains(&blob(11)));
        assert!(!set.contains(&blob(10)));
        assert!(!set.contains(&blob(12)));
        assert!(!set.contains(&blob(99)));
    }
}
