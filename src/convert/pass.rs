//! One streaming pass over a gzip layer: inflate (the gzip engine), parse the tar (the push
//! parser), cut every regular file into chunks, and hand the chunks to a second thread that
//! hashes, deduplicates (within the layer), compresses and appends them to the layer's data
//! file. At most [`IN_FLIGHT`] chunks wait between the two threads, so memory stays bounded by
//! a few chunk sizes whatever the layer's size.

use super::{Compressor, ConvertError};
use crate::gzip::{GzipError, IndexBuilder, Requests, Sink};
use crate::oci::{BlobSource, Compression, Descriptor};
use crate::tar::{Entry, TarParser, TarWarning};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

/// Chunks waiting for the compressing thread.
const IN_FLIGHT: usize = 4;

/// Files eStargz writes into a layer for its own use; stargz's converter drops them.
pub const ESTARGZ_META: [&[u8]; 3] = [b"stargz.index.json", b".prefetch.landmark", b".no.prefetch.landmark"];

/// A distinct chunk of a layer, as stored in its data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// sha256 of the uncompressed bytes.
    pub digest: [u8; 32],
    /// Where its stored bytes start in the data file.
    pub offset: u64,
    /// Stored (compressed, or raw) size.
    pub stored_size: u32,
    /// Uncompressed size.
    pub size: u32,
    /// Stored compressed (else raw: compression did not make it smaller).
    pub compressed: bool,
}

/// What one pass over a layer made.
#[derive(Debug)]
pub struct Pass {
    pub entries: Vec<Entry>,
    /// Every chunk of every file, in stream order: its offset in the uncompressed tar stream,
    /// and the index of its bytes in [`Pass::stored`].
    pub refs: Vec<(u64, u32)>,
    /// The layer's distinct chunks, in order of first appearance.
    pub stored: Vec<Stored>,
    /// The data file: the stored chunks back to back (4 KiB aligned without compression).
    pub data: PathBuf,
    pub data_size: u64,
    /// sha256 state over the data file's bytes.
    pub hasher: Sha256,
    pub warnings: Vec<TarWarning>,
}

/// A chunk on its way to the compressing thread: offset in the tar stream and bytes.
type Job = (u64, Vec<u8>);

struct ChunkSink {
    parser: TarParser,
    chunk_size: usize,
    /// The chunk being filled: entry, offset within the file, bytes.
    cur: Option<(usize, u64, Vec<u8>)>,
    /// Chunks closed during the current push (entry, offset within the file, bytes).
    closed: Vec<(usize, u64, Vec<u8>)>,
    tx: Option<mpsc::SyncSender<Job>>,
    drop_estargz_meta: bool,
}

impl ChunkSink {
    /// Send the closed chunks (entries are known now), dropping eStargz's own files.
    fn send(&mut self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let entries = self.parser.entries();
        for (e, at, bytes) in self.closed.drain(..) {
            let Some(entry) = entries.get(e) else { return Err("chunk of an unknown entry".into()) };
            if self.drop_estargz_meta && ESTARGZ_META.contains(&entry.path.as_slice()) {
                continue;
            }
            let sent = self.tx.as_ref().map(|tx| tx.send((entry.data_offset + at, bytes)));
            if !matches!(sent, Some(Ok(()))) {
                return Err("the chunk writer stopped".into());
            }
        }
        Ok(())
    }
}

impl Sink for ChunkSink {
    fn data(
        &mut self,
        at: u64,
        bytes: &[u8],
        _: &mut Requests,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let (size, cur, closed) = (self.chunk_size, &mut self.cur, &mut self.closed);
        self.parser.push(at, bytes, &mut |e, done, mut run| {
            if cur.as_ref().is_some_and(|c| c.0 != e)
                && let Some(c) = cur.take()
            {
                closed.push(c);
            }
            let mut off = done;
            while !run.is_empty() {
                let c = cur.get_or_insert_with(|| (e, off, Vec::with_capacity(size.min(run.len()))));
                let n = (size - c.2.len()).min(run.len());
                c.2.extend_from_slice(&run[..n]);
                run = &run[n..];
                off += n as u64;
                if c.2.len() == size
                    && let Some(full) = cur.take()
                {
                    closed.push(full);
                }
            }
        })?;
        self.send()
    }
}

/// What the compressing thread returns.
struct Written {
    refs: Vec<(u64, u32)>,
    stored: Vec<Stored>,
    size: u64,
    hasher: Sha256,
}

/// The compressing thread: hash, deduplicate, compress, append.
fn write_chunks(
    rx: mpsc::Receiver<Job>,
    file: std::fs::File,
    compressor: Compressor,
) -> std::io::Result<Written> {
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    let mut seen: HashMap<[u8; 32], u32> = HashMap::new();
    let mut out = Written { refs: Vec::new(), stored: Vec::new(), size: 0, hasher: Sha256::new() };
    let mut engine = compressor.engine()?;
    let zeros = [0u8; 4096];
    for (at, bytes) in rx {
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        if let Some(&i) = seen.get(&digest) {
            out.refs.push((at, i));
            continue;
        }
        if compressor == Compressor::None {
            // Stored at its 4 KiB-aligned address: compressed offset == uncompressed offset.
            let pad = (out.size.next_multiple_of(4096) - out.size) as usize;
            w.write_all(&zeros[..pad])?;
            hasher.update(&zeros[..pad]);
            out.size += pad as u64;
        }
        let packed = engine.compress(&bytes)?;
        let (data, compressed) = match &packed {
            Some(c) => (c.as_slice(), true),
            None => (bytes.as_slice(), false),
        };
        w.write_all(data)?;
        hasher.update(data);
        let i = out.stored.len() as u32;
        out.stored.push(Stored {
            digest,
            offset: out.size,
            stored_size: data.len() as u32,
            size: bytes.len() as u32,
            compressed,
        });
        out.size += data.len() as u64;
        seen.insert(digest, i);
        out.refs.push((at, i));
    }
    // Synced once the blob's tail is written (`blob::finish`), not here.
    w.flush()?;
    out.hasher = hasher;
    Ok(out)
}

