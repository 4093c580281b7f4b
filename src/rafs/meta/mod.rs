//! The blob compression context (`blob.meta`) of a zran (gzip) layer, as Nydus reads it: an
//! array of chunk infos (24 bytes each) that place every chunk in the blob's synthetic,
//! 4 KiB-aligned uncompressed address space, a table of zran contexts (40 bytes each: where
//! in the gzip stream to restart inflating, with how many bits of the previous byte) and their
//! dictionaries, then a 4096-byte header.
//!
//! An eStargz layer whose TOC gives the chunks has a simpler one, [`StargzMeta`]: chunk info
//! v1 (16 bytes each) and the same header, no contexts, since each chunk is a gzip member of
//! its own.
//!
//! This module owns that format and its meaning: [`BlobMeta::build`] turns one layer pass (the
//! seek index and the file chunks) into chunk infos and contexts, `writer.rs` writes the two
//! forms (the zstd-compressed one Nydus fetches, and the uncompressed cache file nydusd keeps),
//! `reader.rs` reads either back, checking every field. `format.rs` declares the bytes;
//! `formats/blob-meta.md` documents them.

mod build;
pub mod format;
mod reader;
mod writer;

pub use build::{Limits, Plan};
pub use reader::{Decoded, DecodedStargz, Form, decode_bytes, decode_stargz_bytes};
pub use writer::Encoded;

use format::{CHUNK_INFO_SIZE, MAX_UNCOMPRESSED_END, ZRAN_CONTEXT_SIZE, round_up_4k};
use format::{CHUNK_INFO_V1_SIZE, MAX_V1_COMPRESSED_SIZE, MAX_V1_UNCOMPRESSED_OFFSET};
use format::{MAX_CHUNK_SIZE, MAX_CHUNKS, MAX_COMPRESSED_OFFSET, MAX_COMPRESSED_SIZE, MAX_DICT_SIZE};

/// Where inflating restarts for a run of chunks: a Nydus zran context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZranContext {
    /// Compressed offset of the first whole byte of the deflate block the context starts at.
    pub in_offset: u64,
    /// Uncompressed offset (in the layer's tar stream) of the block's first byte.
    pub out_offset: u64,
    /// Compressed bytes from `in_offset` that decoding `out_len` bytes needs.
    pub in_len: u32,
    /// Uncompressed bytes the context covers: up to the end of its last chunk.
    pub out_len: u32,
    /// How many high bits of `prev_byte` (byte `in_offset - 1`) start the block, 0..=7.
    pub bits: u8,
    /// Byte `in_offset - 1` of the gzip stream when `bits > 0`, else 0.
    pub prev_byte: u8,
    /// The history to set before inflating: at most 32 KiB, possibly shorter (near the start
    /// of a gzip member, or cut to what the data after the checkpoint refers to).
    pub dict: Vec<u8>,
}

/// One chunk-info entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkInfo {
    /// The chunk's place in the blob's synthetic address space: a multiple of 4096, each chunk
    /// after the previous one rounded up to 4096. Not an offset in the tar stream.
    pub uncompressed_offset: u64,
    /// 1..=2^24.
    pub uncompressed_size: u32,
    /// Where in the gzip stream decoding for this chunk starts (the checkpoint before it), as
    /// Nydus uses it: an approximation for range planning, not a decoding input.
    pub compressed_offset: u64,
    /// Compressed bytes from `compressed_offset` to past the chunk's end.
    pub compressed_size: u32,
    /// Index of the chunk's context in [`BlobMeta::contexts`].
    pub zran_index: u32,
    /// Offset of the chunk's first byte in its context's output.
    pub zran_offset: u32,
}

/// A blob.meta in memory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlobMeta {
    /// In chunk-info (CI) order, which is tar-stream order of first appearance.
    pub chunks: Vec<ChunkInfo>,
    /// In stream order.
    pub contexts: Vec<ZranContext>,
    /// sha256 of each chunk's uncompressed bytes, by CI index (the content of Nydus's
    /// `blob.digest`). blob.meta does not carry them: empty when read back.
    pub digests: Vec<[u8; 32]>,
}

