//! Serving a mount in this process: mount the filesystem (the kernel's EROFS when the cache
//! is complete and good, `kernel`; FUSE otherwise), keep the record, prefetch, and unmount
//! cleanly on SIGTERM, SIGINT or SIGHUP, or return when the mount is taken away.

use super::MountError;
use super::control::umount_path;
use super::detach::report_ready;
use super::kernel::{self, FsDriver, KernelMount, SERVED_FUSE, SERVED_KERNEL, SwitchOptions};
use super::open::Mountable;
use super::record::{Record, record_path, records_dir};
use super::trace::{self, Trace, TracedFile};
use crate::fuse::{ImageFs, Served};
use crate::rafs::reader::Bootstrap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How a mount is served.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Threads serving FUSE requests (at least one).
    pub threads: usize,
    /// Paths in the image (one per line) to fetch in the background once mounted, after the
    /// bootstrap's own prefetch list.
    pub prefetch_files: Option<PathBuf>,
    /// Prefetch nothing.
    pub no_prefetch: bool,
    /// Record a start-up trace of the reads of the first `trace_window` to this file.
    pub record_trace: Option<PathBuf>,
    pub trace_window: Duration,
    /// FUSE, the kernel's EROFS, or the kernel when the cache is complete (`kernel`).
    pub fs_driver: FsDriver,
    /// For the kernel's EROFS: loop devices even where the kernel mounts files.
    pub loop_devices: bool,
}

/// How long a start-up trace records, unless told.
pub const TRACE_WINDOW: Duration = Duration::from_secs(60);

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            threads: 8,
            prefetch_files: None,
            no_prefetch: false,
            record_trace: None,
            trace_window: TRACE_WINDOW,
            fs_driver: FsDriver::Auto,
            loop_devices: false,
        }
    }
}

/// Make the directory of mount records (and the cache directory) exist.
pub fn create_records_dir(cache: &Path) -> Result<(), MountError> {
    std::fs::create_dir_all(records_dir(cache))
        .map_err(|source| MountError::CacheDir { path: cache.to_path_buf(), source })
}

static STOP: AtomicBool = AtomicBool::new(false);

/// Serve `m` on `mountpoint` (canonical, checked with `check_mountpoint`) until it is unmounted
/// or this process is signalled; `source` is what the record says was mounted. The record is
/// written under `cache` once the mount is live, every second, and when it ends. In a server
/// started by `detach`, the parent hears that the mount is live and output goes to the log.
pub fn serve(
    m: Mountable,
    mountpoint: &Path,
    source: &str,
    cache: &Path,
    opts: &ServeOptions,
) -> Result<(), MountError> {
    let mnt = mountpoint;
    create_records_dir(cache)?;
    let prefetch_ids = prefetch_list(opts.prefetch_files.as_deref(), &m.bootstrap)?;
    register_signals()?;
    // A trace records the reads FUSE sees; the kernel's EROFS would answer them itself.
    let driver = match (opts.fs_driver, &opts.record_trace) {
        (FsDriver::Auto, Some(_)) => FsDriver::Fusedev,
        (d, _) => d,
    };
    let switch = SwitchOptions {
        driver,
        loop_devices: opts.loop_devices,
        threads: std::thread::available_parallelism().map_or(2, |n| n.get().min(4)),
    };
    let fuse_reason = match kernel::switch(&m, mnt, cache, switch)? {
        Ok(k) => return serve_kernel(m, k, mnt, source, cache),
        Err(why) => {
            if driver == FsDriver::Auto {
                tracing::info!(mountpoint = %mnt.display(), "serving through FUSE: {why}");
            }
            why
        }
    };
    let blobs = Arc::new(m.blobs);
    let mut fs = ImageFs::new(m.bootstrap, blobs.clone());
    if opts.record_trace.is_some() {
        fs.record_reads(opts.trace_window);
    }
    let fs = Arc::new(fs);

    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(format!("zran:{}", m.name)),
        fuser::MountOption::Subtype("zran".into()),
        fuser::MountOption::RO,
        fuser::MountOption::DefaultPermissions,
    ];
    if root {
        config.mount_options.extend([fuser::MountOption::Suid, fuser::MountOption::Dev]);
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    let session = fuser::spawn_mount(Served(fs.clone()), mnt, &config)
        .map_err(|source| MountError::Mount { path: mnt.to_path_buf(), source })?;

    let record = record_of(mnt, source, &m.name, m.image_size, SERVED_FUSE, Some(fuse_reason.clone()));
    let write_record = |live: bool| write_record(cache, &record, live, &blobs.stats);
    write_record(true);
    tracing::info!(mountpoint = %mnt.display(), image = %m.name, "mounted");

    // The mount is live: tell a waiting parent, and stop writing to its terminal.
    report_ready(&record_path(cache, mnt).with_extension("log"));

    if !opts.no_prefetch && !prefetch_ids.is_empty() {
        let fs = fs.clone();
        std::thread::Builder::new()
            .name("zran-prefetch".into())
            .spawn(move || fs.prefetch(&prefetch_ids))
            .map_err(MountError::PrefetchThread)?;
    }

    // The trace is written again each second while it grows, and once more at the end.
    let mut traced = None;
    let write_trace = |traced: &mut Option<u64>| {
        let (Some(path), Some(log)) = (&opts.record_trace, fs.read_log()) else { return };
        let v = log.version();
        if *traced == Some(v) {
            return;
        }
        *traced = Some(v);
        let t = Trace {
            version: trace::VERSION,
            image: m.name.clone(),
            chunk_size: fs.chunk_size(),
            window_seconds: opts.trace_window.as_secs_f64(),
            files: fs
                .traced()
                .into_iter()
                .map(|(path, size, at_ms, chunks)| TracedFile { path, size, at_ms, chunks })
                .collect(),
        };
        if let Err(e) = t.write(path) {
            tracing::warn!("{e}");
        }
    };
    write_trace(&mut traced);

    let mut last = Instant::now();
    while !STOP.load(Ordering::SeqCst) && !session.guard.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
        if last.elapsed() >= Duration::from_secs(1) {
            write_record(true);
            write_trace(&mut traced);
            last = Instant::now();
        }
    }
    let r = if session.guard.is_finished() {
        session.join()
    } else {
        tracing::info!(mountpoint = %mnt.display(), "unmounting");
        unmount_session(session, mnt)
    };
    // Chunks fetched in the last moments, recorded before the process ends.
    blobs.sync();
    write_record(false);
    write_trace(&mut traced);
    r.map_err(|source| MountError::Serving { path: mnt.to_path_buf(), source })
}

