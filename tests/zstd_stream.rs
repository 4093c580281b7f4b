//! zstd, zstd:chunked and uncompressed layers through `generate` and a real FUSE `mount`: the
//! python test image in four more forms made at test time (skopeo's `zstd` (one frame per
//! layer) and `zstd:chunked`, every layer piped through `pzstd` (several frames) with a
//! hand-written manifest, and uncompressed tar), each mounted from its layout and from the test
//! registry and compared with the truth file by file. A changed byte in a layer gives EIO for
//! the file it lies in and no other; a whole-frame layer is fetched once per frame.

mod common;
#[path = "common/mounted.rs"]
mod mounted;

use common::harness::{TestRegistry, layouts, repo_root};
use common::truth::{compare, walk};
use mounted::{Mount, files, read_all, zran};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The forms, each an OCI layout under `target/zstd-stream` (made once per run).
const FORMS: [&str; 4] = ["python-zstd", "python-zstd-chunked", "python-pzstd", "python-tar"];

fn forms() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = repo_root().join("target/zstd-stream");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let src = format!("oci:{}:latest", layouts().join("python").display());
        for (name, args) in [
            ("python-zstd", &["--dest-compress-format", "zstd"][..]),
            ("python-zstd-chunked", &["--dest-compress-format", "zstd:chunked"][..]),
        ] {
            let o = Command::new("skopeo")
                .args(["copy", "-q"])
                .args(args)
                .arg(&src)
                .arg(format!("oci:{}:latest", dir.join(name).display()))
                .output()
                .unwrap();
            assert!(o.status.success(), "skopeo {name}: {}", String::from_utf8_lossy(&o.stderr));
        }
        recompress(
            &layouts().join("python"),
            &dir.join("python-pzstd"),
            Some(&["pzstd", "-q", "-p", "2", "-3", "-c"]),
        );
        recompress(&layouts().join("python"), &dir.join("python-tar"), None);
        dir
    })
}

/// Read a layout's only manifest.
fn manifest_of(layout: &Path) -> Value {
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let d = index["manifests"][0]["digest"].as_str().unwrap();
    serde_json::from_slice(&std::fs::read(blob(layout, d)).unwrap()).unwrap()
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
}

fn put(layout: &Path, bytes: &[u8]) -> String {
    let hex = hex::encode(Sha256::digest(bytes));
    std::fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
    format!("sha256:{hex}")
}

