//! `.zidx`: the on-disk form of an [`Index`](super::Index).
//!
//! Byte layout in `formats/zidx.md`. Structures are declared once in `format.rs` as
//! little-endian `zerocopy` types; `reader.rs` validates every field before use and `writer.rs`
//! writes the canonical form.

mod format;
mod reader;
mod writer;

pub use format::{MAGIC, VERSION};
pub use reader::{ZidxError, decode, read_file};
pub use writer::{encode, write_file};
