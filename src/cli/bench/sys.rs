//! Processes, signals and mounts for `bench startup`: children started in their own process
//! group (a terminal's Ctrl-C reaches only the bench, which stops them itself), waits that give
//! up on SIGINT/SIGTERM or a timeout, stopping processes by PID, finding what the bench started
//! by its work directory in their command lines, and unmounting what is left below it. Calls
//! nothing else in the crate.

use anyhow::{Context, bail};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// SIGINT and SIGTERM set a flag that every wait checks (the default action, dying at once,
/// would leave the namespace and daemons behind).
pub fn catch_signals() -> anyhow::Result<()> {
    let flag = STOP.get_or_init(|| Arc::new(AtomicBool::new(false))).clone();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, flag.clone()).context("cannot install a signal handler")?;
    }
    Ok(())
}

pub fn interrupted() -> bool {
    STOP.get().is_some_and(|f| f.load(Ordering::Relaxed))
}

/// An error if a signal came.
pub fn check() -> anyhow::Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Poll `ready` every `poll` until it holds. Fails on a signal, when `child` (`what`, writing
/// to `log`) exits first (with the log's last lines), or after `limit` ("`what` did not `goal`
/// in N s").
pub fn wait_ready(
    child: &mut Child,
    what: &str,
    log: &Path,
    goal: &str,
    (limit, poll): (Duration, Duration),
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let end = Instant::now() + limit;
    while !ready() {
        check()?;
        if let Ok(Some(s)) = child.try_wait() {
            bail!(
                "{what} exited ({s}): {}",
                last_lines(&std::fs::read_to_string(log).unwrap_or_default(), 5)
            );
        }
        if Instant::now() > end {
            bail!("{what} did not {goal} in {} s", limit.as_secs());
        }
        std::thread::sleep(poll);
    }
    Ok(())
}

/// Sleep, waking early on a signal.
pub fn sleep(d: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check()?;
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(20)));
    }
    check()
}

/// Start a long-lived child in its own process group, its output to `log`.
pub fn spawn(cmd: &mut Command, log: &Path) -> anyhow::Result<Child> {
    spawn_split(cmd, log, log)
}

/// The same with stdout and stderr to files of their own (or the same file).
pub fn spawn_split(cmd: &mut Command, stdout: &Path, stderr: &Path) -> anyhow::Result<Child> {
    let open = |p: &Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .with_context(|| format!("cannot create {}", p.display()))
    };
    let _ = std::fs::remove_file(stdout);
    let _ = std::fs::remove_file(stderr);
    let out = open(stdout)?;
    let err = open(stderr)?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
    cmd.spawn().with_context(|| format!("cannot start {:?}", cmd.get_program()))
}

/// What a finished command printed.
pub struct Output {
    pub stdout: String,
}

