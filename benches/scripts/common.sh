# Shared by the feature-cost scripts (users.sh, events.sh): a scratch
# Redis, nodes, and one load run with the server's CPU time per operation
# (utime + stime from /proc/PID/stat over the measured window).
# Expects: seconds, connections, warmup set; sourced from the repo root.
cargo build --release -q -p sessiond -p sessiond-benches
command -v redis-server >/dev/null || { echo "redis-server is needed: apt-get install redis-server" >&2; exit 1; }
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
ticks=$(getconf CLK_TCK)

redis-server --port 19520 --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >/dev/null 2>&1 &
redis_pid=$!
pids+=($redis_pid)
sleep 0.5

cpu_ticks() { # pids... -> their utime + stime, summed
    local total=0 pid
    for pid in "$@"; do
        total=$(( total + $(awk '{print $14 + $15}' "/proc/$pid/stat") ))
    done
    echo "$total"
}

load() { # label "server-pids" target load-args...
    local label=$1 servers=$2 target=$3
    shift 3
    target/release/sessiond-load --target "$target" -c "$connections" -d "${seconds}s" \
        --warmup "${warmup}s" --keys 20000 --json "$@" >"$work/out.json" 2>/dev/null &
    local loader=$!
    sleep "$warmup"
    local before after
    # shellcheck disable=SC2086
    before=$(cpu_ticks $servers)
    sleep "$seconds"
    # shellcheck disable=SC2086
    after=$(cpu_ticks $servers)
    wait "$loader"
    python3 - "$label" "$(cat "$work/out.json")" "$(( after - before ))" "$ticks" <<'PY'
import json, sys
label, r, used, ticks = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cpu_us = used / ticks * 1e6 / max(r['ops'], 1)
print(f"{label:<40} {r['ops_per_sec']:>9.0f} ops/s  p99 {r['p99_us']:>6} us  server CPU {cpu_us:>6.1f} us/op  errors {r['errors']}")
PY
}

node() { # port-suffix extra-args...; prints the pid
    local suffix=$1
    shift
    target/release/sessiond serve --http "127.0.0.1:196$suffix" --tcp "127.0.0.1:197$suffix" \
        --max-memory 4GiB "$@" 2>"$work/node$suffix.log" &
    pids+=($!)
    echo $! >"$work/pid$suffix"
    sleep 1
}