/// One chunk of an eStargz layer: a gzip member of the layer (and, maybe, the members of tar
/// headers after it) inflates to it. A chunk info v1 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StargzChunk {
    /// As for [`ChunkInfo::uncompressed_offset`]: the blob's synthetic, 4 KiB-aligned space.
    pub uncompressed_offset: u64,
    /// 1..=2^24.
    pub uncompressed_size: u32,
    /// Where the chunk's gzip member starts in the layer.
    pub compressed_offset: u64,
    /// Bytes from `compressed_offset` that hold the whole member: 1..=2^24, never equal to
    /// `uncompressed_size` (Nydus reads a v1 chunk whose sizes are equal as stored, not
    /// compressed).
    pub compressed_size: u32,
}

/// The blob.meta of an eStargz layer: chunk info v1 only (Nydus's "legacy stargz" blob); or
/// of an uncompressed tar layer, whose chunks are stored ranges of the tar (`stored`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StargzMeta {
    /// In chunk-info order: uncompressed offsets increasing, compressed offsets increasing.
    pub chunks: Vec<StargzChunk>,
    /// Every chunk is stored, not compressed: its two sizes are equal (how Nydus tells a stored
    /// v1 chunk), its compressed offset is where its bytes are in the blob. Else no chunk's
    /// sizes are equal.
    pub stored: bool,
}

impl StargzMeta {
    /// Size of the blob's uncompressed address space: the aligned end of the last chunk.
    pub fn uncompressed_size(&self) -> u64 {
        self.chunks
            .last()
            .and_then(|c| round_up_4k(c.uncompressed_offset.saturating_add(u64::from(c.uncompressed_size))))
            .unwrap_or(0)
    }

    /// Check everything a reader of the format relies on (see `formats/blob-meta.md`).
    pub fn validate(&self) -> Result<(), MetaError> {
        if self.chunks.is_empty() || self.chunks.len() as u64 > MAX_CHUNKS {
            return Err(MetaError::Data {
                message: format!("{} chunks (1..={MAX_CHUNKS})", self.chunks.len()),
            });
        }
        let mut prev: Option<&StargzChunk> = None;
        for (i, c) in self.chunks.iter().enumerate() {
            let err = |message: String| MetaError::Chunk {
                index: i as u64,
                offset: i as u64 * CHUNK_INFO_V1_SIZE as u64,
                message,
            };
            let (us, cs) = (u64::from(c.uncompressed_size), u64::from(c.compressed_size));
            if us == 0 || us > MAX_CHUNK_SIZE {
                return Err(err(format!("uncompressed size {us} (1..={MAX_CHUNK_SIZE})")));
            }
            if cs == 0 || cs > MAX_V1_COMPRESSED_SIZE {
                return Err(err(format!("compressed size {cs} (1..={MAX_V1_COMPRESSED_SIZE})")));
            }
            if cs == us && !self.stored {
                return Err(err(format!(
                    "compressed and uncompressed sizes are both {us}: Nydus would read the chunk as stored"
                )));
            }
            if cs != us && self.stored {
                return Err(err(format!(
                    "compressed size {cs} and uncompressed size {us} differ in a blob of stored chunks"
                )));
            }
            if c.uncompressed_offset % format::ALIGNMENT != 0
                || c.uncompressed_offset > MAX_V1_UNCOMPRESSED_OFFSET
            {
                return Err(err(format!(
                    "uncompressed offset {:#x} is not 4 KiB-aligned below 2^44",
                    c.uncompressed_offset
                )));
            }
            if c.uncompressed_offset + us > MAX_UNCOMPRESSED_END {
                return Err(err(format!("uncompressed end {:#x} past 2^44", c.uncompressed_offset + us)));
            }
            if c.compressed_offset > MAX_COMPRESSED_OFFSET {
                return Err(err(format!(
                    "compressed offset {:#x} does not fit 40 bits",
                    c.compressed_offset
                )));
            }
            if let Some(p) = prev {
                // Nydus finds chunks by binary search on either offset.
                let p_end = p.uncompressed_offset + round_up_4k(u64::from(p.uncompressed_size)).unwrap_or(0);
                if c.uncompressed_offset < p_end {
                    return Err(err(format!(
                        "uncompressed offset {:#x} overlaps the previous chunk (ends at {p_end:#x})",
                        c.uncompressed_offset
                    )));
                }
                if c.compressed_offset <= p.compressed_offset {
                    return Err(err(format!(
                        "compressed offset {} not after the previous chunk's {}",
                        c.compressed_offset, p.compressed_offset
                    )));
                }
            }
            prev = Some(c);
        }
        Ok(())
    }
}