/// Run a command to its end (its own process group, stdin closed), stopping it on a signal or
/// after `timeout`; an error carrying its stderr if it fails.
pub fn run(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    check()?;
    let what = describe(cmd);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let mut child = cmd.spawn().with_context(|| format!("cannot start {what}"))?;
    let collect = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = collect(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let err = collect(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if interrupted() || start.elapsed() > timeout {
            stop_child(&mut child, Duration::from_secs(5));
            let _ = out.join();
            let _ = err.join();
            if interrupted() {
                bail!("interrupted during {what}");
            }
            bail!("{what} did not finish in {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        bail!("{what} failed ({status}): {}", last_lines(&stderr, 6));
    }
    Ok(Output { stdout })
}

/// The command as a shell line, for messages.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// SIGTERM to the child's process group, then SIGKILL after `grace`; reaped.
pub fn stop_child(child: &mut Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let Ok(pid) = i32::try_from(child.id()) else { return };
    // SAFETY: signals to the process group this child leads (it was started with
    // process_group(0), so its group id is its pid); no memory is involved.
    unsafe { libc::kill(-pid, libc::SIGTERM) };
    let end = Instant::now() + grace;
    while Instant::now() < end {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let _ = child.wait();
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Stop a process that is not our child: SIGTERM, then SIGKILL after `grace`.
pub fn stop_pid(pid: i32, grace: Duration) {
    if pid <= 0 || !alive(pid) {
        return;
    }
    // SAFETY: a signal to one process by PID.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let end = Instant::now() + grace;
    while Instant::now() < end {
        if !alive(pid) || is_zombie(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('Z')))
        .unwrap_or(false)
}

/// This process and its ancestors (never stopped by a sweep: `sudo zran bench --work DIR`
/// names the directory too).
fn self_and_ancestors() -> Vec<i32> {
    let mut v = Vec::new();
    let mut pid = std::process::id() as i32;
    while pid > 1 && v.len() < 64 {
        v.push(pid);
        let parent = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| {
            s.rsplit_once(") ").and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<i32>().ok())
        });
        match parent {
            Some(p) => pid = p,
            None => break,
        }
    }
    v
}

/// Does a command line (NUL-separated) name the path `dir` or something below it? The other
/// bench's `/var/tmp/zran-bench-1234` is not below `/var/tmp/zran-bench-123`.
fn names(cmdline: &str, dir: &str) -> bool {
    let below = format!("{}/", dir.trim_end_matches('/'));
    cmdline.split('\0').any(|arg| arg == dir || arg.contains(&below))
}

/// PIDs of the processes whose command line names the path `needle` or below it (not this process or its
/// ancestors).
pub fn pids_naming(needle: &str) -> Vec<i32> {
    let skip = self_and_ancestors();
    let mut pids = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return pids };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if skip.contains(&pid) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        if names(&String::from_utf8_lossy(&cmdline), needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Stop every process whose command line names `dir` (containerd and its shims, snapshotters,
/// zran's serving processes, the registry and the forwarder).
pub fn stop_naming(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    for round in 0..3 {
        let pids = pids_naming(&needle);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            stop_pid(pid, if round == 0 { Duration::from_secs(5) } else { Duration::from_millis(500) });
        }
    }
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    let mut v: Vec<String> = std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .map(unescape_mount)
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect();
    v.sort_by_key(|m| std::cmp::Reverse(m.len()));
    v.dedup();
    v
}

/// /proc/mounts writes space, tab, newline and backslash as octal escapes.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Detach every mount below `dir` (FUSE mounts of dead servers, overlays, containerd's).
pub fn unmount_under(dir: &Path) {
    for _ in 0..3 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return;
        }
        for m in mounts {
            let Ok(c) = std::ffi::CString::new(m.clone()) else { continue };
            // SAFETY: a NUL-terminated path that outlives the call.
            let r = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            if r != 0 {
                tracing::debug!("cannot unmount {m}: {}", std::io::Error::last_os_error());
            }
        }
    }
}

/// Write back dirty pages and drop the page cache, dentries and inodes.
pub fn drop_caches() -> anyhow::Result<()> {
    // SAFETY: sync takes no arguments.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("cannot drop the page cache")
}

/// Is `name` an executable on PATH (or a path to one)?
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let exec = |p: &Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if name.contains('/') {
        let p = Path::new(name);
        return exec(p).then(|| p.to_path_buf());
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| exec(p)))
        .unwrap_or(None)
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_lines() {
        let d = "/var/tmp/zran-bench-123";
        assert!(super::names("zran\0bench\0proxy\0--label\0/var/tmp/zran-bench-123", d));
        assert!(super::names("containerd\0--config\0/var/tmp/zran-bench-123/run/c.toml", d));
        assert!(super::names("x\0--root=/var/tmp/zran-bench-123/run", d));
        assert!(!super::names("containerd\0--config\0/var/tmp/zran-bench-1234/run/c.toml", d));
        assert!(!super::names("zran\0--label\0/var/tmp/zran-bench-1234", d));
    }

    #[test]
    fn mount_escapes() {
        assert_eq!(super::unescape_mount("/a\\040b/c"), "/a b/c");
        assert_eq!(super::unescape_mount("/a\\\\"), "/a\\\\");
        assert_eq!(super::unescape_mount("/x\\134y"), "/x\\y");
    }
}
