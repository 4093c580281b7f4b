//! Writes an [`Index`] as `.zidx`.

use super::format::*;
use crate::gzip::Index;
use std::io::Write;
use std::path::Path;
use zerocopy::IntoBytes;

/// The `.zidx` bytes of `index`.
pub fn encode(index: &Index) -> Vec<u8> {
    let n = index.checkpoints.len();
    let windows: usize = index.checkpoints.iter().map(|c| c.window.len()).sum();
    let mut out = Vec::with_capacity(HEADER_SIZE + n * POINT_SIZE + windows + TRAILER_SIZE);
    let header = Header {
        magic: MAGIC,
        version: VERSION.into(),
        flags: 0.into(),
        window_codec: CODEC_ZSTD,
        reserved: [0; 3],
        compressed_size: index.compressed_size.into(),
        uncompressed_size: index.uncompressed_size.into(),
        span: index.span.into(),
        members: index.members.into(),
        checkpoint_count: (n as u32).into(),
        reserved2: 0.into(),
        tail: index.tail,
    };
    out.extend_from_slice(header.as_bytes());
    let mut offset = 0u64;
    for c in &index.checkpoints {
        let rec = PointRecord {
            out: c.out.into(),
            input: c.input.into(),
            window_offset: offset.into(),
            member: c.member.into(),
            window_csize: (c.window.len() as u32).into(),
            window_len: (c.window_len as u16).into(),
            bits: c.bits,
            prev_byte: c.prev_byte,
        };
        out.extend_from_slice(rec.as_bytes());
        offset += c.window.len() as u64;
    }
    for c in &index.checkpoints {
        out.extend_from_slice(&c.window);
    }
    let trailer = Trailer { crc32: crc32fast::hash(&out).into(), magic: END_MAGIC };
    out.extend_from_slice(trailer.as_bytes());
    out
}

/// Write `index` to `path` atomically: a temporary file beside it, synced, then renamed.
pub fn write_file(index: &Index, path: &Path) -> std::io::Result<()> {
    let bytes = encode(index);
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
