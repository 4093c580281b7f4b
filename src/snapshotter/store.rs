//! The snapshots' metadata, as containerd's own snapshotters keep it (`snapshots/storage`):
//! one key space for active, view and committed snapshots; each with a numeric id that names its
//! data directory, its parent, labels, creation and update times, and (committed) its usage; and
//! a back link from each parent to its children, so that a parent is never removed under one.
//!
//! Everything lives in one redb file, `ROOT/metadata.redb`, and each operation is one write
//! transaction that checks the API's rules and then changes what it must, or nothing: a process
//! killed at any moment leaves the state of the last committed operation, which the next start
//! opens. Errors say which rule a request broke, so that the gRPC layer can map them to the
//! codes containerd expects (NotFound, AlreadyExists, InvalidArgument, FailedPrecondition).

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Snapshot key -> [`Record`] as JSON.
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
/// (parent id, child id) -> child key: who depends on whom.
const CHILDREN: TableDefinition<(u64, u64), &str> = TableDefinition::new("children");
/// Counters: `next_id`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The file under the root.
pub const FILE: &str = "metadata.redb";

/// What a snapshot is, as containerd's API says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A read-only view of a committed snapshot (never committed itself).
    View,
    /// A writable snapshot, to be committed or removed.
    Active,
    /// A committed, read-only snapshot that others may have as their parent.
    Committed,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// Disk usage of a snapshot's own data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub inodes: i64,
    pub size: i64,
}

/// A snapshot as `Stat` and `List` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    pub kind: Kind,
    pub parent: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
}

/// What serving a snapshot needs: its data directory's id, its kind, and the ids of its
/// ancestors, nearest first (the order of overlayfs's `lowerdir`), with their labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub id: u64,
    pub kind: Kind,
    pub parent_ids: Vec<u64>,
    pub parent_labels: Vec<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    id: u64,
    kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parent: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Nanoseconds since the epoch.
    created: u64,
    updated: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("snapshot {0} does not exist")]
    NotFound(String),
    #[error("snapshot {0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("snapshot metadata: {0}")]
    Db(#[from] redb::Error),
    #[error("snapshot metadata of {key} is unreadable: {message}")]
    Corrupt { key: String, message: String },
}

macro_rules! db {
    ($e:expr) => {
        $e.map_err(|e| StoreError::Db(e.into()))
    };
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn time(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

fn decode(key: &str, bytes: &[u8]) -> Result<Record, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { key: key.into(), message: e.to_string() })
}

fn encode(r: &Record) -> Vec<u8> {
    // A record of plain fields always serializes.
    serde_json::to_vec(r).unwrap_or_default()
}

fn info(name: &str, r: Record) -> Info {
    Info {
        name: name.to_string(),
        kind: r.kind,
        parent: r.parent,
        labels: r.labels,
        created: time(r.created),
        updated: time(r.updated),
    }
}

/// The snapshots' metadata in `ROOT/metadata.redb`.
pub struct Store {
    db: Database,
}

