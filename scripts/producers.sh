#!/usr/bin/env bash
# Installs, when missing, the real producers the producer tests drive
# (docs/producers.md): Debian's Mosquitto broker, and paho-mqtt and
# influxdb-client from PyPI in a virtual environment (target/producers-venv).
# The tests start their own broker on a free loopback port in a temporary
# directory; the package's service is not used.
#
#   scripts/producers.sh      (scripts/test.sh runs it)
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

started=$(date +%s)
missing=()
[ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    sudo_if_needed apt-get update -qq
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
venv=target/producers-venv
if ! "$venv/bin/python" -c 'import paho.mqtt, influxdb_client' 2>/dev/null; then
    echo "installing paho-mqtt and influxdb-client (PyPI) into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check 'paho-mqtt>=2,<3' 'influxdb-client>=1.40,<2'
fi
echo "producers: $(/usr/sbin/mosquitto -h 2>&1 | head -1)," \
    "$("$venv/bin/python" -c 'import importlib.metadata as m; print("paho-mqtt", m.version("paho-mqtt") + ", influxdb-client", m.version("influxdb-client"))')" \
    "($(($(date +%s) - started)) s)"
