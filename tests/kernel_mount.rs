//! Warm mounts served by the kernel's EROFS: a cache filled by an earlier FUSE mount is
//! verified and then mounted by the kernel (the record says so, mountinfo shows `erofs`), and
//! the tree read through it equals the truth file by file (artifacts of gzip, zstd and
//! uncompressed images, eStargz and zstd:chunked straight from their TOCs, Nydus images); an incomplete cache stays on FUSE (and
//! `--fs-driver erofs` refuses it); a cache file with a byte changed keeps the mount on FUSE
//! until that chunk is fetched again, and no reader sees the changed byte; `zran umount`
//! ends a kernel mount and its process, `cache prune` spares its files while it lives; loop
//! devices when asked for, cleared when unmounted.

mod common;
#[path = "common/mounted.rs"]
mod mounted;
#[path = "common/nydus.rs"]
mod nydus_build;

use common::harness::layouts;
use common::truth::{compare, walk};
use mounted::{Mount, files, read_all, zran};
use serde_json::Value;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn generate(name: &str, out: &Path) {
    let image = format!("oci:{}", layouts().join(name).display());
    let o = zran(&["generate", &image, "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "generate {image}: {}", String::from_utf8_lossy(&o.stderr));
}

/// The mountinfo line fields of `mnt`: (filesystem type, source).
fn mountinfo(mnt: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = mnt.canonicalize().ok()?;
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let sep = f.iter().position(|&x| x == "-")?;
        (Path::new(f[4]) == want).then(|| (f[sep + 1].to_string(), f[sep + 2].to_string()))
    })
}

/// The file behind a loop device (or the path itself when it is not one).
fn backing(source: &str) -> String {
    match source.strip_prefix("/dev/") {
        Some(dev) if dev.starts_with("loop") => {
            let sys = PathBuf::from("/sys/block").join(dev).join("loop/backing_file");
            std::fs::read_to_string(sys).unwrap().trim().to_string()
        }
        _ => source.to_string(),
    }
}

