//! `zran convert` against readers nobody here wrote. Every test image is converted to an OCI
//! layout with each compressor; Nydus's own parsers (crates.io `nydus-rafs`, `nydus-storage`,
//! `nydus-utils`) load the merged bootstrap from the bootstrap layer, each blob's chunk infos
//! from the blob's inline blob.meta (the cache file Nydus writes must equal the
//! `image/<hex>.blob.meta` of the bootstrap layer), and each blob's ToC; every chunk is read
//! from its blob file, decompressed by Nydus's decompressor, checked against its sha256, and
//! the tree equals the truth (umoci's unpack). Also: the kernel's EROFS mounts the merged
//! bootstrap over `--compressor none` blobs as its devices; nydusd serves the image from a
//! localfs backend (when installed); a push to the test registry; chunks shared across layers
//! stored once; a corrupt layer named, with nothing left behind.

mod common;
#[path = "common/nydus_view.rs"]
mod nydus_view;
#[path = "common/nydusd.rs"]
mod nydusd;

use common::harness::{ESTARGZ_IMAGES, IMAGES, kernel_mount, layout_blob, layouts};
use common::truth::{Rules, compare_with, drop_estargz_meta, truth};
use nydus_api::ConfigV2;
use nydus_rafs::metadata::{RafsInodeExt, RafsSuper};
use nydus_storage::backend::BlobReader;
use nydus_storage::device::BlobInfo;
use nydus_storage::meta::BlobCompressionContextInfo;
use nydus_storage::meta::toc::{TocEntryList, TocLocation};
use nydus_utils::compress;
use nydus_utils::digest::RafsDigest;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

fn zran(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zran")).args(args).output().unwrap()
}

fn convert(image: &str, target: &str, args: &[&str]) {
    let mut all = vec!["convert", image, target];
    all.extend_from_slice(args);
    let o = zran(&all);
    assert!(o.status.success(), "convert {image} {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn hex_of(d: &Value) -> String {
    d.as_str().unwrap().strip_prefix("sha256:").unwrap().to_string()
}

/// The converted image in a layout: manifest, config, and the bootstrap layer's files.
struct Converted {
    layout: PathBuf,
    manifest: Value,
    config: Value,
    files: BTreeMap<String, Vec<u8>>,
}

fn read_converted(layout: &Path, tag: &str) -> Converted {
    let index = json(&layout.join("index.json"));
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no tag {tag} in {index}"));
    let manifest = json(&layout_blob(layout, &hex_of(&desc["digest"])));
    let config = json(&layout_blob(layout, &hex_of(&manifest["config"]["digest"])));
    let boot = manifest["layers"].as_array().unwrap().last().unwrap();
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(layout_blob(layout, &hex_of(&boot["digest"]))).unwrap())
        .read_to_end(&mut tar)
        .unwrap();
    // The diff id of the bootstrap layer is the sha256 of its tar.
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(
        diff_ids.last().unwrap().as_str().unwrap(),
        format!("sha256:{}", hex::encode(Sha256::digest(&tar)))
    );
    let mut files = BTreeMap::new();
    let mut ar = tar::Archive::new(tar.as_slice());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let mode = e.header().mode().unwrap();
        match e.header().entry_type() {
            tar::EntryType::Directory => assert_eq!((path.as_str(), mode), ("image", 0o755)),
            _ => {
                assert_eq!(mode, 0o444, "{path}");
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                files.insert(path, data);
            }
        }
    }
    Converted { layout: layout.to_path_buf(), manifest, config, files }
}

