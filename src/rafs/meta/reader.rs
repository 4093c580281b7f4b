//! Reads a blob.meta in either form, trusting nothing: the header's magics, features,
//! compressor and sizes, the decompressed size (bounded before anything is allocated for
//! it), every chunk info and context, and the tiling of the dictionary table. Errors name the
//! field and its offset; nothing panics. Zran blob.meta ([`decode_bytes`]) and the chunk info
//! v1 of eStargz layers ([`decode_stargz_bytes`]) share the header and the two forms.

use super::format::{
    CHUNK_INFO_SIZE, CHUNK_INFO_V1_SIZE, ChunkInfoV1, ChunkInfoV2, HEADER_SIZE, Header, MAGIC, MAX_CHUNKS,
    MAX_CI_SIZE, MAX_DICT_SIZE, ZRAN_CONTEXT_SIZE, ZranContextV1, chunk_flags, compressor, features,
    round_up_4k,
};
use super::{BlobMeta, ChunkInfo, MetaError, StargzChunk, StargzMeta, ZranContext};
use crate::rafs::writer::BlobSpec;
use std::borrow::Cow;
use std::io::Read;
use zerocopy::FromBytes;

/// Which of the two layouts a blob.meta was in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `[CI data as the header's compressor left it][header]`.
    Compressed,
    /// `[CI data][zeros to a multiple of 4096][header]`.
    Cache,
}

/// A blob.meta read back, with its header's description of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Digests are not in a blob.meta: `meta.digests` is empty.
    pub meta: BlobMeta,
    pub form: Form,
    pub features: u32,
    pub ci_compressor: u32,
    pub ci_offset: u64,
    pub ci_compressed_size: u64,
    pub ci_uncompressed_size: u64,
}

// Offsets of the header's fields, for messages.
const AT_MAGIC: u64 = 0;
const AT_FEATURES: u64 = 4;
const AT_COMPRESSOR: u64 = 8;
const AT_ENTRIES: u64 = 12;
const AT_COMPRESSED_SIZE: u64 = 24;
const AT_UNCOMPRESSED_SIZE: u64 = 32;
const AT_ZRAN_OFFSET: u64 = 40;
const AT_ZRAN_SIZE: u64 = 48;
const AT_ZRAN_COUNT: u64 = 56;
const AT_RESERVED: u64 = 60;
const AT_MAGIC2: u64 = 4092;

/// A blob.meta's header and CI data, in either form, checked as far as both kinds agree.
struct Frame<'a> {
    header: Header,
    form: Form,
    data: Cow<'a, [u8]>,
    /// Where the header starts in the file, for messages.
    base: u64,
}

/// Read a blob.meta in either form.
pub fn decode_bytes(bytes: &[u8]) -> Result<Decoded, MetaError> {
    let f = frame(bytes, |feats| {
        if feats & features::REQUIRED != features::REQUIRED {
            return Err(format!("{feats:#x} lacks CHUNK_INFO_V2 and ZRAN"));
        }
        if feats & features::UNSUPPORTED != 0 {
            return Err(format!("{feats:#x} has BATCH, ENCRYPTED or TARFS"));
        }
        Ok(())
    })?;
    let h = &f.header;
    let meta = parse_ci(&f.data, h, f.base)?;
    Ok(Decoded {
        meta,
        form: f.form,
        features: h.features.get(),
        ci_compressor: h.ci_compressor.get(),
        ci_offset: h.ci_offset.get(),
        ci_compressed_size: h.ci_compressed_size.get(),
        ci_uncompressed_size: h.ci_uncompressed_size.get(),
    })
}

