//! The tar parser as a [`Sink`] of the gzip engine's index pass: entries, and the sha256 of
//! every chunk of every regular file, come out of the same single pass that builds the seek
//! index.
//!
//! Hashing runs on its own thread: the pass hands it each round's bytes with the runs of file
//! data in them, and goes on inflating. A pass that offers its round buffers
//! ([`Sink::take_round`], as the gzip engine does) hands over the buffer itself, without a
//! copy, and gets a recycled one back; others' rounds are copied into a recycled buffer. At
//! most [`POOL`] buffers exist, so memory stays bounded, and a full pool makes the pass wait
//! for the hashing thread. A panic on the hashing thread becomes an error naming the file and
//! the offset it was hashing.

use super::parser::TarParser;
use super::{Entry, TarError, TarWarning};
use crate::gzip::{Requests, Sink};
use sha2::{Digest as _, Sha256};
use std::cell::Cell;
use std::ops::Range;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// A chunk-size piece of a regular file's data, as the pass saw it go by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileChunk {
    /// Offset of the chunk's first byte in the layer's uncompressed tar stream.
    pub out: u64,
    /// Length: the chunk size, or less for the last chunk of a file.
    pub len: u32,
    /// sha256 of the chunk's bytes.
    pub digest: [u8; 32],
}

/// What a layer's tar stream held, once it has ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub entries: Vec<Entry>,
    /// Every chunk of every regular file, in stream order (empty without a chunk size).
    pub chunks: Vec<FileChunk>,
    /// What the stream did that is accepted but not well-formed ([`TarParser::finish`]).
    pub warnings: Vec<TarWarning>,
}

/// Rounds queued to the hashing thread.
const IN_FLIGHT: usize = 4;
/// Buffers in all: queued, being hashed, the one the pass fills, and one spare.
pub const POOL: usize = IN_FLIGHT + 3;

/// A run of file data inside a round: entry, offset within the file, range in the buffer.
type Run = (usize, u64, Range<usize>);

/// A chunk as the hashing thread reports it: entry, offset within the file, length, digest.
type Hashed = (usize, u64, u32, [u8; 32]);

/// Why the hashing thread stopped early: the file (entry) and offset within it it was at, and
/// the panic's message.
#[derive(Debug)]
struct Stopped {
    at: Option<(usize, u64)>,
    message: String,
}

struct Hasher {
    tx: Option<mpsc::SyncSender<(Vec<u8>, Vec<Run>)>>,
    /// Buffers the hashing thread is done with.
    recycled: mpsc::Receiver<Vec<u8>>,
    /// Buffers made so far (at most [`POOL`]).
    made: usize,
    thread: Option<JoinHandle<Result<Vec<Hashed>, Stopped>>>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hasher")
    }
}

impl Hasher {
    /// A buffer to fill: a recycled one, a new one while the pool is not full, or the next one
    /// the hashing thread is done with. None when the hashing thread has stopped.
    fn buffer(&mut self) -> Option<Vec<u8>> {
        if let Ok(b) = self.recycled.try_recv() {
            return Some(b);
        }
        if self.made < POOL {
            self.made += 1;
            return Some(Vec::new());
        }
        self.recycled.recv().ok()
    }

    fn send(&mut self, buf: Vec<u8>, runs: Vec<Run>) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send((buf, runs)).is_ok())
    }

    /// Wait for the hashing thread's chunks.
    fn join(&mut self) -> Result<Vec<Hashed>, Stopped> {
        self.tx = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) | None => Err(Stopped { at: None, message: "the hashing thread is gone".into() }),
        }
    }
}

/// Cuts each file's data at multiples of `chunk` and hashes the pieces.
struct Chunker {
    chunk: u64,
    /// The chunk being hashed: entry, offset within the file, bytes so far, hasher.
    cur: Option<(usize, u64, u64, Sha256)>,
    out: Vec<Hashed>,
}

impl Chunker {
    fn new(chunk: u64) -> Chunker {
        Chunker { chunk, cur: None, out: Vec::new() }
    }

    fn close(&mut self) {
        if let Some((e, start, len, h)) = self.cur.take().filter(|c| c.2 > 0) {
            self.out.push((e, start, len as u32, h.finalize().into()));
        }
    }

