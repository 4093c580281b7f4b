#!/usr/bin/env bash
# Registry client figures beside curl, on the same blob of a real docker-registry on loopback:
#  - whole-blob pull throughput (zran streams and verifies the digest; curl only writes),
#  - 1000 random 64 KiB range reads: zran over pooled connections, against one curl process
#    per request, and against one curl process fetching all ranges on one connection.
# Usage: bash benches/registry.sh   (results go to stdout as Markdown)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
work=benches/work/registry
rm -rf "$work"; mkdir -p "$work"
reads=${ZRAN_BENCH_READS:-1000}

# The blob: the gzip benchmark's tar.gz if it is there, else 200 MB of this machine's /usr.
blob=benches/work/usr.tar.gz
if [ ! -s "$blob" ]; then
    { tar cf - -C / usr 2>/dev/null || true; } | head -c 700000000 | pigz -6 > "$blob.tmp"
    mv "$blob.tmp" "$blob"
fi
size=$(stat -c %s "$blob")
digest="sha256:$(sha256sum "$blob" | cut -d' ' -f1)"

port=$(bash testimages/registry.sh start "$PWD/$work/reg" plain | tail -1)
trap 'bash testimages/registry.sh stop "$PWD/$work/reg" >/dev/null 2>&1 || true' EXIT
base="http://127.0.0.1:$port/v2/bench"
# Monolithic upload through the registry API.
loc=$(curl -sS -X POST -D - -o /dev/null "$base/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')
case "$loc" in http*) ;; *) loc="http://127.0.0.1:$port$loc" ;; esac
sep='?'; case "$loc" in *\?*) sep='&' ;; esac
curl -sS -f -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$blob" "$loc${sep}digest=$digest" -o /dev/null

cargo build --release --locked -q --bench registry_reads
bench_bin=$(ls -t target/release/deps/registry_reads-* | grep -v '\.d$' | head -1)

# curl: whole blob, best of 3.
best=999
for _ in 1 2 3; do
    t=$(curl -sS -f -o /dev/null -w '%{time_total}' "$base/blobs/$digest")
    best=$(python3 -c "print(min($best, $t))")
done
curl_pull=$best

# curl with the same check zran makes: the body piped into OpenSSL's sha256 (SHA-NI), best of 3.
best=999
for _ in 1 2 3; do
    start=$(date +%s.%N)
    curl -sS -f "$base/blobs/$digest" | openssl dgst -sha256 -r | grep -q "^${digest#sha256:} "
    end=$(date +%s.%N)
    best=$(python3 -c "print(min($best, $end - $start))")
done
curl_sha=$best

# curl: one process per range request, and one process for all ranges.
python3 - "$size" "$reads" > "$work/offsets" <<'PY'
import random, sys
size, n = int(sys.argv[1]), int(sys.argv[2])
r = random.Random(7)
for _ in range(n):
    print(r.randrange(0, size - 65536))
PY
start=$(date +%s.%N)
while read -r off; do
    curl -sS -f -o /dev/null -r "$off-$((off + 65535))" "$base/blobs/$digest"
done < "$work/offsets"
end=$(date +%s.%N)
curl_each=$(python3 -c "print(($end - $start) * 1000 / $reads)")
awk -v u="$base/blobs/$digest" '{printf "url = \"%s\"\nrange = \"%d-%d\"\noutput = \"/dev/null\"\n", u, $1, $1 + 65535}' "$work/offsets" > "$work/curl.cfg"
start=$(date +%s.%N)
curl -sS -f --config "$work/curl.cfg"
end=$(date +%s.%N)
curl_one=$(python3 -c "print(($end - $start) * 1000 / $reads)")

json=$(ZRAN_BENCH_REF="127.0.0.1:$port/bench" ZRAN_BENCH_DIGEST="$digest" ZRAN_BENCH_SIZE="$size" ZRAN_BENCH_READS="$reads" "$bench_bin")
python3 - "$json" "$size" "$curl_pull" "$curl_each" "$curl_one" "$reads" "$curl_sha" <<'PY'
import json, sys
z = json.loads(sys.argv[1]); size = int(sys.argv[2])
curl_pull, curl_each, curl_one, reads = float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
curl_sha = float(sys.argv[7])
curl_mb = size / 1e6 / curl_pull
print(f"blob: {size} bytes\n")
print("| whole-blob pull | seconds | MB/s | vs curl |")
print("|---|---:|---:|---:|")
print(f"| curl -o /dev/null | {curl_pull:.3f} | {curl_mb:.0f} | 1.00x |")
print(f"| zran (streamed, sha256 checked) | {z['pull_seconds']:.3f} | {z['pull_mb_per_sec']:.0f} | {z['pull_mb_per_sec']/curl_mb:.2f}x |")
print(f"| curl \\| openssl dgst -sha256 (the same check) | {curl_sha:.3f} | {size / 1e6 / curl_sha:.0f} | {curl_pull / curl_sha:.2f}x |")
print(f"| sha256 of the blob in memory, no transfer (the floor for a checked pull) | {z['hash_seconds']:.3f} | {size / 1e6 / z['hash_seconds']:.0f} | {curl_pull / z['hash_seconds']:.2f}x |")
raw_mb = size / 1e6 / z['raw_seconds']
print(f"| zran, same bytes as one range read (no digest check) | {z['raw_seconds']:.3f} | {raw_mb:.0f} | {raw_mb/curl_mb:.2f}x |")
print()
print(f"| {reads} random 64 KiB ranges | mean ms per read | p50 ms | p99 ms |")
print("|---|---:|---:|---:|")
print(f"| curl, one process per request | {curl_each:.2f} | | |")
print(f"| curl, one process, one connection | {curl_one:.2f} | | |")
print(f"| zran (pooled connection) | {z['mean_ms']:.2f} | {z['p50_ms']:.2f} | {z['p99_ms']:.2f} |")
PY
