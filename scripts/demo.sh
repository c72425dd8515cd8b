#!/usr/bin/env bash
# Ferry's main job, on loopback with embedded defaults: a collector in a fresh
# data directory, an enrolled agent with simulated devices, and — when
# qemu-system-arm is installed — the emulated Cortex-M4 board streaming its
# windows to the agent. Shows a live summary; Ctrl-C stops everything.
#
#   scripts/demo.sh            # data in a new /tmp/ferry-demo.XXXX directory
#
# Ports: collector QUIC 7410/udp, collector HTTP 7411, agent admin 7412,
# agent device link 7413 (all 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> building (release)"
cargo build --release --locked -p ferry-collector -p ferry-agent
BIN=$(realpath -m "${CARGO_TARGET_DIR:-target}")/release
QEMU=0
if command -v qemu-system-arm >/dev/null && rustup target list --installed | grep -qx thumbv7em-none-eabihf; then
    scripts/firmware.sh build >/dev/null && QEMU=1
fi

DIR=$(mktemp -d /tmp/ferry-demo.XXXX)
pids=()
cleanup() {
    trap - INT TERM HUP EXIT
    echo
    echo "==> stopping"
    for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    echo "data and logs are in $DIR"
}
# HUP too: a closed terminal must not leave the collector (which takes
# SIGHUP as "reload") running on its own.
trap cleanup INT TERM HUP EXIT

echo "==> collector: $DIR/collector"
"$BIN/ferry-collector" init --data-dir "$DIR/collector" >/dev/null
sed -i 's/^listen = "0.0.0.0:7410"/listen = "127.0.0.1:7410"/' "$DIR/collector/collector.toml"
"$BIN/ferry-collector" enroll demo-gw --data-dir "$DIR/collector" --out "$DIR/agent" >/dev/null
# The HTTP API needs a token: a read token for the page, Grafana and curl.
(umask 077; "$BIN/ferry-collector" token create --role read --name demo --data-dir "$DIR/collector" \
    >"$DIR/read.token" 2>/dev/null)
export FERRY_TOKEN=$(cat "$DIR/read.token")
"$BIN/ferry-collector" run --config "$DIR/collector/collector.toml" 2>"$DIR/collector.log" &
pids+=($!)

echo "==> agent: $DIR/agent/agent.toml"
cat >>"$DIR/agent/agent.toml" <<'TOML'

[agent]
data_dir = "data"

[admin]
listen = "127.0.0.1:7412"

# 8 simulated devices with 3 sensors each, 10 readings/s per sensor.
[[simulator]]
devices = 8
sensors = 3
rate = 10.0

# The emulated board (and any board that dials in) on the device link.
[[device_tcp_listen]]
listen = "127.0.0.1:7413"

# Humidity is pre-aggregated into 10 s windows with quantile sketches.
[[aggregate]]
metric = "humidity"
period = "10s"
lateness = "2s"
sketch = true
TOML
"$BIN/ferry-agent" check-config --config "$DIR/agent/agent.toml"
"$BIN/ferry-agent" run --config "$DIR/agent/agent.toml" 2>"$DIR/agent.log" &
pids+=($!)

if [ "$QEMU" = 1 ]; then
    echo "==> emulated board (qemu-system-arm, mps2-an386) on the agent's device link"
    ELF=$(realpath -m "${CARGO_TARGET_DIR:-target}")/thumbv7em-none-eabihf/firmware/ferry-mps2-an386
    # The agent listens for boards on 127.0.0.1:7413; wait until it does.
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/7413) 2>/dev/null && break; sleep 0.1; done
    qemu-system-arm -machine mps2-an386 -cpu cortex-m4 -display none -monitor none \
        -semihosting-config enable=on,target=native,arg=ferry,arg=device=0a1b2c3d,arg=period=1000,arg=window=10000 \
        -chardev socket,id=s0,host=127.0.0.1,port=7413,server=off,reconnect=1 \
        -serial chardev:s0 -kernel "$ELF" 2>"$DIR/qemu.log" &
    pids+=($!)
else
    echo "==> qemu-system-arm not installed: no emulated board (scripts/test.sh installs it)"
fi

echo "==> read token (the page asks for it; Grafana: header Authorization: Bearer <token>): $FERRY_TOKEN"
echo "    (kept in $DIR/read.token; more with: ferry-collector token create --role read --name NAME --data-dir $DIR/collector)"
echo "==> query API: curl -H \"Authorization: Bearer \$(cat $DIR/read.token)\" 'http://127.0.0.1:7411/api/v1/query?match=temperature&from=-5m'"
echo "==> fleet page: http://127.0.0.1:7411/   Grafana (Prometheus data source): http://127.0.0.1:7411/prometheus"
sleep 1
"$BIN/ferry-agent" watch --config "$DIR/agent/agent.toml" --collector-http 127.0.0.1:7411