    /// The run of entry `e`'s data at offset `off` within the file.
    fn feed(&mut self, e: usize, mut off: u64, mut bytes: &[u8]) {
        if self.cur.as_ref().is_some_and(|c| c.0 != e) {
            self.close();
        }
        while !bytes.is_empty() {
            let c = self.cur.get_or_insert_with(|| (e, off, 0, Sha256::new()));
            let room = (self.chunk - c.2) as usize;
            let n = room.min(bytes.len());
            c.3.update(&bytes[..n]);
            c.2 += n as u64;
            off += n as u64;
            bytes = &bytes[n..];
            if c.2 == self.chunk {
                self.close();
            }
        }
    }

    fn finish(mut self) -> Vec<Hashed> {
        self.close();
        self.out
    }
}

/// The hashing thread: chunks and hashes each round's runs, and sends every buffer back for
/// reuse.
fn hash_chunks(
    rx: mpsc::Receiver<(Vec<u8>, Vec<Run>)>,
    recycle: mpsc::Sender<Vec<u8>>,
    chunk: u64,
) -> Result<Vec<Hashed>, Stopped> {
    let at = Cell::new(None);
    let work = std::panic::AssertUnwindSafe(|| {
        let mut chunker = Chunker::new(chunk);
        for (round, runs) in rx {
            for (e, off, range) in runs {
                at.set(Some((e, off)));
                chunker.feed(e, off, &round[range]);
            }
            // The pass may have stopped taking buffers; then this one is simply dropped.
            let _ = recycle.send(round);
        }
        chunker.finish()
    });
    std::panic::catch_unwind(work).map_err(|payload| Stopped {
        at: at.get(),
        message: payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panicked".into()),
    })
}

/// Helper threads of the index pass yield to the inflating thread when the cores are
/// oversubscribed (they only need to keep up on the whole; their queues are bounded).
fn yield_to_inflate() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority on this thread's own id (gettid) changes only its nice value; no
    // memory is passed. Failure (no permission) leaves the priority as it was.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 5);
    }
}

/// How far before a chunk of a file read first its checkpoint may be: a read of it then
/// inflates (and fetches) at most this much that it does not need, where other chunks may
/// need up to a span. A checkpoint costs its window in the blob.meta (about 10-20 KB packed).
pub const HOT_SLACK: u64 = 64 << 10;

/// Parses the uncompressed stream as tar while the index is built. With a chunk size, it cuts
/// every regular file into chunks of that size, hashes each, and asks the engine for a
/// checkpoint before each, so that reading any chunk later inflates as little as possible.
#[derive(Debug, Default)]
pub struct TarSink {
    pub parser: TarParser,
    chunk_size: Option<u64>,
    /// Paths read first (a start-up trace): their chunks get checkpoints within
    /// [`HOT_SLACK`] instead of the engine's span.
    hot: std::collections::HashSet<Vec<u8>>,
    seen: usize,
    hasher: Option<Hasher>,
    /// The pass offers its round buffers ([`Sink::take_round`]).
    offered: bool,
    /// The runs of the last round given to `data`, waiting for its buffer.
    runs: Vec<Run>,
    /// [`TarSink::inline`]: chunks hashed on the calling thread.
    inline: Option<Chunker>,
}

impl std::fmt::Debug for Chunker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Chunker")
    }
}

impl TarSink {
    /// `chunk_size`, when given, must be at least 1 and at most 4 GiB − 1.
    pub fn new(chunk_size: Option<u64>) -> TarSink {
        let chunk_size = chunk_size.filter(|&c| c > 0).map(|c| c.min(u64::from(u32::MAX)));
        let hasher = chunk_size.map(|chunk| {
            let (tx, rx) = mpsc::sync_channel(IN_FLIGHT);
            let (recycle, recycled) = mpsc::channel();
            let thread = std::thread::Builder::new()
                .name("zran-hash".into())
                .spawn(move || {
                    yield_to_inflate();
                    hash_chunks(rx, recycle, chunk)
                })
                .ok();
            Hasher { tx: Some(tx), recycled, made: 0, thread }
        });
        TarSink {
            parser: TarParser::new(),
            chunk_size,
            hot: Default::default(),
            seen: 0,
            hasher,
            offered: false,
            runs: Vec::new(),
            inline: None,
        }
    }

