//! The read-only filesystem that serves a bootstrap through FUSE (on `fuser`).
//!
//! The tree comes from [`crate::rafs::reader`]; file data from [`crate::blob`], chunk by chunk,
//! each verified before a byte of it is returned. Attributes are the image's own: uid, gid,
//! mode, mtime with nanoseconds, rdev, nlink; inode numbers are the EROFS nids (what the kernel
//! shows for the same bootstrap; the root is 1), so they are stable across mounts and hardlinks
//! share one. The image never changes, so the kernel may cache entries, attributes and pages
//! for as long as it likes.
//!
//! Owns nothing on disk. Calls `blob`, `rafs` and `tree`.

pub mod trace;

use crate::blob::{BlobSet, Piece};
use crate::rafs::reader::{Bootstrap, ChunkRef};
use crate::tar::EntryKind;
use crate::tree::{InodeId, Tree};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, KernelConfig, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyXattr, Request,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

/// Chunks fetched ahead of a sequential reader, beyond the one it is reading.
const READAHEAD_CHUNKS: u64 = 2;
/// Threads fetching ahead of readers.
const READAHEAD_THREADS: usize = 2;
/// Bytes (decompressed) of the layer's next data fetched beside a read that misses.
const FOLLOWING_BYTES: u64 = 2 << 20;

/// How long the kernel may cache entries and attributes: the image is immutable.
const TTL: Duration = Duration::from_secs(24 * 3600);
const BLOCK: u64 = 4096;

/// A directory entry: the offset of the next one, the name, the inode.
type DirEntry<'a> = (u64, &'a [u8], InodeId);

/// A mounted image.
pub struct ImageFs {
    tree: Tree,
    chunks: HashMap<InodeId, Vec<ChunkRef>>,
    chunk_size: u64,
    /// FUSE inode number of each tree inode, and back.
    ino: Vec<u64>,
    id_of: HashMap<u64, InodeId>,
    /// Each inode's link count: its names for files, 2 + subdirectories for directories.
    nlink: Vec<u32>,
    /// A parent and a name of each inode (the first found), for `..` and for messages.
    parent: Vec<InodeId>,
    name: Vec<Vec<u8>>,
    blobs: Arc<BlobSet>,
    total_bytes: u64,
    /// Whether any inode has an extended attribute. When none has, `getxattr` answers ENOSYS
    /// once and the kernel stops asking: no round trip per `ls -l` ACL probe or overlayfs
    /// opaque check.
    has_xattrs: bool,
    /// Files read from at least once (for the counters).
    touched: Vec<AtomicBool>,
    /// Where each file's last read ended: a read starting there is sequential.
    last_end: Vec<AtomicU64>,
    /// Chunks to fetch ahead of sequential readers, for the readahead thread.
    ahead: std::sync::Mutex<std::sync::mpsc::SyncSender<(u8, Vec<u32>)>>,
    /// The reads recorded for a start-up trace, when asked for.
    log: Option<trace::ReadLog>,
    /// A prefetch list is being fetched: a miss then queues nothing beside it (the list says
    /// what the start reads; the layer's next data would only take the link from it).
    prefetching: AtomicBool,
}

