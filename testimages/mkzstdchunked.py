"""zstd:chunked in its current form (containers/storage >= 1.54), which no Debian tool writes:

  mkzstdchunked.py SRC OUT

writes the layout OUT: the image SRC:latest (gzip layers, as mkpython.py / mkedge.py write them)
with every layer re-encoded as zstd:chunked, the tar stream kept byte for byte (a plain zstd
decoder yields the layer tar: the config and its DiffIDs are SRC's). Sections below refer to
/work/shared/reference/formats-convert-zstdchunked.md ("ref 3.x"), which follows
containers/storage pkg/chunked/compressor/compressor.go and internal/minimal.

Layout of a layer blob (ref 3.1):
  for each tar entry:
    one frame: the bytes from the end of the previous entry's data (its padding included) to the
      start of this entry's data (pax header, ustar header);
    one frame per chunk of the entry's data (regular files only);
  one frame: the rest of the tar (last padding, the two zero blocks, record padding);
  skippable frame (magic 0x184D2A50, u32 LE length): zstd(TOC JSON);
  skippable frame: zstd(tar-split NDJSON);
  skippable frame: the 64-byte footer.
Chunking (ref 3.4): runs of zero bytes of 1 KiB or more (holesThreshold) are "zeros" chunks
(still present, compressed, in the stream); the data between them is cut every 64 KiB (the
average chunk of c/storage's rollsum with RollsumBits 16; a fixed cut here, which readers must
not care about). Every frame is one zstd frame of level 10 (c/storage's default), with its
content size and no checksum, as zstandard's one-shot compressor writes it.
"""

import base64
import hashlib
import io
import json
import re
import struct
import sys
import tarfile
import time

import zstandard

import oci

CHUNK = 64 * 1024       # ref 3.4: RollsumBits = 16, ~64 KiB chunks
HOLE = 1024             # ref 3.4: holesThreshold = 1 << 10
LEVEL = 10              # ref 3.1: ZstdCompressor's default level
SKIPPABLE = 0x184D2A50  # ref 3.1: skippable frame magic
FOOTER_MAGIC = b"GNUlInUx"  # ref 3.2: footer of c/storage >= 1.50 (64 bytes)
PREFIX = "io.github.containers.zstd-chunked."  # ref 3.3

TYPES = {tarfile.REGTYPE: "reg", tarfile.AREGTYPE: "reg", tarfile.LNKTYPE: "hardlink",
         tarfile.SYMTYPE: "symlink", tarfile.DIRTYPE: "dir", tarfile.CHRTYPE: "char",
         tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo"}


def _crc64_table():
    # Go's hash/crc64 with the ISO polynomial (reflected 0xD800000000000000), as tar-split uses
    poly, table = 0xD800000000000000, []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


CRC64 = _crc64_table()


def crc64_iso(data):
    crc, t = 0xFFFFFFFFFFFFFFFF, CRC64
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFFFFFFFFFF


def rfc3339(t):
    """Go's time.Time JSON form (RFC 3339 with nanoseconds when there are any), UTC, of a tar
    time: a PAX decimal string ("1700000000.123456789", exact to the nanosecond, which a float
    is not) or whole seconds."""
    sec, _, frac = str(t).partition(".")
    frac = (frac + "000000000")[:9].rstrip("0")
    s = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(sec)))
    return s + ("." + frac if frac else "") + "Z"


def chunks(data):
    """[(offset, size, zeros)] covering data: zero runs >= HOLE, the rest cut every CHUNK."""
    out, pos = [], 0
    def cut(a, b):
        while a < b:
            n = min(CHUNK, b - a)
            out.append((a, n, False))
            a += n
    for m in re.finditer(b"\0{%d,}" % HOLE, data):
        cut(pos, m.start())
        out.append((m.start(), m.end() - m.start(), True))
        pos = m.end()
    cut(pos, len(data))
    return out


def skippable(payload):
    return struct.pack("<II", SKIPPABLE, len(payload)) + payload


