//! Reads a RAFS v6 bootstrap back into a [`Tree`], validating everything it touches: magic and
//! features, table offsets and sizes (in range, aligned, not overlapping), every inode's
//! location, layout, xattrs, dirents and chunk indexes. Directories are walked from the root
//! once each; a directory met twice (a cycle or a directory hardlink) is an error, so a hostile
//! bootstrap costs at most time proportional to its size.

use super::format::*;
use super::writer::{BlobSpec, ChunkSpec};
use crate::tar::EntryKind;
use crate::tree::{Inode, InodeId, Tree};
use std::collections::{BTreeMap, HashMap};
use zerocopy::FromBytes;

/// A bootstrap that cannot be trusted: what is wrong and at which byte offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bootstrap offset {offset}: {message}")]
pub struct ReadError {
    pub offset: u64,
    pub message: String,
}

fn err<T>(offset: u64, message: impl Into<String>) -> Result<T, ReadError> {
    Err(ReadError { offset, message: message.into() })
}

/// The superblock fields a user may want to see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub inodes: u64,
    pub build_time: (u64, u32),
    pub chunk_size: u32,
    pub flags: u64,
    pub root_nid: u16,
    pub meta_blkaddr: u32,
    pub blocks: u32,
    pub size: u64,
}

/// A chunk index of a file: which chunk-info entry of which blob, and its block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    pub blob: u8,
    pub ci: u32,
    pub blk_addr: u32,
}

/// A bootstrap, read and checked.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub summary: Summary,
    pub blobs: Vec<BlobSpec>,
    /// The bootstrap's chunk table.
    pub chunk_table: Vec<ChunkSpec>,
    /// The merged tree (regular files' `data` is empty; see `chunks`).
    pub tree: Tree,
    /// The chunk indexes of each regular file.
    pub chunks: HashMap<InodeId, Vec<ChunkRef>>,
    /// The nid of each inode.
    pub nids: Vec<u64>,
    /// The prefetch table, as inodes (entries naming no inode of the tree are dropped).
    pub prefetch: Vec<InodeId>,
}

impl Bootstrap {
    /// The chunk-table entry of a chunk index.
    pub fn chunk_info(&self, r: &ChunkRef) -> Option<&ChunkSpec> {
        self.chunk_table.iter().find(|c| c.blob == r.blob && c.ci == r.ci)
    }
}

fn read<T: FromBytes + zerocopy::KnownLayout + zerocopy::Immutable>(
    b: &[u8],
    at: u64,
    what: &str,
) -> Result<T, ReadError> {
    let size = std::mem::size_of::<T>() as u64;
    match at.checked_add(size).filter(|&e| e <= b.len() as u64) {
        Some(end) => T::read_from_bytes(&b[at as usize..end as usize])
            .or_else(|_| err(at, format!("{what}: unreadable"))),
        None => err(at, format!("{what} lies past the end ({} bytes)", b.len())),
    }
}

fn slice<'a>(b: &'a [u8], at: u64, len: u64, what: &str) -> Result<&'a [u8], ReadError> {
    match at.checked_add(len).filter(|&e| e <= b.len() as u64) {
        Some(end) => Ok(&b[at as usize..end as usize]),
        None => err(at, format!("{what} ({len} bytes) lies past the end ({} bytes)", b.len())),
    }
}

fn hex_id(raw: &[u8; 64], at: u64) -> Result<String, ReadError> {
    if !raw.iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c)) {
        return err(at, "blob id is not 64 lowercase hex digits");
    }
    Ok(raw.iter().map(|&c| c as char).collect())
}

struct Walker<'a> {
    b: &'a [u8],
    meta: u64,
    chunk_size: u32,
    build_time: (u64, u32),
    nblobs: usize,
    tree: Tree,
    chunks: HashMap<InodeId, Vec<ChunkRef>>,
    by_nid: HashMap<u64, InodeId>,
    nids: Vec<u64>,
}

struct Raw {
    kind: EntryKind,
    layout: u16,
    u: u32,
    size: u64,
    /// Offset of the first byte after the inode and its xattrs.
    body_end: u64,
}

