//! `zran mount` as the mount tests drive it (`tests/mount.rs`, `tests/nydus_images.rs`): the
//! binary run with arguments, a live [`Mount`] (its record, its log, unmounted when dropped),
//! and every regular file of the truth read through a mount.

#![allow(dead_code)]

use crate::common::truth::truth;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn zran(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zran")).args(args).output().unwrap()
}

/// A live mount; unmounted (lazily if need be) when dropped.
pub struct Mount {
    pub mnt: PathBuf,
    pub cache: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mount {
    /// `zran mount SOURCE` on a new directory, with `cache` and `extra` arguments.
    pub fn new(source: &str, cache: &Path, extra: &[&str]) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mut args = vec!["mount", source, mnt.to_str().unwrap(), "--cache-dir", cache.to_str().unwrap()];
        args.extend_from_slice(extra);
        let o = zran(&args);
        assert!(o.status.success(), "mount {source}: {}", String::from_utf8_lossy(&o.stderr));
        Mount { mnt, cache: cache.to_path_buf(), _dir: dir }
    }

    /// What `zran stats` says of the mount.
    pub fn record(&self) -> Value {
        let o = zran(&["stats", self.mnt.to_str().unwrap(), "--cache-dir", self.cache.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// Unmount and return the final counters.
    pub fn finish(self) -> Value {
        let o = zran(&["umount", self.mnt.to_str().unwrap(), "--cache-dir", self.cache.to_str().unwrap()]);
        assert!(o.status.success(), "umount: {}", String::from_utf8_lossy(&o.stderr));
        let r = self.record();
        assert_eq!(r["live"], false, "{r}");
        r["stats"].clone()
    }

    /// The serving process's log (empty when its record is not found).
    pub fn log(&self) -> String {
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
}

impl Drop for Mount {
    fn drop(&mut self) {
        if std::fs::metadata(self.mnt.join("..")).is_ok() {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).output();
        }
    }
}

/// Regular files of the truth: (path relative to the root, size, sha256).
pub fn files(name: &str) -> Vec<(String, u64, String)> {
    truth(name)["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "file")
        .map(|e| {
            (
                e["path"].as_str().unwrap().trim_start_matches('/').to_string(),
                e["size"].as_u64().unwrap(),
                e["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Read every regular file; the paths that failed (with EIO, never wrong bytes).
pub fn read_all(name: &str, mnt: &Path) -> Vec<String> {
    let mut failed = Vec::new();
    for (path, size, sha) in files(name) {
        match std::fs::read(mnt.join(&path)) {
            Ok(bytes) => {
                assert_eq!(bytes.len() as u64, size, "{path}");
                assert_eq!(hex::encode(Sha256::digest(&bytes)), sha, "{path}: wrong bytes served");
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{path}: {e}");
                failed.push(path);
            }
        }
    }
    failed
}
