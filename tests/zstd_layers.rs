//! Issue 15 end to end, through the CLI, over the test images made by third-party tools
//! (`testimages/README.md`): zstd:chunked as skopeo writes it (legacy footer and annotations)
//! and in its current form (`mkzstdchunked.py`), the eStargz TOC in zstd frames
//! (`ctr-remote --zstdchunked`), plain zstd (one frame per layer: skopeo; many frames with
//! skippable frames: pzstd) and uncompressed tar layers. `zran inspect --files` lists the truth;
//! `zran generate` + `zran mount ARTIFACT` serves it for every form, from the layout and from
//! the test registry; `zran mount IMAGE` serves the TOC forms with no artifact. Tampering: a
//! changed byte in one payload frame fails that file only (EIO), a TOC whose checksum is not the
//! annotation's is refused, and `--insecure-skip-verify` takes it.

mod common;
#[path = "common/mounted.rs"]
mod mounted;

use common::harness::{TestRegistry, layouts};
use common::truth::{compare, truth};
use mounted::{Mount, files, read_all, zran};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// zstd:chunked (both generations) and the eStargz TOC in zstd: mountable from their TOCs.
const TOC_IMAGES: [&str; 5] = [
    "python-zstdchunked",
    "edge-zstdchunked",
    "python-zstdchunked-v2",
    "edge-zstdchunked-v2",
    "python-estargz-zstd",
];
/// Plain zstd and uncompressed layers: an artifact is needed.
const STREAM_IMAGES: [&str; 3] = ["python-zstd", "python-zstd-frames", "python-tar"];

/// eStargz TOCs keep whole seconds.
fn whole_seconds(name: &str) -> bool {
    name.contains("estargz")
}

fn layout_image(name: &str) -> String {
    format!("oci:{}", layouts().join(name).display())
}

