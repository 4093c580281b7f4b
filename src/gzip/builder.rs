//! One streaming pass over a gzip stream: inflate, check, checkpoint, and hand the bytes on.
//!
//! The pass works in *rounds* of a few hundred KiB of output. Within a round it records every
//! deflate block boundary (cheap: two offsets and a bit count). At the end of a round it gives
//! the round's bytes to the [`Sink`], which may request checkpoints at uncompressed offsets it
//! has just learned about (even ones inside the round it was just given), and only then decides
//! which boundaries become checkpoints: by the spacing policy, and for each request the last
//! boundary at or before it. The output buffer keeps 32 KiB of history before the round, and the
//! last boundary of a round keeps a copy of its window, so any boundary a request can resolve to
//! still has its window at hand. Windows are made sparse and compressed on a second thread while
//! decoding goes on (`window.rs`): for that the pass keeps the compressed bytes from the oldest
//! boundary that may still become a checkpoint, and each checkpoint waits until 32 KiB of output
//! past it have been decoded.

use super::header::{self, HeaderError};
use super::index::{Checkpoint, Index, MemberEnd, WINDOW_SIZE};
use super::inflate::RawInflate;
use super::speculate::{Action, Chunk, Place, Speculator};
use super::window::{self, Job, Packed};
use super::{DEFAULT_SPAN, GzipError};
use std::io::{ErrorKind, Read};
use std::sync::mpsc;

/// The chunk size for [`IndexBuilder::speculate`] that balances the search for a block start
/// and the memory held against the work handed to the second core.
pub const DEFAULT_SPECULATE_CHUNK: u64 = 8 << 20;
/// A speculative chunk gives at most this much output, however well the stream compresses.
const SPECULATE_MAX_OUT: usize = 64 << 20;

/// Output produced per round before the sink sees it.
const ROUND: usize = 512 * 1024;
/// Compressed bytes read per `read` call.
const INPUT_CHUNK: usize = 256 * 1024;
/// Compressed bytes given to the sparse-window analysis: 32 KiB of output never needs more
/// (15-bit literal codes at worst) unless the stream is pathological.
const ANALYSIS_INPUT: usize = 96 * 1024;
/// At most this much compressed input is kept for the analysis of a checkpoint not yet made;
/// past it (a single huge deflate block) that checkpoint keeps its whole window.
const MAX_RETAINED: u64 = 16 << 20;
/// A member's final block is decoded a second time to find where its data ends (see
/// [`MemberEnd`]) only up to this much output; past it the member's end is left unknown.
const MAX_TAIL_OUTPUT: u64 = 8 << 20;

/// Receives the uncompressed stream, in order, during the index pass.
pub trait Sink {
    /// `bytes` are the uncompressed bytes at offset `at`. Checkpoints may be requested through
    /// `requests` for any offset at or after `at`.
    fn data(
        &mut self,
        at: u64,
        bytes: &[u8],
        requests: &mut Requests,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;

    /// Called once, before the first [`Sink::data`], by a pass that offers each round's buffer
    /// to [`Sink::take_round`] right after giving the round to [`Sink::data`]. A sink that
    /// would copy the bytes to another thread can then take the buffer instead.
    fn rounds_offered(&mut self) {}

    /// The buffer that held the round just given to [`Sink::data`]: the round is
    /// `buf[round]`. The sink may keep it by putting in its place a buffer of the same length
    /// whose first `history` bytes are `buf[round.end - history..round.end]` (the pass goes
    /// on in it), and returns whether it did.
    fn take_round(
        &mut self,
        buf: &mut Vec<u8>,
        round: std::ops::Range<usize>,
        history: usize,
    ) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
        let _ = (buf, round, history);
        Ok(false)
    }

    /// Whether [`Sink::take_round`] may take buffers. A sink that never does may be given
    /// rounds of any length (a whole chunk decoded on another core, without a copy).
    fn takes_rounds(&self) -> bool {
        false
    }
}

/// A sink that drops the data.
pub struct NullSink;

impl Sink for NullSink {
    fn data(
        &mut self,
        _: u64,
        _: &[u8],
        _: &mut Requests,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Ok(())
    }
}

/// Checkpoint requests from a [`Sink`]: uncompressed offsets that should be reachable quickly.
#[derive(Debug, Default)]
pub struct Requests {
    /// Offsets, each with its own slack (`None`: the builder's).
    offsets: Vec<(u64, Option<u64>)>,
}

impl Requests {
    /// Ask that decoding for `offset` start no further back than the builder's request slack:
    /// if the last checkpoint at or before `offset` is further away than that, the last block
    /// boundary at or before `offset` becomes a checkpoint.
    pub fn request(&mut self, offset: u64) {
        self.offsets.push((offset, None));
    }

