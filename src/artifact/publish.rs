//! The artifact beside its image: an OCI image manifest of artifact type
//! [`ARTIFACT_TYPE`] whose `subject` is the image's manifest, with `image.boot`, the blob.metas
//! and `zran.json` as its layers. It is stored where the image lives (a registry repository or
//! an OCI layout) and found again through the referrers API, or the `sha256-HEX` tag that
//! stands in for it on registries without that API (distribution spec 1.1). The layout is in
//! `formats/artifact-oci.md`.
//!
//! Owns the packaging and the pulled copy in the cache; calls `oci` and the directory
//! functions of this module. Whoever may push to the repository may attach an artifact: it can
//! only point into the image's own layers, and each chunk is checked against the digest it
//! names, but the file table is the artifact's; sign it like any referrer when that matters.

use super::{Artifact, ArtifactError, ArtifactManifest, BOOTSTRAP, MANIFEST, Opened, open_dir, write_dir};
use crate::oci::image::{EMPTY_JSON, OCI_MANIFEST};
use crate::oci::{Digest, Image, Referrer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The artifact type of a zran artifact.
pub const ARTIFACT_TYPE: &str = "application/vnd.zran.artifact.v1";
/// Media types of its parts.
pub const BOOTSTRAP_TYPE: &str = "application/vnd.zran.rafs.bootstrap.v6";
/// The bootstrap as pushed: zstd-compressed (inode and chunk tables shrink several times); a
/// pull takes either.
pub const BOOTSTRAP_ZSTD_TYPE: &str = "application/vnd.zran.rafs.bootstrap.v6+zstd";
pub const BLOB_META_TYPE: &str = "application/vnd.zran.rafs.blob-meta.v1";
pub const MANIFEST_TYPE: &str = "application/vnd.zran.manifest.v1+json";
/// The annotation that names each part's file.
const TITLE: &str = "org.opencontainers.image.title";
/// The config of an artifact that has none: the empty JSON object.
const EMPTY: &[u8] = b"{}";
/// The most a pulled artifact may hold, all parts together.
const MAX_PULL: u64 = 1 << 30;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Desc {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

impl Desc {
    /// Store `bytes` as a blob beside the image and describe them.
    fn put(
        image: &Image,
        media_type: &str,
        bytes: &[u8],
        title: Option<&str>,
    ) -> Result<Desc, ArtifactError> {
        let digest = Digest::of(bytes);
        image.source.put_blob(&digest, bytes)?;
        Ok(Desc {
            media_type: media_type.to_string(),
            digest: digest.to_string(),
            size: bytes.len() as u64,
            annotations: title
                .map(|t| BTreeMap::from([(TITLE.to_string(), t.to_string())]))
                .unwrap_or_default(),
        })
    }
}

/// The manifest document. Field order is fixed, so the same artifact always has the same
/// digest and pushing it again changes nothing.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Doc {
    schema_version: u32,
    media_type: String,
    artifact_type: String,
    config: Desc,
    layers: Vec<Desc>,
    subject: Desc,
}

fn invalid(what: impl Into<PathBuf>, message: String) -> ArtifactError {
    ArtifactError::Invalid { path: what.into(), message }
}

/// Store the artifact in `dir` beside `image`, which must be the image it was generated from.
/// Returns the digest of the artifact's manifest.
pub fn push(dir: &Path, image: &Image) -> Result<Digest, ArtifactError> {
    let opened = open_dir(dir)?;
    if opened.manifest.manifest_digest != image.manifest.digest.to_string() {
        return Err(invalid(
            dir,
            format!(
                "generated from manifest {}, but {} is {}: it does not belong to this image",
                opened.manifest.manifest_digest, image.name, image.manifest.digest
            ),
        ));
    }
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read(&p).map_err(|source| ArtifactError::Io { path: p, source })
    };
    let boot = zstd::bulk::compress(&read(BOOTSTRAP)?, 10)
        .map_err(|source| ArtifactError::Io { path: dir.join(BOOTSTRAP), source })?;
    let mut parts = vec![(BOOTSTRAP_ZSTD_TYPE, BOOTSTRAP.to_string(), boot)];
    for l in &opened.manifest.layers {
        if let Some(file) = &l.blob_meta {
            parts.push((BLOB_META_TYPE, file.clone(), read(file)?));
        }
    }
    parts.push((MANIFEST_TYPE, MANIFEST.to_string(), read(MANIFEST)?));

    let config = Desc::put(image, EMPTY_JSON, EMPTY, None)?;
    let layers = parts
        .iter()
        .map(|(media_type, name, bytes)| Desc::put(image, media_type, bytes, Some(name)))
        .collect::<Result<Vec<_>, _>>()?;
    let doc = Doc {
        schema_version: 2,
        media_type: OCI_MANIFEST.to_string(),
        artifact_type: ARTIFACT_TYPE.to_string(),
        config,
        layers,
        subject: Desc {
            media_type: image.manifest.media_type.clone(),
            digest: image.manifest.digest.to_string(),
            size: image.manifest.raw.len() as u64,
            annotations: BTreeMap::new(),
        },
    };
    let bytes = serde_json::to_vec(&doc).map_err(|e| invalid(dir, e.to_string()))?;
    let digest = Digest::of(&bytes);
    let desc = Referrer {
        media_type: OCI_MANIFEST.to_string(),
        digest: digest.to_string(),
        size: bytes.len() as u64,
        artifact_type: Some(ARTIFACT_TYPE.to_string()),
        annotations: BTreeMap::new(),
    };
    image.source.put_referrer(&bytes, &desc, &image.manifest.digest)?;
    tracing::info!(image = %image.name, artifact = %digest, "artifact stored beside the image");
    Ok(digest)
}

