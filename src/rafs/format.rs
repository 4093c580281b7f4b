//! RAFS v6 bootstrap structures, little-endian, as Nydus and the kernel's EROFS lay them out.
//!
//! Byte tables: `formats/rafs-v6.md`. Every structure is declared once here; the writer fills
//! them and the reader casts bytes to them (no `unsafe`: `zerocopy` checks size and alignment).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The superblock lives at this offset; the bytes before it are zero.
pub const SUPER_OFFSET: usize = 1024;
pub const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
/// 4 KiB blocks.
pub const BLOCK_BITS: u8 = 12;
pub const BLOCK_SIZE: u64 = 1 << BLOCK_BITS;
/// `s_feature_compat`: a RAFS v6 image.
pub const COMPAT_RAFS_V6: u32 = 0x4000_0000;
/// `s_feature_compat`: inode mtimes are present (set by mkfs.erofs; harmless to EROFS readers).
pub const COMPAT_MTIME: u32 = 0x0000_0002;
/// `s_feature_incompat`: chunk-based files and a device table, exactly what Nydus sets.
pub const INCOMPAT_CHUNKED_FILE: u32 = 0x4;
pub const INCOMPAT_DEVICE_TABLE: u32 = 0x8;
/// Where the device table starts: after the superblock and its RAFS extension.
pub const DEVTABLE_OFFSET: usize = SUPER_OFFSET + SUPER_SIZE + SUPER_EXT_SIZE;
/// Inodes are addressed in 32-byte slots.
pub const SLOT_SIZE: u64 = 32;
/// Device data starts at a multiple of this in the flat address space (as Nydus aligns it).
pub const DEVICE_SEG_ALIGN: u64 = 0x8_0000;

/// `RafsSuperFlags` bits in the extended superblock.
pub mod flags {
    pub const COMPRESSION_NONE: u64 = 0x1;
    pub const COMPRESSION_LZ4: u64 = 0x2;
    pub const HASH_BLAKE3: u64 = 0x4;
    pub const HASH_SHA256: u64 = 0x8;
    pub const EXPLICIT_UID_GID: u64 = 0x10;
    pub const HAS_XATTR: u64 = 0x20;
    pub const COMPRESSION_GZIP: u64 = 0x40;
    pub const COMPRESSION_ZSTD: u64 = 0x80;
    pub const INLINED_CHUNK_DIGEST: u64 = 0x100;
    pub const TARFS_MODE: u64 = 0x200;
    pub const ENCRYPTION_NONE: u64 = 0x0100_0000;
    pub const COMPRESSION_MASK: u64 =
        COMPRESSION_NONE | COMPRESSION_LZ4 | COMPRESSION_GZIP | COMPRESSION_ZSTD;
    pub const HASH_MASK: u64 = HASH_BLAKE3 | HASH_SHA256;
}

/// `BlobFeatures` bits in a blob table entry.
pub mod blob_features {
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
}

/// Compression algorithm ids of the blob table (`compression_algo`, `ci_compressor`).
pub mod compressor {
    pub const NONE: u32 = 0;
    pub const LZ4_BLOCK: u32 = 1;
    pub const GZIP: u32 = 2;
    pub const ZSTD: u32 = 3;
}

/// Digest algorithm ids of the blob table.
pub mod digester {
    pub const BLAKE3: u32 = 0;
    pub const SHA256: u32 = 1;
}

/// `BlobChunkFlags` of a bootstrap chunk table entry.
pub const CHUNK_COMPRESSED: u32 = 0x1;
pub const CHUNK_ENCRYPTED: u32 = 0x4;
pub const CHUNK_BATCH: u32 = 0x8;

/// `i_format`: bit 0 the inode version, bits 1..3 the data layout.
pub const INODE_EXTENDED: u16 = 0x1;
pub const LAYOUT_FLAT_PLAIN: u16 = 0;
pub const LAYOUT_FLAT_INLINE: u16 = 2;
pub const LAYOUT_CHUNK_BASED: u16 = 4;
/// The chunk header of a chunk-based inode: 8-byte chunk indexes follow the inode.
pub const CHUNK_FORMAT_INDEXES: u16 = 0x0020;
pub const CHUNK_FORMAT_BLKBITS_MASK: u16 = 0x001f;

/// EROFS dirent file types.
pub mod file_type {
    pub const UNKNOWN: u8 = 0;
    pub const REG: u8 = 1;
    pub const DIR: u8 = 2;
    pub const CHR: u8 = 3;
    pub const BLK: u8 = 4;
    pub const FIFO: u8 = 5;
    pub const SOCK: u8 = 6;
    pub const SYMLINK: u8 = 7;
}

