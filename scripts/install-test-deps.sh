#!/usr/bin/env bash
# Installs what the tests start themselves, when it is missing:
# - from Debian's packages: redis-server, openssl (the TLS tests'
#   certificates), curl (the balancer's HTTP/2 test), prlimit from
#   util-linux (starts a node with its own descriptor limit), chromium (the
#   status page test loads the page in a real headless browser) and
#   python3 with venv (for schemathesis);
# - from PyPI, pinned, into a virtual environment outside the work tree:
#   schemathesis, which attacks the served OpenAPI document
#   (scripts/schemathesis.sh).
# Idempotent and quiet when all is there. Prints nothing else on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

# One place for the pin and the venv's path; scripts/schemathesis.sh reads
# them from here.
# shellcheck source=scripts/test-deps.env
source scripts/test-deps.env

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v prlimit >/dev/null 2>&1 || missing+=(util-linux)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3 python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    echo "missing: ${missing[*]}: installing them from Debian's packages" >&2
    if [ "$(id -u)" -eq 0 ]; then
        apt=(apt-get)
    elif command -v sudo >/dev/null 2>&1; then
        apt=(sudo apt-get)
    else
        echo "cannot install ${missing[*]}: not root and no sudo; run: apt-get install ${missing[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${apt[@]}" update -qq
    "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # The package may start a system-wide instance; the tests start their own.
    (service redis-server stop || systemctl stop redis-server) >/dev/null 2>&1 || true
fi
for tool in redis-server openssl curl prlimit chromium python3; do
    command -v "$tool" >/dev/null || { echo "$tool is still missing" >&2; exit 1; }
done

if ! "$SCHEMATHESIS_VENV/bin/st" --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"; then
    echo "installing schemathesis $SCHEMATHESIS_VERSION into $SCHEMATHESIS_VENV" >&2
    rm -rf "$SCHEMATHESIS_VENV"
    python3 -m venv "$SCHEMATHESIS_VENV"
    "$SCHEMATHESIS_VENV/bin/pip" install --quiet --disable-pip-version-check \
        "schemathesis==$SCHEMATHESIS_VERSION" >&2
    "$SCHEMATHESIS_VENV/bin/st" --version >/dev/null
fi
