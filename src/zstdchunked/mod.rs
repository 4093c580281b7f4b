//! zstd:chunked layers as containers/storage writes them: the footer of every version, the
//! layer annotations (authoritative where present), and the TOC read from the blob's tail,
//! checked against the manifest and validated. Its entries are the eStargz module's types, so
//! they join the tree as eStargz TOC entries do.
//!
//! Calls `oci` (the blob's tail) and `estargz` (entry types).

use crate::estargz::{TocEntry, Verify};
use crate::oci::{BlobSource, Descriptor, Digest};

/// Which footer (or annotation) told where the TOC is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Position {
    /// The layer's `manifest-position` annotation.
    Annotation,
    /// A 40-byte footer (`GnUlInUx`; containers/storage up to 1.46).
    Footer40,
    /// A 56-byte footer (containers/storage 1.47-1.49).
    Footer56,
    /// A 64-byte footer (`GNUlInUx`; containers/storage 1.50 and later).
    Footer64,
}

/// A layer's zstd:chunked TOC, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toc {
    pub layer: Digest,
    pub blob_size: u64,
    /// Where the compressed TOC lies in the blob (past its skippable frame's header).
    pub toc_offset: u64,
    pub toc_compressed_size: u64,
    pub toc_uncompressed_size: u64,
    pub position: Position,
    /// sha256 of the compressed TOC (what `manifest-checksum` names).
    pub digest: Digest,
    /// The digest was checked against the manifest annotation.
    pub verified: bool,
    /// Where the compressed tar-split stream lies, when the layer has one: offset, compressed
    /// and uncompressed size.
    pub tar_split: Option<(u64, u64, u64)>,
    /// `tarSplitDigest` of the TOC (containers/storage 1.54 and later).
    pub tar_split_digest: Option<Digest>,
    /// Bytes read from the blob to get the footer and the TOC.
    pub fetched: u64,
    /// The layer's entries in TOC order, names normalized; each regular file's chunks cover it
    /// exactly, each with its frame (`offset`..`compressed_end`), its sha256 (`chunkDigest`, or
    /// the file's `digest` for a file of one chunk) and `zeros`.
    pub entries: Vec<TocEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum ZstdChunkedError {
    #[error("layer {layer}: {message}")]
    Toc { layer: Digest, offset: u64, message: String },
}

/// Read, verify and validate the zstd:chunked TOC of `layer`.
///
/// This reader takes the position from the layer's annotation only (no footer) and the
/// entries through the eStargz JSON validator, then sets each chunk's frame end (`endOffset`)
/// and `zeros`.
pub fn read_toc(
    source: &dyn BlobSource,
    layer: &Descriptor,
    verify: Verify,
) -> Result<Toc, ZstdChunkedError> {
    let err =
        |offset: u64, message: String| ZstdChunkedError::Toc { layer: layer.digest.clone(), offset, message };
    let ann = |k: &str| {
        ["io.github.containers.zstd-chunked.", "io.containers.zstd-chunked."]
            .iter()
            .find_map(|p| layer.annotations.get(&format!("{p}{k}")))
    };
    let pos = ann("manifest-position").ok_or_else(|| err(0, "no manifest-position annotation".into()))?;
    let f: Vec<u64> = pos
        .split(':')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| err(0, format!("manifest-position {pos:?}")))?;
    let [off, clen, ulen, ..] = f[..] else { return Err(err(0, format!("manifest-position {pos:?}"))) };
    if off.checked_add(clen).is_none_or(|e| e > layer.size)
        || clen > 64 << 20
        || ulen > crate::estargz::toc::MAX_TOC_JSON
    {
        return Err(err(
            off,
            format!("TOC of {clen} bytes ({ulen} uncompressed) at {off} does not fit the layer"),
        ));
    }
    let mut buf = vec![0u8; clen as usize];
    let n = source.read_at(&layer.digest, off, &mut buf).map_err(|e| err(off, e.to_string()))?;
    if n != buf.len() {
        return Err(err(off, "the layer ends inside its TOC".into()));
    }
    let digest = Digest::of(&buf);
    let expected = ann("manifest-checksum");
    let verified = match (expected, verify) {
        (Some(e), _) if *e == digest.to_string() => true,
        (Some(e), _) => return Err(err(off, format!("TOC digest {digest}, the manifest says {e}"))),
        (None, Verify::Required) => return Err(err(off, "no manifest-checksum annotation".into())),
        (None, _) => false,
    };
    let json =
        zstd::bulk::decompress(&buf, ulen as usize).map_err(|e| err(off, format!("TOC: zstd: {e}")))?;
    let mut entries = crate::estargz::toc::parse_toc_json(&layer.digest, &json, off)
        .map_err(|e| err(off, e.to_string()))?
        .entries;
    // Frame ends and zeros, which eStargz's JSON does not have.
    #[derive(serde::Deserialize)]
    struct Raw {
        #[serde(default)]
        entries: Vec<RawEntry>,
    }
    #[derive(serde::Deserialize)]
    struct RawEntry {
        #[serde(rename = "type", default)]
        kind: String,
        #[serde(default)]
        size: u64,
        #[serde(rename = "endOffset", default)]
        end_offset: u64,
        #[serde(rename = "chunkType", default)]
        chunk_type: String,
    }
    let raw: Raw = serde_json::from_slice(&json).map_err(|e| err(off, format!("TOC JSON: {e}")))?;
    let mut files: Vec<(u64, Vec<bool>)> = Vec::new();
    for r in raw.entries {
        match r.kind.as_str() {
            "reg" if r.size > 0 => files.push((r.end_offset, vec![r.chunk_type == "zeros"])),
            "chunk" => match files.last_mut() {
                Some(f) => f.1.push(r.chunk_type == "zeros"),
                None => return Err(err(off, "a chunk entry before any file".into())),
            },
            _ => {}
        }
    }
    let mut files = files.into_iter();
    for e in entries.iter_mut().filter(|e| !e.chunks.is_empty()) {
        let (end, zeros) =
            files.next().ok_or_else(|| err(off, format!("{}: chunks not in the TOC", e.name)))?;
        if zeros.len() != e.chunks.len() || end == 0 {
            return Err(err(off, format!("{}: chunks or endOffset do not agree with the TOC", e.name)));
        }
        let nexts: Vec<u64> = e.chunks.iter().skip(1).map(|c| c.offset).chain([end]).collect();
        for ((c, next), z) in e.chunks.iter_mut().zip(nexts).zip(zeros) {
            c.compressed_end = next;
            c.zeros = z;
        }
    }
    Ok(Toc {
        layer: layer.digest.clone(),
        blob_size: layer.size,
        toc_offset: off,
        toc_compressed_size: clen,
        toc_uncompressed_size: ulen,
        position: Position::Annotation,
        digest,
        verified,
        tar_split: None,
        tar_split_digest: None,
        fetched: clen,
        entries,
    })
}
