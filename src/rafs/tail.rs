//! The tail Nydus's builder appends to a blob it writes (a native data blob, or the separate
//! "ref" blob of an oci-ref image): each part stored as `data | 512-byte tar header` (the header
//! *after* its data, so a builder can stream the data before knowing its size), then a table of
//! contents of 128-byte entries, closed by a header of its own named `rafs.blob.toc`.
//!
//! A reader finds the parts from the end: the last 512 bytes are the ToC's header, its size says
//! where the ToC starts, and each entry gives a part's name, offset, sizes, compression and the
//! sha256 of its uncompressed bytes. `formats/rafs-v6.md` ("Blob tail") documents the bytes;
//! headers are what nydus-builder writes (`tar::Header::new_gnu` with path, type Regular, size
//! and checksum, all other fields zero), so Go's `archive/tar` reads them.
//!
//! Owns the format only; calls nothing else in the crate.

use sha2::{Digest as _, Sha256};
use std::io::{self, Write};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The chunk data of a native blob.
pub const IMAGE_BLOB: &str = "image.blob";
/// The chunk-info table (compressed as the ToC entry says); its data part in the blob is the
/// table followed by the 4096-byte header.
pub const BLOB_META: &str = "blob.meta";
/// The 4096-byte `BlobCompressionContextHeader` (a ToC name only: 16 bytes, no NUL).
pub const BLOB_META_HEADER: &str = "blob.meta.header";
/// 32 bytes per chunk: the digest of each chunk's uncompressed bytes.
pub const BLOB_DIGEST: &str = "blob.digest";
/// The blob's own RAFS bootstrap.
pub const IMAGE_BOOT: &str = "image.boot";
/// The header closing the ToC (never an entry of it).
pub const BLOB_TOC: &str = "rafs.blob.toc";

/// ToC entry flags: how the part is compressed.
pub const TOC_NONE: u32 = 0x1;
pub const TOC_ZSTD: u32 = 0x2;
pub const TOC_LZ4_BLOCK: u32 = 0x4;
const TOC_COMPRESSION_MASK: u32 = 0xf;

/// Size of a tar header.
pub const HEADER_SIZE: usize = 512;
/// Nydus refuses a ToC larger than this; so does [`read_toc`].
pub const MAX_TOC: u64 = 1 << 20;

/// One ToC entry, `TocEntry` in nydus-storage's `meta/toc.rs`.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct TocEntry {
    flags: U32,
    reserved1: U32,
    /// NUL-padded, or exactly 16 bytes.
    name: [u8; 16],
    /// sha256 of the uncompressed part.
    uncompressed_digest: [u8; 32],
    compressed_offset: U64,
    compressed_size: U64,
    uncompressed_size: U64,
    reserved2: [u8; 48],
}

const _: () = assert!(std::mem::size_of::<TocEntry>() == 128);

impl TocEntry {
    /// An entry; a name over 16 bytes is cut (every Nydus name fits).
    pub fn new(
        name: &str,
        flags: u32,
        uncompressed_digest: [u8; 32],
        compressed_offset: u64,
        compressed_size: u64,
        uncompressed_size: u64,
    ) -> TocEntry {
        let mut n = [0u8; 16];
        let b = name.as_bytes();
        let len = b.len().min(16);
        n[..len].copy_from_slice(&b[..len]);
        TocEntry {
            flags: flags.into(),
            reserved1: 0.into(),
            name: n,
            uncompressed_digest,
            compressed_offset: compressed_offset.into(),
            compressed_size: compressed_size.into(),
            uncompressed_size: uncompressed_size.into(),
            reserved2: [0; 48],
        }
    }

    /// The name without its NUL padding.
    pub fn name(&self) -> &[u8] {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(16);
        &self.name[..end]
    }

    pub fn flags(&self) -> u32 {
        self.flags.get()
    }

    /// The compression bits of the flags.
    pub fn compression(&self) -> u32 {
        self.flags.get() & TOC_COMPRESSION_MASK
    }

    pub fn uncompressed_digest(&self) -> [u8; 32] {
        self.uncompressed_digest
    }

    pub fn compressed_offset(&self) -> u64 {
        self.compressed_offset.get()
    }

    pub fn compressed_size(&self) -> u64 {
        self.compressed_size.get()
    }

    pub fn uncompressed_size(&self) -> u64 {
        self.uncompressed_size.get()
    }

    /// The part's compressed range, if it ends at or before `limit` (the ToC's offset).
    pub fn range(&self, limit: u64) -> Option<std::ops::Range<u64>> {
        let start = self.compressed_offset();
        let end = start.checked_add(self.compressed_size())?;
        (end <= limit).then_some(start..end)
    }
}

