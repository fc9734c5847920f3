#!/usr/bin/env bash
# Balancer benchmark: the same wrk load (GET of a small response) against
# one upstream directly, through `sessiond balance` over three upstreams,
# and through nginx round-robin over the same three (when nginx is
# installed). Upstreams are `sessiond serve` nodes answering /healthz.
# Usage: benches/scripts/balancer.sh [seconds] [connections]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-10}
connections=${2:-50}
cargo build --release -q -p sessiond
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

for i in 1 2 3; do
    target/release/sessiond serve --http "127.0.0.1:1910$i" --tcp "127.0.0.1:1920$i" 2>"$work/up$i.log" &
    pids+=($!)
done
target/release/sessiond balance --listen 127.0.0.1:19300 --admin 127.0.0.1:19301 \
    --upstream http://127.0.0.1:19101,http://127.0.0.1:19102,http://127.0.0.1:19103 2>"$work/balance.log" &
pids+=($!)
if command -v nginx >/dev/null; then
    sed -e "s/UPSTREAM_1/127.0.0.1:19101/; s/UPSTREAM_2/127.0.0.1:19102/; s/UPSTREAM_3/127.0.0.1:19103/" \
        -e "s/LISTEN/127.0.0.1:19400/; s#PIDFILE#$work/nginx.pid#" benches/scripts/nginx.conf >"$work/nginx.conf"
    nginx -c "$work/nginx.conf" -p "$work" 2>"$work/nginx.log" &
    pids+=($!)
fi
sleep 1

run() { # label url
    local out
    out=$(wrk -t 2 -c "$connections" -d "${seconds}s" --latency "$2")
    local rps p50 p99
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    printf '%-28s %12s req/s   p50 %8s   p99 %8s\n' "$1" "$rps" "$p50" "$p99"
}

echo "wrk -t 2 -c $connections -d ${seconds}s, GET /healthz, $(nproc) cores"
run "direct (one upstream)" http://127.0.0.1:19101/healthz
run "sessiond balance (3)" http://127.0.0.1:19300/healthz
if command -v nginx >/dev/null; then
    run "nginx round-robin (3)" http://127.0.0.1:19400/healthz
else
    echo "nginx not installed: skipped (apt-get install nginx-light)"
fi
