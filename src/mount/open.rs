//! What a mount serves, opened from what the user named: an artifact directory (over the image
//! it was made from, or the same image elsewhere), an image with an artifact stored beside it,
//! a Nydus image (its own bootstrap; native or oci-ref blobs), or an image whose layers all
//! mount from their TOCs (eStargz, eStargz in zstd, zstd:chunked: `tocs`), read into a
//! bootstrap in memory. An artifact's blobs are decoded by their kind: zran contexts over gzip
//! or zstd frames, eStargz members, or stored tar ranges.

use super::MountError;
use super::kernel::BootFile;
use crate::artifact::{self, Options, publish};
use crate::blob::{BlobInput, BlobSet, Decoding, MetaInput};
use crate::oci::{self, Image, ImageRef, OpenOptions};
use crate::rafs::reader::{Bootstrap, read_bootstrap};
use std::path::Path;

/// Everything a mount serves: the bootstrap and its blobs, with their cache files open.
pub struct Mountable {
    pub bootstrap: Bootstrap,
    pub blobs: BlobSet,
    /// The image the layers are read from.
    pub name: String,
    /// Bytes of the image's layers.
    pub image_size: u64,
    /// The bootstrap as a file the kernel can mount (`mount::kernel`).
    pub boot: BootFile,
}

fn open_image(reference: &str, opts: &OpenOptions) -> Result<Image, MountError> {
    let r: ImageRef = reference.parse()?;
    oci::open(&r, opts)
        .map_err(|source| MountError::Image { reference: r.to_string(), source: Box::new(source) })
}

/// Open `source`: an artifact directory written by `generate` (its layers read from `image`
/// when given, else from the image it names), or an image reference. Chunks are cached under
/// `cache`, artifacts stored beside images are fetched to `cache/artifacts`.
pub fn open(
    source: &str,
    image: Option<&str>,
    opts: &OpenOptions,
    cache: &Path,
) -> Result<Mountable, MountError> {
    let dir = Path::new(source);
    if dir.join(artifact::MANIFEST).is_file() {
        let opened = artifact::open_dir(dir)?;
        let reference = image.map_or_else(|| opened.manifest.source.clone(), str::to_string);
        let image = open_image(&reference, opts)?;
        return from_artifact(dir, opened, image, cache);
    }
    let image = open_image(source, opts)?;
    // A Nydus image carries its own bootstrap.
    if crate::nydus::is_nydus(&image.manifest) {
        return from_nydus(image, cache);
    }
    // An artifact stored beside the image (`zran push`, `generate --push`) comes first.
    match publish::find(&image) {
        Ok(Some(found)) => {
            let (dir, opened) =
                publish::pull(&image, &found, &cache.join("artifacts"), publish::LAZY_META_BYTES).map_err(
                    |e| MountError::Pull {
                        digest: found.digest.clone(),
                        image: image.name.clone(),
                        source: Box::new(e),
                    },
                )?;
            tracing::info!(artifact = %found.digest, dir = %dir.display(), "mounting the artifact stored beside the image");
            return from_artifact(&dir, opened, image, cache);
        }
        Ok(None) => {}
        Err(e) => tracing::warn!("{}: cannot list its referrers: {e}", image.name),
    }
    // Otherwise every layer must be mountable from its TOC.
    let (layer_inputs, chunk_size) = super::tocs::toc_inputs(&image, source)?;
    let opts = Options { chunk_size, span: crate::gzip::DEFAULT_SPAN, jobs: 1, prefetch: Vec::new() };
    let art = artifact::generate(&image, &layer_inputs, &opts, &|_, _| {})
        .map_err(|e| MountError::Tocs { image: image.name.clone(), source: Box::new(e) })?;
    let bootstrap = read_bootstrap(&art.bootstrap)?;
    let boot = BootFile::Memory(art.bootstrap);
    let name = image.name.clone();
    let image_size = image.manifest.layers.iter().map(|l| l.size).sum();
    let mut frames = art.frames;
    let ids: Vec<String> = bootstrap.blobs.iter().map(|b| b.id.clone()).collect();
    let blobs = open_blobs(
        image,
        &bootstrap,
        |i| match ids.get(i).and_then(|id| frames.remove(id)) {
            Some(t) => Decoding::Frames(t),
            None => Decoding::Members,
        },
        cache,
    )?;
    Ok(Mountable { bootstrap, blobs, name, image_size, boot })
}

