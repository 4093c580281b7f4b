//! nydusd 2.2.0 serving a bootstrap, for the tests that read images through it
//! (`tests/convert.rs`, `tests/nydus_images.rs`, `tests/nydusd.rs`): its config written, the
//! daemon started on a mountpoint and waited for until the kernel lists its mount; unmounted
//! and stopped when dropped.

#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nydusd and its mount, unmounted and stopped when dropped.
pub struct Daemon {
    pub child: Child,
    pub mnt: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3").arg("-u").arg(&self.mnt).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the kernel lists a mount on `mnt`.
pub fn mounted(mnt: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let m = mnt.to_str().unwrap();
    info.lines().any(|l| l.split(' ').nth(4) == Some(m))
}

/// Start nydusd (`bin`) serving `boot` on `mnt` from `backend` (the config's "backend"
/// object), its file cache in `cache`, its config and log `nydusd.json` and `nydusd.log` in
/// `work`; return once mounted. Fails with the log if it exits first, or after 20 s.
pub fn serve(
    bin: &Path,
    name: &str,
    work: &Path,
    backend: Value,
    cache: &Path,
    boot: &Path,
    mnt: &Path,
) -> Daemon {
    let config = serde_json::json!({
        "version": 2,
        "id": name,
        "backend": backend,
        "cache": {"type": "filecache", "filecache": {"work_dir": cache}},
        "rafs": {"mode": "direct", "enable_xattr": true},
    });
    let config_path = work.join("nydusd.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let log = work.join("nydusd.log");
    let child = Command::new(bin)
        .arg("--config")
        .arg(&config_path)
        .arg("--mountpoint")
        .arg(mnt)
        .arg("--bootstrap")
        .arg(boot)
        .args(["--log-level", "warn", "--rlimit-nofile", "0"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let mut daemon = Daemon { child, mnt: mnt.to_path_buf() };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !mounted(mnt) {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("{name}: nydusd exited ({status}) before mounting:\n{log}");
        }
        assert!(Instant::now() < deadline, "{name}: nydusd did not mount in 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon
}
