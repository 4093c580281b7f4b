//! Blobs read through a table of zstd frames (zstd:chunked layers mounted from their TOCs).
//!
//! A TOC chunk (cut by a rolling sum, ~64 KiB) is one independent zstd frame with its own
//! sha256; RAFS chunks are cut at the bootstrap's fixed chunk size over each file, so one RAFS
//! chunk is served from the TOC chunks that cover its range ([`Span`]). Every TOC chunk is
//! decoded into exactly its size and checked against its digest before any byte of it is used.
//!
//! In the cache, a file's RAFS chunks lie one after the other (each but the last is a whole
//! chunk size, a multiple of 4 KiB), so every TOC chunk has a home in the data file
//! ([`Frame::at`]). A fetch writes whole TOC chunks there, also the parts that belong to the
//! neighbouring RAFS chunks; a RAFS chunk recorded by an earlier mount is therefore checked by
//! reading its TOC chunks back and checking *their* digests, which come from the TOC the
//! manifest vouches for: nothing but the manifest is trusted, and no sidecar is needed. Zeros
//! chunks (runs of zeros, possibly far larger than a chunk) are never fetched nor hashed: the
//! part of one inside a RAFS chunk is zeros, and is checked to be.
//!
//! Calls nothing else in the crate (the `zstd` and `sha2` crates).

use sha2::{Digest as _, Sha256};

/// One TOC chunk: a zstd frame of the layer blob, or a run of zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The frame's compressed range in the blob.
    pub start: u64,
    pub end: u64,
    /// Bytes it decodes to.
    pub size: u32,
    /// sha256 of those bytes; may be absent only for a zeros chunk.
    pub digest: Option<[u8; 32]>,
    /// A `zeros` chunk: its bytes are known, nothing is fetched.
    pub zeros: bool,
    /// Where its bytes lie in the blob's uncompressed address space (the cache data file).
    pub at: u64,
}

/// The TOC chunks a RAFS chunk is cut from: `count` frames from `first`, the chunk starting
/// `skip` bytes into the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub first: u32,
    pub count: u32,
    pub skip: u32,
}

/// The frames of one blob and, by RAFS chunk index, the span each chunk is served from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrameTable {
    pub frames: Vec<Frame>,
    pub spans: Vec<Span>,
}

impl FrameTable {
    /// Frames `first..=last`, checked against the table.
    pub fn range(&self, first: u32, last: u32) -> Result<&[Frame], String> {
        self.frames
            .get(first as usize..=last as usize)
            .ok_or_else(|| format!("frames {first}..={last} past the table's {}", self.frames.len()))
    }

    /// Check the table against a blob of `chunks` RAFS chunks (`(address, size)` each, `None`
    /// for unused indexes), `blob_size` compressed bytes and `space` bytes of address space:
    /// every span inside the table and covering its chunk at the chunk's address, every frame
    /// inside the blob and the address space, and at most `max_unit` bytes each.
    pub fn validate(
        &self,
        chunks: &[Option<(u64, u32)>],
        blob_size: u64,
        space: u64,
        max_unit: u64,
    ) -> Result<(), String> {
        if self.spans.len() != chunks.len() {
            return Err(format!("{} spans for {} chunks", self.spans.len(), chunks.len()));
        }
        for (k, f) in self.frames.iter().enumerate() {
            if f.start > f.end || (!f.zeros && f.end > blob_size) {
                return Err(format!(
                    "TOC chunk {k}: frame {}-{} outside the blob's {blob_size} bytes",
                    f.start, f.end
                ));
            }
            if !f.zeros && (f.end - f.start > max_unit || u64::from(f.size) > max_unit) {
                return Err(format!(
                    "TOC chunk {k} at {}: larger than the {max_unit} bytes allowed",
                    f.start
                ));
            }
            if f.at.saturating_add(u64::from(f.size)) > space {
                return Err(format!("TOC chunk {k}: address {} past the blob's address space", f.at));
            }
            if f.digest.is_none() && !f.zeros {
                return Err(format!("TOC chunk {k} at {}: no digest", f.start));
            }
        }
        for (ci, (span, chunk)) in self.spans.iter().zip(chunks).enumerate() {
            let Some((addr, len)) = *chunk else { continue };
            let err = |m: &str| format!("chunk {ci}: {m}");
            if span.count == 0 {
                return Err(err("no TOC chunk"));
            }
            let frames = self.range(span.first, span.first + (span.count - 1)).map_err(|m| err(&m))?;
            let mut at = frames[0].at;
            for f in frames {
                if f.at != at {
                    return Err(err("its TOC chunks are not adjacent"));
                }
                at += u64::from(f.size);
            }
            if frames[0].at + u64::from(span.skip) != addr || addr + u64::from(len) > at {
                return Err(err("its TOC chunks do not cover it"));
            }
        }
        Ok(())
    }
}

