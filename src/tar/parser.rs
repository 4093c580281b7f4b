//! The push parser: bytes in, entries (with data offsets) out.

use super::header::{self, BLOCK, RawHeader};
use base64::Engine as _;
use std::collections::BTreeMap;

/// The largest extension header (PAX records, GNU long name or link) accepted.
pub const MAX_EXTENSION: u64 = 16 << 20;

/// What a tar entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Hardlink,
    Symlink,
    Char,
    Block,
    Directory,
    Fifo,
}

/// One tar entry, with its extensions applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Normalized path relative to the root, `/`-separated, no `.` or `..`, no trailing slash;
    /// empty for the root itself. Bytes: tar names need not be UTF-8.
    pub path: Vec<u8>,
    pub kind: EntryKind,
    /// Permission bits, with setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub uname: Vec<u8>,
    pub gname: Vec<u8>,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Bytes of data (regular files; 0 for the others).
    pub size: u64,
    /// Symlink target as written, or hardlink target as a normalized path.
    pub link: Vec<u8>,
    pub devmajor: u32,
    pub devminor: u32,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Offset of the entry's first header block (extension headers included).
    pub header_offset: u64,
    /// Offset of the entry's data in the uncompressed stream.
    pub data_offset: u64,
}

/// A malformed archive, naming the offset and, where known, the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tar{} at offset {offset}: {message}", path.as_ref().map(|p| format!(" entry {p:?}")).unwrap_or_default())]
pub struct TarError {
    pub offset: u64,
    pub path: Option<String>,
    pub message: String,
}

/// Something a tar stream does that Go's `archive/tar` (and so containerd, docker, podman and
/// skopeo) accepts but a well-formed archive would not: where, and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tar{} at offset {offset}: {message}", path.as_ref().map(|p| format!(" entry {p:?}")).unwrap_or_default())]
pub struct TarWarning {
    pub offset: u64,
    pub path: Option<String>,
    pub message: String,
}

#[derive(Debug)]
enum State {
    Header,
    Extension {
        kind: u8,
        remaining: u64,
        pad: u64,
    },
    /// An entry's data: `entry` is the entry it belongs to (none for a volume label), `emit`
    /// whether its runs go to the data callback (regular files).
    Data {
        entry: Option<usize>,
        emit: bool,
        remaining: u64,
        pad: u64,
        done: u64,
    },
    Padding {
        remaining: u64,
    },
    End,
}

#[derive(Debug, Default)]
struct Pending {
    pax: BTreeMap<String, Vec<u8>>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    /// Where the first extension header of the coming entry began.
    start: Option<u64>,
}

/// Parses a tar stream pushed to it in pieces.
#[derive(Debug)]
pub struct TarParser {
    pos: u64,
    state: State,
    block: Vec<u8>,
    ext: Vec<u8>,
    pending: Pending,
    entries: Vec<Entry>,
    zero_blocks: u32,
    warnings: Vec<TarWarning>,
}