impl ImageFs {
    pub fn new(bootstrap: Bootstrap, blobs: Arc<BlobSet>) -> ImageFs {
        let Bootstrap { tree, chunks, nids, summary, .. } = bootstrap;
        let n = tree.inodes.len();
        let ino: Vec<u64> =
            (0..n).map(|id| if id == 0 { 1 } else { nids.get(id).copied().unwrap_or(0) }).collect();
        let id_of = ino.iter().enumerate().map(|(id, &i)| (i, id)).collect();
        let mut parent = vec![0; n];
        let mut name = vec![Vec::new(); n];
        let mut seen = vec![false; n];
        let mut todo = vec![0usize];
        seen[0] = true;
        while let Some(d) = todo.pop() {
            for (child_name, &(c, _)) in &tree.inodes[d].children {
                if c < n && !seen[c] {
                    seen[c] = true;
                    parent[c] = d;
                    name[c] = child_name.clone();
                    if tree.inodes[c].is_dir() {
                        todo.push(c);
                    }
                }
            }
        }
        let nlink = tree
            .inodes
            .iter()
            .map(|i| {
                if i.is_dir() {
                    2 + i
                        .children
                        .values()
                        .filter(|(c, _)| tree.inodes.get(*c).is_some_and(|x| x.is_dir()))
                        .count() as u32
                } else {
                    i.nlink.max(1)
                }
            })
            .collect();
        let total_bytes = tree.inodes.iter().filter(|i| i.kind == EntryKind::File).map(|i| i.size).sum();
        let has_xattrs = tree.inodes.iter().any(|i| !i.xattrs.is_empty());
        let (ahead, todo) = std::sync::mpsc::sync_channel::<(u8, Vec<u32>)>(16);
        let todo = Arc::new(Mutex::new(todo));
        for _ in 0..READAHEAD_THREADS {
            let (worker, todo) = (blobs.clone(), todo.clone());
            let spawned = std::thread::Builder::new().name("zran-readahead".into()).spawn(move || {
                loop {
                    let job = match todo.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => break,
                    };
                    let Ok((b, cis)) = job else { break };
                    if let Err(e) = worker.ensure(b, &cis) {
                        tracing::debug!("readahead: {e}");
                    }
                }
            });
            if let Err(e) = spawned {
                tracing::warn!("no readahead thread: {e}");
            }
        }
        ImageFs {
            tree,
            chunks,
            chunk_size: u64::from(summary.chunk_size),
            ino,
            id_of,
            nlink,
            parent,
            name,
            blobs,
            total_bytes,
            has_xattrs,
            touched: (0..n).map(|_| AtomicBool::new(false)).collect(),
            last_end: (0..n).map(|_| AtomicU64::new(0)).collect(),
            ahead: std::sync::Mutex::new(ahead),
            log: None,
            prefetching: AtomicBool::new(false),
        }
    }

    /// Record the reads of the next `window` for a start-up trace ([`ImageFs::traced`]).
    pub fn record_reads(&mut self, window: Duration) {
        self.log = Some(trace::ReadLog::new(window));
    }

    /// The log of reads, when recording.
    pub fn read_log(&self) -> Option<&trace::ReadLog> {
        self.log.as_ref()
    }

    /// The files recorded so far: path, size, milliseconds to the first read, chunks read.
    pub fn traced(&self) -> Vec<(String, u64, u64, Vec<u32>)> {
        let Some(log) = &self.log else { return Vec::new() };
        log.files()
            .into_iter()
            .map(|f| (self.path_of(f.id), self.tree.inodes[f.id].size, f.at_ms, f.chunks))
            .collect()
    }

    /// The chunk size of the image's files.
    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    fn id(&self, ino: INodeNo) -> Option<InodeId> {
        self.id_of.get(&ino.0).copied()
    }

    /// The path of an inode, for messages.
    pub fn path_of(&self, mut id: InodeId) -> String {
        let mut parts = Vec::new();
        while id != 0 && parts.len() < 4096 {
            parts.push(String::from_utf8_lossy(&self.name[id]).into_owned());
            id = self.parent[id];
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }

    fn kind(&self, id: InodeId) -> FileType {
        match self.tree.inodes[id].kind {
            EntryKind::Directory => FileType::Directory,
            EntryKind::Symlink => FileType::Symlink,
            EntryKind::Char => FileType::CharDevice,
            EntryKind::Block => FileType::BlockDevice,
            EntryKind::Fifo => FileType::NamedPipe,
            EntryKind::File | EntryKind::Hardlink => FileType::RegularFile,
        }
    }

    fn attr(&self, id: InodeId) -> FileAttr {
        let i = &self.tree.inodes[id];
        let kind = self.kind(id);
        let rdev = match i.kind {
            EntryKind::Char | EntryKind::Block => libc::makedev(i.devmajor, i.devminor) as u32,
            _ => 0,
        };
        let size = match i.kind {
            EntryKind::File | EntryKind::Hardlink => i.size,
            EntryKind::Symlink => i.link.len() as u64,
            EntryKind::Directory => BLOCK,
            _ => 0,
        };
        let (s, ns) = i.mtime.unwrap_or((0, 0));
        let mtime = if s >= 0 {
            UNIX_EPOCH + Duration::new(s as u64, ns)
        } else {
            UNIX_EPOCH.checked_sub(Duration::new(s.unsigned_abs(), 0)).unwrap_or(UNIX_EPOCH)
                + Duration::new(0, ns)
        };
        FileAttr {
            ino: INodeNo(self.ino[id]),
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind,
            perm: (i.mode & 0o7777) as u16,
            nlink: self.nlink[id],
            uid: i.uid as u32,
            gid: i.gid as u32,
            rdev,
            blksize: BLOCK as u32,
            flags: 0,
        }
    }

    /// The pieces of chunks that bytes `[offset, end)` of file `id` are made of.
    fn pieces(&self, id: InodeId, offset: u64, end: u64) -> Result<Vec<Piece>, String> {
        let refs = self.chunks.get(&id).map(Vec::as_slice).unwrap_or(&[]);
        let cs = self.chunk_size.max(1);
        let mut out = Vec::new();
        let mut at = offset;
        while at < end {
            let k = at / cs;
            let r = refs.get(k as usize).ok_or_else(|| format!("no chunk {k} (file has {})", refs.len()))?;
            let stop = end.min((k + 1) * cs);
            out.push(Piece { blob: r.blob, ci: r.ci, offset: (at - k * cs) as u32, len: (stop - at) as u32 });
            at = stop;
        }
        Ok(out)
    }

    /// Read up to `size` bytes of file `id` at `offset`.
    pub fn read_file(&self, id: InodeId, offset: u64, size: u32) -> Result<Vec<u8>, String> {
        let mut buf = Vec::new();
        self.read_into(id, offset, size, &mut buf)?;
        Ok(buf)
    }

    /// Read up to `size` bytes of file `id` at `offset` into `buf` (a buffer to reuse: its
    /// contents are replaced).
    pub fn read_into(&self, id: InodeId, offset: u64, size: u32, buf: &mut Vec<u8>) -> Result<(), String> {
        buf.clear();
        let i = &self.tree.inodes[id];
        let end = i.size.min(offset.saturating_add(u64::from(size)));
        if offset >= end {
            return Ok(());
        }
        if !self.touched[id].swap(true, Relaxed) {
            self.blobs.stats.files_read.fetch_add(1, Relaxed);
            self.blobs.stats.file_bytes_read.fetch_add(i.size, Relaxed);
        }
        let cs = self.chunk_size.max(1);
        if let Some(log) = &self.log {
            log.read(id, (offset / cs) as u32, ((end - 1) / cs) as u32);
        }
        let pieces = self.pieces(id, offset, end)?;
        // A read that has to fetch: what follows it in the layer (the next files of the same
        // directory, as a start reads them) is fetched beside it, in the background.
        if let Some(p) = pieces.first()
            && !self.prefetching.load(Relaxed)
            && self.blobs.must_fetch(p.blob, p.ci)
        {
            let next = self.blobs.following(p.blob, p.ci, FOLLOWING_BYTES);
            if !next.is_empty()
                && let Ok(tx) = self.ahead.lock()
                && tx.try_send((p.blob, next.clone())).is_ok()
            {
                self.blobs.stats.readahead_chunks.fetch_add(next.len() as u64, Relaxed);
            }
        }
        let enters_a_chunk = offset.is_multiple_of(cs) || offset / cs != (end - 1) / cs;
        if offset > 0 && self.last_end[id].swap(end, Relaxed) == offset && enters_a_chunk {
            self.read_ahead(id, end);
        } else {
            self.last_end[id].store(end, Relaxed);
        }
        buf.resize((end - offset) as usize, 0);
        self.blobs.read(&pieces, buf).map_err(|e| e.to_string())
    }

    /// Queue the chunks after byte `end` of a file read sequentially (when the queue is full
    /// the reader is ahead of the network anyway, and nothing is queued).
    fn read_ahead(&self, id: InodeId, end: u64) {
        let refs = self.chunks.get(&id).map(Vec::as_slice).unwrap_or(&[]);
        let cs = self.chunk_size.max(1);
        let first = end.div_ceil(cs);
        let next = refs.iter().skip(first as usize).take(READAHEAD_CHUNKS as usize);
        if let Ok(tx) = self.ahead.lock() {
            for (b, cis) in by_blob(next) {
                let n = cis.len() as u64;
                if tx.try_send((b, cis)).is_ok() {
                    self.blobs.stats.readahead_chunks.fetch_add(n, Relaxed);
                }
            }
        }
    }

    /// Every chunk of the files named (paths relative to the root), in the background.
    pub fn prefetch(&self, ids: &[InodeId]) {
        let refs = ids.iter().flat_map(|id| self.chunks.get(id).map(Vec::as_slice).unwrap_or(&[]));
        // Batches of about PREFETCH_BATCH bytes, in the list's order per blob, fetched by a few
        // threads at once: each batch is a few large range requests (near chunks coalesce),
        // and a reader waiting for one chunk waits for its batch only.
        let mut batches: Vec<(u8, Vec<u32>)> = Vec::new();
        let mut by: Vec<(u8, Vec<u32>)> = by_blob(refs).into_iter().collect();
        by.sort_by_key(|(b, _)| *b);
        for (b, cis) in by {
            let (mut cur, mut bytes) = (Vec::new(), 0u64);
            for ci in cis {
                bytes += self.blobs.chunk_len(b, ci);
                cur.push(ci);
                if bytes >= PREFETCH_BATCH {
                    batches.push((b, std::mem::take(&mut cur)));
                    bytes = 0;
                }
            }
            if !cur.is_empty() {
                batches.push((b, cur));
            }
        }
        // Interleave the blobs (the batches are in blob order), so that every layer's first
        // batch goes out at once.
        let mut order: Vec<usize> = (0..batches.len()).collect();
        let mut rank = HashMap::new();
        let keys: Vec<(usize, u8)> = batches
            .iter()
            .map(|(b, _)| {
                let r = rank.entry(*b).or_insert(0usize);
                *r += 1;
                (*r, *b)
            })
            .collect();
        order.sort_by_key(|&i| keys[i]);
        let stats = &self.blobs.stats;
        self.prefetching.store(true, Relaxed);
        stats.prefetch_chunks.fetch_add(batches.iter().map(|(_, c)| c.len() as u64).sum(), Relaxed);
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..PREFETCH_THREADS.min(order.len()) {
                s.spawn(|| {
                    while let Some(&i) = order.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
                        let (b, cis) = &batches[i];
                        match self.blobs.ensure(*b, cis) {
                            Ok(()) => _ = stats.prefetched_chunks.fetch_add(cis.len() as u64, Relaxed),
                            Err(e) => tracing::warn!("prefetch: {e}"),
                        }
                    }
                });
            }
        });
        self.prefetching.store(false, Relaxed);
    }

    /// A directory's entries from `offset` on: `.`, `..`, then the children by name, each
    /// with the offset of the entry after it.
    fn entries(&self, ino: INodeNo, offset: u64) -> Result<Vec<DirEntry<'_>>, Errno> {
        let id = self.id(ino).ok_or(Errno::ENOENT)?;
        let dir = &self.tree.inodes[id];
        if !dir.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let dots = [(b".".as_slice(), id), (b"..".as_slice(), self.parent[id])];
        Ok(dots
            .into_iter()
            .chain(dir.children.iter().map(|(n, &(c, _))| (n.as_slice(), c)))
            .enumerate()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .filter(|(_, (_, c))| *c < self.tree.inodes.len())
            .map(|(i, (name, c))| (i as u64 + 1, name, c))
            .collect())
    }
}

