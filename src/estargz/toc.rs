//! The eStargz table of contents: read from a blob's tail, inflated, verified against the
//! manifest, parsed and validated.
//!
//! An eStargz blob ends with `[TOC gzip member][footer]`. The TOC member holds a tar stream
//! whose one entry, `stargz.index.json`, is the TOC JSON: every tar entry of the layer and, for
//! regular files, where each chunk of their data starts (the compressed offset of the gzip
//! member, and an offset inside that member's output). The manifest annotation
//! `containerd.io/snapshot/stargz/toc.digest` is the sha256 of the *uncompressed TOC JSON*
//! (the tar entry's payload, not the gzip member nor the tar stream): stargz-snapshotter's
//! `WriteTOCAndFooter` returns `digest.FromBytes(tocJSON)` and its `parseTOCEStargz` hashes
//! the tar payload as it decodes it.
//!
//! [`read_toc`] reads the blob's tail once (up to [`TAIL_READ`] bytes; the stargz opener reads
//! 2 MiB), and a second time, exactly the missing part, only when the TOC starts before that
//! tail ([`read_toc_from`], given the TOC offset of a footer already read, reads exactly the
//! TOC and the footer instead). Everything read is
//! distrusted: the TOC JSON is bounded ([`MAX_TOC_JSON`]), nothing is allocated from a size it
//! claims, and every entry is checked (names, types, attributes, and that the chunks of each
//! file cover it exactly, lie before the TOC and do not collide), with errors that name the
//! layer, the entry and the offset.

use super::footer::{self, Footer, FooterKind};
use crate::gzip::{GzipError, IndexBuilder, Requests, Sink};
use crate::oci::image::ESTARGZ_TOC_DIGEST;
use crate::oci::{BlobSource, Descriptor, Digest, OciError};
use base64::Engine as _;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// The name of the TOC's tar entry.
pub const TOC_TAR_NAME: &str = "stargz.index.json";
/// The landmark after the files to prefetch.
pub const PREFETCH_LANDMARK: &str = ".prefetch.landmark";
/// The landmark of a layer with nothing to prefetch.
pub const NO_PREFETCH_LANDMARK: &str = ".no.prefetch.landmark";
/// Bytes of the blob's tail read at once, hoping to get footer and TOC in one request. The
/// stargz opener reads 2 MiB; most TOCs are far smaller, and reading a second time exactly the
/// part of a larger TOC that is missing costs one round trip but no wasted bytes.
pub const TAIL_READ: u64 = 128 << 10;
/// The largest TOC JSON accepted (uncompressed).
pub const MAX_TOC_JSON: u64 = 64 << 20;
/// The largest uncompressed TOC tar stream: the JSON, its headers, padding and end blocks.
const MAX_TOC_TAR: u64 = MAX_TOC_JSON + (1 << 20);
/// The largest compressed TOC (stored deflate blocks add 5 bytes per 64 KiB).
const MAX_TOC_REGION: u64 = MAX_TOC_TAR + (2 << 20);
/// Deflate never inflates more than 1032 bytes per compressed byte (a 258-byte match coded in
/// two bits), so a chunk claiming more than this times the compressed bytes before the TOC
/// cannot be real.
const MAX_INFLATE_RATIO: u128 = 1032;

/// Whether the TOC must be vouched for by the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verify {
    /// The layer descriptor must carry `containerd.io/snapshot/stargz/toc.digest`, and the
    /// TOC JSON must have that digest.
    #[default]
    Required,
    /// A missing annotation is accepted and the TOC is then unverified. An annotation that is
    /// present is still checked.
    InsecureSkipVerify,
}

/// What a TOC entry is. TOC `chunk` entries are not entries: they become [`Chunk`]s of the
/// regular file before them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Dir,
    Reg,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
}

impl EntryKind {
    /// The TOC's name for the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Dir => "dir",
            EntryKind::Reg => "reg",
            EntryKind::Symlink => "symlink",
            EntryKind::Hardlink => "hardlink",
            EntryKind::Char => "char",
            EntryKind::Block => "block",
            EntryKind::Fifo => "fifo",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<EntryKind> {
        Some(match s {
            "dir" => EntryKind::Dir,
            "reg" => EntryKind::Reg,
            "symlink" => EntryKind::Symlink,
            "hardlink" => EntryKind::Hardlink,
            "char" => EntryKind::Char,
            "block" => EntryKind::Block,
            "fifo" => EntryKind::Fifo,
            _ => return None,
        })
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A piece of a regular file's data, as the TOC places it in the blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Compressed offset of the gzip member whose output holds the chunk.
    pub offset: u64,
    /// Offset of the chunk in that member's uncompressed output (non-zero when several small
    /// files share a member).
    pub inner_offset: u64,
    /// Offset of the chunk in the file.
    pub chunk_offset: u64,
    /// Bytes of the chunk (a TOC's `chunkSize: 0`, "to the end of the file", is resolved).
    pub chunk_size: u64,
    /// sha256 of the chunk's uncompressed bytes. A file of one chunk without `chunkDigest`
    /// gets its `digest` here.
    pub chunk_digest: Option<Digest>,
    /// Where the next gzip member holding a chunk (or the TOC) starts: reading the blob from
    /// `offset` to here is enough to inflate this chunk. (zstd:chunked: the end of the chunk's
    /// zstd frame.)
    pub compressed_end: u64,
    /// zstd:chunked `chunkType: "zeros"`: the chunk is all zero bytes and needs no fetch.
    pub zeros: bool,
}

/// One entry of the layer, as the TOC describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TocEntry {
    /// Normalized path relative to the root: `/`-separated, no `.`, `..`, leading `./` or
    /// trailing `/`; empty for the root itself.
    pub name: String,
    pub kind: EntryKind,
    /// Permission bits with setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// User and group names; the TOC names them only on the first entry of each id, and they
    /// are filled in on the others (as stargz-snapshotter does).
    pub uname: String,
    pub gname: String,
    /// Modification time, seconds since the epoch and nanoseconds. A TOC without `modtime`
    /// means the epoch. stargz-snapshotter writes whole seconds (rounded); other writers may
    /// write fractions, which are kept.
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Bytes of data (regular files; 0 for the others).
    pub size: u64,
    /// Symlink target as written, or hardlink target as a normalized path (empty otherwise).
    pub link: String,
    pub devmajor: u32,
    pub devminor: u32,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// sha256 of a regular file's whole data, when the TOC gives it.
    pub digest: Option<Digest>,
    /// A regular file's chunks, in file order, covering `0..size` exactly.
    pub chunks: Vec<Chunk>,
}

