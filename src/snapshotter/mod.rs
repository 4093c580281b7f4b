//! zran as a containerd snapshotter: what containerd's snapshot API (Prepare, View, Mounts,
//! Commit, Remove, Stat, Update, Usage, List, Cleanup) keeps and promises.
//!
//! Owns the snapshotter's state under its root directory: [`store`], the snapshots' metadata in
//! one transactional database with the API's rules, and [`service`], the gRPC service over it
//! with each snapshot's data directory. Calls nothing else in the crate yet (remote layers
//! served by `mount` come next).

pub mod service;
pub mod store;

pub use service::{Service, ServiceError};
pub use store::{Filter, Info, Kind, Snapshot, Store, StoreError, Usage};
