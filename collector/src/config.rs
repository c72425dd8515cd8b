//! The collector's configuration: `collector.toml`, written commented by
//! [`crate::init`] and read by `ferry-collector run`.
//!
//! Every bound the server keeps (connections, streams, frame size, series,
//! rates) is here, so that "bounded by configuration" is checkable in one
//! place.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod default_toml;

pub use default_toml::DEFAULT_TOML;

/// Default UDP port of the QUIC endpoint agents connect to.
pub const DEFAULT_QUIC_PORT: u16 = 7410;
/// Default TCP port of the HTTP API (query, agents, `/metrics`, `/healthz`).
pub const DEFAULT_HTTP_PORT: u16 = 7411;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown or mistyped key.
    #[error("invalid configuration {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said, with line and column.
        message: String,
    },
    /// A value is out of its allowed range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole configuration. `Default` is what `collector.toml` says when
/// freshly written by `init`, with `data_dir` = `.`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory holding `ca.crt`, `ca.key`, `server.crt`, `server.key`, the
    /// store `ferry.redb` and `agents/`. Relative paths in a file are
    /// relative to the file's directory.
    pub data_dir: PathBuf,
    /// The QUIC endpoint.
    pub quic: QuicConfig,
    /// The HTTP API.
    pub http: HttpConfig,
    /// Bounds on what agents may send.
    pub limits: Limits,
    /// Bounds on what one query may hold in memory.
    pub query: QueryLimits,
    /// The embedded store.
    pub storage: StorageConfig,
    /// Processor rules and their lag budget (reloadable).
    pub processor: crate::fanout::ProcessorConfig,
    /// Alert sinks (reloadable).
    pub sink: crate::fanout::SinkConfig,
    /// Cluster mode (docs/cluster.md): absent, the collector is the one
    /// process that ingests and stores (the default).
    pub cluster: Option<ClusterConfig>,
    /// The file this configuration was read from (what a reload re-reads).
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// Test-only fault injection; never set from a file.
    #[serde(skip)]
    #[doc(hidden)]
    pub faults: crate::writer::Faults,
}

/// `[quic]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuicConfig {
    /// UDP address to listen on; default `0.0.0.0:7410`.
    pub listen: SocketAddr,
    /// Close a connection silent for this long (QUIC idle timeout; the
    /// smaller of the two peers' values applies). An agent that died or lost
    /// its link leaves the agents table's `connected` state this long after
    /// its last packet.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Send a QUIC PING after this long without sending anything, so an
    /// idle but healthy connection never reaches `idle_timeout`. Must be
    /// shorter than `idle_timeout`.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// How long an agent has to send its `Hello` after the handshake.
    #[serde(with = "humantime_serde")]
    pub hello_timeout: Duration,
}

/// What a collector does in cluster mode.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClusterRole {
    /// Accepts agents, validates their batches and publishes them to the
    /// log; acks an agent once the log has acked the publish. Stores nothing.
    FrontEnd,
    /// Consumes the log with a durable consumer and applies every record to
    /// its own store (dedupe committed with the data), then acks the log.
    /// Serves queries; accepts no agents.
    Worker,
}

/// `[cluster]`: the durable log between front ends and workers (NATS
/// JetStream; docs/cluster.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `front_end` or `worker`.
    pub role: ClusterRole,
    /// NATS server URLs (`nats://host:port`); the client reconnects to any.
    pub nats: Vec<String>,
    /// The JetStream stream; created by the first process that finds it
    /// missing (default `FERRY`).
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Stream replicas (1, 3 or 5; 3 needs a 3-node cluster).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// JetStream's duplicate window (publishes with the same `Nats-Msg-Id`
    /// inside it are stored once). Workers dedupe by (agent, epoch, seq)
    /// whatever its length.
    #[serde(default = "default_duplicate_window", with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// A worker's durable consumer name: every worker with its own name
    /// receives every record (each worker's store is a full copy).
    #[serde(default)]
    pub consumer: Option<String>,
    /// How long a publish or an ack may wait for the log.
    #[serde(default = "default_log_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// A record a worker took but did not ack for this long (it died, or
    /// its commit is that slow) is delivered again.
    #[serde(default = "default_ack_wait", with = "humantime_serde")]
    pub ack_wait: Duration,
}

fn default_stream() -> String {
    "FERRY".into()
}
fn default_replicas() -> usize {
    1
}
fn default_duplicate_window() -> Duration {
    Duration::from_secs(120)
}
fn default_log_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_ack_wait() -> Duration {
    Duration::from_secs(30)
}

