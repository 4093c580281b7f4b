//! Writes a blob.meta in its two forms: `[CI data, one zstd frame][header]`, the blob Nydus
//! fetches (zran's `<layer>.blob.meta`), and `[CI data][zeros to 4 KiB][header]`, the cache
//! file nydusd keeps as `<blob id>.blob.meta`. Both carry the same header. The same two forms
//! for the chunk info v1 of an eStargz layer ([`StargzMeta`]).

use super::format::{
    CHUNK_INFO_SIZE, CHUNK_INFO_V1_SIZE, ChunkInfoV1, ChunkInfoV2, HEADER_SIZE, Header, MAGIC, MAX_CI_SIZE,
    ZRAN_CONTEXT_SIZE, ZranContextV1, chunk_flags, compressor, features, round_up_4k,
};
use super::{BlobMeta, MetaError, StargzMeta};
use crate::gzip::Index;
use sha2::{Digest, Sha256};
use std::io::Write;
use zerocopy::{FromZeros, IntoBytes};

/// zstd's default level, as Nydus uses it for the CI data.
const ZSTD_LEVEL: i32 = 3;

/// A blob.meta in its compressed form, with what the bootstrap's blob-table entry says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The compressed form: `[CI data compressed][4096-byte header]`.
    pub bytes: Vec<u8>,
    /// sha256 of `bytes`: the blob table's `blob_meta_digest` (nydusd fetches the blob.meta
    /// from the blob of that digest); `bytes.len()` is its `blob_meta_size`.
    pub digest: [u8; 32],
    /// `features` ([`features::ZRAN_REF`], or [`features::STARGZ_REF`]).
    pub features: u32,
    pub chunk_count: u32,
    /// [`compressor::ZSTD`], or [`compressor::NONE`] when zstd does not make the data smaller
    /// (then the data is stored as it is, as Nydus does).
    pub ci_compressor: u32,
    /// Where the CI data starts in `bytes`: 0.
    pub ci_offset: u64,
    pub ci_compressed_size: u64,
    pub ci_uncompressed_size: u64,
    /// The blob's `uncompressed_size`: the end of its synthetic address space.
    pub uncompressed_size: u64,
}

/// Where the dictionaries come from when the CI data is written: the contexts themselves, or
/// the seek index they were planned from (one window decompressed at a time).
enum Dicts<'a> {
    Own,
    Index { index: &'a Index, checkpoints: &'a [usize] },
}

impl Dicts<'_> {
    fn len(&self, meta: &BlobMeta, i: usize) -> Result<u64, MetaError> {
        match self {
            Dicts::Own => Ok(meta.contexts[i].dict.len() as u64),
            Dicts::Index { index, checkpoints } => checkpoints
                .get(i)
                .and_then(|&c| index.checkpoints.get(c))
                .map(|c| u64::from(c.window_len))
                .ok_or_else(|| MetaError::Index(format!("no checkpoint for context {i}"))),
        }
    }
}

impl BlobMeta {
    /// The uncompressed CI data: chunk infos, zran contexts, dictionaries.
    pub fn ci_data(&self) -> Result<Vec<u8>, MetaError> {
        let mut out = Vec::new();
        self.write_ci(&Dicts::Own, &mut out)?;
        Ok(out)
    }

    /// Write the CI data to `w`; returns its size.
    fn write_ci(&self, dicts: &Dicts, w: &mut dyn Write) -> Result<u64, MetaError> {
        self.validate()?;
        let io = |e: std::io::Error| MetaError::Data { message: format!("writing the CI data: {e}") };
        let mut lens = Vec::with_capacity(self.contexts.len());
        for i in 0..self.contexts.len() {
            lens.push(dicts.len(self, i)?);
        }
        let size = self.chunks.len() as u64 * CHUNK_INFO_SIZE as u64
            + self.contexts.len() as u64 * ZRAN_CONTEXT_SIZE as u64
            + lens.iter().sum::<u64>();
        if size > MAX_CI_SIZE {
            return Err(MetaError::Data {
                message: format!("{size} bytes of CI data, more than {MAX_CI_SIZE}"),
            });
        }
        for c in &self.chunks {
            let data = u64::from(c.zran_index) << 32 | u64::from(c.zran_offset);
            let info = ChunkInfoV2::pack(
                c.uncompressed_offset,
                c.uncompressed_size,
                c.compressed_offset,
                c.compressed_size,
                chunk_flags::ZRAN_CHUNK,
                data,
            );
            w.write_all(info.as_bytes()).map_err(io)?;
        }
        let mut dict_offset = 0u64;
        for (c, &len) in self.contexts.iter().zip(&lens) {
            let ctx = ZranContextV1 {
                in_offset: c.in_offset.into(),
                out_offset: c.out_offset.into(),
                dict_offset: dict_offset.into(),
                in_len: c.in_len.into(),
                out_len: c.out_len.into(),
                dict_size: (len as u32).into(),
                ctx_byte: c.prev_byte,
                ctx_bits: c.bits,
                reserved: [0; 2],
            };
            w.write_all(ctx.as_bytes()).map_err(io)?;
            dict_offset += len;
        }
        for (i, c) in self.contexts.iter().enumerate() {
            match dicts {
                Dicts::Own => w.write_all(&c.dict).map_err(io)?,
                Dicts::Index { index, checkpoints } => {
                    let dict = super::build::dictionary(index, checkpoints[i])?;
                    if dict.len() as u64 != lens[i] {
                        return Err(MetaError::Index(format!(
                            "checkpoint {}: window of {} bytes, {} expected",
                            checkpoints[i],
                            dict.len(),
                            lens[i]
                        )));
                    }
                    w.write_all(&dict).map_err(io)?;
                }
            }
        }
        Ok(size)
    }

