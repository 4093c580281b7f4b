//! Nydus images as nydusify pushes them: recognised by their last layer (annotated
//! `containerd.io/snapshot/nydus-bootstrap`), a gzip tar holding the merged RAFS v6 bootstrap
//! (`image/image.boot`, or `image.boot` in old images) and perhaps one `image/<hex>.blob.meta`
//! per layer. Each blob of that bootstrap is either a **native** data blob (a manifest layer
//! whose digest is the blob id; chunks are its own zstd/lz4/stored ranges) or an **oci-ref**
//! blob (features ZRAN: the data is the original gzip layer, read through zran contexts from a
//! blob.meta found in the bootstrap layer or in the ref layer named by `blob_meta_digest`).
//!
//! Owns the bootstrap layer's extraction (every size bounded before it is read), the ref
//! layer's blob.meta range, and the choice of how each blob is decoded. Calls `oci`, `rafs`,
//! `artifact` (the format's names, which `generate --nydus-oci-ref` writes) and names `blob`'s
//! decoding kinds.

use crate::blob::{Decoding, MetaInput};
use crate::oci::{BlobSource, Digest, Image, Manifest, OciError};
use crate::rafs::format::{blob_features, compressor};
use crate::rafs::meta::BlobMeta;
use crate::rafs::reader::{Bootstrap, ReadError, read_bootstrap};
use crate::rafs::writer::BlobSpec;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;

pub use crate::artifact::nydus_ref::{
    BLOB_ANNOTATION, BLOB_MEDIA_TYPE, BOOTSTRAP_ANNOTATION, BOOTSTRAP_PATH, FS_VERSION_ANNOTATION,
    LEGACY_BOOTSTRAP_PATH, REF_ANNOTATION,
};

/// The largest bootstrap layer fetched (compressed).
pub const MAX_BOOTSTRAP_LAYER: u64 = 256 << 20;
/// The largest bootstrap read out of it.
pub const MAX_BOOTSTRAP: u64 = 1 << 30;
/// The largest blob.meta read out of it or out of a ref layer.
pub const MAX_META: u64 = 256 << 20;
/// The most tar entries looked at in a bootstrap layer.
const MAX_ENTRIES: usize = 1 << 16;
/// The most bytes of all the files kept from a bootstrap layer.
const MAX_KEPT: u64 = 2 << 30;

/// What is wrong with a Nydus image; messages name the layer, blob and offset.
#[derive(Debug, thiserror::Error)]
pub enum NydusError {
    #[error("{image}: cannot fetch its Nydus bootstrap layer {digest}")]
    Fetch { image: String, digest: String, source: Box<OciError> },
    #[error("{image}: the Nydus bootstrap layer {digest} is {size} bytes, more than the {limit} zran reads")]
    TooLarge { image: String, digest: String, size: u64, limit: u64 },
    #[error("Nydus bootstrap layer {digest}: not a gzip tar: {message}")]
    NotGzipTar { digest: String, message: String },
    #[error("Nydus bootstrap layer {digest}: no {BOOTSTRAP_PATH} (nor {LEGACY_BOOTSTRAP_PATH}) in it")]
    NoBootstrap { digest: String },
    #[error("Nydus bootstrap layer {digest}: {path}: {message}")]
    Entry { digest: String, path: String, message: String },
    #[error("Nydus bootstrap layer {digest}: {BOOTSTRAP_PATH}")]
    Bootstrap { digest: String, source: ReadError },
    #[error(
        "{image}: its Nydus bootstrap names blob {blob} (blob {index}), which no layer of the manifest is (native: a layer with that digest; oci-ref: a layer annotated {REF_ANNOTATION} with it)"
    )]
    BlobNotInImage { image: String, blob: String, index: usize },
    #[error(
        "{image}: layer {layer} ({digest}) is {size} bytes, but the bootstrap's blob {index} has chunk data up to byte {needed}: the blob is truncated"
    )]
    Truncated { image: String, layer: usize, digest: String, size: u64, index: usize, needed: u64 },
    #[error("{image}: blob {index} ({blob}): {message}")]
    Blob { image: String, blob: String, index: usize, message: String },
}

/// Whether `manifest` is a Nydus image's: its last layer is annotated as the bootstrap.
pub fn is_nydus(manifest: &Manifest) -> bool {
    manifest
        .layers
        .last()
        .is_some_and(|l| l.annotations.get(BOOTSTRAP_ANNOTATION).is_some_and(|v| v == "true"))
}

