//! `.zidx` against its golden file (`formats/golden/`) and against corruption.
//!
//! `ZRAN_BLESS=1 cargo test --test zidx_format` rewrites the golden files; the format is
//! versioned, so a change that needs that must bump `zidx::VERSION`.

mod common;

use common::*;
use std::path::PathBuf;
use zran::gzip::{Extractor, IndexBuilder, zidx};

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("formats/golden").join(name)
}

fn make_sample() -> Vec<u8> {
    let data = sample_data(200_000, 42);
    // Sync flushes end blocks every 20000 bytes, so there are boundaries to checkpoint at.
    let flushes: Vec<_> = (1..8).map(|i| (i * 20_000, zlib_rs::DeflateFlush::SyncFlush)).collect();
    let members = [
        Member { flags: FNAME, flushes: flushes.clone(), ..Member::default() },
        Member { flags: FEXTRA | FCOMMENT | FHCRC, level: 9, flushes, ..Member::default() },
        Member { level: 1, ..Member::default() },
    ];
    gzip_members(&data, &[60_000, 60_000, 150_000], &members)
}

#[test]
fn golden_decodes() {
    if std::env::var_os("ZRAN_BLESS").is_some() {
        let gz = make_sample();
        std::fs::write(golden("sample.gz"), &gz).unwrap();
        let index = IndexBuilder::new().span(32 * 1024).build(&gz[..]).unwrap();
        zidx::write_file(&index, &golden("sample.gz.zidx")).unwrap();
    }
    let gz = std::fs::read(golden("sample.gz")).unwrap();
    let bytes = std::fs::read(golden("sample.gz.zidx")).unwrap();
    let index = zidx::decode(&bytes).unwrap();

    // The values documented in formats/zidx.md.
    assert_eq!(&bytes[..8], b"ZRANZIDX");
    assert_eq!(index.compressed_size, gz.len() as u64);
    assert_eq!(index.uncompressed_size, 200_000);
    assert_eq!(index.members, 4);
    assert_eq!(index.span, 32 * 1024);
    assert_eq!(index.tail, gz[gz.len() - 8..]);
    let c = &index.checkpoints;
    assert_eq!((c[0].out, c[0].input, c[0].bits, c[0].window_len), (0, 19, 0, 0));
    // The empty member at 60000 and the one at 150000 start window-less checkpoints.
    let starts: Vec<u64> = c.iter().filter(|c| c.window_len == 0).map(|c| c.out).collect();
    assert!(starts.contains(&150_000), "{starts:?}");
    assert!(c.iter().all(|c| c.window_len <= 32768));
    let members: Vec<u64> = c.iter().map(|c| c.member).collect();
    assert_eq!(members, [0, 0, 3, 3]);

    // It serves the data.
    let data = gunzip(&gz);
    let ex = Extractor::new(&index, &gz);
    for off in [0u64, 1, 32_768, 59_999, 60_000, 149_990, 199_000] {
        let got = ex.extract(off, 1000).unwrap();
        let end = (off as usize + 1000).min(data.len());
        assert_eq!(got, &data[off as usize..end], "at {off}");
    }

    // The writer is canonical: what it reads, it writes back byte for byte; and building the
    // index again gives the same bytes (the builder is deterministic).
    assert_eq!(zidx::encode(&index), bytes);
    let again = IndexBuilder::new().span(32 * 1024).build(&gz[..]).unwrap();
    assert!(zidx::encode(&again) == bytes, "the builder no longer makes the golden index");
}

#[test]
fn any_corruption_is_refused() {
    let bytes = std::fs::read(golden("sample.gz.zidx")).unwrap();
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x10;
        assert!(zidx::decode(&bad).is_err(), "flip at byte {i} accepted");
    }
    for cut in 0..bytes.len() {
        assert!(zidx::decode(&bytes[..cut]).is_err(), "cut at {cut} accepted");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(zidx::decode(&longer).is_err());
}

#[test]
fn unknown_version_is_named() {
    let mut bytes = std::fs::read(golden("sample.gz.zidx")).unwrap();
    bytes[8] = 9;
    let err = zidx::decode(&bytes).unwrap_err();
    assert!(err.to_string().contains("version 9"), "{err}");
    let err = zidx::decode(b"PK\x03\x04 this is not an index at all, it is a zip file.........").unwrap_err();
    assert!(err.to_string().contains("bad magic"), "{err}");
}

/// Valid checksums over invalid fields: the reader checks fields, not just the CRC.
#[test]
fn fields_are_validated_beyond_the_checksum() {
    let bytes = std::fs::read(golden("sample.gz.zidx")).unwrap();
    let reseal = |mut b: Vec<u8>| {
        let n = b.len() - 8;
        let crc = crc32fast::hash(&b[..n]);
        b[n..n + 4].copy_from_slice(&crc.to_le_bytes());
        b
    };
    assert!(zidx::decode(&reseal(bytes.clone())).is_ok());
    let point = |i: usize| 64 + 40 * i;
    type Patch = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Patch)> = vec![
        ("checkpoint count", Box::new(|b| b[48..52].copy_from_slice(&100_000u32.to_le_bytes()))),
        ("first not at 0", Box::new(move |b| b[point(0)] = 1)),
        ("order", Box::new(move |b| b[point(1)..point(1) + 8].copy_from_slice(&0u64.to_le_bytes()))),
        ("bits", Box::new(move |b| b[point(1) + 38] = 8)),
        ("member", Box::new(move |b| b[point(1) + 24..point(1) + 32].copy_from_slice(&9u64.to_le_bytes()))),
        (
            "window length",
            Box::new(move |b| b[point(1) + 36..point(1) + 38].copy_from_slice(&40_000u16.to_le_bytes())),
        ),
        (
            "window offset",
            Box::new(move |b| b[point(1) + 16..point(1) + 24].copy_from_slice(&u64::MAX.to_le_bytes())),
        ),
        (
            "past the end",
            Box::new(move |b| b[point(1) + 8..point(1) + 16].copy_from_slice(&u64::MAX.to_le_bytes())),
        ),
        ("flags", Box::new(|b| b[10] = 1)),
    ];
    for (what, patch) in cases {
        let mut b = bytes.clone();
        patch(&mut b);
        assert!(zidx::decode(&reseal(b)).is_err(), "{what} accepted");
    }
    // A window that decodes to garbage is caught when used, not served.
    let index = zidx::decode(&bytes).unwrap();
    let mut broken = index.clone();
    let i = broken.checkpoints.iter().position(|c| c.window_len > 0).unwrap();
    broken.checkpoints[i].window[5] ^= 0xff;
    let gz = std::fs::read(golden("sample.gz")).unwrap();
    let off = broken.checkpoints[i].out;
    assert!(Extractor::new(&broken, &gz).extract(off, 10).is_err());
}