impl Store {
    /// Open (or create) the store under `root`. A new store is made whole under a temporary
    /// name and renamed into place, so that a process killed while creating it leaves nothing
    /// the next start would take for a store.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let path = root.join(FILE);
        if !path.exists() {
            let tmp = root.join(format!("{FILE}.new-{}", std::process::id()));
            let io = |e: std::io::Error| StoreError::Db(redb::StorageError::from(e).into());
            {
                let db = db!(Database::create(&tmp))?;
                Self::init(&db)?;
            }
            std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
            if let Ok(d) = std::fs::File::open(root) {
                let _ = d.sync_all();
            }
        }
        // Leftovers of creations that were killed.
        if let Ok(entries) = std::fs::read_dir(root) {
            for e in entries.flatten() {
                if e.file_name().to_str().is_some_and(|n| n.starts_with(&format!("{FILE}.new-"))) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let db = db!(Database::create(&path))?;
        Self::init(&db)?;
        Ok(Store { db })
    }

    fn init(db: &Database) -> Result<(), StoreError> {
        let tx = db!(db.begin_write())?;
        {
            db!(tx.open_table(SNAPSHOTS))?;
            db!(tx.open_table(CHILDREN))?;
            db!(tx.open_table(META))?;
        }
        db!(tx.commit())?;
        Ok(())
    }

    /// A new active snapshot or view `key` on `parent` (Prepare, View).
    pub fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<Snapshot, StoreError> {
        if kind == Kind::Committed {
            return Err(StoreError::InvalidArgument("a snapshot is committed only by Commit".into()));
        }
        if key.is_empty() {
            return Err(StoreError::InvalidArgument("empty snapshot key".into()));
        }
        let tx = db!(self.db.begin_write())?;
        let snapshot = {
            let mut snaps = db!(tx.open_table(SNAPSHOTS))?;
            let mut children = db!(tx.open_table(CHILDREN))?;
            let mut meta = db!(tx.open_table(META))?;
            if db!(snaps.get(key))?.is_some() {
                return Err(StoreError::AlreadyExists(key.into()));
            }
            let mut parents = Vec::new();
            if let Some(p) = parent {
                let rec = match db!(snaps.get(p))? {
                    Some(v) => decode(p, v.value())?,
                    None => return Err(StoreError::NotFound(format!("{p} (missing parent of {key})"))),
                };
                if rec.kind != Kind::Committed {
                    return Err(StoreError::InvalidArgument(format!("parent {p} of {key} is not committed")));
                }
                parents = chain(&snaps, p, rec)?;
            }
            let id = db!(meta.get("next_id"))?.map_or(1, |v| v.value());
            db!(meta.insert("next_id", id + 1))?;
            let t = now();
            let rec = Record {
                id,
                kind,
                parent: parent.map(str::to_string),
                labels,
                created: t,
                updated: t,
                usage: None,
            };
            db!(snaps.insert(key, encode(&rec).as_slice()))?;
            if let Some(&(pid, _)) = parents.first() {
                db!(children.insert((pid, id), key))?;
            }
            let (parent_ids, parent_labels) = parents.into_iter().unzip();
            Snapshot { id, kind, parent_ids, parent_labels }
        };
        db!(tx.commit())?;
        Ok(snapshot)
    }

    /// Id, kind and ancestors of `key` (Mounts).
    pub fn get(&self, key: &str) -> Result<Snapshot, StoreError> {
        let tx = db!(self.db.begin_read())?;
        let snaps = db!(tx.open_table(SNAPSHOTS))?;
        let rec = match db!(snaps.get(key))? {
            Some(v) => decode(key, v.value())?,
            None => return Err(StoreError::NotFound(key.into())),
        };
        let parents = match &rec.parent {
            Some(p) => {
                let prec = match db!(snaps.get(p.as_str()))? {
                    Some(v) => decode(p, v.value())?,
                    None => {
                        return Err(StoreError::Corrupt {
                            key: key.into(),
                            message: format!("parent {p} is gone"),
                        });
                    }
                };
                chain(&snaps, p, prec)?
            }
            None => Vec::new(),
        };
        let (parent_ids, parent_labels) = parents.into_iter().unzip();
        Ok(Snapshot { id: rec.id, kind: rec.kind, parent_ids, parent_labels })
    }

    /// Stat.
    pub fn stat(&self, key: &str) -> Result<Info, StoreError> {
        let tx = db!(self.db.begin_read())?;
        let snaps = db!(tx.open_table(SNAPSHOTS))?;
        match db!(snaps.get(key))? {
            Some(v) => Ok(info(key, decode(key, v.value())?)),
            None => Err(StoreError::NotFound(key.into())),
        }
    }

    /// Update: only labels change. `fieldpaths` empty or `labels` replaces them all;
    /// `labels.K` sets (or, absent from `labels`, removes) one.
    pub fn update(
        &self,
        key: &str,
        labels: &BTreeMap<String, String>,
        fieldpaths: &[String],
    ) -> Result<Info, StoreError> {
        let tx = db!(self.db.begin_write())?;
        let updated = {
            let mut snaps = db!(tx.open_table(SNAPSHOTS))?;
            let mut rec = match db!(snaps.get(key))? {
                Some(v) => decode(key, v.value())?,
                None => return Err(StoreError::NotFound(key.into())),
            };
            if fieldpaths.is_empty() {
                rec.labels = labels.clone();
            }
            for path in fieldpaths {
                if path == "labels" {
                    rec.labels = labels.clone();
                } else if let Some(k) = path.strip_prefix("labels.") {
                    match labels.get(k) {
                        Some(v) => rec.labels.insert(k.to_string(), v.clone()),
                        None => rec.labels.remove(k),
                    };
                } else {
                    return Err(StoreError::InvalidArgument(format!(
                        "cannot update field {path:?} of snapshot {key}: only labels change"
                    )));
                }
            }
            rec.updated = now();
            db!(snaps.insert(key, encode(&rec).as_slice()))?;
            info(key, rec)
        };
        db!(tx.commit())?;
        Ok(updated)
    }

    /// Commit active `key` as `name`: same id and parent, the given labels (not the active
    /// snapshot's), its usage; `key` is gone.
    pub fn commit(
        &self,
        key: &str,
        name: &str,
        labels: BTreeMap<String, String>,
        usage: Usage,
    ) -> Result<u64, StoreError> {
        if name.is_empty() {
            return Err(StoreError::InvalidArgument("empty snapshot name".into()));
        }
        let tx = db!(self.db.begin_write())?;
        let id = {
            let mut snaps = db!(tx.open_table(SNAPSHOTS))?;
            let mut children = db!(tx.open_table(CHILDREN))?;
            if db!(snaps.get(name))?.is_some() {
                return Err(StoreError::AlreadyExists(name.into()));
            }
            let rec = match db!(snaps.get(key))? {
                Some(v) => decode(key, v.value())?,
                None => return Err(StoreError::NotFound(key.into())),
            };
            if rec.kind != Kind::Active {
                return Err(StoreError::FailedPrecondition(format!(
                    "snapshot {key} is a {}, not active: only active snapshots are committed",
                    rec.kind.name()
                )));
            }
            let t = now();
            let committed = Record {
                id: rec.id,
                kind: Kind::Committed,
                parent: rec.parent.clone(),
                labels,
                created: t,
                updated: t,
                usage: Some(usage),
            };
            db!(snaps.remove(key))?;
            db!(snaps.insert(name, encode(&committed).as_slice()))?;
            if let Some(p) = &rec.parent {
                let pid = match db!(snaps.get(p.as_str()))? {
                    Some(v) => decode(p, v.value())?.id,
                    None => {
                        return Err(StoreError::Corrupt {
                            key: key.into(),
                            message: format!("parent {p} is gone"),
                        });
                    }
                };
                db!(children.insert((pid, rec.id), name))?;
            }
            rec.id
        };
        db!(tx.commit())?;
        Ok(id)
    }

    /// Remove `key`, which no snapshot may have as its parent; returns its id and kind.
    pub fn remove(&self, key: &str) -> Result<(u64, Kind), StoreError> {
        let tx = db!(self.db.begin_write())?;
        let out = {
            let mut snaps = db!(tx.open_table(SNAPSHOTS))?;
            let mut children = db!(tx.open_table(CHILDREN))?;
            let rec = match db!(snaps.get(key))? {
                Some(v) => decode(key, v.value())?,
                None => return Err(StoreError::NotFound(key.into())),
            };
            if let Some(child) = db!(children.range((rec.id, 0)..=(rec.id, u64::MAX)))?.next() {
                let (_, k) = db!(child)?;
                return Err(StoreError::FailedPrecondition(format!(
                    "cannot remove snapshot {key}: snapshot {} has it as parent",
                    k.value()
                )));
            }
            if let Some(p) = &rec.parent
                && let Some(v) = db!(snaps.get(p.as_str()))?
            {
                let pid = decode(p, v.value())?.id;
                drop(v);
                db!(children.remove((pid, rec.id)))?;
            }
            db!(snaps.remove(key))?;
            (rec.id, rec.kind)
        };
        db!(tx.commit())?;
        Ok(out)
    }

    /// The recorded usage of a committed snapshot (None for active and view snapshots, whose
    /// usage is measured live).
    pub fn usage(&self, key: &str) -> Result<Option<Usage>, StoreError> {
        let tx = db!(self.db.begin_read())?;
        let snaps = db!(tx.open_table(SNAPSHOTS))?;
        match db!(snaps.get(key))? {
            Some(v) => Ok(decode(key, v.value())?.usage),
            None => Err(StoreError::NotFound(key.into())),
        }
    }

    /// Every snapshot that matches any of `filters` (all, when there are none), by key.
    pub fn list(&self, filters: &[Filter]) -> Result<Vec<Info>, StoreError> {
        let tx = db!(self.db.begin_read())?;
        let snaps = db!(tx.open_table(SNAPSHOTS))?;
        let mut out = Vec::new();
        for entry in db!(snaps.iter())? {
            let (k, v) = db!(entry)?;
            let i = info(k.value(), decode(k.value(), v.value())?);
            if filters.is_empty() || filters.iter().any(|f| f.matches(&i)) {
                out.push(i);
            }
        }
        Ok(out)
    }

    /// Every snapshot's id and key: the data directories that may stay (Cleanup removes the rest).
    pub fn ids(&self) -> Result<HashMap<u64, String>, StoreError> {
        let tx = db!(self.db.begin_read())?;
        let snaps = db!(tx.open_table(SNAPSHOTS))?;
        let mut out = HashMap::new();
        for entry in db!(snaps.iter())? {
            let (k, v) = db!(entry)?;
            out.insert(decode(k.value(), v.value())?.id, k.value().to_string());
        }
        Ok(out)
    }
}

type Labels = BTreeMap<String, String>;

/// The ids and labels of `key` (whose record is `rec`) and its ancestors, nearest first.
fn chain(
    snaps: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
    rec: Record,
) -> Result<Vec<(u64, Labels)>, StoreError> {
    let mut ids = vec![(rec.id, rec.labels)];
    let mut next = rec.parent;
    while let Some(p) = next {
        if ids.len() > 1 << 16 {
            return Err(StoreError::Corrupt { key: key.into(), message: "parent chain does not end".into() });
        }
        let r = match db!(snaps.get(p.as_str()))? {
            Some(v) => decode(&p, v.value())?,
            None => {
                return Err(StoreError::Corrupt {
                    key: key.into(),
                    message: format!("ancestor {p} is gone"),
                });
            }
        };
        ids.push((r.id, r.labels));
        next = r.parent;
    }
    Ok(ids)
}

/// One of `List`'s filters, as containerd writes them: comma-separated conditions that must all
/// hold, on `name`, `parent`, `kind` or `labels.KEY` (the key may be quoted), with `==`, `!=`,
/// or no operator (the field is present).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Condition {
    field: Field,
    op: Op,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    Name,
    Parent,
    Kind,
    Label(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Present,
    Eq(String),
    Ne(String),
}

impl Filter {
    /// Parse one filter string.
    pub fn parse(s: &str) -> Result<Filter, StoreError> {
        let bad = |why: &str| StoreError::InvalidArgument(format!("filter {s:?}: {why}"));
        let mut conditions = Vec::new();
        for part in split_unquoted(s, ',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(bad("empty condition"));
            }
            let (lhs, op) = if let Some(i) = find_unquoted(part, "!=") {
                (&part[..i], Op::Ne(unquote(part[i + 2..].trim())))
            } else if let Some(i) = find_unquoted(part, "==") {
                (&part[..i], Op::Eq(unquote(part[i + 2..].trim())))
            } else if find_unquoted(part, "~=").is_some() {
                return Err(bad("regular expressions (~=) are not supported"));
            } else {
                (part, Op::Present)
            };
            let lhs = lhs.trim();
            let field = match lhs {
                "name" => Field::Name,
                "parent" => Field::Parent,
                "kind" => Field::Kind,
                _ => match lhs.strip_prefix("labels.") {
                    Some(k) if !k.is_empty() => Field::Label(unquote(k)),
                    _ => return Err(bad(&format!("unknown field {lhs:?}"))),
                },
            };
            conditions.push(Condition { field, op });
        }
        Ok(Filter { conditions })
    }

