//! Speculative decoding of a later part of a deflate stream, on a second core, while the index
//! pass decodes the part before it.
//!
//! A worker is given compressed bytes ahead of the pass and a place to start looking. It finds
//! the first bit there where a non-final dynamic-Huffman block header begins that zlib would
//! accept ([`find_dynamic_block`]), and decodes from it without knowing the 32 KiB of output
//! that precede it. Back-references into that unknown window are tracked by decoding twice, in
//! lockstep, with two made-up windows: window position `p` holds `LO[p]` in one and `HI[p]`
//! in the other, chosen so that the pair differs in every position and names `p`. A byte that
//! comes out the same from both decoders depends on nothing before the start; a byte that
//! differs is a copy, direct or through earlier copies, of window position `p`, and the pair
//! says which. Once 32 KiB of output in a row are the same in both, nothing later can reach
//! the unknown window, and the second decoder stops.
//!
//! The result ([`Chunk`]) is only a proposal. The pass uses it only when its own exact
//! decoding stops at a block boundary at exactly the chunk's start bit: then the start was
//! real, the window is known, every tracked byte is filled in from it, and the pass goes on
//! from the chunk's last block boundary as if it had decoded the chunk itself. Any other
//! outcome (no header found, a false start, a decode error, the pass passing the start) only
//! costs the work: the pass decodes that part itself. This is rapidgzip's method (two-stage
//! decoding with markers), done with an unmodified zlib decoder run twice over the start of a
//! chunk instead of a decoder of its own that emits 16-bit markers.
//!
//! Part of the gzip engine; reaches zlib only through `inflate.rs`.

use super::index::WINDOW_SIZE;
use super::inflate::RawInflate;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

/// Output asked of the decoders per call while they run in lockstep.
const STEP: usize = 128 * 1024;
/// Candidate starts a job decodes from before it gives up.
const MAX_TRIES: u32 = 8;
/// Compressed bytes given to a job past its nominal end, for the block in progress there: a
/// chunk's worth, within these bounds.
const TAIL: (u64, u64) = (64 << 10, 1 << 20);
/// How far past its nominal start a worker looks for a block header before giving up.
const MAX_SEARCH: u64 = 256 << 10;

/// `LO[p]`, `HI[p]`: the two made-up windows. `LO` is the low byte of `p`; `HI` the high 7 bits,
/// moved to the other half of the byte range from `LO`, so the two never agree.
fn made_up_windows() -> (Vec<u8>, Vec<u8>) {
    let lo = (0..WINDOW_SIZE).map(|p| p as u8).collect();
    let hi = (0..WINDOW_SIZE).map(|p| hi_byte(p as u8, (p >> 8) as u8)).collect();
    (lo, hi)
}

fn hi_byte(lo: u8, high7: u8) -> u8 {
    if lo < 128 { high7 | 0x80 } else { high7 }
}

/// The window position named by a differing pair, if the pair is one the made-up windows make.
fn position(lo: u8, hi: u8) -> Option<u16> {
    let high7 = if lo < 128 { hi.checked_sub(0x80)? } else { hi };
    (high7 < 0x80).then_some((u16::from(high7) << 8) | u16::from(lo))
}

/// A place between two deflate blocks, as the pass records it: `input` is the first whole byte
/// of the next block, whose first `bits` bits are the high bits of byte `input - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Place {
    /// Uncompressed offset from the chunk's start.
    pub out: u64,
    pub input: u64,
    pub bits: u8,
    pub prev_byte: u8,
}

impl Place {
    pub fn bit(&self) -> u64 {
        self.input * 8 - u64::from(self.bits)
    }
}

/// A speculatively decoded part of the stream.
pub(crate) struct Chunk {
    pub start: Place,
    /// The output, after room for a window: `out[WINDOW_SIZE..][..len]` is the chunk's,
    /// from `start` to the last of `boundaries` ([`Chunk::data`]).
    pub out: Vec<u8>,
    pub len: usize,
    /// Bytes that copy the unknown window: (offset in the data, window position, where position
    /// `WINDOW_SIZE - 1` is the byte just before the start).
    pub tracked: Vec<(u32, u16)>,
    /// Every block boundary after the start, in order; the last one ends the chunk.
    pub boundaries: Vec<Place>,
}

