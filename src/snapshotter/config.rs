//! The snapshotter's configuration file (TOML, `--config`), every key optional, with the
//! defaults below; command-line flags win over the file.
//!
//! ```toml
//! # Where metadata.redb and snapshots/<id>/ live.
//! root = "/var/lib/zran/snapshotter"
//! # The socket containerd's proxy_plugins entry names.
//! address = "/run/zran/snapshotter.sock"
//! # Serve images straight from their TOCs (eStargz, zstd:chunked; no zran artifact needed).
//! enable_stargz = false
//!
//! [registry]
//! # containerd's registry host directory: mirrors and plain-HTTP hosts from HOST/hosts.toml.
//! config_path = "/etc/containerd/certs.d"
//! # Credentials (default: $DOCKER_CONFIG/config.json, else ~/.docker/config.json).
//! # docker_config = "/root/.docker/config.json"
//!
//! [cache]
//! # Fetched chunks and the artifacts stored beside images (default ROOT/cache).
//! # dir = "/var/lib/zran/snapshotter/cache"
//! # Unused cached blobs are pruned (least recently used first) while the cache is larger.
//! max_size = "10G"
//! # How often to check, in seconds (also after every removed image).
//! prune_interval = 600
//!
//! [mount]
//! # Threads serving FUSE requests per image.
//! threads = 8
//! # Fetch the bootstrap's prefetch list (eStargz landmarks, --prefetch-files) at mount.
//! prefetch = true
//! # Record a start-up trace of each image (zran mount --record-trace) to DIR/<manifest hex>.json:
//! # the files its first container read, for `zran generate --prefetch-trace`.
//! # record_traces = "/var/lib/zran/traces"
//! # Seconds after an image is mounted that its trace records reads.
//! trace_window = 60
//! # auto: an image whose chunks are all cached (and verified) is served by the kernel's EROFS
//! # on the cache, others through FUSE; fusedev: always FUSE; erofs: the kernel or an error.
//! fs_driver = "auto"
//! ```

use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const DEFAULT_ROOT: &str = "/var/lib/zran/snapshotter";
pub const DEFAULT_ADDRESS: &str = "/run/zran/snapshotter.sock";
pub const DEFAULT_HOSTS_DIR: &str = "/etc/containerd/certs.d";

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub root: PathBuf,
    pub address: PathBuf,
    pub enable_stargz: bool,
    pub registry: RegistryConfig,
    pub cache: CacheConfig,
    pub mount: MountConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    pub config_path: Option<PathBuf>,
    pub docker_config: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub dir: Option<PathBuf>,
    /// Bytes, or a number with a K, M, G or T suffix (powers of 1024).
    #[serde(deserialize_with = "size")]
    pub max_size: u64,
    pub prune_interval: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MountConfig {
    pub threads: usize,
    pub prefetch: bool,
    pub record_traces: Option<PathBuf>,
    pub trace_window: u64,
    pub fs_driver: crate::mount::FsDriver,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from(DEFAULT_ROOT),
            address: PathBuf::from(DEFAULT_ADDRESS),
            enable_stargz: false,
            registry: RegistryConfig::default(),
            cache: CacheConfig::default(),
            mount: MountConfig::default(),
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig { config_path: Some(PathBuf::from(DEFAULT_HOSTS_DIR)), docker_config: None }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig { dir: None, max_size: 10 << 30, prune_interval: 600 }
    }
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig {
            threads: 8,
            prefetch: true,
            record_traces: None,
            trace_window: 60,
            fs_driver: crate::mount::FsDriver::Auto,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
}

impl Config {
    /// Read `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Config::parse(&text, path)
    }

    /// Parse the text of a configuration file (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })
    }

    /// Where chunks and artifacts are cached.
    pub fn cache_dir(&self) -> PathBuf {
        self.cache.dir.clone().unwrap_or_else(|| self.root.join("cache"))
    }

    /// The registry host directory, when it exists.
    pub fn hosts_dir(&self) -> Option<&Path> {
        self.registry.config_path.as_deref().filter(|p| p.is_dir())
    }
}

/// `10G`, `512M`, `4096`: a size in bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, shift) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 10),
        (i, 'M' | 'm') => (&s[..i], 20),
        (i, 'G' | 'g') => (&s[..i], 30),
        (i, 'T' | 't') => (&s[..i], 40),
        _ => (s, 0),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(b) => Ok(b),
        Size::Text(t) => parse_size(&t)
            .ok_or_else(|| serde::de::Error::custom(format!("{t:?} is not a size (bytes, or K, M, G, T)"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_is_the_default() {
        let doc = include_str!("config.rs");
        let example: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.strip_prefix("//!").unwrap_or(l).strip_prefix(' ').unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let c = Config::parse(&example, Path::new("example")).expect("the example parses");
        let d = Config::default();
        assert_eq!((c.root, c.address, c.enable_stargz), (d.root, d.address, d.enable_stargz));
        assert_eq!(c.registry.config_path, d.registry.config_path);
        assert_eq!((c.cache.max_size, c.cache.prune_interval), (d.cache.max_size, d.cache.prune_interval));
        assert_eq!((c.mount.threads, c.mount.prefetch), (d.mount.threads, d.mount.prefetch));
    }

    #[test]
    fn sizes_and_errors() {
        assert_eq!(parse_size("10G"), Some(10 << 30));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1.5G"), None);
        let c = Config::parse("[cache]\nmax_size = 1048576\n", Path::new("c.toml")).expect("bytes");
        assert_eq!(c.cache.max_size, 1 << 20);
        let e = Config::parse("[cache]\nmax_size = \"lots\"\n", Path::new("c.toml")).expect_err("bad");
        assert!(e.to_string().contains("c.toml") && e.to_string().contains("lots"), "{e}");
        let e = Config::parse("enable_stargs = true\n", Path::new("c.toml")).expect_err("typo");
        assert!(e.to_string().contains("enable_stargs"), "{e}");
        assert_eq!(Config::default().cache_dir(), Path::new(DEFAULT_ROOT).join("cache"));
    }
}
