#!/usr/bin/env bash
# Build the test images as OCI image layouts, with no network:
#
#   testimages/build.sh [OUT]        (default OUT=$REPO/target/testimages)
#
# makes OUT/layouts/{python,edge,multi,tarquirks,paths,umoci-insert,python-estargz,
# edge-estargz} and the zstd and uncompressed forms of python and edge (README.md:
# python-zstdchunked, python-zstd, python-zstd-frames, python-tar, ...), each tagged "latest", and their truth trees (truth.py) OUT/truth/<name>.json
# plus multi-arm64.json (multi.json is linux/amd64; the eStargz ones leave out the eStargz TOC
# and landmark files, and must equal the plain ones).
# Cached: OUT/stamp records the sha256 of every file in testimages/ and the versions of the
# Debian packages the images are made from; when it matches and every layout is there, this
# does nothing. Deterministic: the same files and packages give byte-identical blobs.
#
# Steps: mkpython.py and mkedge.py (in parallel), mkmulti.py, mkquirks.py (tarquirks, paths)
# and mkumoci.sh (umoci-insert, made by umoci itself) write the plain layouts; the
# python image is unpacked with umoci and `chroot ROOTFS /usr/bin/python3.11 -c 'import json'`
# must work; then a private registry (registry.sh, plain mode) and a private containerd (root,
# state and sockets under OUT/work, CRI disabled) convert python and edge to eStargz with
# `ctr-remote image convert --estargz --oci` (default gzip level 9, 4 MiB chunks), push them,
# and skopeo copies them back into OCI layouts; the same containerd imports the paths image
# with its overlayfs snapshotter, and the image's top snapshot, mounted read-only, is walked
# (truth.py --walk): the paths truth is what containerd's overlayfs snapshotter shows, where
# umoci differs (a lower layer's symlink below an entry); both daemons are stopped. Finally
# every blob of every layout is checked against its digest, and every layer of the eStargz
# manifests must carry the containerd.io/snapshot/stargz/toc.digest annotation.
#
# ZRAN_TESTIMAGES_NO_ESTARGZ=1 skips the eStargz images and containerd (for machines without
# it); the paths truth is then truth.py's model of containerd's overlayfs snapshotter.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
OUT=${1:-$REPO/target/testimages}
PY=/usr/bin/python3
export PYTHONDONTWRITEBYTECODE=1   # no __pycache__ in testimages/ (it would change the stamp)
DEB_PACKAGES="busybox-static python3.11 python3.11-minimal libpython3.11-stdlib libpython3.11-minimal libc6 libssl3 libffi8 libsqlite3-0 zlib1g containerd stargz-snapshotter skopeo umoci zstd python3-zstandard"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ZSTD_IMAGES="python-zstdchunked edge-zstdchunked python-zstd python-zstd-frames python-tar python-zstdchunked-v2 edge-zstdchunked-v2"
IMAGES="python edge multi tarquirks paths umoci-insert $ZSTD_IMAGES"
[ "${ZRAN_TESTIMAGES_NO_ESTARGZ:-}" = 1 ] \
    || IMAGES="$IMAGES python-estargz edge-estargz python-estargz-zstd edge-estargz-zstd"

log() { printf '[build.sh %5.1fs] %s\n' "$(( $(date +%s%N) - T0 ))e-9" "$*" >&2; }
T0=$(date +%s%N)

stamp_now() {
    {
        (cd "$HERE" && find . -type f ! -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z \
            | xargs -0 sha256sum)
        # shellcheck disable=SC2086
        dpkg-query -W -f '${Package} ${Version}\n' $DEB_PACKAGES 2>/dev/null || true
        echo "images: $IMAGES"
    } | sha256sum | cut -d' ' -f1
}

