#!/usr/bin/python3
"""Build the `edge` image: hand-written tar layers full of edge cases, as an OCI layout.

    mkedge.py LAYOUT_DIR

Deterministic: random bytes come from random.Random(SEED), mtimes are fixed, entries are
written in the order below. README.md lists every case and why it is here. Layers:

  1. base     one gzip member   almost every case; names without a "./" prefix
  2. changes  one gzip member   whiteouts, an opaque directory, type replacements, overwrites
  3. members  one gzip member PER TAR ENTRY (concatenated members); names with a "./" prefix
              and a "./" root entry; re-creates a whited-out path, removes one hardlink name
  4. empty    one gzip member   a tar with nothing but the end-of-archive blocks
"""

import os
import random
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oci  # noqa: E402
from oci import EPOCH  # noqa: E402

SEED = 20240501
MiB = 1 << 20


def vfs_cap_v2(permitted, inheritable=0, effective=True):
    """struct vfs_cap_data, revision 2 (20 bytes, little endian): what setcap writes."""
    magic = 0x02000000 | (1 if effective else 0)
    return struct.pack("<IIIII", magic, permitted & 0xFFFFFFFF, inheritable & 0xFFFFFFFF,
                       permitted >> 32, inheritable >> 32)


CAP_NET_BIND_SERVICE = 1 << 10
CAP_NET_RAW = 1 << 13


