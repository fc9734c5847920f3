#!/usr/bin/env bash
# What the event log costs: creates (each one logs `created`) and the
# read/write mix (writes are not events by default) with the log off and
# on, in memory and with Redis (sync), by the same load tool in one run;
# the server's CPU time per operation beside the throughput.
# Usage: benches/scripts/events.sh [seconds] [connections]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-10}
connections=${2:-50}
warmup=2
# shellcheck source=benches/scripts/common.sh
source benches/scripts/common.sh

echo "sessiond-load -c $connections -d ${seconds}s, 1 KiB sessions, $(nproc) cores"
node 31 --events off
memory_off=$(cat "$work/pid31")
node 32 --events on
memory_on=$(cat "$work/pid32")
node 33 --events off --redis redis://127.0.0.1:19520 --redis-prefix off:
redis_off=$(cat "$work/pid33")
node 34 --events on --redis redis://127.0.0.1:19520 --redis-prefix on:
redis_on=$(cat "$work/pid34")
for scenario in create rw; do
    load "memory, $scenario, events off" "$memory_off" sessiond://127.0.0.1:19731 --scenario "$scenario"
    load "memory, $scenario, events on" "$memory_on" sessiond://127.0.0.1:19732 --scenario "$scenario"
    load "redis sync, $scenario, events off" "$redis_off $redis_pid" sessiond://127.0.0.1:19733 --scenario "$scenario"
    load "redis sync, $scenario, events on" "$redis_on $redis_pid" sessiond://127.0.0.1:19734 --scenario "$scenario"
done
