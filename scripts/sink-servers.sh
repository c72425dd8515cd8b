#!/usr/bin/env bash
# Installs, when missing, the real servers the storage-sink tests and the
# sink benchmark write to (docs/sinks.md): Debian's Prometheus, PostgreSQL 15
# with pg_virtualenv (postgresql-common), and DuckDB from PyPI in a virtual
# environment (target/sink-venv) to read the Parquet files. The tests start
# each server themselves on a free loopback port in a temporary directory.
#
#   scripts/sink-servers.sh      (scripts/test.sh runs it)
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

started=$(date +%s)
missing=()
command -v prometheus >/dev/null || missing+=(prometheus)
command -v pg_virtualenv >/dev/null || missing+=(postgresql-common)
[ -x /usr/lib/postgresql/15/bin/postgres ] || missing+=(postgresql-15)
command -v psql >/dev/null || missing+=(postgresql-client-15)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    sudo_if_needed apt-get update -qq
    # (The tests start their own servers; the packages' services are not used.)
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
venv=target/sink-venv
if ! "$venv/bin/python" -c 'import duckdb' 2>/dev/null; then
    echo "installing DuckDB (PyPI) into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check duckdb
fi
echo "sink servers: $(prometheus --version 2>&1 | head -1 | cut -d' ' -f1-3)," \
    "$(/usr/lib/postgresql/15/bin/postgres --version)," \
    "duckdb $("$venv/bin/python" -c 'import duckdb; print(duckdb.__version__)')" \
    "($(($(date +%s) - started)) s)"
