//! `zran convert`: an image converted whole to Nydus's native RAFS v6 format, as `nydusify
//! convert` makes it (`formats/nydus-native.md`).
//!
//! Owns the conversion: per source layer a Nydus data blob (the layer's chunks compressed one
//! by one, then Nydus's tail: `image.blob` header, blob.meta, chunk digests, the layer's own
//! bootstrap, the ToC), a merged bootstrap layer last, config and manifest. May call `oci`
//! (the image read, the target written), `gzip` (inflate), `tar` (entries), `tree` (the merge),
//! `rafs` (bootstraps, blob.meta, the tail) and `parallel` (the passes' threads).
//!
//! Layers are read in parallel, each in one streaming pass (`pass`), into a data file of its
//! distinct chunks in a work directory. Chunks are then deduplicated *across* layers, in layer
//! order, which keeps the output deterministic whatever the order the passes finish in: a
//! chunk a lower layer stores is dropped from a higher layer's blob and its files point into
//! the lower blob (Nydus's builder only deduplicates within a layer). Only a blob that loses
//! chunks is copied again; the others get their tail appended to the pass's file. Every output
//! file gets a temporary name and is renamed once whole.

pub mod blob;
pub mod output;
pub mod pass;

use crate::oci::{Descriptor, Digest, Image, OciError};
use crate::rafs::format::{CHUNK_COMPRESSED, flags};
use crate::rafs::meta::format::compressor;
use crate::rafs::writer::{self, BlobSpec, BootstrapSpec, ChunkSpec, WriteError};
use crate::tree::{Extent, InodeId, Tree, TreeError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Media type of a Nydus data blob layer.
pub const NYDUS_BLOB: &str = "application/vnd.oci.image.layer.nydus.blob.v1";
/// Layer annotations Nydus's snapshotter reads.
pub const ANNOTATION_BLOB: &str = "containerd.io/snapshot/nydus-blob";
pub const ANNOTATION_BOOTSTRAP: &str = "containerd.io/snapshot/nydus-bootstrap";
pub const ANNOTATION_FS_VERSION: &str = "containerd.io/snapshot/nydus-fs-version";
pub const ANNOTATION_SOURCE_DIGEST: &str = "containerd.io/snapshot/nydus-source-digest";
pub const ANNOTATION_SOURCE_REFERENCE: &str = "containerd.io/snapshot/nydus-source-reference";
pub const ANNOTATION_BUILDER_VERSION: &str = "containerd.io/snapshot/nydus-builder-version";

/// How chunks are compressed (each on its own, as Nydus does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compressor {
    /// zstd level 3, one frame per chunk.
    Zstd,
    /// An LZ4 block per chunk, no size prefix (the form `LZ4_compress_default` writes; `lz4_flex`).
    Lz4,
    /// Stored as they are, each at its 4 KiB-aligned uncompressed address, so that the blob is
    /// also an EROFS device.
    None,
}

impl std::str::FromStr for Compressor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "zstd" => Ok(Compressor::Zstd),
            "lz4" | "lz4_block" => Ok(Compressor::Lz4),
            "none" => Ok(Compressor::None),
            _ => Err(format!("unknown compressor {s:?} (zstd, lz4, none)")),
        }
    }
}

/// A compressor's state (zstd keeps its context between chunks).
pub enum Engine {
    Zstd(Box<zstd::bulk::Compressor<'static>>),
    Lz4,
    None,
}

impl Engine {
    /// The compressed bytes, or None when compression does not make them smaller (the chunk is
    /// stored as it is, as Nydus stores it).
    pub fn compress(&mut self, data: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
        if data.is_empty() {
            return Ok(None);
        }
        let packed = match self {
            Engine::Zstd(z) => z.compress(data)?,
            Engine::Lz4 => lz4_flex::block::compress(data),
            Engine::None => return Ok(None),
        };
        Ok((packed.len() < data.len()).then_some(packed))
    }
}

impl Compressor {
    pub fn engine(&self) -> std::io::Result<Engine> {
        Ok(match self {
            Compressor::Zstd => Engine::Zstd(Box::new(zstd::bulk::Compressor::new(ZSTD_LEVEL)?)),
            Compressor::Lz4 => Engine::Lz4,
            Compressor::None => Engine::None,
        })
    }

    /// Nydus's `compress::Algorithm` number (blob table, blob.meta header).
    pub fn algorithm(&self) -> u32 {
        match self {
            Compressor::Zstd => compressor::ZSTD,
            Compressor::Lz4 => compressor::LZ4_BLOCK,
            Compressor::None => compressor::NONE,
        }
    }