    /// [`Requests::request`] with a slack of its own (for data read first, as a start-up
    /// trace says: worth a checkpoint closer to it than the rest).
    pub fn request_within(&mut self, offset: u64, slack: u64) {
        self.offsets.push((offset, Some(slack)));
    }

    /// The offsets requested since the last call (for the other engines that drive a
    /// [`Sink`]: the zstd frame pass).
    pub fn take(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.offsets).into_iter().map(|(o, _)| o).collect()
    }
}

/// What speculative decoding ([`IndexBuilder::speculate`]) did in one pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Speculation {
    /// Chunks decoded on the second core and taken into the pass.
    pub taken: u64,
    /// Chunks whose work was thrown away (no block start found, a false start, or output
    /// that did not fit).
    pub wasted: u64,
}

/// Builds an [`Index`] from a gzip stream in one pass.
#[derive(Debug, Clone)]
pub struct IndexBuilder {
    span: u64,
    slack: Option<u64>,
    members: bool,
    /// Compressed bytes per speculative chunk; 0: none.
    speculate: u64,
}

impl Default for IndexBuilder {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Boundary {
    out: u64,
    input: u64,
    bits: u8,
    /// Byte `input - 1` when `bits > 0`.
    prev_byte: u8,
    member_start: u64,
    member: u64,
}

/// The last boundary of an earlier round, with its window saved.
struct Prev {
    boundary: Boundary,
    window: Vec<u8>,
    /// The 32 KiB of output after it, when they will no longer be in the output buffer (so
    /// that a checkpoint a later request makes of it is analysed as one made in its round).
    follow: Vec<u8>,
    /// Its compressed bytes are still kept for the sparse-window analysis.
    analysable: bool,
}

/// A checkpoint whose window is not yet packed.
struct Waiting {
    index: usize,
    boundary: Boundary,
    window: Vec<u8>,
    /// [`Prev::follow`], for a checkpoint made of an earlier round's boundary.
    follow: Vec<u8>,
    analysable: bool,
}

impl Boundary {
    /// Where the compressed bytes of the block starting here begin.
    fn first_byte(&self) -> u64 {
        self.input - u64::from(self.bits > 0)
    }
}

impl IndexBuilder {
    pub fn new() -> Self {
        IndexBuilder { span: DEFAULT_SPAN, slack: None, members: false, speculate: 0 }
    }

    /// Take a checkpoint at the first block boundary at least `span` uncompressed bytes after
    /// the previous one. `u64::MAX` turns the spacing policy off (requests only).
    pub fn span(mut self, span: u64) -> Self {
        self.span = span.max(1);
        self
    }

    /// How far before a requested offset the nearest checkpoint may be before a new one is
    /// taken for it. Defaults to the span.
    pub fn request_slack(mut self, slack: u64) -> Self {
        self.slack = Some(slack);
        self
    }

    /// Make every gzip member's start a checkpoint (its window is empty, so it costs only its
    /// record), so that no decode from a checkpoint needs to cross into the next member, and
    /// record where each member's data ends ([`Index::member_ends`]). Decoders that stop at the
    /// end of a member (Nydus before 2.3) need both.
    pub fn member_checkpoints(mut self, on: bool) -> Self {
        self.members = on;
        self
    }

    /// Decode on a second core too: a worker decodes chunks of the stream ahead of the pass,
    /// every other chunk of about `chunk` compressed bytes, and the pass takes each one in when
    /// it gets there (`speculate.rs`). The index is the same as without. 0 turns it off (the
    /// default); [`DEFAULT_SPECULATE_CHUNK`] suits files of tens of MB and more.
    pub fn speculate(mut self, chunk: u64) -> Self {
        self.speculate = chunk;
        self
    }

    /// Index a stream, discarding its data.
    pub fn build<R: Read>(&self, reader: R) -> Result<Index, GzipError> {
        self.build_with(reader, &mut NullSink)
    }

    /// Index a stream, handing its data to `sink`.
    pub fn build_with<R: Read, S: Sink + ?Sized>(&self, reader: R, sink: &mut S) -> Result<Index, GzipError> {
        self.build_counted(reader, sink).map(|(index, _)| index)
    }

