//! zstd:chunked layers as containers/storage writes them: the footer of every version, the
//! layer annotations (authoritative where present), and the TOC read from the blob in one
//! range read, checked against the manifest and validated. Its entries are the eStargz
//! module's types, so they join the tree as eStargz TOC entries do. [`fetch_toc`] (locate,
//! fetch, verify, decompress) also serves the eStargz TOCs stargz-snapshotter writes into
//! zstd:chunked layers (`estargz::read_zstd_toc`).
//!
//! Calls `oci` (ranges of the blob) and `estargz` (entry types, name and time parsing).

pub mod footer;
pub mod toc;

use crate::estargz::{TocEntry, Verify};
use crate::oci::{BlobSource, Descriptor, Digest, OciError};
use footer::Span;
use std::io::Read as _;

/// The annotation prefixes: containers/storage 1.44 and later, and the legacy one
/// (containers/storage up to 1.43, stargz-snapshotter).
pub const ANNOTATION_PREFIXES: [&str; 2] =
    ["io.github.containers.zstd-chunked.", "io.containers.zstd-chunked."];
/// The largest TOC accepted, compressed or not (containers/storage's `maxTocSize`).
pub const MAX_TOC_SIZE: u64 = 150 << 20;
/// Bytes of the blob's tail read at once when the footer must be found: the footer and, for
/// most layers, the whole TOC.
pub const TAIL_READ: u64 = 128 << 10;

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

impl Position {
    pub fn name(self) -> &'static str {
        match self {
            Position::Annotation => "annotation",
            Position::Footer40 => "footer-40",
            Position::Footer56 => "footer-56",
            Position::Footer64 => "footer-64",
        }
    }
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

/// Why a zstd:chunked TOC was refused. Each names the layer, and where it applies the entry
/// and the offset.
#[derive(Debug, thiserror::Error)]
pub enum ZstdChunkedError {
    #[error("layer {layer}: {source}")]
    Read {
        layer: Digest,
        #[source]
        source: Box<OciError>,
    },
    #[error("layer {layer}: the blob ends at offset {got}, its descriptor says {size} bytes")]
    ShortBlob { layer: Digest, size: u64, got: u64 },
    #[error("layer {layer}: annotation {key}={value:?}: {message}")]
    BadAnnotation { layer: Digest, key: String, value: String, message: String },
    #[error(
        "layer {layer}: the manifest has no zstd-chunked manifest-checksum annotation, so the TOC cannot be verified (only insecure-skip-verify accepts that)"
    )]
    MissingChecksum { layer: Digest },
    #[error(
        "layer {layer}: the TOC at offset {offset} has digest {actual}, the manifest annotation says {expected}"
    )]
    DigestMismatch { layer: Digest, offset: u64, expected: Digest, actual: Digest },
    #[error("layer {layer}: {message} (offset {offset})")]
    Toc { layer: Digest, offset: u64, message: String },
    #[error("layer {layer}: TOC entry {index} {name:?}{}: {message}", at(.offset))]
    Entry {
        layer: Digest,
        /// Index of the entry in the TOC's `entries` (chunks counted).
        index: usize,
        /// The name as the TOC writes it.
        name: String,
        /// The entry's compressed offset, when it has one.
        offset: Option<u64>,
        message: String,
    },
}

fn at(offset: &Option<u64>) -> String {
    offset.map(|o| format!(" (offset {o})")).unwrap_or_default()
}

/// What the layer's zstd-chunked annotations say (either prefix; both present must agree).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Annotations {
    pub checksum: Option<Digest>,
    pub position: Option<Span>,
    pub tar_split: Option<Span>,
}

impl Annotations {
    pub fn is_empty(&self) -> bool {
        *self == Annotations::default()
    }
}

/// Whether the layer carries any zstd-chunked annotation.
pub fn has_annotations(layer: &Descriptor) -> bool {
    layer.annotations.keys().any(|k| ANNOTATION_PREFIXES.iter().any(|p| k.starts_with(p)))
}

/// `"off:clen:ulen"` then, for the TOC, `":1"`.
fn parse_span(value: &str, manifest: bool) -> Result<Span, String> {
    let parts: Vec<&str> = value.split(':').collect();
    let want = if manifest { 4 } else { 3 };
    if parts.len() != want {
        return Err(format!("expected {want} numbers separated by ':'"));
    }
    let n: Vec<u64> = parts
        .iter()
        .map(|p| p.parse::<u64>().map_err(|_| format!("{p:?} is not a number")))
        .collect::<Result<_, _>>()?;
    if manifest && n[3] != footer::MANIFEST_TYPE_CRFS {
        return Err(format!("manifest type {}, only 1 is known", n[3]));
    }
    Ok(Span { offset: n[0], compressed: n[1], uncompressed: n[2] })
}

