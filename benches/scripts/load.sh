#!/usr/bin/env bash
# sessiond vs Redis and the replication modes, by the same load tool on the
# same machine, in one run: 90% get / 10% put, 1 KiB sessions, 10,000 keys.
# Targets: Redis alone (GET/SET), sessiond memory-only, sessiond + Redis
# sync, sessiond + Redis async; all started once, then measured in turn,
# round after round. For each: throughput, p50/p99/p99.9 latency, the
# server processes' CPU time per operation (utime + stime over the measured
# window / operations; a node and its Redis together) and the load tool's,
# and how many requests the server answered per socket read (pipelining).
# Sections:
#   dedicated  <connections> connections, one closed-loop worker each
#   shared     50 and 200 workers over one shared connection (one sessiond
#              client, one Redis multiplexed connection)
# Usage: benches/scripts/load.sh [seconds] [connections] [rounds]
#        SECTIONS="dedicated shared" (default: both)
set -euo pipefail
cd "$(dirname "$0")/../.."
source benches/scripts/lib.sh
seconds=${1:-10}
connections=${2:-50}
rounds=${3:-2}
sections=${SECTIONS:-dedicated shared}
bench_setup

start_redis 19500
redis=$(cat "$work/redis19500.pid")
start_node 01
start_node 02 --redis redis://127.0.0.1:19500 --redis-mode sync
start_node 03 --redis redis://127.0.0.1:19500 --redis-mode async

measure() { # section round label server-pids target load-args...
    local section=$1 round=$2 label=$3 servers=$4 target=$5
    shift 5
    local pid_args=()
    for pid in $servers; do pid_args+=(--server-pid "$pid"); done
    target/release/sessiond-load --target "$target" -d "${seconds}s" --warmup 2s --json \
        "${pid_args[@]}" "$@" 2>/dev/null |
        python3 benches/scripts/report.py line "$section" "$round" "$label" >>"$work/results.jsonl"
}

targets() { # section round load-args...
    local section=$1 round=$2
    shift 2
    measure "$section" "$round" "redis alone" "$redis" redis://127.0.0.1:19500 "$@"
    measure "$section" "$round" "sessiond memory" "$(cat "$work/node01.pid")" \
        sessiond://127.0.0.1:19701 --server-metrics 127.0.0.1:19601 "$@"
    measure "$section" "$round" "sessiond + redis sync" "$(cat "$work/node02.pid") $redis" \
        sessiond://127.0.0.1:19702 --server-metrics 127.0.0.1:19602 "$@"
    measure "$section" "$round" "sessiond + redis async" "$(cat "$work/node03.pid") $redis" \
        sessiond://127.0.0.1:19703 --server-metrics 127.0.0.1:19603 "$@"
}

echo "sessiond-load -d ${seconds}s, 90% get, 1 KiB values, 10,000 keys, $(nproc) cores," \
    "load average $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD)"
for round in $(seq "$rounds"); do
    for section in $sections; do
        case $section in
        dedicated)
            echo "round $round, $connections connections, one worker each" >&2
            targets "dedicated $connections" "$round" -c "$connections"
            ;;
        shared)
            for workers in 50 200; do
                echo "round $round, $workers workers sharing one connection" >&2
                targets "shared $workers" "$round" -c 1 -w "$workers"
            done
            ;;
        esac
    done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 benches/scripts/report.py table "$work/results.jsonl"
