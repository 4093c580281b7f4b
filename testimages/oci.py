"""Deterministic tar layers and OCI image layouts, with the standard library only.

Used by mkpython.py, mkedge.py and mkmulti.py. Everything written here depends only on the
inputs: tar headers carry the mtimes the caller gives (default EPOCH), gzip headers carry
mtime 0 and no file name, JSON is written with sorted keys and no whitespace, and the
"created" dates are fixed.

Media types are the standard OCI ones:
  application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json,
  application/vnd.oci.image.config.v1+json, application/vnd.oci.image.layer.v1.tar+gzip.
"""

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import zlib

EPOCH = 1700000000  # 2023-11-14T22:13:20Z: the default mtime of every entry
CREATED = "2023-11-14T22:13:20Z"

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"


def sha256(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def gzip_member(data, level=6):
    """One gzip member: 10-byte header with mtime 0, no FNAME, OS=255 (zlib's default)."""
    return zlib.compress(data, level=level, wbits=31)


class Layer:
    """A tar layer written entry by entry with tarfile in PAX format.

    Names are given without a leading slash ("etc/passwd"); pass them as you want them to
    appear ("./etc/passwd" is kept as is). The byte offset of each entry's first header block
    is remembered, so the layer can be compressed as one gzip member or one member per entry.
    """

    def __init__(self, comment=""):
        self.comment = comment
        self.buf = io.BytesIO()
        self.tf = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT,
                               encoding="utf-8")
        self.starts = []  # offset of each entry's first header (pax header or ustar header)
        self.closed = False
        self._tar = None

    # -- entries -------------------------------------------------------------------------
    def _info(self, name, typ, mode, uid, gid, mtime, mtime_ns, xattrs, uname, gname):
        ti = tarfile.TarInfo(name)
        ti.type = typ
        ti.mode = mode
        ti.uid = uid
        ti.gid = gid
        ti.uname = uname
        ti.gname = gname
        ti.mtime = mtime
        pax = {}
        if mtime_ns:
            # tarfile would write str(float), which loses the last digits: write the exact
            # decimal ourselves (a pax header given by the caller has priority in tarfile).
            pax["mtime"] = "%d.%09d" % (mtime, mtime_ns)
        for k, v in sorted((xattrs or {}).items()):
            if isinstance(v, bytes):
                # Non-UTF-8 bytes make tarfile write hdrcharset=BINARY and the raw bytes.
                v = v.decode("utf-8", "surrogateescape")
            pax["SCHILY.xattr." + k] = v
        ti.pax_headers = pax
        return ti

    def _add(self, ti, data=None):
        assert not self.closed
        self.starts.append(self.buf.tell())
        self.tf.addfile(ti, io.BytesIO(data) if data is not None else None)

    def dir(self, name, mode=0o755, uid=0, gid=0, mtime=EPOCH, mtime_ns=0, xattrs=None,
            uname="", gname=""):
        self._add(self._info(name, tarfile.DIRTYPE, mode, uid, gid, mtime, mtime_ns, xattrs,
                             uname, gname))

    def file(self, name, data, mode=0o644, uid=0, gid=0, mtime=EPOCH, mtime_ns=0, xattrs=None,
             uname="", gname=""):
        ti = self._info(name, tarfile.REGTYPE, mode, uid, gid, mtime, mtime_ns, xattrs, uname,
                        gname)
        ti.size = len(data)
        self._add(ti, data)

    def symlink(self, name, target, uid=0, gid=0, mtime=EPOCH, mtime_ns=0, xattrs=None):
        ti = self._info(name, tarfile.SYMTYPE, 0o777, uid, gid, mtime, mtime_ns, xattrs, "", "")
        ti.linkname = target
        self._add(ti)

    def hardlink(self, name, target, mode=0o644, uid=0, gid=0, mtime=EPOCH, mtime_ns=0):
        """target: the name of an earlier entry of this same layer, as written there."""
        ti = self._info(name, tarfile.LNKTYPE, mode, uid, gid, mtime, mtime_ns, None, "", "")
        ti.linkname = target
        self._add(ti)

    def device(self, name, kind, major=0, minor=0, mode=0o644, uid=0, gid=0, mtime=EPOCH,
               mtime_ns=0, xattrs=None):
        typ = {"chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}[kind]
        ti = self._info(name, typ, mode, uid, gid, mtime, mtime_ns, xattrs, "", "")
        ti.devmajor = major
        ti.devminor = minor
        self._add(ti)

    def whiteout(self, path, mtime=EPOCH):
        """Delete PATH (from lower layers): an empty regular file .wh.NAME beside it."""
        d, base = os.path.split(path)
        self.file(os.path.join(d, ".wh." + base), b"", mode=0o644, mtime=mtime)

    def opaque(self, dirpath, mtime=EPOCH):
        """Hide everything lower layers put in DIRPATH: DIRPATH/.wh..wh..opq."""
        self.file(os.path.join(dirpath, ".wh..wh..opq"), b"", mode=0o644, mtime=mtime)

    # -- output --------------------------------------------------------------------------
    def tar(self):
        if not self.closed:
            self.end = self.buf.tell()
            self.tf.close()  # two zero blocks, padded to tarfile's 10240-byte record
            self.closed = True
            self._tar = self.buf.getvalue()
        return self._tar

    def gzip(self, members="single", level=6):
        """The gzip stream. members="single": one member; "per-entry": every entry's bytes
        (its pax header, ustar header, data and padding) in a member of its own, and the
        end-of-archive blocks in a last member."""
        data = self.tar()
        if members == "single":
            return gzip_member(data, level)
        assert members == "per-entry"
        bounds = self.starts + [self.end, len(data)]
        out = bytearray()
        for a, b in zip(bounds, bounds[1:]):
            if b > a:
                out += gzip_member(data[a:b], level)
        return bytes(out)


class Layout:
    """An OCI image layout directory: oci-layout, index.json, blobs/sha256/."""

    def __init__(self, path):
        self.path = path
        if os.path.exists(path):
            shutil.rmtree(path)
        os.makedirs(os.path.join(path, "blobs", "sha256"))
        self.index = []

    def blob(self, data, media_type, annotations=None, platform=None):
        digest = sha256(data)
        p = os.path.join(self.path, "blobs", "sha256", digest.split(":")[1])
        if not os.path.exists(p):
            with open(p, "wb") as f:
                f.write(data)
        d = {"mediaType": media_type, "digest": digest, "size": len(data)}
        if annotations:
            d["annotations"] = annotations
        if platform:
            d["platform"] = platform
        return d

    def layer(self, layer, members="single", level=6):
        """Returns (descriptor, diff_id)."""
        gz = layer.gzip(members, level)
        return self.blob(gz, MT_LAYER_GZIP), sha256(layer.tar())

    def image(self, layers, config, history=None, members=None):
        """layers: list of Layer; members: per-layer "single"/"per-entry" (default single).
        config: the "config" object of the image config, plus "architecture", "os" and
        optionally "variant" at top level given as config["_platform"]. Returns the manifest
        descriptor (with platform)."""
        platform = config.pop("_platform", {"architecture": "amd64", "os": "linux"})
        members = members or ["single"] * len(layers)
        descs, diff_ids = [], []
        for layer, m in zip(layers, members):
            d, diff = self.layer(layer, m)
            descs.append(d)
            diff_ids.append(diff)
        hist = history or [{"created": CREATED, "created_by": l.comment or "zran testimages",
                            "comment": "zran testimages"} for l in layers]
        cfg = {"created": CREATED, "architecture": platform["architecture"],
               "os": platform["os"], "config": config,
               "rootfs": {"type": "layers", "diff_ids": diff_ids}, "history": hist}
        if "variant" in platform:
            cfg["variant"] = platform["variant"]
        cdesc = self.blob(canonical_json(cfg), MT_CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": cdesc,
                    "layers": descs}
        return self.blob(canonical_json(manifest), MT_MANIFEST, platform=platform)

    def image_index(self, manifest_descs):
        idx = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": manifest_descs}
        return self.blob(canonical_json(idx), MT_INDEX)

    def tag(self, desc, ref="latest"):
        d = dict(desc)
        if d["mediaType"] == MT_INDEX:
            d.pop("platform", None)
        d["annotations"] = dict(d.get("annotations", {}), **{REF_NAME: ref})
        self.index.append(d)

    def close(self):
        with open(os.path.join(self.path, "oci-layout"), "wb") as f:
            f.write(canonical_json({"imageLayoutVersion": "1.0.0"}))
        with open(os.path.join(self.path, "index.json"), "wb") as f:
            f.write(canonical_json({"schemaVersion": 2, "mediaType": MT_INDEX,
                                    "manifests": self.index}))


MT_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MT_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


def read_image(src, ref="latest"):
    """(manifest, config bytes, [layer tar bytes]) of the single-manifest image SRC:REF whose
    layers are gzip (what mkpython.py and mkedge.py write)."""
    def blob(d):
        with open(os.path.join(src, "blobs", *d.split(":")), "rb") as f:
            return f.read()
    with open(os.path.join(src, "index.json"), "rb") as f:
        [top] = [d for d in json.load(f)["manifests"]
                 if d.get("annotations", {}).get(REF_NAME) == ref]
    manifest = json.loads(blob(top["digest"]))
    tars = [gzip.decompress(blob(l["digest"])) for l in manifest["layers"]]
    return manifest, blob(manifest["config"]["digest"]), tars


def relayer(src, out, convert):
    """Write the layout OUT: the image SRC:latest with each layer's tar re-encoded by
    convert(tar, i) -> (blob bytes, media type, annotations or None). The config (DiffIDs
    included) is kept byte for byte: convert must keep the tar stream as it is."""
    manifest, config, tars = read_image(src)
    lay = Layout(out)
    descs = [lay.blob(b, mt, ann) for b, mt, ann in (convert(t, i) for i, t in enumerate(tars))]
    cdesc = lay.blob(config, manifest["config"]["mediaType"])
    m = {"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": cdesc, "layers": descs}
    lay.tag(lay.blob(canonical_json(m), MT_MANIFEST))
    lay.close()
