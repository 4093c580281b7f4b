//! One pass over a layer blob: stream it from wherever the image lives, inflate it, check it,
//! index it and parse its tar, all at once, without a temporary copy. Gzip layers go through
//! the gzip engine, zstd layers (plain or zstd:chunked) through the zstd frame engine,
//! uncompressed layers straight to the tar parser.
//!
//! The work is spread over threads so that inflating has a core to itself on a 2-core machine:
//! the blob is read and its digest checked ahead on one (`readahead.rs`), chunks are hashed
//! on another (the tar sink's), windows packed on a third (the gzip engine's).
//!
//! Calls `oci` (blobs), `gzip` (the index pass), `zframe` (the zstd pass) and `tar` (entries).

mod readahead;
pub use readahead::ReadAhead;

use crate::gzip::{self, GzipError, Index, IndexBuilder};
use crate::oci::{BlobSource, Compression, Descriptor, OciError};
pub use crate::tar::FileChunk;
use crate::tar::{Entry, TarSink, TarWarning};
use crate::zframe::{self, ZstdError};

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
    /// zstd layers: what the frame pass found (frames, the largest one, the stream's sha256).
    pub frames: Option<FrameSummary>,
}

/// The frames of a zstd layer, as far as `generate` reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameSummary {
    /// Frames that hold data.
    pub frames: u64,
    pub skippable: u64,
    pub checksummed: u64,
    /// The largest output of one frame.
    pub largest_frame: u64,
    /// sha256 of the uncompressed stream: the layer's DiffID.
    pub diff_id: [u8; 32],
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
    #[error("layer {digest}: {source}")]
    Zstd { digest: String, source: ZstdError },
    #[error(
        "layer {digest}: the uncompressed stream's sha256 is {found}, the image config's DiffID {expected}"
    )]
    DiffId { digest: String, found: String, expected: String },
}

/// Stream a gzip layer once: seek index (checkpoints every `span`, and before every `chunk`
/// of every file when given) and tar entries.
pub fn scan_gzip(
    source: &dyn BlobSource,
    layer: &Descriptor,
    span: u64,
    chunk: Option<u64>,
) -> Result<Scan, LayerError> {
    scan_gzip_with_progress(source, layer, span, chunk, &[], &|_| {})
}

/// [`scan_gzip`], calling `progress` with the number of compressed bytes read so far; the
/// files named in `hot` (normalized paths: a start-up trace's) get checkpoints close before
/// each of their chunks ([`crate::tar::HOT_SLACK`]).
pub fn scan_gzip_with_progress(
    source: &dyn BlobSource,
    layer: &Descriptor,
    span: u64,
    chunk: Option<u64>,
    hot: &[Vec<u8>],
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
    let reader = open_ahead(source, layer)?;
    let reader = Counting { inner: reader, read: 0, progress };
    gzip_pass(reader, &digest, span, TarSink::new(chunk).with_hot(hot.iter().cloned()))
}

/// [`scan_gzip`] on the calling thread alone (besides the gzip engine's window packer): no
/// read-ahead, chunks hashed inline. The reference the threaded pass must agree with byte for
/// byte.
pub fn scan_gzip_sequential(
    source: &dyn BlobSource,
    layer: &Descriptor,
    span: u64,
    chunk: Option<u64>,
) -> Result<Scan, LayerError> {
    let digest = layer.digest.to_string();
    let reader = source
        .open(&layer.digest, Some(layer.size))
        .map_err(|source| LayerError::Blob { digest: digest.clone(), source: Box::new(source) })?;
    gzip_pass(reader, &digest, span, TarSink::inline(chunk))
}

/// The index pass over a gzip blob, its data to `sink`.
fn gzip_pass<R: std::io::Read>(
    reader: R,
    digest: &str,
    span: u64,
    mut sink: TarSink,
) -> Result<Scan, LayerError> {
    let index =
        IndexBuilder::new().span(span).member_checkpoints(true).build_with(reader, &mut sink).map_err(
            |source| match source {
                // The tar sink's errors name the offset (and the file) themselves.
                GzipError::Sink { source, .. } => {
                    LayerError::Tar { digest: digest.to_string(), message: source.to_string() }
                }
                source => LayerError::Gzip { digest: digest.to_string(), source },
            },
        )?;
    let parsed =
        sink.finish().map_err(|e| LayerError::Tar { digest: digest.to_string(), message: e.to_string() })?;
    for w in &parsed.warnings {
        tracing::warn!("layer {digest}: {w}");
    }
    Ok(Scan {
        entries: parsed.entries,
        index,
        chunks: parsed.chunks,
        warnings: parsed.warnings,
        frames: None,
    })
}