/// Decode one frame into `out`, which it must fill exactly: a frame that decodes to more or
/// less is an error, and nothing larger than `out` is produced.
pub fn decode_exact(input: &[u8], out: &mut [u8]) -> Result<(), String> {
    let n = zstd::bulk::Decompressor::new()
        .and_then(|mut d| d.decompress_to_buffer(input, out))
        .map_err(|e| format!("zstd: {e} (the frame decodes to more than its {} bytes?)", out.len()))?;
    if n != out.len() {
        return Err(format!("the frame decodes to {n} bytes, its chunk has {}", out.len()));
    }
    Ok(())
}

/// Decode the first `out.len()` bytes of the zstd frame at the start of `input` and ignore the
/// rest (eStargz in zstd: a chunk's frame may run on into the next tar headers).
pub fn decode_prefix(input: &[u8], out: &mut [u8]) -> Result<(), String> {
    use std::io::Read;
    let mut d =
        zstd::stream::read::Decoder::with_buffer(input).map_err(|e| format!("zstd: {e}"))?.single_frame();
    d.read_exact(out).map_err(|e| format!("zstd: {e} (wanted {} bytes)", out.len()))
}

/// Decode `frames` (adjacent TOC chunks, numbered from `first` for messages) from `input`,
/// the blob's bytes from `input_start`, into `out_len` bytes of address space from `base`: each
/// frame that is not zeros lies there whole and is checked against its digest; zeros chunks
/// are zeros (as the TOC says, and as containers/storage writes them: holes, never fetched).
pub fn decode_frames(
    frames: &[Frame],
    first: u32,
    input: &[u8],
    input_start: u64,
    base: u64,
    out_len: usize,
) -> Result<Vec<u8>, String> {
    let mut out = vec![0u8; out_len];
    for (k, f) in frames.iter().enumerate().filter(|(_, f)| !f.zeros) {
        let k = first as usize + k;
        let piece =
            f.at.checked_sub(base)
                .and_then(|a| out.get_mut(a as usize..a as usize + f.size as usize))
                .ok_or_else(|| format!("TOC chunk {k}: outside the bytes decoded"))?;
        let src = f
            .start
            .checked_sub(input_start)
            .zip(f.end.checked_sub(input_start))
            .and_then(|(a, b)| input.get(a as usize..b as usize))
            .ok_or_else(|| format!("TOC chunk {k}: frame {}-{} not in the bytes fetched", f.start, f.end))?;
        decode_exact(src, piece).map_err(|m| format!("TOC chunk {k} (frame at {}): {m}", f.start))?;
        check(f, piece).map_err(|m| format!("TOC chunk {k} (frame at {}): {m}", f.start))?;
    }
    Ok(out)
}

/// Check a TOC chunk's bytes: its sha256, or all zeros for a zeros chunk without one.
pub fn check(f: &Frame, bytes: &[u8]) -> Result<(), String> {
    match f.digest {
        Some(d) if <[u8; 32]>::from(Sha256::digest(bytes)) == d => Ok(()),
        Some(d) => Err(format!("does not match its sha256 {}", hex::encode(d))),
        None if f.zeros && bytes.iter().all(|&b| b == 0) => Ok(()),
        None => Err("not zeros".into()),
    }
}

/// A RAFS chunk cut over a file: its span, address and size.
pub type Cut = (Span, u64, u32);

/// A file's TOC chunks in file order, each `(its offset in the file, its frame)` (`at` is
/// ignored), laid out from address `base` and cut into RAFS chunks of `chunk_size`: the frames
/// (placed) and, for each RAFS chunk, its span (frames numbered from `first`), address and
/// size. The TOC chunks must cover the file (`size` bytes) exactly, in order.
pub fn cut_file(
    toc_chunks: &[(u64, Frame)],
    size: u64,
    chunk_size: u32,
    first: u32,
    base: u64,
) -> Result<(Vec<Frame>, Vec<Cut>), String> {
    let mut frames = Vec::with_capacity(toc_chunks.len());
    let mut at = 0u64;
    for (k, (offset, f)) in toc_chunks.iter().enumerate() {
        if *offset != at || f.size == 0 {
            return Err(format!(
                "TOC chunk {k} at file offset {offset} (size {}) does not follow at {at}",
                f.size
            ));
        }
        frames.push(Frame { at: base + at, ..f.clone() });
        at += u64::from(f.size);
    }
    if at != size {
        return Err(format!("TOC chunks cover {at} bytes of a file of {size}"));
    }
    let cs = u64::from(chunk_size);
    let mut cut = Vec::new();
    let mut k = 0usize;
    let mut from = 0u64;
    while from < size {
        let len = cs.min(size - from);
        // The first TOC chunk that reaches past `from`, then those that start before the end.
        while toc_chunks[k].0 + u64::from(toc_chunks[k].1.size) <= from {
            k += 1;
        }
        let mut last = k;
        while last + 1 < toc_chunks.len() && toc_chunks[last + 1].0 < from + len {
            last += 1;
        }
        let n = |x: usize| u32::try_from(x).map_err(|_| "too many TOC chunks".to_string());
        let span = Span {
            first: first + n(k)?,
            count: n(last - k + 1)?,
            skip: u32::try_from(from - toc_chunks[k].0).map_err(|_| "TOC chunk too large".to_string())?,
        };
        cut.push((span, base + from, len as u32));
        from += len;
    }
    Ok((frames, cut))
}
