//! A set of blob ids that costs little more than the ids themselves.
//!
//! The ids lie in one array, in the order they were added, and are found
//! through a hashbrown table of their positions (4 bytes a slot), seeded
//! at random. A `HashSet<BlobId>` takes 33 bytes a slot, up to twice as
//! many slots as ids, and holds its old and new tables at once while it
//! grows: about 104 MB at the moment a million ids outgrow it, against
//! about 43 MB here.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

use super::id::BlobId;

/// Blob ids, each once.
#[derive(Debug, Default)]
pub(crate) struct IdSet {
    ids: Vec<BlobId>,
    by_id: HashTable<u32>,
    hasher: RandomState,
}

impl IdSet {
    /// Adds `id`; returns whether it was not there yet. Past 2³² ids the
    /// set stops growing and calls every id new: a blob is then stored
    /// twice, never lost.
    pub(crate) fn insert(&mut self, id: BlobId) -> bool {
        let Ok(position) = u32::try_from(self.ids.len()) else {
            return !self.contains(&id);
        };
        let Self { ids, by_id, hasher } = self;
        let hash = hasher.hash_one(id);
        let found = by_id.find(hash, |&p| ids[p as usize] == id);
        if found.is_some() {
            return false;
        }
        by_id.insert_unique(hash, position, |&p| hasher.hash_one(ids[p as usize]));
        ids.push(id);
        true
    }

    /// Whether `id` was added.
    pub(crate) fn contains(&self, id: &BlobId) -> bool {
        self.by_id
            .find(self.hasher.hash_one(id), |&p| self.ids[p as usize] == *id)
            .is_some()
    }

    /// Adds every id of `other`, taking it whole when this set is empty.
    pub(crate) fn absorb(&mut self, other: IdSet) {
        if self.ids.is_empty() {
            *self = other;
        } else {
            self.extend(other.ids);
        }
    }

    /// The ids, sorted.
    pub(crate) fn into_sorted(self) -> Vec<BlobId> {
        let Self { mut ids, .. } = self;
        ids.sort_unstable();
        ids
    }
}

impl Extend<BlobId> for IdSet {
    fn extend<I: IntoIterator<Item = BlobId>>(&mut self, ids: I) {
        for id in ids {
            self.insert(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_id_is_added_once_and_found_again() {
        let mut set = IdSet::default();
        let ids: Vec<BlobId> = (0..10_000u32)
            .map(|i| BlobId::from_bytes(*blake3::hash(&i.to_le_bytes()).as_bytes()))
            .collect();
        for id in &ids {
            assert!(!set.contains(id));
            assert!(set.insert(*id));
        }
        for id in &ids {
            assert!(set.contains(id));
            assert!(!set.insert(*id), "{id} added twice");
        }
        assert_eq!(set.ids.len(), ids.len());
        let stranger = BlobId::from_bytes([7; 32]);
        assert!(!set.contains(&stranger));
        set.extend([stranger, ids[0]]);
        let mut expected = ids.clone();
        expected.push(stranger);
        expected.sort();
        let mut empty = IdSet::default();
        empty.absorb(set);
        let mut more = IdSet::default();
        more.insert(ids[1]);
        more.insert(BlobId::from_bytes([9; 32]));
        empty.absorb(more);
        expected.push(BlobId::from_bytes([9; 32]));
        expected.sort();
        assert_eq!(empty.into_sorted(), expected);
    }
}
