#!/usr/bin/env bash
# Warm reads (every chunk already in zran's cache) through the three ways to read an image's
# files, measured in the same run (run as root):
#   kernel EROFS  `zran mount` on a complete cache (the default --fs-driver auto): the kernel's
#                 EROFS over the bootstrap and the cache's data files;
#   FUSE          the same cache served by zran's FUSE filesystem (--fs-driver fusedev);
#   local disk    the same tree copied to a directory on the same filesystem.
# Figures: time to a live mount on the complete cache (the kernel's includes verifying every
# chunk once), sequential read of every file (best of 3, page cache dropped before each), and
# 4 KiB random reads (the same 3000 offsets in files over 64 KiB, page cache dropped first).
# Images: the python test image, and (unless --small) the python image with a further 300 MB
# layer (benches/mkbigpy.py).
# Usage: bash benches/warm_reads.sh [--small]     (writes under benches/work/, gitignored)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
bash testimages/build.sh >/dev/null
cargo build --release --locked -q
zran=$PWD/target/release/zran
layouts=$PWD/target/testimages/layouts
WORK=$PWD/benches/work/warm_reads
for m in "$WORK"/*/m-*; do umount -l "$m" 2>/dev/null || true; done
rm -rf "$WORK"
mkdir -p "$WORK"
trap 'for m in "$WORK"/*/m-*; do "$zran" umount "$m" --cache-dir "${m%/*}/cache" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done' EXIT

images=(python)
if [[ "${1:-}" != --small ]]; then
    python3 benches/mkbigpy.py "$layouts/python" "$WORK/bigpy.layout"
    images+=(bigpy)
fi

now() { date +%s.%N; }
ms() { python3 -c "print(f'{1e3*($2-$1):.0f}')"; }
best_cat() {  # seconds, best of 3, page cache dropped before each
    python3 - "$1" <<'PY'
import subprocess, sys, time
best = 1e9
for _ in range(3):
    subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, check=True)
    t = time.perf_counter()
    subprocess.run(f"find '{sys.argv[1]}' -type f -exec cat {{}} + > /dev/null", shell=True, check=True)
    best = min(best, time.perf_counter() - t)
print(f"{best:.4f}")
PY
}
random_reads() {  # "reads/s p50_us p99_us" of 3000 random 4 KiB reads, page cache dropped first
    python3 - "$1" <<'PY'
import os, random, subprocess, sys, time
root = sys.argv[1]
files = []
for d, _, names in os.walk(root):
    for n in sorted(names):
        p = os.path.join(d, n)
        if os.path.isfile(p) and not os.path.islink(p) and os.path.getsize(p) > 1 << 16:
            files.append((os.path.relpath(p, root), os.path.getsize(p)))
files.sort()
rng = random.Random(7)
picks = [(f, rng.randrange(0, s - 4096) & ~4095) for f, s in (rng.choice(files) for _ in range(3000))]
subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, check=True)
lat = []
t0 = time.perf_counter()
for f, off in picks:
    fd = os.open(os.path.join(root, f), os.O_RDONLY)
    t = time.perf_counter()
    assert len(os.pread(fd, 4096, off)) == 4096
    lat.append(time.perf_counter() - t)
    os.close(fd)
total = time.perf_counter() - t0
lat.sort()
print(f"{len(lat)/total:.0f} {1e6*lat[len(lat)//2]:.0f} {1e6*lat[int(len(lat)*0.99)]:.0f}")
PY
}
served() { "$zran" stats "$1" --cache-dir "$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["served"])'; }

for img in "${images[@]}"; do
    d="$WORK/$img"; mkdir -p "$d"
    layout="$layouts/$img"; [[ $img == bigpy ]] && layout="$WORK/bigpy.layout"
    "$zran" generate "oci:$layout" -o "$d/art" >/dev/null
    c="$d/cache"
    mkdir -p "$d/m-fill" "$d/m-fuse" "$d/m-kernel" "$d/local"
    # Fill the cache through FUSE, and copy the tree to local disk from it.
    "$zran" mount "$d/art" "$d/m-fill" --cache-dir "$c" --no-prefetch
    cp -a "$d/m-fill/." "$d/local/"
    "$zran" umount "$d/m-fill" --cache-dir "$c"
    bytes=$(find "$d/local" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
    echo "== $img: $(find "$d/local" -type f | wc -l) files, $bytes bytes"

    t0=$(now); "$zran" mount "$d/art" "$d/m-fuse" --cache-dir "$c" --fs-driver fusedev --no-prefetch; t1=$(now)
    [[ $(served "$d/m-fuse" "$c") == fuse ]]
    echo "   live mount on the complete cache: FUSE $(ms $t0 $t1) ms"
    tf=$(best_cat "$d/m-fuse"); rf=$(random_reads "$d/m-fuse")
    "$zran" umount "$d/m-fuse" --cache-dir "$c"

    t0=$(now); "$zran" mount "$d/art" "$d/m-kernel" --cache-dir "$c" --no-prefetch; t1=$(now)
    [[ $(served "$d/m-kernel" "$c") == kernel-erofs ]] || { echo "not served by the kernel" >&2; exit 1; }
    echo "   live mount on the complete cache: kernel EROFS $(ms $t0 $t1) ms (every chunk verified first)"
    tk=$(best_cat "$d/m-kernel"); rk=$(random_reads "$d/m-kernel")
    "$zran" umount "$d/m-kernel" --cache-dir "$c"

    tl=$(best_cat "$d/local"); rl=$(random_reads "$d/local")
    python3 - "$bytes" "$tk" "$tf" "$tl" "$rk" "$rf" "$rl" <<'PY'
import sys
b = int(sys.argv[1]); tk, tf, tl = map(float, sys.argv[2:5])
rk, rf, rl = (list(map(int, a.split())) for a in sys.argv[5:8])
print("   sequential, every file, page cache dropped (best of 3):")
for name, t in (("kernel EROFS", tk), ("FUSE", tf), ("local disk", tl)):
    print(f"     {name:13} {b/t/1e6:7.0f} MB/s  {t:7.3f} s  {tl/t:5.2f}x local disk")
print("   random 4 KiB reads (3000, files over 64 KiB, page cache dropped):")
for name, r in (("kernel EROFS", rk), ("FUSE", rf), ("local disk", rl)):
    print(f"     {name:13} {r[0]:7d} reads/s  p50 {r[1]:5d} us  p99 {r[2]:6d} us  {r[0]/rl[0]:5.2f}x local disk")
PY
done
