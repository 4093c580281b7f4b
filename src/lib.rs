//! zran: lazy loading for the container images that already exist.
//!
//! Modules, in the order data flows through them (a module calls only those before it):
//! - [`oci`]: images in registries and OCI layouts: references, manifests, blobs.
//! - [`gzip`]: the zran engine, random access into gzip streams.
//! - [`estargz`]: eStargz footers and tables of contents.
//! - [`tar`]: tar entries with the offsets of their data.

pub mod estargz;
pub mod gzip;
pub mod oci;
pub mod tar;