/// Which landmark a layer has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LandmarkKind {
    /// `.prefetch.landmark`: the files before it are to be prefetched.
    Prefetch,
    /// `.no.prefetch.landmark`: nothing to prefetch.
    NoPrefetch,
}

/// The prefetch landmark of a layer and its compressed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Landmark {
    pub kind: LandmarkKind,
    pub offset: u64,
}

/// The parsed and validated TOC JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TocContents {
    pub version: u32,
    /// The layer's entries in TOC order, without the landmarks and `stargz.index.json`. A name
    /// may appear twice (the later entry wins, as in a tar).
    pub entries: Vec<TocEntry>,
    pub landmark: Option<Landmark>,
}

/// A layer's TOC, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toc {
    pub layer: Digest,
    pub blob_size: u64,
    pub footer: Footer,
    /// sha256 of the uncompressed TOC JSON.
    pub digest: Digest,
    /// The digest was checked against the manifest annotation.
    pub verified: bool,
    /// Bytes of the TOC JSON.
    pub json_size: u64,
    /// Bytes read from the blob to get the footer and the TOC.
    pub fetched: u64,
    pub version: u32,
    pub entries: Vec<TocEntry>,
    pub landmark: Option<Landmark>,
    /// The blob is zstd frames (`ctr-remote --zstdchunked`: an eStargz TOC in a zstd:chunked
    /// layer), not gzip members: each chunk's `offset` starts a zstd frame.
    pub zstd: bool,
}

impl Toc {
    /// The end of the prefetch range `[0, end)`, when the layer has a `.prefetch.landmark`.
    pub fn prefetch_end(&self) -> Option<u64> {
        self.landmark.filter(|l| l.kind == LandmarkKind::Prefetch).map(|l| l.offset)
    }

    /// Every chunk of every file.
    pub fn chunks(&self) -> impl Iterator<Item = (&TocEntry, &Chunk)> {
        self.entries.iter().flat_map(|e| e.chunks.iter().map(move |c| (e, c)))
    }
}

/// Why a TOC was refused. Each names the layer, and where it applies the entry and the offset.
#[derive(Debug, thiserror::Error)]
pub enum TocError {
    #[error("layer {layer}: {source}")]
    Read {
        layer: Digest,
        #[source]
        source: Box<OciError>,
    },
    #[error("layer {layer}: the blob ends at offset {got}, its descriptor says {size} bytes")]
    ShortBlob { layer: Digest, size: u64, got: u64 },
    #[error("layer {layer} is not eStargz: {reason}")]
    NotEstargz { layer: Digest, reason: String },
    #[error("layer {layer}: {what} is not supported yet{}", at(.toc_offset, " (TOC at offset ", ")"))]
    Unsupported { layer: Digest, what: &'static str, toc_offset: Option<u64> },
    #[error(
        "layer {layer}: the manifest has no {ESTARGZ_TOC_DIGEST} annotation, so the TOC cannot be verified (only insecure-skip-verify accepts that)"
    )]
    MissingDigest { layer: Digest },
    #[error("layer {layer}: invalid {ESTARGZ_TOC_DIGEST} annotation {value:?}")]
    BadAnnotation { layer: Digest, value: String },
    #[error(
        "layer {layer}: the TOC JSON at offset {toc_offset} has digest {actual}, the manifest annotation says {expected}"
    )]
    DigestMismatch { layer: Digest, toc_offset: u64, expected: Digest, actual: Digest },
    #[error(
        "layer {layer}: inflating the TOC gzip member at offset {toc_offset} (offsets below count from there): {source}"
    )]
    Inflate {
        layer: Digest,
        toc_offset: u64,
        #[source]
        source: GzipError,
    },
    #[error("layer {layer}: TOC at offset {toc_offset}: {message}")]
    Toc { layer: Digest, toc_offset: u64, message: String },
    /// Locating, fetching or decompressing the eStargz TOC of a zstd:chunked layer.
    #[error(transparent)]
    Zstd(Box<crate::zstdchunked::ZstdChunkedError>),
    #[error("layer {layer}: TOC entry {index} {name:?}{}: {message}", at(.offset, " (offset ", ")"))]
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

fn at(offset: &Option<u64>, before: &str, after: &str) -> String {
    offset.map(|o| format!("{before}{o}{after}")).unwrap_or_default()
}

/// Read, verify and parse the TOC of the eStargz layer `layer`: one read of the blob's last
/// [`TAIL_READ`] bytes, and a second one only if the TOC starts before them.
pub fn read_toc(source: &dyn BlobSource, layer: &Descriptor, verify: Verify) -> Result<Toc, TocError> {
    read_toc_from(source, layer, verify, None)
}