/// The header's checks, the form, and the CI data (decompressed when it was compressed).
/// `check_features` says what is wrong with the features for the kind being read.
fn frame(bytes: &[u8], check_features: impl Fn(u32) -> Result<(), String>) -> Result<Frame<'_>, MetaError> {
    let len = bytes.len() as u64;
    let Some(body) = bytes.len().checked_sub(HEADER_SIZE) else {
        return Err(MetaError::TooShort { len });
    };
    let base = body as u64;
    let h = Header::read_from_bytes(&bytes[body..]).map_err(|_| MetaError::TooShort { len })?;
    let herr = |field: &'static str, at: u64, message: String| MetaError::Header {
        field,
        offset: base + at,
        message,
    };

    for (field, at, v) in [("s_magic", AT_MAGIC, h.magic.get()), ("s_magic2", AT_MAGIC2, h.magic2.get())] {
        if v != MAGIC {
            return Err(herr(field, at, format!("is {v:#010x}, not {MAGIC:#010x}")));
        }
    }
    if let Some(i) = h.reserved.iter().position(|&b| b != 0) {
        return Err(herr("reserved", AT_RESERVED + i as u64, "is not zero".into()));
    }
    check_features(h.features.get()).map_err(|m| herr("s_features", AT_FEATURES, m))?;
    let comp = h.ci_compressor.get();
    if comp != compressor::NONE && comp != compressor::ZSTD {
        return Err(herr(
            "s_ci_compressor",
            AT_COMPRESSOR,
            format!("{comp} (only 0, none, and 3, zstd, are read)"),
        ));
    }
    let usize_ = h.ci_uncompressed_size.get();
    let csize = h.ci_compressed_size.get();
    if usize_ > MAX_CI_SIZE {
        return Err(herr(
            "s_ci_uncompressed_size",
            AT_UNCOMPRESSED_SIZE,
            format!("{usize_}, more than {MAX_CI_SIZE}"),
        ));
    }
    if csize > usize_ || (comp == compressor::NONE && csize != usize_) {
        return Err(herr(
            "s_ci_compressed_size",
            AT_COMPRESSED_SIZE,
            format!("{csize} for {usize_} bytes uncompressed with compressor {comp}"),
        ));
    }
    // Both bounded by MAX_CI_SIZE, so no overflow.
    let compressed_len = csize + HEADER_SIZE as u64;
    let cache_len = round_up_4k(usize_).unwrap_or(u64::MAX) + HEADER_SIZE as u64;
    let form = if len == compressed_len && (comp == compressor::ZSTD || len != cache_len) {
        Form::Compressed
    } else if len == cache_len {
        Form::Cache
    } else {
        return Err(MetaError::Size { len, compressed: compressed_len, cache: cache_len });
    };

    let data: Cow<'_, [u8]> = match form {
        Form::Compressed if comp == compressor::ZSTD => Cow::Owned(unzstd(&bytes[..body], usize_)?),
        Form::Compressed => Cow::Borrowed(&bytes[..body]),
        Form::Cache => {
            let (data, pad) = bytes[..body].split_at(usize_ as usize);
            if let Some(i) = pad.iter().position(|&b| b != 0) {
                return Err(MetaError::Data {
                    message: format!("padding byte at offset {} is not zero", usize_ + i as u64),
                });
            }
            Cow::Borrowed(data)
        }
    };
    Ok(Frame { header: h, form, data, base })
}

/// Decompress exactly `size` bytes; memory grows with what the data really yields, not with
/// what the header claims.
fn unzstd(src: &[u8], size: u64) -> Result<Vec<u8>, MetaError> {
    let derr = |e: std::io::Error| MetaError::Data { message: format!("zstd: {e}") };
    let decoder = zstd::stream::read::Decoder::with_buffer(src).map_err(derr)?;
    let mut out = Vec::new();
    decoder.take(size.saturating_add(1)).read_to_end(&mut out).map_err(derr)?;
    if out.len() as u64 != size {
        return Err(MetaError::Data {
            message: format!("zstd data decompresses to {} bytes, the header says {size}", out.len()),
        });
    }
    Ok(out)
}

