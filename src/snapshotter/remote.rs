//! Remote layers: which image a layer `Prepare` belongs to (from the labels containerd passes),
//! whether zran serves that whole image lazily, and the labels a remote layer snapshot keeps.
//!
//! The decision is made once per image and remembered for a while: an image is served when it
//! is a Nydus image (native or oci-ref blobs: its bootstrap layer is fetched and checked here),
//! when a zran artifact is stored beside it (fetched and opened here, so that a mount later does
//! not fail on it), or, with `enable_stargz`, when every layer mounts from a TOC verified
//! against the manifest (eStargz, eStargz in zstd, zstd:chunked; `mount::tocs`). Anything else takes containerd's ordinary path for the whole image.

use crate::artifact::{self, Options, inputs, publish};
use crate::oci::{self, ImageRef, OpenOptions, RegistryRef};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The label that makes a `Prepare` a layer pull: the chain id to commit.
pub const TARGET: &str = "containerd.io/snapshot.ref";
/// Labels containerd's CRI plugin passes (with `disable_snapshot_annotations = false`).
pub const CRI_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
pub const CRI_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
pub const CRI_MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";
/// Labels `ctr-remote image rpull` (stargz-snapshotter's client) passes.
pub const STARGZ_REFERENCE: &str = "containerd.io/snapshot/remote/stargz.reference";
pub const STARGZ_DIGEST: &str = "containerd.io/snapshot/remote/stargz.digest";

/// What a remote layer snapshot carries: the label stargz-snapshotter also sets, and where
/// the layer comes from.
pub const REMOTE: &str = "containerd.io/snapshot/remote";
pub const ZRAN_IMAGE: &str = "containerd.io/snapshot/zran.image";
pub const ZRAN_LAYER: &str = "containerd.io/snapshot/zran.layer";
pub const ZRAN_VIA: &str = "containerd.io/snapshot/zran.via";
/// The artifact directory the decision left in the cache (mounted without asking the registry
/// for it again; the image reference is used when it is gone).
pub const ZRAN_ARTIFACT: &str = "containerd.io/snapshot/zran.artifact";

/// How long a decision about an image holds.
const REMEMBER: Duration = Duration::from_secs(600);

/// An image zran serves: its reference pinned to the manifest digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteImage {
    /// `HOST/REPO@sha256:...`.
    pub reference: String,
    /// The manifest digest's hex.
    pub manifest_hex: String,
    /// The layers' digests, in order.
    pub layers: Vec<String>,
    /// `artifact`, `estargz`, `toc` (zstd:chunked layers among the TOCs), `nydus-native`,
    /// `nydus-oci-ref` or `nydus` (both kinds).
    pub via: &'static str,
    /// The artifact directory in the cache: the one stored beside the image, or the one made
    /// from the eStargz TOCs; empty for a Nydus image (its mount reads its own bootstrap) and
    /// for `toc` (its mount reads the TOCs).
    pub dir: PathBuf,
}

/// What to do with an image's layers.
#[derive(Debug, Clone)]
pub enum Decision {
    Remote(Arc<RemoteImage>),
    /// containerd's ordinary path, and why.
    Plain(String),
}

/// A remote layer snapshot, read back from its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteLayer {
    /// The pinned image reference.
    pub image: String,
    pub index: usize,
    pub count: usize,
    /// The artifact directory, if it is still there.
    pub dir: Option<PathBuf>,
}

impl RemoteLayer {
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Option<RemoteLayer> {
        let image = labels.get(ZRAN_IMAGE)?.clone();
        let (i, n) = labels.get(ZRAN_LAYER)?.split_once('/')?;
        let (index, count) = (i.parse().ok()?, n.parse().ok()?);
        let dir = labels
            .get(ZRAN_ARTIFACT)
            .map(PathBuf::from)
            .filter(|d| d.join(crate::artifact::MANIFEST).is_file());
        (index < count).then_some(RemoteLayer { image, index, count, dir })
    }