    /// The compressed form, the one zran writes and Nydus fetches.
    pub fn encode(&self) -> Result<Encoded, MetaError> {
        self.encode_with(&Dicts::Own)
    }

    /// The compressed form of a [`BlobMeta::plan`], its dictionaries taken from `index` one at
    /// a time: the same bytes as [`BlobMeta::build`] then [`BlobMeta::encode`], without ever
    /// holding every dictionary at once.
    pub fn encode_from_index(&self, index: &Index, checkpoints: &[usize]) -> Result<Encoded, MetaError> {
        if checkpoints.len() != self.contexts.len() {
            return Err(MetaError::Index(format!(
                "{} checkpoints for {} contexts",
                checkpoints.len(),
                self.contexts.len()
            )));
        }
        self.encode_with(&Dicts::Index { index, checkpoints })
    }

    fn encode_with(&self, dicts: &Dicts) -> Result<Encoded, MetaError> {
        let (ci_len, bytes, ci_compressor) = self.payload(dicts)?;
        let header = self.header(ci_len, bytes.len() as u64, ci_compressor);
        Ok(framed(bytes, &header, self.uncompressed_size()))
    }

    /// The uncompressed cache form nydusd makes of the compressed one: the CI data, zeros up to
    /// a multiple of 4096, and the same header (which still describes the compressed form).
    pub fn encode_cache(&self) -> Result<Vec<u8>, MetaError> {
        let (ci_len, payload, ci_compressor) = self.payload(&Dicts::Own)?;
        let header = self.header(ci_len, payload.len() as u64, ci_compressor);
        let mut ci = self.ci_data()?;
        let padded = round_up_4k(ci.len() as u64).unwrap_or(u64::MAX) as usize;
        ci.resize(padded, 0);
        ci.extend_from_slice(header.as_bytes());
        Ok(ci)
    }

    /// The payload of the compressed form: the CI data as one zstd frame (streamed, with its
    /// size in the frame header), or as it is when zstd does not make it smaller, as Nydus
    /// does. Returns the CI data's size, the payload and its compressor.
    fn payload(&self, dicts: &Dicts) -> Result<(u64, Vec<u8>, u32), MetaError> {
        let zerr = |e: std::io::Error| MetaError::Data { message: format!("zstd: {e}") };
        let mut size = self.chunks.len() as u64 * CHUNK_INFO_SIZE as u64
            + self.contexts.len() as u64 * ZRAN_CONTEXT_SIZE as u64;
        for i in 0..self.contexts.len() {
            size += dicts.len(self, i)?;
        }
        let mut enc = zstd::stream::Encoder::new(Vec::new(), ZSTD_LEVEL).map_err(zerr)?;
        enc.include_contentsize(true).map_err(zerr)?;
        enc.set_pledged_src_size(Some(size)).map_err(zerr)?;
        let written = self.write_ci(dicts, &mut enc)?;
        let compressed = enc.finish().map_err(zerr)?;
        if written != size {
            return Err(MetaError::Data {
                message: format!("wrote {written} bytes of CI data, planned {size}"),
            });
        }
        if compressed.len() as u64 >= size {
            let mut raw = Vec::with_capacity(size as usize);
            self.write_ci(dicts, &mut raw)?;
            return Ok((size, raw, compressor::NONE));
        }
        Ok((size, compressed, compressor::ZSTD))
    }