    /// The same sink with the chunks hashed on the calling thread, in the order the bytes come:
    /// the sequential pass the threaded one must agree with byte for byte.
    pub fn inline(chunk_size: Option<u64>) -> TarSink {
        let chunk_size = chunk_size.filter(|&c| c > 0).map(|c| c.min(u64::from(u32::MAX)));
        TarSink {
            parser: TarParser::new(),
            chunk_size,
            hot: Default::default(),
            seen: 0,
            hasher: None,
            offered: false,
            runs: Vec::new(),
            inline: chunk_size.map(Chunker::new),
        }
    }

    /// Ask for checkpoints close before every chunk of these files (normalized paths).
    pub fn with_hot(mut self, paths: impl IntoIterator<Item = Vec<u8>>) -> TarSink {
        self.hot = paths.into_iter().collect();
        self
    }

    /// The hashing thread stopped: an error naming the file and offset it had reached (or,
    /// when it does not say, the stream offset the parser has reached).
    fn stopped(&mut self) -> TarError {
        let stopped = match self.hasher.as_mut().map(Hasher::join) {
            Some(Err(s)) => s,
            _ => Stopped { at: None, message: "the hashing thread is gone".into() },
        };
        self.describe(stopped)
    }

    fn describe(&self, stopped: Stopped) -> TarError {
        let entries = self.parser.entries();
        let message = format!("chunk hashing stopped: {}", stopped.message);
        match stopped.at.and_then(|(e, off)| entries.get(e).map(|entry| (entry, off))) {
            Some((entry, off)) => TarError {
                offset: entry.data_offset + off,
                path: Some(String::from_utf8_lossy(&entry.path).into_owned()),
                message,
            },
            None => TarError { offset: self.parser.position(), path: None, message },
        }
    }

    /// End of the stream: check the archive ended as a tar stream may, and collect the
    /// chunks, in stream order.
    pub fn finish(mut self) -> Result<Parsed, TarError> {
        self.parser.finish()?;
        let hashed = match self.hasher.as_mut().map(Hasher::join) {
            Some(Ok(hashed)) => hashed,
            Some(Err(stopped)) => return Err(self.describe(stopped)),
            None => self.inline.take().map(Chunker::finish).unwrap_or_default(),
        };
        let entries = self.parser.entries();
        let chunks = hashed
            .into_iter()
            .map(|(e, at, len, digest)| FileChunk { out: entries[e].data_offset + at, len, digest })
            .collect();
        Ok(Parsed { entries: entries.to_vec(), chunks, warnings: self.parser.warnings().to_vec() })
    }
}

impl Sink for TarSink {
    fn data(
        &mut self,
        at: u64,
        bytes: &[u8],
        requests: &mut Requests,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let mut runs: Vec<Run> = std::mem::take(&mut self.runs);
        runs.clear();
        let base = bytes.as_ptr() as usize;
        let hashing = self.hasher.is_some();
        let mut inline = self.inline.as_mut();
        self.parser.push(at, bytes, &mut |e, done, run| {
            if run.is_empty() {
            } else if let Some(c) = inline.as_mut() {
                c.feed(e, done, run);
            } else if hashing {
                // `run` is a sub-slice of `bytes`: its place in the round is its address's.
                let start = run.as_ptr() as usize - base;
                runs.push((e, done, start..start + run.len()));
            }
        })?;
        if let Some(chunk) = self.chunk_size {
            for e in &self.parser.entries()[self.seen..] {
                let hot = !self.hot.is_empty() && self.hot.contains(&e.path);
                let mut off = 0;
                while off < e.size {
                    if hot {
                        requests.request_within(e.data_offset + off, HOT_SLACK);
                    } else {
                        requests.request(e.data_offset + off);
                    }
                    off += chunk;
                }
            }
        }
        self.seen = self.parser.entries().len();
        if self.offered || runs.is_empty() {
            // The buffer follows in `take_round`.
            self.runs = runs;
            return Ok(());
        }
        let Some(h) = self.hasher.as_mut() else { return Ok(()) };
        let sent = match h.buffer() {
            Some(mut buf) => {
                buf.clear();
                buf.extend_from_slice(bytes);
                h.send(buf, runs)
            }
            None => false,
        };
        if !sent {
            return Err(Box::new(self.stopped()));
        }
        Ok(())
    }

    fn rounds_offered(&mut self) {
        self.offered = true;
    }

    fn takes_rounds(&self) -> bool {
        true
    }

