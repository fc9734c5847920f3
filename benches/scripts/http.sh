#!/usr/bin/env bash
# The HTTP API's read path against the cheapest route on the same node:
# `GET /v1/sessions/{id}` of a 1 KiB session vs `GET /healthz`, by wrk
# (-t2 -c50), alternating, each for [seconds]; requests per second,
# latency, and the node's CPU time per request (utime + stime over the
# run / requests).
# Usage: benches/scripts/http.sh [seconds] [rounds]   (needs wrk)
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=benches/scripts/lib.sh
source benches/scripts/lib.sh
seconds=${1:-10}
rounds=${2:-2}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
bench_setup

start_node 51 --max-memory 1GiB
node=$(cat "$work/node51.pid")
base=http://127.0.0.1:19651
data=$(head -c 1000 /dev/zero | tr '\0' x)
id=$(curl -s -X POST "$base/v1/sessions" -H 'content-type: application/json' \
    -d "{\"data\":{\"v\":\"$data\"}}" | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')

run() { # label path
    local before after
    before=$(cpu_ticks "$node")
    wrk -t2 -c50 -d"${seconds}s" --latency "$base$2" >"$work/wrk.out"
    after=$(cpu_ticks "$node")
    python3 - "$1" "$work/wrk.out" "$((after - before))" "$ticks" <<'PY'
import re, sys
label, path, used, ticks = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
text = open(path).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
total = int(re.search(r"(\d+) requests in", text).group(1))
p99 = re.search(r"99%\s+(\S+)", text).group(1)
print(f"  {label:<28} {rps:>9.0f} req/s  p99 {p99:>8}  server CPU {used / ticks * 1e6 / total:5.2f} us/request")
PY
}

echo "wrk -t2 -c50 -d${seconds}s, one node, a 1 KiB session, $(nproc) cores"
for round in $(seq "$rounds"); do
    echo "round $round"
    run "GET /healthz" /healthz
    run "GET /v1/sessions/{id}" "/v1/sessions/$id"
done
