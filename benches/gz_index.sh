#!/usr/bin/env bash
# Whole-command benchmark of gzip index building and random 4 KiB reads.
#
#   bash benches/gz_index.sh            (from anywhere; takes a few minutes)
#
# Environment: RUNS (timed runs per command, default 3), ZRAN_BENCH_READS (default 1000),
# ZRAN_BENCH_SEED (default 0x5eed).
#
# 1. Installs what is missing: apt pigz gztool hyperfine; a venv at benches/work/venv with
#    rapidgzip and indexed_gzip from PyPI.
# 2. Builds zran (cargo build --release) and the extract_latency bench.
# 3. Makes benches/work/usr.tar.gz once: the first 700,000,000 bytes of a tar of /usr, gzip -6.
# 4. Table 1: index build (and plain decompression) by every tool, hot cache, hyperfine with one
#    warm-up run and RUNS timed runs; best (minimum) and median wall-clock are reported, MB/s and
#    the ratio to pigz are from the best.
# 5. Table 2: zran at spans 512K..8M: index size and build speed (best of RUNS), and random 4 KiB
#    read latency from benches/extract_latency.rs.
#
# Everything it writes goes under benches/work/ (gitignored). Tables go to stdout and to
# benches/work/results-<time>.md.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$ROOT/benches/work
TMP=$WORK/tmp
INPUT=$WORK/usr.tar.gz
UNCOMP=700000000
RUNS=${RUNS:-3}
READS=${ZRAN_BENCH_READS:-1000}
SEED=${ZRAN_BENCH_SEED:-0x5eed}
SPANS=(512K 1M 2M 4M 8M)
mkdir -p "$WORK" "$TMP"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$WORK/results-$STAMP.md

log() { printf '== %s\n' "$*" >&2; }

# ---- 1. tools -------------------------------------------------------------------------------
missing=()
for c in pigz gztool hyperfine; do
    command -v "$c" >/dev/null || missing+=("$c")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi
VENV=$WORK/venv
PY=$VENV/bin/python
if [[ ! -x $PY ]]; then
    log "creating $VENV"
    /usr/bin/python3 -m venv "$VENV"
fi
if ! "$PY" -c 'import rapidgzip, indexed_gzip' 2>/dev/null; then
    log "pip install rapidgzip indexed_gzip"
    "$VENV/bin/pip" install rapidgzip indexed_gzip
fi
RAPIDGZIP=$VENV/bin/rapidgzip

# ---- 2. build -------------------------------------------------------------------------------
log "cargo build --release"
cargo build --release
ZRAN=$ROOT/target/release/zran
log "building the extract_latency bench"
LATENCY_BIN=$(cargo bench --no-run --bench extract_latency --message-format=json-render-diagnostics |
    "$PY" -c '
import json, sys
exe = None
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "extract_latency" and m.get("executable"):
        exe = m["executable"]
print(exe or "")
')
[[ -x $LATENCY_BIN ]] || { echo "cannot find the extract_latency executable" >&2; exit 1; }

# ---- 3. input -------------------------------------------------------------------------------
if [[ ! -s $INPUT ]]; then
    log "making $INPUT (tar of /usr, first $UNCOMP bytes, gzip -6)"
    # tar dies of SIGPIPE when head has enough; that is expected.
    { tar cf - -C / usr 2>/dev/null || true; } | head -c "$UNCOMP" | gzip -6 >"$INPUT.tmp"
    mv "$INPUT.tmp" "$INPUT"
fi
GZ_SIZE=$(stat -c %s "$INPUT")
cat "$INPUT" >/dev/null # hot cache

{
    echo "# gz_index.sh run $STAMP"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
    echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- zran: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ' (src or Cargo.toml modified)'), $(rustc --version)"
    echo "- tools: $(gzip --version | head -n1), pigz $(pigz --version 2>&1 | awk '{print $2}'), gztool $(dpkg-query -W -f '${Version}' gztool), rapidgzip $("$PY" -c 'import rapidgzip; print(rapidgzip.__version__)'), indexed_gzip $("$PY" -c 'import indexed_gzip; print(indexed_gzip.__version__)'), $(hyperfine --version)"
    echo "- input: $INPUT, $GZ_SIZE bytes of gzip, $UNCOMP bytes uncompressed (ratio $(awk "BEGIN {printf \"%.2f\", $UNCOMP/$GZ_SIZE}"))"
    echo
} | tee "$OUT"

# ---- 4. index build, every tool -------------------------------------------------------------
cat >"$WORK/ig_build.py" <<'EOF'
import sys
import indexed_gzip

f = indexed_gzip.IndexedGzipFile(sys.argv[1])
f.build_full_index()
f.close()
EOF

# name | command | prepare
BENCH=(
    "gzip -dc (decompress only)|gzip -dc $INPUT >/dev/null|"
    "pigz -dc (decompress only)|pigz -dc $INPUT >/dev/null|"
    "gztool -i (span 10 MiB)|gztool -I $TMP/gt.gzi -i $INPUT|rm -f $TMP/gt.gzi"
    "indexed_gzip build_full_index (span 1 MiB)|$PY $WORK/ig_build.py $INPUT|"
    "rapidgzip --export-index -P 1|$RAPIDGZIP --export-index $TMP/rg1.idx -P 1 $INPUT|rm -f $TMP/rg1.idx"
    "rapidgzip --export-index -P 2|$RAPIDGZIP --export-index $TMP/rg2.idx -P 2 $INPUT|rm -f $TMP/rg2.idx"
    "zran gz index -j 1 (one core decodes)|$ZRAN gz index -j 1 $INPUT -o $TMP/zran-j1.zidx|rm -f $TMP/zran-j1.zidx"
    "zran gz index (default span)|$ZRAN gz index $INPUT -o $TMP/zran-default.zidx|rm -f $TMP/zran-default.zidx"
    "zran gz index --span 2M|$ZRAN gz index --span 2M $INPUT -o $TMP/zran-2M.zidx|rm -f $TMP/zran-2M.zidx"
)
i=0
for entry in "${BENCH[@]}"; do
    IFS='|' read -r name cmd prep <<<"$entry"
    log "timing: $name"
    args=(--warmup 1 --runs "$RUNS" --style basic --export-json "$TMP/hf-$i.json" --command-name "$name")
    [[ -n $prep ]] && args+=(--prepare "$prep")
    hyperfine "${args[@]}" "$cmd" >&2
    i=$((i + 1))