/// The tar header nydus-builder writes after a part: GNU magic, `name`, type Regular, `size`,
/// mtime 0, checksum; every other field zero.
pub fn tar_header(name: &str, size: u64) -> [u8; HEADER_SIZE] {
    let mut h = [0u8; HEADER_SIZE];
    let n = name.as_bytes();
    let len = n.len().min(100);
    h[..len].copy_from_slice(&n[..len]);
    // size: 11 octal digits and a NUL; larger sizes in GNU base-256, as the tar crate does.
    if size < 0o100_000_000_000 {
        let s = format!("{size:011o}");
        h[124..135].copy_from_slice(s.as_bytes());
    } else {
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    // mtime 0, written out (as `tar::Header::new_gnu` leaves it).
    h[136..147].fill(b'0');
    h[156] = b'0';
    h[257..265].copy_from_slice(b"ustar  \0");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    // Seven octal digits and a NUL: what the tar crate's `set_cksum` writes.
    let c = format!("{sum:07o}\0");
    h[148..156].copy_from_slice(c.as_bytes());
    h
}

/// Appends parts and their headers to a blob, and the ToC at the end.
pub struct TailWriter<W: Write> {
    w: W,
    pos: u64,
    entries: Vec<TocEntry>,
}

/// What [`TailWriter::finish`] wrote.
pub struct Finished<W> {
    pub writer: W,
    /// Size of the whole blob.
    pub size: u64,
    /// The ToC and its header, as the blob table's `blob_toc_size` records it.
    pub toc_size: u32,
    /// sha256 of the ToC and its header (`blob_toc_digest`).
    pub toc_digest: [u8; 32],
}

impl<W: Write> TailWriter<W> {
    /// `pos`: where `w` stands in the blob.
    pub fn new(w: W, pos: u64) -> Self {
        TailWriter { w, pos, entries: Vec::new() }
    }

    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The writer, for data written directly; say how much with [`advance`](Self::advance).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.w
    }

    pub fn advance(&mut self, n: u64) {
        self.pos += n;
    }

    /// The header closing `size` bytes of data already written.
    pub fn header(&mut self, name: &str, size: u64) -> io::Result<()> {
        self.w.write_all(&tar_header(name, size))?;
        self.pos += HEADER_SIZE as u64;
        Ok(())
    }

    /// `data` and its header; returns the offset of `data`.
    pub fn entry(&mut self, name: &str, data: &[u8]) -> io::Result<u64> {
        let at = self.pos;
        self.w.write_all(data)?;
        self.pos += data.len() as u64;
        self.header(name, data.len() as u64)?;
        Ok(at)
    }

    /// A ToC record (written by [`finish`](Self::finish), in the order given).
    pub fn toc(&mut self, entry: TocEntry) {
        self.entries.push(entry);
    }

    /// Writes the ToC and its `rafs.blob.toc` header.
    pub fn finish(mut self) -> io::Result<Finished<W>> {
        let toc = self.entries.as_bytes().to_vec();
        let header = tar_header(BLOB_TOC, toc.len() as u64);
        self.w.write_all(&toc)?;
        self.w.write_all(&header)?;
        let mut h = Sha256::new();
        h.update(&toc);
        h.update(header);
        let toc_size = (toc.len() + HEADER_SIZE) as u64;
        Ok(Finished {
            writer: self.w,
            size: self.pos + toc_size,
            toc_size: u32::try_from(toc_size).map_err(|_| io::Error::other("ToC too large"))?,
            toc_digest: h.finalize().into(),
        })
    }
}

/// A blob tail that is not what Nydus writes; `offset` is in the blob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("blob tail at offset {offset}: {message}")]
pub struct TailError {
    pub offset: u64,
    pub message: String,
}

fn octal(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        // GNU base-256: the rest of the field, big-endian.
        let mut v: u64 = 0;
        for &b in &field[field.len().saturating_sub(8)..] {
            v = v.checked_shl(8)? | u64::from(b);
        }
        return Some(v);
    }
    let s = std::str::from_utf8(field).ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

/// The name and size a header written by [`tar_header`] (or Nydus) gives, its checksum checked.
pub fn parse_header(h: &[u8; HEADER_SIZE]) -> Option<(&[u8], u64)> {
    let want = octal(&h[148..156])?;
    let sum: u64 =
        h.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { u64::from(b) }).sum();
    if sum != want {
        return None;
    }
    let name_end = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
    Some((&h[..name_end], octal(&h[124..136])?))
}

