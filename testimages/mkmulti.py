#!/usr/bin/python3
"""Build the `multi` image: an OCI image index with two platforms, as an OCI layout.

    mkmulti.py LAYOUT_DIR

index.json tags (ref.name "latest") an image index blob with two manifests:
  linux/amd64        layers: [shared, amd64-only]   config: architecture amd64
  linux/arm64 (v8)   layers: [shared, arm64-only]   config: architecture arm64, variant v8
The first layer is the very same blob in both manifests; the configs differ (architecture,
Env, Labels, diff_ids), so the two manifests and configs are distinct blobs.
"""

import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oci  # noqa: E402


def shared_layer():
    rng = random.Random(7)
    L = oci.Layer("multi: shared layer")
    L.dir("etc")
    L.file("etc/os-release", b'NAME="zran multi-platform test image"\nID=zran\n')
    L.dir("shared")
    L.file("shared/random-256KiB", rng.randbytes(256 * 1024))
    L.file("shared/text", b"same bytes on every platform\n" * 1000)
    L.symlink("shared/link", "text")
    return L


def arch_layer(arch):
    L = oci.Layer("multi: %s-only layer" % arch)
    L.dir("etc")
    L.file("etc/arch", arch.encode() + b"\n")
    L.dir("arch")
    L.file("arch/%s-only" % arch, ("only in the %s image\n" % arch).encode() * 100)
    return L


def main():
    layout = oci.Layout(sys.argv[1])
    descs = []
    for arch, platform in (("amd64", {"architecture": "amd64", "os": "linux"}),
                           ("arm64", {"architecture": "arm64", "os": "linux", "variant": "v8"})):
        config = {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin", "ZRAN_ARCH=" + arch],
                  "Labels": {"org.zran.testimage": "multi", "org.zran.arch": arch},
                  "_platform": platform}
        descs.append(layout.image([shared_layer(), arch_layer(arch)], config))
    layout.tag(layout.image_index(descs), "latest")
    layout.close()


if __name__ == "__main__":
    main()
