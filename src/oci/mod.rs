//! Images where users keep them: registries and OCI image layouts on disk.
//!
//! Owns image references, digests, manifests and indexes (with platform choice), the registry
//! client (auth, range reads, retries) and the OCI layout reader, behind one interface, so that
//! the rest of zran does not care where an image lives. Calls nothing else in the crate.

pub mod digest;
pub mod reference;

pub use digest::Digest;
pub use reference::{ImageRef, LayoutRef, RegistryRef};
