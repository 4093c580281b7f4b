//! Kernel-speed warm reads: when the chunk cache holds every chunk an image uses, the image is
//! mounted with the kernel's own EROFS, the bootstrap as the filesystem and the cache's data
//! files (each chunk at its address in the bootstrap's block layout) as its devices, instead
//! of FUSE.
//!
//! Before the switch every chunk is verified once against its digest (`blob::BlobSet::
//! verify_complete`, the check a FUSE read of a cached chunk makes); a chunk that fails is
//! forgotten and counted, and the mount stays on FUSE, which fetches it again. Then the
//! bootstrap file (the artifact's `image.boot`, checked against the digest the artifact names;
//! otherwise the bootstrap in memory, written once into `CACHE/bootstraps/<sha256>.boot`) is
//! mounted file-backed (`mount -t erofs -o ro,device=DATA,...,directio BOOT MNT`, Linux 6.12+;
//! without `directio` before 6.13), else
//! through read-only, autoclearing loop devices (`LOOP_CONFIGURE`), else not at all (FUSE).
//!
//! The serving process stays for the mount's lifetime and holds the shared `flock`s of the
//! data files (`blob::cache`), so `zran cache prune` leaves them alone; with every chunk good
//! no write to them happens.
//!
//! Part of `mount`; calls `blob` (through the `Mountable`'s `BlobSet`).

use super::MountError;
use super::open::Mountable;
use crate::blob::cache::try_lock;
use sha2::{Digest as _, Sha256};
use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Which filesystem serves a mount (as nydusd's and nydus-snapshotter's `fs_driver` names
/// them: `fusedev` for FUSE; `erofs` here is the kernel's EROFS on the local cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum FsDriver {
    /// The kernel's EROFS when the cache is complete and verified and the kernel mounts it,
    /// else FUSE.
    #[default]
    Auto,
    /// Always FUSE.
    Fusedev,
    /// The kernel's EROFS or an error: the cache must be complete, and the kernel must mount it.
    Erofs,
}

impl std::str::FromStr for FsDriver {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(FsDriver::Auto),
            "fusedev" | "fuse" => Ok(FsDriver::Fusedev),
            "erofs" | "kernel" => Ok(FsDriver::Erofs),
            _ => Err(format!("fs driver {s:?} (auto, fusedev or erofs)")),
        }
    }
}

impl TryFrom<String> for FsDriver {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl FsDriver {
    /// The name `--fs-driver` takes.
    pub fn name(self) -> &'static str {
        match self {
            FsDriver::Auto => "auto",
            FsDriver::Fusedev => "fusedev",
            FsDriver::Erofs => "erofs",
        }
    }
}

/// The record's `served` for a kernel mount.
pub const SERVED_KERNEL: &str = "kernel-erofs";
/// The record's `served` for a FUSE mount.
pub const SERVED_FUSE: &str = "fuse";

/// The bootstrap file the kernel can mount.
#[derive(Debug, Clone)]
pub enum BootFile {
    /// An artifact's `image.boot`, with the digest its manifest names (`sha256:HEX`).
    Artifact { path: PathBuf, digest: String },
    /// A bootstrap that exists in memory only (built from TOCs, or from a Nydus bootstrap layer).
    Memory(Vec<u8>),
}

/// How the kernel was given the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Regular files as the source and devices (Linux 6.12+).
    Files,
    /// Loop devices over them.
    Loop,
}

/// A kernel EROFS mount made by [`switch`].
#[derive(Debug)]
pub struct KernelMount {
    pub via: Via,
    /// The bootstrap file mounted.
    pub boot: PathBuf,
    /// The devices, in the bootstrap's device table order.
    pub devices: Vec<PathBuf>,
    /// The mount point's device number once mounted: the mount is still there while the mount
    /// point has it.
    pub dev: u64,
    /// The bootstrap file, open with a shared `flock` while mounted ([`prune_bootstraps`]).
    _boot_lock: File,
}

/// Options of [`switch`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SwitchOptions {
    pub driver: FsDriver,
    /// Skip the file-backed mount and use loop devices (to test that path).
    pub loop_devices: bool,
    /// Threads verifying the cache.
    pub threads: usize,
}

