//! `generate --nydus-oci-ref TARGET`: an artifact in the form of a Nydus oci-ref image
//! (nydusify `--oci-ref`), so that nydusd and nydus-snapshotter serve zran's index.
//!
//! Per layer with file data, a **ref blob** (media type [`BLOB_MEDIA_TYPE`], annotated
//! `nydus-blob` and `nydus-ref: <original digest>`):
//! `[blob.meta: CI zstd + 4096-B header][hdr "blob.meta"][sha256 per chunk][hdr "blob.digest"]
//! [bootstrap, zstd][hdr "image.boot"][ToC][hdr "rafs.blob.toc"]` (written with
//! [`crate::rafs::tail`]; `ci_offset` 0, as Nydus since 2.2.1 writes it). Nydus puts the
//! layer's own bootstrap in its ref blob; zran puts the merged one (the blob-table entries
//! unpatched), which no reader of the image uses. Then the **bootstrap layer** (a gzip tar
//! of `image/image.boot`, whose blob entries name the ref layers as their blob.meta with the
//! ZRAN|SEPARATE features Nydus's merge gives them, and `image/<ref hex>.blob.meta` in
//! nydusd's cache form), the config (diff_ids: the ref blobs, then the bootstrap tar) and the
//! manifest, tagged in TARGET. The original gzip layers are the data: they must be in TARGET's
//! repository, so they are copied there unless already present.
//!
//! Calls `oci` and `rafs`.

use super::{Artifact, ArtifactError};
use crate::oci::{BlobSource, Digest, Image};
use crate::rafs::format::blob_features as bf;
use crate::rafs::meta::format::HEADER_SIZE;
use crate::rafs::reader::read_bootstrap;
use crate::rafs::tail::{self, TailWriter, TocEntry};
use crate::rafs::writer::set_ref_blob;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use std::io::Write;

