//! What `nydusify` pushes besides the data blobs (`formats/nydus-native.md`): the bootstrap
//! layer (gzip of a tar holding `image/image.boot` and `image/<blob hex>.blob.meta`), the
//! config (`rootfs.diff_ids` = the blobs' digests and the bootstrap tar's, a history entry for
//! the bootstrap), the manifest; and the converted image stored in a registry or a layout.

use super::{
    ANNOTATION_BLOB, ANNOTATION_BOOTSTRAP, ANNOTATION_BUILDER_VERSION, ANNOTATION_FS_VERSION,
    ANNOTATION_SOURCE_DIGEST, ANNOTATION_SOURCE_REFERENCE, ConvertError, Converted, Hashing, LayerBlob,
    NYDUS_BLOB,
};
use crate::oci::image::{DOCKER_MANIFEST, OCI_MANIFEST};
use crate::oci::layout::Layout;
use crate::oci::{Digest, Image, ImageRef, RegistryOptions, RegistrySource};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use std::io::BufWriter;
use std::path::Path;

/// The largest source config read.
const MAX_CONFIG: u64 = 16 << 20;
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The bootstrap layer, written to `work`; returns it and its diff id (sha256 of the tar).
pub fn bootstrap_layer(
    durable: bool,
    work: &Path,
    bootstrap: &[u8],
    metas: &[(String, Vec<u8>)],
) -> Result<(LayerBlob, Digest), ConvertError> {
    let tmp = work.join("bootstrap.tar.gz.tmp");
    let io = |source: std::io::Error| ConvertError::Io { path: tmp.clone(), source };
    let file = std::fs::File::create(&tmp).map_err(io)?;
    let gz = flate2::write::GzEncoder::new(
        Hashing { inner: BufWriter::new(file), hasher: Sha256::new() },
        flate2::Compression::default(),
    );
    let mut tar = tar::Builder::new(Hashing { inner: gz, hasher: Sha256::new() });
    let header = |path: &str, kind: tar::EntryType, mode: u32, size: u64| -> std::io::Result<tar::Header> {
        let mut h = tar::Header::new_ustar();
        h.set_path(path)?;
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        Ok(h)
    };
    let mut write = || -> std::io::Result<()> {
        tar.append(&header("image", tar::EntryType::Directory, 0o755, 0)?, std::io::empty())?;
        tar.append(
            &header("image/image.boot", tar::EntryType::Regular, 0o444, bootstrap.len() as u64)?,
            bootstrap,
        )?;
        for (hex, meta) in metas {
            let path = format!("image/{hex}.blob.meta");
            tar.append(&header(&path, tar::EntryType::Regular, 0o444, meta.len() as u64)?, meta.as_slice())?;
        }
        tar.finish()
    };
    write().map_err(io)?;
    let Hashing { inner: gz, hasher: tar_hasher } = tar.into_inner().map_err(io)?;
    let Hashing { inner, hasher } = gz.finish().map_err(io)?;
    let file = inner.into_inner().map_err(|e| io(e.into_error()))?;
    if durable {
        file.sync_all().map_err(io)?;
    }
    let size = file.metadata().map_err(io)?.len();
    let digest = Digest::from_sha256(hasher.finalize().into());
    let path = work.join("bootstrap.tar.gz");
    std::fs::rename(&tmp, &path).map_err(|source| ConvertError::Io { path: path.clone(), source })?;
    let diff_id = Digest::from_sha256(tar_hasher.finalize().into());
    let source = crate::oci::Descriptor {
        media_type: OCI_LAYER_GZIP.into(),
        digest: digest.clone(),
        size,
        annotations: Default::default(),
        platform: None,
        artifact_type: None,
    };
    Ok((LayerBlob { path, digest, size, chunks: 0, deduplicated: 0, data_size: 0, source }, diff_id))
}

