//! Latency of random 4 KiB reads through `Extractor::read_at`, on a real gzip file and its index.
//!
//! Not a criterion bench: it prints one JSON line on stdout, for `benches/gz_index.sh`.
//!
//! Environment:
//! - `ZRAN_BENCH_FILE`: the gzip file (default `benches/work/usr.tar.gz`); skipped if missing.
//! - `ZRAN_BENCH_INDEX`: its `.zidx` (default `FILE.zidx`; if that is missing too, an index is
//!   built in memory at the default span, which is said on stderr).
//! - `ZRAN_BENCH_READS`: number of timed reads (default 1000).
//! - `ZRAN_BENCH_SEED`: PRNG seed (default 0x5eed).
//!
//! Run: `cargo bench --bench extract_latency`.
//!
//! The baseline is the cost of inflating one whole span (`index.span` bytes) from the start of
//! the file with flate2's `MultiGzDecoder`, the most a read can have to discard; a random read
//! discards about half a span on average.

use flate2::read::MultiGzDecoder;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;
use zran::gzip::{Extractor, IndexBuilder, zidx};

const READ_LEN: usize = 4096;
const WARMUP_READS: usize = 10;
const BASELINE_RUNS: usize = 20;

/// xorshift64* (Vigna): small, seedable, good enough for picking offsets.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(seed.max(1))
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[0, n)` (multiply-shift; the bias is below 2^-40 for our `n`).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> ExitCode {
    let default_file = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/work/usr.tar.gz");
    let file_path = PathBuf::from(env_or("ZRAN_BENCH_FILE", default_file));
    if !file_path.is_file() {
        eprintln!(
            "extract_latency: skipped: {} does not exist (set ZRAN_BENCH_FILE, or run benches/gz_index.sh)",
            file_path.display()
        );
        return ExitCode::SUCCESS;
    }
    let index_path = std::env::var_os("ZRAN_BENCH_INDEX").map(PathBuf::from).unwrap_or_else(|| {
        let mut s = file_path.clone().into_os_string();
        s.push(".zidx");
        PathBuf::from(s)
    });
    let reads = match parse_u64(&env_or("ZRAN_BENCH_READS", "1000")) {
        Some(n) if n > 0 => n as usize,
        _ => {
            eprintln!("extract_latency: ZRAN_BENCH_READS must be a positive integer");
            return ExitCode::FAILURE;
        }
    };
    let seed = match parse_u64(&env_or("ZRAN_BENCH_SEED", "0x5eed")) {
        Some(n) => n,
        None => {
            eprintln!("extract_latency: ZRAN_BENCH_SEED must be an integer");
            return ExitCode::FAILURE;
        }
    };

    let file = File::open(&file_path).expect("open the gzip file");
    let t = Instant::now();
    let index = if index_path.is_file() {
        zidx::read_file(&index_path).expect("read the index")
    } else {
        eprintln!(
            "extract_latency: {} does not exist; building an index in memory at the default span",
            index_path.display()
        );
        IndexBuilder::new()
            .build(BufReader::new(File::open(&file_path).expect("open")))
            .expect("build the index")
    };
    let index_load_ms = ms(t.elapsed());
    let file_len = file.metadata().expect("stat").len();
    assert_eq!(
        index.compressed_size, file_len,
        "the index does not belong to the file (compressed sizes differ)"
    );
    let size = index.uncompressed_size;
    assert!(size >= READ_LEN as u64, "file too small: {size} bytes uncompressed");

    // Baseline: inflate exactly one span from the start, best and median of BASELINE_RUNS.
    let span_len = index.span.min(size) as usize;
    let mut prefix = vec![0u8; span_len];
    let mut baseline = Vec::with_capacity(BASELINE_RUNS);
    for _ in 0..BASELINE_RUNS {
        let t = Instant::now();
        let mut dec =
            MultiGzDecoder::new(BufReader::with_capacity(256 << 10, File::open(&file_path).expect("open")));
        dec.read_exact(&mut prefix).expect("inflate one span");
        baseline.push(ms(t.elapsed()));
    }
    baseline.sort_by(f64::total_cmp);

    let ex = Extractor::new(&index, &file);
    let mut buf = vec![0u8; READ_LEN];

    // Correctness check against the flate2 prefix: a read straddling the middle of the span.
    let probe = (span_len / 2).min(span_len - READ_LEN) as u64;
    let n = ex.read_at(probe, &mut buf).expect("probe read");
    assert_eq!(n, READ_LEN);
    assert!(
        buf[..] == prefix[probe as usize..probe as usize + READ_LEN],
        "Extractor::read_at({probe}) differs from flate2's output"
    );

    let mut rng = XorShift::new(seed);
    let max_offset = size - READ_LEN as u64 + 1;
    for _ in 0..WARMUP_READS {
        ex.read_at(rng.below(max_offset), &mut buf).expect("warm-up read");
    }
    let mut samples = Vec::with_capacity(reads);
    let all = Instant::now();
    for _ in 0..reads {
        let offset = rng.below(max_offset);
        let t = Instant::now();
        let n = ex.read_at(offset, &mut buf).expect("random read");
        samples.push(ms(t.elapsed()));
        assert_eq!(n, READ_LEN, "short read at {offset}");
        std::hint::black_box(&buf);
    }
    let total_s = all.elapsed().as_secs_f64();
    samples.sort_by(f64::total_cmp);
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    let p50 = percentile(&samples, 50.0);
    let base_p50 = percentile(&baseline, 50.0);

    let round = |x: f64| (x * 1e4).round() / 1e4;
    let line = serde_json::json!({
        "file": file_path,
        "index": index_path,
        "compressed_size": index.compressed_size,
        "uncompressed_size": size,
        "span": index.span,
        "checkpoints": index.checkpoints.len(),
        "index_load_ms": round(index_load_ms),
        "reads": reads,
        "read_len": READ_LEN,
        "seed": seed,
        "warmup_reads": WARMUP_READS,
        "p50_ms": round(p50),
        "p90_ms": round(percentile(&samples, 90.0)),
        "p99_ms": round(percentile(&samples, 99.0)),
        "mean_ms": round(mean),
        "min_ms": round(samples[0]),
        "max_ms": round(samples[samples.len() - 1]),
        "total_s": round(total_s),
        "baseline": "flate2 MultiGzDecoder inflating one span from offset 0",
        "baseline_runs": BASELINE_RUNS,
        "baseline_span_ms_min": round(baseline[0]),
        "baseline_span_ms_p50": round(base_p50),
        "p50_over_baseline_p50": round(p50 / base_p50),
    });
    println!("{line}");
    ExitCode::SUCCESS
}