/// The manifest and config as nydusify writes them (reference §2.1).
fn check_manifest(name: &str, source: &Path, c: &Converted) {
    let m = &c.manifest;
    let layers = m["layers"].as_array().unwrap();
    let src_index = json(&source.join("index.json"));
    let src_digest = src_index["manifests"][0]["digest"].as_str().unwrap();
    let src = json(&layout_blob(source, src_digest.strip_prefix("sha256:").unwrap()));
    assert_eq!(
        layers.len(),
        src["layers"].as_array().unwrap().len() + 1,
        "{name}: one blob per layer + bootstrap"
    );
    assert_eq!(m["annotations"]["containerd.io/snapshot/nydus-source-digest"], src_digest, "{name}");
    assert_eq!(m["annotations"]["containerd.io/snapshot/nydus-fs-version"], "6");
    let diff_ids = c.config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(diff_ids.len(), layers.len());
    for (l, d) in layers.iter().zip(diff_ids).take(layers.len() - 1) {
        assert_eq!(l["mediaType"], "application/vnd.oci.image.layer.nydus.blob.v1");
        assert_eq!(l["annotations"]["containerd.io/snapshot/nydus-blob"], "true");
        // A blob is its own diff id, and its digest is the sha256 of the file.
        assert_eq!(&l["digest"], d);
        let bytes = std::fs::read(layout_blob(&c.layout, &hex_of(&l["digest"]))).unwrap();
        assert_eq!(bytes.len() as u64, l["size"].as_u64().unwrap());
        assert_eq!(hex::encode(Sha256::digest(&bytes)), hex_of(&l["digest"]), "{name}: blob digest");
    }
    let boot = layers.last().unwrap();
    assert_eq!(boot["annotations"]["containerd.io/snapshot/nydus-bootstrap"], "true");
    assert_eq!(boot["annotations"]["containerd.io/snapshot/nydus-fs-version"], "6");
    let history = c.config["history"].as_array().unwrap();
    assert_eq!(history.last().unwrap()["comment"], "Nydus Bootstrap Layer");
}

struct Blob {
    info: Arc<BlobInfo>,
    meta: BlobCompressionContextInfo,
    file: std::fs::File,
}

/// Nydus loads a blob's chunk infos from the blob itself (its inline blob.meta, where the
/// merged bootstrap's blob table says), and reads its ToC.
fn load_blob(name: &str, c: &Converted, info: Arc<BlobInfo>, cache: &Path) -> Blob {
    let id = info.blob_id();
    let path = layout_blob(&c.layout, &id);
    let file = std::fs::File::open(&path).unwrap();
    let size = file.metadata().unwrap().len();
    let reader: Arc<dyn BlobReader> =
        Arc::new(nydus_view::FileReader { file: file.try_clone().unwrap(), metrics: Default::default() });
    let prefix = cache.join(&id);
    let prefix = prefix.to_str().unwrap();
    let meta = BlobCompressionContextInfo::new(prefix, &info, Some(&reader), false)
        .unwrap_or_else(|e| panic!("{name}: Nydus rejects the blob.meta of {id}: {e}"));
    assert_eq!(meta.get_chunk_count(), info.chunk_count() as usize);
    // The cache file Nydus writes is the bootstrap layer's copy.
    let cached = std::fs::read(format!("{prefix}.blob.meta")).unwrap();
    assert!(
        cached == c.files[&format!("image/{id}.blob.meta")],
        "{name}: {id}.blob.meta differs from Nydus's cache"
    );

    // The ToC, where the blob table says, with the digest it records.
    let toc_size = u64::from(info.blob_toc_size());
    assert!(toc_size > 0, "{name}: {id} has no ToC");
    let location =
        TocLocation::with_digest(size - toc_size, toc_size, RafsDigest { data: *info.blob_toc_digest() });
    let toc = TocEntryList::read_from_blob::<std::fs::File>(reader.as_ref(), None, &location)
        .unwrap_or_else(|e| panic!("{name}: Nydus cannot read the ToC of {id}: {e}"));
    let mut whole = Vec::new();
    std::fs::File::open(&path).unwrap().read_to_end(&mut whole).unwrap();
    for entry in ["image.blob", "blob.meta", "blob.meta.header", "blob.digest", "image.boot"] {
        let e = toc.get_entry(entry).unwrap_or_else(|| panic!("{name}: {id}: no ToC entry {entry}"));
        let (off, len) = (e.compressed_offset() as usize, e.compressed_size() as usize);
        // Each part is followed by its tar header, named after it.
        let header = &whole[off + len..off + len + 512];
        let hname = if entry == "blob.meta.header" { "blob.meta" } else { entry };
        if entry != "blob.meta" {
            assert_eq!(&header[..hname.len()], hname.as_bytes(), "{name}: {id}: header after {entry}");
        }
        if entry != "image.blob" {
            let mut out = Vec::new();
            if e.compressor().unwrap() == compress::Algorithm::Lz4Block {
                // Nydus's ToC reader knows no lz4_block (its blob.meta reader does).
                out.resize(e.uncompressed_size() as usize, 0);
                compress::decompress(&whole[off..off + len], &mut out, compress::Algorithm::Lz4Block)
                    .unwrap();
            } else {
                e.extract_from_buf(&whole[off..off + len], &mut out)
                    .unwrap_or_else(|err| panic!("{name}: {id}: ToC entry {entry}: {err}"));
            }
            assert_eq!(out.len() as u64, e.uncompressed_size());
            assert_eq!(
                Sha256::digest(&out).as_slice(),
                e.uncompressed_digest().data.as_slice(),
                "{name}: {entry}"
            );
            if entry == "image.boot" {
                // The layer's own bootstrap, as Nydus's merge reads it.
                let tmp = cache.join(format!("{id}.layer.boot"));
                std::fs::write(&tmp, &out).unwrap();
                RafsSuper::load_from_file(&tmp, Arc::new(ConfigV2::default()), false)
                    .unwrap_or_else(|e| panic!("{name}: Nydus cannot load the bootstrap inside {id}: {e}"));
            }
        }
    }
    let blob_entry = toc.get_entry("image.blob").unwrap();
    assert_eq!(blob_entry.compressed_offset(), 0);
    let hashed = &whole[..blob_entry.compressed_size() as usize + 512];
    assert_eq!(Sha256::digest(hashed).as_slice(), blob_entry.uncompressed_digest().data.as_slice(), "{name}");
    Blob { info, meta, file }
}