/// How a blob of a Nydus bootstrap holds its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKind {
    /// Its own chunks, compressed one by one (nydusify's default).
    Native,
    /// The original gzip layer, through a zran blob.meta (nydusify `--oci-ref`).
    OciRef,
}

/// Which kind a blob-table entry describes.
pub fn blob_kind(spec: &BlobSpec) -> BlobKind {
    if spec.features & blob_features::ZRAN != 0 { BlobKind::OciRef } else { BlobKind::Native }
}

/// What `zran inspect` says a Nydus image is: "nydus native (zstd)", "nydus oci-ref", or both.
pub fn describe(bootstrap: &Bootstrap) -> String {
    let mut parts: Vec<String> = Vec::new();
    for b in &bootstrap.blobs {
        let p = match blob_kind(b) {
            BlobKind::OciRef => "oci-ref".to_string(),
            BlobKind::Native => format!("native ({})", compressor_name(b.compression_algo)),
        };
        if !parts.contains(&p) {
            parts.push(p);
        }
    }
    if parts.is_empty() {
        return "nydus (no data blobs)".into();
    }
    format!("nydus {}", parts.join(" + "))
}

fn compressor_name(c: u32) -> String {
    match c {
        compressor::NONE => "none".into(),
        compressor::LZ4_BLOCK => "lz4_block".into(),
        compressor::GZIP => "gzip".into(),
        compressor::ZSTD => "zstd".into(),
        c => format!("compressor {c}"),
    }
}

/// The files zran uses from a bootstrap layer.
#[derive(Debug, Clone, Default)]
pub struct Extracted {
    /// `image/image.boot` (or the legacy `image.boot`).
    pub bootstrap: Vec<u8>,
    /// `image/<hex>.blob.meta`, by hex.
    pub metas: HashMap<String, Vec<u8>>,
}

/// Read a bootstrap layer's bytes (`digest` names it in errors): a gzip tar whose
/// `image/image.boot` is the bootstrap. Sizes are bounded before anything is read.
pub fn extract(bytes: &[u8], digest: &str) -> Result<Extracted, NydusError> {
    let not = |message: String| NydusError::NotGzipTar { digest: digest.to_string(), message };
    if bytes.len() < 18 || bytes[..2] != [0x1f, 0x8b] {
        return Err(not("no gzip magic at offset 0".into()));
    }
    let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(bytes));
    let mut out = Extracted::default();
    let (mut boot, mut legacy) = (None, None);
    let mut kept = 0u64;
    let entries = archive.entries().map_err(|e| not(e.to_string()))?;
    for (n, entry) in entries.enumerate() {
        if n >= MAX_ENTRIES {
            return Err(not(format!("more than {MAX_ENTRIES} entries")));
        }
        let mut entry = entry.map_err(|e| not(format!("entry {n}: {e}")))?;
        let raw = entry.path_bytes().into_owned();
        let path = String::from_utf8_lossy(&raw);
        let path = path.trim_start_matches("./").trim_start_matches('/').to_string();
        let limit = if path == BOOTSTRAP_PATH || path == LEGACY_BOOTSTRAP_PATH {
            MAX_BOOTSTRAP
        } else if meta_hex(&path).is_some() {
            MAX_META
        } else {
            continue;
        };
        if !entry.header().entry_type().is_file() {
            return Err(NydusError::Entry {
                digest: digest.into(),
                path,
                message: "not a regular file".into(),
            });
        }
        let size = entry.size();
        if size > limit || kept.saturating_add(size) > MAX_KEPT {
            return Err(NydusError::Entry {
                digest: digest.into(),
                path,
                message: format!("{size} bytes, more than the {limit} zran reads"),
            });
        }
        kept += size;
        let mut data = Vec::with_capacity(size as usize);
        entry.by_ref().take(size).read_to_end(&mut data).map_err(|e| NydusError::Entry {
            digest: digest.into(),
            path: path.clone(),
            message: e.to_string(),
        })?;
        if data.len() as u64 != size {
            return Err(NydusError::Entry {
                digest: digest.into(),
                path,
                message: format!("ends after {} of its {size} bytes", data.len()),
            });
        }
        if path == BOOTSTRAP_PATH {
            boot = Some(data);
        } else if path == LEGACY_BOOTSTRAP_PATH {
            legacy = Some(data);
        } else if let Some(hex) = meta_hex(&path) {
            out.metas.insert(hex.to_string(), data);
        }
    }
    out.bootstrap = boot.or(legacy).ok_or_else(|| NydusError::NoBootstrap { digest: digest.into() })?;
    Ok(out)
}

