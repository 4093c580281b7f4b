//! `zran mount` for real: FUSE mounts of every test image (artifacts from `generate`, eStargz
//! images straight from their TOCs), from the OCI layout and from a real registry, walked and
//! compared with the truth file by file; random reads; a program run from the mount; a
//! tampered layer blob, a corrupted cache, a registry that goes away, a killed mount process,
//! and 16 readers of the same cold files. Artifacts stored beside their image (`push`,
//! `generate --push`) in a registry and in a layout, found by `mount IMAGE`; push rights;
//! a tampered stored artifact.

mod common;
#[path = "common/mounted.rs"]
mod mounted;

use common::faulty::{Fault, FaultyProxy};
use common::harness::{TestRegistry, layouts, repo_root};
use common::truth::{compare, walk};
use mounted::{Mount, files, read_all, zran};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn generate(image: &str, out: &Path) {
    let o = zran(&["generate", image, "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "generate {image}: {}", String::from_utf8_lossy(&o.stderr));
}

/// Random reads at random offsets and sizes, cold (before anything else reads the files);
/// checked against the whole files once the walk has checked those against the truth.
fn random_reads(name: &str, mnt: &Path) -> Vec<(PathBuf, u64, Vec<u8>)> {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ name.len() as u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut out = Vec::new();
    let fs: Vec<_> = files(name).into_iter().filter(|f| f.1 > 0).collect();
    for _ in 0..60 {
        let (path, size, _) = &fs[(next() % fs.len() as u64) as usize];
        let p = mnt.join(path);
        let f = std::fs::File::open(&p).unwrap();
        let offset = next() % size;
        let len = (next() % (3 << 20)).min(size - offset + 100) as usize;
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match f.read_at(&mut buf[got..], offset + got as u64).unwrap() {
                0 => break,
                n => got += n,
            }
        }
        buf.truncate(got);
        assert_eq!(got as u64, len.min((size - offset) as usize) as u64, "{name} {path}: short read");
        out.push((p, offset, buf));
    }
    out
}

fn check_random_reads(name: &str, reads: &[(PathBuf, u64, Vec<u8>)]) {
    for (p, offset, bytes) in reads {
        let whole = std::fs::read(p).unwrap();
        let o = *offset as usize;
        assert!(whole[o..o + bytes.len()] == bytes[..], "{name} {}: read at {offset} differs", p.display());
    }
}

/// The errno of `lgetxattr(path, name)`, or None when it succeeds.
fn getxattr_errno(path: &Path, name: &str) -> Option<i32> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: both strings are NUL-terminated and live across the call; a null buffer of size 0
    // asks only for the value's length.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
    (r < 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

/// An image with no extended attribute anywhere answers "not supported" for every name (the
/// kernel stops asking the mount); one with attributes answers "no such attribute" for a name
/// it lacks, on a file without any and on one with some.
fn check_xattr_answers(name: &str, walked: &Value, mnt: &Path) {
    let entries = walked["entries"].as_array().unwrap();
    let with = entries.iter().find(|e| e["xattrs"].as_object().is_some_and(|x| !x.is_empty()));
    let without = entries
        .iter()
        .find(|e| e["type"] == "file" && e["xattrs"].as_object().is_none_or(|x| x.is_empty()))
        .unwrap();
    let at = |e: &Value| mnt.join(e["path"].as_str().unwrap().trim_start_matches('/'));
    match with {
        None => {
            for _ in 0..3 {
                assert_eq!(
                    getxattr_errno(&at(without), "security.capability"),
                    Some(libc::EOPNOTSUPP),
                    "{name}"
                );
            }
        }
        Some(e) => {
            for f in [e, without] {
                assert_eq!(getxattr_errno(&at(f), "user.zran.absent"), Some(libc::ENODATA), "{name} {f}");
            }
            let present = e["xattrs"].as_object().unwrap().keys().next().unwrap();
            assert_eq!(getxattr_errno(&at(e), present), None, "{name} {e}");
        }
    }
}

/// Mount, read at random, walk, compare with the truth; returns the final counters.
fn mount_and_compare(name: &str, source: &str, extra: &[&str]) -> Value {
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(source, cache.path(), extra);
    let reads = random_reads(name, &m.mnt);
    let got = walk(&m.mnt);
    let n = compare(name, &got, name.ends_with("-estargz"));
    // The small images of lenient tar streams and resolved paths have a dozen or more.
    let least = if SMALL.contains(&name) { 10 } else { 50 };
    assert!(n > least, "{name}: {n} entries");
    check_xattr_answers(name, &got, &m.mnt);
    check_random_reads(name, &reads);
    let stats = m.finish();
    assert_eq!(stats["digest_failures"], 0, "{name}: {stats}");
    assert_eq!(stats["read_errors"], 0, "{name}: {stats}");
    assert!(stats["chunks_fetched"].as_u64().unwrap() > 0, "{name}: {stats}");
    stats
}

/// Images of lenient tar streams (`tarquirks`, `umoci-insert`: made by umoci itself) and of
/// names resolved inside the root (`paths`).
const SMALL: [&str; 3] = ["tarquirks", "umoci-insert", "paths"];

#[test]
fn lenient_tar_streams_and_resolved_paths_read_the_truth_through_the_mount() {
    let dir = layouts();
    for name in SMALL {
        let work = tempfile::tempdir().unwrap();
        let art = work.path().join("art");
        generate(&format!("oci:{}", dir.join(name).display()), &art);
        mount_and_compare(name, art.to_str().unwrap(), &[]);
    }
}

#[test]
fn every_image_reads_the_truth_through_the_mount() {
    let dir = layouts();
    let reg = TestRegistry::start("plain");
    for name in ["python", "edge", "python-estargz", "edge-estargz"] {
        let image = format!("oci:{}", dir.join(name).display());
        let work = tempfile::tempdir().unwrap();
        let art = work.path().join("art");
        generate(&image, &art);
        // The artifact, reading the layers from the layout, then from the registry.
        mount_and_compare(name, art.to_str().unwrap(), &[]);
        let remote = format!("{}/{name}", reg.host());
        let s = mount_and_compare(name, art.to_str().unwrap(), &["--image", &remote]);
        assert!(s["requests"].as_u64().unwrap() > 0);
        if name.ends_with("-estargz") {
            // Straight from the TOCs, no artifact.
            mount_and_compare(name, &image, &[]);
            mount_and_compare(name, &remote, &[]);
        }
    }
}

#[test]
fn a_plain_gzip_image_cannot_be_mounted_without_an_artifact() {
    let image = format!("oci:{}", layouts().join("python").display());
    let cache = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let o =
        zran(&["mount", &image, mnt.path().to_str().unwrap(), "--cache-dir", cache.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is gzip") && err.contains("zran generate"), "{err}");
    // Missing and busy mount points, and an artifact of another image.
    let o = zran(&["mount", &image, "/nonexistent/mnt"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/mnt"));
    let (_work, art, _) = artifact("edge");
    let m = Mount::new(art.to_str().unwrap(), cache.path(), &[]);
    let o = zran(&["mount", art.to_str().unwrap(), m.mnt.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("busy"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = zran(&["mount", art.to_str().unwrap(), mnt.path().to_str().unwrap(), "--image", &image]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("does not belong"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    m.finish();
}

#[test]
fn python_starts_from_the_mount() {
    let (_work, art, _) = artifact("python");
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(art.to_str().unwrap(), cache.path(), &[]);
    let o = Command::new("chroot")
        .arg(&m.mnt)
        .args(["/usr/bin/python3.11", "-c", "import json, email; print(json.dumps({'ok': 1}))"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), r#"{"ok": 1}"#);
    let size = m.record()["image_size"].as_u64().unwrap();
    let stats = m.finish();
    let fetched = stats["bytes_fetched"].as_u64().unwrap();
    assert!(fetched > 0 && fetched < size, "fetched {fetched} of {size}");
}

/// Every chunk the cache records as good matches its digest.
fn cache_is_honest(art: &Path, cache: &Path) -> usize {
    let b = zran::rafs::reader::read_bootstrap(&std::fs::read(art.join("image.boot")).unwrap()).unwrap();
    let mut recorded = 0;
    for (i, blob) in b.blobs.iter().enumerate() {
        let d = cache.join("blobs").join(&blob.id);
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_none_or(|x| x != "map") {
                continue;
            }
            let map = std::fs::read(&p).unwrap();
            let data = std::fs::File::open(p.with_extension("data")).unwrap();
            for c in b.chunk_table.iter().filter(|c| usize::from(c.blob) == i) {
                if map.get(c.ci as usize) == Some(&1) {
                    let mut buf = vec![0u8; c.uncompressed_size as usize];
                    data.read_exact_at(&mut buf, c.uncompressed_offset).unwrap();
                    assert_eq!(
                        <[u8; 32]>::from(Sha256::digest(&buf)),
                        c.digest,
                        "recorded chunk {} of {}",
                        c.ci,
                        blob.id
                    );
                    recorded += 1;
                }
            }
        }
    }
    recorded
}

/// An artifact of a test image in a temporary directory, and the digest of its biggest layer.
fn artifact(name: &str) -> (tempfile::TempDir, PathBuf, String) {
    let work = tempfile::tempdir().unwrap();
    let art = work.path().join("art");
    generate(&format!("oci:{}", layouts().join(name).display()), &art);
    let zj: Value = serde_json::from_slice(&std::fs::read(art.join("zran.json")).unwrap()).unwrap();
    let big = zj["layers"].as_array().unwrap().iter().max_by_key(|l| l["size"].as_u64().unwrap()).unwrap();
    let digest = big["digest"].as_str().unwrap().to_string();
    (work, art, digest)
}

#[test]
fn a_tampered_layer_is_never_served() {
    let reg = TestRegistry::start("plain");
    let (_work, art, digest) = artifact("python");
    let hex = digest.trim_start_matches("sha256:").to_string();
    let data = reg.blob_data(&hex);
    let mut bytes = std::fs::read(&data).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    std::fs::write(&data, &bytes).unwrap();

    let cache = tempfile::tempdir().unwrap();
    let remote = format!("{}/python", reg.host());
    let m = Mount::new(art.to_str().unwrap(), cache.path(), &["--image", &remote]);
    let failed = read_all("python", &m.mnt);
    let total = files("python").len();
    assert!(!failed.is_empty(), "a changed byte in the middle of a layer must fail some read");
    assert!(failed.len() < total / 4, "{} of {total} files failed", failed.len());
    let log = m.log();
    assert!(log.contains("failed verification") && log.contains(&hex[..12]), "{log}");
    let stats = m.finish();
    assert!(stats["digest_failures"].as_u64().unwrap() >= 2, "fetched twice: {stats}");
    assert!(cache_is_honest(&art, cache.path()) > 0);

    // With the blob put right, the same cache serves everything: no bad chunk was kept.
    bytes[at] ^= 0x55;
    std::fs::write(&data, &bytes).unwrap();
    let m = Mount::new(art.to_str().unwrap(), cache.path(), &["--image", &remote]);
    assert!(read_all("python", &m.mnt).is_empty());
    let stats = m.finish();
    assert_eq!(stats["digest_failures"], 0, "{stats}");
    assert!(stats["cache_hits"].as_u64().unwrap() > 0, "{stats}");
}

#[test]
fn a_corrupted_cache_is_caught_and_refetched() {
    let (_work, art, _) = artifact("edge");
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(art.to_str().unwrap(), cache.path(), &[]);
    assert!(read_all("edge", &m.mnt).is_empty());
    m.finish();
    let recorded = cache_is_honest(&art, cache.path());
    // One byte changed in the first recorded chunk of every blob's data file.
    let b = zran::rafs::reader::read_bootstrap(&std::fs::read(art.join("image.boot")).unwrap()).unwrap();
    let mut changed = 0;
    for (i, blob) in b.blobs.iter().enumerate() {
        for e in std::fs::read_dir(cache.path().join("blobs").join(&blob.id)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "data") {
                let c = b.chunk_table.iter().find(|c| usize::from(c.blob) == i).unwrap();
                let f = std::fs::OpenOptions::new().read(true).write(true).open(&p).unwrap();
                let mut byte = [0u8];
                f.read_exact_at(&mut byte, c.uncompressed_offset).unwrap();
                f.write_all_at(&[byte[0] ^ 1], c.uncompressed_offset).unwrap();
                changed += 1;
            }
        }
    }
    assert!(changed > 0 && recorded > changed);
    let m = Mount::new(art.to_str().unwrap(), cache.path(), &[]);
    let n = compare("edge", &walk(&m.mnt), false);
    assert!(n > 50);
    let stats = m.finish();
    assert_eq!(stats["digest_failures"].as_u64(), Some(changed as u64), "{stats}");
    assert!(stats["cache_hits"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["chunks_fetched"].as_u64().unwrap() >= changed as u64, "{stats}");
    cache_is_honest(&art, cache.path());
}

#[test]
fn a_killed_mount_leaves_a_cache_the_next_one_trusts_rightly() {
    let (_work, art, _) = artifact("python");
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(art.to_str().unwrap(), cache.path(), &[]);
    let all = files("python");
    // Readers busy when the process dies: some reads fail, none returns wrong bytes.
    let mnt = m.mnt.clone();
    let reader = std::thread::spawn(move || {
        let mut ok = 0;
        for (path, _, sha) in files("python") {
            if let Ok(b) = std::fs::read(mnt.join(&path)) {
                assert_eq!(hex::encode(Sha256::digest(&b)), sha, "{path}");
                ok += 1;
            }
        }
        ok
    });
    std::thread::sleep(Duration::from_millis(300));
    let pid = m.record()["pid"].as_u64().unwrap();
    assert!(Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
    let _ = reader.join().unwrap();
    let _ = Command::new("umount").arg("-l").arg(&m.mnt).status();
    drop(m);
    cache_is_honest(&art, cache.path());
    let m = Mount::new(art.to_str().unwrap(), cache.path(), &[]);
    let n = compare("python", &walk(&m.mnt), false);
    assert!(n >= all.len());
    let stats = m.finish();
    assert_eq!(stats["digest_failures"], 0, "{stats}");
    assert!(stats["cache_hits"].as_u64().unwrap() > 0, "the cache of the killed mount was used: {stats}");
}

#[test]
fn reads_fail_while_the_registry_is_away_and_work_when_it_is_back() {
    let reg = TestRegistry::start("plain");
    let (_work, art, _) = artifact("edge");
    let cache = tempfile::tempdir().unwrap();
    let remote = format!("{}/edge", reg.host());
    let m = Mount::new(art.to_str().unwrap(), cache.path(), &["--image", &remote]);
    reg.pause();
    let (path, _, sha) = files("edge").into_iter().max_by_key(|f| f.1).unwrap();
    let t = Instant::now();
    let e = std::fs::read(m.mnt.join(&path)).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(t.elapsed() < Duration::from_secs(60), "no hang: {:?}", t.elapsed());
    reg.resume();
    let b = std::fs::read(m.mnt.join(&path)).unwrap();
    assert_eq!(hex::encode(Sha256::digest(&b)), sha);
    let stats = m.finish();
    assert!(stats["read_errors"].as_u64().unwrap() >= 1, "{stats}");
}

#[test]
fn sequential_readers_are_read_ahead() {
    let (_work, art, _) = artifact("edge");
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(art.to_str().unwrap(), cache.path(), &["--no-prefetch"]);
    let (path, size, sha) = files("edge").into_iter().max_by_key(|f| f.1).unwrap();
    assert!(size > 8 << 20);
    let b = std::fs::read(m.mnt.join(&path)).unwrap();
    assert_eq!(hex::encode(Sha256::digest(&b)), sha);
    let stats = m.finish();
    assert!(stats["readahead_chunks"].as_u64().unwrap() >= 2, "{stats}");
    assert_eq!(stats["digest_failures"], 0, "{stats}");
}

#[test]
fn sixteen_readers_of_cold_files_fetch_each_chunk_once() {
    let (_work, art, _) = artifact("python");
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(art.to_str().unwrap(), cache.path(), &["--no-prefetch"]);
    let mut big: Vec<_> = files("python");
    big.sort_by_key(|f| std::cmp::Reverse(f.1));
    big.truncate(12);
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let (mnt, mut list) = (m.mnt.clone(), big.clone());
            let n = list.len();
            list.rotate_left(t % n);
            std::thread::spawn(move || {
                for (path, _, sha) in list {
                    let b = std::fs::read(mnt.join(&path)).unwrap();
                    assert_eq!(hex::encode(Sha256::digest(&b)), sha, "{path}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = m.finish();
    let recorded = cache_is_honest(&art, cache.path()) as u64;
    assert_eq!(stats["chunks_fetched"].as_u64(), Some(recorded), "each chunk stored once: {stats}");
    assert_eq!(stats["chunks_verified"].as_u64(), Some(recorded), "each chunk decoded once: {stats}");
    let _ = repo_root();
}

fn mounted(mnt: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(mnt.to_str().unwrap()))
}

#[test]
fn sigterm_unmounts_cleanly_even_with_a_file_open() {
    let (work, art, _) = artifact("edge");
    let cache = work.path().join("cache");
    for hold_a_file in [false, true] {
        let mnt = work.path().join(format!("mnt-{hold_a_file}"));
        std::fs::create_dir(&mnt).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_zran"))
            .args(["mount", art.to_str().unwrap(), mnt.to_str().unwrap(), "--foreground", "--cache-dir"])
            .arg(&cache)
            .spawn()
            .unwrap();
        let t = Instant::now();
        while !mounted(&mnt) {
            assert!(t.elapsed() < Duration::from_secs(30), "the mount did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        let (path, _, _) = files("edge").into_iter().max_by_key(|f| f.1).unwrap();
        let held = hold_a_file.then(|| std::fs::File::open(mnt.join(&path)).unwrap());
        assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
        let t = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "still serving after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{status}");
        assert!(!mounted(&mnt), "still mounted");
        drop(held);
    }
}

#[test]
fn an_unreachable_registry_is_a_clear_error() {
    let (work, art, _) = artifact("edge");
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let image = format!("127.0.0.1:{port}/edge");
    let t = Instant::now();
    let cache = work.path().join("cache");
    let o = zran(&[
        "mount",
        art.to_str().unwrap(),
        mnt.to_str().unwrap(),
        "--image",
        &image,
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&image) || err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(t.elapsed() < Duration::from_secs(60));
    assert!(!mounted(&mnt));
}

#[test]
fn a_chunk_spoiled_in_transit_is_fetched_again() {
    let reg = TestRegistry::start("plain");
    let (_work, art, digest) = artifact("python");
    let matching: &'static str = Box::leak(format!("/blobs/{digest}").into_boxed_str());
    // The first range request for the big layer gets one byte flipped past its headers.
    let proxy = FaultyProxy::start(reg.port, Fault::FlipByte(3000), 1, matching);
    let cache = tempfile::tempdir().unwrap();
    let remote = format!("127.0.0.1:{}/python", proxy.port);
    let m = Mount::new(art.to_str().unwrap(), cache.path(), &["--image", &remote, "--no-prefetch"]);
    assert!(read_all("python", &m.mnt).is_empty(), "the second fetch must succeed");
    let stats = m.finish();
    assert_eq!(proxy.injected.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(stats["digest_failures"].as_u64().unwrap() >= 1, "{stats}");
    assert_eq!(stats["read_errors"], 0, "{stats}");
    cache_is_honest(&art, cache.path());
}

/// Copy a test layout, so that a test may add to it.
fn layout_copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let work = tempfile::tempdir().unwrap();
    let dst = work.path().join(name);
    let s = Command::new("cp").arg("-a").arg(layouts().join(name)).arg(&dst).status().unwrap();
    assert!(s.success());
    (work, dst)
}

/// The referrers the fallback tag of `subject` lists in a registry repository.
fn fallback_index(host: &str, repo: &str, subject: &str) -> Value {
    let url = format!("http://{host}/v2/{repo}/manifests/{}", subject.replace(':', "-"));
    let o = Command::new("curl")
        .args(["-sSf", "-H", "Accept: application/vnd.oci.image.index.v1+json", &url])
        .output()
        .unwrap();
    assert!(o.status.success(), "{url}: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn manifest_digest(art: &Path) -> String {
    let z: Value = serde_json::from_slice(&std::fs::read(art.join("zran.json")).unwrap()).unwrap();
    z["manifest_digest"].as_str().unwrap().to_string()
}

#[test]
fn an_artifact_pushed_beside_its_image_is_what_mount_image_serves() {
    // A registry without the referrers API: the sha256-HEX tag lists the artifact, once.
    let reg = TestRegistry::start("plain");
    let image = format!("{}/python", reg.host());
    let work = tempfile::tempdir().unwrap();
    let art = work.path().join("art");
    let o = zran(&["generate", &image, "-o", art.to_str().unwrap(), "--push"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let subject = manifest_digest(&art);
    let index = fallback_index(&reg.host(), "python", &subject);
    let listed = index["manifests"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{index}");
    assert_eq!(listed[0]["artifactType"], "application/vnd.zran.artifact.v1");
    let o = zran(&["push", art.to_str().unwrap(), &image, "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pushed: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(pushed["artifact"], listed[0]["digest"], "the same artifact has the same digest");
    assert_eq!(fallback_index(&reg.host(), "python", &subject)["manifests"].as_array().unwrap().len(), 1);
    let o = zran(&["inspect", &image, "--json"]);
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["zran_artifact"], pushed["artifact"], "{report}");
    let o = zran(&["inspect", &format!("{}/edge", reg.host()), "--json"]);
    assert!(serde_json::from_slice::<Value>(&o.stdout).unwrap().get("zran_artifact").is_none());
    // Not beside another image.
    let o = zran(&["push", art.to_str().unwrap(), &format!("{}/edge", reg.host())]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not belong"));

    // `mount IMAGE` finds it, fetches it into the cache and serves the truth.
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(&image, cache.path(), &[]);
    let got = walk(&m.mnt);
    compare("python", &got, false);
    let pulled = cache
        .path()
        .join("artifacts")
        .join(pushed["artifact"].as_str().unwrap().trim_start_matches("sha256:"));
    assert_eq!(
        std::fs::read(pulled.join("image.boot")).unwrap(),
        std::fs::read(art.join("image.boot")).unwrap()
    );
    m.finish();

    // An OCI layout keeps it in index.json; the untagged reference still names the image.
    let (_lw, layout) = layout_copy("edge");
    let oci = format!("oci:{}", layout.display());
    let art2 = work.path().join("art2");
    let o = zran(&["generate", &oci, "-o", art2.to_str().unwrap(), "--push"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2, "{index}");
    mount_and_compare("edge", &oci, &[]);
    // skopeo still reads the layout with the artifact in it.
    let o = Command::new("skopeo").args(["inspect", "--raw", &format!("{oci}:latest")]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn pushing_takes_the_right_to_push_and_reading_does_not() {
    let reg = TestRegistry::start("token");
    let image = format!("{}/python", reg.host());
    let work = tempfile::tempdir().unwrap();
    let art = work.path().join("art");
    // Anonymous pulls are granted: generate works, the push is refused with a clear message.
    let o = zran(&["generate", &image, "-o", art.to_str().unwrap(), "--push"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no right to push") && err.contains("--creds"), "{err}");
    assert!(art.join("image.boot").is_file(), "the artifact is written before the push");
    let o = zran(&["push", art.to_str().unwrap(), &image, "--creds", "zran:zran-secret"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // An anonymous reader finds it.
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(&image, cache.path(), &[]);
    let o = Command::new("chroot")
        .arg(&m.mnt)
        .args(["/usr/bin/python3.11", "-c", "import json; print(json.dumps([1]))"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "[1]", "{}", String::from_utf8_lossy(&o.stderr));
    m.finish();
}

#[test]
fn a_tampered_artifact_is_refused_and_not_kept() {
    let reg = TestRegistry::start("plain");
    let image = format!("{}/python", reg.host());
    let work = tempfile::tempdir().unwrap();
    let art = work.path().join("art");
    let o = zran(&["generate", &image, "-o", art.to_str().unwrap(), "--push"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The bootstrap as pushed: zstd-compressed (formats/artifact-oci.md).
    let boot = zstd::bulk::compress(&std::fs::read(art.join("image.boot")).unwrap(), 10).unwrap();
    let hex = hex::encode(Sha256::digest(&boot));
    let stored = reg.blob_data(&hex);
    assert!(stored.is_file(), "the bootstrap is stored compressed");
    let mut bad = boot.clone();
    bad[boot.len() / 2] ^= 0x40;
    std::fs::write(&stored, &bad).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let args = ["mount", &image, mnt.path().to_str().unwrap(), "--cache-dir", cache.path().to_str().unwrap()];
    let o = zran(&args);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&hex) && err.contains("digest"), "{err}");
    let kept: Vec<_> = std::fs::read_dir(cache.path().join("artifacts"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(kept.is_empty(), "nothing of a bad artifact stays in the cache: {kept:?}");
    // Put right, the same cache serves it.
    std::fs::write(&stored, &boot).unwrap();
    let m = Mount::new(&image, cache.path(), &[]);
    assert!(m.mnt.join("usr/bin/python3.11").is_file());
    m.finish();
}

#[test]
fn a_registry_with_the_referrers_api_lists_the_artifact_itself() {
    // distribution 2.8 has no referrers API; the proxy lends it one (see common::faulty).
    let reg = TestRegistry::start("plain");
    let proxy = FaultyProxy::start(reg.port, Fault::ReferrersApi, 0, "");
    let image = format!("127.0.0.1:{}/python", proxy.port);
    let work = tempfile::tempdir().unwrap();
    let art = work.path().join("art");
    let o = zran(&["generate", &image, "-o", art.to_str().unwrap(), "--push"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let subject = manifest_digest(&art);
    let listed = proxy.referrers.lock().unwrap().get(&subject).cloned().unwrap_or_default();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["artifactType"], "application/vnd.zran.artifact.v1");
    // The registry acknowledged the subject: no fallback tag was written.
    let o = Command::new("curl")
        .args(["-sSf", &format!("http://{}/v2/python/tags/list", reg.host())])
        .output()
        .unwrap();
    let tags: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["latest"]), "{tags}");
    // Found through the API.
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(&image, cache.path(), &[]);
    compare("python", &walk(&m.mnt), false);
    m.finish();
}

#[test]
fn two_mounts_share_one_cache_at_the_same_time() {
    // As a snapshotter would run them: two containers of one image, one cache directory.
    let (_work, art, _) = artifact("python");
    let cache = tempfile::tempdir().unwrap();
    let a = Mount::new(art.to_str().unwrap(), cache.path(), &["--no-prefetch"]);
    let b = Mount::new(art.to_str().unwrap(), cache.path(), &["--no-prefetch"]);
    let readers: Vec<_> = [a.mnt.clone(), b.mnt.clone()]
        .into_iter()
        .enumerate()
        .map(|(i, mnt)| {
            std::thread::spawn(move || {
                let mut list = files("python");
                if i == 1 {
                    list.reverse();
                }
                for (path, size, sha) in list {
                    let bytes = std::fs::read(mnt.join(&path)).unwrap();
                    assert_eq!(bytes.len() as u64, size, "{path}");
                    assert_eq!(hex::encode(Sha256::digest(&bytes)), sha, "{path}");
                }
            })
        })
        .collect();
    for r in readers {
        r.join().unwrap();
    }
    let (sa, sb) = (a.finish(), b.finish());
    for s in [&sa, &sb] {
        assert_eq!(s["digest_failures"], 0, "{s}");
        assert_eq!(s["read_errors"], 0, "{s}");
    }
    let recorded = cache_is_honest(&art, cache.path());
    assert!(recorded > 0);
    // What they stored together serves a third mount without a fetch.
    let c = Mount::new(art.to_str().unwrap(), cache.path(), &["--no-prefetch"]);
    assert!(read_all("python", &c.mnt).is_empty());
    let sc = c.finish();
    assert_eq!(sc["bytes_fetched"], 0, "{sc}");
    assert!(sc["cache_hits"].as_u64().unwrap() > 0, "{sc}");
}

#[test]
fn cache_prune_spares_live_mounts_and_frees_the_rest() {
    let (_work, art, _) = artifact("python");
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path().to_str().unwrap();
    let m = Mount::new(art.to_str().unwrap(), cache.path(), &["--no-prefetch"]);
    let mut some = files("python");
    some.sort_by_key(|f| std::cmp::Reverse(f.1));
    some.truncate(5);
    for (path, _, _) in &some {
        std::fs::read(m.mnt.join(path)).unwrap();
    }
    let ls = |args: &[&str]| -> Value {
        let o = zran(&[&["cache"], args, &["--cache-dir", c, "--json"]].concat());
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let listed = ls(&["ls"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(listed.iter().all(|e| e["in_use"] == true));
    assert!(listed.iter().map(|e| e["chunks"].as_u64().unwrap()).sum::<u64>() > 0);
    // A stale artifact copy goes; nothing a live mount holds does, and it keeps serving.
    let stale = cache.path().join("artifacts/0123");
    std::fs::create_dir_all(&stale).unwrap();
    assert!(Command::new("touch").args(["-d", "2 hours ago"]).arg(&stale).status().unwrap().success());
    let pruned = ls(&["prune"]);
    assert_eq!(pruned["removed"], serde_json::json!([]), "{pruned}");
    assert_eq!(pruned["artifacts_removed"], serde_json::json!(["0123"]), "{pruned}");
    assert!(read_all("python", &m.mnt).is_empty());
    let stats = m.finish();
    assert_eq!(stats["read_errors"], 0, "{stats}");
    let kept = cache_is_honest(&art, cache.path());
    assert!(kept > 0);
    // Unused now: --keep with room to spare keeps all, plain prune frees all.
    assert_eq!(ls(&["prune", "--keep", "1G"])["removed"], serde_json::json!([]));
    let pruned = ls(&["prune"]);
    assert_eq!(pruned["removed"].as_array().unwrap().len(), 3, "{pruned}");
    assert!(pruned["freed_bytes"].as_u64().unwrap() > 1 << 20, "{pruned}");
    assert_eq!(ls(&["ls"]), serde_json::json!([]));
    // The next mount starts cold and is right.
    let m = Mount::new(art.to_str().unwrap(), cache.path(), &["--no-prefetch"]);
    assert!(read_all("python", &m.mnt).is_empty());
    let s = m.finish();
    assert_eq!(s["cache_hits"], 0, "{s}");
}

/// A blob.meta left in the registry when the artifact was fetched is fetched on its layer's
/// first read, checked against the bootstrap, kept in the artifact directory, and used; the
/// files read through it are right. (`zran mount IMAGE` leaves out parts over 1 MiB; here
/// every part is left out.)
#[test]
fn a_large_blob_meta_is_fetched_when_its_layer_is_first_read() {
    use zran::artifact::{self, publish};
    let reg = TestRegistry::start("plain");
    let image_name = format!("{}/python:latest", reg.host());
    let work = tempfile::tempdir().unwrap();
    let o = zran(&["generate", &image_name, "-o", work.path().join("art").to_str().unwrap(), "--push"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let open = || {
        let r: zran::oci::ImageRef = image_name.parse().unwrap();
        zran::oci::open(&r, &zran::oci::OpenOptions::default()).unwrap()
    };
    let image = open();
    let found = publish::find(&image).unwrap().expect("the artifact beside the image");
    let cache = work.path().join("cache");
    let (dir, opened) = publish::pull(&image, &found, &cache.join("artifacts"), 0).unwrap();
    assert!(dir.join(artifact::LAZY_PARTS).is_file());
    assert!(opened.metas.is_empty(), "no blob.meta was fetched");
    let missing: Vec<_> = opened.missing.values().map(|m| m.path.clone()).collect();
    assert_eq!(missing.len(), 3, "one per gzip layer");
    assert!(missing.iter().all(|p| !p.exists()));

    // A mount of that directory reads every file right, fetching each blob.meta once.
    let m = zran::mount::open(dir.to_str().unwrap(), Some(&image_name), &Default::default(), &cache).unwrap();
    let ids: Vec<_> = files("python")
        .into_iter()
        .map(|(path, size, sha)| {
            let id = m.bootstrap.tree.lookup(&zran::tar::normalize(path.as_bytes()));
            (id.unwrap_or_else(|| panic!("{path}")), path, size, sha)
        })
        .collect();
    let fs = zran::fuse::ImageFs::new(m.bootstrap, std::sync::Arc::new(m.blobs));
    let mut read = 0;
    for (id, path, size, sha) in ids {
        let bytes = fs.read_file(id, 0, size as u32).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&bytes)), sha, "{path}");
        read += 1;
    }
    assert!(read > 500);
    assert!(missing.iter().all(|p| p.exists()), "fetched blob.meta files are kept");
    // The directory now opens with every part, and a new mount fetches none.
    let again = artifact::open_dir(&dir).unwrap();
    assert_eq!((again.metas.len(), again.missing.len()), (3, 0));
}
