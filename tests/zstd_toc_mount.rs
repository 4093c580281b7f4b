//! zstd:chunked images mounted straight from their TOCs, with no artifact: images made at test
//! time by skopeo (`--dest-compress-format zstd:chunked`) from the python and edge test
//! images, pushed to a real registry, mounted by reference through real FUSE, walked and
//! compared with the truth file by file; a partial read fetches a small part of the image;
//! a byte changed in a payload frame in the registry fails that file only (EIO), never
//! serving wrong bytes.

mod common;
#[path = "common/mounted.rs"]
mod mounted;

use common::harness::{TestRegistry, layouts, repo_root};
use common::truth::{compare, walk};
use mounted::{Mount, read_all};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn have(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success())
}

/// zstd:chunked copies of `names` in layouts under `dir` (`<name>-zc`).
fn zstd_chunked_layouts(names: &[&str], dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for name in names {
        let from = format!("oci:{}:latest", layouts().join(name).display());
        let to = format!("oci:{}:latest", dir.join(format!("{name}-zc")).display());
        let o = Command::new("skopeo")
            .args(["copy", "-q", "--dest-compress-format", "zstd:chunked", &from, &to])
            .output()
            .unwrap();
        assert!(o.status.success(), "skopeo copy {name}: {}", String::from_utf8_lossy(&o.stderr));
    }
}

fn push(reg: &TestRegistry, dir: &Path) {
    let o = Command::new("bash")
        .arg(repo_root().join("testimages/registry.sh"))
        .arg("push")
        .arg(reg.dir.path())
        .arg(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "registry.sh push: {}", String::from_utf8_lossy(&o.stderr));
}

/// The manifest of a single-image layout.
fn manifest(layout: &Path) -> Value {
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let hex = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()).unwrap()
}

/// The TOC JSON of a zstd:chunked layer (from its position annotation).
fn toc_of(layout: &Path, layer: &Value) -> Value {
    let ann = &layer["annotations"];
    let pos = ann["io.github.containers.zstd-chunked.manifest-position"]
        .as_str()
        .or(ann["io.containers.zstd-chunked.manifest-position"].as_str())
        .expect("a manifest-position annotation");
    let f: Vec<usize> = pos.split(':').map(|x| x.parse().unwrap()).collect();
    let hex = layer["digest"].as_str().unwrap().trim_start_matches("sha256:");
    let blob = std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
    let json = zstd::bulk::decompress(&blob[f[0]..f[0] + f[1]], f[2]).unwrap();
    serde_json::from_slice(&json).unwrap()
}

