//! Arbitrary bytes as a zstd:chunked footer, TOC JSON and blob. The reader must accept or
//! refuse without panicking, and what it accepts must hold its promises: names normalized,
//! every file covered exactly by its chunks, every chunk's frame inside the blob before the
//! TOC's frame, frames of distinct chunks apart, no frame asked for more than the ratio bound.
//! The first byte chooses how the rest is used:
//!
//! - 0: TOC JSON, parsed directly (with the TOC's frame far away and close by);
//! - 1: the whole blob's tail, footer and all, read without annotations;
//! - 2: the footer parser alone;
//! - 3 and up: the rest spliced into a realistic TOC, then parsed alone and wrapped into a
//!   valid blob (TOC frame, 40-byte footer, matching annotations): accepted exactly when the
//!   JSON alone is.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use zran::estargz::{EntryKind, Verify};
use zran::oci::{BlobSource, Descriptor, Digest, OciError};
use zran::zstdchunked::footer::{self, Span};
use zran::zstdchunked::toc::{self, MAX_ZSTD_RATIO, TocContents};
use zran::zstdchunked::{self, Position};

/// A TOC as containers/storage writes them, trimmed: dirs, a file of one chunk, a file of
/// three chunks (one zeros), an empty file, links, devices, xattrs, owners.
static SAMPLE: &str = r#"{"version":1,"entries":[
{"type":"dir","name":"etc/","mode":493,"modtime":"2023-11-14T22:13:20Z","accesstime":"0001-01-01T00:00:00Z","changetime":"0001-01-01T00:00:00Z"},
{"type":"reg","name":"./etc/passwd","mode":420,"size":300,"uid":1000,"gid":100,"modtime":"2023-11-14T22:13:20.5Z","digest":"sha256:e024bf712c2ae317cb232d45d94e4671b2d3cef32ca91d439b357dd110c7bda6","offset":153,"endOffset":496},
{"type":"reg","name":"usr/lib/big","mode":493,"size":17000,"digest":"sha256:d68c4b0faa20a33abbfe5aa6df0754586d560a6d4db866817133b02f87828ac8","offset":600,"endOffset":2000,"chunkSize":9000,"chunkDigest":"sha256:d48e85c565485b0bdb23cd04eeca6b698176d09c94c365b488ec560482c569b3"},
{"type":"chunk","name":"usr/lib/big","offset":900,"chunkSize":5000,"chunkOffset":9000,"chunkType":"zeros"},
{"type":"chunk","name":"usr/lib/big","offset":1000,"chunkSize":3000,"chunkOffset":14000},
{"type":"reg","name":"empty","mode":384,"size":0},
{"type":"symlink","name":"etc/link","linkName":"../usr/lib/big","mode":511},
{"type":"hardlink","name":"etc/passwd-","linkName":"etc/passwd","mode":420},
{"type":"fifo","name":"run/fifo","mode":420},
{"type":"char","name":"dev/null","mode":438,"devMajor":1,"devMinor":3,"xattrs":{"user.k":"dmFsdWU="}}
],"tarSplitDigest":"sha256:dc0e9c3658a1a3ed1ec94274d8b19925c93e1abb7ddba294923ad9bde30f8cb8"}"#;

const FAR: u64 = 1 << 30;

struct Memory(Vec<u8>);

impl BlobSource for Memory {
    fn name(&self) -> String {
        "fuzz".into()
    }
    fn manifest(&self, r: &str) -> Result<(Vec<u8>, Digest, Option<String>), OciError> {
        Err(OciError::NotFound(r.into()))
    }
    fn open(&self, d: &Digest, _: Option<u64>) -> Result<Box<dyn std::io::Read + Send>, OciError> {
        Err(OciError::NotFound(d.to_string()))
    }
    fn read_at(&self, _: &Digest, offset: u64, buf: &mut [u8]) -> Result<usize, OciError> {
        let from = (offset as usize).min(self.0.len());
        let n = buf.len().min(self.0.len() - from);
        buf[..n].copy_from_slice(&self.0[from..from + n]);
        Ok(n)
    }
    fn bytes_fetched(&self) -> u64 {
        0
    }
}