/// A copy of the gzip layout `src` whose layers are gunzipped and piped through `cmd` (a zstd
/// compressor), or left uncompressed; config unchanged (same tar, same DiffIDs), manifest and
/// index written by hand.
fn recompress(src: &Path, dst: &Path, cmd: Option<&[&str]>) {
    std::fs::create_dir_all(dst.join("blobs/sha256")).unwrap();
    std::fs::write(dst.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut m = manifest_of(src);
    let config = m["config"]["digest"].as_str().unwrap().to_string();
    put(dst, &std::fs::read(blob(src, &config)).unwrap());
    for l in m["layers"].as_array_mut().unwrap() {
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(blob(src, l["digest"].as_str().unwrap())).unwrap())
            .read_to_end(&mut tar)
            .unwrap();
        let (bytes, media) = match cmd {
            Some(cmd) => {
                let mut c = Command::new(cmd[0])
                    .args(&cmd[1..])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap();
                let mut stdin = c.stdin.take().unwrap();
                let feeder = std::thread::spawn(move || stdin.write_all(&tar).unwrap());
                let out = c.wait_with_output().unwrap();
                feeder.join().unwrap();
                assert!(out.status.success());
                (out.stdout, "application/vnd.oci.image.layer.v1.tar+zstd")
            }
            None => (tar, "application/vnd.oci.image.layer.v1.tar"),
        };
        let digest = put(dst, &bytes);
        l["digest"] = json!(digest);
        l["size"] = json!(bytes.len());
        l["mediaType"] = json!(media);
    }
    let raw = serde_json::to_vec(&m).unwrap();
    let digest = put(dst, &raw);
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": raw.len(),
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]});
    std::fs::write(dst.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

fn generate(image: &str, out: &Path) -> Value {
    let o = zran(&["generate", image, "-o", out.to_str().unwrap(), "--force"]);
    assert!(o.status.success(), "generate {image}: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&std::fs::read(out.join("zran.json")).unwrap()).unwrap()
}

/// Mount, walk, compare with the python truth; the final counters.
fn mount_and_compare(form: &str, source: &str, extra: &[&str]) -> Value {
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(source, cache.path(), extra);
    let got = walk(&m.mnt);
    let n = compare("python", &got, false);
    assert!(n > 50, "{form}: {n} entries");
    assert!(read_all("python", &m.mnt).is_empty(), "{form}");
    let stats = m.finish();
    assert_eq!(stats["digest_failures"], 0, "{form}: {stats}");
    assert_eq!(stats["read_errors"], 0, "{form}: {stats}");
    assert!(stats["chunks_fetched"].as_u64().unwrap() > 0, "{form}: {stats}");
    stats
}

#[test]
fn every_form_reads_the_truth_through_the_mount() {
    let dir = forms();
    let reg = TestRegistry::start("plain");
    for form in FORMS {
        let layout = format!("oci:{}:latest", dir.join(form).display());
        let work = tempfile::tempdir().unwrap();
        let art = work.path().join("art");
        let z = generate(&layout, &art);
        let layers = z["layers"].as_array().unwrap();
        let want = match form {
            "python-zstd" | "python-pzstd" => "zstd",
            "python-zstd-chunked" => "zstd-chunked",
            _ => "tar",
        };
        assert!(layers.iter().all(|l| l["format"] == want), "{form}: {z}");
        // Layers with more than one frame are indexed at their frame starts.
        let whole: u64 = layers
            .iter()
            .filter(|l| {
                l["largest_frame"].as_u64().is_some_and(|f| f > 16 << 20) && l["chunks"].as_u64() > Some(0)
            })
            .count() as u64;
        match form {
            "python-zstd" => assert!(whole > 0, "{z}"),
            "python-zstd-chunked" | "python-pzstd" => {
                assert_eq!(whole, 0, "{z}");
                assert!(layers.iter().any(|l| l["checkpoints"].as_u64() > Some(1)), "{z}");
            }
            _ => assert!(layers.iter().all(|l| l["checkpoints"] == 0), "{z}"),
        }
        let s = mount_and_compare(form, art.to_str().unwrap(), &[]);
        // Each whole frame is fetched once however many of its files are read.
        assert_eq!(s["whole_fetches"].as_u64(), Some(whole), "{form}: {s}");
        // The same image in a registry: the artifact over its layers there, and one generated
        // again streaming them from the registry.
        let remote = format!("{}/{form}:latest", reg.host());
        push(&layout, &remote);
        let s = mount_and_compare(form, art.to_str().unwrap(), &["--image", &remote]);
        assert!(s["requests"].as_u64().unwrap() > 0, "{form}: {s}");
        assert_eq!(s["whole_fetches"].as_u64(), Some(whole), "{form}: {s}");
        let art = work.path().join("art-remote");
        assert_eq!(generate(&remote, &art)["layers"], z["layers"], "{form}");
        let s = mount_and_compare(form, art.to_str().unwrap(), &[]);
        assert!(s["requests"].as_u64().unwrap() > 0, "{form}: {s}");
        assert_eq!(s["whole_fetches"].as_u64(), Some(whole), "{form}: {s}");
    }
}

/// Copy a layout to the test registry as it is (skopeo would otherwise take pzstd's layers,
/// which begin with a skippable frame, for uncompressed ones and relabel them).
fn push(layout: &str, image: &str) {
    let o = Command::new("skopeo")
        .args([
            "copy",
            "-q",
            "--preserve-digests",
            "--dest-tls-verify=false",
            layout,
            &format!("docker://{image}"),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "skopeo copy {layout}: {}", String::from_utf8_lossy(&o.stderr));
}

/// A regular file of the truth with content no other file has, between 8 KiB and 1 MiB.
fn lone_file() -> String {
    let fs = files("python");
    let mut count = std::collections::HashMap::new();
    for (_, _, sha) in &fs {
        *count.entry(sha.clone()).or_insert(0) += 1;
    }
    fs.iter()
        .filter(|(_, size, sha)| (8 << 10..1 << 20).contains(size) && count[sha] == 1)
        .map(|(p, _, _)| p.clone())
        .nth(7)
        .unwrap()
}

#[test]
fn a_changed_byte_fails_its_file_alone() {
    let dir = forms();
    for form in ["python-tar", "python-zstd-chunked"] {
        let work = tempfile::tempdir().unwrap();
        let art = work.path().join("art");
        generate(&format!("oci:{}:latest", dir.join(form).display()), &art);
        // A copy of the layout with one byte changed in the file's data.
        let copy = work.path().join("layout");
        assert!(Command::new("cp").arg("-r").arg(dir.join(form)).arg(&copy).status().unwrap().success());
        let b = zran::rafs::reader::read_bootstrap(&std::fs::read(art.join("image.boot")).unwrap()).unwrap();
        let path = lone_file();
        let id = b.tree.lookup(format!("/{path}").as_bytes()).unwrap();
        let r = b.chunks[&id][0];
        let c = b.chunk_info(&r).unwrap();
        let at =
            c.compressed_offset + if form == "python-tar" { u64::from(c.compressed_size) / 2 } else { 24 };
        let layer = blob(&copy, &b.blobs[usize::from(r.blob)].id);
        let mut bytes = std::fs::read(&layer).unwrap();
        bytes[at as usize] ^= 0x5a;
        std::fs::write(&layer, bytes).unwrap();
        let cache = tempfile::tempdir().unwrap();
        let image = format!("oci:{}:latest", copy.display());
        let m = Mount::new(art.to_str().unwrap(), cache.path(), &["--image", &image]);
        let failed = read_all("python", &m.mnt);
        let stats = m.finish();
        assert_eq!(failed, vec![path.clone()], "{form}");
        assert!(stats["digest_failures"].as_u64().unwrap() >= 1, "{form}: {stats}");
    }
}

#[test]
fn convert_reads_zstd_and_uncompressed_layers() {
    let dir = forms();
    for form in FORMS {
        let work = tempfile::tempdir().unwrap();
        let out = format!("oci:{}:nydus", work.path().join("nydus").display());
        let o = zran(&["convert", &format!("oci:{}:latest", dir.join(form).display()), &out]);
        assert!(o.status.success(), "convert {form}: {}", String::from_utf8_lossy(&o.stderr));
        // The Nydus image it wrote, mounted (zran serves Nydus native images) and compared.
        mount_and_compare(form, &out, &[]);
    }
}
