//! Nydus's run-time view of what `zran generate` writes, not only its parsers: the `Rafs`
//! filesystem of `nydus-rafs` over `nydus-storage`'s file cache and a localfs backend that holds
//! the original layer blobs and the blob.meta files by digest (as nydusd's localfs backend or a
//! registry serves them; gzip and eStargz layers alike, each fetched and cached by nydusd), driven in-process through `fuse-backend-rs`'s `FileSystem` trait the
//! way nydusd's FUSE server drives it: readdir and lookup from the root, getattr, readlink,
//! listxattr and getxattr, open and read of every file. What it shows must equal the truth
//! (umoci's unpack) for every test image, but for two rules of nydusd's own that no bootstrap
//! can change (`Rafs::get_inode_attr`), which the test asserts as such: an mtime of 0 shows as
//! the time the filesystem was set up, and the root directory shows mode 0755.

mod common;
#[path = "common/nydus_view.rs"]
mod nydus_view;

use base64::Engine as _;
use common::harness::{ESTARGZ_IMAGES, IMAGES, layout_blob, layouts};
use common::truth::{Rules, compare_with, drop_estargz_meta, hardlink_groups, truth};
use fuse_backend_rs::abi::fuse_abi::stat64;
use fuse_backend_rs::api::BackendFileSystem;
use fuse_backend_rs::api::filesystem::{Context, FileSystem, GetxattrReply, ListxattrReply, ZeroCopyWriter};
use fuse_backend_rs::file_buf::FileVolatileSlice;
use fuse_backend_rs::file_traits::FileReadWriteVolatile;
use nydus_api::ConfigV2;
use nydus_rafs::fs::Rafs;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::path::Path;
use std::process::Command;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A read reply buffer, as nydusd's FUSE writer is one: at most `cap` bytes.
struct ReplyBuf {
    buf: Vec<u8>,
    cap: usize,
}

impl std::io::Write for ReplyBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(self.cap - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ZeroCopyWriter for ReplyBuf {
    fn write_from(
        &mut self,
        f: &mut dyn FileReadWriteVolatile,
        count: usize,
        off: u64,
    ) -> std::io::Result<usize> {
        let start = self.buf.len();
        let n = count.min(self.cap - start);
        self.buf.resize(start + n, 0);
        // SAFETY: the slice covers `n` initialised bytes of `self.buf`, which is neither moved
        // nor otherwise used until `read_at_volatile` returns.
        let slice = unsafe { FileVolatileSlice::from_mut_slice(&mut self.buf[start..]) };
        let got = f.read_at_volatile(slice, off);
        let got = match got {
            Ok(got) => got,
            Err(e) => {
                self.buf.truncate(start);
                return Err(e);
            }
        };
        self.buf.truncate(start + got);
        Ok(got)
    }

    fn available_bytes(&self) -> usize {
        self.cap - self.buf.len()
    }
}

fn generate(image: &str, out: &Path, args: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_zran"))
        .args(["generate", image, "-o"])
        .arg(out)
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "generate {image}: {}", String::from_utf8_lossy(&o.stderr));
}

/// The localfs backend's directory: every blob the bootstrap names, by its hex digest.
fn backend_dir(name: &str, art: &Path, layout: &Path, dir: &Path) {
    let ours = zran::rafs::reader::read_bootstrap(&std::fs::read(art.join("image.boot")).unwrap()).unwrap();
    for b in &ours.blobs {
        std::os::unix::fs::symlink(layout_blob(layout, &b.id), dir.join(&b.id)).unwrap();
        let meta = art.join(format!("{}.blob.meta", b.id));
        if meta.exists() {
            let digest = hex::encode(Sha256::digest(std::fs::read(&meta).unwrap()));
            assert_eq!(hex::encode(b.meta_digest), digest, "{name}: blob.meta digest of {}", b.id);
            std::os::unix::fs::symlink(&meta, dir.join(digest)).unwrap();
        }
    }
}

/// Every blob.meta nydusd fetched from the backend and used (zran contexts of gzip layers,
/// chunk info v1 of eStargz layers) sits in its work directory as `<blob id>.blob.meta`, equal
/// to the cache form zran itself makes of the artifact's file.
fn cached_metas(name: &str, art: &Path, cache: &Path) {
    let ours = zran::rafs::reader::read_bootstrap(&std::fs::read(art.join("image.boot")).unwrap()).unwrap();
    for b in &ours.blobs {
        let bytes = std::fs::read(art.join(format!("{}.blob.meta", b.id)))
            .unwrap_or_else(|e| panic!("{name}: the artifact has no blob.meta for {}: {e}", b.id));
        let want = if b.features & zran::rafs::meta::format::features::ZRAN != 0 {
            zran::rafs::meta::BlobMeta::decode(&bytes, b).unwrap().encode_cache().unwrap()
        } else {
            zran::rafs::meta::StargzMeta::decode(&bytes, b).unwrap().encode_cache().unwrap()
        };
        let got = std::fs::read(cache.join(format!("{}.blob.meta", b.id)))
            .unwrap_or_else(|e| panic!("{name}: nydusd did not fetch the blob.meta of {}: {e}", b.id));
        assert!(got == want, "{name}: nydusd's cached blob.meta of {} differs from zran's cache form", b.id);
    }
}

