//! containerd's Snapshots gRPC service over [`Store`]: snapshots whose data lives in
//! `ROOT/snapshots/<id>/{fs,work}`, mounted as containerd's overlayfs snapshotter mounts them (a
//! bind mount for a snapshot with no parent or a view of one, else one overlay whose lower
//! directories are the parents', nearest first).
//!
//! Directories are made under a temporary name and renamed once the metadata holds the
//! snapshot; `Cleanup` removes every directory the metadata does not know (also what a process
//! killed mid-way left).

use super::images::Images;
use super::remote::{Decider, Decision, RemoteImage, RemoteLayer, TARGET, remote_labels};
use super::store::{Filter, Kind, Snapshot, Store, StoreError, Usage};
use containerd_snapshots::api::types::Mount;
use containerd_snapshots::tonic::{self, Status};
use containerd_snapshots::{Info as ApiInfo, Kind as ApiKind, Usage as ApiUsage};
use futures_util::stream::{self, BoxStream, StreamExt};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The service: metadata and data directories under one root, and, with [`Remote`], layers
/// served lazily.
pub struct Service {
    root: PathBuf,
    store: Store,
    remote: Option<Remote>,
    /// Held while a snapshot directory is made and renamed into place, while one is removed,
    /// and while Cleanup lists and removes the directories the metadata does not know: a
    /// directory being made is not yet in the metadata, and Cleanup (containerd's garbage
    /// collector calls it at any time) would take it from under its Prepare.
    dirs: Mutex<()>,
}

/// What serves remote layers: the decisions per image, the serving processes, the counters.
pub struct Remote {
    pub decider: Decider,
    pub images: Images,
    counters: Mutex<Counters>,
}

impl Remote {
    pub fn new(decider: Decider, images: Images) -> Remote {
        Remote { decider, images, counters: Mutex::new(Counters::default()) }
    }
}

/// What the snapshotter has decided and done, per image (`ROOT/stats.json`, `zran stats
/// --snapshotter`). The serving processes keep their own counters in their mount records.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// Layers committed as remote (nothing downloaded by containerd).
    pub remote_layers: u64,
    /// Layers left to containerd's ordinary pull.
    pub plain_layers: u64,
    /// Images served lazily and images that fell back, by reference.
    pub images: BTreeMap<String, ImageCounters>,
}

#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct ImageCounters {
    /// `artifact`, `estargz`, or `plain`.
    pub served_as: String,
    /// Why it fell back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The manifest digest's hex (the key of its serving process), when served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    pub layers: u64,
}

/// What went wrong, mapped to the gRPC codes containerd expects.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    /// A layer is served remotely: containerd is to skip it.
    #[error("target snapshot {0} already exists")]
    RemoteCommitted(String),
    /// An image cannot be mounted now.
    #[error("{0}")]
    Unavailable(String),
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        match e {
            ServiceError::Store(StoreError::NotFound(m)) => {
                Status::not_found(format!("snapshot {m} does not exist"))
            }
            ServiceError::Store(StoreError::AlreadyExists(m)) => {
                Status::already_exists(format!("snapshot {m} already exists"))
            }
            ServiceError::Store(StoreError::InvalidArgument(m)) => Status::invalid_argument(m),
            ServiceError::Store(StoreError::FailedPrecondition(m)) => Status::failed_precondition(m),
            e @ ServiceError::RemoteCommitted(_) => Status::already_exists(e.to_string()),
            ServiceError::Unavailable(m) => Status::unavailable(m),
            e => Status::internal(e.to_string()),
        }
    }
}

fn io(what: &'static str, path: &Path, source: std::io::Error) -> ServiceError {
    ServiceError::Io { what, path: path.to_path_buf(), source }
}

fn labels(l: HashMap<String, String>) -> BTreeMap<String, String> {
    l.into_iter().collect()
}

fn api_info(i: super::store::Info) -> ApiInfo {
    ApiInfo {
        kind: match i.kind {
            Kind::View => ApiKind::View,
            Kind::Active => ApiKind::Active,
            Kind::Committed => ApiKind::Committed,
        },
        name: i.name,
        parent: i.parent.unwrap_or_default(),
        labels: i.labels.into_iter().collect(),
        created_at: i.created,
        updated_at: i.updated,
    }
}

/// Disk usage of a directory tree as containerd counts it: each inode once, its blocks.
fn disk_usage(dir: &Path) -> std::io::Result<Usage> {
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let md = entry.metadata()?;
            if seen.insert((md.dev(), md.ino())) {
                usage.inodes += 1;
                usage.size += (md.blocks() * 512) as i64;
            }
            if md.is_dir() {
                todo.push(entry.path());
            }
        }
    }
    Ok(usage)
}