/// The hex of `image/<64 hex>.blob.meta`.
fn meta_hex(path: &str) -> Option<&str> {
    let hex = path.strip_prefix("image/")?.strip_suffix(".blob.meta")?;
    (hex.len() == 64 && hex.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))).then_some(hex)
}

/// A Nydus image opened: its bootstrap read and checked, and how each blob is decoded.
pub struct Opened {
    pub bootstrap: Bootstrap,
    /// The bootstrap's bytes (`image/image.boot`), for the kernel.
    pub boot: Vec<u8>,
    /// By blob index: the manifest layer that names it (for messages) and its decoding.
    pub blobs: Vec<(usize, Decoding)>,
}

/// Fetch `image`'s bootstrap layer and read its bootstrap. With `keep`, a directory, the layer
/// is kept there by digest (`nydus-<hex>.tar.gz`, written whole under a temporary name, then
/// renamed) and taken from there next time, its digest checked again: the snapshotter's
/// decision and the serving process it starts then fetch it once between them.
pub fn fetch_bootstrap(image: &Image, keep: Option<&Path>) -> Result<(Extracted, Bootstrap), NydusError> {
    let Some(desc) = image.manifest.layers.last() else {
        return Err(NydusError::NoBootstrap { digest: "(the manifest has no layers)".into() });
    };
    let digest = desc.digest.to_string();
    if desc.size > MAX_BOOTSTRAP_LAYER {
        return Err(NydusError::TooLarge {
            image: image.name.clone(),
            digest,
            size: desc.size,
            limit: MAX_BOOTSTRAP_LAYER,
        });
    }
    let kept = keep.map(|dir| dir.join(format!("nydus-{}.tar.gz", desc.digest.hex())));
    let cached = kept.as_ref().and_then(|path| {
        let bytes = std::fs::read(path).ok()?;
        (hex::encode(Sha256::digest(&bytes)) == desc.digest.hex()).then_some(bytes)
    });
    let bytes = match cached {
        Some(bytes) => bytes,
        None => {
            let bytes = image.source.fetch(&desc.digest, MAX_BOOTSTRAP_LAYER).map_err(|e| {
                NydusError::Fetch { image: image.name.clone(), digest: digest.clone(), source: Box::new(e) }
            })?;
            if let Some(path) = &kept
                && let Err(e) = keep_file(path, &bytes)
            {
                tracing::warn!("cannot keep the Nydus bootstrap layer at {}: {e}", path.display());
            }
            bytes
        }
    };
    let extracted = extract(&bytes, &digest)?;
    let bootstrap = read_bootstrap(&extracted.bootstrap)
        .map_err(|source| NydusError::Bootstrap { digest: digest.clone(), source })?;
    Ok((extracted, bootstrap))
}

/// Write `bytes` to `path` whole: a temporary file beside it, synced, then renamed.
fn keep_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Open a Nydus image (`keep`: as for [`fetch_bootstrap`]): its bootstrap, and for each blob the layer that holds it (native) or
/// names it (oci-ref) and how its chunks are decoded. Every blob must be accounted for by the
/// manifest; a native blob's layer must hold all its chunk data.
pub fn open(image: &Image, keep: Option<&Path>) -> Result<Opened, NydusError> {
    let (extracted, bootstrap) = fetch_bootstrap(image, keep)?;
    let data_layers = &image.manifest.layers[..image.manifest.layers.len().saturating_sub(1)];
    let mut blobs = Vec::with_capacity(bootstrap.blobs.len());
    for (index, spec) in bootstrap.blobs.iter().enumerate() {
        let missing =
            || NydusError::BlobNotInImage { image: image.name.clone(), blob: spec.id.clone(), index };
        let blob_err = |message: String| NydusError::Blob {
            image: image.name.clone(),
            blob: spec.id.clone(),
            index,
            message,
        };
        match blob_kind(spec) {
            BlobKind::Native => {
                let layer = data_layers.iter().position(|l| l.digest.hex() == spec.id).ok_or_else(missing)?;
                let desc = &data_layers[layer];
                let needed = bootstrap
                    .chunk_table
                    .iter()
                    .filter(|c| usize::from(c.blob) == index)
                    .map(|c| c.compressed_offset.saturating_add(u64::from(c.compressed_size)))
                    .max()
                    .unwrap_or(0);
                if desc.size < needed {
                    return Err(NydusError::Truncated {
                        image: image.name.clone(),
                        layer,
                        digest: desc.digest.to_string(),
                        size: desc.size,
                        index,
                        needed,
                    });
                }
                blobs.push((layer, Decoding::Native));
            }
            BlobKind::OciRef => {
                let wanted = format!("sha256:{}", spec.id);
                let meta_hex = hex::encode(spec.meta_digest);
                let layer = data_layers
                    .iter()
                    .position(|l| l.annotations.get(REF_ANNOTATION) == Some(&wanted))
                    .or_else(|| data_layers.iter().position(|l| l.digest.hex() == meta_hex))
                    .ok_or_else(missing)?;
                let inline = extracted.metas.get(&spec.id).or_else(|| extracted.metas.get(&meta_hex));
                let meta = if let Some(bytes) = inline {
                    let m = BlobMeta::decode(bytes, spec).map_err(|e| {
                        blob_err(format!("image/<hex>.blob.meta in the bootstrap layer: {e}"))
                    })?;
                    MetaInput::Ready(m)
                } else if spec.meta_digest != [0u8; 32] {
                    let digest: Digest = format!("sha256:{meta_hex}")
                        .parse()
                        .map_err(|_| blob_err("blob_meta_digest is not a digest".into()))?;
                    let spec = spec.clone();
                    MetaInput::Later(Box::new(move |source: &dyn BlobSource| {
                        meta_from_ref(source, &digest, &spec)
                    }))
                } else {
                    return Err(blob_err(
                        "an oci-ref blob without a blob.meta: none in the bootstrap layer and no blob_meta_digest"
                            .into(),
                    ));
                };
                blobs.push((layer, Decoding::Zran(meta)));
            }
        }
    }
    Ok(Opened { bootstrap, blobs, boot: extracted.bootstrap })
}

