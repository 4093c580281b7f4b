//! Mounts: the whole life cycle of an image served through FUSE (or, once its chunk cache is
//! complete, the kernel's EROFS: `kernel`), for `zran mount`, `umount` and `stats` and for the
//! snapshotter.
//!
//! Owns opening what is mounted (`open`: an artifact directory, an image with an artifact
//! stored beside it, a Nydus image, or an image whose layers are all eStargz), serving it (`serve`: in the
//! foreground, until unmounted or signalled; `detach`: as a separate process in a new session
//! that reports readiness on a pipe), the records a serving process keeps under
//! `CACHE/mounts/` (`record`: pid, source, counters; read back and listed), start-up traces
//! (`trace`: recorded reads, and the prefetch lists made of them), and the control of
//! a running mount by its record (`control`: unmount and wait for its process).
//! Calls `oci`, `artifact`, `nydus`, `rafs`, `blob`, `fuse` (and `tar` to read prefetch lists).

pub mod control;
pub mod detach;
pub mod kernel;
pub mod open;
pub mod record;
pub mod serve;
pub mod tocs;
pub mod trace;

pub use control::{Running, is_mount_point, unmount};
pub use detach::{detach, detached_child};
pub use kernel::FsDriver;
pub use open::{Mountable, open};
pub use record::{Record, list, record_path};
pub use serve::{ServeOptions, serve};

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount point {}", path.display())]
    MountPoint { path: PathBuf, source: std::io::Error },
    #[error("mount point {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("mount point {} is busy: something is mounted there already", .0.display())]
    Busy(PathBuf),
    #[error("{}", path.display())]
    Path { path: PathBuf, source: std::io::Error },
    #[error("{} is not mounted", .0.display())]
    NotMounted(PathBuf),

    #[error(transparent)]
    Artifact(Box<crate::artifact::ArtifactError>),
    #[error("cannot open image {reference}")]
    Image { reference: String, source: Box<crate::oci::OciError> },
    #[error(transparent)]
    Reference(#[from] crate::oci::reference::ReferenceError),
    #[error("cannot fetch the zran artifact {digest} of {image}")]
    Pull { digest: String, image: String, source: Box<crate::artifact::ArtifactError> },
    #[error(transparent)]
    Inputs(Box<crate::artifact::inputs::InputError>),
    #[error(
        "{image}: {layers}; no zran artifact is stored beside the image, and only eStargz and zstd:chunked layers mount from their TOCs: run `zran generate {given} -o DIR` and mount DIR (or add --push to store it beside the image)"
    )]
    NotFromTocs { image: String, layers: String, given: String },
    #[error("{image}: layer {layer} ({digest}): cannot read its TOC: {message}")]
    TocRead { image: String, layer: usize, digest: String, message: String },
    #[error("cannot read the TOCs of {image}")]
    Tocs { image: String, source: Box<crate::artifact::ArtifactError> },
    #[error(transparent)]
    Bootstrap(Box<crate::rafs::reader::ReadError>),
    #[error(
        "artifact {} was generated from manifest {artifact_manifest}, but {image} is {image_manifest}: it does not belong to this image",
        dir.display()
    )]
    NotThisImage { dir: PathBuf, artifact_manifest: String, image: String, image_manifest: String },
    #[error("blob {blob} of the bootstrap is not a layer of {image}")]
    NotALayer { blob: String, image: String },
    #[error(transparent)]
    Blob(Box<crate::blob::BlobError>),
    #[error(transparent)]
    Nydus(Box<crate::nydus::NydusError>),

    #[error("cache directory {}", path.display())]
    CacheDir { path: PathBuf, source: std::io::Error },
    #[error("cannot read {}", path.display())]
    PrefetchList { path: PathBuf, source: std::io::Error },
    #[error("{}: {message}", path.display())]
    Trace { path: PathBuf, message: String },
    #[error("cannot mount on {}", path.display())]
    Mount { path: PathBuf, source: std::io::Error },
    #[error("cannot serve {} with the kernel's EROFS: {reason}", path.display())]
    Kernel { path: PathBuf, reason: String },
    #[error("cannot handle signals")]
    Signals(#[source] std::io::Error),
    #[error("cannot start the prefetch thread")]
    PrefetchThread(#[source] std::io::Error),
    #[error("serving {}", path.display())]
    Serving { path: PathBuf, source: std::io::Error },

    #[error("pipe")]
    Pipe(#[source] std::io::Error),
    #[error("cannot start the serving process")]
    Spawn(#[source] std::io::Error),
    #[error("waiting for the serving process")]
    Wait(#[source] std::io::Error),
    /// The serving process failed and has said why on the same standard error.
    #[error("the serving process exited with status {0}")]
    ServerExited(i32),
    #[error("the mount failed ({0})")]
    Failed(std::process::ExitStatus),

    #[error("cannot unmount {}", path.display())]
    Unmount { path: PathBuf, source: std::io::Error },
    #[error("no zran mount record for {} in {}", mountpoint.display(), cache.display())]
    NoRecord { mountpoint: PathBuf, cache: PathBuf, source: std::io::Error },
    #[error("{}", path.display())]
    BadRecord { path: PathBuf, source: serde_json::Error },
    #[error("{}", path.display())]
    Records { path: PathBuf, source: std::io::Error },
}

macro_rules! boxed_from {
    ($($t:ty => $v:ident),* $(,)?) => {
        $(impl From<$t> for MountError {
            fn from(e: $t) -> Self {
                MountError::$v(Box::new(e))
            }
        })*
    };
}

boxed_from! {
    crate::artifact::ArtifactError => Artifact,
    crate::artifact::inputs::InputError => Inputs,
    crate::rafs::reader::ReadError => Bootstrap,
    crate::blob::BlobError => Blob,
    crate::nydus::NydusError => Nydus,
}

/// Where fetched chunks and mount records are kept by default: /var/lib/zran as root, else
/// ~/.cache/zran (/tmp/zran without a home).
pub fn default_cache_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        PathBuf::from("/var/lib/zran")
    } else {
        std::env::var_os("HOME")
            .map_or_else(|| PathBuf::from("/tmp/zran"), |h| PathBuf::from(h).join(".cache/zran"))
    }
}

/// Check a mount point before mounting on it: a directory with nothing mounted on it.
/// Returns its canonical path (the one records are keyed by).
pub fn check_mountpoint(mnt: &Path) -> Result<PathBuf, MountError> {
    let err = |source| MountError::MountPoint { path: mnt.to_path_buf(), source };
    let meta = std::fs::metadata(mnt).map_err(err)?;
    if !meta.is_dir() {
        return Err(MountError::NotADirectory(mnt.to_path_buf()));
    }
    let canonical = std::fs::canonicalize(mnt).map_err(err)?;
    if is_mount_point(&canonical).map_err(|source| MountError::Path { path: canonical.clone(), source })? {
        return Err(MountError::Busy(canonical));
    }
    Ok(canonical)
}
