#!/usr/bin/env bash
# The whole test suite, on a fresh machine with only the Rust toolchain:
# installs what the tests need (redis-server, chromium, schemathesis),
# checks formatting and lints, then runs every unit, property, end-to-end
# and doc test, schemathesis against a live node driven by its OpenAPI
# document, and the fuzz target briefly.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
cargo test --workspace --all-features
scripts/schemathesis.sh 100
scripts/fuzz-smoke.sh 10
