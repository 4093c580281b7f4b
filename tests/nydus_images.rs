//! Nydus images served by `zran mount`: images made by Nydus's own builder (`nydus-builder`,
//! in process: native zstd/blake3 data blobs and oci-ref blobs over the original gzip layers,
//! merged and packaged as nydusify pushes them), mounted from an OCI layout and from a real
//! registry, walked and compared with the truth file by file. A changed byte in a native
//! blob fails the reads of its file only; images that claim to be Nydus but are not, a
//! truncated blob and a missing bootstrap layer are refused with clear errors.

mod common;
#[path = "common/mounted.rs"]
mod mounted;
#[path = "common/nydus.rs"]
mod nydus_build;
#[path = "common/nydusd.rs"]
mod nydusd;

use common::containerd::push_layout;
use common::harness::{TestRegistry, layouts};
use common::truth::{compare, truth, walk};
use mounted::{Mount, files, read_all, zran};
use nydus_build::Kind;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The Nydus layouts of a test image, built once per test process.
fn nydus_layout(name: &str, kind: Kind) -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    let out = dir.path().join(format!("{name}-{kind:?}"));
    if !out.join("index.json").exists() {
        let work = dir.path().join(format!("work-{name}-{kind:?}"));
        nydus_build::build(&layouts().join(name), kind, &work, &out);
        let _ = std::fs::remove_dir_all(&work);
    }
    out
}

/// Mount, walk, compare with the truth; the final counters.
fn mount_and_compare(name: &str, source: &str) -> Value {
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(source, cache.path(), &[]);
    let got = walk(&m.mnt);
    let n = compare(name, &got, false);
    assert!(n > 10, "{name}: {n} entries");
    let stats = m.finish();
    assert_eq!(stats["digest_failures"], 0, "{name}: {stats}");
    assert_eq!(stats["read_errors"], 0, "{name}: {stats}");
    assert!(stats["chunks_fetched"].as_u64().unwrap() > 0, "{name}: {stats}");
    stats
}

/// The test images Nydus's builder makes (the others it refuses: `edge` holds a hardlink to a
/// symlink, "target ... is not a regular file"; `tarquirks` its lenient tar streams, "failed to
/// read entry from tar"; `paths` makes it panic, "invalid file component pattern"; and of
/// `umoci-insert`, whose layers have no root entry, it makes a root with mtime 0, which the
/// truth does not have). The eStargz one is read as the gzip tar it also is.
const BUILT_BY_NYDUS: [&str; 2] = ["python", "python-estargz"];

#[test]
fn nydus_made_images_read_the_truth_from_a_layout() {
    for name in BUILT_BY_NYDUS {
        for kind in [Kind::Native, Kind::OciRef] {
            let l = nydus_layout(name, kind);
            mount_and_compare(name, &format!("oci:{}", l.display()));
        }
    }
}

