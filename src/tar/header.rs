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

/// A numeric field: octal digits (space or NUL padded), or GNU base-256 when the high bit of
/// the first byte is set (two's complement, so negative mtimes work).
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
    let s: Vec<u8> =
        field.iter().copied().skip_while(|&b| b == b' ').take_while(|&b| b != 0 && b != b' ').collect();
    if s.is_empty() {
        return Ok(0);
    }
    let mut v: i128 = 0;
    for &b in &s {
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

/// Parse a header block.
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
    let ustar = &b[257..263] == b"ustar\0";
    let mut name = text(&b[0..100]);
    if ustar {
        let prefix = text(&b[345..500]);
        if !prefix.is_empty() {
            let mut full = prefix;
            full.push(b'/');
            full.extend_from_slice(&name);
            name = full;
        }
    }
    let mtime = number(&b[136..148], "mtime")?;
    Ok(RawHeader {
        name,
        mode: (unsigned(&b[100..108], "mode")? & 0o7777_7777) as u32,
        uid: unsigned(&b[108..116], "uid")?,
        gid: unsigned(&b[116..124], "gid")?,
        size: unsigned(&b[124..136], "size")?,
        mtime: i64::try_from(mtime).map_err(|_| HeaderError::Number { field: "mtime" })?,
        typeflag: b[156],
        linkname: text(&b[157..257]),
        uname: text(&b[265..297]),
        gname: text(&b[297..329]),
        devmajor: u32::try_from(unsigned(&b[329..337], "devmajor")?)
            .map_err(|_| HeaderError::Number { field: "devmajor" })?,
        devminor: u32::try_from(unsigned(&b[337..345], "devminor")?)
            .map_err(|_| HeaderError::Number { field: "devminor" })?,
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
    }
}