    /// Is this the image's top layer (so that the image's mount is exactly this chain)?
    pub fn is_top(&self) -> bool {
        self.index + 1 == self.count
    }

    /// The key the image's serving process is kept under: the manifest digest's hex.
    pub fn image_key(&self) -> Option<&str> {
        self.image.rsplit_once("@sha256:").map(|(_, h)| h).filter(|h| h.len() == 64)
    }

    /// The key of the serving process of this layer's chain: the image's for its top layer,
    /// `HEX-INDEX` for the image's first `INDEX + 1` layers.
    pub fn serve_key(&self) -> Option<String> {
        let hex = self.image_key()?;
        Some(if self.is_top() { hex.to_string() } else { format!("{hex}-{}", self.index) })
    }
}

/// The labels to add to the snapshot of layer `index` of `image`.
pub fn remote_labels(image: &RemoteImage, index: usize) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (REMOTE.to_string(), "remote snapshot".to_string()),
        (ZRAN_IMAGE.to_string(), image.reference.clone()),
        (ZRAN_LAYER.to_string(), format!("{index}/{}", image.layers.len())),
        (ZRAN_VIA.to_string(), image.via.to_string()),
    ]);
    if !image.dir.as_os_str().is_empty() {
        labels.insert(ZRAN_ARTIFACT.to_string(), image.dir.to_string_lossy().into_owned());
    }
    labels
}

/// The image and layer a layer `Prepare`'s labels name: the CRI labels, else the stargz ones.
pub fn image_of(labels: &HashMap<String, String>) -> Option<(String, String, Option<String>)> {
    if let (Some(r), Some(l)) = (labels.get(CRI_IMAGE_REF), labels.get(CRI_LAYER_DIGEST)) {
        return Some((r.clone(), l.clone(), labels.get(CRI_MANIFEST_DIGEST).cloned()));
    }
    if let (Some(r), Some(l)) = (labels.get(STARGZ_REFERENCE), labels.get(STARGZ_DIGEST)) {
        return Some((r.clone(), l.clone(), None));
    }
    None
}

/// Decides, and remembers decisions.
pub struct Decider {
    pub open: OpenOptions,
    pub enable_stargz: bool,
    /// Where artifacts stored beside images are fetched to (the mounts' cache).
    pub cache: PathBuf,
    remembered: Mutex<HashMap<String, (Instant, Decision)>>,
}

impl Decider {
    pub fn new(open: OpenOptions, enable_stargz: bool, cache: &Path) -> Decider {
        Decider { open, enable_stargz, cache: cache.to_path_buf(), remembered: Mutex::new(HashMap::new()) }
    }

