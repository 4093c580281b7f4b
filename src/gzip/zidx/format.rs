//! `.zidx` structures, little-endian, no padding: `Header`, then `PointRecord` for each
//! checkpoint, then the compressed windows, then `Trailer`.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// First 8 bytes of every `.zidx` file.
pub const MAGIC: [u8; 8] = *b"ZRANZIDX";
/// The format version this code reads and writes.
pub const VERSION: u16 = 1;
/// Windows are zstd frames.
pub const CODEC_ZSTD: u8 = 1;
/// Last 4 bytes of every `.zidx` file.
pub const END_MAGIC: [u8; 4] = *b"XDIZ";

#[derive(Debug, Clone, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct Header {
    pub magic: [u8; 8],
    pub version: U16,
    /// No flags are defined; a reader refuses any it does not know.
    pub flags: U16,
    pub window_codec: u8,
    pub reserved: [u8; 3],
    pub compressed_size: U64,
    pub uncompressed_size: U64,
    pub span: U64,
    pub members: U64,
    pub checkpoint_count: U32,
    pub reserved2: U32,
    /// The final 8 bytes of the gzip stream.
    pub tail: [u8; 8],
}

#[derive(Debug, Clone, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct PointRecord {
    pub out: U64,
    pub input: U64,
    /// Offset of the window's frame from the start of the window area.
    pub window_offset: U64,
    /// The gzip member the block belongs to.
    pub member: U64,
    pub window_csize: U32,
    pub window_len: U16,
    pub bits: u8,
    /// Byte `input - 1` of the gzip stream when `bits > 0`, else 0.
    pub prev_byte: u8,
}

#[derive(Debug, Clone, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct Trailer {
    /// CRC-32 (IEEE) of every byte before the trailer.
    pub crc32: U32,
    pub magic: [u8; 4],
}

pub const HEADER_SIZE: usize = std::mem::size_of::<Header>();
pub const POINT_SIZE: usize = std::mem::size_of::<PointRecord>();
pub const TRAILER_SIZE: usize = std::mem::size_of::<Trailer>();

const _: () = assert!(HEADER_SIZE == 64);
const _: () = assert!(POINT_SIZE == 40);
const _: () = assert!(TRAILER_SIZE == 8);
