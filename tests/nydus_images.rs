//! Nydus images served by `zran mount`: images made by Nydus's own builder (`nydus-builder`,
//! in process: native zstd/blake3 data blobs and oci-ref blobs over the original gzip layers,
//! merged and packaged as nydusify pushes them), mounted from an OCI layout and from a real
//! registry, walked and compared with the truth file by file. A changed byte in a native
//! blob fails the reads of its file only; images that claim to be Nydus but are not, a
//! truncated blob and a missing bootstrap layer are refused with clear errors.

mod common;
#[path = "common/nydus.rs"]
mod nydus_build;

use common::harness::{TestRegistry, layouts};
use common::truth::{compare, truth, walk};
use nydus_build::Kind;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn zran(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zran")).args(args).output().unwrap()
}

/// A live mount; unmounted (lazily if need be) when dropped.
struct Mount {
    mnt: PathBuf,
    cache: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mount {
    fn new(source: &str, cache: &Path) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let o = zran(&["mount", source, mnt.to_str().unwrap(), "--cache-dir", cache.to_str().unwrap()]);
        assert!(o.status.success(), "mount {source}: {}", String::from_utf8_lossy(&o.stderr));
        Mount { mnt, cache: cache.to_path_buf(), _dir: dir }
    }

    fn record(&self) -> Value {
        let o = zran(&["stats", self.mnt.to_str().unwrap(), "--cache-dir", self.cache.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    fn log(&self) -> String {
        let r = self.record();
        let dir = self.cache.join("mounts");
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|e| e == "json")
                && std::fs::read(&p)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    .map(|v| v["pid"].clone())
                    == Some(r["pid"].clone())
            {
                return std::fs::read_to_string(p.with_extension("log")).unwrap_or_default();
            }
        }
        String::new()
    }

    fn finish(self) -> Value {
        let o = zran(&["umount", self.mnt.to_str().unwrap(), "--cache-dir", self.cache.to_str().unwrap()]);
        assert!(o.status.success(), "umount: {}", String::from_utf8_lossy(&o.stderr));
        self.record()["stats"].clone()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if std::fs::metadata(self.mnt.join("..")).is_ok() {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).output();
        }
    }
}

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
    let m = Mount::new(source, cache.path());
    let got = walk(&m.mnt);
    let n = compare(name, &got, false);
    assert!(n > 10, "{name}: {n} entries");
    let stats = m.finish();
    assert_eq!(stats["digest_failures"], 0, "{name}: {stats}");
    assert_eq!(stats["read_errors"], 0, "{name}: {stats}");
    assert!(stats["chunks_fetched"].as_u64().unwrap() > 0, "{name}: {stats}");
    stats
}

#[test]
fn nydus_made_images_read_the_truth_from_a_layout() {
    for name in ["python"] {
        for kind in [Kind::Native, Kind::OciRef] {
            let l = nydus_layout(name, kind);
            mount_and_compare(name, &format!("oci:{}", l.display()));
        }
    }
}
