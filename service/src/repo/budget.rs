//! A fixed number of pack buffers alive at once.
//!
//! A writer takes a [`Permit`] before it opens a pack and the permit travels
//! with the pack until its upload ends, so the packs held in memory — being
//! filled, sealed, queued or uploading — never outnumber the budget,
//! however fast the data comes and however slow the store answers. Writers
//! run on blocking threads, so waiting is a plain condition variable.

use std::sync::{Arc, Condvar, Mutex, PoisonError};

/// Counts the packs that may still be opened.
#[derive(Debug)]
pub(crate) struct PackBudget {
    free: Mutex<usize>,
    freed: Condvar,
}

/// Leave to hold one pack in memory, given back when dropped.
#[derive(Debug)]
pub(crate) struct Permit {
    budget: Arc<PackBudget>,
}

impl PackBudget {
    /// A budget of `packs` packs (at least one).
    pub(crate) fn new(packs: usize) -> Arc<Self> {
        Arc::new(Self {
            free: Mutex::new(packs.max(1)),
            freed: Condvar::new(),
        })
    }

    /// Waits until a pack may be opened. Blocking: call it off the async
    /// threads.
    pub(crate) fn acquire(self: &Arc<Self>) -> Permit {
        // The count stays right even if a holder panicked mid-update: it is
        // one integer changed under the lock.
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        while *free == 0 {
            free = self
                .freed
                .wait(free)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *free -= 1;
        Permit {
            budget: Arc::clone(self),
        }
    }

    /// Packs that may be opened now.
    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        *self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut free = self
            .budget
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *free += 1;
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
}