/// What Nydus sees of one path, in the truth's terms; chunks decoded from the blob files.
fn entry(name: &str, inode: &dyn RafsInodeExt, path: &Path, blobs: &[Blob], compressor: &str) -> Value {
    let mut e = nydus_view::attributes(name, inode, path);
    if e["type"] != "file" {
        return e;
    }
    let attr = inode.get_attr();
    let mut content = Vec::with_capacity(attr.size as usize);
    for i in 0..inode.get_chunk_count() {
        let c = inode.get_chunk_info(i).unwrap();
        let blob = &blobs[c.blob_index() as usize];
        nydus_view::chunk_agrees(name, path, &blob.meta, c.as_ref(), c.is_compressed());
        assert_eq!(c.uncompressed_offset() % 4096, 0);
        if compressor == "none" {
            assert!(!c.is_compressed());
            assert_eq!(c.compressed_offset(), c.uncompressed_offset(), "{name}: none keeps offsets equal");
        }
        let mut input = vec![0u8; c.compressed_size() as usize];
        blob.file.read_exact_at(&mut input, c.compressed_offset()).unwrap();
        let bytes = if c.is_compressed() {
            let mut out = vec![0u8; c.uncompressed_size() as usize];
            let n = compress::decompress(&input, &mut out, blob.info.compressor()).unwrap();
            assert_eq!(n, out.len());
            out
        } else {
            input
        };
        assert_eq!(
            Sha256::digest(&bytes).as_slice(),
            c.chunk_id().data.as_slice(),
            "{name} {}: chunk {i} does not match its digest",
            path.display()
        );
        content.extend_from_slice(&bytes);
    }
    assert_eq!(content.len() as u64, attr.size, "{name} {}: size", path.display());
    e["size"] = attr.size.into();
    e["sha256"] = hex::encode(Sha256::digest(&content)).into();
    e
}

/// Convert the layout `source` to the layout `out` (tag `nydus`) with `compressor`; read back.
fn convert_to_layout(source: &Path, out: &Path, compressor: &str) -> Converted {
    convert(
        &format!("oci:{}", source.display()),
        &format!("oci:{}:nydus", out.display()),
        &["--compressor", compressor],
    );
    read_converted(out, "nydus")
}

