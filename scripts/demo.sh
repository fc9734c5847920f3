#!/usr/bin/env bash
# The docker-compose topology as local processes, for a machine without
# Docker: Redis (AOF on, when redis-server is installed) <- two sessiond
# store nodes <- three cart apps <- sessiond balance on :8080 (admin :8081).
# Without redis-server the store nodes run memory-only, and it says so.
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p sessiond
cargo build --release -p sessiond-client --features tower-sessions --example cart
bin=target/release
work=$(mktemp -d)
pids=()
cleanup() {
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

start() { # name, command...
    local name=$1
    shift
    "$@" >"$work/$name.log" 2>&1 &
    pids+=($!)
}

wait_for() { # url
    for _ in $(seq 100); do
        curl -fsS "$1" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "timed out waiting for $1 (logs in $work)" >&2
    exit 1
}

redis_args=()
if command -v redis-server >/dev/null 2>&1; then
    start redis redis-server --port 6379 --bind 127.0.0.1 --dir "$work" --appendonly yes --save ""
    sleep 0.5
    redis_args=(--redis redis://127.0.0.1:6379)
    echo "Redis on 127.0.0.1:6379 (AOF on): sessions survive store node restarts."
else
    echo "redis-server is not installed: the store nodes run MEMORY-ONLY (a killed node loses its sessions)."
    echo "Install it (apt-get install redis-server) for the replicated stack."
fi

start store-1 "$bin/sessiond" serve --http 127.0.0.1:7700 --tcp 127.0.0.1:7701 "${redis_args[@]}"
start store-2 "$bin/sessiond" serve --http 127.0.0.1:7710 --tcp 127.0.0.1:7711 "${redis_args[@]}"
wait_for http://127.0.0.1:7700/healthz
wait_for http://127.0.0.1:7710/healthz
for i in 1 2 3; do
    start "app-$i" "$bin/examples/cart" --listen "127.0.0.1:300$i" \
        --sessiond 127.0.0.1:7701,127.0.0.1:7711 --name "app-$i"
done
for i in 1 2 3; do wait_for "http://127.0.0.1:300$i/healthz"; done
start balancer "$bin/sessiond" balance --listen 127.0.0.1:8080 --admin 127.0.0.1:8081 \
    --upstream http://127.0.0.1:3001,http://127.0.0.1:3002,http://127.0.0.1:3003
wait_for http://127.0.0.1:8081/healthz

cat <<TXT

The stack is up (logs in $work):
  balancer  http://127.0.0.1:8080   status page http://127.0.0.1:8081/
  apps      127.0.0.1:3001-3003     store nodes 127.0.0.1:7701, 127.0.0.1:7711

Try:
  curl -c jar -b jar localhost:8080/                  # run it a few times: the instance changes, visits count up
  curl -c jar -b jar -X POST localhost:8080/cart/apple
  curl -c jar -b jar -X POST localhost:8080/login/alice   # new session id, same cart
  pkill -f 'name app-2'                                # kill an app: nothing is lost
  pkill -f 'http 127.0.0.1:7700'                       # kill a store node: with Redis, nothing is lost

Ctrl-C stops everything.
TXT
wait
