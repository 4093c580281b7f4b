//! A layer's Nydus data blob, finished: its chunk data (the pass's data file, or the chunks
//! that survived deduplication across layers copied out of it), then Nydus's tail
//! (`formats/nydus-native.md`): `image.blob` header, blob.meta (chunk info v1, compressed with
//! the blob's compressor unless that does not make it smaller, and its 4096-byte header),
//! the chunk digests, the layer's own bootstrap (zstd), the ToC. The file is written under a
//! temporary name, hashed as it is written, and renamed to its digest once whole.

use super::pass::{Pass, Stored};
use super::{ConvertError, Hashing, LayerBlob, Options, Placed, ZSTD_LEVEL};
use crate::oci::{Descriptor, Digest};
use crate::rafs::format::digester;
use crate::rafs::meta::format::{ChunkInfoV1, HEADER_SIZE, Header, MAGIC, compressor, features};
use crate::rafs::tail::{self, TailWriter, TocEntry};
use crate::rafs::writer::{BlobSpec, PLACEHOLDER_BLOB_ID};
use sha2::{Digest as _, Sha256};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use zerocopy::{FromZeros, IntoBytes};

/// blob.meta features of a native blob with its bootstrap and a ToC inside (0x7000_0023
/// with chunks, as nydus-image 2.2 writes them with `--blob-inline-meta --features blob-toc`).
pub const NATIVE_FEATURES: u32 = features::ALIGNED
    | features::INLINED_FS_META
    | features::HAS_TAR_HEADER
    | features::HAS_TOC
    | features::CAP_TAR_TOC;

/// A chunk the blob stores, where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub stored: Stored,
    pub compressed_offset: u64,
    /// 4 KiB aligned.
    pub uncompressed_offset: u64,
}

/// A finished blob.
pub struct Done {
    pub blob: LayerBlob,
    /// Its blob-table entry (as the merged bootstrap takes it, less `INLINED_FS_META`).
    pub spec: BlobSpec,
    /// Its blob.meta as nydusd caches it (`image/<hex>.blob.meta` of the bootstrap layer):
    /// chunk infos, zeros to 4 KiB, header. Empty for a blob without chunks.
    pub cache_meta: Vec<u8>,
}

fn toc_flag(algorithm: u32) -> u32 {
    match algorithm {
        compressor::ZSTD => tail::TOC_ZSTD,
        compressor::LZ4_BLOCK => tail::TOC_LZ4_BLOCK,
        _ => tail::TOC_NONE,
    }
}

