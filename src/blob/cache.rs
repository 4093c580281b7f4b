//! The chunk cache of one blob: a sparse data file in the bootstrap's block layout (each chunk
//! at its uncompressed offset, as the kernel EROFS test lays devices out) and a map with one
//! byte per chunk, 1 when the chunk's bytes in the data file are verified and durable.
//!
//! Crash safety: chunk bytes are written and `fdatasync`ed before their map bytes are set, so a
//! crash or `kill -9` at any moment leaves at worst a chunk written but not recorded (fetched
//! again later), never one recorded but not written. A recorded chunk is still verified against
//! its digest the first time a mount reads it, which catches a file changed behind our back.
//! Written chunks are *staged* ([`BlobCache::stage`]) and recorded in batches
//! ([`BlobCache::sync`]: one `fdatasync` for every chunk staged since the last), so that a
//! reader never waits for the disk: verified bytes are served from the data file (the page
//! cache) before they are durable, and only their record waits.
//!
//! Files live at `DIR/blobs/<blob hex>/<layout>.data` and `.map`, where `<layout>` is a hash
//! of the blob's chunk table: artifacts that lay the same layer out differently (another chunk
//! size) never share a data file.
//!
//! Sharing and pruning: a mount holds a shared `flock` on each data file it uses, for as long
//! as it runs; [`prune`] removes only files it can lock exclusively, so never those of a live
//! mount. A mount that opened a file just as it was pruned notices (the path no longer names
//! its file) and opens the new one.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The cache files of one blob.
pub struct BlobCache {
    data: File,
    map: File,
    path: PathBuf,
    /// Chunks written and verified, to be recorded after the next `fdatasync`.
    staged: Mutex<Vec<u32>>,
}

impl BlobCache {
    /// Open (or create) the cache files of a blob with `chunks` chunks in an address space of
    /// `size` bytes; returns the cache and which chunks it records as good.
    pub fn open(
        dir: &Path,
        blob_hex: &str,
        layout: &str,
        size: u64,
        chunks: usize,
    ) -> std::io::Result<(Self, Vec<bool>)> {
        let d = dir.join("blobs").join(blob_hex);
        std::fs::create_dir_all(&d)?;
        let path = d.join(format!("{layout}.data"));
        let data = loop {
            let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
            lock(&f, libc::LOCK_SH)?;
            if same_file(&f, &path) {
                break f;
            }
        };
        if data.metadata()?.len() != size {
            data.set_len(size)?;
        }
        let map = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(d.join(format!("{layout}.map")))?;
        // The map's time is the cache's last use, for pruning the least recently used first.
        let _ = map.set_modified(std::time::SystemTime::now());
        let mut bytes = vec![0u8; chunks];
        let n = read_full(&map, &mut bytes, 0)?;
        if map.metadata()?.len() != chunks as u64 {
            map.set_len(chunks as u64)?;
        }
        let good =
            bytes.iter().take(n).map(|&b| b == 1).chain(std::iter::repeat(false)).take(chunks).collect();
        Ok((BlobCache { data, map, path, staged: Mutex::new(Vec::new()) }, good))
    }

    /// The data file, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read `buf.len()` bytes of the data file at `offset`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let n = read_full(&self.data, buf, offset)?;
        if n < buf.len() {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "cache file is short"));
        }
        Ok(())
    }

    /// Write chunk bytes at their offset (not yet durable, not yet recorded).
    pub fn write(&self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        self.data.write_all_at(bytes, offset)
    }

    /// Make the written chunks durable, then record them as good (now: staged and synced).
    pub fn commit(&self, cis: &[u32]) -> std::io::Result<()> {
        self.stage(cis);
        self.sync().map(|_| ()).map_err(|(e, _)| e)
    }

    /// Chunks written and verified: recorded by the next [`BlobCache::sync`].
    pub fn stage(&self, cis: &[u32]) {
        if cis.is_empty() {
            return;
        }
        self.staged.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(cis);
    }

    /// Whether chunks are staged and not yet recorded.
    pub fn has_staged(&self) -> bool {
        !self.staged.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// Make every chunk staged so far durable (one `fdatasync` of the data file), then record
    /// them in the map (runs of neighbours in one write). Returns how many were recorded; on
    /// an error, the chunks not recorded, which the caller must stop trusting.
    pub fn sync(&self) -> Result<usize, (std::io::Error, Vec<u32>)> {
        let mut cis = std::mem::take(&mut *self.staged.lock().unwrap_or_else(|e| e.into_inner()));
        if cis.is_empty() {
            return Ok(0);
        }
        if let Err(e) = self.data.sync_data() {
            return Err((e, cis));
        }
        cis.sort_unstable();
        cis.dedup();
        let ones = [1u8; 4096];
        let mut i = 0;
        while i < cis.len() {
            let mut j = i + 1;
            while j < cis.len() && cis[j] == cis[j - 1] + 1 && j - i < ones.len() {
                j += 1;
            }
            if let Err(e) = self.map.write_all_at(&ones[..j - i], u64::from(cis[i])) {
                return Err((e, cis[i..].to_vec()));
            }
            i = j;
        }
        Ok(cis.len())
    }

    /// Record a chunk as not good (its bytes failed their digest).
    pub fn forget(&self, ci: u32) -> std::io::Result<()> {
        self.map.write_all_at(&[0], u64::from(ci))
    }
}

