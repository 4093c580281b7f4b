//! Writes a RAFS v6 bootstrap from a merged [`Tree`] and the chunks of its files.
//!
//! Layout, as Nydus lays it out (`formats/rafs-v6.md`): 1 KiB of zeros, the superblock, its RAFS
//! extension, the device table, the blob table (4 KiB aligned), the prefetch table, one empty
//! block, the inodes in breadth-first order (directories and symlinks with their tail inline
//! when it fits in the inode's block, whole 4 KiB blocks of dirents placed after), the chunk
//! table, zero padding to 4 KiB. Choices where Nydus leaves room are recorded in
//! `formats/rafs-v6.md` under "Canonical choices".

use super::format::*;
use crate::tar::EntryKind;
use crate::tree::{InodeId, Tree};
use std::collections::{BTreeMap, HashMap, VecDeque};
use zerocopy::IntoBytes;

/// A blob (a layer) as the blob table and device table describe it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlobSpec {
    /// 64 lowercase hex digits: the layer's sha256.
    pub id: String,
    pub chunk_count: u32,
    pub features: u32,
    pub compression_algo: u32,
    pub digest_algo: u32,
    /// Size of the layer blob.
    pub compressed_size: u64,
    /// Size of the blob's uncompressed address space (a multiple of 4 KiB).
    pub uncompressed_size: u64,
    pub ci_compressor: u32,
    pub ci_offset: u64,
    pub ci_compressed_size: u64,
    pub ci_uncompressed_size: u64,
    /// sha256 and size of the separate blob.meta, when there is one.
    pub meta_digest: [u8; 32],
    pub meta_size: u64,
    /// Size of the blob's ToC and its tar header, and their sha256 (Nydus native blobs with a
    /// ToC; 0 and zeros otherwise).
    pub toc_size: u32,
    pub toc_digest: [u8; 32],
}

/// The blob id Nydus writes into the bootstrap a native blob carries inside itself: the blob's
/// digest is not known before the bootstrap is written (`nydus-image merge` takes the real id
/// from the bootstrap's file name).
pub const PLACEHOLDER_BLOB_ID: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// One chunk of a regular file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSpec {
    /// Index of the blob in [`BootstrapSpec::blobs`].
    pub blob: u8,
    /// Index of the chunk in its blob's chunk-info array.
    pub ci: u32,
    /// sha256 of the chunk's uncompressed bytes.
    pub digest: [u8; 32],
    pub compressed_offset: u64,
    pub compressed_size: u32,
    /// Where the chunk lies in the blob's uncompressed address space (4 KiB aligned).
    pub uncompressed_offset: u64,
    pub uncompressed_size: u32,
    /// `BlobChunkFlags`.
    pub flags: u32,
}

/// Everything a bootstrap holds.
#[derive(Debug)]
pub struct BootstrapSpec<'a> {
    pub tree: &'a Tree,
    /// The chunk size (a power of two, 4 KiB to 16 MiB): every chunk of a file but its last
    /// has exactly this size.
    pub chunk_size: u32,
    pub blobs: Vec<BlobSpec>,
    /// The chunks of each regular file, by inode; files not present have no data.
    pub chunks: HashMap<InodeId, Vec<ChunkSpec>>,
    /// Files to fetch first, in order (the prefetch table).
    pub prefetch: Vec<InodeId>,
}

/// A tree or chunk list that RAFS v6 cannot hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("{path}: {message}")]
    Inode { path: String, message: String },
    #[error("{0}")]
    Image(String),
}