/// Convert `name` to a layout with `compressor`, check it with Nydus's parsers; returns the
/// layout (in `work`) and the number of paths.
fn check(name: &str, compressor: &str, work: &Path) -> (Converted, usize) {
    nydus_view::log_to_stderr();
    let source = layouts().join(name);
    let out = work.join(format!("{name}-{compressor}"));
    let c = convert_to_layout(&source, &out, compressor);
    check_manifest(name, &source, &c);
    let boot = work.join(format!("{name}-{compressor}.boot"));
    std::fs::write(&boot, &c.files["image/image.boot"]).unwrap();
    let (rs, _) = RafsSuper::load_from_file(&boot, Arc::new(ConfigV2::default()), false)
        .unwrap_or_else(|e| panic!("{name}: Nydus cannot load image.boot: {e}"));
    assert!(rs.meta.is_v6());
    let cache = work.join(format!("{name}-{compressor}.cache"));
    std::fs::create_dir_all(&cache).unwrap();
    let blobs: Vec<Blob> =
        rs.superblock.get_blob_infos().into_iter().map(|info| load_blob(name, &c, info, &cache)).collect();
    let want = match compressor {
        "zstd" => compress::Algorithm::Zstd,
        "lz4" => compress::Algorithm::Lz4Block,
        _ => compress::Algorithm::None,
    };
    for b in &blobs {
        assert_eq!(b.info.compressor(), want, "{name}: blob compressor");
        assert_eq!(b.info.features().bits(), 0x7000_0021, "{name}: blob features in the merged bootstrap");
    }
    let walked = nydus_view::walk(name, &rs, |inode, path| entry(name, inode, path, &blobs, compressor));
    let rules = Rules { whole_seconds: false, nydusd_start: None, unreadable: None };
    compare_with(name, &walked.got, &rules);
    nydus_view::check_hardlinks(name, &walked);
    let n = walked.got.len();
    (c, n)
}

#[test]
fn nydus_reads_every_converted_image_with_every_compressor() {
    for compressor in ["zstd", "lz4", "none"] {
        for &name in IMAGES {
            let work = tempfile::tempdir().unwrap();
            let (_, n) = check(name, compressor, work.path());
            assert!(n > 5, "{name}: {n} entries");
        }
    }
    // eStargz images are plain gzip tars to the converter, without stargz's own files.
    assert!(ESTARGZ_IMAGES.iter().all(|n| IMAGES.contains(n)));
    let _ = drop_estargz_meta;
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// With `--compressor none` every chunk lies at its uncompressed address in its blob, so the
/// blobs themselves are the EROFS devices of the merged bootstrap: the kernel mounts it and
/// shows the truth.
#[test]
fn the_kernel_mounts_uncompressed_blobs_as_erofs_devices() {
    // (tarquirks has header-only entries with sizes that the `tar` crate reads differently;
    // the Nydus test above covers it.)
    for name in ["python", "edge", "python-estargz", "edge-estargz", "paths", "umoci-insert", "tarquirks"] {
        let work = tempfile::tempdir().unwrap();
        let source = layouts().join(name);
        let out = work.path().join("out");
        let c = convert_to_layout(&source, &out, "none");
        let boot = work.path().join("image.boot");
        std::fs::write(&boot, &c.files["image/image.boot"]).unwrap();
        let b = zran::rafs::reader::read_bootstrap(&c.files["image/image.boot"]).unwrap();
        let devices: Vec<PathBuf> = b.blobs.iter().map(|blob| layout_blob(&out, &blob.id)).collect();
        let mnt = work.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        kernel_mount(&boot, &devices, &mnt);
        let _guard = Unmount(mnt.clone());
        let got = common::truth::walk(&mnt);
        let n = common::truth::compare(name, &got, false);
        assert!(n > 5, "{name}: {n} entries");
    }
}

fn nydusd() -> Option<PathBuf> {
    let p = std::env::var_os("NYDUSD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/nydus/bin/nydusd"));
    p.exists().then_some(p)
}

