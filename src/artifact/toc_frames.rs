//! A zstd:chunked layer's part of a bootstrap made from its TOC (for a mount with no
//! artifact): RAFS chunks at the bootstrap's chunk size over each file, each cut from the TOC
//! chunks (zstd frames) that cover it, and the frame table the mount decodes them with
//! ([`crate::blob::frames`]).
//!
//! A RAFS chunk's own sha256 is not known from the TOC, so its chunk-table digest is a key
//! that names what it is cut from (the digests of its TOC chunks, the offset and size): two
//! chunks with the same key have the same bytes, and the cache layout hash stays exact. The
//! bytes are checked through the TOC chunks' digests, never against this key.
//!
//! A child of `artifact` (its `LayerOut`); calls `blob::frames` (the table and the cut),
//! `zstdchunked` (the TOC) and `rafs` (specs).

use super::{ArtifactError, LayerOut, LayerRecord, hex, meta_err};
use crate::blob::frames::{self, Frame, FrameTable};
use crate::estargz::Chunk;
use crate::oci::Descriptor;
use crate::rafs::format::{CHUNK_COMPRESSED, blob_features, compressor, digester};
use crate::rafs::writer::{BlobSpec, ChunkSpec};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;

/// What names a file's data in a zstd:chunked layer: its size and its TOC chunks' frames.
pub(super) type FileKey = (u64, Vec<(u64, u64, u64, bool)>);

/// The key of a file of `size` bytes with TOC chunks `chunks`.
pub(super) fn file_key(size: u64, chunks: &[Chunk]) -> FileKey {
    (size, chunks.iter().map(|c| (c.offset, c.compressed_end, c.chunk_size, c.zeros)).collect())
}

/// The frames of a zstd:chunked layer and the RAFS chunks of each file.
#[derive(Debug)]
pub(super) struct FramesOut {
    pub table: FrameTable,
    /// By [`file_key`]: the file's RAFS chunks, in file order.
    pub by_file: HashMap<FileKey, Vec<ChunkSpec>>,
}

fn digest_of(d: &crate::oci::Digest) -> Result<[u8; 32], String> {
    let mut raw = [0u8; 32];
    hex::decode_to_slice(hex(d), &mut raw).map_err(|e| format!("digest {d}: {e}"))?;
    Ok(raw)
}

