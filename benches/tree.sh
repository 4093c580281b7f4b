#!/usr/bin/env bash
# Tree building figures: `zran inspect --files` on the python test image (every layer streamed
# once: inflate, CRC, checkpoints and tar parsing together) against `tar -tzf` of the same
# layers (inflate and list only), and on its eStargz variant (footer and TOC only) against
# `skopeo inspect` and the bytes the layers hold. Best of 5, hot cache.
# Usage: bash benches/tree.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash testimages/build.sh >/dev/null
cargo build --release --locked -q
zran=target/release/zran
layouts=target/testimages/layouts

best() {  # best wall-clock seconds of 5 runs of "$@"
    python3 - "$@" <<'PY'
import subprocess, sys, time
best = min((lambda t: (subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True), time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(5))
print(f"{best:.4f}")
PY
}

layers=$(python3 - "$layouts/python" <<'PY'
import json, sys
root = sys.argv[1]
index = json.load(open(f"{root}/index.json"))
m = json.load(open(f"{root}/blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]))
print(" ".join(f"{root}/blobs/sha256/" + l["digest"].split(":")[1] for l in m["layers"]))
PY
)
tar_s=$(best bash -c "for l in $layers; do tar -tzf \$l > /dev/null; done")
zran_s=$(best "$zran" inspect --files "oci:$layouts/python")
bytes=$(du -cb $layers | tail -1 | cut -f1)
echo "| plain python image ($bytes bytes of layers) | seconds | vs tar -tzf |"
echo "|---|---:|---:|"
echo "| tar -tzf, each layer | $tar_s | 1.00x |"
echo "| zran inspect --files (index + tree in one pass) | $zran_s | $(python3 -c "print(f'{$tar_s/$zran_s:.2f}')")x |"
echo
esgz_bytes=$(python3 - "$layouts/python-estargz" <<'PY'
import json, sys
root = sys.argv[1]
index = json.load(open(f"{root}/index.json"))
m = json.load(open(f"{root}/blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]))
print(sum(l["size"] for l in m["layers"]))
PY
)
fetched=$("$zran" inspect --files --json "oci:$layouts/python-estargz" | python3 -c "import json,sys; print(json.load(sys.stdin)['bytes_fetched'])")
esgz_s=$(best "$zran" inspect --files "oci:$layouts/python-estargz")
skopeo_s=$(best skopeo inspect "oci:$layouts/python-estargz")
echo "| eStargz python image ($esgz_bytes bytes of layers) | seconds | bytes fetched | share of the layers |"
echo "|---|---:|---:|---:|"
echo "| zran inspect --files | $esgz_s | $fetched | $(python3 -c "print(f'{100*$fetched/$esgz_bytes:.2f}%')") |"
echo "| skopeo inspect (manifest and config only, no files) | $skopeo_s | | |"