fn parse_ci(data: &[u8], h: &Header, base: u64) -> Result<BlobMeta, MetaError> {
    let herr = |field: &'static str, at: u64, message: String| MetaError::Header {
        field,
        offset: base + at,
        message,
    };
    let size = data.len() as u64;
    let n = u64::from(h.ci_entries.get());
    if n > MAX_CHUNKS {
        return Err(herr("s_ci_entries", AT_ENTRIES, format!("{n}, more than {MAX_CHUNKS}")));
    }
    let zran_offset = h.ci_zran_offset.get();
    let table = n * CHUNK_INFO_SIZE as u64;
    if zran_offset != table {
        return Err(herr(
            "s_ci_zran_offset",
            AT_ZRAN_OFFSET,
            format!("{zran_offset}, not {n} chunks x 24 = {table}"),
        ));
    }
    let zran_size = h.ci_zran_size.get();
    if zran_offset.checked_add(zran_size) != Some(size) {
        return Err(herr(
            "s_ci_zran_size",
            AT_ZRAN_SIZE,
            format!(
                "{zran_size} after {zran_offset} bytes of chunk infos does not end the {size}-byte CI data"
            ),
        ));
    }
    let count = u64::from(h.ci_zran_count.get());
    let contexts_size = count * ZRAN_CONTEXT_SIZE as u64;
    if count > n || contexts_size > zran_size {
        return Err(herr(
            "s_ci_zran_count",
            AT_ZRAN_COUNT,
            format!(
                "{count} contexts ({contexts_size} bytes) for {n} chunks and {zran_size} bytes of zran data"
            ),
        ));
    }
    // Every size below is within `data`, checked above.
    let (chunk_bytes, rest) = data.split_at(table as usize);
    let (ctx_bytes, dicts) = rest.split_at(contexts_size as usize);
    let infos = <[ChunkInfoV2]>::ref_from_bytes(chunk_bytes)
        .map_err(|_| MetaError::Data { message: "chunk info table".into() })?;
    let ctxs = <[ZranContextV1]>::ref_from_bytes(ctx_bytes)
        .map_err(|_| MetaError::Data { message: "zran context table".into() })?;

    let mut chunks = Vec::with_capacity(infos.len());
    for (i, c) in infos.iter().enumerate() {
        if c.flags() != chunk_flags::ZRAN_CHUNK {
            return Err(MetaError::Chunk {
                index: i as u64,
                offset: i as u64 * CHUNK_INFO_SIZE as u64,
                message: format!("flags {:#04x}, not ZRAN|COMPRESSED (0x03)", c.flags()),
            });
        }
        chunks.push(ChunkInfo {
            uncompressed_offset: c.uncompressed_offset(),
            uncompressed_size: c.uncompressed_size(),
            compressed_offset: c.compressed_offset(),
            compressed_size: c.compressed_size(),
            zran_index: c.zran_index(),
            zran_offset: c.zran_offset(),
        });
    }
    let mut contexts = Vec::with_capacity(ctxs.len());
    let mut next_dict = 0u64;
    for (i, c) in ctxs.iter().enumerate() {
        let err = |message: String| MetaError::Context {
            index: i as u64,
            offset: table + i as u64 * ZRAN_CONTEXT_SIZE as u64,
            message,
        };
        let (dict_offset, dict_size) = (c.dict_offset.get(), u64::from(c.dict_size.get()));
        if dict_size > MAX_DICT_SIZE {
            return Err(err(format!("dict_size {dict_size} (at most {MAX_DICT_SIZE})")));
        }
        // Dictionaries are stored back to back in context order.
        if dict_offset != next_dict {
            return Err(err(format!("dict_offset {dict_offset}, expected {next_dict}")));
        }
        let end = next_dict + dict_size;
        if end > dicts.len() as u64 {
            return Err(err(format!(
                "dictionary {dict_offset}+{dict_size} past the end of the {}-byte dictionary table",
                dicts.len()
            )));
        }
        if c.reserved != [0, 0] {
            return Err(err("reserved bytes are not zero".into()));
        }
        contexts.push(ZranContext {
            in_offset: c.in_offset.get(),
            out_offset: c.out_offset.get(),
            in_len: c.in_len.get(),
            out_len: c.out_len.get(),
            bits: c.ctx_bits,
            prev_byte: c.ctx_byte,
            dict: dicts[next_dict as usize..end as usize].to_vec(),
        });
        next_dict = end;
    }
    if next_dict != dicts.len() as u64 {
        return Err(MetaError::Data {
            message: format!("dictionary table is {} bytes, its contexts use {next_dict}", dicts.len()),
        });
    }
    let meta = BlobMeta { chunks, contexts, digests: Vec::new() };
    meta.validate()?;
    Ok(meta)
}

