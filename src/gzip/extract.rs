//! Random access: any uncompressed range, from an [`Index`] and positional reads of the
//! compressed bytes.
//!
//! A read starts at the last checkpoint at or before the wanted offset: it primes the decoder
//! with the partial byte, restores the window, inflates and discards up to the offset, then
//! decodes into the caller's buffer, crossing gzip member boundaries as it goes. The compressed
//! bytes are requested as one range up to the first checkpoint past the end of the read (where
//! the data surely ends), so a remote source sees one request per read.

use super::GzipError;
use super::header;
use super::index::Index;
use super::inflate::RawInflate;
use std::io;

/// Positional reads of compressed bytes: a local file, a buffer, or (later) a remote blob.
pub trait ReadAt {
    /// Read up to `buf.len()` bytes at `offset`; fewer only at the end of the data.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}

impl ReadAt for std::fs::File {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let mut done = 0;
        while done < buf.len() {
            match FileExt::read_at(self, &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.as_slice().read_at(offset, buf)
    }
}

/// The largest single range request; longer reads are split.
const MAX_FETCH: u64 = 8 << 20;
/// The smallest range request when the hint has been used up.
const MIN_FETCH: u64 = 64 << 10;

/// Serves uncompressed ranges of one gzip stream.
pub struct Extractor<'a, R: ReadAt + ?Sized> {
    index: &'a Index,
    source: &'a R,
}

impl<'a, R: ReadAt + ?Sized> Extractor<'a, R> {
    pub fn new(index: &'a Index, source: &'a R) -> Self {
        Extractor { index, source }
    }

    /// Read up to `len` bytes at uncompressed `offset` (fewer only at the end).
    pub fn extract(&self, offset: u64, len: usize) -> Result<Vec<u8>, GzipError> {
        let avail = self.index.uncompressed_size.saturating_sub(offset);
        let mut buf = vec![0; len.min(usize::try_from(avail).unwrap_or(usize::MAX))];
        let n = self.read_at(offset, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Fill `buf` from uncompressed `offset`; returns the bytes read, short only at the end.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, GzipError> {
        let size = self.index.uncompressed_size;
        if offset >= size || buf.is_empty() || self.index.checkpoints.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(size - offset).unwrap_or(usize::MAX));
        let buf = &mut buf[..want];
        let ci = self.index.checkpoint_for(offset);
        let cp = &self.index.checkpoints[ci];
        let (start, hint) = self.index.input_range_for(offset, want as u64);
        let mut src = Cursor::new(self.source, start, hint, self.index.compressed_size);
        let mut member = cp.member;

        let err = |member: u64, offset: u64| {
            move |e: super::inflate::InflateError| GzipError::Deflate { member, offset, message: e.message }
        };
        let mut inf = RawInflate::new().map_err(err(member, start))?;
        if cp.bits > 0 {
            let byte = src.byte()?.ok_or(GzipError::Truncated { member, offset: start })?;
            inf.prime(cp.bits, byte).map_err(err(member, start))?;
        }
        inf.set_dictionary(&cp.window_bytes(ci)?).map_err(err(member, start))?;

        let mut pos = cp.out;
        let mut filled = 0;
        let mut scratch = Vec::new();
        let mut stalls = 0;
        while filled < want {
            if src.avail().is_empty() && !src.fill()? {
                return Err(GzipError::Truncated { member, offset: src.offset() });
            }
            let dst: &mut [u8] = if pos < offset {
                let skip = usize::try_from(offset - pos).unwrap_or(usize::MAX).min(64 << 10);
                scratch.resize(skip, 0);
                &mut scratch[..]
            } else {
                &mut buf[filled..]
            };
            let at = src.offset();
            let step = inf.inflate(src.avail(), dst, false).map_err(err(member, at))?;
            src.consume(step.consumed);
            if pos >= offset {
                filled += step.produced;
            }
            pos += step.produced as u64;
            if step.stream_end {
                // Skip the trailer; a further member follows if there is more data.
                src.skip(8)?;
                member += 1;
                if filled < want {
                    let at = src.offset();
                    let len = src.header()?.ok_or(GzipError::Truncated { member, offset: at })?;
                    src.consume(len);
                    inf.reset().map_err(err(member, at))?;
                }
                continue;
            }
            if step.consumed == 0 && step.produced == 0 {
                stalls += 1;
                if stalls > 3 {
                    return Err(GzipError::Stalled { offset: src.offset() });
                }
            } else {
                stalls = 0;
            }
        }
        Ok(filled)
    }
}

/// Buffered reads from a [`ReadAt`], fetching up to a hint in one request.
struct Cursor<'a, R: ReadAt + ?Sized> {
    source: &'a R,
    buf: Vec<u8>,
    pos: usize,
    /// Compressed offset of `buf[0]`.
    base: u64,
    hint: u64,
    limit: u64,
}

impl<'a, R: ReadAt + ?Sized> Cursor<'a, R> {
    fn new(source: &'a R, start: u64, hint: u64, limit: u64) -> Self {
        Cursor { source, buf: Vec::new(), pos: 0, base: start, hint, limit }
    }

    fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    fn avail(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
    }

    /// Fetch the next range, keeping unconsumed bytes. False at the end of the stream.
    fn fill(&mut self) -> Result<bool, GzipError> {
        let from = self.base + self.buf.len() as u64;
        if from >= self.limit {
            return Ok(false);
        }
        let len = self.hint.saturating_sub(from).clamp(MIN_FETCH, MAX_FETCH).min(self.limit - from);
        self.buf.drain(..self.pos);
        self.base += self.pos as u64;
        self.pos = 0;
        let old = self.buf.len();
        self.buf.resize(old + len as usize, 0);
        let n = self
            .source
            .read_at(from, &mut self.buf[old..])
            .map_err(|source| GzipError::Io { offset: from, source })?;
        self.buf.truncate(old + n);
        Ok(n > 0)
    }

    fn byte(&mut self) -> Result<Option<u8>, GzipError> {
        if self.avail().is_empty() && !self.fill()? {
            return Ok(None);
        }
        let b = self.buf[self.pos];
        self.pos += 1;
        Ok(Some(b))
    }

    fn skip(&mut self, mut n: usize) -> Result<(), GzipError> {
        while n > 0 {
            if self.avail().is_empty() && !self.fill()? {
                return Err(GzipError::Truncated { member: 0, offset: self.offset() });
            }
            let k = n.min(self.avail().len());
            self.pos += k;
            n -= k;
        }
        Ok(())
    }

    /// Parse the gzip header at the cursor; its length, or None at the end of the stream.
    fn header(&mut self) -> Result<Option<usize>, GzipError> {
        loop {
            match header::parse(self.avail()) {
                Ok(Some(n)) => return Ok(Some(n)),
                Ok(None) => {
                    if !self.fill()? {
                        return Ok(None);
                    }
                }
                Err(reason) => {
                    return Err(GzipError::Header { member: 0, offset: self.offset(), reason });
                }
            }
        }
    }
}
