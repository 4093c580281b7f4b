//! Compressed ranges of blobs held in memory after a fetch, and the ranges being fetched right
//! now. A fetch takes from memory what it holds, waits for what another reader is already
//! fetching, and asks the source only for the rest. Chunks of one zran context all decode from
//! the same checkpoint, so concurrent readers of neighbouring chunks (the kernel's parallel
//! reads of a mapped library, the readahead thread) want overlapping ranges; without this they
//! fetched the shared part once each.
//!
//! Owns no I/O: the caller passes the function that fetches a range.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

/// Gaps closer than this are fetched as one request (re-fetching what lies between).
const MERGE_GAP: u64 = 64 << 10;

/// Bytes of `blob` from `start`, in memory.
struct Held {
    blob: usize,
    start: u64,
    bytes: Arc<Vec<u8>>,
}

impl Held {
    fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }
}

/// A range some reader is fetching; `done` turns true when it is in memory or failed.
struct Pending {
    blob: usize,
    start: u64,
    end: u64,
    done: Arc<(Mutex<bool>, Condvar)>,
}

#[derive(Default)]
struct State {
    held: VecDeque<Held>,
    pending: Vec<Pending>,
}

/// Recent and in-flight ranges, at most `limit` bytes held.
pub struct Ranges {
    state: Mutex<State>,
    limit: usize,
}

/// One piece of an answer: from memory, or from a fetch of this call.
enum Part {
    Held(Arc<Vec<u8>>, usize, usize),
    Fetch(u64, u64),
}

impl Ranges {
    pub fn new(limit: usize) -> Ranges {
        Ranges { state: Mutex::new(State::default()), limit }
    }