/// Nydus's filesystem over the artifact in `art`, as nydusd sets it up for a mount.
fn rafs(name: &str, art: &Path, backend: &Path, cache: &Path) -> Rafs {
    let config = serde_json::json!({
        "version": 2,
        "id": name,
        "backend": {"type": "localfs", "localfs": {"dir": backend}},
        "cache": {"type": "filecache", "filecache": {"work_dir": cache}},
        "rafs": {"mode": "direct", "enable_xattr": true, "validate": false},
    });
    let config = Arc::new(ConfigV2::from_str(&config.to_string()).unwrap());
    let (mut fs, reader) = Rafs::new(&config, name, &art.join("image.boot"))
        .unwrap_or_else(|e| panic!("{name}: nydus cannot set up the filesystem: {e}"));
    fs.import(reader, None).unwrap_or_else(|e| panic!("{name}: nydus cannot import the bootstrap: {e}"));
    fs
}

fn read_all(name: &str, fs: &Rafs, path: &str, ino: u64, size: u64) -> Vec<u8> {
    let ctx = Context::new();
    fs.open(&ctx, ino, libc::O_RDONLY as u32, 0).unwrap_or_else(|e| panic!("{name} {path}: open: {e}"));
    let mut content = Vec::with_capacity(size as usize);
    loop {
        let mut w = ReplyBuf { buf: Vec::new(), cap: 1 << 20 };
        let n = fs
            .read(&ctx, ino, 0, &mut w, 1 << 20, content.len() as u64, None, 0)
            .unwrap_or_else(|e| panic!("{name} {path}: nydus cannot read at {}: {e}", content.len()));
        assert_eq!(n, w.buf.len(), "{name} {path}: reply size");
        if n == 0 {
            break;
        }
        content.extend_from_slice(&w.buf);
    }
    content
}

fn xattrs(name: &str, fs: &Rafs, path: &str, ino: u64) -> BTreeMap<String, String> {
    let ctx = Context::new();
    let mut out = BTreeMap::new();
    let names = match fs.listxattr(&ctx, ino, 0) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => return out,
        Err(e) => panic!("{name} {path}: listxattr: {e}"),
        Ok(ListxattrReply::Count(0)) => return out,
        Ok(ListxattrReply::Count(n)) => match fs.listxattr(&ctx, ino, n).unwrap() {
            ListxattrReply::Names(names) => names,
            ListxattrReply::Count(_) => panic!("{name} {path}: listxattr answered a count"),
        },
        Ok(ListxattrReply::Names(_)) => panic!("{name} {path}: listxattr of size 0 answered names"),
    };
    for key in names.split(|&b| b == 0).filter(|k| !k.is_empty()) {
        let c = CString::new(key).unwrap();
        let value = match fs.getxattr(&ctx, ino, &c, 1 << 16) {
            Ok(GetxattrReply::Value(v)) => v,
            Ok(GetxattrReply::Count(_)) => panic!("{name} {path}: getxattr answered a count"),
            Err(e) => panic!("{name} {path}: getxattr {}: {e}", String::from_utf8_lossy(key)),
        };
        out.insert(
            String::from_utf8(key.to_vec()).unwrap(),
            base64::engine::general_purpose::STANDARD.encode(value),
        );
    }
    out
}

/// One path as nydusd shows it, in the truth's terms.
fn entry(name: &str, fs: &Rafs, path: &str, ino: u64, st: &stat64) -> Value {
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => "dir",
        libc::S_IFREG => "file",
        libc::S_IFLNK => "symlink",
        libc::S_IFCHR => "char",
        libc::S_IFBLK => "block",
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "socket",
        m => panic!("{name} {path}: mode {m:o}"),
    };
    let mut e = serde_json::json!({
        "type": kind,
        "mode": st.st_mode & 0o7777,
        "uid": st.st_uid,
        "gid": st.st_gid,
        "mtime": {"sec": st.st_mtime, "nsec": st.st_mtime_nsec},
        "xattrs": xattrs(name, fs, path, ino),
    });
    match kind {
        "symlink" => {
            let target = fs.readlink(&Context::new(), ino).unwrap();
            e["target"] = String::from_utf8(target).unwrap().into();
        }
        "char" | "block" => {
            e["major"] = libc::major(st.st_rdev).into();
            e["minor"] = libc::minor(st.st_rdev).into();
        }
        "file" => {
            let content = read_all(name, fs, path, ino, st.st_size as u64);
            assert_eq!(content.len() as u64, st.st_size as u64, "{name} {path}: bytes read");
            e["size"] = st.st_size.into();
            e["sha256"] = hex::encode(Sha256::digest(&content)).into();
        }
        _ => {}
    }
    e
}