impl Chunk {
    /// Fill in the tracked bytes from the real window (the output before the start, at most
    /// 32 KiB, shorter only at a member's start). False if a byte copies from before a short
    /// window, which the real stream cannot do: then the chunk was not what it seemed.
    pub fn resolve(&mut self, window: &[u8]) -> bool {
        let missing = WINDOW_SIZE - window.len().min(WINDOW_SIZE);
        for &(at, p) in &self.tracked {
            let Some(i) = (p as usize).checked_sub(missing) else { return false };
            match (self.out.get_mut(WINDOW_SIZE + at as usize), window.get(i)) {
                (Some(o), Some(&w)) => *o = w,
                _ => return false,
            }
        }
        self.tracked.clear();
        true
    }

    /// The chunk's output.
    pub fn data(&self) -> &[u8] {
        &self.out[WINDOW_SIZE..WINDOW_SIZE + self.len]
    }
}

/// Buffers kept for reuse (output of chunks, input of jobs).
type Buffers = Mutex<Vec<Vec<u8>>>;

/// One piece of work for the worker.
struct Job {
    id: u64,
    /// Compressed bytes; `data[0]` is at compressed offset `base`.
    data: Vec<u8>,
    base: u64,
    /// Look for a block start at bits `[from, from + MAX_SEARCH * 8)`.
    from: u64,
    /// End the chunk at the first block boundary at or after this bit.
    stop: u64,
}

/// A job's outcome: its chunk, or None (the pass decodes that part itself).
struct Report {
    id: u64,
    chunk: Option<Chunk>,
}

/// What the pass should do at a block boundary.
pub(crate) enum Action {
    Continue,
    Take(Chunk),
}

struct Pending {
    id: u64,
    from: u64,
    /// The report, once in.
    done: Option<Option<Chunk>>,
}

/// The pass's side: hands out jobs ahead of itself and matches their chunks with its position.
pub(crate) struct Speculator {
    chunk: u64,
    jobs: Option<mpsc::SyncSender<Job>>,
    reports: mpsc::Receiver<Report>,
    /// Jobs below this id are no longer wanted; the worker drops them.
    cancel: Arc<AtomicU64>,
    pool: Arc<Buffers>,
    /// Input buffers back from the worker, for the next jobs.
    inputs: Arc<Buffers>,
    pending: VecDeque<Pending>,
    next_id: u64,
    /// Compressed offset where the next job may start at the earliest.
    next_from: u64,
    worker: Option<std::thread::JoinHandle<()>>,
    pub taken: u64,
    pub wasted: u64,
    /// Time the pass spent waiting for the worker.
    pub waited: std::time::Duration,
}

