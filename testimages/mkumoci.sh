#!/usr/bin/env bash
# Build the `umoci-insert` image with Debian's umoci itself (init, new, config, insert):
#
#   testimages/mkumoci.sh LAYOUT_DIR
#
# umoci 0.4.7's `insert` writes layers whose tar ends right after the last entry's data:
# no padding to a 512-byte block and no end-of-archive blocks. Go's archive/tar (containerd,
# docker, podman, skopeo) reads them, so zran must too. Deterministic: the source files have
# fixed contents, modes and mtimes, and every date umoci records is given.
set -euo pipefail
OUT=$1
EPOCH=1700000000
CREATED=2023-11-14T22:13:20Z
SRC=$(mktemp -d)
trap 'rm -rf "$SRC"' EXIT
rm -rf "$OUT"

put() {   # PATH MODE BYTES...: a source file with fixed contents, mode and mtime
    local p=$SRC/$1
    mkdir -p "$(dirname "$p")"
    printf '%s' "$3" > "$p"
    chmod "$2" "$p"
    touch -h -d "@$EPOCH" "$p"
}
seq_bytes() {   # N: N bytes of text, not a multiple of 512 unless N is
    /usr/bin/python3 -c "import sys; sys.stdout.write(('zran umoci-insert test line\n' * 200)[:int(sys.argv[1])])" "$1"
}

umoci init --layout "$OUT"
umoci new --image "$OUT:latest"
umoci config --image "$OUT:latest" --created "$CREATED" --history.created "$CREATED" \
    --config.cmd /bin/sh --architecture amd64 --os linux > /dev/null
ins() {   # SOURCE TARGET [insert options]
    local src=$1 dst=$2
    shift 2
    umoci insert --image "$OUT:latest" --history.created "$CREATED" "$@" "$SRC/$src" "$dst"
}

# 1. a directory tree; its last file (3000 bytes) ends the tar 184 bytes into a block
put tree/etc/hello.txt 0644 "hello"
put tree/etc/motd 0600 "$(seq_bytes 700)"
put tree/usr/share/doc/zran/last 0644 "$(seq_bytes 3000)"
mkdir -p "$SRC/tree/opt"   # made here, so that the later inserts below /opt find it
for d in tree tree/etc tree/opt tree/usr tree/usr/share tree/usr/share/doc tree/usr/share/doc/zran; do
    chmod 0755 "$SRC/$d"
done
find "$SRC/tree" -exec touch -h -d "@$EPOCH" {} +
ins tree /
# 2. one file of 1000 bytes
put one/single 0640 "$(seq_bytes 1000)"
ins one/single /opt/single-file
# 3. one file of exactly 1024 bytes: the tar ends at an entry boundary, with no end blocks
put two/aligned 0644 "$(seq_bytes 1024)"
ins two/aligned /opt/aligned-1024
# 4. a whiteout (an empty file's entry, the last one, ending the tar at its header)
umoci insert --image "$OUT:latest" --history.created "$CREATED" --whiteout /etc/hello.txt
# 5. a symlink as the last entry
ln -s ../opt/single-file "$SRC/link"
touch -h -d "@$EPOCH" "$SRC/link"
ins link /etc/single-link
umoci gc --layout "$OUT"
