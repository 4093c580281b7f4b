#!/usr/bin/env bash
# zstd:chunked mounted from its TOCs against the same image as eStargz (from its TOCs) and as
# gzip (the zran artifact), same run, from a registry on loopback (run as root): for each, a
# cold mount (own cache, --no-prefetch), then `python3 -c 'import json, email, http.client,
# sqlite3'` in a chroot of it: time to live mount, time of the start, bytes fetched and requests
# (zran's counters), against the image's size.
# Usage: bash benches/zstd_toc.sh [zran binary]     (writes under benches/work/, gitignored)
set -euo pipefail
cd "$(dirname "$0")/.."
bash testimages/build.sh >/dev/null
zran=${1:-$PWD/target/release/zran}
[ -x "$zran" ] || cargo build --release --locked -q
layouts=$PWD/target/testimages/layouts
WORK=$PWD/benches/work/zstd_toc
rm -rf "$WORK"
mkdir -p "$WORK/layouts"
skopeo copy -q --dest-compress-format zstd:chunked "oci:$layouts/python:latest" "oci:$WORK/layouts/python-zc:latest"
regdir="$WORK/registry"
port=$(bash testimages/registry.sh start "$regdir" plain | tail -1)
trap 'umount -l "$WORK"/m-* 2>/dev/null || true; bash testimages/registry.sh stop "$regdir"' EXIT
bash testimages/registry.sh push "$regdir" "$layouts" >/dev/null 2>&1
bash testimages/registry.sh push "$regdir" "$WORK/layouts" >/dev/null 2>&1
host=127.0.0.1:$port
"$zran" generate "$host/python" -o "$WORK/art" >/dev/null
now() { date +%s.%N; }
ms() { python3 -c "print(f'{1e3*($2-$1):.0f}')"; }
for run in 1 2 3; do
    for kind in gzip-artifact estargz zstd-chunked; do
        case $kind in
            gzip-artifact) src=("$WORK/art" --image "$host/python") ;;
            estargz) src=("$host/python-estargz") ;;
            zstd-chunked) src=("$host/python-zc") ;;
        esac
        m=$WORK/m-$kind; c=$WORK/c-$kind-$run
        mkdir -p "$m"
        t0=$(now); "$zran" mount "${src[@]}" "$m" --cache-dir "$c" --no-prefetch; t1=$(now)
        chroot "$m" /usr/bin/python3.11 -c 'import json, email, http.client, sqlite3' ; t2=$(now)
        "$zran" umount "$m" --cache-dir "$c"
        "$zran" stats "$m" --cache-dir "$c" > "$WORK/$kind-$run.json"
        python3 - "$WORK/$kind-$run.json" "$kind" "$run" "$(ms $t0 $t1)" "$(ms $t1 $t2)" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); s = r["stats"]
print(f"run {sys.argv[3]} {sys.argv[2]:14} mount {sys.argv[4]:>5} ms  start {sys.argv[5]:>5} ms  "
      f"fetched {s['bytes_fetched']:>9} of {r['image_size']} bytes ({100*s['bytes_fetched']/r['image_size']:.1f}%) "
      f"in {s['requests']} requests; files read {s['file_bytes_read']} bytes")
PY
    done
done