impl Default for TarParser {
    fn default() -> Self {
        Self::new()
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl TarParser {
    pub fn new() -> Self {
        TarParser {
            pos: 0,
            state: State::Header,
            block: Vec::with_capacity(BLOCK),
            ext: Vec::new(),
            pending: Pending::default(),
            entries: Vec::new(),
            zero_blocks: 0,
            warnings: Vec::new(),
        }
    }

    /// The entries parsed so far.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// What the stream did that a reader as lenient as Go's accepts (see [`Self::finish`]).
    pub fn warnings(&self) -> &[TarWarning] {
        &self.warnings
    }

    /// The offset of the next byte the parser expects.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn err(&self, offset: u64, path: Option<&[u8]>, message: impl Into<String>) -> TarError {
        TarError { offset, path: path.map(lossy), message: message.into() }
    }

    /// Feed the bytes at stream offset `at` (which must follow what came before). `data` is
    /// called with each run of a regular file's data: the entry's index in [`Self::entries`],
    /// the offset within the file, and the bytes.
    pub fn push(
        &mut self,
        at: u64,
        mut bytes: &[u8],
        data: &mut dyn FnMut(usize, u64, &[u8]),
    ) -> Result<(), TarError> {
        if at != self.pos {
            return Err(self.err(at, None, format!("expected data at offset {}", self.pos)));
        }
        while !bytes.is_empty() {
            match &mut self.state {
                State::End => {
                    // What follows the end marker (more zero blocks, often) is not part of it.
                    self.pos += bytes.len() as u64;
                    return Ok(());
                }
                State::Padding { remaining } => {
                    let n = (*remaining).min(bytes.len() as u64);
                    *remaining -= n;
                    if *remaining == 0 {
                        self.state = State::Header;
                    }
                    self.advance(&mut bytes, n as usize);
                }
                State::Data { entry, emit, remaining, pad, done } => {
                    let n = (*remaining).min(bytes.len() as u64) as usize;
                    if let (Some(e), true) = (*entry, *emit) {
                        data(e, *done, &bytes[..n]);
                    }
                    *remaining -= n as u64;
                    *done += n as u64;
                    if *remaining == 0 {
                        self.state =
                            if *pad > 0 { State::Padding { remaining: *pad } } else { State::Header };
                    }
                    self.advance(&mut bytes, n);
                }
                State::Extension { kind, remaining, pad } => {
                    let n = (*remaining).min(bytes.len() as u64) as usize;
                    self.ext.extend_from_slice(&bytes[..n]);
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        let (kind, pad) = (*kind, *pad);
                        self.state = if pad > 0 { State::Padding { remaining: pad } } else { State::Header };
                        self.advance(&mut bytes, n);
                        self.extension(kind)?;
                    } else {
                        self.advance(&mut bytes, n);
                    }
                }
                State::Header => {
                    let n = (BLOCK - self.block.len()).min(bytes.len());
                    self.block.extend_from_slice(&bytes[..n]);
                    self.advance(&mut bytes, n);
                    if self.block.len() == BLOCK {
                        self.header()?;
                        self.block.clear();
                    }
                }
            }
        }
        Ok(())
    }

    fn advance(&mut self, bytes: &mut &[u8], n: usize) {
        *bytes = &bytes[n..];
        self.pos += n as u64;
    }

    /// The stream has ended. It may end as Go's `archive/tar` lets it (the runtimes users have
    /// read layers with it): after the end-of-archive blocks, after only one of them, at an
    /// entry boundary without them, or right after the last entry's data without its padding
    /// (`umoci insert` writes such layers). All but the first are recorded in
    /// [`Self::warnings`]. A stream that ends inside a header block, an extension header's
    /// records or an entry's data is an error naming the entry and the offset.
    pub fn finish(&mut self) -> Result<(), TarError> {
        let end = self.pos;
        let last = self.entries.last().map(|e| e.path.clone());
        let dangling = self.pending.start;
        match self.state {
            State::End => {}
            State::Header if !self.block.is_empty() => {
                let at = end - self.block.len() as u64;
                let after = last.map(|p| format!(" (after entry {:?})", lossy(&p))).unwrap_or_default();
                return Err(self.err(
                    at,
                    None,
                    format!(
                        "the stream ends inside a header block{after}: {} of its 512 bytes are there",
                        self.block.len()
                    ),
                ));
            }
            State::Extension { remaining, .. } => {
                return Err(self.err(
                    dangling.unwrap_or(end),
                    None,
                    format!(
                        "the stream ends inside an extension header's records ({remaining} bytes missing)"
                    ),
                ));
            }
            State::Data { entry, remaining, done, .. } => {
                let path = entry.and_then(|e| self.entries.get(e)).map(|e| e.path.clone());
                return Err(self.err(
                    end,
                    path.as_deref(),
                    format!(
                        "the stream ends in the middle of the entry's data: {remaining} of its {} bytes are missing",
                        done + remaining
                    ),
                ));
            }
            State::Header | State::Padding { .. } => {
                let padding = match self.state {
                    State::Padding { remaining } => remaining,
                    _ => 0,
                };
                let message = if let Some(at) = dangling {
                    (
                        at,
                        format!(
                            "the stream ends after an extension header (at offset {at}) with no entry: ignored"
                        ),
                    )
                } else if padding > 0 {
                    (
                        end,
                        format!(
                            "the archive ends without the last entry's padding ({padding} bytes) and without the end-of-archive blocks"
                        ),
                    )
                } else if self.zero_blocks == 1 {
                    (end, "the archive ends with one end-of-archive block instead of two".to_string())
                } else if end > 0 {
                    (end, "the archive ends without its end-of-archive blocks".to_string())
                } else {
                    (end, String::new())
                };
                if !message.1.is_empty() {
                    let path = if padding > 0 { last } else { None };
                    self.warnings.push(TarWarning {
                        offset: message.0,
                        path: path.map(|p| lossy(&p)),
                        message: message.1,
                    });
                }
            }
        }
        Ok(())
    }