/// Mount `m` with the kernel's EROFS on `mnt` if its cache is complete and good and the driver
/// allows. `Ok(Err(why))`: stay on FUSE, for the reason given (never with [`FsDriver::Erofs`],
/// which makes each reason an error).
pub fn switch(
    m: &Mountable,
    mnt: &Path,
    cache: &Path,
    opts: SwitchOptions,
) -> Result<Result<KernelMount, String>, MountError> {
    if opts.driver == FsDriver::Fusedev {
        return Ok(Err("--fs-driver fusedev".into()));
    }
    let decline = |why: String| -> Result<Result<KernelMount, String>, MountError> {
        if opts.driver == FsDriver::Erofs {
            Err(MountError::Kernel { path: mnt.to_path_buf(), reason: why })
        } else {
            Ok(Err(why))
        }
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return decline("mounting the kernel's EROFS needs root".into());
    }
    let c = m.blobs.completeness();
    if c.missing > 0 {
        return decline(format!(
            "the cache holds {} of the image's {} chunks",
            c.chunks - c.missing,
            c.chunks
        ));
    }
    let started = std::time::Instant::now();
    let v = m.blobs.verify_complete(opts.threads)?;
    tracing::info!(
        chunks = v.good + v.bad,
        bad = v.bad,
        mib = v.bytes >> 20,
        ms = started.elapsed().as_millis() as u64,
        "cache verified before handing it to the kernel"
    );
    if v.bad > 0 {
        return decline(format!(
            "{} cached chunks did not match their digest (forgotten: FUSE fetches them again)",
            v.bad
        ));
    }
    let (boot, lock) = match boot_file(&m.boot, cache).and_then(|p| lock_shared(&p).map(|l| (p, l))) {
        Ok(b) => b,
        Err(e) => return decline(format!("no bootstrap file for the kernel: {e}")),
    };
    // Absolute paths: the kernel resolves them, and mountinfo shows the source as given.
    let devices: std::io::Result<Vec<PathBuf>> =
        m.blobs.data_files().iter().map(std::fs::canonicalize).collect();
    let devices = match devices {
        Ok(d) => d,
        Err(e) => return decline(format!("the cache's data files: {e}")),
    };
    if !opts.loop_devices {
        // Direct I/O to the files where the kernel has it (6.13+): no second copy of the data
        // in the page cache (the files' pages beside EROFS's own), and random reads at local
        // disk speed (buffered, each miss also reads ahead in the data file).
        let r = match mount_erofs(&boot, &devices, mnt, Some("directio")) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => mount_erofs(&boot, &devices, mnt, None),
            r => r,
        };
        match r {
            Ok(()) => return mounted(Via::Files, boot, devices, mnt, lock),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
                return decline("the kernel has no EROFS (ENODEV)".into());
            }
            Err(e) => tracing::info!("file-backed EROFS mount refused ({e}); trying loop devices"),
        }
    }
    match mount_on_loops(&boot, &devices, mnt) {
        Ok(()) => mounted(Via::Loop, boot, devices, mnt, lock),
        Err(e) => decline(format!("the kernel refused the EROFS mount: {e}")),
    }
}

fn mounted(
    via: Via,
    boot: PathBuf,
    devices: Vec<PathBuf>,
    mnt: &Path,
    lock: File,
) -> Result<Result<KernelMount, String>, MountError> {
    use std::os::unix::fs::MetadataExt;
    let dev =
        std::fs::metadata(mnt).map_err(|source| MountError::Path { path: mnt.to_path_buf(), source })?.dev();
    Ok(Ok(KernelMount { via, boot, devices, dev, _boot_lock: lock }))
}

fn lock_shared(p: &Path) -> std::io::Result<File> {
    let f = File::open(p)?;
    try_lock(&f, libc::LOCK_SH)?;
    Ok(f)
}

/// Remove the bootstraps kept under `CACHE/bootstraps/` that no kernel mount holds and that
/// were not written in the last minute (a mount may be about to lock one); their names.
pub fn prune_bootstraps(cache: &Path) -> std::io::Result<Vec<String>> {
    let mut removed = Vec::new();
    let Ok(rd) = std::fs::read_dir(cache.join("bootstraps")) else { return Ok(removed) };
    let recent = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    for e in rd {
        let e = e?;
        if e.metadata().and_then(|m| m.modified()).map(|t| t > recent).unwrap_or(true) {
            continue;
        }
        let Ok(f) = File::open(e.path()) else { continue };
        if !try_lock(&f, libc::LOCK_EX | libc::LOCK_NB)? {
            continue;
        }
        std::fs::remove_file(e.path())?;
        removed.push(e.file_name().to_string_lossy().into_owned());
    }
    Ok(removed)
}