/// What is wrong, and where. Offsets in the CI data count from its first byte, after
/// decompression.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("blob.meta is {len} bytes, shorter than its 4096-byte header")]
    TooShort { len: u64 },
    #[error("blob.meta header: {field} (at offset {offset}) {message}")]
    Header { field: &'static str, offset: u64, message: String },
    #[error("blob.meta is {len} bytes: neither {compressed} (compressed form) nor {cache} (cache form)")]
    Size { len: u64, compressed: u64, cache: u64 },
    #[error("blob.meta CI data: {message}")]
    Data { message: String },
    #[error("chunk {index} (CI data offset {offset}): {message}")]
    Chunk { index: u64, offset: u64, message: String },
    #[error("zran context {index} (CI data offset {offset}): {message}")]
    Context { index: u64, offset: u64, message: String },
    #[error("file chunk {index} at uncompressed offset {out}: {message}")]
    Input { index: usize, out: u64, message: String },
    #[error("gzip index: {0}")]
    Index(String),
    #[error("blob.meta does not match the blob table: {field} is {found}, the bootstrap says {expected}")]
    Mismatch { field: &'static str, found: u64, expected: u64 },
}

impl BlobMeta {
    /// Size of the blob's uncompressed address space: the aligned end of the last chunk.
    pub fn uncompressed_size(&self) -> u64 {
        self.chunks
            .last()
            .and_then(|c| round_up_4k(c.uncompressed_offset.saturating_add(u64::from(c.uncompressed_size))))
            .unwrap_or(0)
    }

    /// The chunk digests as Nydus's `blob.digest` stores them: 32 bytes per chunk, in CI order.
    pub fn digest_table(&self) -> Vec<u8> {
        self.digests.concat()
    }

    /// Check everything a reader of the format relies on (see `formats/blob-meta.md`).
    pub fn validate(&self) -> Result<(), MetaError> {
        if self.chunks.len() as u64 > MAX_CHUNKS {
            return Err(MetaError::Data {
                message: format!("{} chunks, more than {MAX_CHUNKS}", self.chunks.len()),
            });
        }
        if self.contexts.len() > self.chunks.len() {
            return Err(MetaError::Data {
                message: format!("{} zran contexts for {} chunks", self.contexts.len(), self.chunks.len()),
            });
        }
        if !self.digests.is_empty() && self.digests.len() != self.chunks.len() {
            return Err(MetaError::Data {
                message: format!("{} digests for {} chunks", self.digests.len(), self.chunks.len()),
            });
        }
        let table = self.chunks.len() as u64 * CHUNK_INFO_SIZE as u64;
        let mut prev: Option<&ZranContext> = None;
        for (i, c) in self.contexts.iter().enumerate() {
            let err = |message: String| MetaError::Context {
                index: i as u64,
                offset: table + i as u64 * ZRAN_CONTEXT_SIZE as u64,
                message,
            };
            if c.bits > 7 {
                return Err(err(format!("ctx_bits {} (at most 7)", c.bits)));
            }
            if c.bits > 0 && c.in_offset == 0 {
                return Err(err(
                    "ctx_bits > 0 at compressed offset 0, where there is no previous byte".into()
                ));
            }
            if c.dict.len() as u64 > MAX_DICT_SIZE {
                return Err(err(format!("dictionary of {} bytes (at most {MAX_DICT_SIZE})", c.dict.len())));
            }
            if c.in_offset.checked_add(u64::from(c.in_len)).is_none() {
                return Err(err(format!("in_offset {} + in_len {} overflows", c.in_offset, c.in_len)));
            }
            if c.out_offset.checked_add(u64::from(c.out_len)).is_none() {
                return Err(err(format!("out_offset {} + out_len {} overflows", c.out_offset, c.out_len)));
            }
            if let Some(p) = prev
                && (c.in_offset < p.in_offset || c.out_offset < p.out_offset)
            {
                return Err(err(format!(
                    "starts at {}/{} (compressed/uncompressed), before the previous context's {}/{}",
                    c.in_offset, c.out_offset, p.in_offset, p.out_offset
                )));
            }
            prev = Some(c);
        }
        let mut prev: Option<&ChunkInfo> = None;
        for (i, c) in self.chunks.iter().enumerate() {
            let err = |message: String| MetaError::Chunk {
                index: i as u64,
                offset: i as u64 * CHUNK_INFO_SIZE as u64,
                message,
            };
            let size = u64::from(c.uncompressed_size);
            if size == 0 || size > MAX_CHUNK_SIZE {
                return Err(err(format!("uncompressed size {size} (1..={MAX_CHUNK_SIZE})")));
            }
            if c.uncompressed_offset % format::ALIGNMENT != 0 {
                return Err(err(format!(
                    "uncompressed offset {:#x} is not 4 KiB-aligned",
                    c.uncompressed_offset
                )));
            }
            if c.uncompressed_offset.saturating_add(size) > MAX_UNCOMPRESSED_END {
                return Err(err(format!(
                    "uncompressed end {:#x} past 2^44",
                    c.uncompressed_offset.saturating_add(size)
                )));
            }
            if c.compressed_offset > MAX_COMPRESSED_OFFSET {
                return Err(err(format!(
                    "compressed offset {:#x} does not fit 40 bits",
                    c.compressed_offset
                )));
            }
            if u64::from(c.compressed_size) > MAX_COMPRESSED_SIZE {
                return Err(err(format!("compressed size {} does not fit 24 bits", c.compressed_size)));
            }
            let Some(ctx) = self.contexts.get(c.zran_index as usize) else {
                return Err(err(format!(
                    "zran index {} with {} contexts",
                    c.zran_index,
                    self.contexts.len()
                )));
            };
            if u64::from(c.zran_offset) + size > u64::from(ctx.out_len) {
                return Err(err(format!(
                    "zran range {}+{size} past the end of context {} ({} bytes)",
                    c.zran_offset, c.zran_index, ctx.out_len
                )));
            }
            if let Some(p) = prev {
                // Nydus finds chunks by binary search on both offsets, and finds the first chunk
                // of a context by walking back while the index stays the same.
                let p_end = p.uncompressed_offset + round_up_4k(u64::from(p.uncompressed_size)).unwrap_or(0);
                if c.uncompressed_offset < p_end {
                    return Err(err(format!(
                        "uncompressed offset {:#x} overlaps the previous chunk (ends at {p_end:#x})",
                        c.uncompressed_offset
                    )));
                }
                if c.compressed_offset < p.compressed_offset {
                    return Err(err(format!(
                        "compressed offset {} before the previous chunk's {}",
                        c.compressed_offset, p.compressed_offset
                    )));
                }
                if c.zran_index < p.zran_index {
                    return Err(err(format!(
                        "zran index {} after a chunk of context {}",
                        c.zran_index, p.zran_index
                    )));
                }
            }
            prev = Some(c);
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests;
