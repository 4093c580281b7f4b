//! Gzip member headers (RFC 1952 section 2.3), parsed from a byte slice.
//!
//! The engine runs zlib in raw-deflate mode and reads headers and trailers itself, so that it
//! knows the exact compressed offset of every member's deflate data and can name the offset of
//! anything wrong.

/// The largest header we accept. FNAME, FCOMMENT and FEXTRA are unbounded in the format; a real
/// one is a few hundred bytes at most, and a hostile one must not grow memory without end.
pub const MAX_HEADER_LEN: usize = 1 << 20;

const FTEXT: u8 = 1;
const FHCRC: u8 = 2;
const FEXTRA: u8 = 4;
const FNAME: u8 = 8;
const FCOMMENT: u8 = 16;

/// What was wrong with a header, relative to its first byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// The first two bytes are not `1f 8b`.
    BadMagic,
    /// The compression method is not 8 (deflate).
    BadMethod(u8),
    /// Reserved flag bits are set.
    ReservedFlags(u8),
    /// The FHCRC field does not match the header.
    BadHeaderCrc { stored: u16, computed: u16 },
    /// The header is longer than [`MAX_HEADER_LEN`].
    TooLong,
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::BadMagic => write!(f, "not a gzip member (bad magic)"),
            HeaderError::BadMethod(m) => write!(f, "unknown compression method {m}"),
            HeaderError::ReservedFlags(x) => write!(f, "reserved header flags set ({x:#04x})"),
            HeaderError::BadHeaderCrc { stored, computed } => {
                write!(f, "header CRC mismatch (stored {stored:#06x}, computed {computed:#06x})")
            }
            HeaderError::TooLong => write!(f, "header longer than {MAX_HEADER_LEN} bytes"),
        }
    }
}

/// Parse the header at the start of `buf`.
///
/// Returns `Ok(Some(len))` with the header's length, `Ok(None)` when `buf` ends before the
/// header does (read more and call again), or the error.
pub fn parse(buf: &[u8]) -> Result<Option<usize>, HeaderError> {
    let limited = &buf[..buf.len().min(MAX_HEADER_LEN)];
    match parse_inner(limited) {
        Ok(None) if buf.len() > MAX_HEADER_LEN => Err(HeaderError::TooLong),
        other => other,
    }
}

fn parse_inner(buf: &[u8]) -> Result<Option<usize>, HeaderError> {
    // Check the fixed part as far as we have it, so that garbage is reported at once.
    if buf.first().is_some_and(|&b| b != 0x1f) || buf.get(1).is_some_and(|&b| b != 0x8b) {
        return Err(HeaderError::BadMagic);
    }
    if let Some(&m) = buf.get(2).filter(|&&m| m != 8) {
        return Err(HeaderError::BadMethod(m));
    }
    let Some(&flags) = buf.get(3) else {
        return Ok(None);
    };
    if flags & !(FTEXT | FHCRC | FEXTRA | FNAME | FCOMMENT) != 0 {
        return Err(HeaderError::ReservedFlags(flags));
    }
    let mut pos = 10;
    if buf.len() < pos {
        return Ok(None);
    }
    if flags & FEXTRA != 0 {
        let Some(xlen) = buf.get(pos..pos + 2) else {
            return Ok(None);
        };
        let xlen = u16::from_le_bytes([xlen[0], xlen[1]]) as usize;
        pos += 2 + xlen;
        if buf.len() < pos {
            return Ok(None);
        }
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            match buf[pos..].iter().position(|&b| b == 0) {
                Some(nul) => pos += nul + 1,
                None => return Ok(None),
            }
        }
    }
    if flags & FHCRC != 0 {
        let Some(stored) = buf.get(pos..pos + 2) else {
            return Ok(None);
        };
        let stored = u16::from_le_bytes([stored[0], stored[1]]);
        let computed = (crc32fast::hash(&buf[..pos]) & 0xffff) as u16;
        if stored != computed {
            return Err(HeaderError::BadHeaderCrc { stored, computed });
        }
        pos += 2;
    }
    Ok(Some(pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(flags: u8, extra: &[u8], name: &[u8], comment: &[u8]) -> Vec<u8> {
        let mut h = vec![0x1f, 0x8b, 8, flags, 1, 2, 3, 4, 0, 3];
        if flags & FEXTRA != 0 {
            h.extend_from_slice(&(extra.len() as u16).to_le_bytes());
            h.extend_from_slice(extra);
        }
        if flags & FNAME != 0 {
            h.extend_from_slice(name);
            h.push(0);
        }
        if flags & FCOMMENT != 0 {
            h.extend_from_slice(comment);
            h.push(0);
        }
        if flags & FHCRC != 0 {
            let crc = (crc32fast::hash(&h) & 0xffff) as u16;
            h.extend_from_slice(&crc.to_le_bytes());
        }
        h
    }

    #[test]
    fn every_optional_field() {
        for flags in 0..32u8 {
            let h = header(flags, b"XYabcd", b"name.txt", b"a comment");
            assert_eq!(parse(&h), Ok(Some(h.len())), "flags {flags:#x}");
            for cut in 0..h.len() {
                assert_eq!(parse(&h[..cut]), Ok(None), "flags {flags:#x} cut {cut}");
            }
            let mut long = h.clone();
            long.extend_from_slice(b"deflate data follows");
            assert_eq!(parse(&long), Ok(Some(h.len())));
        }
    }

    #[test]
    fn rejects_bad_fields() {
        assert_eq!(parse(b"\x1f\x8c"), Err(HeaderError::BadMagic));
        assert_eq!(parse(b"PK\x03\x04"), Err(HeaderError::BadMagic));
        assert_eq!(parse(b"\x1f\x8b\x07"), Err(HeaderError::BadMethod(7)));
        assert_eq!(parse(b"\x1f\x8b\x08\x20"), Err(HeaderError::ReservedFlags(0x20)));
        let mut h = header(FHCRC | FNAME, b"", b"n", b"");
        let last = h.len() - 1;
        h[last] ^= 1;
        assert!(matches!(parse(&h), Err(HeaderError::BadHeaderCrc { .. })));
    }

    #[test]
    fn unterminated_name_is_bounded() {
        let mut h = header(0, b"", b"", b"");
        h[3] = FNAME;
        h.resize(MAX_HEADER_LEN + 10, b'a');
        assert_eq!(parse(&h), Err(HeaderError::TooLong));
    }
}