#[test]
fn zstd_chunked_images_mount_from_their_tocs_and_read_the_truth() {
    if !have("skopeo") {
        eprintln!("skipped: no skopeo");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let zc = work.path().join("layouts");
    zstd_chunked_layouts(&["python", "edge"], &zc);
    let reg = TestRegistry::start("plain");
    push(&reg, &zc);
    for name in ["python", "edge"] {
        let remote = format!("{}/{name}-zc", reg.host());
        let cache = tempfile::tempdir().unwrap();
        // A partial read first: one file, a small part of the image fetched.
        let m = Mount::new(&remote, cache.path(), &["--no-prefetch"]);
        let image_size = m.record()["image_size"].as_u64().unwrap();
        // The largest file of the image up to 2 MiB.
        let (path, size, _) =
            mounted::files(name).into_iter().filter(|f| f.1 <= 2 << 20).max_by_key(|f| f.1).unwrap();
        assert_eq!(std::fs::read(m.mnt.join(&path)).unwrap().len() as u64, size);
        // The record is written every second.
        let mut fetched = 0;
        for _ in 0..40 {
            fetched = m.record()["stats"]["bytes_fetched"].as_u64().unwrap();
            if fetched > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(fetched > 0 && fetched < image_size / 3, "{name}: {fetched} of {image_size} bytes fetched");
        // Then the whole tree, file by file.
        let got = walk(&m.mnt);
        // zstd:chunked TOCs keep nanoseconds.
        let n = compare(name, &got, false);
        assert!(n > 50, "{name}: {n} entries");
        assert!(read_all(name, &m.mnt).is_empty());
        let stats = m.finish();
        assert_eq!(stats["digest_failures"], 0, "{name}: {stats}");
        assert_eq!(stats["read_errors"], 0, "{name}: {stats}");
        // A second mount over the same cache: everything checked again, nothing fetched.
        let m = Mount::new(&remote, cache.path(), &["--no-prefetch"]);
        assert!(read_all(name, &m.mnt).is_empty());
        let stats = m.finish();
        assert_eq!(stats["requests"], 0, "{name}: {stats}");
        assert!(stats["cache_hits"].as_u64().unwrap() > 0, "{name}: {stats}");
    }

    // A byte changed in the first payload frame of a file in the registry: that file fails
    // with EIO, every other file reads right.
    let layout = zc.join("python-zc");
    let man = manifest(&layout);
    let layer = man["layers"].as_array().unwrap().last().unwrap().clone();
    let toc = toc_of(&layout, &layer);
    let entries = toc["entries"].as_array().unwrap();
    let (k, victim) = entries
        .iter()
        .enumerate()
        .find(|(_, e)| {
            e["type"] == "reg"
                && e["size"].as_u64().unwrap_or(0) > 20_000
                && e["chunkType"].as_str().unwrap_or("") != "zeros"
        })
        .expect("a file to spoil");
    let start = victim["offset"].as_u64().unwrap();
    let end = match entries.get(k + 1) {
        Some(next) if next["type"] == "chunk" => next["offset"].as_u64().unwrap(),
        _ => victim["endOffset"].as_u64().unwrap(),
    };
    let hex = layer["digest"].as_str().unwrap().trim_start_matches("sha256:");
    let data: PathBuf = reg.blob_data(hex);
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[(start + (end - start) / 2) as usize] ^= 0x55;
    std::fs::write(&data, &bytes).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(&format!("{}/python-zc", reg.host()), cache.path(), &["--no-prefetch"]);
    let failed = read_all("python", &m.mnt);
    let path = victim["name"].as_str().unwrap().trim_start_matches("./").trim_end_matches('/');
    assert_eq!(failed, vec![path.to_string()]);
    let stats = m.finish();
    assert!(stats["digest_failures"].as_u64().unwrap() >= 2, "{stats}");
}

/// A layout whose first layers are `first`'s and whose last is `last`'s (the same tars in
/// another form): a mixed image.
fn mixed_layout(first: &Path, last: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("blobs/sha256")).unwrap();
    for from in [first, last] {
        for e in std::fs::read_dir(from.join("blobs/sha256")).unwrap() {
            let e = e.unwrap();
            let _ = std::fs::copy(e.path(), to.join("blobs/sha256").join(e.file_name()));
        }
    }
    std::fs::write(to.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut m = manifest(first);
    let l = manifest(last);
    let n = m["layers"].as_array().unwrap().len();
    m["layers"][n - 1] = l["layers"][n - 1].clone();
    let bytes = serde_json::to_vec(&m).unwrap();
    let hex = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    std::fs::write(to.join("blobs/sha256").join(&hex), &bytes).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{hex}"),
        "size": bytes.len(), "annotations": {"org.opencontainers.image.ref.name": "latest"}}]});
    std::fs::write(to.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

#[test]
fn a_mixed_estargz_and_zstd_chunked_image_mounts_from_its_tocs() {
    if !have("skopeo") {
        eprintln!("skipped: no skopeo");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let zc = work.path().join("layouts");
    zstd_chunked_layouts(&["python"], &zc);
    let mixed = work.path().join("mixed");
    mixed_layout(&layouts().join("python-estargz"), &zc.join("python-zc"), &mixed);
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(&format!("oci:{}", mixed.display()), cache.path(), &["--no-prefetch"]);
    let mut got = common::truth::by_path(&walk(&m.mnt));
    common::truth::drop_estargz_meta(&mut got);
    let rules = common::truth::Rules { whole_seconds: true, ..Default::default() };
    assert!(common::truth::compare_with("python", &got, &rules).is_empty());
    assert!(read_all("python", &m.mnt).is_empty());
    let stats = m.finish();
    assert_eq!(stats["digest_failures"], 0, "{stats}");
}

#[test]
fn an_image_with_other_layers_names_them() {
    let image = format!("oci:{}", layouts().join("python").display());
    let cache = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let o = mounted::zran(&[
        "mount",
        &image,
        mnt.path().to_str().unwrap(),
        "--cache-dir",
        cache.path().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("layer 0 (sha256:") && err.contains("is gzip"), "{err}");
    assert!(err.contains("mount from their TOCs") && err.contains("zran generate"), "{err}");
}

/// The zstd test images of `testimages/` (the current zstd:chunked format, with `zeros` chunks,
/// and eStargz in zstd from `ctr-remote`), when the build made them: mounted from their TOCs
/// and compared with their truths.
#[test]
fn the_zstd_test_images_mount_from_their_tocs() {
    let dir = layouts();
    for (name, whole_seconds) in [
        ("python-zstdchunked", false),
        ("python-zstdchunked-v2", false),
        ("edge-zstdchunked-v2", false),
        ("python-estargz-zstd", true),
    ] {
        if !dir.join(name).join("index.json").is_file() {
            eprintln!("skipped {name}: not among the test images");
            continue;
        }
        let cache = tempfile::tempdir().unwrap();
        let m = Mount::new(&format!("oci:{}", dir.join(name).display()), cache.path(), &[]);
        let got = walk(&m.mnt);
        assert!(compare(name, &got, whole_seconds) > 50, "{name}");
        assert!(read_all(name, &m.mnt).is_empty(), "{name}");
        let stats = m.finish();
        assert_eq!(stats["digest_failures"], 0, "{name}: {stats}");
    }
}
