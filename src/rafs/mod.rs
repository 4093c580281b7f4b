//! RAFS v6: the bootstrap (`image.boot`) and the blob compression context (`blob.meta`), as
//! Nydus writes them, so that Nydus's own parsers and the kernel's EROFS read what zran writes.
//!
//! Owns the on-disk formats only. Each format declares its structures once, as `zerocopy`
//! little-endian types (`format.rs`), with the writer and the reader apart; readers check every
//! offset, size and count before use. Calls `tree` (the merged image) and `layer` (the chunks
//! and checkpoints of one pass) for what it writes.

pub mod format;
pub mod meta;
pub mod reader;
pub mod tail;
pub mod writer;
