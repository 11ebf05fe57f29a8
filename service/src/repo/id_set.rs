//! A set of blob ids that costs little more than the ids themselves.
//!
//! The ids lie in one array, in the order they were added, and are found
//! through a hashbrown table of their positions (4 bytes a slot), seeded
//! at random. A `HashSet<BlobId>` takes 33 bytes a slot, up to twice as
//! many slots as ids, and holds its old and new tables at once while it
//! grows: about 104 MB at the moment a million ids outgrow it, against
//! about 43 MB here.
//!
//! A set made [`IdSet::over`] a loaded index keeps the blobs that index
//! knows as one bit each at their index positions, and only the others as
//! ids: a backup that finds a million files unchanged references a million
//! known blobs in 125 KB.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use hashbrown::HashTable;

use super::id::BlobId;
use super::index::{BlobSet, Index};

/// Blob ids, each once.
#[derive(Debug, Default)]
pub(crate) struct IdSet {
    ids: Vec<BlobId>,
    by_id: HashTable<u32>,
    hasher: RandomState,
    /// The blobs of the index this set is over.
    indexed: Option<BlobSet>,
}

impl IdSet {
    /// An empty set that keeps the blobs `index` knows as bits.
    pub(crate) fn over(index: Arc<Index>) -> Self {
        Self {
            indexed: Some(BlobSet::new(index)),
            ..Self::default()
        }
    }

    /// Adds `id`; returns whether it was not there yet. Past 2³² ids the
    /// set stops growing and calls every id new: a blob is then stored
    /// twice, never lost.
    pub(crate) fn insert(&mut self, id: BlobId) -> bool {
        if let Some(new) = self.indexed.as_mut().and_then(|set| set.insert_known(&id)) {
            return new;
        }
        let Ok(position) = u32::try_from(self.ids.len()) else {
            return !self.contains(&id);
        };
        let Self {
            ids, by_id, hasher, ..
        } = self;
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
        if let Some(found) = self.indexed.as_ref().and_then(|set| set.contains_known(id)) {
            return found;
        }
        self.by_id
            .find(self.hasher.hash_one(id), |&p| self.ids[p as usize] == *id)
            .is_some()
    }

    /// Whether nothing was added.
    fn is_empty(&self) -> bool {
        self.ids.is_empty() && self.indexed.as_ref().is_none_or(|set| set.len() == 0)
    }

    /// Adds every id of `other`, taking it whole when this set is empty
    /// and keeps no more bits than `other`.
    pub(crate) fn absorb(&mut self, other: IdSet) {
        if self.is_empty() && (self.indexed.is_none() || other.indexed.is_some()) {
            *self = other;
        } else {
            self.extend(other.into_ids());
        }
    }

    /// The ids, in no particular order.
    fn into_ids(self) -> impl Iterator<Item = BlobId> {
        let Self { ids, indexed, .. } = self;
        ids.into_iter()
            .chain(indexed.into_iter().flat_map(BlobSet::into_ids))
    }

    /// The ids, in no particular order.
    pub(crate) fn into_vec(self) -> Vec<BlobId> {
        match self.indexed {
            None => self.ids,
            Some(_) => self.into_ids().collect(),
        }
    }

    /// The ids, sorted.
    #[cfg(test)]
    pub(crate) fn into_sorted(self) -> Vec<BlobId> {
        self.into_sorted_with(Vec::new())
    }

    /// The ids and `more`, sorted, each once; `more`'s room is reused.
    pub(crate) fn into_sorted_with(self, more: Vec<BlobId>) -> Vec<BlobId> {
        let known = self.indexed.as_ref().map_or(0, BlobSet::len);
        let mut ids = more;
        ids.reserve_exact(self.ids.len() + known);
        ids.extend(self.into_ids());
        ids.sort_unstable();
        ids.dedup();
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
    use crate::repo::test_fixture::index_of;

    fn id(i: u32) -> BlobId {
        BlobId::from_bytes(*blake3::hash(&i.to_le_bytes()).as_bytes())
    }

    /// An index of ids 0..100, blob 7 in two packs.
    fn index() -> Arc<Index> {
        let known: Vec<BlobId> = (0..100).map(id).collect();
        index_of(&[&known, &[id(7)]])
    }

    #[test]
    fn a_set_over_an_index_holds_what_a_plain_set_holds() {
        let index = index();
        let mut over = IdSet::over(index.clone());
        let mut plain = IdSet::default();
        // Known blobs (7 is stored twice), then blobs the index lacks.
        let added = [5, 7, 99, 7, 5, 150, 151, 150, 0];
        for i in added {
            assert_eq!(over.insert(id(i)), plain.insert(id(i)), "insert {i}");
        }
        for i in 0..200 {
            assert_eq!(
                over.contains(&id(i)),
                plain.contains(&id(i)),
                "contains {i}"
            );
        }
        assert!(over.ids.len() == 2, "a known blob was kept as an id");

        let mut more = IdSet::over(index.clone());
        more.extend([id(42), id(7), id(160)]);
        over.absorb(more);
        plain.extend([id(42), id(7), id(160)]);
        let expected = plain.into_sorted();
        assert_eq!(expected.len(), 8);
        let mut empty = IdSet::over(index);
        assert!(empty.is_empty());
        empty.absorb(over);
        let mut with_more = expected.clone();
        with_more.push(id(300));
        with_more.sort();
        assert_eq!(
            empty.into_sorted_with(vec![id(300), id(5), id(150)]),
            with_more,
            "each id once"
        );
    }

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