fn process_exists(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Fill the cache through FUSE: a mount on it is served by FUSE (the cache is not complete
/// yet), and every file is read (and checked) through it.
fn fill(name: &str, source: &str, cache: &Path) {
    let m = Mount::new(source, cache, &[]);
    let r = m.record();
    assert_eq!(r["served"], "fuse", "{name}: {r}");
    assert!(mountinfo(&m.mnt).is_some_and(|(t, _)| t.starts_with("fuse")), "{name}");
    assert!(read_all(name, &m.mnt).is_empty(), "{name}");
    m.finish();
}

/// Whether the whole tree (every entry, every regular file's bytes) read through `m` is the
/// truth's.
fn reads_the_truth(name: &str, m: &Mount, whole_seconds: bool) {
    let got = walk(&m.mnt);
    assert!(compare(name, &got, whole_seconds) > 50, "{name}");
    assert!(read_all(name, &m.mnt).is_empty(), "{name}");
}

/// Unmount with `zran umount`: the mount goes and its serving process ends.
fn umount_and_wait(m: Mount) -> Value {
    let pid = m.record()["pid"].as_u64().unwrap();
    let mnt = m.mnt.clone();
    let stats = m.finish();
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_exists(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!process_exists(pid), "the serving process {pid} is still there");
    assert!(mountinfo(&mnt).is_none(), "{} is still mounted", mnt.display());
    stats
}

#[test]
fn a_complete_cache_is_served_by_the_kernel_and_reads_the_truth() {
    let dir = layouts();
    let work = tempfile::tempdir().unwrap();
    let mut cases: Vec<(&str, String, bool)> = Vec::new();
    for name in ["python", "edge", "python-zstd", "python-tar"] {
        let art = work.path().join(name);
        generate(name, &art);
        cases.push((name, art.to_str().unwrap().to_string(), false));
    }
    // Straight from their TOCs: the bootstrap exists in memory only.
    for (name, whole_seconds) in
        [("python-estargz", true), ("edge-estargz", true), ("python-zstdchunked-v2", false)]
    {
        if !dir.join(name).join("index.json").is_file() {
            eprintln!("skipped {name}: not among the test images");
            continue;
        }
        cases.push((name, format!("oci:{}", dir.join(name).display()), whole_seconds));
    }
    for (name, source, whole_seconds) in cases {
        let cache = tempfile::tempdir().unwrap();
        fill(name, &source, cache.path());
        let m = Mount::new(&source, cache.path(), &[]);
        let r = m.record();
        assert_eq!(r["served"], "kernel-erofs", "{name}: {r}");
        let (fstype, boot) = mountinfo(&m.mnt).unwrap();
        assert_eq!(fstype, "erofs", "{name}");
        // (A kernel before 6.12 mounts no regular file: then the source is a loop device on it.)
        let boot = backing(&boot);
        if source.starts_with("oci:") {
            let kept = cache.path().canonicalize().unwrap().join("bootstraps");
            assert!(boot.starts_with(kept.to_str().unwrap()), "{name}: mounted {boot}");
        } else {
            assert_eq!(PathBuf::from(&boot), Path::new(&source).join("image.boot").canonicalize().unwrap());
        }
        // Every chunk was checked once, none fetched.
        assert_eq!(r["stats"]["chunks_verified"], r["stats"]["cache_hits"], "{name}: {r}");
        assert!(r["stats"]["cache_hits"].as_u64().unwrap() > 0, "{name}: {r}");
        reads_the_truth(name, &m, whole_seconds);
        let stats = umount_and_wait(m);
        assert_eq!(stats["chunks_fetched"], 0, "{name}: {stats}");
        assert_eq!(stats["digest_failures"], 0, "{name}: {stats}");
    }
}

#[test]
fn an_incomplete_cache_is_served_by_fuse_and_erofs_alone_refuses_it() {
    let work = tempfile::tempdir().unwrap();
    let art = work.path().join("art");
    generate("python", &art);
    let art = art.to_str().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(art, cache.path(), &["--no-prefetch"]);
    let mut some = files("python");
    some.sort_by_key(|f| std::cmp::Reverse(f.1));
    for (path, _, _) in some.iter().take(5) {
        std::fs::read(m.mnt.join(path)).unwrap();
    }
    m.finish();
    let m = Mount::new(art, cache.path(), &["--no-prefetch"]);
    let r = m.record();
    assert_eq!(r["served"], "fuse", "{r}");
    assert!(r["fuse_reason"].as_str().unwrap().contains("chunks"), "{r}");
    assert!(mountinfo(&m.mnt).is_some_and(|(t, _)| t.starts_with("fuse")));
    reads_the_truth("python", &m, false);
    m.finish();
    // Complete now: --fs-driver fusedev still serves it through FUSE.
    let m = Mount::new(art, cache.path(), &["--fs-driver", "fusedev"]);
    assert_eq!(m.record()["served"], "fuse");
    m.finish();
    // An empty cache with --fs-driver erofs: a clear error, nothing mounted.
    let empty = tempfile::tempdir().unwrap();
    let mnt = empty.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let c = empty.path().join("cache");
    let o = zran(&[
        "mount",
        art,
        mnt.to_str().unwrap(),
        "--cache-dir",
        c.to_str().unwrap(),
        "--fs-driver",
        "erofs",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot serve") && err.contains("kernel") && err.contains("0 of the image's"),
        "{err}"
    );
    assert!(mountinfo(&mnt).is_none());
}

#[test]
fn a_changed_cache_byte_is_caught_before_the_switch_and_never_read() {
    let work = tempfile::tempdir().unwrap();
    let art = work.path().join("art");
    generate("edge", &art);
    let source = art.to_str().unwrap();
    let cache = tempfile::tempdir().unwrap();
    fill("edge", source, cache.path());
    // One byte changed in the largest recorded-good chunk of the first blob's data file.
    let b = zran::rafs::reader::read_bootstrap(&std::fs::read(art.join("image.boot")).unwrap()).unwrap();
    let c = b.chunk_table.iter().filter(|c| c.blob == 0).max_by_key(|c| c.uncompressed_size).unwrap();
    let dir = cache.path().join("blobs").join(&b.blobs[0].id);
    let data = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "data"))
        .unwrap();
    let map = data.with_extension("map");
    assert_eq!(std::fs::read(&map).unwrap()[c.ci as usize], 1, "recorded good");
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&data).unwrap();
    let at = c.uncompressed_offset + u64::from(c.uncompressed_size) / 2;
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[byte[0] ^ 0x5a], at).unwrap();
    drop(f);
    // Caught by the check before the switch: served by FUSE, counted, forgotten.
    let m = Mount::new(source, cache.path(), &[]);
    let r = m.record();
    assert_eq!(r["served"], "fuse", "{r}");
    assert!(r["fuse_reason"].as_str().unwrap().contains("did not match"), "{r}");
    assert_eq!(r["stats"]["digest_failures"], 1, "{r}");
    assert_eq!(std::fs::read(&map).unwrap()[c.ci as usize], 0, "forgotten");
    // Every file right through FUSE (the changed chunk fetched again), never the changed byte.
    reads_the_truth("edge", &m, false);
    let stats = m.finish();
    assert_eq!(stats["digest_failures"], 1, "{stats}");
    assert!(stats["chunks_fetched"].as_u64().unwrap() >= 1, "{stats}");
    let mut now = [0u8];
    std::fs::File::open(&data).unwrap().read_exact_at(&mut now, at).unwrap();
    assert_eq!(now, byte, "the fetch put the right byte back");
    // Refetched and verified: the next mount is the kernel's, and right.
    let m = Mount::new(source, cache.path(), &[]);
    assert_eq!(m.record()["served"], "kernel-erofs");
    reads_the_truth("edge", &m, false);
    let stats = umount_and_wait(m);
    assert_eq!(stats["digest_failures"], 0, "{stats}");
    // --fs-driver erofs on a changed cache: refused, the chunk forgotten.
    let f = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    f.write_all_at(&[byte[0] ^ 1], at).unwrap();
    drop(f);
    let t = tempfile::tempdir().unwrap();
    let o = zran(&[
        "mount",
        source,
        t.path().to_str().unwrap(),
        "--cache-dir",
        cache.path().to_str().unwrap(),
        "--fs-driver",
        "erofs",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("did not match their digest"), "{err}");
    // The chunk is named in the log.
    assert!(
        err.contains("cached chunk does not match its digest") && err.contains(&format!("chunk={}", c.ci)),
        "{err}"
    );
    assert!(mountinfo(t.path()).is_none());
    assert_eq!(std::fs::read(&map).unwrap()[c.ci as usize], 0, "forgotten");
}

