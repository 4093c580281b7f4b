//! The one interface to blobs, wherever an image lives, and the resolution of a reference to a
//! single-platform manifest over it.

use super::digest::{Digest, Hasher};
use super::image::{self, ImageError, MAX_MANIFEST, Manifest, ManifestKind, Platform, Referrer};
use std::io::{self, Read};

/// Errors reaching an image. Each names the place: a path, a URL, a digest.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{url}: {message}")]
    Network { url: String, message: String },
    #[error("{url}: HTTP {status}{detail}")]
    Status { url: String, status: u16, detail: String },
    #[error("{registry}: authentication failed: {message}")]
    Auth { registry: String, message: String },
    #[error("{what} {expected}: content has digest {actual}")]
    DigestMismatch { what: String, expected: Digest, actual: Digest },
    #[error("{what} {digest}: {actual} bytes where {expected} were expected")]
    SizeMismatch { what: String, digest: Digest, expected: u64, actual: u64 },
    #[error("{what} {digest} is larger than the {limit} bytes allowed")]
    TooLarge { what: String, digest: Digest, limit: u64 },
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// Where blobs and manifests come from: a registry repository or an OCI layout.
pub trait BlobSource: Send + Sync {
    /// A name for messages: `oci:/path` or `127.0.0.1:5000/repo`.
    fn name(&self) -> String;

    /// The manifest or index `reference` (a tag or a digest) points to, with the media type the
    /// source reported. The digest of the bytes has been checked when the reference is one.
    fn manifest(&self, reference: &str) -> Result<(Vec<u8>, Digest, Option<String>), OciError>;

    /// A whole blob of at most `limit` bytes, its digest checked.
    fn fetch(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, OciError> {
        let mut out = Vec::new();
        let mut r = self.open(digest, None)?.take(limit + 1);
        r.read_to_end(&mut out).map_err(|e| io_error(self.name(), digest, e))?;
        if out.len() as u64 > limit {
            return Err(OciError::TooLarge { what: "blob".into(), digest: digest.clone(), limit });
        }
        Ok(out)
    }

    /// Stream a whole blob. The reader fails at the end if the content does not match `digest`
    /// (or `size`, when given).
    fn open(&self, digest: &Digest, size: Option<u64>) -> Result<Box<dyn Read + Send>, OciError>;

    /// Read `buf.len()` bytes of a blob at `offset` (fewer only at its end).
    fn read_at(&self, digest: &Digest, offset: u64, buf: &mut [u8]) -> Result<usize, OciError>;

    /// Bytes fetched so far (manifests and blobs), for reports.
    fn bytes_fetched(&self) -> u64;

    /// Store a blob whose digest the caller has computed; a blob already there is left alone.
    /// Sources that cannot be written (the default) say so.
    fn put_blob(&self, digest: &Digest, _bytes: &[u8]) -> Result<(), OciError> {
        Err(OciError::NotFound(format!("{}: cannot store blob {digest} here", self.name())))
    }

    /// Store `manifest` (an image manifest naming `subject`; `desc` describes it, with its
    /// artifact type) so that [`BlobSource::referrers`] of `subject` lists it. Its blobs must
    /// be stored first.
    fn put_referrer(&self, _manifest: &[u8], desc: &Referrer, _subject: &Digest) -> Result<(), OciError> {
        Err(OciError::NotFound(format!("{}: cannot store manifest {} here", self.name(), desc.digest)))
    }

    /// Store an image manifest under `tag` (its blobs must be stored first); returns its digest.
    fn put_manifest(&self, tag: &str, media_type: &str, manifest: &[u8]) -> Result<Digest, OciError> {
        let _ = (media_type, manifest);
        Err(OciError::NotFound(format!("{}: cannot store manifest {tag} here", self.name())))
    }

    /// The manifests that name `subject`, as the source lists them (none, by default).
    fn referrers(&self, _subject: &Digest) -> Result<Vec<Referrer>, OciError> {
        Ok(Vec::new())
    }

    /// Whether bytes of this source cost a read, not a link: readers may then fetch more than
    /// they were asked for whenever that saves work (false, by default).
    fn is_local(&self) -> bool {
        false
    }
}

fn io_error(source: String, digest: &Digest, e: io::Error) -> OciError {
    OciError::Io { path: format!("{source} blob {digest}"), source: e }
}

/// A reader that hashes what passes and fails at the end on a digest or size mismatch.
pub struct Verifying<R> {
    inner: R,
    hasher: Option<Hasher>,
    expected: Digest,
    size: Option<u64>,
    seen: u64,
}

impl<R: Read> Verifying<R> {
    pub fn new(inner: R, expected: Digest, size: Option<u64>) -> Self {
        Verifying { inner, hasher: Some(Hasher::default()), expected, size, seen: 0 }
    }
}

impl<R: Read> Read for Verifying<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen += n as u64;
        if self.size.is_some_and(|s| self.seen > s) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("blob {} is longer than its {} bytes", self.expected, self.size.unwrap_or(0)),
            ));
        }
        match self.hasher.as_mut() {
            Some(h) if n > 0 => h.update(&buf[..n]),
            Some(_) => {
                let actual = self.hasher.take().map(Hasher::finish);
                if let Some(s) = self.size.filter(|&s| s != self.seen) {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("blob {} ended after {} of {s} bytes", self.expected, self.seen),
                    ));
                }
                if actual.as_ref() != Some(&self.expected) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "blob {} has digest {}",
                            self.expected,
                            actual.map(|d| d.to_string()).unwrap_or_default()
                        ),
                    ));
                }
            }
            None => {}
        }
        Ok(n)
    }
}

