//! The commented `collector.toml` that `init` writes: every key with its
//! default (the tests parse it back and compare with `Config::default()`).

/// The commented `collector.toml` written by `init`.
pub const DEFAULT_TOML: &str = r#"# Ferry collector configuration (ferry-collector run --config collector.toml).
# Every key is optional; the values shown are the defaults.

# Directory with the CA (ca.crt, ca.key), the server certificate
# (server.crt, server.key), enrolled agents (agents/) and the store
# (ferry.redb). Relative to this file.
data_dir = "."

[quic]
# UDP address agents connect to: QUIC, ALPN "ferry/1", TLS 1.3 with client
# certificates issued by this collector's CA.
listen = "0.0.0.0:7410"
# Close connections silent for this long: a killed agent leaves the
# "connected" state this long after its last packet (the smaller of the
# collector's and the agent's value applies).
idle_timeout = "6s"
# Ping a connection after this long without traffic, so an idle but healthy
# agent stays connected. Shorter than idle_timeout.
keep_alive = "2s"
# How long a new connection may take to send its Hello.
hello_timeout = "10s"

[http]
# TCP address of the HTTP API: the fleet page (/), /api/v1/..., the
# Prometheus API (/prometheus/api/v1/...), /metrics, /healthz.
listen = "127.0.0.1:7411"
# Who may use it. "tokens": every request but /healthz and the fleet page's
# files needs a token (Authorization: Bearer, or basic auth with the token
# as the password): `ferry-collector token create --role read|admin --name
# NAME`. "open_reads": reads need no token (loopback addresses only).
# Admin actions (revoke, reload, tokens) need an admin token either way;
# the CLI on this machine uses admin.token, which the server writes here.
auth = "tokens"

[query]
# What one query may hold in memory (the JSON API, the CLI and the
# Prometheus API); past a bound it is refused with a 4xx naming it.
# Series one selector may match.
max_series = 50000
# Readings, windows and samples held at once (and answered).
max_points = 5000000
# Bytes they take: 16 per reading or sample, a window ~100 plus its sketch.
max_bytes = 268435456

[limits]
# Agent connections at once; more are refused.
max_connections = 16384
# Batch streams open at once per connection.
max_streams_per_connection = 64
# Largest frame body in bytes, also after decompression (4 MiB).
max_frame_bytes = 4194304
# Readings in one batch.
max_batch_readings = 1048576
# Distinct series in the store.
max_series = 1000000
# Readings per second per agent (2 s burst); 0 = unlimited.
agent_readings_per_sec = 0
# Timestamp sanity window: readings older than max_past or further than
# max_future ahead of the collector's clock are refused one by one (counted
# per agent, device and reason: `ferry-collector drops`); the rest of their
# batch is stored. Agents learn the window in the Welcome.
max_past = "30days"
max_future = "10m"
# Dedupe state bounds (docs/storage.md, "Dedupe"): gaps kept per agent
# journal epoch, and journal epochs kept per agent. Past them, batches are
# refused as transient and resent later; nothing is forgotten.
max_dedupe_ranges = 10000
max_epochs_per_agent = 1000

[storage]
# Raw readings older than this are merged into windows of downsample_window
# (count, sum, min, max, first, last and a quantile sketch), then deleted.
# "0s" keeps raw readings forever.
raw_retention = "7days"
downsample_window = "5m"
# Aggregates older than this are deleted; "0s" keeps them forever.
aggregate_retention = "400days"
# Bytes of readings kept at most; the oldest go first. 0 = no limit.
max_bytes = 0
# Batches per write transaction (group commit; each commit is one fsync).
max_batches_per_commit = 512
# How often retention, downsampling and compaction run.
maintenance_interval = "60s"

# Processors and sinks (docs/alerts.md): none by default. Reloaded without a
# restart by SIGHUP or `ferry-collector reload`. For example:
#
# [processor]
# # Stored batches the processors may fall behind; then "backpressure"
# # (ingest waits) or "skip" (jump ahead, counted and reported).
# lag_budget = { max = 100000, policy = "backpressure" }
#
# [[processor.threshold]]
# name = "heart-rate"
# match = 'heart_rate_bpm{patient="p-17"}'
# above = 120
# below = 40
# for = "30s"
# hysteresis = 5
#
# [processor.offline]
# after = "5m"
#
# [[sink.webhook]]
# name = "pager"
# url = "http://127.0.0.1:9000/alerts"
#
# [[sink.log]]
# name = "log"

# Storage sinks (docs/sinks.md): every stored reading, exactly once, to
# Prometheus (remote_write), PostgreSQL or Parquet files. For example:
#
# [sink.prom]
# kind = "prometheus_remote_write"
# url = "http://127.0.0.1:9090/api/v1/write"
#
# [sink.warehouse]
# kind = "postgres"
# dsn = "host=127.0.0.1 user=ferry password=secret dbname=telemetry"
#
# [sink.lake]
# kind = "parquet"
# dir = "/var/lib/ferry-lake"
# roll_every = "1h"
"#;
