//! The zstd frame engine: one streaming pass over a zstd stream (plain `tar+zstd`, or a
//! zstd:chunked layer read as the stream it also is) that decodes it, records where every
//! frame starts (compressed and uncompressed offsets), skips skippable frames (zstd:chunked's
//! TOC, tar-split and footer are skippable frames: they yield no output), checks each frame's
//! content checksum where the frame has one (the decoder does), and hands the output to the
//! same [`Sink`] the gzip pass feeds (the tar parser and chunk hasher).
//!
//! A zstd frame restarts with no history at all, so a frame start is a checkpoint that needs
//! no window: the pass returns a [`gzip::Index`](crate::gzip::Index) whose checkpoints are
//! frame starts with `bits` 0 and an empty window, which `rafs::meta` turns into contexts as
//! it does a gzip index's. Checkpoints are chosen as the gzip pass chooses them: one at the
//! first frame start at least `span` after the previous checkpoint, and for every offset the
//! sink requests the last frame start at or before it (with no slack: a frame start costs
//! nothing until a chunk uses it, so each chunk decodes from its own frame where it has one).
//!
//! Owns nothing but the pass; calls `gzip` for the index and sink types only.

use crate::gzip::{Checkpoint, Index, Requests, Sink};
use std::io::{ErrorKind, Read};
use zstd::zstd_safe::{DCtx, InBuffer, OutBuffer};

/// Output handed to the sink at a time.
const ROUND: usize = 512 * 1024;
/// Compressed bytes read per `read` call.
const INPUT_CHUNK: usize = 256 * 1024;
/// A run of zstd frames (a context) whose output is larger than this is not decoded per read
/// (each read of a chunk late in it would decode everything before it again) but fetched and
/// decoded whole, once, into the cache, by the first read that needs it: 16 MiB, what Nydus
/// decodes from one zran context at most and what a chunk may hold, so no multi-frame layer
/// with contexts of a chunk or two ever reaches it; `zstd` and skopeo's `zstd` write one frame
/// per layer, which does.
pub const WHOLE_FRAME: u64 = 16 << 20;
/// The magic number of a zstd frame, and of skippable frames (the low 4 bits vary).
pub const FRAME_MAGIC: u32 = 0xFD2F_B528;
pub const SKIPPABLE_MAGIC: u32 = 0x184D_2A50;

#[derive(Debug, thiserror::Error)]
pub enum ZstdError {
    #[error("compressed offset {offset}: {source}")]
    Io { offset: u64, source: std::io::Error },
    #[error("zstd frame {frame} (compressed offset {start}): at compressed offset {offset}: {message}")]
    Frame { frame: u64, start: u64, offset: u64, message: String },
    #[error("compressed offset {offset}: not a zstd frame (magic {magic:#010x})")]
    Magic { offset: u64, magic: u32 },
    #[error("the stream ends at compressed offset {offset}, inside {what} that starts at {start}")]
    Truncated { offset: u64, start: u64, what: String },
    #[error("uncompressed offset {offset}: {source}")]
    Sink { offset: u64, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("no zstd frame in the stream")]
    Empty,
}

/// Where a frame that yields data starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Compressed offset of its magic number.
    pub input: u64,
    /// Uncompressed offset of its first byte.
    pub out: u64,
}

/// What the pass found besides the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameIndex {
    /// Checkpoints at frame starts (bits 0, no window), `members` = frames that hold data.
    pub index: Index,
    /// Every frame (skippable ones excluded), in stream order.
    pub frames: Vec<Frame>,
    /// Skippable frames passed over.
    pub skippable: u64,
    /// Frames whose header says they carry a content checksum (checked by the decoder).
    pub checksummed: u64,
    /// The largest output of one frame.
    pub largest_frame: u64,
    /// sha256 of the whole uncompressed stream (a layer's DiffID).
    pub diff_id: [u8; 32],
    /// sha256 of the stream followed by 1, 2, ... [`MAX_PADDING_BLOCKS`] zero blocks of 512
    /// bytes: a writer that rewrote the tar without the trailing zero blocks of the original
    /// record (containers/image's zstd:chunked) is recognised by one of them matching the DiffID.
    pub padded_diff_ids: Vec<[u8; 32]>,
}

/// A tar record is 20 blocks; writers pad the archive's end with zero blocks up to one.
pub const MAX_PADDING_BLOCKS: usize = 20;

/// Buffered compressed input that knows its offset.
struct Input<R> {
    reader: R,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    /// Compressed offset of `buf[0]`.
    base: u64,
    eof: bool,
    tail: [u8; 8],
    read: u64,
}

impl<R: Read> Input<R> {
    fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    fn avail(&self) -> &[u8] {
        &self.buf[self.pos..self.len]
    }

