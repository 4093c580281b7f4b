#!/usr/bin/env bash
# `zran mount` of an eStargz image beside its own peer, containerd-stargz-grpc (the stargz
# snapshotter, as a proxy snapshotter of a private containerd), on the same image in the same
# run: the python-estargz test image, pushed to a real docker-registry on loopback (run as root).
#  1. time to a live mount: `ctr-remote image rpull --plain-http` through the stargz snapshotter
#     against `zran mount 127.0.0.1:PORT/python-estargz MNT --no-prefetch` (zran reads the TOCs);
#  2. `ls -lR` of the mounted tree, cold: for stargz, a read-only view snapshot of the image's top
#     layer, mounted as the overlay a container would get over the per-layer FUSE mounts;
#  3. bytes fetched from the registry (its access log: bytes sent for blob GETs) from nothing to
#     a finished `python3.11 -c 'import json, email'` chrooted in the mounted tree, and the time
#     of that start; zran's own `zran stats` beside the log for zran.
# Every figure is the median of 5 rounds (ZRAN_STARGZ_ROUNDS), each from nothing: a fresh zran
# cache, fresh stargz and containerd daemons and state, page cache dropped; the two systems take
# turns going first. Both fetch on demand only: zran with --no-prefetch, stargz with noprefetch and
# no_background_fetch (its defaults also prefetch the landmarked files and then pull the whole
# layers in the background, which would make the byte count meaningless).
# containerd-stargz-grpc is not packaged in Debian 12: it is built here, offline, from the sources
# of golang-github-containerd-stargz-snapshotter-dev, without the CRI keychain (which needs the
# unpackaged k8s.io/cri-api), and a small main written below. The build is kept in
# benches/work/stargz_peer/build and reused; everything else under benches/work/stargz_peer/run
# is made afresh on every run.
# Usage: bash benches/stargz_peer.sh     (writes under benches/work/, gitignored)
#        ZRAN_STARGZ_BUILD_ONLY=1 bash benches/stargz_peer.sh   (build the daemon, nothing more)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
for p in golang-go golang-github-containerd-stargz-snapshotter-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$p" >/dev/null
done
bash testimages/build.sh >/dev/null
cargo build --release --locked -q
zran=$PWD/target/release/zran
layouts=$PWD/target/testimages/layouts
BUILD=$PWD/benches/work/stargz_peer/build
WORK=$PWD/benches/work/stargz_peer/run

