//! From one layer pass to chunk infos and zran contexts: chunks deduplicated, placed in the
//! synthetic address space, and each given the checkpoint it decodes from.

use super::format::{MAX_CHUNK_SIZE, MAX_CHUNKS, MAX_COMPRESSED_OFFSET, MAX_COMPRESSED_SIZE, MAX_DICT_SIZE};
use super::format::{MAX_UNCOMPRESSED_END, round_up_4k};
use super::{BlobMeta, ChunkInfo, MetaError, ZranContext};
use crate::gzip::Index;
use crate::layer::FileChunk;
use std::collections::HashMap;
use std::collections::hash_map::Entry;

/// A context being gathered: its checkpoint, how far its chunks reach, the last chunk that
/// extended it (for error messages).
struct Span {
    checkpoint: usize,
    end: u64,
    last: usize,
}

impl BlobMeta {
    /// The blob.meta of a gzip layer, from its seek index and the chunks of its regular files
    /// (every chunk of every file, in tar-stream order). Also returns, for each input chunk,
    /// the chunk-info index it maps to: identical chunks (same digest and length) share one.
    ///
    /// Each chunk decodes from the last checkpoint at or before its first byte; the checkpoints
    /// some chunk uses become the contexts, in stream order, each covering all of its chunks.
    pub fn build(index: &Index, chunks: &[FileChunk]) -> Result<(BlobMeta, Vec<u32>), MetaError> {
        let plan = BlobMeta::plan(index, chunks)?;
        let mut meta = plan.meta;
        for (ctx, &cpi) in meta.contexts.iter_mut().zip(&plan.checkpoints) {
            ctx.dict = dictionary(index, cpi)?;
        }
        meta.validate()?;
        Ok((meta, plan.ci_of))
    }

    /// [`BlobMeta::build`] without the dictionaries: every context's `dict` is left empty and
    /// its checkpoint in `index` is returned instead, so that a writer can decompress one
    /// window at a time ([`BlobMeta::encode_from_index`]) and memory does not grow with the
    /// number of contexts.
    pub fn plan(index: &Index, chunks: &[FileChunk]) -> Result<Plan, MetaError> {
        BlobMeta::plan_with(index, chunks, Limits::NYDUS)
    }

    /// [`BlobMeta::plan`] within `limits`.
    pub fn plan_with(index: &Index, chunks: &[FileChunk], limits: Limits) -> Result<Plan, MetaError> {
        let mut seen: HashMap<([u8; 32], u32), u32> = HashMap::new();
        let mut ci_of = Vec::with_capacity(chunks.len());
        let mut firsts: Vec<usize> = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let err = |message: String| MetaError::Input { index: i, out: c.out, message };
            if c.len == 0 || u64::from(c.len) > MAX_CHUNK_SIZE {
                return Err(err(format!("length {} (1..={MAX_CHUNK_SIZE})", c.len)));
            }
            match c.out.checked_add(u64::from(c.len)) {
                Some(end) if end <= index.uncompressed_size => {}
                _ => {
                    return Err(err(format!(
                        "{} bytes reach past the end of the layer ({} bytes)",
                        c.len, index.uncompressed_size
                    )));
                }
            }
            match seen.entry((c.digest, c.len)) {
                Entry::Occupied(e) => ci_of.push(*e.get()),
                Entry::Vacant(e) => {
                    if let Some(&p) = firsts.last()
                        && c.out < chunks[p].out
                    {
                        return Err(err(format!("comes before the previous chunk (at {})", chunks[p].out)));
                    }
                    if firsts.len() as u64 >= MAX_CHUNKS {
                        return Err(err(format!("more than {MAX_CHUNKS} distinct chunks in one layer")));
                    }
                    let ci = firsts.len() as u32;
                    e.insert(ci);
                    firsts.push(i);
                    ci_of.push(ci);
                }
            }
        }
        if !firsts.is_empty() && index.checkpoints.first().is_none_or(|c| c.out != 0) {
            return Err(MetaError::Index("no checkpoint at uncompressed offset 0".into()));
        }

