#!/usr/bin/env bash
# sessiond vs Redis and the replication modes, by the same load tool on the
# same machine: 50 connections, 90% get / 10% put, 1 KiB sessions.
# Runs: Redis alone (GET/SET), sessiond memory-only, sessiond + Redis sync,
# sessiond + Redis async.
# Usage: benches/scripts/load.sh [seconds] [connections]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-10}
connections=${2:-50}
cargo build --release -q -p sessiond -p sessiond-benches
command -v redis-server >/dev/null || { echo "redis-server is needed: apt-get install redis-server" >&2; exit 1; }
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

redis-server --port 19500 --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >/dev/null 2>&1 &
pids+=($!)
sleep 0.5
load() { # label target
    local json
    json=$(target/release/sessiond-load --target "$2" -c "$connections" -d "${seconds}s" --warmup 2s --json 2>/dev/null)
    python3 - "$1" "$json" <<'PY'
import json, sys
label, r = sys.argv[1], json.loads(sys.argv[2])
print(f"{label:<30} {r['ops_per_sec']:>10.0f} ops/s   p50 {r['p50_us']:>6} us   p99 {r['p99_us']:>6} us   p99.9 {r['p999_us']:>6} us   errors {r['errors']}")
PY
}
node() { # port-suffix extra-args...
    local suffix=$1
    shift
    target/release/sessiond serve --http "127.0.0.1:196$suffix" --tcp "127.0.0.1:197$suffix" "$@" 2>"$work/node$suffix.log" &
    pids+=($!)
    sleep 1
}

echo "sessiond-load -c $connections -d ${seconds}s, 90% get, 1 KiB values, $(nproc) cores"
load "redis alone (GET/SET)" redis://127.0.0.1:19500
node 01
load "sessiond memory-only" sessiond://127.0.0.1:19701
node 02 --redis redis://127.0.0.1:19500 --redis-mode sync
load "sessiond + redis sync" sessiond://127.0.0.1:19702
node 03 --redis redis://127.0.0.1:19500 --redis-mode async
load "sessiond + redis async" sessiond://127.0.0.1:19703
