#!/usr/bin/env bash
# Run every fuzz target for N seconds each (default 30): fuzz/run.sh [N] [TARGET...]
#
# cargo-fuzz needs nightly compiler flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain take
# them. New corpus entries go to fuzz/corpus/TARGET (gitignored); fuzz/seeds/TARGET is only
# read. A crash, panic, timeout or OOM leaves its input in fuzz/artifacts/TARGET/ and makes
# this script exit non-zero after all targets have run.
set -uo pipefail

seconds=${1:-30}
shift || true
cd "$(dirname "$0")/.."
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked || exit 1
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build || exit 1

failed=()
for t in "${targets[@]}"; do
    echo "=== $t: ${seconds}s" >&2
    mkdir -p "fuzz/corpus/$t"
    corpora=("fuzz/corpus/$t")
    [ -d "fuzz/seeds/$t" ] && corpora+=("fuzz/seeds/$t")
    if ! cargo fuzz run "$t" "${corpora[@]}" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout="${FUZZ_TIMEOUT:-60}"; then
        failed+=("$t")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzzing found problems in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "all targets ran ${seconds}s without findings" >&2