fn descriptor(blob: &[u8], annotations: BTreeMap<String, String>) -> Descriptor {
    Descriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
        digest: Digest::of(blob),
        size: blob.len() as u64,
        annotations,
        platform: None,
        artifact_type: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let layer = Digest::of(b"fuzzed layer");
    match mode {
        0 => {
            json_alone(&layer, rest, FAR);
            json_alone(&layer, rest, 2048);
        }
        1 => {
            let d = descriptor(rest, BTreeMap::new());
            if let Ok(t) = zstdchunked::read_toc(&Memory(rest.to_vec()), &d, Verify::InsecureSkipVerify) {
                assert!(t.toc_offset + t.toc_compressed_size <= rest.len() as u64);
                assert!(!t.verified);
                check(&t.entries, t.toc_offset - 8);
            }
        }
        2 => {
            if let Ok(Some(f)) = footer::parse_footer(rest) {
                assert!(f.frame_size as usize <= rest.len());
                assert!(f.tar_split.is_none() || f.version == Position::Footer64);
            }
        }
        _ => {
            let spliced = splice(rest);
            let alone = json_alone(&layer, &spliced, 2048);
            wrapped(&spliced, alone);
        }
    }
});

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

fn json_alone(layer: &Digest, json: &[u8], limit: u64) -> Option<TocContents> {
    match toc::parse_toc_json(layer, json, limit) {
        Ok(c) => {
            check(&c.entries, limit);
            Some(c)
        }
        Err(e) => {
            assert!(e.to_string().contains(&layer.to_string()), "{e}");
            None
        }
    }
}

/// The JSON as the TOC of a blob whose TOC frame starts at 2048 (the bytes before are
/// zeros: the reader never decodes payload frames), with a 40-byte footer and annotations.
fn wrapped(json: &[u8], alone: Option<TocContents>) {
    let compressed = zstd::encode_all(json, 1).unwrap();
    let mut blob = vec![0u8; 2048];
    blob.extend_from_slice(&footer::SKIPPABLE_MAGIC);
    blob.extend_from_slice(&(compressed.len() as u32).to_le_bytes());
    blob.extend_from_slice(&compressed);
    let span = Span { offset: 2056, compressed: compressed.len() as u64, uncompressed: json.len() as u64 };
    blob.extend_from_slice(&footer::encode_footer(Position::Footer40, span, None));
    let annotations = BTreeMap::from([
        ("io.containers.zstd-chunked.manifest-checksum".to_string(), Digest::of(&compressed).to_string()),
        ("io.containers.zstd-chunked.manifest-position".to_string(), format!("2056:{}:{}:1", compressed.len(), json.len())),
    ]);
    let d = descriptor(&blob, annotations);
    let got = zstdchunked::read_toc(&Memory(blob), &d, Verify::Required);
    match (alone, got) {
        (Some(a), Ok(t)) => {
            assert_eq!(a.entries, t.entries);
            assert_eq!(a.tar_split_digest, t.tar_split_digest);
            assert!(t.verified);
        }
        (None, Err(_)) => {}
        (a, g) => panic!("the JSON alone accepted: {}, wrapped: {:?}", a.is_some(), g.err().map(|e| e.to_string())),
    }
}

/// What every accepted TOC promises.
fn check(entries: &[zran::estargz::TocEntry], limit: u64) {
    let mut frames = Vec::new();
    for e in entries {
        let n = &e.name;
        assert!(
            !n.starts_with('/')
                && !n.ends_with('/')
                && !n.contains("//")
                && !n.contains('\0')
                && n.split('/').all(|p| p != "." && p != ".."),
            "unnormalized name {n:?}"
        );
        assert!(e.mode <= 0o7777);
        if n.is_empty() {
            assert_eq!(e.kind, EntryKind::Dir);
        }
        if e.kind != EntryKind::Reg || e.size == 0 {
            assert!(e.chunks.is_empty() && e.size == 0);
        }
        let mut covered = 0u64;
        for c in &e.chunks {
            assert_eq!(c.chunk_offset, covered, "{n}");
            assert!(c.chunk_size > 0);
            covered += c.chunk_size;
            assert!(0 < c.offset && c.offset < c.compressed_end && c.compressed_end <= limit, "{n}");
            assert!(u128::from(c.chunk_size) <= u128::from(c.compressed_end - c.offset) * u128::from(MAX_ZSTD_RATIO));
            frames.push((c.offset, c.compressed_end));
        }
        assert_eq!(covered, e.size, "{n}");
    }
    frames.sort_unstable();
    for w in frames.windows(2) {
        assert!(w[0].1 <= w[1].0, "overlapping frames {w:?}");
    }
}
