#!/usr/bin/env bash
# `zran generate` figures, each beside a baseline measured in the same run:
#  1. throughput on the python test image from its OCI layout, against `zran gz index` of the
#     same layers (the bare index pass) and `pigz -dc` of them (inflate only); best of 5, hot cache;
#  2. artifact size (image.boot + every blob.meta, as pushed: tar | gzip -9) as a share of the
#     image's compressed layers, for the python image and for a big image (below);
#  3. peak memory (max RSS) of `generate` on an image with one layer of 1 GiB uncompressed
#     (a tar of /usr cut at 1 GiB worth of whole files, pigz -6), against the same on a layer a
#     quarter of that size: memory must not grow with the layer.
# Usage: bash benches/generate.sh     (writes under benches/work/, gitignored)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
bash testimages/build.sh >/dev/null
cargo build --release --locked -q
zran=$PWD/target/release/zran
layouts=$PWD/target/testimages/layouts
WORK=$PWD/benches/work/generate
mkdir -p "$WORK"

best() {  # best wall-clock seconds of 5 runs of "$@"
    python3 - "$@" <<'PY'
import subprocess, sys, time
def run():
    t = time.perf_counter()
    subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t
print(f"{min(run() for _ in range(5)):.4f}")
PY
}
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }

layers_of() {  # blob paths of a layout's (first) manifest's layers
    python3 - "$1" <<'PY'
import json, sys
root = sys.argv[1]
index = json.load(open(f"{root}/index.json"))
m = json.load(open(f"{root}/blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]))
print(" ".join(f"{root}/blobs/sha256/" + l["digest"].split(":")[1] for l in m["layers"]))
PY
}

artifact_share() {  # artifact bytes as pushed, and its share of the layers
    local art=$1 layers=$2
    local pushed
    pushed=$(tar -C "$art" -c image.boot $(cd "$art" && ls *.blob.meta 2>/dev/null) | gzip -9 | wc -c)
    local image
    image=$(du -cb $layers | tail -1 | cut -f1)
    echo "$pushed $image $(python3 -c "print(f'{100*$pushed/$image:.2f}')")"
}

# ---- 1. throughput -------------------------------------------------------------------------
layers=$(layers_of "$layouts/python")
bytes=$(du -cb $layers | tail -1 | cut -f1)
gen_s=$(best "$zran" generate "oci:$layouts/python" -o "$WORK/python-art" --force)
gen1_s=$(best "$zran" generate "oci:$layouts/python" -o "$WORK/python-art" --force --jobs 1)
idx_s=$(best bash -c "for l in $layers; do $zran gz index \$l -o $WORK/x.zidx; done")
pigz_s=$(best bash -c "for l in $layers; do pigz -dc \$l > /dev/null; done")
echo "| python image, $bytes bytes of layers | seconds | MB/s of .tar.gz | vs zran gz index | vs pigz -dc |"
echo "|---|---:|---:|---:|---:|"
for row in "zran generate (index + tar + chunk sha256 + blob.meta + bootstrap):$gen_s" \
           "zran generate --jobs 1 (one layer at a time):$gen1_s" \
           "zran gz index, each layer:$idx_s" "pigz -dc, each layer:$pigz_s"; do
    name=${row%:*}; s=${row##*:}
    echo "| $name | $s | $(python3 -c "print(f'{$bytes/$s/1e6:.0f}')") | $(ratio "$idx_s" "$s")x | $(ratio "$pigz_s" "$s")x |"
done
echo

# ---- 2 and 3. a big layer ------------------------------------------------------------------
mkbig() {  # $1 = name, $2 = uncompressed bytes of file data
    local dir=$WORK/$1
    [[ -f $dir/index.json ]] && return
    rm -rf "$dir" && mkdir -p "$dir"
    python3 - "$dir" "$2" <<'PY'
import gzip, hashlib, json, os, subprocess, sys, tarfile
out, limit = sys.argv[1], int(sys.argv[2])
os.makedirs(f"{out}/blobs/sha256")
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
subprocess.run(["pigz", "-6", "-f", raw], check=True)
def put(data):
    d = hashlib.sha256(data).hexdigest()
    open(f"{out}/blobs/sha256/{d}", "wb").write(data)
    return {"digest": "sha256:" + d, "size": len(data)}
layer = open(raw + ".gz", "rb").read()
os.remove(raw + ".gz")
ld = put(layer); ld["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
cfg = put(json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode())
cfg["mediaType"] = "application/vnd.oci.image.config.v1+json"
man = put(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": cfg, "layers": [ld]}).encode())
man["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
json.dump({"schemaVersion": 2, "manifests": [man]}, open(f"{out}/index.json", "w"))
open(f"{out}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
PY
}
mkbig big $((1 << 30))
mkbig quarter $((1 << 28))

# One big layer: generate against the bare index pass and inflate alone, in one process each.
big_layer=$(layers_of "$WORK/big")
big_bytes=$(stat -c %s "$big_layer")
bgen_s=$(best "$zran" generate "oci:$WORK/big" -o "$WORK/big-art" --force)
bidx_s=$(best "$zran" gz index "$big_layer" -o "$WORK/x.zidx")
bpigz_s=$(best bash -c "pigz -dc $big_layer > /dev/null")
echo "| one layer of 1 GiB uncompressed, $big_bytes bytes | seconds | MB/s of .tar.gz | vs zran gz index | vs pigz -dc |"
echo "|---|---:|---:|---:|---:|"
for row in "zran generate:$bgen_s" "zran gz index:$bidx_s" "pigz -dc:$bpigz_s"; do
    name=${row%:*}; s=${row##*:}
    echo "| $name | $s | $(python3 -c "print(f'{$big_bytes/$s/1e6:.0f}')") | $(ratio "$bidx_s" "$s")x | $(ratio "$bpigz_s" "$s")x |"
done
echo
echo "| image | layers (bytes) | artifact as pushed (bytes) | share | peak RSS of generate | generate seconds |"
echo "|---|---:|---:|---:|---:|---:|"
for name in python quarter big; do
    if [[ $name == python ]]; then lay=$layouts/python; else lay=$WORK/$name; fi
    rm -rf "$WORK/$name-art"
    /usr/bin/time -f "%M %e" -o "$WORK/time" "$zran" generate "oci:$lay" -o "$WORK/$name-art" > /dev/null
    read -r rss secs < "$WORK/time"
    read -r pushed image share <<< "$(artifact_share "$WORK/$name-art" "$(layers_of "$lay")")"
    echo "| $name | $image | $pushed | $share% | $((rss / 1024)) MiB | $secs |"
done
