//! The eStargz TOC reader: every layer of the real eStargz test images (converted by
//! `ctr-remote`) against the truth trees and against their own blobs, and hand-made blobs
//! (gzip members + tar + TOC JSON + footer, built here) that are valid, odd or hostile.

mod common;

use common::harness::layouts;
use common::toc_model::Model;
use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use zran::estargz::toc::{
    self, EntryKind, LandmarkKind, MAX_TOC_JSON, TAIL_READ, Toc, TocError, Verify, read_toc, read_toc_from,
};
use zran::estargz::{Footer, FooterKind};
use zran::oci::image::ESTARGZ_TOC_DIGEST;
use zran::oci::{self, BlobSource, Descriptor, Digest, OciError};

// -- an in-memory blob source ---------------------------------------------------------------

struct MemSource {
    blobs: HashMap<Digest, Vec<u8>>,
    fetched: AtomicU64,
    reads: AtomicU64,
}

impl MemSource {
    fn new(blob: Vec<u8>) -> (MemSource, Digest) {
        let d = Digest::of(&blob);
        let src = MemSource {
            blobs: HashMap::from([(d.clone(), blob)]),
            fetched: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        };
        (src, d)
    }

    fn blob(&self, d: &Digest) -> Result<&Vec<u8>, OciError> {
        self.blobs.get(d).ok_or_else(|| OciError::NotFound(format!("blob {d}")))
    }
}

impl BlobSource for MemSource {
    fn name(&self) -> String {
        "mem".into()
    }

    fn manifest(&self, reference: &str) -> Result<(Vec<u8>, Digest, Option<String>), OciError> {
        Err(OciError::NotFound(reference.into()))
    }

    fn open(&self, d: &Digest, _size: Option<u64>) -> Result<Box<dyn Read + Send>, OciError> {
        Ok(Box::new(std::io::Cursor::new(self.blob(d)?.clone())))
    }

    fn read_at(&self, d: &Digest, offset: u64, buf: &mut [u8]) -> Result<usize, OciError> {
        let b = self.blob(d)?;
        let start = (offset as usize).min(b.len());
        let n = buf.len().min(b.len() - start);
        buf[..n].copy_from_slice(&b[start..start + n]);
        self.fetched.fetch_add(n as u64, Ordering::Relaxed);
        self.reads.fetch_add(1, Ordering::Relaxed);
        Ok(n)
    }

    fn bytes_fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }
}

// -- an eStargz writer, as stargz-snapshotter lays blobs out --------------------------------

fn gzip(data: &[u8], level: u32) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::new(level));
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn pad(v: &mut Vec<u8>) {
    v.resize(v.len().div_ceil(512) * 512, 0);
}

/// A tar header (ustar) into `out`.
fn tar_header(out: &mut Vec<u8>, name: &str, kind: tar::EntryType, size: u64, extra: &Value) {
    let mut h = tar::Header::new_ustar();
    h.set_path(name).unwrap();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(extra["mode"].as_u64().unwrap_or(0o644) as u32);
    h.set_uid(extra["uid"].as_u64().unwrap_or(0));
    h.set_gid(extra["gid"].as_u64().unwrap_or(0));
    h.set_mtime(1_700_000_000);
    if let Some(l) = extra["linkName"].as_str() {
        h.set_link_name(l).unwrap();
    }
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
}

/// Builds the payload part of an eStargz blob: each chunk of a regular file starts a new gzip
/// member (unless `shared`, which packs a small file into the open member, with an
/// `innerOffset`), the tar headers that follow go at the end of the open member.
struct Builder {
    out: Vec<u8>,
    cur: Vec<u8>,
    cur_start: u64,
    entries: Vec<Value>,
    chunk_size: usize,
}

impl Builder {
    fn new(chunk_size: usize) -> Builder {
        Builder { out: Vec::new(), cur: Vec::new(), cur_start: 0, entries: Vec::new(), chunk_size }
    }

    fn close_member(&mut self) {
        if !self.cur.is_empty() {
            self.out.extend(gzip(&self.cur, 9));
            self.cur.clear();
        }
        self.cur_start = self.out.len() as u64;
    }

    /// A non-regular entry: `extra` holds its TOC fields (mode, linkName, …).
    fn other(&mut self, name: &str, kind: &str, extra: Value) {
        let t = match kind {
            "dir" => tar::EntryType::Directory,
            "symlink" => tar::EntryType::Symlink,
            "hardlink" => tar::EntryType::Link,
            "char" => tar::EntryType::Char,
            "block" => tar::EntryType::Block,
            "fifo" => tar::EntryType::Fifo,
            _ => panic!("{kind}"),
        };
        tar_header(&mut self.cur, name, t, 0, &extra);
        let mut e = json!({"name": name, "type": kind});
        merge(&mut e, extra);
        self.entries.push(e);
    }

    fn file(&mut self, name: &str, data: &[u8], extra: Value) {
        self.file_in(name, data, extra, false)
    }

    fn file_in(&mut self, name: &str, data: &[u8], extra: Value, shared: bool) {
        tar_header(&mut self.cur, name, tar::EntryType::Regular, data.len() as u64, &extra);
        let mut first = json!({"name": name, "type": "reg", "size": data.len()});
        merge(&mut first, extra);
        if data.is_empty() {
            first["digest"] = json!(sha(b""));
            self.entries.push(first);
            return;
        }
        first["digest"] = json!(sha(data));
        for (i, piece) in data.chunks(self.chunk_size).enumerate() {
            if !(shared && i == 0) {
                self.close_member();
            }
            let mut e = if i == 0 {
                first.take()
            } else {
                json!({"name": name, "type": "chunk", "chunkOffset": i * self.chunk_size})
            };
            e["offset"] = json!(self.cur_start);
            if !self.cur.is_empty() {
                e["innerOffset"] = json!(self.cur.len());
            }
            // As the Go writer: chunkSize only where a whole chunk remains (0 = to the end).
            if data.len() - i * self.chunk_size >= self.chunk_size {
                e["chunkSize"] = json!(self.chunk_size);
            }
            e["chunkDigest"] = json!(sha(piece));
            self.cur.extend_from_slice(piece);
            self.entries.push(e);
        }
        pad(&mut self.cur);
    }