done

# Index sizes of the peers (from the last run of each).
SIZES="gztool=$(stat -c %s "$TMP/gt.gzi"),rapidgzip=$(stat -c %s "$TMP/rg1.idx"),zran-default=$(stat -c %s "$TMP/zran-default.zidx"),zran-2M=$(stat -c %s "$TMP/zran-2M.zidx")"

"$PY" - "$TMP" "$i" "$UNCOMP" "$GZ_SIZE" "$RUNS" "$SIZES" <<'EOF' | tee -a "$OUT"
import json, statistics, sys
tmp, n, uncomp, gz, runs, sizes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
rows = []
for i in range(n):
    r = json.load(open(f"{tmp}/hf-{i}.json"))["results"][0]
    rows.append((r["command"], min(r["times"]), statistics.median(r["times"]), r["user"] + r["system"]))
pigz = next(row[1] for row in rows if row[0].startswith("pigz"))
print(f"## Index build, hot cache, best of {runs} (after 1 warm-up run)\n")
print("| tool | best s | median s | MB/s uncompressed (best) | speed vs pigz -dc | CPU s (user+sys, mean) |")
print("|---|---:|---:|---:|---:|---:|")
for name, best, med, cpu in rows:
    print(f"| {name} | {best:.2f} | {med:.2f} | {uncomp / 1e6 / best:.0f} | {pigz / best:.2f}x | {cpu:.2f} |")
print()
print(f"Wall-clock. MB/s = {uncomp:,} uncompressed bytes / best seconds; speed vs pigz = pigz best s / tool best s.")
print("Index sizes (bytes, % of the .gz): " + ", ".join(
    f"{k} {int(v):,} ({100 * int(v) / gz:.2f}%)" for k, v in (kv.split("=") for kv in sizes.split(","))))
print()
EOF

# ---- 5. spans -------------------------------------------------------------------------------
: >"$TMP/spans.jsonl"
for S in "${SPANS[@]}"; do
    IDX=$WORK/usr.tar.gz.$S.zidx
    best=""
    for ((r = 0; r < RUNS; r++)); do
        log "zran gz index --span $S (run $((r + 1))/$RUNS)"
        "$ZRAN" gz index --span "$S" --json "$INPUT" -o "$IDX" >"$TMP/span-$S-$r.json"
    done
    log "random reads at span $S"
    lat=$(ZRAN_BENCH_FILE=$INPUT ZRAN_BENCH_INDEX=$IDX ZRAN_BENCH_READS=$READS ZRAN_BENCH_SEED=$SEED "$LATENCY_BIN")
    "$PY" - "$S" "$TMP" "$RUNS" "$lat" >>"$TMP/spans.jsonl" <<'EOF'
import json, sys
s, tmp, runs, lat = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
builds = [json.load(open(f"{tmp}/span-{s}-{r}.json")) for r in range(runs)]
print(json.dumps({"span_arg": s, "builds": builds, "latency": lat}))
EOF
done

"$PY" - "$TMP/spans.jsonl" "$UNCOMP" "$RUNS" "$READS" "$SEED" <<'EOF' | tee -a "$OUT"
import json, sys
path, uncomp, runs, reads, seed = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
print(f"## zran by span: index size, build speed (best of {runs}), {reads} random 4 KiB reads (seed {seed})\n")
print("| span | checkpoints | index bytes | index % of .gz | build s | build MB/s | read p50 ms | p90 ms | p99 ms | mean ms | flate2 full span ms (p50) | p50 / full span |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for line in open(path):
    d = json.loads(line)
    b = min(d["builds"], key=lambda x: x["seconds"])
    for x in d["builds"]:
        assert x["uncompressed_size"] == uncomp, f"uncompressed size {x['uncompressed_size']} != {uncomp}"
        assert x["checkpoints"] == b["checkpoints"] and x["index_size"] == b["index_size"], "builds differ"
    l = d["latency"]
    print(f"| {d['span_arg']} | {b['checkpoints']} | {b['index_size']:,} | {100 * b['index_ratio']:.2f}% "
          f"| {b['seconds']:.2f} | {b['mb_per_sec_uncompressed']:.0f} "
          f"| {l['p50_ms']:.2f} | {l['p90_ms']:.2f} | {l['p99_ms']:.2f} | {l['mean_ms']:.2f} "
          f"| {l['baseline_span_ms_p50']:.2f} | {l['p50_over_baseline_p50']:.2f} |")
print()
print("build s and MB/s are zran's own timing of the pass (--json; the index write is excluded).")
print("Reads: Extractor::read_at on the local file, index loaded once, after 10 untimed warm-up reads.")
print("Full span: flate2 (miniz_oxide) MultiGzDecoder inflating `span` bytes from offset 0, p50 of 20.")
EOF
echo "- load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT"
cp "$TMP/spans.jsonl" "$WORK/spans-$STAMP.jsonl"
log "written $OUT"
