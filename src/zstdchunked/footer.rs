//! The zstd:chunked footer: the blob's last zstd skippable frame, in each of the three sizes
//! containers/storage has written (reference `formats-convert-zstdchunked.md` §3.2), encoded
//! and recognized. All fields are u64 little-endian; the offsets point past the 8-byte header
//! of the skippable frame that holds the TOC (or the tar-split stream).

use super::Position;

/// The skippable frame magic 0x184D2A50, little-endian.
pub const SKIPPABLE_MAGIC: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];
/// The magic of the 40- and 56-byte footers (containers/storage up to 1.49, stargz-snapshotter).
pub const MAGIC_V1: &[u8; 8] = b"GnUlInUx";
/// The magic of the 64-byte footer (containers/storage 1.50 and later).
pub const MAGIC_V2: &[u8; 8] = b"GNUlInUx";
/// `manifestTypeCRFS`, the only manifest type written.
pub const MANIFEST_TYPE_CRFS: u64 = 1;
/// Bytes of the blob's tail that hold the largest footer frame (8-byte header + 64).
pub const MAX_FOOTER_FRAME: usize = 8 + 64;

/// Where a compressed stream lies in the blob: offset (past its skippable header),
/// compressed size, uncompressed size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Span {
    pub offset: u64,
    pub compressed: u64,
    pub uncompressed: u64,
}

/// What a footer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    /// [`Position::Footer40`], [`Position::Footer56`] or [`Position::Footer64`].
    pub version: Position,
    pub toc: Span,
    /// The tar-split stream (64-byte footers only; an all-zero position means none).
    pub tar_split: Option<Span>,
    /// Bytes of the footer frame, its 8-byte header included.
    pub frame_size: u64,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Recognize the footer frame at the end of `tail` (a blob's last bytes). `Ok(None)` when the
/// tail ends with no zstd:chunked footer; an error when it does but the footer is malformed
/// (a manifest type other than 1).
pub fn parse_footer(tail: &[u8]) -> Result<Option<Footer>, String> {
    for (len, version) in [(64usize, Position::Footer64), (56, Position::Footer56), (40, Position::Footer40)]
    {
        let Some(start) = tail.len().checked_sub(len + 8) else {
            continue;
        };
        let frame = &tail[start..];
        if frame[..4] != SKIPPABLE_MAGIC
            || u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]) as usize != len
        {
            continue;
        }
        let f = &frame[8..];
        // The 56-byte footer (containers/storage 1.47-1.49) keeps the magic at 32..40 and has
        // 16 more bytes after it, which are not read.
        let magic = if len == 56 { &f[32..40] } else { &f[len - 8..len] };
        if magic != MAGIC_V1 && magic != MAGIC_V2 {
            continue;
        }
        let toc = Span { offset: u64_at(f, 0), compressed: u64_at(f, 8), uncompressed: u64_at(f, 16) };
        let kind = u64_at(f, 24);
        if kind != MANIFEST_TYPE_CRFS {
            return Err(format!("the {len}-byte footer names manifest type {kind}, only 1 is known"));
        }
        let tar_split = (len == 64)
            .then(|| Span { offset: u64_at(f, 32), compressed: u64_at(f, 40), uncompressed: u64_at(f, 48) })
            .filter(|s| *s != Span { offset: 0, compressed: 0, uncompressed: 0 });
        return Ok(Some(Footer { version, toc, tar_split, frame_size: (len + 8) as u64 }));
    }
    Ok(None)
}

