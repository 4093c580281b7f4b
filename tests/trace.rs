//! Start-up traces and prefetch, for real: python started from a FUSE mount of the python test
//! image (layers in a real registry behind zran's own delaying forwarder, 20 ms each way)
//! records its trace; the trace becomes the prefetch table of a new artifact; a fresh mount
//! of it fetches the traced files before python asks, and python's start then fetches
//! nothing. The bound on requests in flight holds throughout (the mount's counters).

mod common;
#[path = "common/mounted.rs"]
mod mounted;

use common::harness::{TestRegistry, layouts};
use mounted::{Mount, files, zran};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// `zran bench proxy` in front of the registry: every byte held 20 ms each way.
struct Delayed {
    child: Child,
    host: String,
}

impl Delayed {
    fn start(target: &str) -> Delayed {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let host = format!("127.0.0.1:{port}");
        let child = Command::new(env!("CARGO_BIN_EXE_zran"))
            .args(["bench", "proxy", "--listen", &host, "--target", target, "--delay", "20"])
            .spawn()
            .unwrap();
        let t = Instant::now();
        while std::net::TcpStream::connect(&host).is_err() {
            assert!(t.elapsed() < Duration::from_secs(10), "the forwarder did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Delayed { child, host }
    }
}

impl Drop for Delayed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const START: &str = "import json, email, http.client; print(json.dumps({'ok': 1}))";

fn python(mnt: &Path) {
    let o = Command::new("chroot").arg(mnt).args(["/usr/bin/python3.11", "-c", START]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), r#"{"ok": 1}"#);
}

fn generate(image: &str, out: &Path, extra: &[&str]) -> String {
    let mut args = vec!["generate", image, "-o", out.to_str().unwrap(), "--force"];
    args.extend_from_slice(extra);
    let o = zran(&args);
    assert!(o.status.success(), "generate {image}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stat(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

#[test]
fn a_recorded_trace_is_prefetched_before_the_start_asks() {
    let reg = TestRegistry::start("plain");
    let link = Delayed::start(&reg.host());
    let image = format!("{}/python", link.host);
    let work = tempfile::tempdir().unwrap();
    let (art, trace) = (work.path().join("art"), work.path().join("trace.json"));
    generate(&image, &art, &[]);

    // 1. Recorded: python's start, then the first 4 KiB of the biggest file, last.
    let truth = files("python");
    let (big, big_size, _) = truth.iter().max_by_key(|f| f.1).unwrap().clone();
    assert!(big_size > 3 << 20, "{big}: {big_size}");
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(
        art.to_str().unwrap(),
        cache.path(),
        &["--no-prefetch", "--record-trace", trace.to_str().unwrap()],
    );
    python(&m.mnt);
    let mut head = [0u8; 4096];
    std::os::unix::fs::FileExt::read_exact_at(&std::fs::File::open(m.mnt.join(&big)).unwrap(), &mut head, 0)
        .unwrap();
    let recorded = m.finish();
    assert!(stat(&recorded, "requests_in_flight_peak") <= zran::blob::MAX_IN_FLIGHT as u64, "{recorded}");

    let t: Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    assert_eq!(t["version"], 1);
    assert_eq!(t["chunk_size"], 1 << 20);
    let traced = t["files"].as_array().unwrap();
    let paths: Vec<&str> = traced.iter().map(|f| f["path"].as_str().unwrap()).collect();
    // The kernel runs the interpreter first; the loader's libraries, then modules follow.
    assert_eq!(paths[0], "/usr/bin/python3.11", "{paths:?}");
    assert!(paths.iter().any(|p| p.ends_with("/json/__init__.py")), "{paths:?}");
    assert!(paths.iter().any(|p| p.contains("/http/client")), "{paths:?}");
    assert_eq!(paths.last().copied(), Some(format!("/{big}").as_str()), "read last");
    assert_eq!(traced.last().unwrap()["chunks"], serde_json::json!([0]), "4 KiB of it: its first chunk");
    let size_of = |p: &str| truth.iter().find(|f| f.0 == p.trim_start_matches('/')).map(|f| f.1);
    let mut last_ms = 0;
    for f in traced {
        let p = f["path"].as_str().unwrap();
        assert_eq!(size_of(p), f["size"].as_u64(), "{p}: a regular file of the image, its size");
        let ms = f["at_ms"].as_u64().unwrap();
        assert!(ms >= last_ms, "first reads in order");
        last_ms = ms;
        let chunks: Vec<u64> = f["chunks"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).collect();
        assert!(!chunks.is_empty() && chunks.windows(2).all(|w| w[0] < w[1]), "{p}: {chunks:?}");
        assert!(*chunks.last().unwrap() < f["size"].as_u64().unwrap().div_ceil(1 << 20).max(1));
    }
    assert_eq!(stat(&recorded, "files_read"), traced.len() as u64, "every file read is in the trace");

    // 2. Stored: the trace's files, in its order, are the bootstrap's prefetch table.
    let traced_art = work.path().join("traced");
    generate(&image, &traced_art, &["--prefetch-trace", trace.to_str().unwrap()]);
    let v: Value =
        serde_json::from_slice(&zran(&["inspect", "--json", traced_art.to_str().unwrap()]).stdout).unwrap();
    assert_eq!(v["prefetch"], serde_json::json!(paths), "the prefetch table");

    // 3. Loaded and fetched at once by a fresh mount, before python asks.
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(traced_art.to_str().unwrap(), cache.path(), &[]);
    let t0 = Instant::now();
    let done = loop {
        let s = m.record()["stats"].clone();
        if stat(&s, "prefetch_chunks") > 0 && stat(&s, "prefetched_chunks") == stat(&s, "prefetch_chunks") {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "prefetch did not finish: {s}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(stat(&done, "files_read"), 0, "nothing read yet: {done}");
    python(&m.mnt);
    let s = m.finish();
    // python's start found every chunk it needed already fetched.
    assert_eq!(stat(&s, "requests"), stat(&done, "requests"), "the start fetched nothing: {done} then {s}");
    assert_eq!(stat(&s, "bytes_fetched"), stat(&done, "bytes_fetched"));
    assert!(stat(&s, "files_read") + 1 >= traced.len() as u64, "{s}");
    assert_eq!(stat(&s, "digest_failures"), 0);
    let peak = stat(&s, "requests_in_flight_peak");
    assert!(
        (2..=zran::blob::MAX_IN_FLIGHT as u64).contains(&peak),
        "prefetch goes out in parallel, bounded: {s}"
    );

    // What the prefetch fetched is what the image holds: the traced files read through a
    // mount on that cache equal the truth.
    let m = Mount::new(traced_art.to_str().unwrap(), cache.path(), &["--no-prefetch"]);
    for p in &paths {
        let b = std::fs::read(m.mnt.join(p.trim_start_matches('/'))).unwrap();
        let want = &truth.iter().find(|f| f.0 == p.trim_start_matches('/')).unwrap().2;
        assert_eq!(&hex::encode(Sha256::digest(&b)), want, "{p}");
    }
    let s = m.finish();
    assert_eq!(stat(&s, "requests"), 0, "all cached: {s}");
    let _ = layouts();
}

#[test]
fn mount_takes_a_trace_as_its_prefetch_list_and_refuses_a_bad_one() {
    let work = tempfile::tempdir().unwrap();
    let art = work.path().join("art");
    generate(&format!("oci:{}", layouts().join("python").display()), &art, &[]);
    let trace = work.path().join("t.json");
    std::fs::write(
        &trace,
        r#"{"version": 1, "image": "x", "chunk_size": 1048576, "window_seconds": 60, "files": [
            {"path": "/usr/bin/python3.11", "size": 1, "at_ms": 0, "chunks": [0]},
            {"path": "/not/there", "size": 1, "at_ms": 1, "chunks": [0]}]}"#,
    )
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(art.to_str().unwrap(), cache.path(), &["--prefetch-files", trace.to_str().unwrap()]);
    let t0 = Instant::now();
    let s = loop {
        let s = m.record()["stats"].clone();
        if stat(&s, "prefetch_chunks") > 0 && stat(&s, "prefetched_chunks") == stat(&s, "prefetch_chunks") {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{s}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // The interpreter's 6.8 MB are 7 chunks; the path not in the image is passed over.
    assert_eq!(stat(&s, "prefetch_chunks"), 7, "{s}");
    assert_eq!(stat(&s, "files_read"), 0, "{s}");
    drop(m);

    // A trace that is not one: the mount says which file and why.
    std::fs::write(&trace, r#"{"version": 1, "files": "#).unwrap();
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let o = zran(&[
        "mount",
        art.to_str().unwrap(),
        mnt.to_str().unwrap(),
        "--cache-dir",
        cache.path().to_str().unwrap(),
        "--prefetch-files",
        trace.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("t.json") && err.contains("not a trace"), "{err}");
    let o = zran(&[
        "generate",
        "oci:/nonexistent",
        "-o",
        work.path().join("x").to_str().unwrap(),
        "--prefetch-trace",
        trace.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
}