/// What a walk saw: every path, the names of each non-directory inode, their link counts.
type Walk = (BTreeMap<String, Value>, HashMap<u64, Vec<String>>, HashMap<u64, u64>);

/// Walk the filesystem from the root as a FUSE client would: readdir, then lookup of each name.
fn walk(name: &str, fs: &Rafs) -> Walk {
    let ctx = Context::new();
    let mut got = BTreeMap::new();
    let mut by_ino: HashMap<u64, Vec<String>> = HashMap::new();
    let mut nlinks = HashMap::new();
    // nydusd's VFS asks the filesystem for its root as it mounts it.
    let (root, _) = fs.mount().unwrap_or_else(|e| panic!("{name}: mount: {e}"));
    let (st, _) = fs.getattr(&ctx, root.inode, None).unwrap();
    got.insert("/".to_string(), entry(name, fs, "/", root.inode, &st));
    let mut queue = vec![(root.inode, String::new())];
    while let Some((dir, prefix)) = queue.pop() {
        let mut names = Vec::new();
        let mut offset = 0;
        loop {
            let mut batch = Vec::new();
            fs.readdir(&ctx, dir, 0, 1 << 16, offset, &mut |d| {
                batch.push((d.offset, d.name.to_vec()));
                Ok(1)
            })
            .unwrap_or_else(|e| panic!("{name} {prefix}/: readdir: {e}"));
            let Some(&(last, _)) = batch.last() else { break };
            offset = last;
            names.extend(batch.into_iter().map(|(_, n)| n));
        }
        for n in names {
            if n == b"." || n == b".." {
                continue;
            }
            let path = format!("{prefix}/{}", String::from_utf8(n.clone()).unwrap());
            let c = CString::new(n).unwrap();
            let found = fs
                .lookup(&ctx, dir, &c)
                .unwrap_or_else(|e| panic!("{name} {path}: lookup after readdir: {e}"));
            let (st, _) = fs.getattr(&ctx, found.inode, None).unwrap();
            assert_eq!(st.st_ino, found.attr.st_ino, "{name} {path}: lookup and getattr");
            assert_eq!(st.st_mode, found.attr.st_mode, "{name} {path}: lookup and getattr");
            let e = entry(name, fs, &path, found.inode, &st);
            if e["type"] == "dir" {
                queue.push((found.inode, path.clone()));
            } else {
                by_ino.entry(found.inode).or_default().push(path.clone());
                nlinks.insert(found.inode, st.st_nlink);
            }
            assert!(got.insert(path.clone(), e).is_none(), "{name}: {path} twice");
        }
    }
    (got, by_ino, nlinks)
}

fn check(name: &str, args: &[&str]) -> usize {
    nydus_view::log_to_stderr();
    let layout = layouts().join(name);
    let work = tempfile::tempdir().unwrap();
    let art = work.path().join("art");
    generate(&format!("oci:{}", layout.display()), &art, args);
    let backend = work.path().join("backend");
    let cache = work.path().join("cache");
    std::fs::create_dir(&backend).unwrap();
    std::fs::create_dir(&cache).unwrap();
    backend_dir(name, &art, &layout, &backend);

    let now = || SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let before = now();
    let fs = rafs(name, &art, &backend, &cache);
    let after = now();
    let (mut got, mut by_ino, nlinks) = walk(name, &fs);
    let as_tar = args.contains(&"--ignore-toc");
    if as_tar {
        drop_estargz_meta(&mut got);
        by_ino.retain(|_, names| names.iter().all(|n| got.contains_key(n)));
    }
    cached_metas(name, &art, &cache);
    let rules = Rules {
        whole_seconds: name.ends_with("-estargz") && !as_tar,
        nydusd_start: Some(before..=after),
        unreadable: None,
    };
    compare_with(name, &got, &rules);
    // Hardlinks: one inode, and its nlink is the number of its names.
    assert_eq!(hardlink_groups(&by_ino), truth(name)["hardlink_groups"], "{name}: hardlink groups");
    for (ino, names) in &by_ino {
        assert_eq!(nlinks[ino] as usize, names.len(), "{name}: nlink of {names:?}");
    }
    got.len()
}

#[test]
fn nydus_serves_every_test_image_as_unpacked() {
    for &name in IMAGES {
        let n = check(name, &[]);
        assert!(n > 5, "{name}: {n} entries");
    }
}

/// eStargz layers indexed as plain gzip (a gzip member per file and per TOC chunk).
#[test]
fn nydus_serves_estargz_layers_indexed_as_gzip() {
    for &name in ESTARGZ_IMAGES {
        let n = check(name, &["--ignore-toc"]);
        assert!(n > 50, "{name}: {n} entries");
    }
}