    fn finish(mut self) -> (Vec<u8>, Vec<Value>) {
        self.close_member();
        (self.out, self.entries)
    }
}

fn merge(into: &mut Value, extra: Value) {
    if let Value::Object(m) = extra {
        for (k, v) in m {
            into[k] = v;
        }
    }
}

/// The eStargz footer for a TOC at `off` (51 bytes), or the legacy stargz one (47 bytes).
fn footer_bytes(off: u64, legacy: bool) -> Vec<u8> {
    let mut f = vec![0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff];
    if legacy {
        f.extend_from_slice(&[22, 0]);
    } else {
        f.extend_from_slice(&[26, 0, b'S', b'G', 22, 0]);
    }
    f.extend_from_slice(format!("{off:016x}STARGZ").as_bytes());
    f.extend_from_slice(&[1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
    f
}

/// The TOC member: a tar stream with `stargz.index.json`, gzipped.
fn toc_member(name: &str, json: &[u8], level: u32) -> Vec<u8> {
    let mut tar = Vec::new();
    tar_header(&mut tar, name, tar::EntryType::Regular, json.len() as u64, &json!({}));
    tar.extend_from_slice(json);
    pad(&mut tar);
    tar.extend_from_slice(&[0; 1024]);
    gzip(&tar, level)
}

/// A whole blob: payload, TOC member, footer.
fn assemble(payload: &[u8], json: &[u8]) -> Vec<u8> {
    let mut blob = payload.to_vec();
    blob.extend(toc_member(toc::TOC_TAR_NAME, json, 9));
    blob.extend(footer_bytes(payload.len() as u64, false));
    blob
}

fn toc_json(entries: &[Value]) -> Vec<u8> {
    serde_json::to_vec_pretty(&json!({"version": 1, "entries": entries})).unwrap()
}

fn descriptor(blob: &[u8], toc_digest: Option<String>) -> Descriptor {
    Descriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        digest: Digest::of(blob),
        size: blob.len() as u64,
        annotations: toc_digest
            .map(|d| BTreeMap::from([(ESTARGZ_TOC_DIGEST.to_string(), d)]))
            .unwrap_or_default(),
        platform: None,
        artifact_type: None,
    }
}

/// A blob whose annotation matches its TOC JSON.
fn layer(payload: &[u8], json: &[u8]) -> (MemSource, Descriptor) {
    let blob = assemble(payload, json);
    let d = descriptor(&blob, Some(sha(json)));
    (MemSource::new(blob).0, d)
}

fn read(src: &MemSource, d: &Descriptor) -> Result<Toc, TocError> {
    read_toc(src, d, Verify::Required)
}

/// Inflate `[offset, end)` of a blob (every member in it) and cut out a chunk.
fn chunk_bytes(blob: &[u8], c: &toc::Chunk) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(&blob[c.offset as usize..c.compressed_end as usize])
        .read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("chunk at {}: {e}", c.offset));
    let start = c.inner_offset as usize;
    out[start..start + c.chunk_size as usize].to_vec()
}

/// Every chunk's bytes have its digest and every file's chunks make its digest.
fn check_chunks(blob: &[u8], toc: &Toc) {
    for e in &toc.entries {
        let mut whole = Sha256::new();
        for c in &e.chunks {
            let bytes = chunk_bytes(blob, c);
            whole.update(&bytes);
            let d = c.chunk_digest.as_ref().unwrap_or_else(|| panic!("{}", e.name));
            assert_eq!(&Digest::of(&bytes), d, "{} chunk at {}", e.name, c.chunk_offset);
        }
        if e.kind == EntryKind::Reg {
            let got = format!("sha256:{}", hex::encode(whole.finalize()));
            assert_eq!(Some(got), e.digest.as_ref().map(|d| d.to_string()), "{}", e.name);
        }
    }
}

// -- the synthetic layer every hostile case starts from -------------------------------------

fn sample_data(len: usize, seed: u64) -> Vec<u8> {
    common::sample_data(len, seed)
}

/// A layer with every kind of entry, a 3-chunk file, small files sharing a member, and a
/// prefetch landmark after the first file.
fn sample() -> (Vec<u8>, Vec<Value>) {
    let mut b = Builder::new(4096);
    b.other("./", "dir", json!({"mode": 0o755, "modtime": "2023-11-14T22:13:20Z"}));
    b.file(
        "./etc/hosts",
        b"127.0.0.1 localhost\n",
        json!({"mode": 0o644, "uid": 1000, "gid": 1000, "userName": "zran", "groupName": "zran",
               "modtime": "2023-11-14T22:13:20.123456789Z"}),
    );
    b.file(".prefetch.landmark", &[0xf], json!({}));
    b.other("./etc/", "dir", json!({"mode": 0o755, "xattrs": {"user.k": "dmFsdWU="}}));
    b.file("./big", &sample_data(10_000, 7), json!({"mode": 0o4755, "uid": 1000, "gid": 1000}));
    b.file("./empty", b"", json!({"mode": 0o600}));
    b.file_in("./small/a", b"aaaa", json!({"mode": 0o644}), false);
    b.file_in("./small/b", b"bbbbbbbb", json!({"mode": 0o644}), true);
    b.other("./link", "symlink", json!({"linkName": "etc/hosts", "mode": 0o777}));
    b.other("./hard", "hardlink", json!({"linkName": "./big", "mode": 0o4755}));
    b.other("./dev/null", "char", json!({"mode": 0o666, "devMajor": 1, "devMinor": 3}));
    b.other("./dev/fifo", "fifo", json!({"mode": 0o644}));
    b.finish()
}

