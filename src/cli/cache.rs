//! `zran cache ls` and `zran cache prune`: what the chunk cache holds, and room made in it
//! without touching what a live mount uses.

use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use zran::blob::cache;
use zran::mount::default_cache_dir;

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List the cached blobs: layer digest, bytes on disk, chunks held, last use, in use.
    Ls(LsArgs),
    /// Remove cached blobs no mount is using (least recently used first) and the artifacts
    /// fetched for `mount IMAGE` (fetched again when needed).
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// The cache directory (default /var/lib/zran as root, else ~/.cache/zran).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Stop once the blobs left take at most this much disk (K, M, G suffixes); without it,
    /// every blob no mount uses goes.
    #[arg(long, value_parser = super::util::parse_size, value_name = "SIZE")]
    pub keep: Option<u64>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: CacheCommand) -> anyhow::Result<()> {
    match cmd {
        CacheCommand::Ls(a) => ls(&a.cache_dir.unwrap_or_else(default_cache_dir), a.json),
        CacheCommand::Prune(a) => prune(&a.cache_dir.unwrap_or_else(default_cache_dir), a.keep, a.json),
    }
}

fn ls(dir: &Path, json: bool) -> anyhow::Result<()> {
    let entries = cache::list(dir).with_context(|| format!("cannot read the cache {}", dir.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    for e in &entries {
        println!(
            "sha256:{}  {:>12} bytes  {:>6} chunks  {}  {}",
            e.blob,
            e.disk_bytes,
            e.chunks,
            age(e.modified),
            if e.in_use { "in use" } else { "" }
        );
    }
    let total: u64 = entries.iter().map(|e| e.disk_bytes).sum();
    println!("{} blobs, {total} bytes on disk in {}", entries.len(), dir.join("blobs").display());
    Ok(())
}

fn age(modified: u64) -> String {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let s = now.saturating_sub(modified);
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

/// Artifact copies, kept Nydus bootstrap layers (and leftovers of interrupted fetches) not
/// written in the last minute: a mount that is starting may be about to open one.
fn prune_artifacts(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return Ok(removed) };
    let recent = SystemTime::now() - Duration::from_secs(60);
    for e in rd {
        let e = e?;
        let fresh = e.metadata().and_then(|m| m.modified()).map(|t| t > recent).unwrap_or(true);
        if fresh {
            continue;
        }
        let gone = if e.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(e.path())
        } else {
            std::fs::remove_file(e.path())
        };
        gone.with_context(|| format!("cannot remove {}", e.path().display()))?;
        removed.push(e.file_name().to_string_lossy().into_owned());
    }
    Ok(removed)
}

fn prune(dir: &Path, keep: Option<u64>, json: bool) -> anyhow::Result<()> {
    let removed =
        cache::prune(dir, keep).with_context(|| format!("cannot prune the cache {}", dir.display()))?;
    let artifacts = prune_artifacts(&dir.join("artifacts"))?;
    let bootstraps = zran::mount::kernel::prune_bootstraps(dir)
        .with_context(|| format!("cannot prune the bootstraps of {}", dir.display()))?;
    let freed: u64 = removed.iter().map(|e| e.disk_bytes).sum();
    let left = cache::list(dir)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "removed": removed,
                "artifacts_removed": artifacts,
                "bootstraps_removed": bootstraps,
                "freed_bytes": freed,
                "left": left,
            }))?
        );
        return Ok(());
    }
    for e in &removed {
        println!("removed sha256:{} ({} bytes)", e.blob, e.disk_bytes);
    }
    let in_use = left.iter().filter(|e| e.in_use).count();
    println!(
        "freed {freed} bytes ({} blobs, {} artifacts); {} blobs left ({in_use} in use), {} bytes",
        removed.len(),
        artifacts.len(),
        left.len(),
        left.iter().map(|e| e.disk_bytes).sum::<u64>()
    );
    Ok(())
}