    /// Bytes `[start, end)` of `blob`. `fetch(from, to)` reads a range from the source, all of
    /// it or an error. With `fresh`, nothing comes from memory, and what memory held of the
    /// range is dropped (the bytes there are what failed a digest).
    pub fn get<E>(
        &self,
        blob: usize,
        start: u64,
        end: u64,
        fresh: bool,
        mut fetch: impl FnMut(u64, u64) -> Result<Vec<u8>, E>,
    ) -> Result<Arc<Vec<u8>>, E> {
        if start >= end {
            return Ok(Arc::new(Vec::new()));
        }
        if fresh {
            self.lock().held.retain(|h| h.blob != blob || h.start >= end || h.end() <= start);
            let bytes = Arc::new(fetch(start, end)?);
            self.keep(blob, vec![(start, bytes.clone())]);
            return Ok(bytes);
        }
        // Wait until no fetch overlapping the range is under way, then plan under the lock and
        // mark the gaps as under way.
        let (parts, mine) = loop {
            let mut st = self.lock();
            let busy = st
                .pending
                .iter()
                .find(|p| p.blob == blob && p.start < end && p.end > start)
                .map(|p| p.done.clone());
            if let Some(done) = busy {
                drop(st);
                let (m, cv) = &*done;
                let mut finished = m.lock().unwrap_or_else(|e| e.into_inner());
                while !*finished {
                    finished = cv.wait(finished).unwrap_or_else(|e| e.into_inner());
                }
                continue;
            }
            let parts = plan(&st.held, blob, start, end);
            let done = Arc::new((Mutex::new(false), Condvar::new()));
            for p in &parts {
                if let Part::Fetch(a, b) = p {
                    st.pending.push(Pending { blob, start: *a, end: *b, done: done.clone() });
                }
            }
            break (parts, done);
        };
        let mut fetched = Vec::new();
        let mut result = Ok(());
        for p in &parts {
            if let Part::Fetch(a, b) = p {
                match fetch(*a, *b) {
                    Ok(bytes) => fetched.push((*a, Arc::new(bytes))),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
        }
        // Whatever happened, the gaps are no longer under way.
        {
            let mut st = self.lock();
            st.pending.retain(|p| !Arc::ptr_eq(&p.done, &mine));
        }
        let ok = result.is_ok();
        if ok {
            self.keep(blob, fetched.clone());
        }
        let (m, cv) = &*mine;
        *m.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        result?;
        let mut out = Vec::with_capacity((end - start) as usize);
        let mut next = fetched.into_iter();
        for p in parts {
            match p {
                Part::Held(bytes, from, to) => out.extend_from_slice(&bytes[from..to]),
                Part::Fetch(..) => {
                    if let Some((_, bytes)) = next.next() {
                        out.extend_from_slice(&bytes);
                    }
                }
            }
        }
        Ok(Arc::new(out))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hold fetched ranges, dropping held ones they contain and the oldest beyond the limit.
    fn keep(&self, blob: usize, ranges: Vec<(u64, Arc<Vec<u8>>)>) {
        let mut st = self.lock();
        for (start, bytes) in ranges {
            let end = start + bytes.len() as u64;
            st.held.retain(|h| h.blob != blob || h.start < start || h.end() > end);
            st.held.push_back(Held { blob, start, bytes });
        }
        let mut total: usize = st.held.iter().map(|h| h.bytes.len()).sum();
        while total > self.limit && st.held.len() > 1 {
            if let Some(old) = st.held.pop_front() {
                total -= old.bytes.len();
            }
        }
    }
}

/// How to answer `[start, end)` of `blob`: pieces of held ranges, and gaps to fetch; a held
/// piece shorter than [`MERGE_GAP`] between two gaps is fetched with them (one request).
fn plan(held: &VecDeque<Held>, blob: usize, start: u64, end: u64) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut pos = start;
    while pos < end {
        // The held range covering `pos` that reaches furthest.
        let cover =
            held.iter().filter(|h| h.blob == blob && h.start <= pos && h.end() > pos).max_by_key(|h| h.end());
        match cover {
            Some(h) => {
                let to = h.end().min(end);
                parts.push(Part::Held(h.bytes.clone(), (pos - h.start) as usize, (to - h.start) as usize));
                pos = to;
            }
            None => {
                let next = held
                    .iter()
                    .filter(|h| h.blob == blob && h.start > pos && h.start < end)
                    .map(|h| h.start)
                    .min()
                    .unwrap_or(end);
                parts.push(Part::Fetch(pos, next));
                pos = next;
            }
        }
    }
    let mut out: Vec<Part> = Vec::with_capacity(parts.len());
    let mut rest = parts.into_iter().peekable();
    while let Some(p) = rest.next() {
        match p {
            Part::Held(_, from, to)
                if ((to - from) as u64) < MERGE_GAP
                    && matches!(out.last(), Some(Part::Fetch(..)))
                    && matches!(rest.peek(), Some(Part::Fetch(..))) =>
            {
                if let (Some(Part::Fetch(_, b)), Some(Part::Fetch(_, d))) = (out.last_mut(), rest.next()) {
                    *b = d;
                }
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn memory_then_gaps_only() {
        let src = data(1 << 20);
        let r = Ranges::new(32 << 20);
        let asked = AtomicU64::new(0);
        let fetch = |a: u64, b: u64| -> Result<Vec<u8>, ()> {
            asked.fetch_add(b - a, Ordering::Relaxed);
            Ok(src[a as usize..b as usize].to_vec())
        };
        assert_eq!(*r.get(0, 1000, 300_000, false, fetch).unwrap(), src[1000..300_000]);
        assert_eq!(asked.load(Ordering::Relaxed), 299_000);
        // A prefix, a range that starts before what is held and ends past it, another blob.
        assert_eq!(*r.get(0, 1000, 5000, false, fetch).unwrap(), src[1000..5000]);
        assert_eq!(asked.load(Ordering::Relaxed), 299_000);
        assert_eq!(*r.get(0, 0, 400_000, false, fetch).unwrap(), src[0..400_000]);
        assert_eq!(asked.load(Ordering::Relaxed), 299_000 + 1000 + 100_000);
        assert_eq!(*r.get(1, 0, 10, false, fetch).unwrap(), src[0..10]);
        assert_eq!(asked.load(Ordering::Relaxed), 400_010);
        // Fresh: everything again.
        assert_eq!(*r.get(0, 0, 400_000, true, fetch).unwrap(), src[0..400_000]);
        assert_eq!(asked.load(Ordering::Relaxed), 800_010);
        // A held hole smaller than the merge gap is fetched with its neighbours in one request.
        let r = Ranges::new(32 << 20);
        let calls = AtomicU64::new(0);
        let counted = |a: u64, b: u64| -> Result<Vec<u8>, ()> {
            calls.fetch_add(1, Ordering::Relaxed);
            Ok(src[a as usize..b as usize].to_vec())
        };
        r.get(0, 100_000, 110_000, false, counted).unwrap();
        assert_eq!(*r.get(0, 0, 300_000, false, counted).unwrap(), src[0..300_000]);
        assert_eq!(calls.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn overlapping_readers_fetch_the_shared_part_once() {
        let src = Arc::new(data(4 << 20));
        let r = Arc::new(Ranges::new(32 << 20));
        let asked = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let (src, r, asked) = (src.clone(), r.clone(), asked.clone());
                std::thread::spawn(move || {
                    let end = (t + 1) * 400_000;
                    let got = r
                        .get(0, 10, end, false, |a, b| -> Result<Vec<u8>, ()> {
                            std::thread::sleep(std::time::Duration::from_millis(20));
                            asked.fetch_add(b - a, Ordering::Relaxed);
                            Ok(src[a as usize..b as usize].to_vec())
                        })
                        .unwrap();
                    assert_eq!(*got, src[10..end as usize]);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(asked.load(Ordering::Relaxed), 3_200_000 - 10, "each byte fetched once");
    }

    #[test]
    fn a_failed_fetch_wakes_the_waiters_and_holds_nothing() {
        let src = data(100_000);
        let r = Ranges::new(1 << 20);
        let e = r.get(0, 0, 50_000, false, |_, _| -> Result<Vec<u8>, &str> { Err("down") });
        assert_eq!(e.unwrap_err(), "down");
        let asked = AtomicU64::new(0);
        let got = r
            .get(0, 0, 50_000, false, |a, b| -> Result<Vec<u8>, ()> {
                asked.fetch_add(b - a, Ordering::Relaxed);
                Ok(src[a as usize..b as usize].to_vec())
            })
            .unwrap();
        assert_eq!(*got, src[..50_000]);
        assert_eq!(asked.load(Ordering::Relaxed), 50_000);
    }

    proptest::proptest! {
        /// Whatever memory holds, an answer is the source's bytes; memory stays within its
        /// limit (or the largest range asked, if larger); a range just fetched fresh costs
        /// nothing again.
        #[test]
        fn answers_are_the_source(ops in proptest::collection::vec(
            (0usize..2, 0u64..300_000, 1u64..120_000, proptest::bool::weighted(0.2)), 1..40),
            limit in 50_000usize..400_000)
        {
            let src = data(420_000);
            let r = Ranges::new(limit);
            let asked = AtomicU64::new(0);
            let fetch = |a: u64, b: u64| -> Result<Vec<u8>, ()> {
                asked.fetch_add(b - a, Ordering::Relaxed);
                Ok(src[a as usize..b as usize].to_vec())
            };
            let mut largest = 0;
            for (blob, start, len, fresh) in ops {
                let end = start + len;
                largest = largest.max(len as usize);
                let got = r.get(blob, start, end, fresh, fetch).unwrap();
                proptest::prop_assert_eq!(&got[..], &src[start as usize..end as usize]);
                if fresh && (len as usize) <= limit {
                    let before = asked.load(Ordering::Relaxed);
                    let again = r.get(blob, start, end, false, fetch).unwrap();
                    proptest::prop_assert_eq!(&again[..], &src[start as usize..end as usize]);
                    proptest::prop_assert_eq!(asked.load(Ordering::Relaxed), before);
                }
                let held: usize = r.lock().held.iter().map(|h| h.bytes.len()).sum();
                proptest::prop_assert!(held <= limit.max(largest));
            }
        }
    }

    #[test]
    fn memory_stays_under_its_limit() {
        let src = data(1 << 20);
        let r = Ranges::new(100_000);
        for i in 0..10u64 {
            r.get(0, i * 60_000, i * 60_000 + 60_000, false, |a, b| -> Result<Vec<u8>, ()> {
                Ok(src[a as usize..b as usize].to_vec())
            })
            .unwrap();
        }
        let held: usize = r.lock().held.iter().map(|h| h.bytes.len()).sum();
        assert!(held <= 100_000, "{held}");
    }
}