/// The blob.meta of an oci-ref blob, read from its ref layer `digest`: the CI at
/// `[ci_offset, +ci_compressed_size)` and the 4096-byte header after it, checked against the
/// bootstrap's blob entry.
pub fn meta_from_ref(source: &dyn BlobSource, digest: &Digest, spec: &BlobSpec) -> Result<BlobMeta, String> {
    let len = spec
        .ci_compressed_size
        .checked_add(crate::rafs::meta::format::HEADER_SIZE as u64)
        .filter(|&l| l <= MAX_META)
        .ok_or_else(|| format!("ref layer {digest}: a blob.meta of {} bytes", spec.ci_compressed_size))?;
    if spec.meta_size != 0 && spec.ci_offset.saturating_add(len) > spec.meta_size {
        return Err(format!(
            "ref layer {digest}: blob.meta at {}+{len} lies past its {} bytes",
            spec.ci_offset, spec.meta_size
        ));
    }
    let mut buf = vec![0u8; len as usize];
    let n =
        source.read_at(digest, spec.ci_offset, &mut buf).map_err(|e| format!("ref layer {digest}: {e}"))?;
    if n != buf.len() {
        return Err(format!(
            "ref layer {digest}: ends at {} inside the blob.meta at {}+{len}",
            spec.ci_offset + n as u64,
            spec.ci_offset
        ));
    }
    BlobMeta::decode(&buf, spec).map_err(|e| format!("ref layer {digest} at offset {}: {e}", spec.ci_offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn layer(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, d) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(d.len() as u64);
            h.set_mode(0o444);
            h.set_cksum();
            b.append_data(&mut h, p, *d).unwrap();
        }
        let t = b.into_inner().unwrap();
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&t).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn extraction_finds_the_bootstrap_and_refuses_what_is_not_one() {
        let hex = "ab".repeat(32);
        let got = extract(
            &layer(&[
                ("image/image.boot", b"boot"),
                (&format!("image/{hex}.blob.meta"), b"meta"),
                ("x", b"y"),
            ]),
            "d",
        )
        .unwrap();
        assert_eq!(got.bootstrap, b"boot");
        assert_eq!(got.metas.get(&hex).map(Vec::as_slice), Some(&b"meta"[..]));
        // The legacy path is read when the new one is absent.
        assert_eq!(extract(&layer(&[("image.boot", b"old")]), "d").unwrap().bootstrap, b"old");
        let e = extract(&layer(&[("image/other", b"x")]), "d").unwrap_err();
        assert!(e.to_string().contains("no image/image.boot"), "{e}");
        let e = extract(b"plain bytes, not gzip at all", "d").unwrap_err();
        assert!(e.to_string().contains("not a gzip tar"), "{e}");
        let mut cut = layer(&[("image/image.boot", &[7u8; 100_000])]);
        cut.truncate(cut.len() / 2);
        assert!(extract(&cut, "d").is_err());
    }
}