/// `flock(2)` the file with `op`; `Ok(false)` when `LOCK_NB` was asked and another holds it.
pub fn try_lock(f: &File, op: i32) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: the descriptor belongs to `f`, open for the whole call; flock only reads it.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(e),
        }
    }
}

fn lock(f: &File, op: i32) -> std::io::Result<()> {
    try_lock(f, op).map(|_| ())
}

/// Does `path` still name the open file `f`?
fn same_file(f: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (f.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The cache files of one layout of one blob.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Entry {
    /// The blob's sha256 (hex).
    pub blob: String,
    pub layout: String,
    /// Bytes the files take on disk (the data file is sparse).
    pub disk_bytes: u64,
    /// Chunks recorded as good.
    pub chunks: u64,
    /// Seconds since the epoch of the last use (a mount opening it, or a write).
    pub modified: u64,
    /// A mount is using it.
    pub in_use: bool,
}

/// Every blob cache under `dir`, least recently used first.
pub fn list(dir: &Path) -> std::io::Result<Vec<Entry>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let blobs = dir.join("blobs");
    let Ok(rd) = std::fs::read_dir(&blobs) else { return Ok(out) };
    for b in rd {
        let b = b?;
        let Ok(files) = std::fs::read_dir(b.path()) else { continue };
        for f in files {
            let p = f?.path();
            if p.extension().is_none_or(|e| e != "data") {
                continue;
            }
            let Ok(data) = File::open(&p) else { continue };
            let m = data.metadata()?;
            let map = p.with_extension("map");
            let recorded = std::fs::read(&map).map(|b| b.iter().filter(|&&x| x == 1).count()).unwrap_or(0);
            let map_meta = std::fs::metadata(&map).ok();
            let in_use = !try_lock(&data, libc::LOCK_EX | libc::LOCK_NB)?;
            out.push(Entry {
                blob: b.file_name().to_string_lossy().into_owned(),
                layout: p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
                disk_bytes: m.blocks() * 512 + map_meta.as_ref().map_or(0, |m| m.blocks() * 512),
                chunks: recorded as u64,
                modified: m.mtime().max(map_meta.map_or(0, |m| m.mtime())).max(0) as u64,
                in_use,
            });
        }
    }
    out.sort_by_key(|e| (e.modified, e.blob.clone(), e.layout.clone()));
    Ok(out)
}

/// Remove blob caches no mount is using, least recently used first, until what stays takes
/// at most `keep_bytes` on disk (`None`: remove every unused one). Returns what was removed.
pub fn prune(dir: &Path, keep_bytes: Option<u64>) -> std::io::Result<Vec<Entry>> {
    let entries = list(dir)?;
    let mut total: u64 = entries.iter().map(|e| e.disk_bytes).sum();
    let mut removed = Vec::new();
    for e in entries {
        if keep_bytes.is_some_and(|k| total <= k) {
            break;
        }
        if e.in_use {
            continue;
        }
        let data_path = dir.join("blobs").join(&e.blob).join(format!("{}.data", e.layout));
        let Ok(data) = File::open(&data_path) else { continue };
        // Held while the files go: a mount opening them now waits, then sees them gone.
        if !try_lock(&data, libc::LOCK_EX | libc::LOCK_NB)? || !same_file(&data, &data_path) {
            continue;
        }
        // The record first: a data file without one is never trusted.
        match std::fs::remove_file(data_path.with_extension("map")) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        std::fs::remove_file(&data_path)?;
        let _ = std::fs::remove_dir(data_path.parent().unwrap_or(dir));
        total = total.saturating_sub(e.disk_bytes);
        removed.push(e);
    }
    Ok(removed)
}

/// Read as much of `buf` as the file holds at `offset` (the gzip engine's positional read).
fn read_full(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    crate::gzip::ReadAt::read_at(f, offset, buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopening_and_only_committed_chunks_count() {
        let dir = tempfile::tempdir().unwrap();
        let (c, good) = BlobCache::open(dir.path(), "ab", "l1", 3 * 4096, 3).unwrap();
        assert_eq!(good, vec![false; 3]);
        c.write(4096, &[7; 4096]).unwrap();
        c.write(8192, &[8; 10]).unwrap();
        c.commit(&[1]).unwrap();
        drop(c);
        let (c, good) = BlobCache::open(dir.path(), "ab", "l1", 3 * 4096, 3).unwrap();
        assert_eq!(good, vec![false, true, false]);
        let mut buf = [0; 4096];
        c.read(4096, &mut buf).unwrap();
        assert_eq!(buf, [7; 4096]);
        c.forget(1).unwrap();
        let (_, good) = BlobCache::open(dir.path(), "ab", "l1", 3 * 4096, 3).unwrap();
        assert_eq!(good, vec![false; 3]);
        // Another layout of the same blob has files of its own.
        let (_, good) = BlobCache::open(dir.path(), "ab", "l2", 4096, 1).unwrap();
        assert_eq!(good, vec![false]);
    }

    #[test]
    fn staged_chunks_are_recorded_only_by_a_sync() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = BlobCache::open(dir.path(), "ab", "l1", 8 * 4096, 8).unwrap();
        for ci in [5u32, 1, 2, 3, 7] {
            c.write(u64::from(ci) * 4096, &[ci as u8; 4096]).unwrap();
        }
        c.stage(&[5, 1, 2]);
        c.stage(&[3, 2]);
        assert!(c.has_staged());
        // Staged, not synced: a crash now records nothing.
        let (_, good) = BlobCache::open(dir.path(), "ab", "l1", 8 * 4096, 8).unwrap();
        assert_eq!(good, vec![false; 8]);
        assert_eq!(c.sync().unwrap(), 4);
        assert!(!c.has_staged());
        assert_eq!(c.sync().unwrap(), 0);
        let (_, good) = BlobCache::open(dir.path(), "ab", "l1", 8 * 4096, 8).unwrap();
        assert_eq!(good, [false, true, true, true, false, true, false, false]);
    }

    #[test]
    fn prune_removes_only_what_no_mount_holds() {
        let dir = tempfile::tempdir().unwrap();
        let (held, _) = BlobCache::open(dir.path(), "aa", "l1", 1 << 20, 2).unwrap();
        held.write(0, &[1; 65536]).unwrap();
        held.commit(&[0]).unwrap();
        let (free, _) = BlobCache::open(dir.path(), "bb", "l1", 1 << 20, 2).unwrap();
        free.write(0, &[2; 65536]).unwrap();
        free.commit(&[0, 1]).unwrap();
        drop(free);
        let listed = list(dir.path()).unwrap();
        assert_eq!(listed.len(), 2);
        let by = |b: &str| listed.iter().find(|e| e.blob == b).unwrap().clone();
        assert!(by("aa").in_use && !by("bb").in_use);
        assert_eq!((by("aa").chunks, by("bb").chunks), (1, 2));
        assert!(by("bb").disk_bytes >= 65536 && by("bb").disk_bytes < 1 << 20, "sparse: {:?}", by("bb"));
        // Everything unused goes; the held one stays and still works.
        let removed = prune(dir.path(), None).unwrap();
        assert_eq!(removed.iter().map(|e| e.blob.as_str()).collect::<Vec<_>>(), ["bb"]);
        assert!(!dir.path().join("blobs/bb").exists());
        let mut buf = [0; 4];
        held.read(0, &mut buf).unwrap();
        assert_eq!(buf, [1; 4]);
        // Under a size to keep, nothing goes.
        let (again, good) = BlobCache::open(dir.path(), "bb", "l1", 1 << 20, 2).unwrap();
        assert_eq!(good, vec![false, false], "a pruned cache starts empty");
        drop(again);
        assert!(prune(dir.path(), Some(u64::MAX)).unwrap().is_empty());
        drop(held);
        assert_eq!(prune(dir.path(), None).unwrap().len(), 2);
        assert!(list(dir.path()).unwrap().is_empty());
    }
}
