//! Command definitions (clap derive) and dispatch.

mod cache;
mod convert;
mod files;
mod generate;
mod gz;
mod image;
mod inspect;
mod mount;
mod push;
mod snapshotter;
mod util;

use clap::{Parser, Subcommand};

/// Lazy loading for container images as they are.
#[derive(Debug, Parser)]
#[command(name = "zran", version, about, propagate_version = true)]
pub struct Cli {
    /// More logging on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Random access into gzip files: build a seek index, extract ranges.
    #[command(subcommand)]
    Gz(gz::GzCommand),
    /// Show an image's manifest and layers, and how each layer can be served lazily; or, given
    /// a directory, the artifact `generate` wrote there.
    Inspect(inspect::InspectArgs),
    /// Write the RAFS v6 artifact (image.boot, blob.meta, zran.json) of an image, pointing into
    /// its original layers.
    Generate(generate::GenerateArgs),
    /// Convert an image whole to Nydus's native RAFS v6 format (what `nydusify convert`
    /// makes): one Nydus data blob per layer, chunks shared across layers stored once, and a
    /// bootstrap layer; to a registry or an OCI layout.
    Convert(convert::ConvertArgs),
    /// Store a `generate` artifact beside its image (a referrer of its manifest, in the same
    /// registry repository or OCI layout), where `zran mount IMAGE` finds it.
    Push(push::PushArgs),
    /// Serve an image lazily through FUSE: a `generate` artifact directory, or an image whose
    /// layers are all eStargz. Every chunk is verified before it is read.
    Mount(mount::MountArgs),
    /// Unmount what `zran mount` mounted, and wait for its process to finish.
    Umount(mount::UmountArgs),
    /// The counters of a mount: bytes fetched, chunks verified, cache hits, digest failures.
    Stats(mount::StatsArgs),
    /// The chunk cache: list it, or make room without touching what live mounts use.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// containerd's Snapshots service on a unix socket (a `proxy_plugins` snapshotter): images
    /// with a zran artifact beside them (and eStargz images, with --enable-stargz) start
    /// lazily; every other image is pulled and unpacked as usual.
    Snapshotter(snapshotter::SnapshotterArgs),
}

pub fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("ZRAN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("zran={level}")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Gz(cmd) => gz::run(cmd),
        Command::Inspect(args) => inspect::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Push(args) => push::run(args),
        Command::Mount(args) => mount::mount(args),
        Command::Umount(args) => mount::umount(args),
        Command::Stats(args) => mount::stats(args),
        Command::Cache(cmd) => cache::run(cmd),
        Command::Snapshotter(args) => snapshotter::run(args, cli.verbose),
    }
}
