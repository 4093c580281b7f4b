#!/usr/bin/env bash
# `zran convert` against Nydus's own builder on the same layer, same run, median of 3:
#  - zran: `zran convert oci:ONE-LAYER-IMAGE oci:OUT` (the gzip layer read, inflated, chunked,
#    compressed, the blob with its tail, the bootstrap layer, manifest: everything);
#  - Nydus: what nydusify runs per layer (reference formats-convert-zstdchunked.md §1.1), on the
#    tar decompressed first: `nydus-image create --type tar-rafs --fs-version 6
#    --blob-inline-meta --features blob-toc --compressor zstd --chunk-size 0x100000 --digester
#    sha256 --whiteout-spec none`, timed alone and with the `gzip -dc` it needs before it;
#  - output sizes: zran's blob against nydus-image's blob (both hold chunks, blob.meta, chunk
#    digests, the layer's bootstrap and the ToC).
# Layers: the python test image's largest layer, and the ~251 MB layer of "bigpy"
# (benches/mkbigpy.py, as benches/snapshotter_startup.sh builds it).
# Usage: bash benches/convert.sh   (NYDUS_IMAGE=PATH, default /opt/nydus/bin/nydus-image;
# writes under benches/work/convert, gitignored)
set -euo pipefail
cd "$(dirname "$0")/.."
bash testimages/build.sh >/dev/null
cargo build --release --locked -q
zran=$PWD/target/release/zran
nydus_image=${NYDUS_IMAGE:-/opt/nydus/bin/nydus-image}
[ -x "$nydus_image" ] || { echo "no nydus-image at $nydus_image (NYDUS_IMAGE=PATH)"; exit 1; }
layouts=$PWD/target/testimages/layouts
WORK=$PWD/benches/work/convert
rm -rf "$WORK"
mkdir -p "$WORK"

[ -d "$WORK/bigpy" ] || python3 benches/mkbigpy.py "$layouts/python" "$WORK/bigpy" 830000000 >/dev/null

largest_layer() {  # blob path of the largest layer of a layout's first manifest
    python3 - "$1" <<'PY'
import json, sys
root = sys.argv[1]
index = json.load(open(f"{root}/index.json"))
m = json.load(open(f"{root}/blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]))
l = max(m["layers"], key=lambda l: l["size"])
print(f"{root}/blobs/sha256/" + l["digest"].split(":")[1])
PY
}

one_layer_image() {  # an OCI layout whose image is the one gzip layer $1
    python3 - "$1" "$2" <<'PY'
import gzip, hashlib, json, os, shutil, sys, zlib
layer, out = sys.argv[1], sys.argv[2]
os.makedirs(f"{out}/blobs/sha256", exist_ok=True)
def put(b):
    h = hashlib.sha256(b).hexdigest()
    open(f"{out}/blobs/sha256/{h}", "wb").write(b)
    return "sha256:" + h, len(b)
data = open(layer, "rb").read()
ld, ls = put(data)
diff = "sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest()
cd, cs = put(json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [diff]}}).encode())
md, ms = put(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld, "size": ls}]}).encode())
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": md, "size": ms}]}, open(f"{out}/index.json", "w"))
open(f"{out}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
PY
}

median() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" "$@"; }
now() { date +%s.%N; }
since() { python3 -c "print(f'{$(now) - $1:.3f}')"; }

echo "| layer | gzip | tar | zran convert | gzip -dc | nydus-image | gzip -dc + nydus-image | ratio (with gzip -dc) | ratio (nydus-image alone) | zran blob | nydus blob |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for name in python bigpy; do
    src=$layouts/$name
    [ "$name" = bigpy ] && src=$WORK/bigpy
    layer=$(largest_layer "$src")
    img=$WORK/$name-one
    rm -rf "$img"
    one_layer_image "$layer" "$img"
    tar=$WORK/$name.tar
    z=(); g=(); n=()
    for run in 1 2 3; do
        rm -rf "$WORK/out" "$tar" "$WORK/nydus.blob"
        t=$(now); "$zran" convert "oci:$img" "oci:$WORK/out:nydus" >/dev/null; z+=("$(since "$t")")
        t=$(now); gzip -dc "$layer" > "$tar"; g+=("$(since "$t")")
        t=$(now)
        echo / | "$nydus_image" create --log-level warn --type tar-rafs --fs-version 6 --blob-inline-meta \
            --features blob-toc --compressor zstd --chunk-size 0x100000 --digester sha256 \
            --whiteout-spec none --prefetch-policy fs --blob "$WORK/nydus.blob" "$tar" >/dev/null 2>&1
        n+=("$(since "$t")")
    done
    zm=$(median "${z[@]}"); gm=$(median "${g[@]}"); nm=$(median "${n[@]}")
    both=$(python3 -c "print(f'{$gm + $nm:.3f}')")
    zblob=$(python3 - "$WORK/out" <<'PY'
import json, sys
root = sys.argv[1]
index = json.load(open(f"{root}/index.json"))
m = json.load(open(f"{root}/blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]))
print(m["layers"][0]["size"])
PY
)
    nblob=$(stat -c %s "$WORK/nydus.blob")
    echo "| $name | $(stat -c %s "$layer") | $(stat -c %s "$tar") | ${zm} s | ${gm} s | ${nm} s | ${both} s |" \
         "$(python3 -c "print(f'{$both/$zm:.2f}x')") | $(python3 -c "print(f'{$nm/$zm:.2f}x')") | $zblob | $nblob |"
done
echo "zran runs: ${z[*]}; gzip -dc runs: ${g[*]}; nydus-image runs: ${n[*]} (last layer)"
nproc | sed 's/^/cores: /'