/// Mount a Nydus image from its own bootstrap layer.
fn from_nydus(image: Image, cache: &Path) -> Result<Mountable, MountError> {
    let crate::nydus::Opened { bootstrap, blobs, boot } =
        crate::nydus::open(&image, Some(&cache.join("artifacts")))?;
    tracing::info!(image = %image.name, kind = %crate::nydus::describe(&bootstrap), "mounting a Nydus image");
    let name = image.name.clone();
    let image_size = image.manifest.layers.iter().map(|l| l.size).sum();
    let inputs = bootstrap
        .blobs
        .iter()
        .zip(blobs)
        .map(|(spec, (layer, decoding))| BlobInput { layer, spec, decoding })
        .collect();
    let blobs = BlobSet::open(inputs, &bootstrap.chunk_table, image.source, cache)?;
    Ok(Mountable { bootstrap, blobs, name, image_size, boot: BootFile::Memory(boot) })
}

/// Mount an artifact directory over the layers of `image`, which must be the image it was made
/// from.
fn from_artifact(
    dir: &Path,
    opened: artifact::Opened,
    image: Image,
    cache: &Path,
) -> Result<Mountable, MountError> {
    if image.manifest.digest.to_string() != opened.manifest.manifest_digest {
        return Err(MountError::NotThisImage {
            dir: dir.to_path_buf(),
            artifact_manifest: opened.manifest.manifest_digest.clone(),
            image: image.name.clone(),
            image_manifest: image.manifest.digest.to_string(),
        });
    }
    let boot = BootFile::Artifact {
        path: dir.join(artifact::BOOTSTRAP),
        digest: opened.manifest.bootstrap_digest.clone(),
    };
    let artifact::Opened { bootstrap, mut metas, missing, .. } = opened;
    let name = image.name.clone();
    let image_size = image.manifest.layers.iter().map(|l| l.size).sum();
    // A blob with zran contexts (gzip, or zstd frames: `blob` decodes by the blob's compressor)
    // reads through its blob.meta; one of compressor none (an uncompressed tar) is stored
    // ranges; the rest are eStargz members.
    let stored: Vec<bool> =
        bootstrap.blobs.iter().map(|b| b.compression_algo == crate::rafs::format::compressor::NONE).collect();
    let meta = |i: usize| {
        let zran = metas.remove(&i).map(MetaInput::Ready).or_else(|| {
            let m = missing.get(&i)?.clone();
            Some(MetaInput::Later(Box::new(move |source: &dyn crate::oci::BlobSource| m.fetch(source))))
        });
        match zran {
            Some(m) => Decoding::Zran(m),
            None if stored.get(i).copied().unwrap_or(false) => Decoding::Native,
            None => Decoding::Members,
        }
    };
    let blobs = open_blobs(image, &bootstrap, meta, cache)?;
    Ok(Mountable { bootstrap, blobs, name, image_size, boot })
}

fn open_blobs(
    image: Image,
    bootstrap: &Bootstrap,
    mut decoding: impl FnMut(usize) -> Decoding,
    cache: &Path,
) -> Result<BlobSet, MountError> {
    let mut blob_inputs = Vec::new();
    for (i, spec) in bootstrap.blobs.iter().enumerate() {
        let layer = image
            .manifest
            .layers
            .iter()
            .position(|l| l.digest.hex() == spec.id)
            .ok_or_else(|| MountError::NotALayer { blob: spec.id.clone(), image: image.name.clone() })?;
        blob_inputs.push(BlobInput { layer, spec, decoding: decoding(i) });
    }
    Ok(BlobSet::open(blob_inputs, &bootstrap.chunk_table, image.source, cache)?)
}
