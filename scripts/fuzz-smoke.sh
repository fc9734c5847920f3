#!/usr/bin/env bash
# Builds the cargo-fuzz target of the frame decoder and runs it for a few
# seconds on random input (without coverage instrumentation, which needs
# cargo-fuzz and nightly flags). The full coverage-guided run:
#   cargo install cargo-fuzz
#   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run decode_frame -- -max_total_time=300
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-10}
cargo build --release --locked --bin decode_frame
target/release/decode_frame -max_total_time="$seconds" -print_final_stats=1 2>&1 | tail -n 3
