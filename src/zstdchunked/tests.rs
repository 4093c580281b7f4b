//! Hand-built zstd:chunked blobs of both generations (reference
//! `formats-convert-zstdchunked.md` §3): every payload chunk its own zstd frame (§3.1), the TOC
//! JSON (§3.4) zstd-compressed in a skippable frame, the tar-split stream in another (current
//! generation), then the footer frame of §3.2, with or without the annotations of §3.3.

use super::footer::{Span, encode_footer};
use super::*;
use crate::estargz::EntryKind;
use crate::oci::OciError;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

struct Memory {
    blob: Vec<u8>,
    fetched: AtomicU64,
    reads: AtomicU64,
}

impl BlobSource for Memory {
    fn name(&self) -> String {
        "memory".into()
    }
    fn manifest(&self, r: &str) -> Result<(Vec<u8>, Digest, Option<String>), OciError> {
        Err(OciError::NotFound(r.into()))
    }
    fn open(&self, d: &Digest, _: Option<u64>) -> Result<Box<dyn std::io::Read + Send>, OciError> {
        Err(OciError::NotFound(d.to_string()))
    }
    fn read_at(&self, _: &Digest, offset: u64, buf: &mut [u8]) -> Result<usize, OciError> {
        let from = (offset as usize).min(self.blob.len());
        let n = buf.len().min(self.blob.len() - from);
        buf[..n].copy_from_slice(&self.blob[from..from + n]);
        self.fetched.fetch_add(n as u64, Ordering::Relaxed);
        self.reads.fetch_add(1, Ordering::Relaxed);
        Ok(n)
    }
    fn bytes_fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Generation {
    /// containers/storage up to 1.43: zero times written as Go's zero time, legacy keys.
    Legacy,
    /// containers/storage 1.55 and later: zero times omitted, `tarSplitDigest`, io.github keys.
    Current,
}

fn frame(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

fn skippable(payload: &[u8]) -> Vec<u8> {
    let mut b = footer::SKIPPABLE_MAGIC.to_vec();
    b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    b.extend_from_slice(payload);
    b
}

fn sha(data: &[u8]) -> String {
    Digest::of(data).to_string()
}

/// The layer's files: a directory, a file of one chunk, a file of three chunks (the middle one
/// zeros), an empty file, a symlink, a hardlink, a fifo and a char device with xattrs.
fn layer_json(blob: &mut Vec<u8>, generation: Generation) -> Vec<Value> {
    let zero_time = |e: &mut Value| {
        if generation == Generation::Legacy {
            e["accesstime"] = json!("0001-01-01T00:00:00Z");
            e["changetime"] = json!("0001-01-01T00:00:00Z");
        }
    };
    let mut entries = Vec::new();
    let header = |blob: &mut Vec<u8>| blob.extend_from_slice(&frame(&[0u8; 512]));
    header(blob);
    let mut e = json!({"type": "dir", "name": "etc/", "mode": 493, "modtime": "2023-11-14T22:13:20Z"});
    zero_time(&mut e);
    entries.push(e);
    // One chunk: offset and endOffset of its frame, `digest`, no chunk fields.
    header(blob);
    let one = b"root:x:0:0:root:/root:/bin/sh\n".repeat(10);
    let offset = blob.len();
    blob.extend_from_slice(&frame(&one));
    let mut e = json!({"type": "reg", "name": "./etc/passwd", "mode": 420, "size": one.len(), "uid": 0, "gid": 0,
        "modtime": "2023-11-14T22:13:20.5Z", "digest": sha(&one), "offset": offset, "endOffset": blob.len()});
    zero_time(&mut e);
    entries.push(e);
    // Three chunks: `reg` is chunk 0 with chunkSize and chunkDigest, `chunk` entries follow.
    header(blob);
    let parts: [Vec<u8>; 3] = [b"abc".repeat(3000), vec![0u8; 5000], b"xyz".repeat(1000)];
    let whole: Vec<u8> = parts.concat();
    let mut offsets = Vec::new();
    for p in &parts {
        offsets.push(blob.len());
        blob.extend_from_slice(&frame(p));
    }
    let mut e = json!({"type": "reg", "name": "usr/lib/big", "mode": 493, "size": whole.len(), "uid": 1000, "gid": 100,
        "modtime": "2023-11-14T22:13:20Z", "digest": sha(&whole), "offset": offsets[0], "endOffset": blob.len(),
        "chunkSize": parts[0].len(), "chunkDigest": sha(&parts[0])});
    zero_time(&mut e);
    entries.push(e);
    let mut at = parts[0].len();
    for (i, p) in parts.iter().enumerate().skip(1) {
        let mut c = json!({"type": "chunk", "name": "usr/lib/big", "offset": offsets[i], "chunkSize": p.len(),
            "chunkOffset": at, "chunkDigest": sha(p)});
        if i == 1 {
            c["chunkType"] = json!("zeros");
        }
        entries.push(c);
        at += p.len();
    }
    header(blob);
    for mut e in [
        json!({"type": "reg", "name": "empty", "mode": 384, "size": 0, "modtime": "2023-11-14T22:13:20Z"}),
        json!({"type": "symlink", "name": "etc/link", "linkName": "../usr/lib/big", "mode": 511, "modtime": "2023-11-14T22:13:20Z"}),
        json!({"type": "hardlink", "name": "etc/passwd-", "linkName": "etc/passwd", "mode": 420, "modtime": "2023-11-14T22:13:20Z"}),
        json!({"type": "fifo", "name": "run/fifo", "mode": 420, "modtime": "2023-11-14T22:13:20Z"}),
        json!({"type": "char", "name": "dev/null", "mode": 438, "devMajor": 1, "devMinor": 3,
            "modtime": "2023-11-14T22:13:20Z", "xattrs": {"user.k": "dmFsdWU="}}),
    ] {
        zero_time(&mut e);
        entries.push(e);
    }
    blob.extend_from_slice(&frame(&[0u8; 1024]));
    entries
}

/// A blob and its descriptor: `footer` is the footer version written (`Annotation` for none),
/// `annotate` whether the layer carries the annotations.
fn build(generation: Generation, footer: Position, annotate: bool) -> (Memory, Descriptor) {
    build_with(generation, footer, annotate, |_| {})
}

fn build_with(
    generation: Generation,
    footer: Position,
    annotate: bool,
    tweak: impl Fn(&mut Value),
) -> (Memory, Descriptor) {
    let mut blob = Vec::new();
    let entries = layer_json(&mut blob, generation);
    let tar_split = frame(b"{\"type\":2,\"payload\":\"\"}\n");
    let mut toc = json!({"version": 1, "entries": entries});
    if generation == Generation::Current {
        toc["tarSplitDigest"] = json!(sha(&tar_split));
    }
    tweak(&mut toc);
    let json = serde_json::to_vec(&toc).unwrap();
    let compressed = frame(&json);
    let toc_span = Span {
        offset: blob.len() as u64 + 8,
        compressed: compressed.len() as u64,
        uncompressed: json.len() as u64,
    };
    blob.extend_from_slice(&skippable(&compressed));
    let mut ts_span = None;
    if generation == Generation::Current {
        ts_span = Some(Span {
            offset: blob.len() as u64 + 8,
            compressed: tar_split.len() as u64,
            uncompressed: 24,
        });
        blob.extend_from_slice(&skippable(&tar_split));
    }
    if footer != Position::Annotation {
        blob.extend_from_slice(&encode_footer(footer, toc_span, ts_span));
    }
    let mut annotations = BTreeMap::new();
    if annotate {
        let prefix =
            if generation == Generation::Legacy { ANNOTATION_PREFIXES[1] } else { ANNOTATION_PREFIXES[0] };
        annotations.insert(format!("{prefix}manifest-checksum"), sha(&compressed));
        let s = toc_span;
        annotations.insert(
            format!("{prefix}manifest-position"),
            format!("{}:{}:{}:1", s.offset, s.compressed, s.uncompressed),
        );
        if let Some(s) = ts_span {
            annotations.insert(
                format!("{prefix}tarsplit-position"),
                format!("{}:{}:{}", s.offset, s.compressed, s.uncompressed),
            );
        }
    }
    let d = Descriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
        digest: Digest::of(&blob),
        size: blob.len() as u64,
        annotations,
        platform: None,
        artifact_type: None,
    };
    (Memory { blob, fetched: AtomicU64::new(0), reads: AtomicU64::new(0) }, d)
}

fn read(m: &Memory, d: &Descriptor, verify: Verify) -> Result<Toc, ZstdChunkedError> {
    read_toc(m, d, verify)
}

#[test]
fn legacy_with_annotations_and_40_byte_footer() {
    let (m, d) = build(Generation::Legacy, Position::Footer40, true);
    let toc = read(&m, &d, Verify::Required).unwrap();
    assert_eq!(toc.position, Position::Annotation);
    assert!(toc.verified);
    assert_eq!((toc.tar_split, toc.tar_split_digest.as_ref()), (None, None));
    // One read: the TOC's skippable frame, the TOC and the footer after it.
    assert_eq!(m.reads.load(Ordering::Relaxed), 1);
    assert_eq!(toc.fetched, 8 + toc.toc_compressed_size + 48);
    assert_eq!(m.bytes_fetched(), toc.fetched);
    let names: Vec<&str> = toc.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        ["etc", "etc/passwd", "usr/lib/big", "empty", "etc/link", "etc/passwd-", "run/fifo", "dev/null"]
    );
    let passwd = &toc.entries[1];
    assert_eq!(
        (passwd.size, passwd.mode, passwd.mtime, passwd.mtime_nsec),
        (300, 0o644, 1_700_000_000, 500_000_000)
    );
    assert_eq!(passwd.chunks.len(), 1);
    let c = &passwd.chunks[0];
    assert_eq!(c.chunk_digest, passwd.digest);
    // The frame decodes to the file.
    let bytes = zstd::decode_all(&m.blob[c.offset as usize..c.compressed_end as usize]).unwrap();
    assert_eq!(Digest::of(&bytes), *passwd.digest.as_ref().unwrap());
    let big = &toc.entries[2];
    assert_eq!((big.uid, big.gid, big.chunks.len()), (1000, 100, 3));
    assert_eq!(big.chunks.iter().map(|c| c.zeros).collect::<Vec<_>>(), [false, true, false]);
    let mut whole = Vec::new();
    for (i, c) in big.chunks.iter().enumerate() {
        if let Some(next) = big.chunks.get(i + 1) {
            assert_eq!(c.compressed_end, next.offset);
        }
        let bytes = zstd::decode_all(&m.blob[c.offset as usize..c.compressed_end as usize]).unwrap();
        assert_eq!((bytes.len() as u64, c.chunk_offset), (c.chunk_size, whole.len() as u64));
        assert_eq!(Some(Digest::of(&bytes)), c.chunk_digest);
        whole.extend_from_slice(&bytes);
    }
    assert_eq!(Some(Digest::of(&whole)), big.digest);
    assert!(toc.entries[3].chunks.is_empty());
    assert_eq!((toc.entries[4].kind, toc.entries[4].link.as_str()), (EntryKind::Symlink, "../usr/lib/big"));
    assert_eq!((toc.entries[5].kind, toc.entries[5].link.as_str()), (EntryKind::Hardlink, "etc/passwd"));
    let dev = &toc.entries[7];
    assert_eq!((dev.kind, dev.devmajor, dev.devminor), (EntryKind::Char, 1, 3));
    assert_eq!(dev.xattrs.get("user.k").map(Vec::as_slice), Some(&b"value"[..]));
}