up_to_date() {
    local n
    [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$(stamp_now)" ] || return 1
    for n in $IMAGES; do
        [ -f "$OUT/layouts/$n/index.json" ] && [ -f "$OUT/truth/$n.json" ] || return 1
    done
}

exec 9> "$OUT/.lock"
flock 9   # one build at a time per OUT
if up_to_date; then
    log "up to date: $OUT/layouts ($IMAGES)"
    exit 0
fi

for tool in umoci skopeo docker-registry pzstd; do
    command -v $tool > /dev/null || { echo "build.sh: $tool missing: apt-get install \$(cat $HERE/apt-packages.txt)" >&2; exit 1; }
done
[ -x "$PY" ] || { echo "build.sh: $PY missing (apt-get install python3)" >&2; exit 1; }
"$PY" -c 'import zstandard' 2> /dev/null \
    || { echo "build.sh: python3-zstandard missing: apt-get install python3-zstandard" >&2; exit 1; }

NEW="$OUT/layouts.new"
WORK="$OUT/work"
WALKS="$OUT/overlayfs-walks"   # listings of images as containerd's overlayfs snapshotter shows them
rm -rf "$NEW" "$WORK" "$WALKS" "$OUT/stamp"
mkdir -p "$NEW" "$WORK" "$WALKS"

CTD_PID=""
SOCKDIR=""
MOUNTED=""
ctd_alive() {   # the containerd this script started is still running
    [ -n "$CTD_PID" ] && [ -r "/proc/$CTD_PID/cmdline" ] \
        && { tr '\0' ' ' < "/proc/$CTD_PID/cmdline"; } 2>/dev/null | grep -q '^containerd '
}
cleanup() {
    if [ -n "$MOUNTED" ]; then umount "$MOUNTED" || true; MOUNTED=""; fi
    if ctd_alive; then
        kill "$CTD_PID" 2>/dev/null || true
        for _ in $(seq 100); do ctd_alive || break; sleep 0.1; done
        if ctd_alive; then kill -9 "$CTD_PID" 2>/dev/null || true; fi
    fi
    CTD_PID=""
    [ -z "$SOCKDIR" ] || rm -rf "$SOCKDIR"
    bash "$HERE/registry.sh" stop "$WORK/registry" 2>/dev/null || true
}
trap cleanup EXIT

# -- 1. the plain layouts -------------------------------------------------------------------
log "python, edge, multi, tarquirks, paths, umoci-insert"
"$PY" "$HERE/mkpython.py" "$NEW/python" & p1=$!
"$PY" "$HERE/mkedge.py" "$NEW/edge" & p2=$!
"$PY" "$HERE/mkmulti.py" "$NEW/multi"
"$PY" "$HERE/mkquirks.py" tarquirks "$NEW/tarquirks"
"$PY" "$HERE/mkquirks.py" paths "$NEW/paths"
bash "$HERE/mkumoci.sh" "$NEW/umoci-insert" > "$WORK/mkumoci.log" 2>&1 \
    || { cat "$WORK/mkumoci.log" >&2; echo "build.sh: mkumoci.sh failed" >&2; exit 1; }
wait $p1
wait $p2

# -- 1b. zstd and uncompressed forms of python and edge ------------------------------------------
log "zstd:chunked (skopeo, and v2 by mkzstdchunked.py), plain zstd (skopeo, pzstd), uncompressed"
printf '{"default":[{"type":"insecureAcceptAnything"}]}\n' > "$WORK/policy.json"
for n in python edge; do
    skopeo --policy "$WORK/policy.json" copy -q --dest-compress-format zstd:chunked \
        "oci:$NEW/$n:latest" "oci:$NEW/$n-zstdchunked:latest"
done
skopeo --policy "$WORK/policy.json" copy -q --dest-compress-format zstd \
    "oci:$NEW/python:latest" "oci:$NEW/python-zstd:latest"
"$PY" "$HERE/mkrecompress.py" pzstd "$NEW/python" "$NEW/python-zstd-frames"
"$PY" "$HERE/mkrecompress.py" tar "$NEW/python" "$NEW/python-tar"
"$PY" "$HERE/mkzstdchunked.py" "$NEW/python" "$NEW/python-zstdchunked-v2"
"$PY" "$HERE/mkzstdchunked.py" "$NEW/edge" "$NEW/edge-zstdchunked-v2"

# -- 2. the python image must run -------------------------------------------------------------
log "chroot test of python"
rm -rf "$WORK/python-rootfs"
umoci raw unpack --image "$NEW/python:latest" "$WORK/python-rootfs" 2> "$WORK/umoci.log"
got=$(chroot "$WORK/python-rootfs" /usr/bin/python3.11 -c \
    'import json, os, ssl, sqlite3, ctypes, lzma, bz2, zlib, decimal; print(json.dumps({"ok": os.getcwd()}))')
[ "$got" = '{"ok": "/"}' ] || { echo "build.sh: python chroot test printed: $got" >&2; exit 1; }
chroot "$WORK/python-rootfs" /bin/sh -c 'ls /bin/ls > /dev/null && echo ok' > /dev/null
rm -rf "$WORK/python-rootfs"

# -- 3. eStargz, through a private registry and containerd -------------------------------------
if [ "${ZRAN_TESTIMAGES_NO_ESTARGZ:-}" != 1 ]; then
    for tool in containerd ctr ctr-remote; do
        command -v $tool > /dev/null || { echo "build.sh: $tool missing: apt-get install containerd stargz-snapshotter" >&2; exit 1; }
    done
    log "registry and containerd"
    port=$(bash "$HERE/registry.sh" start "$WORK/registry" plain)
    REG=127.0.0.1:$port
    C="$WORK/containerd"
    mkdir -p "$C/root" "$C/state"
    SOCK="$C/containerd.sock"
    if [ ${#SOCK} -gt 100 ]; then   # unix socket paths are limited to 108 bytes
        SOCKDIR=$(mktemp -d /tmp/zran-ctd.XXXXXX)
        SOCK=$SOCKDIR/containerd.sock
    fi
    cat > "$C/config.toml" <<EOF
version = 2
root = "$C/root"
state = "$C/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
EOF
    nohup containerd --config "$C/config.toml" > "$C/containerd.log" 2>&1 < /dev/null &
    CTD_PID=$!
    for _ in $(seq 100); do ctr -a "$SOCK" version > /dev/null 2>&1 && break; sleep 0.1; done
    ctr -a "$SOCK" version > /dev/null

    convert() {   # NAME
        local n=$1
        skopeo --policy "$WORK/policy.json" copy -q --preserve-digests --dest-tls-verify=false \
            "oci:$NEW/$n:latest" "docker://$REG/$n:latest"
        ctr -a "$SOCK" content fetch --plain-http "$REG/$n:latest" > /dev/null
        ctr-remote -a "$SOCK" image convert --estargz --oci "$REG/$n:latest" "$REG/$n:estargz" \
            > /dev/null
        ctr -a "$SOCK" images push --plain-http "$REG/$n:estargz" > /dev/null
        skopeo --policy "$WORK/policy.json" copy -q --preserve-digests --src-tls-verify=false \
            "docker://$REG/$n:estargz" "oci:$NEW/$n-estargz:latest"
        # the eStargz TOC in zstd frames (stargz-snapshotter's zstd:chunked)
        ctr-remote -a "$SOCK" image convert --zstdchunked --oci "$REG/$n:latest" \
            "$REG/$n:estargz-zstd" > /dev/null
        ctr -a "$SOCK" images push --plain-http "$REG/$n:estargz-zstd" > /dev/null
        skopeo --policy "$WORK/policy.json" copy -q --preserve-digests --src-tls-verify=false \
            "docker://$REG/$n:estargz-zstd" "oci:$NEW/$n-estargz-zstd:latest"
    }
    overlayfs_walk() {   # NAME: the image as containerd's overlayfs snapshotter shows it
        local n=$1 top opts mnt
        mnt=$WORK/$n-overlayfs
        tar -C "$NEW/$n" -cf "$WORK/$n.tar" .
        date +%s > "$WALKS/$n.applied-since"   # directories made or written from now on
        ctr -a "$SOCK" images import --base-name "$n" --snapshotter overlayfs "$WORK/$n.tar" \
            > /dev/null
        top=$("$PY" - "$NEW/$n" <<'PY'
import hashlib, json, os, sys
lay = sys.argv[1]
def blob(d): return json.load(open(os.path.join(lay, "blobs", *d.split(":"))))
[m] = json.load(open(os.path.join(lay, "index.json")))["manifests"]
chain = None
for d in blob(blob(m["digest"])["config"]["digest"])["rootfs"]["diff_ids"]:
    chain = d if chain is None else "sha256:" + hashlib.sha256(("%s %s" % (chain, d)).encode()).hexdigest()
print(chain)
PY
)
        opts=$(ctr -a "$SOCK" snapshots --snapshotter overlayfs view --mounts "$n-truth" "$top" \
            | "$PY" -c 'import json, sys; [m] = json.load(sys.stdin); assert m["Type"] == "overlay", m; print(",".join(m["Options"]))')
        mkdir -p "$mnt"
        mount -t overlay overlay -o "ro,$opts" "$mnt"
        MOUNTED=$mnt
        "$PY" "$HERE/truth.py" --walk "$mnt" "$WALKS/$n.json"
        umount "$mnt"
        MOUNTED=""
    }
    log "ctr-remote image convert --estargz / --zstdchunked --oci: python and edge (in parallel); paths through overlayfs"
    convert python > "$WORK/convert-python.log" 2>&1 & c1=$!
    convert edge > "$WORK/convert-edge.log" 2>&1 & c2=$!
    overlayfs_walk paths
    ok=1
    wait $c1 || { ok=0; cat "$WORK/convert-python.log" >&2; }
    wait $c2 || { ok=0; cat "$WORK/convert-edge.log" >&2; }
    [ $ok = 1 ] || { echo "build.sh: eStargz conversion failed (logs in $WORK)" >&2; exit 1; }
    cleanup
fi

# -- 4. checks -----------------------------------------------------------------------------------
log "checking digests and eStargz annotations"
"$PY" - "$NEW" $IMAGES <<'PY'
import hashlib, json, os, sys
root, names = sys.argv[1], sys.argv[2:]
def blob(l, d):
    return os.path.join(root, l, "blobs", *d.split(":"))
for n in names:
    files = os.listdir(os.path.join(root, n, "blobs", "sha256"))
    for f in files:
        h = hashlib.sha256(open(os.path.join(root, n, "blobs", "sha256", f), "rb").read()).hexdigest()
        assert h == f, "%s: blob %s has digest %s" % (n, f, h)
    idx = json.load(open(os.path.join(root, n, "index.json")))
    [top] = [d for d in idx["manifests"]
             if d.get("annotations", {}).get("org.opencontainers.image.ref.name") == "latest"]
    todo, manifests = [top], []
    while todo:
        d = todo.pop()
        assert os.path.getsize(blob(n, d["digest"])) == d["size"], (n, d)
        m = json.load(open(blob(n, d["digest"])))
        if "manifests" in m:
            todo += m["manifests"]
        else:
            manifests.append(m)
            for l in [m["config"]] + m["layers"]:
                assert os.path.getsize(blob(n, l["digest"])) == l["size"], (n, l)
    if n.endswith("-estargz"):
        for m in manifests:
            for l in m["layers"]:
                a = l.get("annotations", {})
                assert a.get("containerd.io/snapshot/stargz/toc.digest", "").startswith("sha256:"), \
                    "%s: layer %s has no toc.digest annotation" % (n, l["digest"])
                assert l["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip", l
    if n.endswith("-estargz-zstd"):
        for m in manifests:
            for l in m["layers"]:
                a = l.get("annotations", {})
                assert a.get("containerd.io/snapshot/stargz/toc.digest", "").startswith("sha256:"), \
                    "%s: layer %s has no toc.digest annotation" % (n, l["digest"])
                assert l["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd", l
    if n.endswith("-zstdchunked") or n.endswith("-zstdchunked-v2"):
        pre = "io.containers." if n.endswith("-zstdchunked") else "io.github.containers."
        for m in manifests:
            for l in m["layers"]:
                a = l.get("annotations", {})
                assert a.get(pre + "zstd-chunked.manifest-checksum", "").startswith("sha256:"), \
                    "%s: layer %s has no %szstd-chunked.manifest-checksum" % (n, l["digest"], pre)
                assert l["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd", l
    if n in ("python-zstd", "python-zstd-frames"):
        assert all(l["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
                   for m in manifests for l in m["layers"]), n
    if n == "python-tar":
        assert all(l["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
                   for m in manifests for l in m["layers"]), n
    print("  %-15s %d manifest(s), %d blobs, %.1f MB" % (
        n, len(manifests), len(files),
        sum(os.path.getsize(os.path.join(root, n, "blobs", "sha256", f)) for f in files) / 1e6),
        file=sys.stderr)
PY

rm -rf "$OUT/layouts" "$OUT/truth" "$WORK"
mv "$NEW" "$OUT/layouts"

# -- 5. truth trees (truth.py: umoci unpack + the in-memory model, which must agree) -------------
log "truth trees: $OUT/truth/*.json"
mkdir -p "$OUT/truth"
truth() {   # NAME [truth.py options]: runs in the background
    local n=$1; shift
    "$PY" "$HERE/truth.py" "$OUT/layouts/${n%-arm64}:latest" "$OUT/truth/$n.json" "$@" \
        2> "$OUT/truth/$n.log"
}
run2() {   # run truth jobs two at a time; fail if any fails
    local pids=() rc=0 p
    while [ $# -gt 0 ]; do
        eval "truth $1" & pids+=($!)
        shift
        if [ ${#pids[@]} = 2 ] || [ $# = 0 ]; then
            for p in "${pids[@]}"; do wait "$p" || rc=1; done
            pids=()
        fi
    done
    return $rc
}
# paths: where runtimes disagree, the truth is containerd's overlayfs snapshotter's view
PATHS_UNPACKER="containerd $(containerd --version 2>/dev/null | awk '{print $3}') overlayfs snapshotter (ctr images import; the top snapshot mounted read-only and walked)"
if [ -f "$WALKS/paths.json" ]; then
    paths_job="paths --walked $WALKS/paths.json --unpacker \"\$PATHS_UNPACKER\" --applied-since $(cat "$WALKS/paths.applied-since")"
else
    paths_job="paths --model-truth"
fi
jobs_=("python" "edge" "multi --platform linux/amd64" "multi-arm64 --platform linux/arm64/v8"
       "tarquirks" "$paths_job" "umoci-insert")
jobs_+=($ZSTD_IMAGES)
case " $IMAGES " in *" python-estargz "*)
    jobs_+=("python-estargz --drop-estargz-meta" "edge-estargz --drop-estargz-meta"
            "python-estargz-zstd --drop-estargz-meta" "edge-estargz-zstd --drop-estargz-meta") ;; esac
run2 "${jobs_[@]}" || { tail -n 3 "$OUT"/truth/*.log >&2; echo "build.sh: truth.py failed" >&2; exit 1; }
rm -f "$OUT"/truth/*.log
rm -rf "$WALKS"
# every other form of python and edge must unpack to the same tree as the plain one
"$PY" - "$OUT/truth" $IMAGES <<'PY'
import json, sys
t, names = sys.argv[1], sys.argv[2:]
for n in names:
    src = n.split("-")[0]
    if n == src or src not in ("python", "edge"):
        continue
    a = json.load(open("%s/%s.json" % (t, src)))
    b = json.load(open("%s/%s.json" % (t, n)))
    assert a["entries"] == b["entries"] and a["hardlink_groups"] == b["hardlink_groups"], \
        "%s and %s unpack differently" % (src, n)
PY
checks=("$OUT/truth/edge.json" "$OUT/truth/python.json")
"$PY" "$HERE/check_truth.py" "${checks[@]}"
[ ! -f "$OUT/truth/edge-estargz.json" ] || "$PY" "$HERE/check_truth.py" "$OUT/truth/edge-estargz.json"
stamp_now > "$OUT/stamp"
log "done: $OUT/layouts ($IMAGES)"