/// The chunks of zstd:chunked layer `i` (`d`), cut at `chunk_size` from its TOC entries.
pub(super) fn zstd_chunked_layer(
    i: usize,
    d: &Descriptor,
    entries: &[crate::estargz::TocEntry],
    chunk_size: u32,
) -> Result<LayerOut, ArtifactError> {
    let mut table = FrameTable::default();
    let mut by_file: HashMap<FileKey, Vec<ChunkSpec>> = HashMap::new();
    let mut pos = 0u64;
    for e in entries.iter().filter(|e| !e.chunks.is_empty()) {
        let key = file_key(e.size, &e.chunks);
        if by_file.contains_key(&key) {
            continue;
        }
        let named = |m: String| meta_err(d, format!("{}: {m}", e.name));
        let mut toc_chunks = Vec::with_capacity(e.chunks.len());
        for (k, c) in e.chunks.iter().enumerate() {
            let digest = c.chunk_digest.as_ref().map(digest_of).transpose().map_err(&named)?;
            if digest.is_none() && !c.zeros {
                return Err(named(format!("chunk {k} has no digest")));
            }
            let size = u32::try_from(c.chunk_size)
                .map_err(|_| named(format!("chunk {k} of {} bytes", c.chunk_size)))?;
            if !c.zeros && (c.compressed_end <= c.offset || c.compressed_end > d.size) {
                return Err(named(format!(
                    "chunk {k}: frame {}-{} outside the layer's {} bytes",
                    c.offset, c.compressed_end, d.size
                )));
            }
            toc_chunks.push((
                c.chunk_offset,
                Frame { start: c.offset, end: c.compressed_end, size, digest, zeros: c.zeros, at: 0 },
            ));
        }
        let first = u32::try_from(table.frames.len()).map_err(|_| named("too many TOC chunks".into()))?;
        let (placed, cut) = frames::cut_file(&toc_chunks, e.size, chunk_size, first, pos).map_err(&named)?;
        table.frames.extend(placed);
        let mut specs = Vec::with_capacity(cut.len());
        for (span, addr, len) in cut {
            let fs = table.range(span.first, span.first + span.count - 1).map_err(&named)?;
            let mut h = Sha256::new();
            h.update(b"zran zstd:chunked chunk\0");
            for f in fs {
                h.update(f.digest.unwrap_or([0; 32]));
                h.update(f.size.to_le_bytes());
                h.update([u8::from(f.zeros)]);
            }
            h.update(span.skip.to_le_bytes());
            h.update(len.to_le_bytes());
            let data = || fs.iter().filter(|f| !f.zeros);
            let start = data().map(|f| f.start).min().unwrap_or(fs[0].start);
            let end = data().map(|f| f.end).max().unwrap_or(start);
            let ci = u32::try_from(table.spans.len()).map_err(|_| named("too many chunks".into()))?;
            specs.push(ChunkSpec {
                blob: i as u8,
                ci,
                digest: h.finalize().into(),
                compressed_offset: start,
                compressed_size: u32::try_from(end - start)
                    .map_err(|_| named(format!("frames {start}-{end} span more than 4 GiB")))?,
                uncompressed_offset: addr,
                uncompressed_size: len,
                flags: CHUNK_COMPRESSED,
            });
            table.spans.push(span);
        }
        pos = (pos + e.size).div_ceil(4096) * 4096;
        by_file.insert(key, specs);
    }
    let chunks = table.spans.len() as u32;
    let blob = BlobSpec {
        id: hex(&d.digest),
        chunk_count: chunks,
        features: blob_features::ALIGNED,
        compression_algo: compressor::ZSTD,
        digest_algo: digester::SHA256,
        compressed_size: d.size,
        uncompressed_size: pos,
        ..Default::default()
    };
    let record = LayerRecord {
        digest: d.digest.to_string(),
        media_type: d.media_type.clone(),
        size: d.size,
        format: "zstd-chunked-toc".into(),
        chunks,
        checkpoints: 0,
        uncompressed_size: pos,
        blob_meta: None,
        blob_meta_digest: None,
        blob_meta_size: None,
        contexts_past_member_end: 0,
        largest_frame: None,
    };
    Ok(LayerOut {
        blob,
        record,
        meta: None,
        by_out: HashMap::new(),
        by_toc: HashMap::new(),
        entries: None,
        digests: Vec::new(),
        frames: Some(Box::new(FramesOut { table, by_file })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estargz::{EntryKind, TocEntry};

    fn file(name: &str, sizes: &[u64], frame_at: u64) -> TocEntry {
        let mut chunks = Vec::new();
        let (mut off, mut at) = (0, frame_at);
        for (k, &n) in sizes.iter().enumerate() {
            chunks.push(Chunk {
                offset: at,
                inner_offset: 0,
                chunk_offset: off,
                chunk_size: n,
                chunk_digest: Some(format!("sha256:{}", hex::encode([k as u8; 32])).parse().unwrap()),
                compressed_end: at + 100,
                zeros: k == 1,
            });
            off += n;
            at += 100;
        }
        TocEntry {
            name: name.into(),
            kind: EntryKind::Reg,
            mode: 0o644,
            uid: 0,
            gid: 0,
            uname: String::new(),
            gname: String::new(),
            mtime: 0,
            mtime_nsec: 0,
            size: off,
            link: String::new(),
            devmajor: 0,
            devminor: 0,
            xattrs: Default::default(),
            digest: None,
            chunks,
        }
    }

    #[test]
    fn files_are_cut_at_the_chunk_size_over_their_toc_chunks() {
        let d = Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
            digest: format!("sha256:{}", "ab".repeat(32)).parse().unwrap(),
            size: 10_000,
            annotations: Default::default(),
            platform: None,
            artifact_type: None,
        };
        let entries = vec![file("a", &[100_000, 150_000, 50_000], 1000), file("b", &[5_000], 2000)];
        let out = zstd_chunked_layer(0, &d, &entries, 64 << 10).unwrap();
        let f = out.frames.unwrap();
        let a = &f.by_file[&file_key(300_000, &entries[0].chunks)];
        let b = &f.by_file[&file_key(5_000, &entries[1].chunks)];
        assert_eq!(
            a.iter().map(|c| c.uncompressed_offset).collect::<Vec<_>>(),
            [0, 65536, 131072, 196608, 262144]
        );
        assert_eq!(a.iter().map(|c| c.uncompressed_size).sum::<u32>(), 300_000);
        assert_eq!(b[0].uncompressed_offset, 303_104, "the next file starts 4 KiB aligned");
        // RAFS chunk 1 (65536..131072) lies in TOC chunks 0 and 1 (a zeros chunk).
        assert_eq!(f.table.spans[1], frames::Span { first: 0, count: 2, skip: 65536 });
        assert_eq!(
            (a[1].compressed_offset, a[1].compressed_size),
            (1000, 100),
            "zeros frames are not fetched"
        );
        assert_eq!(out.blob.chunk_count, 6);
        assert_eq!(out.blob.uncompressed_size, 303_104 + 8192);
        let addrs: Vec<_> =
            a.iter().chain(b).map(|c| Some((c.uncompressed_offset, c.uncompressed_size))).collect();
        f.table.validate(&addrs, d.size, out.blob.uncompressed_size, 64 << 20).unwrap();
        // Distinct chunks have distinct keys.
        let keys: std::collections::HashSet<_> = a.iter().chain(b).map(|c| c.digest).collect();
        assert_eq!(keys.len(), 6);
        // A frame past the layer's end is refused, naming the file.
        let mut bad = entries.clone();
        bad[1].chunks[0].compressed_end = 20_000;
        let e = zstd_chunked_layer(0, &d, &bad, 64 << 10).err().expect("refused").to_string();
        assert!(e.contains("b: chunk 0") && e.contains("outside"), "{e}");
    }
}
