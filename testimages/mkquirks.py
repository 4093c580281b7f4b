#!/usr/bin/python3
"""Build the `tarquirks` and `paths` images: tar streams and names that Go's archive/tar and
containerd's (and umoci's) layer apply accept, written byte by byte, as OCI layouts.

    mkquirks.py tarquirks LAYOUT_DIR
    mkquirks.py paths LAYOUT_DIR

Deterministic: fixed contents, mtimes and order. README.md lists every case and why.

tarquirks (how a tar stream may end, and old header formats):
  1. v7 and old-GNU headers; the archive ends with ONE zero block
  2. a directory, a hardlink and a symlink whose size fields are not 0 (no data follows:
     Go reads them as header-only types); the end blocks, then 1000 bytes of garbage
  3. ends at an entry boundary, without the end-of-archive blocks
  4. ends right after the last file's data: no padding, no end blocks (as `umoci insert`)

paths (names with `..`, and entries below symlinks, resolved inside the root):
  1. `../escape.txt`, `a/../../b.txt`; `lnk -> /etc` then `lnk/passwd`; relative, chained,
     climbing and dangling links with entries below them; hardlinks through a link and one
     whose target climbs out of the root
  2. entries, whiteouts, an opaque marker and a hardlink below symlinks of layer 1, which
     containerd's overlayfs snapshotter does not follow (a directory takes their place)
  3. a symlink, then a whiteout and a file below it, in the same layer
"""

import io
import os
import sys
import tarfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oci  # noqa: E402
from oci import EPOCH  # noqa: E402


