//! The merge of an image's layers into one filesystem tree.
//!
//! Owns the OCI layer rules: whiteouts (`.wh.NAME`) and opaque directories (`.wh..wh..opq`)
//! hide what *lower* layers put there; a non-directory replaces whatever was at its path; a
//! directory entry over a directory replaces its attributes and keeps its children; a hardlink
//! names the inode of an earlier entry; missing parents are made as directories (0755, 0:0).
//! Every regular file keeps where its bytes are: extents of a layer's uncompressed tar stream,
//! or the chunks of an eStargz layer's TOC. Calls `tar` and `estargz` for entries.

use crate::estargz::{self, TocEntry};
use crate::tar::{Entry, EntryKind};
use std::collections::BTreeMap;

/// Index of an inode in [`Tree::inodes`].
pub type InodeId = usize;

/// Where a piece of a regular file's bytes is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extent {
    /// `len` bytes at `offset` of layer `layer`'s uncompressed tar stream.
    Tar { layer: usize, offset: u64, len: u64 },
    /// A chunk of an eStargz layer, as its TOC places it.
    Chunk { layer: usize, chunk: estargz::Chunk },
}

/// A file, directory, link or special file; hardlinked names share one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// None for a directory no layer has an entry for.
    pub mtime: Option<(i64, u32)>,
    pub size: u64,
    /// Symlink target.
    pub link: Vec<u8>,
    pub devmajor: u32,
    pub devminor: u32,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Regular files: where the data is.
    pub data: Vec<Extent>,
    /// Directories: name to (inode, layer that put the name there).
    pub children: BTreeMap<Vec<u8>, (InodeId, usize)>,
    /// Set by [`Tree::finish`].
    pub nlink: u32,
}

impl Inode {
    fn implicit_dir() -> Inode {
        Inode {
            kind: EntryKind::Directory,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: None,
            size: 0,
            link: Vec::new(),
            devmajor: 0,
            devminor: 0,
            xattrs: BTreeMap::new(),
            data: Vec::new(),
            children: BTreeMap::new(),
            nlink: 0,
        }
    }

    fn from_entry(e: &Entry, data: Vec<Extent>) -> Inode {
        Inode {
            kind: e.kind,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime: Some((e.mtime, e.mtime_nsec)),
            size: e.size,
            link: if e.kind == EntryKind::Symlink { e.link.clone() } else { Vec::new() },
            devmajor: e.devmajor,
            devminor: e.devminor,
            xattrs: e.xattrs.clone(),
            data,
            children: BTreeMap::new(),
            nlink: 0,
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == EntryKind::Directory
    }
}

/// A layer entry that cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("layer {layer}: entry {path:?}: {message}")]
pub struct TreeError {
    pub layer: usize,
    pub path: String,
    pub message: String,
}

/// The merged filesystem of an image.
#[derive(Debug, Clone)]
pub struct Tree {
    pub inodes: Vec<Inode>,
    pub root: InodeId,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

fn components(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.split(|&b| b == b'/').filter(|c| !c.is_empty())
}

impl Tree {
    pub fn new() -> Tree {
        Tree { inodes: vec![Inode::implicit_dir()], root: 0 }
    }

    /// Apply one tar layer's entries (in archive order) on top of the tree.
    pub fn apply_layer(&mut self, layer: usize, entries: &[Entry]) -> Result<(), TreeError> {
        let data = |e: &Entry| {
            if e.kind == EntryKind::File && e.size > 0 {
                vec![Extent::Tar { layer, offset: e.data_offset, len: e.size }]
            } else {
                Vec::new()
            }
        };
        let items: Vec<(Entry, Vec<Extent>)> = entries.iter().map(|e| (e.clone(), data(e))).collect();
        self.apply(layer, &items)
    }

    /// Apply one eStargz layer, from its TOC, on top of the tree.
    pub fn apply_estargz_layer(&mut self, layer: usize, entries: &[TocEntry]) -> Result<(), TreeError> {
        let items: Vec<(Entry, Vec<Extent>)> = entries
            .iter()
            .map(|t| {
                let chunks = t.chunks.iter().map(|c| Extent::Chunk { layer, chunk: c.clone() }).collect();
                (toc_entry(t), chunks)
            })
            .collect();
        self.apply(layer, &items)
    }

