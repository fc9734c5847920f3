# Helpers shared by the benchmark scripts (sourced, not run): release
# binaries, servers started on fixed ports and stopped on exit, and the CPU
# time of server processes read from /proc.

# Builds the release binaries, makes a work directory and stops every
# server started through these helpers when the script exits.
bench_setup() {
    cargo build --release -q -p sessiond -p sessiond-benches
    command -v redis-server >/dev/null || {
        echo "redis-server is needed: apt-get install redis-server" >&2
        exit 1
    }
    work=$(mktemp -d)
    pids=()
    trap 'stop_all; rm -rf "$work"' EXIT
    ticks=$(getconf CLK_TCK)
}

# Stops the servers started through these helpers, newest first, each
# before the next: a node stops while its Redis still answers, so it
# exits with nothing left to flush.
stop_all() {
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill "${pids[i]}" 2>/dev/null || true
        wait "${pids[i]}" 2>/dev/null || true
    done
}

# Starts a redis-server without persistence on port $1 (settings of its
# own after it, as redis-server takes them); its pid goes to
# $work/redis$1.pid.
start_redis() { # port extra-args...
    local port=$1
    shift
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" "$@" \
        >/dev/null 2>&1 &
    pids+=($!)
    echo $! >"$work/redis$port.pid"
    sleep 0.5
}

# Starts a store node with HTTP on 196<suffix> and the binary protocol on
# 197<suffix>; its pid goes to $work/node<suffix>.pid.
start_node() { # port-suffix extra-args...
    local suffix=$1
    shift
    target/release/sessiond serve --http "127.0.0.1:196$suffix" --tcp "127.0.0.1:197$suffix" \
        "$@" 2>"$work/node$suffix.log" &
    pids+=($!)
    echo $! >"$work/node$suffix.pid"
    sleep 1
}

# The utime + stime of the processes "$@", summed, in clock ticks.
cpu_ticks() { # pids...
    local total=0 pid
    for pid in "$@"; do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total"
}

# The resident set size of process $1, in bytes.
rss_bytes() { # pid
    awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$1/status"
}

# Requests served and socket reads made so far by a server, as "requests
# reads": a sessiond node by its HTTP port's /metrics, Redis by INFO.
server_reads() { # redis:<port> | sessiond:<http-port>
    case $1 in
    redis:*)
        redis-cli -p "${1#redis:}" info stats | tr -d '\r' | awk -F: '
            /^total_commands_processed:/ {c = $2}
            /^total_reads_processed:/ {r = $2}
            END {print c + 0, r + 0}'
        ;;
    sessiond:*)
        curl -s "http://127.0.0.1:${1#sessiond:}/metrics" | awk '
            /^sessiond_tcp_requests_total/ {c += $NF}
            /^sessiond_tcp_reads_total/ {r += $NF}
            END {print c + 0, r + 0}'
        ;;
    esac
}

# One feature-cost run (users.sh, events.sh): $connections connections for
# $seconds seconds after a 2 s warm-up, 20,000 keys, the CPU of the server
# processes "$2" over the measured window; prints one summary line.
feature_load() { # label "server-pids" target load-args...
    local label=$1 servers=$2 target=$3 pid
    shift 3
    local pid_args=()
    for pid in $servers; do pid_args+=(--server-pid "$pid"); done
    target/release/sessiond-load --target "$target" -c "$connections" -d "${seconds}s" \
        --warmup 2s --keys 20000 --json "${pid_args[@]}" "$@" 2>/dev/null |
        python3 benches/scripts/report.py line "$label" 1 "$label" 2>&1 >/dev/null
}
