//! blob.meta structures as Nydus lays them out, little-endian: the 4096-byte
//! `BlobCompressionContextHeader`, the 24-byte `BlobChunkInfoV2Ondisk` with its bit packing,
//! the 40-byte `ZranInflateContext`, and the 16-byte `BlobChunkInfoV1Ondisk` of eStargz
//! layers; the flag, feature and compressor numbers; and the limits the field widths impose.
//! `formats/blob-meta.md` documents every byte.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// `s_magic` and `s_magic2`.
pub const MAGIC: u32 = 0xb10b_b10b;

/// Feature bits (`s_features`, and the blob table's `features`).
pub mod features {
    pub const ALIGNED: u32 = 0x1;
    pub const INLINED_FS_META: u32 = 0x2;
    pub const CHUNK_INFO_V2: u32 = 0x4;
    pub const ZRAN: u32 = 0x8;
    pub const SEPARATE: u32 = 0x10;
    pub const INLINED_CHUNK_DIGEST: u32 = 0x20;
    pub const TARFS: u32 = 0x40;
    pub const BATCH: u32 = 0x80;
    pub const ENCRYPTED: u32 = 0x100;
    pub const HAS_TAR_HEADER: u32 = 0x1000_0000;
    pub const HAS_TOC: u32 = 0x2000_0000;
    pub const CAP_TAR_TOC: u32 = 0x4000_0000;

    /// What zran writes for a gzip layer: chunks 4 KiB-aligned in the uncompressed address
    /// space, chunk info v2, zran contexts, the meta in a blob of its own (the layer itself
    /// holds the data), and the "built by a tar-TOC-capable builder" mark Nydus sets on every
    /// blob it makes. Nydus's targz-ref conversion sets these too, plus `INLINED_CHUNK_DIGEST`,
    /// `HAS_TAR_HEADER` and `HAS_TOC`, which describe its tar-wrapped ref blob with a TOC and
    /// a chunk-digest array; zran's blob.meta is the bare `[CI data][header]` and has neither.
    pub const ZRAN_REF: u32 = ALIGNED | CHUNK_INFO_V2 | ZRAN | SEPARATE | CAP_TAR_TOC;
    /// What zran writes for an eStargz layer whose TOC gives the chunks: aligned chunks, the
    /// meta in a blob of its own, the builder mark; no CHUNK_INFO_V2 and no ZRAN, so the CI
    /// data is chunk info v1 alone and Nydus, seeing a gzip blob without CHUNK_INFO_V2, treats
    /// it as a "legacy stargz" blob: each chunk a gzip member inflated on its own.
    pub const STARGZ_REF: u32 = ALIGNED | SEPARATE | CAP_TAR_TOC;
    /// The features a bootstrap must claim for zran to read a blob.meta as zran chunk info.
    pub const REQUIRED: u32 = CHUNK_INFO_V2 | ZRAN;
    /// Features that change how the CI data is laid out or must be decoded, which zran's
    /// reader does not support.
    pub const UNSUPPORTED: u32 = BATCH | ENCRYPTED | TARFS;
}

/// Compression of the CI data (`s_ci_compressor`), Nydus's `compress::Algorithm`.
pub mod compressor {
    pub const NONE: u32 = 0;
    pub const LZ4_BLOCK: u32 = 1;
    pub const GZIP: u32 = 2;
    pub const ZSTD: u32 = 3;
}

/// Chunk flags: the top byte of `uncomp_info`.
pub mod chunk_flags {
    pub const COMPRESSED: u8 = 0x01;
    pub const ZRAN: u8 = 0x02;
    pub const BATCH: u8 = 0x04;
    pub const ENCRYPTED: u8 = 0x08;
    pub const HAS_CRC32: u8 = 0x10;
    /// What Nydus's zran generator (and zran) sets on every chunk of a gzip layer.
    pub const ZRAN_CHUNK: u8 = ZRAN | COMPRESSED;
}

