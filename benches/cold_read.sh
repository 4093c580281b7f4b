#!/usr/bin/env bash
# Cold reads through `zran mount`, each beside its baseline measured in the same run (as root):
#  1. every file of a big gzip layer read through a fresh mount (fresh --cache-dir, layers read
#     from a local OCI layout), one reader and four (`xargs -P 4`), against `pigz -dc` of the
#     same layer (the layer file in the page cache for both);
#  2. `ls -lR` of the python test image through a fresh mount, against `ls -lR` of the same
#     image unpacked on local disk with the page cache dropped before each.
# Prints each time and the ratios (pigz time / zran time: 1.0 is as fast as pigz).
# Usage: bash benches/cold_read.sh [UNCOMPRESSED_BYTES_OF_THE_BIG_LAYER]   (default 1000000000;
#        writes under benches/work/cold_read, gitignored; RUNS=3 runs of each, best kept)
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-1000000000}
runs=${RUNS:-3}
bash testimages/build.sh >/dev/null
cargo build --release --locked -q
zran=$PWD/target/release/zran
layouts=$PWD/target/testimages/layouts
WORK=$PWD/benches/work/cold_read
mkdir -p "$WORK"
mnt=$WORK/mnt
mkdir -p "$mnt"
trap 'umount -l "$mnt" 2>/dev/null || true' EXIT

if [ ! -f "$WORK/bigpy-$size/index.json" ]; then
    rm -rf "$WORK/bigpy-$size" "$WORK/bigpy-$size.art"
    python3 benches/mkbigpy.py "$layouts/python" "$WORK/bigpy-$size" "$size"
fi
big=$WORK/bigpy-$size
[ -d "$big.art" ] || "$zran" generate "oci:$big" -o "$big.art" >/dev/null
[ -d "$WORK/python.art" ] || "$zran" generate "oci:$layouts/python" -o "$WORK/python.art" >/dev/null
layer=$(ls -S "$big/blobs/sha256" | head -1)
layer=$big/blobs/sha256/$layer

now() { date +%s.%N; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
best() { tr ' ' '\n' | sort -g | head -1; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
mount_fresh() {  # SOURCE: a fresh cache, no prefetch
    rm -rf "$WORK/cache"
    "$zran" mount "$1" "$mnt" --cache-dir "$WORK/cache" --no-prefetch
}
umount_it() { "$zran" umount "$mnt" --cache-dir "$WORK/cache"; }

echo "== 1. cold full read of a big layer ($(stat -c %s "$layer") bytes gzip) against pigz -dc"
cat "$layer" > /dev/null
raw=$(pigz -dc "$layer" | wc -c)
times=""
for _ in $(seq "$runs"); do
    t0=$(now); pigz -dc "$layer" > /dev/null; t1=$(now)
    times="$times $(python3 -c "print($t1-$t0)")"
done
tp=$(echo $times | best)
printf '   pigz -dc: %.2f s (%.0f MB/s of tar)\n' "$tp" "$(python3 -c "print($raw/$tp/1e6)")"
for par in 1 4; do
    times=""
    for _ in $(seq "$runs"); do
        mount_fresh "$big.art"
        t0=$(now)
        find "$mnt/opt/extra" -type f -print0 | xargs -0 -P "$par" -n 256 cat > /dev/null
        t1=$(now)
        times="$times $(python3 -c "print($t1-$t0)")"
        umount_it
        "$zran" stats "$mnt" --cache-dir "$WORK/cache" > "$WORK/stats.json"
    done
    t=$(echo $times | best)
    python3 - "$WORK/stats.json" "$t" "$tp" "$raw" "$par" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["stats"]
t, tp, raw, par = float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
print(f"   zran mount, {par} reader(s): {t:.2f} s ({raw/t/1e6:.0f} MB/s of tar; {s['file_bytes_read']} bytes"
      f" in {s['files_read']} files, {s['requests']} range requests, {s.get('bytes_decoded', 0)} bytes decoded):"
      f" {tp/t:.2f}x pigz")
PY
done

echo "== 2. cold ls -lR of the python image against the unpacked tree"
if [ ! -d "$WORK/python-unpacked" ]; then
    umoci raw unpack --image "$layouts/python:latest" "$WORK/python-unpacked" > /dev/null 2>&1
fi
times=""
for _ in $(seq "$runs"); do
    drop; t0=$(now); ls -lR "$WORK/python-unpacked" > /dev/null; t1=$(now)
    times="$times $(python3 -c "print($t1-$t0)")"
done
tl=$(echo $times | best)
times=""
for _ in $(seq "$runs"); do
    mount_fresh "$WORK/python.art"
    t0=$(now); ls -lR "$mnt" > /dev/null; t1=$(now)
    times="$times $(python3 -c "print($t1-$t0)")"
    umount_it
done
tz=$(echo $times | best)
printf '   ls -lR: unpacked %.1f ms, zran mount %.1f ms: %sx the unpacked time\n' \
    "$(python3 -c "print(1e3*$tl)")" "$(python3 -c "print(1e3*$tz)")" "$(ratio "$tz" "$tl")"