/// Where an inode goes and how it is laid out.
#[derive(Debug, Clone, Default)]
struct Placed {
    offset: u64,
    extended: bool,
    layout: u16,
    xattrs: Vec<u8>,
    /// Where the whole blocks of a directory's or symlink's data go.
    data_offset: u64,
    path: Vec<u8>,
    parent: InodeId,
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// The inline xattr body of an inode (empty without xattrs). Names without a prefix EROFS can
/// index are left out, with a warning.
fn xattr_body(path: &[u8], xattrs: &BTreeMap<Vec<u8>, Vec<u8>>) -> Result<Vec<u8>, WriteError> {
    if xattrs.is_empty() {
        return Ok(Vec::new());
    }
    let mut out =
        XattrIbodyHeader { reserved: 0.into(), shared_count: 0, reserved2: [0; 7] }.as_bytes().to_vec();
    for (name, value) in xattrs {
        let Some((index, rest)) = XATTR_PREFIXES
            .iter()
            .filter(|(_, p)| name.starts_with(p))
            .map(|(i, p)| (*i, &name[p.len()..]))
            .next()
        else {
            tracing::warn!(path = %String::from_utf8_lossy(path), name = %String::from_utf8_lossy(name), "xattr with a prefix EROFS cannot store: left out");
            continue;
        };
        let bad = |m: &str| WriteError::Inode {
            path: String::from_utf8_lossy(path).into_owned(),
            message: m.into(),
        };
        let name_len = u8::try_from(rest.len()).map_err(|_| bad("xattr name longer than 255 bytes"))?;
        let value_size =
            u16::try_from(value.len()).map_err(|_| bad("xattr value longer than 65535 bytes"))?;
        out.extend_from_slice(
            XattrEntry { name_len, name_index: index, value_size: value_size.into() }.as_bytes(),
        );
        out.extend_from_slice(rest);
        out.extend_from_slice(value);
        out.resize(round_up(out.len() as u64, 4) as usize, 0);
    }
    if out.len() == XATTR_HEADER_SIZE {
        return Ok(Vec::new());
    }
    if (out.len() - XATTR_HEADER_SIZE) / 4 + 1 > usize::from(u16::MAX) {
        return Err(WriteError::Inode {
            path: String::from_utf8_lossy(path).into_owned(),
            message: "extended attributes too large".into(),
        });
    }
    Ok(out)
}

fn file_type(kind: EntryKind) -> u8 {
    match kind {
        EntryKind::File | EntryKind::Hardlink => file_type::REG,
        EntryKind::Directory => file_type::DIR,
        EntryKind::Char => file_type::CHR,
        EntryKind::Block => file_type::BLK,
        EntryKind::Fifo => file_type::FIFO,
        EntryKind::Symlink => file_type::SYMLINK,
    }
}

fn type_bits(kind: EntryKind) -> u32 {
    match kind {
        EntryKind::File | EntryKind::Hardlink => 0o100000,
        EntryKind::Directory => 0o040000,
        EntryKind::Char => 0o020000,
        EntryKind::Block => 0o060000,
        EntryKind::Fifo => 0o010000,
        EntryKind::Symlink => 0o120000,
    }
}

/// Directory entries, sorted by name with `.` and `..`, as (name, inode), and the size of the
/// dirent data: entries never straddle a 4 KiB block.
fn dir_entries(tree: &Tree, dir: InodeId, parent: InodeId) -> (Vec<(Vec<u8>, InodeId)>, u64) {
    let mut names: Vec<(Vec<u8>, InodeId)> = vec![(b".".to_vec(), dir), (b"..".to_vec(), parent)];
    names.extend(tree.inodes[dir].children.iter().map(|(n, &(id, _))| (n.clone(), id)));
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let mut size = 0u64;
    for (name, _) in &names {
        let len = (DIRENT_SIZE + name.len()) as u64;
        if size % BLOCK_SIZE + len > BLOCK_SIZE {
            size = round_up(size, BLOCK_SIZE);
        }
        size += len;
    }
    (names, size)
}

/// Serialise dirents into blocks: each block holds its dirents, then their names.
fn dir_blocks(names: &[(Vec<u8>, InodeId)], nid: &dyn Fn(InodeId) -> u64, tree: &Tree) -> Vec<u8> {
    let mut out = Vec::new();
    let mut block: Vec<&(Vec<u8>, InodeId)> = Vec::new();
    let mut used = 0usize;
    let flush = |block: &mut Vec<&(Vec<u8>, InodeId)>, out: &mut Vec<u8>| {
        if block.is_empty() {
            return;
        }
        out.resize(round_up(out.len() as u64, BLOCK_SIZE) as usize, 0);
        let mut nameoff = block.len() * DIRENT_SIZE;
        for (name, id) in block.iter() {
            let d = Dirent {
                nid: nid(*id).into(),
                nameoff: (nameoff as u16).into(),
                file_type: file_type(tree.inodes[*id].kind),
                reserved: 0,
            };
            out.extend_from_slice(d.as_bytes());
            nameoff += name.len();
        }
        for (name, _) in block.iter() {
            out.extend_from_slice(name);
        }
        block.clear();
    };
    for e in names {
        let len = DIRENT_SIZE + e.0.len();
        if used + len > BLOCK_SIZE as usize {
            flush(&mut block, &mut out);
            used = 0;
        }
        block.push(e);
        used += len;
    }
    flush(&mut block, &mut out);
    out
}

/// Write the bootstrap (of zran artifacts: the superblock says gzip, the layers' compression).
pub fn write(spec: &BootstrapSpec) -> Result<Vec<u8>, WriteError> {
    write_with_compression(spec, flags::COMPRESSION_GZIP)
}

/// Write the bootstrap, the superblock naming `compression` (one of `flags::COMPRESSION_*`),
/// the compressor of the blobs' chunks.
pub fn write_with_compression(spec: &BootstrapSpec, compression: u64) -> Result<Vec<u8>, WriteError> {
    let tree = spec.tree;
    let chunk_size = spec.chunk_size;
    if !chunk_size.is_power_of_two() || !(4096..=16 << 20).contains(&chunk_size) {
        return Err(WriteError::Image(format!(
            "chunk size {chunk_size} is not a power of two in 4 KiB..16 MiB"
        )));
    }
    if spec.blobs.len() >= usize::from(u8::MAX) {
        return Err(WriteError::Image(format!("{} blobs; RAFS v6 holds at most 254", spec.blobs.len())));
    }
    for b in &spec.blobs {
        let hex = b.id.len() == 64 && b.id.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
        if !hex && b.id != PLACEHOLDER_BLOB_ID {
            return Err(WriteError::Image(format!("blob id {:?} is not 64 lowercase hex digits", b.id)));
        }
        if b.uncompressed_size % BLOCK_SIZE != 0 || b.uncompressed_size / BLOCK_SIZE > u64::from(u32::MAX) {
            return Err(WriteError::Image(format!(
                "blob {}: uncompressed size {}",
                b.id, b.uncompressed_size
            )));
        }
    }

    // Breadth-first order; a hardlinked inode is placed where its first name is met.
    let mut order: Vec<InodeId> = vec![tree.root];
    let mut placed: HashMap<InodeId, Placed> = HashMap::new();
    placed.insert(tree.root, Placed { parent: tree.root, path: b"/".to_vec(), ..Default::default() });
    let mut queue = VecDeque::from([tree.root]);
    while let Some(d) = queue.pop_front() {
        let dpath = placed[&d].path.clone();
        for (name, &(id, _)) in &tree.inodes[d].children {
            if placed.contains_key(&id) {
                continue;
            }
            let mut path = dpath.clone();
            if path.len() > 1 {
                path.push(b'/');
            }
            path.extend_from_slice(name);
            placed.insert(id, Placed { parent: d, path, ..Default::default() });
            order.push(id);
            if tree.inodes[id].is_dir() {
                queue.push_back(id);
            }
        }
    }

    // The most common mtime becomes the build time (what the kernel shows for a compact inode).
    let mtime_of = |id: InodeId| tree.inodes[id].mtime.unwrap_or((0, 0));
    let mut counts: HashMap<(i64, u32), usize> = HashMap::new();
    for &id in &order {
        *counts.entry(mtime_of(id)).or_default() += 1;
    }
    let build_time =
        counts.iter().max_by_key(|(t, n)| (**n, std::cmp::Reverse(**t))).map(|(t, _)| *t).unwrap_or((0, 0));
    let build_secs = u64::try_from(build_time.0).unwrap_or(0);

    let nblobs = spec.blobs.len();
    let blob_table_offset = round_up((DEVTABLE_OFFSET + nblobs * DEVICE_SIZE) as u64, BLOCK_SIZE);
    let blob_table_size = (nblobs * BLOB_ENTRY_SIZE) as u64;
    let mut prefetch: Vec<InodeId> = Vec::new();
    for id in &spec.prefetch {
        if placed.contains_key(id) && !prefetch.contains(id) {
            prefetch.push(*id);
        }
    }
    let (prefetch_offset, prefetch_size) = if !prefetch.is_empty() && nblobs > 0 {
        (blob_table_offset + blob_table_size, (prefetch.len() * 4) as u64)
    } else {
        (0, 0)
    };
    let meta_addr = round_up(blob_table_offset + blob_table_size + prefetch_size, BLOCK_SIZE);
    let mut cursor = meta_addr + BLOCK_SIZE;

    // Place every inode.
    let mut dirents: HashMap<InodeId, Vec<(Vec<u8>, InodeId)>> = HashMap::new();
    for &id in &order {
        let inode = &tree.inodes[id];
        let p = placed.get_mut(&id).ok_or_else(|| WriteError::Image("inode order".into()))?;
        let path_str = || String::from_utf8_lossy(&p.path).into_owned();
        let secs_ok = inode.mtime.is_none_or(|(s, _)| s >= 0);
        if !secs_ok {
            tracing::warn!(path = %path_str(), "mtime before 1970 stored as 1970");
        }
        if inode.uid > u64::from(u32::MAX) || inode.gid > u64::from(u32::MAX) {
            return Err(WriteError::Inode { path: path_str(), message: "uid or gid above 2^32".into() });
        }
        // Compact inodes carry no mtime: the kernel shows the superblock's build time for
        // them, but Nydus reads 0. Only an inode whose mtime is 0 reads the same in both
        // (with a build time of 0); every other inode is extended. (nydusd shows its own
        // start time for any mtime of 0, compact or not.)
        p.extended = !(inode.uid <= 0xffff
            && inode.gid <= 0xffff
            && inode.nlink <= 0xffff
            && inode.size <= u64::from(u32::MAX)
            && mtime_of(id) == (0, 0)
            && build_time == (0, 0));
        p.xattrs = xattr_body(&p.path, &inode.xattrs)?;
        let isize =
            if p.extended { INODE_EXTENDED_SIZE } else { INODE_COMPACT_SIZE } as u64 + p.xattrs.len() as u64;
        match inode.kind {
            EntryKind::Directory | EntryKind::Symlink => {
                let dsize = if inode.is_dir() {
                    let (names, size) = dir_entries(tree, id, p.parent);
                    dirents.insert(id, names);
                    size
                } else {
                    inode.link.len() as u64
                };
                let tail = dsize % BLOCK_SIZE;
                if tail != 0 && isize + tail <= BLOCK_SIZE {
                    if cursor % BLOCK_SIZE + isize + tail > BLOCK_SIZE {
                        cursor = round_up(cursor, BLOCK_SIZE);
                    }
                    p.offset = cursor;
                    cursor += isize + tail;
                    p.layout = LAYOUT_FLAT_INLINE;
                    if dsize > tail {
                        cursor = round_up(cursor, BLOCK_SIZE);
                        p.data_offset = cursor;
                        cursor += dsize - tail;
                    }
                } else {
                    p.offset = cursor;
                    cursor = round_up(cursor + isize, BLOCK_SIZE);
                    p.layout = LAYOUT_FLAT_PLAIN;
                    p.data_offset = cursor;
                    cursor += round_up(dsize, BLOCK_SIZE);
                }
            }
            EntryKind::File | EntryKind::Hardlink => {
                let n = spec.chunks.get(&id).map_or(0, Vec::len) as u64;
                let want = inode.size.div_ceil(u64::from(chunk_size));
                if n != want {
                    return Err(WriteError::Inode {
                        path: path_str(),
                        message: format!("{n} chunks for {} bytes at chunk size {chunk_size}", inode.size),
                    });
                }
                p.offset = cursor;
                p.layout = LAYOUT_CHUNK_BASED;
                cursor = round_up(cursor + isize, CHUNK_ADDR_SIZE as u64) + n * CHUNK_ADDR_SIZE as u64;
            }
            EntryKind::Char | EntryKind::Block | EntryKind::Fifo => {
                p.offset = cursor;
                p.layout = LAYOUT_FLAT_PLAIN;
                cursor += isize;
            }
        }
        cursor = round_up(cursor, SLOT_SIZE);
    }
    let nid_of = |id: InodeId| placed.get(&id).map_or(0, |p| (p.offset - meta_addr) / SLOT_SIZE);
    let root_nid = u16::try_from(nid_of(tree.root)).map_err(|_| WriteError::Image("root nid".into()))?;
    let inodes_end = round_up(cursor, BLOCK_SIZE);

    // Chunk table: one entry per distinct chunk, ordered by digest then blob as Nydus orders it.
    let mut table: BTreeMap<([u8; 32], u8, u32), (ChunkSpec, u64)> = BTreeMap::new();
    for (&id, chunks) in &spec.chunks {
        for (i, c) in chunks.iter().enumerate() {
            let b = spec
                .blobs
                .get(usize::from(c.blob))
                .ok_or_else(|| WriteError::Image(format!("chunk of blob {}", c.blob)))?;
            if c.ci >= b.chunk_count || c.ci > 0xff_ffff || c.uncompressed_offset % BLOCK_SIZE != 0 {
                return Err(WriteError::Inode {
                    path: placed
                        .get(&id)
                        .map(|p| String::from_utf8_lossy(&p.path).into_owned())
                        .unwrap_or_default(),
                    message: format!("chunk {i}: index {} of {} in blob {}", c.ci, b.chunk_count, b.id),
                });
            }
            let file_offset = i as u64 * u64::from(chunk_size);
            table.entry((c.digest, c.blob, c.ci)).or_insert((*c, file_offset));
        }
    }
    let chunk_table_offset = inodes_end;
    let chunk_table_size = (table.len() * CHUNK_INFO_SIZE) as u64;
    let total = round_up(chunk_table_offset + chunk_table_size, BLOCK_SIZE).max(2 * BLOCK_SIZE);
    let mut out =
        vec![0u8; usize::try_from(total).map_err(|_| WriteError::Image("bootstrap too large".into()))?];
    let put = |out: &mut Vec<u8>, at: u64, bytes: &[u8]| {
        let at = at as usize;
        out[at..at + bytes.len()].copy_from_slice(bytes);
    };

    // Inodes and their data.
    for (seq, &id) in order.iter().enumerate() {
        let inode = &tree.inodes[id];
        let p = &placed[&id];
        let mode = (type_bits(inode.kind) | (inode.mode & 0o7777)) as u16;
        let mut data = Vec::new();
        let u = match inode.kind {
            EntryKind::Directory => {
                data = dir_blocks(&dirents[&id], &nid_of, tree);
                (p.data_offset / BLOCK_SIZE) as u32
            }
            EntryKind::Symlink => {
                data = inode.link.clone();
                (p.data_offset / BLOCK_SIZE) as u32
            }
            EntryKind::Char | EntryKind::Block => encode_dev(inode.devmajor, inode.devminor),
            EntryKind::File | EntryKind::Hardlink => {
                u32::from(CHUNK_FORMAT_INDEXES | (chunk_size.trailing_zeros() as u16 - u16::from(BLOCK_BITS)))
            }
            EntryKind::Fifo => 0,
        };
        let size = match inode.kind {
            EntryKind::Directory | EntryKind::Symlink => data.len() as u64,
            EntryKind::File | EntryKind::Hardlink => inode.size,
            _ => 0,
        };
        let format = (p.layout << 1) | u16::from(p.extended);
        let icount =
            if p.xattrs.is_empty() { 0 } else { ((p.xattrs.len() - XATTR_HEADER_SIZE) / 4 + 1) as u16 };
        let ino = (seq + 1) as u32;
        let head = if p.extended {
            let (secs, nsec) = mtime_of(id);
            InodeExtended {
                format: format.into(),
                xattr_icount: icount.into(),
                mode: mode.into(),
                reserved: 0.into(),
                size: size.into(),
                u: u.into(),
                ino: ino.into(),
                uid: (inode.uid as u32).into(),
                gid: (inode.gid as u32).into(),
                mtime: u64::try_from(secs).unwrap_or(0).into(),
                mtime_nsec: nsec.into(),
                nlink: inode.nlink.max(1).into(),
                reserved2: [0; 16],
            }
            .as_bytes()
            .to_vec()
        } else {
            InodeCompact {
                format: format.into(),
                xattr_icount: icount.into(),
                mode: mode.into(),
                nlink: (inode.nlink.max(1) as u16).into(),
                size: (size as u32).into(),
                reserved: 0.into(),
                u: u.into(),
                ino: ino.into(),
                uid: (inode.uid as u16).into(),
                gid: (inode.gid as u16).into(),
                reserved2: [0; 4],
            }
            .as_bytes()
            .to_vec()
        };
        put(&mut out, p.offset, &head);
        let body = p.offset + head.len() as u64;
        put(&mut out, body, &p.xattrs);
        let after = body + p.xattrs.len() as u64;
        match p.layout {
            LAYOUT_FLAT_INLINE => {
                let tail = data.len() % BLOCK_SIZE as usize;
                let whole = data.len() - tail;
                put(&mut out, after, &data[whole..]);
                if whole > 0 {
                    put(&mut out, p.data_offset, &data[..whole]);
                }
            }
            LAYOUT_FLAT_PLAIN if !data.is_empty() => put(&mut out, p.data_offset, &data),
            LAYOUT_CHUNK_BASED => {
                let mut at = round_up(after, CHUNK_ADDR_SIZE as u64);
                for c in spec.chunks.get(&id).map(Vec::as_slice).unwrap_or_default() {
                    let a = ChunkAddr::new(c.blob, c.ci, (c.uncompressed_offset / BLOCK_SIZE) as u32);
                    put(&mut out, at, a.as_bytes());
                    at += CHUNK_ADDR_SIZE as u64;
                }
            }
            _ => {}
        }
    }

    // Chunk table.
    let mut at = chunk_table_offset;
    for ((digest, blob, ci), (c, file_offset)) in &table {
        let e = ChunkInfo {
            digest: *digest,
            blob_index: u32::from(*blob).into(),
            flags: c.flags.into(),
            compressed_size: c.compressed_size.into(),
            uncompressed_size: c.uncompressed_size.into(),
            compressed_offset: c.compressed_offset.into(),
            uncompressed_offset: c.uncompressed_offset.into(),
            file_offset: (*file_offset).into(),
            index: (*ci).into(),
            crc32: 0.into(),
        };
        put(&mut out, at, e.as_bytes());
        at += CHUNK_INFO_SIZE as u64;
    }

    // Prefetch table: nids.
    for (i, id) in prefetch.iter().enumerate() {
        put(&mut out, prefetch_offset + 4 * i as u64, &(nid_of(*id) as u32).to_le_bytes());
    }

    // Devices and blobs: device data is mapped after the bootstrap, 512 KiB aligned.
    let mut pos = total;
    let mut blocks_total = 0u32;
    for (i, b) in spec.blobs.iter().enumerate() {
        let blocks = (b.uncompressed_size / BLOCK_SIZE) as u32;
        let mapped = round_up(pos, DEVICE_SEG_ALIGN) / BLOCK_SIZE;
        let mapped =
            u32::try_from(mapped).map_err(|_| WriteError::Image("device address space exhausted".into()))?;
        pos = (u64::from(mapped) + u64::from(blocks)) * BLOCK_SIZE;
        blocks_total = blocks_total
            .checked_add(blocks)
            .ok_or_else(|| WriteError::Image("more than 2^32 blocks in the blobs".into()))?;
        let mut id = [0u8; 64];
        id.copy_from_slice(b.id.as_bytes());
        let dev =
            Device { blob_id: id, blocks: blocks.into(), mapped_blkaddr: mapped.into(), reserved: [0; 56] };
        put(&mut out, (DEVTABLE_OFFSET + i * DEVICE_SIZE) as u64, dev.as_bytes());
        let e = BlobEntry {
            blob_id: id,
            blob_index: (i as u32).into(),
            chunk_size: chunk_size.into(),
            chunk_count: b.chunk_count.into(),
            compression_algo: b.compression_algo.into(),
            digest_algo: b.digest_algo.into(),
            features: b.features.into(),
            compressed_size: b.compressed_size.into(),
            uncompressed_size: b.uncompressed_size.into(),
            blob_toc_size: b.toc_size.into(),
            ci_compressor: b.ci_compressor.into(),
            ci_offset: b.ci_offset.into(),
            ci_compressed_size: b.ci_compressed_size.into(),
            ci_uncompressed_size: b.ci_uncompressed_size.into(),
            blob_toc_digest: b.toc_digest,
            blob_meta_digest: b.meta_digest,
            blob_meta_size: b.meta_size.into(),
            cipher_iv: [0; 8],
            cipher_algo: 0.into(),
            reserved: [0; 36],
        };
        put(&mut out, blob_table_offset + (i * BLOB_ENTRY_SIZE) as u64, e.as_bytes());
    }

    let has_xattr = placed.values().any(|p| !p.xattrs.is_empty());
    let ext = SuperBlockExt {
        // EXPLICIT_UID_GID: the inodes' owners are the image's. Without it nydusd shows every
        // file as owned by the daemon's own uid and gid (Nydus's builder sets it for every
        // image but rootless ones).
        flags: (compression
            | flags::HASH_SHA256
            | flags::ENCRYPTION_NONE
            | flags::EXPLICIT_UID_GID
            | if has_xattr { flags::HAS_XATTR } else { 0 })
        .into(),
        blob_table_offset: blob_table_offset.into(),
        blob_table_size: (blob_table_size as u32).into(),
        chunk_size: chunk_size.into(),
        chunk_table_offset: chunk_table_offset.into(),
        chunk_table_size: chunk_table_size.into(),
        prefetch_table_offset: prefetch_offset.into(),
        prefetch_table_size: (prefetch_size as u32).into(),
        padding: 0.into(),
        reserved: [0; 200],
    };
    let sb = SuperBlock {
        magic: EROFS_MAGIC.into(),
        checksum: 0.into(),
        feature_compat: COMPAT_RAFS_V6.into(),
        blkszbits: BLOCK_BITS,
        extslots: 0,
        root_nid: root_nid.into(),
        inos: (order.len() as u64).into(),
        build_time: build_secs.into(),
        build_time_nsec: build_time.1.into(),
        blocks: blocks_total.into(),
        meta_blkaddr: ((meta_addr / BLOCK_SIZE) as u32).into(),
        xattr_blkaddr: 0.into(),
        uuid: [0; 16],
        volume_name: [0; 16],
        feature_incompat: (INCOMPAT_CHUNKED_FILE | INCOMPAT_DEVICE_TABLE).into(),
        u1: 0.into(),
        extra_devices: (nblobs as u16).into(),
        devt_slotoff: ((DEVTABLE_OFFSET / DEVICE_SIZE) as u16).into(),
        reserved: [0; 38],
    };
    put(&mut out, SUPER_OFFSET as u64, sb.as_bytes());
    put(&mut out, (SUPER_OFFSET + SUPER_SIZE) as u64, ext.as_bytes());
    Ok(out)
}

/// Rewrite entry `index` of the blob table of a written bootstrap as an oci-ref image names its
/// blob: `features`, the ref layer that holds its blob.meta (digest and size: nydusd fetches
/// the blob.meta by that digest), and that layer's ToC (sha256 and size of the ToC and its
/// header). Everything else stays as written.
pub fn set_ref_blob(
    boot: &mut [u8],
    index: usize,
    features: u32,
    meta: ([u8; 32], u64),
    toc: ([u8; 32], u32),
) -> Result<(), WriteError> {
    use zerocopy::FromBytes;
    let ext_at = SUPER_OFFSET + SUPER_SIZE;
    let ext = boot
        .get(ext_at..ext_at + SUPER_EXT_SIZE)
        .and_then(|b| SuperBlockExt::read_from_bytes(b).ok())
        .ok_or_else(|| WriteError::Image("no extended superblock".into()))?;
    let count = ext.blob_table_size.get() as usize / BLOB_ENTRY_SIZE;
    if index >= count {
        return Err(WriteError::Image(format!("blob {index} of {count}")));
    }
    let at = usize::try_from(ext.blob_table_offset.get())
        .unwrap_or(usize::MAX)
        .saturating_add(index * BLOB_ENTRY_SIZE);
    let slot = boot
        .get_mut(at..at.saturating_add(BLOB_ENTRY_SIZE))
        .ok_or_else(|| WriteError::Image(format!("blob table entry {index} lies past the end")))?;
    let mut e = BlobEntry::read_from_bytes(slot).map_err(|_| WriteError::Image("blob entry".into()))?;
    e.features = features.into();
    e.blob_meta_digest = meta.0;
    e.blob_meta_size = meta.1.into();
    e.blob_toc_digest = toc.0;
    e.blob_toc_size = toc.1.into();
    slot.copy_from_slice(e.as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rafs::reader::read_bootstrap;
    use crate::tree::Inode;

    fn node(kind: EntryKind, mode: u32, mtime: (i64, u32)) -> Inode {
        Inode {
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: Some(mtime),
            size: 0,
            link: Vec::new(),
            devmajor: 0,
            devminor: 0,
            xattrs: BTreeMap::new(),
            data: Vec::new(),
            children: BTreeMap::new(),
            nlink: 0,
        }
    }

    fn add(tree: &mut Tree, dir: InodeId, name: &[u8], inode: Inode) -> InodeId {
        tree.inodes.push(inode);
        let id = tree.inodes.len() - 1;
        tree.inodes[dir].children.insert(name.to_vec(), (id, 0));
        id
    }

    /// A tree with every kind of inode, a directory of many blocks, long links and xattrs.
    pub(crate) fn sample() -> (Tree, HashMap<InodeId, Vec<ChunkSpec>>, Vec<BlobSpec>) {
        let t0 = (1_700_000_000, 0);
        let mut tree = Tree::new();
        tree.inodes[0].mtime = Some(t0);
        let etc = add(&mut tree, 0, b"etc", node(EntryKind::Directory, 0o755, t0));
        let big = add(&mut tree, 0, b"many", node(EntryKind::Directory, 0o700, (5, 123)));
        for i in 0..700 {
            let name = format!("entry-with-a-longish-name-{i:05}");
            add(&mut tree, big, name.as_bytes(), node(EntryKind::Fifo, 0o644, t0));
        }
        let mut f = node(EntryKind::File, 0o4755, (1_600_000_000, 999_999_999));
        f.size = 3 * 65536 + 10;
        f.uid = 70000;
        f.gid = 5;
        f.xattrs.insert(b"user.a".to_vec(), b"1".to_vec());
        f.xattrs.insert(b"security.capability".to_vec(), vec![1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0]);
        let file = add(&mut tree, etc, b"passwd", f);
        tree.inodes[big].children.insert(b"hardlink".to_vec(), (file, 0));
        let mut l = node(EntryKind::Symlink, 0o777, t0);
        l.link = vec![b'x'; 5000];
        add(&mut tree, etc, b"long-link", l);
        let mut l = node(EntryKind::Symlink, 0o777, t0);
        l.link = b"../etc/passwd".to_vec();
        add(&mut tree, 0, b"link", l);
        let mut d = node(EntryKind::Block, 0o600, t0);
        (d.devmajor, d.devminor) = (259, 70000);
        add(&mut tree, 0, b"dev", d);
        let mut e = node(EntryKind::File, 0o644, t0);
        e.size = 0;
        add(&mut tree, etc, b"empty", e);
        tree.finish();
        let chunks = (0..4u32)
            .map(|i| ChunkSpec {
                blob: 0,
                ci: i,
                digest: [i as u8; 32],
                compressed_offset: u64::from(i) * 100,
                compressed_size: 100,
                uncompressed_offset: u64::from(i) * 65536,
                uncompressed_size: if i == 3 { 10 } else { 65536 },
                flags: CHUNK_COMPRESSED,
            })
            .collect();
        let blob = BlobSpec {
            id: "ab".repeat(32),
            chunk_count: 4,
            features: blob_features::ALIGNED,
            compression_algo: compressor::GZIP,
            digest_algo: digester::SHA256,
            compressed_size: 400,
            uncompressed_size: 4 * 65536,
            ..Default::default()
        };
        (tree, HashMap::from([(file, chunks)]), vec![blob])
    }

    /// Everything a listing shows, by path.
    fn listing(tree: &Tree) -> Vec<String> {
        tree.walk()
            .into_iter()
            .map(|(p, id)| {
                let i = &tree.inodes[id];
                format!(
                    "{} {:?} {:o} {}:{} {:?} {} {:?} {}/{} {:?} {}",
                    String::from_utf8_lossy(&p),
                    i.kind,
                    i.mode,
                    i.uid,
                    i.gid,
                    i.mtime,
                    if i.is_dir() { 0 } else { i.size },
                    i.link.len(),
                    i.devmajor,
                    i.devminor,
                    i.xattrs,
                    i.nlink
                )
            })
            .collect()
    }

    #[test]
    fn round_trip() {
        let (tree, chunks, blobs) = sample();
        let file = tree.lookup(b"etc/passwd").unwrap();
        let spec = BootstrapSpec { tree: &tree, chunk_size: 65536, blobs, chunks, prefetch: vec![file] };
        let boot = write(&spec).unwrap();
        let back = read_bootstrap(&boot).unwrap();
        assert_eq!(listing(&back.tree), listing(&tree));
        let rfile = back.tree.lookup(b"etc/passwd").unwrap();
        assert_eq!(back.tree.lookup(b"many/hardlink"), Some(rfile));
        let refs = &back.chunks[&rfile];
        assert_eq!(refs.len(), 4);
        for (i, r) in refs.iter().enumerate() {
            assert_eq!((r.blob, r.ci, r.blk_addr), (0, i as u32, i as u32 * 16));
            assert_eq!(back.chunk_info(r).unwrap().digest, [i as u8; 32]);
        }
        assert_eq!(back.prefetch, vec![rfile]);
        assert_eq!(back.blobs, spec.blobs);
        assert_eq!(back.summary.root_nid, 128);
        assert_eq!(back.tree.inodes[back.tree.lookup(b"etc/long-link").unwrap()].link, vec![b'x'; 5000]);
    }

    #[test]
    fn compact_inodes_only_where_every_reader_agrees() {
        // mtime 0 everywhere: compact inodes (but for the file whose uid needs 32 bits), and
        // they read back as written.
        let (mut tree, chunks, blobs) = sample();
        for inode in &mut tree.inodes {
            inode.mtime = Some((0, 0));
        }
        let spec = BootstrapSpec { tree: &tree, chunk_size: 65536, blobs, chunks, prefetch: vec![] };
        let small = write(&spec).unwrap();
        assert_eq!(listing(&read_bootstrap(&small).unwrap().tree), listing(&tree));
        // With other mtimes (the sample's own) every inode is extended.
        let (tree2, chunks, blobs) = sample();
        let spec = BootstrapSpec { tree: &tree2, chunk_size: 65536, blobs, chunks, prefetch: vec![] };
        let extended = write(&spec).unwrap();
        // 700 fifos alone take 22 KB more as extended inodes.
        assert!(extended.len() >= small.len() + 5 * 4096, "{} vs {}", extended.len(), small.len());
    }

    #[test]
    fn hostile_bootstraps_fail_cleanly() {
        let (tree, chunks, blobs) = sample();
        let boot = write(&BootstrapSpec { tree: &tree, chunk_size: 65536, blobs, chunks, prefetch: vec![] })
            .unwrap();
        // Every byte of the metadata, flipped: an error or a tree, never a panic or a hang.
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..3000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let mut b = boot.clone();
            let at = (rng % b.len() as u64) as usize;
            b[at] ^= 1 << (rng >> 60 & 7);
            let _ = read_bootstrap(&b);
        }
        for cut in [0, 1024, 1100, 4096, boot.len() - 4096] {
            assert!(read_bootstrap(&boot[..cut]).is_err());
        }
    }

    #[test]
    fn refuses_what_rafs_cannot_hold() {
        let (tree, mut chunks, blobs) = sample();
        let file = tree.lookup(b"etc/passwd").unwrap();
        chunks.get_mut(&file).unwrap().pop();
        let spec = BootstrapSpec { tree: &tree, chunk_size: 65536, blobs, chunks, prefetch: vec![] };
        let e = write(&spec).unwrap_err().to_string();
        assert!(e.contains("/etc/passwd") && e.contains("3 chunks"), "{e}");
    }
}
