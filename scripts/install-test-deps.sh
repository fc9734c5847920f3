#!/usr/bin/env bash
# Installs the services the tests start themselves (redis-server) when they
# are missing, from Debian's packages. Idempotent and quiet when all is there.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
    exit 0
fi

echo "redis-server is missing: installing Debian's redis-server package" >&2
if [ "$(id -u)" -eq 0 ]; then
    apt=(apt-get)
elif command -v sudo >/dev/null 2>&1; then
    apt=(sudo apt-get)
else
    echo "cannot install redis-server: not root and no sudo; run: apt-get install redis-server" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${apt[@]}" update -qq
"${apt[@]}" install -y -qq --no-install-recommends redis-server >/dev/null
# The package may start a system-wide instance; the tests start their own.
(service redis-server stop || systemctl stop redis-server) >/dev/null 2>&1 || true
command -v redis-server >/dev/null