    /// The superblock's compression flag.
    pub fn rafs_flag(&self) -> u64 {
        match self {
            Compressor::Zstd => flags::COMPRESSION_ZSTD,
            Compressor::Lz4 => flags::COMPRESSION_LZ4,
            Compressor::None => flags::COMPRESSION_NONE,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Compressor::Zstd => "zstd",
            Compressor::Lz4 => "lz4_block",
            Compressor::None => "none",
        }
    }
}

/// zstd's level, as Nydus compresses chunks and metadata.
pub const ZSTD_LEVEL: i32 = 3;

/// Writes through, hashing what passes (a blob as it is written, the bootstrap layer's tar
/// and gzip).
struct Hashing<W> {
    inner: W,
    hasher: sha2::Sha256,
}

impl<W: std::io::Write> std::io::Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use sha2::Digest as _;
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// What to convert to.
#[derive(Debug, Clone)]
pub struct Options {
    pub compressor: Compressor,
    /// A power of two, 4 KiB to 16 MiB (Nydus's limits); default 1 MiB.
    pub chunk_size: u32,
    /// Layers converted at once.
    pub jobs: usize,
    /// Where the work directory goes (it is removed when done).
    pub work_parent: PathBuf,
    /// Sync the output files before they are renamed into place (for files that stay, in a
    /// layout; files only uploaded and removed need not reach the disk).
    pub durable: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("layer {index} ({digest}): {message}")]
    Layer { index: usize, digest: String, message: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Oci(#[from] OciError),
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("bootstrap: {0}")]
    Bootstrap(#[from] WriteError),
    #[error("{0}")]
    Invalid(String),
}

/// A directory removed with everything in it when dropped.
#[derive(Debug)]
pub struct WorkDir {
    pub path: PathBuf,
}

impl WorkDir {
    pub fn new(parent: &Path) -> Result<WorkDir, ConvertError> {
        let path = parent.join(format!(".zran-convert-{}-{:08x}", std::process::id(), fastrand::u32(..)));
        std::fs::create_dir_all(&path).map_err(|e| ConvertError::Io { path: path.clone(), source: e })?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// One converted layer blob, a file in the work directory.
#[derive(Debug, Clone)]
pub struct LayerBlob {
    pub path: PathBuf,
    pub digest: Digest,
    pub size: u64,
    /// The blob's own chunks.
    pub chunks: u32,
    /// Distinct chunks of the layer stored in a lower layer's blob instead.
    pub deduplicated: u32,
    /// Bytes of chunk data (compressed) in the blob.
    pub data_size: u64,
    /// The source layer.
    pub source: Descriptor,
}

/// The converted image, its files in the work directory until published.
#[derive(Debug)]
pub struct Converted {
    pub work: WorkDir,
    pub layers: Vec<LayerBlob>,
    /// gzip(tar) of `image/image.boot` and the blob.metas.
    pub bootstrap_layer: LayerBlob,
    /// The merged bootstrap.
    pub bootstrap: Vec<u8>,
    pub config: Vec<u8>,
    pub config_media_type: String,
    pub manifest: Vec<u8>,
    pub manifest_media_type: String,
}

/// Where a layer's distinct chunk lives once deduplicated across layers: layer and chunk index
/// in that layer's blob.
type Loc = (usize, u32);

/// The final chunk infos of each layer's blob, and where each local chunk went.
pub struct Placed {
    /// Per layer: the chunks its blob stores, in chunk-info order.
    pub chunks: Vec<Vec<blob::Chunk>>,
    /// Per layer: for each entry of the pass's `stored`, where its bytes are.
    pub locs: Vec<Vec<Loc>>,
}

/// Convert `image`. `progress` gets (layer, compressed bytes read).
pub fn convert(
    image: &Image,
    opts: &Options,
    progress: &(dyn Fn(usize, u64) + Sync),
) -> Result<Converted, ConvertError> {
    let layers = &image.manifest.layers;
    if layers.is_empty() || layers.len() >= 255 {
        return Err(ConvertError::Invalid(format!(
            "{}: {} layers; RAFS v6 holds 1 to 254",
            image.name,
            layers.len()
        )));
    }
    if !opts.chunk_size.is_power_of_two() || !(4096..=16 << 20).contains(&opts.chunk_size) {
        return Err(ConvertError::Invalid(format!(
            "chunk size {} is not a power of two from 4 KiB to 16 MiB",
            opts.chunk_size
        )));
    }
    let work = WorkDir::new(&opts.work_parent)?;

    // One pass per layer, in parallel.
    let mut passes: Vec<pass::Pass> = crate::parallel::each_layer(
        layers.len(),
        opts.jobs,
        |i| {
            pass::run(
                image.source.as_ref(),
                i,
                &layers[i],
                opts.compressor,
                opts.chunk_size,
                &work.path,
                &|n| progress(i, n),
            )
        },
        |m| ConvertError::Invalid(m.into()),
    )?;

    // Entries without eStargz's own files.
    let entries: Vec<Vec<crate::tar::Entry>> = passes
        .iter_mut()
        .zip(layers)
        .map(|(p, d)| {
            let estargz = d.estargz_toc_digest().is_some();
            let mut entries = std::mem::take(&mut p.entries);
            entries.retain(|e| !(estargz && pass::ESTARGZ_META.contains(&e.path.as_slice())));
            entries
        })
        .collect();

    // Deduplicate across layers, in layer order.
    let placed = place(&passes, opts.compressor);

    // Finish each blob, lowest first (a blob's bootstrap names the lower blobs it uses).
    let refs: Vec<HashMap<u64, u32>> = passes.iter().map(|p| p.refs.iter().copied().collect()).collect();
    let mut blobs: Vec<LayerBlob> = Vec::with_capacity(layers.len());
    let mut specs: Vec<BlobSpec> = Vec::with_capacity(layers.len());
    let mut metas: Vec<Vec<u8>> = Vec::with_capacity(layers.len());
    for (i, p) in passes.iter().enumerate() {
        let mut tree = Tree::new();
        match own_entries(i, &entries[i]) {
            Some(kept) => tree.apply_layer_as_is(i, &kept)?,
            None => tree.apply_layer_as_is(i, &entries[i])?,
        }
        tree.finish();
        let locs = file_chunks(&tree, &refs, &placed, opts.chunk_size)?;
        // The blob table: the lower blobs used, in layer order, then the layer's own (when
        // it stores any chunk), under the id Nydus writes before the blob's digest exists.
        let mut table: Vec<usize> = locs.values().flatten().map(|&(l, _)| l).filter(|&l| l != i).collect();
        table.sort_unstable();
        table.dedup();
        if !placed.chunks[i].is_empty() {
            table.push(i);
        }
        let chunks = specs_for(locs, &placed, &table)?;
        let boot = |own: &BlobSpec| -> Result<Vec<u8>, ConvertError> {
            let blobs: Vec<BlobSpec> =
                table.iter().map(|&l| if l == i { own.clone() } else { specs[l].clone() }).collect();
            let spec = BootstrapSpec {
                tree: &tree,
                chunk_size: opts.chunk_size,
                blobs,
                chunks: chunks.clone(),
                prefetch: vec![],
            };
            Ok(writer::write_with_compression(&spec, opts.compressor.rafs_flag())?)
        };
        let done = blob::finish(i, &layers[i], p, &placed, opts, &work.path, &boot)?;
        blobs.push(done.blob);
        specs.push(done.spec);
        metas.push(done.cache_meta);
        // The data file is no longer needed (it was renamed when kept whole).
        let _ = std::fs::remove_file(&p.data);
    }

    // The merged tree and bootstrap: blobs with chunks only (Nydus and the kernel refuse a
    // device of zero blocks).
    let mut tree = Tree::new();
    for (i, e) in entries.iter().enumerate() {
        tree.apply_layer(i, e)?;
    }
    tree.finish();
    let table: Vec<usize> = (0..layers.len()).filter(|&i| !placed.chunks[i].is_empty()).collect();
    let chunks = specs_for(file_chunks(&tree, &refs, &placed, opts.chunk_size)?, &placed, &table)?;
    let mut merged_specs: Vec<BlobSpec> = table.iter().map(|&i| specs[i].clone()).collect();
    for s in &mut merged_specs {
        // In the merged bootstrap the blob no longer says it carries a bootstrap.
        s.features &= !crate::rafs::meta::format::features::INLINED_FS_META;
    }
    let bootstrap = writer::write_with_compression(
        &BootstrapSpec {
            tree: &tree,
            chunk_size: opts.chunk_size,
            blobs: merged_specs,
            chunks,
            prefetch: vec![],
        },
        opts.compressor.rafs_flag(),
    )?;

    let metas: Vec<(String, Vec<u8>)> = blobs
        .iter()
        .zip(metas)
        .filter(|(_, m)| !m.is_empty())
        .map(|(b, m)| (b.digest.hex().to_string(), m))
        .collect();
    let (bootstrap_layer, diff_id) = output::bootstrap_layer(opts.durable, &work.path, &bootstrap, &metas)?;
    let (config, config_media_type) = output::config(image, &blobs, &diff_id)?;
    let (manifest, manifest_media_type) =
        output::manifest(image, &blobs, &bootstrap_layer, &config, &config_media_type)?;
    Ok(Converted {
        work,
        layers: blobs,
        bootstrap_layer,
        bootstrap,
        config,
        config_media_type,
        manifest,
        manifest_media_type,
    })
}

/// A layer's entries for its own bootstrap: a hardlink to a file of a lower layer has no target
/// in the layer alone, and is left out there (the merged bootstrap has it).
/// None when every entry stays.
fn own_entries(layer: usize, entries: &[crate::tar::Entry]) -> Option<Vec<crate::tar::Entry>> {
    let mut seen: std::collections::HashSet<&[u8]> = std::collections::HashSet::new();
    let lower = |seen: &std::collections::HashSet<&[u8]>, e: &crate::tar::Entry| {
        e.kind == crate::tar::EntryKind::Hardlink && !seen.contains(e.link.as_slice())
    };
    let mut any = false;
    for e in entries {
        any |= lower(&seen, e);
        seen.insert(&e.path);
    }
    if !any {
        return None;
    }
    seen.clear();
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        if e.kind == crate::tar::EntryKind::Hardlink && !seen.contains(e.link.as_slice()) {
            tracing::warn!(
                layer,
                path = %String::from_utf8_lossy(&e.path),
                "hardlink to a lower layer's file left out of the layer's own bootstrap"
            );
            continue;
        }
        seen.insert(&e.path);
        out.push(e.clone());
    }
    Some(out)
}

/// Deduplicate the layers' distinct chunks across layers, lowest layer first, and lay out each
/// blob's chunks: compressed offsets back to back (4 KiB aligned without compression, where
/// they equal the uncompressed ones), uncompressed offsets 4 KiB aligned.
pub fn place(passes: &[pass::Pass], c: Compressor) -> Placed {
    let mut seen: HashMap<[u8; 32], Loc> = HashMap::new();
    let mut out = Placed { chunks: Vec::new(), locs: Vec::new() };
    for (i, p) in passes.iter().enumerate() {
        let mut chunks: Vec<blob::Chunk> = Vec::new();
        let mut locs = Vec::with_capacity(p.stored.len());
        let (mut comp, mut uncomp) = (0u64, 0u64);
        for s in &p.stored {
            if let Some(&loc) = seen.get(&s.digest) {
                locs.push(loc);
                continue;
            }
            if c == Compressor::None {
                comp = comp.next_multiple_of(4096);
            }
            let ci = chunks.len() as u32;
            chunks.push(blob::Chunk { stored: *s, compressed_offset: comp, uncompressed_offset: uncomp });
            comp += u64::from(s.stored_size);
            uncomp = (uncomp + u64::from(s.size)).next_multiple_of(4096);
            seen.insert(s.digest, (i, ci));
            locs.push((i, ci));
        }
        out.chunks.push(chunks);
        out.locs.push(locs);
    }
    out
}

/// The chunks of every regular file of a tree, as (layer, chunk index) pairs: where each
/// piece of the file is stored once deduplicated. `refs[layer]` maps a chunk's offset in the
/// layer's tar stream to its index in the layer pass's distinct chunks.
fn file_chunks(
    tree: &Tree,
    refs: &[HashMap<u64, u32>],
    placed: &Placed,
    chunk_size: u32,
) -> Result<HashMap<InodeId, Vec<Loc>>, ConvertError> {
    let mut out = HashMap::new();
    for (path, id) in tree.walk() {
        let inode = &tree.inodes[id];
        if inode.data.is_empty() || out.contains_key(&id) {
            continue;
        }
        let mut list = Vec::new();
        for x in &inode.data {
            let Extent::Tar { layer, offset, len } = x else {
                return Err(ConvertError::Invalid("an eStargz chunk in a converted tree".into()));
            };
            let mut at = 0;
            while at < *len {
                let missing = || {
                    ConvertError::Invalid(format!(
                        "layer {layer}: {}: no chunk at file offset {at}",
                        String::from_utf8_lossy(&path)
                    ))
                };
                let local = refs.get(*layer).and_then(|r| r.get(&(offset + at))).ok_or_else(missing)?;
                let loc = placed
                    .locs
                    .get(*layer)
                    .and_then(|v| v.get(*local as usize))
                    .copied()
                    .ok_or_else(missing)?;
                list.push(loc);
                at += u64::from(chunk_size);
            }
        }
        out.insert(id, list);
    }
    Ok(out)
}

/// Chunk specs for `chunks`, `table` listing the layers of the blob table in order.
fn specs_for(
    chunks: HashMap<InodeId, Vec<Loc>>,
    placed: &Placed,
    table: &[usize],
) -> Result<HashMap<InodeId, Vec<ChunkSpec>>, ConvertError> {
    let mut out = HashMap::with_capacity(chunks.len());
    for (id, list) in chunks {
        let mut specs = Vec::with_capacity(list.len());
        for (l, ci) in list {
            let spec = table
                .iter()
                .position(|&x| x == l)
                .and_then(|b| spec_of(placed, l, ci, b))
                .ok_or_else(|| ConvertError::Invalid(format!("chunk {ci} of layer {l} has no blob")))?;
            specs.push(spec);
        }
        out.insert(id, specs);
    }
    Ok(out)
}

/// The chunk spec of chunk `ci` of layer `layer`'s blob, at blob-table position `blob`.
pub fn spec_of(placed: &Placed, layer: usize, ci: u32, blob: usize) -> Option<ChunkSpec> {
    let c = placed.chunks.get(layer)?.get(ci as usize)?;
    Some(ChunkSpec {
        blob: u8::try_from(blob).ok()?,
        ci,
        digest: c.stored.digest,
        compressed_offset: c.compressed_offset,
        compressed_size: c.stored.stored_size,
        uncompressed_offset: c.uncompressed_offset,
        uncompressed_size: c.stored.size,
        flags: if c.stored.compressed { CHUNK_COMPRESSED } else { 0 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pass::{Pass, Stored};
    use sha2::Sha256;

    fn stored(d: u8, offset: u64, stored_size: u32, size: u32) -> Stored {
        Stored { digest: [d; 32], offset, stored_size, size, compressed: stored_size < size }
    }

    fn pass_of(stored: Vec<Stored>) -> Pass {
        Pass {
            entries: Vec::new(),
            refs: Vec::new(),
            stored,
            data: PathBuf::new(),
            data_size: 0,
            hasher: Sha256::default(),
            warnings: Vec::new(),
        }
    }

    #[test]
    fn a_chunk_of_a_lower_layer_is_not_stored_again_and_offsets_close_up() {
        let passes = vec![
            pass_of(vec![stored(1, 0, 100, 5000), stored(2, 100, 50, 4096)]),
            pass_of(vec![stored(3, 0, 10, 10), stored(1, 10, 100, 5000), stored(4, 110, 20, 30)]),
        ];
        let p = place(&passes, Compressor::Zstd);
        assert_eq!(p.locs, vec![vec![(0, 0), (0, 1)], vec![(1, 0), (0, 0), (1, 1)]]);
        let offs = |l: usize| {
            p.chunks[l].iter().map(|c| (c.compressed_offset, c.uncompressed_offset)).collect::<Vec<_>>()
        };
        assert_eq!(offs(0), vec![(0, 0), (100, 8192)]);
        // The dropped chunk leaves no hole: compressed back to back, uncompressed 4 KiB aligned.
        assert_eq!(offs(1), vec![(0, 0), (10, 4096)]);
    }

    #[test]
    fn without_compression_compressed_offsets_are_the_aligned_uncompressed_ones() {
        let passes = vec![pass_of(vec![
            stored(1, 0, 5000, 5000),
            stored(2, 8192, 10, 10),
            stored(3, 12288, 4096, 4096),
        ])];
        let p = place(&passes, Compressor::None);
        for c in &p.chunks[0] {
            assert_eq!(c.compressed_offset, c.uncompressed_offset);
            assert_eq!(c.compressed_offset, c.stored.offset);
        }
    }

    #[test]
    fn incompressible_chunks_are_stored_as_they_are() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for c in [Compressor::Zstd, Compressor::Lz4, Compressor::None] {
            let mut e = c.engine().unwrap();
            assert_eq!(e.compress(&noise).unwrap(), None, "{c:?}");
            let zeros = vec![0u8; 4096];
            assert_eq!(e.compress(&zeros).unwrap().is_some(), c != Compressor::None, "{c:?}");
        }
    }
}
