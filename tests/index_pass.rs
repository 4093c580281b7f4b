//! The threaded index pass (blob read ahead on one thread, chunks hashed on another, round
//! buffers handed over without a copy) against the sequential one (`scan_gzip_sequential`,
//! `TarSink::inline`): the same seek index, checkpoint for checkpoint and window for window,
//! the same entries, chunk digests and warnings, on every gzip layer of the test images and on
//! random tar streams (property test); the chunk digests also against sha256 of the files as
//! the `tar` crate reads them.

mod common;

use common::harness::layouts;
use proptest::prelude::*;
use sha2::{Digest as _, Sha256};
use std::io::{Cursor, Write};
use zran::gzip::IndexBuilder;
use zran::layer::{self, ReadAhead};
use zran::oci::{self, Compression, ImageRef, OpenOptions};
use zran::tar::{FileChunk, TarSink};

#[test]
fn threaded_pass_equals_sequential_on_every_test_image() {
    let dir = layouts();
    let mut layers = 0;
    for name in
        ["python", "edge", "multi", "paths", "tarquirks", "umoci-insert", "python-estargz", "edge-estargz"]
    {
        let r: ImageRef = format!("oci:{}", dir.join(name).display()).parse().unwrap();
        let image = oci::open(&r, &OpenOptions::default()).unwrap();
        for l in image.manifest.layers.iter().filter(|l| l.compression() == Compression::Gzip) {
            for (span, chunk) in [(layer::DEFAULT_SPAN, 1 << 20), (256 << 10, 64 << 10)] {
                let what = format!("{name} {} span {span} chunk {chunk}", l.digest);
                let threaded = layer::scan_gzip(image.source.as_ref(), l, span, Some(chunk)).unwrap();
                let sequential =
                    layer::scan_gzip_sequential(image.source.as_ref(), l, span, Some(chunk)).unwrap();
                assert!(!threaded.index.checkpoints.is_empty(), "{what}");
                assert_eq!(threaded.index, sequential.index, "{what}");
                assert_eq!(threaded.entries, sequential.entries, "{what}");
                assert_eq!(threaded.chunks, sequential.chunks, "{what}");
                assert_eq!(threaded.warnings, sequential.warnings, "{what}");
            }
            layers += 1;
        }
    }
    assert!(layers >= 8, "only {layers} gzip layers compared");
}

/// A tar of `files`, in gzip members of about `members` equal parts, at `level`.
fn gzip_tar(files: &[(String, Vec<u8>)], level: u32, members: usize) -> (Vec<u8>, Vec<u8>) {
    let mut b = ::tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = ::tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut gz = Vec::new();
    let part = tar.len().div_ceil(members.max(1)).max(1);
    for piece in tar.chunks(part) {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        e.write_all(piece).unwrap();
        gz.extend(e.finish().unwrap());
    }
    (tar, gz)
}

/// File contents: compressible runs, pseudo-random bytes (stored blocks at low levels), or a
/// mix, so that rounds end inside files, between them and in headers.
fn content(kind: u8, len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            match kind % 3 {
                0 => (i / 97 % 7) as u8,
                1 => x as u8,
                _ if i % 4096 < 2048 => x as u8,
                _ => b'a' + (i % 26) as u8,
            }
        })
        .collect()
}

fn files() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    prop::collection::vec((0u8..3, prop_oneof![0usize..2000, 0usize..300_000, 400_000usize..1_300_000]), 1..8)
        .prop_map(|specs| {
            specs
                .into_iter()
                .enumerate()
                .map(|(i, (kind, len))| (format!("d/f{i}"), content(kind, len, i as u32 + 1)))
                .collect()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn threaded_sink_equals_inline_on_random_tar_streams(
        files in files(),
        level in 0u32..10,
        members in 1usize..4,
        chunk_log in 12u32..21,
        span_log in 16u32..21,
    ) {
        let (_, gz) = gzip_tar(&files, level, members);
        let chunk = 1u64 << chunk_log;
        let builder = IndexBuilder::new().span(1 << span_log).member_checkpoints(true);

        let mut inline = TarSink::inline(Some(chunk));
        let want_index = builder.build_with(Cursor::new(gz.clone()), &mut inline).unwrap();
        let want = inline.finish().unwrap();

        let mut threaded = TarSink::new(Some(chunk));
        let reader = ReadAhead::new(Cursor::new(gz), "test-read").unwrap();
        let index = builder.build_with(reader, &mut threaded).unwrap();
        let got = threaded.finish().unwrap();

        prop_assert_eq!(&index, &want_index);
        prop_assert_eq!(&got, &want);

        // And both against the files themselves.
        let mut oracle = Vec::new();
        for (e, (_, data)) in got.entries.iter().zip(&files) {
            for (i, c) in data.chunks(chunk as usize).enumerate() {
                oracle.push(FileChunk {
                    out: e.data_offset + i as u64 * chunk,
                    len: c.len() as u32,
                    digest: Sha256::digest(c).into(),
                });
            }
        }
        prop_assert_eq!(got.chunks, oracle);
    }
}