impl Speculator {
    /// Start a worker for chunks of about `chunk` compressed bytes, each giving at most
    /// `max_out` bytes of output.
    pub fn new(chunk: u64, max_out: usize) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::sync_channel::<Job>(1);
        let (tx, reports) = mpsc::channel();
        let cancel = Arc::new(AtomicU64::new(0));
        let pool: Arc<Buffers> = Arc::default();
        let inputs: Arc<Buffers> = Arc::default();
        let worker = {
            let cancel = Arc::clone(&cancel);
            let pool = Arc::clone(&pool);
            let inputs = Arc::clone(&inputs);
            std::thread::Builder::new()
                .name("gz-speculate".into())
                .spawn(move || work(rx, tx, &cancel, (&pool, &inputs), max_out))?
        };
        Ok(Speculator {
            chunk: chunk.max(1),
            jobs: Some(jobs),
            reports,
            cancel,
            pool,
            inputs,
            pending: VecDeque::new(),
            next_id: 0,
            next_from: chunk.max(1),
            worker: Some(worker),
            taken: 0,
            wasted: 0,
            waited: std::time::Duration::ZERO,
        })
    }

    fn tail(&self) -> u64 {
        self.chunk.clamp(TAIL.0, TAIL.1)
    }

    /// Where the next job starts when the pass stands at `now`. Jobs alternate with the pass:
    /// each starts a chunk after the pass's position, so that the pass has a chunk of its own
    /// to decode meanwhile.
    fn next_start(&self, now: u64) -> u64 {
        self.next_from.max(now + self.chunk)
    }

    /// The compressed bytes a new job needs buffered past `now` (the pass's input offset), or
    /// None when no job is due.
    pub fn wanted(&self, now: u64) -> Option<u64> {
        if self.pending.len() >= 2 {
            return None;
        }
        Some(self.next_start(now) + self.chunk + self.tail() - now)
    }

    /// Hand out a job over `data` (compressed bytes from the pass's position `now` on), if one
    /// is due and the data reaches far enough.
    pub fn dispatch(&mut self, now: u64, data: &[u8], eof: bool) {
        let Some(want) = self.wanted(now) else { return };
        let from = self.next_start(now);
        let end = now + data.len() as u64;
        // Worth it only with a fair part of a chunk left after the start.
        if (end < now + want && !eof) || from + self.chunk / 2 > end {
            return;
        }
        let lo = (from - 1 - now) as usize;
        let hi = data.len().min((from + self.chunk + self.tail() - now) as usize);
        let id = self.next_id;
        let mut copy = self.inputs.lock().ok().and_then(|mut p| p.pop()).unwrap_or_default();
        copy.clear();
        copy.extend_from_slice(&data[lo..hi]);
        let job = Job { id, data: copy, base: from - 1, from: from * 8, stop: (from + self.chunk) * 8 };
        let Some(jobs) = &self.jobs else { return };
        if jobs.send(job).is_err() {
            self.jobs = None;
            return;
        }
        self.next_id += 1;
        self.next_from = from + 2 * self.chunk;
        self.pending.push_back(Pending { id, from: from * 8, done: None });
    }

    /// Wait for the worker's next report; false when the worker is gone.
    fn receive(&mut self) -> bool {
        let t = std::time::Instant::now();
        let report = self.reports.recv();
        self.waited += t.elapsed();
        let Ok(Report { id, chunk }) = report else { return false };
        match self.pending.iter_mut().find(|p| p.id == id) {
            Some(p) => p.done = Some(chunk),
            None => {
                if let Some(c) = chunk {
                    self.recycle(c.out);
                }
            }
        }
        true
    }

    /// Put an output buffer back for the worker to reuse.
    pub fn recycle(&self, buf: Vec<u8>) {
        if let Ok(mut pool) = self.pool.lock()
            && pool.len() < 4
        {
            pool.push(buf);
        }
    }

    fn drop_front(&mut self) {
        if let Some(p) = self.pending.pop_front() {
            self.cancel.store(p.id + 1, Ordering::Relaxed);
            self.wasted += 1;
            if let Some(Some(c)) = p.done {
                self.recycle(c.out);
            }
        }
    }

    /// The pass stands at a block boundary at compressed bit `bit`.
    pub fn at(&mut self, bit: u64) -> Action {
        loop {
            let Some(front) = self.pending.front() else { return Action::Continue };
            if bit < front.from {
                return Action::Continue;
            }
            let start = match &front.done {
                Some(chunk) => chunk.as_ref().map(|c| c.start.bit()),
                None => {
                    if !self.receive() {
                        self.pending.clear();
                        return Action::Continue;
                    }
                    continue;
                }
            };
            match start {
                Some(s) if bit < s => return Action::Continue,
                Some(s) if bit == s => {
                    if let Some(Some(chunk)) = self.pending.pop_front().and_then(|p| p.done) {
                        self.taken += 1;
                        return Action::Take(chunk);
                    }
                }
                // No start found, or the pass went past it: the start was not real.
                _ => self.drop_front(),
            }
        }
    }
}

