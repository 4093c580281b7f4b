//! Nydus images made by Nydus's own builder (the crates.io `nydus-builder`, in process), from
//! the test images' OCI layouts, packaged as nydusify pushes them: per layer either a native
//! data blob (`nydus-image create --type tar-rafs --blob-inline-meta --features blob-toc`,
//! zstd, the default blake3 digester) or a ref blob over the original gzip layer
//! (`--type targz-ref`), the per-layer bootstraps merged with the builder's `Merger`, then a
//! bootstrap layer (`image/image.boot`), a config and an OCI manifest in a new OCI layout.

#![allow(dead_code)]

use nydus_builder::attributes::Attributes;
use nydus_builder::{
    ArtifactStorage, BlobManager, BootstrapManager, BuildContext, Builder, ConversionType, Features, Merger,
    Prefetch, PrefetchPolicy, TarballBuilder, WhiteoutSpec,
};
use nydus_utils::{compress, digest};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// tar-rafs data blobs, zstd, blake3.
    Native,
    /// targz-ref blobs over the original layers (which the layout also holds).
    OciRef,
}

pub const BLOB_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.nydus.blob.v1";

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Read an OCI layout's single manifest: (manifest, config).
pub fn layout_manifest(layout: &Path) -> (Value, Value) {
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let d = index["manifests"][0]["digest"].as_str().unwrap();
    let blob =
        |d: &str| std::fs::read(layout.join("blobs/sha256").join(d.trim_start_matches("sha256:"))).unwrap();
    let m: Value = serde_json::from_slice(&blob(d)).unwrap();
    let c: Value = serde_json::from_slice(&blob(m["config"]["digest"].as_str().unwrap())).unwrap();
    (m, c)
}

fn put_blob(out: &Path, bytes: &[u8]) -> (String, u64) {
    let hex = sha256_hex(bytes);
    let dir = out.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&hex), bytes).unwrap();
    (format!("sha256:{hex}"), bytes.len() as u64)
}

/// Build one layer with nydus-builder. `source` is a plain tar (native) or the gzip layer
/// (oci-ref). Returns the blob's bytes, the per-layer bootstrap's path, and the ToC's digest
/// and size as the builder recorded them.
fn create(kind: Kind, source: &Path, blob: &Path, boot: &Path) -> (Vec<u8>, [u8; 32], u32) {
    let (ty, compressor, digester) = match kind {
        Kind::Native => (ConversionType::TarToRafs, compress::Algorithm::Zstd, digest::Algorithm::Blake3),
        Kind::OciRef => (ConversionType::TargzToRef, compress::Algorithm::GZip, digest::Algorithm::Sha256),
    };
    let features = Features::try_from("blob-toc").unwrap();
    let mut ctx = BuildContext::new(
        String::new(),
        true,
        0,
        compressor,
        digester,
        true,
        WhiteoutSpec::None,
        ty,
        source.to_path_buf(),
        Prefetch::new(PrefetchPolicy::None).unwrap(),
        Some(ArtifactStorage::SingleFile(blob.to_path_buf())),
        None,
        true,
        features,
        false,
        Attributes::default(),
    );
    ctx.set_fs_version(nydus_rafs::metadata::RafsVersion::V6);
    ctx.set_chunk_size(0x100000);
    if kind == Kind::OciRef {
        ctx.blob_features.insert(nydus_storage::device::BlobFeatures::CHUNK_INFO_V2);
        ctx.blob_features.insert(nydus_storage::device::BlobFeatures::SEPARATE);
    }
    let mut blob_mgr = BlobManager::new(digester, false);
    let mut bootstrap_mgr =
        BootstrapManager::new(Some(ArtifactStorage::SingleFile(boot.to_path_buf())), None);
    TarballBuilder::new(ty).build(&mut ctx, &mut bootstrap_mgr, &mut blob_mgr).expect("nydus-builder create");
    let (toc_digest, toc_size) = blob_mgr
        .get_current_blob()
        .map(|(_, b)| (b.blob_toc_digest, b.blob_toc_size))
        .unwrap_or(([0; 32], 0));
    (std::fs::read(blob).unwrap(), toc_digest, toc_size)
}

