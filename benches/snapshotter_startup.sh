#!/usr/bin/env bash
# Container start-up through containerd, as a user feels it: from the start of the pull to the
# workload's answer (`ctr run` of python3.11 importing json, email, http.client and sqlite3),
# with the bytes that crossed the link, for
#   overlayfs     containerd's default: `ctr image pull` + `ctr run` (the baseline)
#   zran          `ctr-remote image rpull --snapshotter zran` + `ctr run --snapshotter zran`,
#                 the original gzip image with its zran artifact pushed beside it
#   zran-estargz  the same with `zran snapshotter --enable-stargz`, on the eStargz image
#   stargz        containerd-stargz-grpc (built from Debian's Go sources), defaults, on the
#                 same eStargz image: `ctr-remote image rpull --snapshotter stargz`
# on three images: python (the test image, 3 layers), bigpy (the same plus a 251 MB layer the
# workload never reads) and python-estargz; over two links to a docker-registry in a network
# namespace: "veth" (unshaped) and "wan" (tbf 100 Mbit/s on both veth ends, and a forwarder that
# delays each direction 20 ms: this kernel has no netem; see ../shared/reference/infra.md).
# Every run starts from nothing: fresh containerd and snapshotter state, page cache dropped.
# Median of ZRAN_STARTUP_ROUNDS (3) rounds; modes take turns. Run as root. ZRAN_STARTUP_LINKS
# ("veth wan") and ZRAN_STARTUP_CASES ("IMAGE:MODE,MODE ...") choose a part.
# Usage: bash benches/snapshotter_startup.sh   (writes under benches/work/startup, gitignored)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
bash testimages/build.sh >/dev/null
ZRAN_STARGZ_BUILD_ONLY=1 bash benches/stargz_peer.sh >/dev/null
cargo build --release --locked -q
zran=$PWD/target/release/zran
sgz=$PWD/benches/work/stargz_peer/build/containerd-stargz-grpc
layouts=$PWD/target/testimages/layouts
WORK=$PWD/benches/work/startup
ROUNDS=${ZRAN_STARTUP_ROUNDS:-3}
NS=zranbench
HOSTIP=10.231.0.1 NSIP=10.231.0.2
CMD='import json, email, http.client, sqlite3; print(json.dumps({"answer": 6 * 7}))'
WANT='{"answer": 42}'