impl Drop for Speculator {
    fn drop(&mut self) {
        self.cancel.store(u64::MAX, Ordering::Relaxed);
        self.jobs = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn work(
    rx: mpsc::Receiver<Job>,
    tx: mpsc::Sender<Report>,
    cancel: &AtomicU64,
    (pool, inputs): (&Buffers, &Buffers),
    max_out: usize,
) {
    let (lo, hi) = made_up_windows();
    for job in rx {
        if job.id < cancel.load(Ordering::Relaxed) {
            continue;
        }
        let rel_from = job.from - job.base * 8;
        let rel_end = (job.data.len() as u64 * 8).min(rel_from + MAX_SEARCH * 8);
        let mut search = rel_from;
        let mut chunk = None;
        let mut tries = 0;
        while let Some(at) = find_dynamic_block(&job.data, search, rel_end) {
            tries += 1;
            let buf = pool.lock().ok().and_then(|mut p| p.pop());
            match decode(&job, at, (&lo, &hi), buf, max_out, cancel) {
                Ok(c) => {
                    chunk = Some(c);
                    break;
                }
                Err(Failure { buf, reached }) => {
                    if let (Some(buf), Ok(mut p)) = (buf, pool.lock()) {
                        p.push(buf);
                    }
                    // A false start that decoded far is most often a deflate stream stored
                    // inside this one (a compressed file in the archive): its other block
                    // starts up to where it broke down are false too.
                    search = (at + 1).max(reached.saturating_sub(64));
                }
            }
            if tries >= MAX_TRIES || job.id < cancel.load(Ordering::Relaxed) {
                break;
            }
        }
        tracing::trace!(id = job.id, tries, found = chunk.is_some(), "speculative job");
        if let Ok(mut p) = inputs.lock()
            && p.len() < 4
        {
            p.push(job.data);
        }
        if tx.send(Report { id: job.id, chunk }).is_err() {
            return;
        }
    }
}

/// A start that did not decode: the output buffer back, if there was one, and the relative bit
/// the decoding got to.
struct Failure {
    buf: Option<Vec<u8>>,
    reached: u64,
}

/// Decode a chunk from relative bit `at` of `job.data`.
fn decode(
    job: &Job,
    at: u64,
    (lo, hi): (&[u8], &[u8]),
    buf: Option<Vec<u8>>,
    max_out: usize,
    cancel: &AtomicU64,
) -> Result<Chunk, Failure> {
    let data = &job.data;
    let (first, bits) = if at.is_multiple_of(8) { (at / 8, 0) } else { (at / 8 + 1, (8 - at % 8) as u8) };
    let first = first as usize;
    let prev_byte = if bits > 0 { data[first - 1] } else { 0 };
    let start = Place { out: 0, input: job.base + first as u64, bits, prev_byte };
    let setup = |window: &[u8]| -> Option<RawInflate> {
        let mut d = RawInflate::new().ok()?;
        d.prime(bits, prev_byte).ok()?;
        d.set_dictionary(window).ok()?;
        Some(d)
    };
    if !trial(data, first, setup(lo)) {
        return Err(Failure { buf, reached: at });
    }
    let (Some(mut one), Some(two)) = (setup(lo), setup(hi)) else { return Err(Failure { buf, reached: at }) };
    let mut two = Some(two);
    let mut out = buf.unwrap_or_default();
    if out.len() < WINDOW_SIZE + max_out {
        out = big_buffer(WINDOW_SIZE + max_out);
    }
    let mut scratch = vec![0u8; STEP];
    let mut tracked = Vec::new();
    let mut boundaries: Vec<Place> = Vec::new();
    let (mut pos, mut len, mut clean_from) = (first, 0usize, 0usize);
    let fail = |out: Vec<u8>, pos: usize| Err(Failure { buf: Some(out), reached: pos as u64 * 8 });
    loop {
        let room = (max_out - len).min(if two.is_some() { STEP } else { max_out });
        if room == 0 {
            break;
        }
        let Ok(s) = one.inflate(&data[pos..], &mut out[WINDOW_SIZE + len..][..room], true) else {
            return fail(out, pos);
        };
        if let Some(d) = two.as_mut() {
            let Ok(t) = d.inflate(&data[pos..], &mut scratch[..room], true) else { return fail(out, pos) };
            if (t.consumed, t.produced, t.data_type) != (s.consumed, s.produced, s.data_type) {
                return fail(out, pos);
            }
            let (a, b) = (&out[WINDOW_SIZE + len..][..s.produced], &scratch[..s.produced]);
            for (k, (x, y)) in a.chunks(64).zip(b.chunks(64)).enumerate() {
                if x == y {
                    continue;
                }
                for (i, (&x, &y)) in x.iter().zip(y).enumerate() {
                    if x != y {
                        let at = len + k * 64 + i;
                        let Some(p) = position(x, y) else { return fail(out, pos) };
                        tracked.push((at as u32, p));
                        clean_from = at + 1;
                    }
                }
            }
        }
        pos += s.consumed;
        len += s.produced;
        if two.is_some() && len - clean_from >= WINDOW_SIZE {
            tracing::trace!(lockstep = len, tracked = tracked.len(), "window no longer reached");
            two = None;
        }
        if s.stream_end {
            break;
        }
        if s.at_block_boundary() {
            let bits = s.unused_bits();
            let prev_byte = if bits > 0 { data[pos - 1] } else { 0 };
            let b = Place { out: len as u64, input: job.base + pos as u64, bits, prev_byte };
            boundaries.push(b);
            if b.bit() >= job.stop || job.id < cancel.load(Ordering::Relaxed) {
                break;
            }
        }
        if s.consumed == 0 && s.produced == 0 {
            break;
        }
    }
    let Some(last) = boundaries.last() else { return fail(out, pos) };
    let len = last.out as usize;
    if len == 0 {
        return fail(out, pos);
    }
    tracked.retain(|&(o, _)| (o as usize) < len);
    Ok(Chunk { start, out, len, tracked, boundaries })
}

/// A zeroed buffer of `len` bytes for tens of MB of output. The kernel is asked to back it with
/// huge pages where it can: first touching the buffer then takes a fault per 2 MiB, not per
/// 4 KiB, which on a virtual machine is a fair part of what the second core spends.
pub(crate) fn big_buffer(len: usize) -> Vec<u8> {
    let buf = vec![0u8; len];
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = buf.as_ptr() as usize;
        let aligned = start.next_multiple_of(HUGE);
        let end = (start + len) / HUGE * HUGE;
        if end > aligned {
            // SAFETY: [aligned, end) lies inside the buffer's own allocation; MADV_HUGEPAGE
            // only changes how the kernel backs those pages, not their contents or mapping.
            unsafe {
                libc::madvise(aligned as *mut libc::c_void, end - aligned, libc::MADV_HUGEPAGE);
            }
        }
    }
    buf
}

/// Whether decoding from a candidate start gets through its first block and reads the next
/// block's header without error (a false start seldom does). A false block may decode garbage
/// for long before it ends, so the output is capped.
fn trial(data: &[u8], first: usize, decoder: Option<RawInflate>) -> bool {
    const CAP: usize = 4 << 20;
    let Some(mut d) = decoder else { return false };
    let mut scratch = vec![0u8; 64 << 10];
    let (mut pos, mut made) = (first, 0usize);
    while made < CAP {
        let Ok(s) = d.inflate(&data[pos..], &mut scratch, true) else { return false };
        pos += s.consumed;
        made += s.produced;
        if s.stream_end {
            return true;
        }
        if s.at_block_boundary() {
            // One byte more makes the decoder read the next block's header.
            return d.inflate(&data[pos..], &mut scratch[..1], false).is_ok();
        }
        if s.consumed == 0 && s.produced == 0 {
            return false;
        }
    }
    false
}

/// A reader of bits, least significant first, as deflate packs them.
struct Bits<'a> {
    data: &'a [u8],
    bit: u64,
}

