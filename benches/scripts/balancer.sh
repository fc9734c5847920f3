#!/usr/bin/env bash
# Balancer benchmark, all in one run on the same backends: wrk against the
# backends directly, then through `sessiond balance` (2 workers), nginx
# with 1 and with 2 workers, and HAProxy with 2 threads, each round-robin
# over the same three backends (one nginx serving 100 bytes on three
# ports). For every proxy it prints req/s, p50, p99 and its CPU time per
# request: utime + stime of all its processes (/proc/PID/stat) over the
# measured window, divided by the requests wrk counted, and the user and
# system (kernel) parts of it.
# Installs nginx, haproxy and wrk from Debian's packages when missing.
# With SESSIOND_BASELINE=/path/to/an/older/sessiond, that binary runs too,
# side by side (before/after of a change in one run).
# Usage: benches/scripts/balancer.sh [seconds] [connections] [rounds]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-10}
connections=${2:-64}
rounds=${3:-2}

missing=()
command -v nginx >/dev/null || missing+=(nginx-light)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v wrk >/dev/null || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || { echo "need root to install ${missing[*]}" >&2; exit 1; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
cargo build --release -q -p sessiond

work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
scripts=benches/scripts
sed -e "s#PIDFILE#$work/backends.pid#" $scripts/backends.conf >"$work/backends.conf"
nginx -e stderr -c "$work/backends.conf" -p "$work" 2>"$work/backends.log" &
pids+=($!)
target/release/sessiond balance --listen 127.0.0.1:19300 --admin 127.0.0.1:19301 --workers 2 \
    --upstream http://127.0.0.1:19101,http://127.0.0.1:19102,http://127.0.0.1:19103 \
    2>"$work/balance.log" &
pids+=($!)
declare -A pid_of=([sessiond]=$!)
baseline=${SESSIOND_BASELINE:-}
if [ -n "$baseline" ]; then
    "$baseline" balance --listen 127.0.0.1:19310 --admin 127.0.0.1:19311 --workers 2 \
        --upstream http://127.0.0.1:19101,http://127.0.0.1:19102,http://127.0.0.1:19103 \
        2>"$work/baseline.log" &
    pids+=($!)
    pid_of[baseline]=$!
fi
for workers in 1 2; do
    mkdir -p "$work/nginx$workers"
    sed -e "s/WORKERS/$workers/; s/LISTEN/127.0.0.1:1940$workers/; s#PIDFILE#$work/nginx$workers.pid#" \
        $scripts/nginx.conf >"$work/nginx$workers.conf"
    nginx -e stderr -c "$work/nginx$workers.conf" -p "$work/nginx$workers" 2>"$work/nginx$workers.log" &
    pids+=($!)
    pid_of[nginx$workers]=$!
done
sed -e "s/LISTEN/127.0.0.1:19500/" $scripts/haproxy.cfg >"$work/haproxy.cfg"
haproxy -db -f "$work/haproxy.cfg" 2>"$work/haproxy.log" &
pids+=($!)
pid_of[haproxy]=$!
sleep 2

# CPU ticks of a process and all its children: "utime stime".
ticks() {
    local user=0 system=0 pid
    for pid in "$1" $(pgrep -P "$1" || true); do
        [ -r "/proc/$pid/stat" ] || { echo "process $pid is gone" >&2; exit 1; }
        read -r u s < <(awk '{print $14, $15}' "/proc/$pid/stat")
        user=$((user + u))
        system=$((system + s))
    done
    echo "$user $system"
}

hz=$(getconf CLK_TCK)
run() { # label url pid
    local before after out requests rps p50 p99 cpu
    before=$([ -n "$3" ] && ticks "$3" || echo 0 0)
    out=$(wrk -t 2 -c "$connections" -d "${seconds}s" --latency "$2")
    after=$([ -n "$3" ] && ticks "$3" || echo 0 0)
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    if [ -n "$3" ]; then
        cpu=$(awk -v b="$before" -v a="$after" -v hz="$hz" -v n="$requests" 'BEGIN {
            split(b, x, " "); split(a, y, " ")
            us = 1e6 / hz / n
            printf "%.1f us | %.1f us | %.1f us", (y[1] + y[2] - x[1] - x[2]) * us, (y[1] - x[1]) * us, (y[2] - x[2]) * us
        }')
    else
        cpu="- | - | -"
    fi
    printf '| %-30s | %9s | %8s | %8s | %s |\n' "$1" "$rps" "$p50" "$p99" "$cpu"
}

echo "wrk -t 2 -c $connections -d ${seconds}s --latency, 100-byte answers, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| proxy | req/s | p50 | p99 | proxy CPU per request | user | system |"
echo "|---|--:|--:|--:|--:|--:|--:|"
for round in $(seq "$rounds"); do
    run "direct to the backends" http://127.0.0.1:19101/ ""
    run "sessiond balance (2 workers)" http://127.0.0.1:19300/ "${pid_of[sessiond]}"
    if [ -n "$baseline" ]; then
        run "baseline sessiond (2 workers)" http://127.0.0.1:19310/ "${pid_of[baseline]}"
    fi
    run "nginx 1.22, 1 worker" http://127.0.0.1:19401/ "${pid_of[nginx1]}"
    run "nginx 1.22, 2 workers" http://127.0.0.1:19402/ "${pid_of[nginx2]}"
    run "HAProxy 2.6, 2 threads" http://127.0.0.1:19500/ "${pid_of[haproxy]}"
done
