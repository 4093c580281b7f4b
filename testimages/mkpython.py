#!/usr/bin/python3
"""Build the `python` image from this machine's own files, as an OCI layout.

    mkpython.py LAYOUT_DIR

Layers (all entries sorted, owned 0:0, mtime oci.EPOCH; modes as on the host):
  1. base:    /bin/busybox (Debian busybox-static) with one symlink per applet, /etc/passwd,
              /etc/group, /tmp (1777), /root, /dev, /proc, /sys, and the merged-/usr symlinks
              /lib -> usr/lib, /lib64 -> usr/lib64, /sbin -> bin.
  2. runtime: /usr/bin/python3.11 (+ /usr/bin/python3 -> python3.11) and every shared library
              that it or a module of /usr/lib/python3.11/lib-dynload needs (from ldd), each at
              its canonical /usr path, with the soname symlinks, plus the dynamic loader.
  3. stdlib:  /usr/lib/python3.11 (Debian's libpython3.11-stdlib), without __pycache__ (the
              .pyc files are written at package install time, so their presence and mtimes
              depend on the machine's history; Python compiles in memory without them).
"""

import os
import re
import stat
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oci  # noqa: E402

PYTHON = "/usr/bin/python3.11"
STDLIB = "/usr/lib/python3.11"
BUSYBOX = "/bin/busybox"


def add_host_path(layer, host, arc=None, seen=None):
    """Add one host file/dir/symlink (not following a final symlink) under ARC."""
    arc = arc or host.lstrip("/")
    st = os.lstat(host)
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        layer.dir(arc, mode=mode)
    elif stat.S_ISLNK(st.st_mode):
        layer.symlink(arc, os.readlink(host))
    elif stat.S_ISREG(st.st_mode):
        key = (st.st_dev, st.st_ino)
        if seen is not None and st.st_nlink > 1 and key in seen:
            layer.hardlink(arc, seen[key], mode=mode)
            return
        if seen is not None:
            seen[key] = arc
        with open(host, "rb") as f:
            layer.file(arc, f.read(), mode=mode)
    else:
        raise SystemExit("unexpected file type: " + host)


def add_tree(layer, root, skip_dirs=("__pycache__",)):
    """ROOT's ancestors as plain 0755 directories, then everything under ROOT, sorted."""
    for parent in _parents(root):
        layer.dir(parent.lstrip("/"), mode=0o755)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        # os.walk lists symlinks to directories in dirnames: add them as entries, do not walk
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        dirnames[:] = [d for d in dirnames if d not in skip_dirs and d not in links]
        out.append(dirpath)
        out.extend(os.path.join(dirpath, n) for n in filenames + links)
    seen = {}
    for p in sorted(out):  # a parent is a prefix of its children, so it sorts first
        add_host_path(layer, p, seen=seen)


def _parents(path):
    """The ancestors of an absolute path, without "/"."""
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[:i + 1]) for i in range(len(parts))]


def ldd_paths(binaries):
    paths = set()
    for b in binaries:
        out = subprocess.run(["ldd", b], capture_output=True, text=True).stdout
        for line in out.splitlines():
            m = re.search(r"=>\s+(/\S+)\s+\(", line) or re.match(r"\s*(/\S+)\s+\(", line)
            if m:
                paths.add(m.group(1))
    return sorted(paths)


def canonical(path):
    """The path with its directory resolved (merged /usr) and its last component kept."""
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def base_layer():
    L = oci.Layer("base: busybox-static, /etc, merged-usr symlinks")
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    entries = {}
    entries["bin"] = ("dir", 0o755)
    entries["bin/busybox"] = ("host", BUSYBOX)
    for a in applets:
        if a != "busybox":
            entries["bin/" + a] = ("symlink", "busybox")
    entries["dev"] = ("dir", 0o755)
    entries["etc"] = ("dir", 0o755)
    entries["etc/passwd"] = ("file", b"root:x:0:0:root:/root:/bin/sh\n"
                                     b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    entries["etc/group"] = ("file", b"root:x:0:\nnogroup:x:65534:\n")
    entries["etc/hostname"] = ("file", b"zran-python\n")
    entries["lib"] = ("symlink", "usr/lib")
    entries["lib64"] = ("symlink", "usr/lib64")
    entries["proc"] = ("dir", 0o555)
    entries["root"] = ("dir", 0o700)
    entries["sbin"] = ("symlink", "bin")
    entries["sys"] = ("dir", 0o555)
    entries["tmp"] = ("dir", 0o1777)
    entries["usr"] = ("dir", 0o755)
    for name in sorted(entries):
        kind, v = entries[name]
        if kind == "dir":
            L.dir(name, mode=v)
        elif kind == "symlink":
            L.symlink(name, v)
        elif kind == "file":
            L.file(name, v, mode=0o644)
        else:
            add_host_path(L, v, name)
    return L


def runtime_layer():
    L = oci.Layer("runtime: python3.11 and its shared libraries")
    dynload = sorted(os.path.join(STDLIB, "lib-dynload", n)
                     for n in os.listdir(os.path.join(STDLIB, "lib-dynload")) if n.endswith(".so"))
    want = {}  # arc path -> host path (symlinks kept as symlinks)
    want["usr/bin/python3.11"] = PYTHON
    for p in ldd_paths([PYTHON] + dynload):
        c = canonical(p)
        want[c.lstrip("/")] = c
        # follow symlink chains, adding every link and the final file at canonical paths
        while os.path.islink(c):
            t = os.readlink(c)
            c = canonical(os.path.join(os.path.dirname(c), t))
            want[c.lstrip("/")] = c
    dirs = set()
    for arc in want:
        parts = arc.split("/")[:-1]
        for i in range(len(parts)):
            dirs.add("/".join(parts[:i + 1]))
    items = [(d, "dir") for d in dirs] + [(a, "path") for a in want] + \
            [("usr/bin/python3", "py3")]
    for arc, kind in sorted(items):
        if kind == "dir":
            L.dir(arc, mode=0o755)
        elif kind == "py3":
            L.symlink(arc, "python3.11")
        else:
            add_host_path(L, want[arc], arc)
    return L


def stdlib_layer():
    L = oci.Layer("stdlib: /usr/lib/python3.11 without __pycache__")
    add_tree(L, STDLIB)
    return L


def main():
    out = sys.argv[1]
    layout = oci.Layout(out)
    config = {"Cmd": ["/usr/bin/python3.11"],
              "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                      "LANG=C.UTF-8"],
              "WorkingDir": "/",
              "Labels": {"org.zran.testimage": "python"}}
    desc = layout.image([base_layer(), runtime_layer(), stdlib_layer()], config)
    layout.tag(desc, "latest")
    layout.close()


if __name__ == "__main__":
    main()