    /// [`IndexBuilder::build_with`], also saying what speculative decoding did.
    pub fn build_counted<R: Read, S: Sink + ?Sized>(
        &self,
        reader: R,
        sink: &mut S,
    ) -> Result<(Index, Speculation), GzipError> {
        std::thread::scope(|scope| {
            let (tx, rx) = mpsc::channel::<Job>();
            let packer = std::thread::Builder::new()
                .name("gz-windows".into())
                .spawn_scoped(scope, move || {
                    yield_to_inflate();
                    rx.into_iter().map(window::pack).collect::<Vec<_>>()
                })
                .map_err(|e| GzipError::Window {
                    checkpoint: 0,
                    message: format!("no window packer: {e}"),
                })?;
            let mut pass = Pass::new(reader, self, tx)?;
            let result = pass.run(sink);
            drop(pass.windows.take());
            let speculation = pass
                .spec
                .take()
                .map(|s| Speculation { taken: s.taken, wasted: s.wasted })
                .unwrap_or_default();
            let packed = packer
                .join()
                .map_err(|_| GzipError::Window { checkpoint: 0, message: "window packer panicked".into() })?;
            let mut index = result?;
            let mut sparse = 0;
            for Packed { index: i, window_len, frame, sparse: s } in packed {
                let c = &mut index.checkpoints[i];
                c.window_len = window_len;
                c.window = frame.map_err(|e| GzipError::Window { checkpoint: i, message: e.to_string() })?;
                sparse += usize::from(s);
            }
            tracing::debug!(checkpoints = index.checkpoints.len(), sparse, "windows packed");
            Ok((index, speculation))
        })
    }
}

/// Helper threads of the index pass yield to the inflating thread when the cores are
/// oversubscribed (they only need to keep up on the whole; their queues are bounded).
fn yield_to_inflate() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority on this thread's own id (gettid) changes only its nice value; no
    // memory is passed. Failure (no permission) leaves the priority as it was.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 5);
    }
}

/// Buffered compressed input that knows its offset.
struct Input<R> {
    reader: R,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    /// Compressed offset of `buf[0]`.
    base: u64,
    eof: bool,
    /// Bytes from this offset on are kept when the buffer is compacted.
    keep_from: u64,
}

impl<R: Read> Input<R> {
    fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    fn avail(&self) -> &[u8] {
        &self.buf[self.pos..self.len]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
    }

    /// Read more; false at end of input.
    fn more(&mut self) -> Result<bool, GzipError> {
        if self.eof {
            return Ok(false);
        }
        let keep = (self.keep_from.saturating_sub(self.base) as usize).min(self.pos);
        if keep > 0 {
            self.buf.copy_within(keep..self.len, 0);
            self.base += keep as u64;
            self.len -= keep;
            self.pos -= keep;
        }
        if self.buf.len() - self.len < INPUT_CHUNK / 2 {
            let grown = (self.buf.len() * 2).max(INPUT_CHUNK);
            self.buf.resize(grown, 0);
        }
        loop {
            match self.reader.read(&mut self.buf[self.len..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.len += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(GzipError::Io { offset: self.base + self.len as u64, source: e });
                }
            }
        }
    }

    /// The kept bytes `[from, from + max)` (fewer at the end of what has been read), or None if
    /// `from` is no longer kept.
    fn kept(&self, from: u64, max: usize) -> Option<&[u8]> {
        let start = usize::try_from(from.checked_sub(self.base)?).ok()?;
        (start <= self.len).then(|| &self.buf[start..self.len.min(start + max)])
    }

    /// Move to `offset`, which must be within what has been read and not before the buffer.
    fn seek(&mut self, offset: u64) {
        let at = offset.saturating_sub(self.base).min(self.len as u64);
        self.pos = at as usize;
    }