    /// Whether layer `layer` of image `reference` (manifest `manifest` when known) is served
    /// remotely, with the layer's index when it is. A new decision is logged once.
    pub fn decide(&self, reference: &str, layer: &str, manifest: Option<&str>) -> (Decision, Option<usize>) {
        let key = format!("{reference}@{}", manifest.unwrap_or("-"));
        let known = {
            let mut m = self.remembered.lock().unwrap_or_else(|p| p.into_inner());
            m.retain(|_, (t, _)| t.elapsed() < REMEMBER);
            m.get(&key).map(|(_, d)| d.clone())
        };
        let d = match known {
            Some(d) => d,
            None => {
                let d = self.decide_image(reference, manifest);
                match &d {
                    Decision::Remote(i) => {
                        tracing::info!(image = %reference, manifest = %i.manifest_hex, via = i.via, "served lazily by zran")
                    }
                    Decision::Plain(why) => {
                        tracing::info!(image = %reference, "containerd pulls and unpacks it: {why}")
                    }
                }
                self.remembered
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, (Instant::now(), d.clone()));
                d
            }
        };
        match d {
            Decision::Remote(i) => match i.layers.iter().position(|l| l == layer) {
                Some(n) => (Decision::Remote(i), Some(n)),
                None => {
                    (Decision::Plain(format!("layer {layer} is not in manifest {}", i.manifest_hex)), None)
                }
            },
            plain => (plain, None),
        }
    }

    fn decide_image(&self, reference: &str, manifest: Option<&str>) -> Decision {
        let mut r: RegistryRef = match reference.parse::<ImageRef>() {
            Ok(ImageRef::Registry(r)) => r,
            Ok(ImageRef::Layout(_)) => return Decision::Plain(format!("{reference} is not in a registry")),
            Err(e) => return Decision::Plain(e.to_string()),
        };
        if let Some(m) = manifest {
            match m.parse() {
                Ok(d) => {
                    r.digest = Some(d);
                    r.tag = None;
                }
                Err(_) => return Decision::Plain(format!("manifest digest {m:?} is not a digest")),
            }
        }
        let image = match oci::open(&ImageRef::Registry(r.clone()), &self.open) {
            Ok(i) => i,
            Err(e) => return Decision::Plain(format!("cannot open it: {e}")),
        };
        let layers: Vec<String> = image.manifest.layers.iter().map(|l| l.digest.to_string()).collect();
        r.tag = None;
        r.digest = Some(image.manifest.digest.clone());
        let remote = |via, dir| {
            Decision::Remote(Arc::new(RemoteImage {
                reference: r.to_string(),
                manifest_hex: image.manifest.digest.hex().to_string(),
                layers: layers.clone(),
                via,
                dir,
            }))
        };
        // A Nydus image carries its own bootstrap: served when it opens (every blob found).
        if crate::nydus::is_nydus(&image.manifest) {
            return match crate::nydus::open(&image, Some(&self.cache.join("artifacts"))) {
                Ok(opened) => {
                    let kinds: Vec<_> = opened.bootstrap.blobs.iter().map(crate::nydus::blob_kind).collect();
                    let via = if kinds.iter().all(|k| *k == crate::nydus::BlobKind::Native) {
                        "nydus-native"
                    } else if kinds.iter().all(|k| *k == crate::nydus::BlobKind::OciRef) {
                        "nydus-oci-ref"
                    } else {
                        "nydus"
                    };
                    remote(via, PathBuf::new())
                }
                Err(e) => Decision::Plain(format!("a Nydus image zran cannot serve: {e}")),
            };
        }
        match publish::find(&image) {
            Ok(Some(found)) => {
                return match publish::pull(
                    &image,
                    &found,
                    &self.cache.join("artifacts"),
                    publish::LAZY_META_BYTES,
                ) {
                    Ok((dir, _)) => remote("artifact", dir),
                    Err(e) => {
                        Decision::Plain(format!("its zran artifact {} cannot be used: {e}", found.digest))
                    }
                };
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(image = %reference, "cannot list its referrers: {e}"),
        }
        if !self.enable_stargz {
            return Decision::Plain(
                "no zran artifact is stored beside it (zran push; or --enable-stargz for eStargz images)"
                    .into(),
            );
        }
        // Every layer mountable from its TOC: eStargz, eStargz in zstd, zstd:chunked. The TOCs
        // are read and verified, and the bootstrap made, here.
        match crate::mount::tocs::toc_inputs(&image, reference) {
            Ok((ins, chunk_size)) => {
                let opts =
                    Options { chunk_size, span: crate::gzip::DEFAULT_SPAN, jobs: 1, prefetch: Vec::new() };
                match artifact::generate(&image, &ins, &opts, &|_, _| {}) {
                    // eStargz only: the bootstrap made from the TOCs, kept for the mount.
                    Ok(a) if a.frames.is_empty() => {
                        let dir = self
                            .cache
                            .join("artifacts")
                            .join(format!("estargz-{}", image.manifest.digest.hex()));
                        match artifact::write_dir(&a, &dir, true) {
                            Ok(()) => remote("estargz", dir),
                            Err(e) => Decision::Plain(format!("its eStargz TOCs cannot be served: {e}")),
                        }
                    }
                    // zstd:chunked layers: the mount reads the TOCs again from the image.
                    Ok(_) => remote("toc", PathBuf::new()),
                    Err(e) => Decision::Plain(format!("its TOCs cannot be served: {e}")),
                }
            }
            Err(e) => {
                Decision::Plain(format!("no zran artifact beside it, and its layers cannot be served: {e}"))
            }
        }
    }
}