fn generate(image: &str, out: &Path) {
    let o = zran(&["generate", image, "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "generate {image}: {}", String::from_utf8_lossy(&o.stderr));
}

/// Mount, walk, compare with the truth, read every file; the final counters.
fn mount_and_compare(name: &str, source: &str, extra: &[&str]) -> Value {
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(source, cache.path(), extra);
    let got = common::truth::walk(&m.mnt);
    let n = compare(name, &got, whole_seconds(name));
    assert!(n > 50, "{name}: {n} entries");
    assert!(read_all(name, &m.mnt).is_empty(), "{name} from {source}: some files failed");
    let stats = m.finish();
    assert_eq!(stats["digest_failures"], 0, "{name}: {stats}");
    assert_eq!(stats["read_errors"], 0, "{name}: {stats}");
    assert!(stats["chunks_fetched"].as_u64().unwrap() > 0, "{name}: {stats}");
    stats
}

/// The manifest of a test layout's "latest" and the layout's total layer size.
fn manifest(layout: &Path) -> Value {
    let idx: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let d = idx["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(d)).unwrap()).unwrap()
}

fn layers_size(layout: &Path) -> u64 {
    manifest(layout)["layers"].as_array().unwrap().iter().map(|l| l["size"].as_u64().unwrap()).sum()
}

/// The paths of the truth (less the eStargz TOC and landmarks, as the truth files have them).
fn truth_paths(name: &str) -> BTreeSet<String> {
    truth(name)["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn inspect_files_lists_the_truth_of_every_zstd_and_tar_image() {
    for name in TOC_IMAGES.iter().chain(STREAM_IMAGES.iter()).copied() {
        let o = zran(&["inspect", &layout_image(name), "--files", "--json"]);
        assert!(o.status.success(), "inspect --files {name}: {}", String::from_utf8_lossy(&o.stderr));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let mut got: BTreeSet<String> = v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["path"].as_str().unwrap().to_string())
            .collect();
        if name.contains("estargz") {
            for m in ["/stargz.index.json", "/.no.prefetch.landmark", "/.prefetch.landmark"] {
                got.remove(m);
            }
        }
        assert_eq!(got, truth_paths(name), "{name}: paths listed");
        // Sizes and link targets as the truth has them.
        let want = common::truth::by_path(&truth(name));
        for e in v["entries"].as_array().unwrap() {
            let p = e["path"].as_str().unwrap();
            let Some(w) = want.get(p) else { continue };
            assert_eq!(e["type"], w["type"], "{name} {p}: type");
            if w["type"] == "file" {
                assert_eq!(e["size"], w["size"], "{name} {p}: size");
            }
        }
        // The TOC forms need only their TOCs (and footers): far less than the layers.
        let fetched = v["bytes_fetched"].as_u64().unwrap();
        let total = layers_size(&layouts().join(name));
        if TOC_IMAGES.contains(&name) {
            assert!(fetched < total / 4, "{name}: inspect --files fetched {fetched} of {total}");
        }
    }
}

#[test]
fn every_zstd_and_tar_image_reads_the_truth_through_an_artifact() {
    let reg = TestRegistry::start("plain");
    for name in TOC_IMAGES.iter().chain(STREAM_IMAGES.iter()).copied() {
        let work = tempfile::tempdir().unwrap();
        let art = work.path().join("art");
        generate(&layout_image(name), &art);
        mount_and_compare(name, art.to_str().unwrap(), &[]);
        let remote = format!("{}/{name}", reg.host());
        let s = mount_and_compare(name, art.to_str().unwrap(), &["--image", &remote]);
        assert!(s["requests"].as_u64().unwrap() > 0, "{name}: {s}");
    }
    // edge in eStargz-in-zstd, generated from the registry.
    let name = "edge-estargz-zstd";
    let work = tempfile::tempdir().unwrap();
    let art = work.path().join("art");
    generate(&format!("{}/{name}", reg.host()), &art);
    mount_and_compare(name, art.to_str().unwrap(), &[]);
}

#[test]
fn zstd_chunked_images_mount_straight_from_their_tocs() {
    let reg = TestRegistry::start("plain");
    for name in TOC_IMAGES.iter().copied().chain(["edge-estargz-zstd"]) {
        mount_and_compare(name, &layout_image(name), &[]);
        let remote = format!("{}/{name}", reg.host());
        let s = mount_and_compare(name, &remote, &[]);
        assert!(s["requests"].as_u64().unwrap() > 0, "{name}: {s}");
    }
}

#[test]
fn a_partial_read_from_the_toc_fetches_a_small_part_of_the_image() {
    let name = "python-zstdchunked-v2";
    let reg = TestRegistry::start("plain");
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(&format!("{}/{name}", reg.host()), cache.path(), &["--no-prefetch"]);
    let (path, size, sha) = files(name).into_iter().find(|f| f.0.ends_with("/os.py")).unwrap();
    let bytes = std::fs::read(m.mnt.join(&path)).unwrap();
    assert_eq!(bytes.len() as u64, size);
    assert_eq!(hex::encode(Sha256::digest(&bytes)), sha, "{path}");
    let stats = m.finish();
    let fetched = stats["bytes_fetched"].as_u64().unwrap();
    let total = layers_size(&layouts().join(name));
    assert!(fetched < total / 4, "{name}: fetched {fetched} of {total} to read one file: {stats}");
}

/// Copy a test layout, so that a test may change it.
fn layout_copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let work = tempfile::tempdir().unwrap();
    let dst = work.path().join(name);
    let s = Command::new("cp").arg("-a").arg(layouts().join(name)).arg(&dst).status().unwrap();
    assert!(s.success());
    (work, dst)
}

/// The TOC JSON of a zstd:chunked layer, found by its manifest-position annotation.
fn toc_of(layout: &Path, layer: &Value) -> Value {
    let ann = &layer["annotations"];
    let pos = ann["io.github.containers.zstd-chunked.manifest-position"]
        .as_str()
        .or(ann["io.containers.zstd-chunked.manifest-position"].as_str())
        .unwrap();
    let f: Vec<u64> = pos.split(':').map(|x| x.parse().unwrap()).collect();
    let blob = std::fs::read(
        layout.join("blobs/sha256").join(layer["digest"].as_str().unwrap().trim_start_matches("sha256:")),
    )
    .unwrap();
    let z = &blob[f[0] as usize..(f[0] + f[1]) as usize];
    serde_json::from_slice(&zstd::decode_all(z).unwrap()).unwrap()
}

#[test]
fn a_changed_byte_in_a_payload_frame_fails_that_file_only() {
    for name in ["python-zstdchunked-v2", "python-zstdchunked"] {
        let (_work, lay) = layout_copy(name);
        let m = manifest(&lay);
        let layer =
            m["layers"].as_array().unwrap().iter().max_by_key(|l| l["size"].as_u64().unwrap()).unwrap();
        let toc = toc_of(&lay, layer);
        // A file of one chunk (one frame) of some size, not hard-linked.
        let entries = toc["entries"].as_array().unwrap();
        let victim = entries
            .iter()
            .find(|e| {
                e["type"] == "reg"
                    && e["size"].as_u64().unwrap_or(0) > 4096
                    && e.get("chunkSize").is_none()
                    && !entries.iter().any(|h| h["type"] == "hardlink" && h["linkName"] == e["name"])
            })
            .unwrap();
        let (start, end) = (victim["offset"].as_u64().unwrap(), victim["endOffset"].as_u64().unwrap());
        let path = layout_blob_path(&lay, layer);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = ((start + end) / 2) as usize;
        bytes[at] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();

        let image = format!("oci:{}", lay.display());
        let cache = tempfile::tempdir().unwrap();
        let mnt = Mount::new(&image, cache.path(), &["--no-prefetch"]);
        let failed = read_all(name, &mnt.mnt);
        let want = victim["name"].as_str().unwrap().trim_start_matches("./").trim_start_matches('/');
        assert_eq!(failed, vec![want.to_string()], "{name}: only the changed file fails");
        let stats = mnt.finish();
        assert!(stats["digest_failures"].as_u64().unwrap() >= 1, "{name}: {stats}");
    }
}

fn layout_blob_path(lay: &Path, desc: &Value) -> PathBuf {
    lay.join("blobs/sha256").join(desc["digest"].as_str().unwrap().trim_start_matches("sha256:"))
}

/// Rewrite the manifest of a layout's "latest" (and its index entry).
fn rewrite_manifest(lay: &Path, change: impl FnOnce(&mut Value)) {
    let mut idx: Value = serde_json::from_slice(&std::fs::read(lay.join("index.json")).unwrap()).unwrap();
    let mut m = manifest(lay);
    change(&mut m);
    let raw = serde_json::to_vec(&m).unwrap();
    let hex = hex::encode(Sha256::digest(&raw));
    std::fs::write(lay.join("blobs/sha256").join(&hex), &raw).unwrap();
    idx["manifests"][0]["digest"] = Value::String(format!("sha256:{hex}"));
    idx["manifests"][0]["size"] = Value::from(raw.len());
    std::fs::write(lay.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
}

/// `zran inspect IMAGE --files --json`: (succeeded, listed paths, bytes fetched, stderr).
fn inspect_files(image: &str, extra: &[&str]) -> (bool, BTreeSet<String>, u64, String) {
    let mut args = vec!["inspect", image, "--files", "--json"];
    args.extend_from_slice(extra);
    let o = zran(&args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    if !o.status.success() {
        return (false, BTreeSet::new(), 0, err);
    }
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let paths =
        v["entries"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap().to_string()).collect();
    (true, paths, v["bytes_fetched"].as_u64().unwrap(), err)
}

/// `zran mount IMAGE` (straight from the TOCs) on a new directory: whether it mounted.
fn mounts(image: &str, extra: &[&str]) -> (bool, String) {
    let cache = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let mut args =
        vec!["mount", image, mnt.path().to_str().unwrap(), "--cache-dir", cache.path().to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = zran(&args);
    if o.status.success() {
        let _ =
            zran(&["umount", mnt.path().to_str().unwrap(), "--cache-dir", cache.path().to_str().unwrap()]);
    }
    (o.status.success(), String::from_utf8_lossy(&o.stderr).to_string())
}

/// A TOC whose sha256 is not the layer's manifest-checksum annotation is never used, with or
/// without `--insecure-skip-verify` (which only waives a missing annotation: c/storage's rule,
/// and zran's for eStargz TOC digests); a layer with no checksum annotation is not mounted
/// from its TOC unless `--insecure-skip-verify` says so, and then the TOC lists the truth.
#[test]
fn a_toc_that_does_not_match_its_annotation_is_refused() {
    for (name, key) in [
        ("python-zstdchunked-v2", "io.github.containers.zstd-chunked.manifest-checksum"),
        ("python-zstdchunked", "io.containers.zstd-chunked.manifest-checksum"),
    ] {
        // The image as made is listed and mounted from its TOCs: what follows fails for the
        // changed annotation alone.
        let (ok, got, _, err) = inspect_files(&layout_image(name), &[]);
        assert!(ok && got == truth_paths(name), "{name}: {err}");
        let (ok, err) = mounts(&layout_image(name), &[]);
        assert!(ok, "{name}: {err}");

        // A checksum that is not the TOC's.
        let (_work, lay) = layout_copy(name);
        let wrong = format!("sha256:{}", hex::encode(Sha256::digest(b"not the TOC")));
        rewrite_manifest(&lay, |m| {
            for l in m["layers"].as_array_mut().unwrap() {
                l["annotations"][key] = Value::String(wrong.clone());
            }
        });
        let image = format!("oci:{}", lay.display());
        let (ok, _, _, err) = inspect_files(&image, &[]);
        assert!(!ok, "{name}: a TOC its annotation does not vouch for was listed");
        let e = err.to_lowercase();
        assert!(e.contains("toc") && (e.contains("checksum") || e.contains("digest")), "{name}: {err}");
        let (ok, _, _, err) = inspect_files(&image, &["--insecure-skip-verify"]);
        assert!(!ok, "{name}: --insecure-skip-verify listed a TOC its annotation contradicts: {err}");
        let (ok, _) = mounts(&image, &[]);
        assert!(!ok, "{name}: mounted with a TOC its annotation does not vouch for");

        // No checksum annotation at all.
        let (_work2, lay) = layout_copy(name);
        rewrite_manifest(&lay, |m| {
            for l in m["layers"].as_array_mut().unwrap() {
                l["annotations"].as_object_mut().unwrap().remove(key);
            }
        });
        let image = format!("oci:{}", lay.display());
        let (ok, _) = mounts(&image, &[]);
        assert!(!ok, "{name}: mounted from TOCs no annotation vouches for");
        let (ok, got, fetched, err) = inspect_files(&image, &["--insecure-skip-verify"]);
        assert!(ok, "{name}: --insecure-skip-verify: {err}");
        assert_eq!(got, truth_paths(name), "{name}: --insecure-skip-verify");
        assert!(fetched < layers_size(&lay) / 4, "{name}: the TOC was not used: fetched {fetched}");
    }
}

/// The hand-built current-format images, read by another reader: containers/zstd-chunked-rs
/// (crates.io `zstd-chunked`) finds the TOC and tar-split from the annotations and from the
/// footer (the same ranges), rebuilds each layer's tar from the tar-split and the files' frames
/// (each file's sha256 checked), and gets the DiffID; a plain zstd decoder gets it too (and
/// alone for edge, whose duplicate names that reader cannot take).
#[test]
fn the_current_format_images_are_read_by_zstd_chunked_rs_and_plain_zstd() {
    use zstd_chunked::{MetadataReferences, Stream};
    for name in ["python-zstdchunked-v2", "edge-zstdchunked-v2"] {
        let lay = layouts().join(name);
        let m = manifest(&lay);
        let cfg = &m["config"]["digest"].as_str().unwrap()["sha256:".len()..];
        let config: Value =
            serde_json::from_slice(&std::fs::read(lay.join("blobs/sha256").join(cfg)).unwrap()).unwrap();
        let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
        for (i, layer) in m["layers"].as_array().unwrap().iter().enumerate() {
            let blob = std::fs::read(layout_blob_path(&lay, layer)).unwrap();
            let ann: std::collections::HashMap<String, String> = layer["annotations"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            let refs = MetadataReferences::from_oci(|k| ann.get(k))
                .unwrap_or_else(|| panic!("{name} layer {i}: not zstd:chunked by its annotations"));
            let footer = MetadataReferences::from_footer(&blob[blob.len() - 72..])
                .unwrap_or_else(|| panic!("{name} layer {i}: no footer"));
            assert_eq!(refs.manifest.range, footer.manifest.range, "{name} layer {i}");
            assert_eq!(refs.tarsplit.range, footer.tarsplit.range, "{name} layer {i}");
            let toc_z = &blob[refs.manifest.range.start as usize..refs.manifest.range.end as usize];
            assert_eq!(
                refs.manifest.digest.as_deref(),
                Some(format!("sha256:{}", hex::encode(Sha256::digest(toc_z))).as_str()),
                "{name} layer {i}: manifest-checksum"
            );
            let ts_z = &blob[refs.tarsplit.range.start as usize..refs.tarsplit.range.end as usize];
            let toc: Value = serde_json::from_slice(&zstd::decode_all(toc_z).unwrap()).unwrap();
            assert_eq!(
                toc["tarSplitDigest"].as_str(),
                Some(format!("sha256:{}", hex::encode(Sha256::digest(ts_z))).as_str()),
                "{name} layer {i}: tarSplitDigest"
            );
            let want = diff_ids[i].as_str().unwrap();
            let plain = zstd::decode_all(&blob[..]).unwrap();
            assert_eq!(
                format!("sha256:{}", hex::encode(Sha256::digest(&plain))),
                want,
                "{name} layer {i}: zstd"
            );
            if name == "edge-zstdchunked-v2" {
                // edge has a file written twice in one layer (dup/twice): zstd-chunked-rs keys
                // the TOC by name, so it takes the second entry's size for the first and stops
                // ("size mismatch"); c/storage itself rejects duplicate names since 1.55.
                continue;
            }
            let stream = Stream::new_from_frames(toc_z, ts_z).unwrap();
            let mut tar = Vec::new();
            stream
                .write_to(&mut tar, |r| {
                    let data = zstd::decode_all(&blob[r.range.start as usize..r.range.end as usize])?;
                    anyhow::ensure!(data.len() as u64 == r.size, "size");
                    anyhow::ensure!(
                        format!("sha256:{}", hex::encode(Sha256::digest(&data))) == r.digest,
                        "digest"
                    );
                    Ok(data)
                })
                .unwrap_or_else(|e| panic!("{name} layer {i}: {e:#}"));
            assert_eq!(
                format!("sha256:{}", hex::encode(Sha256::digest(&tar))),
                want,
                "{name} layer {i}: tar-split"
            );
        }
    }
}