        // Assign checkpoints; they only move forward since the chunks do.
        let mut spans: Vec<Span> = Vec::new();
        let mut infos = Vec::with_capacity(firsts.len());
        let mut pos = 0u64;
        for &i in &firsts {
            let c = &chunks[i];
            let err = |message: String| MetaError::Input { index: i, out: c.out, message };
            let cpi = index.checkpoint_for(c.out);
            let cp = &index.checkpoints[cpi];
            let end = c.out + u64::from(c.len);
            let span_end = match spans.last_mut() {
                Some(s) if s.checkpoint == cpi => {
                    s.end = s.end.max(end);
                    s.last = i;
                    s.end
                }
                _ => {
                    spans.push(Span { checkpoint: cpi, end, last: i });
                    end
                }
            };
            if span_end - cp.out > limits.context_out {
                return Err(err(format!(
                    "{} uncompressed bytes from the checkpoint at {} to the end of the chunk: Nydus \
                     decodes at most {MAX_CHUNK_SIZE} from a zran context (use a smaller --chunk-size); \
                     this layer allows {}",
                    span_end - cp.out,
                    cp.out,
                    limits.context_out
                )));
            }
            let in_end = input_end(index, end);
            let compressed_size = in_end.checked_sub(cp.input).ok_or_else(|| {
                MetaError::Index(format!("checkpoint {cpi} starts at compressed {} after {in_end}", cp.input))
            })?;
            if cp.input > MAX_COMPRESSED_OFFSET {
                return Err(err(format!("compressed offset {} does not fit 40 bits", cp.input)));
            }
            let compressed_size = if limits.clamp_compressed_size {
                compressed_size.min(MAX_COMPRESSED_SIZE)
            } else {
                compressed_size
            };
            if compressed_size > MAX_COMPRESSED_SIZE {
                return Err(err(format!(
                    "{compressed_size} compressed bytes from the checkpoint at compressed offset {} \
                     to past the chunk: more than a chunk info holds (24 bits)",
                    cp.input
                )));
            }
            let uncompressed_offset = pos;
            pos = round_up_4k(pos + u64::from(c.len)).unwrap_or(u64::MAX);
            if pos > MAX_UNCOMPRESSED_END {
                return Err(err("the blob's uncompressed address space passes 2^44".into()));
            }
            infos.push(ChunkInfo {
                uncompressed_offset,
                uncompressed_size: c.len,
                compressed_offset: cp.input,
                compressed_size: compressed_size as u32,
                zran_index: (spans.len() - 1) as u32,
                zran_offset: (c.out - cp.out) as u32,
            });
        }

        let mut contexts = Vec::with_capacity(spans.len());
        for s in &spans {
            let cp = &index.checkpoints[s.checkpoint];
            let in_end = input_end(index, s.end);
            let in_len = in_end.checked_sub(cp.input).ok_or_else(|| {
                MetaError::Index(format!(
                    "checkpoint {} starts at compressed {} after {in_end}",
                    s.checkpoint, cp.input
                ))
            })?;
            let in_len = u32::try_from(in_len).map_err(|_| MetaError::Input {
                index: s.last,
                out: chunks[s.last].out,
                message: format!(
                    "{in_len} compressed bytes from the checkpoint at compressed offset {}: more than a zran context holds (u32)",
                    cp.input
                ),
            })?;
            if u64::from(cp.window_len) > MAX_DICT_SIZE {
                return Err(MetaError::Index(format!(
                    "checkpoint {} has a window of {} bytes",
                    s.checkpoint, cp.window_len
                )));
            }
            contexts.push(ZranContext {
                in_offset: cp.input,
                out_offset: cp.out,
                in_len,
                out_len: (s.end - cp.out) as u32,
                bits: cp.bits,
                prev_byte: if cp.bits > 0 { cp.prev_byte } else { 0 },
                dict: Vec::new(),
            });
        }
        let past_member_end = spans
            .iter()
            .enumerate()
            .filter(|(_, s)| reaches_member_end(index, &index.checkpoints[s.checkpoint], s.end))
            .map(|(i, _)| i as u32)
            .collect();
        let digests = firsts.iter().map(|&i| chunks[i].digest).collect();
        let meta = BlobMeta { chunks: infos, contexts, digests };
        meta.validate()?;
        Ok(Plan { meta, ci_of, checkpoints: spans.iter().map(|s| s.checkpoint).collect(), past_member_end })
    }
}

