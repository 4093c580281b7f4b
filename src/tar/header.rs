//! One 512-byte tar header block: field extraction, numbers in octal or base-256, checksum.

pub const BLOCK: usize = 512;

/// The fields of a header block, undecoded where decoding depends on extensions.
#[derive(Debug, Clone)]
pub struct RawHeader {
    pub name: Vec<u8>,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: i64,
    pub typeflag: u8,
    pub linkname: Vec<u8>,
    pub uname: Vec<u8>,
    pub gname: Vec<u8>,
    pub devmajor: u32,
    pub devminor: u32,
}

/// Why a header block could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    Checksum { stored: u64, computed: u64 },
    Number { field: &'static str },
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Checksum { stored, computed } => {
                write!(f, "header checksum mismatch (stored {stored}, computed {computed})")
            }
            HeaderError::Number { field } => write!(f, "invalid number in the {field} field"),
        }
    }
}

/// Bytes of a NUL-terminated (or full-width) field.
fn text(field: &[u8]) -> Vec<u8> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    field[..end].to_vec()
}

/// A numeric field: octal digits, or GNU base-256 when the high bit of the first byte is set
/// (two's complement, so negative mtimes work). Octal is read as Go's `archive/tar` reads it:
/// spaces and NULs around the digits are ignored, the digits end at the first NUL, and
/// anything else in between is an error.
fn number(field: &[u8], name: &'static str) -> Result<i128, HeaderError> {
    if let Some(&first) = field.first()
        && first & 0x80 != 0
    {
        let negative = first & 0x40 != 0;
        let mut v: i128 = if negative { -1 } else { 0 };
        let mut bytes = field.to_vec();
        bytes[0] &= 0x7f;
        if negative {
            bytes[0] |= 0x80;
        }
        if bytes.len() > 15 && bytes[..bytes.len() - 15].iter().any(|&b| b != if negative { 0xff } else { 0 })
        {
            return Err(HeaderError::Number { field: name });
        }
        for &b in &bytes[bytes.len().saturating_sub(15)..] {
            v = (v << 8) | i128::from(b);
        }
        return Ok(v);
    }
    let pad = |b: &u8| *b == b' ' || *b == 0;
    let start = field.iter().position(|b| !pad(b)).unwrap_or(field.len());
    let end = field.iter().rposition(|b| !pad(b)).map_or(start, |i| i + 1);
    let trimmed = &field[start..end.max(start)];
    let digits = &trimmed[..trimmed.iter().position(|&b| b == 0).unwrap_or(trimmed.len())];
    let mut v: i128 = 0;
    for &b in digits {
        if !(b'0'..=b'7').contains(&b) || v > i128::from(u64::MAX) {
            return Err(HeaderError::Number { field: name });
        }
        v = v * 8 + i128::from(b - b'0');
    }
    Ok(v)
}

fn unsigned(field: &[u8], name: &'static str) -> Result<u64, HeaderError> {
    u64::try_from(number(field, name)?).map_err(|_| HeaderError::Number { field: name })
}

/// True for an all-zero block (the end-of-archive marker).
pub fn is_zero(block: &[u8]) -> bool {
    block.iter().all(|&b| b == 0)
}

/// The header formats, told apart as Go's `archive/tar` tells them: by the magic and version
/// fields, and the trailer of star headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Pre-POSIX (Unix v7): name, mode, ids, size, mtime, type and link name only.
    V7,
    /// POSIX ustar (and PAX): magic `ustar\0`, a 155-byte name prefix.
    Ustar,
    /// Jörg Schilling's star: ustar with a 131-byte prefix, then atime and ctime.
    Star,
    /// Old GNU: magic `ustar ` and version ` \0`; no prefix (atime, ctime and sparse data
    /// sit where ustar has it).
    Gnu,
}

/// Which format a block is in.
pub fn format(b: &[u8; BLOCK]) -> Format {
    let (magic, version) = (&b[257..263], &b[263..265]);
    if magic == b"ustar\0" {
        if &b[508..512] == b"tar\0" { Format::Star } else { Format::Ustar }
    } else if magic == b"ustar " && version == b" \0" {
        Format::Gnu
    } else {
        Format::V7
    }
}

/// Parse a header block. Like Go's reader, a v7 header's owner names and device numbers are
/// not read (the bytes past its type and link name are not part of it).
pub fn parse(b: &[u8; BLOCK]) -> Result<RawHeader, HeaderError> {
    let stored = unsigned(&b[148..156], "checksum")?;
    let unsigned_sum: u64 =
        b.iter().enumerate().map(|(i, &x)| if (148..156).contains(&i) { 32 } else { u64::from(x) }).sum();
    let signed_sum: i64 = b
        .iter()
        .enumerate()
        .map(|(i, &x)| if (148..156).contains(&i) { 32 } else { i64::from(x as i8) })
        .sum();
    if stored != unsigned_sum && i64::try_from(stored).ok() != Some(signed_sum) {
        return Err(HeaderError::Checksum { stored, computed: unsigned_sum });
    }
    let format = format(b);
    let mut name = text(&b[0..100]);
    let prefix = match format {
        Format::Ustar => text(&b[345..500]),
        Format::Star => text(&b[345..476]),
        Format::V7 | Format::Gnu => Vec::new(),
    };
    if !prefix.is_empty() {
        let mut full = prefix;
        full.push(b'/');
        full.extend_from_slice(&name);
        name = full;
    }
    let mtime = number(&b[136..148], "mtime")?;
    let v7 = format == Format::V7;
    let dev = |field: &[u8], what: &'static str| -> Result<u32, HeaderError> {
        if v7 {
            return Ok(0);
        }
        u32::try_from(unsigned(field, what)?).map_err(|_| HeaderError::Number { field: what })
    };
    Ok(RawHeader {
        name,
        mode: (unsigned(&b[100..108], "mode")? & 0o7777_7777) as u32,
        uid: unsigned(&b[108..116], "uid")?,
        gid: unsigned(&b[116..124], "gid")?,
        size: unsigned(&b[124..136], "size")?,
        mtime: i64::try_from(mtime).map_err(|_| HeaderError::Number { field: "mtime" })?,
        typeflag: b[156],
        linkname: text(&b[157..257]),
        uname: if v7 { Vec::new() } else { text(&b[265..297]) },
        gname: if v7 { Vec::new() } else { text(&b[297..329]) },
        devmajor: dev(&b[329..337], "devmajor")?,
        devminor: dev(&b[337..345], "devminor")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(number(b"0000644\0", "m"), Ok(0o644));
        assert_eq!(number(b"  755 \0\0", "m"), Ok(0o755));
        assert_eq!(number(b"\0\0\0\0\0\0\0\0", "m"), Ok(0));
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[4..].copy_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(number(&big, "size"), Ok(1 << 40));
        let neg = [0xffu8; 12];
        assert_eq!(number(&neg, "mtime"), Ok(-1));
        assert!(number(b"12x4", "m").is_err());
        // As Go reads octal: NULs and spaces around the digits, digits up to the first NUL.
        assert_eq!(number(b"\0\0\x000644\0", "m"), Ok(0o644));
        assert_eq!(number(b"644\0 junk", "m"), Ok(0o644));
        assert!(number(b"644 7\0\0\0", "m").is_err());
        assert_eq!(number(b"        ", "m"), Ok(0));
    }
}