/// The media type of Nydus data and ref layers.
pub const BLOB_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.nydus.blob.v1";
/// The annotation of a Nydus image's bootstrap layer (the last layer).
pub const BOOTSTRAP_ANNOTATION: &str = "containerd.io/snapshot/nydus-bootstrap";
/// The annotation of a Nydus data or ref layer.
pub const BLOB_ANNOTATION: &str = "containerd.io/snapshot/nydus-blob";
/// The annotation of a ref layer: the original gzip layer it indexes.
pub const REF_ANNOTATION: &str = "containerd.io/snapshot/nydus-ref";
/// The annotation of the bootstrap layer's RAFS version.
pub const FS_VERSION_ANNOTATION: &str = "containerd.io/snapshot/nydus-fs-version";
/// The bootstrap's path in the bootstrap layer (and the legacy one).
pub const BOOTSTRAP_PATH: &str = "image/image.boot";
pub const LEGACY_BOOTSTRAP_PATH: &str = "image.boot";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The blob features of an oci-ref blob in a merged bootstrap (what Nydus's merge writes:
/// the ref layer's features without INLINED_FS_META).
pub const REF_FEATURES: u32 = bf::CAP_TAR_TOC
    | bf::HAS_TOC
    | bf::HAS_TAR_HEADER
    | bf::INLINED_CHUNK_DIGEST
    | bf::SEPARATE
    | bf::ZRAN
    | bf::CHUNK_INFO_V2
    | bf::ALIGNED;

fn invalid(message: String) -> ArtifactError {
    ArtifactError::Meta { layer: "nydus oci-ref".into(), message }
}

/// One ref blob and what the bootstrap's entry needs of it.
pub struct RefBlob {
    pub bytes: Vec<u8>,
    pub toc_digest: [u8; 32],
    pub toc_size: u32,
}

/// The ref blob of one layer: its blob.meta (compressed form `[CI][header]`, `ci_offset` 0),
/// its chunk digests by CI index, and the bootstrap stored in it.
pub fn ref_blob(meta: &[u8], digests: &[[u8; 32]], bootstrap: &[u8]) -> Result<RefBlob, ArtifactError> {
    let decoded = crate::rafs::meta::decode_bytes(meta).map_err(|e| invalid(format!("blob.meta: {e}")))?;
    if decoded.ci_offset != 0 || decoded.ci_compressed_size + HEADER_SIZE as u64 != meta.len() as u64 {
        return Err(invalid("blob.meta is not in its compressed form at offset 0".into()));
    }
    if decoded.meta.chunks.len() != digests.len() {
        return Err(invalid(format!(
            "{} chunk digests for {} chunks",
            digests.len(),
            decoded.meta.chunks.len()
        )));
    }
    let ci_len = decoded.ci_compressed_size as usize;
    let (ci, header) = meta.split_at(ci_len);
    let (ci_flags, ci_plain) = match decoded.ci_compressor {
        crate::rafs::format::compressor::ZSTD => (
            tail::TOC_ZSTD,
            zstd::bulk::decompress(ci, decoded.ci_uncompressed_size as usize)
                .map_err(|e| invalid(format!("blob.meta CI: {e}")))?,
        ),
        _ => (tail::TOC_NONE, ci.to_vec()),
    };
    let io = |e: std::io::Error| invalid(format!("writing the ref blob: {e}"));
    let mut w = TailWriter::new(Vec::new(), 0);
    w.get_mut().write_all(meta).map_err(io)?;
    w.advance(meta.len() as u64);
    w.header(tail::BLOB_META, meta.len() as u64).map_err(io)?;
    w.toc(TocEntry::new(
        tail::BLOB_META,
        ci_flags,
        Sha256::digest(&ci_plain).into(),
        0,
        ci_len as u64,
        ci_plain.len() as u64,
    ));
    w.toc(TocEntry::new(
        tail::BLOB_META_HEADER,
        tail::TOC_NONE,
        Sha256::digest(header).into(),
        ci_len as u64,
        HEADER_SIZE as u64,
        HEADER_SIZE as u64,
    ));
    let table: Vec<u8> = digests.iter().flatten().copied().collect();
    let at = w.entry(tail::BLOB_DIGEST, &table).map_err(io)?;
    w.toc(TocEntry::new(
        tail::BLOB_DIGEST,
        tail::TOC_NONE,
        Sha256::digest(&table).into(),
        at,
        table.len() as u64,
        table.len() as u64,
    ));
    let boot_z = zstd::bulk::compress(bootstrap, 3).map_err(io)?;
    let at = w.entry(tail::IMAGE_BOOT, &boot_z).map_err(io)?;
    w.toc(TocEntry::new(
        tail::IMAGE_BOOT,
        tail::TOC_ZSTD,
        Sha256::digest(bootstrap).into(),
        at,
        boot_z.len() as u64,
        bootstrap.len() as u64,
    ));
    let done = w.finish().map_err(io)?;
    Ok(RefBlob { bytes: done.writer, toc_digest: done.toc_digest, toc_size: done.toc_size })
}

/// nydusd's cache form of a compressed blob.meta: the CI uncompressed, zeros to 4 KiB, the
/// same header.
fn cache_form(meta: &[u8]) -> Result<Vec<u8>, ArtifactError> {
    let d = crate::rafs::meta::decode_bytes(meta).map_err(|e| invalid(format!("blob.meta: {e}")))?;
    let (ci, header) = meta.split_at(meta.len() - HEADER_SIZE);
    let mut out = match d.ci_compressor {
        crate::rafs::format::compressor::ZSTD => zstd::bulk::decompress(ci, d.ci_uncompressed_size as usize)
            .map_err(|e| invalid(format!("blob.meta CI: {e}")))?,
        _ => ci.to_vec(),
    };
    out.resize(out.len().div_ceil(4096) * 4096, 0);
    out.extend_from_slice(header);
    Ok(out)
}

fn gzip_tar(files: &[(&str, &[u8])]) -> Result<(Vec<u8>, Vec<u8>), ArtifactError> {
    let io = |e: std::io::Error| invalid(format!("bootstrap layer: {e}"));
    let mut t = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    h.set_cksum();
    t.append_data(&mut h, "image", &[][..]).map_err(io)?;
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o444);
        h.set_size(data.len() as u64);
        h.set_cksum();
        t.append_data(&mut h, path, *data).map_err(io)?;
    }
    let tar = t.into_inner().map_err(io)?;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(&tar).map_err(io)?;
    let gz = e.finish().map_err(io)?;
    Ok((tar, gz))
}

/// What was pushed.
pub struct Pushed {
    pub manifest: Digest,
    /// (ref layer digest, its size, the original layer it indexes).
    pub layers: Vec<(Digest, u64, Digest)>,
    /// Original layers copied into the target (the others were there).
    pub copied: usize,
}

