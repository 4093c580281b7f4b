#!/usr/bin/env bash
# `zran mount` figures, each beside a baseline measured in the same run (run as root):
#  1. time to a live mount and to `ls -lR` of the python test image: the generate artifact
#     (layers read from a real registry on loopback), the same artifact stored beside the image
#     in the registry (`mount IMAGE` finds and fetches it), the eStargz image straight from its
#     TOCs, against pulling and unpacking the image with `skopeo copy` + `umoci unpack`;
#  2. bytes fetched to start `python3 -c 'import json, email'` from the mount, against the
#     image size and against the bytes of the files python read (zran's own counters);
#  3. warm (cached) sequential read throughput of every file through the mount against the
#     same files unpacked on local disk, page cache dropped before each;
#  4. cold random 4 KiB reads through a mount of the layout (local blobs): p50 and p99.
# Usage: bash benches/mount.sh     (writes under benches/work/, gitignored)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
bash testimages/build.sh >/dev/null
cargo build --release --locked -q
zran=$PWD/target/release/zran
layouts=$PWD/target/testimages/layouts
WORK=$PWD/benches/work/mount
rm -rf "$WORK"
mkdir -p "$WORK"

regdir="$WORK/registry"
port=$(bash testimages/registry.sh start "$regdir" plain | tail -1)
trap 'umount -l "$WORK"/m* 2>/dev/null || true; bash testimages/registry.sh stop "$regdir"' EXIT
bash testimages/registry.sh push "$regdir" "$layouts" >/dev/null 2>&1
host=127.0.0.1:$port
"$zran" generate "oci:$layouts/python" -o "$WORK/art" >/dev/null
"$zran" push "$WORK/art" "$host/python" >/dev/null

now() { date +%s.%N; }
fetched() {  # a mount's record: bytes fetched against the image and the files read
    python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); s = r["stats"]
print(f"   fetched {s['bytes_fetched']} of {r['image_size']} bytes ({100*s['bytes_fetched']/r['image_size']:.1f}%),"
      f" {s['requests']} requests; the {s['files_read']} files read hold {s['file_bytes_read']} bytes:"
      f" {s['bytes_fetched']/s['file_bytes_read']:.2f}x")
PY
}
ms() { python3 -c "print(f'{1e3*($2-$1):.0f}')"; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }

echo "== 1. time to a live mount, and to ls -lR"
for kind in artifact pushed estargz; do
    mkdir -p "$WORK/m-$kind"
    case $kind in
        artifact) src=("$WORK/art" --image "$host/python") ;;
        pushed) src=("$host/python") ;;
        estargz) src=("$host/python-estargz") ;;
    esac
    t0=$(now); "$zran" mount "${src[@]}" "$WORK/m-$kind" --cache-dir "$WORK/c-$kind" --no-prefetch; t1=$(now)
    ls -lR "$WORK/m-$kind" > /dev/null; t2=$(now)
    echo "   zran mount ($kind): live in $(ms $t0 $t1) ms, ls -lR $(ms $t1 $t2) ms"
    "$zran" umount "$WORK/m-$kind" --cache-dir "$WORK/c-$kind"
done
printf '{"default":[{"type":"insecureAcceptAnything"}]}\n' > "$WORK/policy.json"
t0=$(now)
skopeo --policy "$WORK/policy.json" copy -q --src-tls-verify=false "docker://$host/python:latest" "oci:$WORK/pulled:latest"
umoci raw unpack --image "$WORK/pulled:latest" "$WORK/unpacked" > /dev/null 2>&1
t1=$(now)
ls -lR "$WORK/unpacked" > /dev/null; t2=$(now)
echo "   skopeo copy + umoci unpack: $(ms $t0 $t1) ms, ls -lR $(ms $t1 $t2) ms"

