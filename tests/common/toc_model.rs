//! The OCI layer rules over TOC entries (eStargz and zstd:chunked alike), as
//! testimages/truth.py applies them to tar entries: a model of the merged tree that the TOC
//! readers' tests compare with the truth.

use std::collections::{BTreeMap, HashSet};
use zran::estargz::{EntryKind, TocEntry};
use zran::oci::Digest;

/// One inode of the merged tree, as the truth tree records it.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: Option<(i64, u32)>,
    pub xattrs: BTreeMap<String, String>,
    pub size: Option<u64>,
    pub sha256: Option<String>,
    pub target: Option<String>,
    pub dev: Option<(u32, u32)>,
}

/// The OCI layer rules over TOC entries, as testimages/truth.py applies them to tar entries.
pub struct Model {
    pub paths: BTreeMap<String, usize>,
    pub nodes: Vec<Node>,
}

pub fn parent(p: &str) -> String {
    match p.rfind('/') {
        Some(0) | None => "/".into(),
        Some(i) => p[..i].into(),
    }
}

pub fn implicit_dir() -> Node {
    Node {
        kind: "dir",
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: None,
        xattrs: BTreeMap::new(),
        size: None,
        sha256: None,
        target: None,
        dev: None,
    }
}

impl Model {
    pub fn new() -> Model {
        Model { paths: BTreeMap::from([("/".to_string(), 0)]), nodes: vec![implicit_dir()] }
    }

    pub fn children(&self, d: &str) -> Vec<String> {
        let pre = format!("{}/", d.trim_end_matches('/'));
        self.paths
            .range(pre.clone()..)
            .take_while(|(p, _)| p.starts_with(&pre))
            .filter(|(p, _)| p.as_str() != d)
            .map(|(p, _)| p.clone())
            .collect()
    }

    pub fn remove(&mut self, p: &str) {
        for c in self.children(p) {
            self.paths.remove(&c);
        }
        self.paths.remove(p);
    }

    pub fn ensure_parents(&mut self, p: &str) {
        let mut chain = Vec::new();
        let mut q = parent(p);
        while q != "/" {
            chain.push(q.clone());
            q = parent(&q);
        }
        for q in chain.into_iter().rev() {
            let is_dir = self.paths.get(&q).is_some_and(|&i| self.nodes[i].kind == "dir");
            if !is_dir {
                self.remove(&q);
                self.nodes.push(implicit_dir());
                self.paths.insert(q, self.nodes.len() - 1);
            }
        }
    }

    pub fn apply(&mut self, entries: &[TocEntry]) {
        let mut upper = HashSet::new();
        for e in entries {
            let path = format!("/{}", e.name);
            let base = path.rsplit('/').next().unwrap().to_string();
            if base == ".wh..wh..opq" {
                for c in self.children(&parent(&path)) {
                    if !upper.contains(&c) {
                        self.paths.remove(&c);
                    }
                }
                continue;
            }
            if let Some(victim) = base.strip_prefix(".wh.") {
                let victim = format!("{}/{victim}", parent(&path).trim_end_matches('/'));
                if !upper.contains(&victim) {
                    self.remove(&victim);
                }
                continue;
            }
            if path != "/" {
                self.ensure_parents(&path);
            }
            let old = self.paths.get(&path).copied();
            if e.kind == EntryKind::Hardlink {
                let target = self.paths[&format!("/{}", e.link)];
                if old.is_some() {
                    self.remove(&path);
                }
                self.paths.insert(path.clone(), target);
                upper.insert(path);
                continue;
            }
            let node = Node {
                kind: match e.kind {
                    EntryKind::Dir => "dir",
                    EntryKind::Reg => "file",
                    EntryKind::Symlink => "symlink",
                    EntryKind::Char => "char",
                    EntryKind::Block => "block",
                    EntryKind::Fifo => "fifo",
                    EntryKind::Hardlink => unreachable!(),
                },
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
                mtime: Some((e.mtime, e.mtime_nsec)),
                xattrs: e.xattrs.iter().map(|(k, v)| (k.clone(), b64(v))).collect(),
                size: (e.kind == EntryKind::Reg).then_some(e.size),
                // Empty files have no digest in a zstd:chunked TOC.
                sha256: (e.kind == EntryKind::Reg).then(|| match &e.digest {
                    Some(d) => d.hex().to_string(),
                    None => {
                        assert_eq!(e.size, 0, "{}: a file with data has a digest", e.name);
                        Digest::of(b"").hex().to_string()
                    }
                }),
                target: (e.kind == EntryKind::Symlink).then(|| e.link.clone()),
                dev: matches!(e.kind, EntryKind::Char | EntryKind::Block).then_some((e.devmajor, e.devminor)),
            };
            let both_dirs = old.is_some_and(|i| self.nodes[i].kind == "dir") && node.kind == "dir";
            if old.is_some() && !both_dirs {
                self.remove(&path);
            }
            match self.paths.get(&path) {
                Some(&i) => self.nodes[i] = node,
                None => {
                    self.nodes.push(node);
                    self.paths.insert(path.clone(), self.nodes.len() - 1);
                }
            }
            upper.insert(path);
        }
    }
}

pub fn b64(v: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(v)
}