/// [`read_toc`] when the footer has been read already: one read of exactly the TOC and the
/// footer, from `toc_offset` (a hint: a wrong one costs a read, never a wrong TOC, since the
/// footer read with it decides and the TOC's digest is checked).
pub fn read_toc_from(
    source: &dyn BlobSource,
    layer: &Descriptor,
    verify: Verify,
    toc_offset: Option<u64>,
) -> Result<Toc, TocError> {
    if layer.compression() == crate::oci::Compression::Zstd {
        return read_zstd_toc(source, layer, verify);
    }
    let digest = &layer.digest;
    let size = layer.size;
    if size < footer::MAX_FOOTER as u64 - 4 {
        return Err(TocError::NotEstargz {
            layer: digest.clone(),
            reason: format!("{size} bytes are too few for a footer"),
        });
    }
    let n = match toc_offset {
        Some(o) if o < size && size - o <= MAX_TOC_REGION + footer::MAX_FOOTER as u64 => {
            (size - o).max(footer::MAX_FOOTER as u64).min(size)
        }
        _ => size.min(TAIL_READ),
    };
    let mut tail = vec![0u8; n as usize];
    read_exact_at(source, digest, size, size - n, &mut tail)?;
    let mut fetched = n;
    let footer = classify_footer(digest, &tail, size)?;
    let expected = expected_digest(layer, verify)?;
    check_region(digest, size, &footer)?;
    if footer.toc_offset < size - n {
        let mut head = vec![0u8; (size - n - footer.toc_offset) as usize];
        read_exact_at(source, digest, size, footer.toc_offset, &mut head)?;
        fetched += head.len() as u64;
        head.extend_from_slice(&tail);
        tail = head;
    }
    let mut toc = parse_tail(digest, size, &tail, expected.as_ref())?;
    toc.fetched = fetched;
    Ok(toc)
}

/// Read, verify and parse the eStargz TOC that stargz-snapshotter's `zstdchunked` writer
/// (`ctr-remote image convert --zstdchunked`) puts into a zstd:chunked layer: the TOC JSON,
/// zstd-compressed (no tar around it), in a skippable frame placed as containers/storage
/// places its own TOC, found through the `io.containers.zstd-chunked.manifest-position`
/// annotation or the 40-byte footer (one range read). `toc.digest` is, as for gzip eStargz,
/// the sha256 of the uncompressed JSON (checked under `verify`); `manifest-checksum`, the
/// sha256 of the compressed TOC, is checked too when present. Each chunk's offset is a zstd
/// frame's start; its `compressed_end` is the next frame holding a chunk, or the TOC's
/// skippable frame.
pub fn read_zstd_toc(source: &dyn BlobSource, layer: &Descriptor, verify: Verify) -> Result<Toc, TocError> {
    let expected = expected_digest(layer, verify)?;
    let f = crate::zstdchunked::fetch_toc(source, layer, Verify::InsecureSkipVerify)
        .map_err(|e| TocError::Zstd(Box::new(e)))?;
    let digest = Digest::of(&f.json);
    if let Some(expected) = expected.as_ref()
        && *expected != digest
    {
        return Err(TocError::DigestMismatch {
            layer: layer.digest.clone(),
            toc_offset: f.toc.offset,
            expected: expected.clone(),
            actual: digest,
        });
    }
    if f.json.len() as u64 > MAX_TOC_JSON {
        return Err(TocError::Toc {
            layer: layer.digest.clone(),
            toc_offset: f.toc.offset,
            message: format!("the TOC is {} bytes, more than the {MAX_TOC_JSON} allowed", f.json.len()),
        });
    }
    // Chunks must lie before the TOC's skippable frame, where the last one's frame ends.
    let ratio = u128::from(crate::zstdchunked::toc::MAX_ZSTD_RATIO);
    let contents = parse_toc_json_ratio(&layer.digest, &f.json, f.toc.offset - 8, ratio)?;
    Ok(Toc {
        layer: layer.digest.clone(),
        blob_size: layer.size,
        footer: Footer {
            kind: FooterKind::ZstdChunked,
            toc_offset: f.toc.offset,
            footer_size: layer.size - (f.toc.offset + f.toc.compressed),
        },
        digest,
        verified: expected.is_some(),
        json_size: f.json.len() as u64,
        fetched: f.fetched,
        version: contents.version,
        entries: contents.entries,
        landmark: contents.landmark,
        zstd: true,
    })
}

/// The digest the manifest vouches for, or `None` when there is none and `verify` allows it.
fn expected_digest(layer: &Descriptor, verify: Verify) -> Result<Option<Digest>, TocError> {
    match layer.estargz_toc_digest() {
        Some(v) => v
            .parse::<Digest>()
            .map(Some)
            .map_err(|_| TocError::BadAnnotation { layer: layer.digest.clone(), value: v.to_string() }),
        None if verify == Verify::InsecureSkipVerify => Ok(None),
        None => Err(TocError::MissingDigest { layer: layer.digest.clone() }),
    }
}

fn read_exact_at(
    source: &dyn BlobSource,
    layer: &Digest,
    size: u64,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), TocError> {
    let mut done = 0;
    while done < buf.len() {
        let n = source
            .read_at(layer, offset + done as u64, &mut buf[done..])
            .map_err(|source| TocError::Read { layer: layer.clone(), source: Box::new(source) })?;
        if n == 0 {
            return Err(TocError::ShortBlob { layer: layer.clone(), size, got: offset + done as u64 });
        }
        done += n;
    }
    Ok(())
}