/// An image resolved to one platform's manifest.
pub struct Image {
    /// What the user named, normalized.
    pub name: String,
    /// The index the manifest was chosen from, if any.
    pub index: Option<Digest>,
    pub platform: Option<Platform>,
    pub manifest: Manifest,
    pub source: Box<dyn BlobSource>,
}

/// Follow `reference` (through nested indexes, choosing `platform`) to an image manifest.
pub fn resolve(
    name: String,
    source: Box<dyn BlobSource>,
    reference: &str,
    platform: &Platform,
) -> Result<Image, OciError> {
    let (mut raw, mut digest, mut ctype) = source.manifest(reference)?;
    let mut index = None;
    let mut chosen = None;
    for _depth in 0..8 {
        match image::parse_manifest(raw, digest, ctype.as_deref())? {
            ManifestKind::Image(manifest) => {
                return Ok(Image { name, index, platform: chosen, manifest: *manifest, source });
            }
            ManifestKind::Index { digest: idig, manifests } => {
                let d = image::choose_platform(&idig, &manifests, platform)?;
                index.get_or_insert(idig);
                chosen = d.platform.clone().or(chosen);
                if d.size > MAX_MANIFEST {
                    return Err(OciError::TooLarge {
                        what: "manifest".into(),
                        digest: d.digest.clone(),
                        limit: MAX_MANIFEST,
                    });
                }
                let (r, dg, ct) = source.manifest(&d.digest.to_string())?;
                (raw, digest, ctype) = (r, dg, ct.or(Some(d.media_type.clone())));
            }
        }
    }
    Err(OciError::NotFound(format!("{name}: indexes nested more than 8 deep")))
}

/// Check fetched manifest bytes against the digest they were asked for.
pub fn check_digest(what: &str, bytes: &[u8], expected: &Digest) -> Result<(), OciError> {
    let actual = Digest::of(bytes);
    if &actual != expected {
        return Err(OciError::DigestMismatch { what: what.to_string(), expected: expected.clone(), actual });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifying_reader() {
        let data = b"hello blob".to_vec();
        let d = Digest::of(&data);
        let mut out = Vec::new();
        Verifying::new(&data[..], d.clone(), Some(10)).read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        let err =
            Verifying::new(&b"hello blub"[..], d.clone(), None).read_to_end(&mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("has digest"), "{err}");
        let err = Verifying::new(&data[..5], d.clone(), Some(10)).read_to_end(&mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("ended after 5 of 10"), "{err}");
        let err = Verifying::new(&data[..], d, Some(4)).read_to_end(&mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("longer"), "{err}");
    }
}
