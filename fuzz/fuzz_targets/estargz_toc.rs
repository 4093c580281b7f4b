//! Arbitrary bytes as eStargz TOC JSON, and as the whole tail of an eStargz blob. The reader
//! must accept or refuse without panicking, and what it accepts must hold its promises: names
//! normalized, landmarks and the TOC itself hidden, every file covered exactly by its chunks,
//! every chunk before the TOC. The first byte chooses how the rest is used:
//!
//! - 0: TOC JSON, parsed directly (with a TOC offset far away and one close by);
//! - 1: the whole blob (footer detection, inflate, tar, digest, JSON);
//! - 2: TOC JSON wrapped into a valid blob (gzip member, tar entry, footer) with a matching
//!   digest: accepted exactly when the JSON alone is;
//! - 3 and up: the rest spliced into a realistic TOC (so that mutations reach the validator
//!   without a corpus), then as 0 and 2.

#![no_main]

use flate2::Compression;
use flate2::write::GzEncoder;
use libfuzzer_sys::fuzz_target;
use std::io::Write;
use zran::estargz::toc::{self, EntryKind, TocContents};
use zran::oci::Digest;

/// A TOC as ctr-remote writes them, trimmed: landmark, dirs, a chunked file, files sharing a
/// member, links, devices, xattrs, owners.
static SAMPLE: &str = r#"{
	"version": 1,
	"entries": [
		{"name": ".prefetch.landmark", "type": "reg", "size": 1, "offset": 85,
		 "digest": "sha256:dc0e9c3658a1a3ed1ec94274d8b19925c93e1abb7ddba294923ad9bde30f8cb8",
		 "chunkDigest": "sha256:dc0e9c3658a1a3ed1ec94274d8b19925c93e1abb7ddba294923ad9bde30f8cb8"},
		{"name": "./", "type": "dir", "modtime": "2023-11-14T22:13:20Z", "mode": 493},
		{"name": "./etc/", "type": "dir", "modtime": "2023-11-14T22:13:20Z", "mode": 493,
		 "xattrs": {"user.k": "dmFsdWU="}},
		{"name": "./etc/hosts", "type": "reg", "size": 20, "modtime": "2023-11-14T22:13:20.5Z",
		 "mode": 420, "uid": 1000, "gid": 1000, "userName": "u", "groupName": "g", "offset": 232,
		 "digest": "sha256:e024bf712c2ae317cb232d45d94e4671b2d3cef32ca91d439b357dd110c7bda6"},
		{"name": "./etc/a", "type": "reg", "size": 4, "offset": 400, "innerOffset": 512, "mode": 420},
		{"name": "./etc/b", "type": "reg", "size": 8, "offset": 400, "innerOffset": 1536, "uid": 1000},
		{"name": "big", "type": "reg", "size": 10000, "offset": 600, "chunkSize": 4096,
		 "digest": "sha256:d68c4b0faa20a33abbfe5aa6df0754586d560a6d4db866817133b02f87828ac8",
		 "chunkDigest": "sha256:d48e85c565485b0bdb23cd04eeca6b698176d09c94c365b488ec560482c569b3"},
		{"name": "big", "type": "chunk", "offset": 4800, "chunkOffset": 4096, "chunkSize": 4096},
		{"name": "big", "type": "chunk", "offset": 9000, "chunkOffset": 8192},
		{"name": "./empty", "type": "reg", "mode": 384},
		{"name": "link", "type": "symlink", "linkName": "../etc/hosts", "mode": 511},
		{"name": "hard", "type": "hardlink", "linkName": "./big", "mode": 420},
		{"name": "dev/null", "type": "char", "devMajor": 1, "devMinor": 3, "mode": 438},
		{"name": "dev/loop", "type": "block", "devMajor": 7, "gid": 6},
		{"name": "dev/fifo", "type": "fifo", "mode": 4514},
		{"name": "wh/.wh.gone", "type": "reg", "modtime": "1970-01-01T00:00:01+00:00"}
	]
}"#;

const FAR: u64 = 1 << 30;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let layer = Digest::of(b"fuzzed layer");
    match mode {
        0 => {
            json_alone(&layer, rest, FAR);
            json_alone(&layer, rest, rest.len() as u64);
        }
        1 => {
            if let Ok(t) = toc::parse_tail(&layer, rest.len() as u64, rest, None) {
                assert!(t.footer.toc_offset < rest.len() as u64);
                check(&t.contents(), t.footer.toc_offset);
            }
        }
        2 => wrapped(&layer, rest),
        _ => {
            let spliced = splice(rest);
            json_alone(&layer, &spliced, FAR);
            wrapped(&layer, &spliced);
        }
    }
});

