//! `zran mount SOURCE MOUNTPOINT`, `zran umount MOUNTPOINT` and `zran stats MOUNTPOINT`: the
//! arguments of `zran::mount`, and the exit code of a detached server that failed.
//!
//! `mount` starts a copy of itself with `--foreground` in a new session and returns once that
//! copy reports the mount live (or exits with its error). The serving process writes a record
//! of the mount (pid, source) and its counters under `CACHE/mounts/`, rewritten every second,
//! and unmounts cleanly on SIGTERM, SIGINT or SIGHUP, or when `zran umount` (or `umount`)
//! takes the mount away.

use super::image::ImageArgs;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use zran::mount::{self, MountError, Record, ServeOptions, default_cache_dir};

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
    /// Paths in the image (one per line), or a start-up trace (`--record-trace`), to fetch in
    /// the background once mounted, after the bootstrap's own prefetch list.
    #[arg(long, value_name = "FILE")]
    pub prefetch_files: Option<PathBuf>,
    /// Do not prefetch anything.
    #[arg(long)]
    pub no_prefetch: bool,
    /// Record a start-up trace to FILE: the files read in the mount's first seconds, in the
    /// order of their first reads, with the chunks read (for `zran generate --prefetch-trace`).
    #[arg(long, value_name = "FILE")]
    pub record_trace: Option<PathBuf>,
    /// Seconds after the mount goes live that a trace records reads.
    #[arg(long, value_name = "SECS", default_value_t = 60, requires = "record_trace")]
    pub trace_window: u64,
    /// Threads serving FUSE requests.
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    /// How the image is served: `auto` mounts it with the kernel's EROFS over the chunk cache
    /// when every chunk it uses is cached (each verified first), else through FUSE; `fusedev`
    /// always FUSE; `erofs` the kernel or an error.
    #[arg(long, value_name = "DRIVER", default_value = "auto")]
    pub fs_driver: zran::mount::FsDriver,
    /// With the kernel's EROFS: loop devices even where the kernel mounts files (testing).
    #[arg(long, hide = true)]
    pub loop_devices: bool,
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
    /// A mount point of `zran mount`.
    #[arg(required_unless_present = "snapshotter")]
    pub mountpoint: Option<PathBuf>,
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Instead, the counters of `zran snapshotter` with this root: per image, how it is
    /// served (or why it fell back) and its mount's counters.
    #[arg(long, value_name = "ROOT", conflicts_with = "mountpoint")]
    pub snapshotter: Option<PathBuf>,
}

pub fn mount(args: MountArgs) -> anyhow::Result<()> {
    let mnt = mount::check_mountpoint(&args.mountpoint)?;
    if !args.foreground && !mount::detached_child() {
        let exe = std::env::current_exe().context("cannot find the zran executable")?;
        let mut cmd = std::process::Command::new(exe);
        cmd.args(std::env::args_os().skip(1)).arg("--foreground");
        return match mount::detach(cmd) {
            // The serving process has said why on the same standard error: exit as it did.
            Err(MountError::ServerExited(code)) => std::process::exit(code),
            r => Ok(r?),
        };
    }
    let cache = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
    mount::serve::create_records_dir(&cache)?;
    let opened = mount::open(&args.source, args.image.as_deref(), &args.image_args.options()?, &cache)?;
    let opts = ServeOptions {
        threads: args.threads,
        prefetch_files: args.prefetch_files.clone(),
        no_prefetch: args.no_prefetch,
        record_trace: args.record_trace.as_ref().map(|p| absolute(p)).transpose()?,
        trace_window: std::time::Duration::from_secs(args.trace_window),
        fs_driver: args.fs_driver,
        loop_devices: args.loop_devices,
    };
    Ok(mount::serve(opened, &mnt, &args.source, &cache, &opts)?)
}

/// `p` from the root (a detached server may change its working directory).
fn absolute(p: &std::path::Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("{}", p.display()))
}

pub fn umount(args: UmountArgs) -> anyhow::Result<()> {
    let cache = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
    Ok(mount::unmount(&args.mountpoint, &cache, args.lazy)?)
}

pub fn stats(args: StatsArgs) -> anyhow::Result<()> {
    if let Some(root) = &args.snapshotter {
        let cache = args.cache_dir.clone().unwrap_or_else(|| root.join("cache"));
        let v = zran::snapshotter::service::stats_with_mounts(root, &cache)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let Some(mountpoint) = &args.mountpoint else { anyhow::bail!("no mount point given") };
    let mnt = std::fs::canonicalize(mountpoint).with_context(|| format!("{}", mountpoint.display()))?;
    let cache = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let r = Record::read(&cache, &mnt)?;
    println!("{}", r.to_json()?);
    Ok(())
}
