#!/usr/bin/env bash
# The python test image in every layer format zran serves (issue 15), served by a real registry
# on loopback, each measured in the same run (run as root):
#   gzip (python), eStargz (python-estargz), zstd:chunked as skopeo writes it
#   (python-zstdchunked) and in its current form (python-zstdchunked-v2), eStargz in zstd
#   frames (python-estargz-zstd), plain zstd in one frame per layer (python-zstd) and in 2 MiB
#   frames (python-zstd-frames), uncompressed tar (python-tar):
#  1. `zran inspect --files`: time and bytes fetched (the TOC only, where the format has one);
#  2. the python workload `python3 -c 'import json, email, http.client, sqlite3'` in a chroot of
#     `zran mount` (straight from the TOCs for the TOC formats, else through the `zran generate`
#     artifact reading the layers from the registry): time from mount to the workload's end,
#     bytes fetched (zran's counters) against the image size.
# Usage: bash benches/zstd_formats.sh    (writes under benches/work/, gitignored)
#        ZRAN_BIN=target/debug/zran bash benches/zstd_formats.sh    (no release build)
# Needs the issue-15 readers (zstd:chunked TOCs, zstd and tar layers) in the zran binary: a
# format zran does not serve yet is reported as "failed" with its error, and the rest go on.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
bash testimages/build.sh >/dev/null
if [ -n "${ZRAN_BIN:-}" ]; then   # a zran already built (e.g. target/debug/zran, to try the script)
    zran=$(realpath "$ZRAN_BIN")
else
    cargo build --release --locked -q
    zran=$PWD/target/release/zran
fi
layouts=$PWD/target/testimages/layouts
WORK=$PWD/benches/work/zstd_formats
rm -rf "$WORK"
mkdir -p "$WORK"

regdir="$WORK/registry"
port=$(bash testimages/registry.sh start "$regdir" plain | tail -1)
cleanup() {
    for m in "$WORK"/m-*; do mountpoint -q "$m" 2>/dev/null && umount -l "$m"; done
    bash testimages/registry.sh stop "$regdir"
}
trap cleanup EXIT
bash testimages/registry.sh push "$regdir" "$layouts" >/dev/null 2>&1
host=127.0.0.1:$port

IMAGES="python python-estargz python-zstdchunked python-zstdchunked-v2 python-estargz-zstd python-zstd python-zstd-frames python-tar"
toc_format() { case $1 in *estargz* | *zstdchunked*) return 0 ;; *) return 1 ;; esac; }
now() { date +%s.%N; }
ms() { python3 -c "print(f'{1e3*($2-$1):.0f}')"; }
size_of() {   # the layers' total size in the layout
    python3 - "$layouts/$1" <<'PY'
import json, os, sys
lay = sys.argv[1]
def blob(d): return os.path.join(lay, "blobs", *d.split(":"))
[m] = json.load(open(os.path.join(lay, "index.json")))["manifests"]
print(sum(l["size"] for l in json.load(open(blob(m["digest"])))["layers"]))
PY
}

echo "== 1. zran inspect --files (from the registry)"
printf '   %-22s %10s %12s %12s\n' image ms fetched layers
for n in $IMAGES; do
    t0=$(now)
    if "$zran" inspect "$host/$n" --files --json > "$WORK/$n.files.json" 2> "$WORK/$n.files.err"; then
        t1=$(now)
        f=$(python3 -c "import json; print(json.load(open('$WORK/$n.files.json'))['bytes_fetched'])")
        printf '   %-22s %10s %12s %12s\n' "$n" "$(ms "$t0" "$t1")" "$f" "$(size_of "$n")"
    else
        printf '   %-22s failed: %s\n' "$n" "$(tail -1 "$WORK/$n.files.err")"
    fi
done

echo "== 2. python3 -c 'import json, email, http.client, sqlite3' from zran mount (no prefetch)"
printf '   %-22s %-9s %10s %12s %12s %9s\n' image source ms fetched image_size requests
for n in $IMAGES; do
    m=$WORK/m-$n c=$WORK/c-$n
    mkdir -p "$m"
    if toc_format "$n"; then
        kind=toc src=("$host/$n")
    else
        kind=artifact
        if ! "$zran" generate "$host/$n" -o "$WORK/$n.art" > /dev/null 2> "$WORK/$n.gen.err"; then
            printf '   %-22s failed: %s\n' "$n" "$(tail -1 "$WORK/$n.gen.err")"
            continue
        fi
        src=("$WORK/$n.art" --image "$host/$n")
    fi
    t0=$(now)
    if ! "$zran" mount "${src[@]}" "$m" --cache-dir "$c" --no-prefetch 2> "$WORK/$n.mount.err"; then
        printf '   %-22s failed: %s\n' "$n" "$(tail -1 "$WORK/$n.mount.err")"
        continue
    fi
    ok=1
    chroot "$m" /usr/bin/python3.11 -c 'import json, email, http.client, sqlite3' || ok=0
    t1=$(now)
    "$zran" umount "$m" --cache-dir "$c"
    "$zran" stats "$m" --cache-dir "$c" > "$WORK/$n.stats.json"   # the final counters
    [ $ok = 1 ] || { printf '   %-22s failed: the workload failed\n' "$n"; continue; }
    python3 - "$WORK/$n.stats.json" "$n" "$kind" "$(ms "$t0" "$t1")" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); s = r["stats"]
print(f"   {sys.argv[2]:<22} {sys.argv[3]:<9} {sys.argv[4]:>10} {s['bytes_fetched']:>12} {r['image_size']:>12} {s['requests']:>9}")
PY
done