fn sample_layer() -> (MemSource, Descriptor, Vec<u8>) {
    let (payload, entries) = sample();
    let json = toc_json(&entries);
    let (src, d) = layer(&payload, &json);
    (src, d, json)
}

#[test]
fn a_synthetic_layer_reads_back() {
    let (src, d, json) = sample_layer();
    let toc = read(&src, &d).unwrap();
    // A small blob is read whole, once.
    assert_eq!(src.reads.load(Ordering::Relaxed), 1);
    assert_eq!(src.bytes_fetched(), d.size);
    assert_eq!(toc.fetched, d.size);
    assert!(toc.verified);
    assert_eq!(toc.digest.to_string(), sha(&json));
    assert_eq!(toc.json_size, json.len() as u64);
    assert_eq!(toc.footer.kind, FooterKind::Estargz);
    assert_eq!(toc.version, 1);

    let names: Vec<&str> = toc.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "",
            "etc/hosts",
            "etc",
            "big",
            "empty",
            "small/a",
            "small/b",
            "link",
            "hard",
            "dev/null",
            "dev/fifo"
        ]
    );
    let by: HashMap<&str, &toc::TocEntry> = toc.entries.iter().map(|e| (e.name.as_str(), e)).collect();
    let hosts = by["etc/hosts"];
    assert_eq!((hosts.kind, hosts.mode, hosts.uid, hosts.gid), (EntryKind::Reg, 0o644, 1000, 1000));
    assert_eq!((hosts.mtime, hosts.mtime_nsec), (1_700_000_000, 123_456_789));
    assert_eq!((hosts.uname.as_str(), hosts.gname.as_str()), ("zran", "zran"));
    // Names given once per id are filled in.
    assert_eq!(by["big"].uname, "zran");
    assert_eq!(by["empty"].uname, "");
    assert_eq!(by["etc"].xattrs, BTreeMap::from([("user.k".to_string(), b"value".to_vec())]));
    assert_eq!((by[""].mtime, by["big"].mtime), (1_700_000_000, 0));
    let big = by["big"];
    assert_eq!(big.mode, 0o4755);
    assert_eq!(
        big.chunks.iter().map(|c| (c.chunk_offset, c.chunk_size, c.inner_offset)).collect::<Vec<_>>(),
        [(0, 4096, 0), (4096, 4096, 0), (8192, 1808, 0)]
    );
    assert!(big.chunks.windows(2).all(|w| w[0].compressed_end == w[1].offset));
    assert!(by["empty"].chunks.is_empty());
    let (a, b) = (&by["small/a"].chunks[0], &by["small/b"].chunks[0]);
    assert_eq!(a.offset, b.offset);
    assert_eq!((a.inner_offset, b.inner_offset), (0, 512 + 512));
    assert_eq!((by["link"].kind, by["link"].link.as_str()), (EntryKind::Symlink, "etc/hosts"));
    assert_eq!((by["hard"].kind, by["hard"].link.as_str()), (EntryKind::Hardlink, "big"));
    assert_eq!((by["dev/null"].devmajor, by["dev/null"].devminor), (1, 3));
    assert_eq!(by["dev/fifo"].kind, EntryKind::Fifo);
    // The landmark is hidden, and is the prefetch boundary.
    let lm = toc.landmark.unwrap();
    assert_eq!(lm.kind, LandmarkKind::Prefetch);
    assert_eq!(toc.prefetch_end(), Some(lm.offset));
    assert!(lm.offset > hosts.chunks[0].offset && lm.offset < big.chunks[0].offset);
    // The last member holding a chunk ends at the TOC.
    let last = toc.chunks().map(|(_, c)| c).max_by_key(|c| c.offset).unwrap();
    assert_eq!(last.compressed_end, toc.footer.toc_offset);
    check_chunks(src.blob(&d.digest).unwrap(), &toc);
}

#[test]
fn legacy_footer_and_no_landmark() {
    let mut b = Builder::new(1 << 20);
    b.file(".no.prefetch.landmark", &[0xf], json!({}));
    b.file("a", b"hello", json!({"mode": 0o644}));
    let (payload, entries) = b.finish();
    let json = toc_json(&entries);
    let mut blob = payload.clone();
    blob.extend(toc_member(toc::TOC_TAR_NAME, &json, 6));
    blob.extend(footer_bytes(payload.len() as u64, true));
    let d = descriptor(&blob, Some(sha(&json)));
    let (src, _) = MemSource::new(blob);
    let toc = read(&src, &d).unwrap();
    assert_eq!(
        toc.footer,
        Footer { kind: FooterKind::LegacyStargz, toc_offset: payload.len() as u64, footer_size: 47 }
    );
    assert_eq!(toc.landmark.unwrap().kind, LandmarkKind::NoPrefetch);
    assert_eq!(toc.prefetch_end(), None);
    assert_eq!(toc.entries.len(), 1);
    check_chunks(src.blob(&d.digest).unwrap(), &toc);
}

