//! Start-up trace files: which files (and which of their chunks) a workload read, in the order
//! of first reads, as `zran mount --record-trace FILE` records them. `zran generate
//! --prefetch-trace FILE` turns one into the bootstrap's prefetch table; `mount
//! --prefetch-files` takes one as well as a plain list of paths.
//!
//! ```json
//! {"version": 1, "image": "registry.local/app:1", "chunk_size": 1048576, "window_seconds": 60,
//!  "files": [{"path": "/usr/bin/python3.11", "size": 6831736, "at_ms": 3, "chunks": [0, 1, 2]}]}
//! ```
//!
//! Paths are written as UTF-8 (a name that is not is written lossily, and warned about when
//! the trace is used, as any path not in the image is). A trace is written whole to a
//! temporary file beside it and renamed over it, so a reader never sees half of one.
//! Owns the trace file; calls `tar` (to normalize paths).

use super::MountError;
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::path::Path;

/// The trace format written here.
pub const VERSION: u32 = 1;
/// The largest trace or prefetch list read.
const MAX_FILE: u64 = 64 << 20;

/// A start-up trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trace {
    pub version: u32,
    /// The image mounted, as the mount named it.
    pub image: String,
    /// The chunk size the chunk indexes count in.
    pub chunk_size: u64,
    /// How long after the mount went live reads were recorded.
    pub window_seconds: f64,
    /// The files read, in the order of their first reads.
    pub files: Vec<TracedFile>,
}

/// One file of a trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracedFile {
    /// The path in the image, from its root.
    pub path: String,
    /// The file's size.
    pub size: u64,
    /// Milliseconds from the mount going live to the first read.
    pub at_ms: u64,
    /// Indexes of the chunks read, ascending.
    pub chunks: Vec<u32>,
}

impl Trace {
    /// Write the trace to `path`: whole, or not at all.
    pub fn write(&self, path: &Path) -> Result<(), MountError> {
        let io = |source| MountError::Trace {
            path: path.to_path_buf(),
            message: format!("cannot write: {source}"),
        };
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| io(std::io::Error::other(e)))?;
        let r = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.write_all(b"\n")?;
            f.sync_data()?;
            std::fs::rename(&tmp, path)
        })();
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r.map_err(io)
    }

    /// Read the trace `path`.
    pub fn read(path: &Path) -> Result<Trace, MountError> {
        Trace::parse(&read_bounded(path)?, path)
    }

    /// Parse a trace; `path` names it in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Trace, MountError> {
        let t: Trace = serde_json::from_slice(bytes).map_err(|e| MountError::Trace {
            path: path.to_path_buf(),
            message: format!("not a trace: {e}"),
        })?;
        if t.version != VERSION {
            return Err(MountError::Trace {
                path: path.to_path_buf(),
                message: format!("trace version {} (this zran reads version {VERSION})", t.version),
            });
        }
        Ok(t)
    }
}

/// The paths to prefetch that `path` lists, normalized, in order: a trace's files, or a plain
/// list (one path per line; blank lines and `#` comments skipped).
pub fn prefetch_paths(path: &Path) -> Result<Vec<Vec<u8>>, MountError> {
    let bytes = read_bounded(path)?;
    if bytes.trim_ascii_start().starts_with(b"{") {
        let t = Trace::parse(&bytes, path)?;
        return Ok(t.files.iter().map(|f| crate::tar::normalize(f.path.as_bytes())).collect());
    }
    Ok(list_paths(&bytes).collect())
}

/// The normalized paths of a plain prefetch list.
pub fn list_paths(text: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    text.split(|&c| c == b'\n')
        .map(<[u8]>::trim_ascii)
        .filter(|l| !l.is_empty() && !l.starts_with(b"#"))
        .map(crate::tar::normalize)
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, MountError> {
    use std::io::Read as _;
    let f = std::fs::File::open(path)
        .map_err(|source| MountError::PrefetchList { path: path.to_path_buf(), source })?;
    let mut bytes = Vec::new();
    f.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| MountError::PrefetchList { path: path.to_path_buf(), source })?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(MountError::Trace {
            path: path.to_path_buf(),
            message: format!("larger than {} MiB: not a prefetch list", MAX_FILE >> 20),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Trace {
        Trace {
            version: VERSION,
            image: "oci:/images/python".into(),
            chunk_size: 1 << 20,
            window_seconds: 60.0,
            files: vec![
                TracedFile {
                    path: "/usr/bin/python3.11".into(),
                    size: 6_831_736,
                    at_ms: 3,
                    chunks: vec![0, 1, 6],
                },
                TracedFile {
                    path: "/usr/lib/python3.11/json/__init__.py".into(),
                    size: 14_020,
                    at_ms: 40,
                    chunks: vec![0],
                },
            ],
        }
    }

    #[test]
    fn a_trace_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("trace.json");
        sample().write(&p).unwrap();
        let back = Trace::parse(&std::fs::read(&p).unwrap(), &p).unwrap();
        assert_eq!(back, sample());
        // Nothing temporary is left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let paths = prefetch_paths(&p).unwrap();
        assert_eq!(
            paths,
            vec![
                crate::tar::normalize(b"usr/bin/python3.11"),
                crate::tar::normalize(b"usr/lib/python3.11/json/__init__.py")
            ]
        );
    }

    #[test]
    fn plain_lists_skip_blanks_and_comments() {
        let text = b"# libraries\n/usr/lib/libc.so.6\n\n  usr/bin/python3  \r\n#/etc\n";
        let got: Vec<Vec<u8>> = list_paths(text).collect();
        assert_eq!(
            got,
            vec![crate::tar::normalize(b"/usr/lib/libc.so.6"), crate::tar::normalize(b"usr/bin/python3")]
        );
    }

    #[test]
    fn bad_traces_are_refused_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.json");
        for (bytes, want) in [
            (&b"{\"version\": 1, \"files\": 3}"[..], "not a trace"),
            (
                &br#"{"version": 9, "image": "", "chunk_size": 1, "window_seconds": 1, "files": []}"#[..],
                "version 9",
            ),
            (&b"{ truncated"[..], "not a trace"),
        ] {
            std::fs::write(&p, bytes).unwrap();
            let e = prefetch_paths(&p).unwrap_err().to_string();
            assert!(e.contains("t.json") && e.contains(want), "{e}");
        }
    }
}