/// Xattr name prefixes by index; an index stands for its prefix, the entry holds the rest.
pub const XATTR_PREFIXES: &[(u8, &[u8])] = &[
    (1, b"user."),
    (2, b"system.posix_acl_access"),
    (3, b"system.posix_acl_default"),
    (4, b"trusted."),
    (6, b"security."),
];

#[derive(Debug, Clone, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct SuperBlock {
    pub magic: U32,
    pub checksum: U32,
    pub feature_compat: U32,
    pub blkszbits: u8,
    pub extslots: u8,
    pub root_nid: U16,
    pub inos: U64,
    pub build_time: U64,
    pub build_time_nsec: U32,
    pub blocks: U32,
    pub meta_blkaddr: U32,
    pub xattr_blkaddr: U32,
    pub uuid: [u8; 16],
    pub volume_name: [u8; 16],
    pub feature_incompat: U32,
    pub u1: U16,
    pub extra_devices: U16,
    pub devt_slotoff: U16,
    pub reserved: [u8; 38],
}

#[derive(Debug, Clone, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct SuperBlockExt {
    pub flags: U64,
    pub blob_table_offset: U64,
    pub blob_table_size: U32,
    pub chunk_size: U32,
    pub chunk_table_offset: U64,
    pub chunk_table_size: U64,
    pub prefetch_table_offset: U64,
    pub prefetch_table_size: U32,
    pub padding: U32,
    pub reserved: [u8; 200],
}

#[derive(Debug, Clone, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct Device {
    /// The blob id: 64 lowercase hex digits.
    pub blob_id: [u8; 64],
    pub blocks: U32,
    pub mapped_blkaddr: U32,
    pub reserved: [u8; 56],
}

#[derive(Debug, Clone, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct BlobEntry {
    pub blob_id: [u8; 64],
    pub blob_index: U32,
    pub chunk_size: U32,
    pub chunk_count: U32,
    pub compression_algo: U32,
    pub digest_algo: U32,
    pub features: U32,
    pub compressed_size: U64,
    pub uncompressed_size: U64,
    pub blob_toc_size: U32,
    pub ci_compressor: U32,
    pub ci_offset: U64,
    pub ci_compressed_size: U64,
    pub ci_uncompressed_size: U64,
    pub blob_toc_digest: [u8; 32],
    pub blob_meta_digest: [u8; 32],
    pub blob_meta_size: U64,
    pub cipher_iv: [u8; 8],
    pub cipher_algo: U32,
    pub reserved: [u8; 36],
}

#[derive(Debug, Clone, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct InodeCompact {
    pub format: U16,
    pub xattr_icount: U16,
    pub mode: U16,
    pub nlink: U16,
    pub size: U32,
    pub reserved: U32,
    pub u: U32,
    pub ino: U32,
    pub uid: U16,
    pub gid: U16,
    pub reserved2: [u8; 4],
}

#[derive(Debug, Clone, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct InodeExtended {
    pub format: U16,
    pub xattr_icount: U16,
    pub mode: U16,
    pub reserved: U16,
    pub size: U64,
    pub u: U32,
    pub ino: U32,
    pub uid: U32,
    pub gid: U32,
    pub mtime: U64,
    pub mtime_nsec: U32,
    pub nlink: U32,
    pub reserved2: [u8; 16],
}

/// The head of an inode's inline xattrs.
#[derive(Debug, Clone, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct XattrIbodyHeader {
    pub reserved: U32,
    pub shared_count: u8,
    pub reserved2: [u8; 7],
}

#[derive(Debug, Clone, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct XattrEntry {
    pub name_len: u8,
    pub name_index: u8,
    pub value_size: U16,
}

/// A chunk index of a chunk-based file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct ChunkAddr {
    /// Low 16 bits of the chunk's index in its blob's chunk-info array.
    pub blob_addr_lo: U16,
    /// Low byte: blob index + 1 (0 would be the bootstrap itself); high byte: bits 16..23 of
    /// the chunk-info index.
    pub blob_addr_hi: U16,
    /// The chunk's block in its blob's uncompressed address space.
    pub blk_addr: U32,
}

