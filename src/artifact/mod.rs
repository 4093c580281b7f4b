//! The `generate` artifact: an image's RAFS v6 bootstrap (`image.boot`), one blob.meta per layer
//! with file data (`<layer hex>.blob.meta`: zran contexts for a gzip layer, chunk info v1 for an
//! eStargz layer), and `zran.json`, all pointing into the original layer blobs.
//!
//! Owns the pipeline image -> layers -> tree -> bootstrap, and the directory it is written to
//! (atomically: a half-written artifact never sits where a later run would trust it). Calls
//! `oci`, `estargz`, `layer`, `tree`, `rafs` and `parallel`.

pub mod inputs;
pub mod nydus_ref;
pub mod publish;
mod toc_frames;

use crate::estargz::{Chunk, Toc};
use crate::layer::{self, FileChunk, LayerError};
use crate::oci::{Descriptor, Image};
use crate::rafs::format::{CHUNK_COMPRESSED, blob_features, compressor, digester};
use crate::rafs::meta::format::{MAX_COMPRESSED_OFFSET, MAX_V1_COMPRESSED_SIZE, features};
use crate::rafs::meta::{BlobMeta, StargzChunk, StargzMeta};
use crate::rafs::writer::{self, BlobSpec, BootstrapSpec, ChunkSpec};
use crate::tree::{Extent, InodeId, Tree};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// File names inside an artifact directory.
pub const BOOTSTRAP: &str = "image.boot";
pub const MANIFEST: &str = "zran.json";
/// The version of `zran.json` this code writes and reads.
pub const VERSION: u32 = 1;

/// How a layer is turned into chunks.
#[derive(Debug, Clone)]
pub enum LayerInput {
    /// A gzip tar, indexed in one streaming pass.
    Gzip,
    /// An eStargz layer whose TOC (verified) gives the chunks; nothing is decompressed.
    Estargz(Box<Toc>),
    /// A zstd tar, plain or zstd:chunked (read as the zstd stream it also is), indexed in one
    /// streaming pass over its frames; its uncompressed stream is checked against `diff_id`
    /// (the image config's `rootfs.diff_ids` entry) when known.
    Zstd { chunked: bool, diff_id: Option<String> },
    /// An uncompressed tar: each chunk is a range of the blob itself.
    Tar,
    /// A zstd:chunked layer served from its TOC (verified): chunks cut from its zstd frames.
    /// Only for a bootstrap in memory (a mount with no artifact): such an artifact has no
    /// blob.meta Nydus could read, and [`write_dir`] refuses it.
    ZstdChunkedToc(Box<crate::zstdchunked::Toc>),
}

/// The `format` of a layer in `zran.json`.
pub mod format_name {
    pub const GZIP: &str = "gzip";
    pub const ESTARGZ: &str = "estargz";
    pub const ZSTD: &str = "zstd";
    pub const ZSTD_CHUNKED: &str = "zstd-chunked";
    pub const TAR: &str = "tar";
}

/// A zstd context whose output is larger than this is fetched and decoded whole, once, on the
/// first read that needs it (see `blob`); `generate` warns of such layers.
pub const WHOLE_FRAME: u64 = crate::zframe::WHOLE_FRAME;

#[derive(Debug, Clone)]
pub struct Options {
    /// Chunk size: a power of two, 4 KiB to 16 MiB.
    pub chunk_size: u32,
    /// Checkpoint spacing of the zran index.
    pub span: u64,
    /// Layers indexed at once.
    pub jobs: usize,
    /// Files to fetch first when the image is mounted (paths in the image), in order; the files
    /// before an eStargz layer's prefetch landmark are added after them.
    pub prefetch: Vec<Vec<u8>>,
}