impl Bits<'_> {
    /// The next 57 bits or more (zeros past the end).
    fn peek(&self) -> u64 {
        let byte = (self.bit / 8) as usize;
        let mut w = [0u8; 8];
        if let Some(src) = self.data.get(byte..byte + 8) {
            w.copy_from_slice(src);
        } else if let Some(rest) = self.data.get(byte..) {
            w[..rest.len()].copy_from_slice(rest);
        }
        u64::from_le_bytes(w) >> (self.bit % 8)
    }

    fn take(&mut self, n: u32) -> Option<u32> {
        if self.bit + u64::from(n) > self.data.len() as u64 * 8 {
            return None;
        }
        let v = (self.peek() & ((1 << n) - 1)) as u32;
        self.bit += u64::from(n);
        Some(v)
    }
}

/// The first bit in `[from, to)` of `data` where a non-final dynamic-Huffman block header starts
/// that zlib would accept: valid counts, a complete code-length code, code lengths that decode
/// without overrun, an end-of-block code, and literal/length and distance codes that zlib
/// would build.
pub(crate) fn find_dynamic_block(data: &[u8], from: u64, to: u64) -> Option<u64> {
    let end = to.min(data.len() as u64 * 8);
    let mut byte = (from / 8) as usize;
    let mut shift = from % 8;
    while (byte as u64) * 8 < end {
        let word = match data.get(byte..byte + 16) {
            Some(w) => u128::from_le_bytes(w.try_into().unwrap_or([0; 16])),
            None => {
                let mut w = [0u8; 16];
                let rest = data.get(byte..).unwrap_or(&[]);
                w[..rest.len()].copy_from_slice(rest);
                u128::from_le_bytes(w)
            }
        };
        for s in shift..8 {
            let bit = byte as u64 * 8 + s;
            if bit < end && quick_header_ok(word >> s) && dynamic_header_ok(data, bit) {
                return Some(bit);
            }
        }
        shift = 0;
        byte += 1;
    }
    None
}