/// A TOC member larger than the first read: exactly one more read, of the bytes before it.
#[test]
fn a_large_toc_takes_a_second_read() {
    let mut b = Builder::new(1 << 20);
    for i in 0..25_000 {
        b.other(&format!("d/{i:08}-{}", "x".repeat(40)), "dir", json!({"mode": 0o755}));
    }
    b.file("f", b"data", json!({}));
    let (payload, entries) = b.finish();
    let json = toc_json(&entries);
    let mut blob = payload.clone();
    blob.extend(toc_member(toc::TOC_TAR_NAME, &json, 0)); // stored: bigger than 2 MiB
    blob.extend(footer_bytes(payload.len() as u64, false));
    let toc_offset = payload.len() as u64;
    assert!(blob.len() as u64 - toc_offset > TAIL_READ);
    let d = descriptor(&blob, Some(sha(&json)));
    let (src, _) = MemSource::new(blob);
    let toc = read(&src, &d).unwrap();
    assert_eq!(toc.entries.len(), 25_001);
    assert_eq!(src.reads.load(Ordering::Relaxed), 2);
    assert_eq!(src.bytes_fetched(), d.size - toc_offset);
    assert_eq!(toc.fetched, d.size - toc_offset);
}

// -- hostile and broken layers --------------------------------------------------------------

/// The sample layer with its TOC entries changed by `f`, annotated with the changed TOC's
/// digest: the error, which must name the layer.
fn refused(f: impl FnOnce(&mut Vec<Value>)) -> String {
    let (payload, mut entries) = sample();
    f(&mut entries);
    let json = toc_json(&entries);
    let (src, d) = layer(&payload, &json);
    let err = read(&src, &d).expect_err("refused");
    let msg = err.to_string();
    assert!(msg.contains(&d.digest.to_string()), "{msg}");
    msg
}

fn find(entries: &[Value], name: &str, kind: &str) -> usize {
    entries
        .iter()
        .position(|e| e["name"] == name && e["type"] == kind)
        .unwrap_or_else(|| panic!("{name} {kind}"))
}

/// Set a field of the first entry named `name` of type `kind`.
fn set(e: &mut [Value], name: &str, kind: &str, field: &str, v: Value) {
    let i = find(e, name, kind);
    e[i][field] = v;
}

fn contains_all(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "{p:?} not in: {msg}");
    }
}

#[test]
fn chunk_offsets_past_the_toc() {
    let (payload, entries) = sample();
    let toc_offset = payload.len() as u64;
    let bad = toc_offset + 100;
    let msg = refused(|e| {
        let i = find(e, "./big", "chunk");
        e[i]["offset"] = json!(bad);
    });
    contains_all(&msg, &["\"./big\"", &format!("offset {bad}"), "not before the TOC"]);
    // Exactly at the TOC is refused too.
    let msg = refused(|e| {
        let i = find(e, "./small/a", "reg");
        e[i]["offset"] = json!(toc_offset);
    });
    contains_all(&msg, &["\"./small/a\"", "not before the TOC"]);
    let msg = refused(|e| {
        let i = find(e, "./big", "reg");
        e[i]["offset"] = json!(-5);
    });
    contains_all(&msg, &["negative offset -5"]);
    drop(entries);
}

#[test]
fn footer_offsets_past_the_end() {
    let (payload, entries) = sample();
    let json = toc_json(&entries);
    let mut blob = assemble(&payload, &json);
    let n = blob.len();
    // The footer names an offset past the blob.
    blob[n - 51..].copy_from_slice(&footer_bytes(n as u64 + 10, false));
    let d = descriptor(&blob, Some(sha(&json)));
    let (src, _) = MemSource::new(blob.clone());
    let msg = read(&src, &d).unwrap_err().to_string();
    contains_all(&msg, &[&d.digest.to_string(), "not eStargz", "past the end"]);
    // Or inside the footer itself.
    blob[n - 51..].copy_from_slice(&footer_bytes(n as u64 - 20, false));
    let d = descriptor(&blob, Some(sha(&json)));
    let (src, _) = MemSource::new(blob.clone());
    let msg = read(&src, &d).unwrap_err().to_string();
    contains_all(&msg, &["no room for a TOC", &format!("offset {}", n - 20)]);
    // Or at a byte that is no gzip member.
    blob[n - 51..].copy_from_slice(&footer_bytes(payload.len() as u64 + 3, false));
    let d = descriptor(&blob, Some(sha(&json)));
    let (src, _) = MemSource::new(blob);
    let err = read(&src, &d).unwrap_err();
    assert!(matches!(err, TocError::Inflate { .. }), "{err}");
}

#[test]
fn overlapping_chunks() {
    let msg = refused(|e| {
        let a = find(e, "./small/a", "reg");
        let big = find(e, "./big", "reg");
        e[big]["offset"] = e[a]["offset"].clone();
    });
    contains_all(&msg, &["two chunks at the same place", "\"big\"", "\"small/a\""]);
    // In the same member, inner ranges that overlap.
    let msg = refused(|e| {
        let b = find(e, "./small/b", "reg");
        e[b]["innerOffset"] = json!(2);
    });
    contains_all(&msg, &["overlapping chunks", "\"small/a\"", "\"small/b\"", "0..4"]);
}