    fn header(&mut self) -> Result<(), TarError> {
        let at = self.pos - BLOCK as u64;
        if header::is_zero(&self.block) {
            self.zero_blocks += 1;
            if self.zero_blocks >= 2 {
                self.state = State::End;
            }
            return Ok(());
        }
        if self.zero_blocks > 0 {
            return Err(self.err(at, None, "header after an end-of-archive block"));
        }
        let block: &[u8; BLOCK] =
            self.block.as_slice().try_into().map_err(|_| self.err(at, None, "short header"))?;
        let raw = header::parse(block).map_err(|e| self.err(at, Some(&header_name(block)), e.to_string()))?;
        match raw.typeflag {
            b'x' | b'g' | b'L' | b'K' => {
                if raw.size > MAX_EXTENSION {
                    return Err(self.err(
                        at,
                        Some(&raw.name),
                        format!("extension header of {} bytes", raw.size),
                    ));
                }
                self.pending.start.get_or_insert(at);
                self.ext.clear();
                self.state = if raw.size == 0 {
                    State::Header
                } else {
                    State::Extension { kind: raw.typeflag, remaining: raw.size, pad: padding(raw.size) }
                };
                if raw.size == 0 {
                    self.extension(raw.typeflag)?;
                }
                Ok(())
            }
            b'S' => Err(self.err(at, Some(&raw.name), "GNU sparse files are not supported")),
            b'M' => Err(self.err(at, Some(&raw.name), "multi-volume archives are not supported")),
            b'V' => {
                // A volume label: no entry.
                self.skip(None, false, raw.size);
                Ok(())
            }
            _ => self.entry(raw, at),
        }
    }

    fn skip(&mut self, entry: Option<usize>, emit: bool, size: u64) {
        self.state = if size == 0 {
            State::Header
        } else {
            State::Data { entry, emit, remaining: size, pad: padding(size), done: 0 }
        };
    }

    fn extension(&mut self, kind: u8) -> Result<(), TarError> {
        let at = self.pos;
        let body = std::mem::take(&mut self.ext);
        match kind {
            b'L' => self.pending.long_name = Some(trim_nul(&body)),
            b'K' => self.pending.long_link = Some(trim_nul(&body)),
            b'g' => {
                // Go's reader hands a global header over as an entry of its own, and
                // containerd, docker and podman skip it: its records apply to nothing.
                let records =
                    parse_pax(&body).map_err(|m| self.err(at, None, format!("global PAX header: {m}")))?;
                tracing::debug!(offset = at, records = ?records.keys().collect::<Vec<_>>(), "global PAX header ignored");
                // Nor is what came before it: Go returns the global header with whatever
                // extensions preceded it, and starts the next entry afresh.
                self.pending = Pending::default();
            }
            _ => {
                let records = parse_pax(&body).map_err(|m| self.err(at, None, format!("PAX header: {m}")))?;
                self.pending.pax.extend(records);
            }
        }
        Ok(())
    }