impl ClusterConfig {
    /// Checks the section on its own.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.nats.is_empty() {
            return Err(ConfigError::Invalid(
                "cluster.nats must name at least one NATS server URL".into(),
            ));
        }
        if !matches!(self.replicas, 1 | 3 | 5) {
            return Err(ConfigError::Invalid(format!(
                "cluster.replicas must be 1, 3 or 5, not {}",
                self.replicas
            )));
        }
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !name_ok(&self.stream) {
            return Err(ConfigError::Invalid(format!(
                "cluster.stream {:?} must be letters, digits, '_' or '-'",
                self.stream
            )));
        }
        match (&self.consumer, self.role) {
            (None, ClusterRole::Worker) => Err(ConfigError::Invalid(
                "cluster.consumer (the worker's durable consumer name) is required with role = \"worker\"".into(),
            )),
            (Some(c), _) if !name_ok(c) => Err(ConfigError::Invalid(format!(
                "cluster.consumer {c:?} must be letters, digits, '_' or '-'"
            ))),
            _ if self.duplicate_window.is_zero()
                || self.timeout.is_zero()
                || self.ack_wait.is_zero() =>
            {
                Err(ConfigError::Invalid(
                    "cluster.duplicate_window, cluster.timeout and cluster.ack_wait must be positive"
                        .into(),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// `[http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// TCP address to listen on; default `127.0.0.1:7411`.
    pub listen: SocketAddr,
    /// Which requests need a token (`crate::auth`): `tokens` (every
    /// request but `/healthz` and the fleet page's files; the default) or
    /// `open_reads` (reads need none; loopback addresses only). Admin
    /// actions need an admin token either way.
    pub auth: crate::auth::AuthMode,
}

/// `[query]`: what one query (the JSON API, the CLI, the Prometheus API)
/// may hold. Checked before the data is read where the query says enough
/// (series matched, buckets of a step), and as it is read otherwise;
/// past a bound the query is refused with a 4xx naming it.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct QueryLimits {
    /// Most series one selector may match.
    pub max_series: usize,
    /// Most points (raw readings, windows, samples) one query may hold at
    /// once, and most it may answer.
    pub max_points: usize,
    /// Most bytes those points may take: 16 per reading or sample, a
    /// window's size with its sketch.
    pub max_bytes: u64,
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Most agent connections at once; more are refused.
    pub max_connections: usize,
    /// Most batch streams one connection may have open at once.
    pub max_streams_per_connection: u32,
    /// Largest frame body in bytes, compressed or not (also the largest
    /// decompressed batch).
    pub max_frame_bytes: u32,
    /// Most readings in one batch.
    pub max_batch_readings: usize,
    /// Most distinct series in the store; batches adding more are rejected.
    pub max_series: u64,
    /// Per-agent rate in readings per second (token bucket, 2 s burst);
    /// 0 means unlimited.
    pub agent_readings_per_sec: u64,
    /// Readings older than this (relative to the collector's clock) are
    /// rejected as a bad timestamp.
    #[serde(with = "humantime_serde")]
    pub max_past: Duration,
    /// Readings further in the future than this are rejected.
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
    /// Most dedupe ranges kept per agent journal epoch: gaps between the
    /// batches stored (docs/storage.md, "Dedupe"). A batch that would open
    /// one more is refused as transient (`DEDUPE_FULL`) and resent later.
    pub max_dedupe_ranges: u64,
    /// Most journal epochs (journal identities) kept per agent; a Hello or
    /// batch naming one more is refused as transient (`DEDUPE_FULL`).
    pub max_epochs_per_agent: u64,
}

/// `[storage]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Raw readings older than this are downsampled into windows of
    /// `downsample_window` and then deleted. `0s` keeps raw data forever.
    #[serde(with = "humantime_serde")]
    pub raw_retention: Duration,
    /// Window length that old raw readings are merged into.
    #[serde(with = "humantime_serde")]
    pub downsample_window: Duration,
    /// Aggregates (sent by agents or downsampled) older than this are
    /// deleted. `0s` keeps them forever.
    #[serde(with = "humantime_serde")]
    pub aggregate_retention: Duration,
    /// When the readings stored exceed this many bytes, the oldest chunks
    /// are deleted first. 0 means no limit.
    pub max_bytes: u64,
    /// Most batches committed in one write transaction (group commit).
    pub max_batches_per_commit: usize,
    /// How often retention, downsampling and chunk compaction run.
    #[serde(with = "humantime_serde")]
    pub maintenance_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("."),
            quic: QuicConfig::default(),
            http: HttpConfig::default(),
            limits: Limits::default(),
            query: QueryLimits::default(),
            storage: StorageConfig::default(),
            processor: crate::fanout::ProcessorConfig::default(),
            sink: crate::fanout::SinkConfig::default(),
            cluster: None,
            source: None,
            faults: crate::writer::Faults::default(),
        }
    }
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_QUIC_PORT)),
            idle_timeout: Duration::from_secs(6),
            keep_alive: Duration::from_secs(2),
            hello_timeout: Duration::from_secs(10),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_HTTP_PORT)),
            auth: crate::auth::AuthMode::default(),
        }
    }
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            max_series: 50_000,
            max_points: 5_000_000,
            max_bytes: 256 << 20,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 16_384,
            max_streams_per_connection: 64,
            max_frame_bytes: ferry_proto::stream::DEFAULT_MAX_FRAME,
            max_batch_readings: ferry_proto::batch::MAX_BATCH_READINGS,
            max_series: 1_000_000,
            agent_readings_per_sec: 0,
            max_past: Duration::from_secs(30 * 86_400),
            max_future: Duration::from_secs(600),
            max_dedupe_ranges: crate::store::DEFAULT_MAX_DEDUPE_RANGES,
            max_epochs_per_agent: crate::store::DEFAULT_MAX_EPOCHS,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            raw_retention: Duration::from_secs(7 * 86_400),
            downsample_window: Duration::from_secs(300),
            aggregate_retention: Duration::from_secs(400 * 86_400),
            max_bytes: 0,
            max_batches_per_commit: 512,
            maintenance_interval: Duration::from_secs(60),
        }
    }
}