/// The footer at the end of `tail`, if it is one this reader handles.
fn classify_footer(layer: &Digest, tail: &[u8], blob_size: u64) -> Result<Footer, TocError> {
    let not = |reason: String| TocError::NotEstargz { layer: layer.clone(), reason };
    // Detect the footer whatever offset it names, then say what is wrong with the offset.
    let Some(f) = footer::detect_footer(tail, u64::MAX) else {
        if is_external_toc_footer(tail) {
            return Err(TocError::Unsupported {
                layer: layer.clone(),
                what: "eStargz with an external TOC",
                toc_offset: None,
            });
        }
        return Err(not("its last bytes are no eStargz, stargz or zstd:chunked footer".into()));
    };
    if f.kind == FooterKind::ZstdChunked {
        return Err(TocError::Unsupported {
            layer: layer.clone(),
            what: "zstd:chunked",
            toc_offset: Some(f.toc_offset),
        });
    }
    if f.toc_offset >= blob_size {
        return Err(not(format!(
            "its footer puts the TOC at offset {}, past the end of the {blob_size}-byte blob",
            f.toc_offset
        )));
    }
    Ok(f)
}

/// The 46-byte footer of eStargz with an external TOC: an empty gzip member whose extra
/// subfield `SG` holds `STARGZEXTERNALTOC`.
fn is_external_toc_footer(tail: &[u8]) -> bool {
    let Some(b) = tail.len().checked_sub(46).map(|s| &tail[s..]) else {
        return false;
    };
    b[..4] == [0x1f, 0x8b, 0x08, 0x04]
        && b[10..12] == [21, 0]
        && &b[12..14] == b"SG"
        && b[14..16] == [17, 0]
        && &b[16..33] == b"STARGZEXTERNALTOC"
}

/// The TOC must lie between its offset and the footer, and be of a bounded size.
fn check_region(layer: &Digest, blob_size: u64, footer: &Footer) -> Result<(), TocError> {
    let end = blob_size.saturating_sub(footer.footer_size);
    let err =
        |message: String| TocError::Toc { layer: layer.clone(), toc_offset: footer.toc_offset, message };
    if footer.toc_offset >= end {
        return Err(err(format!(
            "no room for a TOC: the {}-byte footer starts at offset {end}",
            footer.footer_size
        )));
    }
    if end - footer.toc_offset > MAX_TOC_REGION {
        return Err(err(format!(
            "the compressed TOC is {} bytes, more than the {MAX_TOC_REGION} allowed",
            end - footer.toc_offset
        )));
    }
    Ok(())
}

/// The TOC from the last `tail.len()` bytes of a blob of `blob_size` bytes, which must reach
/// back to the TOC. With `expected`, the TOC JSON must have that digest (checked before the
/// JSON is parsed).
pub fn parse_tail(
    layer: &Digest,
    blob_size: u64,
    tail: &[u8],
    expected: Option<&Digest>,
) -> Result<Toc, TocError> {
    if tail.len() as u64 > blob_size {
        return Err(TocError::ShortBlob { layer: layer.clone(), size: blob_size, got: tail.len() as u64 });
    }
    let footer = classify_footer(layer, tail, blob_size)?;
    check_region(layer, blob_size, &footer)?;
    let tail_start = blob_size - tail.len() as u64;
    if footer.toc_offset < tail_start {
        return Err(TocError::Toc {
            layer: layer.clone(),
            toc_offset: footer.toc_offset,
            message: format!("the bytes read start at offset {tail_start}, after the TOC"),
        });
    }
    let region = &tail
        [(footer.toc_offset - tail_start) as usize..(blob_size - footer.footer_size - tail_start) as usize];
    let tar = inflate_toc(layer, footer.toc_offset, region)?;
    let json = toc_payload(&tar).map_err(|message| TocError::Toc {
        layer: layer.clone(),
        toc_offset: footer.toc_offset,
        message,
    })?;
    let digest = Digest::of(json);
    if let Some(expected) = expected
        && *expected != digest
    {
        return Err(TocError::DigestMismatch {
            layer: layer.clone(),
            toc_offset: footer.toc_offset,
            expected: expected.clone(),
            actual: digest,
        });
    }
    let contents = parse_toc_json(layer, json, footer.toc_offset)?;
    Ok(Toc {
        layer: layer.clone(),
        blob_size,
        footer,
        digest,
        verified: expected.is_some(),
        json_size: json.len() as u64,
        fetched: tail.len() as u64,
        version: contents.version,
        entries: contents.entries,
        landmark: contents.landmark,
        zstd: false,
    })
}

/// Collects the inflated TOC member, up to a limit.
struct Collect {
    out: Vec<u8>,
    limit: usize,
    over: bool,
}

impl Sink for Collect {
    fn data(
        &mut self,
        _at: u64,
        bytes: &[u8],
        _requests: &mut Requests,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if self.out.len() + bytes.len() > self.limit {
            self.over = true;
            return Err(format!("more than {} bytes", self.limit).into());
        }
        self.out.extend_from_slice(bytes);
        Ok(())
    }
}

/// Inflate the gzip member(s) of the TOC, checking CRCs and lengths, with bounded output.
fn inflate_toc(layer: &Digest, toc_offset: u64, region: &[u8]) -> Result<Vec<u8>, TocError> {
    let mut sink = Collect { out: Vec::new(), limit: MAX_TOC_TAR as usize, over: false };
    let result = IndexBuilder::new().span(u64::MAX).build_with(region, &mut sink);
    match result {
        Ok(_) => Ok(sink.out),
        Err(_) if sink.over => Err(TocError::Toc {
            layer: layer.clone(),
            toc_offset,
            message: format!("the TOC member inflates to more than {MAX_TOC_TAR} bytes"),
        }),
        Err(source) => Err(TocError::Inflate { layer: layer.clone(), toc_offset, source }),
    }
}