pub const HEADER_SIZE: usize = 4096;
pub const CHUNK_INFO_SIZE: usize = 24;
pub const CHUNK_INFO_V1_SIZE: usize = 16;
pub const ZRAN_CONTEXT_SIZE: usize = 40;
/// The cache form pads the CI data to this.
pub const ALIGNMENT: u64 = 4096;

/// At most this many chunks per blob (`RAFS_MAX_CHUNKS_PER_BLOB`; chunk indexes are 24-bit).
pub const MAX_CHUNKS: u64 = 1 << 24;
/// Chunk sizes are stored minus one in 24 bits.
pub const MAX_CHUNK_SIZE: u64 = 1 << 24;
/// `comp_info` keeps 40 bits of compressed offset ...
pub const MAX_COMPRESSED_OFFSET: u64 = (1 << 40) - 1;
/// ... and 24 bits of compressed size.
pub const MAX_COMPRESSED_SIZE: u64 = (1 << 24) - 1;
/// `uncomp_info` keeps the uncompressed offset divided by 4096 in 32 bits, and the blob table
/// refuses uncompressed sizes above 2^44.
pub const MAX_UNCOMPRESSED_END: u64 = 1 << 44;
/// Chunk info v1 keeps the uncompressed offset's bits 12..44 in place: the largest offset.
pub const MAX_V1_UNCOMPRESSED_OFFSET: u64 = 0xfff_ffff_f000;
/// Chunk info v1 stores the compressed size minus one in 24 bits, like the uncompressed one.
pub const MAX_V1_COMPRESSED_SIZE: u64 = 1 << 24;
/// Deflate's window: a longer dictionary could never be referenced.
pub const MAX_DICT_SIZE: u64 = 32 * 1024;
/// The largest CI data zran writes or reads (its decompressed size): 16 Mi chunks take
/// 384 MiB, and contexts are fewer than chunks. A bound, so that a forged header cannot make
/// a reader allocate without limit.
pub const MAX_CI_SIZE: u64 = 1 << 30;

/// `BlobCompressionContextHeader`: the last 4096 bytes of both forms.
#[derive(Debug, Clone, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct Header {
    pub magic: U32,
    pub features: U32,
    pub ci_compressor: U32,
    /// Number of chunk infos.
    pub ci_entries: U32,
    /// Where the (compressed) CI data starts in the blob that carries it.
    pub ci_offset: U64,
    pub ci_compressed_size: U64,
    pub ci_uncompressed_size: U64,
    /// Offset of the zran context table in the uncompressed CI data.
    pub ci_zran_offset: U64,
    /// Size of the context table and the dictionary table together.
    pub ci_zran_size: U64,
    pub ci_zran_count: U32,
    pub reserved: [u8; 4032],
    pub magic2: U32,
}

/// `BlobChunkInfoV2Ondisk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct ChunkInfoV2 {
    /// Bits 0..32: uncompressed offset >> 12; bits 32..56: uncompressed size - 1; bits
    /// 56..64: flags.
    pub uncomp_info: U64,
    /// Bits 0..40: compressed offset; bits 40..64: compressed size.
    pub comp_info: U64,
    /// For zran chunks: context index << 32 | offset of the chunk in the context's output.
    pub data: U64,
}

/// `ZranInflateContext` (packed in Nydus; naturally unaligned here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct ZranContextV1 {
    /// Compressed offset of the first whole byte of the checkpoint's block.
    pub in_offset: U64,
    /// Uncompressed offset of the checkpoint.
    pub out_offset: U64,
    /// Offset of the dictionary in the dictionary table.
    pub dict_offset: U64,
    pub in_len: U32,
    pub out_len: U32,
    pub dict_size: U32,
    /// Byte `in_offset - 1` of the gzip stream when `ctx_bits > 0`.
    pub ctx_byte: u8,
    /// How many high bits of `ctx_byte` start the block, 0..=7.
    pub ctx_bits: u8,
    pub reserved: [u8; 2],
}

