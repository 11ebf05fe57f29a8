//! A fixed number of packs in flight at once.
//!
//! A writer takes a [`Permit`] before it opens a pack and the permit travels
//! with the pack until its upload ends, so the packs staged — being filled,
//! sealed, queued or uploading — never outnumber the budget, however fast
//! the data comes and however slow the store answers. Writers run on
//! blocking threads, so waiting is a plain condition variable.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// Counts the packs that may still be opened.
#[derive(Debug)]
pub(crate) struct PackBudget {
    permits: Mutex<usize>,
    freed: Condvar,
}

/// Leave to have one pack in flight, given back when dropped.
#[derive(Debug)]
pub(crate) struct Permit {
    budget: Arc<PackBudget>,
}

impl PackBudget {
    /// A budget of `packs` packs (at least one).
    pub(crate) fn new(packs: usize) -> Arc<Self> {
        Arc::new(Self {
            permits: Mutex::new(packs.max(1)),
            freed: Condvar::new(),
        })
    }

    /// Waits until a pack may be opened. Blocking: call it off the async
    /// threads.
    pub(crate) fn acquire(self: &Arc<Self>) -> Permit {
        let mut permits = self.lock();
        while *permits == 0 {
            permits = self
                .freed
                .wait(permits)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *permits -= 1;
        Permit {
            budget: Arc::clone(self),
        }
    }

    // The count stays right even if a holder panicked mid-update: each
    // change under the lock is one integer.
    fn lock(&self) -> MutexGuard<'_, usize> {
        self.permits.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Packs that may be opened now.
    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        *self.lock()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        *self.budget.lock() += 1;
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
