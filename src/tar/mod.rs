//! Tar entries, with the offset of each entry's data in the uncompressed stream.
//!
//! Owns the tar format as OCI layers use it, read as Go's `archive/tar` (and so containerd,
//! docker, podman and umoci) reads it: ustar, v7, star, GNU (long names and links, base-256
//! numbers) and PAX (long paths, sub-second mtimes, xattrs in `SCHILY.xattr.*` and
//! `LIBARCHIVE.xattr.*`; global headers are skipped, as the runtimes skip them), streams that
//! end without their end blocks or padding. Calls nothing else in the crate; `tar::TarSink`
//! plugs it into the gzip engine's one pass.
//!
//! The parser is *pushed* bytes as the gzip engine produces them (it is a `Sink` of the index
//! pass), instead of pulling from a reader as the `tar` crate does: in the same call that hands
//! it a run of bytes it must be able to ask the engine for checkpoints at the data it has just
//! found, which a parser on its own thread behind a pipe could not do in time. The `tar` crate
//! is the oracle its tests compare against.

mod header;
mod parser;
mod sink;

pub use parser::{Entry, EntryKind, TarError, TarParser, TarWarning, normalize};
pub use sink::{FileChunk, HOT_SLACK, Parsed, TarSink};