#[test]
fn chunks_that_do_not_cover_the_file() {
    // A chunk missing in the middle.
    let msg = refused(|e| {
        let i = find(e, "./big", "chunk");
        e.remove(i);
    });
    contains_all(&msg, &["\"./big\"", "do not cover", "starts at file offset 8192", "end at 4096"]);
    // The last chunk missing.
    let msg = refused(|e| {
        let i = find(e, "./big", "reg");
        e.remove(i + 2);
    });
    contains_all(&msg, &["\"./big\"", "cover 8192 of the file's 10000 bytes"]);
    // A last chunk that stops short.
    let msg = refused(|e| {
        let i = find(e, "./big", "reg");
        e[i + 2]["chunkSize"] = json!(100);
    });
    contains_all(&msg, &["cover 8292 of the file's 10000 bytes"]);
    // One that runs past the end.
    let msg = refused(|e| {
        let i = find(e, "./big", "reg");
        e[i + 2]["chunkSize"] = json!(5000);
    });
    contains_all(&msg, &["runs past the end of the 10000-byte file"]);
    // A first chunk that does not start at 0.
    let msg = refused(|e| {
        let i = find(e, "./small/a", "reg");
        e[i]["chunkOffset"] = json!(1);
    });
    contains_all(&msg, &["\"./small/a\"", "starts at file offset 1"]);
    // A chunk of another file.
    let msg = refused(|e| {
        let i = find(e, "./big", "chunk");
        e[i]["name"] = json!("./other");
    });
    contains_all(&msg, &["a chunk of \"./other\" follows the entries of \"./big\""]);
    // A chunk after a file without data.
    let msg = refused(|e| {
        let i = find(e, "./empty", "reg");
        e.insert(i + 1, json!({"name": "./empty", "type": "chunk", "offset": 10, "chunkSize": 1}));
    });
    contains_all(&msg, &["\"./empty\"", "must follow a regular file with data"]);
    // A file of data without any offset.
    let msg = refused(|e| {
        let i = find(e, "./small/a", "reg");
        e[i].as_object_mut().unwrap().remove("offset");
    });
    contains_all(&msg, &["\"./small/a\"", "has no offset"]);
}

#[test]
fn a_gigabyte_chunk_in_a_small_blob() {
    let msg = refused(|e| {
        let i = find(e, "./etc/hosts", "reg");
        e[i]["size"] = json!(1u64 << 30);
        e[i]["chunkSize"] = json!(1u64 << 30);
    });
    contains_all(&msg, &["\"./etc/hosts\"", "a chunk of 1073741824 bytes", "cannot come from"]);
    // A terabyte file whose chunks all claim to be somewhere: the same.
    let msg = refused(|e| {
        let i = find(e, "./etc/hosts", "reg");
        e[i]["size"] = json!(1u64 << 40);
    });
    contains_all(&msg, &["1099511627776 bytes", "cannot come from"]);
    // Sizes beyond i64 are not JSON the TOC can hold.
    let msg = refused(|e| {
        let i = find(e, "./etc/hosts", "reg");
        e[i]["size"] = json!(u64::MAX);
    });
    contains_all(&msg, &["the TOC JSON is invalid"]);
}

#[test]
fn a_wrong_toc_digest() {
    let (src, mut d, json) = sample_layer();
    let wrong = sha(b"another TOC");
    d.annotations.insert(ESTARGZ_TOC_DIGEST.into(), wrong.clone());
    let err = read(&src, &d).unwrap_err();
    assert!(matches!(err, TocError::DigestMismatch { .. }));
    let msg = err.to_string();
    contains_all(&msg, &[&d.digest.to_string(), &wrong, &sha(&json), "has digest"]);
    // Insecure mode still checks an annotation that is there.
    assert!(read_toc(&src, &d, Verify::InsecureSkipVerify).is_err());
    // And a malformed annotation is refused.
    d.annotations.insert(ESTARGZ_TOC_DIGEST.into(), "md5:abc".into());
    let msg = read_toc(&src, &d, Verify::InsecureSkipVerify).unwrap_err().to_string();
    contains_all(&msg, &["invalid", "\"md5:abc\""]);
}

#[test]
fn a_missing_annotation() {
    let (src, mut d, json) = sample_layer();
    d.annotations.clear();
    let err = read(&src, &d).unwrap_err();
    assert!(matches!(err, TocError::MissingDigest { .. }), "{err}");
    contains_all(&err.to_string(), &[&d.digest.to_string(), ESTARGZ_TOC_DIGEST]);
    let toc = read_toc(&src, &d, Verify::InsecureSkipVerify).unwrap();
    assert!(!toc.verified);
    assert_eq!(toc.digest.to_string(), sha(&json));
}

/// The sample with its TOC entries changed by `f`, read back.
fn accepted(f: impl FnOnce(&mut Vec<Value>)) -> Toc {
    let (payload, mut entries) = sample();
    f(&mut entries);
    let (src, d) = layer(&payload, &toc_json(&entries));
    read(&src, &d).expect("accepted")
}

#[test]
fn names_that_climb_out_stop_at_the_root() {
    // As stargz-snapshotter's cleanEntryName and containerd's apply clean them.
    let toc = accepted(|e| {
        let i = find(e, "./etc/hosts", "reg");
        e[i]["name"] = json!("../etc/passwd");
        let i = find(e, "./link", "symlink");
        e[i]["name"] = json!("/a/../../x");
        let i = find(e, "./hard", "hardlink");
        e[i]["linkName"] = json!("../../big");
    });
    let names: Vec<&str> = toc.entries.iter().map(|e| e.name.as_str()).collect();
    assert!(names.contains(&"etc/passwd") && names.contains(&"x"), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("..")), "{names:?}");
    let hard = toc.entries.iter().find(|e| e.name == "hard").unwrap();
    assert_eq!(hard.link, "big");
    // A hardlink whose clamped target is no earlier entry is still refused.
    let msg = refused(|e| {
        let i = find(e, "./hard", "hardlink");
        e[i]["linkName"] = json!("../../nope");
    });
    contains_all(&msg, &["\"./hard\"", "\"../../nope\"", "no earlier entry"]);
    let msg = refused(|e| {
        let i = find(e, "./etc/hosts", "reg");
        e[i]["name"] = json!("etc/a\u{0}b");
    });
    contains_all(&msg, &["NUL"]);
    // Absolute names inside the root are only rooted: accepted.
    let (payload, mut entries) = sample();
    let i = find(&entries, "./link", "symlink");
    entries[i]["name"] = json!("/abs/./link");
    let (src, d) = layer(&payload, &toc_json(&entries));
    let toc = read(&src, &d).unwrap();
    assert!(toc.entries.iter().any(|e| e.name == "abs/link"));
}