/// Finish layer `index`'s blob in `work`. `boot` writes the layer's bootstrap given the
/// blob's own entry (with the placeholder id).
pub fn finish(
    index: usize,
    layer: &Descriptor,
    pass: &Pass,
    placed: &Placed,
    opts: &Options,
    work: &Path,
    boot: &dyn Fn(&BlobSpec) -> Result<Vec<u8>, ConvertError>,
) -> Result<Done, ConvertError> {
    let chunks = placed.chunks.get(index).map(Vec::as_slice).unwrap_or_default();
    let tmp = work.join(format!("{}.blob.tmp", layer.digest.hex()));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source: std::io::Error| ConvertError::Io { path, source }
    };
    let data_size = chunks.last().map_or(0, |c| c.compressed_offset + u64::from(c.stored.stored_size));
    let uncompressed_size = chunks
        .last()
        .map_or(0, |c| (c.uncompressed_offset + u64::from(c.stored.size)).next_multiple_of(4096));

    // The chunk data: the pass's file as it is when no chunk went to a lower layer.
    let (file, hasher) = if chunks.len() == pass.stored.len() {
        std::fs::rename(&pass.data, &tmp).map_err(io(&tmp))?;
        let f = std::fs::OpenOptions::new().append(true).open(&tmp).map_err(io(&tmp))?;
        (f, pass.hasher.clone())
    } else {
        let src = std::fs::File::open(&pass.data).map_err(io(&pass.data))?;
        let f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        let mut w = Hashing { inner: BufWriter::with_capacity(1 << 20, f), hasher: Sha256::new() };
        let mut pos = 0u64;
        let mut buf = Vec::new();
        for c in chunks {
            let pad = c.compressed_offset - pos;
            w.write_all(&vec![0u8; pad as usize]).map_err(io(&tmp))?;
            buf.resize(c.stored.stored_size as usize, 0);
            src.read_exact_at(&mut buf, c.stored.offset).map_err(io(&pass.data))?;
            w.write_all(&buf).map_err(io(&tmp))?;
            pos = c.compressed_offset + buf.len() as u64;
        }
        let Hashing { inner, hasher } = w;
        let f = inner.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
        (f, hasher)
    };
    let result = write_tail(layer, chunks, opts, boot, file, hasher, data_size, uncompressed_size, &tmp);
    match result {
        Ok(mut done) => {
            let path = work.join(format!("{}.blob", done.blob.digest.hex()));
            std::fs::rename(&tmp, &path).map_err(io(&path))?;
            done.blob.path = path;
            done.blob.deduplicated = (pass.stored.len() - chunks.len()) as u32;
            Ok(done)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn write_tail(
    layer: &Descriptor,
    chunks: &[Chunk],
    opts: &Options,
    boot: &dyn Fn(&BlobSpec) -> Result<Vec<u8>, ConvertError>,
    file: std::fs::File,
    hasher: Sha256,
    data_size: u64,
    uncompressed_size: u64,
    tmp: &Path,
) -> Result<Done, ConvertError> {
    let io = |source: std::io::Error| ConvertError::Io { path: tmp.to_path_buf(), source };
    let w = Hashing { inner: BufWriter::with_capacity(1 << 20, file), hasher };
    let mut tw = TailWriter::new(w, data_size);
    tw.header(tail::IMAGE_BLOB, data_size).map_err(io)?;
    let blob_digest: [u8; 32] = tw.get_mut().hasher.clone().finalize().into();
    tw.toc(TocEntry::new(tail::IMAGE_BLOB, tail::TOC_NONE, blob_digest, 0, data_size, uncompressed_size));

    let mut own = BlobSpec {
        id: PLACEHOLDER_BLOB_ID.to_string(),
        chunk_count: chunks.len() as u32,
        features: NATIVE_FEATURES,
        compression_algo: opts.compressor.algorithm(),
        digest_algo: digester::SHA256,
        compressed_size: 0,
        uncompressed_size,
        ..Default::default()
    };
    let mut cache_meta = Vec::new();
    if !chunks.is_empty() {
        let mut ci = Vec::with_capacity(chunks.len() * 16);
        for c in chunks {
            let info = ChunkInfoV1::pack(
                c.uncompressed_offset,
                c.stored.size,
                c.compressed_offset,
                c.stored.stored_size,
            );
            ci.extend_from_slice(info.as_bytes());
        }
        let mut engine = opts.compressor.engine().map_err(io)?;
        let packed = engine.compress(&ci).map_err(io)?;
        let (ci_data, ci_compressor) = match &packed {
            Some(p) => (p.as_slice(), opts.compressor.algorithm()),
            None => (ci.as_slice(), compressor::NONE),
        };
        let ci_offset = tw.position();
        tw.get_mut().write_all(ci_data).map_err(io)?;
        tw.advance(ci_data.len() as u64);
        let mut h = Header::new_zeroed();
        h.magic = MAGIC.into();
        h.magic2 = MAGIC.into();
        h.features = (NATIVE_FEATURES | features::INLINED_CHUNK_DIGEST).into();
        h.ci_compressor = ci_compressor.into();
        h.ci_entries = (chunks.len() as u32).into();
        h.ci_offset = ci_offset.into();
        h.ci_compressed_size = (ci_data.len() as u64).into();
        h.ci_uncompressed_size = (ci.len() as u64).into();
        tw.get_mut().write_all(h.as_bytes()).map_err(io)?;
        tw.advance(HEADER_SIZE as u64);
        tw.header(tail::BLOB_META, ci_data.len() as u64 + HEADER_SIZE as u64).map_err(io)?;
        tw.toc(TocEntry::new(
            tail::BLOB_META,
            toc_flag(ci_compressor),
            Sha256::digest(&ci).into(),
            ci_offset,
            ci_data.len() as u64,
            ci.len() as u64,
        ));
        tw.toc(TocEntry::new(
            tail::BLOB_META_HEADER,
            tail::TOC_NONE,
            Sha256::digest(h.as_bytes()).into(),
            ci_offset + ci_data.len() as u64,
            HEADER_SIZE as u64,
            HEADER_SIZE as u64,
        ));
        let digests: Vec<u8> = chunks.iter().flat_map(|c| c.stored.digest).collect();
        let at = tw.entry(tail::BLOB_DIGEST, &digests).map_err(io)?;
        let n = digests.len() as u64;
        tw.toc(TocEntry::new(tail::BLOB_DIGEST, tail::TOC_NONE, Sha256::digest(&digests).into(), at, n, n));

        own.features |= features::INLINED_CHUNK_DIGEST;
        own.ci_compressor = ci_compressor;
        own.ci_offset = ci_offset;
        own.ci_compressed_size = ci_data.len() as u64;
        own.ci_uncompressed_size = ci.len() as u64;
        cache_meta = ci;
        cache_meta.resize(cache_meta.len().next_multiple_of(4096), 0);
        cache_meta.extend_from_slice(h.as_bytes());
    }
    // Nydus's blob table records where the inlined bootstrap starts as the blob's size.
    own.compressed_size = tw.position();
    let bootstrap = boot(&own)?;
    let packed = zstd::bulk::compress(&bootstrap, ZSTD_LEVEL).map_err(io)?;
    let (data, flag) = if packed.len() < bootstrap.len() {
        (packed.as_slice(), tail::TOC_ZSTD)
    } else {
        (&bootstrap[..], tail::TOC_NONE)
    };
    let at = tw.entry(tail::IMAGE_BOOT, data).map_err(io)?;
    tw.toc(TocEntry::new(
        tail::IMAGE_BOOT,
        flag,
        Sha256::digest(&bootstrap).into(),
        at,
        data.len() as u64,
        bootstrap.len() as u64,
    ));
    let fin = tw.finish().map_err(io)?;
    let Hashing { inner, hasher } = fin.writer;
    let f = inner.into_inner().map_err(|e| io(e.into_error()))?;
    if opts.durable {
        f.sync_all().map_err(io)?;
    }
    let digest = Digest::from_sha256(hasher.finalize().into());
    let mut spec = own;
    spec.id = digest.hex().to_string();
    spec.toc_size = fin.toc_size;
    spec.toc_digest = fin.toc_digest;
    Ok(Done {
        blob: LayerBlob {
            path: tmp.to_path_buf(),
            digest,
            size: fin.size,
            chunks: chunks.len() as u32,
            deduplicated: 0,
            data_size,
            source: layer.clone(),
        },
        spec,
        cache_meta,
    })
}
