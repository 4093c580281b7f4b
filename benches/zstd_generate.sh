#!/usr/bin/env bash
# `zran generate` on the zstd, zstd:chunked, multi-frame zstd (pzstd) and uncompressed forms of
# an image, against its gzip form and against plain decompression of each form's layers, in the
# same run: best of 3 wall-clock seconds, hot cache; artifact bytes (image.boot + blob.meta as
# written); peak RSS of one generate.
# Images: the python test image, and "quarter" (one layer: a tar of whole files of /usr cut at
# 256 MiB, as benches/generate.sh makes it). Forms: skopeo --dest-compress-format zstd and
# zstd:chunked; every layer gunzipped and piped through `pzstd -p 2 -3`, or left uncompressed,
# with a hand-written manifest (same config, DiffIDs unchanged).
# Usage: bash benches/zstd_generate.sh     (writes under benches/work/zstd/, gitignored)
set -euo pipefail
cd "$(dirname "$0")/.."
bash testimages/build.sh >/dev/null
cargo build --release --locked -q
zran=$PWD/target/release/zran
layouts=$PWD/target/testimages/layouts
WORK=$PWD/benches/work/zstd
mkdir -p "$WORK"

best() {  # best wall-clock seconds of 3 runs of "$@"
    python3 - "$@" <<'PY'
import subprocess, sys, time
def run():
    t = time.perf_counter()
    subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t
print(f"{min(run() for _ in range(3)):.3f}")
PY
}

layers_of() {  # blob paths of a layout's (first) manifest's layers
    python3 - "$1" <<'PY'
import json, sys
root = sys.argv[1]
index = json.load(open(f"{root}/index.json"))
m = json.load(open(f"{root}/blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]))
print(" ".join(f"{root}/blobs/sha256/" + l["digest"].split(":")[1] for l in m["layers"]))
PY
}

recompress() {  # $1 gzip layout, $2 new layout, $3 pzstd|none
    rm -rf "$2"
    python3 - "$1" "$2" "$3" <<'PY'
import gzip, hashlib, json, os, subprocess, sys
src, dst, how = sys.argv[1:]
os.makedirs(f"{dst}/blobs/sha256")
def put(data):
    d = hashlib.sha256(data).hexdigest()
    open(f"{dst}/blobs/sha256/{d}", "wb").write(data)
    return "sha256:" + d
index = json.load(open(f"{src}/index.json"))
m = json.load(open(f"{src}/blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]))
put(open(f"{src}/blobs/sha256/" + m["config"]["digest"].split(":")[1], "rb").read())
for l in m["layers"]:
    tar = gzip.open(f"{src}/blobs/sha256/" + l["digest"].split(":")[1]).read()
    if how == "pzstd":
        data = subprocess.run(["pzstd", "-q", "-p", "2", "-3", "-c"], input=tar, capture_output=True, check=True).stdout
        l["mediaType"] = "application/vnd.oci.image.layer.v1.tar+zstd"
    else:
        data = tar
        l["mediaType"] = "application/vnd.oci.image.layer.v1.tar"
    l["digest"], l["size"] = put(data), len(data)
raw = json.dumps(m).encode()
md = put(raw)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": md, "size": len(raw)}]}, open(f"{dst}/index.json", "w"))
open(f"{dst}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
PY
}

mkquarter() {  # the quarter image of benches/generate.sh
    local dir=$WORK/quarter
    [[ -f $dir/index.json ]] && return
    rm -rf "$dir" && mkdir -p "$dir/blobs/sha256"
    python3 - "$dir" $((1 << 28)) <<'PY'
import hashlib, json, os, subprocess, sys, tarfile
out, limit = sys.argv[1], int(sys.argv[2])
raw = f"{out}/layer.tar"
total = 0
with tarfile.open(raw, "w", format=tarfile.PAX_FORMAT) as t:
    for root, dirs, files in os.walk("/usr"):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(root, f)
            try:
                if os.path.islink(p) or not os.path.isfile(p):
                    continue
                size = os.path.getsize(p)
                if total + size > limit:
                    continue
                t.add(p, recursive=False)
                total += size
            except OSError:
                pass
        if total >= limit * 0.999:
            break
diff_id = "sha256:" + hashlib.sha256(open(raw, "rb").read()).hexdigest()
subprocess.run(["pigz", "-6", "-f", raw], check=True)
def put(data):
    d = hashlib.sha256(data).hexdigest()
    open(f"{out}/blobs/sha256/{d}", "wb").write(data)
    return {"digest": "sha256:" + d, "size": len(data)}
layer = open(raw + ".gz", "rb").read()
os.remove(raw + ".gz")
ld = put(layer); ld["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
cfg = put(json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode())
cfg["mediaType"] = "application/vnd.oci.image.config.v1+json"
man = put(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": cfg, "layers": [ld]}).encode())
man["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
json.dump({"schemaVersion": 2, "manifests": [man]}, open(f"{out}/index.json", "w"))
open(f"{out}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
PY
}

mkquarter
for image in python quarter; do
    if [[ $image == python ]]; then src=$layouts/python; else src=$WORK/quarter; fi
    for f in zstd zstd:chunked; do
        rm -rf "$WORK/$image-${f/:/-}"
        skopeo copy -q "oci:$src" "oci:$WORK/$image-${f/:/-}:latest" --dest-compress-format "$f"
    done
    recompress "$src" "$WORK/$image-pzstd" pzstd
    recompress "$src" "$WORK/$image-tar" none
    echo "| $image: form | layers (bytes) | generate s | decompress the layers s (tool) | generate / decompress | artifact bytes | peak RSS |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for form in gzip zstd zstd-chunked pzstd tar; do
        if [[ $form == gzip ]]; then lay=$src; else lay=$WORK/$image-$form; fi
        layers=$(layers_of "$lay")
        bytes=$(du -cb $layers | tail -1 | cut -f1)
        case $form in
            gzip) tool="pigz -dc" ;;
            tar) tool="cat" ;;
            *) tool="zstd -dc" ;;
        esac
        gen=$(best "$zran" generate "oci:$lay" -o "$WORK/art" --force)
        dec=$(best bash -c "for l in $layers; do $tool \$l > /dev/null; done")
        rm -rf "$WORK/art"
        /usr/bin/time -f "%M" -o "$WORK/time" "$zran" generate "oci:$lay" -o "$WORK/art" > /dev/null 2>&1
        art=$(cat "$WORK/art/image.boot" "$WORK"/art/*.blob.meta 2>/dev/null | wc -c)
        echo "| $form | $bytes | $gen | $dec ($tool) | $(python3 -c "print(f'{$gen/$dec:.2f}')")x | $art | $(( $(cat "$WORK/time") / 1024 )) MiB |"
    done
    echo
done