/// A change to the sample's TOC entries.
type Edit = dyn FnOnce(&mut Vec<Value>);

#[test]
fn bad_entries() {
    let cases: Vec<(Box<Edit>, Vec<&str>)> = vec![
        (
            Box::new(|e: &mut Vec<Value>| set(e, "./dev/fifo", "fifo", "type", json!("socket"))),
            vec!["\"./dev/fifo\"", "unknown entry type \"socket\""],
        ),
        (
            Box::new(|e: &mut Vec<Value>| set(e, "./etc/hosts", "reg", "modtime", json!("yesterday"))),
            vec!["\"./etc/hosts\"", "modtime \"yesterday\""],
        ),
        (
            Box::new(|e: &mut Vec<Value>| set(e, "./etc/", "dir", "xattrs", json!({"user.k": "%%%"}))),
            vec!["\"./etc/\"", "xattr \"user.k\"", "not base64"],
        ),
        (
            Box::new(|e: &mut Vec<Value>| set(e, "./big", "chunk", "chunkDigest", json!("sha256:xyz"))),
            vec!["\"./big\"", "invalid chunkDigest \"sha256:xyz\""],
        ),
        (
            Box::new(|e: &mut Vec<Value>| {
                let i = find(e, "./hard", "hardlink");
                e[i]["linkName"] = json!("nowhere");
            }),
            vec!["\"./hard\"", "hardlink to \"nowhere\", which no earlier entry"],
        ),
        (
            Box::new(|e: &mut Vec<Value>| {
                let i = find(e, "./hard", "hardlink");
                e[i]["linkName"] = json!("etc");
            }),
            vec!["hardlink to the directory \"etc\""],
        ),
        (
            Box::new(|e: &mut Vec<Value>| set(e, "./dev/fifo", "fifo", "size", json!(3))),
            vec!["a fifo has no data, but the TOC gives it size 3"],
        ),
        (
            Box::new(|e: &mut Vec<Value>| set(e, "./etc/hosts", "reg", "uid", json!(-1))),
            vec!["uid -1 is out of range"],
        ),
        (Box::new(|e: &mut Vec<Value>| set(e, "./", "dir", "type", json!("reg"))), vec!["the root is a reg"]),
        (
            Box::new(|e: &mut Vec<Value>| {
                e.insert(0, json!({"name": ".no.prefetch.landmark", "type": "reg", "size": 1, "offset": 3}))
            }),
            vec!["a second landmark"],
        ),
        (
            Box::new(|e: &mut Vec<Value>| e.insert(0, json!({"name": "x", "type": "chunk", "offset": 3}))),
            vec!["entry 0 \"x\"", "must follow a regular file"],
        ),
        (
            Box::new(|e: &mut Vec<Value>| set(e, "./link", "symlink", "linkName", json!(""))),
            vec!["invalid symlink target"],
        ),
        (
            Box::new(|e: &mut Vec<Value>| set(e, "./etc/hosts", "reg", "mode", json!("0644"))),
            vec!["the TOC JSON is invalid", "line"],
        ),
    ];
    for (f, parts) in cases {
        contains_all(&refused(f), &parts);
    }
}