    /// Whether `info` meets every condition.
    pub fn matches(&self, info: &Info) -> bool {
        self.conditions.iter().all(|c| {
            let value = match &c.field {
                Field::Name => Some(info.name.as_str()),
                Field::Parent => Some(info.parent.as_deref().unwrap_or_default()),
                Field::Kind => Some(info.kind.name()),
                Field::Label(k) => info.labels.get(k).map(String::as_str),
            };
            match &c.op {
                Op::Present => value.is_some_and(|v| !v.is_empty()),
                Op::Eq(want) => value == Some(want.as_str()),
                Op::Ne(want) => value != Some(want.as_str()),
            }
        })
    }
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    match s.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\""),
        None => s.to_string(),
    }
}

/// Byte index of `pat` outside double quotes.
fn find_unquoted(s: &str, pat: &str) -> Option<usize> {
    let mut quoted = false;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            _ if !quoted && s[i..].starts_with(pat) => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = find_unquoted(rest, &sep.to_string()) {
        out.push(&rest[..i]);
        rest = &rest[i + 1..];
    }
    out.push(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        (dir, s)
    }

    #[test]
    fn prepare_commit_and_the_parent_chain() {
        let (_d, s) = store();
        let a = s.create(Kind::Active, "extract-1", None, labels(&[("x", "1")])).unwrap();
        assert_eq!(a.parent_ids, Vec::<u64>::new());
        let id =
            s.commit("extract-1", "layer-1", labels(&[("y", "2")]), Usage { inodes: 3, size: 4 }).unwrap();
        assert_eq!(id, a.id);
        assert!(matches!(s.stat("extract-1"), Err(StoreError::NotFound(_))));
        let i = s.stat("layer-1").unwrap();
        assert_eq!((i.kind, i.labels.clone()), (Kind::Committed, labels(&[("y", "2")])), "labels replaced");
        assert_eq!(s.usage("layer-1").unwrap(), Some(Usage { inodes: 3, size: 4 }));
        let b = s.create(Kind::Active, "extract-2", Some("layer-1"), BTreeMap::new()).unwrap();
        s.commit("extract-2", "layer-2", BTreeMap::new(), Usage::default()).unwrap();
        let c = s.create(Kind::View, "ctr", Some("layer-2"), BTreeMap::new()).unwrap();
        assert_eq!(c.parent_ids, vec![b.id, a.id], "nearest first");
        assert_eq!(s.get("ctr").unwrap(), c);
        assert_eq!(s.usage("ctr").unwrap(), None);
    }

    #[test]
    fn the_rules_of_the_api() {
        let (_d, s) = store();
        s.create(Kind::Active, "a", None, BTreeMap::new()).unwrap();
        assert!(matches!(
            s.create(Kind::View, "a", None, BTreeMap::new()),
            Err(StoreError::AlreadyExists(_))
        ));
        assert!(matches!(
            s.create(Kind::Active, "b", Some("nope"), BTreeMap::new()),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            s.create(Kind::Active, "b", Some("a"), BTreeMap::new()),
            Err(StoreError::InvalidArgument(_))
        ));
        assert!(matches!(
            s.create(Kind::Committed, "b", None, BTreeMap::new()),
            Err(StoreError::InvalidArgument(_))
        ));
        s.create(Kind::View, "v", None, BTreeMap::new()).unwrap();
        assert!(matches!(
            s.commit("v", "c", BTreeMap::new(), Usage::default()),
            Err(StoreError::FailedPrecondition(_))
        ));
        assert!(matches!(
            s.commit("nope", "c", BTreeMap::new(), Usage::default()),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            s.commit("a", "v", BTreeMap::new(), Usage::default()),
            Err(StoreError::AlreadyExists(_))
        ));
        s.commit("a", "c", BTreeMap::new(), Usage::default()).unwrap();
        s.create(Kind::Active, "child", Some("c"), BTreeMap::new()).unwrap();
        assert!(matches!(s.remove("c"), Err(StoreError::FailedPrecondition(_))));
        assert!(matches!(s.remove("nope"), Err(StoreError::NotFound(_))));
        s.remove("child").unwrap();
        // A committed child keeps its parent too.
        s.create(Kind::Active, "child", Some("c"), BTreeMap::new()).unwrap();
        s.commit("child", "c2", BTreeMap::new(), Usage::default()).unwrap();
        assert!(matches!(s.remove("c"), Err(StoreError::FailedPrecondition(_))));
        s.remove("c2").unwrap();
        s.remove("c").unwrap();
        s.remove("v").unwrap();
        assert!(s.list(&[]).unwrap().is_empty());
        assert!(s.ids().unwrap().is_empty());
    }

    #[test]
    fn update_changes_labels_only() {
        let (_d, s) = store();
        s.create(Kind::Active, "a", None, labels(&[("keep", "1"), ("drop", "2")])).unwrap();
        let before = s.stat("a").unwrap();
        let i =
            s.update("a", &labels(&[("new", "3")]), &["labels.new".into(), "labels.drop".into()]).unwrap();
        assert_eq!(i.labels, labels(&[("keep", "1"), ("new", "3")]));
        assert!(i.updated >= before.updated && i.created == before.created);
        let i = s.update("a", &labels(&[("only", "4")]), &[]).unwrap();
        assert_eq!(i.labels, labels(&[("only", "4")]));
        assert!(matches!(
            s.update("a", &BTreeMap::new(), &["parent".into()]),
            Err(StoreError::InvalidArgument(_))
        ));
        assert!(matches!(s.update("nope", &BTreeMap::new(), &[]), Err(StoreError::NotFound(_))));
        assert_eq!(s.stat("a").unwrap().labels, labels(&[("only", "4")]), "a refused update changes nothing");
    }

    #[test]
    fn list_filters_as_containerd_writes_them() {
        let (_d, s) = store();
        s.create(Kind::Active, "l1", None, labels(&[("containerd.io/snapshot.ref", "sha256:aa")])).unwrap();
        s.commit("l1", "c1", labels(&[("containerd.io/snapshot.ref", "sha256:aa")]), Usage::default())
            .unwrap();
        s.create(Kind::View, "v1", Some("c1"), labels(&[("app", "x")])).unwrap();
        s.create(Kind::Active, "a1", Some("c1"), BTreeMap::new()).unwrap();
        let names = |f: &[&str]| -> Vec<String> {
            let fs: Vec<Filter> = f.iter().map(|f| Filter::parse(f).unwrap()).collect();
            s.list(&fs).unwrap().into_iter().map(|i| i.name).collect()
        };
        assert_eq!(names(&[]), ["a1", "c1", "v1"]);
        assert_eq!(names(&["kind==committed"]), ["c1"]);
        assert_eq!(names(&["parent==c1"]), ["a1", "v1"]);
        assert_eq!(names(&["parent==c1,kind!=view"]), ["a1"]);
        assert_eq!(names(&[r#"labels."containerd.io/snapshot.ref"==sha256:aa"#]), ["c1"]);
        // containerd's unpacker looks a remote layer up so, with an empty parent for the first.
        assert_eq!(names(&[r#"labels."containerd.io/snapshot.ref"==sha256:aa,parent=="""#]), ["c1"]);
        assert!(names(&[r#"labels."containerd.io/snapshot.ref"==sha256:aa,parent==c1"#]).is_empty());
        assert_eq!(names(&["labels.app"]), ["v1"]);
        assert_eq!(names(&["name==a1", "name==v1"]), ["a1", "v1"], "filters are alternatives");
        assert!(Filter::parse("name~=a.*").is_err());
        assert!(Filter::parse("size==1").is_err());
        assert!(Filter::parse("name==a,").is_err());
    }

    /// Make layers and containers on `dir`'s store until killed (or for 20 s at most).
    fn churn(dir: &Path) {
        let s = Store::open(dir).unwrap();
        let start = std::time::Instant::now();
        let mut parent: Option<String> = None;
        for n in 0u64.. {
            if start.elapsed() > Duration::from_secs(20) {
                return;
            }
            let key = format!("extract-{n}");
            s.create(Kind::Active, &key, parent.as_deref(), labels(&[("n", "x")])).unwrap();
            let name = format!("layer-{n}");
            s.commit(&key, &name, BTreeMap::new(), Usage::default()).unwrap();
            s.create(Kind::View, &format!("view-{n}"), Some(&name), BTreeMap::new()).unwrap();
            if n % 3 == 2 {
                s.remove(&format!("view-{n}")).unwrap();
            }
            parent = Some(name);
        }
    }

    #[test]
    fn a_kill_at_any_moment_leaves_a_store_that_opens() {
        if let Some(dir) = std::env::var_os("ZRAN_STORE_CHURN") {
            churn(Path::new(&dir));
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let me = std::env::current_exe().unwrap();
        // From kills while the process starts and the store is being created to kills in the
        // middle of work.
        let delays = [5u64, 15, 30, 60, 150, 211, 272, 1000];
        for (round, &delay) in delays.iter().enumerate() {
            let mut child = std::process::Command::new(&me)
                .args([
                    "--exact",
                    "snapshotter::store::tests::a_kill_at_any_moment_leaves_a_store_that_opens",
                ])
                .env("ZRAN_STORE_CHURN", dir.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(delay));
            child.kill().unwrap();
            child.wait().unwrap();
            // Opens, and every snapshot's ancestors are there and committed.
            let s = Store::open(dir.path()).unwrap();
            let all = s.list(&[]).unwrap();
            assert!(!all.is_empty() || round + 1 < delays.len(), "nothing made in {delay} ms");
            for i in &all {
                let snap = s.get(&i.name).unwrap();
                if let Some(p) = &i.parent {
                    assert_eq!(s.stat(p).unwrap().kind, Kind::Committed);
                    assert_eq!(snap.parent_ids.len(), s.get(p).unwrap().parent_ids.len() + 1);
                }
            }
            let ids = s.ids().unwrap();
            assert_eq!(ids.len(), all.len(), "ids are unique");
        }
    }

    #[test]
    fn what_was_committed_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let s = Store::open(dir.path()).unwrap();
            let a = s.create(Kind::Active, "a", None, BTreeMap::new()).unwrap();
            s.commit("a", "c", labels(&[("k", "v")]), Usage { inodes: 1, size: 2 }).unwrap();
            a.id
        };
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.stat("c").unwrap().labels, labels(&[("k", "v")]));
        assert_eq!(s.ids().unwrap(), HashMap::from([(id, "c".to_string())]));
        // Ids are never reused.
        assert!(s.create(Kind::Active, "b", Some("c"), BTreeMap::new()).unwrap().id > id);
    }
}
