//! Where each blob of a batch goes: one array of (blob, slot) pairs, sorted
//! by blob once the batch is planned: 48 bytes a slot and no allocation per
//! blob, where a map of blob to list of slots took about 120 bytes a blob.

use crate::repo::id::BlobId;

/// A place where a blob's plaintext goes: a planned file and an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot {
    pub(super) file: usize,
    pub(super) offset: u64,
}

/// The slots of a batch, sorted by blob.
#[derive(Debug, Default)]
pub(super) struct Slots {
    placed: Vec<(BlobId, Slot)>,
}

impl Slots {
    /// Sorts what the plan placed by blob.
    pub(super) fn new(mut placed: Vec<(BlobId, Slot)>) -> Self {
        placed.sort_unstable_by_key(|(blob, _)| *blob);
        Self { placed }
    }

    /// Every slot, in blob order.
    pub(super) fn all(&self) -> impl Iterator<Item = &Slot> {
        self.placed.iter().map(|(_, slot)| slot)
    }

    /// The slots of `blob`.
    pub(super) fn of(&self, blob: &BlobId) -> impl Iterator<Item = &Slot> {
        let start = self.placed.partition_point(|(id, _)| id < blob);
        self.placed[start..]
            .iter()
            .take_while(move |(id, _)| id == blob)
            .map(|(_, slot)| slot)
    }

    /// Each blob once, with where its first slot lies (for
    /// [`Slots::blob_at`]).
    pub(super) fn blobs(&self) -> impl Iterator<Item = (usize, BlobId)> + '_ {
        let placed = &self.placed;
        placed
            .iter()
            .enumerate()
            .filter(|&(at, (id, _))| at == 0 || placed[at - 1].0 != *id)
            .map(|(at, (id, _))| (at, *id))
    }

    /// The blob of the slot at `at`, as [`Slots::blobs`] gave it.
    pub(super) fn blob_at(&self, at: usize) -> Option<BlobId> {
        self.placed.get(at).map(|(id, _)| *id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: u8) -> BlobId {
        BlobId::from_bytes([n; 32])
    }

    fn slot(file: usize, offset: u64) -> Slot {
        Slot { file, offset }
    }

    #[test]
    fn slots_are_found_by_blob() {
        let slots = Slots::new(vec![
            (blob(3), slot(0, 0)),
            (blob(1), slot(0, 10)),
            (blob(3), slot(2, 5)),
            (blob(2), slot(1, 0)),
        ]);
        let mut of_three: Vec<Slot> = slots.of(&blob(3)).copied().collect();
        of_three.sort_by_key(|s| s.file);
        assert_eq!(of_three, [slot(0, 0), slot(2, 5)]);
        assert_eq!(
            slots.of(&blob(1)).copied().collect::<Vec<_>>(),
            [slot(0, 10)]
        );
        assert_eq!(slots.of(&blob(9)).count(), 0);
        assert_eq!(
            slots.blobs().collect::<Vec<_>>(),
            [(0, blob(1)), (1, blob(2)), (2, blob(3))]
        );
        assert_eq!(slots.blob_at(2), Some(blob(3)));
        assert_eq!(slots.blob_at(4), None);
        assert_eq!(slots.all().count(), 4);
    }
}