/// Stream a zstd layer (plain, or zstd:chunked read as a stream) once: its frame starts as
/// checkpoints (every `span`, and before every `chunk` of every file when given), tar entries,
/// and the sha256 of the uncompressed stream, checked against `diff_id` when given: an error
/// for plain zstd, a warning for a `chunked` (zstd:chunked) layer, whose writers rewrite the tar.
#[allow(clippy::too_many_arguments)]
pub fn scan_zstd(
    source: &dyn BlobSource,
    layer: &Descriptor,
    span: u64,
    chunk: Option<u64>,
    diff_id: Option<&str>,
    chunked: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Scan, LayerError> {
    let digest = layer.digest.to_string();
    let reader = open_ahead(source, layer)?;
    let reader = Counting { inner: reader, read: 0, progress };
    let mut sink = TarSink::new(chunk);
    let fi = zframe::index_stream(reader, span, &mut sink).map_err(|source| match source {
        ZstdError::Sink { source, .. } => {
            LayerError::Tar { digest: digest.clone(), message: source.to_string() }
        }
        source => LayerError::Zstd { digest: digest.clone(), source },
    })?;
    let parsed =
        sink.finish().map_err(|e| LayerError::Tar { digest: digest.clone(), message: e.to_string() })?;
    for w in &parsed.warnings {
        tracing::warn!("layer {digest}: {w}");
    }
    let found = format!("sha256:{}", hex::encode(fi.diff_id));
    if let Some(expected) = diff_id
        && expected != found
    {
        let padded = fi
            .padded_diff_ids
            .iter()
            .position(|d| format!("sha256:{}", hex::encode(d)) == expected)
            .map(|k| (k + 1) * 512);
        match padded {
            // The stream is the DiffID's tar without its trailing zero blocks: the same files.
            Some(zeros) => tracing::info!(
                layer = %digest,
                "the zstd stream is the config's DiffID {expected} without its last {zeros} zero bytes \
                 (the writer dropped the tar's end padding); the files are the same"
            ),
            None if !chunked => {
                return Err(LayerError::DiffId { digest, found, expected: expected.to_string() });
            }
            // containers/image writes zstd:chunked layers from a rewritten tar stream and
            // keeps the config's DiffIDs of the original: readers of the format trust its TOC
            // digest, never the DiffID. The stream read here is what the chunk digests are
            // taken from.
            None => tracing::warn!(
                layer = %digest,
                "the zstd:chunked stream's sha256 is {found}, not the config's DiffID {expected}, \
                 nor that stream with its end padding restored; serving the stream as it is"
            ),
        }
    }
    if fi.checksummed < fi.frames.len() as u64 {
        tracing::info!(
            layer = %digest,
            frames = fi.frames.len(),
            checksummed = fi.checksummed,
            "zstd frames without a content checksum: their data is checked by the DiffID and the chunk digests only"
        );
    }
    let frames = FrameSummary {
        frames: fi.frames.len() as u64,
        skippable: fi.skippable,
        checksummed: fi.checksummed,
        largest_frame: fi.largest_frame,
        diff_id: fi.diff_id,
    };
    Ok(Scan {
        entries: parsed.entries,
        index: fi.index,
        chunks: parsed.chunks,
        warnings: parsed.warnings,
        frames: Some(frames),
    })
}

/// Stream an uncompressed tar layer once: tar entries and chunks, whose offsets in the tar are
/// their offsets in the blob. The index has one checkpoint, at 0.
pub fn scan_tar(
    source: &dyn BlobSource,
    layer: &Descriptor,
    chunk: Option<u64>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Scan, LayerError> {
    use crate::gzip::{Checkpoint, Requests, Sink};
    use std::io::Read;
    let digest = layer.digest.to_string();
    let mut reader = source
        .open(&layer.digest, Some(layer.size))
        .map_err(|source| LayerError::Blob { digest: digest.clone(), source: Box::new(source) })?;
    let mut sink = TarSink::new(chunk);
    let mut requests = Requests::default();
    let mut buf = vec![0u8; 512 * 1024];
    let mut at = 0u64;
    let mut tail = [0u8; 8];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(LayerError::Blob {
                    digest,
                    source: Box::new(OciError::Io {
                        path: format!("{} at offset {at}", layer.digest),
                        source: e,
                    }),
                });
            }
        };
        sink.data(at, &buf[..n], &mut requests)
            .map_err(|e| LayerError::Tar { digest: digest.clone(), message: format!("offset {at}: {e}") })?;
        requests.take();
        if n >= 8 {
            tail.copy_from_slice(&buf[n - 8..n]);
        } else {
            tail.copy_within(n.., 0);
            tail[8 - n..].copy_from_slice(&buf[..n]);
        }
        at += n as u64;
        progress(at);
    }
    let parsed =
        sink.finish().map_err(|e| LayerError::Tar { digest: digest.clone(), message: e.to_string() })?;
    for w in &parsed.warnings {
        tracing::warn!("layer {digest}: {w}");
    }
    let index = Index {
        compressed_size: at,
        uncompressed_size: at,
        span: u64::MAX,
        members: 0,
        tail,
        checkpoints: vec![Checkpoint {
            out: 0,
            input: 0,
            bits: 0,
            prev_byte: 0,
            member: 0,
            window_len: 0,
            window: Vec::new(),
        }],
        member_ends: Vec::new(),
    };
    Ok(Scan {
        entries: parsed.entries,
        index,
        chunks: parsed.chunks,
        warnings: parsed.warnings,
        frames: None,
    })
}

/// Open a layer's blob, read ahead on a thread of its own.
fn open_ahead(source: &dyn BlobSource, layer: &Descriptor) -> Result<ReadAhead, LayerError> {
    let blob = |source| LayerError::Blob { digest: layer.digest.to_string(), source: Box::new(source) };
    let reader = source.open(&layer.digest, Some(layer.size)).map_err(blob)?;
    ReadAhead::new(reader, "zran-read")
        .map_err(|e| blob(OciError::Io { path: format!("{} (read-ahead thread)", layer.digest), source: e }))
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