now() { date +%s.%N; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
rx() { awk -v i=zrb0: '$1 == i { print $2 }' /proc/net/dev; }

pids=()
stop_pid() {
    local pid=$1 i
    kill "$pid" 2>/dev/null || return 0
    for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}
unmount_all() {   # everything mounted under WORK, deepest first
    grep -o " $WORK/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
}
cleanup() {
    stop_daemons
    for p in "${pids[@]}"; do stop_pid "$p"; done
    unmount_all
    ip netns del "$NS" 2>/dev/null || true
    ip link del zrb0 2>/dev/null || true
}
trap cleanup EXIT

# -- the link ---------------------------------------------------------------------------------------
unmount_all
ip netns del "$NS" 2>/dev/null || true
ip link del zrb0 2>/dev/null || true
rm -rf "$WORK"
mkdir -p "$WORK"
ip netns add "$NS"
ip link add zrb0 type veth peer name zrb1
ip link set zrb1 netns "$NS"
ip addr add "$HOSTIP/30" dev zrb0
ip link set zrb0 up
ip netns exec "$NS" ip addr add "$NSIP/30" dev zrb1
ip netns exec "$NS" ip link set zrb1 up
ip netns exec "$NS" ip link set lo up
shape() {   # on|off: tbf 100 Mbit/s on both ends
    if [ "$1" = on ]; then
        tc qdisc replace dev zrb0 root tbf rate 100mbit burst 64kb latency 100ms
        ip netns exec "$NS" tc qdisc replace dev zrb1 root tbf rate 100mbit burst 64kb latency 100ms
    else
        tc qdisc del dev zrb0 root 2>/dev/null || true
        ip netns exec "$NS" tc qdisc del dev zrb1 root 2>/dev/null || true
    fi
}

# -- the registry in the namespace: :5000 directly, :6000 through the 20 ms forwarder ----------------
mkdir -p "$WORK/registry"
cat > "$WORK/registry/config.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/registry/storage
  delete:
    enabled: true
http:
  addr: 0.0.0.0:5000
EOF
ip netns exec "$NS" docker-registry serve "$WORK/registry/config.yml" > "$WORK/registry/log" 2>&1 &
pids+=($!)
ip netns exec "$NS" python3 benches/delay_proxy.py "$NSIP" 6000 127.0.0.1 5000 20 > "$WORK/proxy.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://$NSIP:5000/v2/" > /dev/null && break; sleep 0.1; done

echo "== images: python, bigpy (python + a ~251 MB layer), python-estargz; artifacts beside the gzip ones"
python3 benches/mkbigpy.py "$layouts/python" "$WORK/bigpy" 830000000   # a ~251 MB layer, as infra.md measured
push() {  # LAYOUT NAME
    skopeo copy -q --dest-tls-verify=false "oci:$1" "docker://$NSIP:5000/$2:latest" >/dev/null
}
push "$layouts/python" python
push "$WORK/bigpy" bigpy
push "$layouts/python-estargz" python-estargz
for n in python bigpy; do
    "$zran" generate "$NSIP:5000/$n:latest" --plain-http -o "$WORK/art-$n" --push > /dev/null
done
size_of() { du -sb "$1" | cut -f1; }

# containerd's registry host files for zran: both ports are plain HTTP.
mkdir -p "$WORK/certs.d/$NSIP:5000" "$WORK/certs.d/$NSIP:6000"
echo "server = \"http://$NSIP:5000\"" > "$WORK/certs.d/$NSIP:5000/hosts.toml"
echo "server = \"http://$NSIP:6000\"" > "$WORK/certs.d/$NSIP:6000/hosts.toml"

# -- daemons, fresh for every run --------------------------------------------------------------------
ctd_pid="" snap_pid=""
stop_daemons() {
    [ -n "$ctd_pid" ] && stop_pid "$ctd_pid"
    ctd_pid=""
    if [ -n "$snap_pid" ]; then stop_pid "$snap_pid"; fi
    snap_pid=""
    # zran's serving processes, by their mount records' pids
    local rec pid
    for rec in "$WORK"/run/zran/cache/mounts/*.json; do
        [ -f "$rec" ] || continue
        pid=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$rec")
        [ -n "$pid" ] && stop_pid "$pid"
    done
    unmount_all
}
start() {  # MODE: containerd, with zran's or stargz's snapshotter as a proxy plugin
    local mode=$1 d=$WORK/run
    stop_daemons
    rm -rf "$d"
    mkdir -p "$d/ctd"
    local proxy=""
    case $mode in
    zran | zran-estargz)
        local flag=""
        [ "$mode" = zran-estargz ] && flag=--enable-stargz
        printf 'root = "%s"\naddress = "%s"\n[registry]\nconfig_path = "%s"\n' \
            "$d/zran" "$d/snap.sock" "$WORK/certs.d" > "$d/zran.toml"
        "$zran" snapshotter --config "$d/zran.toml" $flag > /dev/null 2> "$d/snap.log" &
        snap_pid=$!
        proxy="[proxy_plugins.zran]
  type = \"snapshot\"
  address = \"$d/snap.sock\"" ;;
    stargz)
        cat > "$d/sgz.toml" <<EOF
no_prometheus = true
[resolver.host."$NSIP:5000"]
  mirrors = [{ host = "$NSIP:5000", insecure = true }]
[resolver.host."$NSIP:6000"]
  mirrors = [{ host = "$NSIP:6000", insecure = true }]
EOF
        "$sgz" -address "$d/snap.sock" -root "$d/sgz" -config "$d/sgz.toml" > "$d/snap.log" 2>&1 &
        snap_pid=$!
        proxy="[proxy_plugins.stargz]
  type = \"snapshot\"
  address = \"$d/snap.sock\"" ;;
    esac
    cat > "$d/ctd/config.toml" <<EOF
version = 2
root = "$d/ctd/root"
state = "$d/ctd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$d/ctd.sock"
[proxy_plugins]
$proxy
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$d/ctd/opt"
EOF
    if [ -n "$snap_pid" ]; then
        for _ in $(seq 100); do [ -S "$d/snap.sock" ] && break; sleep 0.1; done
    fi
    containerd --config "$d/ctd/config.toml" > "$d/ctd.log" 2>&1 &
    ctd_pid=$!
    for _ in $(seq 100); do ctr -a "$d/ctd.sock" version > /dev/null 2>&1 && break; sleep 0.1; done
}

one() {  # MODE IMAGE PORT -> "total_s pull_s run_s bytes"
    local mode=$1 name=$2 port=$3 d=$WORK/run image sn
    image=$NSIP:$port/$name:latest
    start "$mode"
    drop
    local b0 t0 t1 t2 out
    b0=$(rx)
    t0=$(now)
    case $mode in
    overlayfs) ctr -a "$d/ctd.sock" image pull --plain-http "$image" > /dev/null; sn=overlayfs ;;
    zran | zran-estargz) ctr-remote -a "$d/ctd.sock" image rpull --plain-http --snapshotter zran "$image" > /dev/null; sn=zran ;;
    stargz) ctr-remote -a "$d/ctd.sock" image rpull --plain-http --snapshotter stargz "$image" > /dev/null; sn=stargz ;;
    esac
    t1=$(now)
    out=$(ctr -a "$d/ctd.sock" run --rm --snapshotter "$sn" "$image" "c$RANDOM" /usr/bin/python3.11 -c "$CMD")
    t2=$(now)
    [ "$out" = "$WANT" ] || { echo "$mode $name: wrong answer: $out" >&2; tail "$d/snap.log" >&2; exit 1; }
    python3 -c "print(f'{$t2-$t0:.2f} {$t1-$t0:.2f} {$t2-$t1:.2f} $(( $(rx) - b0 ))')"
}

median() { python3 -c 'import statistics,sys; v=[float(x) for x in sys.argv[1:]]; print(f"{statistics.median(v):.2f}")' "$@"; }

results=$WORK/results.txt
: > "$results"
for link in ${ZRAN_STARTUP_LINKS:-veth wan}; do
    if [ "$link" = wan ]; then shape on; port=6000; else shape off; port=5000; fi
    cases=${ZRAN_STARTUP_CASES:-"python:overlayfs,zran bigpy:overlayfs,zran python-estargz:overlayfs,zran-estargz,stargz"}
    for case in $cases; do
        name=${case%%:*}
        modes=${case#*:}
        modes=${modes//,/ }
        declare -A tot=() pul=() run=() byt=()
        for r in $(seq "$ROUNDS"); do
            # modes take turns going first
            set -- $modes
            order=("$@")
            k=$(( (r - 1) % ${#order[@]} ))
            order=("${order[@]:k}" "${order[@]:0:k}")
            for mode in "${order[@]}"; do
                one "$mode" "$name" "$port" > "$WORK/one.out"   # (not in a subshell: it keeps the daemons' pids)
                read -r t p u b < "$WORK/one.out"
                tot[$mode]+="$t " pul[$mode]+="$p " run[$mode]+="$u " byt[$mode]+="$b "
                echo "   $link $name $mode round $r: ${t}s (pull ${p}s, run ${u}s), $b bytes" >&2
            done
        done
        for mode in $modes; do
            echo "$link $name $mode $(median ${tot[$mode]}) $(median ${pul[$mode]}) $(median ${run[$mode]}) $(median ${byt[$mode]})" >> "$results"
        done
        unset tot pul run byt
    done
done
shape off
stop_daemons

echo
echo "artifacts: python $(size_of "$WORK/art-python") bytes, bigpy $(size_of "$WORK/art-bigpy") bytes"
echo
echo "| link | image | mode | pull to answer | pull | run | bytes over the link | speed vs overlayfs pull |"
echo "|---|---|---|---|---|---|---|---|"
python3 - "$results" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
base = {(r[0], r[1]): float(r[3]) for r in rows if r[2] == "overlayfs"}
sgz = {(r[0], r[1]): float(r[3]) for r in rows if r[2] == "stargz"}
for link, name, mode, t, p, u, b in rows:
    t = float(t)
    vs = f"{base[(link, name)] / t:.2f}x" if mode != "overlayfs" else "baseline"
    if mode == "zran-estargz" and (link, name) in sgz:
        vs += f" ({sgz[(link, name)] / t:.2f}x stargz's speed)"
    print(f"| {link} | {name} | {mode} | {t:.2f} s | {float(p):.2f} s | {float(u):.2f} s | {float(b)/1e6:.1f} MB | {vs} |")
PY
