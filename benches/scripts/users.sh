#!/usr/bin/env bash
# What the user index costs: creates and rotations (logins) with and
# without a user, in memory and with Redis (sync), by the same load tool in
# one run; the server's CPU time per operation beside the throughput.
# Usage: benches/scripts/users.sh [seconds] [connections]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-10}
connections=${2:-50}
warmup=2
# shellcheck source=benches/scripts/common.sh
source benches/scripts/common.sh

echo "sessiond-load -c $connections -d ${seconds}s, 1 KiB sessions, 1,000 users, $(nproc) cores"
node 21
memory=$(cat "$work/pid21")
node 22 --redis redis://127.0.0.1:19520
synced=$(cat "$work/pid22")
for scenario in create rotate; do
    load "memory, $scenario, no user" "$memory" sessiond://127.0.0.1:19721 --scenario "$scenario"
    load "memory, $scenario, 1,000 users" "$memory" sessiond://127.0.0.1:19721 --scenario "$scenario" --users 1000
    load "redis sync, $scenario, no user" "$synced $redis_pid" sessiond://127.0.0.1:19722 --scenario "$scenario"
    load "redis sync, $scenario, 1,000 users" "$synced $redis_pid" sessiond://127.0.0.1:19722 --scenario "$scenario" --users 1000
done