/// The cheap part of the header check on the next 120 bits: BFINAL 0, BTYPE 2, HLIT and HDIST
/// in range, and a complete code-length code.
fn quick_header_ok(v: u128) -> bool {
    let t = tables();
    if !t.head[(v as usize) & 0x1fff] {
        return false;
    }
    let hclen = ((v >> 13) & 15) as u32 + 4;
    // Kraft sum of the code-length code, in 128ths, twelve bits (four lengths) at a time.
    let lengths = ((v >> 17) as u64) & ((1 << (3 * hclen)) - 1);
    let sum: u32 = (0..5).map(|i| u32::from(t.kraft[((lengths >> (12 * i)) & 0xfff) as usize])).sum();
    sum == 128
}

struct Tables {
    /// The first 13 bits of a header: BFINAL 0, BTYPE 2, HLIT <= 29, HDIST <= 29.
    head: Vec<bool>,
    /// Four 3-bit code lengths: the sum of `128 >> length` over those not 0.
    kraft: Vec<u16>,
}

fn tables() -> &'static Tables {
    static TABLES: std::sync::OnceLock<Tables> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| Tables {
        head: (0..1u32 << 13)
            .map(|v| v & 0b111 == 0b100 && (v >> 3) & 31 <= 29 && (v >> 8) & 31 <= 29)
            .collect(),
        kraft: (0..1u32 << 12)
            .map(|v| (0..4).map(|i| (v >> (3 * i)) & 7).filter(|&l| l > 0).map(|l| 128u16 >> l).sum())
            .collect(),
    })
}

fn dynamic_header_ok(data: &[u8], bit: u64) -> bool {
    dynamic_header(data, bit).is_some()
}

/// Order of the code-length code lengths in the header (RFC 1951, 3.2.7).
const CL_ORDER: [usize; 19] = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];

/// Kraft sum check: `Some(true)` complete, `Some(false)` incomplete, None over-subscribed.
fn complete(lengths: &[u8], max_bits: u32) -> Option<bool> {
    let mut left: i64 = 1;
    let mut count = [0i64; 16];
    for &l in lengths {
        count[l as usize] += 1;
    }
    for c in count.iter().take(max_bits as usize + 1).skip(1) {
        left = left * 2 - c;
        if left < 0 {
            return None;
        }
    }
    Some(left == 0)
}

