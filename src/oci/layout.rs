//! OCI image layouts on disk (`oci-layout`, `index.json`, `blobs/sha256/...`), as `skopeo`,
//! `umoci` and `buildah` write them.

use super::digest::Digest;
use super::image::{self, MAX_MANIFEST, OCI_INDEX, OCI_MANIFEST, Referrer, ReferrerIndex};
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

    /// Open the layout at `root`, first making an empty one (`oci-layout`, an `index.json`
    /// without manifests) when there is none.
    pub fn create(root: &Path) -> Result<Layout, OciError> {
        if !root.join("oci-layout").exists() {
            let layout = Layout { root: root.to_path_buf() };
            layout.write_atomic(&root.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
            if !layout.index_path().exists() {
                let empty = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#);
                layout.write_atomic(&layout.index_path(), empty.as_bytes())?;
            }
        }
        Layout::open(root)
    }

    /// Store the blob in file `path` (its digest computed by the caller) by moving the file
    /// into place (copied first when it is on another filesystem).
    pub fn add_blob_file(&self, digest: &Digest, path: &Path) -> Result<(), OciError> {
        let to = self.blob_path(digest);
        let err = |e| OciError::Io { path: to.display().to_string(), source: e };
        let dir = to.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir).map_err(err)?;
        if std::fs::rename(path, &to).is_ok() {
            return Ok(());
        }
        let tmp = dir.join(format!(".{}.tmp-{}", digest.hex(), std::process::id()));
        let result = std::fs::copy(path, &tmp)
            .and_then(|_| File::open(&tmp)?.sync_all())
            .and_then(|_| std::fs::rename(&tmp, &to));
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(err)
    }

    /// Store a small blob (config, manifest).
    pub fn add_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<(), OciError> {
        check_digest("blob", bytes, digest)?;
        self.write_atomic(&self.blob_path(digest), bytes)
    }

    /// Store a manifest and list it in `index.json`, under `tag` when given (an entry with
    /// the same tag is replaced). Returns its digest.
    pub fn add_manifest(
        &self,
        manifest: &[u8],
        media_type: &str,
        tag: Option<&str>,
    ) -> Result<Digest, OciError> {
        let digest = Digest::of(manifest);
        self.add_blob(&digest, manifest)?;
        self.edit_index(|manifests| {
            manifests.retain(|m| match tag {
                Some(t) => {
                    m.pointer(&format!("/annotations/{}", REF_NAME.replace('/', "~1")))
                        .and_then(|v| v.as_str())
                        != Some(t)
                }
                None => m.get("digest").and_then(|d| d.as_str()) != Some(digest.to_string().as_str()),
            });
            let mut desc = serde_json::json!({
                "mediaType": media_type,
                "digest": digest.to_string(),
                "size": manifest.len(),
            });
            if let Some(t) = tag {
                desc["annotations"] = serde_json::json!({ REF_NAME: t });
            }
            manifests.push(desc);
            Ok(true)
        })?;
        Ok(digest)
    }

    /// Read `index.json`, let `edit` change its `manifests` array, and write it back
    /// (atomically) when `edit` returns `Ok(true)`. An error of `edit` names the file.
    fn edit_index(
        &self,
        edit: impl FnOnce(&mut Vec<serde_json::Value>) -> Result<bool, String>,
    ) -> Result<(), OciError> {
        let path = self.index_path();
        let err = |e: String| OciError::NotFound(format!("{}: {e}", path.display()));
        let raw =
            std::fs::read(&path).map_err(|e| OciError::Io { path: path.display().to_string(), source: e })?;
        let mut index: serde_json::Value = serde_json::from_slice(&raw).map_err(|e| err(e.to_string()))?;
        let manifests = index
            .get_mut("manifests")
            .and_then(|m| m.as_array_mut())
            .ok_or_else(|| err("no manifests array".into()))?;
        if !edit(manifests).map_err(err)? {
            return Ok(());
        }
        let out = serde_json::to_vec(&index).map_err(|e| err(e.to_string()))?;
        self.write_atomic(&path, &out)
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    /// Write a file under the layout whole or not at all: a temporary sibling, synced, renamed.
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), OciError> {
        use std::io::Write;
        let err = |e| OciError::Io { path: path.display().to_string(), source: e };
        let dir = path.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir).map_err(err)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let result = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(err)
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
        let path = self.index_path();
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
            None => {
                // Artifacts stored beside an image (its referrers) do not make it ambiguous.
                let mut images = manifests.iter().filter(|d| d.artifact_type.is_none());
                match (images.next(), images.next()) {
                    (Some(only), None) => Some(only),
                    _ => None,
                }
            }
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
    /// A layout to write into: `r.path`, made an empty layout first if it is not one.
    pub fn create(r: &LayoutRef) -> Result<LayoutSource, OciError> {
        let marker = r.path.join("oci-layout");
        if !marker.exists() {
            let layout = Layout { root: r.path.clone() };
            layout.write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
            layout.write_atomic(&layout.index_path(), br#"{"schemaVersion":2,"manifests":[]}"#)?;
        }
        let layout = Layout::open(&r.path)?;
        Ok(LayoutSource {
            layout,
            entry: String::new(),
            name: format!("oci:{}", r.path.display()),
            fetched: Arc::default(),
        })
    }

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

    fn is_local(&self) -> bool {
        true
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

    fn put_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<(), OciError> {
        let path = self.layout.blob_path(digest);
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64) {
            return Ok(());
        }
        check_digest(&format!("{} blob", self.name), bytes, digest)?;
        self.layout.write_atomic(&path, bytes)
    }

    fn put_manifest(&self, tag: &str, media_type: &str, manifest: &[u8]) -> Result<Digest, OciError> {
        let digest = Digest::of(manifest);
        self.put_blob(&digest, manifest)?;
        // index.json names it by tag; an entry of the same tag is replaced.
        self.layout.edit_index(|manifests| {
            manifests.retain(|m| {
                m.pointer(&format!("/annotations/{}", REF_NAME.replace('/', "~1"))).and_then(|t| t.as_str())
                    != Some(tag)
            });
            manifests.push(serde_json::json!({
                "mediaType": media_type,
                "digest": digest.to_string(),
                "size": manifest.len(),
                "annotations": { REF_NAME: tag },
            }));
            Ok(true)
        })?;
        Ok(digest)
    }

    fn put_referrer(&self, manifest: &[u8], desc: &Referrer, _subject: &Digest) -> Result<(), OciError> {
        let digest: Digest = desc
            .digest
            .parse()
            .map_err(|_| OciError::NotFound(format!("{}: bad digest {:?}", self.name, desc.digest)))?;
        self.put_blob(&digest, manifest)?;
        // A layout lists referrers in index.json, untagged; readers find them by their subject.
        self.layout.edit_index(|manifests| {
            if manifests
                .iter()
                .any(|m| m.get("digest").and_then(|d| d.as_str()) == Some(desc.digest.as_str()))
            {
                return Ok(false);
            }
            manifests.push(serde_json::to_value(desc).map_err(|e| e.to_string())?);
            Ok(true)
        })
    }

    fn referrers(&self, subject: &Digest) -> Result<Vec<Referrer>, OciError> {
        let path = self.layout.index_path();
        let raw =
            std::fs::read(&path).map_err(|e| OciError::Io { path: path.display().to_string(), source: e })?;
        let index = ReferrerIndex::parse(&raw, &path.display().to_string())?;
        let mut out = Vec::new();
        for m in index.manifests {
            if m.media_type != OCI_MANIFEST || m.size > MAX_MANIFEST {
                continue;
            }
            let Ok((bytes, _, _)) = self.manifest(&m.digest) else { continue };
            if image::subject_of(&bytes).as_ref() == Some(subject) {
                out.push(m);
            }
        }
        Ok(out)
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