    /// Read more; false at the end of the input.
    fn more(&mut self) -> Result<bool, ZstdError> {
        if self.eof {
            return Ok(false);
        }
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.len, 0);
            self.base += self.pos as u64;
            self.len -= self.pos;
            self.pos = 0;
        }
        if self.buf.len() - self.len < INPUT_CHUNK / 2 {
            self.buf.resize(self.len + INPUT_CHUNK, 0);
        }
        loop {
            match self.reader.read(&mut self.buf[self.len..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    let got = &self.buf[self.len..self.len + n];
                    if n >= 8 {
                        self.tail.copy_from_slice(&got[n - 8..]);
                    } else {
                        self.tail.copy_within(n.., 0);
                        self.tail[8 - n..].copy_from_slice(got);
                    }
                    self.len += n;
                    self.read += n as u64;
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(ZstdError::Io { offset: self.base + self.len as u64, source: e }),
            }
        }
    }

    /// Make at least `n` bytes available; false if the input ends first.
    fn ensure(&mut self, n: usize) -> Result<bool, ZstdError> {
        while self.len - self.pos < n {
            if !self.more()? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Pass over `n` bytes; false if the input ends first.
    fn skip(&mut self, mut n: u64) -> Result<bool, ZstdError> {
        loop {
            let here = (self.len - self.pos).min(usize::try_from(n).unwrap_or(usize::MAX));
            self.pos += here;
            n -= here as u64;
            if n == 0 {
                return Ok(true);
            }
            if !self.more()? {
                return Ok(false);
            }
        }
    }
}

/// Index a zstd stream in one pass, handing its output to `sink`. Checkpoints: one at least
/// every `span` of output, and one at or before every offset the sink requests.
pub fn index_stream<R: Read, S: Sink + ?Sized>(
    reader: R,
    span: u64,
    sink: &mut S,
) -> Result<FrameIndex, ZstdError> {
    use sha2::Digest as _;
    let mut input = Input {
        reader,
        buf: vec![0; INPUT_CHUNK],
        pos: 0,
        len: 0,
        base: 0,
        eof: false,
        tail: [0; 8],
        read: 0,
    };
    let mut dctx = DCtx::create();
    let mut out = vec![0u8; ROUND];
    let mut out_len = 0usize;
    let mut total_out = 0u64;
    let mut round_at = 0u64;
    let mut requests = Requests::default();
    let mut pending: Vec<u64> = Vec::new();
    let mut frames: Vec<Frame> = Vec::new();
    let (mut skippable, mut checksummed, mut largest) = (0u64, 0u64, 0u64);
    let mut hasher = sha2::Sha256::new();
    // The frame being decoded: its start.
    let mut current: Option<Frame> = None;

    let mut flush = |out: &[u8], at: u64, requests: &mut Requests, pending: &mut Vec<u64>| {
        hasher.update(out);
        sink.data(at, out, requests).map_err(|source| ZstdError::Sink { offset: at, source })?;
        pending.extend(requests.take());
        Ok::<(), ZstdError>(())
    };

    loop {
        let Some(frame) = current else {
            // Between frames: the next one's magic, or the end.
            if !input.ensure(4)? {
                if input.len == input.pos {
                    break;
                }
                return Err(ZstdError::Truncated {
                    offset: input.base + input.len as u64,
                    start: input.offset(),
                    what: "a frame header".into(),
                });
            }
            let a = input.avail();
            let magic = u32::from_le_bytes([a[0], a[1], a[2], a[3]]);
            let start = input.offset();
            if magic & 0xFFFF_FFF0 == SKIPPABLE_MAGIC {
                if !input.ensure(8)? {
                    return Err(ZstdError::Truncated {
                        offset: input.base + input.len as u64,
                        start,
                        what: "a skippable frame's header".into(),
                    });
                }
                let a = input.avail();
                let size = u32::from_le_bytes([a[4], a[5], a[6], a[7]]);
                if !input.skip(8 + u64::from(size))? {
                    return Err(ZstdError::Truncated {
                        offset: input.offset(),
                        start,
                        what: format!("a skippable frame of {size} bytes"),
                    });
                }
                skippable += 1;
                continue;
            }
            if magic != FRAME_MAGIC {
                return Err(ZstdError::Magic { offset: start, magic });
            }
            if input.ensure(5)? && input.avail()[4] & 0x04 != 0 {
                checksummed += 1;
            }
            let f = Frame { input: start, out: total_out };
            frames.push(f);
            current = Some(f);
            continue;
        };
        if input.pos == input.len && !input.more()? {
            return Err(ZstdError::Truncated {
                offset: input.offset(),
                start: frame.input,
                what: format!("zstd frame {}", frames.len() - 1),
            });
        }
        if out_len == out.len() {
            flush(&out[..out_len], round_at, &mut requests, &mut pending)?;
            round_at += out_len as u64;
            out_len = 0;
        }
        let (used, made, r) = {
            let mut inb = InBuffer::around(input.avail());
            let mut outb = OutBuffer::around_pos(&mut out[..], out_len);
            let r = dctx.decompress_stream(&mut outb, &mut inb);
            (inb.pos(), outb.pos() - out_len, r)
        };
        let at = input.offset();
        input.pos += used;
        out_len += made;
        total_out += made as u64;
        match r {
            Ok(0) => {
                largest = largest.max(total_out - frame.out);
                current = None;
            }
            Ok(_) => {}
            Err(code) => {
                return Err(ZstdError::Frame {
                    frame: (frames.len() - 1) as u64,
                    start: frame.input,
                    offset: at,
                    message: zstd::zstd_safe::get_error_name(code).to_string(),
                });
            }
        }
    }
    if out_len > 0 {
        flush(&out[..out_len], round_at, &mut requests, &mut pending)?;
    }
    if frames.is_empty() {
        return Err(ZstdError::Empty);
    }
    let checkpoints = choose(&frames, total_out, span, pending);
    let index = Index {
        compressed_size: input.read,
        uncompressed_size: total_out,
        span,
        members: frames.len() as u64,
        tail: input.tail,
        checkpoints,
        member_ends: Vec::new(),
    };
    Ok(FrameIndex {
        index,
        frames,
        skippable,
        checksummed,
        largest_frame: largest,
        padded_diff_ids: {
            let mut h = hasher.clone();
            (0..MAX_PADDING_BLOCKS)
                .map(|_| {
                    h.update([0u8; 512]);
                    h.clone().finalize().into()
                })
                .collect()
        },
        diff_id: hasher.finalize().into(),
    })
}

/// The checkpoints: frame starts (one per uncompressed offset: the last frame starting there,
/// so empty frames are passed over), the first always, then one at least `span` after the
/// previous, and the last at or before each requested offset.
pub fn choose(frames: &[Frame], total_out: u64, span: u64, mut requested: Vec<u64>) -> Vec<Checkpoint> {
    let mut starts: Vec<Frame> = Vec::new();
    for f in frames {
        match starts.last_mut() {
            Some(l) if l.out == f.out => *l = *f,
            _ => starts.push(*f),
        }
    }
    // A frame that starts at the very end yields nothing; keep the first start whatever it is.
    while starts.len() > 1 && starts.last().is_some_and(|l| l.out >= total_out) {
        starts.pop();
    }
    requested.sort_unstable();
    requested.dedup();
    let mut wanted = vec![false; starts.len()];
    for r in requested {
        let i = starts.partition_point(|s| s.out <= r).saturating_sub(1);
        if let Some(w) = wanted.get_mut(i) {
            *w = true;
        }
    }
    let mut out = Vec::new();
    let mut last: Option<u64> = None;
    for (s, w) in starts.iter().zip(wanted) {
        if last.is_none() || w || s.out >= last.unwrap_or(0).saturating_add(span) {
            out.push(Checkpoint {
                out: s.out,
                input: s.input,
                bits: 0,
                prev_byte: 0,
                member: 0,
                window_len: 0,
                window: Vec::new(),
            });
            last = Some(s.out);
        }
    }
    // The first checkpoint is at 0 (the first frame with data starts there).
    if let Some(first) = out.first_mut() {
        first.out = 0;
    }
    out
}

/// Decode `out.len()` bytes from `input`, which starts at a frame boundary (skippable frames
/// are passed over, frames are decoded one after the other): the output must fill `out`; what
/// follows in `input` is not read. `at` (the compressed offset of `input`) names errors.
pub fn decode_from(input: &[u8], at: u64, out: &mut [u8]) -> Result<(), String> {
    let mut dctx = DCtx::create();
    let mut inb = InBuffer::around(input);
    let mut done = 0usize;
    while done < out.len() {
        let before = inb.pos();
        let mut outb = OutBuffer::around_pos(&mut out[..], done);
        let r = dctx.decompress_stream(&mut outb, &mut inb);
        let made = outb.pos() - done;
        done = outb.pos();
        match r {
            Err(code) => {
                return Err(format!(
                    "zstd at compressed offset {}: {}",
                    at + before as u64,
                    zstd::zstd_safe::get_error_name(code)
                ));
            }
            Ok(_) if made == 0 && inb.pos() == before && done < out.len() => {
                return Err(format!(
                    "the zstd data from compressed offset {at} ends after {} of {} bytes",
                    done,
                    out.len()
                ));
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