echo "== 2. bytes fetched to start python3 -c 'import json, email'"
mkdir -p "$WORK/m-py"
"$zran" mount "$WORK/art" --image "$host/python" "$WORK/m-py" --cache-dir "$WORK/c-py" --no-prefetch
chroot "$WORK/m-py" /usr/bin/python3.11 -c 'import json, email'
"$zran" umount "$WORK/m-py" --cache-dir "$WORK/c-py"
"$zran" stats "$WORK/m-py" --cache-dir "$WORK/c-py" > "$WORK/py.json"
fetched "$WORK/py.json"

echo "== 2b. the same on the python image with a further 300 MB layer (this machine's /usr/share and"
echo "       /usr/lib/x86_64-linux-gnu under /opt/extra): what a start fetches does not grow with the image"
python3 benches/mkbigpy.py "$layouts/python" "$WORK/bigpy"
"$zran" generate "oci:$WORK/bigpy" -o "$WORK/bigpy.art" >/dev/null
mkdir -p "$WORK/m-big"
"$zran" mount "$WORK/bigpy.art" "$WORK/m-big" --cache-dir "$WORK/c-big" --no-prefetch
chroot "$WORK/m-big" /usr/bin/python3.11 -c 'import json, email'
"$zran" umount "$WORK/m-big" --cache-dir "$WORK/c-big"
"$zran" stats "$WORK/m-big" --cache-dir "$WORK/c-big" > "$WORK/big.json"
fetched "$WORK/big.json"

echo "== 3. warm sequential reads, page cache dropped, against local disk"
mkdir -p "$WORK/m-warm"
"$zran" mount "$WORK/art" "$WORK/m-warm" --cache-dir "$WORK/c-warm" --no-prefetch
find "$WORK/m-warm" -type f -exec cat {} + > /dev/null   # fills the zran cache
best_cat() {  # best of 3, page cache dropped before each
    python3 - "$1" <<'PY'
import os, subprocess, sys, time
best = 1e9
for _ in range(3):
    subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, check=True)
    t = time.perf_counter()
    subprocess.run(f"find '{sys.argv[1]}' -type f -exec cat {{}} + > /dev/null", shell=True, check=True)
    best = min(best, time.perf_counter() - t)
print(f"{best:.4f}")
PY
}
bytes=$(find "$WORK/unpacked" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
tz=$(best_cat "$WORK/m-warm")
tl=$(best_cat "$WORK/unpacked")
python3 -c "b=$bytes; z=$tz; l=$tl; print(f'   {b} bytes: zran mount {b/z/1e6:.0f} MB/s, local disk {b/l/1e6:.0f} MB/s: {l/z:.2f}x')"
"$zran" umount "$WORK/m-warm" --cache-dir "$WORK/c-warm"

echo "== 4. cold random 4 KiB reads on local blobs"
mkdir -p "$WORK/m-cold"
"$zran" mount "$WORK/art" "$WORK/m-cold" --cache-dir "$WORK/c-cold" --no-prefetch
drop
python3 - "$WORK/m-cold" <<'PY'
import os, random, sys, time
root = sys.argv[1]
files = []
for d, _, names in os.walk(root):
    for n in names:
        p = os.path.join(d, n)
        if os.path.isfile(p) and not os.path.islink(p) and os.path.getsize(p) > 1 << 16:
            files.append(p)
rng = random.Random(7)
lat = []
for p in rng.sample(files, min(200, len(files))):
    size = os.path.getsize(p)
    off = rng.randrange(0, size - 4096) & ~4095
    fd = os.open(p, os.O_RDONLY)
    t = time.perf_counter()
    os.pread(fd, 4096, off)
    lat.append(time.perf_counter() - t)
    os.close(fd)
lat.sort()
print(f"   {len(lat)} cold reads of 4 KiB in distinct files: p50 {1e3*lat[len(lat)//2]:.2f} ms,"
      f" p99 {1e3*lat[int(len(lat)*0.99)-1]:.2f} ms")
PY
"$zran" umount "$WORK/m-cold" --cache-dir "$WORK/c-cold"
