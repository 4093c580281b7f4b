//! Layer blobs for reading: chunks fetched by range from where the image lives (registry or
//! OCI layout, through [`crate::oci::BlobSource`]), decoded, verified and cached.
//!
//! A read names the chunks it covers. Chunks not yet good this session are planned per blob:
//! each zran chunk needs its context's compressed range (inflated from the context's checkpoint
//! with [`crate::gzip::inflate_from`]), each eStargz chunk its gzip member, each chunk of a
//! Nydus native blob its own compressed range (zstd, lz4 block or stored); neighbouring ranges
//! are coalesced into requests of up to [`MAX_REQUEST`] bytes, and every chunk a decoded
//! range yields is kept, not just the ones asked for. A chunk is fetched by one reader however
//! many wait for it. Every chunk's digest (sha256, or blake3 where a Nydus blob says so) is
//! checked before it is written to the cache or served; a mismatch is fetched once more, then
//! the read fails and the chunk is never kept.
//!
//! A zstd layer's blob.meta has the same contexts, each a run of zstd frames from a frame
//! start (no window): decoded with [`crate::zframe::decode_from`]. A context whose output
//! exceeds [`WHOLE_CONTEXT`] (a layer written as one frame) is fetched and decoded whole, once,
//! by the first read that needs any of its chunks: its compressed range streamed in pieces,
//! each chunk verified and written to the cache as its bytes complete, memory bounded by a
//! chunk; other readers of its chunks wait for that one fetch. An uncompressed layer's chunks
//! are stored ranges of the tar (a native blob of compressor none).
//!
//! Owns the cache files and the counters. Calls `oci`, `gzip`, `zframe` and `rafs`.

pub mod cache;
mod complete;
pub mod frames;
mod gate;
mod ranges;

pub use complete::{Completeness, Verified};
pub use gate::MAX_IN_FLIGHT;

use crate::gzip::{Restart, inflate_from, inflate_member};
use crate::oci::{BlobSource, Digest};
use crate::rafs::format::{CHUNK_BATCH, CHUNK_COMPRESSED, CHUNK_ENCRYPTED, compressor, digester};
use crate::rafs::meta::BlobMeta;
use crate::rafs::meta::format::MAX_COMPRESSED_SIZE;
use crate::rafs::writer::{BlobSpec, ChunkSpec};
use cache::BlobCache;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// The largest range request coalescing builds.
pub const MAX_REQUEST: u64 = 8 << 20;
/// The most one decode may read or produce: a context or member beyond it (which zran never
/// writes: a context spans at most a chunk and a checkpoint span) is refused, not allocated.
const MAX_UNIT: u64 = 64 << 20;
/// A zstd context whose output exceeds this is fetched whole, once (see the module's doc).
pub const WHOLE_CONTEXT: u64 = crate::zframe::WHOLE_FRAME;
/// Compressed bytes asked for at a time while a whole context streams.
const WHOLE_PIECE: u64 = 4 << 20;
/// Ranges closer than this are fetched together (the gap is cheaper than a round trip).
const MAX_GAP: u64 = 256 << 10;

/// What went wrong reading a chunk; the message names layer, chunk and offsets.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("layer {layer} ({digest}): {message}")]
    Layer { layer: usize, digest: String, message: String },
    #[error("cache {path}: {source}")]
    Cache { path: String, source: std::io::Error },
}

/// Counters of one mount, as `zran stats` shows them.
#[derive(Debug, Default, Serialize)]
pub struct Stats {
    /// Compressed bytes received from the image's source.
    pub bytes_fetched: AtomicU64,
    /// Range requests made.
    pub requests: AtomicU64,
    /// Chunks decoded from fetched bytes and verified.
    pub chunks_fetched: AtomicU64,
    /// Chunks whose digest was checked (fetched, or found in the cache).
    pub chunks_verified: AtomicU64,
    /// Chunks found good in the cache left by an earlier mount.
    pub cache_hits: AtomicU64,
    /// Chunks whose bytes did not match their digest (fetched or cached).
    pub digest_failures: AtomicU64,
    /// Reads that failed.
    pub read_errors: AtomicU64,
    /// Distinct regular files read from, and the sum of their sizes (what a reader's start
    /// needed, to set beside `bytes_fetched`).
    pub files_read: AtomicU64,
    pub file_bytes_read: AtomicU64,
    /// Chunks queued for fetching ahead of sequential readers.
    pub readahead_chunks: AtomicU64,
    /// zstd contexts too large to decode per read, fetched and decoded whole (once each).
    pub whole_fetches: AtomicU64,
    /// The most range requests that were in flight at once (at most [`MAX_IN_FLIGHT`]).
    pub requests_in_flight_peak: AtomicU64,
    /// Chunks the prefetch list (the bootstrap's table, `--prefetch-files`) names, and how
    /// many of them have been made good so far (fetched, or found in the cache).
    pub prefetch_chunks: AtomicU64,
    pub prefetched_chunks: AtomicU64,
    /// Bytes decoded to get chunks, with what a decode passes over before them (against the
    /// size of the chunks fetched: the cost of restarting at checkpoints).
    pub bytes_decoded: AtomicU64,
    /// Deflate decodes whose estimated range fell short, and fetched the rest of their context
    /// (one more request each; see [`estimated_end`]).
    pub tail_fetches: AtomicU64,
}

/// How a blob's chunks are decoded.
enum Kind {
    /// A gzip layer with a blob.meta (loaded when first needed): chunks come out of zran
    /// contexts.
    Zran(LazyMeta),
    /// An eStargz layer: each chunk is a gzip member of its own (a zstd frame when `zstd`:
    /// eStargz in zstd, whose frame may run on past the chunk).
    Members { zstd: bool },
    /// A zstd:chunked layer mounted from its TOC: each chunk is cut from the TOC chunks (zstd
    /// frames, each verified) that cover it.
    Frames(frames::FrameTable),
    /// A Nydus native data blob: each chunk is its own range, compressed with the blob's
    /// compressor when the chunk's COMPRESSED flag says so, stored as is otherwise.
    Native { compressor: u32 },
}

/// How a blob's chunk digests are computed (the blob table's `digest_algo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha256,
    Blake3,
}

impl Hash {
    fn of(self, bytes: &[u8]) -> [u8; 32] {
        match self {
            Hash::Sha256 => Sha256::digest(bytes).into(),
            Hash::Blake3 => *blake3::hash(bytes).as_bytes(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Hash::Sha256 => "sha256",
            Hash::Blake3 => "blake3",
        }
    }
}

/// A gzip layer's blob.meta, with the chunks of each context.
struct Zran {
    meta: BlobMeta,
    by_context: Vec<Vec<u32>>,
}

/// A blob.meta given at open, or fetched on the first read of its layer (and kept).
struct LazyMeta {
    cell: OnceLock<Zran>,
    load: Mutex<Option<MetaLoader>>,
}

/// Fetches and decodes a blob.meta (checked against the bootstrap) from the image's source.
pub type MetaLoader = Box<dyn Fn(&dyn BlobSource) -> Result<BlobMeta, String> + Send + Sync>;

/// How a blob is decoded, for [`BlobSet::open`].
pub enum Decoding {
    /// A gzip layer read through its blob.meta's zran contexts.
    Zran(MetaInput),
    /// An eStargz layer: one gzip member per chunk (one zstd frame when the blob table's
    /// compressor is zstd).
    Members,
    /// A zstd:chunked layer: chunks cut from the TOC's zstd frames.
    Frames(frames::FrameTable),
    /// A Nydus native data blob (its compressor is the blob table's).
    Native,
}

/// A gzip blob's blob.meta, for [`BlobSet::open`].
pub enum MetaInput {
    Ready(BlobMeta),
    /// Fetched when a read first needs the layer.
    Later(MetaLoader),
}

/// The chunks of each context of `meta`, which must describe `n` chunks.
fn zran_of(meta: BlobMeta, n: usize) -> Result<Zran, String> {
    if meta.chunks.len() != n {
        return Err(format!("blob.meta has {} chunks, the bootstrap {n}", meta.chunks.len()));
    }
    let mut by_context = vec![Vec::new(); meta.contexts.len()];
    for (ci, c) in meta.chunks.iter().enumerate() {
        by_context
            .get_mut(c.zran_index as usize)
            .ok_or_else(|| format!("chunk {ci}: zran context {} missing", c.zran_index))?
            .push(ci as u32);
    }
    Ok(Zran { meta, by_context })
}

/// A fetch in progress: readers that need one of its chunks wait here.
#[derive(Default)]
struct Flight {
    done: Mutex<Option<Result<(), String>>>,
    cv: Condvar,
}

impl Flight {
    fn finish(&self, r: Result<(), String>) {
        if let Ok(mut d) = self.done.lock() {
            *d = Some(r);
        }
        self.cv.notify_all();
    }

    fn wait(&self) -> Result<(), String> {
        let mut d = self.done.lock().map_err(|_| "fetch state poisoned".to_string())?;
        loop {
            if let Some(r) = d.as_ref() {
                return r.clone();
            }
            d = self.cv.wait(d).map_err(|_| "fetch state poisoned".to_string())?;
        }
    }
}

/// One blob of the image.
struct Blob {
    /// Index in the bootstrap's blob table.
    index: usize,
    layer: usize,
    digest: Digest,
    size: u64,
    kind: Kind,
    /// The blob.meta's contexts are runs of zstd frames (blob compressor zstd), not deflate.
    frames: bool,
    hash: Hash,
    /// By chunk index: the bootstrap's chunk-table entry (digest and offsets), if any file uses it.
    chunks: Vec<Option<ChunkSpec>>,
    cache: Arc<BlobCache>,
    /// Recorded good in the cache by an earlier run, not yet verified by this one.
    cached: Vec<AtomicBool>,
    /// Verified this session: served straight from the cache file.
    good: Arc<Vec<AtomicBool>>,
    flights: Mutex<HashMap<u32, Arc<Flight>>>,
}

/// What a blob is made of, for [`BlobSet::open`].
pub struct BlobInput<'a> {
    /// The layer's position in the image, for messages.
    pub layer: usize,
    pub spec: &'a BlobSpec,
    pub decoding: Decoding,
}

/// All blobs of one mounted image.
pub struct BlobSet {
    blobs: Vec<Blob>,
    source: Box<dyn BlobSource>,
    /// Compressed ranges fetched lately and under way, so that the next chunk of a context
    /// (decoded from the same checkpoint) fetches only what lies past them, and concurrent
    /// readers of one context fetch its shared part once.
    ranges: ranges::Ranges,
    /// The bound on requests in flight.
    gate: gate::Gate,
    pub stats: Stats,
    /// Records fetched chunks in the cache maps in batches, off the readers' path.
    recorder: Recorder,
}

