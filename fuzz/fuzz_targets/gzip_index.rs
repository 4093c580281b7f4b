//! Arbitrary bytes as a gzip stream. Indexing must fail cleanly or produce an index that
//! agrees with flate2's `MultiGzDecoder`: every checkpoint is readable and yields the reference
//! bytes, a whole-stream extraction matches, the index survives `.zidx` encoding unchanged, and
//! building from a reader that returns short reads finds the same checkpoints. Member trailers
//! that do not match the data are rewritten to match before any of this (see
//! `build_fixing_trailers`), so that mutated deflate data is not stopped by its CRC-32. First of
//! all, the pass with speculative chunks must give the sequential pass's index or error.

#![no_main]

use flate2::read::MultiGzDecoder;
use libfuzzer_sys::fuzz_target;
use std::io::Read;
use zran::gzip::{Extractor, GzipError, Index, IndexBuilder, WINDOW_SIZE, zidx};

/// Spans to index with, picked by the input length so that each input gets one.
const SPANS: [u64; 5] = [1, 100, 4096, 32 * 1024, 1 << 20];

/// A reader that returns at most `chunk` bytes per call.
struct Trickle<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn check_shape(index: &Index) {
    let cps = &index.checkpoints;
    assert!(!cps.is_empty(), "no checkpoints");
    assert_eq!(cps[0].out, 0, "first checkpoint not at 0");
    for w in cps.windows(2) {
        assert!(w[0].out < w[1].out, "checkpoints out of order");
        assert!(w[0].input <= w[1].input, "checkpoint inputs go backwards");
        assert!(w[0].member <= w[1].member, "checkpoint members go backwards");
    }
    for c in cps {
        assert!(c.out <= index.uncompressed_size);
        assert!(c.input <= index.compressed_size);
        assert!(c.bits <= 7);
        assert!(c.member < index.members);
        assert!(c.window_len as usize <= WINDOW_SIZE);
        assert!(u64::from(c.window_len) <= c.out);
        assert_eq!(c.window_len == 0, c.window.is_empty());
    }
}

fn positions(index: &Index) -> Vec<(u64, u64, u8, u64)> {
    index
        .checkpoints
        .iter()
        .map(|c| (c.out, c.input, c.bits, c.member))
        .collect()
}

/// Index `data`; where a member's trailer is wrong, write the CRC-32 and ISIZE the data has into
/// it and try again, so that mutated deflate data gets past the trailer checks.
fn build_fixing_trailers(data: &mut [u8], span: u64) -> Option<Index> {
    for _ in 0..16 {
        let (offset, at, value) = match IndexBuilder::new().span(span).build(&data[..]) {
            Ok(index) => return Some(index),
            Err(GzipError::Crc { offset, computed, .. }) => (offset, 0, computed),
            Err(GzipError::Isize { offset, computed, .. }) => (offset, 4, computed),
            Err(_) => return None,
        };
        let at = offset as usize + at;
        data.get_mut(at..at + 4)?.copy_from_slice(&value.to_le_bytes());
    }
    None
}

fuzz_target!(|input: &[u8]| {
    let span = SPANS[input.len() % SPANS.len()];
    // Chunks decoded on a second core change nothing: the same index, or the same error.
    let sequential = IndexBuilder::new().span(span).build(input);
    let speculative = IndexBuilder::new().span(span).speculate(1 << 10).build(input);
    match (&sequential, &speculative) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "speculative index differs"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "speculative error differs"),
        (a, b) => panic!("sequential {:?} but speculative {:?}", a.as_ref().err(), b.as_ref().err()),
    }
    let mut data = input.to_vec();
    let Some(index) = build_fixing_trailers(&mut data, span) else {
        return;
    };
    let data = &data[..];
    check_shape(&index);
    let size = index.uncompressed_size;

    // Reference output. On error (zero padding after the last member, which zran accepts and
    // flate2 does not) `expected` holds what flate2 produced before it.
    let mut expected = Vec::new();
    let complete = MultiGzDecoder::new(data).read_to_end(&mut expected).is_ok();
    assert!(
        expected.len() as u64 <= size,
        "flate2 produced {} bytes, index says {size}",
        expected.len()
    );
    if complete {
        assert_eq!(expected.len() as u64, size, "uncompressed size differs from flate2");
    }
    let reference = |offset: u64, got: &[u8]| {
        let o = offset as usize;
        let end = (o + got.len()).min(expected.len());
        if o < end {
            assert_eq!(
                &got[..end - o],
                &expected[o..end],
                "bytes at {offset} differ from flate2"
            );
        }
    };

    let ex = Extractor::new(&index, data);
    for (i, c) in index.checkpoints.iter().enumerate().take(4096) {
        let lens = [1usize, 1 + (i * 7 + c.out as usize) % 64, 64];
        for len in lens {
            let mut buf = vec![0u8; len];
            let n = ex
                .read_at(c.out, &mut buf)
                .unwrap_or_else(|e| panic!("read at checkpoint {i} ({}): {e}", c.out));
            assert_eq!(n as u64, (len as u64).min(size - c.out), "short read at checkpoint {i}");
            reference(c.out, &buf[..n]);
        }
        if c.out > 0 {
            let mut buf = [0u8; 2];
            let n = ex
                .read_at(c.out - 1, &mut buf)
                .unwrap_or_else(|e| panic!("read across checkpoint {i}: {e}"));
            reference(c.out - 1, &buf[..n]);
        }
    }
    if size <= 64 << 20 {
        let all = ex.extract(0, size as usize).expect("whole-stream extraction failed");
        assert_eq!(all.len() as u64, size);
        reference(0, &all);
    }

    let decoded = zidx::decode(&zidx::encode(&index)).expect("encoded index rejected");
    assert_eq!(decoded, index, "zidx round trip changed the index");

    let chunk = 1 + data.first().map_or(0, |&b| b as usize % 7);
    let trickled = IndexBuilder::new()
        .span(span)
        .build(Trickle { data, chunk })
        .expect("the same stream in short reads was rejected");
    assert_eq!(positions(&trickled), positions(&index), "short reads moved checkpoints");
    assert_eq!(trickled.uncompressed_size, size);
    assert_eq!(trickled.compressed_size, index.compressed_size);
    assert_eq!(trickled.members, index.members);
    let ex = Extractor::new(&trickled, data);
    for c in trickled.checkpoints.iter().take(4096) {
        let mut buf = [0u8; 64];
        let n = ex.read_at(c.out, &mut buf).expect("read with the short-read index failed");
        reference(c.out, &buf[..n]);
    }
});
