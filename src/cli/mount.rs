//! `zran mount SOURCE MOUNTPOINT`, `zran umount MOUNTPOINT` and `zran stats MOUNTPOINT`.
//!
//! `mount` starts a copy of itself with `--foreground` in a new session and returns once that
//! copy reports the mount live (or exits with its error). The serving process writes a record
//! of the mount (pid, source) and its counters under `CACHE/mounts/`, rewritten every second,
//! and unmounts cleanly on SIGTERM, SIGINT or SIGHUP, or when `zran umount` (or `umount`)
//! takes the mount away.

use super::image::ImageArgs;
use anyhow::{Context, bail};
use clap::Args;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use zran::artifact::inputs::layer_inputs;
use zran::artifact::{self, Options, publish};
use zran::blob::{BlobInput, BlobSet};
use zran::fuse::{ImageFs, Served};
use zran::rafs::reader::{Bootstrap, read_bootstrap};

/// The environment variable naming the descriptor a detached child reports readiness on.
const READY_FD: &str = "ZRAN_MOUNT_READY_FD";

#[derive(Debug, Args)]
pub struct MountArgs {
    /// An artifact directory written by `zran generate`, or an image
    /// (`oci:PATH[:TAG|@DIGEST]` or `[HOST[:PORT]/]REPO[:TAG|@DIGEST]`) with a zran artifact
    /// stored beside it (`zran push`) or whose layers are all eStargz.
    pub source: String,
    pub mountpoint: PathBuf,
    /// Where fetched chunks are kept (default /var/lib/zran as root, else ~/.cache/zran).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Stay attached: serve until unmounted or signalled.
    #[arg(long)]
    pub foreground: bool,
    /// For an artifact: read the layers from this image instead of the one it was generated
    /// from (the same image pushed elsewhere; its manifest digest must match).
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    #[command(flatten)]
    pub image_args: ImageArgs,
    /// Paths in the image (one per line) to fetch in the background once mounted, after the
    /// bootstrap's own prefetch list.
    #[arg(long, value_name = "FILE")]
    pub prefetch_files: Option<PathBuf>,
    /// Do not prefetch anything.
    #[arg(long)]
    pub no_prefetch: bool,
    /// Threads serving FUSE requests.
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
}

#[derive(Debug, Args)]
pub struct UmountArgs {
    pub mountpoint: PathBuf,
    /// Detach now even if files are open (they keep working until closed... or fail, once
    /// the serving process is gone).
    #[arg(long)]
    pub lazy: bool,
    /// The cache directory the mount used (to find its record).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    pub mountpoint: PathBuf,
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

/// What `CACHE/mounts/<key>.json` holds.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    pid: u32,
    mountpoint: PathBuf,
    source: String,
    image: String,
    image_size: u64,
    started: u64,
    live: bool,
    stats: serde_json::Value,
}

pub(crate) fn default_cache_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        PathBuf::from("/var/lib/zran")
    } else {
        std::env::var_os("HOME")
            .map_or_else(|| PathBuf::from("/tmp/zran"), |h| PathBuf::from(h).join(".cache/zran"))
    }
}

fn record_path(cache: &Path, mountpoint: &Path) -> PathBuf {
    let key = hex::encode(&Sha256::digest(mountpoint.as_os_str().as_encoded_bytes())[..8]);
    cache.join("mounts").join(format!("{key}.json"))
}

/// Is `p` a mount point (its device differs from its parent's, or it is `/`)?
fn is_mount_point(p: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::metadata(p)?;
    let parent = std::fs::metadata(p.join(".."))?;
    Ok(me.dev() != parent.dev() || me.ino() == parent.ino())
}

pub fn mount(args: MountArgs) -> anyhow::Result<()> {
    let mnt = &args.mountpoint;
    let meta = std::fs::metadata(mnt).with_context(|| format!("mount point {}", mnt.display()))?;
    if !meta.is_dir() {
        bail!("mount point {} is not a directory", mnt.display());
    }
    let mnt = std::fs::canonicalize(mnt).with_context(|| format!("mount point {}", mnt.display()))?;
    if is_mount_point(&mnt)? {
        bail!("mount point {} is busy: something is mounted there already", mnt.display());
    }
    if !args.foreground && std::env::var_os(READY_FD).is_none() {
        return detach();
    }
    serve(args, mnt)
}

/// Start `zran mount ... --foreground` in a new session and wait until it says the mount is
/// live, or exits.
fn detach() -> anyhow::Result<()> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe");
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let exe = std::env::current_exe().context("cannot find the zran executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .arg("--foreground")
        .env(READY_FD, "3")
        .stdin(std::process::Stdio::null());
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
    let mut child = cmd.spawn().context("cannot start the serving process")?;
    drop(write_end);
    let mut got = Vec::new();
    let _ = std::fs::File::from(read_end).read_to_end(&mut got);
    if got.starts_with(b"ok") {
        return Ok(());
    }
    let status = child.wait()?;
    match status.code() {
        // The serving process has said why on the same standard error: exit as it did.
        Some(code) if code != 0 => std::process::exit(code),
        _ => bail!("the mount failed ({status})"),
    }
}