impl Config {
    /// A configuration for `data_dir` with both listeners on `127.0.0.1`
    /// port 0 (the OS picks; ask [`crate::Collector::quic_addr`]). For tests
    /// and embedding.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            quic: QuicConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                ..QuicConfig::default()
            },
            http: HttpConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                ..HttpConfig::default()
            },
            ..Self::default()
        }
    }

    /// Reads a `collector.toml`; a relative `data_dir` is resolved against
    /// the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if config.data_dir.is_relative() {
            let base = path.parent().unwrap_or_else(|| Path::new("."));
            config.data_dir = if config.data_dir == Path::new(".") {
                base.to_path_buf()
            } else {
                base.join(&config.data_dir)
            };
        }
        config.validate().map_err(|e| match e {
            ConfigError::Invalid(message) => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            e => e,
        })?;
        config.source = Some(path.to_owned());
        Ok(config)
    }

    /// Checks ranges that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(c) = &self.cluster {
            c.validate()?;
        }
        let l = &self.limits;
        if l.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_connections must be at least 1".into(),
            ));
        }
        if l.max_streams_per_connection == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_streams_per_connection must be at least 1".into(),
            ));
        }
        if l.max_frame_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "limits.max_frame_bytes must be at least 1024".into(),
            ));
        }
        if l.max_batch_readings == 0
            || l.max_batch_readings > ferry_proto::batch::MAX_BATCH_READINGS
        {
            return Err(ConfigError::Invalid(format!(
                "limits.max_batch_readings must be between 1 and {}",
                ferry_proto::batch::MAX_BATCH_READINGS
            )));
        }
        if l.max_past.is_zero() || l.max_future.is_zero() {
            return Err(ConfigError::Invalid(
                "limits.max_past and limits.max_future must be positive".into(),
            ));
        }
        if l.max_dedupe_ranges == 0 || l.max_epochs_per_agent == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_dedupe_ranges and limits.max_epochs_per_agent must be at least 1"
                    .into(),
            ));
        }
        let q = &self.quic;
        if q.idle_timeout.is_zero() || q.keep_alive.is_zero() || q.keep_alive >= q.idle_timeout {
            return Err(ConfigError::Invalid(format!(
                "quic.keep_alive ({}) must be positive and shorter than quic.idle_timeout ({})",
                humantime::format_duration(q.keep_alive),
                humantime::format_duration(q.idle_timeout)
            )));
        }
        if self.http.auth == crate::auth::AuthMode::OpenReads
            && !self.http.listen.ip().is_loopback()
        {
            return Err(ConfigError::Invalid(format!(
                "http.listen = \"{}\" is not a loopback address, and http.auth = \"open_reads\" \
                 would serve every reading to whoever can reach it: set http.auth = \"tokens\" \
                 (the default; create tokens with `ferry-collector token create`) or listen on \
                 127.0.0.1",
                self.http.listen
            )));
        }
        let q = &self.query;
        if q.max_series == 0 || q.max_points == 0 || q.max_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "query.max_series and query.max_points must be at least 1, query.max_bytes at least 1024"
                    .into(),
            ));
        }
        let s = &self.storage;
        if s.downsample_window.is_zero() {
            return Err(ConfigError::Invalid(
                "storage.downsample_window must be positive".into(),
            ));
        }
        if s.max_batches_per_commit == 0 {
            return Err(ConfigError::Invalid(
                "storage.max_batches_per_commit must be at least 1".into(),
            ));
        }
        if s.maintenance_interval.is_zero() {
            return Err(ConfigError::Invalid(
                "storage.maintenance_interval must be positive".into(),
            ));
        }
        crate::fanout::rules::validate(&self.processor, &self.sink)
            .map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// Path of the redb store file.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join(crate::STORE_FILE)
    }
}

/// serde adapter for human-readable durations (`"30s"`, `"7days"`).
mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("duration {text:?}: {e}")))
    }
}

#[cfg(test)]
mod tests;