#[test]
fn footers_without_annotations() {
    for version in [Position::Footer40, Position::Footer56, Position::Footer64] {
        let (m, d) = build(Generation::Legacy, version, false);
        // No checksum annotation: refused unless verification is skipped.
        assert!(matches!(read(&m, &d, Verify::Required), Err(ZstdChunkedError::MissingChecksum { .. })));
        assert_eq!(m.reads.load(Ordering::Relaxed), 0);
        let toc = read(&m, &d, Verify::InsecureSkipVerify).unwrap();
        assert_eq!((toc.position, toc.verified), (version, false));
        assert_eq!(toc.entries.len(), 8);
        // The small blob is read once, whole.
        assert_eq!((m.reads.load(Ordering::Relaxed), toc.fetched), (1, d.size));
    }
}

#[test]
fn current_generation_gives_the_same_entries() {
    let (m, d) = build(Generation::Current, Position::Footer64, true);
    let current = read(&m, &d, Verify::Required).unwrap();
    assert!(d.annotations.keys().all(|k| k.starts_with("io.github.containers.zstd-chunked.")));
    let (off, clen, _) = current.tar_split.unwrap();
    assert_eq!(current.tar_split_digest, Some(Digest::of(&m.blob[off as usize..(off + clen) as usize])));
    // The tar-split frame lies between TOC and footer: only the TOC is read.
    assert_eq!(current.fetched, 8 + current.toc_compressed_size);
    let (m, d) = build(Generation::Legacy, Position::Footer40, true);
    let legacy = read(&m, &d, Verify::Required).unwrap();
    assert_eq!(current.entries, legacy.entries);
    // The 64-byte footer alone gives the tar-split position too.
    let (m, d) = build(Generation::Current, Position::Footer64, false);
    let from_footer = read(&m, &d, Verify::InsecureSkipVerify).unwrap();
    assert_eq!((from_footer.tar_split, from_footer.position), (current.tar_split, Position::Footer64));
    assert_eq!(from_footer.entries, legacy.entries);
    // Annotations alone, no footer at all.
    let (m, d) = build(Generation::Current, Position::Annotation, true);
    assert_eq!(read(&m, &d, Verify::Required).unwrap().entries, legacy.entries);
}