/// Refusals that concern the TOC as a whole: version, JSON, tar entry, gzip member, size.
#[test]
fn bad_tocs() {
    let (payload, entries) = sample();
    let with_json = |json: &[u8]| {
        let (src, d) = layer(&payload, json);
        let msg = read(&src, &d).unwrap_err().to_string();
        assert!(msg.contains(&d.digest.to_string()), "{msg}");
        assert!(msg.contains(&format!("TOC at offset {}", payload.len())), "{msg}");
        msg
    };
    let v2 = serde_json::to_vec(&json!({"version": 2, "entries": entries})).unwrap();
    contains_all(&with_json(&v2), &["TOC version 2"]);
    contains_all(&with_json(b"{\"entries\": []}"), &["no version"]);
    contains_all(&with_json(b"not json"), &["the TOC JSON is invalid"]);
    contains_all(&with_json(b"{\"version\": 1} trailing"), &["the TOC JSON is invalid"]);
    // An empty TOC is a layer without entries.
    let (src, d) = layer(&payload, b"{\"version\": 1}");
    assert!(read(&src, &d).unwrap().entries.is_empty());

    let json = toc_json(&entries);
    let member_of = |member: Vec<u8>| {
        let mut blob = payload.clone();
        blob.extend(member);
        blob.extend(footer_bytes(payload.len() as u64, false));
        let d = descriptor(&blob, Some(sha(&json)));
        let (src, _) = MemSource::new(blob);
        let err = read(&src, &d).unwrap_err();
        assert!(err.to_string().contains(&d.digest.to_string()), "{err}");
        err
    };
    // The tar entry has another name.
    let err = member_of(toc_member("index.json", &json, 9));
    contains_all(&err.to_string(), &["named \"index.json\", not \"stargz.index.json\""]);
    // A truncated TOC member.
    let mut m = toc_member(toc::TOC_TAR_NAME, &json, 9);
    m.truncate(m.len() - 20);
    let err = member_of(m);
    assert!(
        matches!(&err, TocError::Inflate { source: zran::gzip::GzipError::Truncated { .. }, .. }),
        "{err}"
    );
    contains_all(&err.to_string(), &["truncated"]);
    // A corrupt one.
    let mut m = toc_member(toc::TOC_TAR_NAME, &json, 9);
    let n = m.len();
    m[n - 8] ^= 1;
    contains_all(&member_of(m).to_string(), &["CRC32 mismatch"]);
    // A tar entry cut short inside its member.
    let mut tar = Vec::new();
    tar_header(&mut tar, toc::TOC_TAR_NAME, tar::EntryType::Regular, json.len() as u64 + 1000, &json!({}));
    tar.extend_from_slice(&json);
    contains_all(&member_of(gzip(&tar, 9)).to_string(), &["claims", "holds only"]);
    // A tar header that claims a TOC larger than allowed.
    let mut tar = Vec::new();
    tar_header(&mut tar, toc::TOC_TAR_NAME, tar::EntryType::Regular, 100 << 20, &json!({}));
    tar.extend_from_slice(&json);
    contains_all(&member_of(gzip(&tar, 9)).to_string(), &["104857600 bytes, more than the"]);
    // A member that inflates past the bound: refused while inflating.
    let mut tar = Vec::new();
    tar_header(&mut tar, toc::TOC_TAR_NAME, tar::EntryType::Regular, MAX_TOC_JSON, &json!({}));
    tar.resize(tar.len() + MAX_TOC_JSON as usize + (4 << 20), b' ');
    contains_all(&member_of(gzip(&tar, 1)).to_string(), &["inflates to more than"]);
    // No tar entry at all.
    contains_all(&member_of(gzip(&[0; 1024], 9)).to_string(), &["no stargz.index.json entry"]);
    contains_all(&member_of(gzip(b"short", 9)).to_string(), &["inside a header block"]);
}

#[test]
fn not_estargz_or_not_yet() {
    let (src, d) = MemSource::new(gzip(&sample_data(5000, 1), 6));
    let desc = Descriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        digest: d.clone(),
        size: src.blob(&d).unwrap().len() as u64,
        annotations: BTreeMap::new(),
        platform: None,
        artifact_type: None,
    };
    let err = read(&src, &desc).unwrap_err();
    assert!(matches!(err, TocError::NotEstargz { .. }), "{err}");
    contains_all(&err.to_string(), &[&d.to_string(), "not eStargz"]);

    // zstd:chunked: a skippable frame footer.
    let mut blob = sample_data(5000, 2);
    blob.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 40, 0, 0, 0]);
    blob.extend_from_slice(&1234u64.to_le_bytes());
    blob.extend_from_slice(&[0; 24]);
    blob.extend_from_slice(b"GnUlInUx");
    let desc = descriptor(&blob, None);
    let (src, _) = MemSource::new(blob);
    let err = read(&src, &desc).unwrap_err();
    assert!(matches!(err, TocError::Unsupported { .. }), "{err}");
    contains_all(&err.to_string(), &["zstd:chunked is not supported yet", "offset 1234"]);

    // An external TOC.
    let mut blob = sample_data(5000, 3);
    blob.extend_from_slice(&[0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 21, 0, b'S', b'G', 17, 0]);
    blob.extend_from_slice(b"STARGZEXTERNALTOC");
    blob.extend_from_slice(&[1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
    let desc = descriptor(&blob, None);
    let (src, _) = MemSource::new(blob);
    contains_all(&read(&src, &desc).unwrap_err().to_string(), &["external TOC is not supported yet"]);

    // A blob shorter than its descriptor says.
    let (src, mut d, _) = sample_layer();
    d.size += 100;
    let err = read(&src, &d).unwrap_err();
    assert!(matches!(err, TocError::ShortBlob { .. }), "{err}");
    // Too small for a footer.
    d.size = 10;
    assert!(matches!(read(&src, &d).unwrap_err(), TocError::NotEstargz { .. }));
}

/// The JSON parser alone: what stargz-snapshotter's writer leaves out, and fractions.
#[test]
fn parse_json_directly() {
    let layer = Digest::of(b"layer");
    let json = br#"{"version": 1, "entries": [
        {"name": "a", "type": "reg", "modtime": "2023-11-14T22:13:20.5+01:00", "NumLink": 3,
         "unknownField": [1, 2]},
        {"name": "b/", "type": "dir", "modtime": null, "uid": 4294967294},
        {"name": "c", "type": "reg", "size": 7, "offset": 90, "innerOffset": 12,
         "digest": "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}
    ]}"#;
    let t = toc::parse_toc_json(&layer, json, 100).unwrap();
    assert_eq!(t.entries.len(), 3);
    assert_eq!((t.entries[0].mtime, t.entries[0].mtime_nsec), (1_699_996_400, 500_000_000));
    assert_eq!((t.entries[1].name.as_str(), t.entries[1].uid, t.entries[1].mtime), ("b", 4294967294, 0));
    let c = &t.entries[2].chunks;
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].offset, c[0].inner_offset, c[0].chunk_size), (90, 12, 7));
    // A single chunk without chunkDigest takes the file's digest.
    assert_eq!(c[0].chunk_digest, t.entries[2].digest);
    assert_eq!(c[0].compressed_end, 100);
    assert!(toc::parse_toc_json(&layer, b"[]", 100).is_err());
    assert!(toc::parse_toc_json(&layer, &[b'['; 100_000], 100).is_err());
}

// -- the real eStargz images ----------------------------------------------------------------