/// The payload of the `stargz.index.json` entry of the TOC's tar stream, found with the
/// crate's tar parser.
fn toc_payload(tar: &[u8]) -> Result<&[u8], String> {
    let mut parser = crate::tar::TarParser::new();
    parser.push(0, tar, &mut |_, _, _| {}).map_err(|e| format!("the TOC tar stream: {e}"))?;
    let entry = match parser.entries().first() {
        Some(e) if e.path == TOC_TAR_NAME.as_bytes() => e,
        Some(e) => {
            return Err(format!(
                "the TOC tar entry is named {:?}, not {TOC_TAR_NAME:?}",
                String::from_utf8_lossy(&e.path)
            ));
        }
        None => {
            parser.finish().map_err(|e| format!("the TOC tar stream: {e}"))?;
            return Err(format!("the TOC tar stream has no {TOC_TAR_NAME} entry"));
        }
    };
    if entry.size > MAX_TOC_JSON {
        return Err(format!("the TOC is {} bytes, more than the {MAX_TOC_JSON} allowed", entry.size));
    }
    let start =
        usize::try_from(entry.data_offset).map_err(|_| "TOC entry offset out of range".to_string())?;
    let end = usize::try_from(entry.size).ok().and_then(|n| start.checked_add(n));
    end.and_then(|end| tar.get(start..end)).ok_or_else(|| {
        format!(
            "the TOC tar entry claims {} bytes, the TOC member holds only {}",
            entry.size,
            tar.len().saturating_sub(start)
        )
    })
}

/// A TOC entry as JSON has it. Every field is optional (Go's `omitempty`, and `null` is
/// accepted as absent); unknown fields are ignored.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct RawEntry {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    size: Option<i64>,
    modtime: Option<String>,
    #[serde(rename = "linkName")]
    link_name: Option<String>,
    mode: Option<i64>,
    uid: Option<i64>,
    gid: Option<i64>,
    #[serde(rename = "userName")]
    uname: Option<String>,
    #[serde(rename = "groupName")]
    gname: Option<String>,
    offset: Option<i64>,
    #[serde(rename = "innerOffset")]
    inner_offset: Option<i64>,
    #[serde(rename = "devMajor")]
    dev_major: Option<i64>,
    #[serde(rename = "devMinor")]
    dev_minor: Option<i64>,
    xattrs: Option<BTreeMap<String, String>>,
    digest: Option<String>,
    #[serde(rename = "chunkOffset")]
    chunk_offset: Option<i64>,
    #[serde(rename = "chunkSize")]
    chunk_size: Option<i64>,
    #[serde(rename = "chunkDigest")]
    chunk_digest: Option<String>,
    /// Tagged `json:"-"` in stargz-snapshotter (never written, computed by readers); accepted
    /// and ignored.
    #[serde(rename = "NumLink")]
    #[allow(dead_code)]
    num_link: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, serde::Deserialize)]
struct RawToc {
    version: Option<i64>,
    #[serde(default)]
    entries: Option<Vec<RawEntry>>,
}

/// Parse and validate TOC JSON of the layer `layer`, whose TOC starts at `toc_offset` (every
/// chunk must start before it).
pub fn parse_toc_json(layer: &Digest, json: &[u8], toc_offset: u64) -> Result<TocContents, TocError> {
    parse_toc_json_ratio(layer, json, toc_offset, MAX_INFLATE_RATIO)
}

/// [`parse_toc_json`] with the most bytes one compressed byte may yield: 1032 for gzip
/// members, 32768 for zstd frames (eStargz TOCs inside zstd:chunked layers).
fn parse_toc_json_ratio(
    layer: &Digest,
    json: &[u8],
    toc_offset: u64,
    ratio: u128,
) -> Result<TocContents, TocError> {
    let toc_err = |message: String| TocError::Toc { layer: layer.clone(), toc_offset, message };
    if json.len() as u64 > MAX_TOC_JSON {
        return Err(toc_err(format!(
            "the TOC JSON is {} bytes, more than the {MAX_TOC_JSON} allowed",
            json.len()
        )));
    }
    let raw: RawToc =
        serde_json::from_slice(json).map_err(|e| toc_err(format!("the TOC JSON is invalid: {e}")))?;
    match raw.version {
        Some(1) => {}
        Some(v) => return Err(toc_err(format!("TOC version {v}, only 1 is known"))),
        None => return Err(toc_err("the TOC JSON has no version".into())),
    }
    let mut v = Validator {
        layer,
        toc_offset,
        ratio,
        entries: Vec::new(),
        hidden: Vec::new(),
        file: None,
        unames: HashMap::new(),
        gnames: HashMap::new(),
        seen: HashMap::new(),
        landmark: None,
    };
    for (index, raw) in raw.entries.unwrap_or_default().into_iter().enumerate() {
        v.entry(index, raw)?;
    }
    v.finish_file()?;
    v.check_chunk_places()?;
    let Validator { entries, hidden, landmark, .. } = v;
    let entries = entries.into_iter().zip(hidden).filter_map(|(e, h)| (!h).then_some(e)).collect();
    Ok(TocContents { version: 1, entries, landmark: landmark.map(|(l, _)| l) })
}

/// The regular file whose chunks are being read.
struct OpenFile {
    entry: usize,
    index: usize,
    raw_name: String,
    covered: u64,
}

