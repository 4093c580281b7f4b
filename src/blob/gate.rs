//! The bound on range requests in flight at once for one mount: readers, read-ahead and
//! prefetch all go through it, so a start never has more than [`MAX_IN_FLIGHT`] requests on
//! the link (each an HTTP/1.1 connection of the registry client's pool, or a stream of one
//! HTTP/2 connection). Background work (read-ahead and prefetch threads) can never hold every
//! slot: there are fewer of those threads than slots, so a reader always finds one free.
//!
//! Calls nothing else in the crate.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Condvar, Mutex};

/// Range requests one mount keeps in flight at most.
pub const MAX_IN_FLIGHT: usize = 8;

/// A counting gate.
pub struct Gate {
    limit: usize,
    busy: Mutex<usize>,
    freed: Condvar,
    /// The most requests ever in flight at once.
    pub peak: AtomicU64,
}

/// A request's slot; dropping it frees the slot.
pub struct Slot<'a>(&'a Gate);

impl Gate {
    pub fn new(limit: usize) -> Gate {
        Gate { limit: limit.max(1), busy: Mutex::new(0), freed: Condvar::new(), peak: AtomicU64::new(0) }
    }

    /// Wait for a free slot.
    pub fn enter(&self) -> Slot<'_> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        while *busy >= self.limit {
            busy = self.freed.wait(busy).unwrap_or_else(|p| p.into_inner());
        }
        *busy += 1;
        self.peak.fetch_max(*busy as u64, Relaxed);
        Slot(self)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut busy = self.0.busy.lock().unwrap_or_else(|p| p.into_inner());
        *busy -= 1;
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn never_more_than_the_limit_at_once() {
        let g = Gate::new(3);
        let now = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..12 {
                s.spawn(|| {
                    for _ in 0..20 {
                        let _slot = g.enter();
                        let n = now.fetch_add(1, Relaxed) + 1;
                        most.fetch_max(n, Relaxed);
                        std::thread::sleep(std::time::Duration::from_micros(200));
                        now.fetch_sub(1, Relaxed);
                    }
                });
            }
        });
        assert_eq!(most.load(Relaxed), 3);
        assert_eq!(g.peak.load(Relaxed), 3);
    }
}
