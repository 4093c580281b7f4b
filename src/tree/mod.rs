//! The merge of an image's layers into one filesystem tree.
//!
//! Owns the OCI layer rules, applied entry by entry in archive order as containerd's
//! `archive.Apply` applies a layer into its own upper directory for the overlayfs snapshotter
//! (containerd's default, as docker's overlay2, podman's overlay and the lazy-loading
//! snapshotters apply layers), then merged as overlayfs merges the layers:
//! - Names are cleaned lexically, `..` stopping at the root ([`crate::tar::normalize`]). The
//!   *parent* of every entry (and of whiteouts, opaque markers and hardlink targets) is then
//!   resolved inside the tree: a symlink *written by the same layer* on the way is followed (an
//!   absolute target from the image's root, a relative one from the link's directory, `..`
//!   never above the root, chains followed, at most [`MAX_LINKS`] links, more is an error as
//!   containerd's "too many links"), so `lnk -> /etc` then `lnk/passwd` in one layer writes
//!   `/etc/passwd` and leaves `lnk` a symlink. A symlink of a *lower* layer is not followed:
//!   the layer's upper directory does not hold it, so the path goes on as if nothing were
//!   there, and an entry below it makes a directory in its place (an implicit one: 0755,
//!   0:0, no mtime), which hides the lower symlink as overlayfs hides a lower non-directory
//!   below an upper directory. `umoci unpack` and containerd's native snapshotter follow lower
//!   symlinks too; zran shows what the overlay snapshotters show. The entry's own last
//!   component is never followed: an entry replaces a symlink at its path.
//! - Whiteouts (`.wh.NAME`) and opaque markers (`.wh..wh..opq`) make their directory as any
//!   entry does (containerd makes it before it writes the whiteout), then remove what *lower*
//!   layers put there, wherever they stand in the archive: a name this layer wrote (or wrote
//!   below) is kept, and only the lower names beneath it go, as umoci's `upperPaths` keeps them.
//! - A non-directory replaces whatever was at its path; a directory entry over a directory
//!   replaces its attributes and keeps its children; a hardlink names the inode of an earlier
//!   entry (a missing target is an error, and so is one below a lower layer's symlink);
//!   missing parents are made as directories (0755, 0:0), and a non-directory in the way of a
//!   parent is replaced by one.
//!
//! [`Tree::apply_layer_as_is`] applies a layer without its whiteout rules (the markers stay
//! files), for the bootstrap a Nydus blob carries of its layer alone (`convert`).
//!
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
    /// Directories: name to (inode, the last layer that wrote the name or something below it).
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

/// The most symlinks followed while resolving one path, as containerd's `fs.RootPath` and
/// umoci's securejoin allow; one more is an error (a loop, most likely).
pub const MAX_LINKS: u32 = 255;
/// Path components a layer may walk while resolving its entries' parents: this many, plus
/// [`STEPS_PER_ENTRY`] for each entry. Real layers use a few per entry; a layer of long
/// symlink chains walked again and again fails instead of running for hours.
pub const BASE_STEPS: u64 = 1 << 20;
/// See [`BASE_STEPS`].
pub const STEPS_PER_ENTRY: u64 = 64;

fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

fn components(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.split(|&b| b == b'/').filter(|c| !c.is_empty())
}

