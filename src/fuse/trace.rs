//! What a mount records of its reads for a start-up trace: each regular file in the order it
//! was first read, when (milliseconds after the mount went live), and which of its chunks were
//! read, for reads in the first `window` of the mount. The mount writes it out as a trace file
//! (`crate::mount::trace`).
//!
//! Owns nothing on disk; calls nothing else in the crate.

use crate::tree::InodeId;
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// The reads of a mount's first `window`.
pub struct ReadLog {
    started: Instant,
    window: Duration,
    inner: Mutex<Inner>,
    /// Bumped by every read that added something, so a writer knows when to write again.
    version: AtomicU64,
}

#[derive(Default)]
struct Inner {
    order: Vec<(InodeId, u64)>,
    chunks: HashMap<InodeId, BTreeSet<u32>>,
}

/// One file of the log, in first-read order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub id: InodeId,
    /// Milliseconds from the start of the log to the file's first read.
    pub at_ms: u64,
    /// Indexes of the chunks read (within the file), ascending.
    pub chunks: Vec<u32>,
}

impl ReadLog {
    /// A log of the reads from now until `window` has passed.
    pub fn new(window: Duration) -> ReadLog {
        ReadLog {
            started: Instant::now(),
            window,
            inner: Mutex::new(Inner::default()),
            version: AtomicU64::new(0),
        }
    }

    /// Note that chunks `first..=last` of file `id` were read.
    pub fn read(&self, id: InodeId, first: u32, last: u32) {
        let at = self.started.elapsed();
        if at > self.window {
            return;
        }
        let Ok(mut g) = self.inner.lock() else { return };
        let inner = &mut *g;
        let set = match inner.chunks.get_mut(&id) {
            Some(s) => s,
            None => {
                inner.order.push((id, at.as_millis() as u64));
                inner.chunks.entry(id).or_default()
            }
        };
        let before = set.len();
        set.extend(first..=last);
        if set.len() != before {
            self.version.fetch_add(1, Relaxed);
        }
    }

    /// A number that changes whenever the log gains a file or a chunk.
    pub fn version(&self) -> u64 {
        self.version.load(Relaxed)
    }

    /// Whether the window has passed (nothing more is recorded).
    pub fn closed(&self) -> bool {
        self.started.elapsed() > self.window
    }

    /// The files read so far, in the order of their first reads.
    pub fn files(&self) -> Vec<Logged> {
        let Ok(g) = self.inner.lock() else { return Vec::new() };
        g.order
            .iter()
            .map(|&(id, at_ms)| Logged {
                id,
                at_ms,
                chunks: g.chunks.get(&id).map(|s| s.iter().copied().collect()).unwrap_or_default(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_in_first_read_order_with_their_chunks() {
        let log = ReadLog::new(Duration::from_secs(60));
        let v0 = log.version();
        log.read(7, 0, 0);
        log.read(3, 2, 4);
        log.read(7, 1, 1);
        let v1 = log.version();
        log.read(7, 0, 1);
        assert_eq!(log.version(), v1, "nothing new was read");
        assert!(v1 > v0);
        let files = log.files();
        assert_eq!(files.iter().map(|f| f.id).collect::<Vec<_>>(), vec![7, 3]);
        assert_eq!(files[0].chunks, vec![0, 1]);
        assert_eq!(files[1].chunks, vec![2, 3, 4]);
        assert!(files[0].at_ms <= files[1].at_ms);
    }

    #[test]
    fn nothing_is_recorded_after_the_window() {
        let log = ReadLog::new(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
        log.read(1, 0, 0);
        assert!(log.closed());
        assert!(log.files().is_empty());
    }
}
