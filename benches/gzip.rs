//! Criterion benches of the gzip engine on a deterministic in-memory input.
//!
//! Run: `cargo bench --bench gzip` (under a minute on 2 cores).
//!
//! The input is 32 MiB of generated text (words drawn from a fixed pseudo-random vocabulary, in
//! lines of varying length), compressed with flate2 at level 6. It is the same on every machine.
//!
//! - `build`: `IndexBuilder::build` at the default span, beside plain flate2 `GzDecoder`
//!   decompression of the same bytes. Throughput is in uncompressed bytes.
//! - `read_4k`: one `Extractor::read_at` of 4 KiB at a uniformly random offset (a fixed sequence),
//!   beside inflating one whole span from the start with flate2 (what a read may have to discard).

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use std::hint::black_box;
use std::io::{Read, Write};
use std::sync::OnceLock;
use std::time::Duration;
use zran::gzip::{Extractor, Index, IndexBuilder};

const INPUT_LEN: usize = 32 << 20;
const READ_LEN: usize = 4096;
/// Words in the generated text's vocabulary.
const VOCAB: u64 = 2048;

/// xorshift64* (Vigna).
struct XorShift(u64);

impl XorShift {
    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Deterministic, moderately compressible text.
fn generate_text(len: usize) -> Vec<u8> {
    let mut rng = XorShift(0x0123_4567_89ab_cdef);
    let vocab: Vec<Vec<u8>> = (0..VOCAB)
        .map(|_| {
            let n = 2 + rng.below(10) as usize;
            (0..n).map(|_| b'a' + rng.below(26) as u8).collect()
        })
        .collect();
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        let words = 4 + rng.below(12);
        for w in 0..words {
            if w > 0 {
                out.push(b' ');
            }
            // Skewed choice (cube of a uniform draw): low ranks are far more frequent.
            let r = rng.below(VOCAB);
            let rank = r * r * r / (VOCAB * VOCAB);
            out.extend_from_slice(&vocab[rank as usize]);
            if rng.below(16) == 0 {
                out.extend_from_slice(format!(" {}", rng.below(100_000)).as_bytes());
            }
        }
        out.push(b'\n');
    }
    out.truncate(len);
    out
}

struct Fixture {
    plain_len: usize,
    gz: Vec<u8>,
    index: Index,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let plain = generate_text(INPUT_LEN);
        let mut enc = GzEncoder::new(Vec::new(), Compression::new(6));
        enc.write_all(&plain).unwrap();
        let gz = enc.finish().unwrap();
        let index = IndexBuilder::new().build(&gz[..]).unwrap();
        // Check the engine against the plain text once, so the bench measures correct code.
        let ex = Extractor::new(&index, &gz);
        for off in [0, INPUT_LEN / 3, INPUT_LEN - READ_LEN] {
            assert_eq!(
                ex.extract(off as u64, READ_LEN).unwrap(),
                plain[off..off + READ_LEN]
            );
        }
        eprintln!(
            "gzip bench input: {} bytes of text -> {} bytes of gzip (ratio {:.2}); default span {}, {} checkpoints",
            plain.len(),
            gz.len(),
            plain.len() as f64 / gz.len() as f64,
            index.span,
            index.checkpoints.len()
        );
        Fixture {
            plain_len: plain.len(),
            gz,
            index,
        }
    })
}

fn build(c: &mut Criterion) {
    let f = fixture();
    let mut g = c.benchmark_group("build");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Bytes(f.plain_len as u64));
    g.bench_function("zran_index_build_default_span", |b| {
        b.iter(|| IndexBuilder::new().build(black_box(&f.gz[..])).unwrap())
    });
    g.bench_function("flate2_gzdecoder_baseline", |b| {
        let mut buf = vec![0u8; 256 << 10];
        b.iter(|| {
            let mut dec = GzDecoder::new(black_box(&f.gz[..]));
            let mut total = 0usize;
            loop {
                let n = dec.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                total += n;
            }
            assert_eq!(total, f.plain_len);
            total
        })
    });
    g.finish();
}

fn read_4k(c: &mut Criterion) {
    let f = fixture();
    let span = f.index.span as usize;
    let mut g = c.benchmark_group("read_4k");
    g.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    g.bench_function("zran_read_at_random_4k", |b| {
        let ex = Extractor::new(&f.index, &f.gz);
        let mut rng = XorShift(0x5eed);
        let max = (f.plain_len - READ_LEN + 1) as u64;
        let mut buf = vec![0u8; READ_LEN];
        b.iter(|| {
            let off = rng.below(max);
            let n = ex.read_at(off, &mut buf).unwrap();
            assert_eq!(n, READ_LEN);
            black_box(&buf);
        })
    });
    g.bench_function("flate2_inflate_one_span_baseline", |b| {
        let mut out = vec![0u8; span];
        b.iter(|| {
            let mut dec = GzDecoder::new(black_box(&f.gz[..]));
            dec.read_exact(&mut out).unwrap();
            black_box(&out);
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    // No HTML plots: they take longer to draw than the benches take to run.
    config = Criterion::default().without_plots();
    targets = build, read_4k
}
criterion_main!(benches);
