#!/usr/bin/python3
"""The truth tree of an OCI image: what a correct unpacker leaves on disk, as sorted JSON.

    truth.py LAYOUT_DIR[:TAG] OUT.json [--platform linux/amd64] [--keep-rootfs DIR]
             [--drop-estargz-meta] [--no-model]
             [--walked LISTING.json --unpacker TEXT [--applied-since SECONDS] | --model-truth]
    truth.py --walk DIR OUT.json      (the same listing of any tree, e.g. a mounted image)

TAG defaults to "latest" (or the only manifest of the layout). If the tag names an image index,
the manifest for --platform (default linux/amd64) is used.

How it works
  1. The image is unpacked by umoci ("umoci raw unpack", as root; "--rootless" otherwise) into a
     scratch rootfs next to OUT.json (a scratch copy of the layout whose index.json names just
     the chosen manifest, with its blobs hardlinked, so index images work too).
  2. The rootfs is walked without following symlinks and every path is recorded.
     With --walked, steps 1 and 2 are replaced by a listing made with --walk of a tree another
     unpacker made (build.sh: containerd's overlayfs snapshotter, for the paths image); with
     --model-truth (no containerd at hand), by the model below.
  3. Independently, the layers are applied in memory by a small model of the OCI layer rules
     (whiteouts and opaque markers hide lower layers only, a non-directory replaces whatever was
     there, a directory entry over a directory keeps its children, hardlinks share an inode),
     from the tar headers themselves, entry by entry as containerd applies them into a layer's
     own upper directory for its overlayfs snapshotter: names cleaned with `..` stopping at
     the root, the parent of every entry (and of whiteouts and hardlink targets) resolved
     inside the root through the symlinks the same layer wrote (a symlink of a lower layer is
     not in the upper directory: a directory is made in its place, hiding it), whiteouts and
     opaque markers making their directory, then keeping what their own layer wrote there or
     below. umoci follows lower layers' symlinks too; no image whose truth comes from umoci
     goes through one (the comparison would say so). The two are compared field by field; the
     differences, expected to be none, go to "model_diffs" in the JSON and to stderr.
     --no-model skips it.

Output (UTF-8 JSON):
  {"image": {layout, tag, manifest, platform, layers: [digest...]},
   "unpacker": "...", "notes": [...],
   "entries": [ {path, type, mode, uid, gid, mtime, xattrs, [size, sha256], [target],
                 [major, minor], [implicit], [link_group]} ... ],  sorted by path (UTF-8 bytes)
   "hardlink_groups": [[path, path, ...], ...],
   "model_diffs": [...]}
  path: absolute ("/" is the root). type: dir, file, symlink, char, block, fifo, socket.
  mode: the permission bits incl. setuid/setgid/sticky (st_mode & 0o7777), as an integer.
  mtime: {"sec": s, "nsec": ns}, or null where it is the time of the unpack (see below; with
  --applied-since, also every directory whose mtime is at or after that time: containerd
  made it, or wrote into it without an entry for it, while applying a layer).
  xattrs: {name: base64(value)}. size and sha256 (hex): regular files. target: symlinks.
  major/minor: char and block devices. link_group: index into hardlink_groups.

What umoci 0.4.7 does, so later comparisons know what to expect (checked on the edge image):
  * mtimes: set with nanoseconds from the PAX "mtime" record (utimensat, not following
    symlinks, so symlinks keep their own mtime). After each entry umoci restores the metadata
    of the entry's parent directory, so a directory's mtime is the one of its own (last) tar
    entry even when later entries or layers add or remove children in it.
  * Directories that no layer has an entry for (implicit parents, and "/" unless a layer has a
    "./" entry) are made with mode 0755, owner 0:0 and the current time: their mtime is
    recorded here as null and they carry "implicit": true.
  * mtimes beyond year 2262 overflow (umoci goes through Go's Time.UnixNano, int64 ns): a
    PAX mtime of 10000000000 came out as 1901-12-13. The edge image stays below that.
  * atime is not recorded (umoci sets it to the mtime, the kernel may change it on reads).
  * xattrs: every SCHILY.xattr.* record is applied with lsetxattr, including security.capability
    (as root). umoci drops "security.selinux" ("forbidden"), treats trusted.overlay.* specially,
    skips empty-valued xattrs ("disallowed by PAX standard"), and with --rootless it ignores
    EPERM on setxattr (so security.* and trusted.* are missing in a rootless unpack).
  * A directory entry over an existing directory replaces its mode, owner, mtime and its whole
    xattr set, and keeps its children.
  * Hardlink entries: the link is made to the earlier entry's inode (a hardlink to a symlink
    links the symlink itself); the hardlink header's own mode/owner/mtime are not applied.
  * As root, char/block devices and fifos are made with mknod; --rootless makes empty regular
    files in place of devices and maps every owner to the caller.
  * The tar padding after the end-of-archive blocks is ignored with a warning ("trailing junk").
    A tar stream may also end with one end block, without them, or right after the last
    entry's data (Go's archive/tar reads to there; `umoci insert` writes such layers).
  * Names are cleaned with `..` stopping at the root (`../a` is `/a`); the parent directory
    of an entry is resolved through symlinks inside the root (`lnk -> /etc`, then `lnk/x` is
    `/etc/x`); the same for whiteouts and hardlink targets; 256 links is "too many levels".
"""

