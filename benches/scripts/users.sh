#!/usr/bin/env bash
# What the user index costs: creates and rotations (logins) with and
# without a user, in memory and with Redis (sync), by the same load tool in
# one run; the server's CPU time per operation beside the throughput.
# Usage: benches/scripts/users.sh [seconds] [connections]
set -euo pipefail
cd "$(dirname "$0")/../.."
source benches/scripts/lib.sh
seconds=${1:-10}
connections=${2:-50}
bench_setup

start_redis 19520
redis=$(cat "$work/redis19520.pid")

load() { # label "server-pids" target load-args...
    local label=$1 servers=$2 target=$3
    shift 3
    local pid_args=()
    for pid in $servers; do pid_args+=(--server-pid "$pid"); done
    target/release/sessiond-load --target "$target" -c "$connections" -d "${seconds}s" \
        --warmup 2s --keys 20000 --json "${pid_args[@]}" "$@" 2>/dev/null |
        python3 benches/scripts/report.py line users 1 "$label" 2>&1 >/dev/null
}

echo "sessiond-load -c $connections -d ${seconds}s, 1 KiB sessions, 1,000 users, $(nproc) cores"
start_node 21 --max-memory 4GiB
memory=$(cat "$work/node21.pid")
start_node 22 --max-memory 4GiB --redis redis://127.0.0.1:19520
synced="$(cat "$work/node22.pid") $redis"
for scenario in create rotate; do
    load "memory, $scenario, no user" "$memory" sessiond://127.0.0.1:19721 --scenario "$scenario"
    load "memory, $scenario, 1,000 users" "$memory" sessiond://127.0.0.1:19721 --scenario "$scenario" --users 1000
    load "redis sync, $scenario, no user" "$synced" sessiond://127.0.0.1:19722 --scenario "$scenario"
    load "redis sync, $scenario, 1,000 users" "$synced" sessiond://127.0.0.1:19722 --scenario "$scenario" --users 1000
done