thread_local! {
    /// Each fetching thread's decode buffer, reused from one decode to the next.
    static DECODED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The largest decode buffer a thread keeps for its next decode.
const KEEP_DECODED: usize = 8 << 20;

/// How many compressed bytes [`BlobSet::ranges`] keeps.
const RECENT_BYTES: usize = 32 << 20;

/// A piece of a read: `len` bytes at `offset` in chunk `ci` of blob `blob`.
#[derive(Debug, Clone, Copy)]
pub struct Piece {
    pub blob: u8,
    pub ci: u32,
    pub offset: u32,
    pub len: u32,
}

impl BlobSet {
    /// Open the blobs of a bootstrap with their cache files under `cache_dir`.
    pub fn open(
        inputs: Vec<BlobInput<'_>>,
        chunk_table: &[ChunkSpec],
        source: Box<dyn BlobSource>,
        cache_dir: &Path,
    ) -> Result<BlobSet, BlobError> {
        let mut blobs = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.into_iter().enumerate() {
            let spec = input.spec;
            let digest: Digest = format!("sha256:{}", spec.id).parse().map_err(|_| BlobError::Layer {
                layer: input.layer,
                digest: spec.id.clone(),
                message: "blob id is not a sha256 digest".into(),
            })?;
            let layer_err = |message: String| BlobError::Layer {
                layer: input.layer,
                digest: digest.to_string(),
                message,
            };
            let n = spec.chunk_count as usize;
            let mut chunks = vec![None; n];
            let mut layout = Sha256::new();
            for c in chunk_table.iter().filter(|c| usize::from(c.blob) == i) {
                let slot = chunks
                    .get_mut(c.ci as usize)
                    .ok_or_else(|| layer_err(format!("chunk index {} past the blob's {n} chunks", c.ci)))?;
                *slot = Some(*c);
                layout.update(c.ci.to_le_bytes());
                layout.update(c.uncompressed_offset.to_le_bytes());
                layout.update(c.uncompressed_size.to_le_bytes());
                layout.update(c.digest);
                if c.uncompressed_offset.saturating_add(u64::from(c.uncompressed_size))
                    > spec.uncompressed_size
                {
                    return Err(layer_err(format!("chunk {} lies past the blob's address space", c.ci)));
                }
            }
            let kind = match input.decoding {
                Decoding::Zran(MetaInput::Ready(meta)) => {
                    let cell = OnceLock::new();
                    let _ = cell.set(zran_of(meta, n).map_err(layer_err)?);
                    Kind::Zran(LazyMeta { cell, load: Mutex::new(None) })
                }
                Decoding::Zran(MetaInput::Later(f)) => {
                    Kind::Zran(LazyMeta { cell: OnceLock::new(), load: Mutex::new(Some(f)) })
                }
                Decoding::Members => Kind::Members { zstd: spec.compression_algo == compressor::ZSTD },
                Decoding::Frames(t) => {
                    let addrs: Vec<Option<(u64, u32)>> = chunks
                        .iter()
                        .map(|c| c.map(|c| (c.uncompressed_offset, c.uncompressed_size)))
                        .collect();
                    t.validate(&addrs, spec.compressed_size, spec.uncompressed_size, MAX_UNIT)
                        .map_err(layer_err)?;
                    Kind::Frames(t)
                }
                Decoding::Native => match spec.compression_algo {
                    c @ (compressor::NONE | compressor::ZSTD | compressor::LZ4_BLOCK) => {
                        Kind::Native { compressor: c }
                    }
                    c => {
                        return Err(layer_err(format!(
                            "compressor {c} of a native blob (zran reads 0, none, 1, lz4_block, and 3, zstd)"
                        )));
                    }
                },
            };
            let hash = match spec.digest_algo {
                digester::SHA256 => Hash::Sha256,
                digester::BLAKE3 => Hash::Blake3,
                d => return Err(layer_err(format!("chunk digest algorithm {d} (0, blake3, or 1, sha256)"))),
            };
            if matches!(kind, Kind::Zran(_) | Kind::Members { .. } | Kind::Frames(_)) && hash != Hash::Sha256
            {
                return Err(layer_err("a gzip layer's chunks must have sha256 digests".into()));
            }
            let layout = hex::encode(&layout.finalize()[..8]);
            let (cache, recorded) = BlobCache::open(cache_dir, &spec.id, &layout, spec.uncompressed_size, n)
                .map_err(|source| BlobError::Cache { path: cache_dir.display().to_string(), source })?;
            let frames = matches!(kind, Kind::Zran(_)) && spec.compression_algo == compressor::ZSTD;
            if matches!(kind, Kind::Zran(_)) && !frames && spec.compression_algo != compressor::GZIP {
                return Err(layer_err(format!(
                    "compressor {} of a blob with zran contexts (2, gzip, or 3, zstd frames)",
                    spec.compression_algo
                )));
            }
            blobs.push(Blob {
                index: i,
                layer: input.layer,
                size: spec.compressed_size,
                digest,
                kind,
                frames,
                hash,
                chunks,
                cache: Arc::new(cache),
                cached: recorded.into_iter().map(AtomicBool::new).collect(),
                good: Arc::new((0..n).map(|_| AtomicBool::new(false)).collect()),
                flights: Mutex::new(HashMap::new()),
            });
        }
        let recorder =
            Recorder::start(blobs.iter().map(|b| (b.layer, b.cache.clone(), b.good.clone())).collect());
        Ok(BlobSet {
            blobs,
            source,
            ranges: ranges::Ranges::new(RECENT_BYTES),
            gate: gate::Gate::new(MAX_IN_FLIGHT),
            stats: Stats::default(),
            recorder,
        })
    }

    /// Fill `buf` from the pieces, in order (their lengths must add up to `buf.len()`). Every
    /// chunk involved is verified first (fetched, or checked in the cache) and fetched once.
    pub fn read(&self, pieces: &[Piece], buf: &mut [u8]) -> Result<(), BlobError> {
        let mut wanted: BTreeMap<u8, Vec<u32>> = BTreeMap::new();
        for p in pieces {
            wanted.entry(p.blob).or_default().push(p.ci);
        }
        for (b, cis) in &wanted {
            self.ensure(*b, cis)?;
        }
        let mut at = 0usize;
        for p in pieces {
            let blob = self.blob(p.blob)?;
            let c = blob.chunk(p.ci)?;
            let end = at + p.len as usize;
            blob.cache.read(c.uncompressed_offset + u64::from(p.offset), &mut buf[at..end]).map_err(
                |source| BlobError::Cache { path: blob.cache.path().display().to_string(), source },
            )?;
            at = end;
        }
        Ok(())
    }

    /// Whether chunk `ci` of blob `b` has been verified this session (a read of it needs no
    /// fetch and no check).
    pub fn is_good(&self, b: u8, ci: u32) -> bool {
        self.blob(b).ok().and_then(|blob| blob.good.get(ci as usize)).is_some_and(|g| g.load(Relaxed))
    }

    /// Whether a read of chunk `ci` of blob `b` has to fetch: neither verified this session,
    /// nor recorded in the cache by an earlier one, nor being checked or fetched by another
    /// reader.
    pub fn must_fetch(&self, b: u8, ci: u32) -> bool {
        let Ok(blob) = self.blob(b) else { return false };
        let i = ci as usize;
        let good = || blob.good.get(i).is_some_and(|g| g.load(Relaxed));
        if good() {
            return false;
        }
        // A chunk another reader is checking (its cached flag is cleared while it is) or
        // fetching is no miss of this read. Under the lock: a chunk leaves the fetches in
        // flight only once it is good.
        let Ok(flights) = blob.flights.lock() else { return false };
        !flights.contains_key(&ci) && !good() && !blob.cached.get(i).is_some_and(|c| c.load(Relaxed))
    }

    /// The chunks after `ci` in blob `b` (the layer's next data: the next files of the same
    /// tar), not yet verified, up to `window` bytes decompressed: what a reader of `ci` is
    /// likely to want next.
    pub fn following(&self, b: u8, ci: u32, window: u64) -> Vec<u32> {
        let Ok(blob) = self.blob(b) else { return Vec::new() };
        let (mut out, mut bytes) = (Vec::new(), 0u64);
        for n in ci.saturating_add(1)..u32::try_from(blob.chunks.len()).unwrap_or(u32::MAX) {
            let Some(c) = blob.chunks[n as usize].as_ref() else { continue };
            bytes += u64::from(c.uncompressed_size);
            if bytes > window || out.len() >= 256 {
                break;
            }
            if !blob.good[n as usize].load(Relaxed) && !blob.cached[n as usize].load(Relaxed) {
                out.push(n);
            }
        }
        out
    }

    /// Bytes of chunk `ci` of blob `b` once decompressed (0 for a chunk it does not have).
    pub fn chunk_len(&self, b: u8, ci: u32) -> u64 {
        self.blob(b).ok().and_then(|blob| blob.chunk(ci).ok()).map_or(0, |c| u64::from(c.uncompressed_size))
    }

    /// Make the chunks of one blob good this session, in the background of no reader (used for
    /// prefetch): the same path as a read, without copying data out.
    pub fn ensure(&self, b: u8, cis: &[u32]) -> Result<(), BlobError> {
        let blob = self.blob(b)?;
        let mut missing = Vec::new();
        for &ci in cis {
            blob.chunk(ci)?;
            if blob.good[ci as usize].load(Relaxed) || missing.contains(&ci) {
                continue;
            }
            missing.push(ci);
        }
        if missing.is_empty() {
            return Ok(());
        }
        self.load_meta(blob)?;
        // Claim what nobody is checking or fetching; wait for the rest. A chunk an earlier run
        // cached is claimed like one to fetch, so that readers arriving while its digest is
        // being checked wait for that instead of fetching it again.
        let (mine, theirs) = {
            let mut flights = blob.flights.lock().map_err(|_| blob.err("fetch state poisoned".into()))?;
            let mut mine: Vec<u32> = Vec::new();
            let mut theirs: Vec<Arc<Flight>> = Vec::new();
            for &ci in &missing {
                if let Some(f) = flights.get(&ci) {
                    theirs.push(f.clone());
                } else if !blob.good[ci as usize].load(Relaxed) {
                    mine.push(ci);
                }
            }
            // The neighbours a decode yields anyway are claimed too, so nobody fetches them
            // twice. From a local source a deflate context is decoded to its end (every chunk
            // of it, in one inflate from its checkpoint: a decode stopped at the wanted chunk
            // would leave the rest to a second inflate from the same checkpoint, by the next
            // reader or the read-ahead, passing over this part again). Over a link, and for
            // zstd, a context is decoded as far as its last wanted chunk: the rest of a
            // context is bytes a sparse start (the common case) never reads, and a sequential
            // reader's misses bring the read-ahead that fetches them together.
            let to_end = self.source.is_local();
            if let Some(Zran { meta, by_context }) = blob.zran()? {
                let mut reach: HashMap<u32, u64> = HashMap::new();
                for &ci in &mine {
                    let c = &meta.chunks[ci as usize];
                    let r = reach.entry(c.zran_index).or_default();
                    *r = (*r).max(u64::from(c.zran_offset) + u64::from(c.uncompressed_size));
                    // A whole context yields all of its chunks in the one fetch.
                    if (!blob.frames && to_end) || blob.whole(&meta.contexts[c.zran_index as usize]) {
                        *r = u64::MAX;
                    }
                }
                let mut extra = Vec::new();
                for (&zi, &r) in &reach {
                    for &n in &by_context[zi as usize] {
                        let c = &meta.chunks[n as usize];
                        if u64::from(c.zran_offset) + u64::from(c.uncompressed_size) <= r
                            && !mine.contains(&n)
                            && !extra.contains(&n)
                            && !flights.contains_key(&n)
                            && !blob.good[n as usize].load(Relaxed)
                            && !blob.cached[n as usize].load(Relaxed)
                            && blob.chunks[n as usize].is_some()
                        {
                            extra.push(n);
                        }
                    }
                }
                mine.extend(extra);
            }
            let flight = Arc::new(Flight::default());
            for &ci in &mine {
                flights.insert(ci, flight.clone());
            }
            ((mine, flight), theirs)
        };
        let mut first_err = None;
        let (cis, flight) = mine;
        if !cis.is_empty() {
            let mut to_fetch = Vec::with_capacity(cis.len());
            let mut checked = Ok(());
            for &ci in &cis {
                if blob.cached[ci as usize].swap(false, Relaxed) {
                    match self.check_cached(blob, ci) {
                        Ok(true) => continue,
                        Ok(false) => {}
                        Err(e) => {
                            checked = Err(e);
                            break;
                        }
                    }
                }
                to_fetch.push(ci);
            }
            let r =
                checked.and_then(|()| if to_fetch.is_empty() { Ok(()) } else { self.fetch(blob, &to_fetch) });
            if let Ok(mut flights) = blob.flights.lock() {
                for ci in &cis {
                    flights.remove(ci);
                }
            }
            flight.finish(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            if let Err(e) = r {
                first_err = Some(e);
            }
        }
        for f in theirs {
            if let Err(message) = f.wait() {
                first_err.get_or_insert(BlobError::Layer {
                    layer: blob.layer,
                    digest: blob.digest.to_string(),
                    message,
                });
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => {
                // A chunk a failed neighbour fetch left bad is not good.
                for &ci in &missing {
                    if !blob.good[ci as usize].load(Relaxed) {
                        return Err(blob.err(format!("chunk {ci} could not be fetched")));
                    }
                }
                Ok(())
            }
        }
    }

    /// Fetch a gzip blob's blob.meta if it was left for its first read (once; a failure is
    /// tried again by the next read).
    fn load_meta(&self, blob: &Blob) -> Result<(), BlobError> {
        let Kind::Zran(l) = &blob.kind else { return Ok(()) };
        if l.cell.get().is_some() {
            return Ok(());
        }
        let load = l.load.lock().map_err(|_| blob.err("blob.meta state poisoned".into()))?;
        if l.cell.get().is_some() {
            return Ok(());
        }
        let f = load.as_ref().ok_or_else(|| blob.err("no blob.meta".into()))?;
        let meta = f(self.source.as_ref()).map_err(|m| blob.err(format!("blob.meta: {m}")))?;
        let z = zran_of(meta, blob.chunks.len()).map_err(|m| blob.err(m))?;
        tracing::info!(layer = blob.layer, blob = %blob.digest, "blob.meta fetched on the layer's first read");
        let _ = l.cell.set(z);
        Ok(())
    }

    /// Verify a chunk an earlier run left in the cache; false (and forgotten) when it is bad.
    fn check_cached(&self, blob: &Blob, ci: u32) -> Result<bool, BlobError> {
        let c = blob.chunk(ci)?;
        let good = if let Kind::Frames(t) = &blob.kind {
            // The TOC chunks it is cut from, read back and checked against the TOC.
            let s = t.spans[ci as usize];
            let frames = t.range(s.first, s.first + s.count.saturating_sub(1)).map_err(|m| blob.err(m))?;
            let mut ok = true;
            for f in frames {
                // A zeros chunk: the part inside this chunk must be zeros; any other: whole,
                // against its digest.
                let (at, len) = if f.zeros {
                    let from = f.at.max(c.uncompressed_offset);
                    let to = (f.at + u64::from(f.size))
                        .min(c.uncompressed_offset + u64::from(c.uncompressed_size));
                    (from, to.saturating_sub(from))
                } else {
                    (f.at, u64::from(f.size))
                };
                let mut bytes = vec![0u8; len as usize];
                if blob.cache.read(at, &mut bytes).is_err()
                    || (f.zeros && bytes.iter().any(|&b| b != 0))
                    || (!f.zeros && frames::check(f, &bytes).is_err())
                {
                    ok = false;
                    break;
                }
            }
            self.stats.chunks_verified.fetch_add(1, Relaxed);
            ok
        } else {
            let mut bytes = vec![0u8; c.uncompressed_size as usize];
            if blob.cache.read(c.uncompressed_offset, &mut bytes).is_err() {
                return Ok(false);
            }
            self.stats.chunks_verified.fetch_add(1, Relaxed);
            blob.hash.of(&bytes) == c.digest
        };
        if good {
            blob.good[ci as usize].store(true, Relaxed);
            self.stats.cache_hits.fetch_add(1, Relaxed);
            return Ok(true);
        }
        self.stats.digest_failures.fetch_add(1, Relaxed);
        tracing::error!(
            layer = blob.layer,
            blob = %blob.digest,
            chunk = ci,
            cache = %blob.cache.path().display(),
            "cached chunk does not match its digest; fetching it again"
        );
        let _ = blob.cache.forget(ci);
        Ok(false)
    }

    /// Fetch, decode, verify and cache chunks `cis` of `blob`; a range whose chunks fail
    /// their digest is fetched once more. Errors name the first chunk that stays bad.
    fn fetch(&self, blob: &Blob, cis: &[u32]) -> Result<(), BlobError> {
        let mut stored: Vec<u32> = Vec::new();
        let r = self.fetch_into(blob, cis, &mut stored);
        // What was verified is kept even when another range failed: served from the data
        // file at once, recorded once durable (by the recorder, in batches).
        self.stats.chunks_fetched.fetch_add(stored.len() as u64, Relaxed);
        for &ci in &stored {
            blob.good[ci as usize].store(true, Relaxed);
        }
        blob.cache.stage(&stored);
        self.recorder.kick();
        let bad = r?;
        match bad.iter().find(|(ci, _)| cis.contains(ci)) {
            // A frame's own digest failed: say which.
            Some((ci, why)) if matches!(blob.kind, Kind::Frames(_)) => {
                Err(blob.err(format!("chunk {ci}: {why}, fetched twice")))
            }
            Some((ci, _)) => {
                let c = blob.chunk(*ci)?;
                Err(blob.err(format!(
                    "chunk {ci} (compressed offset {}) does not match its {} {}, fetched twice",
                    c.compressed_offset,
                    blob.hash.name(),
                    hex::encode(c.digest)
                )))
            }
            None => Ok(()),
        }
    }

    /// The fetch itself: verified chunks are written and listed in `stored`; returns the
    /// chunks that failed twice.
    fn fetch_into(
        &self,
        blob: &Blob,
        cis: &[u32],
        stored: &mut Vec<u32>,
    ) -> Result<Vec<(u32, String)>, BlobError> {
        let (whole, mut todo): (Vec<Unit>, Vec<Unit>) = blob.units(cis)?.into_iter().partition(|u| u.whole);
        // Over a link, a deflate decode fetches what its context's ratio says it needs, not
        // the whole way to the next checkpoint.
        if !self.source.is_local()
            && !blob.frames
            && let Some(Zran { meta, .. }) = blob.zran()?
        {
            for u in &mut todo {
                if let Some(z) = u.context.and_then(|zi| meta.contexts.get(zi as usize)) {
                    let ratio = (u64::from(z.in_len), u64::from(z.out_len));
                    u.end = estimated_end(u.start, u.full_end, u.out_len as u64, ratio);
                }
            }
        }
        let mut bad = Vec::new();
        for u in &whole {
            bad.extend(self.fetch_whole(blob, u, stored)?);
        }
        for attempt in 0..2 {
            let mut retry = Vec::new();
            for group in coalesce(&todo) {
                let start = group[0].start;
                let end = group.iter().map(|u| u.end).max().unwrap_or(start);
                // A second attempt fetches anew: the bytes in memory are what failed.
                // Units of zeros chunks only need no bytes at all.
                let bytes = if end > start {
                    self.fetch_range(blob, start, end, attempt > 0)?
                } else {
                    Arc::new(Vec::new())
                };
                for u in group {
                    let input =
                        bytes.get((u.start - start) as usize..(u.end - start) as usize).unwrap_or(&[]);
                    let mut decoded = blob.decode(u, input, DECODED.with(std::cell::RefCell::take));
                    if decoded.is_err() && u.end < u.full_end {
                        // The estimate fell short: the rest of the context, and the decode again.
                        self.stats.tail_fetches.fetch_add(1, Relaxed);
                        tracing::debug!(
                            layer = blob.layer,
                            start = u.start,
                            estimated = u.end,
                            end = u.full_end,
                            "a decode needs the rest of its context"
                        );
                        let tail = self.fetch_range(blob, u.end, u.full_end, attempt > 0)?;
                        let mut all = Vec::with_capacity(input.len() + tail.len());
                        all.extend_from_slice(input);
                        all.extend_from_slice(&tail);
                        decoded = blob.decode(u, &all, Vec::new());
                    }
                    self.stats.bytes_decoded.fetch_add(u.out_len as u64, Relaxed);
                    // Frames were each checked by the decode: their bytes go to the cache whole
                    // (the parts of neighbouring chunks too, so that a later mount can check
                    // them again against the TOC).
                    let framed = match (&blob.kind, &decoded, u.frames) {
                        (Kind::Frames(_), Ok(d), Some((_, _, base))) => {
                            blob.cache.write(base, d).map_err(|source| BlobError::Cache {
                                path: blob.cache.path().display().to_string(),
                                source,
                            })?;
                            true
                        }
                        _ => false,
                    };
                    let mut unit_bad = Vec::new();
                    for &(ci, at) in &u.chunks {
                        let c = blob.chunk(ci)?;
                        let piece =
                            decoded.as_ref().ok().and_then(|d| d.get(at..at + c.uncompressed_size as usize));
                        self.stats.chunks_verified.fetch_add(1, Relaxed);
                        match piece {
                            Some(_) if framed => stored.push(ci),
                            Some(p) if !framed && blob.hash.of(p) == c.digest => {
                                blob.cache.write(c.uncompressed_offset, p).map_err(|source| {
                                    BlobError::Cache { path: blob.cache.path().display().to_string(), source }
                                })?;
                                stored.push(ci);
                            }
                            _ => {
                                self.stats.digest_failures.fetch_add(1, Relaxed);
                                let why = match &decoded {
                                    Err(e) => e.clone(),
                                    Ok(_) if framed => "its TOC chunks do not cover it".to_string(),
                                    Ok(_) => format!("{} mismatch", blob.hash.name()),
                                };
                                tracing::error!(
                                    layer = blob.layer,
                                    blob = %blob.digest,
                                    chunk = ci,
                                    compressed_offset = u.start,
                                    attempt = attempt + 1,
                                    "chunk failed verification: {why}"
                                );
                                unit_bad.push((ci, why));
                            }
                        }
                    }
                    if !unit_bad.is_empty() {
                        if attempt == 0 {
                            retry.push(Unit {
                                chunks: u
                                    .chunks
                                    .iter()
                                    .copied()
                                    .filter(|(ci, _)| unit_bad.iter().any(|(b, _)| b == ci))
                                    .collect(),
                                ..u.clone()
                            });
                        } else {
                            bad.extend(unit_bad);
                        }
                    }
                    // The buffer serves this thread's next decode (no fresh pages to fault in
                    // and zero per decode); a rare large one is let go.
                    if let Ok(d) = decoded
                        && d.capacity() <= KEEP_DECODED
                    {
                        DECODED.with(|b| *b.borrow_mut() = d);
                    }
                }
            }
            if retry.is_empty() {
                break;
            }
            todo = retry;
        }
        Ok(bad)
    }

    /// A whole context: its compressed range streamed in pieces of [`WHOLE_PIECE`] and decoded
    /// as it comes, each chunk verified and written to the cache as soon as its bytes are out
    /// (memory: the decoder's window and one chunk). Returns the chunks that failed; they are
    /// not fetched again (the next read that needs one starts a new whole fetch).
    fn fetch_whole(
        &self,
        blob: &Blob,
        u: &Unit,
        stored: &mut Vec<u32>,
    ) -> Result<Vec<(u32, String)>, BlobError> {
        use std::io::Read;
        self.stats.whole_fetches.fetch_add(1, Relaxed);
        tracing::info!(
            layer = blob.layer,
            blob = %blob.digest,
            start = u.start,
            end = u.end,
            chunks = u.chunks.len(),
            "fetching and decoding a whole zstd frame"
        );
        let pieces =
            Pieces { set: self, blob, at: u.start, end: u.end.min(blob.size), buf: Vec::new(), pos: 0 };
        let mut chunks = u.chunks.clone();
        chunks.sort_by_key(|&(_, at)| at);
        let mut bad = Vec::new();
        let mut decoder = match zstd::stream::read::Decoder::new(pieces) {
            Ok(d) => d,
            Err(e) => return Err(blob.err(format!("zstd decoder: {e}"))),
        };
        let mut pos = 0usize;
        let mut failed: Option<String> = None;
        let mut buf = Vec::new();
        for &(ci, at) in &chunks {
            let c = *blob.chunk(ci)?;
            self.stats.chunks_verified.fetch_add(1, Relaxed);
            if failed.is_none() && at >= pos {
                let skip = (at - pos) as u64;
                match std::io::copy(&mut (&mut decoder).take(skip), &mut std::io::sink()) {
                    Ok(n) if n == skip => pos = at,
                    Ok(n) => failed = Some(format!("the frames end {n} bytes into a gap of {skip}")),
                    Err(e) => failed = Some(e.to_string()),
                }
            }
            if failed.is_none() && at == pos {
                buf.resize(c.uncompressed_size as usize, 0);
                match decoder.read_exact(&mut buf) {
                    Ok(()) => pos += buf.len(),
                    Err(e) => failed = Some(e.to_string()),
                }
            }
            let ok = failed.is_none() && at + buf.len() == pos && blob.hash.of(&buf) == c.digest;
            if ok {
                blob.cache.write(c.uncompressed_offset, &buf).map_err(|source| BlobError::Cache {
                    path: blob.cache.path().display().to_string(),
                    source,
                })?;
                stored.push(ci);
                continue;
            }
            self.stats.digest_failures.fetch_add(1, Relaxed);
            let why = failed.clone().unwrap_or_else(|| format!("{} mismatch", blob.hash.name()));
            tracing::error!(
                layer = blob.layer,
                blob = %blob.digest,
                chunk = ci,
                compressed_offset = u.start,
                "chunk of a whole zstd frame failed verification: {why}"
            );
            bad.push((ci, why));
        }
        Ok(bad)
    }

    /// Compressed bytes `[start, end)` of a blob: what memory holds, what another reader is
    /// fetching (waited for), and range requests for the rest; all of it from the source when
    /// `fresh` (and what memory held of the range is dropped).
    fn fetch_range(&self, blob: &Blob, start: u64, end: u64, fresh: bool) -> Result<Arc<Vec<u8>>, BlobError> {
        let end = end.min(blob.size);
        self.ranges.get(blob.index, start, end, fresh, |from, to| {
            let mut buf = vec![0u8; (to - from) as usize];
            tracing::debug!(layer = blob.layer, start = from, end = to, "fetch");
            let n = self
                .request(&blob.digest, from, &mut buf)
                .map_err(|e| blob.err(format!("range {from}-{to}: {e}")))?;
            self.stats.bytes_fetched.fetch_add(n as u64, Relaxed);
            if n < buf.len() {
                return Err(blob.err(format!("range {from}-{to}: the blob ends at {}", from + n as u64)));
            }
            Ok(buf)
        })
    }

    /// One range request, counted, once a slot of the gate is free.
    fn request(&self, digest: &Digest, from: u64, buf: &mut [u8]) -> Result<usize, crate::oci::OciError> {
        let _slot = self.gate.enter();
        self.stats.requests.fetch_add(1, Relaxed);
        self.stats.requests_in_flight_peak.store(self.gate.peak.load(Relaxed), Relaxed);
        self.source.read_at(digest, from, buf)
    }

    fn blob(&self, b: u8) -> Result<&Blob, BlobError> {
        self.blobs.get(usize::from(b)).ok_or_else(|| BlobError::Layer {
            layer: usize::from(b),
            digest: String::new(),
            message: format!("no blob {b} in the bootstrap"),
        })
    }
}

/// How long the recorder gathers staged chunks before one `fdatasync` records them all.
const RECORD_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// A blob's cache as the recorder sees it: layer (for messages), files, and the chunks good
/// this session (a chunk whose bytes could not be made durable stops being good).
type Recorded = (usize, Arc<BlobCache>, Arc<Vec<AtomicBool>>);

/// The thread that makes staged chunks durable and records them ([`BlobCache::sync`]): woken
/// by a fetch, it waits [`RECORD_EVERY`] for more, then syncs every blob with staged chunks.
/// A reader never waits for it; a crash loses at most the chunks of the last interval (fetched
/// again by the next mount), never records a chunk whose bytes are not on disk.
struct Recorder {
    state: Arc<(Mutex<(bool, bool)>, Condvar)>,
    caches: Vec<Recorded>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Recorder {
    fn start(caches: Vec<Recorded>) -> Recorder {
        // (staged since the last sync, stop)
        let state = Arc::new((Mutex::new((false, false)), Condvar::new()));
        let (st, cs) = (state.clone(), caches.clone());
        let thread = std::thread::Builder::new().name("zran-record".into()).spawn(move || {
            let (m, cv) = &*st;
            loop {
                let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
                while !g.0 && !g.1 {
                    g = cv.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                if !g.1 {
                    // Gather more: one sync for everything fetched in the interval.
                    g = cv.wait_timeout(g, RECORD_EVERY).unwrap_or_else(|e| e.into_inner()).0;
                }
                let stop = g.1;
                g.0 = false;
                drop(g);
                sync_all(&cs);
                if stop {
                    break;
                }
            }
        });
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                // Without the thread every fetch records its own chunks (`kick` syncs).
                tracing::warn!("no cache recorder thread: {e}");
                None
            }
        };
        Recorder { state, caches, thread }
    }

    /// Chunks were staged: record them soon.
    fn kick(&self) {
        if self.thread.is_none() {
            return sync_all(&self.caches);
        }
        let (m, cv) = &*self.state;
        m.lock().unwrap_or_else(|e| e.into_inner()).0 = true;
        cv.notify_one();
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let (m, cv) = &*self.state;
        m.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        cv.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        sync_all(&self.caches);
    }
}

/// Record the staged chunks of every cache; chunks that could not be made durable are no
/// longer good (the next read fetches and verifies them again).
fn sync_all(caches: &[Recorded]) {
    for (layer, cache, good) in caches {
        if !cache.has_staged() {
            continue;
        }
        if let Err((e, cis)) = cache.sync() {
            tracing::error!(layer, cache = %cache.path().display(), chunks = cis.len(), "cannot record fetched chunks: {e}");
            for ci in cis {
                if let Some(g) = good.get(ci as usize) {
                    g.store(false, Relaxed);
                }
            }
        }
    }
}

impl BlobSet {
    /// Record every chunk fetched so far in the cache (durable first), now: for the end of a
    /// mount. Dropping the set does the same.
    pub fn sync(&self) {
        sync_all(&self.recorder.caches);
    }
}

/// A whole context's compressed range, read in pieces of [`WHOLE_PIECE`] as the decoder asks.
struct Pieces<'a> {
    set: &'a BlobSet,
    blob: &'a Blob,
    at: u64,
    end: u64,
    buf: Vec<u8>,
    pos: usize,
}

impl std::io::Read for Pieces<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.buf.len() {
            if self.at >= self.end {
                return Ok(0);
            }
            let to = self.end.min(self.at + WHOLE_PIECE);
            self.buf.resize((to - self.at) as usize, 0);
            let n = self
                .set
                .request(&self.blob.digest, self.at, &mut self.buf)
                .map_err(|e| std::io::Error::other(format!("range {}-{to}: {e}", self.at)))?;
            self.set.stats.bytes_fetched.fetch_add(n as u64, Relaxed);
            if n < self.buf.len() {
                return Err(std::io::Error::other(format!(
                    "range {}-{to}: the blob ends at {}",
                    self.at,
                    self.at + n as u64
                )));
            }
            self.at = to;
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// One decode: a compressed range and the chunks it yields, at their offsets in its output.
#[derive(Debug, Clone)]
struct Unit {
    start: u64,
    /// Where the range fetched for this decode ends: `full_end`, or short of it where the
    /// rest is an estimate's margin ([`estimated_end`]).
    end: u64,
    /// Where every byte the decode can need ends.
    full_end: u64,
    /// A zstd context fetched and decoded whole, streaming ([`BlobSet::fetch_whole`]).
    whole: bool,
    /// Zran context index, or `None` for an eStargz member.
    context: Option<u32>,
    /// The TOC chunks decoded (first and last) and the address where the output starts, for
    /// a zstd:chunked blob.
    frames: Option<(u32, u32, u64)>,
    out_len: usize,
    chunks: Vec<(u32, usize)>,
}

impl Blob {
    fn err(&self, message: String) -> BlobError {
        BlobError::Layer { layer: self.layer, digest: self.digest.to_string(), message }
    }

    /// The blob.meta of a gzip blob (loaded by [`BlobSet::load_meta`]); `None` for eStargz
    /// and native blobs.
    fn zran(&self) -> Result<Option<&Zran>, BlobError> {
        match &self.kind {
            Kind::Members { .. } | Kind::Native { .. } | Kind::Frames(_) => Ok(None),
            Kind::Zran(l) => l.cell.get().map(Some).ok_or_else(|| self.err("blob.meta not loaded".into())),
        }
    }

    /// Whether a context of this blob is fetched whole (zstd frames past [`WHOLE_CONTEXT`]).
    fn whole(&self, z: &crate::rafs::meta::ZranContext) -> bool {
        self.frames && u64::from(z.out_len) > WHOLE_CONTEXT
    }

    fn chunk(&self, ci: u32) -> Result<&ChunkSpec, BlobError> {
        self.chunks
            .get(ci as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| self.err(format!("chunk {ci} is not in the bootstrap's chunk table")))
    }

    /// The decodes that yield chunks `cis`, in compressed order.
    fn units(&self, cis: &[u32]) -> Result<Vec<Unit>, BlobError> {
        let mut units: BTreeMap<u64, Unit> = BTreeMap::new();
        if let Kind::Frames(t) = &self.kind {
            for &ci in cis {
                self.chunk(ci)?;
                let s = t.spans[ci as usize];
                let last = s.first + s.count.saturating_sub(1);
                let u = units.entry(u64::from(s.first)).or_insert(Unit {
                    start: 0,
                    end: 0,
                    full_end: 0,
                    whole: false,
                    context: None,
                    frames: Some((s.first, last, 0)),
                    out_len: 0,
                    chunks: Vec::new(),
                });
                let (first, old_last, _) = u.frames.unwrap_or((s.first, last, 0));
                u.frames = Some((first, old_last.max(last), 0));
                u.chunks.push((ci, 0));
            }
            // Each unit's range: its frames that are not zeros (one range: they are adjacent).
            // Its output: those frames whole, and its chunks (zeros frames only as far as
            // the chunks reach: a run of zeros may be far larger than a chunk).
            let mut out: Vec<Unit> = Vec::with_capacity(units.len());
            for mut u in units.into_values() {
                let (first, last, _) = u.frames.unwrap_or((0, 0, 0));
                let frames = t.range(first, last).map_err(|m| self.err(m))?;
                let data = || frames.iter().filter(|f| !f.zeros);
                u.start = data().map(|f| f.start).min().unwrap_or(0);
                u.end = data().map(|f| f.end).max().unwrap_or(0);
                u.full_end = u.end;
                let mut lo = data().map(|f| f.at).min().unwrap_or(u64::MAX);
                let mut hi = data().map(|f| f.at + u64::from(f.size)).max().unwrap_or(0);
                for &(ci, _) in &u.chunks {
                    let c = self.chunk(ci)?;
                    lo = lo.min(c.uncompressed_offset);
                    hi = hi.max(c.uncompressed_offset + u64::from(c.uncompressed_size));
                }
                let out_len = hi.saturating_sub(lo);
                if out_len > MAX_UNIT || u.end - u.start > MAX_UNIT {
                    return Err(self.err(format!(
                        "TOC chunks {first}..={last} at compressed offset {} need {} compressed and {out_len} \
                         uncompressed bytes, more than the {MAX_UNIT} this reader allows",
                        u.start,
                        u.end - u.start
                    )));
                }
                for k in 0..u.chunks.len() {
                    let c = self.chunk(u.chunks[k].0)?;
                    u.chunks[k].1 = (c.uncompressed_offset - lo) as usize;
                }
                u.frames = Some((first, last, lo));
                u.out_len = out_len as usize;
                out.push(u);
            }
            out.sort_by_key(|u| u.start);
            return Ok(out);
        }
        match self.zran()? {
            Some(Zran { meta, .. }) => {
                let mut by_ctx: BTreeMap<u32, Vec<(u32, usize)>> = BTreeMap::new();
                for &ci in cis {
                    let c = &meta.chunks[ci as usize];
                    by_ctx.entry(c.zran_index).or_default().push((ci, c.zran_offset as usize));
                }
                for (zi, chunks) in by_ctx {
                    let z = &meta.contexts[zi as usize];
                    // Only as far into the context as the last wanted chunk needs.
                    // (A zstd chunk's compressed size cut to 24 bits tells nothing: the context's.)
                    let need = chunks
                        .iter()
                        .map(|&(ci, _)| {
                            let c = &meta.chunks[ci as usize];
                            if self.frames && u64::from(c.compressed_size) >= MAX_COMPRESSED_SIZE {
                                return u64::MAX;
                            }
                            c.compressed_offset.saturating_add(u64::from(c.compressed_size))
                        })
                        .max()
                        .unwrap_or(0);
                    let end = z.in_offset + u64::from(z.in_len);
                    let whole = self.whole(z);
                    units.insert(
                        z.in_offset,
                        Unit {
                            start: z.in_offset,
                            whole,
                            end: if need > z.in_offset && !whole { need.min(end) } else { end },
                            full_end: 0,
                            context: Some(zi),
                            frames: None,
                            out_len: chunks
                                .iter()
                                .map(|&(ci, at)| at + meta.chunks[ci as usize].uncompressed_size as usize)
                                .max()
                                .unwrap_or(0),
                            chunks,
                        },
                    );
                }
            }
            None => {
                for &ci in cis {
                    let c = self.chunk(ci)?;
                    let end = c.compressed_offset.saturating_add(u64::from(c.compressed_size));
                    if matches!(self.kind, Kind::Native { .. }) && end > self.size {
                        return Err(self.err(format!(
                            "chunk {ci}: compressed range {}-{end} lies past the blob's {} bytes of chunk data",
                            c.compressed_offset, self.size
                        )));
                    }
                    let u = units.entry(c.compressed_offset).or_insert(Unit {
                        whole: false,
                        start: c.compressed_offset,
                        end: c.compressed_offset + u64::from(c.compressed_size),
                        full_end: 0,
                        context: None,
                        frames: None,
                        out_len: 0,
                        chunks: Vec::new(),
                    });
                    u.out_len = u.out_len.max(c.uncompressed_size as usize);
                    u.chunks.push((ci, 0));
                }
            }
        }
        for u in units.values_mut() {
            u.full_end = u.end;
        }
        for u in units.values().filter(|u| !u.whole) {
            let input = u.end.saturating_sub(u.start);
            if input > MAX_UNIT || u.out_len as u64 > MAX_UNIT {
                return Err(self.err(format!(
                    "{} at compressed offset {} needs {input} compressed and {} uncompressed bytes, \
                     more than the {MAX_UNIT} this reader allows",
                    u.context.map_or("chunk".to_string(), |zi| format!("zran context {zi}")),
                    u.start,
                    u.out_len
                )));
            }
        }
        Ok(units.into_values().collect())
    }

    /// Decode unit `u` from its compressed bytes into `out` (a buffer to reuse), returned.
    fn decode(&self, u: &Unit, input: &[u8], mut out: Vec<u8>) -> Result<Vec<u8>, String> {
        out.clear();
        out.resize(u.out_len, 0);
        let zran = match &self.kind {
            Kind::Zran(l) => l.cell.get(),
            Kind::Frames(t) => {
                let (first, last, base) = u.frames.ok_or("no TOC chunks")?;
                return frames::decode_frames(t.range(first, last)?, first, input, u.start, base, u.out_len);
            }
            Kind::Members { zstd: true } => {
                frames::decode_prefix(input, &mut out)
                    .map_err(|m| format!("compressed offset {}: {m}", u.start))?;
                return Ok(out);
            }
            Kind::Members { zstd: false } => None,
            Kind::Native { compressor } => {
                let flags = u.chunks.first().and_then(|&(ci, _)| self.chunk(ci).ok()).map_or(0, |c| c.flags);
                decode_native(*compressor, flags, input, &mut out)
                    .map_err(|m| format!("compressed offset {}: {m}", u.start))?;
                return Ok(out);
            }
        };
        match (zran, u.context) {
            (Some(_), Some(_)) if self.frames => {
                crate::zframe::decode_from(input, u.start, &mut out)?;
            }
            (Some(Zran { meta, .. }), Some(zi)) => {
                let z = &meta.contexts[zi as usize];
                let restart = Restart { bits: z.bits, prev_byte: z.prev_byte, dict: &z.dict };
                inflate_from(&restart, input, u.start, &mut out).map_err(|e| e.to_string())?;
            }
            _ => inflate_member(input, u.start, &mut out).map_err(|e| e.to_string())?,
        }
        Ok(out)
    }
}

/// Decode one native chunk into `out` (sized to the chunk's uncompressed size): it must fill
/// `out` exactly, and nothing larger is ever allocated.
fn decode_native(compressor: u32, flags: u32, input: &[u8], out: &mut [u8]) -> Result<(), String> {
    if flags & (CHUNK_ENCRYPTED | CHUNK_BATCH) != 0 {
        return Err(format!("chunk flags {flags:#x}: encrypted and batch chunks are not supported"));
    }
    let n = if flags & CHUNK_COMPRESSED == 0 {
        if input.len() != out.len() {
            return Err(format!("stored chunk of {} bytes where {} were expected", input.len(), out.len()));
        }
        out.copy_from_slice(input);
        input.len()
    } else {
        match compressor {
            compressor::ZSTD => zstd::bulk::Decompressor::new()
                .and_then(|mut d| d.decompress_to_buffer(input, out))
                .map_err(|e| format!("zstd: {e}"))?,
            compressor::LZ4_BLOCK => {
                lz4_flex::block::decompress_into(input, out).map_err(|e| format!("lz4 block: {e}"))?
            }
            c => return Err(format!("a compressed chunk in a blob with compressor {c}")),
        }
    };
    if n != out.len() {
        return Err(format!("decompressed to {n} bytes where {} were expected", out.len()));
    }
    Ok(())
}

/// Bytes added to an estimate of the compressed bytes a deflate decode needs, and the least
/// a shortened range must leave out to be worth the risk of a second request.
const ESTIMATE_SLACK: u64 = 32 << 10;

/// Where the compressed bytes that yield `out_len` bytes from a deflate context's start
/// probably end: `start` plus `out_len` at the context's own ratio (`in_len / out_len`, which
/// counts its whole compressed range, so it errs long) with a quarter more and
/// [`ESTIMATE_SLACK`]; never past `full_end`.
///
/// The index knows compressed offsets only at checkpoints, so a chunk's range runs to the
/// next one: a read of one small file fetches the rest of its span (up to a checkpoint span
/// of output). A decode whose estimate falls short fetches the rest of the range then.
fn estimated_end(start: u64, full_end: u64, out_len: u64, (in_len, ctx_out): (u64, u64)) -> u64 {
    if ctx_out == 0 {
        return full_end;
    }
    let need =
        u128::from(out_len).saturating_mul(u128::from(in_len)).saturating_mul(5) / (u128::from(ctx_out) * 4);
    let end = start.saturating_add(u64::try_from(need).unwrap_or(u64::MAX)).saturating_add(ESTIMATE_SLACK);
    if end.saturating_add(ESTIMATE_SLACK) >= full_end { full_end } else { end }
}

/// Group units (sorted by start) into requests: overlapping or close ranges together, up to
/// [`MAX_REQUEST`] bytes each.
/// Units that need no bytes (zeros chunks only) are groups of their own.
fn coalesce(units: &[Unit]) -> Vec<Vec<&Unit>> {
    let mut groups: Vec<Vec<&Unit>> = Vec::new();
    let mut empty: Vec<Vec<&Unit>> = Vec::new();
    let mut span = (0u64, 0u64);
    for u in units {
        if u.end <= u.start {
            empty.push(vec![u]);
            continue;
        }
        if let Some(g) = groups.last_mut()
            && u.start <= span.1.saturating_add(MAX_GAP)
            && u.end.max(span.1) - span.0 <= MAX_REQUEST
        {
            g.push(u);
            span.1 = span.1.max(u.end);
            continue;
        }
        groups.push(vec![u]);
        span = (u.start, u.end);
    }
    groups.extend(empty);
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(start: u64, end: u64) -> Unit {
        Unit {
            start,
            end,
            full_end: end,
            whole: false,
            context: None,
            frames: None,
            out_len: 0,
            chunks: Vec::new(),
        }
    }

    /// A blob held in memory; like a file of a local layout when `.1`, else like a registry's.
    struct Memory(Vec<u8>, bool);

    impl BlobSource for Memory {
        fn name(&self) -> String {
            "memory".into()
        }
        fn manifest(&self, r: &str) -> Result<(Vec<u8>, Digest, Option<String>), crate::oci::OciError> {
            Err(crate::oci::OciError::NotFound(r.into()))
        }
        fn open(
            &self,
            d: &Digest,
            _: Option<u64>,
        ) -> Result<Box<dyn std::io::Read + Send>, crate::oci::OciError> {
            Err(crate::oci::OciError::NotFound(d.to_string()))
        }
        fn read_at(&self, _: &Digest, offset: u64, buf: &mut [u8]) -> Result<usize, crate::oci::OciError> {
            let from = (offset as usize).min(self.0.len());
            let n = buf.len().min(self.0.len() - from);
            buf[..n].copy_from_slice(&self.0[from..from + n]);
            Ok(n)
        }
        fn bytes_fetched(&self) -> u64 {
            0
        }
        fn is_local(&self) -> bool {
            self.1
        }
    }

    /// One gzip member of `data` cut into chunks of `cs` bytes, as `generate` would describe it
    /// with a single context at the start, served as a registry serves it; `tweak` may spoil
    /// the metadata.
    fn one_blob(data: &[u8], cs: usize, tweak: impl Fn(&mut BlobMeta)) -> (BlobSet, tempfile::TempDir) {
        blob_of(data, cs, tweak, false)
    }

    /// [`one_blob`] from a local source (`local`) or over a link.
    fn blob_of(
        data: &[u8],
        cs: usize,
        tweak: impl Fn(&mut BlobMeta),
        local: bool,
    ) -> (BlobSet, tempfile::TempDir) {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        e.write_all(data).unwrap();
        let gz = e.finish().unwrap();
        let header = crate::gzip::header::parse(&gz).unwrap().unwrap() as u64;
        let mut meta = BlobMeta::default();
        let mut table = Vec::new();
        for (i, c) in data.chunks(cs).enumerate() {
            meta.chunks.push(crate::rafs::meta::ChunkInfo {
                uncompressed_offset: (i * cs) as u64,
                uncompressed_size: c.len() as u32,
                compressed_offset: header,
                compressed_size: (gz.len() as u64 - header) as u32,
                zran_index: 0,
                zran_offset: (i * cs) as u32,
            });
            table.push(ChunkSpec {
                blob: 0,
                ci: i as u32,
                digest: Sha256::digest(c).into(),
                compressed_offset: header,
                compressed_size: (gz.len() as u64 - header) as u32,
                uncompressed_offset: (i * cs) as u64,
                uncompressed_size: c.len() as u32,
                flags: 0,
            });
        }
        meta.contexts.push(crate::rafs::meta::ZranContext {
            in_offset: header,
            out_offset: 0,
            in_len: (gz.len() as u64 - header) as u32,
            out_len: data.len() as u32,
            bits: 0,
            prev_byte: 0,
            dict: Vec::new(),
        });
        tweak(&mut meta);
        let spec = BlobSpec {
            id: hex::encode(Sha256::digest(&gz)),
            chunk_count: table.len() as u32,
            compressed_size: gz.len() as u64,
            uncompressed_size: (data.len() as u64).div_ceil(4096) * 4096 + (64 << 20) + 8192,
            digest_algo: digester::SHA256,
            compression_algo: compressor::GZIP,
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let set = BlobSet::open(
            vec![BlobInput { layer: 0, spec: &spec, decoding: Decoding::Zran(MetaInput::Ready(meta)) }],
            &table,
            Box::new(Memory(gz, local)),
            dir.path(),
        )
        .unwrap();
        (set, dir)
    }

    #[test]
    fn reads_verify_and_cache_and_refuse_oversized_contexts() {
        let data: Vec<u8> = (0..40_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let (set, _dir) = one_blob(&data, 8192, |_| {});
        let mut buf = vec![0u8; 100];
        set.read(&[Piece { blob: 0, ci: 3, offset: 50, len: 100 }], &mut buf).unwrap();
        assert_eq!(buf, data[3 * 8192 + 50..3 * 8192 + 150]);
        assert_eq!(set.stats.digest_failures.load(Relaxed), 0);
        // The context's chunks up to the one read were kept; the next read needs no fetch.
        let fetched = set.stats.requests.load(Relaxed);
        set.read(&[Piece { blob: 0, ci: 1, offset: 0, len: 100 }], &mut buf).unwrap();
        assert_eq!(set.stats.requests.load(Relaxed), fetched);
        assert_eq!(buf, data[8192..8292]);

        // A context that claims 64 MiB more output than it has: refused, nothing allocated.
        let (set, _dir) = one_blob(&data, 8192, |m| {
            m.contexts[0].out_len += 64 << 20;
            m.chunks[2].zran_offset += 64 << 20;
        });
        let err = set.read(&[Piece { blob: 0, ci: 2, offset: 0, len: 10 }], &mut buf).unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");
        // A chunk whose digest does not match (offset moved): never served, counted twice.
        let (set, _dir) = one_blob(&data, 8192, |m| m.chunks[4].zran_offset += 1);
        assert!(set.read(&[Piece { blob: 0, ci: 4, offset: 0, len: 10 }], &mut buf).is_err());
        assert_eq!(set.stats.digest_failures.load(Relaxed), 2);
    }

    #[test]
    fn a_local_read_decodes_its_whole_context_once_and_the_chunks_are_recorded_by_the_end() {
        let data: Vec<u8> = (0..40_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let n = data.len().div_ceil(8192) as u32;
        let (set, dir) = blob_of(&data, 8192, |_| {}, true);
        let mut buf = vec![0u8; 100];
        set.read(&[Piece { blob: 0, ci: 3, offset: 50, len: 100 }], &mut buf).unwrap();
        assert_eq!(buf, data[3 * 8192 + 50..3 * 8192 + 150]);
        // One inflate of the whole context: every chunk of it good, none decoded twice.
        assert!((0..n).all(|ci| set.is_good(0, ci)));
        assert_eq!(set.stats.bytes_decoded.load(Relaxed), data.len() as u64);
        assert_eq!(set.stats.chunks_fetched.load(Relaxed), u64::from(n));
        for ci in [n - 1, 0, 7] {
            set.read(&[Piece { blob: 0, ci, offset: 0, len: 100 }], &mut buf).unwrap();
            assert_eq!(buf, data[ci as usize * 8192..ci as usize * 8192 + 100]);
        }
        assert_eq!(set.stats.requests.load(Relaxed), 1);
        assert_eq!(set.stats.bytes_decoded.load(Relaxed), data.len() as u64);
        // Recorded in the map once durable: by the end of the set at the latest.
        drop(set);
        let map = std::fs::read_dir(dir.path().join("blobs"))
            .unwrap()
            .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
            .map(|f| f.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "map"))
            .unwrap();
        assert_eq!(std::fs::read(map).unwrap(), vec![1u8; n as usize]);
    }

    /// Bytes of 4 bits of entropy each (they compress to about half, like text or code).
    fn nibbles(n: usize, seed: u32) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                b'a' + ((x >> 27) & 15) as u8
            })
            .collect()
    }

    #[test]
    fn over_a_link_a_read_fetches_and_decodes_only_as_far_as_its_chunk() {
        let data = nibbles(1 << 20, 7);
        let cs = 64 << 10;
        let (set, _dir) = one_blob(&data, cs, |_| {});
        let mut buf = vec![0u8; 100];
        set.read(&[Piece { blob: 0, ci: 2, offset: 10, len: 100 }], &mut buf).unwrap();
        assert_eq!(buf, data[2 * cs + 10..2 * cs + 110]);
        // Chunks 0..=2 decoded (from the context's start), not the rest of the context.
        assert_eq!(set.stats.bytes_decoded.load(Relaxed), 3 * cs as u64);
        assert!((0..3).all(|ci| set.is_good(0, ci)) && !set.is_good(0, 3));
        // The range asked for is the context's ratio for 192 KiB with its margin, well short
        // of the whole member, and it was enough.
        let fetched = set.stats.bytes_fetched.load(Relaxed);
        assert!(fetched < 320 << 10, "{fetched}");
        assert_eq!(set.stats.tail_fetches.load(Relaxed), 0);
        assert_eq!(set.stats.requests.load(Relaxed), 1);
    }

    #[test]
    fn an_estimate_that_falls_short_fetches_the_rest_of_its_context() {
        // Incompressible data, then a long run of zeros: the context's ratio says far fewer
        // compressed bytes than the start of it needs.
        let mut x = 1u32;
        let mut data: Vec<u8> = (0..256 << 10)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 23) as u8
            })
            .collect();
        data.resize(data.len() + (4 << 20), 0);
        let cs = 64 << 10;
        let (set, _dir) = one_blob(&data, cs, |_| {});
        let mut buf = vec![0u8; 100];
        set.read(&[Piece { blob: 0, ci: 3, offset: 7, len: 100 }], &mut buf).unwrap();
        assert_eq!(buf, data[3 * cs + 7..3 * cs + 107]);
        assert_eq!(set.stats.tail_fetches.load(Relaxed), 1);
        assert_eq!(set.stats.requests.load(Relaxed), 2);
        assert_eq!(set.stats.digest_failures.load(Relaxed), 0);
        assert!((0..4).all(|ci| set.is_good(0, ci)));
    }

    #[test]
    fn a_chunk_another_reader_is_checking_or_fetching_is_no_miss() {
        let (set, _dir) = one_blob(&nibbles(256 << 10, 3), 64 << 10, |_| {});
        assert!(set.must_fetch(0, 1));
        let blob = set.blob(0).unwrap();
        blob.flights.lock().unwrap().insert(1, Arc::new(Flight::default()));
        assert!(!set.must_fetch(0, 1), "in flight");
        blob.flights.lock().unwrap().clear();
        assert!(set.must_fetch(0, 1));
        blob.good[1].store(true, Relaxed);
        assert!(!set.must_fetch(0, 1), "good");
    }

    #[test]
    fn estimates_stay_inside_their_range() {
        // No ratio known, or what would be left out too little to be worth a second request.
        assert_eq!(estimated_end(100, 5000, 10, (0, 0)), 5000);
        assert_eq!(estimated_end(100, 50_000, 1000, (1, 2)), 50_000);
        // A quarter over the ratio, and the slack.
        assert_eq!(estimated_end(0, 10 << 20, 1 << 20, (1, 2)), (640 << 10) + ESTIMATE_SLACK);
        // Never past the end, whatever the numbers.
        assert_eq!(estimated_end(u64::MAX - 10, u64::MAX, u64::MAX, (u64::MAX, 1)), u64::MAX);
    }

    /// A native blob of three chunks (zstd, stored, zstd), with `compressor` for its
    /// compressed ones and `hash` for its digests; `flags` of chunk 0 may be changed.
    fn native_blob(compressor: u32, hash: u32, flags0: u32) -> (BlobSet, Vec<Vec<u8>>, tempfile::TempDir) {
        let data: Vec<Vec<u8>> = vec![
            (0..10_000u32).flat_map(|i| (i % 7).to_le_bytes()).collect(),
            (0..3000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect(),
            b"the end of the blob, compressed".repeat(50),
        ];
        let mut blob = Vec::new();
        let mut table = Vec::new();
        for (i, d) in data.iter().enumerate() {
            let stored = i == 1;
            let bytes = match (stored, compressor) {
                (true, _) => d.clone(),
                (false, c) if c == compressor::LZ4_BLOCK => lz4_flex::block::compress(d),
                _ => zstd::bulk::compress(d, 3).unwrap(),
            };
            let digest =
                if hash == digester::BLAKE3 { *blake3::hash(d).as_bytes() } else { Sha256::digest(d).into() };
            table.push(ChunkSpec {
                blob: 0,
                ci: i as u32,
                digest,
                compressed_offset: blob.len() as u64,
                compressed_size: bytes.len() as u32,
                uncompressed_offset: (i as u64) << 16,
                uncompressed_size: d.len() as u32,
                flags: if stored {
                    0
                } else if i == 0 {
                    flags0
                } else {
                    CHUNK_COMPRESSED
                },
            });
            blob.extend_from_slice(&bytes);
        }
        let spec = BlobSpec {
            id: hex::encode(Sha256::digest(&blob)),
            chunk_count: 3,
            compression_algo: compressor,
            digest_algo: hash,
            compressed_size: blob.len() as u64,
            uncompressed_size: 3 << 16,
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let set = BlobSet::open(
            vec![BlobInput { layer: 0, spec: &spec, decoding: Decoding::Native }],
            &table,
            Box::new(Memory(blob, false)),
            dir.path(),
        )
        .unwrap();
        (set, data, dir)
    }

    #[test]
    fn native_chunks_decode_by_compressor_and_verify_by_digester() {
        for (c, h) in [
            (compressor::ZSTD, digester::BLAKE3),
            (compressor::LZ4_BLOCK, digester::SHA256),
            (compressor::ZSTD, digester::SHA256),
        ] {
            let (set, data, _dir) = native_blob(c, h, CHUNK_COMPRESSED);
            for (ci, d) in data.iter().enumerate() {
                let mut buf = vec![0u8; d.len()];
                set.read(&[Piece { blob: 0, ci: ci as u32, offset: 0, len: d.len() as u32 }], &mut buf)
                    .unwrap();
                assert_eq!(&buf, d, "compressor {c} digester {h} chunk {ci}");
            }
            assert_eq!(set.stats.digest_failures.load(Relaxed), 0);
        }
        // A compressed chunk marked stored is the wrong size: never served.
        let (set, _, _dir) = native_blob(compressor::ZSTD, digester::BLAKE3, 0);
        let mut buf = vec![0u8; 10];
        let e = set.read(&[Piece { blob: 0, ci: 0, offset: 0, len: 10 }], &mut buf).unwrap_err();
        assert!(e.to_string().contains("fetched twice"), "{e}");
        // Encrypted and batch chunks are refused.
        let (set, _, _dir) = native_blob(compressor::ZSTD, digester::BLAKE3, CHUNK_COMPRESSED | 0x4);
        assert!(set.read(&[Piece { blob: 0, ci: 0, offset: 0, len: 10 }], &mut buf).is_err());
        assert_eq!(set.stats.digest_failures.load(Relaxed), 2);
        // A gzip (zran) blob with blake3 digests, and an unknown compressor, are refused at open.
        let spec = BlobSpec {
            id: "ab".repeat(32),
            compression_algo: 9,
            digest_algo: digester::SHA256,
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let open = |spec: &BlobSpec, decoding| {
            BlobSet::open(
                vec![BlobInput { layer: 0, spec, decoding }],
                &[],
                Box::new(Memory(Vec::new(), false)),
                dir.path(),
            )
            .err()
            .map(|e| e.to_string())
        };
        assert!(open(&spec, Decoding::Native).unwrap().contains("compressor 9"));
        let spec = BlobSpec { digest_algo: digester::BLAKE3, ..spec };
        assert!(open(&spec, Decoding::Members).unwrap().contains("sha256"));
    }

    /// A zstd:chunked-like blob of one file: some bytes of tar headers, then the file cut into
    /// TOC chunks of `cuts` bytes, each its own zstd frame (`frame(k, bytes)` makes it; zeros
    /// chunks where `zeros` says), and RAFS chunks of `cs` bytes over it, cached under `dir`.
    fn frames_blob(
        data: &[u8],
        cuts: &[usize],
        zeros: &[usize],
        cs: u32,
        dir: &Path,
        frame: impl Fn(usize, &[u8]) -> Vec<u8>,
    ) -> (BlobSet, Vec<frames::Cut>) {
        let mut blob = vec![7u8; 1536];
        let mut toc = Vec::new();
        let mut at = 0usize;
        for (k, &n) in cuts.iter().enumerate() {
            let piece = &data[at..at + n];
            let bytes = frame(k, piece);
            let f = frames::Frame {
                start: blob.len() as u64,
                end: (blob.len() + bytes.len()) as u64,
                size: n as u32,
                digest: Some(Sha256::digest(piece).into()),
                zeros: zeros.contains(&k),
                at: 0,
            };
            blob.extend_from_slice(&bytes);
            toc.push((at as u64, f));
            at += n;
        }
        blob.extend_from_slice(&[9u8; 700]);
        let (frames, cut) = frames::cut_file(&toc, data.len() as u64, cs, 0, 0).unwrap();
        let table: Vec<ChunkSpec> = cut
            .iter()
            .enumerate()
            .map(|(ci, &(span, addr, len))| ChunkSpec {
                blob: 0,
                ci: ci as u32,
                digest: Sha256::digest(format!("{span:?}")).into(),
                compressed_offset: frames[span.first as usize].start,
                compressed_size: 1,
                uncompressed_offset: addr,
                uncompressed_size: len,
                flags: CHUNK_COMPRESSED,
            })
            .collect();
        let spec = BlobSpec {
            id: hex::encode(Sha256::digest(&blob)),
            chunk_count: table.len() as u32,
            compression_algo: compressor::ZSTD,
            digest_algo: digester::SHA256,
            compressed_size: blob.len() as u64,
            uncompressed_size: (data.len() as u64).div_ceil(4096) * 4096,
            ..Default::default()
        };
        let spans = cut.iter().map(|c| c.0).collect();
        let set = BlobSet::open(
            vec![BlobInput {
                layer: 0,
                spec: &spec,
                decoding: Decoding::Frames(frames::FrameTable { frames, spans }),
            }],
            &table,
            Box::new(Memory(blob, false)),
            dir,
        )
        .unwrap();
        (set, cut)
    }

    /// Bytes `[from, from + len)` of the file, through the pieces a FUSE read would make.
    fn read_file(set: &BlobSet, cs: u32, from: u64, len: u64) -> Result<Vec<u8>, BlobError> {
        let mut pieces = Vec::new();
        let mut at = from;
        while at < from + len {
            let ci = (at / u64::from(cs)) as u32;
            let offset = (at % u64::from(cs)) as u32;
            let n = (u64::from(cs - offset)).min(from + len - at) as u32;
            pieces.push(Piece { blob: 0, ci, offset, len: n });
            at += u64::from(n);
        }
        let mut buf = vec![0u8; len as usize];
        set.read(&pieces, &mut buf)?;
        Ok(buf)
    }

    /// A file whose bytes compress a little, with a run of zeros at `zeros`.
    fn frames_data(n: usize, zeros: std::ops::Range<usize>) -> Vec<u8> {
        (0..n)
            .map(|i| {
                if zeros.contains(&i) {
                    0
                } else {
                    (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] % 17
                }
            })
            .collect()
    }

    const CS: u32 = 64 << 10;
    /// TOC chunks: chunk 0 of the file spans TOC chunks 0-2; TOC chunk 2 (40000..140000) spans
    /// RAFS chunks 0-2; TOC chunk 3 is zeros (140000..270000) and covers RAFS chunk 3 whole.
    const CUTS: [usize; 6] = [10_000, 30_000, 100_000, 130_000, 5_000, 25_000];

    #[test]
    fn frames_serve_chunks_across_toc_chunk_boundaries_and_zeros_fetch_nothing() {
        let data = frames_data(300_000, 140_000..270_000);
        let dir = tempfile::tempdir().unwrap();
        let compress = |_: usize, b: &[u8]| zstd::bulk::compress(b, 3).unwrap();
        let (set, cut) = frames_blob(&data, &CUTS, &[3], CS, dir.path(), compress);
        assert_eq!(cut[0].0, frames::Span { first: 0, count: 3, skip: 0 });
        assert_eq!(cut[1].0, frames::Span { first: 2, count: 1, skip: 65536 - 40_000 });
        assert_eq!(cut[3].0, frames::Span { first: 3, count: 1, skip: 196_608 - 140_000 });
        // A chunk inside the zeros chunk: nothing fetched.
        assert_eq!(read_file(&set, CS, 200_000, 50_000).unwrap(), data[200_000..250_000]);
        assert_eq!((set.stats.requests.load(Relaxed), set.stats.bytes_fetched.load(Relaxed)), (0, 0));
        // Reads across every boundary equal the data.
        for (from, len) in [(0, 300_000), (65_000, 2_000), (139_990, 20), (131_000, 70_000), (299_999, 1)] {
            assert_eq!(read_file(&set, CS, from, len).unwrap(), data[from as usize..(from + len) as usize]);
        }
        assert_eq!(set.stats.digest_failures.load(Relaxed), 0);
        // The zeros chunk's frame was never fetched: what was fetched is the other frames.
        assert!(set.stats.bytes_fetched.load(Relaxed) > 0);
    }

    #[test]
    fn a_changed_frame_fails_only_the_chunks_cut_from_it() {
        let data = frames_data(300_000, 140_000..270_000);
        let dir = tempfile::tempdir().unwrap();
        // TOC chunk 4 (270000..275000) lies in RAFS chunk 4 only.
        let spoil = |k: usize, b: &[u8]| {
            let mut f = zstd::bulk::compress(b, 3).unwrap();
            if k == 4 {
                let mut other = b.to_vec();
                other[100] ^= 1;
                f = zstd::bulk::compress(&other, 3).unwrap();
            }
            f
        };
        let (set, _) = frames_blob(&data, &CUTS, &[3], CS, dir.path(), spoil);
        let e = read_file(&set, CS, 262_144, 100).unwrap_err();
        assert!(e.to_string().contains("fetched twice"), "{e}");
        assert_eq!(set.stats.digest_failures.load(Relaxed), 2, "fetched once more, then refused");
        assert!(e.to_string().contains("TOC chunk 4"), "{e}");
        // The chunks not cut from it read well (RAFS chunk 4 is the file's last).
        assert_eq!(read_file(&set, CS, 0, 262_144).unwrap(), data[..262_144]);
        assert_eq!(set.stats.digest_failures.load(Relaxed), 2);
        // A frame that decodes to more than its chunk is an error, never a bigger buffer.
        let longer = |k: usize, b: &[u8]| {
            let mut b = b.to_vec();
            if k == 1 {
                b.extend_from_slice(b"more");
            }
            zstd::bulk::compress(&b, 3).unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let (set, _) = frames_blob(&data, &CUTS, &[3], CS, dir.path(), longer);
        let e = read_file(&set, CS, 0, 10).unwrap_err();
        assert!(e.to_string().contains("TOC chunk 1"), "{e}");
        let mut out = [0u8; 4];
        assert!(frames::decode_exact(&zstd::bulk::compress(b"12345", 1).unwrap(), &mut out).is_err());
        assert!(frames::decode_exact(&zstd::bulk::compress(b"123", 1).unwrap(), &mut out).is_err());
        frames::decode_prefix(&zstd::bulk::compress(b"12345", 1).unwrap(), &mut out).unwrap();
        assert_eq!(&out, b"1234");
    }

    #[test]
    fn a_run_of_zeros_larger_than_a_decode_is_served_in_chunks() {
        // 80 MiB of zeros between two pieces of data: one zeros TOC chunk, larger than any
        // decode may be; only the chunks read are materialized.
        let n = 80 << 20;
        let mut data = frames_data(n + 20_000, 10_000..n + 10_000);
        data.truncate(n + 20_000);
        let dir = tempfile::tempdir().unwrap();
        let compress = |_: usize, b: &[u8]| zstd::bulk::compress(b, 1).unwrap();
        let (set, _) = frames_blob(&data, &[10_000, n, 10_000], &[1], 1 << 20, dir.path(), compress);
        for from in [0u64, 5 << 20, (n as u64) + 5_000, (1 << 20) - 100] {
            let len = 30_000u64.min(data.len() as u64 - from);
            assert_eq!(
                read_file(&set, 1 << 20, from, len).unwrap(),
                data[from as usize..(from + len) as usize]
            );
        }
        assert_eq!(set.stats.digest_failures.load(Relaxed), 0);
        drop(set);
        // Cached: checked again (the zeros inside each chunk), nothing fetched.
        let (set, _) = frames_blob(&data, &[10_000, n, 10_000], &[1], 1 << 20, dir.path(), compress);
        assert_eq!(read_file(&set, 1 << 20, 5 << 20, 100).unwrap(), vec![0u8; 100]);
        assert_eq!(set.stats.requests.load(Relaxed), 0);
        assert_eq!(set.stats.cache_hits.load(Relaxed), 1);
    }

    #[test]
    fn a_tampered_cache_is_caught_on_the_next_mount() {
        let data = frames_data(300_000, 140_000..270_000);
        let dir = tempfile::tempdir().unwrap();
        let compress = |_: usize, b: &[u8]| zstd::bulk::compress(b, 3).unwrap();
        {
            let (set, _) = frames_blob(&data, &CUTS, &[3], CS, dir.path(), compress);
            assert_eq!(read_file(&set, CS, 0, 300_000).unwrap(), data);
        }
        // Untouched: every chunk comes from the cache, checked through its TOC chunks.
        {
            let (set, _) = frames_blob(&data, &CUTS, &[3], CS, dir.path(), compress);
            assert_eq!(read_file(&set, CS, 0, 300_000).unwrap(), data);
            assert_eq!(set.stats.requests.load(Relaxed), 0);
            assert_eq!(set.stats.cache_hits.load(Relaxed), 5);
        }
        // One byte of RAFS chunk 1 changed in the data file (it lies in TOC chunk 2, which
        // RAFS chunks 0 and 2 are also cut from).
        let data_file = std::fs::read_dir(dir.path().join("blobs"))
            .unwrap()
            .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
            .map(|f| f.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "data"))
            .unwrap();
        let mut bytes = std::fs::read(&data_file).unwrap();
        bytes[100_000] ^= 0x40;
        std::fs::write(&data_file, &bytes).unwrap();
        let (set, _) = frames_blob(&data, &CUTS, &[3], CS, dir.path(), compress);
        assert_eq!(read_file(&set, CS, 0, 300_000).unwrap(), data);
        assert_eq!(set.stats.digest_failures.load(Relaxed), 3, "chunks 0, 1 and 2 use TOC chunk 2");
        assert_eq!(set.stats.cache_hits.load(Relaxed), 2);
        assert!(set.stats.requests.load(Relaxed) > 0);
    }

    /// eStargz in zstd: each chunk a zstd frame whose output runs on past the chunk (the next
    /// tar headers), read through the members path.
    #[test]
    fn estargz_in_zstd_chunks_decode_their_size_from_frames_that_run_on() {
        let data: Vec<Vec<u8>> = vec![b"first chunk ".repeat(900), b"second".repeat(700), b"3".repeat(5000)];
        let mut blob = Vec::new();
        let mut table = Vec::new();
        for (i, d) in data.iter().enumerate() {
            let mut frame_out = d.clone();
            frame_out.extend_from_slice(&[b'h'; 512]);
            let bytes = zstd::bulk::compress(&frame_out, 3).unwrap();
            table.push(ChunkSpec {
                blob: 0,
                ci: i as u32,
                digest: Sha256::digest(d).into(),
                compressed_offset: blob.len() as u64,
                compressed_size: bytes.len() as u32,
                uncompressed_offset: (i as u64) << 16,
                uncompressed_size: d.len() as u32,
                flags: CHUNK_COMPRESSED,
            });
            blob.extend_from_slice(&bytes);
        }
        let spec = BlobSpec {
            id: hex::encode(Sha256::digest(&blob)),
            chunk_count: 3,
            compression_algo: compressor::ZSTD,
            digest_algo: digester::SHA256,
            compressed_size: blob.len() as u64,
            uncompressed_size: 3 << 16,
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let set = BlobSet::open(
            vec![BlobInput { layer: 0, spec: &spec, decoding: Decoding::Members }],
            &table,
            Box::new(Memory(blob, false)),
            dir.path(),
        )
        .unwrap();
        for (ci, d) in data.iter().enumerate().rev() {
            let mut buf = vec![0u8; d.len()];
            set.read(&[Piece { blob: 0, ci: ci as u32, offset: 0, len: d.len() as u32 }], &mut buf).unwrap();
            assert_eq!(&buf, d, "chunk {ci}");
        }
        assert_eq!(set.stats.digest_failures.load(Relaxed), 0);
    }

    #[test]
    fn coalescing_joins_near_ranges_up_to_the_limit() {
        let units =
            [unit(0, 100), unit(50, 200), unit(200 + MAX_GAP, 300 + MAX_GAP), unit(10 << 20, 11 << 20)];
        let g = coalesce(&units);
        assert_eq!(g.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 1]);
        let big: Vec<Unit> = (0..20).map(|i| unit(i << 20, (i + 1) << 20)).collect();
        let g = coalesce(&big);
        assert!(g.iter().all(|g| g.last().unwrap().end - g[0].start <= MAX_REQUEST));
        assert_eq!(g.iter().map(Vec::len).sum::<usize>(), 20);
    }

    /// A zstd blob: frame A (`small` bytes, chunks of 64 KiB, one context) and frame B
    /// (`big` bytes, chunks of 1 MiB, one context), with a skippable frame between them.
    fn zstd_blob(small: usize, big: usize) -> (BlobSet, Vec<u8>, tempfile::TempDir) {
        let data: Vec<u8> =
            (0..(small + big) as u32).map(|i| ((i / 7) % 251) as u8 ^ (i >> 20) as u8).collect();
        let mut z = zstd::bulk::compress(&data[..small], 3).unwrap();
        let b_in = {
            z.extend_from_slice(&0x184D_2A5Fu32.to_le_bytes());
            z.extend_from_slice(&3u32.to_le_bytes());
            z.extend_from_slice(b"toc");
            z.len() as u64
        };
        z.extend(zstd::bulk::compress(&data[small..], 3).unwrap());
        let mut meta = BlobMeta::default();
        let mut table = Vec::new();
        let mut pos = 0u64;
        for (zi, (start, end, cs, input)) in
            [(0, small, 64 << 10, 0u64), (small, small + big, 1 << 20, b_in)].into_iter().enumerate()
        {
            let in_len = if zi == 0 { b_in } else { z.len() as u64 - b_in };
            meta.contexts.push(crate::rafs::meta::ZranContext {
                in_offset: input,
                out_offset: start as u64,
                in_len: in_len as u32,
                out_len: (end - start) as u32,
                bits: 0,
                prev_byte: 0,
                dict: Vec::new(),
            });
            for at in (start..end).step_by(cs) {
                let c = &data[at..(at + cs).min(end)];
                let ci = meta.chunks.len() as u32;
                meta.chunks.push(crate::rafs::meta::ChunkInfo {
                    uncompressed_offset: pos,
                    uncompressed_size: c.len() as u32,
                    compressed_offset: input,
                    compressed_size: in_len.min(MAX_COMPRESSED_SIZE) as u32,
                    zran_index: zi as u32,
                    zran_offset: (at - start) as u32,
                });
                table.push(ChunkSpec {
                    blob: 0,
                    ci,
                    digest: Sha256::digest(c).into(),
                    compressed_offset: input,
                    compressed_size: in_len.min(MAX_COMPRESSED_SIZE) as u32,
                    uncompressed_offset: pos,
                    uncompressed_size: c.len() as u32,
                    flags: CHUNK_COMPRESSED,
                });
                pos += (c.len() as u64).div_ceil(4096) * 4096;
            }
        }
        let spec = BlobSpec {
            id: hex::encode(Sha256::digest(&z)),
            chunk_count: table.len() as u32,
            compressed_size: z.len() as u64,
            uncompressed_size: pos,
            digest_algo: digester::SHA256,
            compression_algo: compressor::ZSTD,
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let set = BlobSet::open(
            vec![BlobInput { layer: 0, spec: &spec, decoding: Decoding::Zran(MetaInput::Ready(meta)) }],
            &table,
            Box::new(Memory(z, false)),
            dir.path(),
        )
        .unwrap();
        (set, data, dir)
    }

    #[test]
    fn zstd_contexts_decode_and_a_whole_frame_is_fetched_once() {
        let small = 300_000;
        let (set, data, _dir) = zstd_blob(small, (WHOLE_CONTEXT + (3 << 20)) as usize);
        let mut buf = vec![0u8; 1000];
        // A chunk of the small frame: decoded up to it, no whole fetch.
        set.read(&[Piece { blob: 0, ci: 2, offset: 10, len: 1000 }], &mut buf).unwrap();
        assert_eq!(buf, data[2 * 65536 + 10..2 * 65536 + 1010]);
        assert_eq!(set.stats.whole_fetches.load(Relaxed), 0);
        // Chunks of the large frame, read by four threads at once: one whole fetch serves all.
        let first_big = small.div_ceil(65536) as u32;
        std::thread::scope(|s| {
            for k in [3u32, 17, 0, 9] {
                let (set, data) = (&set, &data);
                s.spawn(move || {
                    let mut buf = vec![0u8; 4096];
                    set.read(&[Piece { blob: 0, ci: first_big + k, offset: 100, len: 4096 }], &mut buf)
                        .unwrap();
                    let at = small + ((k as usize) << 20) + 100;
                    assert_eq!(buf, data[at..at + 4096]);
                });
            }
        });
        assert_eq!(set.stats.whole_fetches.load(Relaxed), 1);
        let requests = set.stats.requests.load(Relaxed);
        // Every chunk of the frame is good now: reads need no fetch.
        for k in 0..19u32 {
            assert!(set.is_good(0, first_big + k), "chunk {k}");
        }
        set.read(&[Piece { blob: 0, ci: first_big + 18, offset: 0, len: 1000 }], &mut buf).unwrap();
        assert_eq!(set.stats.requests.load(Relaxed), requests);
        assert_eq!(set.stats.digest_failures.load(Relaxed), 0);
    }
}