/// The layer's zstd-chunked annotations, parsed.
pub fn annotations(layer: &Descriptor) -> Result<Annotations, ZstdChunkedError> {
    fn one<T: PartialEq>(
        layer: &Descriptor,
        suffix: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ZstdChunkedError> {
        let mut found: Option<(String, T)> = None;
        for prefix in ANNOTATION_PREFIXES {
            let key = format!("{prefix}{suffix}");
            let Some(value) = layer.annotations.get(&key) else { continue };
            let bad = |message: String| ZstdChunkedError::BadAnnotation {
                layer: layer.digest.clone(),
                key: key.clone(),
                value: value.clone(),
                message,
            };
            let v = parse(value).map_err(bad)?;
            if let Some((other, w)) = &found
                && *w != v
            {
                return Err(bad(format!("disagrees with {other}")));
            }
            found = Some((key, v));
        }
        Ok(found.map(|(_, v)| v))
    }
    Ok(Annotations {
        checksum: one(layer, "manifest-checksum", |v| {
            v.parse::<Digest>().map_err(|_| "expected sha256: and 64 hex digits".to_string())
        })?,
        position: one(layer, "manifest-position", |v| parse_span(v, true))?,
        tar_split: one(layer, "tarsplit-position", |v| parse_span(v, false))?,
    })
}

/// A layer's TOC located, fetched, checked against `manifest-checksum` and decompressed, not
/// parsed: the JSON is containers/storage's TOC or (stargz-snapshotter) an eStargz TOC.
#[derive(Debug, Clone)]
pub struct FetchedToc {
    pub toc: Span,
    pub position: Position,
    pub digest: Digest,
    pub verified: bool,
    pub tar_split: Option<Span>,
    pub fetched: u64,
    pub json: Vec<u8>,
}

fn read_exact_at(
    source: &dyn BlobSource,
    layer: &Digest,
    size: u64,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), ZstdChunkedError> {
    let mut done = 0;
    while done < buf.len() {
        let n = source
            .read_at(layer, offset + done as u64, &mut buf[done..])
            .map_err(|source| ZstdChunkedError::Read { layer: layer.clone(), source: Box::new(source) })?;
        if n == 0 {
            return Err(ZstdChunkedError::ShortBlob {
                layer: layer.clone(),
                size,
                got: offset + done as u64,
            });
        }
        done += n;
    }
    Ok(())
}

/// The TOC's place must be a skippable frame's payload inside the blob, before `end`, of a
/// bounded size.
fn check_span(layer: &Digest, toc: &Span, end: u64, source: &str) -> Result<(), ZstdChunkedError> {
    let err = |message: String| ZstdChunkedError::Toc { layer: layer.clone(), offset: toc.offset, message };
    if toc.compressed > MAX_TOC_SIZE || toc.uncompressed > MAX_TOC_SIZE {
        return Err(err(format!(
            "{source} gives the TOC {} bytes compressed, {} uncompressed: more than the {MAX_TOC_SIZE} allowed",
            toc.compressed, toc.uncompressed
        )));
    }
    if toc.offset < 8 || toc.compressed == 0 || toc.offset.checked_add(toc.compressed).is_none_or(|e| e > end)
    {
        return Err(err(format!(
            "{source} puts the TOC at {}..{}, not inside the blob's first {end} bytes past a skippable frame header",
            toc.offset,
            toc.offset.saturating_add(toc.compressed)
        )));
    }
    Ok(())
}

/// Locate, fetch (one range read, a second only for a TOC larger than the tail read when
/// the footer had to be found), verify and decompress the TOC of `layer`.
///
/// With a `manifest-position` annotation the read covers the TOC's skippable frame header (checked) and
/// the TOC, and runs on to the blob's end when only a footer follows, which is then checked to
/// agree. Without it, the blob's last [`TAIL_READ`] bytes are read and the footer decides.
pub fn fetch_toc(
    source: &dyn BlobSource,
    layer: &Descriptor,
    verify: Verify,
) -> Result<FetchedToc, ZstdChunkedError> {
    let digest = &layer.digest;
    let size = layer.size;
    let ann = annotations(layer)?;
    if ann.checksum.is_none() && verify == Verify::Required {
        return Err(ZstdChunkedError::MissingChecksum { layer: digest.clone() });
    }
    let (toc, position, footer_tar_split, buf, start) = match ann.position {
        Some(toc) => {
            check_span(digest, &toc, size, "the manifest-position annotation")?;
            let start = toc.offset - 8;
            let toc_end = toc.offset + toc.compressed;
            let end = if size - toc_end <= footer::MAX_FOOTER_FRAME as u64 { size } else { toc_end };
            let mut buf = vec![0u8; (end - start) as usize];
            read_exact_at(source, digest, size, start, &mut buf)?;
            let mut tar_split = None;
            if end == size
                && let Some(f) =
                    footer::parse_footer(&buf[(toc_end - start) as usize..]).map_err(|message| {
                        ZstdChunkedError::Toc { layer: digest.clone(), offset: toc_end, message }
                    })?
            {
                if f.toc != toc {
                    return Err(ZstdChunkedError::Toc {
                        layer: digest.clone(),
                        offset: toc.offset,
                        message: format!(
                            "the manifest-position annotation ({}:{}:{}) and the {}-byte footer ({}:{}:{}) disagree",
                            toc.offset,
                            toc.compressed,
                            toc.uncompressed,
                            f.frame_size - 8,
                            f.toc.offset,
                            f.toc.compressed,
                            f.toc.uncompressed
                        ),
                    });
                }
                tar_split = f.tar_split;
            }
            (toc, Position::Annotation, tar_split, buf, start)
        }
        None => {
            let n = size.min(TAIL_READ);
            let mut tail = vec![0u8; n as usize];
            read_exact_at(source, digest, size, size - n, &mut tail)?;
            let f = footer::parse_footer(&tail)
                .map_err(|message| ZstdChunkedError::Toc { layer: digest.clone(), offset: size, message })?
                .ok_or_else(|| ZstdChunkedError::Toc {
                    layer: digest.clone(),
                    offset: size,
                    message: "no manifest-position annotation and no zstd:chunked footer at the blob's end"
                        .into(),
                })?;
            check_span(
                digest,
                &f.toc,
                size - f.frame_size,
                &format!("the {}-byte footer", f.frame_size - 8),
            )?;
            let start = f.toc.offset - 8;
            if start < size - n {
                let mut head = vec![0u8; (size - n - start) as usize];
                read_exact_at(source, digest, size, start, &mut head)?;
                head.extend_from_slice(&tail);
                tail = head;
            }
            let start = size - tail.len() as u64;
            (f.toc, f.version, f.tar_split, tail, start)
        }
    };
    let fetched = buf.len() as u64;
    let at = (toc.offset - start) as usize;
    let header = &buf[at - 8..at];
    if header[..4] != footer::SKIPPABLE_MAGIC
        || u64::from(u32::from_le_bytes([header[4], header[5], header[6], header[7]])) != toc.compressed
    {
        return Err(ZstdChunkedError::Toc {
            layer: digest.clone(),
            offset: toc.offset - 8,
            message: format!("no skippable frame of {} bytes holds the TOC", toc.compressed),
        });
    }
    let compressed = &buf[at..at + toc.compressed as usize];
    let actual = Digest::of(compressed);
    if let Some(expected) = &ann.checksum
        && *expected != actual
    {
        return Err(ZstdChunkedError::DigestMismatch {
            layer: digest.clone(),
            offset: toc.offset,
            expected: expected.clone(),
            actual,
        });
    }
    let json = decompress(digest, &toc, compressed)?;
    Ok(FetchedToc {
        toc,
        position,
        digest: actual,
        verified: ann.checksum.is_some(),
        tar_split: ann.tar_split.or(footer_tar_split),
        fetched,
        json,
    })
}

/// Decompress the TOC: exactly `toc.uncompressed` bytes (bounded by [`MAX_TOC_SIZE`]).
fn decompress(layer: &Digest, toc: &Span, compressed: &[u8]) -> Result<Vec<u8>, ZstdChunkedError> {
    let err = |message: String| ZstdChunkedError::Toc { layer: layer.clone(), offset: toc.offset, message };
    let decoder = zstd::stream::read::Decoder::with_buffer(compressed)
        .map_err(|e| err(format!("decompressing the TOC: {e}")))?;
    let limit = toc.uncompressed.min(MAX_TOC_SIZE);
    let mut json = Vec::with_capacity(limit.min(1 << 20) as usize);
    decoder.take(limit + 1).read_to_end(&mut json).map_err(|e| err(format!("decompressing the TOC: {e}")))?;
    if json.len() as u64 != toc.uncompressed {
        return Err(err(format!(
            "the TOC decompresses to {}{} bytes, its position says {}",
            json.len(),
            if json.len() as u64 > limit { " or more" } else { "" },
            toc.uncompressed
        )));
    }
    Ok(json)
}

/// Read, verify and validate the zstd:chunked TOC of `layer`.
pub fn read_toc(
    source: &dyn BlobSource,
    layer: &Descriptor,
    verify: Verify,
) -> Result<Toc, ZstdChunkedError> {
    let f = fetch_toc(source, layer, verify)?;
    let contents = toc::parse_toc_json(&layer.digest, &f.json, f.toc.offset - 8)?;
    Ok(Toc {
        layer: layer.digest.clone(),
        blob_size: layer.size,
        toc_offset: f.toc.offset,
        toc_compressed_size: f.toc.compressed,
        toc_uncompressed_size: f.toc.uncompressed,
        position: f.position,
        digest: f.digest,
        verified: f.verified,
        tar_split: f.tar_split.map(|s| (s.offset, s.compressed, s.uncompressed)),
        tar_split_digest: contents.tar_split_digest,
        fetched: f.fetched,
        entries: contents.entries,
    })
}

#[cfg(test)]
mod tests;
