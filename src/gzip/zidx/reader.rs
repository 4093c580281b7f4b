//! Reads `.zidx`, trusting nothing: every count, offset and size is checked before use.

use super::format::*;
use crate::gzip::{Checkpoint, Index, WINDOW_SIZE};
use std::path::Path;
use zerocopy::FromBytes;

/// What is wrong with a `.zidx` file. Offsets are byte offsets in the file.
#[derive(Debug, thiserror::Error)]
pub enum ZidxError {
    #[error("cannot read index {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("not a zran index (bad magic)")]
    BadMagic,
    #[error("unsupported index version {0} (this zran reads version {VERSION})")]
    Version(u16),
    #[error("index truncated or padded: {len} bytes, layout needs {needed}")]
    Size { len: u64, needed: u64 },
    #[error("index checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("invalid index field at offset {offset}: {message}")]
    Field { offset: u64, message: String },
}

fn field(offset: usize, message: impl Into<String>) -> ZidxError {
    ZidxError::Field { offset: offset as u64, message: message.into() }
}

/// Read and validate a `.zidx` file.
pub fn read_file(path: &Path) -> Result<Index, ZidxError> {
    let bytes =
        std::fs::read(path).map_err(|source| ZidxError::Io { path: path.display().to_string(), source })?;
    decode(&bytes)
}

/// Decode and validate `.zidx` bytes.
pub fn decode(bytes: &[u8]) -> Result<Index, ZidxError> {
    let len = bytes.len() as u64;
    let (header, rest) = Header::read_from_prefix(bytes).map_err(|_| {
        if bytes.len() >= 8 && bytes[..8] != MAGIC {
            ZidxError::BadMagic
        } else {
            ZidxError::Size { len, needed: (HEADER_SIZE + TRAILER_SIZE) as u64 }
        }
    })?;
    if header.magic != MAGIC {
        return Err(ZidxError::BadMagic);
    }
    if header.version.get() != VERSION {
        return Err(ZidxError::Version(header.version.get()));
    }
    if header.flags.get() != 0 {
        return Err(field(10, format!("unknown flags {:#06x}", header.flags.get())));
    }
    if header.window_codec != CODEC_ZSTD {
        return Err(field(12, format!("unknown window codec {}", header.window_codec)));
    }
    let n = header.checkpoint_count.get() as usize;
    let needed = (HEADER_SIZE + TRAILER_SIZE) as u64 + n as u64 * POINT_SIZE as u64;
    if len < needed {
        return Err(ZidxError::Size { len, needed });
    }
    let body = &bytes[..bytes.len() - TRAILER_SIZE];
    let (trailer, _) =
        Trailer::read_from_prefix(&bytes[body.len()..]).map_err(|_| ZidxError::Size { len, needed })?;
    if trailer.magic != END_MAGIC {
        return Err(field(body.len() + 4, "bad end magic"));
    }
    let computed = crc32fast::hash(body);
    if trailer.crc32.get() != computed {
        return Err(ZidxError::Checksum { stored: trailer.crc32.get(), computed });
    }
    if n == 0 {
        return Err(field(48, "no checkpoints"));
    }
    let compressed_size = header.compressed_size.get();
    let uncompressed_size = header.uncompressed_size.get();
    let table = &rest[..n * POINT_SIZE];
    let windows = &body[HEADER_SIZE + n * POINT_SIZE..];
    let mut checkpoints: Vec<Checkpoint> = Vec::with_capacity(n);
    for i in 0..n {
        let at = HEADER_SIZE + i * POINT_SIZE;
        let (rec, _) = PointRecord::read_from_prefix(&table[i * POINT_SIZE..])
            .map_err(|_| field(at, "short checkpoint record"))?;
        let out = rec.out.get();
        let input = rec.input.get();
        let bits = rec.bits;
        let member = rec.member.get();
        let window_len = u32::from(rec.window_len.get());
        let csize = u64::from(rec.window_csize.get());
        let woff = rec.window_offset.get();
        let bad =
            |field_at: usize, what: String| Err(field(at + field_at, format!("checkpoint {i}: {what}")));
        if let Some(prev) = checkpoints.last() {
            if out <= prev.out {
                return bad(0, format!("out of order (offset {out})"));
            }
            if input < prev.input {
                return bad(8, "input offset goes backwards".into());
            }
            if member < prev.member {
                return bad(24, "member number goes backwards".into());
            }
        } else if out != 0 {
            return bad(0, "the first checkpoint is not at offset 0".into());
        }
        if out > uncompressed_size || input > compressed_size {
            return bad(0, "lies past the end of the stream".into());
        }
        if member >= header.members.get() {
            return bad(24, format!("member {member} of {}", header.members.get()));
        }
        if bits > 7 || (bits > 0 && input == 0) {
            return bad(38, format!("invalid bit count {bits}"));
        }
        if bits == 0 && rec.prev_byte != 0 {
            return bad(39, "a previous byte without pending bits".into());
        }
        if window_len as usize > WINDOW_SIZE || u64::from(window_len) > out {
            return bad(36, format!("window length {window_len}"));
        }
        if (window_len == 0) != (csize == 0) {
            return bad(32, "window size and length disagree".into());
        }
        let Some(end) = woff.checked_add(csize).filter(|&e| e <= windows.len() as u64) else {
            return bad(16, "window lies past the window area".into());
        };
        checkpoints.push(Checkpoint {
            out,
            input,
            bits,
            prev_byte: rec.prev_byte,
            member,
            window_len,
            window: windows[woff as usize..end as usize].to_vec(),
        });
    }
    Ok(Index {
        compressed_size,
        uncompressed_size,
        span: header.span.get(),
        members: header.members.get(),
        tail: header.tail,
        checkpoints,
        member_ends: Vec::new(),
    })
}