    /// Make at least `n` bytes available; false if the input ends first.
    fn ensure(&mut self, n: usize) -> Result<bool, GzipError> {
        while self.len - self.pos < n {
            if !self.more()? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

struct Pass<R> {
    input: Input<R>,
    inflate: RawInflate,
    span: u64,
    slack: u64,
    /// [`IndexBuilder::member_checkpoints`].
    by_member: bool,
    member_ends: Vec<MemberEnd>,
    windows: Option<mpsc::Sender<Job>>,
    /// Checkpoints whose windows wait for 32 KiB of output after them.
    waiting: Vec<Waiting>,
    /// Output buffer: 32 KiB of history, then the current round.
    out: Vec<u8>,
    out_len: usize,
    /// Uncompressed offset of `out[0]`.
    out_base: u64,
    /// Index in `out` where the current round starts.
    round_start: usize,
    total_out: u64,
    boundaries: Vec<Boundary>,
    prev: Option<Prev>,
    pending: Vec<(u64, Option<u64>)>,
    requests: Requests,
    checkpoints: Vec<Checkpoint>,
    members: u64,
    tail: [u8; 8],
    spec: Option<Speculator>,
}

impl<R: Read> Pass<R> {
    fn new(reader: R, builder: &IndexBuilder, windows: mpsc::Sender<Job>) -> Result<Self, GzipError> {
        let inflate =
            RawInflate::new().map_err(|e| GzipError::Deflate { member: 0, offset: 0, message: e.message })?;
        Ok(Pass {
            input: Input {
                reader,
                // Speculation reads two chunks and more ahead: one buffer, sized once.
                buf: match builder.speculate {
                    0 => vec![0; INPUT_CHUNK],
                    chunk => super::speculate::big_buffer(
                        usize::try_from(4 * chunk).unwrap_or(usize::MAX).max(INPUT_CHUNK),
                    ),
                },
                pos: 0,
                len: 0,
                base: 0,
                eof: false,
                keep_from: 0,
            },
            inflate,
            span: builder.span,
            slack: builder.slack.unwrap_or(builder.span),
            by_member: builder.members,
            member_ends: Vec::new(),
            windows: Some(windows),
            waiting: Vec::new(),
            out: vec![0; WINDOW_SIZE + ROUND],
            out_len: 0,
            out_base: 0,
            round_start: 0,
            total_out: 0,
            boundaries: Vec::new(),
            prev: None,
            pending: Vec::new(),
            requests: Requests::default(),
            checkpoints: Vec::new(),
            members: 0,
            tail: [0; 8],
            spec: match builder.speculate {
                0 => None,
                chunk => Speculator::new(chunk, SPECULATE_MAX_OUT)
                    .inspect_err(|e| tracing::debug!(error = %e, "no speculative decoding"))
                    .ok(),
            },
        })
    }

    fn run<S: Sink + ?Sized>(&mut self, sink: &mut S) -> Result<Index, GzipError> {
        sink.rounds_offered();
        loop {
            if !self.input.ensure(1)? {
                if self.members == 0 {
                    return Err(GzipError::Empty);
                }
                break;
            }
            if !self.header()? {
                break;
            }
            self.member(sink)?;
            self.members += 1;
        }
        self.end_round(sink, true)?;
        if let Some(spec) = &self.spec {
            tracing::debug!(taken = spec.taken, wasted = spec.wasted, waited = ?spec.waited, "speculative chunks");
        }
        Ok(Index {
            compressed_size: self.input.offset(),
            uncompressed_size: self.total_out,
            span: self.span,
            members: self.members,
            tail: self.tail,
            checkpoints: std::mem::take(&mut self.checkpoints),
            member_ends: std::mem::take(&mut self.member_ends),
        })
    }

    /// Parse a member header. False when what follows the last member is zero padding.
    fn header(&mut self) -> Result<bool, GzipError> {
        let offset = self.input.offset();
        loop {
            match header::parse(self.input.avail()) {
                Ok(Some(n)) => {
                    self.input.consume(n);
                    return Ok(true);
                }
                Ok(None) => {
                    if !self.input.more()? {
                        return Err(GzipError::Truncated { member: self.members, offset });
                    }
                }
                Err(HeaderError::BadMagic) if self.members > 0 => {
                    return self.trailing_zeros(offset);
                }
                Err(reason) => {
                    return Err(GzipError::Header { member: self.members, offset, reason });
                }
            }
        }
    }

    /// After the last member only zero bytes are accepted (tape-block padding, which gzip
    /// itself ignores); anything else is garbage.
    fn trailing_zeros(&mut self, offset: u64) -> Result<bool, GzipError> {
        loop {
            if self.input.avail().iter().any(|&b| b != 0) {
                return Err(GzipError::TrailingGarbage { offset });
            }
            let n = self.input.avail().len();
            self.input.consume(n);
            if !self.input.more()? {
                tracing::warn!(offset, "ignoring zero padding after the last gzip member");
                return Ok(false);
            }
        }
    }

    fn member<S: Sink + ?Sized>(&mut self, sink: &mut S) -> Result<(), GzipError> {
        let member = self.members;
        self.inflate.reset().map_err(|e| GzipError::Deflate {
            member,
            offset: self.input.offset(),
            message: e.message,
        })?;
        let member_start = self.total_out;
        self.boundary(Boundary {
            out: member_start,
            input: self.input.offset(),
            bits: 0,
            prev_byte: 0,
            member_start,
            member,
        });
        let mut crc = crc32fast::Hasher::new();
        let mut stalls = 0;
        loop {
            if self.out_len == self.out.len() {
                self.end_round(sink, false)?;
                self.feed_speculator()?;
            }
            if self.input.avail().is_empty() && !self.input.more()? {
                return Err(GzipError::Truncated { member, offset: self.input.offset() });
            }
            let step =
                self.inflate.inflate(self.input.avail(), &mut self.out[self.out_len..], true).map_err(
                    |e| GzipError::Deflate { member, offset: self.input.offset(), message: e.message },
                )?;
            self.input.consume(step.consumed);
            let new = &self.out[self.out_len..self.out_len + step.produced];
            crc.update(new);
            self.out_len += step.produced;
            self.total_out += step.produced as u64;
            if step.stream_end {
                if self.by_member && self.total_out > member_start {
                    // Unknown: every byte up to the end of the deflate data, which ends it.
                    let end = self.member_end(member).unwrap_or(MemberEnd {
                        out: self.total_out,
                        input: self.input.offset(),
                        clean: false,
                    });
                    self.member_ends.push(end);
                }
                break;
            }
            if step.at_block_boundary() {
                let bits = step.unused_bits();
                let input = self.input.offset();
                // The byte just consumed is still in the buffer.
                let prev_byte = match (bits, input.checked_sub(1)) {
                    (1.., Some(at)) => self.input.kept(at, 1).and_then(|b| b.first().copied()).unwrap_or(0),
                    _ => 0,
                };
                self.boundary(Boundary { out: self.total_out, input, bits, prev_byte, member_start, member });
                if let Some(spec) = self.spec.as_mut()
                    && let Action::Take(chunk) = spec.at(input * 8 - u64::from(bits))
                {
                    self.take(chunk, &mut crc, member_start, member, sink)?;
                }
            }
            if step.consumed == 0 && step.produced == 0 {
                stalls += 1;
                if stalls > 3 {
                    return Err(GzipError::Stalled { offset: self.input.offset() });
                }
            } else {
                stalls = 0;
            }
        }
        // Trailer: CRC32 and ISIZE, little-endian.
        let offset = self.input.offset();
        if !self.input.ensure(8)? {
            return Err(GzipError::Truncated { member, offset: offset + self.input.avail().len() as u64 });
        }
        let t = &self.input.avail()[..8];
        let stored_crc = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
        let stored_len = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
        self.tail.copy_from_slice(t);
        self.input.consume(8);
        let computed = crc.finalize();
        if stored_crc != computed {
            return Err(GzipError::Crc { member, offset, stored: stored_crc, computed });
        }
        let len = (self.total_out - member_start) as u32;
        if stored_len != len {
            return Err(GzipError::Isize { member, offset, stored: stored_len, computed: len });
        }
        Ok(())
    }

    /// Where the data of the member that just ended ends, for a decoder that is given exactly
    /// the compressed bytes up to some offset. Its final block is decoded again, from the last
    /// boundary before the member's last byte, to all but that byte: the input this consumes
    /// holds every bit of the code that yields the last byte. Then one more byte is asked for
    /// with no more input, which tells whether the bits already read also end the stream
    /// (a stored final block, or an end-of-block code that fits in the last byte). None when
    /// the block's input or window is no longer at hand, or the block is too large to redo.
    fn member_end(&self, member: u64) -> Option<MemberEnd> {
        let end = self.total_out;
        let before_end = |b: &&Boundary| b.member == member && b.out < end;
        let (b, window) = match self.boundaries.iter().rev().find(before_end) {
            Some(b) => (*b, self.window_in_buffer(b)),
            None => match &self.prev {
                Some(p) if before_end(&&p.boundary) => (p.boundary, p.window.as_slice()),
                _ => return None,
            },
        };
        let want = usize::try_from(end - b.out).ok().filter(|&w| w as u64 <= MAX_TAIL_OUTPUT)?;
        let stop = self.input.offset();
        let data = self.input.kept(b.input, usize::try_from(stop.checked_sub(b.input)?).ok()?)?;
        let mut inflate = RawInflate::new().ok()?;
        inflate.prime(b.bits, b.prev_byte).ok()?;
        inflate.set_dictionary(window).ok()?;
        let mut out = vec![0u8; want];
        let (mut used, mut made) = (0, 0);
        loop {
            let step = inflate.inflate(&data[used..], &mut out[made..want - 1], false).ok()?;
            used += step.consumed;
            made += step.produced;
            if step.stream_end || made > want - 1 {
                return None;
            }
            if made == want - 1 || (step.consumed == 0 && step.produced == 0) {
                break;
            }
        }
        if made != want - 1 {
            return None;
        }
        let last = inflate.inflate(&[], &mut out[want - 1..], false).ok()?;
        if last.produced != 1 {
            return None;
        }
        Some(MemberEnd { out: end, input: b.input + used as u64, clean: !last.stream_end })
    }

    /// Read ahead and hand the speculative worker its next chunk, when one is due.
    fn feed_speculator(&mut self) -> Result<(), GzipError> {
        let Some(want) = self.spec.as_ref().and_then(|s| s.wanted(self.input.offset())) else {
            return Ok(());
        };
        let want = usize::try_from(want).unwrap_or(usize::MAX);
        self.input.ensure(want)?;
        let now = self.input.offset();
        if let (Some(spec), Some(data)) = (self.spec.as_mut(), self.input.kept(now, want)) {
            spec.dispatch(now, data, self.input.eof);
        }
        Ok(())
    }

    /// Take in a speculatively decoded chunk that starts where the pass stands (a block
    /// boundary just recorded): fill in its copies of the window, hand its output on as if
    /// decoded here, and restart the decoder at its last boundary.
    fn take<S: Sink + ?Sized>(
        &mut self,
        mut chunk: Chunk,
        crc: &mut crc32fast::Hasher,
        member_start: u64,
        member: u64,
        sink: &mut S,
    ) -> Result<(), GzipError> {
        if chunk.start.input != self.input.offset()
            || !chunk.resolve(self.window_before(self.total_out, member_start))
        {
            tracing::debug!(offset = chunk.start.input, "speculative chunk does not fit; decoding it here");
            if let Some(spec) = &self.spec {
                spec.recycle(chunk.out);
            }
            return Ok(());
        }
        if !sink.takes_rounds() && self.total_out >= WINDOW_SIZE as u64 {
            return self.take_in_place(chunk, crc, member_start, member, sink);
        }
        let base = self.total_out;
        let (mut done, mut next) = (0usize, 0usize);
        while done < chunk.len {
            if self.out_len == self.out.len() {
                self.end_round(sink, false)?;
            }
            let n = (chunk.len - done).min(self.out.len() - self.out_len);
            let piece = &chunk.data()[done..done + n];
            self.out[self.out_len..self.out_len + n].copy_from_slice(piece);
            crc.update(piece);
            self.out_len += n;
            self.total_out += n as u64;
            done += n;
            while let Some(&p) = chunk.boundaries.get(next).filter(|p| p.out <= done as u64) {
                self.chunk_boundary(p, base, member_start, member);
                next += 1;
            }
        }
        self.chunk_done(chunk, member_start, member)
    }

    /// Record a boundary of a chunk whose output starts at `base`, the input now standing there.
    fn chunk_boundary(&mut self, p: Place, base: u64, member_start: u64, member: u64) {
        self.input.seek(p.input);
        let (input, bits, prev_byte) = (p.input, p.bits, p.prev_byte);
        self.boundary(Boundary { out: base + p.out, input, bits, prev_byte, member_start, member });
    }

    /// [`Pass::take`] for a sink that takes no rounds: the chunk's buffer becomes the output
    /// buffer for one round as long as the chunk, so its bytes are not copied.
    fn take_in_place<S: Sink + ?Sized>(
        &mut self,
        mut chunk: Chunk,
        crc: &mut crc32fast::Hasher,
        member_start: u64,
        member: u64,
        sink: &mut S,
    ) -> Result<(), GzipError> {
        // Hand on what is decoded so far: the output buffer then holds only history.
        self.end_round(sink, false)?;
        let keep = self.out_len;
        chunk.out[WINDOW_SIZE - keep..WINDOW_SIZE].copy_from_slice(&self.out[..keep]);
        let mut small = std::mem::replace(&mut self.out, std::mem::take(&mut chunk.out));
        let base = self.total_out;
        self.out_base = base - WINDOW_SIZE as u64;
        self.round_start = WINDOW_SIZE;
        self.out_len = WINDOW_SIZE + chunk.len;
        self.total_out += chunk.len as u64;
        crc.update(&self.out[WINDOW_SIZE..self.out_len]);
        for &p in &chunk.boundaries {
            self.chunk_boundary(p, base, member_start, member);
        }
        // A sink that takes no rounds takes none of this one either.
        let ended = self.end_round(sink, false);
        // Back to the pass's own buffer, with the history the round kept.
        let keep = self.out_len;
        small[..keep].copy_from_slice(&self.out[..keep]);
        chunk.out = std::mem::replace(&mut self.out, small);
        ended?;
        self.chunk_done(chunk, member_start, member)
    }

    /// Set the decoder up to go on from a taken chunk's last boundary, and give its buffer back.
    fn chunk_done(&mut self, chunk: Chunk, member_start: u64, member: u64) -> Result<(), GzipError> {
        let err = |e: super::inflate::InflateError| GzipError::Deflate {
            member,
            offset: self.input.offset(),
            message: e.message,
        };
        if let Some(last) = chunk.boundaries.last() {
            let window = self.window_before(self.total_out, member_start).to_vec();
            self.inflate.reset().map_err(err)?;
            self.inflate.prime(last.bits, last.prev_byte).map_err(err)?;
            self.inflate.set_dictionary(&window).map_err(err)?;
        }
        if let Some(spec) = &self.spec {
            spec.recycle(chunk.out);
        }
        Ok(())
    }

    fn boundary(&mut self, b: Boundary) {
        let same = |x: &Boundary| x.input == b.input && x.bits == b.bits;
        if self.boundaries.last().is_some_and(same) {
            return;
        }
        self.boundaries.push(b);
    }

    /// The window of a boundary of the current round, from the output buffer.
    fn window_in_buffer(&self, b: &Boundary) -> &[u8] {
        self.window_before(b.out, b.member_start)
    }

    /// The up to 32 KiB of output before uncompressed offset `out` (of the current round),
    /// within the member that starts at `member_start`.
    fn window_before(&self, out: u64, member_start: u64) -> &[u8] {
        let start = out.saturating_sub(WINDOW_SIZE as u64).max(member_start);
        let lo = (start - self.out_base) as usize;
        let hi = (out - self.out_base) as usize;
        &self.out[lo..hi]
    }

    fn end_round<S: Sink + ?Sized>(&mut self, sink: &mut S, last: bool) -> Result<(), GzipError> {
        let round_at = self.out_base + self.round_start as u64;
        if self.out_len > self.round_start {
            sink.data(round_at, &self.out[self.round_start..self.out_len], &mut self.requests)
                .map_err(|source| GzipError::Sink { offset: round_at, source })?;
        }
        self.pending.append(&mut self.requests.offsets);
        self.pending.sort_unstable();
        // Requests at the very end of what has been decoded may still resolve to a boundary that
        // the next round reports at the same offset, so they wait for it.
        let limit = if last { u64::MAX } else { self.total_out };
        self.resolve(limit);

        // The last boundary seen keeps its window for later rounds.
        if let Some(&b) = self.boundaries.last() {
            let window = self.window_in_buffer(&b).to_vec();
            let follow = if b.out + (WINDOW_SIZE as u64) <= self.total_out {
                let lo = (b.out - self.out_base) as usize;
                self.out[lo..lo + WINDOW_SIZE].to_vec()
            } else {
                Vec::new()
            };
            self.prev = Some(Prev { boundary: b, window, follow, analysable: true });
        }
        self.boundaries.clear();
        self.dispatch(last)?;
        self.retain();

        // Keep 32 KiB of history, start a new round: the sink may take the round's buffer
        // (instead of copying the round) and hand back another with the history in it.
        let keep = self.out_len.min(WINDOW_SIZE);
        let taken = self.out_len > self.round_start
            && sink
                .take_round(&mut self.out, self.round_start..self.out_len, keep)
                .map_err(|source| GzipError::Sink { offset: round_at, source })?;
        if !taken {
            self.out.copy_within(self.out_len - keep..self.out_len, 0);
        } else if self.out.len() != WINDOW_SIZE + ROUND {
            return Err(GzipError::Sink {
                offset: round_at,
                source: "the sink handed back a buffer of the wrong length".into(),
            });
        }
        self.out_base += (self.out_len - keep) as u64;
        self.out_len = keep;
        self.round_start = keep;
        Ok(())
    }

    /// Turn boundaries into checkpoints: by spacing, and for the requests below `limit`.
    fn resolve(&mut self, limit: u64) {
        let resolvable = self.pending.partition_point(|&(r, _)| r < limit);
        let requests: Vec<(u64, Option<u64>)> = self.pending.drain(..resolvable).collect();
        let mut ri = 0;
        let round = std::mem::take(&mut self.boundaries);
        let prev = self.prev.as_ref().map(|p| p.boundary);
        let candidates = prev.iter().map(|b| (b, true)).chain(round.iter().map(|b| (b, false)));
        for (k, (b, is_prev)) in candidates.enumerate() {
            let next_out = match round.get(k + 1 - usize::from(prev.is_some())) {
                Some(next) => next.out,
                None => limit,
            };
            let last_out = self.checkpoints.last().map(|c| c.out);
            let member_start = self.by_member && !is_prev && b.out == b.member_start && b.bits == 0;
            let mut take = match last_out {
                None => true,
                Some(last) => !is_prev && (b.out - last >= self.span || member_start),
            };
            while ri < requests.len() && requests[ri].0 < next_out {
                let (r, slack) = requests[ri];
                if r >= b.out && last_out.is_none_or(|last| r - last > slack.unwrap_or(self.slack)) {
                    take = true;
                }
                if r < b.out {
                    tracing::trace!(offset = r, "checkpoint request came too late; ignored");
                }
                ri += 1;
            }
            if take {
                self.checkpoint(b, is_prev);
            }
        }
        self.boundaries = round;
        // Requests before the first candidate or past the end have nothing to resolve to.
        if ri < requests.len() {
            tracing::trace!(count = requests.len() - ri, "unresolvable checkpoint requests");
        }
    }

    fn checkpoint(&mut self, b: &Boundary, is_prev: bool) {
        if let Some(last) = self.checkpoints.last() {
            // One checkpoint per output offset: a later boundary at the same offset (an empty
            // block) gains nothing. But a member's start replaces a checkpoint of an earlier
            // member at the same offset (after an empty member), so that no decode from it
            // crosses into the next member.
            let later_member =
                self.by_member && b.out == b.member_start && b.bits == 0 && b.member > last.member;
            if last.out > b.out || (last.out == b.out && !later_member) {
                return;
            }
            if last.out == b.out {
                let i = self.checkpoints.len() - 1;
                self.waiting.retain(|w| w.index != i);
                self.checkpoints.pop();
            }
        }
        let (window, follow, analysable) = if is_prev {
            match &self.prev {
                Some(p) => (p.window.clone(), p.follow.clone(), p.analysable),
                None => return,
            }
        } else {
            (self.window_in_buffer(b).to_vec(), Vec::new(), true)
        };
        let i = self.checkpoints.len();
        let window_len = window.len() as u32;
        if !window.is_empty() {
            self.waiting.push(Waiting { index: i, boundary: *b, window, follow, analysable });
        }
        self.checkpoints.push(Checkpoint {
            out: b.out,
            input: b.input,
            bits: b.bits,
            prev_byte: b.prev_byte,
            member: b.member,
            window_len,
            window: Vec::new(),
        });
    }

    /// Hand to the packer every waiting window that has 32 KiB of output after it decoded
    /// (all of them at the end of the stream), with what the analysis needs.
    fn dispatch(&mut self, last: bool) -> Result<(), GzipError> {
        let ready = |w: &Waiting| last || w.boundary.out + WINDOW_SIZE as u64 <= self.total_out;
        let (now, later): (Vec<Waiting>, Vec<Waiting>) =
            std::mem::take(&mut self.waiting).into_iter().partition(ready);
        self.waiting = later;
        if !now.is_empty() {
            // Each analysis gets its full measure of compressed input (or all up to the end),
            // however far the pass has happened to read: the index must not depend on that.
            self.input.ensure(ANALYSIS_INPUT)?;
        }
        for w in now {
            let b = w.boundary;
            let follow_in_buffer = b.out >= self.out_base;
            let has_follow = follow_in_buffer || !w.follow.is_empty();
            let input = match (w.analysable && has_follow, self.input.kept(b.first_byte(), ANALYSIS_INPUT)) {
                (true, Some(bytes)) => bytes.to_vec(),
                _ => Vec::new(),
            };
            let follow = if input.is_empty() {
                Vec::new()
            } else if follow_in_buffer {
                let lo = (b.out - self.out_base) as usize;
                let hi = (lo + WINDOW_SIZE).min(self.out_len);
                self.out[lo..hi].to_vec()
            } else {
                w.follow
            };
            let job = Job { index: w.index, window: w.window, bits: b.bits, input, follow };
            if let Some(tx) = &self.windows {
                // The packer only stops when the sender is dropped, so this cannot fail.
                let _ = tx.send(job);
            }
        }
        Ok(())
    }

    /// Keep compressed input from the oldest place a window analysis may still need: a waiting
    /// checkpoint, the saved boundary of an earlier round, or this round's start. What would
    /// hold more than `MAX_RETAINED` is given up (its window then stays whole).
    fn retain(&mut self) {
        let now = self.input.offset();
        // A boundary at `now` with bits in the byte before it starts one byte earlier.
        let mut keep = now.saturating_sub(1);
        for w in self.waiting.iter_mut().filter(|w| w.analysable) {
            if now - w.boundary.first_byte() > MAX_RETAINED {
                w.analysable = false;
            } else {
                keep = keep.min(w.boundary.first_byte());
            }
        }
        if let Some(p) = self.prev.as_mut().filter(|p| p.analysable) {
            if now - p.boundary.first_byte() > MAX_RETAINED {
                p.analysable = false;
            } else {
                keep = keep.min(p.boundary.first_byte());
            }
        }
        self.input.keep_from = keep;
    }
}
