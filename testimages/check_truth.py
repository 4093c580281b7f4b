#!/usr/bin/python3
"""Check that a truth tree of the edge image (truth.py output) shows every edge case applied.

    check_truth.py edge.json [python.json]

Exits non-zero, naming the case, on the first failure. build.sh runs it on the truth of edge,
edge-estargz and python.
"""

import base64
import hashlib
import json
import struct
import sys

MiB = 1 << 20


def load(path):
    doc = json.load(open(path, encoding="utf-8"))
    return doc, {e["path"]: e for e in doc["entries"]}


def check_edge(path):
    doc, E = load(path)
    fails = []

    def ok(cond, what):
        try:
            good = cond()
        except (KeyError, TypeError, ValueError) as e:
            good = False
            what += " (%s: %s)" % (type(e).__name__, e)
        if not good:
            fails.append(what)

    def has(p, typ=None):
        e = E.get(p)
        return e is not None and (typ is None or e["type"] == typ)

    def sha(data):
        return hashlib.sha256(data).hexdigest()

    # whiteouts, opaque directory, re-creation
    ok(lambda: not has("/wh/remove-me.txt"), "whiteout of a file")
    ok(lambda: not any(p.startswith("/wh/remove-dir") for p in E), "whiteout of a directory and its tree")
    ok(lambda: not has("/wh/remove-symlink"), "whiteout of a symlink")
    ok(lambda: has("/wh/keep.txt", "file"), "sibling of whiteouts kept")
    ok(lambda: not any(".wh." in p.rsplit("/", 1)[1][:4] for p in E), "no .wh.* entries left")
    ok(lambda: E.get("/wh/recreated", {}).get("sha256") ==
       sha(b"version 3: re-created after the layer 2 whiteout\n"), "re-created after whiteout")
    ok(lambda: not has("/opq/old1") and not has("/opq/sub/old2"), "opaque dir hides lower children")
    ok(lambda: has("/opq/new1", "file") and has("/opq/sub/new2", "file"), "opaque dir keeps own layer")
    ok(lambda: E["/opq"]["xattrs"].get("user.zran.opq") == base64.b64encode(b"layer2").decode(),
       "opaque dir metadata from the upper layer")
    # type replacements and overwrites
    ok(lambda: has("/replace/file-to-dir", "dir") and has("/replace/file-to-dir/child", "file"),
       "file replaced by a directory")
    ok(lambda: has("/replace/dir-to-file", "file") and
       not any(p.startswith("/replace/dir-to-file/") for p in E), "directory replaced by a file")
    ok(lambda: has("/replace/symlink-to-file", "file"), "symlink replaced by a file")
    ok(lambda: has("/replace/file-to-symlink", "symlink"), "file replaced by a symlink")
    ok(lambda: has("/replace/file-to-fifo", "fifo"), "file replaced by a fifo")
    o = E.get("/replace/overwritten", {})
    ok(lambda: (o.get("mode"), o.get("uid"), o.get("gid")) == (0o755, 2, 3), "overwrite with new owner")
    d = E.get("/replace/dir-meta", {})
    ok(lambda: (d.get("uid"), d.get("gid"), d.get("mtime", {}).get("sec")) == (6, 7, 1700000002)
       and has("/replace/dir-meta/child"), "directory metadata replaced, children kept")
    ok(lambda: E.get("/dup/twice", {}).get("sha256") == sha(b"second version wins\n"),
       "duplicate entry: the later one wins")
    ok(lambda: E.get("/sizes/one-byte", {}).get("sha256") == sha(b"y"), "overwrite in the members layer")
    ok(lambda: E.get("/implicit", {}).get("implicit") is True, "implicit parent directories marked")
    # hardlinks
    groups = [set(g) for g in doc["hardlink_groups"]]
    ok(lambda: {"/links/hard/a/group.txt", "/links/hard/b/group-link",
        "/links/hard/c/deep/group-link"} in groups, "hardlink group of 3 across directories")
    ok(lambda: {"/links/hard/a/setuid-xattr", "/links/hard/c/setuid-xattr-link"} in groups,
       "hardlink group with setuid and xattrs")
    ok(lambda: {"/l2/x/file", "/l2/y/link"} in groups, "hardlinks in layer 2")
    ok(lambda: not any("/links/hard/a/original.txt" in g for g in groups),
       "original.txt: one name replaced, one whited out: no group left")
    ok(lambda: not has("/links/hard/b/link-to-original"), "whiteout of one hardlink name")
    ok(lambda: any("/links/sym/hardlink-to-symlink" in g for g in groups) and
       has("/links/sym/hardlink-to-symlink", "symlink"), "hardlink to a symlink")
    # symlinks
    ok(lambda: E.get("/links/sym/rel-file", {}).get("target") == "../hard/a/original.txt", "rel symlink")
    ok(lambda: E.get("/links/sym/abs-file", {}).get("target") == "/links/hard/a/original.txt",
       "absolute symlink")
    ok(lambda: has("/links/sym/dangling-rel", "symlink") and has("/links/sym/chain1", "symlink"),
       "dangling symlink and chain")
    ok(lambda: len(E.get("/links/sym/long-target", {}).get("target", "")) > 100, "long symlink target")
    # xattrs
    cap = base64.b64decode(E["/xattr/capability"]["xattrs"].get("security.capability", ""))
    ok(lambda: len(cap) == 20 and struct.unpack("<I", cap[:4])[0] == 0x02000001,
       "security.capability v2")
    ok(lambda: base64.b64decode(E["/xattr/user"]["xattrs"]["user.zran.text"]) == b"hello", "user xattr")
    ok(lambda: base64.b64decode(E["/xattr/user"]["xattrs"]["user.zran.binary"]).endswith(b"\x00\xff\x00"),
       "binary xattr value with NUL bytes")
    ok(lambda: len(E["/xattr/many"]["xattrs"]) == 16, "16 xattrs on one file")
    ok(lambda: "user.zran.dir" in E["/xattr"]["xattrs"], "xattr on a directory")
    # devices, fifos, permission bits, owners
    ok(lambda: (E["/dev/null-like"]["type"], E["/dev/null-like"]["major"], E["/dev/null-like"]["minor"])
       == ("char", 1, 3), "char device 1:3")
    ok(lambda: (E["/dev/loop-like"]["type"], E["/dev/loop-like"]["major"]) == ("block", 7),
       "block device 7:0")
    ok(lambda: E["/dev/big-numbers"]["minor"] == 1048575, "device minor > 255")
    ok(lambda: E["/dev/fifo"]["type"] == "fifo", "fifo")
    ok(lambda: E["/perm/setuid"]["mode"] == 0o4755 and E["/perm/setgid"]["mode"] == 0o2755 and
       E["/perm/sticky-dir"]["mode"] == 0o1777 and E["/perm/all-bits"]["mode"] == 0o7777,
       "setuid/setgid/sticky bits")
    ok(lambda: E["/perm/no-access-dir"]["mode"] == 0 and has("/perm/no-access-dir/inside"),
       "file inside a 0000 directory")
    ok(lambda: (E["/owner/big-ids"]["uid"], E["/owner/huge-ids"]["uid"], E["/owner/max-ids"]["gid"])
       == (70000, 3000000, 4294967294), "uid/gid above 65535")
    # names, times, sizes, many entries
    ok(lambda: any(len(p.rsplit("/", 1)[1].encode()) == 255 and p.endswith("n") for p in E) and
       any(len(p.rsplit("/", 1)[1].encode()) == 255 and "é" in p for p in E),
       "255-byte names (ASCII and UTF-8)")
    ok(lambda: max(len(p.encode()) for p in E) > 700, "a path of more than 700 bytes")
    ok(lambda: has("/names/utf8/日本語のファイル名.txt") and has("/names/special/new\nline"),
       "UTF-8 and special names")
    ok(lambda: E["/times/nanoseconds"]["mtime"] == {"sec": 1700000000, "nsec": 123456789},
       "mtime with nanoseconds")
    ok(lambda: E["/times/beyond-ustar"]["mtime"]["sec"] == 9000000000, "PAX mtime beyond ustar")
    ok(lambda: E["/times/symlink-ns"]["mtime"] == {"sec": 1699999999, "nsec": 42}, "symlink mtime")
    ok(lambda: sum(1 for p in E if p.startswith("/many/") and p.count("/") == 2) == 3000,
       "a directory with 3000 entries")
    ok(lambda: E["/sizes/empty"]["size"] == 0 and
       E["/sizes/empty"]["sha256"] == sha(b""), "empty file")
    ok(lambda: E["/sizes/1MiB"]["size"] == MiB and E["/sizes/1MiB+1"]["size"] == MiB + 1, "1 MiB, +1")
    ok(lambda: E["/big/random-20MiB"]["size"] == 20 * MiB and
       E["/big/compressible-20MiB"]["size"] == 20 * MiB, "20 MiB files")
    ok(lambda: sum(1 for p in E if p.startswith("/multi/")) == 202, "members layer content")
    ok(lambda: doc["model_diffs"] == [], "umoci and the model agree")
    return fails


def check_python(path):
    doc, E = load(path)
    fails = []
    for p, t in (("/bin/busybox", "file"), ("/bin/sh", "symlink"), ("/usr/bin/python3.11", "file"),
                 ("/usr/lib/python3.11/json/__init__.py", "file"), ("/lib64", "symlink"),
                 ("/tmp", "dir")):
        if E.get(p, {}).get("type") != t:
            fails.append("python: %s is not a %s" % (p, t))
    if E.get("/tmp", {}).get("mode") != 0o1777:
        fails.append("python: /tmp is not 1777")
    if any("__pycache__" in p for p in E):
        fails.append("python: __pycache__ present")
    return fails


def main():
    fails = check_edge(sys.argv[1])
    if len(sys.argv) > 2:
        fails += check_python(sys.argv[2])
    for f in fails:
        print("check_truth.py: FAILED: %s" % f, file=sys.stderr)
    if fails:
        sys.exit(1)
    print("check_truth.py: all edge cases present in %s" % " ".join(sys.argv[1:]),
          file=sys.stderr)


if __name__ == "__main__":
    main()
