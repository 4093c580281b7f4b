//! The zstd:chunked TOC reader on layers skopeo writes (containers/storage 1.43, the legacy
//! format: 40-byte footer, `io.containers.zstd-chunked.*` annotations), made at test time from
//! the python and edge test layouts: every TOC entry against the truth tree, every chunk's
//! frame decoded against its digest, and the bytes fetched (the TOC only). Skips with a
//! message when skopeo is absent.

mod common;

use common::harness::{layout_blob, layouts, repo_root};
use common::toc_model::Model;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use zran::estargz::{EntryKind, TocEntry, Verify};
use zran::oci::{self, Digest};
use zran::zstdchunked::{self, Position};

fn skopeo_zstd_chunked(name: &str, dir: &Path) -> Option<std::path::PathBuf> {
    if Command::new("skopeo").arg("--version").output().is_err() {
        eprintln!("skipping: skopeo is not installed");
        return None;
    }
    let out = dir.join(name);
    let status = Command::new("skopeo")
        .args(["copy", "-q", "--dest-compress-format", "zstd:chunked"])
        .arg(format!("oci:{}:latest", layouts().join(name).display()))
        .arg(format!("oci:{}:latest", out.display()))
        .status()
        .unwrap();
    assert!(status.success(), "skopeo copy {name}");
    Some(out)
}

/// Every chunk's frame decodes, alone, to the chunk; every file's chunks to the file.
/// (`runs_on`: eStargz-in-zstd frames hold the payload and then the next tar headers.)
fn check_chunks(blob: &[u8], entries: &[TocEntry], runs_on: bool) -> usize {
    let mut n = 0;
    for e in entries {
        let mut whole = Vec::new();
        for c in &e.chunks {
            let frame = &blob[c.offset as usize..c.compressed_end as usize];
            let mut bytes = zstd::decode_all(frame)
                .unwrap_or_else(|err| panic!("{}: frame at {}: {err}", e.name, c.offset));
            if runs_on {
                let start = c.inner_offset as usize;
                assert!(bytes.len() as u64 >= c.inner_offset + c.chunk_size, "{}", e.name);
                bytes = bytes[start..start + c.chunk_size as usize].to_vec();
            }
            assert_eq!(bytes.len() as u64, c.chunk_size, "{} chunk at {}", e.name, c.chunk_offset);
            assert_eq!(Some(Digest::of(&bytes)), c.chunk_digest, "{} chunk at {}", e.name, c.chunk_offset);
            if c.zeros {
                assert!(bytes.iter().all(|&b| b == 0), "{}: a zeros chunk", e.name);
            }
            assert_eq!(c.chunk_offset, whole.len() as u64);
            whole.extend_from_slice(&bytes);
            n += 1;
        }
        if e.kind == EntryKind::Reg && e.size > 0 {
            assert_eq!(Some(Digest::of(&whole)), e.digest, "{}", e.name);
        }
    }
    n
}

fn check_image(name: &str, dir: &Path) {
    let Some(layout) = skopeo_zstd_chunked(name, dir) else { return };
    let img = oci::open(&format!("oci:{}", layout.display()).parse().unwrap(), &Default::default()).unwrap();
    let mut model = Model::new();
    let mut chunks = 0;
    for l in &img.manifest.layers {
        let before = img.source.bytes_fetched();
        let toc = zstdchunked::read_toc(img.source.as_ref(), l, Verify::Required)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let fetched = img.source.bytes_fetched() - before;
        // One read: the TOC's skippable frame header, the TOC, and the 48-byte footer frame
        // right after it (which is checked against the annotation).
        assert_eq!(
            (fetched, toc.fetched),
            (8 + toc.toc_compressed_size + 48, fetched),
            "{name} {}",
            l.digest
        );
        assert_eq!(toc.toc_offset + toc.toc_compressed_size + 48, l.size);
        assert!(toc.verified);
        assert_eq!(toc.position, Position::Annotation);
        assert_eq!((toc.tar_split, &toc.tar_split_digest), (None, &None));
        let blob = std::fs::read(layout_blob(&layout, l.digest.hex())).unwrap();
        chunks += check_chunks(&blob, &toc.entries, false);
        model.apply(&toc.entries);
    }
    assert!(chunks > 100, "{name}: {chunks} chunks");
    compare_with_truth(name, &model, false);
    check_inspect(name, &layout, "zstd-chunked");
}

