#!/usr/bin/env bash
# The zran demo, with no network (run as root: it mounts and chroots):
#  1. lazy start: build the python test image (an OCI layout made from this machine's files),
#     `zran generate --push` its artifact into the layout beside the image, `zran mount` the
#     image through FUSE (it finds the artifact), start `python3 -c 'import json, email'` from
#     the mounted tree with chroot, and print what was fetched against the image size;
#  2. the gzip engine: build a ~700 MB tar.gz from this machine's own files, index it in one
#     pass, read random ranges back through the index, check them, and print the figures.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo build --release --locked -q
zran="$PWD/target/release/zran"
work="${ZRAN_DEMO_DIR:-${TMPDIR:-/tmp}/zran-demo}"
mkdir -p "$work"

echo "== building the test images (cached under target/testimages)"
bash testimages/build.sh > "$work/testimages.log" 2>&1 || { tail -20 "$work/testimages.log"; exit 1; }
# A copy of the layout, so that the artifact stored beside the image stays out of the tests'.
rm -rf "$work/python-layout"
cp -a "$PWD/target/testimages/layouts/python" "$work/python-layout"
image="oci:$work/python-layout"
echo "== zran generate $image --push"
"$zran" generate "$image" -o "$work/python.art" --force --push | tail -2
mnt="$work/mnt"
cache="$work/cache"
mkdir -p "$mnt"
umount -l "$mnt" 2>/dev/null || true
rm -rf "$cache"
echo "== zran mount $image (cold cache), then chroot MNT /usr/bin/python3.11 -c 'import json, email'"
t0=$(date +%s.%N)
"$zran" mount "$image" "$mnt" --cache-dir "$cache"
t1=$(date +%s.%N)
chroot "$mnt" /usr/bin/python3.11 -c 'import json, email; print("   python says: json and email imported")'
t2=$(date +%s.%N)
"$zran" umount "$mnt" --cache-dir "$cache"
"$zran" stats "$mnt" --cache-dir "$cache" > "$work/stats.json"
python3 - "$work/stats.json" "$t0" "$t1" "$t2" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r["stats"]
t0, t1, t2 = map(float, sys.argv[2:5])
size = r["image_size"]
print(f"   mount live in {1e3*(t1-t0):.0f} ms; python started and finished in {1e3*(t2-t1):.0f} ms")
print(f"   fetched {s['bytes_fetched']} bytes in {s['requests']} range requests:"
      f" {100*s['bytes_fetched']/size:.1f}% of the image's {size} bytes,"
      f" {s['bytes_fetched']/max(1, s['file_bytes_read']):.2f}x the {s['file_bytes_read']} bytes"
      f" of the {s['files_read']} files python read")
print(f"   {s['chunks_verified']} chunks verified (sha256), {s['digest_failures']} digest failures")
PY

echo "== the gzip engine"
size="${ZRAN_DEMO_BYTES:-700000000}"
reads="${ZRAN_DEMO_READS:-100}"

tarball="$work/usr.tar"
gz="$work/usr.tar.gz"
if [ ! -s "$gz" ] || [ ! -s "$tarball" ]; then
    echo "== making $gz: the first $size bytes of a tar of /usr, gzip -6 (pigz)"
    { tar cf - -C / usr 2>/dev/null || true; } | head -c "$size" > "$tarball.tmp"
    pigz -6 -c "$tarball.tmp" > "$gz.tmp"
    mv "$tarball.tmp" "$tarball"
    mv "$gz.tmp" "$gz"
fi
gz_bytes=$(stat -c %s "$gz")
raw_bytes=$(stat -c %s "$tarball")
echo "   $gz: $gz_bytes bytes compressed, $raw_bytes uncompressed"

echo "== baseline: full decompression"
t0=$(date +%s.%N); gzip -dc "$gz" > /dev/null; t1=$(date +%s.%N)
gzip_s=$(python3 -c "print($t1 - $t0)")
t0=$(date +%s.%N); pigz -dc "$gz" > /dev/null; t1=$(date +%s.%N)
pigz_s=$(python3 -c "print($t1 - $t0)")

echo "== zran gz index (one streaming pass)"
t0=$(date +%s.%N)
"$zran" gz index "$gz" --json > "$work/summary.json"
t1=$(date +%s.%N)
zran_s=$(python3 -c "print($t1 - $t0)")

echo "== $reads random reads of 4 KiB through the index, each checked against the tar"
python3 - "$zran" "$gz" "$tarball" "$reads" <<'PY'
import os, random, subprocess, sys, time
zran, gz, tarball, reads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
size = os.path.getsize(tarball)
rng = random.Random(1)
lat = []
with open(tarball, "rb") as f:
    for _ in range(reads):
        off = rng.randrange(0, size - 4096)
        t = time.perf_counter()
        out = subprocess.run([zran, "gz", "extract", gz, "--offset", str(off), "--length", "4096"],
                             check=True, capture_output=True).stdout
        lat.append(time.perf_counter() - t)
        f.seek(off)
        if out != f.read(4096):
            sys.exit(f"MISMATCH at offset {off}")
lat.sort()
print(f"   all {reads} reads match; per read, whole command (process start, index load, inflate):"
      f" p50 {lat[len(lat)//2]*1e3:.1f} ms, p99 {lat[int(len(lat)*0.99)-1]*1e3:.1f} ms")
PY

python3 - "$work/summary.json" "$gzip_s" "$pigz_s" "$zran_s" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
gzip_s, pigz_s, zran_s = map(float, sys.argv[2:5])
mb = s["uncompressed_size"] / 1e6
print("== figures")
print(f"   gzip -dc          {gzip_s:6.2f} s  {mb/gzip_s:6.0f} MB/s")
print(f"   pigz -dc          {pigz_s:6.2f} s  {mb/pigz_s:6.0f} MB/s")
print(f"   zran gz index     {zran_s:6.2f} s  {mb/zran_s:6.0f} MB/s  ({pigz_s/zran_s:.2f}x pigz)")
print(f"   index: {s['checkpoints']} checkpoints, {s['index_size']} bytes,"
      f" {100*s['index_ratio']:.2f}% of the gzip (span {s['span']} bytes)")
PY