impl BlobMeta {
    /// Read a blob.meta (either form) and check it against the blob-table entry that points at
    /// it, as nydusd does before it trusts one, and against the blob's sizes.
    pub fn decode(bytes: &[u8], blob: &BlobSpec) -> Result<BlobMeta, MetaError> {
        let d = decode_bytes(bytes)?;
        let chunk_count = d.meta.chunks.len() as u64;
        for (field, found, expected) in [
            ("chunk_count", chunk_count, u64::from(blob.chunk_count)),
            ("ci_compressor", u64::from(d.ci_compressor), u64::from(blob.ci_compressor)),
            ("ci_offset", d.ci_offset, blob.ci_offset),
            ("ci_compressed_size", d.ci_compressed_size, blob.ci_compressed_size),
            ("ci_uncompressed_size", d.ci_uncompressed_size, blob.ci_uncompressed_size),
        ] {
            if found != expected {
                return Err(MetaError::Mismatch { field, found, expected });
            }
        }
        if blob.features & features::REQUIRED != features::REQUIRED {
            return Err(MetaError::Mismatch {
                field: "features",
                found: u64::from(d.features),
                expected: u64::from(blob.features),
            });
        }
        let space = round_up_4k(blob.uncompressed_size).unwrap_or(u64::MAX);
        if d.meta.uncompressed_size() > space {
            return Err(MetaError::Mismatch {
                field: "uncompressed end of the chunks",
                found: d.meta.uncompressed_size(),
                expected: space,
            });
        }
        let table = chunk_count * CHUNK_INFO_SIZE as u64;
        for (i, c) in d.meta.contexts.iter().enumerate() {
            let end = c.in_offset + u64::from(c.in_len);
            if end > blob.compressed_size {
                return Err(MetaError::Context {
                    index: i as u64,
                    offset: table + i as u64 * ZRAN_CONTEXT_SIZE as u64,
                    message: format!(
                        "compressed range ends at {end}, past the layer's {} bytes",
                        blob.compressed_size
                    ),
                });
            }
        }
        for (i, c) in d.meta.chunks.iter().enumerate() {
            let end = c.compressed_offset + u64::from(c.compressed_size);
            if end > blob.compressed_size {
                return Err(MetaError::Chunk {
                    index: i as u64,
                    offset: i as u64 * CHUNK_INFO_SIZE as u64,
                    message: format!(
                        "compressed range ends at {end}, past the layer's {} bytes",
                        blob.compressed_size
                    ),
                });
            }
        }
        Ok(d.meta)
    }
}

/// A chunk info v1 blob.meta read back, with its header's description of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedStargz {
    pub meta: StargzMeta,
    pub form: Form,
    pub features: u32,
    pub ci_compressor: u32,
    pub ci_offset: u64,
    pub ci_compressed_size: u64,
    pub ci_uncompressed_size: u64,
}