impl Decider {
    /// An artifact for the first `index + 1` layers of the pinned image `reference`: what a
    /// snapshot made on a layer below a served image's top needs under it (another image
    /// shares those layers). Made from the TOCs of eStargz layers, or by one streaming pass
    /// over each gzip layer (a download of those layers, as a plain pull would do), and kept
    /// in the cache.
    pub fn prefix_artifact(&self, reference: &str, index: usize) -> Result<PathBuf, String> {
        let r: ImageRef =
            reference.parse().map_err(|e: crate::oci::reference::ReferenceError| e.to_string())?;
        let mut image = oci::open(&r, &self.open).map_err(|e| format!("cannot open {reference}: {e}"))?;
        let dir =
            self.cache.join("artifacts").join(format!("prefix-{}-{index}", image.manifest.digest.hex()));
        if artifact::open_dir(&dir).is_ok() {
            return Ok(dir);
        }
        if index >= image.manifest.layers.len() {
            return Err(format!("{reference} has no layer {index}"));
        }
        image.manifest.layers.truncate(index + 1);
        tracing::info!(image = %reference, layers = index + 1, "indexing the first layers of the image, which another image builds on");
        let (ins, chunk_size) = inputs::layer_inputs(&image, false, None).map_err(|e| e.to_string())?;
        let jobs = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
        let opts = Options { chunk_size, span: crate::gzip::DEFAULT_SPAN, jobs, prefetch: Vec::new() };
        let a = artifact::generate(&image, &ins, &opts, &|_, _| {}).map_err(|e| e.to_string())?;
        artifact::write_dir(&a, &dir, true).map_err(|e| e.to_string())?;
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_the_image_cri_first() {
        let mut l = HashMap::from([
            (STARGZ_REFERENCE.to_string(), "r/s:1".to_string()),
            (STARGZ_DIGEST.to_string(), "sha256:b".to_string()),
        ]);
        assert_eq!(image_of(&l), Some(("r/s:1".into(), "sha256:b".into(), None)));
        l.insert(CRI_IMAGE_REF.into(), "r/c:1".into());
        l.insert(CRI_LAYER_DIGEST.into(), "sha256:c".into());
        l.insert(CRI_MANIFEST_DIGEST.into(), "sha256:m".into());
        assert_eq!(image_of(&l), Some(("r/c:1".into(), "sha256:c".into(), Some("sha256:m".into()))));
        assert_eq!(image_of(&HashMap::from([(TARGET.to_string(), "sha256:x".to_string())])), None);
    }

    #[test]
    fn remote_layers_read_back_from_their_labels() {
        let hex = "ab".repeat(32);
        let img = RemoteImage {
            reference: format!("127.0.0.1:5000/p@sha256:{hex}"),
            manifest_hex: hex.clone(),
            layers: vec!["sha256:1".into(), "sha256:2".into()],
            via: "artifact",
            dir: PathBuf::from("/nonexistent"),
        };
        let l = RemoteLayer::from_labels(&remote_labels(&img, 1)).expect("remote");
        assert_eq!((l.index, l.count, l.is_top()), (1, 2, true));
        assert_eq!(l.image_key(), Some(hex.as_str()));
        assert!(!RemoteLayer::from_labels(&remote_labels(&img, 0)).expect("remote").is_top());
        let mut bad = remote_labels(&img, 0);
        bad.insert(ZRAN_LAYER.into(), "2/2".into());
        assert_eq!(RemoteLayer::from_labels(&bad), None);
        assert_eq!(RemoteLayer::from_labels(&BTreeMap::new()), None);
    }
}