/// nydusd itself serves the converted image from a localfs backend holding the blobs by id
/// (each blob's chunk infos come from the blob itself): the tree equals the truth.
#[test]
fn nydusd_serves_the_converted_image() {
    let Some(nydusd) = nydusd() else {
        eprintln!("skipped: no nydusd (NYDUSD=PATH, or /opt/nydus/bin/nydusd)");
        return;
    };
    for name in ["python", "edge", "paths", "python-estargz"] {
        for compressor in ["zstd", "lz4", "none"] {
            let work = tempfile::tempdir().unwrap();
            let source = layouts().join(name);
            let out = work.path().join("out");
            let c = convert_to_layout(&source, &out, compressor);
            let boot = work.path().join("image.boot");
            std::fs::write(&boot, &c.files["image/image.boot"]).unwrap();
            let backend = work.path().join("backend");
            let cache = work.path().join("cache");
            let mnt = work.path().join("mnt");
            for d in [&backend, &cache, &mnt] {
                std::fs::create_dir(d).unwrap();
            }
            for l in c.manifest["layers"].as_array().unwrap() {
                let hex = hex_of(&l["digest"]);
                std::os::unix::fs::symlink(layout_blob(&out, &hex), backend.join(&hex)).unwrap();
            }
            let now = || {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
            };
            let before = now();
            let backend = serde_json::json!({"type": "localfs", "localfs": {"dir": backend}});
            let daemon = nydusd::serve(&nydusd, name, work.path(), backend, &cache, &boot, &mnt);
            let after = now();
            let walked = common::truth::try_walk(&mnt, true);
            drop(daemon);
            let walked = walked.expect("truth.py --walk --unreadable-ok");
            let got = common::truth::by_path(&walked);
            let rules = Rules {
                whole_seconds: false,
                nydusd_start: Some(before..=after),
                unreadable: Some("unreadable"),
            };
            let unreadable = compare_with(name, &got, &rules);
            let log = std::fs::read_to_string(work.path().join("nydusd.log")).unwrap_or_default();
            assert!(unreadable.is_empty(), "{name} {compressor}: nydusd cannot read {unreadable:?}\n{log}");
            assert_eq!(walked["hardlink_groups"], truth(name)["hardlink_groups"], "{name}: hardlink groups");
        }
    }
}

/// A gzip tar layer of `files` (path, bytes).
fn layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, path, *data).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    gz.finish().unwrap()
}