/// Read the blob.meta of an eStargz layer (chunk info v1), in either form.
pub fn decode_stargz_bytes(bytes: &[u8]) -> Result<DecodedStargz, MetaError> {
    let f = frame(bytes, |feats| {
        if feats & features::ALIGNED == 0 {
            return Err(format!("{feats:#x} lacks ALIGNED"));
        }
        if feats & (features::CHUNK_INFO_V2 | features::ZRAN | features::UNSUPPORTED) != 0 {
            return Err(format!(
                "{feats:#x} has CHUNK_INFO_V2, ZRAN, BATCH, ENCRYPTED or TARFS: not chunk info v1"
            ));
        }
        Ok(())
    })?;
    let h = &f.header;
    let herr = |field: &'static str, at: u64, message: String| MetaError::Header {
        field,
        offset: f.base + at,
        message,
    };
    let n = u64::from(h.ci_entries.get());
    if n > MAX_CHUNKS {
        return Err(herr("s_ci_entries", AT_ENTRIES, format!("{n}, more than {MAX_CHUNKS}")));
    }
    let size = f.data.len() as u64;
    if size != n * CHUNK_INFO_V1_SIZE as u64 {
        return Err(herr(
            "s_ci_uncompressed_size",
            AT_UNCOMPRESSED_SIZE,
            format!("{size}, not {n} chunks x 16 = {}", n * CHUNK_INFO_V1_SIZE as u64),
        ));
    }
    for (field, at, v) in [
        ("s_ci_zran_offset", AT_ZRAN_OFFSET, h.ci_zran_offset.get()),
        ("s_ci_zran_size", AT_ZRAN_SIZE, h.ci_zran_size.get()),
        ("s_ci_zran_count", AT_ZRAN_COUNT, u64::from(h.ci_zran_count.get())),
    ] {
        if v != 0 {
            return Err(herr(field, at, format!("{v}, not 0: chunk info v1 has no zran contexts")));
        }
    }
    let infos = <[ChunkInfoV1]>::ref_from_bytes(&f.data)
        .map_err(|_| MetaError::Data { message: "chunk info table".into() })?;
    let mut chunks = Vec::with_capacity(infos.len());
    for (i, c) in infos.iter().enumerate() {
        if c.reserved() != 0 {
            return Err(MetaError::Chunk {
                index: i as u64,
                offset: i as u64 * CHUNK_INFO_V1_SIZE as u64,
                message: format!("reserved bits {:#04x} are not zero", c.reserved()),
            });
        }
        chunks.push(StargzChunk {
            uncompressed_offset: c.uncompressed_offset(),
            uncompressed_size: c.uncompressed_size(),
            compressed_offset: c.compressed_offset(),
            compressed_size: c.compressed_size(),
        });
    }
    // Stored chunks (an uncompressed layer's) have equal sizes; validate checks all agree.
    let stored = chunks.first().is_some_and(|c| c.compressed_size == c.uncompressed_size);
    let meta = StargzMeta { chunks, stored };
    meta.validate()?;
    Ok(DecodedStargz {
        meta,
        form: f.form,
        features: h.features.get(),
        ci_compressor: h.ci_compressor.get(),
        ci_offset: h.ci_offset.get(),
        ci_compressed_size: h.ci_compressed_size.get(),
        ci_uncompressed_size: h.ci_uncompressed_size.get(),
    })
}

impl StargzMeta {
    /// Read an eStargz blob.meta (either form) and check it against the blob-table entry that
    /// points at it: every field the entry repeats (features too, which Nydus 2.2 compares),
    /// and that every chunk lies inside the blob in both spaces.
    pub fn decode(bytes: &[u8], blob: &BlobSpec) -> Result<StargzMeta, MetaError> {
        let d = decode_stargz_bytes(bytes)?;
        for (field, found, expected) in [
            ("features", u64::from(d.features), u64::from(blob.features)),
            ("chunk_count", d.meta.chunks.len() as u64, u64::from(blob.chunk_count)),
            ("ci_compressor", u64::from(d.ci_compressor), u64::from(blob.ci_compressor)),
            ("ci_offset", d.ci_offset, blob.ci_offset),
            ("ci_compressed_size", d.ci_compressed_size, blob.ci_compressed_size),
            ("ci_uncompressed_size", d.ci_uncompressed_size, blob.ci_uncompressed_size),
        ] {
            if found != expected {
                return Err(MetaError::Mismatch { field, found, expected });
            }
        }
        let space = round_up_4k(blob.uncompressed_size).unwrap_or(u64::MAX);
        if d.meta.uncompressed_size() > space {
            return Err(MetaError::Mismatch {
                field: "uncompressed end of the chunks",
                found: d.meta.uncompressed_size(),
                expected: space,
            });
        }
        // Stored chunks belong to a blob without compression, compressed ones to one with.
        if d.meta.stored != (blob.compression_algo == crate::rafs::format::compressor::NONE) {
            return Err(MetaError::Mismatch {
                field: "stored chunks (1) in a blob of compressor none (0)",
                found: u64::from(d.meta.stored),
                expected: u64::from(blob.compression_algo != crate::rafs::format::compressor::NONE),
            });
        }
        for (i, c) in d.meta.chunks.iter().enumerate() {
            let end = c.compressed_offset + u64::from(c.compressed_size);
            if end > blob.compressed_size {
                return Err(MetaError::Chunk {
                    index: i as u64,
                    offset: i as u64 * CHUNK_INFO_V1_SIZE as u64,
                    message: format!(
                        "compressed range ends at {end}, past the layer's {} bytes",
                        blob.compressed_size
                    ),
                });
            }
        }
        Ok(d.meta)
    }
}
