#!/usr/bin/env bash
# Attacks a live `sessiond serve` with schemathesis, driven by the OpenAPI
# document the node serves (GET /v1/openapi.json): every check
# (no 5xx, responses conform to the schema, documented status codes,
# content types and headers, negative data rejected, positive data
# accepted, auth not ignored...), for a bounded number of examples per
# operation, once without a token and once with --auth-token. Any failure
# fails the run. Needs scripts/install-test-deps.sh first.
#
# Every check but ensure_resource_availability: a rotation moves a session
# to a new id and its old id is 404 from then on, by design
# (session-fixation defence), while that check counts only a DELETE as the
# end of a resource, so it reports any use of a rotated session's old id
# (create, rotate, then touch of the first id) as a created resource gone
# missing. One worker:
# hypothesis describes its filters by parsing lambdas' source, which
# CPython 3.11's parser does not survive from two threads at once.
#
#   scripts/schemathesis.sh [MAX_EXAMPLES]   (default 40)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/test-deps.env
source scripts/test-deps.env
max_examples="${1:-40}"
st="$SCHEMATHESIS_VENV/bin/st"
config="$PWD/scripts/schemathesis.toml"

# The same packages and features as `cargo test --workspace --all-features`,
# so that the binary the tests built is reused.
cargo build --quiet --workspace --all-features --bin sessiond
binary="${CARGO_TARGET_DIR:-target}/debug/sessiond"
work="$(mktemp -d)"
pid=""
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# Prints two distinct free loopback ports: both sockets are held open
# together, so the kernel cannot hand out the same port twice.
two_free_ports() {
    python3 -c '
import socket
held = [socket.socket() for _ in range(2)]
for s in held:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in held))'
}

# Starts a node with the extra flags given on two free ports, waits until it
# answers. A port taken by another process between the pick and the node's
# bind ("Address already in use") is retried on fresh ports.
start_node() {
    local http tcp attempt
    for attempt in 1 2 3 4 5; do
        read -r http tcp < <(two_free_ports)
        "$binary" serve --http "127.0.0.1:$http" --tcp "127.0.0.1:$tcp" "$@" \
            >"$work/node.log" 2>&1 &
        pid=$!
        base="http://127.0.0.1:$http"
        for _ in $(seq 100); do
            curl -fs "$base/healthz" >/dev/null 2>&1 && return 0
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        pid=""
        grep -q "Address already in use" "$work/node.log" || break
        echo "port taken (attempt $attempt), retrying on fresh ports" >&2
    done
    echo "sessiond did not start:" >&2
    cat "$work/node.log" >&2
    exit 1
}

stop_node() {
    kill "$pid"
    wait "$pid" || true
    pid=""
}

# Runs schemathesis against the node at $base with the extra flags given.
attack() {
    local name="$1"
    shift
    echo "schemathesis ($name): $max_examples examples per operation" >&2
    (cd "$work" && "$st" --config-file "$config" run "$base/v1/openapi.json" \
        --checks all \
        --exclude-checks ensure_resource_availability \
        --max-examples "$max_examples" \
        --seed 1 \
        --workers 1 \
        --request-timeout 5 \
        --suppress-health-check too_slow \
        --report junit --report-dir "$work/report-$name" \
        "$@") || {
        echo "schemathesis ($name) failed; the node's log:" >&2
        tail -n 50 "$work/node.log" >&2
        exit 1
    }
}

start_node
attack open
stop_node

token="schemathesis-$RANDOM$RANDOM"
start_node --auth-token "$token"
attack auth -H "Authorization: Bearer $token"
stop_node