/// An OCI layout holding one image made of `layers` (gzip blobs, used as they are).
fn make_layout(dir: &Path, layers: &[Vec<u8>]) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let hex = hex::encode(Sha256::digest(bytes));
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        format!("sha256:{hex}")
    };
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| {
            let mut tar = Vec::new();
            flate2::read::GzDecoder::new(l.as_slice()).read_to_end(&mut tar).unwrap_or_default();
            format!("sha256:{}", hex::encode(Sha256::digest(&tar)))
        })
        .collect();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let layer_descs: Vec<Value> = layers
        .iter()
        .map(|l| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": put(l), "size": l.len()}))
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(&config), "size": config.len()},
        "layers": layer_descs,
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put(&manifest), "size": manifest.len()}],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A file of a lower layer copied into an upper one (and twice into the same layer) is
/// stored once: the upper blob holds only its own chunks, and its file's chunks point into
/// the lower blob. The output does not depend on how many layers are converted at once.
#[test]
fn chunks_shared_across_layers_are_stored_once() {
    let work = tempfile::tempdir().unwrap();
    let shared = noise(3 << 20 | 12345, 1); // 4 chunks at 1 MiB, incompressible
    let own = noise(700_000, 2);
    let src = work.path().join("src");
    make_layout(
        &src,
        &[
            layer(&[("a/shared.bin", &shared), ("a/again.bin", &shared)]),
            layer(&[("b/copy.bin", &shared), ("b/own.bin", &own)]),
        ],
    );
    let image = format!("oci:{}", src.display());
    let mut manifests = Vec::new();
    for jobs in ["1", "2"] {
        let out = work.path().join(format!("out{jobs}"));
        convert(&image, &format!("oci:{}:nydus", out.display()), &["--jobs", jobs]);
        let c = read_converted(&out, "nydus");
        let b = zran::rafs::reader::read_bootstrap(&c.files["image/image.boot"]).unwrap();
        assert_eq!(b.blobs.len(), 2);
        // Layer 0: four distinct chunks for two identical files; layer 1: only own.bin.
        assert_eq!(b.blobs[0].chunk_count, 4);
        assert_eq!(b.blobs[1].chunk_count, 1);
        let layers = c.manifest["layers"].as_array().unwrap();
        let size1 = layers[1]["size"].as_u64().unwrap();
        assert!(size1 < own.len() as u64 + 64 * 1024, "upper blob of {size1} bytes holds more than own.bin");
        assert!(layers[0]["size"].as_u64().unwrap() > shared.len() as u64);
        // copy.bin's chunks are those of the lower blob.
        let boot = work.path().join(format!("boot{jobs}"));
        std::fs::write(&boot, &c.files["image/image.boot"]).unwrap();
        let (rs, _) = RafsSuper::load_from_file(&boot, Arc::new(ConfigV2::default()), false).unwrap();
        let mut found = None;
        rs.walk_directory::<PathBuf>(rs.superblock.root_ino(), None, &mut |inode, path| {
            if path == Path::new("/b/copy.bin") {
                found = Some(inode);
            }
            Ok(())
        })
        .unwrap();
        let inode = found.expect("/b/copy.bin");
        assert_eq!(inode.get_chunk_count(), 4);
        for i in 0..4 {
            assert_eq!(inode.get_chunk_info(i).unwrap().blob_index(), 0, "chunk {i} of copy.bin");
        }
        // And the bytes read back through Nydus's view are the file's.
        let cache = work.path().join(format!("cache{jobs}"));
        std::fs::create_dir_all(&cache).unwrap();
        let blobs: Vec<Blob> = rs
            .superblock
            .get_blob_infos()
            .into_iter()
            .map(|info| load_blob("dedup", &c, info, &cache))
            .collect();
        let e = entry("dedup", inode.as_ref(), Path::new("/b/copy.bin"), &blobs, "zstd");
        assert_eq!(e["sha256"], hex::encode(Sha256::digest(&shared)));
        manifests.push(c.manifest);
    }
    assert_eq!(manifests[0], manifests[1], "--jobs 1 and --jobs 2 convert to different images");
}

/// A corrupt layer: the error names the layer and the offset, and nothing is left behind
/// (a layout made for the conversion is removed; an existing one is left as it was).
#[test]
fn a_corrupt_layer_is_named_and_leaves_nothing_behind() {
    let work = tempfile::tempdir().unwrap();
    let good = layer(&[("x.bin", &noise(200_000, 3))]);
    let mut bad = layer(&[("y.txt", &vec![b'y'; 300_000]), ("z.bin", &noise(200_000, 4))]);
    let mid = bad.len() / 2;
    for b in &mut bad[mid..mid + 64] {
        *b ^= 0x5a;
    }
    let src = work.path().join("src");
    make_layout(&src, &[good.clone(), bad]);
    let image = format!("oci:{}", src.display());
    let out = work.path().join("out");
    let o = zran(&["convert", &image, &format!("oci:{}:nydus", out.display())]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("layer 1") && err.contains("offset"), "{err}");
    assert!(!out.exists(), "a failed conversion left {}", out.display());
    // Into an existing layout: nothing added, nothing temporary left.
    let existing = work.path().join("existing");
    make_layout(&existing, &[good]);
    let before: Vec<_> = walk_names(&existing);
    let o = zran(&["convert", &image, &format!("oci:{}:nydus", existing.display())]);
    assert!(!o.status.success());
    assert_eq!(walk_names(&existing), before);
}

fn walk_names(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Pushed to the test registry: the same blobs as the conversion to a layout, and the
/// manifest the registry serves names them.
#[test]
fn convert_pushes_to_a_registry() {
    let reg = common::harness::TestRegistry::start("plain");
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    convert(
        &format!("oci:{}", layouts().join("python").display()),
        &format!("oci:{}:nydus", out.display()),
        &[],
    );
    let c = read_converted(&out, "nydus");
    let target = format!("{}/python-nydus:v1", reg.host());
    convert(&format!("{}/python", reg.host()), &target, &[]);
    let url = format!("http://{}/v2/python-nydus/manifests/v1", reg.host());
    let o = Command::new("curl")
        .args(["-sf", "-H", "Accept: application/vnd.oci.image.manifest.v1+json", &url])
        .output()
        .unwrap();
    assert!(o.status.success(), "GET {url}");
    let pushed: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(pushed["layers"], c.manifest["layers"], "registry and layout conversions differ");
    assert_eq!(pushed["config"], c.manifest["config"]);
    for l in pushed["layers"].as_array().unwrap() {
        let hex = hex_of(&l["digest"]);
        let data = std::fs::read(reg.blob_data(&hex)).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&data)), hex);
    }
}

