#!/usr/bin/env bash
# The local registry harness: a real docker-registry (distribution 2.8, Debian package) on a
# free 127.0.0.1 port, with storage under DIR, in one of three auth modes.
#
#   registry.sh start DIR [plain|htpasswd|token]   start; print the port
#   registry.sh stop  DIR                          kill what start started (by recorded PIDs)
#   registry.sh push  DIR [LAYOUTS_DIR]            skopeo-push every layout as NAME:latest
#   registry.sh info  DIR                          print mode, port, user, password, realm
#
# DIR gets: port, pid, mode, config.yml, registry.log, storage/; htpasswd mode: htpasswd;
# token mode: token.key, token.crt (the registry's rootcertbundle), token_port, token.pid,
# token.log. Credentials (htpasswd and token modes): user zran, password zran-secret.
# The token service grants anonymous pulls of any repository and everything to zran.
# LAYOUTS_DIR defaults to $REPO/target/testimages/layouts (what build.sh makes).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
PY=/usr/bin/python3
USER_NAME=zran
USER_PASS=zran-secret
SERVICE=zran-test-registry
ISSUER=zran-test-token-issuer

die() { echo "registry.sh: $*" >&2; exit 1; }

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# alive PIDFILE PATTERN: the recorded process is running and its command line matches
alive() {
    local pid
    [ -s "$1" ] || return 1
    pid=$(cat "$1")
    [ -r "/proc/$pid/cmdline" ] || return 1
    { tr '\0' ' ' < "/proc/$pid/cmdline"; } 2>/dev/null | grep -q -- "$2"
}

# kill_recorded PIDFILE PATTERN: TERM, wait up to 5 s, then KILL; only our own process
kill_recorded() {
    local f=$1 pat=$2 pid i
    if alive "$f" "$pat"; then
        pid=$(cat "$f")
        kill "$pid" 2>/dev/null || true
        for i in $(seq 50); do
            alive "$f" "$pat" || break
            sleep 0.1
        done
        if alive "$f" "$pat"; then kill -9 "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$f"
}

write_config() {   # DIR PORT MODE [TOKEN_PORT]
    local dir=$1 port=$2 mode=$3 tport=${4:-}
    {
        cat <<EOF
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
  fields:
    service: registry
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:$port
  headers:
    X-Content-Type-Options: [nosniff]
EOF
        case $mode in
        htpasswd)
            cat <<EOF
auth:
  htpasswd:
    realm: zran-test-registry
    path: $dir/htpasswd
EOF
            ;;
        token)
            cat <<EOF
auth:
  token:
    realm: http://127.0.0.1:$tport/token
    service: $SERVICE
    issuer: $ISSUER
    rootcertbundle: $dir/token.crt
EOF
            ;;
        esac
    } > "$dir/config.yml"
}

start_token_service() {   # DIR
    local dir=$1 i
    if [ ! -s "$dir/token.key" ] || [ ! -s "$dir/token.crt" ]; then
        openssl ecparam -name prime256v1 -genkey -noout -out "$dir/token.key" 2>/dev/null
        openssl req -new -x509 -key "$dir/token.key" -out "$dir/token.crt" -days 36500 \
            -subj "/CN=$ISSUER" 2>/dev/null
    fi
    if alive "$dir/token.pid" tokenserver.py && [ -s "$dir/token_port" ]; then return 0; fi
    rm -f "$dir/token_port"
    nohup "$PY" "$HERE/tokenserver.py" --key "$dir/token.key" --cert "$dir/token.crt" \
        --issuer "$ISSUER" --service "$SERVICE" --port-file "$dir/token_port" \
        --user "$USER_NAME:$USER_PASS" >> "$dir/token.log" 2>&1 < /dev/null &
    echo $! > "$dir/token.pid"
    for i in $(seq 100); do
        [ -s "$dir/token_port" ] && return 0
        alive "$dir/token.pid" tokenserver.py || break
        sleep 0.1
    done
    tail -5 "$dir/token.log" >&2
    die "token service did not start"
}