struct Validator<'a> {
    layer: &'a Digest,
    toc_offset: u64,
    /// The most bytes one compressed byte may yield.
    ratio: u128,
    entries: Vec<TocEntry>,
    /// Landmarks and `stargz.index.json`: validated, then left out.
    hidden: Vec<bool>,
    file: Option<OpenFile>,
    unames: HashMap<u64, String>,
    gnames: HashMap<u64, String>,
    /// The kind of the latest entry of each name (hardlinks must point back to one).
    seen: HashMap<String, EntryKind>,
    landmark: Option<(Landmark, usize)>,
}

fn entry_err(layer: &Digest, index: usize, name: &str, offset: Option<u64>, message: String) -> TocError {
    TocError::Entry { layer: layer.clone(), index, name: name.to_string(), offset, message }
}

impl Validator<'_> {
    fn entry(&mut self, index: usize, raw: RawEntry) -> Result<(), TocError> {
        let raw_name = raw.name.clone().unwrap_or_default();
        let offset = raw.offset.filter(|&o| o > 0).map(|o| o as u64);
        let layer = self.layer;
        let e = |m: String| entry_err(layer, index, &raw_name, offset, m);
        let num = |v: Option<i64>, what: &str| -> Result<u64, TocError> {
            let v = v.unwrap_or(0);
            u64::try_from(v).map_err(|_| e(format!("negative {what} {v}")))
        };
        let num32 = |v: Option<i64>, what: &str| -> Result<u32, TocError> {
            let v = v.unwrap_or(0);
            u32::try_from(v).map_err(|_| e(format!("{what} {v} is out of range")))
        };
        let kind_str = raw.kind.as_deref().unwrap_or("");
        if kind_str == "chunk" {
            let Some(file) = self.file.as_ref() else {
                return Err(e("a chunk entry must follow a regular file with data, or another chunk".into()));
            };
            if !raw_name.is_empty() {
                let name = normalize(&raw_name).map_err(&e)?;
                let file_name = &self.entries[file.entry].name;
                if name != *file_name {
                    return Err(e(format!(
                        "a chunk of {:?} follows the entries of {:?}",
                        raw_name, file.raw_name
                    )));
                }
            }
            let chunk_offset = num(raw.chunk_offset, "chunkOffset")?;
            let chunk_size = num(raw.chunk_size, "chunkSize")?;
            let chunk_digest = opt_digest(raw.chunk_digest.as_deref(), "chunkDigest").map_err(&e)?;
            let place = (num(raw.offset, "offset")?, num(raw.inner_offset, "innerOffset")?);
            return self.add_chunk(index, &raw_name, place, chunk_offset, chunk_size, chunk_digest);
        }
        self.finish_file()?;

        let Some(kind) = EntryKind::parse(kind_str) else {
            return Err(e(format!("unknown entry type {kind_str:?}")));
        };
        let name = normalize(&raw_name).map_err(&e)?;
        if name.is_empty() && kind != EntryKind::Dir {
            return Err(e(format!("the root is a {kind}, not a directory")));
        }
        let mode = num32(raw.mode, "mode")? & 0o7777;
        let uid = u64::from(num32(raw.uid, "uid")?);
        let gid = u64::from(num32(raw.gid, "gid")?);
        let (mtime, mtime_nsec) = match raw.modtime.as_deref() {
            None | Some("") => (0, 0),
            Some(t) => parse_rfc3339(t).ok_or_else(|| e(format!("modtime {t:?} is not an RFC 3339 time")))?,
        };
        let size = num(raw.size, "size")?;
        let devmajor = num32(raw.dev_major, "devMajor")?;
        let devminor = num32(raw.dev_minor, "devMinor")?;
        let mut xattrs = BTreeMap::new();
        for (k, v) in raw.xattrs.unwrap_or_default() {
            if k.is_empty() || k.contains('\0') {
                return Err(e(format!("invalid xattr name {k:?}")));
            }
            let value = base64::engine::general_purpose::STANDARD
                .decode(&v)
                .map_err(|err| e(format!("xattr {k:?}: value is not base64: {err}")))?;
            xattrs.insert(k, value);
        }
        let digest = opt_digest(raw.digest.as_deref(), "digest").map_err(&e)?;
        let raw_link = raw.link_name.unwrap_or_default();
        let link = match kind {
            EntryKind::Symlink => {
                if raw_link.is_empty() || raw_link.contains('\0') {
                    return Err(e(format!("invalid symlink target {raw_link:?}")));
                }
                raw_link
            }
            EntryKind::Hardlink => {
                let target = normalize(&raw_link).map_err(|m| e(format!("hardlink target: {m}")))?;
                match self.seen.get(&target) {
                    _ if target == name => {
                        return Err(e(format!("a hardlink to itself ({raw_link:?})")));
                    }
                    None => {
                        return Err(e(format!(
                            "hardlink to {raw_link:?}, which no earlier entry of the layer is"
                        )));
                    }
                    Some(EntryKind::Dir) => {
                        return Err(e(format!("hardlink to the directory {raw_link:?}")));
                    }
                    Some(_) => target,
                }
            }
            _ => String::new(),
        };
        if kind != EntryKind::Reg {
            let data = [
                ("size", raw.size),
                ("offset", raw.offset),
                ("innerOffset", raw.inner_offset),
                ("chunkOffset", raw.chunk_offset),
                ("chunkSize", raw.chunk_size),
            ];
            if let Some((what, v)) = data.iter().find(|(_, v)| v.is_some_and(|v| v != 0)) {
                return Err(e(format!(
                    "a {kind} has no data, but the TOC gives it {what} {}",
                    v.unwrap_or(0)
                )));
            }
        }
        let uname = match raw.uname.filter(|s| !s.is_empty()) {
            Some(u) => {
                self.unames.insert(uid, u.clone());
                u
            }
            None => self.unames.get(&uid).cloned().unwrap_or_default(),
        };
        let gname = match raw.gname.filter(|s| !s.is_empty()) {
            Some(g) => {
                self.gnames.insert(gid, g.clone());
                g
            }
            None => self.gnames.get(&gid).cloned().unwrap_or_default(),
        };

        let hidden = name == TOC_TAR_NAME || name == PREFETCH_LANDMARK || name == NO_PREFETCH_LANDMARK;
        if name == PREFETCH_LANDMARK || name == NO_PREFETCH_LANDMARK {
            if kind != EntryKind::Reg {
                return Err(e(format!("the landmark is a {kind}, not a regular file")));
            }
            if let Some((_, first)) = self.landmark {
                return Err(e(format!("a second landmark (entry {first} is one)")));
            }
            let kind =
                if name == PREFETCH_LANDMARK { LandmarkKind::Prefetch } else { LandmarkKind::NoPrefetch };
            let offset = offset.ok_or_else(|| e("the landmark has no offset".into()))?;
            if offset >= self.toc_offset {
                return Err(e(format!(
                    "the landmark is at offset {offset}, not before the TOC at {}",
                    self.toc_offset
                )));
            }
            self.landmark = Some((Landmark { kind, offset }, index));
        }
        if !hidden {
            self.seen.insert(name.clone(), kind);
        }
        self.entries.push(TocEntry {
            name,
            kind,
            mode,
            uid,
            gid,
            uname,
            gname,
            mtime,
            mtime_nsec,
            size,
            link,
            devmajor,
            devminor,
            xattrs,
            digest,
            chunks: Vec::new(),
        });
        self.hidden.push(hidden);
        if kind == EntryKind::Reg && size > 0 {
            self.file = Some(OpenFile {
                entry: self.entries.len() - 1,
                index,
                raw_name: raw_name.clone(),
                covered: 0,
            });
            let chunk_digest = opt_digest(raw.chunk_digest.as_deref(), "chunkDigest").map_err(&e)?;
            let place = (num(raw.offset, "offset")?, num(raw.inner_offset, "innerOffset")?);
            let chunk_offset = num(raw.chunk_offset, "chunkOffset")?;
            let chunk_size = num(raw.chunk_size, "chunkSize")?;
            self.add_chunk(index, &raw_name, place, chunk_offset, chunk_size, chunk_digest)?;
        }
        Ok(())
    }

    /// Add a chunk to the open file: it must start where the previous one ended, fit in the
    /// file, and lie before the TOC.
    fn add_chunk(
        &mut self,
        index: usize,
        raw_name: &str,
        (offset, inner_offset): (u64, u64),
        chunk_offset: u64,
        chunk_size: u64,
        chunk_digest: Option<Digest>,
    ) -> Result<(), TocError> {
        let layer = self.layer;
        let e = |m: String| entry_err(layer, index, raw_name, Some(offset), m);
        let Some((entry, covered)) = self.file.as_ref().map(|f| (f.entry, f.covered)) else {
            return Err(e("no open file".into()));
        };
        let size = self.entries[entry].size;
        let chunk_size = chunk_span(size, covered, chunk_offset, chunk_size).map_err(e)?;
        if offset == 0 && inner_offset == 0 {
            return Err(e(format!(
                "a chunk of {chunk_size} bytes has no offset (the blob starts with a tar header, not file data)"
            )));
        }
        if offset >= self.toc_offset {
            return Err(e(format!("a chunk at offset {offset}, not before the TOC at {}", self.toc_offset)));
        }
        let room = u128::from(self.toc_offset - offset) * self.ratio;
        if u128::from(inner_offset) + u128::from(chunk_size) > room {
            return Err(e(format!(
                "a chunk of {chunk_size} bytes at inner offset {inner_offset} cannot come from the {} compressed bytes between its offset and the TOC (at most {room} bytes inflate from them)",
                self.toc_offset - offset
            )));
        }
        self.entries[entry].chunks.push(Chunk {
            offset,
            inner_offset,
            chunk_offset,
            chunk_size,
            chunk_digest,
            compressed_end: 0,
            zeros: false,
        });
        if let Some(f) = self.file.as_mut() {
            f.covered = chunk_offset + chunk_size;
        }
        Ok(())
    }

    /// Close the open file: its chunks must reach its end.
    fn finish_file(&mut self) -> Result<(), TocError> {
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        let entry = &mut self.entries[file.entry];
        if file.covered != entry.size {
            let offset = entry.chunks.first().map(|c| c.offset);
            let (size, covered) = (entry.size, file.covered);
            return Err(entry_err(
                self.layer,
                file.index,
                &file.raw_name,
                offset,
                format!("the chunks cover {covered} of the file's {size} bytes"),
            ));
        }
        if let [only] = entry.chunks.as_mut_slice()
            && only.chunk_digest.is_none()
        {
            only.chunk_digest = entry.digest.clone();
        }
        Ok(())
    }

    /// No two chunks at the same place, none overlapping another in the same gzip member; and
    /// where each chunk's compressed bytes end.
    fn check_chunk_places(&mut self) -> Result<(), TocError> {
        let mut all: Vec<(u64, u64, u64, usize)> = self
            .entries
            .iter()
            .enumerate()
            .flat_map(|(i, e)| e.chunks.iter().map(move |c| (c.offset, c.inner_offset, c.chunk_size, i)))
            .collect();
        all.sort_unstable();
        for w in all.windows(2) {
            let (a, b) = (w[0], w[1]);
            if a.0 != b.0 {
                continue;
            }
            let (na, nb) = (&self.entries[a.3].name, &self.entries[b.3].name);
            let e = |message: String| TocError::Entry {
                layer: self.layer.clone(),
                index: b.3,
                name: nb.clone(),
                offset: Some(b.0),
                message,
            };
            if a.1 == b.1 {
                return Err(e(format!(
                    "two chunks at the same place (offset {}, inner offset {}): one of {na:?} and one of {nb:?}",
                    a.0, a.1
                )));
            }
            if a.1 + a.2 > b.1 {
                return Err(e(format!(
                    "overlapping chunks in the gzip member at offset {}: {na:?} has bytes {}..{} of its output, {nb:?} starts at {}",
                    a.0,
                    a.1,
                    a.1 + a.2,
                    b.1
                )));
            }
        }
        let mut starts: Vec<u64> = all.iter().map(|c| c.0).collect();
        starts.dedup();
        let toc_offset = self.toc_offset;
        for entry in &mut self.entries {
            for c in &mut entry.chunks {
                let next = starts.partition_point(|&s| s <= c.offset);
                c.compressed_end = starts.get(next).copied().unwrap_or(toc_offset);
            }
        }
        Ok(())
    }
}

