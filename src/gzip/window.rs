//! Window packing, on a second thread during the index pass: make each checkpoint's window
//! sparse when that is proven safe, then compress it.

use super::index::WINDOW_SIZE;
use super::inflate::RawInflate;
use super::sparse;

/// zstd level for windows: sparse windows are mostly zeros, so a middling level suffices.
const WINDOW_ZSTD_LEVEL: i32 = 9;

/// One checkpoint's window and what is needed to prove a sparse version of it.
pub(crate) struct Job {
    pub index: usize,
    /// The full window: the output just before the checkpoint, within its member.
    pub window: Vec<u8>,
    pub bits: u8,
    /// Compressed bytes from the block start (from byte `input - 1` when `bits > 0`), or
    /// empty when they were not kept: then the window stays whole.
    pub input: Vec<u8>,
    /// The real output right after the checkpoint, up to 32 KiB.
    pub follow: Vec<u8>,
}

/// A packed window.
pub(crate) struct Packed {
    pub index: usize,
    pub window_len: u32,
    pub frame: std::io::Result<Vec<u8>>,
    /// The window was made sparse.
    pub sparse: bool,
}

pub(crate) fn pack(job: Job) -> Packed {
    let sparse = try_sparse(&job);
    let made_sparse = sparse.is_some();
    let window = sparse.unwrap_or(job.window);
    let frame = if window.is_empty() { Ok(Vec::new()) } else { compress(&window) };
    Packed { index: job.index, window_len: window.len() as u32, frame, sparse: made_sparse }
}

/// zstd at [`WINDOW_ZSTD_LEVEL`] with one compression context per thread (a context is as
/// costly to set up as a small window is to compress).
fn compress(window: &[u8]) -> std::io::Result<Vec<u8>> {
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = Some(zstd::bulk::Compressor::new(WINDOW_ZSTD_LEVEL)?);
        }
        match c.as_mut() {
            Some(c) => c.compress(window),
            None => zstd::bulk::compress(window, WINDOW_ZSTD_LEVEL),
        }
    })
}

/// The sparse window, if the analysis succeeds and inflating with it reproduces the output.
fn try_sparse(job: &Job) -> Option<Vec<u8>> {
    if job.window.is_empty() || job.input.is_empty() || job.follow.is_empty() {
        return None;
    }
    let start_bit = if job.bits > 0 { 8 - job.bits } else { 0 };
    let marks = sparse::referenced(&job.input, start_bit, job.window.len())?;
    let candidate = sparse::sparsify(&job.window, &marks);
    if verify(job, &candidate) {
        Some(candidate)
    } else {
        tracing::debug!(checkpoint = job.index, "sparse window failed verification; kept whole");
        None
    }
}

/// Inflate from the checkpoint with `window` and compare with the real output. Past 32 KiB no
/// back-reference can reach the window, so agreement up to there (or to the member's end)
/// means agreement everywhere.
fn verify(job: &Job, window: &[u8]) -> bool {
    let Ok(mut inf) = RawInflate::new() else {
        return false;
    };
    let mut input = &job.input[..];
    if job.bits > 0 {
        if inf.prime(job.bits, input[0]).is_err() {
            return false;
        }
        input = &input[1..];
    }
    if inf.set_dictionary(window).is_err() {
        return false;
    }
    let mut out = vec![0u8; job.follow.len().min(WINDOW_SIZE)];
    let mut produced = 0;
    while produced < out.len() {
        let Ok(step) = inf.inflate(input, &mut out[produced..], false) else {
            return false;
        };
        input = &input[step.consumed..];
        produced += step.produced;
        if step.stream_end {
            break;
        }
        if step.consumed == 0 && step.produced == 0 {
            return false;
        }
    }
    out[..produced] == job.follow[..produced]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window of noise and raw deflate of data after it that copies from the window's
    /// second half only.
    fn job() -> Job {
        let mut s = 0x2545_f491_4f6c_dd1du64;
        let window: Vec<u8> = (0..WINDOW_SIZE)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect();
        let mut follow = Vec::new();
        for i in 0..200 {
            let at = WINDOW_SIZE / 2 + (i * 61) % (WINDOW_SIZE / 2 - 100);
            follow.extend_from_slice(&window[at..at + 50]);
            follow.extend_from_slice(b"literal text between copies ");
        }
        let mut d = zlib_rs::Deflate::new(6, false, 15);
        d.set_dictionary(&window).unwrap();
        let mut input = vec![0u8; follow.len() * 2 + 1024];
        let status = d.compress(&follow, &mut input, zlib_rs::DeflateFlush::Finish).unwrap();
        assert_eq!(status, zlib_rs::Status::StreamEnd);
        input.truncate(d.total_out() as usize);
        Job { index: 1, window, bits: 0, input, follow }
    }

    #[test]
    fn sparse_when_proven() {
        let job = job();
        let window = job.window.clone();
        let packed = pack(job);
        assert!(packed.sparse);
        assert!(packed.window_len <= WINDOW_SIZE as u32 / 2 + 64, "{}", packed.window_len);
        let frame = packed.frame.unwrap();
        let sparse = zstd::bulk::decompress(&frame, packed.window_len as usize).unwrap();
        // The kept bytes are the window's tail, exact where referenced and zero elsewhere.
        let tail = &window[window.len() - sparse.len()..];
        assert!(sparse.iter().zip(tail).all(|(&s, &w)| s == 0 || s == w));
        assert!(frame.len() < 20_000, "sparse window compressed to {}", frame.len());
    }

    #[test]
    fn whole_window_when_verification_fails() {
        // Output that the compressed bytes do not produce: the sparse window cannot be proven.
        let mut job = job();
        job.follow[7] ^= 1;
        let packed = pack(job);
        assert!(!packed.sparse);
        assert_eq!(packed.window_len, WINDOW_SIZE as u32);
        // Missing input: no analysis, whole window.
        let mut job2 = self::job();
        job2.input.clear();
        assert!(!pack(job2).sparse);
    }
}
