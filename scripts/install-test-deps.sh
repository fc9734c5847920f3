#!/usr/bin/env bash
# Installs what the tests start themselves (redis-server, openssl for the
# TLS tests' certificates, curl for the balancer's HTTP/2 test, and prlimit
# from util-linux, which starts a node with its own descriptor limit) when
# it is missing, from Debian's packages.
# Idempotent and quiet when all is there.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v prlimit >/dev/null 2>&1 || missing+=(util-linux)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

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
command -v redis-server >/dev/null && command -v openssl >/dev/null \
    && command -v prlimit >/dev/null && command -v curl >/dev/null
