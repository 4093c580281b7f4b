//! The zstd:chunked TOC JSON (containers/storage `minimal.TOC`; reference
//! `formats-convert-zstdchunked.md` §3.4) parsed, validated and turned into eStargz
//! [`TocEntry`]s: names cleaned as c/storage's `CleanAbsPath` does, `chunk` entries merged
//! into their file, each chunk given its zstd frame (`offset`..next chunk's `offset`, the
//! last one's end the file's `endOffset`, as c/storage's `mergeTocEntries`).
//!
//! Everything is distrusted: the chunks must cover each file exactly, every frame must lie
//! before the TOC's skippable frame, frames of distinct chunks must not overlap, and no frame
//! may be asked to decode to more than [`MAX_ZSTD_RATIO`] times its size.

use super::ZstdChunkedError;
use crate::estargz::toc::{chunk_span, normalize, opt_digest, parse_rfc3339};
use crate::estargz::{Chunk, EntryKind, TocEntry};
use crate::oci::Digest;
use base64::Engine as _;
use std::collections::{BTreeMap, HashMap};

/// The most bytes one compressed byte of a zstd frame can decode to: a 4-byte RLE block (3-byte
/// header and the byte) yields at most 128 KiB, and no block does better.
pub const MAX_ZSTD_RATIO: u64 = 32 << 10;
/// Go's zero `time.Time`, which TOCs before containers/storage 1.55 write for unset times.
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// A TOC entry as JSON has it; every field optional (`omitempty`), unknown ones ignored.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct RawEntry {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: Option<String>,
    #[serde(rename = "linkName")]
    link_name: Option<String>,
    mode: Option<i64>,
    size: Option<i64>,
    uid: Option<i64>,
    gid: Option<i64>,
    modtime: Option<String>,
    accesstime: Option<String>,
    changetime: Option<String>,
    #[serde(rename = "devMajor")]
    dev_major: Option<i64>,
    #[serde(rename = "devMinor")]
    dev_minor: Option<i64>,
    xattrs: Option<BTreeMap<String, String>>,
    digest: Option<String>,
    offset: Option<i64>,
    #[serde(rename = "endOffset")]
    end_offset: Option<i64>,
    #[serde(rename = "chunkSize")]
    chunk_size: Option<i64>,
    #[serde(rename = "chunkOffset")]
    chunk_offset: Option<i64>,
    #[serde(rename = "chunkDigest")]
    chunk_digest: Option<String>,
    #[serde(rename = "chunkType")]
    chunk_type: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
struct RawToc {
    version: Option<i64>,
    #[serde(default)]
    entries: Option<Vec<RawEntry>>,
    #[serde(rename = "tarSplitDigest", default)]
    tar_split_digest: Option<String>,
}

/// The parsed and validated TOC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TocContents {
    pub entries: Vec<TocEntry>,
    pub tar_split_digest: Option<Digest>,
}

/// A time field: RFC 3339, Go's zero time and an absent field both mean "unset" (0).
fn time(s: Option<&str>) -> Result<(i64, u32), String> {
    match s {
        None | Some("") | Some(GO_ZERO_TIME) => Ok((0, 0)),
        Some(t) => parse_rfc3339(t).ok_or_else(|| format!("{t:?} is not an RFC 3339 time")),
    }
}

/// The regular file whose chunks are being read.
struct OpenFile {
    entry: usize,
    index: usize,
    raw_name: String,
    covered: u64,
    /// The file's `endOffset`: the end of its last chunk's frame.
    end: u64,
}

struct Validator<'a> {
    layer: &'a Digest,
    /// Where the TOC's skippable frame starts: every chunk's frame ends by then.
    limit: u64,
    entries: Vec<TocEntry>,
    file: Option<OpenFile>,
    seen: HashMap<String, EntryKind>,
    /// Index in the TOC of each entry of `entries`, for messages.
    indexes: Vec<usize>,
}

