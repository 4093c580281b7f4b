//! Registry reads through zran's client, for `benches/registry.sh`: a whole-blob pull, the
//! sha256 of the same bytes in memory (the floor for any pull that checks the digest), and
//! random 64 KiB range reads over pooled connections. Prints one JSON line.
//!
//! Environment: ZRAN_BENCH_REF (`127.0.0.1:PORT/REPO`), ZRAN_BENCH_DIGEST, ZRAN_BENCH_SIZE,
//! ZRAN_BENCH_READS (default 1000). Without them it says so and exits.

use std::io::Read;
use std::time::Instant;
use zran::oci::{BlobSource, Digest, ImageRef, RegistryOptions, RegistrySource};

fn main() {
    let (Ok(reference), Ok(digest), Ok(size)) = (
        std::env::var("ZRAN_BENCH_REF"),
        std::env::var("ZRAN_BENCH_DIGEST"),
        std::env::var("ZRAN_BENCH_SIZE"),
    ) else {
        eprintln!(
            "registry_reads: set ZRAN_BENCH_REF, ZRAN_BENCH_DIGEST and ZRAN_BENCH_SIZE (benches/registry.sh does)"
        );
        return;
    };
    let reads: usize = std::env::var("ZRAN_BENCH_READS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let ImageRef::Registry(repo) = reference.parse::<ImageRef>().expect("reference") else {
        panic!("ZRAN_BENCH_REF must name a registry repository");
    };
    let digest: Digest = digest.parse().expect("digest");
    let size: u64 = size.parse().expect("size");
    let src = RegistrySource::new(&repo, &RegistryOptions::default()).expect("client");

    // Whole blob, streamed and verified, best of 3.
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let mut r = src.open(&digest, Some(size)).expect("open");
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = r.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        assert_eq!(total, size);
        best = best.min(t.elapsed().as_secs_f64());
    }

    // The same bytes as one range read, which checks no digest: the transport alone.
    let mut raw_best = f64::MAX;
    let mut whole = vec![0u8; size as usize];
    for _ in 0..3 {
        let t = Instant::now();
        let n = src.read_at(&digest, 0, &mut whole).expect("whole range");
        assert_eq!(n as u64, size);
        raw_best = raw_best.min(t.elapsed().as_secs_f64());
    }

    // sha256 of the same bytes already in memory, best of 3: no pull that checks the digest can
    // finish sooner than this, however many cores it has.
    let mut hash_best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let mut h = zran::oci::Hasher::default();
        for c in whole.chunks(1 << 20) {
            h.update(c);
        }
        assert_eq!(h.finish(), digest);
        hash_best = hash_best.min(t.elapsed().as_secs_f64());
    }
    drop(whole);

    // Random 64 KiB ranges, one connection pool.
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut lat = Vec::with_capacity(reads);
    let mut buf = vec![0u8; 65536];
    let t = Instant::now();
    for _ in 0..reads {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let off = s % (size - 65536);
        let t0 = Instant::now();
        let n = src.read_at(&digest, off, &mut buf).expect("range");
        assert_eq!(n, 65536);
        lat.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let total = t.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "{{\"pull_seconds\": {best:.4}, \"pull_mb_per_sec\": {:.1}, \"raw_seconds\": {raw_best:.4}, \"hash_seconds\": {hash_best:.4}, \"reads\": {reads}, \"reads_seconds\": {total:.4}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}, \"mean_ms\": {:.3}}}",
        size as f64 / 1e6 / best,
        pct(0.5),
        pct(0.99),
        total * 1e3 / reads as f64
    );
}