/// A Nydus image of the test image in `layout` (every layer of `kind`), written as a new OCI
/// layout at `out` (tag `latest`); oci-ref layouts hold the original layers too, as the
/// repository of such an image must.
pub fn build(layout: &Path, kind: Kind, work: &Path, out: &Path) {
    let (manifest, config) = layout_manifest(layout);
    std::fs::create_dir_all(work).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    let mut descs = Vec::new();
    let mut boots = Vec::new();
    let (mut digests, mut sizes, mut toc_digests, mut toc_sizes) = (vec![], vec![], vec![], vec![]);
    for (i, l) in layers.iter().enumerate() {
        let hex = l["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
        let gz_path = layout.join("blobs/sha256").join(&hex);
        let blob = work.join(format!("blob-{i}"));
        let boot_dir = work.join(format!("boot-{i}"));
        std::fs::create_dir_all(&boot_dir).unwrap();
        // Merge takes a blob id it is not given from the bootstrap's file name.
        let boot = boot_dir.join(&hex);
        let (bytes, toc_digest, toc_size) = match kind {
            Kind::Native => {
                let tar = work.join(format!("layer-{i}.tar"));
                let gz = std::fs::read(&gz_path).unwrap();
                let mut plain = Vec::new();
                std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(&gz[..]), &mut plain)
                    .unwrap();
                std::fs::write(&tar, &plain).unwrap();
                create(kind, &tar, &blob, &boot)
            }
            Kind::OciRef => {
                put_blob(out, &std::fs::read(&gz_path).unwrap());
                create(kind, &gz_path, &blob, &boot)
            }
        };
        let (d, size) = put_blob(out, &bytes);
        let mut annotations = json!({"containerd.io/snapshot/nydus-blob": "true"});
        if kind == Kind::OciRef {
            annotations["containerd.io/snapshot/nydus-ref"] = json!(format!("sha256:{hex}"));
        }
        descs.push(
            json!({"mediaType": BLOB_MEDIA_TYPE, "digest": d, "size": size, "annotations": annotations}),
        );
        digests.push(d.trim_start_matches("sha256:").to_string());
        sizes.push(size);
        toc_digests.push(hex::encode(toc_digest));
        toc_sizes.push(u64::from(toc_size));
        boots.push(boot);
    }
    let merged = work.join("image.boot");
    let mut ctx =
        BuildContext { prefetch: Prefetch::new(PrefetchPolicy::None).unwrap(), ..Default::default() };
    let cfg = Arc::new(nydus_api::ConfigV2::default());
    ctx.configuration = cfg.clone();
    Merger::merge(
        &mut ctx,
        None,
        boots,
        Some(digests),
        None,
        Some(sizes),
        Some(toc_digests),
        Some(toc_sizes),
        ArtifactStorage::SingleFile(merged.clone()),
        None,
        cfg,
    )
    .expect("nydus-builder merge");
    package(out, &std::fs::read(&merged).unwrap(), &[], descs, config);
}

/// The bootstrap layer (`image/image.boot`, and `image/<hex>.blob.meta` for each of
/// `metas`), config and manifest of a Nydus image whose data layers are `descs`, into `out`.
pub fn package(out: &Path, boot: &[u8], metas: &[(String, Vec<u8>)], descs: Vec<Value>, config: Value) {
    let (tar, gz) = bootstrap_layer(boot, metas);
    write_image(out, descs, &gz, &tar, config);
}

/// A bootstrap layer: (its tar, the tar gzipped).
pub fn bootstrap_layer(boot: &[u8], metas: &[(String, Vec<u8>)]) -> (Vec<u8>, Vec<u8>) {
    let mut t = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    h.set_cksum();
    t.append_data(&mut h, "image", &[][..]).unwrap();
    let mut files: Vec<(String, &[u8])> = vec![("image/image.boot".into(), boot)];
    for (hex, m) in metas {
        files.push((format!("image/{hex}.blob.meta"), m));
    }
    for (p, d) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o444);
        h.set_size(d.len() as u64);
        h.set_cksum();
        t.append_data(&mut h, p, d).unwrap();
    }
    let tar = t.into_inner().unwrap();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(&tar).unwrap();
    (tar.clone(), e.finish().unwrap())
}

/// A Nydus image's config, manifest and index into `out`: data layers `descs`, then the
/// bootstrap layer `gz` (whose uncompressed bytes are `tar`).
pub fn write_image(out: &Path, descs: Vec<Value>, gz: &[u8], tar: &[u8], mut config: Value) {
    let (bd, bs) = put_blob(out, gz);
    let mut layers = descs;
    let mut diff_ids: Vec<Value> = layers.iter().map(|l| l["digest"].clone()).collect();
    diff_ids.push(json!(format!("sha256:{}", sha256_hex(tar))));
    layers.push(json!({
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": bd, "size": bs,
        "annotations": {
            "containerd.io/snapshot/nydus-bootstrap": "true",
            "containerd.io/snapshot/nydus-fs-version": "6"
        }
    }));
    config["rootfs"]["diff_ids"] = json!(diff_ids);
    config.as_object_mut().unwrap().remove("history");
    let (cd, cs) = put_blob(out, &serde_json::to_vec(&config).unwrap());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": layers,
    });
    let mb = serde_json::to_vec(&manifest).unwrap();
    let (md, ms) = put_blob(out, &mb);
    std::fs::write(out.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": ms,
            "annotations": {"org.opencontainers.image.ref.name": "latest"}
        }]
    });
    std::fs::write(out.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// The blob files of a layout, by hex.
pub fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
}