/// Is the kernel mount still on `mnt`?
pub fn still_mounted(k: &KernelMount, mnt: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(mnt).is_ok_and(|m| m.dev() == k.dev)
}

/// The bootstrap file to mount: the artifact's, if it still has the digest its manifest names;
/// else the bytes written once into `CACHE/bootstraps/<sha256>.boot` (atomically: a temporary
/// file, synced, renamed).
fn boot_file(boot: &BootFile, cache: &Path) -> std::io::Result<PathBuf> {
    match boot {
        BootFile::Artifact { path, digest } => {
            let bytes = std::fs::read(path)?;
            let got = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
            if &got != digest {
                return Err(std::io::Error::other(format!(
                    "{} is {got}, not the {digest} its artifact names",
                    path.display()
                )));
            }
            std::fs::canonicalize(path)
        }
        BootFile::Memory(bytes) => {
            let hex = hex::encode(Sha256::digest(bytes));
            let dir = cache.join("bootstraps");
            std::fs::create_dir_all(&dir)?;
            let dir = std::fs::canonicalize(dir)?;
            let path = dir.join(format!("{hex}.boot"));
            if std::fs::read(&path).is_ok_and(|b| hex::encode(Sha256::digest(&b)) == hex) {
                // Its time is its last use: `prune_bootstraps` spares what was used lately.
                let _ = File::open(&path).and_then(|f| f.set_modified(std::time::SystemTime::now()));
                return Ok(path);
            }
            let tmp = dir.join(format!(".{hex}.{}.tmp", std::process::id()));
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &path)?;
            Ok(path)
        }
    }
}

/// `mount(2)` EROFS read-only from `source` with `devices` (`device=` options, in order) and
/// the option `extra`.
fn mount_erofs(source: &Path, devices: &[PathBuf], mnt: &Path, extra: Option<&str>) -> std::io::Result<()> {
    use std::ffi::CString;
    let cstr = |p: &Path| CString::new(p.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other);
    let mut data = Vec::new();
    for d in devices {
        let b = d.as_os_str().as_encoded_bytes();
        if b.contains(&b',') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("device path {} has a comma", d.display()),
            ));
        }
        if !data.is_empty() {
            data.push(b',');
        }
        data.extend_from_slice(b"device=");
        data.extend_from_slice(b);
    }
    if let Some(x) = extra {
        if !data.is_empty() {
            data.push(b',');
        }
        data.extend_from_slice(x.as_bytes());
    }
    // mount(2) copies one page of options: more devices than fit (long cache paths, dozens of
    // layers) go through loop devices, whose names are short.
    if data.len() >= 4096 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} bytes of device options, more than mount(2) takes", data.len()),
        ));
    }
    let (src, target) = (cstr(source)?, cstr(mnt)?);
    let data = CString::new(data).map_err(std::io::Error::other)?;
    let fstype = c"erofs";
    // SAFETY: every pointer is a NUL-terminated string that lives across the call; the data
    // string is what EROFS parses as its options.
    let r = unsafe {
        libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), libc::MS_RDONLY, data.as_ptr().cast())
    };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Attach `boot` and each device to read-only loop devices that clear themselves when last
/// closed, and mount EROFS from them. The loop devices' descriptors are closed on return: once
/// mounted, the kernel's references keep them; on failure they go.
fn mount_on_loops(boot: &Path, devices: &[PathBuf], mnt: &Path) -> std::io::Result<()> {
    let source = LoopDevice::attach(boot)?;
    let mut loops = Vec::with_capacity(devices.len());
    for d in devices {
        loops.push(LoopDevice::attach(d)?);
    }
    let paths: Vec<PathBuf> = loops.iter().map(|l| l.path.clone()).collect();
    mount_erofs(&source.path, &paths, mnt, None)
}

/// `struct loop_info64` of `<linux/loop.h>`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` of `<linux/loop.h>`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;

/// A loop device attached to a file, open until dropped.
struct LoopDevice {
    _dev: File,
    path: PathBuf,
}