impl ChunkAddr {
    pub fn new(blob: u8, ci: u32, blk_addr: u32) -> ChunkAddr {
        ChunkAddr {
            blob_addr_lo: ((ci & 0xffff) as u16).into(),
            blob_addr_hi: ((u16::from(blob) + 1) | ((((ci >> 16) & 0xff) as u16) << 8)).into(),
            blk_addr: blk_addr.into(),
        }
    }

    /// The blob index, None for device 0 (no blob).
    pub fn blob(&self) -> Option<u8> {
        ((self.blob_addr_hi.get() & 0xff) as u8).checked_sub(1)
    }

    pub fn ci(&self) -> u32 {
        u32::from(self.blob_addr_lo.get()) | (u32::from(self.blob_addr_hi.get() >> 8) << 16)
    }
}

#[derive(Debug, Clone, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct Dirent {
    pub nid: U64,
    pub nameoff: U16,
    pub file_type: u8,
    pub reserved: u8,
}

/// An entry of the bootstrap's chunk table (`RafsV5ChunkInfo`).
#[derive(Debug, Clone, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct ChunkInfo {
    pub digest: [u8; 32],
    pub blob_index: U32,
    pub flags: U32,
    pub compressed_size: U32,
    pub uncompressed_size: U32,
    pub compressed_offset: U64,
    pub uncompressed_offset: U64,
    pub file_offset: U64,
    pub index: U32,
    pub crc32: U32,
}

pub const SUPER_SIZE: usize = std::mem::size_of::<SuperBlock>();
pub const SUPER_EXT_SIZE: usize = std::mem::size_of::<SuperBlockExt>();
pub const DEVICE_SIZE: usize = std::mem::size_of::<Device>();
pub const BLOB_ENTRY_SIZE: usize = std::mem::size_of::<BlobEntry>();
pub const INODE_COMPACT_SIZE: usize = std::mem::size_of::<InodeCompact>();
pub const INODE_EXTENDED_SIZE: usize = std::mem::size_of::<InodeExtended>();
pub const XATTR_HEADER_SIZE: usize = std::mem::size_of::<XattrIbodyHeader>();
pub const XATTR_ENTRY_SIZE: usize = std::mem::size_of::<XattrEntry>();
pub const CHUNK_ADDR_SIZE: usize = std::mem::size_of::<ChunkAddr>();
pub const DIRENT_SIZE: usize = std::mem::size_of::<Dirent>();
pub const CHUNK_INFO_SIZE: usize = std::mem::size_of::<ChunkInfo>();

const _: () = assert!(SUPER_SIZE == 128);
const _: () = assert!(SUPER_EXT_SIZE == 256);
const _: () = assert!(DEVICE_SIZE == 128);
const _: () = assert!(BLOB_ENTRY_SIZE == 256);
const _: () = assert!(INODE_COMPACT_SIZE == 32);
const _: () = assert!(INODE_EXTENDED_SIZE == 64);
const _: () = assert!(XATTR_HEADER_SIZE == 12);
const _: () = assert!(XATTR_ENTRY_SIZE == 4);
const _: () = assert!(CHUNK_ADDR_SIZE == 8);
const _: () = assert!(DIRENT_SIZE == 12);
const _: () = assert!(CHUNK_INFO_SIZE == 80);
const _: () = assert!(DEVTABLE_OFFSET == 1408);

/// Linux's `new_encode_dev`: how EROFS stores a device number in `i_u`.
pub fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

/// The inverse of [`encode_dev`].
pub fn decode_dev(dev: u32) -> (u32, u32) {
    ((dev & 0xfff00) >> 8, (dev & 0xff) | ((dev >> 12) & 0xfff00))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_addr_packs_24_bit_indexes() {
        for (blob, ci, blk) in [(0u8, 0u32, 0u32), (3, 0x12_3456, 99), (253, 0xff_ffff, u32::MAX)] {
            let a = ChunkAddr::new(blob, ci, blk);
            assert_eq!((a.blob(), a.ci(), a.blk_addr.get()), (Some(blob), ci, blk));
        }
        let zero = ChunkAddr::read_from_bytes(&[0u8; 8]).unwrap();
        assert_eq!(zero.blob(), None);
    }

    #[test]
    fn device_numbers_round_trip() {
        for (ma, mi) in [(0, 0), (1, 3), (8, 1), (4095, 255), (259, 1 << 19), (12, 0xfffff)] {
            assert_eq!(decode_dev(encode_dev(ma, mi)), (ma, mi));
        }
        assert_eq!(encode_dev(8, 1), 0x801);
    }
}