    fn entry(&mut self, raw: RawHeader, at: u64) -> Result<(), TarError> {
        let pending = std::mem::take(&mut self.pending);
        let pax = pending.pax;
        let header_offset = pending.start.unwrap_or(at);
        let raw_name = pax.get("path").cloned().or(pending.long_name).unwrap_or_else(|| raw.name.clone());
        let fail = |m: String| TarError { offset: header_offset, path: Some(lossy(&raw_name)), message: m };
        if pax.keys().any(|k| k.starts_with("GNU.sparse.")) {
            return Err(fail("GNU sparse files (PAX format) are not supported".into()));
        }
        let num = |key: &str, default: u64| -> Result<u64, TarError> {
            match pax.get(key) {
                Some(v) => std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or_else(|| fail(format!("invalid PAX {key} {:?}", lossy(v)))),
                None => Ok(default),
            }
        };
        let size = num("size", raw.size)?;
        let uid = num("uid", raw.uid)?;
        let gid = num("gid", raw.gid)?;
        let devmajor = num("SCHILY.devmajor", u64::from(raw.devmajor))? as u32;
        let devminor = num("SCHILY.devminor", u64::from(raw.devminor))? as u32;
        let (mtime, mtime_nsec) = match pax.get("mtime") {
            Some(v) => parse_time(v).ok_or_else(|| fail(format!("invalid PAX mtime {:?}", lossy(v))))?,
            None => (raw.mtime, 0),
        };
        let is_dir_name = raw_name.ends_with(b"/");
        // Types that carry no data whatever their size field says, as Go's reader has them
        // (a v7 regular-file type with a name ending in '/' is a directory, so it is one).
        let header_only = matches!(raw.typeflag, b'1'..=b'6') || (raw.typeflag == b'\0' && is_dir_name);
        let kind = match raw.typeflag {
            b'0' | b'\0' | b'7' => {
                if is_dir_name && raw.typeflag == b'\0' {
                    EntryKind::Directory
                } else {
                    EntryKind::File
                }
            }
            b'1' => EntryKind::Hardlink,
            b'2' => EntryKind::Symlink,
            b'3' => EntryKind::Char,
            b'4' => EntryKind::Block,
            b'5' | b'D' => EntryKind::Directory,
            b'6' => EntryKind::Fifo,
            other => {
                // POSIX: unknown types are read as regular files.
                tracing::debug!(typeflag = other, path = %lossy(&raw_name), "unknown tar entry type read as a file");
                EntryKind::File
            }
        };
        let path = normalize(&raw_name);
        let raw_link = pax.get("linkpath").cloned().or(pending.long_link).unwrap_or(raw.linkname);
        let link = match kind {
            EntryKind::Hardlink => normalize(&raw_link),
            _ => raw_link,
        };
        let mut xattrs = BTreeMap::new();
        for (k, v) in &pax {
            if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                xattrs.insert(name.as_bytes().to_vec(), v.clone());
            } else if let Some(name) = k.strip_prefix("LIBARCHIVE.xattr.") {
                let name = percent_decode(name.as_bytes());
                let value = base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(v))
                    .map_err(|_| fail(format!("invalid base64 in {k}")))?;
                xattrs.insert(name, value);
            }
        }
        let uname = pax.get("uname").cloned().unwrap_or(raw.uname);
        let gname = pax.get("gname").cloned().unwrap_or(raw.gname);
        let data_offset = self.pos;
        let index = self.entries.len();
        let file = kind == EntryKind::File;
        self.entries.push(Entry {
            path,
            kind,
            mode: raw.mode & 0o7777,
            uid,
            gid,
            uname,
            gname,
            mtime,
            mtime_nsec,
            size: if file { size } else { 0 },
            link,
            devmajor,
            devminor,
            xattrs,
            header_offset,
            data_offset,
        });
        // Other types with data (GNU dumpdirs, say): skipped.
        self.skip(Some(index), file, if header_only { 0 } else { size });
        Ok(())
    }
}

