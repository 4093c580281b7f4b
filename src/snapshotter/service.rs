//! containerd's Snapshots gRPC service over [`Store`]: snapshots whose data lives in
//! `ROOT/snapshots/<id>/{fs,work}`, mounted as containerd's overlayfs snapshotter mounts them (a
//! bind mount for a snapshot with no parent or a view of one, else one overlay whose lower
//! directories are the parents', nearest first).
//!
//! Directories are made under a temporary name and renamed once the metadata holds the
//! snapshot; `Cleanup` removes every directory the metadata does not know (also what a process
//! killed mid-way left).

use super::store::{Filter, Kind, Store, StoreError, Usage};
use containerd_snapshots::api::types::Mount;
use containerd_snapshots::tonic::{self, Status};
use containerd_snapshots::{Info as ApiInfo, Kind as ApiKind, Usage as ApiUsage};
use futures_util::stream::{self, BoxStream, StreamExt};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The service: metadata and data directories under one root.
pub struct Service {
    root: PathBuf,
    store: Store,
}

/// What went wrong, mapped to the gRPC codes containerd expects.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
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

impl Service {
    /// Open (or create) the snapshotter's state under `root`.
    pub fn open(root: &Path) -> Result<Service, ServiceError> {
        std::fs::create_dir_all(root.join("snapshots")).map_err(|e| io("cannot create", root, e))?;
        let store = Store::open(root)?;
        Ok(Service { root: root.to_path_buf(), store })
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    fn create(
        &self,
        kind: Kind,
        key: String,
        parent: String,
        l: HashMap<String, String>,
    ) -> Result<Vec<Mount>, ServiceError> {
        // The directory first, under a name no id has; renamed once the metadata holds it.
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let tmp = self.root.join("snapshots").join(format!("new-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&tmp).map_err(|e| io("cannot create", &tmp, e))?;
        for sub in ["fs", "work"] {
            std::fs::create_dir(tmp.join(sub)).map_err(|e| io("cannot create", &tmp, e))?;
        }
        let parent = (!parent.is_empty()).then_some(parent);
        let snap = match self.store.create(kind, &key, parent.as_deref(), labels(l)) {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e.into());
            }
        };
        let dir = self.dir(snap.id);
        std::fs::rename(&tmp, &dir).map_err(|e| io("cannot rename", &tmp, e))?;
        Ok(self.mounts_of(snap.id, snap.kind, &snap.parent_ids))
    }

    fn mounts_of(&self, id: u64, kind: Kind, parents: &[u64]) -> Vec<Mount> {
        let fs = |id: u64| self.dir(id).join("fs").to_string_lossy().into_owned();
        let bind = |source: String, ro: bool| Mount {
            r#type: "bind".into(),
            source,
            target: String::new(),
            options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
        };
        match (kind, parents) {
            (Kind::View, []) => vec![bind(fs(id), true)],
            (Kind::View, [p]) => vec![bind(fs(*p), true)],
            (_, []) => vec![bind(fs(id), false)],
            (Kind::View, ps) => {
                let lower = ps.iter().map(|&p| fs(p)).collect::<Vec<_>>().join(":");
                vec![Mount {
                    r#type: "overlay".into(),
                    source: "overlay".into(),
                    target: String::new(),
                    options: vec![format!("lowerdir={lower}")],
                }]
            }
            (_, ps) => {
                let lower = ps.iter().map(|&p| fs(p)).collect::<Vec<_>>().join(":");
                vec![Mount {
                    r#type: "overlay".into(),
                    source: "overlay".into(),
                    target: String::new(),
                    options: vec![
                        "index=off".into(),
                        format!("workdir={}", self.dir(id).join("work").display()),
                        format!("upperdir={}", fs(id)),
                        format!("lowerdir={lower}"),
                    ],
                }]
            }
        }
    }

    /// Remove every snapshot directory the metadata does not know.
    pub fn cleanup(&self) -> Result<(), ServiceError> {
        let known = self.store.ids()?;
        let dir = self.root.join("snapshots");
        for entry in std::fs::read_dir(&dir).map_err(|e| io("cannot list", &dir, e))? {
            let entry = entry.map_err(|e| io("cannot list", &dir, e))?;
            let name = entry.file_name();
            let keep =
                name.to_str().and_then(|n| n.parse::<u64>().ok()).is_some_and(|id| known.contains_key(&id));
            if !keep {
                tracing::info!(dir = %entry.path().display(), "removing a snapshot directory the metadata does not know");
                std::fs::remove_dir_all(entry.path()).map_err(|e| io("cannot remove", &entry.path(), e))?;
            }
        }
        Ok(())
    }
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
        Ok(self.mounts_of(snap.id, snap.kind, &snap.parent_ids))
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        l: HashMap<String, String>,
    ) -> Result<Vec<Mount>, ServiceError> {
        self.create(Kind::Active, key, parent, l)
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        l: HashMap<String, String>,
    ) -> Result<Vec<Mount>, ServiceError> {
        self.create(Kind::View, key, parent, l)
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
        let (id, _) = self.store.remove(&key)?;
        let dir = self.dir(id);
        let gone = self.root.join("snapshots").join(format!("rm-{id}"));
        match std::fs::rename(&dir, &gone) {
            Ok(()) => std::fs::remove_dir_all(&gone).map_err(|e| io("cannot remove", &gone, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("cannot remove", &dir, e)),
        }
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