/// Nydus's own `nydus-image merge` takes the bootstraps inside the blobs (named by blob
/// digest, as nydusify names them) and makes a bootstrap with the same blobs and the same
/// tree as zran's merged one (when nydus-image is installed). (Not `paths`: a hardlink there
/// names a lower layer's file, which a layer's own bootstrap cannot hold; zran leaves it out
/// there, so only zran's merged bootstrap has it, as the truth does.)
#[test]
fn nydus_image_merges_the_bootstraps_inside_the_blobs() {
    let bin = std::env::var_os("NYDUS_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/nydus/bin/nydus-image"));
    if !bin.exists() {
        eprintln!("skipped: no nydus-image (NYDUS_IMAGE=PATH, or /opt/nydus/bin/nydus-image)");
        return;
    }
    for name in ["python", "edge", "umoci-insert", "edge-estargz"] {
        let work = tempfile::tempdir().unwrap();
        let out = work.path().join("out");
        convert(
            &format!("oci:{}", layouts().join(name).display()),
            &format!("oci:{}:nydus", out.display()),
            &[],
        );
        let c = read_converted(&out, "nydus");
        let mut boots = Vec::new();
        for l in c.manifest["layers"].as_array().unwrap().iter().rev().skip(1).rev() {
            let hex = hex_of(&l["digest"]);
            let whole = std::fs::read(layout_blob(&out, &hex)).unwrap();
            let toc = zran::rafs::tail::read_toc(&whole, whole.len() as u64).unwrap();
            let e = toc.iter().find(|e| e.name() == b"image.boot").unwrap();
            let data = &whole
                [e.compressed_offset() as usize..(e.compressed_offset() + e.compressed_size()) as usize];
            let boot = zstd::bulk::decompress(data, e.uncompressed_size() as usize).unwrap();
            let path = work.path().join(&hex);
            std::fs::write(&path, boot).unwrap();
            boots.push(path);
        }
        let merged = work.path().join("merged.boot");
        let o =
            Command::new(&bin).arg("merge").arg("--bootstrap").arg(&merged).args(&boots).output().unwrap();
        assert!(o.status.success(), "{name}: nydus-image merge: {}", String::from_utf8_lossy(&o.stderr));
        let ours = work.path().join("ours.boot");
        std::fs::write(&ours, &c.files["image/image.boot"]).unwrap();
        let load = |p: &Path| RafsSuper::load_from_file(p, Arc::new(ConfigV2::default()), false).unwrap().0;
        let (theirs, ours) = (load(&merged), load(&ours));
        let blobs = |rs: &RafsSuper| {
            rs.superblock
                .get_blob_infos()
                .iter()
                .map(|b| (b.blob_id(), b.chunk_count(), b.compressed_size(), b.uncompressed_size()))
                .collect::<Vec<_>>()
        };
        assert_eq!(blobs(&theirs), blobs(&ours), "{name}: blob tables");
        let tree = |rs: &RafsSuper| {
            let mut out = BTreeMap::new();
            rs.walk_directory::<PathBuf>(rs.superblock.root_ino(), None, &mut |inode, path| {
                // (Nydus's merge marks chunk digests as inlined in the blobs, so its chunk
                // records are read only with the blobs at hand: counts only.)
                let a = inode.get_attr();
                out.insert(path.to_path_buf(), (a.mode, a.size, a.uid, a.gid, inode.get_chunk_count()));
                Ok(())
            })
            .unwrap();
            out
        };
        assert_eq!(tree(&theirs), tree(&ours), "{name}: trees");
    }
}