fn header_name(block: &[u8; BLOCK]) -> Vec<u8> {
    trim_nul(&block[..100])
}

fn trim_nul(b: &[u8]) -> Vec<u8> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    b[..end].to_vec()
}

/// PAX records: `LEN KEY=VALUE\n`, LEN counting the whole record.
fn parse_pax(mut body: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut out = BTreeMap::new();
    while !body.is_empty() {
        if body.iter().all(|&b| b == 0) {
            break;
        }
        let space = body.iter().position(|&b| b == b' ').ok_or("record without a length")?;
        let len: usize = std::str::from_utf8(&body[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("invalid record length")?;
        if len <= space + 1 || len > body.len() || body[len - 1] != b'\n' {
            return Err("record length does not match its content".into());
        }
        let record = &body[space + 1..len - 1];
        let eq = record.iter().position(|&b| b == b'=').ok_or("record without '='")?;
        let key = std::str::from_utf8(&record[..eq]).map_err(|_| "record key is not UTF-8")?;
        out.insert(key.to_string(), record[eq + 1..].to_vec());
        body = &body[len..];
    }
    Ok(out)
}

/// A PAX time: `SECONDS[.FRACTION]`, possibly negative.
fn parse_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if secs.is_empty()
        || !secs.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: u32 = 0;
    for (i, d) in frac.bytes().take(9).enumerate() {
        nanos += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
    }
    if !neg {
        return Some((secs, nanos));
    }
    // -1.25 is 1.25 s before the epoch: seconds -2, nanoseconds 0.75e9.
    if nanos == 0 { Some((-secs, 0)) } else { Some((-secs - 1, 1_000_000_000 - nanos)) }
}

fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%'
            && i + 2 < s.len()
            && let Ok(b) = u8::from_str_radix(&String::from_utf8_lossy(&s[i + 1..i + 3]), 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// Normalize a tar path as containerd and umoci clean one (`filepath.Clean` of the name below
/// `/`): relative, `/`-separated, no empty or `.` components, `..` resolved lexically and
/// clamped at the root (`../a` and `x/../../a` are both `a`). Symlinks are the tree's business
/// ([`crate::tree`]): this is text only.
pub fn normalize(name: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join(&b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization() {
        assert_eq!(normalize(b"./usr/bin/"), b"usr/bin");
        assert_eq!(normalize(b"/etc//passwd"), b"etc/passwd");
        assert_eq!(normalize(b"a/b/../c"), b"a/c");
        assert_eq!(normalize(b"./"), b"");
        // Climbing out of the root stops at the root, as containerd and umoci clean names.
        assert_eq!(normalize(b"../escape.txt"), b"escape.txt");
        assert_eq!(normalize(b"a/../../b.txt"), b"b.txt");
        assert_eq!(normalize(b"/../../.."), b"");
        assert_eq!(normalize(b"../a/./../../b/c/.."), b"b");
    }

    #[test]
    fn times() {
        assert_eq!(parse_time(b"1700000000.123456789"), Some((1_700_000_000, 123_456_789)));
        assert_eq!(parse_time(b"5"), Some((5, 0)));
        assert_eq!(parse_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_time(b"1.5x"), None);
    }

    #[test]
    fn pax_records() {
        let body = b"30 mtime=1700000000.123456789\n21 path=some/long/nm\n";
        let r = parse_pax(body).unwrap();
        assert_eq!(r["path"], b"some/long/nm");
        assert!(parse_pax(b"99 path=x\n").is_err());
        assert!(parse_pax(b"5 a=b\n").is_err());
    }
}
