#!/usr/bin/env bash
# What the event log costs: creates (each one logs `created`) and the
# read/write mix (writes are not events by default) with the log off and
# on, in memory and with Redis (sync), by the same load tool in one run;
# the server's CPU time per operation beside the throughput.
# Usage: benches/scripts/events.sh [seconds] [connections]
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=benches/scripts/lib.sh
source benches/scripts/lib.sh
seconds=${1:-10}
connections=${2:-50}
bench_setup

start_redis 19520
redis=$(cat "$work/redis19520.pid")

echo "sessiond-load -c $connections -d ${seconds}s, 1 KiB sessions, $(nproc) cores"
start_node 31 --max-memory 4GiB --events off
memory_off=$(cat "$work/node31.pid")
start_node 32 --max-memory 4GiB --events on
memory_on=$(cat "$work/node32.pid")
start_node 33 --max-memory 4GiB --events off --redis redis://127.0.0.1:19520 --redis-prefix off:
redis_off="$(cat "$work/node33.pid") $redis"
start_node 34 --max-memory 4GiB --events on --redis redis://127.0.0.1:19520 --redis-prefix on:
redis_on="$(cat "$work/node34.pid") $redis"
for scenario in create rw; do
    feature_load "memory, $scenario, events off" "$memory_off" sessiond://127.0.0.1:19731 --scenario "$scenario"
    feature_load "memory, $scenario, events on" "$memory_on" sessiond://127.0.0.1:19732 --scenario "$scenario"
    feature_load "redis sync, $scenario, events off" "$redis_off" sessiond://127.0.0.1:19733 --scenario "$scenario"
    feature_load "redis sync, $scenario, events on" "$redis_on" sessiond://127.0.0.1:19734 --scenario "$scenario"
done