/// Bytes (decompressed) of chunks one prefetch request batch claims.
const PREFETCH_BATCH: u64 = 2 << 20;
/// Prefetch batches in flight at once.
const PREFETCH_THREADS: usize = 4;

/// `Filesystem` for a shared [`ImageFs`] (shared so that prefetch threads can use it too).
pub struct Served(pub Arc<ImageFs>);

impl Filesystem for Served {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        use fuser::InitFlags;
        let _ = config.add_capabilities(
            InitFlags::FUSE_PARALLEL_DIROPS
                | InitFlags::FUSE_CACHE_SYMLINKS
                | InitFlags::FUSE_DO_READDIRPLUS
                | InitFlags::FUSE_READDIRPLUS_AUTO,
        );
        let _ = config.set_max_readahead(1 << 20);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let fs = &self.0;
        let Some(p) = fs.id(parent) else { return reply.error(Errno::ENOENT) };
        match fs.tree.inodes[p].children.get(name.as_bytes()) {
            Some(&(c, _)) if c < fs.tree.inodes.len() => reply.entry(&TTL, &fs.attr(c), Generation(0)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.0.id(ino) {
            Some(id) => reply.attr(&TTL, &self.0.attr(id)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.0.id(ino).map(|id| &self.0.tree.inodes[id]) {
            Some(i) if i.kind == EntryKind::Symlink => reply.data(&i.link),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    /// No `open` round trip per file: ENOSYS once, and the kernel opens every file itself from
    /// then on, with `FOPEN_KEEP_CACHE`, and sends no `release` either (fs/fuse/file.c,
    /// `fuse_file_open`). Writers never get this far: the mount is read-only, so the VFS
    /// answers EROFS to any open for writing.
    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS)
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let fs = &self.0;
        let Some(id) = fs.id(ino) else { return reply.error(Errno::ENOENT) };
        if fs.tree.inodes[id].is_dir() {
            return reply.error(Errno::EISDIR);
        }
        // Each FUSE thread reads into a buffer of its own, kept from one read to the next (a
        // read is at most max_pages, 1 MiB): no pages to fault in and zero per read.
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let mut buf = BUF.with(std::cell::RefCell::take);
        match fs.read_into(id, offset, size, &mut buf) {
            Ok(()) => reply.data(&buf),
            Err(e) => {
                fs.blobs.stats.read_errors.fetch_add(1, Relaxed);
                tracing::error!(file = %fs.path_of(id), offset, size, "read failed: {e}");
                reply.error(Errno::EIO)
            }
        }
        if buf.capacity() <= 4 << 20 {
            BUF.with(|b| *b.borrow_mut() = buf);
        }
    }

    /// No `opendir`/`releasedir` round trips per directory: ENOSYS once, and the kernel opens
    /// directories itself from then on, with `FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR` (it keeps the
    /// entries it read: the image never changes).
    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS)
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let fs = &self.0;
        match fs.entries(ino, offset) {
            Err(e) => reply.error(e),
            Ok(entries) => {
                for (i, name, c) in entries {
                    if reply.add(INodeNo(fs.ino[c]), i, fs.kind(c), OsStr::from_bytes(name)) {
                        break;
                    }
                }
                reply.ok()
            }
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let fs = &self.0;
        match fs.entries(ino, offset) {
            Err(e) => reply.error(e),
            Ok(entries) => {
                for (i, name, c) in entries {
                    let attr = fs.attr(c);
                    if reply.add(attr.ino, i, OsStr::from_bytes(name), &TTL, &attr, Generation(0)) {
                        break;
                    }
                }
                reply.ok()
            }
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let fs = &self.0;
        reply.statfs(
            fs.total_bytes.div_ceil(BLOCK),
            0,
            0,
            fs.tree.inodes.len() as u64,
            0,
            BLOCK as u32,
            255,
            BLOCK as u32,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if !self.0.has_xattrs {
            // The kernel remembers ENOSYS for the connection and answers EOPNOTSUPP itself from
            // then on, which readers take as "no attribute" (fs/fuse/xattr.c).
            return reply.error(Errno::ENOSYS);
        }
        let Some(id) = self.0.id(ino) else { return reply.error(Errno::ENOENT) };
        match self.0.tree.inodes[id].xattrs.get(name.as_bytes()) {
            None => reply.error(Errno::ENODATA),
            Some(v) => xattr_reply(v, size, reply),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let Some(id) = self.0.id(ino) else { return reply.error(Errno::ENOENT) };
        let mut list = Vec::new();
        for k in self.0.tree.inodes[id].xattrs.keys() {
            list.extend_from_slice(k);
            list.push(0);
        }
        xattr_reply(&list, size, reply)
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: fuser::ReplyEmpty) {
        match self.0.id(ino) {
            Some(_) => reply.ok(),
            None => reply.error(Errno::ENOENT),
        }
    }
}

/// Chunk references grouped by blob, each chunk once, in first-seen order.
fn by_blob<'a>(refs: impl Iterator<Item = &'a ChunkRef>) -> HashMap<u8, Vec<u32>> {
    let mut out: HashMap<u8, Vec<u32>> = HashMap::new();
    for r in refs {
        let v = out.entry(r.blob).or_default();
        if !v.contains(&r.ci) {
            v.push(r.ci);
        }
    }
    out
}

fn xattr_reply(value: &[u8], size: u32, reply: ReplyXattr) {
    if size == 0 {
        reply.size(value.len() as u32)
    } else if (size as usize) < value.len() {
        reply.error(Errno::ERANGE)
    } else {
        reply.data(value)
    }
}