/// `BlobChunkInfoV1Ondisk`: sizes split into their low 20 and high 4 bits (both stored minus
/// one), as Nydus packs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct ChunkInfoV1 {
    /// Bits 0..8: reserved (0); bits 8..12: bits 20..24 of uncompressed size - 1; bits 12..44:
    /// bits 12..44 of the uncompressed offset (which is 4 KiB-aligned); bits 44..64: bits
    /// 0..20 of uncompressed size - 1.
    pub uncomp_info: U64,
    /// Bits 0..40: compressed offset; bits 40..44: bits 20..24 of compressed size - 1; bits
    /// 44..64: bits 0..20 of compressed size - 1.
    pub comp_info: U64,
}

const _: () = assert!(std::mem::size_of::<Header>() == HEADER_SIZE);
const _: () = assert!(std::mem::size_of::<ChunkInfoV1>() == CHUNK_INFO_V1_SIZE);
const _: () = assert!(std::mem::size_of::<ChunkInfoV2>() == CHUNK_INFO_SIZE);
const _: () = assert!(std::mem::size_of::<ZranContextV1>() == ZRAN_CONTEXT_SIZE);

const UNCOMP_OFFSET_MASK: u64 = 0xffff_ffff;
const SIZE_MASK: u64 = 0xff_ffff;
const COMP_OFFSET_MASK: u64 = (1 << 40) - 1;

impl ChunkInfoV2 {
    /// Pack the fields. The caller has checked them against the limits above; out-of-range
    /// values would be cut, so this asserts nothing and the checks live in one place.
    pub fn pack(
        uncompressed_offset: u64,
        uncompressed_size: u32,
        compressed_offset: u64,
        compressed_size: u32,
        flags: u8,
        data: u64,
    ) -> Self {
        let size = u64::from(uncompressed_size).wrapping_sub(1) & SIZE_MASK;
        let uncomp =
            ((uncompressed_offset >> 12) & UNCOMP_OFFSET_MASK) | (size << 32) | (u64::from(flags) << 56);
        let comp = (compressed_offset & COMP_OFFSET_MASK) | ((u64::from(compressed_size) & SIZE_MASK) << 40);
        ChunkInfoV2 { uncomp_info: uncomp.into(), comp_info: comp.into(), data: data.into() }
    }

    pub fn uncompressed_offset(&self) -> u64 {
        (self.uncomp_info.get() & UNCOMP_OFFSET_MASK) << 12
    }

    /// 1..=2^24.
    pub fn uncompressed_size(&self) -> u32 {
        ((self.uncomp_info.get() >> 32) & SIZE_MASK) as u32 + 1
    }

    pub fn flags(&self) -> u8 {
        (self.uncomp_info.get() >> 56) as u8
    }

    pub fn compressed_offset(&self) -> u64 {
        self.comp_info.get() & COMP_OFFSET_MASK
    }

    pub fn compressed_size(&self) -> u32 {
        (self.comp_info.get() >> 40) as u32
    }

    pub fn zran_index(&self) -> u32 {
        (self.data.get() >> 32) as u32
    }

    pub fn zran_offset(&self) -> u32 {
        self.data.get() as u32
    }
}

const V1_UNCOMP_OFFSET_MASK: u64 = 0xfff_ffff_f000;
const V1_RESERVED_MASK: u64 = 0xff;
const V1_LOW_MASK: u64 = 0xf_ffff;
const V1_LOW_SHIFT: u32 = 44;
const V1_HIGH_MASK: u64 = 0xf0_0000;
/// Bits 20..24 of a size go to bits 8..12 of `uncomp_info` ...
const V1_HIGH_UNCOMP_SHIFT: u32 = 12;
/// ... and to bits 40..44 of `comp_info`.
const V1_HIGH_COMP_SHIFT: u32 = 20;