    fn take_round(
        &mut self,
        buf: &mut Vec<u8>,
        round: Range<usize>,
        history: usize,
    ) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
        if self.runs.is_empty() {
            return Ok(false);
        }
        let Some(h) = self.hasher.as_mut() else { return Ok(false) };
        let mut runs = std::mem::take(&mut self.runs);
        let Some(mut fresh) = h.buffer() else {
            return Err(Box::new(self.stopped()));
        };
        // The pass's buffers all have one length: a recycled one needs no filling.
        fresh.resize(buf.len(), 0);
        fresh[..history].copy_from_slice(&buf[round.end - history..round.end]);
        let full = std::mem::replace(buf, fresh);
        for r in &mut runs {
            r.2 = r.2.start + round.start..r.2.end + round.start;
        }
        if !h.send(full, runs) {
            return Err(Box::new(self.stopped()));
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut b = ::tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = ::tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data.as_slice()).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn chunks_cover_every_file_in_order_whatever_the_rounds() {
        let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let files =
            [("a", big.clone()), ("empty", Vec::new()), ("b", vec![5; 8192]), ("c", big[..1000].to_vec())];
        let tar = tar_of(&files);
        for (chunk, piece) in [(65536u64, 4096usize), (4096, 777), (1 << 20, 100_000), (8192, 1)] {
            let mut sink = TarSink::new(Some(chunk));
            let mut req = Requests::default();
            for (i, p) in tar.chunks(piece).enumerate() {
                sink.data((i * piece) as u64, p, &mut req).unwrap();
            }
            let Parsed { entries, chunks, warnings } = sink.finish().unwrap();
            assert!(warnings.is_empty(), "{warnings:?}");
            let mut want = Vec::new();
            for (e, (_, data)) in entries.iter().zip(&files) {
                for (i, c) in data.chunks(chunk as usize).enumerate() {
                    want.push(FileChunk {
                        out: e.data_offset + (i as u64) * chunk,
                        len: c.len() as u32,
                        digest: Sha256::digest(c).into(),
                    });
                }
            }
            assert_eq!(chunks, want, "chunk {chunk}, pieces of {piece}");
        }
    }

    #[test]
    fn a_stream_cut_after_the_last_data_is_hashed_whole_with_a_warning() {
        // As `umoci insert` writes layers: no padding after the last file, no end blocks.
        let files = [("a", vec![1u8; 700]), ("b", vec![2u8; 1000])];
        let tar = tar_of(&files);
        let cut = 512 + 1024 + 512 + 1000;
        let mut sink = TarSink::new(Some(512));
        sink.data(0, &tar[..cut], &mut Requests::default()).unwrap();
        let Parsed { entries, chunks, warnings } = sink.finish().unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(chunks.len(), 4);
        assert_eq!(
            chunks[3],
            FileChunk { out: 2048 + 512, len: 488, digest: Sha256::digest([2u8; 488]).into() }
        );
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].offset, cut as u64);
        assert!(warnings[0].to_string().contains("without the last entry's padding"), "{}", warnings[0]);
    }

    #[test]
    fn a_panic_while_hashing_is_an_error_naming_the_file_and_offset() {
        let files = [("a", vec![1u8; 700]), ("dir/b", vec![2u8; 100_000])];
        let tar = tar_of(&files);
        let mut sink = TarSink::new(Some(4096));
        let mut req = Requests::default();
        sink.data(0, &tar[..4096], &mut req).unwrap();
        // A run past the end of its buffer: the hashing thread panics on it.
        let h = sink.hasher.as_mut().unwrap();
        assert!(h.send(vec![0; 10], vec![(1, 5000, 0..20)]));
        let mut at = 4096;
        let err = loop {
            match sink.data(at as u64, &tar[at..at + 512], &mut req) {
                Ok(()) => at += 512,
                Err(e) => break e.to_string(),
            }
            assert!(at + 512 < tar.len(), "the pass never learned that hashing stopped");
        };
        let b = sink.parser.entries()[1].data_offset;
        assert!(err.contains("\"dir/b\""), "{err}");
        assert!(err.contains(&format!("offset {}", b + 5000)), "{err}");
        assert!(err.contains("chunk hashing stopped") && err.contains("out of range"), "{err}");
    }

    #[test]
    fn no_chunk_size_no_chunks() {
        let tar = tar_of(&[("a", vec![1; 5000])]);
        let mut sink = TarSink::new(None);
        sink.data(0, &tar, &mut Requests::default()).unwrap();
        let Parsed { entries, chunks, .. } = sink.finish().unwrap();
        assert_eq!(entries.len(), 1);
        assert!(chunks.is_empty());
    }
}
