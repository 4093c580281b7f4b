//! A running mount, found by its mount point and record: unmount it and wait for its serving
//! process to finish.

use super::MountError;
use super::record::{Record, process_exists};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long to wait for a serving process to finish once its mount is gone.
const WAIT: Duration = Duration::from_secs(10);

/// Is `p` a mount point (its device differs from its parent's, or it is `/`)?
pub fn is_mount_point(p: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::metadata(p)?;
    let parent = std::fs::metadata(p.join(".."))?;
    Ok(me.dev() != parent.dev() || me.ino() == parent.ino())
}

/// A mount that is there, with its record when one was found.
#[derive(Debug)]
pub struct Running {
    /// The canonical mount point.
    pub mountpoint: PathBuf,
    /// Its record under the cache directory, if it has a readable one.
    pub record: Option<Record>,
}

impl Running {
    /// Find the mount on `mountpoint`: it must be mounted; its record is read from `cache`.
    pub fn attach(mountpoint: &Path, cache: &Path) -> Result<Running, MountError> {
        let mnt = std::fs::canonicalize(mountpoint)
            .map_err(|source| MountError::Path { path: mountpoint.to_path_buf(), source })?;
        if !is_mount_point(&mnt).map_err(|source| MountError::Path { path: mnt.clone(), source })? {
            return Err(MountError::NotMounted(mnt));
        }
        let record = Record::read(cache, &mnt).ok();
        Ok(Running { mountpoint: mnt, record })
    }

    /// The mount a record names (one of `record::list`, say), to stop it.
    pub fn from_record(record: Record) -> Running {
        Running { mountpoint: record.mountpoint.clone(), record: Some(record) }
    }

    /// Unmount (`lazy`: detach now even if files are open), then wait for the serving process
    /// to finish: it writes its last counters on the way out.
    pub fn stop(self, lazy: bool) -> Result<(), MountError> {
        umount_path(&self.mountpoint, lazy)
            .map_err(|source| MountError::Unmount { path: self.mountpoint.clone(), source })?;
        if let Some(r) = self.record.filter(|r| r.live) {
            let deadline = Instant::now() + WAIT;
            while process_exists(r.pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}

/// Unmount what is mounted on `mountpoint` and wait for its serving process (`zran umount`).
pub fn unmount(mountpoint: &Path, cache: &Path, lazy: bool) -> Result<(), MountError> {
    Running::attach(mountpoint, cache)?.stop(lazy)
}

/// Unmount a path: `umount2`, or `fusermount3 -u` when not allowed to (not root).
pub(crate) fn umount_path(mnt: &Path, lazy: bool) -> std::io::Result<()> {
    let c = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EPERM) {
        // Not root: the setuid helper unmounts FUSE mounts of their owner.
        let mut cmd = std::process::Command::new("fusermount3");
        cmd.arg("-u");
        if lazy {
            cmd.arg("-z");
        }
        let o = cmd.arg(mnt).output()?;
        if o.status.success() {
            return Ok(());
        }
        return Err(std::io::Error::other(String::from_utf8_lossy(&o.stderr).trim().to_string()));
    }
    Err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_is_a_mount_point_and_a_fresh_directory_is_not() {
        assert!(is_mount_point(Path::new("/")).expect("stat /"));
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!is_mount_point(dir.path()).expect("stat"));
        let err = Running::attach(dir.path(), dir.path()).expect_err("not mounted");
        assert!(matches!(err, MountError::NotMounted(_)), "{err}");
        assert!(err.to_string().ends_with("is not mounted"));
    }
}
