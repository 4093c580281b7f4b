//! One serving process per image, shared by every container of that image: `zran mount` of the
//! pinned image reference on `ROOT/images/<manifest hex>/mnt`, started in its own session so
//! that it outlives a restart or a `kill -9` of the snapshotter (as nydusd outlives
//! nydus-snapshotter). The mount records under the cache directory say which process serves
//! which mount point; a mount whose process died is detached and mounted again.

use crate::mount::{self, MountError, Record, Running};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// How serving processes are started.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The zran executable.
    pub exe: PathBuf,
    /// Arguments after `mount SOURCE MOUNTPOINT` (cache, registry, threads, prefetch).
    pub args: Vec<OsString>,
    /// Where each image's start-up trace is recorded (`<key>.json`), when asked for.
    pub traces: Option<PathBuf>,
}

/// The images being served.
pub struct Images {
    dir: PathBuf,
    cache: PathBuf,
    launch: Launch,
    lock: Mutex<()>,
}

/// The state of an image's mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Live,
    /// Mounted, but its serving process is gone (the mount point fails with ENOTCONN).
    Dead,
    Absent,
}

/// Whether `mnt` is served. The kernel answers `stat` of a dead FUSE mount's root from its
/// cache, so the serving process's record is asked too, and the directory is listed.
fn state(mnt: &Path, cache: &Path) -> State {
    let dead = |e: &std::io::Error| e.raw_os_error() == Some(libc::ENOTCONN);
    match std::fs::metadata(mnt) {
        Ok(_) => match mount::is_mount_point(mnt) {
            Ok(true) => {
                if Record::read(cache, mnt).is_ok_and(|r| !r.running()) {
                    return State::Dead;
                }
                match std::fs::read_dir(mnt) {
                    Err(e) if dead(&e) => State::Dead,
                    _ => State::Live,
                }
            }
            Err(e) if dead(&e) => State::Dead,
            _ => State::Absent,
        },
        Err(e) if dead(&e) => State::Dead,
        Err(_) => State::Absent,
    }
}

impl Images {
    pub fn new(root: &Path, cache: &Path, launch: Launch) -> Images {
        Images { dir: root.join("images"), cache: cache.to_path_buf(), launch, lock: Mutex::new(()) }
    }

    /// Where image `key` (its manifest digest's hex) is mounted.
    pub fn mountpoint(&self, key: &str) -> PathBuf {
        self.dir.join(key).join("mnt")
    }

    /// The mount point of image `key` if it is served now.
    pub fn live(&self, key: &str) -> Option<PathBuf> {
        let mnt = self.mountpoint(key);
        (state(&mnt, &self.cache) == State::Live).then_some(mnt)
    }

    /// Make sure `reference` (pinned by digest; `key` its hex) is served, from the artifact
    /// directory `dir` when given, and return its mount point: a live mount is used as it is, a
    /// dead one is detached and mounted again.
    pub fn ensure(&self, key: &str, reference: &str, dir: Option<&Path>) -> Result<PathBuf, MountError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mnt = self.mountpoint(key);
        match state(&mnt, &self.cache) {
            State::Live => return Ok(mnt),
            State::Dead => {
                tracing::warn!(image = %reference, mountpoint = %mnt.display(), "its serving process is gone; mounting it again");
                let _ = crate::mount::control::umount_path(&mnt, true);
            }
            State::Absent => {}
        }
        std::fs::create_dir_all(&mnt).map_err(|source| MountError::Path { path: mnt.clone(), source })?;
        let mut cmd = std::process::Command::new(&self.launch.exe);
        cmd.arg("mount");
        match dir {
            Some(d) => cmd.arg(d).arg(&mnt).arg("--image").arg(reference),
            None => cmd.arg(reference).arg(&mnt),
        };
        cmd.arg("--foreground").args(&self.launch.args);
        if let Some(d) = &self.launch.traces {
            cmd.arg("--record-trace").arg(d.join(format!("{key}.json")));
        }
        mount::detach(cmd)?;
        tracing::info!(image = %reference, mountpoint = %mnt.display(), "serving");
        Ok(mnt)
    }

    /// The keys of the images with a directory here (served, or left from an earlier run).
    pub fn known(&self) -> BTreeSet<String> {
        std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).collect()
            })
            .unwrap_or_default()
    }

    /// Stop serving image `key` (unmount, wait for its process) and remove its directory.
    pub fn stop(&self, key: &str) -> Result<(), MountError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mnt = self.mountpoint(key);
        match state(&mnt, &self.cache) {
            State::Live => {
                let running = match Record::read(&self.cache, &mnt) {
                    Ok(r) => Running::from_record(r),
                    Err(_) => Running::attach(&mnt, &self.cache)?,
                };
                if let Err(e) = running.stop(false) {
                    tracing::warn!(mountpoint = %mnt.display(), "{e}; detaching it lazily");
                    let _ = crate::mount::control::umount_path(&mnt, true);
                }
            }
            State::Dead => {
                let _ = crate::mount::control::umount_path(&mnt, true);
            }
            State::Absent => {}
        }
        let dir = self.dir.join(key);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(MountError::Path { path: dir, source }),
        }
        tracing::info!(image = key, "stopped serving");
        Ok(())
    }

    /// The record of image `key`'s mount (counters), if it has one.
    pub fn record(&self, key: &str) -> Option<Record> {
        Record::read(&self.cache, &self.mountpoint(key)).ok()
    }
}
