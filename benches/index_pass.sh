#!/usr/bin/env bash
# The threaded index pass against the build before it (a zran binary given as $BASE):
#  1. the artifact `generate` writes (image.boot, every blob.meta, zran.json) byte for byte on
#     every test image in target/testimages/layouts;
#  2. `zran generate` on the one-layer 1 GiB image of benches/generate.sh against `zran gz index`
#     of its layer, both binaries, runs interleaved, best and all of N runs (hot cache).
# Usage: BASE=/path/to/old/zran bash benches/index_pass.sh [N]   (run benches/generate.sh once
# first for benches/work/generate/big; writes under benches/work/, gitignored)
set -euo pipefail
cd "$(dirname "$0")/.."
new=$PWD/target/release/zran
base=${BASE:?give the old zran binary as BASE}
runs=${1:-5}
layouts=$PWD/target/testimages/layouts
W=$PWD/benches/work/index_pass
mkdir -p "$W"

echo "## artifacts, $base vs $new"
for img in "$layouts"/*/; do
    name=$(basename "$img")
    for b in base new; do
        bin=$base; [[ $b == new ]] && bin=$new
        rm -rf "$W/$name-$b"
        "$bin" generate "oci:$img" -o "$W/$name-$b" --force > /dev/null 2>&1 || echo "$name: $b failed"
    done
    diff -r "$W/$name-base" "$W/$name-new" > /dev/null && echo "$name: identical ($(ls "$W/$name-new" | tr '\n' ' '))" \
        || echo "$name: DIFFERENT"
done

big=$PWD/benches/work/generate/big
layer=$(python3 - "$big" <<'PY'
import json, sys
r = sys.argv[1]
i = json.load(open(f"{r}/index.json"))
m = json.load(open(f"{r}/blobs/sha256/" + i["manifests"][0]["digest"].split(":")[1]))
print(f"{r}/blobs/sha256/" + m["layers"][0]["digest"].split(":")[1])
PY
)
echo
echo "## one layer, $(stat -c %s "$layer") bytes of gzip; seconds per run, $runs interleaved runs"
python3 - "$base" "$new" "$big" "$layer" "$W" "$runs" <<'PY'
import subprocess, sys, time, os
base, new, big, layer, w, runs = sys.argv[1:7]
cmds = {
    "base generate": [base, "generate", f"oci:{big}", "-o", f"{w}/big-art", "--force"],
    "new generate": [new, "generate", f"oci:{big}", "-o", f"{w}/big-art", "--force"],
    "base gz index": [base, "gz", "index", layer, "-o", f"{w}/x.zidx"],
    "new gz index": [new, "gz", "index", layer, "-o", f"{w}/x.zidx"],
}
times = {k: [] for k in cmds}
for _ in range(int(runs)):
    for k, c in cmds.items():
        t = time.perf_counter()
        subprocess.run(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times[k].append(time.perf_counter() - t)
for k, v in times.items():
    print(f"{k:15} best {min(v):.3f}  all {' '.join(f'{x:.3f}' for x in v)}")
for b in ("base", "new"):
    g, i = times[f"{b} generate"], times[f"{b} gz index"]
    pairs = [ii / gg for gg, ii in zip(g, i)]
    print(f"{b}: generate vs gz index (best/best) {min(i)/min(g):.2f}x; per round {min(pairs):.2f}-{max(pairs):.2f}x")
print(f"new generate vs base generate (best/best): {min(times['base generate'])/min(times['new generate']):.2f}x faster")
PY
