//! `zran generate` against readers nobody here wrote: the Linux kernel's EROFS mounts the
//! bootstrap with each layer's chunks laid out at their block addresses (the layout the chunk
//! cache uses), and the mounted tree must equal the truth (umoci's unpack) file by file,
//! content included; `fsck.erofs` (erofs-utils 1.5, which takes the devices with `--device`)
//! checks and extracts the same image. Also: `inspect DIR --files` equals `inspect IMAGE --files`, and the
//! artifact directory is written atomically.

mod common;

use common::harness::{kernel_mount, layout_blob, layouts};
use common::truth::{by_path, compare, truth, walk};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

fn zran(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zran")).args(args).output().unwrap()
}

fn generate(image: &str, out: &Path) {
    let o = zran(&["generate", image, "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "generate {image}: {}", String::from_utf8_lossy(&o.stderr));
}

/// Every chunk-size piece of every regular file in every layer, by sha256: read with flate2
/// and the `tar` crate, so that the chunk bytes do not come from zran's own parser.
fn chunks_by_digest(layout: &Path, chunk_size: usize) -> HashMap<[u8; 32], Vec<u8>> {
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mut todo = vec![index["manifests"][0]["digest"].as_str().unwrap().to_string()];
    let mut out = HashMap::new();
    while let Some(d) = todo.pop() {
        let blob = layout_blob(layout, d.trim_start_matches("sha256:"));
        let m: Value = serde_json::from_slice(&std::fs::read(&blob).unwrap()).unwrap();
        if let Some(ms) = m["manifests"].as_array() {
            todo.extend(ms.iter().map(|x| x["digest"].as_str().unwrap().to_string()));
            continue;
        }
        for l in m["layers"].as_array().unwrap() {
            let path = layout_blob(layout, l["digest"].as_str().unwrap().trim_start_matches("sha256:"));
            let mut tar = Vec::new();
            flate2::read::MultiGzDecoder::new(std::fs::File::open(path).unwrap())
                .read_to_end(&mut tar)
                .unwrap();
            // Padded to whole blocks and end blocks: Go's reader (so zran) accepts a stream
            // that ends right after the last file's data (umoci insert), the `tar` crate not.
            tar.resize(tar.len().next_multiple_of(512) + 1024, 0);
            let mut ar = tar::Archive::new(tar.as_slice());
            for e in ar.entries().unwrap() {
                let mut e = e.unwrap();
                if e.header().entry_type() != tar::EntryType::Regular {
                    continue;
                }
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                for c in data.chunks(chunk_size) {
                    out.insert(Sha256::digest(c).into(), c.to_vec());
                }
            }
        }
    }
    out
}

/// The layout's manifest digest for one tag-less layout (the first manifest of index.json,
/// through nested indexes choosing linux/amd64).
struct Mounted {
    dir: tempfile::TempDir,
    mnt: PathBuf,
    devices: Vec<PathBuf>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = &self.dir;
    }
}

/// Lay every blob's chunks out at their block addresses, mount, return the mount.
fn mount_with_kernel(name: &str, art: &Path) -> Mounted {
    let layout = layouts().join(name);
    let dump: Value =
        serde_json::from_slice(&zran(&["inspect", "--json", art.to_str().unwrap()]).stdout).unwrap();
    let chunk_size = dump["chunk_size"].as_u64().unwrap() as usize;
    let pieces = chunks_by_digest(&layout, chunk_size);
    let dir = tempfile::tempdir().unwrap();
    let boot = std::fs::read(art.join("image.boot")).unwrap();
    let b = zran::rafs::reader::read_bootstrap(&boot).unwrap();
    let mut devices = Vec::new();
    let mut files: Vec<std::fs::File> = Vec::new();
    for (i, blob) in b.blobs.iter().enumerate() {
        let p = dir.path().join(format!("blob{i}.dev"));
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(blob.uncompressed_size).unwrap();
        devices.push(p);
        files.push(f);
    }
    use std::os::unix::fs::FileExt;
    for c in &b.chunk_table {
        let bytes = pieces
            .get(&c.digest)
            .unwrap_or_else(|| panic!("{name}: no file piece has the digest of chunk {c:?}"));
        assert_eq!(bytes.len(), c.uncompressed_size as usize, "{name}: chunk size");
        files[usize::from(c.blob)].write_all_at(bytes, c.uncompressed_offset).unwrap();
    }
    drop(files);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    kernel_mount(&art.join("image.boot"), &devices, &mnt);
    Mounted { dir, mnt, devices }
}

/// erofs-utils' checker on the bootstrap and its devices: every file must decode, and the tree
/// it extracts must equal the truth too (fsck.erofs 1.5 restores owners and modes, not times
/// or xattrs).
fn fsck_extract(name: &str, art: &Path, devices: &[PathBuf]) {
    let out = tempfile::tempdir().unwrap();
    let x = out.path().join("x");
    let mut cmd = Command::new("fsck.erofs");
    for d in devices {
        cmd.arg(format!("--device={}", d.display()));
    }
    let o = cmd
        .arg(format!("--extract={}", x.display()))
        .arg("--preserve")
        .arg(art.join("image.boot"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{name}: fsck.erofs: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let got = walk(&x);
    let truth = truth(name);
    let (want, got) = (by_path(&truth), by_path(&got));
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{name}: fsck.erofs paths");
    for (path, w) in &want {
        for field in ["type", "uid", "gid", "size", "sha256", "target", "major", "minor"] {
            assert_eq!(got[path].get(field), w.get(field), "{name} {path}: fsck.erofs {field}");
        }
        // fsck.erofs 1.5 sets the mode before the owner, and the kernel drops setuid and setgid
        // on chown: those two bits cannot survive its extraction.
        let mode = |v: &Value| v["mode"].as_u64().map(|m| m & !0o6000);
        assert_eq!(mode(&got[path]), mode(w), "{name} {path}: fsck.erofs mode");
    }
}

#[test]
fn kernel_erofs_mounts_the_bootstrap_and_reads_the_truth() {
    let dir = layouts();
    // (tarquirks has header-only entries with sizes, which the `tar` crate reading the chunks
    // here would skip data for; the FUSE mount test covers it.)
    for name in ["python", "edge", "python-estargz", "edge-estargz", "paths", "umoci-insert"] {
        let work = tempfile::tempdir().unwrap();
        let art = work.path().join("art");
        generate(&format!("oci:{}", dir.join(name).display()), &art);
        let m = mount_with_kernel(name, &art);
        let got = walk(&m.mnt);
        let n = compare(name, &got, name.ends_with("-estargz"));
        assert!(n > 10, "{name}: {n} entries");
        fsck_extract(name, &art, &m.devices);
    }
}

#[test]
fn inspect_dir_lists_what_inspect_image_lists() {
    let dir = layouts();
    for name in ["python", "edge", "python-estargz", "edge-estargz", "tarquirks", "paths", "umoci-insert"] {
        let image = format!("oci:{}", dir.join(name).display());
        let work = tempfile::tempdir().unwrap();
        let art = work.path().join("art");
        generate(&image, &art);
        let a = zran(&["inspect", "--files", art.to_str().unwrap()]);
        let b = zran(&["inspect", "--files", &image]);
        assert!(a.status.success() && b.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
        let (a, b) = (String::from_utf8(a.stdout).unwrap(), String::from_utf8(b.stdout).unwrap());
        assert!(a.lines().count() > 10);
        assert_eq!(a, b, "{name}: listings differ");
        let s = zran(&["inspect", art.to_str().unwrap()]);
        assert!(s.status.success());
        let s = String::from_utf8(s.stdout).unwrap();
        assert!(s.contains("RAFS v6") && s.contains("checkpoints"), "{s}");
    }
}

#[test]
fn the_artifact_directory_is_replaced_whole_or_not_at_all() {
    let image = format!("oci:{}", layouts().join("edge").display());
    let work = tempfile::tempdir().unwrap();
    let art = work.path().join("art");
    generate(&image, &art);
    let boot = std::fs::read(art.join("image.boot")).unwrap();
    // Without --force an existing artifact stays as it is.
    let o = zran(&["generate", &image, "-o", art.to_str().unwrap(), "--chunk-size", "64K"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
    assert_eq!(std::fs::read(art.join("image.boot")).unwrap(), boot);
    // With --force it is replaced, and nothing temporary is left beside it.
    let o = zran(&["generate", &image, "-o", art.to_str().unwrap(), "--chunk-size", "64K", "--force"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_ne!(std::fs::read(art.join("image.boot")).unwrap(), boot);
    let names: Vec<_> = std::fs::read_dir(work.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("art")]);
    // A failing run (an image that does not exist) leaves nothing behind either.
    let o = zran(&["generate", "oci:/nonexistent", "-o", work.path().join("b").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(!work.path().join("b").exists());
    // A blob.meta changed behind zran's back is caught when the artifact is opened.
    let meta = std::fs::read_dir(&art)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".blob.meta"))
        .unwrap();
    let mut bytes = std::fs::read(&meta).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&meta, bytes).unwrap();
    let o = zran(&["inspect", art.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("blob.meta"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn generate_from_a_registry_writes_the_same_bootstrap() {
    let reg = common::harness::TestRegistry::start("plain");
    for name in ["python", "edge", "edge-estargz"] {
        let work = tempfile::tempdir().unwrap();
        let (a, b) = (work.path().join("a"), work.path().join("b"));
        generate(&format!("oci:{}", layouts().join(name).display()), &a);
        generate(&format!("{}/{name}", reg.host()), &b);
        let mut files: Vec<String> = vec!["image.boot".into()];
        files.extend(
            std::fs::read_dir(&a)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".blob.meta")),
        );
        for f in &files {
            assert!(
                std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(),
                "{name}: {f} differs"
            );
        }
        let (ja, jb): (Value, Value) = (
            serde_json::from_slice(&std::fs::read(a.join("zran.json")).unwrap()).unwrap(),
            serde_json::from_slice(&std::fs::read(b.join("zran.json")).unwrap()).unwrap(),
        );
        assert_eq!(ja["layers"], jb["layers"], "{name}");
        assert_eq!(ja["manifest_digest"], jb["manifest_digest"], "{name}");
    }
}

#[test]
fn identical_chunks_of_a_layer_are_stored_once() {
    // The edge image's 4 MiB of zeros is four identical 1 MiB chunks.
    let work = tempfile::tempdir().unwrap();
    let art = work.path().join("art");
    generate(&format!("oci:{}", layouts().join("edge").display()), &art);
    let b = zran::rafs::reader::read_bootstrap(&std::fs::read(art.join("image.boot")).unwrap()).unwrap();
    let f = b.tree.lookup(b"big/zeros-4MiB").unwrap();
    let refs = &b.chunks[&f];
    assert_eq!(refs.len(), 4);
    let distinct: BTreeSet<(u8, u32)> = refs.iter().map(|r| (r.blob, r.ci)).collect();
    assert_eq!(distinct.len(), 1, "{distinct:?}");
    let blocks: BTreeSet<u32> = refs.iter().map(|r| r.blk_addr).collect();
    assert_eq!(blocks.len(), distinct.len(), "one place in the blob per distinct chunk");
}

/// A layout with one layer of the given media type and bytes (and DiffIDs in its config).
fn one_layer_layout(dir: &Path, media_type: &str, layer: &[u8], diff_ids: &[String]) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> (String, usize) {
        let hex = hex::encode(Sha256::digest(bytes));
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let (ld, ls) = put(layer);
    let config = serde_json::json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    let (cd, cs) = put(&serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": media_type, "digest": ld, "size": ls}],
    });
    let (md, ms) = put(&serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

#[test]
fn zstd_and_uncompressed_layers_are_indexed_and_others_get_a_clear_message() {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "hello", &b"hello"[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
    let wrong = format!("sha256:{}", "0".repeat(64));
    let zstd = zstd::encode_all(&tar[..], 3).unwrap();
    let generate = |mt: &str, bytes: &[u8], ids: &[String]| {
        let work = tempfile::tempdir().unwrap();
        one_layer_layout(&work.path().join("img"), mt, bytes, ids);
        let out = work.path().join("art");
        let o = zran(&[
            "generate",
            &format!("oci:{}", work.path().join("img").display()),
            "-o",
            out.to_str().unwrap(),
        ]);
        let z =
            std::fs::read(out.join("zran.json")).ok().map(|b| serde_json::from_slice::<Value>(&b).unwrap());
        (o, z)
    };
    for (mt, bytes, format) in [
        ("application/vnd.oci.image.layer.v1.tar+zstd", &zstd, "zstd"),
        ("application/vnd.oci.image.layer.v1.tar", &tar, "tar"),
    ] {
        let (o, z) = generate(mt, bytes, std::slice::from_ref(&diff_id));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let z = z.unwrap();
        assert_eq!(z["layers"][0]["format"], format, "{z}");
        assert_eq!(z["layers"][0]["chunks"], 1, "{z}");
    }
    // A zstd stream that is the config's tar without its last zero blocks (what skopeo 1.9
    // writes as zstd:chunked): the same files, accepted.
    let padded = format!("sha256:{}", hex::encode(Sha256::digest([tar.clone(), vec![0u8; 9216]].concat())));
    let (o, z) = generate("application/vnd.oci.image.layer.v1.tar+zstd", &zstd, &[padded]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(z.unwrap()["layers"][0]["format"], "zstd");
    // A zstd stream that is not the tar its config names.
    let (o, z) = generate("application/vnd.oci.image.layer.v1.tar+zstd", &zstd, &[wrong]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("DiffID") && err.contains(&diff_id), "{err}");
    assert!(z.is_none());
    // A compression zran does not know.
    let (o, z) = generate("application/vnd.oci.image.layer.v1.tar+bzip2", &tar, &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unknown") && err.contains("layer 0"), "{err}");
    assert!(z.is_none());
}

#[test]
fn prefetch_files_become_the_prefetch_table() {
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("prefetch");
    std::fs::write(
        &list,
        "# start-up files\n/usr/bin/python3.11\nusr/lib/python3.11/json/__init__.py\n/nope\n",
    )
    .unwrap();
    let art = work.path().join("art");
    let image = format!("oci:{}", layouts().join("python").display());
    let o =
        zran(&["generate", &image, "-o", art.to_str().unwrap(), "--prefetch-files", list.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("prefetch file not in the image") && err.contains("nope"), "{err}");
    let v: Value =
        serde_json::from_slice(&zran(&["inspect", "--json", art.to_str().unwrap()]).stdout).unwrap();
    assert_eq!(
        v["prefetch"],
        serde_json::json!(["/usr/bin/python3.11", "/usr/lib/python3.11/json/__init__.py"])
    );
}

#[test]
fn estargz_layers_carry_a_chunk_info_v1_blob_meta_checked_when_opened() {
    let work = tempfile::tempdir().unwrap();
    let art = work.path().join("art");
    generate(&format!("oci:{}", layouts().join("edge-estargz").display()), &art);
    let json: Value = serde_json::from_slice(&std::fs::read(art.join("zran.json")).unwrap()).unwrap();
    let b = zran::rafs::reader::read_bootstrap(&std::fs::read(art.join("image.boot")).unwrap()).unwrap();
    let mut with_data = json["layers"].as_array().unwrap().iter().filter(|l| l["chunks"].as_u64() != Some(0));
    for blob in &b.blobs {
        let l = with_data.next().unwrap();
        assert_eq!(l["format"], "estargz");
        // ALIGNED | SEPARATE | CAP_TAR_TOC: chunk info v1, fetched by the blob.meta's digest.
        assert_eq!(blob.features, 0x4000_0011, "{}", blob.id);
        assert_eq!(blob.ci_uncompressed_size, u64::from(blob.chunk_count) * 16);
        let file = l["blob_meta"].as_str().unwrap();
        assert_eq!(file, format!("{}.blob.meta", blob.id));
        let bytes = std::fs::read(art.join(file)).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&bytes)), hex::encode(blob.meta_digest));
        assert_eq!(bytes.len() as u64, blob.meta_size);
        let meta = zran::rafs::meta::StargzMeta::decode(&bytes, blob).unwrap();
        assert_eq!(meta.chunks.len() as u32, blob.chunk_count);
    }
    assert!(zran(&["inspect", art.to_str().unwrap()]).status.success());

    // A chunk table that no longer says what the chunk info says is caught, naming the chunk.
    let blob = &b.blobs[0];
    let c = b.chunk_table.iter().find(|c| c.blob == 0).unwrap();
    let bad = work.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    for e in std::fs::read_dir(&art).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), bad.join(e.file_name())).unwrap();
    }
    let mut boot = std::fs::read(art.join("image.boot")).unwrap();
    let mut at = 0;
    while let Some(k) = boot[at..].windows(32).position(|w| w == c.digest) {
        // The chunk-table entry's compressed_size, after the digest, blob index and flags.
        let size = at + k + 40;
        let v = u32::from_le_bytes(boot[size..size + 4].try_into().unwrap()) - 1;
        boot[size..size + 4].copy_from_slice(&v.to_le_bytes());
        at += k + 32;
    }
    let mut j: Value = serde_json::from_slice(&std::fs::read(art.join("zran.json")).unwrap()).unwrap();
    j["bootstrap_digest"] = format!("sha256:{}", hex::encode(Sha256::digest(&boot))).into();
    std::fs::write(bad.join("zran.json"), serde_json::to_vec_pretty(&j).unwrap()).unwrap();
    std::fs::write(bad.join("image.boot"), &boot).unwrap();
    let o = zran(&["inspect", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains(&format!("{}.blob.meta: chunk {}", blob.id, c.ci)) && err.contains("chunk table"),
        "{err}"
    );
    // And a blob.meta the blob table names but zran.json leaves out.
    let mut j: Value = serde_json::from_slice(&std::fs::read(art.join("zran.json")).unwrap()).unwrap();
    for l in j["layers"].as_array_mut().unwrap() {
        l.as_object_mut().unwrap().remove("blob_meta");
    }
    std::fs::write(bad.join("zran.json"), serde_json::to_vec_pretty(&j).unwrap()).unwrap();
    std::fs::write(bad.join("image.boot"), std::fs::read(art.join("image.boot")).unwrap()).unwrap();
    let o = zran(&["inspect", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("has no blob.meta"), "{err}");
}
