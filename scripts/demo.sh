#!/usr/bin/env bash
# The zran demo, with no network: build a ~200 MB tar.gz from this machine's own files, index it
# in one pass, read random ranges back through the index, check them, and print the figures.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo build --release --locked -q
zran="$PWD/target/release/zran"
work="${ZRAN_DEMO_DIR:-${TMPDIR:-/tmp}/zran-demo}"
size="${ZRAN_DEMO_BYTES:-700000000}"
reads="${ZRAN_DEMO_READS:-100}"
mkdir -p "$work"

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