trait Contents {
    fn contents(&self) -> TocContents;
}

impl Contents for toc::Toc {
    fn contents(&self) -> TocContents {
        TocContents {
            version: self.version,
            entries: self.entries.clone(),
            landmark: self.landmark,
        }
    }
}

/// Replace a range of the sample with the input: two bytes choose where, one how much.
fn splice(rest: &[u8]) -> Vec<u8> {
    let s = SAMPLE.as_bytes();
    if rest.len() < 3 {
        return s.to_vec();
    }
    let at = usize::from(u16::from_le_bytes([rest[0], rest[1]])) % s.len();
    let cut = (usize::from(rest[2]) % 16).min(s.len() - at);
    let mut out = s[..at].to_vec();
    out.extend_from_slice(&rest[3..]);
    out.extend_from_slice(&s[at + cut..]);
    out
}

fn json_alone(layer: &Digest, json: &[u8], toc_offset: u64) -> bool {
    match toc::parse_toc_json(layer, json, toc_offset) {
        Ok(c) => {
            check(&c, toc_offset);
            true
        }
        Err(e) => {
            // Errors name the layer.
            assert!(e.to_string().contains(&layer.to_string()), "{e}");
            false
        }
    }
}

/// The JSON inside a well-formed blob whose payload is `FAR` bytes long (only its tail is
/// handed over): the reader agrees with the JSON parser.
fn wrapped(layer: &Digest, json: &[u8]) {
    let alone = toc::parse_toc_json(layer, json, FAR);
    let mut tar = vec![0u8; 512];
    tar[..17].copy_from_slice(toc::TOC_TAR_NAME.as_bytes());
    tar[100..108].copy_from_slice(b"0000644\0");
    tar[124..136].copy_from_slice(format!("{:011o}\0", json.len()).as_bytes());
    tar[156] = b'0';
    tar[257..263].copy_from_slice(b"ustar\0");
    tar[263..265].copy_from_slice(b"00");
    tar[148..156].copy_from_slice(b"        ");
    let sum: u32 = tar.iter().map(|&b| u32::from(b)).sum();
    tar[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    tar.extend_from_slice(json);
    tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(&tar).unwrap();
    let mut tail = gz.finish().unwrap();
    let mut footer = vec![
        0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff, 26, 0, b'S', b'G', 22, 0,
    ];
    footer.extend_from_slice(format!("{FAR:016x}STARGZ").as_bytes());
    footer.extend_from_slice(&[1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
    tail.extend_from_slice(&footer);
    let size = FAR + tail.len() as u64;
    let expected = Digest::of(json);
    let got = toc::parse_tail(layer, size, &tail, Some(&expected));
    match (&alone, &got) {
        (Ok(a), Ok(t)) => {
            assert_eq!(*a, t.contents());
            assert!(t.verified);
            assert_eq!(t.json_size, json.len() as u64);
        }
        (Err(_), Err(_)) => {}
        _ => panic!(
            "the JSON alone gives {:?}, wrapped in a blob {:?}",
            alone.as_ref().err().map(ToString::to_string),
            got.as_ref().err().map(ToString::to_string)
        ),
    }
}

/// What every accepted TOC promises.
fn check(c: &TocContents, toc_offset: u64) {
    assert_eq!(c.version, 1);
    if let Some(l) = c.landmark {
        assert!(l.offset < toc_offset);
    }
    let mut places = std::collections::HashSet::new();
    for e in &c.entries {
        let n = &e.name;
        assert!(
            !n.starts_with('/')
                && !n.ends_with('/')
                && !n.contains("//")
                && !n.contains('\0')
                && n.split('/').all(|p| p != "." && p != ".."),
            "unnormalized name {n:?}"
        );
        assert!(
            n != toc::TOC_TAR_NAME && n != toc::PREFETCH_LANDMARK && n != toc::NO_PREFETCH_LANDMARK
        );
        assert!(e.mode <= 0o7777);
        if n.is_empty() {
            assert_eq!(e.kind, EntryKind::Dir);
        }
        if e.kind != EntryKind::Reg {
            assert!(e.chunks.is_empty() && e.size == 0);
        }
        let mut covered = 0u64;
        for ch in &e.chunks {
            assert_eq!(ch.chunk_offset, covered, "{n}");
            assert!(ch.chunk_size > 0);
            covered += ch.chunk_size;
            assert!(ch.offset < toc_offset);
            assert!(ch.offset < ch.compressed_end && ch.compressed_end <= toc_offset);
            assert!(
                places.insert((ch.offset, ch.inner_offset)),
                "{n}: place taken"
            );
        }
        assert_eq!(covered, e.size, "{n}");
    }
}