now() { date +%s.%N; }
ms() { python3 -c "print(f'{1e3*($2-$1):.0f}')"; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# -- the daemon, built once -----------------------------------------------------------------------
sgz=$BUILD/containerd-stargz-grpc
if [ ! -x "$sgz" ]; then
    echo "== building containerd-stargz-grpc from Debian's Go sources (offline)"
    rm -rf "$BUILD"
    src=/usr/share/gocode/src/github.com/containerd/stargz-snapshotter
    gp=$BUILD/gopath
    mkdir -p "$gp/src/github.com/containerd" "$gp/src/stargzgrpc"
    cp -a "$src" "$gp/src/github.com/containerd/"
    # the CRI keychain imports k8s.io/cri-api, which Debian does not package; nothing else uses it
    rm "$gp/src/github.com/containerd/stargz-snapshotter/service/resolver/cri.go"
    cat > "$gp/src/stargzgrpc/main.go" <<'GO'
// Glue that serves the stargz snapshotter over gRPC on a unix socket, for containerd's
// [proxy_plugins]. Flags: -address SOCKET, -root DIR, -config TOML (service.Config).
package main

import (
	"context"
	"flag"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/containerd/log"
	"github.com/containerd/stargz-snapshotter/service"
	"github.com/pelletier/go-toml"
	"google.golang.org/grpc"
)

func main() {
	sock := flag.String("address", "/run/containerd-stargz-grpc/containerd-stargz-grpc.sock", "unix socket to serve on")
	root := flag.String("root", "/var/lib/containerd-stargz-grpc", "state directory")
	cfgFile := flag.String("config", "", "TOML configuration file")
	flag.Parse()
	ctx := context.Background()
	fatal := func(err error, what string) {
		if err != nil {
			log.G(ctx).WithError(err).Fatal(what)
		}
	}

	var cfg service.Config
	if *cfgFile != "" {
		data, err := os.ReadFile(*cfgFile)
		fatal(err, "reading the configuration")
		fatal(toml.Unmarshal(data, &cfg), "parsing the configuration")
	}
	sn, err := service.NewStargzSnapshotterService(ctx, *root, &cfg)
	fatal(err, "starting the snapshotter")

	server := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(server, snapshotservice.FromSnapshotter(sn))
	fatal(os.MkdirAll(filepath.Dir(*sock), 0o700), "making the socket directory")
	_ = os.Remove(*sock)
	ln, err := net.Listen("unix", *sock)
	fatal(err, "listening")
	go func() { fatal(server.Serve(ln), "serving") }()
	log.G(ctx).Infof("stargz snapshotter listening on %s", *sock)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
	server.Stop()
	if err := sn.Close(); err != nil { // unmounts the layers
		log.G(ctx).WithError(err).Error("closing the snapshotter")
	}
}
GO
    t0=$(now)
    (cd "$gp/src/stargzgrpc" && env GO111MODULE=off GOFLAGS= GOPROXY=off \
        GOPATH="$gp:/usr/share/gocode" GOCACHE="$BUILD/gocache" go build -o "$sgz.tmp" .)
    mv "$sgz.tmp" "$sgz"
    echo "   built in $(ms "$t0" "$(now)") ms"
fi
# (ZRAN_STARGZ_BUILD_ONLY=1: only the daemon, for benches/snapshotter_startup.sh.)
[ "${ZRAN_STARGZ_BUILD_ONLY:-}" = 1 ] && exit 0

# -- registry; the peer's daemons are started afresh for every round -------------------------------
if [ -d "$WORK" ]; then   # a previous run killed before its trap: nothing may stay mounted in it
    grep -o " $WORK/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
fi
rm -rf "$WORK"
mkdir -p "$WORK"
regdir=$WORK/registry
ctd_sock=$WORK/ctd.sock
sgz_sock=$WORK/sgz.sock
[ ${#ctd_sock} -lt 100 ] || { echo "stargz_peer.sh: $ctd_sock is too long for a unix socket" >&2; exit 1; }
ctd_pid="" sgz_pid=""

stop_pid() {   # PID: TERM, wait up to 15 s, then KILL
    local pid=$1 i
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || return 0
    for i in $(seq 150); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}
stop_peer() {
    umount -l "$WORK"/r*/m-sgz 2>/dev/null || true
    stop_pid "$ctd_pid"; ctd_pid=""
    stop_pid "$sgz_pid"; sgz_pid=""   # on TERM it unmounts its layers itself
    grep -o " $WORK/r[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
}
cleanup() {
    umount -l "$WORK"/r*/m-zran 2>/dev/null || true
    stop_peer
    bash testimages/registry.sh stop "$regdir"
}
trap cleanup EXIT

start_peer() {   # DIR: containerd-stargz-grpc, then containerd with it as proxy snapshotter "stargz"
    local d=$1 plugins
    mkdir -p "$d/sgz" "$d/ctd/root" "$d/ctd/state"
    cat > "$d/sgz.toml" <<'EOF'
no_prometheus = true
noprefetch = true
no_background_fetch = true
[blob]
check_always = false
EOF
    rm -f "$sgz_sock"   # a stale one would pass for the new daemon's
    nohup "$sgz" -address "$sgz_sock" -root "$d/sgz" -config "$d/sgz.toml" \
        > "$d/sgz.log" 2>&1 < /dev/null &
    sgz_pid=$!
    cat > "$d/ctd/config.toml" <<EOF
version = 2
root = "$d/ctd/root"
state = "$d/ctd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$ctd_sock"
[ttrpc]
  address = "$ctd_sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[proxy_plugins]
  [proxy_plugins.stargz]
    type = "snapshot"
    address = "$sgz_sock"
EOF
    for _ in $(seq 100); do [ -S "$sgz_sock" ] && break; sleep 0.1; done
    [ -S "$sgz_sock" ] || { tail "$d/sgz.log" >&2; echo "stargz_peer.sh: containerd-stargz-grpc did not start" >&2; exit 1; }
    nohup containerd --config "$d/ctd/config.toml" > "$d/ctd.log" 2>&1 < /dev/null &
    ctd_pid=$!
    for _ in $(seq 100); do ctr -a "$ctd_sock" version > /dev/null 2>&1 && break; sleep 0.1; done
    plugins=$(ctr -a "$ctd_sock" plugins ls)   # not piped into grep -q: SIGPIPE and pipefail
    grep -Eq 'snapshotter.*stargz.*ok' <<< "$plugins" ||
        { tail "$d/ctd.log" >&2; echo "stargz_peer.sh: containerd has no stargz snapshotter" >&2; exit 1; }
}

port=$(bash testimages/registry.sh start "$regdir" plain | tail -1)
bash testimages/registry.sh push "$regdir" "$layouts" >/dev/null 2>&1
host=127.0.0.1:$port
image=$host/python-estargz:latest
reglog=$regdir/registry.log
layers=$(python3 - "$layouts/python-estargz" <<'PY'
import json, sys
d = sys.argv[1]
idx = json.load(open(d + "/index.json"))
m = json.load(open(d + "/blobs/sha256/" + idx["manifests"][0]["digest"][7:]))
print(sum(l["size"] for l in m["layers"]), len(m["layers"]))
PY
)

mark() { sleep 0.3; stat -c %s "$reglog"; }   # the access log line is written after the body
fetched() {   # FROM TO (log offsets): bytes the registry sent for blob GETs of python-estargz, requests
    head -c "$2" "$reglog" | tail -c +$(($1 + 1)) | python3 -c '
import re, sys
n = r = 0
for line in sys.stdin:
    m = re.search(r"\"GET /v2/python-estargz/blobs/\S+ HTTP/[\d.]+\" (\d+) (\d+)", line)
    if m and m.group(1) in ("200", "206"):
        n += int(m.group(2)); r += 1
print(n, r)'
}
out=$WORK/results.txt
put() { echo "$@" >> "$out"; }   # SYSTEM KEY VALUE
# phases: [mount] the live mount, [ls] cold ls -lR, [py] chroot MNT python3.11 -c 'import json, email'
phases() {   # SYSTEM MNT B0 T0 T1: after the mount command (timed T0..T1, log offset B0 before it)
    local sys=$1 m=$2 b0=$3 t0=$4 t1=$5 b1 b2 b3 t2 t3 t4 t5
    b1=$(mark)
    t2=$(now); ls -lR "$m" > "$m.ls"; t3=$(now)
    b2=$(mark)
    t4=$(now); chroot "$m" /usr/bin/python3.11 -c 'import json, email'; t5=$(now)
    b3=$(mark)
    put "$sys" mount_ms "$(ms "$t0" "$t1")"
    put "$sys" ls_ms "$(ms "$t2" "$t3")"
    put "$sys" py_ms "$(ms "$t4" "$t5")"
    put "$sys" mount_bytes $(fetched "$b0" "$b1")
    put "$sys" ls_bytes $(fetched "$b1" "$b2")
    put "$sys" py_bytes $(fetched "$b2" "$b3")
    put "$sys" total_bytes $(fetched "$b0" "$b3")
}

run_zran() {   # DIR
    local d=$1 m=$1/m-zran b0 t0 t1
    mkdir -p "$m"
    drop
    b0=$(mark)
    t0=$(now); "$zran" mount "$host/python-estargz" "$m" --cache-dir "$d/c-zran" --no-prefetch; t1=$(now)
    phases zran "$m" "$b0" "$t0" "$t1"
    "$zran" umount "$m" --cache-dir "$d/c-zran"
    "$zran" stats "$m" --cache-dir "$d/c-zran" > "$d/zran-stats.json"
    put zran stats $(python3 -c 'import json,sys; s=json.load(open(sys.argv[1]))["stats"]; print(s["bytes_fetched"], s["requests"])' "$d/zran-stats.json")
    put zran fuse_mounts 1
}

# containerd-stargz-grpc: rpull mounts every layer (one FUSE mount each); a container would get an
# overlay of them, which a read-only view snapshot of the top layer gives here
run_stargz() {   # DIR
    local d=$1 m=$1/m-sgz b0 t0 t1 t1v t1w top
    start_peer "$d"
    mkdir -p "$m"
    drop
    b0=$(mark)
    t0=$(now); ctr-remote -a "$ctd_sock" image rpull --plain-http --snapshotter stargz "$image" > "$d/rpull.log"; t1=$(now)
    put stargz fuse_mounts "$(grep -c " $d/sgz/.* fuse" /proc/mounts || true)"
    # the image's top layer: the committed snapshot that no other snapshot has for parent
    top=$(ctr -a "$ctd_sock" snapshots --snapshotter stargz ls | awk 'NR > 1 { kind[$1] = $3; if ($2 != "") par[$2] = 1 }
        END { for (k in kind) if (kind[k] == "Committed" && !(k in par)) print k }')
    [ -n "$top" ] && [ "$(echo "$top" | wc -l)" = 1 ] || { echo "stargz_peer.sh: no single top snapshot: $top" >&2; exit 1; }
    t1v=$(now)
    # --target prints the mount command that view returns: containerd's GC may remove the view
    # (it holds no lease) at any moment after, which would make a later `ctr snapshots mounts`
    # fail; the overlay itself only needs the layers, which the image holds
    sh -c "$(ctr -a "$ctd_sock" snapshots --snapshotter stargz view --target "$m" zran-peer-view "$top")"
    t1w=$(now)
    grep -q " $m overlay " /proc/mounts || { echo "stargz_peer.sh: the view is not an overlay mount" >&2; exit 1; }
    put stargz view_ms "$(ms "$t1v" "$t1w")"
    phases stargz "$m" "$b0" "$t0" "$t1"
    umount "$m"
    stop_peer
}

rounds=${ZRAN_STARGZ_ROUNDS:-5}
for r in $(seq "$rounds"); do   # the order alternates, so that a drift of the machine hits both
    mkdir -p "$WORK/r$r"
    if [ $((r % 2)) = 1 ]; then run_zran "$WORK/r$r"; run_stargz "$WORK/r$r"
    else run_stargz "$WORK/r$r"; run_zran "$WORK/r$r"; fi
done

# the two trees must list the same: names, modes, owners, sizes, mtimes (as ls shows them), link
# targets; not link counts, the sizes of directories or the "total" lines (stargz gives 0 for both)
norm() { awk '/^total / { next } { if (NF >= 9 && $1 ~ /^[-dlcbps]/) { $2 = ""; if ($1 ~ /^d/) $5 = "" } print }' "$1.ls" | sed "s#$1##"; }
if diff -q <(norm "$WORK/r1/m-zran") <(norm "$WORK/r1/m-sgz") > /dev/null; then
    same="agree (names, modes, owners, file sizes, mtimes, link targets)"
else
    same="DIFFER: diff $WORK/r1/m-zran.ls $WORK/r1/m-sgz.ls"
fi

echo "== python-estargz (${layers% *} bytes in ${layers#* } layers) on $host: zran mount beside containerd-stargz-grpc"
echo "   median of $rounds rounds [min-max], each from nothing: fresh daemons and caches, page cache dropped"
python3 - "$out" "${layers%% *}" <<'PY'
import statistics, sys
from collections import defaultdict
v = defaultdict(list)
for line in open(sys.argv[1]):
    s, k, *x = line.split()
    v[s, k].append(tuple(int(a) for a in x))
layers = int(sys.argv[2])
def t(s, k):
    xs = [a[0] for a in v[s, k]]
    return f"{statistics.median(xs):.0f} ms [{min(xs)}-{max(xs)}]"
def b(s, k):
    xs = sorted(set(v[s, k]))
    f = lambda a: f"{a[0]} ({a[1]})" if len(a) > 1 else f"{a[0]}"
    return f(xs[0]) if len(xs) == 1 else f"{f(xs[0])} .. {f(xs[-1])}"
rows = [
    ("1. live mount: zran mount / ctr-remote image rpull", t("zran", "mount_ms"), t("stargz", "mount_ms")),
    ("   + view snapshot and its overlay mount", "", t("stargz", "view_ms")),
    ("   FUSE mounts", b("zran", "fuse_mounts"), b("stargz", "fuse_mounts")),
    ("   bytes fetched (requests)", b("zran", "mount_bytes"), b("stargz", "mount_bytes")),
    ("2. ls -lR, cold", t("zran", "ls_ms"), t("stargz", "ls_ms")),
    ("   bytes fetched (requests)", b("zran", "ls_bytes"), b("stargz", "ls_bytes")),
    ("3. chroot MNT python3.11 -c 'import json, email'", t("zran", "py_ms"), t("stargz", "py_ms")),
    ("   bytes fetched (requests)", b("zran", "py_bytes"), b("stargz", "py_bytes")),
    ("   all bytes, from nothing to python done (requests)", b("zran", "total_bytes"), b("stargz", "total_bytes")),
    ("   share of the layers", ", ".join(sorted({f"{100*a[0]/layers:.2f}%" for a in v["zran", "total_bytes"]})),
                               ", ".join(sorted({f"{100*a[0]/layers:.2f}%" for a in v["stargz", "total_bytes"]}))),
    ("   zran stats: bytes_fetched (requests), TOCs not counted", b("zran", "stats"), ""),
]
print(f"   {'':52} {'zran mount':>24} {'containerd-stargz-grpc':>24}")
for r in rows:
    print(f"   {r[0]:52} {r[1]:>24} {r[2]:>24}")
PY
echo "   the two ls -lR listings $same"
echo "   bytes fetched: what the registry's access log says it sent for the image's blob GETs"
echo "   versions: stargz-snapshotter sources $(dpkg-query -W -f='${Version}' golang-github-containerd-stargz-snapshotter-dev)," \
    "ctr-remote $(dpkg-query -W -f='${Version}' stargz-snapshotter)," \
    "containerd $(dpkg-query -W -f='${Version}' containerd), $(go version | awk '{print $3}')"