fn num(v: Option<i64>, what: &str) -> Result<u64, String> {
    let v = v.unwrap_or(0);
    u64::try_from(v).map_err(|_| format!("negative {what} {v}"))
}

fn num32(v: Option<i64>, what: &str) -> Result<u32, String> {
    let v = v.unwrap_or(0);
    u32::try_from(v).map_err(|_| format!("{what} {v} is out of range"))
}

fn entry_err(
    layer: &Digest,
    index: usize,
    name: &str,
    offset: Option<u64>,
    message: String,
) -> ZstdChunkedError {
    ZstdChunkedError::Entry { layer: layer.clone(), index, name: name.to_string(), offset, message }
}

/// Parse and validate the TOC JSON of `layer`, whose TOC's skippable frame starts at `limit`.
pub fn parse_toc_json(layer: &Digest, json: &[u8], limit: u64) -> Result<TocContents, ZstdChunkedError> {
    let toc_err = |message: String| ZstdChunkedError::Toc { layer: layer.clone(), offset: limit, message };
    let raw: RawToc =
        serde_json::from_slice(json).map_err(|e| toc_err(format!("the TOC JSON is invalid: {e}")))?;
    match raw.version {
        Some(1) => {}
        Some(v) => return Err(toc_err(format!("TOC version {v}, only 1 is known"))),
        None => return Err(toc_err("the TOC JSON has no version".into())),
    }
    let tar_split_digest = opt_digest(raw.tar_split_digest.as_deref(), "tarSplitDigest").map_err(toc_err)?;
    let mut v = Validator {
        layer,
        limit,
        entries: Vec::new(),
        file: None,
        seen: HashMap::new(),
        indexes: Vec::new(),
    };
    for (index, raw) in raw.entries.unwrap_or_default().into_iter().enumerate() {
        v.entry(index, raw)?;
    }
    v.finish_file()?;
    v.check_frames()?;
    Ok(TocContents { entries: v.entries, tar_split_digest })
}

