//! zran as a containerd snapshotter: what containerd's snapshot API (Prepare, View, Mounts,
//! Commit, Remove, Stat, Update, Usage, List, Cleanup) keeps and promises.
//!
//! Owns the snapshotter's state under its root directory. Today that is [`store`]: the
//! snapshots' metadata in one transactional database, with the API's rules. Calls nothing else
//! in the crate.

pub mod store;

pub use store::{Filter, Info, Kind, Snapshot, Store, StoreError, Usage};
