#!/usr/bin/env bash
# The whole test suite, on a fresh machine with only the Rust toolchain:
# installs what the tests need (redis-server), checks formatting and lints,
# then runs every unit, property, end-to-end and doc test, and the fuzz
# target briefly.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
cargo test --workspace --all-features
scripts/fuzz-smoke.sh 10