/// An optional `sha256:` digest field.
/// The size of a chunk at `chunk_offset` of a `size`-byte file whose earlier chunks end at
/// `covered`: it must start there and fit in the file; a `chunk_size` of 0 (or absent) runs to
/// the end of the file. (eStargz and zstd:chunked TOCs alike.)
pub(crate) fn chunk_span(size: u64, covered: u64, chunk_offset: u64, chunk_size: u64) -> Result<u64, String> {
    if chunk_offset != covered {
        return Err(format!(
            "the chunks do not cover the file: this one starts at file offset {chunk_offset}, the previous ones end at {covered}"
        ));
    }
    if chunk_offset >= size {
        return Err(format!("a chunk at file offset {chunk_offset}, past the end of the {size}-byte file"));
    }
    let chunk_size = if chunk_size == 0 { size - chunk_offset } else { chunk_size };
    if chunk_size > size - chunk_offset {
        return Err(format!(
            "a chunk of {chunk_size} bytes at file offset {chunk_offset} runs past the end of the {size}-byte file"
        ));
    }
    Ok(chunk_size)
}

pub(crate) fn opt_digest(s: Option<&str>, what: &str) -> Result<Option<Digest>, String> {
    match s {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse::<Digest>()
            .map(Some)
            .map_err(|_| format!("invalid {what} {s:?}: expected sha256: and 64 hex digits")),
    }
}

