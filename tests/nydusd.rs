//! Nydus's own daemon, `nydusd`, serving what `zran generate` writes: a FUSE mount of each
//! test image's bootstrap over a localfs backend that holds the original layer blobs and the
//! blob.meta files by digest, walked and compared with the truth (umoci's unpack), but for
//! nydusd's own rules (an mtime of 0 shows as the time it started; the root shows mode 0755).
//!
//! nydusd is not on a new machine (`cargo install nydus-rs --version 2.2.0 --locked --root
//! /opt/nydus` builds it in about 25 minutes), so the test is ignored unless asked for:
//! `cargo test --test nydusd -- --ignored` (`NYDUSD=PATH` names the binary; else `nydusd` on
//! PATH, else `/opt/nydus/bin/nydusd`). `tests/nydus_runtime.rs` runs the same filesystem
//! code in-process on every run.
//!
//! Nydus 2.2's decoder (nydus-utils 0.4) stops at the end of a gzip member: a file whose data
//! lies in a zran context that `zran.json` counts in `contexts_past_member_end` fails to read
//! (EIO) through it; the test allows that only for images that have such contexts.

mod common;
#[path = "common/nydusd.rs"]
mod nydusd;

use common::harness::{ESTARGZ_IMAGES, IMAGES, layout_blob, layouts};
use common::truth::{Rules, by_path, compare_with, drop_estargz_meta, truth};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

fn nydusd() -> PathBuf {
    if let Some(p) = std::env::var_os("NYDUSD") {
        return PathBuf::from(p);
    }
    let on_path = Command::new("sh").args(["-c", "command -v nydusd"]).output().unwrap();
    if on_path.status.success() {
        return PathBuf::from(String::from_utf8(on_path.stdout).unwrap().trim());
    }
    PathBuf::from("/opt/nydus/bin/nydusd")
}

fn serve(name: &str, art: &Path, layout: &Path, work: &Path) -> nydusd::Daemon {
    let backend = work.join("backend");
    let cache = work.join("cache");
    let mnt = work.join("mnt");
    for d in [&backend, &cache, &mnt] {
        std::fs::create_dir(d).unwrap();
    }
    let manifest: Value = serde_json::from_slice(&std::fs::read(art.join("zran.json")).unwrap()).unwrap();
    for l in manifest["layers"].as_array().unwrap() {
        let hex = l["digest"].as_str().unwrap().strip_prefix("sha256:").unwrap();
        std::os::unix::fs::symlink(layout_blob(layout, hex), backend.join(hex)).unwrap();
        if let Some(meta) = l.get("blob_meta").and_then(Value::as_str) {
            let digest = hex::encode(Sha256::digest(std::fs::read(art.join(meta)).unwrap()));
            std::os::unix::fs::symlink(art.join(meta), backend.join(digest)).unwrap();
        }
    }
    let backend = serde_json::json!({"type": "localfs", "localfs": {"dir": backend}});
    nydusd::serve(&nydusd(), name, work, backend, &cache, &art.join("image.boot"), &mnt)
}

fn walk(dir: &Path) -> Value {
    common::truth::try_walk(dir, true).expect("truth.py --walk --unreadable-ok")
}

/// Generate, serve through nydusd, compare; returns the number of paths and of unreadable files.
fn check(name: &str, args: &[&str]) -> (usize, usize) {
    let layout = layouts().join(name);
    let work = tempfile::tempdir().unwrap();
    let art = work.path().join("art");
    let o = Command::new(env!("CARGO_BIN_EXE_zran"))
        .args(["generate", &format!("oci:{}", layout.display()), "-o"])
        .arg(&art)
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "generate {name}: {}", String::from_utf8_lossy(&o.stderr));
    let manifest: Value = serde_json::from_slice(&std::fs::read(art.join("zran.json")).unwrap()).unwrap();
    let past_member_end: u64 = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.get("contexts_past_member_end").and_then(Value::as_u64))
        .sum();

    let now = || SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let before = now();
    let daemon = serve(name, &art, &layout, work.path());
    let after = now();
    let walked = walk(&daemon.mnt);
    drop(daemon);

    let mut got = by_path(&walked);
    let as_tar = args.contains(&"--ignore-toc");
    if as_tar {
        drop_estargz_meta(&mut got);
    }
    let rules = Rules {
        whole_seconds: name.ends_with("-estargz") && !as_tar,
        nydusd_start: Some(before..=after),
        unreadable: Some("unreadable"),
    };
    let unreadable = compare_with(name, &got, &rules);
    assert_eq!(walked["hardlink_groups"], truth(name)["hardlink_groups"], "{name}: hardlink groups");
    if past_member_end == 0 {
        assert!(unreadable.is_empty(), "{name}: nydusd cannot read {unreadable:?}");
    } else if !unreadable.is_empty() {
        eprintln!(
            "{name}: nydusd cannot read {unreadable:?} ({past_member_end} contexts past a member's end)"
        );
    }
    (got.len(), unreadable.len())
}

#[test]
#[ignore = "needs nydusd: cargo install nydus-rs --version 2.2.0 --locked --root /opt/nydus"]
fn nydusd_serves_every_test_image_as_unpacked() {
    let plain = IMAGES.iter().map(|&n| (n, &[][..]));
    let as_gzip = ESTARGZ_IMAGES.iter().map(|&n| (n, &["--ignore-toc"][..]));
    for (name, args) in plain.chain(as_gzip) {
        let (n, unreadable) = check(name, args);
        eprintln!("{name} {args:?}: {n} paths equal to the truth through nydusd, {unreadable} unreadable");
    }
}
