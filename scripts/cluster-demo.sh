#!/usr/bin/env bash
# Cluster mode on one machine (docs/cluster.md): three NATS nodes (one
# JetStream cluster, stream R=3, sync_interval: always), two collector front
# ends, two workers (each a full copy) and an agent with simulated devices
# configured with both front ends. Prints `cluster status` every 5 s;
# Ctrl-C stops everything. Kill any one process (kill -9 <pid>, pids are
# printed) and watch the rest carry on.
#
#   scripts/cluster-demo.sh     # data in a new /tmp/ferry-cluster.XXXX
#   FERRY_DEMO_BIN=/usr/bin scripts/cluster-demo.sh   # binaries already built
#
# Ports (127.0.0.1): NATS clients 7421-7423, routes 7431-7433; front ends
# QUIC 7410 and 7440/udp; workers' HTTP 7441 and 7442; front ends' HTTP
# 7443 and 7444; agent admin 7412.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${FERRY_DEMO_BIN:-}" ]; then
    BIN=$(realpath "$FERRY_DEMO_BIN")
    echo "==> binaries from $BIN"
else
    echo "==> building (release)"
    cargo build --release --locked -p ferry-collector -p ferry-agent
    BIN=$(realpath -m "${CARGO_TARGET_DIR:-target}")/release
fi
NATS=$(scripts/nats.sh | tail -1)

DIR=$(mktemp -d /tmp/ferry-cluster.XXXX)
pids=()
cleanup() {
    trap - INT TERM HUP EXIT
    echo
    echo "==> stopping"
    for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    echo "data and logs are in $DIR"
}
trap cleanup INT TERM HUP EXIT

routes="nats://127.0.0.1:7431, nats://127.0.0.1:7432, nats://127.0.0.1:7433"
for i in 1 2 3; do
    cat >"$DIR/n$i.conf" <<CONF
server_name: n$i
listen: 127.0.0.1:742$i
jetstream { store_dir: "$DIR/n$i", sync_interval: always }
cluster { name: ferry, listen: 127.0.0.1:743$i, routes: [$routes] }
CONF
    "$NATS" -c "$DIR/n$i.conf" 2>"$DIR/n$i.log" &
    pids+=($!)
    echo "==> NATS n$i: pid $!"
done

"$BIN/ferry-collector" init --data-dir "$DIR/template" >/dev/null
"$BIN/ferry-collector" enroll demo-gw --data-dir "$DIR/template" --out "$DIR/agent" \
    --address 127.0.0.1:7410 >/dev/null
nats='["nats://127.0.0.1:7421", "nats://127.0.0.1:7422", "nats://127.0.0.1:7423"]'
start() { # name role quic http [consumer]
    cp -r "$DIR/template" "$DIR/$1"
    cat >"$DIR/$1/collector.toml" <<TOML
data_dir = "."
[quic]
listen = "$3"
[http]
listen = "$4"
[cluster]
role = "$2"
nats = $nats
replicas = 3
${5:+consumer = \"$5\"}
TOML
    "$BIN/ferry-collector" run --config "$DIR/$1/collector.toml" 2>"$DIR/$1.log" &
    pids+=($!)
    echo "==> $2 $1: pid $!, HTTP $4"
}
start w1 worker 127.0.0.1:0 127.0.0.1:7441 w1
start w2 worker 127.0.0.1:0 127.0.0.1:7442 w2
start fe1 front_end 127.0.0.1:7410 127.0.0.1:7443
start fe2 front_end 127.0.0.1:7440 127.0.0.1:7444

sed -i 's/^address = .*/address = "127.0.0.1:7410"\nfallback = ["127.0.0.1:7440"]/' "$DIR/agent/agent.toml"
cat >>"$DIR/agent/agent.toml" <<'TOML'

[agent]
data_dir = "data"

[admin]
listen = "127.0.0.1:7412"

[shipping]
idle_timeout = "2s"
keep_alive = "500ms"
fail_back_after = "1m"

[[simulator]]
devices = 8
sensors = 3
rate = 10.0
TOML
"$BIN/ferry-agent" run --config "$DIR/agent/agent.toml" 2>"$DIR/agent.log" &
pids+=($!)
echo "==> agent: pid $!"
echo "==> queries: $BIN/ferry-collector query temperature --data-dir $DIR/w1"
while sleep 5; do
    echo "--- $(date +%T)"
    "$BIN/ferry-collector" cluster status --config "$DIR/w1/collector.toml" || true
done