impl Validator<'_> {
    fn entry(&mut self, index: usize, raw: RawEntry) -> Result<(), ZstdChunkedError> {
        let layer = self.layer;
        let raw_name = raw.name.clone().unwrap_or_default();
        let offset = raw.offset.filter(|&o| o > 0).map(|o| o as u64);
        let e = |m: String| entry_err(layer, index, &raw_name, offset, m);
        let kind_str = raw.kind.as_deref().unwrap_or("");
        if kind_str == "chunk" {
            let Some(file) = self.file.as_ref() else {
                return Err(e("a chunk entry must follow a regular file with data, or another chunk".into()));
            };
            let name = normalize(&raw_name).map_err(&e)?;
            if name != self.entries[file.entry].name {
                return Err(e(format!("a chunk of {raw_name:?} follows the entries of {:?}", file.raw_name)));
            }
            return self.add_chunk(index, &raw_name, &raw);
        }
        self.finish_file()?;
        let e = |m: String| entry_err(layer, index, &raw_name, offset, m);
        let Some(kind) = EntryKind::parse(kind_str) else {
            return Err(e(format!("unknown entry type {kind_str:?}")));
        };
        let name = normalize(&raw_name).map_err(&e)?;
        if name.is_empty() && kind != EntryKind::Dir {
            return Err(e(format!("the root is a {kind}, not a directory")));
        }
        let mode = num32(raw.mode, "mode").map_err(&e)? & 0o7777;
        let uid = u64::from(num32(raw.uid, "uid").map_err(&e)?);
        let gid = u64::from(num32(raw.gid, "gid").map_err(&e)?);
        let (mtime, mtime_nsec) = time(raw.modtime.as_deref()).map_err(|m| e(format!("modtime {m}")))?;
        time(raw.accesstime.as_deref()).map_err(|m| e(format!("accesstime {m}")))?;
        time(raw.changetime.as_deref()).map_err(|m| e(format!("changetime {m}")))?;
        let size = num(raw.size, "size").map_err(&e)?;
        let devmajor = num32(raw.dev_major, "devMajor").map_err(&e)?;
        let devminor = num32(raw.dev_minor, "devMinor").map_err(&e)?;
        let mut xattrs = BTreeMap::new();
        for (k, v) in raw.xattrs.as_ref().into_iter().flatten() {
            if k.is_empty() || k.contains('\0') {
                return Err(e(format!("invalid xattr name {k:?}")));
            }
            let value = base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|err| e(format!("xattr {k:?}: value is not base64: {err}")))?;
            xattrs.insert(k.clone(), value);
        }
        let digest = opt_digest(raw.digest.as_deref(), "digest").map_err(&e)?;
        let raw_link = raw.link_name.clone().unwrap_or_default();
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
                    _ if target == name => return Err(e(format!("a hardlink to itself ({raw_link:?})"))),
                    None => {
                        return Err(e(format!(
                            "hardlink to {raw_link:?}, which no earlier entry of the layer is"
                        )));
                    }
                    Some(EntryKind::Dir) => return Err(e(format!("hardlink to the directory {raw_link:?}"))),
                    Some(_) => target,
                }
            }
            _ => String::new(),
        };
        if kind != EntryKind::Reg || size == 0 {
            let data = [
                ("size", raw.size),
                ("offset", raw.offset),
                ("endOffset", raw.end_offset),
                ("chunkOffset", raw.chunk_offset),
                ("chunkSize", raw.chunk_size),
            ];
            if let Some((what, v)) = data.iter().find(|(_, v)| v.is_some_and(|v| v != 0)) {
                let what_is =
                    if kind == EntryKind::Reg { "an empty file".to_string() } else { format!("a {kind}") };
                return Err(e(format!(
                    "{what_is} has no data, but the TOC gives it {what} {}",
                    v.unwrap_or(0)
                )));
            }
        }
        self.seen.insert(name.clone(), kind);
        self.entries.push(TocEntry {
            name,
            kind,
            mode,
            uid,
            gid,
            uname: String::new(),
            gname: String::new(),
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
        self.indexes.push(index);
        if kind == EntryKind::Reg && size > 0 {
            let end = num(raw.end_offset, "endOffset").map_err(&e)?;
            self.file = Some(OpenFile {
                entry: self.entries.len() - 1,
                index,
                raw_name: raw_name.clone(),
                covered: 0,
                end,
            });
            self.add_chunk(index, &raw_name, &raw)?;
        }
        Ok(())
    }

    /// Add the chunk `raw` (a `reg` entry's first chunk, or a `chunk` entry) to the open file.
    fn add_chunk(&mut self, index: usize, raw_name: &str, raw: &RawEntry) -> Result<(), ZstdChunkedError> {
        let layer = self.layer;
        let offset = num(raw.offset, "offset").map_err(|m| entry_err(layer, index, raw_name, None, m))?;
        let e = |m: String| entry_err(layer, index, raw_name, Some(offset), m);
        let Some(file) = self.file.as_ref() else {
            return Err(e("no open file".into()));
        };
        let (entry, covered) = (file.entry, file.covered);
        let size = self.entries[entry].size;
        let chunk_offset = num(raw.chunk_offset, "chunkOffset").map_err(&e)?;
        let chunk_size = num(raw.chunk_size, "chunkSize").map_err(&e)?;
        // A file of one chunk carries no chunk fields: it runs to the end of the file.
        let chunk_size = chunk_span(size, covered, chunk_offset, chunk_size).map_err(&e)?;
        if offset == 0 {
            return Err(e(format!(
                "a chunk of {chunk_size} bytes has no offset (the blob starts with a tar header)"
            )));
        }
        if offset >= self.limit {
            return Err(e(format!(
                "a chunk's frame at offset {offset}, not before the TOC's frame at {}",
                self.limit
            )));
        }
        let zeros = match raw.chunk_type.as_deref() {
            None | Some("") => false,
            Some("zeros") => true,
            Some(t) => return Err(e(format!("unknown chunkType {t:?}"))),
        };
        let chunk_digest = opt_digest(raw.chunk_digest.as_deref(), "chunkDigest").map_err(&e)?;
        let entry = &mut self.entries[entry];
        if let Some(prev) = entry.chunks.last_mut() {
            if offset <= prev.offset {
                return Err(e(format!(
                    "the chunk's frame at offset {offset} does not come after the previous chunk's at {}",
                    prev.offset
                )));
            }
            prev.compressed_end = offset;
        }
        entry.chunks.push(Chunk {
            offset,
            inner_offset: 0,
            chunk_offset,
            chunk_size,
            chunk_digest,
            compressed_end: 0,
            zeros,
        });
        if let Some(f) = self.file.as_mut() {
            f.covered = chunk_offset + chunk_size;
        }
        Ok(())
    }

    /// Close the open file: its chunks must reach its end, the last one's frame ends at the
    /// file's `endOffset`.
    fn finish_file(&mut self) -> Result<(), ZstdChunkedError> {
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        let layer = self.layer;
        let limit = self.limit;
        let entry = &mut self.entries[file.entry];
        let first = entry.chunks.first().map(|c| c.offset);
        let e = |m: String| ZstdChunkedError::Entry {
            layer: layer.clone(),
            index: file.index,
            name: file.raw_name.clone(),
            offset: first,
            message: m,
        };
        if file.covered != entry.size {
            return Err(e(format!("the chunks cover {} of the file's {} bytes", file.covered, entry.size)));
        }
        let Some(last) = entry.chunks.last_mut() else {
            return Err(e("a file with data has no chunk".into()));
        };
        if file.end <= last.offset {
            return Err(e(format!(
                "endOffset {} does not come after its last chunk's frame at {}",
                file.end, last.offset
            )));
        }
        if file.end > limit {
            return Err(e(format!("endOffset {} runs into the TOC's frame at {limit}", file.end)));
        }
        last.compressed_end = file.end;
        if let [only] = entry.chunks.as_mut_slice()
            && only.chunk_digest.is_none()
        {
            only.chunk_digest = entry.digest.clone();
        }
        Ok(())
    }

    /// Frames of distinct chunks do not overlap, and none decodes to more than the ratio bound.
    fn check_frames(&self) -> Result<(), ZstdChunkedError> {
        let mut all: Vec<(u64, u64, u64, usize)> = self
            .entries
            .iter()
            .enumerate()
            .flat_map(|(i, e)| e.chunks.iter().map(move |c| (c.offset, c.compressed_end, c.chunk_size, i)))
            .collect();
        all.sort_unstable();
        for &(offset, end, size, i) in &all {
            let room = u128::from(end - offset) * u128::from(MAX_ZSTD_RATIO);
            if u128::from(size) > room {
                let name = &self.entries[i].name;
                return Err(entry_err(
                    self.layer,
                    self.indexes[i],
                    name,
                    Some(offset),
                    format!(
                        "a chunk of {size} bytes cannot come from its {}-byte zstd frame (at most {MAX_ZSTD_RATIO} bytes per compressed byte)",
                        end - offset
                    ),
                ));
            }
        }
        for w in all.windows(2) {
            let (a, b) = (w[0], w[1]);
            if a.1 > b.0 {
                let (na, nb) = (&self.entries[a.3].name, &self.entries[b.3].name);
                return Err(entry_err(
                    self.layer,
                    self.indexes[b.3],
                    nb,
                    Some(b.0),
                    format!(
                        "overlapping zstd frames: a chunk of {na:?} at {}..{}, one of {nb:?} at {}..{}",
                        a.0, a.1, b.0, b.1
                    ),
                ));
            }
        }
        Ok(())
    }
}