/// A reader that reports how much it has read.
struct Counting<'a, R> {
    inner: R,
    read: u64,
    progress: &'a (dyn Fn(u64) + Sync),
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        (self.progress)(self.read);
        Ok(n)
    }
}

/// An uncompressed tar handed to `sink` as it is read, in rounds of 512 KiB.
fn raw_pass(mut reader: impl Read, sink: &mut dyn Sink) -> Result<(), String> {
    let mut buf = vec![0u8; 512 * 1024];
    let mut at = 0u64;
    let mut requests = Requests::default();
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("offset {at}: {e}")),
        };
        sink.data(at, &buf[..n], &mut requests).map_err(|e| format!("offset {at}: {e}"))?;
        requests.take();
        at += n as u64;
    }
}

/// Convert the chunks of layer `index` (described by `layer`) into a data file in `work`.
pub fn run(
    source: &dyn BlobSource,
    index: usize,
    layer: &Descriptor,
    compressor: Compressor,
    chunk_size: u32,
    work: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Pass, ConvertError> {
    let digest = layer.digest.to_string();
    let fail = |message: String| ConvertError::Layer { index, digest: digest.clone(), message };
    let compression = layer.compression();
    if !matches!(compression, Compression::Gzip | Compression::Zstd | Compression::None) {
        return Err(fail(format!("media type {} is not a layer zran can convert", layer.media_type)));
    }
    let data = work.join(format!("{}.data", layer.digest.hex()));
    let file =
        std::fs::File::create(&data).map_err(|e| ConvertError::Io { path: data.clone(), source: e })?;
    let reader = source.open(&layer.digest, Some(layer.size)).map_err(|e| fail(e.to_string()))?;
    let reader = Counting { inner: reader, read: 0, progress };
    let (tx, rx) = mpsc::sync_channel::<Job>(IN_FLIGHT);
    let mut sink = ChunkSink {
        parser: TarParser::new(),
        chunk_size: chunk_size as usize,
        cur: None,
        closed: Vec::new(),
        tx: Some(tx),
        drop_estargz_meta: layer.estargz_toc_digest().is_some(),
    };
    let (scanned, written) = std::thread::scope(|s| {
        let writer = std::thread::Builder::new()
            .name("zran-convert".into())
            .spawn_scoped(s, move || write_chunks(rx, file, compressor));
        let scanned = (|| {
            // No checkpoints are wanted: only the decompressed stream (gzip inflated, zstd
            // decoded frame by frame, an uncompressed tar as it is).
            match compression {
                Compression::Zstd => {
                    crate::zframe::index_stream(reader, u64::MAX, &mut sink).map_err(|e| match e {
                        crate::zframe::ZstdError::Sink { source, .. } => fail(source.to_string()),
                        e => fail(e.to_string()),
                    })?;
                }
                Compression::None => raw_pass(reader, &mut sink).map_err(fail)?,
                _ => {
                    IndexBuilder::new().span(u64::MAX).build_with(reader, &mut sink).map_err(
                        |e| match e {
                            GzipError::Sink { source, .. } => fail(source.to_string()),
                            e => fail(e.to_string()),
                        },
                    )?;
                }
            }
            if let Some(c) = sink.cur.take() {
                sink.closed.push(c);
            }
            sink.send().map_err(|e| fail(e.to_string()))?;
            sink.parser.finish().map_err(|e| fail(e.to_string()))?;
            Ok::<_, ConvertError>(())
        })();
        sink.tx = None;
        let written = match writer {
            Ok(h) => h.join().map_err(|_| fail("the chunk writer failed".into())),
            Err(e) => Err(fail(format!("cannot start the chunk writer: {e}"))),
        };
        (scanned, written)
    });
    let cleanup = |e: ConvertError| {
        let _ = std::fs::remove_file(&data);
        e
    };
    // A writer that failed (a full disk) stopped the pass too: its error is the one to show.
    let written =
        written.map_err(cleanup)?.map_err(|e| cleanup(ConvertError::Io { path: data.clone(), source: e }))?;
    scanned.map_err(cleanup)?;
    for w in sink.parser.warnings() {
        tracing::warn!("layer {index} ({digest}): {w}");
    }
    Ok(Pass {
        entries: sink.parser.entries().to_vec(),
        refs: written.refs,
        stored: written.stored,
        data: data.clone(),
        data_size: written.size,
        hasher: written.hasher,
        warnings: sink.parser.warnings().to_vec(),
    })
}
