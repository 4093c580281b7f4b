//! One pass over a layer blob: stream it from wherever the image lives, inflate it, check it,
//! index it and parse its tar, all at once, without a temporary copy.
//!
//! Calls `oci` (blobs), `gzip` (the index pass) and `tar` (entries).

use crate::gzip::{self, GzipError, Index, IndexBuilder};
use crate::oci::{BlobSource, Compression, Descriptor, OciError};
pub use crate::tar::FileChunk;
use crate::tar::{Entry, TarSink, TarWarning};

/// What one pass over a layer found.
#[derive(Debug)]
pub struct Scan {
    pub entries: Vec<Entry>,
    pub index: Index,
    /// Every chunk of every regular file, in stream order (empty without a chunk size).
    pub chunks: Vec<FileChunk>,
    /// What the tar stream did that is accepted but not well-formed (each is also logged as a
    /// warning naming the layer).
    pub warnings: Vec<TarWarning>,
}

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("layer {digest}: {source}")]
    Blob { digest: String, source: Box<OciError> },
    #[error("layer {digest}: {source}")]
    Gzip { digest: String, source: GzipError },
    #[error("layer {digest}: {message}")]
    Unsupported { digest: String, message: String },
    #[error("layer {digest}: {message}")]
    Tar { digest: String, message: String },
}

/// Stream a gzip layer once: seek index (checkpoints every `span`, and before every `chunk`
/// of every file when given) and tar entries.
pub fn scan_gzip(
    source: &dyn BlobSource,
    layer: &Descriptor,
    span: u64,
    chunk: Option<u64>,
) -> Result<Scan, LayerError> {
    scan_gzip_with_progress(source, layer, span, chunk, &|_| {})
}

/// [`scan_gzip`], calling `progress` with the number of compressed bytes read so far.
pub fn scan_gzip_with_progress(
    source: &dyn BlobSource,
    layer: &Descriptor,
    span: u64,
    chunk: Option<u64>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Scan, LayerError> {
    let digest = layer.digest.to_string();
    match layer.compression() {
        Compression::Gzip => {}
        other => {
            return Err(LayerError::Unsupported {
                digest,
                message: format!(
                    "{} layers ({}) are not supported yet; zran serves gzip and eStargz layers",
                    match other {
                        Compression::Zstd => "zstd",
                        Compression::None => "uncompressed",
                        _ => "unknown",
                    },
                    layer.media_type
                ),
            });
        }
    }
    let reader = source
        .open(&layer.digest, Some(layer.size))
        .map_err(|source| LayerError::Blob { digest: digest.clone(), source: Box::new(source) })?;
    let reader = Counting { inner: reader, read: 0, progress };
    let mut sink = TarSink::new(chunk);
    let index =
        IndexBuilder::new().span(span).member_checkpoints(true).build_with(reader, &mut sink).map_err(
            |source| match source {
                GzipError::Sink { source, .. } => {
                    LayerError::Tar { digest: digest.clone(), message: source.to_string() }
                }
                source => LayerError::Gzip { digest: digest.clone(), source },
            },
        )?;
    let parsed =
        sink.finish().map_err(|e| LayerError::Tar { digest: digest.clone(), message: e.to_string() })?;
    for w in &parsed.warnings {
        tracing::warn!("layer {digest}: {w}");
    }
    Ok(Scan { entries: parsed.entries, index, chunks: parsed.chunks, warnings: parsed.warnings })
}

/// A reader that reports how much it has read.
struct Counting<'a, R> {
    inner: R,
    read: u64,
    progress: &'a (dyn Fn(u64) + Sync),
}

impl<R: std::io::Read> std::io::Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        (self.progress)(self.read);
        Ok(n)
    }
}

/// The default spacing for a layer pass.
pub const DEFAULT_SPAN: u64 = gzip::DEFAULT_SPAN;