/// Write `art` (generated from `image`, every layer with data indexed as gzip) as a Nydus
/// oci-ref image into `target` under `tag`.
pub fn push(
    image: &Image,
    art: &Artifact,
    target: &dyn BlobSource,
    tag: &str,
) -> Result<Pushed, ArtifactError> {
    let bootstrap = read_bootstrap(&art.bootstrap).map_err(|e| invalid(format!("bootstrap: {e}")))?;
    let mut boot = art.bootstrap.clone();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut metas: Vec<(String, Vec<u8>)> = Vec::new();
    let mut layers = Vec::new();
    let mut copied = 0;
    for (i, spec) in bootstrap.blobs.iter().enumerate() {
        if spec.features & bf::ZRAN == 0 || spec.compression_algo != crate::rafs::format::compressor::GZIP {
            return Err(invalid(format!(
                "blob {i} ({}) is not indexed as gzip (zran): Nydus's oci-ref images hold gzip layers only",
                spec.id
            )));
        }
        let name = format!("{}.blob.meta", spec.id);
        let meta = art
            .metas
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, b)| b)
            .ok_or_else(|| invalid(format!("no blob.meta for blob {}", spec.id)))?;
        let digests = art
            .digests
            .get(&spec.id)
            .ok_or_else(|| invalid(format!("no chunk digests for blob {}", spec.id)))?;
        let blob = ref_blob(meta, digests, &art.bootstrap)?;
        let raw: [u8; 32] = Sha256::digest(&blob.bytes).into();
        let digest = Digest::of(&blob.bytes);
        target.put_blob(&digest, &blob.bytes)?;
        set_ref_blob(
            &mut boot,
            i,
            REF_FEATURES,
            (raw, blob.bytes.len() as u64),
            (blob.toc_digest, blob.toc_size),
        )?;
        metas.push((format!("image/{}.blob.meta", digest.hex()), cache_form(meta)?));
        let original: Digest =
            format!("sha256:{}", spec.id).parse().map_err(|_| invalid(format!("blob id {}", spec.id)))?;
        // The data: the original layer, in the target's repository.
        let mut probe = [0u8; 1];
        if target.read_at(&original, 0, &mut probe).is_err() {
            let size =
                image.manifest.layers.iter().find(|l| l.digest == original).map_or(u64::MAX, |l| l.size);
            let bytes = image.source.fetch(&original, size)?;
            target.put_blob(&original, &bytes)?;
            copied += 1;
        }
        descs.push(json!({
            "mediaType": BLOB_MEDIA_TYPE,
            "digest": digest.to_string(),
            "size": blob.bytes.len(),
            "annotations": {
                BLOB_ANNOTATION: "true",
                REF_ANNOTATION: original.to_string(),
            }
        }));
        diff_ids.push(json!(digest.to_string()));
        layers.push((digest, blob.bytes.len() as u64, original));
    }
    // The bootstrap layer.
    let mut files: Vec<(&str, &[u8])> = vec![(BOOTSTRAP_PATH, &boot)];
    files.extend(metas.iter().map(|(n, b)| (n.as_str(), b.as_slice())));
    let (tar, gz) = gzip_tar(&files)?;
    let gz_digest = Digest::of(&gz);
    target.put_blob(&gz_digest, &gz)?;
    diff_ids.push(json!(Digest::of(&tar).to_string()));
    descs.push(json!({
        "mediaType": OCI_LAYER_GZIP,
        "digest": gz_digest.to_string(),
        "size": gz.len(),
        "annotations": {
            BOOTSTRAP_ANNOTATION: "true",
            FS_VERSION_ANNOTATION: "6",
        }
    }));
    // The config: the image's, with the layers of this one.
    let raw = image.source.fetch(&image.manifest.config.digest, 16 << 20)?;
    let mut config: Value =
        serde_json::from_slice(&raw).map_err(|e| invalid(format!("image config: {e}")))?;
    config["rootfs"] = json!({"type": "layers", "diff_ids": diff_ids});
    // The history described the original layers, not these.
    if let Some(c) = config.as_object_mut() {
        c.remove("history");
    }
    let config = serde_json::to_vec(&config).map_err(|e| invalid(e.to_string()))?;
    let config_digest = Digest::of(&config);
    target.put_blob(&config_digest, &config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
        "layers": descs,
        "annotations": {
            "containerd.io/snapshot/nydus-source-digest": image.manifest.digest.to_string(),
            "containerd.io/snapshot/nydus-fs-version": "6",
        }
    });
    let bytes = serde_json::to_vec(&manifest).map_err(|e| invalid(e.to_string()))?;
    let manifest = target.put_manifest(tag, OCI_MANIFEST, &bytes)?;
    Ok(Pushed { manifest, layers, copied })
}