/// One component of a resolved path: its name, and the inode there if there is one.
type Step = (Vec<u8>, Option<InodeId>);

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
        self.apply(layer, &items, true)
    }

    /// Apply one tar layer's entries as they are: whiteouts and opaque markers stay files
    /// (Nydus's `--whiteout-spec none`, the per-layer bootstrap of a native blob, where they
    /// are applied only when layers are merged).
    pub fn apply_layer_as_is(&mut self, layer: usize, entries: &[Entry]) -> Result<(), TreeError> {
        let items: Vec<(Entry, Vec<Extent>)> = entries
            .iter()
            .map(|e| {
                let data = if e.kind == EntryKind::File && e.size > 0 {
                    vec![Extent::Tar { layer, offset: e.data_offset, len: e.size }]
                } else {
                    Vec::new()
                };
                (e.clone(), data)
            })
            .collect();
        self.apply(layer, &items, false)
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
        self.apply(layer, &items, true)
    }

    fn apply(
        &mut self,
        layer: usize,
        entries: &[(Entry, Vec<Extent>)],
        whiteouts: bool,
    ) -> Result<(), TreeError> {
        let mut steps = BASE_STEPS.saturating_add(STEPS_PER_ENTRY.saturating_mul(entries.len() as u64));
        for (e, data) in entries {
            let fail = |m: String| TreeError {
                layer,
                path: String::from_utf8_lossy(&e.path).into_owned(),
                message: m,
            };
            let (dir, name) = split(&e.path);
            if let Some(hidden) = name.strip_prefix(WHITEOUT).filter(|_| whiteouts) {
                // containerd makes the directory first (`mkparent`), then writes the whiteout
                // into it: below a lower symlink or non-directory, that directory hides it.
                let d = self.make_dir(dir, layer, &mut steps).map_err(fail)?;
                if name == OPAQUE {
                    self.hide_below(layer, d);
                } else {
                    self.hide(layer, d, hidden);
                }
                continue;
            }
            self.add(layer, e, data, &mut steps).map_err(fail)?;
        }
        Ok(())
    }

    /// Resolve `path` as the directory part of a name of layer `layer`: every component
    /// followed if it is a symlink that layer wrote, within the tree's root; a symlink of a
    /// lower layer is not there for the layer (its upper directory does not hold it), so it
    /// stands as a component that does not exist. Returns the components of the path it
    /// resolves to, each with its inode while the path exists (a component past what exists,
    /// a lower symlink, or one below a non-directory, has none).
    fn resolve(&self, path: &[u8], layer: usize, steps: &mut u64) -> Result<Vec<Step>, String> {
        let mut out: Vec<Step> = Vec::new();
        // What is left to walk: the path, then the targets of the links met, innermost last.
        let mut todo: Vec<&[u8]> = vec![path];
        let mut links = 0u32;
        while let Some(top) = todo.last_mut() {
            if top.is_empty() {
                todo.pop();
                continue;
            }
            let (comp, rest) = match top.iter().position(|&b| b == b'/') {
                Some(i) => (&top[..i], &top[i + 1..]),
                None => (&top[..], &[][..]),
            };
            *top = rest;
            if *steps == 0 {
                return Err(format!(
                    "resolving {:?} exceeds the symlink resolution budget of the layer",
                    String::from_utf8_lossy(path)
                ));
            }
            *steps -= 1;
            match comp {
                b"" | b"." => continue,
                b".." => {
                    // The parent of a resolved component; never above the root.
                    out.pop();
                    continue;
                }
                _ => {}
            }
            let here = match out.last() {
                None => Some(self.root),
                Some(&(_, id)) => id,
            };
            let child = here
                .filter(|&d| self.inodes[d].is_dir())
                .and_then(|d| self.inodes[d].children.get(comp))
                .copied();
            match child {
                // A symlink's name was last written by the layer that wrote the symlink.
                Some((id, by)) if self.inodes[id].kind == EntryKind::Symlink && by == layer => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(format!(
                            "too many levels of symbolic links resolving {:?} (more than {MAX_LINKS})",
                            String::from_utf8_lossy(path)
                        ));
                    }
                    let target = self.inodes[id].link.as_slice();
                    if target.starts_with(b"/") {
                        out.clear();
                    }
                    todo.push(target);
                }
                Some((id, _)) if self.inodes[id].kind == EntryKind::Symlink => {
                    out.push((comp.to_vec(), None))
                }
                _ => out.push((comp.to_vec(), child.map(|(id, _)| id))),
            }
        }
        Ok(out)
    }

    /// The directory `path` resolves to for layer `layer`, if it exists and is a directory.
    fn existing_dir(&self, path: &[u8], layer: usize, steps: &mut u64) -> Result<Option<InodeId>, String> {
        let resolved = self.resolve(path, layer, steps)?;
        let id = match resolved.last() {
            None => Some(self.root),
            Some(&(_, id)) => id,
        };
        Ok(id.filter(|&d| self.inodes[d].is_dir()))
    }

    /// The directory `path` resolves to for layer `layer`, made as needed (a missing
    /// component is made a directory, and a non-directory in the way, a lower layer's symlink
    /// too, is replaced by one); every component is marked as written by `layer`, since
    /// something below it is.
    fn make_dir(&mut self, path: &[u8], layer: usize, steps: &mut u64) -> Result<InodeId, String> {
        let resolved = self.resolve(path, layer, steps)?;
        let mut cur = self.root;
        for (name, _) in resolved {
            cur = match self.inodes[cur].children.get(&name) {
                Some(&(id, _)) if self.inodes[id].is_dir() => {
                    self.inodes[cur].children.insert(name, (id, layer));
                    id
                }
                _ => {
                    let id = self.push(Inode::implicit_dir());
                    self.inodes[cur].children.insert(name, (id, layer));
                    id
                }
            };
        }
        Ok(cur)
    }

    /// A whiteout of `name` in `dir`: gone if a lower layer put it there; if this layer wrote
    /// it (or below it), only what lower layers left beneath it goes.
    fn hide(&mut self, layer: usize, dir: InodeId, name: &[u8]) {
        match self.inodes[dir].children.get(name) {
            None => {}
            Some(&(_, by)) if by != layer => {
                self.inodes[dir].children.remove(name);
            }
            Some(&(id, _)) if self.inodes[id].is_dir() => self.hide_below(layer, id),
            Some(_) => {}
        }
    }

    /// An opaque marker: everything lower layers put below `dir` goes.
    fn hide_below(&mut self, layer: usize, dir: InodeId) {
        // Directories are never shared (no hardlinks to them), so this walk ends.
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            self.inodes[d].children.retain(|_, &mut (_, by)| by == layer);
            let dirs: Vec<InodeId> = self.inodes[d]
                .children
                .values()
                .map(|&(id, _)| id)
                .filter(|&id| self.inodes[id].is_dir())
                .collect();
            stack.extend(dirs);
        }
    }

    fn add(&mut self, layer: usize, e: &Entry, data: &[Extent], steps: &mut u64) -> Result<(), String> {
        if e.path.is_empty() {
            // The root itself ("./").
            if e.kind != EntryKind::Directory {
                return Err("the root must be a directory".into());
            }
            self.set_dir_attrs(self.root, e);
            return Ok(());
        }
        let (dir, name) = split(&e.path);
        let parent = self.make_dir(dir, layer, steps)?;
        let existing = self.inodes[parent].children.get(name).map(|&(id, _)| id);
        match e.kind {
            EntryKind::Directory => {
                if let Some(id) = existing.filter(|&id| self.inodes[id].is_dir()) {
                    self.set_dir_attrs(id, e);
                    self.inodes[parent].children.insert(name.to_vec(), (id, layer));
                    return Ok(());
                }
                let id = self.push(Inode::from_entry(e, data.to_vec()));
                self.inodes[parent].children.insert(name.to_vec(), (id, layer));
            }
            EntryKind::Hardlink => {
                let missing =
                    || format!("hardlink to {:?}, which does not exist", String::from_utf8_lossy(&e.link));
                let (tdir, tname) = split(&e.link);
                let tparent = self.existing_dir(tdir, layer, steps)?.ok_or_else(missing)?;
                if tname.is_empty() {
                    return Err("hardlink to a directory".into());
                }
                if tparent == parent && tname == name {
                    // Both runtimes remove what is at the path first, and find nothing to link.
                    return Err("hardlink to itself".into());
                }
                let target =
                    self.inodes[tparent].children.get(tname).map(|&(id, _)| id).ok_or_else(missing)?;
                if self.inodes[target].is_dir() {
                    return Err("hardlink to a directory".into());
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
    fn symlink(path: &str, target: &str) -> Entry {
        let mut e = entry(path, EntryKind::Symlink);
        e.link = target.as_bytes().to_vec();
        e
    }

    fn hardlink(path: &str, target: &str) -> Entry {
        let mut e = entry(path, EntryKind::Hardlink);
        e.link = target.as_bytes().to_vec();
        e
    }

    fn kind(t: &Tree, path: &str) -> Option<EntryKind> {
        t.lookup(path.as_bytes()).map(|id| t.inodes[id].kind)
    }

    fn base() -> Vec<Entry> {
        vec![
            entry("etc", EntryKind::Directory),
            entry("etc/passwd", EntryKind::File),
            entry("etc/shadow", EntryKind::File),
        ]
    }

    #[test]
    fn entries_below_a_symlink_land_where_it_points() {
        let mut t = Tree::new();
        let mut l = base();
        l.extend([
            symlink("abs", "/etc"),
            entry("abs/new-abs", EntryKind::File),
            entry("d", EntryKind::Directory),
            symlink("d/rel", "../etc"),
            entry("d/rel/new-rel", EntryKind::File),
            // A chain of three, the last one into directories nobody made yet.
            symlink("c1", "c2"),
            symlink("c2", "./d/c3"),
            symlink("d/c3", "/made/on/the/way"),
            entry("c1/deep", EntryKind::File),
            // `..` in a target stops at the root.
            symlink("d/up", "../../../../../../etc"),
            entry("d/up/new-up", EntryKind::File),
            // A target through another link: `..` is taken from where the link points.
            symlink("d/via", "rel/../made"),
            entry("d/via/x", EntryKind::File),
        ]);
        t.apply_layer(0, &l).unwrap();
        t.finish();
        for p in ["etc/new-abs", "etc/new-rel", "etc/new-up", "made/on/the/way/deep", "made/x"] {
            assert_eq!(kind(&t, p), Some(EntryKind::File), "{p}: {:?}", paths(&t));
        }
        for p in ["abs", "d/rel", "c1", "c2", "d/c3", "d/up", "d/via"] {
            assert_eq!(kind(&t, p), Some(EntryKind::Symlink), "{p} stays a symlink");
        }
        let way = t.lookup(b"made/on/the/way").unwrap();
        assert_eq!(t.inodes[way].mtime, None, "made as an implicit directory");
    }

    #[test]
    fn an_entry_at_a_symlink_replaces_it_and_does_not_follow_it() {
        let mut t = Tree::new();
        let mut l = base();
        l.extend([
            symlink("lnk", "/etc"),
            entry("lnk", EntryKind::Directory),
            entry("lnk/f", EntryKind::File),
        ]);
        t.apply_layer(0, &l).unwrap();
        t.finish();
        assert_eq!(paths(&t), ["/", "/etc", "/etc/passwd", "/etc/shadow", "/lnk", "/lnk/f"]);
        assert_eq!(kind(&t, "lnk"), Some(EntryKind::Directory));
    }

    #[test]
    fn loops_are_errors_and_long_chains_are_not() {
        for l in [
            vec![symlink("a", "b"), symlink("b", "a"), entry("a/x", EntryKind::File)],
            vec![symlink("s", "s"), entry("s/x", EntryKind::File)],
            vec![symlink("s", "./s/x"), entry("s/y", EntryKind::File)],
        ] {
            let err = Tree::new().apply_layer(3, &l).unwrap_err();
            assert_eq!(err.layer, 3);
            assert!(err.to_string().contains("too many levels of symbolic links"), "{err}");
        }
        // MAX_LINKS links are followed, one more is a loop.
        for (n, ok) in [(MAX_LINKS, true), (MAX_LINKS + 1, false)] {
            let mut l: Vec<Entry> =
                (0..n).map(|i| symlink(&format!("l{i}"), &format!("l{}", i + 1))).collect();
            l.push(entry(&format!("l{n}"), EntryKind::Directory));
            l.push(entry("l0/end", EntryKind::File));
            let mut t = Tree::new();
            assert_eq!(t.apply_layer(0, &l).is_ok(), ok, "{n} links");
            if ok {
                assert_eq!(kind(&t, &format!("l{n}/end")), Some(EntryKind::File));
            }
        }
    }

    #[test]
    fn resolution_is_bounded_per_layer() {
        // 200 links, each target 2000 components long, walked by every entry: the layer's
        // budget runs out after a few entries instead of the walk running for minutes.
        let pad = "./".repeat(2000);
        let mut l: Vec<Entry> =
            (0..200).map(|i| symlink(&format!("l{i}"), &format!("{pad}l{}", i + 1))).collect();
        l.push(entry("l200", EntryKind::Directory));
        l.extend((0..5000).map(|i| entry(&format!("l0/f{i}"), EntryKind::File)));
        let started = std::time::Instant::now();
        let err = Tree::new().apply_layer(0, &l).unwrap_err();
        assert!(err.to_string().contains("budget"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }

    /// The lower layer of the cross-layer cases: /etc with three files, symlinks to it (one
    /// through a chain) and to /opt, and a regular file.
    fn lower() -> Vec<Entry> {
        let mut l = base();
        l.extend([
            symlink("lnk", "/etc"),
            entry("d", EntryKind::Directory),
            symlink("d/rel", "../etc"),
            symlink("chain1", "chain2"),
            symlink("chain2", "d/rel"),
            entry("opt", EntryKind::Directory),
            entry("opt/old", EntryKind::File),
            symlink("optlink", "opt"),
            entry("f", EntryKind::File),
        ]);
        l
    }

    fn implicit_dir_at(t: &Tree, path: &str) {
        let id = t.lookup(path.as_bytes()).unwrap_or_else(|| panic!("{path}: {:?}", paths(t)));
        let i = &t.inodes[id];
        assert_eq!(
            (i.kind, i.mode, i.uid, i.gid, i.mtime),
            (EntryKind::Directory, 0o755, 0, 0, None),
            "{path}: an implicit directory in place of the lower symlink"
        );
    }

    #[test]
    fn a_file_below_a_lower_symlink_makes_a_directory_in_its_place() {
        let mut t = Tree::new();
        t.apply_layer(0, &lower()).unwrap();
        t.apply_layer(1, &[entry("lnk/new", EntryKind::File), entry("chain1/deep/x", EntryKind::File)])
            .unwrap();
        t.finish();
        implicit_dir_at(&t, "lnk");
        implicit_dir_at(&t, "chain1");
        assert_eq!(kind(&t, "lnk/new"), Some(EntryKind::File));
        assert_eq!(kind(&t, "chain1/deep/x"), Some(EntryKind::File));
        assert_eq!(kind(&t, "etc/new"), None, "not written through the lower symlink");
        assert_eq!(kind(&t, "chain2"), Some(EntryKind::Symlink), "the rest of the chain stays");
        assert_eq!(kind(&t, "d/rel"), Some(EntryKind::Symlink));
    }

    #[test]
    fn whiteouts_and_opaque_markers_below_a_lower_symlink_remove_nothing_it_points_to() {
        let mut t = Tree::new();
        t.apply_layer(0, &lower()).unwrap();
        t.apply_layer(
            1,
            &[
                entry("lnk/from-upper", EntryKind::File),
                entry("lnk/.wh.shadow", EntryKind::File),
                // A whiteout alone below a lower symlink still makes the directory.
                entry("chain1/.wh.passwd", EntryKind::File),
                entry("optlink/new-before", EntryKind::File),
                entry("optlink/.wh..wh..opq", EntryKind::File),
                entry("optlink/new-after", EntryKind::File),
                // Below a lower regular file, and where nothing is: directories too.
                entry("f/.wh.x", EntryKind::File),
                entry("nothing/here/.wh.x", EntryKind::File),
            ],
        )
        .unwrap();
        t.finish();
        assert_eq!(
            paths(&t),
            [
                "/",
                "/chain1",
                "/chain2",
                "/d",
                "/d/rel",
                "/etc",
                "/etc/passwd",
                "/etc/shadow",
                "/f",
                "/lnk",
                "/lnk/from-upper",
                "/nothing",
                "/nothing/here",
                "/opt",
                "/opt/old",
                "/optlink",
                "/optlink/new-after",
                "/optlink/new-before",
            ]
        );
        for p in ["lnk", "chain1", "optlink", "f", "nothing", "nothing/here"] {
            implicit_dir_at(&t, p);
        }
    }

    #[test]
    fn hardlinks_through_a_lower_symlink_find_no_target() {
        let mut t = Tree::new();
        t.apply_layer(0, &lower()).unwrap();
        for target in ["lnk/passwd", "d/rel/passwd", "chain1/shadow"] {
            let err = t.clone().apply_layer(1, &[hardlink("h", target)]).unwrap_err();
            assert!(err.to_string().contains("does not exist"), "{target}: {err}");
        }
        // Through a symlink of the same layer, to a file of the same layer: found.
        t.apply_layer(1, &[symlink("s", "etc"), entry("etc/new", EntryKind::File), hardlink("h", "s/new")])
            .unwrap();
        assert_eq!(t.lookup(b"h"), t.lookup(b"etc/new"));
    }

    #[test]
    fn symlinks_of_the_same_layer_are_followed_and_lower_ones_on_their_way_are_not() {
        let mut t = Tree::new();
        t.apply_layer(0, &lower()).unwrap();
        t.apply_layer(
            1,
            &[
                // The layer's own link into a lower directory: followed.
                symlink("same", "etc"),
                entry("same/from-same", EntryKind::File),
                entry("same/.wh.shadow", EntryKind::File),
                // The layer's own link to a lower symlink: that one is not followed.
                symlink("up", "d/rel"),
                entry("up/from-up", EntryKind::File),
                symlink("up2", "/chain2/sub"),
                entry("up2/from-up2", EntryKind::File),
                // A link of this layer below the directory made in place of a lower one.
                entry("lnk/inner", EntryKind::Directory),
                symlink("lnk/back", "/etc"),
                entry("lnk/back/from-back", EntryKind::File),
            ],
        )
        .unwrap();
        t.finish();
        for p in ["etc/from-same", "d/rel/from-up", "chain2/sub/from-up2", "etc/from-back"] {
            assert_eq!(kind(&t, p), Some(EntryKind::File), "{p}: {:?}", paths(&t));
        }
        assert_eq!(kind(&t, "etc/shadow"), None, "whited out through the layer's own link");
        implicit_dir_at(&t, "d/rel");
        implicit_dir_at(&t, "chain2");
        implicit_dir_at(&t, "lnk");
        for p in ["same", "up", "up2", "chain1", "lnk/back"] {
            assert_eq!(kind(&t, p), Some(EntryKind::Symlink), "{p}");
        }
        // In a later layer, this layer's links are lower ones in turn.
        t.apply_layer(2, &[entry("same/later", EntryKind::File)]).unwrap();
        implicit_dir_at(&t, "same");
        assert_eq!(kind(&t, "etc/later"), None);
    }

    #[test]
    fn a_whiteout_keeps_what_its_own_layer_wrote_and_removes_the_rest_below_it() {
        let mut t = Tree::new();
        t.apply_layer(
            0,
            &[
                entry("d", EntryKind::Directory),
                entry("d/old", EntryKind::File),
                entry("d/sub/old", EntryKind::File),
            ],
        )
        .unwrap();
        t.apply_layer(1, &[entry("d/sub/new", EntryKind::File), entry(".wh.d", EntryKind::File)]).unwrap();
        t.finish();
        assert_eq!(paths(&t), ["/", "/d", "/d/sub", "/d/sub/new"]);
        let id = t.lookup(b"d").unwrap();
        assert_eq!(t.inodes[id].mtime, Some((1, 0)), "the lower directory itself stays");
        // A symlink made in the same layer, then a whiteout below it.
        let mut t = Tree::new();
        t.apply_layer(0, &base()).unwrap();
        t.apply_layer(1, &[symlink("lnk", "etc"), entry("lnk/.wh.passwd", EntryKind::File)]).unwrap();
        t.finish();
        assert_eq!(paths(&t), ["/", "/etc", "/etc/shadow", "/lnk"]);
    }

    #[test]
    fn hardlink_targets_resolve_their_parent_only() {
        let mut t = Tree::new();
        let mut l = base();
        l.extend([
            symlink("lnk", "/etc"),
            hardlink("via-link", "lnk/passwd"),
            hardlink("to-symlink", "lnk"),
            symlink("dangling", "/nowhere"),
            hardlink("through-dangling", "dangling/x"),
        ]);
        let err = Tree::new().apply_layer(0, &l).unwrap_err();
        assert!(
            err.to_string().contains("through-dangling") && err.to_string().contains("does not exist"),
            "{err}"
        );
        l.pop();
        t.apply_layer(0, &l).unwrap();
        t.finish();
        assert_eq!(t.lookup(b"via-link"), t.lookup(b"etc/passwd"));
        assert_eq!(t.lookup(b"to-symlink"), t.lookup(b"lnk"), "a hardlink to a symlink links the symlink");
        for (l, what) in [
            (vec![hardlink("x", "etc")], "directory"),
            (vec![symlink("l2", "/etc"), hardlink("l2/passwd", "etc/passwd")], "itself"),
        ] {
            let err = t.clone().apply_layer(2, &l).unwrap_err();
            assert!(err.to_string().contains(what), "{err}");
        }
    }

    #[test]
    fn a_non_directory_in_the_way_of_a_parent_is_replaced() {
        let mut t = Tree::new();
        t.apply_layer(
            0,
            &[entry("f", EntryKind::File), symlink("lnk", "f"), entry("lnk/x", EntryKind::File)],
        )
        .unwrap();
        t.finish();
        assert_eq!(paths(&t), ["/", "/f", "/f/x", "/lnk"]);
    }
}