def layer_base(rng):
    L = oci.Layer("edge 1/4 base: one gzip member")
    # -- plain text at the top ------------------------------------------------------------
    L.dir("etc")
    L.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nbig:x:70000:70001::/:/bin/false\n")
    L.file("etc/group", b"root:x:0:\nbig:x:70001:\n")
    L.file("README", b"zran edge-case test image, layer 1\n")

    # -- hardlinks across directories ---------------------------------------------------------
    L.dir("links")
    L.dir("links/hard")
    L.dir("links/hard/a")
    L.dir("links/hard/b")
    L.dir("links/hard/c")
    L.dir("links/hard/c/deep")
    L.file("links/hard/a/original.txt", b"one inode, three names\n" * 100, mode=0o640,
           uid=1000, gid=1000)
    L.hardlink("links/hard/b/link-to-original", "links/hard/a/original.txt", mode=0o640,
               uid=1000, gid=1000)
    L.hardlink("links/hard/c/deep/second-link", "links/hard/a/original.txt", mode=0o640,
               uid=1000, gid=1000)
    # original.txt's other names are replaced (layer 2) and whited out (layer 3) later: this
    # group of three names across three directories stays intact
    L.file("links/hard/a/group.txt", b"three names that stay\n" * 50, mode=0o600, uid=3, gid=4)
    L.hardlink("links/hard/b/group-link", "links/hard/a/group.txt", mode=0o600, uid=3, gid=4)
    L.hardlink("links/hard/c/deep/group-link", "links/hard/a/group.txt", mode=0o600, uid=3,
               gid=4)
    # a hardlink to an empty file, and a hardlink group whose member has xattrs and setuid
    L.file("links/hard/a/empty", b"")
    L.hardlink("links/hard/b/empty-link", "links/hard/a/empty")
    L.file("links/hard/a/setuid-xattr", b"#!/bin/sh\necho suid\n", mode=0o4755,
           xattrs={"user.zran.hl": "shared by both names"})
    L.hardlink("links/hard/c/setuid-xattr-link", "links/hard/a/setuid-xattr", mode=0o4755)

    # -- symlinks -----------------------------------------------------------------------------
    L.dir("links/sym")
    L.symlink("links/sym/rel-file", "../hard/a/original.txt")
    L.symlink("links/sym/abs-file", "/links/hard/a/original.txt")
    L.symlink("links/sym/rel-dir", "../hard")
    L.symlink("links/sym/abs-dir", "/links/hard/c/deep")
    L.symlink("links/sym/dangling-rel", "../does/not/exist")
    L.symlink("links/sym/dangling-abs", "/nowhere/at/all")
    L.symlink("links/sym/chain1", "chain2")
    L.symlink("links/sym/chain2", "chain3")
    L.symlink("links/sym/chain3", "./rel-file")
    L.symlink("links/sym/self-loop", "self-loop")
    L.symlink("links/sym/loop-a", "loop-b")
    L.symlink("links/sym/loop-b", "loop-a")
    L.symlink("links/sym/escape", "../../../../../../../../etc/passwd")
    L.symlink("links/sym/long-target", "/" + "/".join(["long-symlink-target-segment"] * 12))
    L.symlink("links/sym/utf8-target", "../hard/ünïcødé-目標")
    # a hardlink whose target is a symlink: links the symlink itself
    L.hardlink("links/sym/hardlink-to-symlink", "links/sym/rel-file", mode=0o777)

    # -- xattrs (PAX SCHILY.xattr.*) ------------------------------------------------------------
    L.dir("xattr", xattrs={"user.zran.dir": "on a directory"})
    L.file("xattr/user", b"user xattrs\n", xattrs={
        "user.zran.text": "hello",
        "user.zran.utf8": "ünïcødé ✓",
        "user.zran.binary": bytes(range(1, 256)) + b"\x00\xff\x00",
    })
    L.file("xattr/capability", b"\x7fELF pretend binary\n", mode=0o755,
           xattrs={"security.capability": vfs_cap_v2(CAP_NET_BIND_SERVICE | CAP_NET_RAW)})
    L.file("xattr/many", b"many xattrs\n",
           xattrs={"user.zran.k%02d" % i: "v" * (i * 7 + 1) for i in range(16)})
    L.file("xattr/big-value", b"one 3000-byte xattr\n",
           xattrs={"user.zran.big": bytes(rng.randrange(256) for _ in range(3000))})
    L.symlink("xattr/symlink-no-xattr", "user")

    # -- devices and fifos ---------------------------------------------------------------------
    L.dir("dev")
    L.device("dev/null-like", "chr", 1, 3, mode=0o666)
    L.device("dev/loop-like", "blk", 7, 0, mode=0o660, gid=6)
    L.device("dev/big-numbers", "chr", 511, 1048575, mode=0o600)  # minor > 255 needs dev_t
    L.device("dev/fifo", "fifo", mode=0o644)
    L.device("dev/fifo-sticky", "fifo", mode=0o1622, uid=70000, gid=70001)

    # -- permission bits ---------------------------------------------------------------------
    L.dir("perm")
    L.file("perm/setuid", b"setuid\n", mode=0o4755)
    L.file("perm/setgid", b"setgid\n", mode=0o2755)
    L.file("perm/all-bits", b"7777\n", mode=0o7777)
    L.file("perm/no-bits", b"0000\n", mode=0o000)
    L.file("perm/odd", b"0611\n", mode=0o611)
    L.dir("perm/sticky-dir", mode=0o1777)
    L.dir("perm/setgid-dir", mode=0o2775, gid=100)
    L.file("perm/setgid-dir/inside", b"in a setgid dir\n")
    L.dir("perm/read-only-dir", mode=0o555)
    L.file("perm/read-only-dir/inside", b"in a 0555 directory\n", mode=0o444)
    L.dir("perm/no-access-dir", mode=0o000)
    L.file("perm/no-access-dir/inside", b"in a 0000 directory\n")

    # -- owners ------------------------------------------------------------------------------
    L.dir("owner")
    L.file("owner/big-ids", b"70000:70001\n", uid=70000, gid=70001, uname="big", gname="big")
    L.file("owner/huge-ids", b"3000000:4000000 (PAX uid/gid)\n", uid=3000000, gid=4000000)
    L.file("owner/max-ids", b"4294967294:4294967294\n", uid=4294967294, gid=4294967294)
    L.dir("owner/dir-big-ids", mode=0o750, uid=65536, gid=65537)
    L.symlink("owner/symlink-big-ids", "big-ids", uid=200000, gid=200001)
    L.file("owner/names-only", b"uname/gname that do not match the ids\n", uid=1234, gid=5678,
           uname="someone", gname="somegroup")

    # -- names ---------------------------------------------------------------------------------
    L.dir("names")
    L.file("names/" + "n" * 255, b"basename of exactly 255 bytes\n")
    L.file("names/" + "é" * 127 + "x", b"255-byte UTF-8 basename (127 x 2-byte + 1)\n")
    L.file("names/" + "a" * 100, b"basename of exactly 100 bytes (the ustar name field)\n")
    L.file("names/" + "b" * 101, b"basename of 101 bytes\n")
    deep = "names/deep"
    L.dir(deep)
    for i in range(40):
        deep += "/level-%02d-directory" % i
        L.dir(deep)
    L.file(deep + "/leaf.txt", b"a path of %d bytes\n" % len(deep + "/leaf.txt"))
    L.hardlink("names/hardlink-to-deep-leaf", deep + "/leaf.txt")
    L.dir("names/utf8")
    L.file("names/utf8/日本語のファイル名.txt", "日本語\n".encode())
    L.file("names/utf8/émoji-😀-🚀.txt", "😀\n".encode())
    L.dir("names/utf8/Ünïcødé-dir")
    L.file("names/utf8/Ünïcødé-dir/ñ", b"n tilde\n")
    L.file("names/utf8/nfd-e\u0301", b"NFD: e + combining acute\n")
    L.file("names/utf8/nfc-\u00e9", b"NFC: precomposed e acute\n")
    L.dir("names/special")
    for n in ["with space", " leading-space", "trailing-space ", "-leading-dash",
              "#hash", "%percent%20", "question?", "star*", "back\\slash", "colon:name",
              "quote\"double", "quote'single", "new\nline", "tab\tname", "semi;colon",
              "dollar$HOME", "brace{x}", "bracket[0]", "amp&", "pipe|", "..dots", "...",
              ".hidden", "x.wh.not-a-whiteout", "wh.", ".wh"]:
        L.file("names/special/" + n, n.encode() + b"\n")

    # -- mtimes --------------------------------------------------------------------------------
    L.dir("times", mtime=EPOCH + 1, mtime_ns=500000000)
    L.file("times/nanoseconds", b"ns\n", mtime=EPOCH, mtime_ns=123456789)
    L.file("times/one-ns", b"1 ns\n", mtime=EPOCH, mtime_ns=1)
    L.file("times/max-ns", b"999999999 ns\n", mtime=EPOCH, mtime_ns=999999999)
    L.file("times/epoch-zero", b"1970\n", mtime=0)
    L.file("times/year-2100", b"2100\n", mtime=4102444800)
    # past the 11 octal digits of ustar (8^11 s, year 2242): PAX mtime. Not past year 2262,
    # where nanoseconds overflow int64 (umoci then writes 1901-12-13).
    L.file("times/beyond-ustar", b"2255, past 8^11 s: PAX mtime\n", mtime=9000000000)
    L.symlink("times/symlink-ns", "nanoseconds", mtime=EPOCH - 1, mtime_ns=42)
    L.dir("times/dir-ns", mtime=EPOCH - 100, mtime_ns=987654321)

    # -- sizes ---------------------------------------------------------------------------------
    L.dir("sizes")
    L.file("sizes/empty", b"")
    L.file("sizes/empty-2", b"", mode=0o600)
    L.file("sizes/one-byte", b"x")
    for n in (511, 512, 513, 10239, 10240, 10241):
        L.file("sizes/%d" % n, rng.randbytes(n))
    L.file("sizes/1MiB-1", rng.randbytes(MiB - 1))
    L.file("sizes/1MiB", rng.randbytes(MiB))
    L.file("sizes/1MiB+1", rng.randbytes(MiB + 1))
    L.dir("big")
    L.file("big/random-20MiB", rng.randbytes(20 * MiB))
    line = b"".join(b"%08d the quick brown fox jumps over the lazy dog\n" % (i % 1000)
                    for i in range(1000))
    L.file("big/compressible-20MiB", (line * (20 * MiB // len(line) + 1))[:20 * MiB])
    L.file("big/zeros-4MiB", bytes(4 * MiB))

    # -- a directory with 3000 entries ---------------------------------------------------------
    L.dir("many")
    for i in range(3000):
        if i % 100 == 99:
            L.dir("many/d%04d" % i)
        elif i % 10 == 7:
            L.file("many/f%04d" % i, b"")
        elif i % 50 == 3:
            L.symlink("many/s%04d" % i, "f%04d" % (i - 1))
        else:
            L.file("many/f%04d" % i, b"file %d\n" % i * (i % 13 + 1))

    # -- things later layers delete or replace --------------------------------------------------
    L.dir("wh")
    L.file("wh/remove-me.txt", b"deleted by layer 2\n")
    L.file("wh/keep.txt", b"kept\n")
    L.dir("wh/remove-dir")
    L.file("wh/remove-dir/a", b"a\n")
    L.dir("wh/remove-dir/sub")
    L.file("wh/remove-dir/sub/b", b"b\n")
    L.file("wh/recreated", b"version 1: deleted by layer 2, re-created by layer 3\n")
    L.symlink("wh/remove-symlink", "keep.txt")
    L.dir("opq", mode=0o750, xattrs={"user.zran.opq": "layer1"})
    L.file("opq/old1", b"hidden by the opaque marker\n")
    L.dir("opq/sub")
    L.file("opq/sub/old2", b"hidden too\n")
    L.dir("replace")
    L.file("replace/file-to-dir", b"a file in layer 1, a directory in layer 2\n")
    L.dir("replace/dir-to-file")
    L.file("replace/dir-to-file/child", b"gone when the directory becomes a file\n")
    L.dir("replace/dir-to-file/sub")
    L.file("replace/dir-to-file/sub/grandchild", b"gone too\n")
    L.symlink("replace/symlink-to-file", "../README")
    L.file("replace/file-to-symlink", b"becomes a symlink\n")
    L.file("replace/overwritten", b"version 1\n", mode=0o600, uid=1, gid=1)
    L.dir("replace/dir-meta", mode=0o700, uid=5, gid=5, xattrs={"user.zran.v": "1"})
    L.file("replace/dir-meta/child", b"survives the metadata change of its directory\n")
    L.file("replace/file-to-fifo", b"a file in layer 1, a fifo in layer 2\n")
    # -- the same path twice in one layer: the later entry wins ----------------------------------
    L.dir("dup")
    L.file("dup/twice", b"first version (overwritten in the same layer)\n")
    L.file("dup/twice", b"second version wins\n", mode=0o600)
    # -- an entry whose parent directories have no entries of their own ------------------------
    L.file("implicit/parent/child.txt", b"parents are created implicitly\n")
    return L


def layer_changes(rng):
    L = oci.Layer("edge 2/4 changes: whiteouts, opaque dir, replacements")
    L.dir("wh")
    L.whiteout("wh/remove-me.txt")
    L.whiteout("wh/remove-dir")
    L.whiteout("wh/recreated")
    L.whiteout("wh/remove-symlink")
    L.whiteout("wh/never-existed")  # a whiteout of nothing: a no-op
    L.dir("opq", mode=0o755, xattrs={"user.zran.opq": "layer2"})
    L.opaque("opq")
    L.file("opq/new1", b"added with the opaque marker\n")
    L.dir("opq/sub")
    L.file("opq/sub/new2", b"new in layer 2\n")
    L.dir("replace")
    L.dir("replace/file-to-dir", mode=0o755)
    L.file("replace/file-to-dir/child", b"child of the new directory\n")
    L.file("replace/dir-to-file", b"was a directory with children\n")
    L.file("replace/symlink-to-file", b"was a symlink\n")
    L.symlink("replace/file-to-symlink", "symlink-to-file")
    L.file("replace/overwritten", b"version 2, other mode and owner\n", mode=0o755, uid=2, gid=3)
    L.dir("replace/dir-meta", mode=0o755, uid=6, gid=7, mtime=EPOCH + 2,
          xattrs={"user.zran.v": "2"})
    L.device("replace/file-to-fifo", "fifo", mode=0o600)
    # hardlinks only reach entries of their own layer
    L.dir("l2")
    L.dir("l2/x")
    L.dir("l2/y")
    L.file("l2/x/file", rng.randbytes(4096))
    L.hardlink("l2/y/link", "l2/x/file")
    # modify a file that has hardlinks in layer 1: the new entry breaks the link
    L.file("links/hard/c/deep/second-link", b"replaced: no longer linked to original.txt\n",
           mode=0o640, uid=1000, gid=1000)
    return L


def layer_members(rng):
    L = oci.Layer("edge 3/4 members: one gzip member per tar entry, ./ names")
    L.dir("./", mode=0o755)
    L.dir("./multi")
    for i in range(200):
        L.file("./multi/small-%03d" % i, rng.randbytes(i * 37 % 3000))
    L.file("./multi/random-3MiB", rng.randbytes(3 * MiB))
    L.file("./multi/text-2MiB", (b"members " * (2 * MiB // 8)))
    L.dir("./wh")
    L.file("./wh/recreated", b"version 3: re-created after the layer 2 whiteout\n", mode=0o600)
    L.dir("./links/hard/b")
    L.whiteout("./links/hard/b/link-to-original")  # one name of a hardlink group goes
    L.file("./sizes/one-byte", b"y")  # overwritten in a later layer, parents not re-listed
    return L


def layer_empty():
    return oci.Layer("edge 4/4 empty: only the end-of-archive blocks")


def main():
    out = sys.argv[1]
    rng = random.Random(SEED)
    layers = [layer_base(rng), layer_changes(rng), layer_members(rng), layer_empty()]
    layout = oci.Layout(out)
    config = {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
              "WorkingDir": "/", "Labels": {"org.zran.testimage": "edge"}}
    desc = layout.image(layers, config,
                        members=["single", "single", "per-entry", "single"])
    layout.tag(desc, "latest")
    layout.close()


if __name__ == "__main__":
    main()