    fn header(&self, ci_len: u64, payload_len: u64, ci_compressor: u32) -> Header {
        let n = self.chunks.len() as u64;
        let zran_offset = n * CHUNK_INFO_SIZE as u64;
        let mut h = header(features::ZRAN_REF, n as u32, ci_len, payload_len, ci_compressor);
        h.ci_zran_offset = zran_offset.into();
        h.ci_zran_size = (ci_len - zran_offset).into();
        h.ci_zran_count = (self.contexts.len() as u32).into();
        h
    }
}

/// A header for CI data of `ci_len` bytes stored as `payload_len` bytes with `ci_compressor`
/// at offset 0, with no zran contexts.
fn header(features: u32, entries: u32, ci_len: u64, payload_len: u64, ci_compressor: u32) -> Header {
    let mut h = Header::new_zeroed();
    h.magic = MAGIC.into();
    h.features = features.into();
    h.ci_compressor = ci_compressor.into();
    h.ci_entries = entries.into();
    h.ci_offset = 0.into();
    h.ci_compressed_size = payload_len.into();
    h.ci_uncompressed_size = ci_len.into();
    h.magic2 = MAGIC.into();
    debug_assert_eq!(h.as_bytes().len(), HEADER_SIZE);
    h
}

/// The compressed form of `payload` under `header`, and what the blob table says of it.
fn framed(mut bytes: Vec<u8>, header: &Header, uncompressed_size: u64) -> Encoded {
    bytes.extend_from_slice(header.as_bytes());
    let digest = Sha256::digest(&bytes).into();
    Encoded {
        digest,
        features: header.features.get(),
        chunk_count: header.ci_entries.get(),
        ci_compressor: header.ci_compressor.get(),
        ci_offset: header.ci_offset.get(),
        ci_compressed_size: header.ci_compressed_size.get(),
        ci_uncompressed_size: header.ci_uncompressed_size.get(),
        uncompressed_size,
        bytes,
    }
}

/// CI data held whole in memory as one zstd frame (with its size in the frame header), or as
/// it is when zstd does not make it smaller; and its compressor.
fn compress_ci(ci: Vec<u8>) -> Result<(Vec<u8>, u32), MetaError> {
    let zerr = |e: std::io::Error| MetaError::Data { message: format!("zstd: {e}") };
    let mut enc = zstd::stream::Encoder::new(Vec::new(), ZSTD_LEVEL).map_err(zerr)?;
    enc.include_contentsize(true).map_err(zerr)?;
    enc.set_pledged_src_size(Some(ci.len() as u64)).map_err(zerr)?;
    enc.write_all(&ci).map_err(zerr)?;
    let compressed = enc.finish().map_err(zerr)?;
    if compressed.len() >= ci.len() {
        return Ok((ci, compressor::NONE));
    }
    Ok((compressed, compressor::ZSTD))
}

impl StargzMeta {
    /// The uncompressed CI data: one chunk info v1 per chunk.
    pub fn ci_data(&self) -> Result<Vec<u8>, MetaError> {
        self.validate()?;
        let mut out = Vec::with_capacity(self.chunks.len() * CHUNK_INFO_V1_SIZE);
        for c in &self.chunks {
            let info = ChunkInfoV1::pack(
                c.uncompressed_offset,
                c.uncompressed_size,
                c.compressed_offset,
                c.compressed_size,
            );
            out.extend_from_slice(info.as_bytes());
        }
        Ok(out)
    }

    /// The compressed form, the one zran writes and Nydus fetches.
    pub fn encode(&self) -> Result<Encoded, MetaError> {
        let ci = self.ci_data()?;
        let ci_len = ci.len() as u64;
        let (payload, ci_compressor) = compress_ci(ci)?;
        let h = header(
            features::STARGZ_REF,
            self.chunks.len() as u32,
            ci_len,
            payload.len() as u64,
            ci_compressor,
        );
        Ok(framed(payload, &h, self.uncompressed_size()))
    }

    /// The cache form nydusd makes of the compressed one: the CI data, zeros up to a multiple
    /// of 4096, and the same header.
    pub fn encode_cache(&self) -> Result<Vec<u8>, MetaError> {
        let ci = self.ci_data()?;
        let ci_len = ci.len() as u64;
        let (payload, ci_compressor) = compress_ci(ci.clone())?;
        let h = header(
            features::STARGZ_REF,
            self.chunks.len() as u32,
            ci_len,
            payload.len() as u64,
            ci_compressor,
        );
        let mut out = ci;
        out.resize(round_up_4k(ci_len).unwrap_or(u64::MAX) as usize, 0);
        out.extend_from_slice(h.as_bytes());
        Ok(out)
    }
}