impl LoopDevice {
    /// Attach with direct I/O to the file (as file-backed mounts read), or without where the
    /// kernel or the file's filesystem refuses it.
    fn attach(file: &Path) -> std::io::Result<LoopDevice> {
        match Self::attach_with(file, LO_FLAGS_DIRECT_IO) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Self::attach_with(file, 0),
            r => r,
        }
    }

    fn attach_with(file: &Path, flags: u32) -> std::io::Result<LoopDevice> {
        let backing = File::open(file)?;
        let control = std::fs::OpenOptions::new().read(true).write(true).open("/dev/loop-control")?;
        // Another process may take the free device first: ask again.
        for _ in 0..16 {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument; the descriptor is open.
            let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let path = PathBuf::from(format!("/dev/loop{n}"));
            let dev = std::fs::OpenOptions::new().read(true).open(&path)?;
            let mut name = [0u8; 64];
            let b = file.as_os_str().as_encoded_bytes();
            let k = b.len().min(63);
            name[..k].copy_from_slice(&b[..k]);
            let config = LoopConfig {
                fd: backing.as_raw_fd() as u32,
                block_size: 0,
                info: LoopInfo64 {
                    lo_device: 0,
                    lo_inode: 0,
                    lo_rdevice: 0,
                    lo_offset: 0,
                    lo_sizelimit: 0,
                    lo_number: 0,
                    lo_encrypt_type: 0,
                    lo_encrypt_key_size: 0,
                    lo_flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR | flags,
                    lo_file_name: name,
                    lo_crypt_name: [0; 64],
                    lo_encrypt_key: [0; 32],
                    lo_init: [0; 2],
                },
                reserved: [0; 8],
            };
            // SAFETY: `config` is a `struct loop_config` as the kernel declares it, alive across
            // the call, which only reads it; both descriptors are open.
            let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &raw const config) };
            if r == 0 {
                return Ok(LoopDevice { _dev: dev, path });
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EBUSY) {
                return Err(e);
            }
        }
        Err(std::io::Error::other("no free loop device"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drivers_parse_as_nydus_names_them() {
        assert_eq!("auto".parse::<FsDriver>(), Ok(FsDriver::Auto));
        assert_eq!("fusedev".parse::<FsDriver>(), Ok(FsDriver::Fusedev));
        assert_eq!("erofs".parse::<FsDriver>(), Ok(FsDriver::Erofs));
        assert!("fscache".parse::<FsDriver>().is_err());
    }

    #[test]
    fn loop_config_has_the_kernels_layout() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }

    #[test]
    fn prune_removes_only_bootstraps_unused_and_not_recent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = boot_file(&BootFile::Memory(b"held".to_vec()), dir.path()).expect("write");
        let free = boot_file(&BootFile::Memory(b"free".to_vec()), dir.path()).expect("write");
        let recent = boot_file(&BootFile::Memory(b"recent".to_vec()), dir.path()).expect("write");
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for p in [&held, &free] {
            File::options().write(true).open(p).and_then(|f| f.set_modified(old)).expect("age");
        }
        let lock = lock_shared(&held).expect("lock");
        let removed = prune_bootstraps(dir.path()).expect("prune");
        assert_eq!(removed, vec![free.file_name().expect("name").to_string_lossy().into_owned()]);
        assert!(held.exists() && recent.exists() && !free.exists());
        drop(lock);
        assert_eq!(prune_bootstraps(dir.path()).expect("prune").len(), 1);
        assert!(!held.exists());
    }

    #[test]
    fn a_bootstrap_in_memory_is_written_once_by_its_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = boot_file(&BootFile::Memory(b"boot".to_vec()), dir.path()).expect("write");
        assert_eq!(std::fs::read(&p).expect("read"), b"boot");
        assert!(p.to_string_lossy().ends_with(&format!("{}.boot", hex::encode(Sha256::digest(b"boot")))));
        // A file spoiled behind our back is written again.
        std::fs::write(&p, b"spoilt").expect("spoil");
        let again = boot_file(&BootFile::Memory(b"boot".to_vec()), dir.path()).expect("again");
        assert_eq!(again, p);
        assert_eq!(std::fs::read(&p).expect("read"), b"boot");
        // An artifact's image.boot must have its digest.
        let a = dir.path().join("image.boot");
        std::fs::write(&a, b"boot").expect("write");
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(b"boot")));
        let art = BootFile::Artifact { path: a.clone(), digest };
        assert_eq!(boot_file(&art, dir.path()).expect("artifact"), std::fs::canonicalize(&a).expect("path"));
        std::fs::write(&a, b"other").expect("write");
        assert!(boot_file(&art, dir.path()).is_err());
    }
}
