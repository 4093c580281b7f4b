//! The tar parser as a [`Sink`] of the gzip engine's index pass: entries, and the sha256 of
//! every chunk of every regular file, come out of the same single pass that builds the seek
//! index.
//!
//! Hashing runs on its own thread: the pass hands it each round's bytes (a copy, at most a few
//! rounds in flight, so memory stays bounded) with the runs of file data in them, and goes on
//! inflating.

use super::parser::TarParser;
use super::{Entry, TarError, TarWarning};
use crate::gzip::{Requests, Sink};
use sha2::{Digest as _, Sha256};
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

/// Rounds in flight to the hashing thread.
const IN_FLIGHT: usize = 4;

/// A run of file data inside a round: entry, offset within the file, range in the round.
type Run = (usize, u64, std::ops::Range<usize>);

/// A chunk as the hashing thread reports it: entry, offset within the file, length, digest.
type Hashed = (usize, u64, u32, [u8; 32]);

struct Hasher {
    tx: Option<mpsc::SyncSender<(Vec<u8>, Vec<Run>)>>,
    thread: Option<JoinHandle<Vec<Hashed>>>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hasher")
    }
}

/// The hashing thread: cuts each file's data at multiples of `chunk` and hashes the pieces.
fn hash_chunks(rx: mpsc::Receiver<(Vec<u8>, Vec<Run>)>, chunk: u64) -> Vec<Hashed> {
    let mut out = Vec::new();
    // The chunk being hashed: entry, offset within the file, bytes so far, hasher.
    let mut cur: Option<(usize, u64, u64, Sha256)> = None;
    let close = |cur: &mut Option<(usize, u64, u64, Sha256)>, out: &mut Vec<Hashed>| {
        if let Some((e, start, len, h)) = cur.take().filter(|c| c.2 > 0) {
            out.push((e, start, len as u32, h.finalize().into()));
        }
    };
    for (round, runs) in rx {
        for (e, mut at, range) in runs {
            let mut bytes = &round[range];
            if cur.as_ref().is_some_and(|c| c.0 != e) {
                close(&mut cur, &mut out);
            }
            while !bytes.is_empty() {
                let c = cur.get_or_insert_with(|| (e, at, 0, Sha256::new()));
                let room = (chunk - c.2) as usize;
                let n = room.min(bytes.len());
                c.3.update(&bytes[..n]);
                c.2 += n as u64;
                at += n as u64;
                bytes = &bytes[n..];
                if c.2 == chunk {
                    close(&mut cur, &mut out);
                }
            }
        }
    }
    close(&mut cur, &mut out);
    out
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
}

impl TarSink {
    /// `chunk_size`, when given, must be at least 1 and at most 4 GiB − 1.
    pub fn new(chunk_size: Option<u64>) -> TarSink {
        let chunk_size = chunk_size.filter(|&c| c > 0).map(|c| c.min(u64::from(u32::MAX)));
        let hasher = chunk_size.map(|chunk| {
            let (tx, rx) = mpsc::sync_channel(IN_FLIGHT);
            let thread = std::thread::Builder::new()
                .name("zran-hash".into())
                .spawn(move || hash_chunks(rx, chunk))
                .ok();
            Hasher { tx: Some(tx), thread }
        });
        TarSink { parser: TarParser::new(), chunk_size, hot: Default::default(), seen: 0, hasher }
    }

    /// Ask for checkpoints close before every chunk of these files (normalized paths).
    pub fn with_hot(mut self, paths: impl IntoIterator<Item = Vec<u8>>) -> TarSink {
        self.hot = paths.into_iter().collect();
        self
    }

    /// End of the stream: check the archive ended as a tar stream may, and collect the
    /// chunks, in stream order.
    pub fn finish(mut self) -> Result<Parsed, TarError> {
        self.parser.finish()?;
        let hashed = match self.hasher.as_mut() {
            Some(h) => {
                h.tx = None;
                match h.thread.take().map(JoinHandle::join) {
                    Some(Ok(hashed)) => hashed,
                    _ => {
                        return Err(TarError {
                            offset: self.parser.position(),
                            path: None,
                            message: "chunk hashing stopped".into(),
                        });
                    }
                }
            }
            None => Vec::new(),
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
        let mut runs: Vec<Run> = Vec::new();
        let base = bytes.as_ptr() as usize;
        let hashing = self.hasher.is_some();
        self.parser.push(at, bytes, &mut |e, done, run| {
            if hashing && !run.is_empty() {
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
        if let (Some(h), false) = (&self.hasher, runs.is_empty()) {
            let sent = h.tx.as_ref().map(|tx| tx.send((bytes.to_vec(), runs)));
            if !matches!(sent, Some(Ok(()))) {
                return Err("chunk hashing stopped".into());
            }
        }
        Ok(())
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
    fn no_chunk_size_no_chunks() {
        let tar = tar_of(&[("a", vec![1; 5000])]);
        let mut sink = TarSink::new(None);
        sink.data(0, &tar, &mut Requests::default()).unwrap();
        let Parsed { entries, chunks, .. } = sink.finish().unwrap();
        assert_eq!(entries.len(), 1);
        assert!(chunks.is_empty());
    }
}