impl Walker<'_> {
    fn inode_at(&self, nid: u64) -> Result<u64, ReadError> {
        match nid.checked_mul(SLOT_SIZE).and_then(|o| o.checked_add(self.meta)) {
            Some(o) if o < self.b.len() as u64 => Ok(o),
            _ => err(self.meta, format!("nid {nid} lies past the end")),
        }
    }

    fn parse(&mut self, nid: u64) -> Result<(Inode, Raw), ReadError> {
        let at = self.inode_at(nid)?;
        let format: zerocopy::little_endian::U16 = read(self.b, at, "inode")?;
        let format = format.get();
        let layout = (format >> 1) & 0x7;
        let mut inode = Inode {
            kind: EntryKind::File,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: None,
            size: 0,
            link: Vec::new(),
            devmajor: 0,
            devminor: 0,
            xattrs: BTreeMap::new(),
            data: Vec::new(),
            children: BTreeMap::new(),
            nlink: 0,
        };
        let (mode, icount, u, size, isize) = if format & INODE_EXTENDED != 0 {
            let i: InodeExtended = read(self.b, at, "extended inode")?;
            inode.uid = u64::from(i.uid.get());
            inode.gid = u64::from(i.gid.get());
            inode.mtime = Some((i64::try_from(i.mtime.get()).unwrap_or(i64::MAX), i.mtime_nsec.get()));
            inode.nlink = i.nlink.get();
            (i.mode.get(), i.xattr_icount.get(), i.u.get(), i.size.get(), INODE_EXTENDED_SIZE)
        } else {
            let i: InodeCompact = read(self.b, at, "compact inode")?;
            inode.uid = u64::from(i.uid.get());
            inode.gid = u64::from(i.gid.get());
            let (s, n) = self.build_time;
            inode.mtime = Some((i64::try_from(s).unwrap_or(i64::MAX), n));
            inode.nlink = u32::from(i.nlink.get());
            (i.mode.get(), i.xattr_icount.get(), i.u.get(), u64::from(i.size.get()), INODE_COMPACT_SIZE)
        };
        if format & !0xf != 0 || inode.mtime.is_some_and(|(_, n)| n >= 1_000_000_000) {
            return err(at, format!("nid {nid}: invalid inode format {format:#x} or mtime"));
        }
        inode.kind = match u32::from(mode) & 0o170000 {
            0o100000 => EntryKind::File,
            0o040000 => EntryKind::Directory,
            0o120000 => EntryKind::Symlink,
            0o020000 => EntryKind::Char,
            0o060000 => EntryKind::Block,
            0o010000 => EntryKind::Fifo,
            t => return err(at + 4, format!("nid {nid}: unsupported file type {t:#o}")),
        };
        inode.mode = u32::from(mode) & 0o7777;
        let mut body = at + isize as u64;
        if icount > 0 {
            let xsize = XATTR_HEADER_SIZE as u64 + (u64::from(icount) - 1) * 4;
            let x = slice(self.b, body, xsize, "xattrs")?;
            let h = XattrIbodyHeader::read_from_bytes(&x[..XATTR_HEADER_SIZE])
                .or_else(|_| err(body, "xattr header"))?;
            if h.shared_count != 0 {
                return err(body + 4, format!("nid {nid}: shared xattrs are not supported"));
            }
            let mut p = XATTR_HEADER_SIZE;
            while p < x.len() {
                let e: XattrEntry = read(x, p as u64, "xattr entry").map_err(|e| ReadError {
                    offset: body + e.offset,
                    message: format!("nid {nid}: {}", e.message),
                })?;
                let (nl, vl) = (usize::from(e.name_len), usize::from(e.value_size.get()));
                let start = p + XATTR_ENTRY_SIZE;
                let end = start + nl + vl;
                if end > x.len() {
                    return err(body + p as u64, format!("nid {nid}: xattr entry runs past the xattrs"));
                }
                let Some((_, prefix)) = XATTR_PREFIXES.iter().find(|(i, _)| *i == e.name_index) else {
                    return err(
                        body + p as u64 + 1,
                        format!("nid {nid}: unknown xattr prefix {}", e.name_index),
                    );
                };
                let mut name = prefix.to_vec();
                name.extend_from_slice(&x[start..start + nl]);
                inode.xattrs.insert(name, x[start + nl..end].to_vec());
                p = end.div_ceil(4) * 4;
            }
            body += xsize;
        }
        let kind = inode.kind;
        Ok((inode, Raw { kind, layout, u, size, body_end: body }))
    }

    /// The data of a directory or symlink: whole blocks at `u`, the tail inline or not.
    fn data(&self, nid: u64, r: &Raw) -> Result<Vec<u8>, ReadError> {
        let at = self.inode_at(nid)?;
        if r.size > self.b.len() as u64 {
            return err(at, format!("nid {nid}: size {} larger than the bootstrap", r.size));
        }
        match r.layout {
            LAYOUT_FLAT_PLAIN => {
                Ok(slice(self.b, u64::from(r.u) * BLOCK_SIZE, r.size, "inode data")?.to_vec())
            }
            LAYOUT_FLAT_INLINE => {
                let tail = r.size % BLOCK_SIZE;
                let mut out =
                    slice(self.b, u64::from(r.u) * BLOCK_SIZE, r.size - tail, "inode data")?.to_vec();
                if r.body_end % BLOCK_SIZE + tail > BLOCK_SIZE {
                    return err(r.body_end, format!("nid {nid}: inline data crosses a block"));
                }
                out.extend_from_slice(slice(self.b, r.body_end, tail, "inline data")?);
                Ok(out)
            }
            l => err(at, format!("nid {nid}: data layout {l} for a directory or symlink")),
        }
    }

    fn dirents(&self, nid: u64, data: &[u8]) -> Result<Vec<(Vec<u8>, u64, u8)>, ReadError> {
        let at = self.inode_at(nid)?;
        let mut out: Vec<(Vec<u8>, u64, u8)> = Vec::new();
        for (bi, block) in data.chunks(BLOCK_SIZE as usize).enumerate() {
            let bad = |m: String| err(at, format!("nid {nid}: dirent block {bi}: {m}"));
            let first: Dirent = match read(block, 0, "dirent") {
                Ok(d) => d,
                Err(e) => return bad(e.message),
            };
            let n = usize::from(first.nameoff.get()) / DIRENT_SIZE;
            if n == 0 || usize::from(first.nameoff.get()) % DIRENT_SIZE != 0 || n * DIRENT_SIZE > block.len()
            {
                return bad(format!("first name offset {}", first.nameoff.get()));
            }
            let mut ents = Vec::with_capacity(n);
            for i in 0..n {
                match read::<Dirent>(block, (i * DIRENT_SIZE) as u64, "dirent") {
                    Ok(d) => ents.push(d),
                    Err(e) => return bad(e.message),
                }
            }
            for (i, d) in ents.iter().enumerate() {
                let start = usize::from(d.nameoff.get());
                let end = match ents.get(i + 1) {
                    Some(next) => usize::from(next.nameoff.get()),
                    None => {
                        let rest = block.get(start..).unwrap_or_default();
                        start + rest.iter().position(|&c| c == 0).unwrap_or(rest.len())
                    }
                };
                if start < n * DIRENT_SIZE || end <= start || end > block.len() {
                    return bad(format!("entry {i}: name at {start}..{end}"));
                }
                let name = block[start..end].to_vec();
                if name.contains(&b'/') || name.contains(&0) {
                    return bad(format!("entry {i}: invalid name {:?}", String::from_utf8_lossy(&name)));
                }
                if let Some(prev) = out.last().filter(|p| p.0 >= name) {
                    return bad(format!(
                        "names out of order: {:?} then {:?}",
                        String::from_utf8_lossy(&prev.0),
                        String::from_utf8_lossy(&name)
                    ));
                }
                out.push((name, d.nid.get(), d.file_type));
            }
        }
        Ok(out)
    }

    /// Read the inode at `nid` (once) and, for a directory, everything under it.
    fn visit(&mut self, nid: u64, parent: Option<u64>) -> Result<InodeId, ReadError> {
        if let Some(&id) = self.by_nid.get(&nid) {
            if self.tree.inodes[id].is_dir() {
                return err(self.inode_at(nid)?, format!("directory nid {nid} is reached twice"));
            }
            return Ok(id);
        }
        let (mut inode, raw) = self.parse(nid)?;
        let at = self.inode_at(nid)?;
        let id = self.tree.inodes.len();
        match raw.kind {
            EntryKind::Directory => {}
            EntryKind::Symlink => inode.link = self.data(nid, &raw)?,
            EntryKind::Char | EntryKind::Block => (inode.devmajor, inode.devminor) = decode_dev(raw.u),
            EntryKind::Fifo => {}
            EntryKind::File | EntryKind::Hardlink => {
                inode.size = raw.size;
                if raw.layout != LAYOUT_CHUNK_BASED {
                    return err(at, format!("nid {nid}: regular file with data layout {}", raw.layout));
                }
                let header = raw.u as u16;
                if header & CHUNK_FORMAT_INDEXES == 0 {
                    return err(
                        at + 16,
                        format!("nid {nid}: chunk format {header:#x} without 8-byte indexes"),
                    );
                }
                let n = raw.size.div_ceil(u64::from(self.chunk_size));
                let start = raw.body_end.div_ceil(CHUNK_ADDR_SIZE as u64) * CHUNK_ADDR_SIZE as u64;
                let bytes = slice(self.b, start, n.saturating_mul(CHUNK_ADDR_SIZE as u64), "chunk indexes")?;
                let mut refs = Vec::with_capacity(n as usize);
                for (i, c) in bytes.chunks_exact(CHUNK_ADDR_SIZE).enumerate() {
                    let a = ChunkAddr::read_from_bytes(c).or_else(|_| err(start, "chunk index"))?;
                    match a.blob().filter(|&b| usize::from(b) < self.nblobs) {
                        Some(blob) => refs.push(ChunkRef { blob, ci: a.ci(), blk_addr: a.blk_addr.get() }),
                        None => {
                            return err(
                                start + (i * CHUNK_ADDR_SIZE) as u64,
                                format!("nid {nid}: chunk {i} names blob {:?} of {}", a.blob(), self.nblobs),
                            );
                        }
                    }
                }
                self.chunks.insert(id, refs);
            }
        }
        let is_dir = raw.kind == EntryKind::Directory;
        self.tree.inodes.push(inode);
        self.nids.push(nid);
        self.by_nid.insert(nid, id);
        if is_dir {
            let data = self.data(nid, &raw)?;
            let mut seen_dot = (false, false);
            for (name, child, _) in self.dirents(nid, &data)? {
                match name.as_slice() {
                    b"." => {
                        if child != nid {
                            return err(at, format!("nid {nid}: '.' names nid {child}"));
                        }
                        seen_dot.0 = true;
                    }
                    b".." => {
                        if parent.is_some_and(|p| p != child) {
                            return err(at, format!("nid {nid}: '..' names nid {child}"));
                        }
                        seen_dot.1 = true;
                    }
                    _ => {
                        let cid = self.visit(child, Some(nid))?;
                        self.tree.inodes[id].children.insert(name, (cid, 0));
                    }
                }
            }
            if seen_dot != (true, true) {
                return err(at, format!("nid {nid}: directory without '.' or '..'"));
            }
            self.tree.inodes[id].size = 0;
        }
        Ok(id)
    }
}