import argparse
import base64
import errno
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile

MT_INDEX = ("application/vnd.oci.image.index.v1+json",
            "application/vnd.docker.distribution.manifest.list.v2+json")
REF_NAME = "org.opencontainers.image.ref.name"
ESTARGZ_META = ("/stargz.index.json", "/.prefetch.landmark", "/.no.prefetch.landmark")


def blob_path(layout, digest):
    algo, hexd = digest.split(":", 1)
    return os.path.join(layout, "blobs", algo, hexd)


def read_json(layout, digest):
    with open(blob_path(layout, digest), "rb") as f:
        return json.load(f)


def resolve(layout, tag, platform):
    """Returns (manifest descriptor, manifest, platform string or None)."""
    with open(os.path.join(layout, "index.json")) as f:
        index = json.load(f)
    descs = index["manifests"]
    if tag:
        descs = [d for d in descs if d.get("annotations", {}).get(REF_NAME) == tag]
    elif len(descs) > 1:
        descs = [d for d in descs if d.get("annotations", {}).get(REF_NAME) == "latest"]
    if len(descs) != 1:
        sys.exit("truth.py: %s: no single manifest for tag %r" % (layout, tag or "latest"))
    desc = descs[0]
    if desc["mediaType"] in MT_INDEX:
        want_os, want_arch = platform.split("/")[:2]
        want_var = platform.split("/")[2] if platform.count("/") == 2 else None
        sub = [d for d in read_json(layout, desc["digest"])["manifests"]
               if d.get("platform", {}).get("os") == want_os
               and d.get("platform", {}).get("architecture") == want_arch
               and (want_var is None or d["platform"].get("variant") == want_var)]
        if not sub:
            sys.exit("truth.py: no manifest for platform %s" % platform)
        desc = sub[0]
    return desc, read_json(layout, desc["digest"])