    fn apply(&mut self, layer: usize, entries: &[(Entry, Vec<Extent>)]) -> Result<(), TreeError> {
        // Whiteouts first: they hide only what lower layers made, whatever their place in the
        // archive.
        for (e, _) in entries {
            let (dir, name) = split(&e.path);
            if name == OPAQUE {
                if let Some(d) = self.lookup(dir).filter(|&d| self.inodes[d].is_dir()) {
                    self.inodes[d].children.clear();
                }
            } else if let Some(hidden) = name.strip_prefix(WHITEOUT)
                && let Some(d) = self.lookup(dir).filter(|&d| self.inodes[d].is_dir())
            {
                self.inodes[d].children.remove(hidden);
            }
        }
        for (e, data) in entries {
            let (_, name) = split(&e.path);
            if name.starts_with(WHITEOUT) {
                continue;
            }
            self.add(layer, e, data)?;
        }
        Ok(())
    }

    fn add(&mut self, layer: usize, e: &Entry, data: &[Extent]) -> Result<(), TreeError> {
        let fail = |m: &str| TreeError {
            layer,
            path: String::from_utf8_lossy(&e.path).into_owned(),
            message: m.to_string(),
        };
        if e.path.is_empty() {
            // The root itself ("./").
            if e.kind != EntryKind::Directory {
                return Err(fail("the root must be a directory"));
            }
            self.set_dir_attrs(self.root, e);
            return Ok(());
        }
        let (dir, name) = split(&e.path);
        let parent = self.make_dirs(dir, layer);
        let existing = self.inodes[parent].children.get(name).map(|&(id, _)| id);
        match e.kind {
            EntryKind::Directory => {
                if let Some(id) = existing.filter(|&id| self.inodes[id].is_dir()) {
                    self.set_dir_attrs(id, e);
                    return Ok(());
                }
                let id = self.push(Inode::from_entry(e, data.to_vec()));
                self.inodes[parent].children.insert(name.to_vec(), (id, layer));
            }
            EntryKind::Hardlink => {
                let target = self.lookup(&e.link).ok_or_else(|| {
                    fail(&format!("hardlink to {:?}, which does not exist", String::from_utf8_lossy(&e.link)))
                })?;
                if self.inodes[target].is_dir() {
                    return Err(fail("hardlink to a directory"));
                }
                self.inodes[parent].children.insert(name.to_vec(), (target, layer));
            }
            _ => {
                let id = self.push(Inode::from_entry(e, data.to_vec()));
                self.inodes[parent].children.insert(name.to_vec(), (id, layer));
            }
        }
        Ok(())
    }

    fn set_dir_attrs(&mut self, id: InodeId, e: &Entry) {
        let d = &mut self.inodes[id];
        d.mode = e.mode;
        d.uid = e.uid;
        d.gid = e.gid;
        d.mtime = Some((e.mtime, e.mtime_nsec));
        d.xattrs = e.xattrs.clone();
    }

    fn push(&mut self, inode: Inode) -> InodeId {
        self.inodes.push(inode);
        self.inodes.len() - 1
    }

    /// The directory at `path`, made (and anything not a directory in the way replaced) as
    /// needed.
    fn make_dirs(&mut self, path: &[u8], layer: usize) -> InodeId {
        let mut cur = self.root;
        for c in components(path) {
            cur = match self.inodes[cur].children.get(c) {
                Some(&(id, _)) if self.inodes[id].is_dir() => id,
                _ => {
                    let id = self.push(Inode::implicit_dir());
                    self.inodes[cur].children.insert(c.to_vec(), (id, layer));
                    id
                }
            };
        }
        cur
    }

    /// The inode at `path` (symlinks are not followed).
    pub fn lookup(&self, path: &[u8]) -> Option<InodeId> {
        let mut cur = self.root;
        for c in components(path) {
            let d = &self.inodes[cur];
            if !d.is_dir() {
                return None;
            }
            cur = d.children.get(c)?.0;
        }
        Some(cur)
    }

    /// Set link counts. Call once all layers are applied.
    pub fn finish(&mut self) {
        for i in &mut self.inodes {
            i.nlink = 0;
        }
        let mut stack = vec![self.root];
        self.inodes[self.root].nlink = 2;
        while let Some(d) = stack.pop() {
            let children: Vec<InodeId> = self.inodes[d].children.values().map(|&(id, _)| id).collect();
            for id in children {
                if self.inodes[id].is_dir() {
                    self.inodes[id].nlink = 2;
                    self.inodes[d].nlink += 1;
                    stack.push(id);
                } else {
                    self.inodes[id].nlink += 1;
                }
            }
        }
    }