/// The header's literal/length and distance code lengths, if it is one zlib accepts.
fn dynamic_header(data: &[u8], bit: u64) -> Option<()> {
    let mut r = Bits { data, bit };
    if r.take(3)? != 0b100 {
        return None;
    }
    let hlit = r.take(5)? as usize + 257;
    let hdist = r.take(5)? as usize + 1;
    let hclen = r.take(4)? as usize + 4;
    if hlit > 286 || hdist > 30 {
        return None;
    }
    let mut cl = [0u8; 19];
    for &i in &CL_ORDER[..hclen] {
        cl[i] = r.take(3)? as u8;
    }
    if !complete(&cl, 7)? {
        return None;
    }
    // Canonical code for the code-length alphabet, as a table on the next 7 bits.
    let mut count = [0u32; 8];
    for &l in &cl {
        count[l as usize] += 1;
    }
    count[0] = 0;
    let mut next = [0u32; 8];
    let mut code = 0;
    for len in 1..8 {
        code = (code + count[len - 1]) << 1;
        next[len] = code;
    }
    let mut table = [(0u8, 0u8); 128];
    for (sym, &l) in cl.iter().enumerate() {
        if l == 0 {
            continue;
        }
        let c = next[l as usize];
        next[l as usize] += 1;
        let reversed = (c.reverse_bits() >> (32 - u32::from(l))) as usize;
        for fill in 0..1usize << (7 - l) {
            table[reversed | (fill << l)] = (sym as u8, l);
        }
    }
    let mut lengths = vec![0u8; hlit + hdist];
    let mut i = 0;
    while i < lengths.len() {
        let (sym, l) = table[(r.peek() & 127) as usize];
        r.take(u32::from(l))?;
        let sym = usize::from(sym);
        match sym {
            0..=15 => {
                lengths[i] = sym as u8;
                i += 1;
            }
            16 => {
                let prev = *lengths.get(i.checked_sub(1)?)?;
                let n = 3 + r.take(2)? as usize;
                lengths.get_mut(i..i + n)?.fill(prev);
                i += n;
            }
            17 => {
                let n = 3 + r.take(3)? as usize;
                lengths.get_mut(i..i + n)?.fill(0);
                i += n;
            }
            _ => {
                let n = 11 + r.take(7)? as usize;
                lengths.get_mut(i..i + n)?.fill(0);
                i += n;
            }
        }
    }
    let (lit, dist) = lengths.split_at(hlit);
    if lit[256] == 0 {
        return None;
    }
    // zlib: an incomplete code is accepted only when it is a single code of one bit.
    let single = |l: &[u8]| l.iter().filter(|&&x| x > 0).count() == 1 && l.iter().all(|&x| x <= 1);
    if !complete(lit, 15)? && !single(lit) {
        return None;
    }
    let no_dist = dist.iter().all(|&x| x == 0);
    if !no_dist && !complete(dist, 15)? && !single(dist) {
        return None;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gzip::IndexBuilder;
    use std::io::Write;

    #[test]
    fn made_up_windows_name_every_position() {
        let (lo, hi) = made_up_windows();
        for p in 0..WINDOW_SIZE {
            assert_ne!(lo[p], hi[p]);
            assert_eq!(position(lo[p], hi[p]), Some(p as u16));
        }
    }

    fn sample(len: usize, seed: u32) -> Vec<u8> {
        let mut data = Vec::with_capacity(len);
        let mut x = seed;
        while data.len() < len {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let word =
                ["alpha ", "beta ", "gamma ", "delta\n", "\0\0\0\0", "epsilon "][(x >> 16) as usize % 6];
            data.extend_from_slice(word.as_bytes());
            if x.is_multiple_of(7) {
                data.extend_from_slice(format!("{} ", x % 100_000).as_bytes());
            }
        }
        data.truncate(len);
        data
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(6));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn finds_real_block_starts_and_decodes_from_them() {
        let data = sample(3 << 20, 7);
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        };
        // The exact pass's boundaries: every checkpoint of a tiny span.
        let index = IndexBuilder::new().span(1).build(&gz[..]).unwrap();
        let real: Vec<u64> =
            index.checkpoints.iter().skip(1).map(|c| c.input * 8 - u64::from(c.bits)).collect();
        assert!(real.len() > 5);
        let from = real[1] - 20_000;
        let found = find_dynamic_block(&gz, from, gz.len() as u64 * 8).unwrap();
        let first_real = *real.iter().find(|&&b| b >= from).unwrap();
        assert!(found <= first_real);
        let (lo, hi) = made_up_windows();
        let job = Job { id: 0, data: gz.clone(), base: 0, from: first_real, stop: first_real + 400_000 * 8 };
        let mut chunk =
            decode(&job, first_real, (&lo, &hi), None, 64 << 20, &AtomicU64::new(0)).ok().unwrap();
        let cp = index.checkpoints.iter().find(|c| c.input * 8 - u64::from(c.bits) == first_real).unwrap();
        assert!(!chunk.tracked.is_empty(), "the start of a chunk copies from its window");
        let at = cp.out as usize;
        let window = &data[at - WINDOW_SIZE..at];
        assert!(chunk.resolve(window));
        assert_eq!(chunk.data(), &data[at..at + chunk.len]);
        let ends: Vec<u64> = chunk.boundaries.iter().map(Place::bit).collect();
        assert!(ends.iter().all(|b| real.contains(b)));
    }

    #[test]
    fn header_check_accepts_what_encoders_write_and_little_else() {
        for seed in 0..4 {
            let raw = raw_deflate(&sample(200_000, seed));
            assert!(dynamic_header_ok(&raw, 0), "seed {seed}");
        }
        // Noise: few positions pass.
        let mut x = 1u32;
        let noise: Vec<u8> = (0..100_000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (x >> 16) as u8
            })
            .collect();
        let mut passed = 0;
        let mut bit = 0;
        while let Some(b) = find_dynamic_block(&noise, bit, noise.len() as u64 * 8) {
            passed += 1;
            bit = b + 1;
        }
        assert!(passed < 10, "{passed} false starts in 800,000 bits of noise");
    }
}