# -- walking a rootfs --------------------------------------------------------------------------
def ftype(mode):
    for test, name in ((stat.S_ISDIR, "dir"), (stat.S_ISREG, "file"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISCHR, "char"), (stat.S_ISBLK, "block"), (stat.S_ISFIFO, "fifo"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "unknown"


def b64(b):
    return base64.b64encode(b).decode()


def walk_rootfs(root, unreadable_ok=False):
    """{path: entry} and {path: inode key} for everything under ROOT. With UNREADABLE_OK, a
    file whose content fails to read (EIO) gets "sha256": "unreadable" instead of an error.
    A listed name that does not exist is left out: overlayfs lists the whiteouts of a
    directory it does not merge with a lower one (a layer's directory over a lower symlink)."""
    entries, inodes = {}, {}
    todo = [""]
    while todo:
        rel = todo.pop()
        full = root + rel if rel else root
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            if not rel:
                raise
            continue
        path = rel or "/"
        t = ftype(st.st_mode)
        e = {"path": path, "type": t, "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid,
             "gid": st.st_gid, "mtime": {"sec": st.st_mtime_ns // 10**9,
                                         "nsec": st.st_mtime_ns % 10**9}}
        try:
            names = sorted(os.listxattr(full, follow_symlinks=False))
        except OSError:
            names = []
        e["xattrs"] = {n: b64(os.getxattr(full, n, follow_symlinks=False)) for n in names}
        if t == "file":
            h = hashlib.sha256()
            try:
                with open(full, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                e["sha256"] = h.hexdigest()
            except OSError as err:
                if not unreadable_ok or err.errno != errno.EIO:
                    raise
                e["sha256"] = "unreadable"
            e["size"] = st.st_size
        elif t == "symlink":
            e["target"] = os.fsdecode(os.readlink(full))
        elif t in ("char", "block"):
            e["major"], e["minor"] = os.major(st.st_rdev), os.minor(st.st_rdev)
        entries[path] = e
        if t != "dir" and st.st_nlink > 1:
            inodes[path] = (st.st_dev, st.st_ino)
        if t == "dir":
            for n in os.listdir(full):
                todo.append(rel + "/" + n)
    return entries, inodes


# -- the in-memory model of layer application -----------------------------------------------------
class Inode:
    __slots__ = ("e",)

    def __init__(self, e):
        self.e = e


def norm(name):
    parts = [p for p in name.split("/") if p not in ("", ".")]
    out = []
    for p in parts:
        if p == "..":
            if out:
                out.pop()
        else:
            out.append(p)
    return "/" + "/".join(out)


def parent(path):
    return path.rsplit("/", 1)[0] or "/"


def pax_mtime(ti):
    raw = ti.pax_headers.get("mtime")
    if raw is None:
        return {"sec": int(ti.mtime), "nsec": 0}
    sec, _, frac = raw.partition(".")
    return {"sec": int(sec), "nsec": int((frac + "000000000")[:9])}


class Model:
    def __init__(self):
        self.nodes = {"/": Inode({"type": "dir", "mode": 0o755, "uid": 0, "gid": 0,
                                  "mtime": None, "xattrs": {}, "implicit": True})}

    def children(self, d):
        pre = d.rstrip("/") + "/"
        return [p for p in self.nodes if p.startswith(pre) and p != d]

    def remove(self, path):
        for p in self.children(path) + [path]:
            self.nodes.pop(p, None)

    def ensure_parents(self, path):
        chain = []
        p = parent(path)
        while p != "/":
            chain.append(p)
            p = parent(p)
        for p in reversed(chain):
            n = self.nodes.get(p)
            if n is None or n.e["type"] != "dir":
                if n is not None:
                    self.remove(p)
                self.nodes[p] = Inode({"type": "dir", "mode": 0o755, "uid": 0, "gid": 0,
                                       "mtime": None, "xattrs": {}, "implicit": True})

    def resolve(self, d, upper):
        """The directory path D resolves to for the layer that wrote UPPER, as containerd's
        fs.RootPath resolves it in the layer's upper directory: every symlink the layer wrote
        followed (absolute targets from the root, relative ones from the link's directory),
        `..` never above the root, more than 255 links an error; a lower layer's symlink is
        not there, so it is a plain component (ensure_parents makes a directory of it)."""
        out, todo, links = [], [d], 0
        while todo:
            comp, _, todo[-1] = todo[-1].partition("/")
            if not todo[-1] and not comp:
                todo.pop()
                continue
            if not todo[-1]:
                todo.pop()
            if comp in ("", "."):
                continue
            if comp == "..":
                if out:
                    out.pop()
                continue
            n = self.nodes.get("/" + "/".join(out + [comp]))
            if n is not None and n.e["type"] == "symlink" and \
                    "/" + "/".join(out + [comp]) in upper:
                links += 1
                if links > 255:
                    raise SystemExit("model: too many levels of symbolic links in %s" % d)
                if n.e["target"].startswith("/"):
                    out = []
                todo.append(n.e["target"])
            else:
                out.append(comp)
        return "/" + "/".join(out)

    def hide(self, target, upper, opaque):
        """umoci's whiteout walk: what this layer did not write (nor write below) goes; an
        opaque marker keeps the directory itself."""
        todo = [target]
        while todo:
            p = todo.pop()
            n = self.nodes.get(p)
            if n is None:
                continue
            if p not in upper and not (opaque and p == target):
                self.remove(p)
                continue
            if n.e["type"] == "dir":
                pre = p.rstrip("/") + "/"
                todo += [c for c in self.nodes if c.startswith(pre) and "/" not in c[len(pre):]]

    def apply_layer(self, fileobj):
        # paths written by this layer and their ancestors (resolved): whiteouts keep them
        upper = set()
        with tarfile.open(fileobj=fileobj, mode="r|*", encoding="utf-8",
                          errors="surrogateescape") as tf:
            for ti in tf:
                name = norm(ti.name)
                base = name.rsplit("/", 1)[1]
                rdir = self.resolve(parent(name), upper) if name != "/" else "/"
                path = rdir.rstrip("/") + "/" + base if name != "/" else "/"
                if base.startswith(".wh."):
                    # containerd makes the directory (mkparent), then the whiteout in it
                    self.ensure_parents(rdir.rstrip("/") + "/" + base)
                    self.upper(upper, rdir)
                    if base == ".wh..wh..opq":
                        self.hide(rdir, upper, True)
                    else:
                        self.hide(rdir.rstrip("/") + "/" + base[4:], upper, False)
                    continue
                if path != "/":
                    self.ensure_parents(path)
                old = self.nodes.get(path)
                if ti.islnk():
                    lname = norm(ti.linkname)
                    lpath = self.resolve(parent(lname), upper).rstrip("/") + "/" + \
                        lname.rsplit("/", 1)[1]
                    target = self.nodes.get(lpath)
                    if target is None:
                        raise SystemExit("model: hardlink %s to missing %s" % (path, ti.linkname))
                    if old is not None:
                        self.remove(path)
                    self.nodes[path] = target
                    self.upper(upper, path)
                    continue
                xattrs = {k[len("SCHILY.xattr."):]: b64(v.encode("utf-8", "surrogateescape"))
                          for k, v in ti.pax_headers.items() if k.startswith("SCHILY.xattr.")}
                e = {"type": None, "mode": ti.mode & 0o7777, "uid": ti.uid, "gid": ti.gid,
                     "mtime": pax_mtime(ti), "xattrs": dict(sorted(xattrs.items()))}
                if ti.isdir():
                    e["type"] = "dir"
                elif ti.isreg():
                    e["type"] = "file"
                    h = hashlib.sha256()
                    f = tf.extractfile(ti)
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                    e["size"], e["sha256"] = ti.size, h.hexdigest()
                elif ti.issym():
                    e["type"], e["target"] = "symlink", ti.linkname
                elif ti.ischr() or ti.isblk():
                    e["type"] = "char" if ti.ischr() else "block"
                    e["major"], e["minor"] = ti.devmajor, ti.devminor
                elif ti.isfifo():
                    e["type"] = "fifo"
                else:
                    raise SystemExit("model: unsupported tar type %r for %s" % (ti.type, path))
                if old is not None and not (old.e["type"] == "dir" and e["type"] == "dir"):
                    self.remove(path)
                if path in self.nodes:  # dir over dir: new metadata, children stay
                    self.nodes[path].e = e
                else:
                    self.nodes[path] = Inode(e)
                self.upper(upper, path)

    @staticmethod
    def upper(upper, path):
        while path != "/":
            upper.add(path)
            path = parent(path)

    def result(self):
        entries, groups = {}, {}
        for p, ino in self.nodes.items():
            e = dict(ino.e, path=p)
            entries[p] = e
            if e["type"] != "dir":
                groups.setdefault(id(ino), []).append(p)
        return entries, [sorted(g) for g in groups.values() if len(g) > 1]


def open_layer(path):
    """The layer's tar stream, in memory, padded to whole blocks and two zero blocks more:
    Go's reader (umoci's) accepts a stream that ends without its last entry's padding or its
    end blocks, tarfile would not. (A stream cut inside an entry's data is umoci's to refuse.)"""
    data = layer_tar(path)
    return io.BytesIO(data + b"\0" * (-len(data) % 512 + 1024))


def is_zstd(magic):
    """A zstd frame (28 b5 2f fd) or a skippable frame (5? 2a 4d 18, as pzstd starts with)."""
    return magic[:4] == b"\x28\xb5\x2f\xfd" or (magic[1:4] == b"\x2a\x4d\x18"
                                                  and magic[0] & 0xF0 == 0x50)


def layer_tar(path):
    """The layer's tar stream as stored: gzip (every member), zstd (every frame, skippable frames
    skipped: zstd:chunked's TOC and footer, pzstd's size frames) or uncompressed."""
    with open(path, "rb") as f:
        magic = f.read(4)
        f.seek(0)
        if magic[:2] == b"\x1f\x8b":
            return gzip.GzipFile(fileobj=f).read()  # every member of a multi-member stream
        if is_zstd(magic):
            import zstandard  # python3-zstandard (Debian)
            return zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()
        return f.read()


# -- main ---------------------------------------------------------------------------------------
def compare(got, want, got_groups, want_groups, applied=()):
    diffs = []
    for p in sorted(set(got) | set(want)):
        a, b = got.get(p), want.get(p)
        if a is None or b is None:
            diffs.append({"path": p, "umoci": a and a["type"], "model": b and b["type"]})
            continue
        for k in ("type", "mode", "uid", "gid", "mtime", "xattrs", "size", "sha256", "target",
                  "major", "minor"):
            if (b.get("implicit") or p in applied) and k == "mtime":
                continue
            if a.get(k) != b.get(k):
                diffs.append({"path": p, "field": k, "umoci": a.get(k), "model": b.get(k)})
    if sorted(got_groups) != sorted(want_groups):
        diffs.append({"hardlink_groups": {"umoci": got_groups, "model": want_groups}})
    return diffs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("image", help="LAYOUT_DIR[:TAG], or with --walk a directory tree")
    ap.add_argument("out", help="OUT.json")
    ap.add_argument("--walk", action="store_true",
                    help="list the tree under IMAGE (a mounted image, say) the same way, nothing more")
    ap.add_argument("--unreadable-ok", action="store_true",
                    help="with --walk, a file that fails to read (EIO) is listed as unreadable")
    ap.add_argument("--platform", default="linux/amd64")
    ap.add_argument("--keep-rootfs", metavar="DIR", help="unpack here and keep it")
    ap.add_argument("--drop-estargz-meta", action="store_true",
                    help="leave out %s" % ", ".join(ESTARGZ_META))
    ap.add_argument("--no-model", action="store_true")
    ap.add_argument("--walked", metavar="LISTING",
                    help="the unpacked tree is this --walk listing (of a tree UNPACKER made), not umoci's")
    ap.add_argument("--unpacker", help="with --walked: what made the tree")
    ap.add_argument("--applied-since", type=int, metavar="SECONDS",
                    help="with --walked: directories with an mtime at or after this are apply-time ones")
    ap.add_argument("--model-truth", action="store_true",
                    help="the model's tree is the truth (no unpacker at hand)")
    args = ap.parse_args()
    if args.walked and not args.unpacker:
        ap.error("--walked needs --unpacker")

    if args.walk:
        got, inodes = walk_rootfs(os.path.abspath(args.image), args.unreadable_ok)
        byino = {}
        for p, k in inodes.items():
            byino.setdefault(k, []).append(p)
        groups = sorted(sorted(g) for g in byino.values() if len(g) > 1)
        entries = [got[p] for p in sorted(got, key=lambda p: p.encode("utf-8", "surrogateescape"))]
        with open(args.out, "w") as f:
            json.dump({"entries": entries, "hardlink_groups": groups}, f, ensure_ascii=False)
        return

    layout, tag = args.image, ""
    if ":" in args.image:
        l, _, t = args.image.rpartition(":")
        if os.path.isdir(l) and "/" not in t:
            layout, tag = l, t
    layout = os.path.abspath(layout)
    desc, manifest = resolve(layout, tag, args.platform)
    layers = [l["digest"] for l in manifest["layers"]]

    outdir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(outdir, exist_ok=True)
    if args.walked or args.model_truth:
        got, got_groups, unpacker = walked(args, layout, layers)
    else:
        got, got_groups = unpack_umoci(args, layout, desc, manifest, layers, outdir)
        ver = subprocess.run(["umoci", "--version"], capture_output=True, text=True).stdout.strip()
        unpacker = "%s raw unpack%s" % (ver, "" if os.geteuid() == 0 else " --rootless")
    applied = set()
    if args.walked and args.applied_since is not None:
        applied = {p for p, e in got.items()
                   if e["type"] == "dir" and e["mtime"]["sec"] >= args.applied_since}

    notes = []
    diffs = []
    implicit = set()
    if not args.no_model:
        model = Model()
        for l in layers:
            with open_layer(blob_path(layout, l)) as f:
                model.apply_layer(f)
        want, want_groups = model.result()
        implicit = {p for p, e in want.items() if e.get("implicit")}
        if args.drop_estargz_meta:
            for m in ESTARGZ_META:
                want.pop(m, None)
                got.pop(m, None)
            want_groups = [g for g in want_groups if not set(g) & set(ESTARGZ_META)]
        diffs = compare(got, want, got_groups, want_groups, applied)
        for dd in diffs:
            print("truth.py: model differs from the unpacker: %s" % json.dumps(dd, ensure_ascii=False),
                  file=sys.stderr)
    else:
        notes.append("no model: implicit directories are not known, their mtimes are kept")
    if args.drop_estargz_meta:
        for m in ESTARGZ_META:
            got.pop(m, None)
        got_groups = [g for g in got_groups if not set(g) & set(ESTARGZ_META)]

    group_of = {p: i for i, g in enumerate(got_groups) for p in g}
    entries = []
    for p in sorted(got, key=lambda s: s.encode("utf-8", "surrogateescape")):
        e = dict(got[p])
        e.pop("implicit", None)
        if p in implicit:
            e["mtime"] = None
            e["implicit"] = True
        elif p in applied:
            e["mtime"] = None
        if p in group_of:
            e["link_group"] = group_of[p]
        entries.append(e)
    notes.append("directories marked implicit have no tar entry in any layer: the unpacker made "
                 "them at unpack time, so their mtime is not part of the image (null)")
    if applied:
        notes.append("directories with a null mtime and no implicit mark got the time of the "
                     "apply from the unpacker (it wrote into them without a tar entry for them)")
    if args.model_truth:
        notes.append("no unpacker ran: the entries are the model's")
    doc = {
        "image": {"layout": layout, "tag": tag or "latest", "manifest": desc["digest"],
                  "platform": desc.get("platform"), "layers": layers},
        "unpacker": unpacker,
        "notes": notes,
        "entries": entries,
        "hardlink_groups": got_groups,
        "model_diffs": diffs,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1, sort_keys=True)
        f.write("\n")
    print("%s: %d entries, %d hardlink groups, %d model differences"
          % (args.out, len(entries), len(got_groups), len(diffs)), file=sys.stderr)
    sys.exit(1 if diffs else 0)


def walked(args, layout, layers):
    """The unpacked tree of --walked (or, with --model-truth, the model's)."""
    if args.model_truth:
        model = Model()
        for l in layers:
            with open_layer(blob_path(layout, l)) as f:
                model.apply_layer(f)
        got, groups = model.result()
        return got, sorted(groups), "none: the in-memory model (" + os.path.basename(__file__) + ")"
    with open(args.walked, encoding="utf-8") as f:
        listing = json.load(f)
    got = {e["path"]: e for e in listing["entries"]}
    return got, sorted(sorted(g) for g in listing["hardlink_groups"]), args.unpacker


def unpack_umoci(args, layout, desc, manifest, layers, outdir):
    """umoci's unpack of the image, walked: ({path: entry}, hardlink groups)."""
    scratch = tempfile.mkdtemp(prefix=".truth-", dir=outdir)
    try:
        # a layout naming only the chosen manifest (umoci unpacks manifests, not indexes)
        lay = os.path.join(scratch, "layout")
        os.makedirs(os.path.join(lay, "blobs", "sha256"))
        # umoci 0.4 unpacks gzip and plain tar layers only: a zstd layer is given to it as the
        # tar it decompresses to (its DiffID), in a manifest rewritten for the scratch layout
        zstd_layers = [l for l in manifest["layers"] if l["mediaType"].endswith("+zstd")]
        blobs = [manifest["config"]["digest"]] + [l["digest"] for l in manifest["layers"]
                                                  if l not in zstd_layers]
        # (and its config's DiffID is that tar's digest: skopeo 1.9's zstd:chunked streams end
        # right after the two end-of-archive blocks, so they differ from the source tar's DiffID
        # when that had more record padding, while the config keeps the source's DiffIDs)
        if zstd_layers:
            m2 = dict(manifest, layers=[])
            config = read_json(layout, manifest["config"]["digest"])
            for i, l in enumerate(manifest["layers"]):
                if l in zstd_layers:
                    tar = layer_tar(blob_path(layout, l["digest"]))
                    dig = "sha256:" + hashlib.sha256(tar).hexdigest()
                    if config["rootfs"]["diff_ids"][i] != dig:
                        print("truth.py: layer %s decompresses to %s, not its DiffID %s"
                              % (l["digest"], dig, config["rootfs"]["diff_ids"][i]), file=sys.stderr)
                        config["rootfs"]["diff_ids"][i] = dig
                    with open(blob_path(lay, dig), "wb") as f:
                        f.write(tar)
                    l = {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": dig,
                         "size": len(tar)}
                m2["layers"].append(l)
            raw = json.dumps(config).encode()
            m2["config"] = dict(manifest["config"], size=len(raw),
                                digest="sha256:" + hashlib.sha256(raw).hexdigest())
            with open(blob_path(lay, m2["config"]["digest"]), "wb") as f:
                f.write(raw)
            blobs = blobs[1:]
            raw = json.dumps(m2).encode()
            desc = {"mediaType": desc["mediaType"], "size": len(raw),
                    "digest": "sha256:" + hashlib.sha256(raw).hexdigest()}
            with open(blob_path(lay, desc["digest"]), "wb") as f:
                f.write(raw)
        else:
            blobs.append(desc["digest"])
        for d in blobs:
            dst = blob_path(lay, d)
            if os.path.exists(dst):
                continue
            try:
                os.link(blob_path(layout, d), dst)
            except OSError:
                shutil.copyfile(blob_path(layout, d), dst)
        d = {k: desc[k] for k in ("mediaType", "digest", "size")}
        d["annotations"] = {REF_NAME: "truth"}
        with open(os.path.join(lay, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "manifests": [d]}, f)
        with open(os.path.join(lay, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        rootfs = os.path.abspath(args.keep_rootfs) if args.keep_rootfs else \
            os.path.join(scratch, "rootfs")
        if os.path.exists(rootfs):
            shutil.rmtree(rootfs)
        cmd = ["umoci", "raw", "unpack"]
        if os.geteuid() != 0:
            cmd.append("--rootless")
        cmd += ["--image", lay + ":truth", rootfs]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit("truth.py: %s failed:\n%s" % (" ".join(cmd), r.stderr))
        got, inodes = walk_rootfs(rootfs)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    byino = {}
    for p, k in inodes.items():
        byino.setdefault(k, []).append(p)
    return got, sorted(sorted(g) for g in byino.values() if len(g) > 1)


if __name__ == "__main__":
    main()
