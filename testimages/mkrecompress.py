"""The python image (or any gzip image layout) with its layers re-encoded, tar streams kept:

  mkrecompress.py tar SRC OUT      uncompressed layers (application/vnd.oci.image.layer.v1.tar)
  mkrecompress.py pzstd SRC OUT    plain zstd of many frames (application/vnd.oci.image.layer.v1.tar+zstd)
                                   written by `pzstd -1 -p 2` (zstd's parallel CLI)

skopeo cannot write uncompressed layers to an oci: layout (it compresses them again), hence
this. pzstd cuts its input into pieces of 4 x the window of its level (level 1: 512 KiB window,
2 MiB pieces: the smallest it offers), compresses each as its own zstd frame, and puts a
12-byte skippable frame (magic 0x184D2A50, 4-byte size of the next frame) before each one. The
piece size does not depend on -p; -p is fixed anyway, and the output is the same each run.
The config (DiffIDs) is the source's: every layer still decompresses to the same tar.
"""

import subprocess
import sys

import oci


def pzstd(tar, _i):
    z = subprocess.run(["pzstd", "-q", "-1", "-p", "2", "-c"], input=tar, capture_output=True,
                       check=True).stdout
    return z, oci.MT_LAYER_ZSTD, None


def plain(tar, _i):
    return tar, oci.MT_LAYER_TAR, None


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ("tar", "pzstd"):
        sys.exit(__doc__)
    oci.relayer(sys.argv[2], sys.argv[3], {"tar": plain, "pzstd": pzstd}[sys.argv[1]])


if __name__ == "__main__":
    main()