/// What a blob.meta may describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most uncompressed bytes from a context's start to the end of its last chunk.
    pub context_out: u64,
    /// Cut a chunk info's compressed size (a range-planning hint) to 24 bits instead of
    /// refusing the chunk.
    pub clamp_compressed_size: bool,
}

impl Limits {
    /// What Nydus decodes: at most 16 MiB from a context, compressed sizes in 24 bits.
    pub const NYDUS: Limits = Limits { context_out: MAX_CHUNK_SIZE, clamp_compressed_size: false };
    /// zstd layers, which no Nydus reads: a context is a run of zstd frames, as long as its
    /// fields hold (`out_len` and `zran_offset` are 32 bits); a chunk's compressed size, which
    /// zran's reader uses only to stop a fetch early, is cut to 24 bits (its context's
    /// `in_len` bounds the fetch then).
    pub const ZSTD: Limits = Limits { context_out: u32::MAX as u64, clamp_compressed_size: true };
}

/// A blob.meta without its dictionaries (see [`BlobMeta::plan`]).
#[derive(Debug, Clone)]
pub struct Plan {
    /// Every context's `dict` is empty.
    pub meta: BlobMeta,
    /// For each input chunk, its chunk-info index.
    pub ci_of: Vec<u32>,
    /// For each context, the checkpoint of the index it starts at.
    pub checkpoints: Vec<usize>,
    /// The contexts whose decode reaches the end of a gzip member: one of its chunks crosses
    /// from one member into the next, or the context ends where a member's data ends and the
    /// bits that yield its last byte also end the member (a stored final block, or an
    /// end-of-block code in the same byte). Decoders that go on into the next member (zran's,
    /// nydus-utils 0.5 and later) decode them; Nydus 2.2's (nydus-utils 0.4) cannot. Known
    /// only for an index built with member checkpoints.
    pub past_member_end: Vec<u32>,
}

/// Whether decoding from `cp` to uncompressed `end` reaches the end of a gzip member (see
/// [`Plan::past_member_end`]).
fn reaches_member_end(index: &Index, cp: &crate::gzip::Checkpoint, end: u64) -> bool {
    let first = index.member_ends.partition_point(|m| m.out <= cp.out);
    match index.member_ends.get(first) {
        Some(m) if m.out < end => true,
        Some(m) if m.out == end => !m.clean,
        _ => false,
    }
}

/// The dictionary of the context at checkpoint `cpi`: the checkpoint's window, decompressed.
pub(super) fn dictionary(index: &Index, cpi: usize) -> Result<Vec<u8>, MetaError> {
    let cp = index.checkpoints.get(cpi).ok_or_else(|| MetaError::Index(format!("no checkpoint {cpi}")))?;
    let dict = cp.window_bytes(cpi).map_err(|e| MetaError::Index(e.to_string()))?;
    if dict.len() as u64 > MAX_DICT_SIZE {
        return Err(MetaError::Index(format!("checkpoint {cpi} has a window of {} bytes", dict.len())));
    }
    Ok(dict)
}

/// A compressed offset past every byte that inflating up to uncompressed `end` needs, as
/// Nydus's decoders read them.
///
/// That is where the next checkpoint starts, or the end of the stream, but where `end` is
/// exactly where a gzip member's data ends. Having produced its last byte, inflate goes on to
/// read the member's final end-of-block code if its bits are there, and reports the end of the
/// stream: Nydus 2.2's decoder (nydus-utils 0.4) takes that as an error; later ones skip the
/// trailer, parse the next member's header and inflate on, and fail if not one byte of the
/// next member's deflate data is there. So where the index knows that the bytes up to the last
/// code of the member's data do not also end the stream, the range stops there (both decode
/// it); else it takes the trailer, the next header and one byte of the next member's data.
fn input_end(index: &Index, end: u64) -> u64 {
    if let Some(m) = index.member_end_at(end).filter(|m| m.clean) {
        return m.input;
    }
    let at = index.checkpoints.partition_point(|c| c.out < end);
    let plain = index.input_end_for(end);
    match (at.checked_sub(1).and_then(|p| index.checkpoints.get(p)), index.checkpoints.get(at)) {
        (Some(prev), Some(next)) if next.out == end && next.member != prev.member => {
            next.input.saturating_add(1).min(index.compressed_size).max(plain)
        }
        _ => plain,
    }
}
