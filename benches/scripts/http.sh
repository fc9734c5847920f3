#!/usr/bin/env bash
# The HTTP API's read path against the cheapest route on the same node:
# `GET /v1/sessions/{id}` of a 1 KiB session vs `GET /healthz`, by wrk
# (-t2 -c50), alternating, each for [seconds]; requests per second,
# latency, and the node's CPU time per request (utime + stime over the
# run / requests). Given binaries (an A/B of two builds), one node of
# each runs, and each round measures both routes on each in turn.
# Usage: benches/scripts/http.sh [seconds] [rounds] [binary...]   (needs wrk)
#   default binary: target/release/sessiond, built first
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=benches/scripts/lib.sh
source benches/scripts/lib.sh
seconds=${1:-10}
rounds=${2:-2}
binaries=("${@:3}")
[ ${#binaries[@]} -gt 0 ] || binaries=(target/release/sessiond)
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
bench_setup

data=$(head -c 1000 /dev/zero | tr '\0' x)
nodes=() bases=() ids=()
for index in "${!binaries[@]}"; do
    suffix=$((51 + index))
    port=196$suffix
    "${binaries[index]}" serve --http "127.0.0.1:$port" --tcp "127.0.0.1:197$suffix" \
        --max-memory 1GiB 2>"$work/node$suffix.log" &
    pids+=($!)
    nodes+=($!)
    sleep 1
    bases+=("http://127.0.0.1:$port")
    ids+=("$(curl -s -X POST "${bases[index]}/v1/sessions" -H 'content-type: application/json' \
        -d "{\"data\":{\"v\":\"$data\"}}" | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')")
done

run() { # label node url
    local before after
    before=$(cpu_ticks "$2")
    wrk -t2 -c50 -d"${seconds}s" --latency "$3" >"$work/wrk.out"
    after=$(cpu_ticks "$2")
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

echo "wrk -t2 -c50 -d${seconds}s, a 1 KiB session, $(nproc) cores, binaries: ${binaries[*]}"
for round in $(seq "$rounds"); do
    echo "round $round"
    for index in "${!binaries[@]}"; do
        [ ${#binaries[@]} -eq 1 ] || echo " ${binaries[index]}"
        run "GET /healthz" "${nodes[index]}" "${bases[index]}/healthz"
        run "GET /v1/sessions/{id}" "${nodes[index]}" "${bases[index]}/v1/sessions/${ids[index]}"
    done
done