    /// Every path (absolute, `/` for the root) with its inode, sorted by bytes.
    pub fn walk(&self) -> Vec<(Vec<u8>, InodeId)> {
        let mut out = vec![(b"/".to_vec(), self.root)];
        let mut stack = vec![(Vec::new(), self.root)];
        while let Some((prefix, d)) = stack.pop() {
            for (name, &(id, _)) in &self.inodes[d].children {
                let mut p = prefix.clone();
                p.push(b'/');
                p.extend_from_slice(name);
                if self.inodes[id].is_dir() {
                    stack.push((p.clone(), id));
                }
                out.push((p, id));
            }
        }
        out.sort();
        out
    }
}

/// A TOC entry as the tar entry it stands for.
fn toc_entry(t: &TocEntry) -> Entry {
    use estargz::EntryKind as K;
    let kind = match t.kind {
        K::Dir => EntryKind::Directory,
        K::Reg => EntryKind::File,
        K::Symlink => EntryKind::Symlink,
        K::Hardlink => EntryKind::Hardlink,
        K::Char => EntryKind::Char,
        K::Block => EntryKind::Block,
        K::Fifo => EntryKind::Fifo,
    };
    Entry {
        path: t.name.as_bytes().to_vec(),
        kind,
        mode: t.mode,
        uid: t.uid,
        gid: t.gid,
        uname: t.uname.as_bytes().to_vec(),
        gname: t.gname.as_bytes().to_vec(),
        mtime: t.mtime,
        mtime_nsec: t.mtime_nsec,
        size: t.size,
        link: t.link.as_bytes().to_vec(),
        devmajor: t.devmajor,
        devminor: t.devminor,
        xattrs: t.xattrs.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.clone())).collect(),
        header_offset: 0,
        data_offset: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryKind) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind,
            mode: if kind == EntryKind::Directory { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            uname: Vec::new(),
            gname: Vec::new(),
            mtime: 1,
            mtime_nsec: 0,
            size: if kind == EntryKind::File { 10 } else { 0 },
            link: Vec::new(),
            devmajor: 0,
            devminor: 0,
            xattrs: BTreeMap::new(),
            header_offset: 0,
            data_offset: 512,
        }
    }

    fn paths(t: &Tree) -> Vec<String> {
        t.walk().into_iter().map(|(p, _)| String::from_utf8(p).unwrap()).collect()
    }

    #[test]
    fn whiteouts_and_opaque_hide_lower_layers_only() {
        let mut t = Tree::new();
        t.apply_layer(
            0,
            &[
                entry("a", EntryKind::Directory),
                entry("a/x", EntryKind::File),
                entry("a/y", EntryKind::File),
                entry("b", EntryKind::File),
            ],
        )
        .unwrap();
        // Layer 1: the opaque marker comes after a new child in the archive, which survives.
        t.apply_layer(
            1,
            &[
                entry("a/new", EntryKind::File),
                entry("a/.wh..wh..opq", EntryKind::File),
                entry(".wh.b", EntryKind::File),
            ],
        )
        .unwrap();
        t.finish();
        assert_eq!(paths(&t), ["/", "/a", "/a/new"]);
    }

    #[test]
    fn replacements_hardlinks_and_implicit_parents() {
        let mut t = Tree::new();
        let mut link = entry("d/link", EntryKind::Hardlink);
        link.link = b"f".to_vec();
        t.apply_layer(0, &[entry("f", EntryKind::File), entry("p/q/r", EntryKind::File), link]).unwrap();
        // A directory replaces the file f; a file replaces the directory p.
        t.apply_layer(1, &[entry("f", EntryKind::Directory), entry("p", EntryKind::File)]).unwrap();
        t.finish();
        assert_eq!(paths(&t), ["/", "/d", "/d/link", "/f", "/p"]);
        let d = t.lookup(b"d").unwrap();
        assert_eq!(t.inodes[d].mtime, None, "implicit directory");
        let l = t.lookup(b"d/link").unwrap();
        assert_eq!(t.inodes[l].nlink, 1, "its other name was replaced");
        let mut bad = entry("x", EntryKind::Hardlink);
        bad.link = b"missing".to_vec();
        assert!(t.apply_layer(2, &[bad]).unwrap_err().to_string().contains("does not exist"));
    }
}
