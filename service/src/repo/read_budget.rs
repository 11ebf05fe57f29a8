//! A bound on the metadata ciphertext held at once while many objects are
//! read in parallel (a listing's snapshots, the index at unlock): small
//! objects are read many at a time, a large one (a snapshot of a million
//! blobs is about 35 MB) alone, so memory does not grow with their number.
//! Objects are parsed as they arrive, so a read holds its bytes only when
//! its body was cut off midway and is read again whole.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of ciphertext held at once by the reads sharing one budget.
pub(crate) const READ_BUDGET_BYTES: u64 = 64 << 20;

/// The budget counts whole KiB.
const UNIT: u64 = 1024;

/// Leave to hold objects' bytes, shared by the reads of one listing.
#[derive(Debug, Clone)]
pub(crate) struct ReadBudget {
    units: Arc<Semaphore>,
    total: u32,
}

impl ReadBudget {
    /// A budget of `bytes` (at least one KiB).
    pub(crate) fn new(bytes: u64) -> Self {
        let total = u32::try_from(bytes / UNIT).unwrap_or(u32::MAX).max(1);
        Self {
            units: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Waits until an object of `size` bytes may be held; an object larger
    /// than the whole budget waits for all of it. The leave lasts as long as
    /// the permit (`None` only if the budget were closed, which it never is).
    pub(crate) async fn hold(&self, size: u64) -> Option<OwnedSemaphorePermit> {
        let units = u32::try_from(size.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total);
        self.units.clone().acquire_many_owned(units).await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn large_objects_wait_for_room_small_ones_share_it() {
        let budget = ReadBudget::new(10 * UNIT);
        let small = budget.hold(3 * UNIT).await;
        let more = budget.hold(1).await;
        assert!(small.is_some() && more.is_some());
        // 4 KiB held: an object larger than the whole budget waits for all.
        let huge =
            tokio::time::timeout(std::time::Duration::from_millis(50), budget.hold(u64::MAX)).await;
        assert!(huge.is_err(), "a huge object was let in beside others");
        drop((small, more));
        let huge = budget.hold(u64::MAX).await;
        assert!(huge.is_some());
        let blocked =
            tokio::time::timeout(std::time::Duration::from_millis(50), budget.hold(1)).await;
        assert!(blocked.is_err(), "the whole budget is taken");
    }
}
