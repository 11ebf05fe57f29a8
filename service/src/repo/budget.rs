//! A fixed number of pack buffers, alive at once and reused.
//!
//! A writer takes a [`Permit`] before it opens a pack and the permit travels
//! with the pack until its upload ends, so the packs held in memory — being
//! filled, sealed, queued or uploading — never outnumber the budget,
//! however fast the data comes and however slow the store answers. A permit
//! carries a buffer: the one an earlier pack was built in, given back after
//! its upload, so a backup allocates its pack buffers once rather than per
//! pack (and the allocator has no freed pack-sized blocks to keep).
//! Writers run on blocking threads, so waiting is a plain condition
//! variable.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// Counts the packs that may still be opened, and keeps their buffers.
#[derive(Debug)]
pub(crate) struct PackBudget {
    free: Mutex<Free>,
    freed: Condvar,
}

/// Permits not taken, and buffers given back.
#[derive(Debug)]
struct Free {
    permits: usize,
    buffers: Vec<Vec<u8>>,
}

/// Leave to hold one pack in memory, given back (with the pack's buffer,
/// once [`Permit::keep`] has it) when dropped.
#[derive(Debug)]
pub(crate) struct Permit {
    budget: Arc<PackBudget>,
    buffer: Option<Vec<u8>>,
}

impl PackBudget {
    /// A budget of `packs` packs (at least one).
    pub(crate) fn new(packs: usize) -> Arc<Self> {
        Arc::new(Self {
            free: Mutex::new(Free {
                permits: packs.max(1),
                buffers: Vec::new(),
            }),
            freed: Condvar::new(),
        })
    }

    /// Waits until a pack may be opened. Blocking: call it off the async
    /// threads.
    pub(crate) fn acquire(self: &Arc<Self>) -> Permit {
        let mut free = self.lock();
        while free.permits == 0 {
            free = self
                .freed
                .wait(free)
                .unwrap_or_else(PoisonError::into_inner);
        }
        free.permits -= 1;
        Permit {
            budget: Arc::clone(self),
            buffer: None,
        }
    }

    // The counts stay right even if a holder panicked mid-update: each
    // change under the lock is one integer or one push or pop.
    fn lock(&self) -> MutexGuard<'_, Free> {
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Packs that may be opened now.
    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        self.lock().permits
    }
}

impl Permit {
    /// An empty buffer with at least `room` bytes of capacity: one an
    /// earlier pack gave back when there is one.
    pub(crate) fn buffer(&mut self, room: usize) -> Vec<u8> {
        let kept = self.buffer.take();
        let mut buffer = kept
            .or_else(|| self.budget.lock().buffers.pop())
            .unwrap_or_default();
        buffer.clear();
        buffer.reserve_exact(room);
        buffer
    }

    /// Keeps `buffer` for the next pack once this permit is given back.
    pub(crate) fn keep(&mut self, buffer: Vec<u8>) {
        self.buffer = Some(buffer);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut free = self.budget.lock();
        free.permits += 1;
        free.buffers.extend(self.buffer.take());
        self.budget.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_writer_waits_until_a_permit_is_given_back() {
        let budget = PackBudget::new(1);
        let held = budget.acquire();
        assert_eq!(budget.available(), 0);
        let waiter = {
            let budget = Arc::clone(&budget);
            std::thread::spawn(move || drop(budget.acquire()))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "a second permit was granted");
        drop(held);
        assert!(waiter.join().is_ok());
        assert_eq!(budget.available(), 1);
    }

    #[test]
    fn a_buffer_given_back_serves_the_next_pack() {
        let budget = PackBudget::new(2);
        let mut first = budget.acquire();
        let buffer = first.buffer(1000);
        assert!(buffer.capacity() >= 1000);
        let address = buffer.as_ptr();
        first.keep(buffer);
        drop(first);
        let mut second = budget.acquire();
        let reused = second.buffer(10);
        assert_eq!(reused.as_ptr(), address, "a new buffer was allocated");
        assert!(reused.is_empty() && reused.capacity() >= 1000);
        // A permit dropped without a buffer gives back only its place.
        drop(second);
        assert_eq!(budget.available(), 2);
        assert!(budget.acquire().buffer(0).capacity() == 0);
    }
}
