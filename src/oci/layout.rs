//! OCI image layouts on disk (`oci-layout`, `index.json`, `blobs/sha256/...`), as `skopeo`,
//! `umoci` and `buildah` write them.

use super::digest::Digest;
use super::image::{self, MAX_MANIFEST, OCI_INDEX};
use super::reference::LayoutRef;
use super::source::{BlobSource, OciError, Verifying, check_digest};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The annotation that names a tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Blobs of one OCI layout directory.
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn open(root: &Path) -> Result<Layout, OciError> {
        let marker = root.join("oci-layout");
        let text = std::fs::read_to_string(&marker).map_err(|e| OciError::Io {
            path: format!("{} (not an OCI image layout?)", marker.display()),
            source: e,
        })?;
        #[derive(serde::Deserialize)]
        struct Marker {
            #[serde(rename = "imageLayoutVersion")]
            version: String,
        }
        let m: Marker = serde_json::from_str(&text)
            .map_err(|e| OciError::NotFound(format!("{}: invalid oci-layout file: {e}", marker.display())))?;
        if !m.version.starts_with("1.") {
            return Err(OciError::NotFound(format!(
                "{}: unsupported image layout version {}",
                marker.display(),
                m.version
            )));
        }
        Ok(Layout { root: root.to_path_buf() })
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join(digest.algorithm()).join(digest.hex())
    }

    fn open_file(&self, digest: &Digest) -> Result<File, OciError> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(|e| OciError::Io { path: path.display().to_string(), source: e })
    }

    /// The top-level descriptor for `r`: by tag, by digest, or the only one.
    fn top_level(&self, r: &LayoutRef) -> Result<String, OciError> {
        if let Some(d) = &r.digest {
            return Ok(d.to_string());
        }
        let path = self.root.join("index.json");
        let raw =
            std::fs::read(&path).map_err(|e| OciError::Io { path: path.display().to_string(), source: e })?;
        let digest = Digest::of(&raw);
        let image::ManifestKind::Index { manifests, .. } =
            image::parse_manifest(raw, digest, Some(OCI_INDEX))?
        else {
            return Err(OciError::NotFound(format!("{}: index.json is not an index", self.root.display())));
        };
        let tags: Vec<&str> =
            manifests.iter().filter_map(|d| d.annotations.get(REF_NAME).map(String::as_str)).collect();
        let found = match &r.tag {
            Some(tag) => manifests.iter().find(|d| d.annotations.get(REF_NAME) == Some(tag)),
            None if manifests.len() == 1 => manifests.first(),
            None => None,
        };
        match found {
            Some(d) => Ok(d.digest.to_string()),
            None => Err(OciError::NotFound(format!(
                "{r}: {} (tags in this layout: {})",
                if r.tag.is_some() {
                    "no such tag"
                } else {
                    "several images here; name one with :TAG or @DIGEST"
                },
                if tags.is_empty() { "none".to_string() } else { tags.join(", ") }
            ))),
        }
    }
}

/// An OCI layout as a [`BlobSource`], with the entry point the reference chose.
pub struct LayoutSource {
    layout: Layout,
    entry: String,
    name: String,
    fetched: Arc<AtomicU64>,
}

impl LayoutSource {
    pub fn open(r: &LayoutRef) -> Result<LayoutSource, OciError> {
        let layout = Layout::open(&r.path)?;
        let entry = layout.top_level(r)?;
        Ok(LayoutSource { layout, entry, name: format!("oci:{}", r.path.display()), fetched: Arc::default() })
    }

    /// The reference to resolve first: the chosen top-level manifest or index.
    pub fn entry(&self) -> &str {
        &self.entry
    }
}

impl BlobSource for LayoutSource {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn manifest(&self, reference: &str) -> Result<(Vec<u8>, Digest, Option<String>), OciError> {
        let digest: Digest = reference.parse().map_err(|_| {
            OciError::NotFound(format!(
                "{}: a layout names manifests by digest, not {reference:?}",
                self.name
            ))
        })?;
        let mut raw = Vec::new();
        self.layout.open_file(&digest)?.take(MAX_MANIFEST + 1).read_to_end(&mut raw).map_err(|e| {
            OciError::Io { path: self.layout.blob_path(&digest).display().to_string(), source: e }
        })?;
        if raw.len() as u64 > MAX_MANIFEST {
            return Err(OciError::TooLarge { what: "manifest".into(), digest, limit: MAX_MANIFEST });
        }
        check_digest(&format!("{} manifest", self.name), &raw, &digest)?;
        self.fetched.fetch_add(raw.len() as u64, Ordering::Relaxed);
        Ok((raw, digest, None))
    }

    fn open(&self, digest: &Digest, size: Option<u64>) -> Result<Box<dyn Read + Send>, OciError> {
        let f = self.layout.open_file(digest)?;
        Ok(Box::new(Verifying::new(
            std::io::BufReader::with_capacity(1 << 20, Counted { inner: f, fetched: self.fetched.clone() }),
            digest.clone(),
            size,
        )))
    }

    fn read_at(&self, digest: &Digest, offset: u64, buf: &mut [u8]) -> Result<usize, OciError> {
        use std::os::unix::fs::FileExt;
        let f = self.layout.open_file(digest)?;
        let mut done = 0;
        while done < buf.len() {
            match f.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(OciError::Io {
                        path: self.layout.blob_path(digest).display().to_string(),
                        source: e,
                    });
                }
            }
        }
        self.fetched.fetch_add(done as u64, Ordering::Relaxed);
        Ok(done)
    }

    fn bytes_fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }
}

/// A reader that counts the bytes it passes.
struct Counted<R> {
    inner: R,
    fetched: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.fetched.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}
