//! The zran engine: random access into ordinary gzip streams.
//!
//! One streaming pass over a gzip file ([`IndexBuilder`]) records *checkpoints*: places at
//! deflate block boundaries where decoding can restart, each with the compressed bit offset, the
//! uncompressed offset and the 32 KiB of output that preceded it (the window back-references may
//! reach into). The pass hands every uncompressed byte on to a [`Sink`] at the same time, and the
//! sink may ask for extra checkpoints (the tar layer asks for one before each file chunk).
//! [`Extractor`] then serves any uncompressed range from the [`Index`] and a [`ReadAt`] source of
//! compressed bytes, reading only the compressed span it needs. [`zidx`] stores an index on disk.
//!
//! This module owns gzip and deflate; it calls nothing else in the crate. zlib itself is reached
//! only through `inflate.rs`.

mod builder;
mod extract;
pub mod header;
mod index;
mod inflate;
mod restart;
mod sparse;
pub(crate) mod speculate;
mod window;
pub mod zidx;

pub use builder::{DEFAULT_SPECULATE_CHUNK, IndexBuilder, NullSink, Requests, Sink, Speculation};
pub use extract::{Extractor, ReadAt};
pub use index::{Checkpoint, Index, MemberEnd, WINDOW_SIZE};
pub use restart::{Restart, inflate_from, inflate_member};

/// The default spacing of checkpoints, in uncompressed bytes (see `benches/RESULTS.md`).
pub const DEFAULT_SPAN: u64 = 1024 * 1024;

/// Errors of the gzip engine. Offsets are byte offsets in the compressed stream unless named
/// otherwise; members are counted from 0.
#[derive(Debug, thiserror::Error)]
pub enum GzipError {
    #[error("read failed at compressed offset {offset}: {source}")]
    Io { offset: u64, source: std::io::Error },
    #[error("empty input: no gzip member")]
    Empty,
    #[error("bad gzip header of member {member} at offset {offset}: {reason}")]
    Header { member: u64, offset: u64, reason: header::HeaderError },
    #[error("invalid deflate data in member {member} near offset {offset}: {message}")]
    Deflate { member: u64, offset: u64, message: String },
    #[error("truncated gzip stream: input ends at offset {offset}, inside member {member}")]
    Truncated { member: u64, offset: u64 },
    #[error(
        "CRC32 mismatch in member {member} (trailer at offset {offset}): stored {stored:#010x}, data has {computed:#010x}"
    )]
    Crc { member: u64, offset: u64, stored: u32, computed: u32 },
    #[error(
        "length mismatch in member {member} (trailer at offset {offset}): ISIZE says {stored}, data has {computed} (mod 2^32)"
    )]
    Isize { member: u64, offset: u64, stored: u32, computed: u32 },
    #[error("trailing garbage at offset {offset} after the last gzip member")]
    TrailingGarbage { offset: u64 },
    #[error("consumer of the uncompressed stream failed at uncompressed offset {offset}: {source}")]
    Sink { offset: u64, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("checkpoint {checkpoint} has a corrupt window: {message}")]
    Window { checkpoint: usize, message: String },
    #[error("decoder made no progress at offset {offset}")]
    Stalled { offset: u64 },
}