/// The converted config and its media type.
pub fn config(
    image: &Image,
    blobs: &[LayerBlob],
    bootstrap_diff_id: &Digest,
) -> Result<(Vec<u8>, String), ConvertError> {
    let desc = &image.manifest.config;
    let raw = image.source.fetch(&desc.digest, MAX_CONFIG)?;
    let mut config: Value = serde_json::from_slice(&raw)
        .map_err(|e| ConvertError::Invalid(format!("config {}: {e}", desc.digest)))?;
    if !config.is_object() {
        return Err(ConvertError::Invalid(format!("config {}: not a JSON object", desc.digest)));
    }
    let mut diff_ids: Vec<Value> = blobs.iter().map(|b| json!(b.digest.to_string())).collect();
    diff_ids.push(json!(bootstrap_diff_id.to_string()));
    config["rootfs"] = json!({ "type": "layers", "diff_ids": diff_ids });
    let entry = json!({ "created_by": "Nydus Converter", "comment": "Nydus Bootstrap Layer" });
    match config.get_mut("history").and_then(Value::as_array_mut) {
        Some(h) => h.push(entry),
        None => config["history"] = json!([entry]),
    }
    let bytes = serde_json::to_vec(&config).map_err(|e| ConvertError::Invalid(e.to_string()))?;
    Ok((bytes, desc.media_type.clone()))
}

/// The converted manifest and its media type (the source's: OCI or Docker).
pub fn manifest(
    image: &Image,
    blobs: &[LayerBlob],
    bootstrap: &LayerBlob,
    config: &[u8],
    config_media_type: &str,
) -> Result<(Vec<u8>, String), ConvertError> {
    let oci = image.manifest.media_type != DOCKER_MANIFEST;
    let media_type = if oci { OCI_MANIFEST } else { DOCKER_MANIFEST };
    let mut layers: Vec<Value> = blobs
        .iter()
        .map(|b| {
            json!({
                "mediaType": NYDUS_BLOB,
                "digest": b.digest.to_string(),
                "size": b.size,
                "annotations": { ANNOTATION_BLOB: "true" },
            })
        })
        .collect();
    layers.push(json!({
        "mediaType": if oci { OCI_LAYER_GZIP } else { DOCKER_LAYER_GZIP },
        "digest": bootstrap.digest.to_string(),
        "size": bootstrap.size,
        "annotations": { ANNOTATION_BOOTSTRAP: "true", ANNOTATION_FS_VERSION: "6" },
    }));
    let mut annotations: serde_json::Map<String, Value> =
        image.manifest.annotations.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    annotations.insert(ANNOTATION_SOURCE_DIGEST.into(), json!(image.manifest.digest.to_string()));
    annotations.insert(ANNOTATION_SOURCE_REFERENCE.into(), json!(image.name));
    annotations.insert(ANNOTATION_FS_VERSION.into(), json!("6"));
    annotations
        .insert(ANNOTATION_BUILDER_VERSION.into(), json!(format!("zran {}", env!("CARGO_PKG_VERSION"))));
    let m = json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {
            "mediaType": config_media_type,
            "digest": Digest::of(config).to_string(),
            "size": config.len(),
        },
        "layers": layers,
        "annotations": annotations,
    });
    let bytes = serde_json::to_vec(&m).map_err(|e| ConvertError::Invalid(e.to_string()))?;
    Ok((bytes, media_type.to_string()))
}

/// Store the converted image at `target`; returns the manifest's digest. Blobs go first, the
/// manifest last, so that a failure leaves no manifest naming a missing blob. In a layout the
/// blob files are moved out of the work directory.
pub fn publish(c: &Converted, target: &ImageRef, registry: &RegistryOptions) -> Result<Digest, ConvertError> {
    let digest = Digest::of(&c.manifest);
    match target {
        ImageRef::Layout(l) => {
            if l.digest.is_some() {
                return Err(ConvertError::Invalid(format!(
                    "{target}: a target is named by a tag, not a digest"
                )));
            }
            let layout = Layout::create(&l.path)?;
            for b in c.layers.iter().chain([&c.bootstrap_layer]) {
                layout.add_blob_file(&b.digest, &b.path)?;
            }
            layout.add_blob(&Digest::of(&c.config), &c.config)?;
            layout.add_manifest(&c.manifest, &c.manifest_media_type, l.tag.as_deref())?;
        }
        ImageRef::Registry(r) => {
            if r.digest.is_some() {
                return Err(ConvertError::Invalid(format!(
                    "{target}: a target is named by a tag, not a digest"
                )));
            }
            let reg = RegistrySource::new(r, registry)?;
            for b in c.layers.iter().chain([&c.bootstrap_layer]) {
                reg.put_blob_file(&b.digest, &b.path)?;
            }
            crate::oci::BlobSource::put_blob(&reg, &Digest::of(&c.config), &c.config)?;
            let reference = r.tag.clone().unwrap_or_else(|| digest.to_string());
            reg.put_manifest(&reference, &c.manifest_media_type, &c.manifest)?;
        }
    }
    Ok(digest)
}
