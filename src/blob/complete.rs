//! Whether an image's chunk cache is complete, and its one-time check before the data files
//! are handed to the kernel: every chunk the bootstrap uses recorded good, then each one
//! verified against its digest by the same check a read of a cached chunk makes
//! ([`BlobSet::check_cached`]). A chunk that fails is forgotten (its map byte cleared) and
//! counted, and is fetched again by the next read of it, as always.
//!
//! Part of `blob`; calls nothing outside it.

use super::{Blob, BlobError, BlobSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// How much of an image's chunks the cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Completeness {
    /// Chunks the bootstrap uses.
    pub chunks: u64,
    /// Of those, the ones neither recorded good by an earlier mount nor verified this session.
    pub missing: u64,
}

/// What [`BlobSet::verify_complete`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Verified {
    /// Chunks whose cached bytes matched their digest.
    pub good: u64,
    /// Chunks whose cached bytes did not (forgotten: fetched again when read).
    pub bad: u64,
    /// Bytes read and hashed.
    pub bytes: u64,
}

impl BlobSet {
    /// Count the chunks the bootstrap uses and those the cache does not hold.
    pub fn completeness(&self) -> Completeness {
        let mut c = Completeness::default();
        for blob in &self.blobs {
            for (ci, spec) in blob.chunks.iter().enumerate() {
                if spec.is_none() {
                    continue;
                }
                c.chunks += 1;
                if !blob.good[ci].load(Relaxed) && !blob.cached[ci].load(Relaxed) {
                    c.missing += 1;
                }
            }
        }
        c
    }

    /// Verify every chunk recorded good by an earlier mount and not yet verified this session,
    /// on `threads` threads. Bad ones are forgotten and counted in `digest_failures`, good ones
    /// are good this session (a later read serves them without another check). Call it before
    /// anything else reads this set (it claims no flights).
    pub fn verify_complete(&self, threads: usize) -> Result<Verified, BlobError> {
        let work: Vec<(&Blob, u32)> = self
            .blobs
            .iter()
            .flat_map(|b| {
                (0..b.chunks.len())
                    .filter(move |&ci| b.chunks[ci].is_some() && b.cached[ci].load(Relaxed))
                    .map(move |ci| (b, ci as u32))
            })
            .collect();
        let next = AtomicUsize::new(0);
        let (good, bad, bytes) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
        let run = || -> Result<(), BlobError> {
            loop {
                let i = next.fetch_add(1, Relaxed);
                let Some(&(blob, ci)) = work.get(i) else { return Ok(()) };
                if !blob.cached[ci as usize].swap(false, Relaxed) {
                    continue;
                }
                let len = blob.chunk(ci).map(|c| u64::from(c.uncompressed_size))?;
                if self.check_cached(blob, ci)? {
                    good.fetch_add(1, Relaxed);
                } else {
                    bad.fetch_add(1, Relaxed);
                }
                bytes.fetch_add(len, Relaxed);
            }
        };
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads.max(1)).map(|_| s.spawn(run)).collect();
            handles.into_iter().try_for_each(|h| match h.join() {
                Ok(r) => r,
                Err(_) => Err(BlobError::Layer {
                    layer: 0,
                    digest: String::new(),
                    message: "a verifying thread panicked".into(),
                }),
            })
        })?;
        Ok(Verified { good: good.into_inner(), bad: bad.into_inner(), bytes: bytes.into_inner() })
    }

    /// The cache data file of each blob, in the bootstrap's blob (device) table order.
    pub fn data_files(&self) -> Vec<PathBuf> {
        let mut blobs: Vec<&Blob> = self.blobs.iter().collect();
        blobs.sort_by_key(|b| b.index);
        blobs.iter().map(|b| b.cache.path().to_path_buf()).collect()
    }
}