/// This process's record of its mount at `mnt`, started now; `live` and the counters are
/// set at each [`write_record`].
fn record_of(
    mnt: &Path,
    source: &str,
    image: &str,
    image_size: u64,
    served: &str,
    fuse_reason: Option<String>,
) -> Record {
    Record {
        pid: std::process::id(),
        mountpoint: mnt.to_path_buf(),
        source: source.to_string(),
        image: image.to_string(),
        image_size,
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        live: true,
        stats: serde_json::Value::Null,
        served: served.into(),
        fuse_reason,
    }
}

/// Write `record` with `live` and the counters `stats` (a failure is logged: the mount goes
/// on without it).
fn write_record(cache: &Path, record: &Record, live: bool, stats: &crate::blob::Stats) {
    let r = Record { live, stats: serde_json::to_value(stats).unwrap_or_default(), ..record.clone() };
    if let Err(e) = r.write(cache) {
        tracing::warn!("cannot write {}: {e}", record_path(cache, &r.mountpoint).display());
    }
}

/// Serve a kernel EROFS mount: keep the record (the counters of the check before the switch)
/// and the cache files' locks until the mount is taken away or this process is signalled
/// (then unmount it, lazily when busy).
fn serve_kernel(
    m: Mountable,
    k: KernelMount,
    mnt: &Path,
    source: &str,
    cache: &Path,
) -> Result<(), MountError> {
    let record = record_of(mnt, source, &m.name, m.image_size, SERVED_KERNEL, None);
    let write_record = |live: bool| write_record(cache, &record, live, &m.blobs.stats);
    write_record(true);
    tracing::info!(
        mountpoint = %mnt.display(),
        image = %m.name,
        via = ?k.via,
        boot = %k.boot.display(),
        devices = k.devices.len(),
        "mounted with the kernel's EROFS on the complete cache"
    );
    report_ready(&record_path(cache, mnt).with_extension("log"));
    let mut last = Instant::now();
    while !STOP.load(Ordering::SeqCst) && kernel::still_mounted(&k, mnt) {
        std::thread::sleep(Duration::from_millis(50));
        if last.elapsed() >= Duration::from_secs(1) {
            write_record(true);
            last = Instant::now();
        }
    }
    let mut r = Ok(());
    if kernel::still_mounted(&k, mnt) {
        tracing::info!(mountpoint = %mnt.display(), "unmounting");
        if let Err(e) = umount_path(mnt, false) {
            tracing::warn!("{}: {e}; detaching it lazily", mnt.display());
            r = umount_path(mnt, true);
        }
    }
    write_record(false);
    // The cache files' locks go only now, with the mount.
    drop(m);
    r.map_err(|source| MountError::Serving { path: mnt.to_path_buf(), source })
}

fn register_signals() -> Result<(), MountError> {
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT, signal_hook::consts::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { signal_hook::low_level::register(sig, || STOP.store(true, Ordering::SeqCst)) }
            .map_err(MountError::Signals)?;
    }
    Ok(())
}

/// Unmount (lazily when busy: the signal asked us to go) and wait for the session to end.
fn unmount_session(session: fuser::BackgroundSession, mnt: &Path) -> std::io::Result<()> {
    let guard = session.guard;
    if let Err(e) = umount_path(mnt, false) {
        tracing::warn!("{}: {e}; detaching it lazily", mnt.display());
        umount_path(mnt, true)?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !guard.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The inodes to prefetch: the bootstrap's list, then the paths of `file` (a start-up trace or
/// a list of paths, one per line; paths not in the image warned about).
fn prefetch_list(file: Option<&Path>, b: &Bootstrap) -> Result<Vec<usize>, MountError> {
    let mut ids = b.prefetch.clone();
    if let Some(p) = file {
        for path in trace::prefetch_paths(p)? {
            match b.tree.lookup(&path) {
                Some(id) if !ids.contains(&id) => ids.push(id),
                Some(_) => {}
                None => {
                    tracing::warn!(path = %String::from_utf8_lossy(&path), "prefetch file not in the image")
                }
            }
        }
    }
    Ok(ids)
}
