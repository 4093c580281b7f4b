//! The footer at the end of an eStargz blob (51 bytes), of the legacy stargz format (47 bytes),
//! and the zstd:chunked footer (a 48-byte skippable frame), recognized from a blob's last bytes.

/// Bytes of the blob's tail that [`detect_footer`] needs.
pub const MAX_FOOTER: usize = 51;

const ZSTD_CHUNKED_MAGIC: &[u8; 8] = b"GnUlInUx";
const ZSTD_SKIPPABLE_MAGIC: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FooterKind {
    /// eStargz: 51 bytes, extra subfield `SG`.
    Estargz,
    /// The original stargz (google/crfs): 47 bytes, the extra field is the payload itself.
    LegacyStargz,
    /// zstd:chunked: a skippable zstd frame with the TOC position.
    ZstdChunked,
}

/// Where a footer says the TOC is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Footer {
    pub kind: FooterKind,
    /// Offset of the TOC in the blob (the gzip member or zstd frame holding it).
    pub toc_offset: u64,
    /// Bytes of the footer itself.
    pub footer_size: u64,
}

/// Recognize the footer at the end of `tail`, the last bytes (up to [`MAX_FOOTER`]) of a blob
/// of `blob_size` bytes. `None` when the blob has no footer of a known kind.
pub fn detect_footer(tail: &[u8], blob_size: u64) -> Option<Footer> {
    let at = |n: usize| tail.len().checked_sub(n).map(|s| &tail[s..]);
    if let Some(f) = at(51).and_then(|b| gzip_footer(b, true)) {
        return Some(f).filter(|f| f.toc_offset < blob_size);
    }
    if let Some(f) = at(47).and_then(|b| gzip_footer(b, false)) {
        return Some(f).filter(|f| f.toc_offset < blob_size);
    }
    let f = at(48)?;
    if f[..4] != ZSTD_SKIPPABLE_MAGIC
        || u32::from_le_bytes([f[4], f[5], f[6], f[7]]) != 40
        || &f[40..48] != ZSTD_CHUNKED_MAGIC
    {
        return None;
    }
    let toc_offset = u64::from_le_bytes(f[8..16].try_into().ok()?);
    (toc_offset < blob_size).then_some(Footer { kind: FooterKind::ZstdChunked, toc_offset, footer_size: 48 })
}

fn gzip_footer(b: &[u8], subfield: bool) -> Option<Footer> {
    // 1f 8b 08 FEXTRA, MTIME(4), XFL, OS, XLEN(2)
    if b[..4] != [0x1f, 0x8b, 0x08, 0x04] {
        return None;
    }
    let xlen = u16::from_le_bytes([b[10], b[11]]) as usize;
    let payload = if subfield {
        if xlen != 26 || &b[12..14] != b"SG" || u16::from_le_bytes([b[14], b[15]]) != 22 {
            return None;
        }
        &b[16..38]
    } else {
        if xlen != 22 {
            return None;
        }
        &b[12..34]
    };
    if &payload[16..] != b"STARGZ" {
        return None;
    }
    let hex = std::str::from_utf8(&payload[..16]).ok()?;
    let toc_offset = u64::from_str_radix(hex, 16).ok()?;
    let kind = if subfield { FooterKind::Estargz } else { FooterKind::LegacyStargz };
    Some(Footer { kind, toc_offset, footer_size: b.len() as u64 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn estargz_footer(off: u64) -> Vec<u8> {
        let mut f = vec![0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff, 26, 0, b'S', b'G', 22, 0];
        f.extend_from_slice(format!("{off:016x}STARGZ").as_bytes());
        f.extend_from_slice(&[1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
        f
    }

    #[test]
    fn estargz_and_legacy() {
        let f = estargz_footer(0x107e51c);
        assert_eq!(f.len(), 51);
        let mut tail = vec![7u8; 100];
        tail.extend_from_slice(&f);
        let got = detect_footer(&tail, 20_000_000).unwrap();
        assert_eq!(got, Footer { kind: FooterKind::Estargz, toc_offset: 17_294_620, footer_size: 51 });
        // Offsets past the blob are not footers.
        assert!(detect_footer(&tail, 1000).is_none());

        let mut legacy = vec![0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff, 22, 0];
        legacy.extend_from_slice(b"00000000000004d2STARGZ");
        legacy.extend_from_slice(&[1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(legacy.len(), 47);
        let got = detect_footer(&legacy, 5000).unwrap();
        assert_eq!((got.kind, got.toc_offset), (FooterKind::LegacyStargz, 1234));
    }

    #[test]
    fn zstd_chunked() {
        let mut f = ZSTD_SKIPPABLE_MAGIC.to_vec();
        f.extend_from_slice(&40u32.to_le_bytes());
        f.extend_from_slice(&999u64.to_le_bytes());
        f.extend_from_slice(&[0; 24]);
        f.extend_from_slice(ZSTD_CHUNKED_MAGIC);
        let got = detect_footer(&f, 10_000).unwrap();
        assert_eq!((got.kind, got.toc_offset), (FooterKind::ZstdChunked, 999));
    }

    #[test]
    fn plain_gzip_is_not_a_footer() {
        let plain = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(detect_footer(&plain, 20).is_none());
        assert!(detect_footer(&[], 0).is_none());
        let mut bad = estargz_footer(5);
        bad[30] = b'x';
        assert!(detect_footer(&bad, 100).is_none());
    }
}