/// What the TOC says for a truth entry: stargz-snapshotter writes mtimes rounded to the second
/// (`Round(time.Second)`, halves up), and none at all for the epoch.
fn toc_mtime(truth: &Value) -> Option<i64> {
    let m = truth["mtime"].as_object()?;
    let (sec, nsec) = (m["sec"].as_i64().unwrap(), m["nsec"].as_i64().unwrap());
    Some(sec + i64::from(nsec >= 500_000_000))
}

fn check_image(name: &str) {
    let dir = layouts().join(name);
    let img = oci::open(&format!("oci:{}", dir.display()).parse().unwrap(), &Default::default()).unwrap();
    let truth: Value = serde_json::from_slice(
        &std::fs::read(common::harness::repo_root().join(format!("target/testimages/truth/{name}.json")))
            .unwrap(),
    )
    .unwrap();
    let mut model = Model::new();
    let mut chunks = 0;
    for l in &img.manifest.layers {
        let before = img.source.bytes_fetched();
        let toc =
            read_toc(img.source.as_ref(), l, Verify::Required).unwrap_or_else(|e| panic!("{name}: {e}"));
        let fetched = img.source.bytes_fetched() - before;
        // Only the tail: one read of up to 2 MiB, and the rest of the TOC if it starts earlier.
        let tail = l.size.min(TAIL_READ).max(l.size - toc.footer.toc_offset);
        assert_eq!((fetched, toc.fetched), (tail, tail), "{name} {}", l.digest);
        // With the footer known, exactly the TOC and the footer are read, and the TOC is the same.
        for hint in [toc.footer.toc_offset, toc.footer.toc_offset + 1000, 0, l.size + 5] {
            let before = img.source.bytes_fetched();
            let again = read_toc_from(img.source.as_ref(), l, Verify::Required, Some(hint))
                .unwrap_or_else(|e| panic!("{name} hint {hint}: {e}"));
            assert_eq!(again.entries, toc.entries, "{name} hint {hint}");
            if hint == toc.footer.toc_offset {
                assert_eq!(img.source.bytes_fetched() - before, l.size - hint, "{name}");
            }
        }
        assert!(toc.verified);
        assert_eq!(Some(toc.digest.to_string().as_str()), l.estargz_toc_digest());
        assert_eq!(toc.footer.kind, FooterKind::Estargz);
        // ctr-remote without prioritized files: a .no.prefetch.landmark, hidden.
        assert_eq!(toc.landmark.map(|l| l.kind), Some(LandmarkKind::NoPrefetch), "{name}");
        assert!(toc.entries.iter().all(|e| !e.name.ends_with("landmark") && e.name != toc::TOC_TAR_NAME));
        // Every chunk is where the TOC says, with its digest; every file's chunks make it.
        let blob = std::fs::read(common::harness::layout_blob(&dir, l.digest.hex())).unwrap();
        check_chunks(&blob, &toc);
        chunks += toc.chunks().count();
        for e in &toc.entries {
            assert_eq!(e.mtime_nsec, 0, "{}: stargz writes whole seconds", e.name);
        }
        model.apply(&toc.entries);
    }
    assert!(chunks > 100, "{name}: {chunks} chunks");

    // The merged tree equals the truth, field by field.
    let mut want = BTreeSet::new();
    for t in truth["entries"].as_array().unwrap() {
        let path = t["path"].as_str().unwrap();
        want.insert(path.to_string());
        let node = &model.nodes[*model.paths.get(path).unwrap_or_else(|| panic!("{name}: {path} missing"))];
        let ctx = format!("{name}: {path}");
        assert_eq!(node.kind, t["type"].as_str().unwrap(), "{ctx}");
        assert_eq!(u64::from(node.mode), t["mode"].as_u64().unwrap(), "{ctx}");
        assert_eq!(node.uid, t["uid"].as_u64().unwrap(), "{ctx}");
        assert_eq!(node.gid, t["gid"].as_u64().unwrap(), "{ctx}");
        if t["implicit"].as_bool() == Some(true) {
            assert_eq!(node.mtime, None, "{ctx}");
        } else {
            assert_eq!(node.mtime.map(|m| m.0), toc_mtime(t), "{ctx}");
        }
        let xattrs: BTreeMap<String, String> = t["xattrs"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        assert_eq!(node.xattrs, xattrs, "{ctx}");
        assert_eq!(node.size, t["size"].as_u64(), "{ctx}");
        assert_eq!(node.sha256.as_deref(), t["sha256"].as_str(), "{ctx}");
        assert_eq!(node.target.as_deref(), t["target"].as_str(), "{ctx}");
        let dev = t["major"].as_u64().map(|m| (m as u32, t["minor"].as_u64().unwrap() as u32));
        assert_eq!(node.dev, dev, "{ctx}");
    }
    let have: BTreeSet<String> = model.paths.keys().cloned().collect();
    assert_eq!(have, want, "{name}: paths");
    // Hardlink groups: names that share an inode.
    let mut by_node: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (p, &i) in &model.paths {
        if model.nodes[i].kind != "dir" {
            by_node.entry(i).or_default().push(p.clone());
        }
    }
    let mut groups: Vec<Vec<String>> = by_node.into_values().filter(|g| g.len() > 1).collect();
    groups.sort();
    let mut want_groups: Vec<Vec<String>> = serde_json::from_value(truth["hardlink_groups"].clone()).unwrap();
    want_groups.sort();
    assert_eq!(groups, want_groups, "{name}: hardlink groups");
}

#[test]
fn real_estargz_layers_match_the_truth() {
    check_image("edge-estargz");
    check_image("python-estargz");
}