fn inspect(image: &str) -> String {
    let o = zran(&["inspect", image]);
    assert!(o.status.success(), "inspect {image}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn nydus_made_images_read_the_truth_from_a_registry() {
    let reg = TestRegistry::start("plain");
    for (kind, tag, says) in
        [(Kind::Native, "nydus-native", "nydus native (zstd)"), (Kind::OciRef, "nydus-ref", "nydus oci-ref")]
    {
        let l = nydus_layout("python", kind);
        // The same repository as the original image: an oci-ref image's data are its layers.
        let remote = format!("{}/python:{tag}", reg.host());
        push_layout(&format!("oci:{}:latest", l.display()), &remote);
        let out = inspect(&remote);
        assert!(out.contains(says), "{out}");
        let s = mount_and_compare("python", &remote);
        assert!(s["requests"].as_u64().unwrap() > 0, "{s}");
    }
}

/// The data layer (digest, size) of a Nydus layout with the most bytes.
fn biggest_layer(layout: &Path) -> (String, u64) {
    let (m, _) = nydus_build::layout_manifest(layout);
    let ls = m["layers"].as_array().unwrap();
    ls[..ls.len() - 1]
        .iter()
        .map(|l| (l["digest"].as_str().unwrap().to_string(), l["size"].as_u64().unwrap()))
        .max_by_key(|l| l.1)
        .unwrap()
}

#[test]
fn a_changed_byte_in_a_native_blob_fails_its_file_only() {
    let reg = TestRegistry::start("plain");
    let l = nydus_layout("python", Kind::Native);
    let remote = format!("{}/python:nydus-native", reg.host());
    push_layout(&format!("oci:{}:latest", l.display()), &remote);
    let (digest, size) = biggest_layer(&l);
    let hex = digest.trim_start_matches("sha256:").to_string();
    let data = reg.blob_data(&hex);
    let mut bytes = std::fs::read(&data).unwrap();
    // Inside the chunk data, which is most of a native blob.
    let at = (size / 3) as usize;
    bytes[at] ^= 0x55;
    std::fs::write(&data, &bytes).unwrap();

    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(&remote, cache.path(), &[]);
    let failed = read_all("python", &m.mnt);
    let total = files("python").len();
    assert!(!failed.is_empty(), "a changed byte in a chunk must fail a read");
    assert!(failed.len() <= 3, "{} of {total} files failed: {failed:?}", failed.len());
    let log = m.log();
    assert!(log.contains("failed verification") && log.contains(&hex[..12]), "{log}");
    let stats = m.finish();
    assert!(stats["digest_failures"].as_u64().unwrap() >= 2, "fetched twice: {stats}");

    // Put right, the same cache serves everything: no bad chunk was kept.
    bytes[at] ^= 0x55;
    std::fs::write(&data, &bytes).unwrap();
    let m = Mount::new(&remote, cache.path(), &[]);
    assert!(read_all("python", &m.mnt).is_empty());
    let stats = m.finish();
    assert_eq!(stats["digest_failures"], 0, "{stats}");
}

/// A copy of a layout whose blob files are hard links (replace a file, never write into it).
fn copy_layout(from: &Path, to: &Path) {
    let o = Command::new("cp").arg("-al").arg(from).arg(to).output().unwrap();
    assert!(o.status.success());
}

fn replace(path: &Path, bytes: &[u8]) {
    std::fs::remove_file(path).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// The mount's error, which must fail.
fn mount_error(source: &str) -> String {
    let cache = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let o =
        zran(&["mount", source, mnt.path().to_str().unwrap(), "--cache-dir", cache.path().to_str().unwrap()]);
    assert!(!o.status.success(), "mount {source} should fail");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A Nydus layout like `base` (native python) whose manifest and bootstrap layer `edit` changes.
fn edited(
    base: &Path,
    work: &Path,
    name: &str,
    edit: impl FnOnce(&mut Vec<Value>, &mut Vec<u8>, &mut Vec<u8>),
) -> PathBuf {
    let out = work.join(name);
    copy_layout(base, &out);
    let (m, config) = nydus_build::layout_manifest(base);
    let mut layers: Vec<Value> = m["layers"].as_array().unwrap().clone();
    let boot_desc = layers.pop().unwrap();
    let gz = std::fs::read(nydus_build::blob_path(base, boot_desc["digest"].as_str().unwrap())).unwrap();
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut tar).unwrap();
    let mut gz = gz;
    edit(&mut layers, &mut gz, &mut tar);
    std::fs::remove_file(out.join("index.json")).unwrap();
    nydus_build::write_image(&out, layers, &gz, &tar, config);
    out
}

#[test]
fn images_that_claim_to_be_nydus_but_are_not_are_refused_clearly() {
    let base = nydus_layout("python", Kind::Native);
    let work = tempfile::tempdir().unwrap();
    let oci = |p: &Path| format!("oci:{}", p.display());

    // The bootstrap layer is not a gzip tar.
    let l =
        edited(&base, work.path(), "not-gzip", |_, gz, _| *gz = b"this is not a gzip stream at all".to_vec());
    let e = mount_error(&oci(&l));
    assert!(e.contains("not a gzip tar"), "{e}");
    // A gzip tar without image/image.boot.
    let l = edited(&base, work.path(), "no-boot", |_, gz, tar| {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(4);
        h.set_cksum();
        b.append_data(&mut h, "image/other.file", &b"data"[..]).unwrap();
        *tar = b.into_inner().unwrap();
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut e, tar).unwrap();
        *gz = e.finish().unwrap();
    });
    let e = mount_error(&oci(&l));
    assert!(e.contains("no image/image.boot"), "{e}");
    // An image.boot that is not a bootstrap.
    let l = edited(&base, work.path(), "bad-boot", |_, gz, tar| {
        let (t, g) = nydus_build::bootstrap_layer(&[0x5a; 8192], &[]);
        (*tar, *gz) = (t, g);
    });
    let e = mount_error(&oci(&l));
    assert!(e.contains("image/image.boot") && e.contains("bad magic"), "{e}");
    // A bootstrap naming a blob the manifest lacks.
    let (gone, _) = biggest_layer(&base);
    let l = edited(&base, work.path(), "lacks-blob", |layers, _, _| {
        layers.retain(|d| d["digest"] != json!(gone))
    });
    let e = mount_error(&oci(&l));
    assert!(
        e.contains("which no layer of the manifest is") && e.contains(gone.trim_start_matches("sha256:")),
        "{e}"
    );
    // A manifest whose data layer is shorter than the chunks the bootstrap places in it.
    let l = edited(&base, work.path(), "short", |layers, _, _| {
        for d in layers.iter_mut().filter(|d| d["digest"] == json!(gone)) {
            d["size"] = json!(d["size"].as_u64().unwrap() / 2);
        }
    });
    let e = mount_error(&oci(&l));
    assert!(e.contains("truncated"), "{e}");
    // The bootstrap layer missing from where the image lives.
    let l = work.path().join("missing-boot");
    copy_layout(&base, &l);
    let (m, _) = nydus_build::layout_manifest(&l);
    let boot = m["layers"].as_array().unwrap().last().unwrap()["digest"].as_str().unwrap().to_string();
    std::fs::remove_file(nydus_build::blob_path(&l, &boot)).unwrap();
    let e = mount_error(&oci(&l));
    assert!(e.contains("cannot fetch its Nydus bootstrap layer") && e.contains(&boot), "{e}");
}

#[test]
fn a_truncated_native_blob_fails_the_reads_it_cannot_serve() {
    let base = nydus_layout("python", Kind::Native);
    let work = tempfile::tempdir().unwrap();
    let l = work.path().join("cut");
    copy_layout(&base, &l);
    let (digest, size) = biggest_layer(&base);
    let p = nydus_build::blob_path(&l, &digest);
    let bytes = std::fs::read(&p).unwrap();
    replace(&p, &bytes[..(size / 2) as usize]);
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(&format!("oci:{}", l.display()), cache.path(), &[]);
    let failed = read_all("python", &m.mnt);
    assert!(!failed.is_empty());
    let log = m.log();
    assert!(log.contains("the blob ends at"), "{log}");
    m.finish();
}

/// `zran generate IMAGE --nydus-oci-ref TARGET`.
fn generate_ref(image: &str, target: &str) -> String {
    let o = zran(&["generate", image, "--nydus-oci-ref", target]);
    assert!(
        o.status.success(),
        "generate {image} --nydus-oci-ref {target}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A file read the way nydusd reads a blob from its backend.
struct FileReader {
    file: std::fs::File,
    metrics: nydus_utils::metrics::BackendMetrics,
}

impl nydus_storage::backend::BlobReader for FileReader {
    fn blob_size(&self) -> nydus_storage::backend::BackendResult<u64> {
        Ok(self.file.metadata().unwrap().len())
    }
    fn try_read(&self, buf: &mut [u8], offset: u64) -> nydus_storage::backend::BackendResult<usize> {
        use std::os::unix::fs::FileExt;
        Ok(self.file.read_at(buf, offset).unwrap())
    }
    fn metrics(&self) -> &nydus_utils::metrics::BackendMetrics {
        &self.metrics
    }
}

/// The bootstrap layer's image.boot of a layout's image.
fn layout_bootstrap(layout: &Path) -> Vec<u8> {
    let (m, _) = nydus_build::layout_manifest(layout);
    let last = m["layers"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["annotations"]["containerd.io/snapshot/nydus-bootstrap"], "true");
    let gz = std::fs::read(nydus_build::blob_path(layout, last["digest"].as_str().unwrap())).unwrap();
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_str() == Some("image/image.boot") {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut b).unwrap();
            return b;
        }
    }
    panic!("no image/image.boot in {}", layout.display());
}

#[test]
fn generate_nydus_oci_ref_is_what_nydus_reads_and_zran_mounts() {
    use nydus_rafs::metadata::RafsSuper;
    use nydus_storage::device::BlobFeatures;
    let name = "python";
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("ref");
    let image = format!("oci:{}", layouts().join(name).display());
    let said = generate_ref(&image, &format!("oci:{}:nydus", out.display()));
    let (m, _) = nydus_build::layout_manifest(&layouts().join(name));
    let originals = m["layers"].as_array().unwrap().len();
    assert!(said.contains(&format!("{originals} original layers copied")), "{said}");

    // Nydus's parser: the bootstrap, each blob an oci-ref blob whose blob.meta is in its ref
    // layer (which Nydus loads from there, as nydusd does), whose ToC is the one named.
    let boot = layout_bootstrap(&out);
    let path = work.path().join("image.boot");
    std::fs::write(&path, &boot).unwrap();
    let (rs, _) =
        RafsSuper::load_from_file(&path, std::sync::Arc::new(nydus_api::ConfigV2::default()), false)
            .expect("Nydus loads the bootstrap");
    let cache = work.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let (nm, _) = nydus_build::layout_manifest(&out);
    let refs: Vec<Value> =
        nm["layers"].as_array().unwrap()[..nm["layers"].as_array().unwrap().len() - 1].to_vec();
    let infos = rs.superblock.get_blob_infos();
    assert_eq!(infos.len(), refs.len());
    for (info, desc) in infos.iter().zip(&refs) {
        assert!(info.has_feature(BlobFeatures::ZRAN) && info.has_feature(BlobFeatures::SEPARATE));
        assert_eq!(desc["mediaType"], nydus_build::BLOB_MEDIA_TYPE);
        assert_eq!(
            desc["annotations"]["containerd.io/snapshot/nydus-ref"],
            format!("sha256:{}", info.blob_id())
        );
        let ref_hex = desc["digest"].as_str().unwrap().trim_start_matches("sha256:");
        assert_eq!(info.get_blob_meta_id().unwrap(), ref_hex);
        let file = std::fs::File::open(nydus_build::blob_path(&out, ref_hex)).unwrap();
        let len = file.metadata().unwrap().len();
        let reader: std::sync::Arc<dyn nydus_storage::backend::BlobReader> =
            std::sync::Arc::new(FileReader { file, metrics: Default::default() });
        let prefix = cache.join(ref_hex);
        let meta = nydus_storage::meta::BlobCompressionContextInfo::new(
            prefix.to_str().unwrap(),
            info,
            Some(&reader),
            false,
        )
        .expect("Nydus loads the blob.meta from the ref layer");
        assert_eq!(meta.get_chunk_count(), info.chunk_count() as usize);
        // The ToC, found from the ref blob's end, is the one the bootstrap names.
        let bytes = std::fs::read(nydus_build::blob_path(&out, ref_hex)).unwrap();
        let toc = zran::rafs::tail::read_toc(&bytes, len).expect("the ref blob's ToC");
        let names: Vec<String> = toc.iter().map(|e| String::from_utf8_lossy(e.name()).into_owned()).collect();
        assert_eq!(names, ["blob.meta", "blob.meta.header", "blob.digest", "image.boot"]);
        let toc_size = info.blob_toc_size() as usize;
        assert_eq!(
            hex::encode(Sha256::digest(&bytes[bytes.len() - toc_size..])),
            hex::encode(info.blob_toc_digest())
        );
        // The original layer is the data, in the same layout.
        assert!(nydus_build::blob_path(&out, &info.blob_id()).exists());
    }
    let mut n = 0;
    rs.walk_directory::<PathBuf>(rs.superblock.root_ino(), None, &mut |_, _| {
        n += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(n, truth(name)["entries"].as_array().unwrap().len());

    // zran mounts it (the blob.meta from the bootstrap layer), and from a registry.
    mount_and_compare(name, &format!("oci:{}:nydus", out.display()));
    let reg = TestRegistry::start("plain");
    let remote = format!("{}/{name}:zran-nydus", reg.host());
    let said = generate_ref(&format!("{}/{name}", reg.host()), &remote);
    assert!(said.contains("0 original layers copied"), "{said}");
    assert!(inspect(&remote).contains("nydus oci-ref"));
    mount_and_compare(name, &remote);
    // Into another repository: the original layers are copied there.
    let other = format!("{}/elsewhere:nydus", reg.host());
    let said = generate_ref(&format!("{}/{name}", reg.host()), &other);
    assert!(said.contains(&format!("{originals} original layers copied")), "{said}");
    mount_and_compare(name, &other);
    nydusd_check(name, &reg, "elsewhere", &boot_of_remote(&other, work.path()));
}

/// The image.boot of a registry image (copied to a layout with skopeo).
fn boot_of_remote(remote: &str, work: &Path) -> PathBuf {
    let l = work.join("pulled");
    let o = Command::new("skopeo")
        .args([
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{remote}"),
            &format!("oci:{}:x", l.display()),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let p = work.join("remote.boot");
    std::fs::write(&p, layout_bootstrap(&l)).unwrap();
    p
}

fn nydusd() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NYDUSD") {
        return Some(PathBuf::from(p));
    }
    let p = PathBuf::from("/opt/nydus/bin/nydusd");
    p.exists().then_some(p)
}

/// nydusd (when installed) serves the bootstrap from the registry repository `repo`; its tree
/// equals the truth but where nydusd's own rules differ (tests/nydusd.rs), and where Nydus
/// 2.2's decoder stops at a gzip member's end.
fn nydusd_check(name: &str, reg: &TestRegistry, repo: &str, boot: &Path) {
    let Some(bin) = nydusd() else {
        eprintln!("nydusd not installed (/opt/nydus/bin/nydusd): skipping its part");
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let (cache, mnt) = (work.path().join("cache"), work.path().join("mnt"));
    std::fs::create_dir(&cache).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let before = now();
    let backend =
        json!({"type": "registry", "registry": {"scheme": "http", "host": reg.host(), "repo": repo}});
    let daemon = nydusd::serve(&bin, name, work.path(), backend, &cache, boot, &mnt);
    let after = now();
    let walked = common::truth::try_walk(&mnt, true);
    drop(daemon);
    let walked = walked.expect("truth.py --walk --unreadable-ok");
    let rules = common::truth::Rules {
        whole_seconds: false,
        nydusd_start: Some(before..=after),
        unreadable: Some("unreadable"),
    };
    let unreadable = common::truth::compare_with(name, &common::truth::by_path(&walked), &rules);
    assert!(
        unreadable.is_empty(),
        "{name}: nydusd cannot read {} files: {unreadable:?}\n{}",
        unreadable.len(),
        std::fs::read_to_string(work.path().join("nydusd.log")).unwrap_or_default()
    );
}

#[test]
fn nydus_images_start_lazily_through_containerd() {
    use common::containerd::{Sweep, containerd, ctr, ok, snapshotter, zran_mounts};
    let reg = TestRegistry::start("plain");
    let host = reg.host();
    let work = tempfile::tempdir().unwrap();
    let _sweep = Sweep(work.path().to_path_buf());
    let root = work.path().join("zran");
    let zsock = work.path().join("zran.sock");
    let _zran = snapshotter(&root, &zsock, &work.path().join("zran.log"), &[]);
    let (_ctd, sock) = containerd(work.path(), &zsock);

    // A native image made by Nydus's builder, and zran's own oci-ref form of python.
    let native = format!("{host}/python:nydus-native");
    let l = nydus_layout("python", Kind::Native);
    push_layout(&format!("oci:{}:latest", l.display()), &native);
    let oci_ref = format!("{host}/python:zran-nydus");
    generate_ref(&format!("{host}/python"), &oci_ref);
    let (m, _) = nydus_build::layout_manifest(&l);
    let native_blobs: Vec<(String, u64)> = m["layers"].as_array().unwrap()
        [..m["layers"].as_array().unwrap().len() - 1]
        .iter()
        .map(|d| {
            (
                d["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string(),
                d["size"].as_u64().unwrap(),
            )
        })
        .collect();
    let served = |blobs: &[(String, u64)]| -> u64 {
        let s = common::containerd::served(&reg);
        blobs.iter().map(|(h, _)| s.get(h).copied().unwrap_or(0)).sum()
    };

    let answer = ["/usr/bin/python3.11", "-c", "import json, email; print(json.dumps({'answer': 6 * 7}))"];
    for (image, via, id) in [(&native, "nydus-native", "n1"), (&oci_ref, "nydus-oci-ref", "r1")] {
        let before = served(&native_blobs);
        let base = common::containerd::layer_bytes_served(&reg, "python");
        ok(
            Command::new("ctr-remote")
                .arg("-a")
                .arg(&sock)
                .args(["image", "rpull", "--plain-http", "--snapshotter", "zran", image])
                .output()
                .unwrap(),
            "rpull",
        );
        assert_eq!(served(&native_blobs), before, "rpull downloaded data blobs");
        assert_eq!(common::containerd::layer_bytes_served(&reg, "python"), base, "rpull downloaded layers");
        let mut a = vec!["run", "--rm", "--snapshotter", "zran", image.as_str(), id];
        a.extend_from_slice(&answer);
        let started = std::time::Instant::now();
        assert_eq!(ok(ctr(&sock, &a), "run").trim(), r#"{"answer": 42}"#, "{image}");
        eprintln!(
            "{image}: ran in {:.2}s; {} bytes of native blobs and {} of the original layers served so far",
            started.elapsed().as_secs_f64(),
            served(&native_blobs),
            common::containerd::layer_bytes_served(&reg, "python")
        );
        // (The serving process writes its counters every second.)
        let mut stats = Value::Null;
        for _ in 0..40 {
            let o = Command::new(env!("CARGO_BIN_EXE_zran"))
                .arg("stats")
                .arg("--snapshotter")
                .arg(&root)
                .output();
            stats = serde_json::from_str(&ok(o.unwrap(), "zran stats")).unwrap();
            if stats["images"][image.as_str()]["mount"]["stats"]["chunks_verified"].as_u64().unwrap_or(0) > 0
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert_eq!(stats["images"][image.as_str()]["served_as"], via, "{stats}");
        let mount = &stats["images"][image.as_str()]["mount"];
        assert!(mount["stats"]["chunks_verified"].as_u64().unwrap_or(0) > 0, "{stats}");
        assert_eq!(mount["stats"]["digest_failures"], 0, "{stats}");
    }
    // Lazily: a part of the data was fetched.
    let total: u64 = native_blobs.iter().map(|b| b.1).sum();
    let fetched = served(&native_blobs);
    eprintln!("native blobs: {fetched} of {total} bytes served");
    assert!(fetched > 0 && fetched < total * 3 / 4, "{fetched} of {total} bytes of native blobs served");
    // (The containers' snapshots may be gone already, and the images' mounts with them.)
    assert!(zran_mounts(&root).len() <= 2, "one serving process per image");
}

#[test]
fn generate_nydus_oci_ref_of_every_test_image_mounts_as_the_truth() {
    for name in ["edge", "tarquirks", "paths", "umoci-insert"] {
        let work = tempfile::tempdir().unwrap();
        let out = work.path().join("ref");
        generate_ref(&format!("oci:{}", layouts().join(name).display()), &format!("oci:{}:n", out.display()));
        mount_and_compare(name, &format!("oci:{}:n", out.display()));
    }
}

#[test]
fn an_oci_ref_image_made_by_nydus_image_2_2_reads_the_truth() {
    let bin = PathBuf::from("/opt/nydus/bin/nydus-image");
    if !bin.exists() {
        eprintln!("nydus-image not installed (/opt/nydus/bin/nydus-image): skipping");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("ref");
    nydus_build::build_with_cli(&bin, &layouts().join("python"), &work.path().join("work"), &out);
    // nydus-image 2.2.0 puts its blob.meta 512 bytes into the ref blob (after an empty
    // "image.blob" header): read from where the bootstrap says.
    let boot = zran::rafs::reader::read_bootstrap(&layout_bootstrap(&out)).unwrap();
    assert!(!boot.blobs.is_empty() && boot.blobs.iter().all(|b| b.ci_offset == 512), "{:?}", boot.blobs);
    mount_and_compare("python", &format!("oci:{}", out.display()));
}

#[test]
fn zran_convert_output_reads_the_truth_through_zran_mount() {
    // Every compressor `zran convert` writes, and chunks shared across layers (stored once, in
    // the blob of the first layer that has them).
    for (name, compressor) in [("python", "zstd"), ("edge", "lz4"), ("paths", "none"), ("tarquirks", "zstd")]
    {
        let work = tempfile::tempdir().unwrap();
        let out = work.path().join("native");
        let image = format!("oci:{}", layouts().join(name).display());
        let target = format!("oci:{}:n", out.display());
        let o = zran(&["convert", &image, &target, "--compressor", compressor]);
        assert!(o.status.success(), "convert {name}: {}", String::from_utf8_lossy(&o.stderr));
        let says = inspect(&target);
        assert!(says.contains("nydus native"), "{says}");
        mount_and_compare(name, &target);
    }
}
