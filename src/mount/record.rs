//! The record of a mount, `CACHE/mounts/<key>.json` (`formats/chunk-cache.md`): which process
//! serves which mount point, from what, and its counters. The serving process rewrites it
//! every second and when the mount ends; anyone reads it back or lists them all.

use super::MountError;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};

/// What `CACHE/mounts/<key>.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The serving process.
    pub pid: u32,
    /// The canonical mount point.
    pub mountpoint: PathBuf,
    /// What was mounted, as the user named it.
    pub source: String,
    /// The image the layers are read from.
    pub image: String,
    /// Bytes of the image's layers.
    pub image_size: u64,
    /// Unix seconds.
    pub started: u64,
    /// False once the mount has ended.
    pub live: bool,
    /// The counters (`blob::Stats`).
    pub stats: serde_json::Value,
    /// How it is served: `fuse`, or `kernel-erofs` (the kernel's EROFS on the complete cache).
    #[serde(default = "fuse")]
    pub served: String,
    /// Why a FUSE mount is not served by the kernel (`--fs-driver auto`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuse_reason: Option<String>,
}

fn fuse() -> String {
    super::kernel::SERVED_FUSE.to_string()
}

/// The directory of mount records under a cache directory.
pub fn records_dir(cache: &Path) -> PathBuf {
    cache.join("mounts")
}

/// Where the record of the mount on `mountpoint` (canonical) is kept: its key is the first
/// 8 bytes, in hex, of the sha256 of the path.
pub fn record_path(cache: &Path, mountpoint: &Path) -> PathBuf {
    let key = hex::encode(&Sha256::digest(mountpoint.as_os_str().as_encoded_bytes())[..8]);
    records_dir(cache).join(format!("{key}.json"))
}

impl Record {
    /// Parse a record.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Record, MountError> {
        serde_json::from_slice(bytes)
            .map_err(|source| MountError::BadRecord { path: path.to_path_buf(), source })
    }

    /// Read the record of the mount on `mountpoint` (canonical).
    pub fn read(cache: &Path, mountpoint: &Path) -> Result<Record, MountError> {
        let path = record_path(cache, mountpoint);
        let bytes = std::fs::read(&path).map_err(|source| MountError::NoRecord {
            mountpoint: mountpoint.to_path_buf(),
            cache: cache.to_path_buf(),
            source,
        })?;
        Record::parse(&bytes, &path)
    }

    /// Write the record where it belongs, atomically (`.json.tmp`, then renamed).
    pub fn write(&self, cache: &Path) -> std::io::Result<()> {
        let path = record_path(cache, &self.mountpoint);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)
    }

    /// The record as `zran stats` prints it.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }

    /// Is its serving process still there (and the mount not over)?
    pub fn running(&self) -> bool {
        self.live && process_exists(self.pid)
    }
}

/// Whether process `pid` exists and has not ended (a zombie its parent has not reaped yet,
/// as the snapshotter leaves the serving processes it started, counts as ended: a kernel
/// mount outlives its serving process, so the mount's answers cannot tell).
pub(crate) fn process_exists(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    // SAFETY: kill with signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0 && !zombie(pid)
}

/// Is `pid` a zombie (state `Z` in `/proc/PID/stat`, after the command name's parenthesis)?
fn zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// Every record under `cache` (ended mounts too), sorted by mount point; files that are not
/// records (temporary files, logs, unreadable or unparsable ones) are left out.
pub fn list(cache: &Path) -> Result<Vec<Record>, MountError> {
    let dir = records_dir(cache);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(MountError::Records { path: dir, source }),
    };
    let mut records = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| MountError::Records { path: dir.clone(), source })?;
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| Record::parse(&b, &path).map_err(|e| e.to_string()))
        {
            Ok(r) => records.push(r),
            Err(e) => tracing::debug!(path = %path.display(), "not a mount record: {e}"),
        }
    }
    records.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(mnt: &str) -> Record {
        Record {
            pid: std::process::id(),
            mountpoint: PathBuf::from(mnt),
            source: "oci:/images/x:latest".into(),
            image: "oci:/images/x:latest".into(),
            image_size: 1234,
            started: 1_700_000_000,
            live: true,
            stats: serde_json::json!({"bytes_fetched": 5, "requests": 1}),
            served: "fuse".into(),
            fuse_reason: None,
        }
    }

    #[test]
    fn a_zombie_is_not_a_running_process() {
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !zombie(pid as i32) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!process_exists(pid), "an exited, unreaped child");
        child.wait().expect("reap");
        assert!(process_exists(std::process::id()));
    }

    #[test]
    fn record_paths_are_keyed_by_the_mount_point() {
        let cache = Path::new("/c");
        let a = record_path(cache, Path::new("/mnt/a"));
        assert_eq!(a.parent(), Some(Path::new("/c/mounts")));
        let name = a.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        assert_eq!(name.len(), 16 + ".json".len());
        assert!(name.ends_with(".json"));
        assert_ne!(a, record_path(cache, Path::new("/mnt/b")));
        assert_eq!(a, record_path(cache, Path::new("/mnt/a")));
    }

    #[test]
    fn records_parse_with_every_field_and_refuse_others() {
        let text = r#"{"pid": 7, "mountpoint": "/m", "source": "s", "image": "i", "image_size": 3,
            "started": 9, "live": false, "stats": {"cache_hits": 2}}"#;
        let r = Record::parse(text.as_bytes(), Path::new("x.json")).expect("a record");
        assert_eq!((r.pid, r.live, r.image_size, r.started), (7, false, 3, 9));
        assert_eq!(r.stats["cache_hits"], 2);
        let err = Record::parse(b"{\"pid\": 7}", Path::new("x.json")).expect_err("fields missing");
        assert!(err.to_string().contains("x.json"));
        assert!(Record::parse(b"not json", Path::new("x.json")).is_err());
    }

    #[test]
    fn written_records_read_back_and_are_listed() {
        let cache = tempfile::tempdir().expect("tempdir");
        assert!(list(cache.path()).expect("no records yet").is_empty());
        std::fs::create_dir_all(records_dir(cache.path())).expect("mkdir");
        let (b, a) = (sample("/mnt/b"), sample("/mnt/a"));
        b.write(cache.path()).expect("write");
        a.write(cache.path()).expect("write");
        // Not records: a log, a torn temporary file, garbage with the right name.
        std::fs::write(records_dir(cache.path()).join("0000000000000000.log"), "log").expect("log");
        std::fs::write(records_dir(cache.path()).join("1111111111111111.json.tmp"), "{").expect("tmp");
        std::fs::write(records_dir(cache.path()).join("2222222222222222.json"), "{").expect("bad");
        assert_eq!(Record::read(cache.path(), Path::new("/mnt/a")).expect("read"), a);
        assert_eq!(list(cache.path()).expect("list"), vec![a.clone(), b]);
        assert!(a.running());
        let ended = Record { live: false, ..a };
        assert!(!ended.running());
        let err = Record::read(cache.path(), Path::new("/mnt/none")).expect_err("no record");
        assert!(err.to_string().starts_with("no zran mount record for /mnt/none"));
    }

    #[test]
    fn the_json_is_what_stats_prints() {
        let r = sample("/m");
        let json = r.to_json().expect("json");
        let fields: Vec<&str> = json.lines().filter_map(|l| l.trim().split('"').nth(1)).collect();
        assert_eq!(
            &fields[..8],
            ["pid", "mountpoint", "source", "image", "image_size", "started", "live", "stats"]
        );
    }
}
