#!/usr/bin/env bash
# What member checkpoints and member ends cost `zran generate`: a checkpoint at the start of
# every gzip member, and the second decode of each member's final block that finds where its
# data ends (so that Nydus 2.2's decoder reads contexts that end there). Measured beside the
# same command of zran built from BASE (default: the last commit without them), in the same
# run: generate time (best of 5, hot cache), zran contexts, contexts Nydus 2.2 cannot decode,
# and the artifact as pushed (image.boot + blob.meta files, tar | gzip -9).
# Usage: bash benches/member_ends.sh [BASE]     (writes under benches/work/, gitignored)
set -euo pipefail
cd "$(dirname "$0")/.."
base_commit=${1:-345b1f2}
bash scripts/setup.sh >/dev/null
bash testimages/build.sh >/dev/null
WORK=$PWD/benches/work/member_ends
mkdir -p "$WORK"

# The baseline binary, built from BASE in a worktree with its own target directory (the first
# run builds every dependency there once).
if [ ! -x "$WORK/zran-base" ] || [ "$(cat "$WORK/base-commit" 2>/dev/null)" != "$base_commit" ]; then
    rm -rf "$WORK/base"
    git worktree add --detach "$WORK/base" "$base_commit" >/dev/null 2>&1
    (cd "$WORK/base" && CARGO_TARGET_DIR="$WORK/target" cargo build --release --locked -q)
    cp "$WORK/target/release/zran" "$WORK/zran-base"
    git worktree remove --force "$WORK/base"
    echo "$base_commit" > "$WORK/base-commit"
fi
cargo build --release --locked -q
zran=$PWD/target/release/zran
layouts=$PWD/target/testimages/layouts

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

stats() {  # contexts, contexts past a member's end, bytes as pushed
    local art=$1
    python3 - "$art/zran.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(sum(l["checkpoints"] for l in d["layers"]), sum(l.get("contexts_past_member_end", 0) for l in d["layers"]), end=" ")
PY
    tar -C "$art" -c image.boot $(cd "$art" && ls ./*.blob.meta 2>/dev/null) | gzip -9 | wc -c
}

echo "| image | members | generate s (base -> now, ratio) | contexts (base -> now) | Nydus 2.2 cannot decode (now) | artifact bytes as pushed (base -> now, ratio) |"
echo "|---|---:|---:|---:|---:|---:|"
for case in "python" "edge" "python-estargz --ignore-toc" "edge-estargz --ignore-toc"; do
    read -r name opt <<<"$case"
    src="oci:$layouts/$name"
    members=$(python3 - "$layouts/$name" <<'PY'
import json, sys, zlib
root = sys.argv[1]
index = json.load(open(f"{root}/index.json"))
m = json.load(open(f"{root}/blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]))
n = 0
for l in m["layers"]:
    data = open(f"{root}/blobs/sha256/" + l["digest"].split(":")[1], "rb").read()
    while data[:2] == b"\x1f\x8b":
        d = zlib.decompressobj(31)
        d.decompress(data)
        data = d.unused_data
        n += 1
print(n)
PY
)
    t_base=$(best "$WORK/zran-base" generate "$src" -o "$WORK/base-art" --force $opt)
    t_now=$(best "$zran" generate "$src" -o "$WORK/now-art" --force $opt)
    read -r c_base _ b_base <<<"$(stats "$WORK/base-art")"
    read -r c_now past b_now <<<"$(stats "$WORK/now-art")"
    echo "| $name $opt | $members | $t_base -> $t_now ($(python3 -c "print(f'{$t_now/$t_base:.2f}')")x) | $c_base -> $c_now | $past | $b_base -> $b_now ($(python3 -c "print(f'{$b_now/$b_base:.2f}')")x) |"
done