fn err_of(r: Result<Toc, ZstdChunkedError>) -> String {
    match r {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn checksum_mismatch_and_disagreeing_footer() {
    let (m, mut d) = build(Generation::Legacy, Position::Footer40, true);
    d.annotations.insert(format!("{}manifest-checksum", ANNOTATION_PREFIXES[1]), sha(b"other"));
    let e = err_of(read(&m, &d, Verify::InsecureSkipVerify));
    assert!(e.contains("the manifest annotation says"), "{e}");
    // Both spellings present and disagreeing.
    let (m, mut d) = build(Generation::Legacy, Position::Footer40, true);
    d.annotations.insert(format!("{}manifest-checksum", ANNOTATION_PREFIXES[0]), sha(b"other"));
    let e = err_of(read(&m, &d, Verify::Required));
    assert!(e.contains("disagrees with"), "{e}");
    // The annotation's position and the footer's disagree.
    let (m, mut d) = build(Generation::Legacy, Position::Footer40, true);
    let key = format!("{}manifest-position", ANNOTATION_PREFIXES[1]);
    let p = parse_span(&d.annotations[&key], true).unwrap();
    d.annotations.insert(key, format!("{}:{}:{}:1", p.offset, p.compressed, p.uncompressed + 1));
    let e = err_of(read(&m, &d, Verify::Required));
    assert!(e.contains("disagree"), "{e}");
}

#[test]
fn hostile_positions() {
    let key = format!("{}manifest-position", ANNOTATION_PREFIXES[1]);
    for (value, want) in [
        ("1:2:3", "expected 4 numbers"),
        ("8:10:10:2", "manifest type 2"),
        ("99999999:10:10:1", "not inside the blob"),
        ("4:10:10:1", "not inside the blob"),
        ("8:10:99999999999:1", "more than the 157286400 allowed"),
        ("x:1:1:1", "not a number"),
    ] {
        let (m, mut d) = build(Generation::Legacy, Position::Footer40, true);
        d.annotations.insert(key.clone(), value.into());
        let e = err_of(read(&m, &d, Verify::Required));
        assert!(e.contains(want), "{value}: {e}");
        assert!(e.contains(&d.digest.to_string()), "{e}");
    }
    // A position that is no skippable frame.
    let (m, mut d) = build(Generation::Legacy, Position::Footer40, true);
    d.annotations.insert(key.clone(), "16:10:10:1".into());
    let e = err_of(read(&m, &d, Verify::InsecureSkipVerify));
    assert!(e.contains("no skippable frame"), "{e}");
    // A TOC that decompresses to more than its position says: bounded by that size.
    let (m, mut d) = build(Generation::Legacy, Position::Footer40, true);
    let p = parse_span(&d.annotations[&key], true).unwrap();
    d.annotations.insert(key.clone(), format!("{}:{}:{}:1", p.offset, p.compressed, 10));
    // (the footer now disagrees; drop it by reading without it)
    let mut blob = m.blob.clone();
    blob.truncate(blob.len() - 48);
    blob.extend_from_slice(&[0u8; 100]);
    d.size = blob.len() as u64;
    let m = Memory { blob, fetched: AtomicU64::new(0), reads: AtomicU64::new(0) };
    let e = err_of(read(&m, &d, Verify::Required));
    assert!(e.contains("decompresses to 11 or more bytes, its position says 10"), "{e}");
}

/// Parse a TOC after `tweak` has spoiled it (checksums follow, so only validation refuses).
fn spoiled(tweak: impl Fn(&mut Value)) -> String {
    let (m, d) = build_with(Generation::Current, Position::Footer64, true, tweak);
    err_of(read(&m, &d, Verify::Required))
}

#[test]
fn hostile_tocs() {
    // entries: 0 etc/, 1 passwd, 2 big (chunk 0), 3-4 its chunks, 5 empty, ...
    let e = spoiled(|t| t["entries"][4]["offset"] = t["entries"][3]["offset"].clone());
    assert!(e.contains("does not come after the previous chunk"), "{e}");
    let e = spoiled(|t| t["entries"][2]["offset"] = t["entries"][1]["offset"].clone());
    assert!(e.contains("overlapping zstd frames"), "{e}");
    let e = spoiled(|t| t["entries"][1]["endOffset"] = json!(1u64 << 40));
    assert!(e.contains("runs into the TOC's frame"), "{e}");
    let e = spoiled(|t| t["entries"][4]["offset"] = json!(1u64 << 40));
    assert!(e.contains("not before the TOC's frame"), "{e}");
    let e = spoiled(|t| t["entries"][4]["chunkOffset"] = json!(3));
    assert!(e.contains("the chunks do not cover the file"), "{e}");
    let e = spoiled(|t| t["entries"][2]["size"] = json!(100_000));
    assert!(e.contains("the chunks cover 17000 of the file's 100000 bytes"), "{e}");
    let e = spoiled(|t| t["entries"][4]["chunkSize"] = json!(1u64 << 40));
    assert!(e.contains("runs past the end"), "{e}");
    let e = spoiled(|t| t["entries"][9]["xattrs"]["user.k"] = json!("not base64!"));
    assert!(e.contains("not base64") && e.contains("dev/null"), "{e}");
    let e = spoiled(|t| t["entries"][3]["chunkType"] = json!("holes"));
    assert!(e.contains("unknown chunkType"), "{e}");
    let e = spoiled(|t| t["entries"][5]["offset"] = json!(10));
    assert!(e.contains("an empty file has no data"), "{e}");
    let e = spoiled(|t| t["entries"][7]["linkName"] = json!("nowhere"));
    assert!(e.contains("which no earlier entry"), "{e}");
    let e = spoiled(|t| t["entries"][0]["modtime"] = json!("yesterday"));
    assert!(e.contains("modtime"), "{e}");
    let e = spoiled(|t| t["version"] = json!(2));
    assert!(e.contains("TOC version 2"), "{e}");
    let e = spoiled(|t| t["entries"][8]["type"] = json!("socket"));
    assert!(e.contains("unknown entry type"), "{e}");
    // A chunk claiming far more bytes than its frame can hold.
    let e = spoiled(|t| {
        let size = 1u64 << 40;
        t["entries"][1]["size"] = json!(size);
    });
    assert!(e.contains("cannot come from its"), "{e}");
}

#[test]
fn every_error_names_layer_entry_and_offset() {
    let e = spoiled(|t| t["entries"][4]["chunkOffset"] = json!(3));
    assert!(e.contains("layer sha256:") && e.contains("TOC entry 4 \"usr/lib/big\" (offset "), "{e}");
}

/// An eStargz TOC inside a zstd:chunked layer, as stargz-snapshotter's `zstdchunked` writer
/// lays it out: each frame starts at a payload and runs on into the next tar headers, the TOC
/// is the eStargz JSON (no tar wrapper) zstd-compressed in a skippable frame, then the 40-byte
/// footer; legacy annotations plus `toc.digest` (sha256 of the JSON).
fn estargz_in_zstd(tweak: impl Fn(&mut BTreeMap<String, String>)) -> (Memory, Descriptor) {
    let mut blob = frame(&[0u8; 512]);
    let landmark = blob.len();
    blob.extend_from_slice(&frame(&[0xf; 1024]));
    let a = b"hello\n".repeat(100);
    let a_off = blob.len();
    blob.extend_from_slice(&frame(&[a.as_slice(), &[0u8; 1536]].concat()));
    let b = b"world".repeat(3000);
    let b_off = blob.len();
    blob.extend_from_slice(&frame(&[b.as_slice(), &[0u8; 1024]].concat()));
    let json = serde_json::to_vec(&json!({"version": 1, "entries": [
        {"name": ".no.prefetch.landmark", "type": "reg", "size": 1, "offset": landmark,
         "digest": sha(&[0xf]), "chunkDigest": sha(&[0xf])},
        {"name": "etc/", "type": "dir", "mode": 493, "modtime": "2023-11-14T22:13:20Z"},
        {"name": "etc/a", "type": "reg", "size": a.len(), "mode": 420, "offset": a_off,
         "digest": sha(&a), "chunkDigest": sha(&a)},
        {"name": "etc/b", "type": "reg", "size": b.len(), "mode": 420, "offset": b_off,
         "digest": sha(&b), "chunkDigest": sha(&b)},
    ]}))
    .unwrap();
    let compressed = frame(&json);
    let toc = Span {
        offset: blob.len() as u64 + 8,
        compressed: compressed.len() as u64,
        uncompressed: json.len() as u64,
    };
    blob.extend_from_slice(&skippable(&compressed));
    blob.extend_from_slice(&encode_footer(Position::Footer40, toc, None));
    let mut annotations = BTreeMap::from([
        (format!("{}manifest-checksum", ANNOTATION_PREFIXES[1]), sha(&compressed)),
        (
            format!("{}manifest-position", ANNOTATION_PREFIXES[1]),
            format!("{}:{}:{}:1", toc.offset, toc.compressed, toc.uncompressed),
        ),
        (crate::oci::image::ESTARGZ_TOC_DIGEST.to_string(), sha(&json)),
    ]);
    tweak(&mut annotations);
    let d = Descriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
        digest: Digest::of(&blob),
        size: blob.len() as u64,
        annotations,
        platform: None,
        artifact_type: None,
    };
    (Memory { blob, fetched: AtomicU64::new(0), reads: AtomicU64::new(0) }, d)
}

#[test]
fn estargz_toc_inside_zstd() {
    use crate::estargz::{self, LandmarkKind};
    let (m, d) = estargz_in_zstd(|_| {});
    let toc = estargz::read_toc(&m, &d, Verify::Required).unwrap();
    assert!(toc.zstd && toc.verified);
    assert_eq!(m.reads.load(Ordering::Relaxed), 1);
    assert_eq!(toc.landmark.map(|l| l.kind), Some(LandmarkKind::NoPrefetch));
    assert_eq!(toc.entries.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["etc", "etc/a", "etc/b"]);
    let toc_frame = toc.footer.toc_offset - 8;
    for e in &toc.entries[1..] {
        let c = &e.chunks[0];
        // The frame runs from the payload into the next headers; the file is its start.
        let out = zstd::decode_all(&m.blob[c.offset as usize..c.compressed_end as usize]).unwrap();
        assert_eq!(Some(Digest::of(&out[..e.size as usize])), e.digest);
        assert!(c.compressed_end <= toc_frame);
    }
    assert_eq!(toc.entries[2].chunks[0].compressed_end, toc_frame);
    // Either digest wrong: refused.
    let (m, d) = estargz_in_zstd(|a| {
        a.insert(crate::oci::image::ESTARGZ_TOC_DIGEST.into(), sha(b"x"));
    });
    assert!(estargz::read_toc(&m, &d, Verify::Required).unwrap_err().to_string().contains("sha256:"));
    let (m, d) = estargz_in_zstd(|a| {
        a.insert(format!("{}manifest-checksum", ANNOTATION_PREFIXES[1]), sha(b"x"));
    });
    let e = estargz::read_toc(&m, &d, Verify::InsecureSkipVerify).unwrap_err().to_string();
    assert!(e.contains("the manifest annotation says"), "{e}");
    // No toc.digest: only insecure-skip-verify reads it, unverified.
    let (m, d) = estargz_in_zstd(|a| {
        a.remove(crate::oci::image::ESTARGZ_TOC_DIGEST);
    });
    assert!(estargz::read_toc(&m, &d, Verify::Required).is_err());
    assert!(!estargz::read_toc(&m, &d, Verify::InsecureSkipVerify).unwrap().verified);
    // Annotations gone: the footer alone places the TOC.
    let (m, d) = estargz_in_zstd(|a| a.retain(|k, _| !k.starts_with(ANNOTATION_PREFIXES[1])));
    assert_eq!(estargz::read_toc(&m, &d, Verify::Required).unwrap().entries.len(), 3);
}
