//! Serving as a separate process: the caller's command (a `zran mount ... --foreground`, or
//! whatever runs `serve`) is started in a new session with the write end of a pipe, and
//! `detach` returns once the server writes "ok" on it (the mount is live) or exits. Forking a
//! process with threads is not safe, so the server is always a fresh executable.

use super::MountError;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;

/// The environment variable naming the descriptor a detached server reports readiness on.
pub(crate) const READY_FD: &str = "ZRAN_MOUNT_READY_FD";

/// Is this process a server started by `detach` (and so to report readiness, not to detach)?
pub fn detached_child() -> bool {
    std::env::var_os(READY_FD).is_some()
}

/// Start `cmd` (a server that calls `serve`) in a new session, its standard input closed, and
/// wait until it says the mount is live. A server that fails first has said why on its
/// standard error: its exit status is the error (`ServerExited` for an exit code).
pub fn detach(mut cmd: std::process::Command) -> Result<(), MountError> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(MountError::Pipe(std::io::Error::last_os_error()));
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    cmd.env(READY_FD, "3").stdin(std::process::Stdio::null());
    let w = write_end.as_raw_fd();
    // SAFETY: only async-signal-safe calls (setsid, dup2) run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            if libc::dup2(w, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(MountError::Spawn)?;
    drop(write_end);
    let mut got = Vec::new();
    let _ = std::fs::File::from(read_end).read_to_end(&mut got);
    if got.starts_with(b"ok") {
        return Ok(());
    }
    let status = child.wait().map_err(MountError::Wait)?;
    match status.code() {
        Some(code) if code != 0 => Err(MountError::ServerExited(code)),
        _ => Err(MountError::Failed(status)),
    }
}

/// In a detached server whose mount is live: tell the waiting parent, and send standard
/// output and error to `log` (the parent's terminal is not ours). Does nothing in a server
/// that was not detached.
pub(crate) fn report_ready(log: &Path) {
    let Some(fd) = std::env::var_os(READY_FD).and_then(|v| v.to_str()?.parse::<i32>().ok()) else {
        return;
    };
    // SAFETY: the parent passed this descriptor to us open, and nothing else owns it.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let _ = f.write_all(b"ok");
    drop(f);
    if let Ok(f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
        // SAFETY: dup2 onto the standard descriptors, from a descriptor we own.
        unsafe {
            libc::dup2(f.as_raw_fd(), 1);
            libc::dup2(f.as_raw_fd(), 2);
        }
    }
}