impl ChunkInfoV1 {
    /// Pack the fields. As for [`ChunkInfoV2::pack`], the caller has checked them against the
    /// limits (sizes 1..=2^24, offsets aligned and in range); out-of-range values would be cut.
    pub fn pack(
        uncompressed_offset: u64,
        uncompressed_size: u32,
        compressed_offset: u64,
        compressed_size: u32,
    ) -> Self {
        let us = u64::from(uncompressed_size).wrapping_sub(1);
        let cs = u64::from(compressed_size).wrapping_sub(1);
        let uncomp = ((us & V1_LOW_MASK) << V1_LOW_SHIFT)
            | (uncompressed_offset & V1_UNCOMP_OFFSET_MASK)
            | ((us & V1_HIGH_MASK) >> V1_HIGH_UNCOMP_SHIFT);
        let comp = ((cs & V1_LOW_MASK) << V1_LOW_SHIFT)
            | ((cs & V1_HIGH_MASK) << V1_HIGH_COMP_SHIFT)
            | (compressed_offset & COMP_OFFSET_MASK);
        ChunkInfoV1 { uncomp_info: uncomp.into(), comp_info: comp.into() }
    }

    pub fn uncompressed_offset(&self) -> u64 {
        self.uncomp_info.get() & V1_UNCOMP_OFFSET_MASK
    }

    /// 1..=2^24.
    pub fn uncompressed_size(&self) -> u32 {
        let v = self.uncomp_info.get();
        (((v >> V1_LOW_SHIFT) & V1_LOW_MASK) | ((v << V1_HIGH_UNCOMP_SHIFT) & V1_HIGH_MASK)) as u32 + 1
    }

    pub fn compressed_offset(&self) -> u64 {
        self.comp_info.get() & COMP_OFFSET_MASK
    }

    /// 1..=2^24.
    pub fn compressed_size(&self) -> u32 {
        let v = self.comp_info.get();
        (((v >> V1_LOW_SHIFT) & V1_LOW_MASK) | ((v >> V1_HIGH_COMP_SHIFT) & V1_HIGH_MASK)) as u32 + 1
    }

    /// The 8 reserved bits at the bottom of `uncomp_info` (0 as Nydus and zran write them).
    pub fn reserved(&self) -> u8 {
        (self.uncomp_info.get() & V1_RESERVED_MASK) as u8
    }
}

