#!/usr/bin/env bash
# What the user index costs: creates and rotations (logins) with and
# without a user, in memory and with Redis (sync), by the same load tool in
# one run; the server's CPU time per operation beside the throughput.
# Usage: benches/scripts/users.sh [seconds] [connections]
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=benches/scripts/lib.sh
source benches/scripts/lib.sh
seconds=${1:-10}
connections=${2:-50}
bench_setup

start_redis 19520
redis=$(cat "$work/redis19520.pid")

echo "sessiond-load -c $connections -d ${seconds}s, 1 KiB sessions, 1,000 users, $(nproc) cores"
start_node 21 --max-memory 4GiB
memory=$(cat "$work/node21.pid")
start_node 22 --max-memory 4GiB --redis redis://127.0.0.1:19520
synced="$(cat "$work/node22.pid") $redis"
for scenario in create rotate; do
    feature_load "memory, $scenario, no user" "$memory" sessiond://127.0.0.1:19721 --scenario "$scenario"
    feature_load "memory, $scenario, 1,000 users" "$memory" sessiond://127.0.0.1:19721 --scenario "$scenario" --users 1000
    feature_load "redis sync, $scenario, no user" "$synced" sessiond://127.0.0.1:19722 --scenario "$scenario"
    feature_load "redis sync, $scenario, 1,000 users" "$synced" sessiond://127.0.0.1:19722 --scenario "$scenario" --users 1000
done