/// Everything a mount serves: the bootstrap and its blobs.
struct Prepared {
    bootstrap: Bootstrap,
    blobs: BlobSet,
    name: String,
    image_size: u64,
}

fn prepare(args: &MountArgs, cache: &Path) -> anyhow::Result<Prepared> {
    let dir = Path::new(&args.source);
    if dir.join(artifact::MANIFEST).is_file() {
        let opened = artifact::open_dir(dir)?;
        let reference = args.image.clone().unwrap_or_else(|| opened.manifest.source.clone());
        let image = args.image_args.open(&reference)?;
        return from_artifact(dir, opened, image, cache);
    }
    let image = args.image_args.open(&args.source)?;
    // An artifact stored beside the image (`zran push`, `generate --push`) comes first.
    match publish::find(&image) {
        Ok(Some(found)) => {
            let (dir, opened) =
                publish::pull(&image, &found, &cache.join("artifacts")).with_context(|| {
                    format!("cannot fetch the zran artifact {} of {}", found.digest, image.name)
                })?;
            tracing::info!(artifact = %found.digest, dir = %dir.display(), "mounting the artifact stored beside the image");
            return from_artifact(&dir, opened, image, cache);
        }
        Ok(None) => {}
        Err(e) => tracing::warn!("{}: cannot list its referrers: {e}", image.name),
    }
    // Otherwise every layer must be eStargz with a TOC that fits one chunk size.
    let (inputs, chunk_size) = layer_inputs(&image, false, None)?;
    for (i, input) in inputs.iter().enumerate() {
        if !matches!(input, artifact::LayerInput::Estargz(_)) {
            bail!(
                "{}: layer {i} ({}) is not eStargz with a usable TOC, and no zran artifact is stored beside the image: run `zran generate {} -o DIR` and mount DIR (or add --push to store it beside the image)",
                image.name,
                image.manifest.layers[i].digest,
                args.source
            );
        }
    }
    let opts = Options { chunk_size, span: zran::gzip::DEFAULT_SPAN, jobs: 1, prefetch: Vec::new() };
    let art = artifact::generate(&image, &inputs, &opts, &|_, _| {})
        .with_context(|| format!("cannot read the TOCs of {}", image.name))?;
    let bootstrap = read_bootstrap(&art.bootstrap)?;
    let name = image.name.clone();
    let image_size = image.manifest.layers.iter().map(|l| l.size).sum();
    let blobs = open_blobs(image, &bootstrap, |_| None, cache)?;
    Ok(Prepared { bootstrap, blobs, name, image_size })
}

/// Mount an artifact directory over the layers of `image`, which must be the image it was made
/// from.
fn from_artifact(
    dir: &Path,
    opened: artifact::Opened,
    image: zran::oci::Image,
    cache: &Path,
) -> anyhow::Result<Prepared> {
    if image.manifest.digest.to_string() != opened.manifest.manifest_digest {
        bail!(
            "artifact {} was generated from manifest {}, but {} is {}: it does not belong to this image",
            dir.display(),
            opened.manifest.manifest_digest,
            image.name,
            image.manifest.digest
        );
    }
    let artifact::Opened { bootstrap, mut metas, .. } = opened;
    let name = image.name.clone();
    let image_size = image.manifest.layers.iter().map(|l| l.size).sum();
    let blobs = open_blobs(image, &bootstrap, |i| metas.remove(&i), cache)?;
    Ok(Prepared { bootstrap, blobs, name, image_size })
}

fn open_blobs(
    image: zran::oci::Image,
    bootstrap: &Bootstrap,
    mut meta: impl FnMut(usize) -> Option<zran::rafs::meta::BlobMeta>,
    cache: &Path,
) -> anyhow::Result<BlobSet> {
    let mut inputs = Vec::new();
    for (i, spec) in bootstrap.blobs.iter().enumerate() {
        let layer =
            image.manifest.layers.iter().position(|l| l.digest.hex() == spec.id).with_context(|| {
                format!("blob {} of the bootstrap is not a layer of {}", spec.id, image.name)
            })?;
        inputs.push(BlobInput { layer, spec, meta: meta(i) });
    }
    Ok(BlobSet::open(inputs, &bootstrap.chunk_table, image.source, cache)?)
}

static STOP: AtomicBool = AtomicBool::new(false);