/// The footer frame of `version` (with its skippable header), as containers/storage writes it.
/// Used by tests and fixtures; `tar_split` is written only into a 64-byte footer.
pub fn encode_footer(version: Position, toc: Span, tar_split: Option<Span>) -> Vec<u8> {
    let len: u32 = match version {
        Position::Footer56 => 56,
        Position::Footer64 => 64,
        _ => 40,
    };
    let mut b = SKIPPABLE_MAGIC.to_vec();
    b.extend_from_slice(&len.to_le_bytes());
    for v in [toc.offset, toc.compressed, toc.uncompressed, MANIFEST_TYPE_CRFS] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    match version {
        Position::Footer64 => {
            let ts = tar_split.unwrap_or(Span { offset: 0, compressed: 0, uncompressed: 0 });
            for v in [ts.offset, ts.compressed, ts.uncompressed] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            b.extend_from_slice(MAGIC_V2);
        }
        Position::Footer56 => {
            b.extend_from_slice(MAGIC_V1);
            b.extend_from_slice(&[0; 16]);
        }
        _ => b.extend_from_slice(MAGIC_V1),
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn span() -> impl Strategy<Value = Span> {
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(offset, compressed, uncompressed)| Span {
            offset,
            compressed,
            uncompressed,
        })
    }

    proptest! {
        #[test]
        fn every_version_round_trips(toc in span(), ts in span(), junk in proptest::collection::vec(any::<u8>(), 0..100), v in 0..3usize) {
            let version = [Position::Footer40, Position::Footer56, Position::Footer64][v];
            let ts = (version == Position::Footer64 && ts != Span { offset: 0, compressed: 0, uncompressed: 0 }).then_some(ts);
            let frame = encode_footer(version, toc, ts);
            let mut tail = junk;
            tail.extend_from_slice(&frame);
            let f = parse_footer(&tail).unwrap().unwrap();
            prop_assert_eq!(f, Footer { version, toc, tar_split: ts, frame_size: frame.len() as u64 });
        }

        #[test]
        fn random_tails_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_footer(&tail);
        }
    }

    #[test]
    fn the_bytes_skopeo_wrote() {
        // The last 48 bytes of a layer skopeo 1.9.3 (c/storage 1.43) wrote: §3.2's 40-byte
        // footer, TOC at 1062752, 4076 bytes compressed, 56779 uncompressed, type 1.
        let tail = [
            0x50, 0x2a, 0x4d, 0x18, 0x28, 0, 0, 0, 0x60, 0x37, 0x10, 0, 0, 0, 0, 0, 0xec, 0x0f, 0, 0, 0, 0,
            0, 0, 0xcb, 0xdd, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, b'G', b'n', b'U', b'l', b'I', b'n',
            b'U', b'x',
        ];
        let f = parse_footer(&tail).unwrap().unwrap();
        assert_eq!(f.version, Position::Footer40);
        assert_eq!(f.toc, Span { offset: 1_062_752, compressed: 4076, uncompressed: 56_779 });
        assert_eq!(f.frame_size, 48);
    }

    #[test]
    fn both_magics_and_bad_type() {
        let toc = Span { offset: 10, compressed: 20, uncompressed: 30 };
        // A 40-byte footer with the newer magic is accepted (readers scan for both).
        let mut f = encode_footer(Position::Footer40, toc, None);
        f[40..48].copy_from_slice(MAGIC_V2);
        assert_eq!(parse_footer(&f).unwrap().unwrap().toc, toc);
        let mut f = encode_footer(Position::Footer64, toc, None);
        f[64..72].copy_from_slice(MAGIC_V1);
        assert_eq!(parse_footer(&f).unwrap().unwrap().version, Position::Footer64);
        // Manifest type 2 is not known.
        let mut f = encode_footer(Position::Footer40, toc, None);
        f[32] = 2;
        assert!(parse_footer(&f).unwrap_err().contains("manifest type 2"));
        // Neither magic, or a wrong frame length: no footer.
        let mut f = encode_footer(Position::Footer40, toc, None);
        f[47] = b'y';
        assert_eq!(parse_footer(&f).unwrap(), None);
        let mut f = encode_footer(Position::Footer40, toc, None);
        f[4] = 41;
        assert_eq!(parse_footer(&f).unwrap(), None);
        assert_eq!(parse_footer(&[]).unwrap(), None);
    }
}