/// The zran artifact stored beside `image`, if there is one (the last listed).
pub fn find(image: &Image) -> Result<Option<Referrer>, ArtifactError> {
    let found = image.source.referrers(&image.manifest.digest)?;
    Ok(found
        .into_iter()
        .rfind(|r| r.artifact_type.as_deref() == Some(ARTIFACT_TYPE) && r.media_type == OCI_MANIFEST))
}

/// A blob.meta part larger than this is left in the registry until its layer is first read
/// (most of a big layer's artifact is its blob.meta, and a start often reads no file of it).
pub const LAZY_META_BYTES: u64 = 1 << 20;

/// Fetch the artifact `found` beside `image` into `cache/<manifest hex>` (every part checked
/// against its digest, written atomically) and return that directory, opened. A copy already
/// there is used when it still opens cleanly. blob.meta parts larger than `lazy_meta_bytes`
/// ([`LAZY_META_BYTES`] for mounts) are left out (the directory says so in `lazy-parts`): a
/// mount fetches each when its layer is first read.
pub fn pull(
    image: &Image,
    found: &Referrer,
    cache: &Path,
    lazy_meta_bytes: u64,
) -> Result<(PathBuf, Opened), ArtifactError> {
    let digest: Digest =
        found.digest.parse().map_err(|_| invalid(cache, format!("referrer digest {:?}", found.digest)))?;
    let dir = cache.join(digest.hex());
    if dir.join(MANIFEST).is_file() {
        match open_dir(&dir) {
            Ok(opened) => return Ok((dir, opened)),
            Err(e) => tracing::warn!("{}: {e}; fetching the artifact again", dir.display()),
        }
    }
    let what = format!("{} artifact {digest}", image.name);
    let (raw, _, _) = image.source.manifest(&digest.to_string())?;
    let doc: Doc = serde_json::from_slice(&raw).map_err(|e| invalid(&what, e.to_string()))?;
    if doc.artifact_type != ARTIFACT_TYPE {
        return Err(invalid(&what, format!("artifact type {:?}", doc.artifact_type)));
    }
    if doc.subject.digest != image.manifest.digest.to_string() {
        return Err(invalid(
            &what,
            format!("its subject is {}, not {}", doc.subject.digest, image.manifest.digest),
        ));
    }
    let total: u64 = doc.layers.iter().map(|l| l.size).sum();
    if total > MAX_PULL {
        return Err(invalid(&what, format!("{total} bytes of parts, more than {MAX_PULL}")));
    }
    let mut bootstrap = None;
    let mut manifest: Option<ArtifactManifest> = None;
    let mut metas = Vec::new();
    let mut parts = Vec::with_capacity(doc.layers.len());
    let mut lazy = false;
    for l in &doc.layers {
        let name = l.annotations.get(TITLE).map(String::as_str).unwrap_or_default();
        let ok_name = match l.media_type.as_str() {
            BOOTSTRAP_TYPE | BOOTSTRAP_ZSTD_TYPE => name == BOOTSTRAP,
            MANIFEST_TYPE => name == MANIFEST,
            BLOB_META_TYPE => name
                .strip_suffix(".blob.meta")
                .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())),
            _ => false,
        };
        if !ok_name {
            return Err(invalid(&what, format!("part {:?} of type {:?}", name, l.media_type)));
        }
        let d: Digest =
            l.digest.parse().map_err(|_| invalid(&what, format!("part digest {:?}", l.digest)))?;
        // A large blob.meta stays in the registry until its layer is first read.
        if l.media_type == BLOB_META_TYPE && l.size > lazy_meta_bytes {
            lazy = true;
            continue;
        }
        parts.push((l, name, d));
    }
    // Eight parts at a time: each is a round trip of its own.
    let mut fetched: Vec<Result<Vec<u8>, crate::oci::OciError>> = Vec::with_capacity(parts.len());
    for group in parts.chunks(8) {
        std::thread::scope(|s| {
            let handles: Vec<_> =
                group.iter().map(|(l, _, d)| s.spawn(|| image.source.fetch(d, l.size))).collect();
            fetched.extend(handles.into_iter().map(|h| {
                h.join().unwrap_or_else(|_| Err(crate::oci::OciError::NotFound("a fetch panicked".into())))
            }));
        });
    }
    for ((l, name, _), bytes) in parts.iter().zip(fetched) {
        let bytes = bytes?;
        if bytes.len() as u64 != l.size {
            return Err(invalid(
                &what,
                format!("{name}: {} bytes where {} were expected", bytes.len(), l.size),
            ));
        }
        match l.media_type.as_str() {
            BOOTSTRAP_TYPE => bootstrap = Some(bytes),
            BOOTSTRAP_ZSTD_TYPE => {
                // Bounded as the parts are; zran.json's digest checks what comes out.
                use std::io::Read;
                let mut out = Vec::new();
                zstd::stream::read::Decoder::new(bytes.as_slice())
                    .and_then(|d| d.take(MAX_PULL + 1).read_to_end(&mut out))
                    .map_err(|e| invalid(&what, format!("{name}: {e}")))?;
                if out.len() as u64 > MAX_PULL {
                    return Err(invalid(
                        &what,
                        format!("{name}: more than {MAX_PULL} bytes once decompressed"),
                    ));
                }
                bootstrap = Some(out);
            }
            MANIFEST_TYPE => {
                manifest =
                    Some(serde_json::from_slice(&bytes).map_err(|e| invalid(&what, format!("{name}: {e}")))?)
            }
            _ => metas.push((name.to_string(), bytes)),
        }
    }
    let (Some(bootstrap), Some(manifest)) = (bootstrap, manifest) else {
        return Err(invalid(&what, format!("it lacks {BOOTSTRAP} or {MANIFEST}")));
    };
    std::fs::create_dir_all(cache)
        .map_err(|source| ArtifactError::Io { path: cache.to_path_buf(), source })?;
    if let Err(e) = write_dir(
        &Artifact { bootstrap, metas, manifest, digests: Default::default(), frames: Default::default() },
        &dir,
        true,
    ) {
        // Another mount may have put the same artifact there meanwhile.
        return open_dir(&dir).map(|opened| (dir, opened)).map_err(|_| e);
    }
    if lazy {
        let marker = dir.join(super::LAZY_PARTS);
        std::fs::write(&marker, b"large blob.meta parts are fetched when their layer is first read\n")
            .map_err(|source| ArtifactError::Io { path: marker, source })?;
    }
    // What was written must open: the bootstrap against zran.json, each blob.meta against the
    // bootstrap. Otherwise it does not stay where the next mount would look.
    match open_dir(&dir) {
        Ok(opened) => Ok((dir, opened)),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}
