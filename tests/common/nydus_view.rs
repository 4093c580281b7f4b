//! What Nydus's own parsers (the crates.io `nydus-rafs`, `nydus-storage`) see of a RAFS v6
//! bootstrap, in the truth's terms: for the tests that read zran's output with them
//! (`tests/convert.rs`, `tests/nydus_oracle.rs`). Nydus's log printed to stderr, a blob file
//! read as nydusd reads its backend, each path's attributes, the whole tree walked and its
//! hardlinks checked against the truth, a chunk's blob.meta entry against the bootstrap's. A
//! file's content is each test's own.

#![allow(dead_code)]

use crate::common::truth::{hardlink_groups, truth};
use base64::Engine as _;
use nydus_rafs::metadata::{RafsInodeExt, RafsSuper};
use nydus_storage::backend::{BackendResult, BlobReader};
use nydus_storage::device::BlobChunkInfo;
use nydus_storage::meta::BlobCompressionContextInfo;
use nydus_utils::metrics::BackendMetrics;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Nydus explains what it rejects only through `log`: print it, so a failure says why.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }

    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("nydus {}: {}", r.level(), r.args());
        }
    }

    fn flush(&self) {}
}

/// Nydus's warnings and errors to stderr (once per test binary; later calls do nothing).
pub fn log_to_stderr() {
    let _ = log::set_logger(&StderrLog).map(|()| log::set_max_level(log::LevelFilter::Warn));
}

/// A file read the way nydusd reads a blob from its backend.
pub struct FileReader {
    pub file: std::fs::File,
    pub metrics: BackendMetrics,
}

impl BlobReader for FileReader {
    fn blob_size(&self) -> BackendResult<u64> {
        Ok(self.file.metadata().unwrap().len())
    }

    fn try_read(&self, buf: &mut [u8], offset: u64) -> BackendResult<usize> {
        Ok(self.file.read_at(buf, offset).unwrap())
    }

    fn metrics(&self) -> &BackendMetrics {
        &self.metrics
    }
}

/// One path as the truth has it, but for a file's size and content: type, mode, owner,
/// mtime, xattrs, a symlink's target, a device's numbers.
pub fn attributes(name: &str, inode: &dyn RafsInodeExt, path: &Path) -> Value {
    let attr = inode.get_attr();
    let kind = match attr.mode & 0o170000 {
        0o040000 => "dir",
        0o100000 => "file",
        0o120000 => "symlink",
        0o020000 => "char",
        0o060000 => "block",
        0o010000 => "fifo",
        0o140000 => "socket",
        m => panic!("{name} {}: mode {m:o}", path.display()),
    };
    let mut e = serde_json::json!({
        "type": kind,
        "mode": attr.mode & 0o7777,
        "uid": attr.uid,
        "gid": attr.gid,
        "mtime": {"sec": attr.mtime, "nsec": attr.mtimensec},
    });
    let mut xattrs = BTreeMap::new();
    for key in inode.get_xattrs().unwrap() {
        let value = inode.get_xattr(OsStr::from_bytes(&key)).unwrap().unwrap();
        xattrs
            .insert(String::from_utf8(key).unwrap(), base64::engine::general_purpose::STANDARD.encode(value));
    }
    e["xattrs"] = serde_json::to_value(xattrs).unwrap();
    match kind {
        "symlink" => e["target"] = inode.get_symlink().unwrap().to_str().unwrap().into(),
        "char" | "block" => {
            // The Linux kernel's encoding (new_encode_dev), as EROFS keeps it.
            let d = attr.rdev;
            e["major"] = ((d & 0xfff00) >> 8).into();
            e["minor"] = ((d & 0xff) | ((d >> 12) & 0xfff00)).into();
        }
        _ => {}
    }
    e
}

/// The tree as Nydus walks it: each path's entry, and the names and nlink of each inode that
/// is not a directory.
pub struct Walked {
    pub got: BTreeMap<String, Value>,
    pub by_ino: HashMap<u64, Vec<String>>,
    pub nlinks: HashMap<u64, u32>,
}

/// Walk the whole tree of `rs`, `entry` giving each path's entry; a path seen twice fails.
pub fn walk(name: &str, rs: &RafsSuper, mut entry: impl FnMut(&dyn RafsInodeExt, &Path) -> Value) -> Walked {
    let mut w = Walked { got: BTreeMap::new(), by_ino: HashMap::new(), nlinks: HashMap::new() };
    rs.walk_directory::<PathBuf>(rs.superblock.root_ino(), None, &mut |inode, path| {
        let e = entry(inode.as_ref(), path);
        let attr = inode.get_attr();
        let p = path.to_str().unwrap().to_string();
        if e["type"] != "dir" {
            w.by_ino.entry(attr.ino).or_default().push(p.clone());
            w.nlinks.insert(attr.ino, attr.nlink);
        }
        assert!(w.got.insert(p.clone(), e).is_none(), "{name}: {p} twice");
        Ok(())
    })
    .unwrap();
    w
}

/// Hardlinks: the truth's groups, one inode each, and its nlink is the number of its names.
pub fn check_hardlinks(name: &str, w: &Walked) {
    assert_eq!(hardlink_groups(&w.by_ino), truth(name)["hardlink_groups"], "{name}: hardlink groups");
    for (ino, names) in &w.by_ino {
        assert_eq!(w.nlinks[ino] as usize, names.len(), "{name}: nlink of {names:?}");
    }
}

/// A chunk as blob.meta `meta` says it must be as the bootstrap says it (`c`), and compressed
/// or not as `compressed` says.
pub fn chunk_agrees(
    name: &str,
    path: &Path,
    meta: &BlobCompressionContextInfo,
    c: &dyn BlobChunkInfo,
    compressed: bool,
) {
    let mc = meta.get_chunk_info(c.id() as usize);
    assert_eq!(
        (
            mc.compressed_offset(),
            mc.compressed_size(),
            mc.uncompressed_offset(),
            mc.uncompressed_size(),
            mc.is_compressed()
        ),
        (
            c.compressed_offset(),
            c.compressed_size(),
            c.uncompressed_offset(),
            c.uncompressed_size(),
            compressed
        ),
        "{name} {}: chunk {} in blob.meta and bootstrap",
        path.display(),
        c.id()
    );
}