/// `zran inspect` names the format and reports verified TOCs; `inspect --files` lists, from the
/// TOCs alone, what it lists for the gzip original.
fn check_inspect(name: &str, layout: &Path, format: &str) {
    let zran = |args: &[&str]| -> Value {
        let out = Command::new(env!("CARGO_BIN_EXE_zran")).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let image = format!("oci:{}", layout.display());
    let report = zran(&["inspect", "--json", &image]);
    let layers = report["layers"].as_array().unwrap();
    let toc_bytes: u64 = layers.iter().map(|l| l["toc"]["fetched"].as_u64().unwrap()).sum();
    for l in layers {
        assert_eq!(l["format"], format, "{name}: {l}");
        assert_eq!(l["toc"]["verified"], true, "{name}: {l}");
        // (edge has an empty layer: a TOC of no entries)
        assert!(l["toc"]["entries"].as_u64().is_some(), "{name}: {l}");
    }
    let files = zran(&["inspect", "--files", "--json", &image]);
    let original =
        zran(&["inspect", "--files", "--json", &format!("oci:{}", layouts().join(name).display())]);
    if format == "zstd-chunked" {
        assert_eq!(files["entries"], original["entries"], "{name}: inspect --files");
    } else {
        // eStargz TOCs round mtimes to the second: paths, kinds and sizes agree.
        let key = |v: &Value| -> Vec<(Value, Value, Value)> {
            let e = v["entries"].as_array().unwrap();
            e.iter().map(|e| (e["path"].clone(), e["type"].clone(), e["size"].clone())).collect()
        };
        assert_eq!(key(&files), key(&original), "{name}: inspect --files");
    }
    // Only footers and TOCs: far less than the layers.
    let size: u64 = layers.iter().map(|l| l["size"].as_u64().unwrap()).sum();
    let fetched = files["bytes_fetched"].as_u64().unwrap();
    assert!(fetched < toc_bytes + 16384 && fetched * 20 < size, "{name}: {fetched} of {size} bytes");
}

/// An eStargz-in-zstd layout (`ctr-remote image convert --zstdchunked --oci`) of the test
/// image `name`: every layer's TOC read (only the TOC fetched), its chunks decoded, the merged
/// entries against the truth.
fn check_estargz_zstd(name: &str, layout: &Path) {
    let img = oci::open(&format!("oci:{}", layout.display()).parse().unwrap(), &Default::default()).unwrap();
    let mut model = Model::new();
    let mut chunks = 0;
    for l in &img.manifest.layers {
        let before = img.source.bytes_fetched();
        let toc = zran::estargz::read_toc(img.source.as_ref(), l, Verify::Required)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let fetched = img.source.bytes_fetched() - before;
        assert!(toc.zstd && toc.verified, "{name}");
        assert_eq!(fetched, l.size - (toc.footer.toc_offset - 8), "{name}: the TOC frame and the footer");
        let blob = std::fs::read(layout_blob(layout, l.digest.hex())).unwrap();
        chunks += check_chunks(&blob, &toc.entries, true);
        model.apply(&toc.entries);
    }
    assert!(chunks > 100, "{name}: {chunks} chunks");
    compare_with_truth(name, &model, true);
    check_inspect(name, layout, "estargz-zstd");
}

/// (`whole_seconds`: eStargz TOCs hold mtimes rounded to the second, halves up.)
fn compare_with_truth(name: &str, model: &Model, whole_seconds: bool) {
    let truth: Value = serde_json::from_slice(
        &std::fs::read(repo_root().join(format!("target/testimages/truth/{name}.json"))).unwrap(),
    )
    .unwrap();
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
            let m = &t["mtime"];
            let (sec, nsec) = (m["sec"].as_i64().unwrap(), m["nsec"].as_u64().unwrap() as u32);
            let want = if whole_seconds { (sec + i64::from(nsec >= 500_000_000), 0) } else { (sec, nsec) };
            assert_eq!(node.mtime, Some(want), "{ctx}");
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

/// Layouts made by `ctr-remote image convert --zstdchunked --oci` (it needs a running
/// containerd): the test images `testimages/build.sh` makes (`python-estargz-zstd`,
/// `edge-estargz-zstd`), or others named in `ZRAN_ESTARGZ_ZSTD_LAYOUTS` as `python=DIR,edge=DIR`;
/// skipped on a machine whose build made no eStargz images (`ZRAN_TESTIMAGES_NO_ESTARGZ=1`).
#[test]
fn ctr_remote_estargz_zstd_layers_match_the_truth() {
    let list = match std::env::var("ZRAN_ESTARGZ_ZSTD_LAYOUTS") {
        Ok(list) => list,
        Err(_) => {
            let layouts = common::harness::layouts();
            let built: Vec<String> = ["python", "edge"]
                .iter()
                .map(|n| (n, layouts.join(format!("{n}-estargz-zstd"))))
                .filter(|(_, d)| d.join("index.json").is_file())
                .map(|(n, d)| format!("{n}={}", d.display()))
                .collect();
            if built.is_empty() {
                eprintln!("skipping: the test images hold no ctr-remote --zstdchunked layouts");
                return;
            }
            built.join(",")
        }
    };
    for item in list.split(',') {
        let (name, dir) = item.split_once('=').expect("NAME=DIR");
        check_estargz_zstd(name, Path::new(dir));
    }
}

#[test]
fn skopeo_zstd_chunked_layers_match_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    check_image("python", dir.path());
    check_image("edge", dir.path());
}
