//! eStargz layers: footers, tables of contents and their digests.
//!
//! Owns the eStargz format (a gzip stream whose last members hold a JSON TOC of every file
//! and chunk, and a footer that points at it). Calls nothing else in the crate yet; the TOC
//! reader will use `gzip` to inflate the TOC member.

pub mod footer;
pub mod toc;

pub use footer::{Footer, FooterKind, detect_footer};
pub use toc::{Chunk, EntryKind, Landmark, LandmarkKind, Toc, TocEntry, TocError, Verify, read_toc};