/// The bootstrap a blob of Nydus's carries in its tail and the size of its ToC with the ToC's
/// header, found by the tar headers from the end (`image.boot` is the part right before the
/// ToC; zstd-compressed or raw), walked apart from `rafs::tail::read_toc` so that the two check
/// each other (a ref blob nydus-image 2.2.0 writes has an `image.blob` ToC entry whose offset
/// has wrapped below zero).
pub fn inline_bootstrap(blob: &[u8]) -> (Vec<u8>, usize) {
    use zran::rafs::tail::{HEADER_SIZE, parse_header};
    let header = |end: usize| -> (String, usize) {
        let h: &[u8; HEADER_SIZE] = blob[end - HEADER_SIZE..end].try_into().unwrap();
        let (name, size) = parse_header(h).expect("a tar header");
        (String::from_utf8_lossy(name).into_owned(), size as usize)
    };
    let (name, toc) = header(blob.len());
    assert_eq!(name, "rafs.blob.toc");
    let toc_start = blob.len() - HEADER_SIZE - toc;
    let (name, size) = header(toc_start);
    assert_eq!(name, "image.boot");
    let data = &blob[toc_start - HEADER_SIZE - size..toc_start - HEADER_SIZE];
    let boot = if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::stream::decode_all(data).unwrap()
    } else {
        data.to_vec()
    };
    (boot, toc + HEADER_SIZE)
}

/// An oci-ref image of the test image in `layout`, as nydusify makes one with the
/// `nydus-image` binary `bin` (`create --type targz-ref --blob-inline-meta --features
/// blob-toc` per layer, the bootstrap taken from each ref blob, `merge` with the ref blobs'
/// digests, sizes and ToC digests), into the layout `out` with the original layers.
pub fn build_with_cli(bin: &Path, layout: &Path, work: &Path, out: &Path) {
    let (manifest, config) = layout_manifest(layout);
    std::fs::create_dir_all(work).unwrap();
    let mut descs = Vec::new();
    let (mut boots, mut digests, mut sizes, mut tocs) = (vec![], vec![], vec![], vec![]);
    for (i, l) in manifest["layers"].as_array().unwrap().iter().enumerate() {
        let hex = l["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
        let gz = layout.join("blobs/sha256").join(&hex);
        put_blob(out, &std::fs::read(&gz).unwrap());
        let blob = work.join(format!("ref-{i}"));
        let o = std::process::Command::new(bin)
            .args([
                "create",
                "--log-level",
                "warn",
                "--type",
                "targz-ref",
                "--blob-inline-meta",
                "--features",
                "blob-toc",
            ])
            .arg("--blob")
            .arg(&blob)
            .arg(&gz)
            .output()
            .unwrap();
        assert!(o.status.success(), "nydus-image create: {}", String::from_utf8_lossy(&o.stderr));
        let bytes = std::fs::read(&blob).unwrap();
        let dir = work.join(format!("boot-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let boot = dir.join(&hex);
        let (b, toc_size) = inline_bootstrap(&bytes);
        std::fs::write(&boot, b).unwrap();
        tocs.push(sha256_hex(&bytes[bytes.len() - toc_size..]));
        let (d, size) = put_blob(out, &bytes);
        descs.push(json!({
            "mediaType": BLOB_MEDIA_TYPE, "digest": d, "size": size,
            "annotations": {"containerd.io/snapshot/nydus-blob": "true", "containerd.io/snapshot/nydus-ref": format!("sha256:{hex}")}
        }));
        digests.push(d.trim_start_matches("sha256:").to_string());
        sizes.push(size.to_string());
        boots.push(boot);
    }
    let merged = work.join("image.boot");
    let o = std::process::Command::new(bin)
        .args(["merge", "--log-level", "warn", "--bootstrap"])
        .arg(&merged)
        .args(["--blob-digests", &digests.join(","), "--blob-sizes", &sizes.join(",")])
        .args(["--blob-toc-digests", &tocs.join(",")])
        .args(&boots)
        .output()
        .unwrap();
    assert!(o.status.success(), "nydus-image merge: {}", String::from_utf8_lossy(&o.stderr));
    package(out, &std::fs::read(&merged).unwrap(), &[], descs, config);
}
