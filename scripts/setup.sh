#!/usr/bin/env bash
# Installs the system packages zran's demo and tests use, on Debian or Ubuntu.
# Idempotent: installs only what is missing (set ZRAN_APT_UPDATE=1 to always refresh the lists).
set -euo pipefail

packages=(ca-certificates gcc gzip pigz tar coreutils python3 erofs-utils time cmake fuse3 protobuf-compiler)
# What the test images and the registry harness need (testimages/README.md).
while read -r p; do
    [ -n "$p" ] && packages+=("$p")
done < "$(dirname "$0")/../testimages/apt-packages.txt"

sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ] || [ "${ZRAN_APT_UPDATE:-0}" = 1 ]; then
    $sudo apt-get update -q
fi
if [ "${#missing[@]}" -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
    echo "zran needs a Rust toolchain, 1.85 or newer: see https://rustup.rs" >&2
    exit 1
fi
