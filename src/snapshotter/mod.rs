//! zran as a containerd snapshotter: what containerd's snapshot API (Prepare, View, Mounts,
//! Commit, Remove, Stat, Update, Usage, List, Cleanup) keeps and promises, and remote layers.
//!
//! Owns the snapshotter's state under its root directory: [`store`], the snapshots' metadata in
//! one transactional database with the API's rules; [`service`], the gRPC service over it with
//! each snapshot's data directory; [`remote`], which images are served lazily (decided once per
//! image, from the labels containerd passes); [`images`], one serving process per image (a
//! `zran mount` that outlives the snapshotter); [`config`], the configuration file.
//! Calls `oci`, `artifact` (to find and check what an image offers) and `mount`.

pub mod config;
pub mod images;
pub mod remote;
pub mod service;
pub mod store;

pub use service::{Counters, Remote, Service, ServiceError};
pub use store::{Filter, Info, Kind, Snapshot, Store, StoreError, Usage};