def text(n, seed):
    line = ("zran %s test line\n" % seed).encode()
    return (line * (n // len(line) + 1))[:n]


# -- raw header blocks ------------------------------------------------------------------------
def octal(v, width):
    return ("%0*o" % (width - 1, v)).encode() + b"\0"


def block(name, typeflag, size=0, mode=0o644, linkname="", magic=b"", version=b"",
          uname=b"", gname=b"", mtime=EPOCH):
    """One header block. magic b"" is a v7 header (nothing after the link name),
    b"ustar " + version b" \\0" an old-GNU one, b"ustar\\0" + b"00" ustar."""
    b = bytearray(512)
    b[0:100] = name.encode().ljust(100, b"\0")
    b[100:108] = octal(mode, 8)
    b[108:116] = octal(0, 8)
    b[116:124] = octal(0, 8)
    b[124:136] = octal(size, 12)
    b[136:148] = octal(mtime, 12)
    b[156:157] = typeflag
    b[157:257] = linkname.encode().ljust(100, b"\0")
    if magic:
        b[257:263] = magic
        b[263:265] = version
        b[265:297] = uname.ljust(32, b"\0")
        b[297:329] = gname.ljust(32, b"\0")
        b[329:337] = octal(0, 8)
        b[337:345] = octal(0, 8)
    b[148:156] = b" " * 8
    b[148:156] = ("%06o" % sum(b)).encode() + b"\0 "
    return bytes(b)


def padded(data):
    return data + b"\0" * (-len(data) % 512)


class Raw:
    """A layer written block by block (oci.Layout.layer takes anything with tar() and gzip())."""

    def __init__(self, comment, data):
        self.comment = comment
        self.data = data

    def tar(self):
        return self.data

    def gzip(self, members="single", level=6):
        return oci.gzip_member(self.data, level)


def tarquirks():
    # 1. v7 and old-GNU headers, ending with one zero block.
    t = b""
    t += block("v7dir/", b"\0", mode=0o755)  # v7: a regular-file type with a trailing slash
    t += block("v7dir/file", b"0", size=700)
    t += padded(text(700, "v7"))
    t += block("v7dir/sym", b"2", linkname="file", mode=0o777)
    t += block("v7dir/hard", b"1", linkname="v7dir/file")
    t += block("gnu", b"5", mode=0o750, magic=b"ustar ", version=b" \0", uname=b"root",
               gname=b"root")
    t += block("gnu/file", b"0", size=1000, magic=b"ustar ", version=b" \0", uname=b"nobody")
    t += padded(text(1000, "gnu"))
    t += b"\0" * 512
    l1 = Raw("tarquirks 1/4: v7 and old-GNU headers, one end block", t)

    # 2. header-only types with sizes; garbage after the end blocks.
    t = b""
    t += block("sized", b"5", size=512, mode=0o755, magic=b"ustar\0", version=b"00")
    t += block("sized/data", b"0", size=600, magic=b"ustar\0", version=b"00")
    t += padded(text(600, "sized"))
    t += block("sized/hard", b"1", size=600, linkname="sized/data", magic=b"ustar\0",
               version=b"00")
    t += block("sized/sym", b"2", size=9, linkname="data", mode=0o777, magic=b"ustar\0",
               version=b"00")
    t += block("sized/after", b"0", size=5, magic=b"ustar\0", version=b"00")
    t += padded(b"after")
    t += b"\0" * 1024 + bytes((i * 7 + 1) % 255 + 1 for i in range(1000))
    l2 = Raw("tarquirks 2/4: header-only types with sizes, garbage after the end", t)

    # 3. and 4. written by tarfile, then cut.
    L3 = oci.Layer()
    L3.dir("cut")
    L3.file("cut/boundary", text(1024, "boundary"))
    L3.tar()
    l3 = Raw("tarquirks 3/4: no end blocks", L3.tar()[:L3.end])
    L4 = oci.Layer()
    L4.file("cut/unpadded", text(777, "unpadded"), mode=0o600)
    L4.tar()
    l4 = Raw("tarquirks 4/4: no padding, no end blocks", L4.tar()[:L4.end - (-777 % 512)])
    return [l1, l2, l3, l4]


# -- paths ------------------------------------------------------------------------------------
def raw_entry(L, name, typ=tarfile.REGTYPE, data=b"", link="", mode=0o644):
    """An entry with its name exactly as given (`..` and all)."""
    ti = tarfile.TarInfo(name)
    ti.type = typ
    ti.mode = mode
    ti.mtime = EPOCH
    ti.linkname = link
    ti.size = len(data) if typ == tarfile.REGTYPE else 0
    L.starts.append(L.buf.tell())
    L.tf.addfile(ti, io.BytesIO(data) if typ == tarfile.REGTYPE else None)


def paths():
    L1 = oci.Layer("paths 1/3: `..` names, entries below symlinks, hardlinks through them")
    L1.dir("etc")
    L1.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    L1.file("etc/shadow", b"root:*:19000:0:99999:7:::\n", mode=0o600)
    L1.file("etc/group", b"root:x:0:\n")
    raw_entry(L1, "../escape.txt", data=b"clamped to /escape.txt\n")
    raw_entry(L1, "a/../../b.txt", data=b"clamped to /b.txt\n")
    raw_entry(L1, "./../../../deep/../c.txt", data=b"clamped to /c.txt\n")
    L1.symlink("lnk", "/etc")
    raw_entry(L1, "lnk/passwd", data=b"written through lnk: /etc/passwd\n")
    raw_entry(L1, "lnk/from-lnk", data=b"/etc/from-lnk\n")
    L1.dir("d")
    L1.symlink("d/rel", "../etc")
    raw_entry(L1, "d/rel/from-rel", data=b"/etc/from-rel\n")
    L1.symlink("chain1", "chain2")
    L1.symlink("chain2", "d/rel")
    raw_entry(L1, "chain1/from-chain", data=b"/etc/from-chain\n")
    L1.symlink("d/climb", "../../../../../../etc")
    raw_entry(L1, "d/climb/from-climb", data=b"/etc/from-climb\n")
    L1.symlink("dangling", "/made/by/a/link")
    raw_entry(L1, "dangling/file", data=b"/made/by/a/link/file\n")
    # (No link whose target has `..` after a link, as `rel/../d`: umoci takes that `..` from
    # where `rel` points, containerd lexically. And a hardlink header carries its target's
    # mode: containerd applies the header's mode and owner to the inode, umoci does not.)
    raw_entry(L1, "hard-via-lnk", tarfile.LNKTYPE, link="lnk/shadow", mode=0o600)
    raw_entry(L1, "hard-climbing", tarfile.LNKTYPE, link="../../etc/group")
    raw_entry(L1, "hard-to-symlink", tarfile.LNKTYPE, link="d/rel")
    L1.dir("opt")
    L1.file("opt/old1", b"hidden by layer 2's opaque marker\n")
    L1.dir("opt/sub")
    L1.file("opt/sub/old2", b"hidden too\n")
    L1.symlink("optlink", "opt")

    # Layer 1's symlinks are not in layer 2's upper directory (containerd's overlayfs
    # snapshotter): each path below one makes a directory in its place, which hides it.
    L2 = oci.Layer("paths 2/3: below symlinks of layer 1")
    raw_entry(L2, "lnk/from-layer2", data=b"/lnk/from-layer2\n")
    raw_entry(L2, "lnk/.wh.group")  # removes nothing: /etc/group stays
    raw_entry(L2, "chain1/.wh.from-chain")  # makes /chain1 a directory, alone
    raw_entry(L2, "optlink/new-before", data=b"this layer's: stays\n")
    raw_entry(L2, "optlink/.wh..wh..opq")  # /opt keeps its children
    raw_entry(L2, "optlink/new-after", data=b"stays\n")
    raw_entry(L2, "hard-layer2", tarfile.LNKTYPE, link="lnk/from-layer2")
    L2.symlink("up", "d/rel")  # this layer's link to a link of layer 1
    raw_entry(L2, "up/from-up", data=b"/d/rel/from-up\n")
    raw_entry(L2, "d/../../lnk/../x.txt", data=b"/x.txt\n")

    L3 = oci.Layer("paths 3/3: a whiteout below a link of the same layer")
    L3.symlink("lnk3", "etc")
    raw_entry(L3, "lnk3/.wh.shadow")
    raw_entry(L3, "lnk3/from-layer3", data=b"/etc/from-layer3\n")
    return [L1, L2, L3]


def main():
    kind, out = sys.argv[1], sys.argv[2]
    layers = {"tarquirks": tarquirks, "paths": paths}[kind]()
    layout = oci.Layout(out)
    layout.tag(layout.image(layers, {"Cmd": ["/bin/sh"]}))
    layout.close()


if __name__ == "__main__":
    main()