impl Default for Options {
    fn default() -> Self {
        Options { chunk_size: 1 << 20, span: layer::DEFAULT_SPAN, jobs: 2, prefetch: Vec::new() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error("layer {layer}: {message}")]
    Meta { layer: String, message: String },
    #[error(transparent)]
    Tree(#[from] crate::tree::TreeError),
    #[error("bootstrap: {0}")]
    Write(#[from] writer::WriteError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error(transparent)]
    Oci(#[from] crate::oci::OciError),
}

/// `zran.json`: what the artifact was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactManifest {
    pub version: u32,
    /// The image as the user named it, normalized.
    pub source: String,
    pub manifest_digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    pub chunk_size: u32,
    pub span: u64,
    /// sha256 of `image.boot`.
    pub bootstrap_digest: String,
    pub bootstrap_size: u64,
    pub layers: Vec<LayerRecord>,
    /// The program that wrote it.
    pub created_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    /// `gzip` (zran contexts in the blob.meta), `estargz` (chunks from the TOC), `zstd` or
    /// `zstd-chunked` (zstd-frame contexts in the blob.meta), `tar` (stored ranges, chunk
    /// info v1).
    pub format: String,
    /// Distinct chunks (the blob's chunk-info entries).
    pub chunks: u32,
    /// zran contexts (gzip layers).
    pub checkpoints: u32,
    /// The blob's uncompressed address space (4 KiB-aligned chunks).
    pub uncompressed_size: u64,
    /// `<hex>.blob.meta`, for layers with file data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob_meta: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob_meta_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob_meta_size: Option<u64>,
    /// zran contexts whose decode reaches the end of a gzip member (a chunk that ends where a
    /// member's data ends, in a stored final block or with the end code in the same byte, or
    /// that crosses into the next member): Nydus 2.2's decoder cannot read them (zran's and
    /// Nydus's later ones can). 0 for nearly every layer.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub contexts_past_member_end: u32,
    /// zstd layers: the largest uncompressed output of one zstd frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub largest_frame: Option<u64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// An artifact in memory, ready to be written.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub bootstrap: Vec<u8>,
    /// `(file name, bytes)` of each blob.meta.
    pub metas: Vec<(String, Vec<u8>)>,
    pub manifest: ArtifactManifest,
    /// The digest of each chunk of each gzip layer, by CI index, by layer hex (what Nydus
    /// stores as `blob.digest`); empty for an artifact read back from a directory.
    pub digests: HashMap<String, Vec<[u8; 32]>>,
    /// The frame table of each zstd:chunked layer served from its TOC, by layer hex (what its
    /// blob is decoded with: `blob::Decoding::Frames`); such an artifact is never written.
    pub frames: HashMap<String, crate::blob::frames::FrameTable>,
}

/// What one layer contributes: its blob entry, and the chunk specs of its files by the tar
/// offset of their data (gzip) or by (file offset, TOC chunk) (eStargz).
struct LayerOut {
    blob: BlobSpec,
    record: LayerRecord,
    meta: Option<Vec<u8>>,
    /// gzip: tar data offset of each chunk -> its spec.
    by_out: HashMap<u64, ChunkSpec>,
    /// eStargz: (member offset, inner offset, chunk offset in file) -> its spec.
    by_toc: HashMap<(u64, u64, u64), ChunkSpec>,
    entries: Option<Vec<crate::tar::Entry>>,
    /// gzip: each chunk's sha256, by CI index.
    digests: Vec<[u8; 32]>,
    /// zstd:chunked from its TOC: the frame table and each file's chunks.
    frames: Option<Box<toc_frames::FramesOut>>,
}

fn hex(d: &crate::oci::Digest) -> String {
    d.hex().to_string()
}

/// The blob-table entry of a layer whose blob.meta is `encoded`.
fn blob_spec(d: &Descriptor, encoded: &crate::rafs::meta::Encoded) -> BlobSpec {
    blob_spec_as(d, encoded, compressor::GZIP)
}

/// [`blob_spec`] for a blob of compressor `algo` (the blob table's `compression_algo`).
fn blob_spec_as(d: &Descriptor, encoded: &crate::rafs::meta::Encoded, algo: u32) -> BlobSpec {
    BlobSpec {
        id: hex(&d.digest),
        chunk_count: encoded.chunk_count,
        features: encoded.features,
        compression_algo: algo,
        digest_algo: digester::SHA256,
        compressed_size: d.size,
        uncompressed_size: encoded.uncompressed_size,
        ci_compressor: encoded.ci_compressor,
        ci_offset: encoded.ci_offset,
        ci_compressed_size: encoded.ci_compressed_size,
        ci_uncompressed_size: encoded.ci_uncompressed_size,
        meta_digest: encoded.digest,
        meta_size: encoded.bytes.len() as u64,
        ..Default::default()
    }
}

/// The blob-table entry of a layer without file data (directories, links, whiteouts only): no
/// chunks and no blob.meta (Nydus refuses an empty one); `generate` leaves it out of the table.
fn empty_blob(d: &Descriptor, compression_algo: u32) -> BlobSpec {
    BlobSpec {
        id: hex(&d.digest),
        features: blob_features::ALIGNED,
        compression_algo,
        digest_algo: digester::SHA256,
        compressed_size: d.size,
        ..Default::default()
    }
}

fn meta_err(d: &Descriptor, message: impl std::fmt::Display) -> ArtifactError {
    ArtifactError::Meta { layer: d.digest.to_string(), message: message.to_string() }
}

/// Index one gzip layer: entries, chunks, blob.meta.
fn gzip_layer(
    image: &Image,
    i: usize,
    d: &Descriptor,
    opts: &Options,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<LayerOut, ArtifactError> {
    let scan = layer::scan_gzip_with_progress(
        image.source.as_ref(),
        d,
        opts.span,
        Some(u64::from(opts.chunk_size)),
        &opts.prefetch,
        progress,
    )?;
    indexed_layer(i, d, scan, format_name::GZIP, compressor::GZIP, crate::rafs::meta::Limits::NYDUS)
}

/// The chunks and blob.meta of a layer indexed in one pass (gzip, or zstd: its checkpoints are
/// frame starts without windows), whose blob has compressor `algo`.
fn indexed_layer(
    i: usize,
    d: &Descriptor,
    scan: layer::Scan,
    name: &str,
    algo: u32,
    limits: crate::rafs::meta::Limits,
) -> Result<LayerOut, ArtifactError> {
    // Planned without dictionaries, then written with one window decompressed at a time: memory
    // does not grow with the number of checkpoints.
    let plan = BlobMeta::plan_with(&scan.index, &scan.chunks, limits).map_err(|e| meta_err(d, e))?;
    let (meta, ci_of) = (plan.meta, plan.ci_of);
    if meta.chunks.is_empty() {
        // No file data (directories, links, whiteouts only): no chunks and no blob.meta
        // (Nydus refuses an empty one); `generate` leaves it out of the blob table.
        let blob = empty_blob(d, algo);
        let record = LayerRecord {
            digest: d.digest.to_string(),
            media_type: d.media_type.clone(),
            size: d.size,
            format: name.into(),
            chunks: 0,
            checkpoints: 0,
            uncompressed_size: 0,
            blob_meta: None,
            blob_meta_digest: None,
            blob_meta_size: None,
            contexts_past_member_end: 0,
            largest_frame: None,
        };
        return Ok(LayerOut {
            blob,
            record,
            meta: None,
            by_out: HashMap::new(),
            by_toc: HashMap::new(),
            entries: Some(scan.entries),
            digests: Vec::new(),
            frames: None,
        });
    }
    let encoded = meta.encode_from_index(&scan.index, &plan.checkpoints).map_err(|e| meta_err(d, e))?;
    let mut by_out = HashMap::with_capacity(scan.chunks.len());
    let mut digests = vec![[0u8; 32]; meta.chunks.len()];
    for (c, &ci) in scan.chunks.iter().zip(&ci_of) {
        if let Some(slot) = digests.get_mut(ci as usize) {
            *slot = c.digest;
        }
        let info = meta.chunks.get(ci as usize).ok_or_else(|| meta_err(d, format!("chunk index {ci}")))?;
        by_out.insert(
            c.out,
            ChunkSpec {
                blob: i as u8,
                ci,
                digest: c.digest,
                compressed_offset: info.compressed_offset,
                compressed_size: info.compressed_size,
                uncompressed_offset: info.uncompressed_offset,
                uncompressed_size: info.uncompressed_size,
                flags: CHUNK_COMPRESSED,
            },
        );
    }
    let file = format!("{}.blob.meta", hex(&d.digest));
    let blob = blob_spec_as(d, &encoded, algo);
    let record = LayerRecord {
        digest: d.digest.to_string(),
        media_type: d.media_type.clone(),
        size: d.size,
        format: name.into(),
        chunks: meta.chunks.len() as u32,
        checkpoints: meta.contexts.len() as u32,
        uncompressed_size: encoded.uncompressed_size,
        blob_meta: Some(file),
        blob_meta_digest: Some(format!("sha256:{}", hex::encode(encoded.digest))),
        blob_meta_size: Some(encoded.bytes.len() as u64),
        contexts_past_member_end: plan.past_member_end.len() as u32,
        largest_frame: None,
    };
    if !plan.past_member_end.is_empty() {
        tracing::warn!(
            layer = %d.digest,
            contexts = plan.past_member_end.len(),
            "zran contexts that reach the end of a gzip member: Nydus 2.2 (nydus-utils 0.4) cannot decode their chunks; zran and later Nydus releases can"
        );
    }
    let _: &[FileChunk] = &scan.chunks;
    Ok(LayerOut {
        blob,
        record,
        meta: Some(encoded.bytes),
        by_out,
        by_toc: HashMap::new(),
        entries: Some(scan.entries),
        digests,
        frames: None,
    })
}

/// Index one zstd layer (plain, or zstd:chunked read as a stream): entries, chunks, and a
/// blob.meta of zstd-frame contexts (the zran structures with no dictionaries; blob
/// compressor zstd).
fn zstd_layer(
    image: &Image,
    i: usize,
    d: &Descriptor,
    chunked: bool,
    diff_id: Option<&str>,
    opts: &Options,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<LayerOut, ArtifactError> {
    let scan = layer::scan_zstd(
        image.source.as_ref(),
        d,
        opts.span,
        Some(u64::from(opts.chunk_size)),
        diff_id,
        chunked,
        progress,
    )?;
    let name = if chunked { format_name::ZSTD_CHUNKED } else { format_name::ZSTD };
    let largest = scan.frames.as_ref().map_or(0, |f| f.largest_frame);
    let mut out = indexed_layer(i, d, scan, name, compressor::ZSTD, crate::rafs::meta::Limits::ZSTD)?;
    out.record.largest_frame = Some(largest);
    if largest > WHOLE_FRAME && out.record.chunks > 0 {
        tracing::warn!(
            layer = %d.digest,
            frame_bytes = largest,
            "a zstd frame of {largest} uncompressed bytes (more than {WHOLE_FRAME}): reads of this layer \
             fetch and decode the whole frame (once, into the cache); a layer of many frames \
             (zstd:chunked, pzstd) would be read lazily"
        );
    }
    Ok(out)
}

/// Index one uncompressed tar layer: entries, chunks, and a chunk info v1 blob.meta of stored
/// ranges (each chunk's compressed offset is where its bytes are in the tar; blob compressor
/// none).
fn tar_layer(
    image: &Image,
    i: usize,
    d: &Descriptor,
    opts: &Options,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<LayerOut, ArtifactError> {
    let scan = layer::scan_tar(image.source.as_ref(), d, Some(u64::from(opts.chunk_size)), progress)?;
    let mut meta = StargzMeta { chunks: Vec::new(), stored: true };
    let mut seen: HashMap<([u8; 32], u32), usize> = HashMap::new();
    let mut by_out = HashMap::with_capacity(scan.chunks.len());
    let mut digests = Vec::new();
    let mut pos = 0u64;
    for c in &scan.chunks {
        let ci = match seen.get(&(c.digest, c.len)) {
            Some(&ci) => ci,
            None => {
                let ci = meta.chunks.len();
                if c.out.saturating_add(u64::from(c.len)) > d.size {
                    return Err(meta_err(
                        d,
                        format!("chunk at {} + {} past the layer's {} bytes", c.out, c.len, d.size),
                    ));
                }
                meta.chunks.push(StargzChunk {
                    uncompressed_offset: pos,
                    uncompressed_size: c.len,
                    compressed_offset: c.out,
                    compressed_size: c.len,
                });
                digests.push(c.digest);
                pos += u64::from(c.len).div_ceil(4096) * 4096;
                seen.insert((c.digest, c.len), ci);
                ci
            }
        };
        let info = meta.chunks[ci];
        by_out.insert(
            c.out,
            ChunkSpec {
                blob: i as u8,
                ci: ci as u32,
                digest: c.digest,
                compressed_offset: info.compressed_offset,
                compressed_size: info.compressed_size,
                uncompressed_offset: info.uncompressed_offset,
                uncompressed_size: info.uncompressed_size,
                flags: 0,
            },
        );
    }
    let mut record = LayerRecord {
        digest: d.digest.to_string(),
        media_type: d.media_type.clone(),
        size: d.size,
        format: format_name::TAR.into(),
        chunks: meta.chunks.len() as u32,
        checkpoints: 0,
        uncompressed_size: pos,
        blob_meta: None,
        blob_meta_digest: None,
        blob_meta_size: None,
        contexts_past_member_end: 0,
        largest_frame: None,
    };
    if meta.chunks.is_empty() {
        let blob = empty_blob(d, compressor::NONE);
        return Ok(LayerOut {
            blob,
            record,
            meta: None,
            by_out,
            by_toc: HashMap::new(),
            entries: Some(scan.entries),
            digests: Vec::new(),
            frames: None,
        });
    }
    let encoded = meta.encode().map_err(|e| meta_err(d, e))?;
    let blob = blob_spec_as(d, &encoded, compressor::NONE);
    record.blob_meta = Some(format!("{}.blob.meta", hex(&d.digest)));
    record.blob_meta_digest = Some(format!("sha256:{}", hex::encode(encoded.digest)));
    record.blob_meta_size = Some(encoded.bytes.len() as u64);
    Ok(LayerOut {
        blob,
        record,
        meta: Some(encoded.bytes),
        by_out,
        by_toc: HashMap::new(),
        entries: Some(scan.entries),
        digests,
        frames: None,
    })
}

/// The compressed size chunk info v1 records for a TOC chunk: from the start of its gzip member
/// to the start of the next member holding a chunk (or the TOC), which holds the whole member;
/// one byte more when that equals the chunk's size, since Nydus reads a v1 chunk whose two
/// sizes are equal as stored (a gzip decoder stops at its member's end, and the TOC's member
/// always follows). None when it does not fit chunk info v1 (1..=2^24).
pub fn v1_compressed_size(c: &Chunk) -> Option<u32> {
    let n = c.compressed_end.checked_sub(c.offset)?;
    let n = if n == c.chunk_size { n + 1 } else { n };
    u32::try_from(n).ok().filter(|&n| n > 0 && u64::from(n) <= MAX_V1_COMPRESSED_SIZE)
}

/// Whether a TOC's chunks can be a RAFS blob at `chunk_size`: every chunk of a file but its
/// last has exactly that size, chunks start their gzip member, and each has a digest; and a
/// chunk info v1 blob.meta can describe them: member offsets below 2^40, increasing in TOC
/// order, each member within 2^24 bytes.
pub fn toc_fits(toc: &Toc, chunk_size: u32) -> Result<(), String> {
    let mut last: Option<u64> = None;
    let mut seen = std::collections::HashSet::new();
    for e in &toc.entries {
        let n = e.chunks.len();
        for (k, c) in e.chunks.iter().enumerate() {
            let path = e.name.clone();
            if c.inner_offset != 0 {
                return Err(format!("{path}: chunk {k} shares a gzip member (innerOffset)"));
            }
            if c.chunk_digest.is_none() {
                return Err(format!("{path}: chunk {k} has no digest"));
            }
            if c.chunk_offset != k as u64 * u64::from(chunk_size)
                || (k + 1 < n && c.chunk_size != u64::from(chunk_size))
                || c.chunk_size > u64::from(chunk_size)
            {
                return Err(format!(
                    "{path}: chunk {k} ({} bytes at {}) is not cut at {chunk_size}",
                    c.chunk_size, c.chunk_offset
                ));
            }
            if !seen.insert((c.offset, c.inner_offset, c.chunk_offset)) {
                continue;
            }
            if c.offset > MAX_COMPRESSED_OFFSET || last.is_some_and(|l| c.offset <= l) {
                return Err(format!(
                    "{path}: chunk {k}'s gzip member at {} is not after the previous chunk's, below 2^40",
                    c.offset
                ));
            }
            if v1_compressed_size(c).is_none() {
                return Err(format!(
                    "{path}: chunk {k}'s gzip members from {} to {} do not fit chunk info v1 (at most 2^24 bytes)",
                    c.offset, c.compressed_end
                ));
            }
            last = Some(c.offset);
        }
    }
    Ok(())
}

/// The chunk size an eStargz TOC was cut with: the size of the first chunk of any file of
/// more than one chunk (None when no file has more than one).
pub fn toc_chunk_size(toc: &Toc) -> Option<u64> {
    toc.entries.iter().find(|e| e.chunks.len() > 1).map(|e| e.chunks[0].chunk_size)
}

/// Chunks of one eStargz layer, straight from its TOC, and their blob.meta (chunk info v1).
fn estargz_layer(i: usize, d: &Descriptor, toc: &Toc) -> Result<LayerOut, ArtifactError> {
    let mut by_toc = HashMap::new();
    let mut meta = StargzMeta::default();
    let mut pos = 0u64;
    for e in &toc.entries {
        for c in &e.chunks {
            let key = (c.offset, c.inner_offset, c.chunk_offset);
            if by_toc.contains_key(&key) {
                continue;
            }
            let digest = c
                .chunk_digest
                .as_ref()
                .ok_or_else(|| meta_err(d, format!("{}: a chunk without digest", e.name.clone())))?;
            let mut raw = [0u8; 32];
            hex::decode_to_slice(hex(digest), &mut raw).map_err(|e| meta_err(d, e))?;
            let len = u32::try_from(c.chunk_size).map_err(|_| meta_err(d, "chunk larger than 4 GiB"))?;
            let csize = v1_compressed_size(c).ok_or_else(|| {
                meta_err(
                    d,
                    format!(
                        "{}: gzip members from {} to {} do not fit chunk info v1",
                        e.name, c.offset, c.compressed_end
                    ),
                )
            })?;
            if c.offset + u64::from(csize) > d.size {
                return Err(meta_err(
                    d,
                    format!("{}: chunk at {} + {csize} past the layer's {} bytes", e.name, c.offset, d.size),
                ));
            }
            let ci = meta.chunks.len() as u32;
            meta.chunks.push(StargzChunk {
                uncompressed_offset: pos,
                uncompressed_size: len,
                compressed_offset: c.offset,
                compressed_size: csize,
            });
            by_toc.insert(
                key,
                ChunkSpec {
                    blob: i as u8,
                    ci,
                    digest: raw,
                    compressed_offset: c.offset,
                    compressed_size: csize,
                    uncompressed_offset: pos,
                    uncompressed_size: len,
                    flags: CHUNK_COMPRESSED,
                },
            );
            pos += u64::from(len).div_ceil(4096) * 4096;
        }
    }
    let record = |chunks: u32, file: Option<String>, digest: Option<String>, size: Option<u64>| LayerRecord {
        digest: d.digest.to_string(),
        media_type: d.media_type.clone(),
        size: d.size,
        format: format_name::ESTARGZ.into(),
        chunks,
        checkpoints: 0,
        uncompressed_size: pos,
        blob_meta: file,
        blob_meta_digest: digest,
        blob_meta_size: size,
        contexts_past_member_end: 0,
        largest_frame: None,
    };
    if meta.chunks.is_empty() {
        // No file data: no blob (see `gzip_layer`).
        let blob = empty_blob(d, compressor::GZIP);
        return Ok(LayerOut {
            blob,
            record: record(0, None, None, None),
            meta: None,
            by_out: HashMap::new(),
            by_toc,
            entries: None,
            digests: Vec::new(),
            frames: None,
        });
    }
    // Chunk info v1 in a blob.meta of its own, which nydusd fetches by its digest (SEPARATE);
    // without CHUNK_INFO_V2 a gzip blob is a "legacy stargz" blob to Nydus, whose chunks are
    // gzip members inflated one by one.
    let encoded = meta.encode().map_err(|e| meta_err(d, e))?;
    let mut blob = blob_spec(d, &encoded);
    if toc.zstd {
        // eStargz in zstd: each chunk is a zstd frame.
        blob.compression_algo = compressor::ZSTD;
    }
    let record = record(
        encoded.chunk_count,
        Some(format!("{}.blob.meta", hex(&d.digest))),
        Some(format!("sha256:{}", hex::encode(encoded.digest))),
        Some(encoded.bytes.len() as u64),
    );
    Ok(LayerOut {
        blob,
        record,
        meta: Some(encoded.bytes),
        by_out: HashMap::new(),
        by_toc,
        entries: None,
        digests: Vec::new(),
        frames: None,
    })
}

/// Build the artifact of `image`. `inputs` says how each layer is read; `progress(layer,
/// bytes)` reports compressed bytes read per layer.
pub fn generate(
    image: &Image,
    inputs: &[LayerInput],
    opts: &Options,
    progress: &(dyn Fn(usize, u64) + Sync),
) -> Result<Artifact, ArtifactError> {
    let layers = &image.manifest.layers;
    if layers.len() >= 255 {
        return Err(ArtifactError::Meta {
            layer: image.name.clone(),
            message: format!("{} layers; RAFS v6 holds at most 254", layers.len()),
        });
    }
    // Gzip layers are indexed in parallel, each in one streaming pass.
    let mut outs: Vec<LayerOut> = crate::parallel::each_layer(
        layers.len(),
        opts.jobs,
        |i| {
            let d = &layers[i];
            match &inputs[i] {
                LayerInput::Gzip => gzip_layer(image, i, d, opts, &|n| progress(i, n)),
                LayerInput::Estargz(toc) => {
                    let r = estargz_layer(i, d, toc);
                    progress(i, d.size);
                    r
                }
                LayerInput::Zstd { chunked, diff_id } => {
                    zstd_layer(image, i, d, *chunked, diff_id.as_deref(), opts, &|n| progress(i, n))
                }
                LayerInput::Tar => tar_layer(image, i, d, opts, &|n| progress(i, n)),
                LayerInput::ZstdChunkedToc(toc) => {
                    let r = toc_frames::zstd_chunked_layer(i, d, &toc.entries, opts.chunk_size);
                    progress(i, d.size);
                    r
                }
            }
        },
        |m| ArtifactError::Meta { layer: image.name.clone(), message: m.into() },
    )?;

    // Merge the layers, then give each file its chunks.
    let mut tree = Tree::new();
    for (i, (out, input)) in outs.iter().zip(inputs).enumerate() {
        match (input, &out.entries) {
            (LayerInput::Estargz(toc), _) => tree.apply_estargz_layer(i, &toc.entries)?,
            (LayerInput::ZstdChunkedToc(toc), _) => tree.apply_estargz_layer(i, &toc.entries)?,
            (LayerInput::Gzip | LayerInput::Zstd { .. } | LayerInput::Tar, Some(entries)) => {
                tree.apply_layer(i, entries)?
            }
            (LayerInput::Gzip | LayerInput::Zstd { .. } | LayerInput::Tar, None) => {}
        }
    }
    tree.finish();
    // Only layers with file data get a blob (and a device): Nydus and the kernel refuse a
    // device of zero blocks. Blob indexes count those layers only.
    let mut blob_of = vec![0u8; outs.len()];
    let mut next_blob = 0u8;
    for (i, o) in outs.iter().enumerate() {
        if o.blob.chunk_count > 0 {
            blob_of[i] = next_blob;
            next_blob += 1;
        }
    }
    let chunk = u64::from(opts.chunk_size);
    let mut chunks: HashMap<InodeId, Vec<ChunkSpec>> = HashMap::new();
    for (path, id) in tree.walk() {
        let inode = &tree.inodes[id];
        if inode.data.is_empty() || chunks.contains_key(&id) {
            continue;
        }
        // A zstd:chunked file: its RAFS chunks are cut over the whole file.
        if let Some(Extent::Chunk { layer, .. }) = inode.data.first()
            && let Some(f) = &outs[*layer].frames
        {
            let toc_chunks: Vec<crate::estargz::Chunk> = inode
                .data
                .iter()
                .filter_map(|x| match x {
                    Extent::Chunk { chunk, .. } => Some(chunk.clone()),
                    Extent::Tar { .. } => None,
                })
                .collect();
            let specs = f.by_file.get(&toc_frames::file_key(inode.size, &toc_chunks)).ok_or_else(|| {
                meta_err(
                    &layers[*layer],
                    format!("{}: its chunks are not in the TOC", String::from_utf8_lossy(&path)),
                )
            })?;
            chunks.insert(id, specs.iter().map(|s| ChunkSpec { blob: blob_of[*layer], ..*s }).collect());
            continue;
        }
        let mut specs = Vec::new();
        for x in &inode.data {
            match x {
                Extent::Tar { layer, offset, len } => {
                    let out = &outs[*layer];
                    let mut at = 0;
                    while at < *len {
                        let spec = out.by_out.get(&(offset + at)).ok_or_else(|| {
                            meta_err(
                                &layers[*layer],
                                format!("{}: no chunk at file offset {at}", String::from_utf8_lossy(&path)),
                            )
                        })?;
                        specs.push(ChunkSpec { blob: blob_of[*layer], ..*spec });
                        at += chunk;
                    }
                }
                Extent::Chunk { layer, chunk: c } => {
                    let spec = outs[*layer]
                        .by_toc
                        .get(&(c.offset, c.inner_offset, c.chunk_offset))
                        .ok_or_else(|| {
                            meta_err(
                                &layers[*layer],
                                format!("{}: chunk not in the TOC", String::from_utf8_lossy(&path)),
                            )
                        })?;
                    specs.push(ChunkSpec { blob: blob_of[*layer], ..*spec });
                }
            }
        }
        chunks.insert(id, specs);
    }
    // The prefetch table: the files asked for, then those before eStargz prefetch landmarks.
    let mut wanted: Vec<&[u8]> = opts.prefetch.iter().map(Vec::as_slice).collect();
    for input in inputs {
        if let LayerInput::Estargz(toc) = input
            && let Some(end) = toc.prefetch_end()
        {
            wanted.extend(
                toc.entries
                    .iter()
                    .filter(|e| !e.chunks.is_empty() && e.chunks.iter().all(|c| c.offset < end))
                    .map(|e| e.name.as_bytes()),
            );
        }
    }
    let mut prefetch: Vec<InodeId> = Vec::new();
    for path in wanted {
        match tree.lookup(path) {
            Some(id) if chunks.contains_key(&id) && !prefetch.contains(&id) => prefetch.push(id),
            Some(_) => {}
            None => tracing::warn!(path = %String::from_utf8_lossy(path), "prefetch file not in the image"),
        }
    }
    let blobs: Vec<BlobSpec> =
        outs.iter().filter(|o| o.blob.chunk_count > 0).map(|o| o.blob.clone()).collect();
    let bootstrap =
        writer::write(&BootstrapSpec { tree: &tree, chunk_size: opts.chunk_size, blobs, chunks, prefetch })?;
    let metas: Vec<(String, Vec<u8>)> =
        outs.iter_mut().filter_map(|o| Some((o.record.blob_meta.clone()?, o.meta.take()?))).collect();
    let frames: HashMap<String, crate::blob::frames::FrameTable> =
        outs.iter_mut().filter_map(|o| Some((o.blob.id.clone(), o.frames.take()?.table))).collect();
    let digests: HashMap<String, Vec<[u8; 32]>> = outs
        .iter_mut()
        .filter(|o| !o.digests.is_empty())
        .map(|o| (o.blob.id.clone(), std::mem::take(&mut o.digests)))
        .collect();
    let manifest = ArtifactManifest {
        version: VERSION,
        source: image.name.clone(),
        manifest_digest: image.manifest.digest.to_string(),
        index_digest: image.index.as_ref().map(|d| d.to_string()),
        platform: image.platform.as_ref().map(|p| p.to_string()),
        chunk_size: opts.chunk_size,
        span: opts.span,
        bootstrap_digest: crate::oci::Digest::of(&bootstrap).to_string(),
        bootstrap_size: bootstrap.len() as u64,
        layers: outs.into_iter().map(|o| o.record).collect(),
        created_by: format!("zran {}", env!("CARGO_PKG_VERSION")),
    };
    Ok(Artifact { bootstrap, metas, manifest, digests, frames })
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io { path: path.to_path_buf(), source }
}

/// Write the artifact to `dir`: everything goes into a temporary sibling directory, synced,
/// then renamed into place, so `dir` is either absent, the old artifact, or the whole new one.
/// An existing `dir` is replaced only with `force` (an empty directory is always replaced).
pub fn write_dir(a: &Artifact, dir: &Path, force: bool) -> Result<(), ArtifactError> {
    if !a.frames.is_empty() {
        return Err(ArtifactError::Invalid {
            path: dir.to_path_buf(),
            message: "zstd:chunked layers read from their TOCs are mounted from the image, not written \
                      as an artifact"
                .into(),
        });
    }
    let exists = dir.exists();
    if exists {
        let empty = std::fs::read_dir(dir).map_err(io(dir))?.next().is_none();
        if !empty && !force {
            return Err(ArtifactError::Invalid {
                path: dir.to_path_buf(),
                message: "exists and is not empty (--force replaces it)".into(),
            });
        }
    }
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "artifact".into());
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(io(&tmp))?;
    let write = |file: &str, bytes: &[u8]| -> Result<(), ArtifactError> {
        use std::io::Write;
        let p = tmp.join(file);
        let mut f = std::fs::File::create(&p).map_err(io(&p))?;
        f.write_all(bytes).map_err(io(&p))?;
        f.sync_all().map_err(io(&p))
    };
    let result = (|| {
        write(BOOTSTRAP, &a.bootstrap)?;
        for (file, bytes) in &a.metas {
            write(file, bytes)?;
        }
        let json = serde_json::to_vec_pretty(&a.manifest)
            .map_err(|e| ArtifactError::Invalid { path: tmp.join(MANIFEST), message: e.to_string() })?;
        write(MANIFEST, &json)?;
        if let Ok(d) = std::fs::File::open(&tmp) {
            let _ = d.sync_all();
        }
        if exists {
            let old = parent.join(format!(".{name}.old-{}", std::process::id()));
            std::fs::rename(dir, &old).map_err(io(dir))?;
            if let Err(e) = std::fs::rename(&tmp, dir) {
                let _ = std::fs::rename(&old, dir);
                return Err(io(dir)(e));
            }
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&tmp, dir).map_err(io(dir))?;
        }
        if let Ok(d) = std::fs::File::open(&parent) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// An artifact directory, read back and checked: `zran.json`, the bootstrap (validated), and
/// each blob.meta (its digest checked against the bootstrap's blob table; an eStargz one's
/// chunks against the bootstrap's chunk table too).
#[derive(Debug)]
pub struct Opened {
    pub manifest: ArtifactManifest,
    pub bootstrap: crate::rafs::reader::Bootstrap,
    /// Decoded blob.meta of each gzip blob, by blob index.
    pub metas: HashMap<usize, BlobMeta>,
    /// Decoded blob.meta (chunk info v1) of each eStargz blob, by blob index.
    pub stargz: HashMap<usize, StargzMeta>,
    pub bootstrap_bytes: u64,
    pub meta_bytes: u64,
    /// The gzip blobs whose blob.meta was left in the registry when the artifact was fetched
    /// (see [`LAZY_PARTS`]), by blob index: fetched by digest when their layer is first read.
    pub missing: HashMap<usize, MissingMeta>,
}

/// A blob.meta not fetched yet: where it goes, and what it must be.
#[derive(Debug, Clone)]
pub struct MissingMeta {
    pub path: PathBuf,
    /// Its sha256 (and so its digest in the registry) and size, from the bootstrap.
    pub digest: [u8; 32],
    pub size: u64,
    pub blob: crate::rafs::writer::BlobSpec,
}

/// The file in an artifact directory that says its large gzip blob.meta parts were left in
/// the registry, to be fetched when first needed; without it every part must be there.
pub const LAZY_PARTS: &str = "lazy-parts";

impl MissingMeta {
    /// Fetch it from `source` (the image's repository, where the artifact's parts are),
    /// check it against the bootstrap, keep it in the artifact directory, and decode it.
    pub fn fetch(&self, source: &dyn crate::oci::BlobSource) -> Result<BlobMeta, String> {
        let digest: crate::oci::Digest =
            format!("sha256:{}", hex::encode(self.digest)).parse().map_err(|_| "bad digest".to_string())?;
        let bytes = source.fetch(&digest, self.size).map_err(|e| e.to_string())?;
        if bytes.len() as u64 != self.size {
            return Err(format!("{digest}: {} bytes where {} were expected", bytes.len(), self.size));
        }
        let meta = BlobMeta::decode(&bytes, &self.blob).map_err(|e| format!("{digest}: {e}"))?;
        let tmp = self.path.with_extension(format!("tmp-{}", std::process::id()));
        if std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &self.path)).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        Ok(meta)
    }
}

/// Open an artifact directory.
pub fn open_dir(dir: &Path) -> Result<Opened, ArtifactError> {
    let invalid = |path: PathBuf, message: String| ArtifactError::Invalid { path, message };
    let mp = dir.join(MANIFEST);
    let raw = std::fs::read(&mp).map_err(io(&mp))?;
    let manifest: ArtifactManifest =
        serde_json::from_slice(&raw).map_err(|e| invalid(mp.clone(), e.to_string()))?;
    if manifest.version != VERSION {
        return Err(invalid(mp, format!("version {} (this zran reads {VERSION})", manifest.version)));
    }
    let bp = dir.join(BOOTSTRAP);
    let boot = std::fs::read(&bp).map_err(io(&bp))?;
    if crate::oci::Digest::of(&boot).to_string() != manifest.bootstrap_digest {
        return Err(invalid(bp, format!("does not match {MANIFEST} (digest {})", manifest.bootstrap_digest)));
    }
    let bootstrap =
        crate::rafs::reader::read_bootstrap(&boot).map_err(|e| invalid(bp.clone(), e.to_string()))?;
    // The blob table holds the layers with file data, in layer order.
    let with_data: Vec<&LayerRecord> = manifest.layers.iter().filter(|l| l.chunks > 0).collect();
    if bootstrap.blobs.len() != with_data.len() {
        return Err(invalid(
            bp,
            format!("{} blobs for {} layers with file data", bootstrap.blobs.len(), with_data.len()),
        ));
    }
    let mut metas = HashMap::new();
    let mut stargz = HashMap::new();
    let mut missing = HashMap::new();
    let lazy = dir.join(LAZY_PARTS).is_file();
    let mut meta_bytes = 0;
    for (i, (blob, layer)) in bootstrap.blobs.iter().zip(with_data).enumerate() {
        if format!("sha256:{}", blob.id) != layer.digest {
            return Err(invalid(
                bp.clone(),
                format!("blob {i} is {} but the layer is {}", blob.id, layer.digest),
            ));
        }
        let Some(file) = &layer.blob_meta else {
            // Artifacts of earlier versions have eStargz blobs without one; a blob whose
            // entry says its blob.meta is separate must have it.
            if blob.features & features::SEPARATE != 0 {
                return Err(invalid(
                    mp.clone(),
                    format!("layer {} has no blob.meta, but blob {i} names one", layer.digest),
                ));
            }
            continue;
        };
        if file.contains('/') {
            return Err(invalid(mp.clone(), format!("blob.meta name {file:?}")));
        }
        let p = dir.join(file);
        if lazy && blob.features & features::ZRAN != 0 && !p.exists() {
            missing.insert(
                i,
                MissingMeta { path: p, digest: blob.meta_digest, size: blob.meta_size, blob: blob.clone() },
            );
            continue;
        }
        if lazy && !p.exists() {
            // A chunk info v1 blob.meta (eStargz, uncompressed tar) left in the registry: zran
            // serves those blobs from the bootstrap's chunk table alone; only Nydus needs it.
            continue;
        }
        let bytes = std::fs::read(&p).map_err(io(&p))?;
        let digest: [u8; 32] =
            sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&bytes)).into();
        if digest != blob.meta_digest || bytes.len() as u64 != blob.meta_size {
            return Err(invalid(p, format!("does not match the bootstrap's blob {i}")));
        }
        meta_bytes += bytes.len() as u64;
        if blob.features & features::ZRAN != 0 {
            let meta = BlobMeta::decode(&bytes, blob).map_err(|e| invalid(p.clone(), e.to_string()))?;
            metas.insert(i, meta);
            continue;
        }
        let meta = StargzMeta::decode(&bytes, blob).map_err(|e| invalid(p.clone(), e.to_string()))?;
        // The bootstrap's chunk table says the same of every chunk it uses.
        for (k, c) in bootstrap.chunk_table.iter().enumerate().filter(|(_, c)| usize::from(c.blob) == i) {
            let m = meta.chunks.get(c.ci as usize).ok_or_else(|| {
                invalid(p.clone(), format!("no chunk {} for the bootstrap's chunk table entry {k}", c.ci))
            })?;
            let ours = (m.compressed_offset, m.compressed_size, m.uncompressed_offset, m.uncompressed_size);
            let theirs = (c.compressed_offset, c.compressed_size, c.uncompressed_offset, c.uncompressed_size);
            if ours != theirs {
                return Err(invalid(
                    p.clone(),
                    format!(
                        "chunk {} (CI data offset {}) is {ours:?} (compressed offset and size, \
                         uncompressed offset and size), the bootstrap's chunk table entry {k} {theirs:?}",
                        c.ci,
                        u64::from(c.ci) * 16
                    ),
                ));
            }
        }
        stargz.insert(i, meta);
    }
    Ok(Opened { manifest, bootstrap, metas, stargz, bootstrap_bytes: boot.len() as u64, meta_bytes, missing })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(offset: u64, compressed_end: u64, chunk_size: u64) -> Chunk {
        Chunk {
            offset,
            inner_offset: 0,
            chunk_offset: 0,
            chunk_size,
            chunk_digest: None,
            compressed_end,
            zeros: false,
        }
    }

    #[test]
    fn v1_compressed_sizes() {
        // To the next member holding a chunk.
        assert_eq!(v1_compressed_size(&chunk(100, 600, 4096)), Some(500));
        // One byte more where the sizes would be equal, which Nydus reads as "stored".
        assert_eq!(v1_compressed_size(&chunk(100, 4196, 4096)), Some(4097));
        // 2^24 bytes fit chunk info v1; one more does not, nor an equal size pushed past it.
        assert_eq!(v1_compressed_size(&chunk(0, 1 << 24, 4096)), Some(1 << 24));
        assert_eq!(v1_compressed_size(&chunk(0, (1 << 24) + 1, 4096)), None);
        assert_eq!(v1_compressed_size(&chunk(0, 1 << 24, 1 << 24)), None);
        // Nothing between a member and the next, or members out of order.
        assert_eq!(v1_compressed_size(&chunk(100, 100, 4096)), None);
        assert_eq!(v1_compressed_size(&chunk(100, 50, 4096)), None);
    }
}