/// Read a bootstrap.
pub fn read_bootstrap(b: &[u8]) -> Result<Bootstrap, ReadError> {
    let size = b.len() as u64;
    if size < 2 * BLOCK_SIZE || !size.is_multiple_of(BLOCK_SIZE) {
        return err(0, format!("size {size} is not a whole number of 4 KiB blocks (at least 2)"));
    }
    let sb: SuperBlock = read(b, SUPER_OFFSET as u64, "superblock")?;
    let o = SUPER_OFFSET as u64;
    if sb.magic.get() != EROFS_MAGIC {
        return err(o, format!("bad magic {:#x}", sb.magic.get()));
    }
    if sb.checksum.get() != 0 || sb.blkszbits != BLOCK_BITS || sb.extslots != 0 {
        return err(o + 4, "checksum, block size or extension slots not as RAFS v6 writes them");
    }
    if sb.feature_compat.get() & COMPAT_RAFS_V6 == 0 {
        return err(o + 8, "not a RAFS v6 image (compat feature missing)");
    }
    if sb.feature_incompat.get() != INCOMPAT_CHUNKED_FILE | INCOMPAT_DEVICE_TABLE {
        return err(o + 80, format!("incompatible features {:#x}", sb.feature_incompat.get()));
    }
    if sb.xattr_blkaddr.get() != 0 {
        return err(o + 44, "shared xattrs are not supported");
    }
    if sb.inos.get() == 0 {
        return err(o + 16, "no inodes");
    }
    let ext: SuperBlockExt = read(b, o + SUPER_SIZE as u64, "extended superblock")?;
    let eo = o + SUPER_SIZE as u64;
    let chunk_size = ext.chunk_size.get();
    if !chunk_size.is_power_of_two() || !(4096..=16 << 20).contains(&chunk_size) {
        return err(eo + 20, format!("chunk size {chunk_size}"));
    }
    let fl = ext.flags.get();
    if (fl & flags::COMPRESSION_MASK).count_ones() != 1 || (fl & flags::HASH_MASK).count_ones() != 1 {
        return err(eo, format!("flags {fl:#x}: not exactly one compression and one hash"));
    }
    let nblobs = usize::from(sb.extra_devices.get());
    if usize::from(sb.devt_slotoff.get()) * DEVICE_SIZE != DEVTABLE_OFFSET || nblobs >= usize::from(u8::MAX) {
        return err(o + 86, "device table slot or count");
    }
    // Tables: in range, aligned, not overlapping each other or the device table.
    let bt = (ext.blob_table_offset.get(), u64::from(ext.blob_table_size.get()));
    let ct = (ext.chunk_table_offset.get(), ext.chunk_table_size.get());
    let pt = (ext.prefetch_table_offset.get(), u64::from(ext.prefetch_table_size.get()));
    let dev_end = (DEVTABLE_OFFSET + nblobs * DEVICE_SIZE) as u64;
    for (name, (off, len), unit, field) in [
        ("blob table", bt, BLOB_ENTRY_SIZE as u64, 8),
        ("chunk table", ct, CHUNK_INFO_SIZE as u64, 24),
        ("prefetch table", pt, 4, 40),
    ] {
        if len == 0 {
            continue;
        }
        if len % unit != 0 || off < dev_end || off.checked_add(len).is_none_or(|e| e > size) {
            return err(eo + field, format!("{name} at {off}, {len} bytes"));
        }
    }
    if bt.1 != (nblobs * BLOB_ENTRY_SIZE) as u64 || (nblobs > 0 && bt.0 % BLOCK_SIZE != 0) {
        return err(eo + 16, format!("blob table of {} bytes for {nblobs} devices", bt.1));
    }
    let overlap = |a: (u64, u64), b: (u64, u64)| a.1 > 0 && b.1 > 0 && a.0 < b.0 + b.1 && b.0 < a.0 + a.1;
    if overlap(bt, ct) || overlap(bt, pt) || overlap(ct, pt) {
        return err(eo + 8, "blob, chunk and prefetch tables overlap");
    }

    let mut blobs = Vec::with_capacity(nblobs);
    for i in 0..nblobs {
        let at = (DEVTABLE_OFFSET + i * DEVICE_SIZE) as u64;
        let dev: Device = read(b, at, "device")?;
        let bat = bt.0 + (i * BLOB_ENTRY_SIZE) as u64;
        let e: BlobEntry = read(b, bat, "blob entry")?;
        let id = hex_id(&e.blob_id, bat)?;
        if dev.blob_id != e.blob_id {
            return err(
                at,
                format!("device {i} names blob {} but the blob table {id}", hex_id(&dev.blob_id, at)?),
            );
        }
        if e.blob_index.get() as usize != i || e.chunk_size.get() != chunk_size {
            return err(bat + 64, format!("blob {i}: index or chunk size disagrees"));
        }
        if blobs.iter().any(|b: &BlobSpec| b.id == id) {
            return err(bat, format!("blob {id} is listed twice"));
        }
        if u64::from(dev.blocks.get()) * BLOCK_SIZE != e.uncompressed_size.get() {
            return err(
                at + 64,
                format!("blob {i}: {} blocks for {} bytes", dev.blocks.get(), e.uncompressed_size.get()),
            );
        }
        blobs.push(BlobSpec {
            id,
            chunk_count: e.chunk_count.get(),
            features: e.features.get(),
            compression_algo: e.compression_algo.get(),
            digest_algo: e.digest_algo.get(),
            compressed_size: e.compressed_size.get(),
            uncompressed_size: e.uncompressed_size.get(),
            ci_compressor: e.ci_compressor.get(),
            ci_offset: e.ci_offset.get(),
            ci_compressed_size: e.ci_compressed_size.get(),
            ci_uncompressed_size: e.ci_uncompressed_size.get(),
            meta_digest: e.blob_meta_digest,
            meta_size: e.blob_meta_size.get(),
            toc_size: e.blob_toc_size.get(),
            toc_digest: e.blob_toc_digest,
        });
    }

    let mut chunk_table = Vec::with_capacity((ct.1 / CHUNK_INFO_SIZE as u64) as usize);
    for i in 0..ct.1 / CHUNK_INFO_SIZE as u64 {
        let at = ct.0 + i * CHUNK_INFO_SIZE as u64;
        let c: ChunkInfo = read(b, at, "chunk info")?;
        let Some(blob) = u8::try_from(c.blob_index.get()).ok().filter(|&x| usize::from(x) < nblobs) else {
            return err(at + 32, format!("chunk {i}: blob {} of {nblobs}", c.blob_index.get()));
        };
        let bl = &blobs[usize::from(blob)];
        let (uo, us) = (c.uncompressed_offset.get(), c.uncompressed_size.get());
        if c.index.get() >= bl.chunk_count
            || us == 0
            || us > chunk_size
            || uo % BLOCK_SIZE != 0
            || uo.checked_add(u64::from(us)).is_none_or(|e| e > bl.uncompressed_size)
        {
            return err(at, format!("chunk {i}: index {} or extent {uo}+{us} out of range", c.index.get()));
        }
        chunk_table.push(ChunkSpec {
            blob,
            ci: c.index.get(),
            digest: c.digest,
            compressed_offset: c.compressed_offset.get(),
            compressed_size: c.compressed_size.get(),
            uncompressed_offset: uo,
            uncompressed_size: us,
            flags: c.flags.get(),
        });
    }

    let meta = u64::from(sb.meta_blkaddr.get()) * BLOCK_SIZE;
    let build_time = (sb.build_time.get(), sb.build_time_nsec.get());
    let mut w = Walker {
        b,
        meta,
        chunk_size,
        build_time,
        nblobs,
        tree: Tree { inodes: Vec::new(), root: 0 },
        chunks: HashMap::new(),
        by_nid: HashMap::new(),
        nids: Vec::new(),
    };
    let root_nid = u64::from(sb.root_nid.get());
    let root = w.visit(root_nid, None)?;
    if !w.tree.inodes[root].is_dir() {
        return err(o + 14, "the root is not a directory");
    }
    w.tree.root = root;
    let mut prefetch = Vec::new();
    if pt.1 > 0 {
        for i in 0..pt.1 / 4 {
            let raw: zerocopy::little_endian::U32 = read(b, pt.0 + 4 * i, "prefetch entry")?;
            if let Some(&id) = w.by_nid.get(&u64::from(raw.get())) {
                prefetch.push(id);
            }
        }
    }
    let Walker { tree, chunks, nids, .. } = w;
    Ok(Bootstrap {
        summary: Summary {
            inodes: sb.inos.get(),
            build_time,
            chunk_size,
            flags: fl,
            root_nid: sb.root_nid.get(),
            meta_blkaddr: sb.meta_blkaddr.get(),
            blocks: sb.blocks.get(),
            size,
        },
        blobs,
        chunk_table,
        tree,
        chunks,
        nids,
        prefetch,
    })
}
