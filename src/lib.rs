//! zran: lazy loading for the container images that already exist.
//!
//! Modules, in the order data flows through them (a module calls only those before it):
//! - [`oci`]: images in registries and OCI layouts: references, manifests, blobs.
//! - [`gzip`]: the zran engine, random access into gzip streams.
//! - [`zframe`]: the zstd frame engine: one pass over a zstd stream, its frame starts as
//!   checkpoints.
//! - [`estargz`]: eStargz footers and tables of contents.
//! - [`tar`]: tar entries with the offsets of their data.
//! - [`layer`]: one streaming pass over a layer blob: index and entries together.
//! - [`tree`]: the merge of layers into one filesystem tree.
//! - [`rafs`]: the RAFS v6 bootstrap and blob.meta formats (Nydus-compatible).
//! - [`parallel`]: layers worked on in parallel, in order, stopping at the first error.
//! - [`artifact`]: `generate`'s output: image -> layers -> tree -> bootstrap, and its directory.
//! - [`blob`]: chunks of layer blobs fetched by range, verified and cached, for reads.
//! - [`nydus`]: Nydus images (native and oci-ref): their bootstrap layer and how each blob
//!   is read.
//! - [`fuse`]: the read-only filesystem that serves a bootstrap through FUSE.
//! - [`mount`]: a mount's life cycle: open what is mounted, serve it (in the foreground or
//!   detached), its records, unmounting it.
//! - [`snapshotter`]: zran as a containerd snapshotter: the snapshots' metadata and its rules.

pub mod artifact;
pub mod blob;
pub mod convert;
pub mod estargz;
pub mod fuse;
pub mod gzip;
pub mod layer;
pub mod mount;
pub mod nydus;
pub mod oci;
pub mod parallel;
pub mod rafs;
pub mod snapshotter;
pub mod tar;
pub mod tree;
pub mod zframe;
pub mod zstdchunked;
