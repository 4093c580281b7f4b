#!/usr/bin/env bash
# The whole test suite, from a fresh clone: system packages, formatting, lints, tests.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