def encode(tar):
    """(blob, annotations, stats) of one layer tar (ref 3.1-3.6)."""
    cctx = zstandard.ZstdCompressor(level=LEVEL)
    blob = bytearray()
    entries, split = [], []
    stats = {"frames": 0, "chunks": 0, "zeros": 0, "multi_chunk_files": 0}

    def frame(data):
        start = len(blob)
        blob.extend(cctx.compress(data))
        stats["frames"] += 1
        return start, len(blob)

    def segment(raw):  # tar-split type 2: raw tar bytes (ref 3.6)
        split.append({"type": 2, "payload": base64.b64encode(raw).decode(), "position": len(split)})

    end = 0  # end of the previous entry's data in the tar
    tf = tarfile.open(fileobj=io.BytesIO(tar), mode="r:", encoding="utf-8",
                      errors="surrogateescape")
    for ti in tf:
        frame(tar[end:ti.offset_data])
        segment(tar[end:ti.offset_data])
        data = tar[ti.offset_data:ti.offset_data + ti.size] if ti.isreg() else b""
        e = {"type": TYPES[ti.type], "name": ti.name}
        if ti.linkname:
            e["linkName"] = ti.linkname
        e["mode"] = ti.mode
        if ti.isreg():
            e["size"] = ti.size
        e["uid"], e["gid"] = ti.uid, ti.gid
        pax = ti.pax_headers
        mtime = pax["mtime"] if "mtime" in pax else int(ti.mtime)
        if float(mtime):  # ref 3.4: zero times are omitted (>= 1.55)
            e["modtime"] = rfc3339(mtime)
        for k, f in (("atime", "accesstime"), ("ctime", "changetime")):
            if k in pax and float(pax[k]):
                e[f] = rfc3339(pax[k])
        if ti.ischr() or ti.isblk():
            e["devMajor"], e["devMinor"] = ti.devmajor, ti.devminor
        xattrs = {k[len("SCHILY.xattr."):]: base64.b64encode(
                      v.encode("utf-8", "surrogateescape")).decode()
                  for k, v in pax.items() if k.startswith("SCHILY.xattr.")}
        if xattrs:
            e["xattrs"] = xattrs
        entries.append(e)
        if data:
            e["digest"] = oci.sha256(data)
            cs = chunks(data)
            stats["chunks"] += len(cs)
            stats["zeros"] += sum(z for _, _, z in cs)
            for i, (off, size, zeros) in enumerate(cs):
                start, stop = frame(data[off:off + size])
                if i == 0:
                    e["offset"] = start
                    c = e
                else:
                    c = {"type": "chunk", "name": ti.name, "offset": start}
                    entries.append(c)
                if len(cs) > 1:  # ref 3.4: single-chunk files carry no chunk fields
                    c["chunkSize"] = size
                    c["chunkOffset"] = off
                    c["chunkDigest"] = oci.sha256(data[off:off + size])
                    if zeros:
                        c["chunkType"] = "zeros"
                e["endOffset"] = stop
            stats["multi_chunk_files"] += len(cs) > 1
        # tar-split type 1: the entry, its data's crc64 (ISO) big-endian (ref 3.6); tar-split
        # sums only entries with data: the others have a null payload (Go: a nil []byte)
        split.append({"type": 1, "name": ti.name, "size": len(data),
                      "payload": base64.b64encode(struct.pack(">Q", crc64_iso(data))).decode()
                      if data else None,
                      "position": len(split)})
        end = ti.offset_data + (ti.size if ti.isreg() else 0)
    for e in entries:  # Go's omitempty on every FileMetadata field but type and name (skopeo's
        for k in [k for k, v in e.items()  # TOCs have no "uid" of root either): readers default
                  if k not in ("type", "name") and v in (0, "", None, {})]:
            del e[k]
    frame(tar[end:])  # ref 3.1: the EOF frame (zero blocks, record padding)
    segment(tar[end:])
    for e in split:  # Go's omitempty: no size 0, no empty name
        if not e.get("size"):
            e.pop("size", None)
    ts_raw = b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in split)
    ts = cctx.compress(ts_raw)
    toc = {"version": 1, "entries": entries, "tarSplitDigest": oci.sha256(ts)}  # ref 3.4 (>= 1.54)
    toc_raw = json.dumps(toc, separators=(",", ":"), ensure_ascii=False).encode()
    tz = cctx.compress(toc_raw)
    toc_off = len(blob) + 8  # ref 3.2: offsets point past the skippable frame's 8-byte header
    blob.extend(skippable(tz))
    ts_off = len(blob) + 8
    blob.extend(skippable(ts))
    # ref 3.2: off, clen, ulen, type (1 = TOC), tar-split off, clen, ulen, magic; u64 LE
    footer = struct.pack("<QQQQQQQ", toc_off, len(tz), len(toc_raw), 1, ts_off, len(ts),
                         len(ts_raw)) + FOOTER_MAGIC
    assert len(footer) == 64
    blob.extend(skippable(footer))
    ann = {PREFIX + "manifest-checksum": oci.sha256(tz),  # ref 3.3: of the compressed TOC
           PREFIX + "manifest-position": "%d:%d:%d:1" % (toc_off, len(tz), len(toc_raw)),
           PREFIX + "tarsplit-position": "%d:%d:%d" % (ts_off, len(ts), len(ts_raw))}
    return bytes(blob), ann, stats


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)

    def convert(tar, i):
        blob, ann, st = encode(tar)
        # cross-check: a plain zstd decoder reads the exact tar (skippable frames skipped)
        back = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(blob), read_across_frames=True).read()
        assert back == tar, "layer %d: the zstd stream does not decode to the layer tar" % i
        print("mkzstdchunked.py: layer %d: %d bytes, %d frames, %d chunks (%d zeros), "
              "%d multi-chunk files" % (i, len(blob), st["frames"], st["chunks"], st["zeros"],
                                        st["multi_chunk_files"]), file=sys.stderr)
        return blob, oci.MT_LAYER_ZSTD, ann

    oci.relayer(sys.argv[1], sys.argv[2], convert)


if __name__ == "__main__":
    main()