#[test]
fn a_kernel_mount_keeps_its_files_from_prune_and_umount_ends_it() {
    let work = tempfile::tempdir().unwrap();
    let art = work.path().join("art");
    generate("python", &art);
    let source = art.to_str().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path().to_str().unwrap();
    fill("python", source, cache.path());
    let m = Mount::new(source, cache.path(), &[]);
    assert_eq!(m.record()["served"], "kernel-erofs");
    let cache_json = |args: &[&str]| -> Value {
        let o = zran(&[&["cache"], args, &["--cache-dir", c, "--json"]].concat());
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let listed = cache_json(&["ls"]);
    assert!(listed.as_array().unwrap().iter().all(|e| e["in_use"] == true), "{listed}");
    let pruned = cache_json(&["prune"]);
    assert_eq!(pruned["removed"], serde_json::json!([]), "{pruned}");
    assert_eq!(cache_json(&["ls"]), listed);
    reads_the_truth("python", &m, false);
    // The serving process stays while mounted; `zran stats` shows it live.
    let r = m.record();
    assert_eq!((r["live"].clone(), r["served"].clone()), (Value::Bool(true), "kernel-erofs".into()));
    assert!(process_exists(r["pid"].as_u64().unwrap()));
    umount_and_wait(m);
    // Unused now: prune frees them.
    let pruned = cache_json(&["prune"]);
    assert_eq!(pruned["removed"].as_array().unwrap().len(), listed.as_array().unwrap().len(), "{pruned}");
}

#[test]
fn loop_devices_serve_it_when_asked_and_clear_themselves() {
    let work = tempfile::tempdir().unwrap();
    let art = work.path().join("art");
    generate("edge", &art);
    let source = art.to_str().unwrap();
    let cache = tempfile::tempdir().unwrap();
    fill("edge", source, cache.path());
    let m = Mount::new(source, cache.path(), &["--loop-devices"]);
    assert_eq!(m.record()["served"], "kernel-erofs");
    let (fstype, dev) = mountinfo(&m.mnt).unwrap();
    assert_eq!(fstype, "erofs");
    assert!(dev.starts_with("/dev/loop"), "{dev}");
    let sys = PathBuf::from("/sys/block").join(dev.trim_start_matches("/dev/")).join("loop/backing_file");
    let behind = std::fs::read_to_string(&sys).unwrap();
    assert_eq!(behind.trim(), art.join("image.boot").canonicalize().unwrap().to_str().unwrap());
    reads_the_truth("edge", &m, false);
    umount_and_wait(m);
    // Autoclear: the loop device lets go of the bootstrap once unmounted.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(&sys).is_ok_and(|b| !b.trim().is_empty()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(std::fs::read_to_string(&sys).is_err(), "{} still attached", dev);
}

#[test]
fn sigterm_unmounts_a_kernel_mount() {
    let work = tempfile::tempdir().unwrap();
    let art = work.path().join("art");
    generate("edge", &art);
    let source = art.to_str().unwrap();
    let cache = tempfile::tempdir().unwrap();
    fill("edge", source, cache.path());
    let m = Mount::new(source, cache.path(), &[]);
    let r = m.record();
    assert_eq!(r["served"], "kernel-erofs");
    let pid = r["pid"].as_u64().unwrap();
    // SAFETY: kill has no memory effects; the pid is the serving process this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_exists(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!process_exists(pid));
    assert!(mountinfo(&m.mnt).is_none());
    assert_eq!(m.record()["live"], false);
}

/// Nydus images too: `zran convert` output (native blobs, zstd and lz4, chunks shared across
/// layers) and images Nydus's own builder made (native blake3 blobs, oci-ref over the gzip
/// layers): their bootstraps, written once into the cache, mounted by the kernel over the
/// cache's data files.
#[test]
fn nydus_images_are_served_by_the_kernel_too() {
    let work = tempfile::tempdir().unwrap();
    let mut sources = Vec::new();
    for (name, compressor) in [("python", "zstd"), ("edge", "lz4")] {
        let out = work.path().join(format!("{name}-native"));
        let image = format!("oci:{}", layouts().join(name).display());
        let target = format!("oci:{}:n", out.display());
        let o = zran(&["convert", &image, &target, "--compressor", compressor]);
        assert!(o.status.success(), "convert {name}: {}", String::from_utf8_lossy(&o.stderr));
        sources.push((name, target));
    }
    for kind in [nydus_build::Kind::Native, nydus_build::Kind::OciRef] {
        let out = work.path().join(format!("python-{kind:?}"));
        nydus_build::build(&layouts().join("python"), kind, &work.path().join(format!("w-{kind:?}")), &out);
        sources.push(("python", format!("oci:{}", out.display())));
    }
    for (name, source) in sources {
        let cache = tempfile::tempdir().unwrap();
        fill(name, &source, cache.path());
        let m = Mount::new(&source, cache.path(), &[]);
        let r = m.record();
        assert_eq!(r["served"], "kernel-erofs", "{source}: {r}");
        assert_eq!(mountinfo(&m.mnt).unwrap().0, "erofs");
        reads_the_truth(name, &m, false);
        umount_and_wait(m);
    }
}
