#!/usr/bin/env bash
# A/B of two ways to run a sync-mode node (two binaries, or one binary
# under two environments) over one Redis, measured in turn, round after
# round, by the same load tool (90% get, 1 KiB values): ops/s, p99, the
# writes' p99, the node's and Redis's CPU time per operation together, and
# Redis's time per EVALSHA (INFO commandstats, reset before each run).
# Usage: benches/scripts/ab.sh ROUNDS "A command" "B command" [load args]
#   load args default to: -c 50 -d 5s --warmup 1s; SERVE_ARGS adds flags
#   to both nodes (e.g. SERVE_ARGS="--consistency strong")
#   e.g. benches/scripts/ab.sh 3 target/release/sessiond \
#          "env TOKIO_WORKER_THREADS=1 target/release/sessiond"
set -euo pipefail
cd "$(dirname "$0")/../.."
source benches/scripts/lib.sh
rounds=$1 variant_a=$2 variant_b=$3
shift 3
load_args=("$@")
[ ${#load_args[@]} -gt 0 ] || load_args=(-c 50 -d 5s --warmup 1s)
bench_setup
start_redis 19590
redis=$(cat "$work/redis19590.pid")

measure() { # label command
    local label=$1 command=$2 node
    redis-cli -p 19590 flushall >/dev/null
    redis-cli -p 19590 config resetstat >/dev/null
    # The command and SERVE_ARGS are split into words on purpose.
    # shellcheck disable=SC2086
    $command serve --http 127.0.0.1:19681 --tcp 127.0.0.1:19781 \
        --redis redis://127.0.0.1:19590 ${SERVE_ARGS:-} 2>"$work/node.log" &
    node=$!
    pids+=("$node")
    sleep 1.5
    target/release/sessiond-load --target sessiond://127.0.0.1:19781 --json \
        --server-pid "$node" --server-pid "$redis" "${load_args[@]}" 2>/dev/null |
        python3 -c '
import json, sys
j = json.load(sys.stdin)
print("%s: %s ops/s  p99 %s us  writes p99 %s us  node+redis %.2f us/op  errors %s" % (
    sys.argv[1], format(round(j["ops_per_sec"]), ","), format(j["p99_us"], ","),
    format(j["write_p99_us"], ","), j["server_cpu_us_per_op"], j["errors"]), end="")' "$label"
    redis-cli -p 19590 info commandstats | tr -d '\r' |
        awk -F'[=,]' '/^cmdstat_evalsha:/ {printf "  EVALSHA %s us", $6} END {print ""}'
    kill "$node"
    wait "$node" 2>/dev/null || true
}

echo "A: $variant_a"
echo "B: $variant_b"
echo "sessiond-load ${load_args[*]}, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$rounds"); do
    echo "round $round"
    measure A "$variant_a"
    measure B "$variant_b"
done
