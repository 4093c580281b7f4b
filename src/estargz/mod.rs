//! eStargz layers: footers, tables of contents and their digests.
//!
//! Owns the eStargz format (a gzip stream whose last members hold a JSON TOC of every file
//! and chunk, and a footer that points at it). Calls `oci` for the blob's tail, `gzip` to
//! inflate the TOC member and `tar` to find the TOC entry in it.

pub mod footer;
pub mod toc;

pub use footer::{Footer, FooterKind, detect_footer};
pub use toc::{
    Chunk, EntryKind, Landmark, LandmarkKind, Toc, TocEntry, TocError, Verify, read_toc, read_toc_from,
    read_zstd_toc,
};
