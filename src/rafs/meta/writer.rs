//! Writes a blob.meta in its two forms: `[CI data, one zstd frame][header]`, the blob Nydus
//! fetches (zran's `<layer>.blob.meta`), and `[CI data][zeros to 4 KiB][header]`, the cache
//! file nydusd keeps as `<blob id>.blob.meta`. Both carry the same header.

use super::format::{
    CHUNK_INFO_SIZE, ChunkInfoV2, HEADER_SIZE, Header, MAGIC, MAX_CI_SIZE, ZRAN_CONTEXT_SIZE, ZranContextV1,
    chunk_flags, compressor, features, round_up_4k,
};
use super::{BlobMeta, MetaError};
use sha2::{Digest, Sha256};
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
    /// `features` ([`features::ZRAN_REF`]).
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

impl BlobMeta {
    /// The uncompressed CI data: chunk infos, zran contexts, dictionaries.
    pub fn ci_data(&self) -> Result<Vec<u8>, MetaError> {
        self.validate()?;
        let dicts: u64 = self.contexts.iter().map(|c| c.dict.len() as u64).sum();
        let size = self.chunks.len() as u64 * CHUNK_INFO_SIZE as u64
            + self.contexts.len() as u64 * ZRAN_CONTEXT_SIZE as u64
            + dicts;
        if size > MAX_CI_SIZE {
            return Err(MetaError::Data {
                message: format!("{size} bytes of CI data, more than {MAX_CI_SIZE}"),
            });
        }
        let mut out = Vec::with_capacity(size as usize);
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
            out.extend_from_slice(info.as_bytes());
        }
        let mut dict_offset = 0u64;
        for c in &self.contexts {
            let ctx = ZranContextV1 {
                in_offset: c.in_offset.into(),
                out_offset: c.out_offset.into(),
                dict_offset: dict_offset.into(),
                in_len: c.in_len.into(),
                out_len: c.out_len.into(),
                dict_size: (c.dict.len() as u32).into(),
                ctx_byte: c.prev_byte,
                ctx_bits: c.bits,
                reserved: [0; 2],
            };
            out.extend_from_slice(ctx.as_bytes());
            dict_offset += c.dict.len() as u64;
        }
        for c in &self.contexts {
            out.extend_from_slice(&c.dict);
        }
        Ok(out)
    }

    /// The compressed form, the one zran writes and Nydus fetches.
    pub fn encode(&self) -> Result<Encoded, MetaError> {
        let (_, mut bytes, header) = self.parts()?;
        bytes.extend_from_slice(header.as_bytes());
        let digest = Sha256::digest(&bytes).into();
        Ok(Encoded {
            digest,
            features: header.features.get(),
            chunk_count: header.ci_entries.get(),
            ci_compressor: header.ci_compressor.get(),
            ci_offset: header.ci_offset.get(),
            ci_compressed_size: header.ci_compressed_size.get(),
            ci_uncompressed_size: header.ci_uncompressed_size.get(),
            uncompressed_size: self.uncompressed_size(),
            bytes,
        })
    }

    /// The uncompressed cache form nydusd makes of the compressed one: the CI data, zeros up to
    /// a multiple of 4096, and the same header (which still describes the compressed form).
    pub fn encode_cache(&self) -> Result<Vec<u8>, MetaError> {
        let (mut ci, _, header) = self.parts()?;
        let padded = round_up_4k(ci.len() as u64).unwrap_or(u64::MAX) as usize;
        ci.resize(padded, 0);
        ci.extend_from_slice(header.as_bytes());
        Ok(ci)
    }

    /// The CI data, the payload of the compressed form, and the header.
    fn parts(&self) -> Result<(Vec<u8>, Vec<u8>, Header), MetaError> {
        let ci = self.ci_data()?;
        let compressed = zstd::bulk::compress(&ci, ZSTD_LEVEL)
            .map_err(|e| MetaError::Data { message: format!("zstd: {e}") })?;
        let (ci_compressor, payload) = if compressed.len() < ci.len() {
            (compressor::ZSTD, compressed)
        } else {
            (compressor::NONE, ci.clone())
        };
        let n = self.chunks.len() as u64;
        let zran_offset = n * CHUNK_INFO_SIZE as u64;
        let mut h = Header::new_zeroed();
        h.magic = MAGIC.into();
        h.features = features::ZRAN_REF.into();
        h.ci_compressor = ci_compressor.into();
        h.ci_entries = (n as u32).into();
        h.ci_offset = 0.into();
        h.ci_compressed_size = (payload.len() as u64).into();
        h.ci_uncompressed_size = (ci.len() as u64).into();
        h.ci_zran_offset = zran_offset.into();
        h.ci_zran_size = (ci.len() as u64 - zran_offset).into();
        h.ci_zran_count = (self.contexts.len() as u32).into();
        h.magic2 = MAGIC.into();
        debug_assert_eq!(h.as_bytes().len(), HEADER_SIZE);
        Ok((ci, payload, h))
    }
}