/// A lower directory of an overlay: a snapshot's own data, or an image served whole.
fn overlay(lowers: &[String], upper: Option<(String, String)>) -> Mount {
    let mut options = Vec::new();
    if let Some((work, upper)) = upper {
        options.extend(["index=off".to_string(), format!("workdir={work}"), format!("upperdir={upper}")]);
    }
    options.push(format!("lowerdir={}", lowers.join(":")));
    Mount { r#type: "overlay".into(), source: "overlay".into(), target: String::new(), options }
}

fn bind(source: String, ro: bool) -> Mount {
    Mount {
        r#type: "bind".into(),
        source,
        target: String::new(),
        options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
    }
}

impl Service {
    /// Open (or create) the snapshotter's state under `root`; `remote` serves layers lazily.
    pub fn open(root: &Path, remote: Option<Remote>) -> Result<Service, ServiceError> {
        std::fs::create_dir_all(root.join("snapshots")).map_err(|e| io("cannot create", root, e))?;
        let store = Store::open(root)?;
        let service = Service { root: root.to_path_buf(), store, remote, dirs: Mutex::new(()) };
        if let Some(r) = &service.remote
            && let Ok(bytes) = std::fs::read(root.join(STATS))
            && let Ok(c) = serde_json::from_slice::<Counters>(&bytes)
        {
            *r.counters.lock().unwrap_or_else(|p| p.into_inner()) = c;
        }
        Ok(service)
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    /// The snapshot's data directory, made under a name no id has and renamed once the
    /// metadata holds it.
    fn create_dirs(&self) -> Result<PathBuf, ServiceError> {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let tmp = self.root.join("snapshots").join(format!("new-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&tmp).map_err(|e| io("cannot create", &tmp, e))?;
        for sub in ["fs", "work"] {
            std::fs::create_dir(tmp.join(sub)).map_err(|e| io("cannot create", &tmp, e))?;
        }
        Ok(tmp)
    }

    fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        l: BTreeMap<String, String>,
    ) -> Result<Snapshot, ServiceError> {
        let _dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        let tmp = self.create_dirs()?;
        let parent = (!parent.is_empty()).then_some(parent);
        let snap = match self.store.create(kind, key, parent, l) {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e.into());
            }
        };
        let dir = self.dir(snap.id);
        std::fs::rename(&tmp, &dir).map_err(|e| io("cannot rename", &tmp, e))?;
        Ok(snap)
    }

    /// Prepare or View: the snapshot, then its mounts; a snapshot that cannot be mounted (its
    /// image cannot be served) is taken back.
    fn create_mounted(
        &self,
        kind: Kind,
        key: String,
        parent: String,
        l: HashMap<String, String>,
    ) -> Result<Vec<Mount>, ServiceError> {
        let snap = self.create(kind, &key, &parent, labels(l))?;
        match self.mounts_of(&snap) {
            Ok(m) => Ok(m),
            Err(e) => {
                if self.store.remove(&key).is_ok() {
                    let _ = std::fs::remove_dir_all(self.dir(snap.id));
                }
                Err(e)
            }
        }
    }

    /// A layer `Prepare` (`containerd.io/snapshot.ref` = `target`) of an image zran serves:
    /// commit the layer as remote and say so (containerd then downloads nothing for it).
    /// `None`: the ordinary path.
    fn try_remote(
        &self,
        key: &str,
        parent: &str,
        target: &str,
        l: &HashMap<String, String>,
    ) -> Result<Option<ServiceError>, ServiceError> {
        let Some(remote) = &self.remote else { return Ok(None) };
        let Some((reference, layer, manifest)) = super::remote::image_of(l) else {
            tracing::info!(
                layer = target,
                "no image named in the labels (ctr-remote rpull, or CRI with disable_snapshot_annotations = false, name it): containerd unpacks the layer"
            );
            self.count(None, "", 0, Some("no image named in the labels"));
            return Ok(None);
        };
        let (decision, index) =
            tokio::task::block_in_place(|| remote.decider.decide(&reference, &layer, manifest.as_deref()));
        let (image, index) = match (decision, index) {
            (Decision::Remote(image), Some(index)) => (image, index),
            (Decision::Remote(_), None) => unreachable!("a remote decision always has the layer index"),
            (Decision::Plain(why), _) => {
                self.count(None, &reference, 0, Some(&why));
                return Ok(None);
            }
        };
        let mut committed = labels(l.clone());
        committed.extend(remote_labels(&image, index));
        let snap = self.create(Kind::Active, key, parent, labels(l.clone()))?;
        if let Err(e) = self.store.commit(key, target, committed, Usage::default()) {
            let _ = self.store.remove(key);
            let _ = std::fs::remove_dir_all(self.dir(snap.id));
            return Err(match e {
                StoreError::AlreadyExists(t) => ServiceError::RemoteCommitted(t),
                e => e.into(),
            });
        }
        tracing::info!(layer = target, image = %image.reference, index, "remote layer");
        self.count(Some(&image), &reference, 1, None);
        Ok(Some(ServiceError::RemoteCommitted(target.to_string())))
    }

    fn count(&self, image: Option<&RemoteImage>, reference: &str, remote: u64, reason: Option<&str>) {
        let Some(r) = &self.remote else { return };
        let snapshot = {
            let mut c = r.counters.lock().unwrap_or_else(|p| p.into_inner());
            if remote > 0 {
                c.remote_layers += remote;
            } else {
                c.plain_layers += 1;
            }
            if !reference.is_empty() {
                let e = c.images.entry(reference.to_string()).or_default();
                e.layers += 1;
                match image {
                    Some(i) => {
                        e.served_as = i.via.to_string();
                        e.manifest = Some(i.manifest_hex.clone());
                        e.reason = None;
                    }
                    None => {
                        e.served_as = "plain".into();
                        e.reason = reason.map(str::to_string);
                    }
                }
            }
            c.clone()
        };
        let path = self.root.join(STATS);
        let tmp = path.with_extension("json.tmp");
        let written = serde_json::to_vec_pretty(&snapshot)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!("cannot write {}: {e}", path.display());
        }
    }

    /// The lower directories of a snapshot on `parents` (nearest first): each plain parent's
    /// data, down to the first remote one, whose chain is served whole in its place (the
    /// image, or the image's first layers when the parent is below its top).
    fn lowers(&self, snap: &Snapshot) -> Result<Vec<String>, ServiceError> {
        let mut lowers = Vec::new();
        for (&pid, l) in snap.parent_ids.iter().zip(&snap.parent_labels) {
            match RemoteLayer::from_labels(l) {
                None => lowers.push(self.dir(pid).join("fs").to_string_lossy().into_owned()),
                Some(layer) => {
                    lowers.push(self.serve(&layer)?.to_string_lossy().into_owned());
                    break;
                }
            }
        }
        Ok(lowers)
    }

    /// The mount point of a remote layer's chain, served.
    fn serve(&self, layer: &RemoteLayer) -> Result<PathBuf, ServiceError> {
        let unavailable = |m: String| ServiceError::Unavailable(m);
        let Some(remote) = &self.remote else {
            return Err(unavailable(format!(
                "snapshot of {} is remote, but this snapshotter serves no remote layers",
                layer.image
            )));
        };
        let key = layer
            .serve_key()
            .ok_or_else(|| unavailable(format!("remote image {} is not pinned by digest", layer.image)))?;
        // A chain served already needs nothing more (no registry, no artifact check): the
        // common case, as Mounts is asked again for every container start.
        if let Some(mnt) = remote.images.live(&key) {
            return Ok(mnt);
        }
        tokio::task::block_in_place(|| {
            let dir = if layer.is_top() {
                layer.dir.clone()
            } else {
                Some(remote.decider.prefix_artifact(&layer.image, layer.index).map_err(|e| {
                    unavailable(format!(
                        "cannot serve the first {} layers of {}: {e}",
                        layer.index + 1,
                        layer.image
                    ))
                })?)
            };
            remote
                .images
                .ensure(&key, &layer.image, dir.as_deref())
                .map_err(|e| unavailable(format!("cannot serve {}: {}", layer.image, error_chain(&e))))
        })
    }

    fn mounts_of(&self, snap: &Snapshot) -> Result<Vec<Mount>, ServiceError> {
        let fs = |id: u64| self.dir(id).join("fs").to_string_lossy().into_owned();
        let lowers = self.lowers(snap)?;
        Ok(match (snap.kind, lowers.as_slice()) {
            (Kind::View, []) => vec![bind(fs(snap.id), true)],
            (Kind::View, [one]) => vec![bind(one.clone(), true)],
            (_, []) => vec![bind(fs(snap.id), false)],
            (Kind::View, ls) => vec![overlay(ls, None)],
            (_, ls) => vec![overlay(
                ls,
                Some((self.dir(snap.id).join("work").to_string_lossy().into_owned(), fs(snap.id))),
            )],
        })
    }

    /// The images that active snapshots and views need served, by key.
    fn needed(&self) -> Result<BTreeMap<String, RemoteLayer>, ServiceError> {
        let mut out = BTreeMap::new();
        for info in self.store.list(&[])? {
            if info.kind == Kind::Committed {
                continue;
            }
            let snap = match self.store.get(&info.name) {
                Ok(s) => s,
                Err(StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            for l in &snap.parent_labels {
                if let Some(layer) = RemoteLayer::from_labels(l) {
                    if let Some(k) = layer.serve_key() {
                        out.insert(k, layer.clone());
                    }
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Stop serving the images no active snapshot or view needs.
    fn release_unused(&self) -> Result<(), ServiceError> {
        let Some(remote) = &self.remote else { return Ok(()) };
        let needed = self.needed()?;
        for key in remote.images.known() {
            if !needed.contains_key(&key) {
                tokio::task::block_in_place(|| remote.images.stop(&key))
                    .map_err(|e| ServiceError::Unavailable(error_chain(&e)))?;
            }
        }
        Ok(())
    }

    /// At start: re-attach to the serving processes still alive, mount again the images whose
    /// process died (containers started before keep what they had; new ones get the new mount),
    /// and stop those nothing needs.
    pub fn restore(&self) -> Result<(), ServiceError> {
        let Some(remote) = &self.remote else { return Ok(()) };
        for (key, layer) in self.needed()? {
            let dir = if layer.is_top() {
                layer.dir.clone()
            } else {
                remote.decider.prefix_artifact(&layer.image, layer.index).ok()
            };
            if let Err(e) = remote.images.ensure(&key, &layer.image, dir.as_deref()) {
                tracing::warn!(image = %layer.image, "cannot serve it again: {}", error_chain(&e));
            }
        }
        let needed = self.needed()?;
        for key in remote.images.known() {
            if !needed.contains_key(&key)
                && let Err(e) = remote.images.stop(&key)
            {
                tracing::warn!(image = %key, "cannot stop serving it: {}", error_chain(&e));
            }
        }
        Ok(())
    }

    /// Remove every snapshot directory the metadata does not know.
    pub fn cleanup(&self) -> Result<(), ServiceError> {
        let _dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        let known = self.store.ids()?;
        let dir = self.root.join("snapshots");
        for entry in std::fs::read_dir(&dir).map_err(|e| io("cannot list", &dir, e))? {
            let entry = entry.map_err(|e| io("cannot list", &dir, e))?;
            let name = entry.file_name();
            let keep =
                name.to_str().and_then(|n| n.parse::<u64>().ok()).is_some_and(|id| known.contains_key(&id));
            if !keep {
                tracing::info!(dir = %entry.path().display(), "removing a snapshot directory the metadata does not know");
                match std::fs::remove_dir_all(entry.path()) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(io("cannot remove", &entry.path(), e));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// The snapshotter's counters, under its root.
pub const STATS: &str = "stats.json";

/// The counters a snapshotter with root `root` wrote, each served image with its mount's
/// record (`mount`: the serving process, whether it is live, bytes fetched, chunks verified,
/// digest failures, cache hits) read from `cache`.
pub fn stats_with_mounts(root: &Path, cache: &Path) -> Result<serde_json::Value, ServiceError> {
    // Records are keyed by canonical mount points.
    let root = &std::fs::canonicalize(root).map_err(|e| io("cannot find", root, e))?;
    let path = root.join(STATS);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => b"{}".to_vec(),
        Err(e) => return Err(io("cannot read", &path, e)),
    };
    let mut v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| io("cannot parse", &path, std::io::Error::other(e)))?;
    if let Some(images) = v.get_mut("images").and_then(|i| i.as_object_mut()) {
        for entry in images.values_mut() {
            let Some(hex) = entry.get("manifest").and_then(|m| m.as_str()).map(str::to_string) else {
                continue;
            };
            let mnt = root.join("images").join(&hex).join("mnt");
            if let Ok(r) = crate::mount::Record::read(cache, &mnt) {
                entry["mount"] = serde_json::json!({
                    "pid": r.pid,
                    "mountpoint": r.mountpoint,
                    "live": r.running(),
                    "served": r.served,
                    "fuse_reason": r.fuse_reason,
                    "stats": r.stats,
                });
            }
        }
    }
    Ok(v)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[tonic::async_trait]
impl containerd_snapshots::Snapshotter for Service {
    type Error = ServiceError;
    type InfoStream = BoxStream<'static, Result<ApiInfo, ServiceError>>;

    async fn stat(&self, key: String) -> Result<ApiInfo, ServiceError> {
        Ok(api_info(self.store.stat(&key)?))
    }

    async fn update(&self, info: ApiInfo, fieldpaths: Option<Vec<String>>) -> Result<ApiInfo, ServiceError> {
        let paths = fieldpaths.unwrap_or_default();
        let l = labels(info.labels);
        Ok(api_info(self.store.update(&info.name, &l, &paths)?))
    }

    async fn usage(&self, key: String) -> Result<ApiUsage, ServiceError> {
        let snap = self.store.get(&key)?;
        let u = match self.store.usage(&key)? {
            Some(u) => u,
            None => {
                let fs = self.dir(snap.id).join("fs");
                disk_usage(&fs).map_err(|e| io("cannot measure", &fs, e))?
            }
        };
        Ok(ApiUsage { inodes: u.inodes, size: u.size })
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>, ServiceError> {
        let snap = self.store.get(&key)?;
        if snap.kind == Kind::Committed {
            return Err(StoreError::FailedPrecondition(format!(
                "snapshot {key} is committed: it has no mounts"
            ))
            .into());
        }
        self.mounts_of(&snap)
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        l: HashMap<String, String>,
    ) -> Result<Vec<Mount>, ServiceError> {
        if let Some(target) = l.get(TARGET) {
            if self.store.stat(target).is_ok() {
                return Err(ServiceError::RemoteCommitted(target.clone()));
            }
            if let Some(done) = self.try_remote(&key, &parent, target, &l)? {
                return Err(done);
            }
        }
        self.create_mounted(Kind::Active, key, parent, l)
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        l: HashMap<String, String>,
    ) -> Result<Vec<Mount>, ServiceError> {
        self.create_mounted(Kind::View, key, parent, l)
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        l: HashMap<String, String>,
    ) -> Result<(), ServiceError> {
        let snap = self.store.get(&key)?;
        let fs = self.dir(snap.id).join("fs");
        let usage = if snap.kind == Kind::Active {
            disk_usage(&fs).map_err(|e| io("cannot measure", &fs, e))?
        } else {
            Usage::default()
        };
        self.store.commit(&key, &name, labels(l), usage)?;
        Ok(())
    }

    async fn remove(&self, key: String) -> Result<(), ServiceError> {
        let dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        let (id, kind) = self.store.remove(&key)?;
        let dir = self.dir(id);
        let gone = self.root.join("snapshots").join(format!("rm-{id}"));
        match std::fs::rename(&dir, &gone) {
            Ok(()) => std::fs::remove_dir_all(&gone).map_err(|e| io("cannot remove", &gone, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("cannot remove", &dir, e)),
        }
        drop(dirs);
        if kind != Kind::Committed
            && let Err(e) = self.release_unused()
        {
            tracing::warn!("after removing {key}: {e}");
        }
        Ok(())
    }

    async fn clear(&self) -> Result<(), ServiceError> {
        self.cleanup()
    }

    async fn list(
        &self,
        _snapshotter: String,
        filters: Vec<String>,
    ) -> Result<Self::InfoStream, ServiceError> {
        let filters = filters.iter().map(|f| Filter::parse(f)).collect::<Result<Vec<_>, _>>()?;
        let infos = self.store.list(&filters)?;
        Ok(stream::iter(infos.into_iter().map(|i| Ok(api_info(i)))).boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cleanup (containerd's garbage collector calls it at any time) never takes a directory
    /// from under a Prepare that is making it, nor one just renamed into place.
    #[test]
    fn cleanup_racing_prepares_removes_nothing_they_make() {
        let root = tempfile::tempdir().unwrap();
        let service = Service::open(root.path(), None).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = service.cleanup();
                }
            });
            // (Every outcome is collected before the cleaner stops, so a failure ends the test.)
            let lost: Vec<String> = (0..300)
                .filter_map(|i| match service.create(Kind::Active, &format!("k{i}"), "", BTreeMap::new()) {
                    Ok(snap) if service.dir(snap.id).join("fs").is_dir() => None,
                    Ok(_) => Some(format!("snapshot {i} lost its directory")),
                    Err(e) => Some(format!("snapshot {i}: {e}")),
                })
                .collect();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            assert!(lost.is_empty(), "{lost:?}");
        });
        service.cleanup().unwrap();
        let left = std::fs::read_dir(root.path().join("snapshots")).unwrap().count();
        assert_eq!(left, 300);
    }
}
