#!/usr/bin/env bash
# The index pass decoding on two cores (`zran gz index`, speculative chunks) against the same
# pass on one (`-j 1`) and rapidgzip -P 2, runs interleaved, hot cache: on the gzip -6 tar of
# /usr from benches/gz_index.sh and on the pigz -6 layer of the 1 GiB image from
# benches/generate.sh (run those once first: they make the inputs and rapidgzip's venv).
# Also `zran generate` of that image, which keeps one core decoding (its second core hashes).
# Usage: bash benches/speculate.sh [RUNS]   (prints a markdown table)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-7}
zran=$PWD/target/release/zran
rg=$PWD/benches/work/venv/bin/rapidgzip
usr=$PWD/benches/work/usr.tar.gz
big=$PWD/benches/work/generate/big
for f in "$zran" "$rg" "$usr" "$big/index.json"; do
    [[ -e $f ]] || { echo "missing $f (cargo build --release; benches/gz_index.sh; benches/generate.sh)" >&2; exit 1; }
done
layer=$(python3 - "$big" <<'PY'
import json, sys
r = sys.argv[1]
i = json.load(open(f"{r}/index.json"))
m = json.load(open(f"{r}/blobs/sha256/" + i["manifests"][0]["digest"].split(":")[1]))
print(f"{r}/blobs/sha256/" + m["layers"][0]["digest"].split(":")[1])
PY
)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$zran" "$rg" "$usr" "$layer" "$big" "$tmp" "$runs" <<'PY'
import os, resource, statistics, subprocess, sys, time
zran, rg, usr, layer, big, tmp, runs = sys.argv[1:8]
inputs = {"usr.tar.gz (gzip -6)": usr, "1 GiB layer (pigz -6)": layer}
def cmds(f):
    return {
        "zran gz index (2 cores)": [zran, "gz", "index", f, "-o", f"{tmp}/z.zidx"],
        "zran gz index -j 1": [zran, "gz", "index", "-j", "1", f, "-o", f"{tmp}/z1.zidx"],
        "rapidgzip --export-index -P 2": [rg, "--export-index", f"{tmp}/rg.idx", "-P", "2", "-f", f],
    }
rows = []
for name, f in inputs.items():
    c = cmds(f)
    if f == layer:
        c["zran generate (whole image)"] = [zran, "generate", f"oci:{big}", "-o", f"{tmp}/art", "--force"]
    times = {k: [] for k in c}
    cpu = {k: [] for k in c}
    for k, cmd in c.items():  # warm-up
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    for _ in range(int(runs)):
        for k, cmd in c.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            times[k].append(time.perf_counter() - t)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[k].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    base = min(times["rapidgzip --export-index -P 2"])
    base_med = statistics.median(times["rapidgzip --export-index -P 2"])
    for k in c:
        b, m = min(times[k]), statistics.median(times[k])
        rows.append(f"| {name} | {k} | {b:.3f} | {m:.3f} | {statistics.mean(cpu[k]):.2f} | {base / b:.2f}x | {base_med / m:.2f}x |")
print(f"{runs} interleaved runs after one warm-up; speed vs rapidgzip -P 2 = its time / this time.")
print()
print("| input | command | best s | median s | CPU s (mean) | vs rapidgzip -P 2 (best) | (median) |")
print("|---|---|---:|---:|---:|---:|---:|")
print("\n".join(rows))
PY
echo
echo "- load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