/// Normalize a TOC name as tar names are: relative to the root, `.` and `..` resolved
/// lexically and clamped at the root (as stargz-snapshotter's `cleanEntryName` and containerd
/// clean them), a leading `/` or `./` dropped. A name that holds a NUL is refused.
pub(crate) fn normalize(name: &str) -> Result<String, String> {
    if name.contains('\0') {
        return Err(format!("the name {name:?} holds a NUL byte"));
    }
    let normal = crate::tar::normalize(name.as_bytes());
    // Components of a str joined by '/' are still UTF-8.
    String::from_utf8(normal).map_err(|_| format!("the name {name:?} is not UTF-8"))
}

/// An RFC 3339 time (`2023-11-14T22:13:20Z`, `…20.123456789+02:00`) as seconds since the
/// epoch and nanoseconds. Fractions beyond nanoseconds are truncated.
pub fn parse_rfc3339(s: &str) -> Option<(i64, u32)> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let f = b.get(r)?;
        if !f.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(f.iter().fold(0i64, |v, &d| v * 10 + i64::from(d - b'0')))
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut i = 19;
    let mut nsec: u32 = 0;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                nsec = nsec * 10 + u32::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..9 {
            nsec *= 10;
        }
    }
    let offset = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let hh = digits(i + 1..i + 3)?;
            let mm = digits(i + 4..i + 6)?;
            if hh > 23 || mm > 59 {
                return None;
            }
            let o = hh * 3600 + mm * 60;
            if *sign == b'-' { -o } else { o }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86400 + hour * 3600 + minute * 60 + second - offset;
    Some((secs, nsec))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some((0, 0)));
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20Z"), Some((1_700_000_000, 0)));
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20.123456789Z"), Some((1_700_000_000, 123_456_789)));
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20.5Z"), Some((1_700_000_000, 500_000_000)));
        assert_eq!(parse_rfc3339("2023-11-15T00:13:20.0000000019+02:00"), Some((1_700_000_000, 1)));
        assert_eq!(parse_rfc3339("2255-03-14T16:00:00Z"), Some((9_000_000_000, 0)));
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Some((-1, 0)));
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z").map(|t| t.0), Some(1_709_164_800));
        for bad in [
            "",
            "2023-11-14",
            "2023-11-14T22:13:20",
            "2023-02-29T00:00:00Z",
            "2023-13-01T00:00:00Z",
            "2023-11-14T24:00:00Z",
            "2023-11-14T22:13:60Z",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:20+0200",
            "2023-11-14T22:13:20+24:00",
            "2023-11-14T22:13:20Zx",
            "+023-11-14T22:13:20Z",
            "2023-11-14 22:13:20Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(normalize("./usr/bin/").unwrap(), "usr/bin");
        assert_eq!(normalize("/etc//passwd").unwrap(), "etc/passwd");
        assert_eq!(normalize("a/b/../c").unwrap(), "a/c");
        assert_eq!(normalize("./").unwrap(), "");
        assert_eq!(normalize("../etc/passwd").unwrap(), "etc/passwd");
        assert_eq!(normalize("/../x").unwrap(), "x");
        assert_eq!(normalize("a/../../b").unwrap(), "b");
        assert!(normalize("a\0b").is_err());
    }
}
