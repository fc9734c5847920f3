#!/usr/bin/env bash
# Memory per session: RSS growth of a sessiond node (memory-only) and of a
# redis-server after the same load tool seeded N sessions of 512 bytes
# each, in one run; beside it the node's own accounting
# (sessiond_memory_used_bytes) and its ratio to the RSS growth. Then what
# the same sessions cost in the Redis behind a sync node, at Redis's
# default hash-max-listpack-value (64 bytes: each session's hash in the
# large encoding) and at the 8192 the README recommends (compact).
# Usage: benches/scripts/memory.sh [sessions]   (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=benches/scripts/lib.sh
source benches/scripts/lib.sh
sessions=${1:-1000000}
bench_setup

start_redis 19540
redis=$(cat "$work/redis19540.pid")
start_node 41 --max-memory 4GiB
node=$(cat "$work/node41.pid")
start_redis 19541
start_redis 19542 --hash-max-listpack-value 8192
start_node 42 --max-memory 4GiB --redis redis://127.0.0.1:19541
start_node 43 --max-memory 4GiB --redis redis://127.0.0.1:19542

used_bytes() { # the node's sessiond_memory_used_bytes
    curl -s http://127.0.0.1:19641/metrics | awk '/^sessiond_memory_used_bytes / {print $2}'
}

# Seeds $sessions keys of 512 bytes, then reads for a moment (so the
# seeding is what is measured).
seed() { # target
    target/release/sessiond-load --target "$1" -c 50 -d 1s --warmup 0s --keys "$sessions" \
        --value-size 512 --get-ratio 1.0 --json >/dev/null 2>&1
}

report() { # label pid rss-before [accounted-bytes]
    local label=$1 pid=$2 before=$3 accounted=${4:-}
    local after
    after=$(rss_bytes "$pid")
    python3 - "$label" "$before" "$after" "$sessions" "$accounted" <<'PY'
import sys
label, before, after, sessions, accounted = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
grown = after - before
line = f"{label:<24} RSS {before / 2**20:7.1f} -> {after / 2**20:7.1f} MiB: {grown / sessions:6.0f} bytes per session"
if accounted:
    line += f"; accounted {float(accounted) / sessions:6.0f} bytes per session ({float(accounted) / grown:.2f}x the growth)"
print(line)
PY
}

echo "$sessions sessions of 512 bytes, seeded by sessiond-load (50 connections), $(nproc) cores"
before=$(rss_bytes "$redis")
seed redis://127.0.0.1:19540
report "redis-server" "$redis" "$before"
before=$(rss_bytes "$node")
seed sessiond://127.0.0.1:19741
report "sessiond (memory-only)" "$node" "$before" "$(used_bytes)"

used_memory() { # port: Redis's own count of the bytes it holds
    redis-cli -p "$1" info memory | tr -d '\r' | awk -F: '/^used_memory:/ {print $2}'
}

# The Redis behind a sync node: its RSS growth, then its used_memory less
# the creates' claims (a key per create, kept 2 minutes so a repeated
# create is answered once; deleted here rather than waited for).
for redis_and_node in 19541:42 19542:43; do
    port=${redis_and_node%:*} node_suffix=${redis_and_node#*:}
    behind=$(cat "$work/redis$port.pid")
    setting=$(redis-cli -p "$port" config get hash-max-listpack-value | tail -1)
    before=$(rss_bytes "$behind")
    used_before=$(used_memory "$port")
    seed "sessiond://127.0.0.1:197$node_suffix"
    report "Redis behind sync, $setting" "$behind" "$before"
    redis-cli -p "$port" --scan --pattern 'sessiond:op:*' | xargs -r -n 1000 redis-cli -p "$port" del >/dev/null
    echo "  without the creates' claims: $(( ($(used_memory "$port") - used_before) / sessions )) bytes per session (used_memory)"
done