fn serve(args: MountArgs, mnt: PathBuf) -> anyhow::Result<()> {
    let cache = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
    std::fs::create_dir_all(cache.join("mounts"))
        .with_context(|| format!("cache directory {}", cache.display()))?;
    let p = prepare(&args, &cache)?;
    let prefetch_ids = prefetch_list(&args, &p.bootstrap)?;
    let blobs = Arc::new(p.blobs);
    let fs = Arc::new(ImageFs::new(p.bootstrap, blobs.clone()));

    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(format!("zran:{}", p.name)),
        fuser::MountOption::Subtype("zran".into()),
        fuser::MountOption::RO,
        fuser::MountOption::DefaultPermissions,
    ];
    if root {
        config.mount_options.extend([fuser::MountOption::Suid, fuser::MountOption::Dev]);
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(args.threads.max(1));
    config.clone_fd = true;
    let session = fuser::spawn_mount(Served(fs.clone()), &mnt, &config)
        .with_context(|| format!("cannot mount on {}", mnt.display()))?;

    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT, signal_hook::consts::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { signal_hook::low_level::register(sig, || STOP.store(true, Ordering::SeqCst)) }?;
    }
    let record = record_path(&cache, &mnt);
    let started =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let write_record = |live: bool| {
        let r = Record {
            pid: std::process::id(),
            mountpoint: mnt.clone(),
            source: args.source.clone(),
            image: p.name.clone(),
            image_size: p.image_size,
            started,
            live,
            stats: serde_json::to_value(&blobs.stats).unwrap_or_default(),
        };
        let tmp = record.with_extension("json.tmp");
        let ok = serde_json::to_vec_pretty(&r)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &record));
        if let Err(e) = ok {
            tracing::warn!("cannot write {}: {e}", record.display());
        }
    };
    write_record(true);
    tracing::info!(mountpoint = %mnt.display(), image = %p.name, "mounted");

    // The mount is live: tell the waiting parent, and stop writing to its terminal.
    if let Some(fd) = std::env::var_os(READY_FD).and_then(|v| v.to_str()?.parse::<i32>().ok()) {
        // SAFETY: the parent passed this descriptor to us open, and nothing else owns it.
        let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
        let _ = f.write_all(b"ok");
        drop(f);
        redirect_output(&record.with_extension("log"));
    }

    if !args.no_prefetch && !prefetch_ids.is_empty() {
        let fs = fs.clone();
        std::thread::Builder::new().name("zran-prefetch".into()).spawn(move || fs.prefetch(&prefetch_ids))?;
    }

    let mut last = Instant::now();
    while !STOP.load(Ordering::SeqCst) && !session.guard.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
        if last.elapsed() >= Duration::from_secs(1) {
            write_record(true);
            last = Instant::now();
        }
    }
    let r = if session.guard.is_finished() {
        session.join()
    } else {
        tracing::info!(mountpoint = %mnt.display(), "unmounting");
        unmount_session(session, &mnt)
    };
    write_record(false);
    r.with_context(|| format!("serving {}", mnt.display()))
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

fn umount_path(mnt: &Path, lazy: bool) -> std::io::Result<()> {
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

/// Send stdout and stderr to the mount's log file (the parent's terminal is not ours).
fn redirect_output(log: &Path) {
    if let Ok(f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
        // SAFETY: dup2 onto the standard descriptors, from a descriptor we own.
        unsafe {
            libc::dup2(f.as_raw_fd(), 1);
            libc::dup2(f.as_raw_fd(), 2);
        }
    }
}

fn prefetch_list(args: &MountArgs, b: &Bootstrap) -> anyhow::Result<Vec<usize>> {
    let mut ids = b.prefetch.clone();
    if let Some(p) = &args.prefetch_files {
        let text = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
        for line in text
            .split(|&c| c == b'\n')
            .map(<[u8]>::trim_ascii)
            .filter(|l| !l.is_empty() && !l.starts_with(b"#"))
        {
            let path = zran::tar::normalize(line);
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

pub fn umount(args: UmountArgs) -> anyhow::Result<()> {
    let mnt =
        std::fs::canonicalize(&args.mountpoint).with_context(|| format!("{}", args.mountpoint.display()))?;
    if !is_mount_point(&mnt)? {
        bail!("{} is not mounted", mnt.display());
    }
    let cache = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let record: Option<Record> =
        std::fs::read(record_path(&cache, &mnt)).ok().and_then(|b| serde_json::from_slice(&b).ok());
    umount_path(&mnt, args.lazy).with_context(|| format!("cannot unmount {}", mnt.display()))?;
    // Wait for the serving process to finish (it writes its last counters on the way out).
    if let Some(r) = record.filter(|r| r.live) {
        let deadline = Instant::now() + Duration::from_secs(10);
        // SAFETY: kill with signal 0 only checks that the process exists.
        while unsafe { libc::kill(r.pid as i32, 0) } == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

pub fn stats(args: StatsArgs) -> anyhow::Result<()> {
    let mnt =
        std::fs::canonicalize(&args.mountpoint).with_context(|| format!("{}", args.mountpoint.display()))?;
    let cache = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let path = record_path(&cache, &mnt);
    let bytes = std::fs::read(&path)
        .with_context(|| format!("no zran mount record for {} in {}", mnt.display(), cache.display()))?;
    let r: Record = serde_json::from_slice(&bytes).with_context(|| format!("{}", path.display()))?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(())
}