/// The ToC of a blob of `blob_size` bytes, from `tail`, its last bytes (at least the ToC and its
/// header: 512 bytes plus at most [`MAX_TOC`]). Entries are not checked here: nydus-image 2.2.0
/// writes, in the ref blobs of oci-ref images, an `image.blob` entry whose offset has wrapped
/// below zero; a reader checks the entries it uses with [`TocEntry::range`].
pub fn read_toc(tail: &[u8], blob_size: u64) -> Result<Vec<TocEntry>, TailError> {
    let err = |offset: u64, message: String| TailError { offset, message };
    let tail_len = tail.len() as u64;
    if tail_len > blob_size {
        return Err(err(0, format!("{tail_len} tail bytes given for a blob of {blob_size}")));
    }
    let start = blob_size - tail_len;
    if tail.len() < HEADER_SIZE {
        return Err(err(start, "shorter than a tar header".into()));
    }
    let hoff = tail.len() - HEADER_SIZE;
    let header: &[u8; HEADER_SIZE] = tail[hoff..].try_into().map_err(|_| err(start, "tail".into()))?;
    let at = start + hoff as u64;
    let (name, size) =
        parse_header(header).ok_or_else(|| err(at, "no valid tar header at the end".into()))?;
    if name != BLOB_TOC.as_bytes() {
        return Err(err(
            at,
            format!("last header names {:?}, not {BLOB_TOC}", String::from_utf8_lossy(name)),
        ));
    }
    if size == 0 || size % 128 != 0 || size > MAX_TOC {
        return Err(err(at, format!("ToC size {size} is not a positive multiple of 128 up to {MAX_TOC}")));
    }
    let size = size as usize;
    if size > hoff {
        return Err(err(at, format!("ToC of {size} bytes, but only {hoff} bytes given before its header")));
    }
    let toc_off = at - size as u64;
    let bytes = &tail[hoff - size..hoff];
    let entries = <[TocEntry]>::ref_from_bytes(bytes).map_err(|_| err(toc_off, "ToC bytes".into()))?.to_vec();
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_what_the_tar_crate_writes() {
        for (name, size) in
            [("image.blob", 0u64), ("blob.meta", 4096 + 82), (BLOB_TOC, 640), ("image.boot", 1 << 36)]
        {
            let mut want = tar::Header::new_gnu();
            want.set_path(name).unwrap();
            want.set_entry_type(tar::EntryType::Regular);
            want.set_size(size);
            want.set_cksum();
            assert_eq!(&tar_header(name, size)[..], want.as_bytes(), "{name} {size}");
            assert_eq!(parse_header(&tar_header(name, size)), Some((name.as_bytes(), size)));
        }
    }

    #[test]
    fn written_tail_reads_back() {
        let mut w = TailWriter::new(Vec::new(), 0);
        w.get_mut().extend_from_slice(&[7u8; 1000]);
        w.advance(1000);
        w.header(IMAGE_BLOB, 1000).unwrap();
        let at = w.entry(BLOB_DIGEST, &[1u8; 64]).unwrap();
        assert_eq!(at, 1512);
        w.toc(TocEntry::new(IMAGE_BLOB, TOC_NONE, [2; 32], 0, 1512, 1000));
        w.toc(TocEntry::new(BLOB_DIGEST, TOC_NONE, [3; 32], at, 64, 64));
        w.toc(TocEntry::new(BLOB_META_HEADER, TOC_NONE, [4; 32], 0, 4, 4));
        let f = w.finish().unwrap();
        assert_eq!(f.size, f.writer.len() as u64);
        assert_eq!(f.toc_size, 3 * 128 + 512);
        let toc = read_toc(&f.writer, f.size).unwrap();
        assert_eq!(toc.len(), 3);
        assert_eq!(toc[1].name(), BLOB_DIGEST.as_bytes());
        assert_eq!(toc[2].name(), BLOB_META_HEADER.as_bytes());
        assert_eq!(toc[1].compressed_offset(), 1512);
        assert_eq!(toc[0].compression(), TOC_NONE);
        let mut h = Sha256::new();
        h.update(&f.writer[f.writer.len() - f.toc_size as usize..]);
        assert_eq!(<[u8; 32]>::from(h.finalize()), f.toc_digest);
        // From only the last bytes.
        let tail = &f.writer[f.writer.len() - 1000..];
        assert_eq!(read_toc(tail, f.size).unwrap().len(), 3);
    }

    #[test]
    fn bad_tails_are_errors() {
        assert!(read_toc(&[0u8; 100], 100).is_err());
        assert!(read_toc(&[0u8; 1024], 1024).is_err());
        let mut blob = vec![0u8; 128];
        blob.extend_from_slice(&tar_header("other", 128));
        assert!(read_toc(&blob, blob.len() as u64).unwrap_err().message.contains("other"));
        let mut w = TailWriter::new(Vec::new(), 0);
        w.toc(TocEntry::new(IMAGE_BOOT, TOC_ZSTD, [0; 32], 10, 1 << 40, 5));
        let f = w.finish().unwrap();
        let toc = read_toc(&f.writer, f.size).unwrap();
        assert_eq!(toc[0].range(f.size - u64::from(f.toc_size)), None);
        // nydus-image 2.2.0's wrapped image.blob offset.
        let wrapped =
            TocEntry::new(IMAGE_BLOB, TOC_NONE, [0; 32], 0u64.wrapping_sub(1_036_252), 1_036_252, 0);
        assert_eq!(wrapped.range(u64::MAX), None);
        let mut big = vec![0u8; 512];
        big.extend_from_slice(&tar_header(BLOB_TOC, 2 << 20));
        assert!(read_toc(&big, big.len() as u64).is_err());
    }
}