cmd_start() {
    local dir=${1:-} mode=${2:-plain} port code i try tport=""
    [ -n "$dir" ] || usage
    case $mode in plain|htpasswd|token) ;; *) die "unknown mode: $mode" ;; esac
    mkdir -p "$dir/storage"
    dir=$(cd "$dir" && pwd)
    if alive "$dir/pid" docker-registry; then
        [ "$(cat "$dir/mode")" = "$mode" ] || die "$dir: already running in mode $(cat "$dir/mode")"
        cat "$dir/port"
        return 0
    fi
    command -v docker-registry > /dev/null || die "docker-registry not installed (apt-get install docker-registry)"
    if [ "$mode" = htpasswd ] && [ ! -s "$dir/htpasswd" ]; then
        htpasswd -B -b -c "$dir/htpasswd" "$USER_NAME" "$USER_PASS" 2>/dev/null
    fi
    if [ "$mode" = token ]; then
        start_token_service "$dir"
        tport=$(cat "$dir/token_port")
    fi
    for try in 1 2 3 4 5; do
        port=$(free_port)
        write_config "$dir" "$port" "$mode" "$tport"
        : > "$dir/registry.log"
        nohup docker-registry serve "$dir/config.yml" >> "$dir/registry.log" 2>&1 < /dev/null &
        echo $! > "$dir/pid"
        for i in $(seq 100); do
            code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v2/" || true)
            case $code in 200|401) break ;; esac
            alive "$dir/pid" docker-registry || break
            sleep 0.1
        done
        case $code in
        200|401)
            echo "$port" > "$dir/port"
            echo "$mode" > "$dir/mode"
            echo "$port"
            return 0 ;;
        esac
        kill_recorded "$dir/pid" docker-registry
        grep -q 'address already in use' "$dir/registry.log" || break
    done
    tail -5 "$dir/registry.log" >&2
    die "docker-registry did not start (log: $dir/registry.log)"
}

cmd_stop() {
    local dir=${1:-}
    [ -n "$dir" ] || usage
    [ -d "$dir" ] || return 0
    kill_recorded "$dir/pid" docker-registry
    kill_recorded "$dir/token.pid" tokenserver.py
    rm -f "$dir/port" "$dir/token_port"
}

cmd_push() {
    local dir=${1:-} layouts=${2:-$REPO/target/testimages/layouts} port mode l name all creds
    [ -n "$dir" ] || usage
    alive "$dir/pid" docker-registry || die "$dir: no registry running (registry.sh start $dir)"
    port=$(cat "$dir/port")
    mode=$(cat "$dir/mode")
    [ -d "$layouts" ] || die "no layouts in $layouts (run testimages/build.sh)"
    creds=()
    [ "$mode" = plain ] || creds=(--dest-creds "$USER_NAME:$USER_PASS")
    printf '{"default":[{"type":"insecureAcceptAnything"}]}\n' > "$dir/policy.json"
    for l in "$layouts"/*/; do
        l=${l%/}
        name=$(basename "$l")
        [ -f "$l/index.json" ] || continue
        all=()
        if "$PY" - "$l" <<'PY'
import json, sys
idx = json.load(open(sys.argv[1] + "/index.json"))
d = [m for m in idx["manifests"]
     if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "latest"]
sys.exit(0 if d and d[0]["mediaType"].endswith("image.index.v1+json") else 1)
PY
        then all=(--all); fi
        echo "push $name -> 127.0.0.1:$port/$name:latest ${all[*]:-}" >&2
        skopeo --policy "$dir/policy.json" copy -q --preserve-digests "${all[@]}" \
            --dest-tls-verify=false "${creds[@]}" \
            "oci:$l:latest" "docker://127.0.0.1:$port/$name:latest"
    done
}

cmd_info() {
    local dir=${1:-}
    [ -n "$dir" ] || usage
    alive "$dir/pid" docker-registry || die "$dir: no registry running"
    echo "mode=$(cat "$dir/mode")"
    echo "port=$(cat "$dir/port")"
    echo "url=http://127.0.0.1:$(cat "$dir/port")"
    if [ "$(cat "$dir/mode")" != plain ]; then
        echo "user=$USER_NAME"
        echo "password=$USER_PASS"
    fi
    if [ "$(cat "$dir/mode")" = token ]; then
        echo "realm=http://127.0.0.1:$(cat "$dir/token_port")/token"
        echo "service=$SERVICE"
    fi
}

case ${1:-} in
start) shift; cmd_start "$@" ;;
stop) shift; cmd_stop "$@" ;;
push) shift; cmd_push "$@" ;;
info) shift; cmd_info "$@" ;;
*) usage ;;
esac