/// `x` rounded up to a multiple of 4096 (None on overflow).
pub fn round_up_4k(x: u64) -> Option<u64> {
    Some(x.checked_add(ALIGNMENT - 1)? & !(ALIGNMENT - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromZeros;

    #[test]
    fn chunk_info_bits() {
        let c = ChunkInfoV2::pack(
            0x1234_5000,
            0x100_0000,
            0xff_ffff_ffff,
            0xff_ffff,
            chunk_flags::ZRAN_CHUNK,
            7 << 32 | 9,
        );
        assert_eq!(c.uncompressed_offset(), 0x1234_5000);
        assert_eq!(c.uncompressed_size(), 0x100_0000);
        assert_eq!(c.compressed_offset(), 0xff_ffff_ffff);
        assert_eq!(c.compressed_size(), 0xff_ffff);
        assert_eq!(c.flags(), 0x03);
        assert_eq!((c.zran_index(), c.zran_offset()), (7, 9));
        // The layout Nydus's accessors read.
        assert_eq!(c.uncomp_info.get(), 0x03ff_ffff_0001_2345);
        assert_eq!(c.comp_info.get(), 0xffff_ffff_ffff_ffff);
        let c = ChunkInfoV2::pack(4096, 1, 5, 2, chunk_flags::ZRAN_CHUNK, 0);
        assert_eq!(c.as_bytes(), [1, 0, 0, 0, 0, 0, 0, 3, 5, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn chunk_info_v1_bits() {
        // Every field at its largest.
        let c = ChunkInfoV1::pack(MAX_V1_UNCOMPRESSED_OFFSET, 1 << 24, MAX_COMPRESSED_OFFSET, 1 << 24);
        assert_eq!(c.uncompressed_offset(), 0xfff_ffff_f000);
        assert_eq!(c.uncompressed_size(), 1 << 24);
        assert_eq!(c.compressed_offset(), (1 << 40) - 1);
        assert_eq!(c.compressed_size(), 1 << 24);
        assert_eq!(c.reserved(), 0);
        assert_eq!(c.uncomp_info.get(), 0xffff_ffff_ffff_ff00);
        assert_eq!(c.comp_info.get(), u64::MAX);
        // Every field at its smallest: sizes of 1 are stored as 0.
        let c = ChunkInfoV1::pack(0, 1, 0, 1);
        assert_eq!(c.as_bytes(), [0; 16]);
        assert_eq!((c.uncompressed_size(), c.compressed_size()), (1, 1));
        // The low 20 bits and the high 4 bits of a size land apart.
        let c = ChunkInfoV1::pack(0x1000, 0x23_4567, 0x12_3456_789a, 0x9a_bcdf);
        assert_eq!(c.uncomp_info.get(), 0x3456_6000_0000_1200);
        assert_eq!(c.comp_info.get(), 0xabcd_e912_3456_789a);
        assert_eq!((c.uncompressed_offset(), c.uncompressed_size()), (0x1000, 0x23_4567));
        assert_eq!((c.compressed_offset(), c.compressed_size()), (0x12_3456_789a, 0x9a_bcdf));
        // A size of 2^20 + 1 is the first with a high bit; 2^20 the last without.
        assert_eq!(ChunkInfoV1::pack(0, 0x10_0001, 0, 0x10_0000).uncomp_info.get(), 0x100);
        assert_eq!(ChunkInfoV1::pack(0, 0x10_0001, 0, 0x10_0000).comp_info.get(), 0xffff_f000_0000_0000);
        assert_eq!(ChunkInfoV1::pack(0, 1, 0, 0x10_0001).comp_info.get(), 0x100_0000_0000);
        // Nydus's own test value for reading the old layout (reserved byte, offsets).
        let c = ChunkInfoV1 {
            uncomp_info: 0xffff_ffff_f100_0000.into(),
            comp_info: 0xffff_f0ff_ffff_ffff.into(),
        };
        assert_eq!(c.uncompressed_size(), 0x10_0000);
        assert_eq!(c.uncompressed_offset(), 0xffff_1000 * 0x1000);
        assert_eq!(c.compressed_size(), 0x10_0000);
        assert_eq!(c.compressed_offset(), 0xff_ffff_ffff);
        // A chunk of 5000 bytes at 8192, its member of 1500 bytes at 10, as formats/ shows it.
        let c = ChunkInfoV1::pack(8192, 5000, 10, 1500);
        assert_eq!(c.as_bytes(), [0, 0x20, 0, 0, 0, 0x70, 0x38, 0x01, 0x0a, 0, 0, 0, 0, 0xb0, 0x5d, 0]);
    }

    proptest::proptest! {
        #[test]
        fn chunk_info_v1_round_trip(
            block in 0u64..=(MAX_V1_UNCOMPRESSED_OFFSET >> 12),
            us in 1u32..=1 << 24,
            co in 0u64..=MAX_COMPRESSED_OFFSET,
            cs in 1u32..=1 << 24,
        ) {
            let c = ChunkInfoV1::pack(block << 12, us, co, cs);
            proptest::prop_assert_eq!(c.uncompressed_offset(), block << 12);
            proptest::prop_assert_eq!(c.uncompressed_size(), us);
            proptest::prop_assert_eq!(c.compressed_offset(), co);
            proptest::prop_assert_eq!(c.compressed_size(), cs);
            proptest::prop_assert_eq!(c.reserved(), 0);
            let back = ChunkInfoV1::read_from_bytes(c.as_bytes()).unwrap();
            proptest::prop_assert_eq!(back, c);
        }
    }

    #[test]
    fn header_offsets() {
        let mut h = Header::new_zeroed();
        h.magic2 = MAGIC.into();
        h.ci_zran_count = 0x0102_0304.into();
        let b = h.as_bytes();
        assert_eq!(&b[4092..], &MAGIC.to_le_bytes());
        assert_eq!(&b[56..60], &[4, 3, 2, 1]);
    }

    #[test]
    fn rounding() {
        assert_eq!(round_up_4k(0), Some(0));
        assert_eq!(round_up_4k(1), Some(4096));
        assert_eq!(round_up_4k(4096), Some(4096));
        assert_eq!(round_up_4k(u64::MAX), None);
    }
}
