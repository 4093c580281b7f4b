//! The chunk cache of one blob: a sparse data file in the bootstrap's block layout (each chunk
//! at its uncompressed offset, as the kernel EROFS test lays devices out) and a map with one
//! byte per chunk, 1 when the chunk's bytes in the data file are verified and durable.
//!
//! Crash safety: chunk bytes are written and `fdatasync`ed before their map bytes are set, so a
//! crash or `kill -9` at any moment leaves at worst a chunk written but not recorded (fetched
//! again later), never one recorded but not written. A recorded chunk is still verified against
//! its digest the first time a mount reads it, which catches a file changed behind our back.
//!
//! Files live at `DIR/blobs/<blob hex>/<layout>.data` and `.map`, where `<layout>` is a hash
//! of the blob's chunk table: artifacts that lay the same layer out differently (another chunk
//! size) never share a data file.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The cache files of one blob.
pub struct BlobCache {
    data: File,
    map: File,
    path: PathBuf,
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
        let data = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        if data.metadata()?.len() != size {
            data.set_len(size)?;
        }
        let map = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(d.join(format!("{layout}.map")))?;
        let mut bytes = vec![0u8; chunks];
        let n = read_full(&map, &mut bytes, 0)?;
        if map.metadata()?.len() != chunks as u64 {
            map.set_len(chunks as u64)?;
        }
        let good =
            bytes.iter().take(n).map(|&b| b == 1).chain(std::iter::repeat(false)).take(chunks).collect();
        Ok((BlobCache { data, map, path }, good))
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

    /// Make the written chunks durable, then record them as good.
    pub fn commit(&self, cis: &[u32]) -> std::io::Result<()> {
        if cis.is_empty() {
            return Ok(());
        }
        self.data.sync_data()?;
        for &ci in cis {
            self.map.write_all_at(&[1], u64::from(ci))?;
        }
        Ok(())
    }

    /// Record a chunk as not good (its bytes failed their digest).
    pub fn forget(&self, ci: u32) -> std::io::Result<()> {
        self.map.write_all_at(&[0], u64::from(ci))
    }
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
}
