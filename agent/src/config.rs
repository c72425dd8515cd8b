//! `agent.toml`: every setting of the daemon, with its default.
//!
//! The file starts from the `[collector]` snippet that
//! `ferry-collector enroll` writes; paths in it are relative to the file.
//! Unknown keys are errors, and every error names the file, the line and the
//! key (`ferry-agent check-config`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::journal::{AggregateRule, FullPolicy, JournalConfig};
use crate::window::{LatePolicy, WindowRule};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (the OS error is the source).
    #[error("{path}: cannot read the file")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TOML is invalid or a key has a bad value (the message has the
    /// line, column and key).
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What and where.
        message: String,
    },
}

pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "{s:?} is not a duration like \"10s\" or \"250ms\": {e}"
        ))
    })
}

fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        N(u64),
        S(String),
    }
    match Size::deserialize(d)? {
        Size::N(n) => Ok(n),
        Size::S(s) => parse_size(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{s:?} is not a size like \"512 MiB\", \"2 GiB\" or a byte count"
            ))
        }),
    }
}

/// Parses `"512 MiB"`, `"2GiB"`, `"100 kB"`, `"1000"`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the agent keeps its journal.
    #[serde(default)]
    pub agent: AgentSection,
    /// The collector and this agent's credentials (from `enroll`).
    pub collector: CollectorSection,
    /// Journal bounds and batching.
    #[serde(default)]
    pub journal: JournalSection,
    /// Shipping to the collector.
    #[serde(default)]
    pub shipping: ShippingSection,
    /// The local status and metrics endpoint.
    #[serde(default)]
    pub admin: AdminSection,
    /// Window rules, first match wins.
    #[serde(default)]
    pub aggregate: Vec<AggregateSection>,
    /// Simulated devices.
    #[serde(default)]
    pub simulator: Vec<crate::sources::sim::SimConfig>,
    /// Influx line protocol over TCP.
    #[serde(default)]
    pub influx_tcp: Vec<InfluxListen>,
    /// Influx line protocol over UDP.
    #[serde(default)]
    pub influx_udp: Vec<InfluxListen>,
    /// The InfluxDB HTTP write API (`/api/v2/write`, `/write`).
    #[serde(default)]
    pub influx_http: Vec<crate::sources::influx::InfluxHttpConfig>,
    /// MQTT subscriptions.
    #[serde(default)]
    pub mqtt: Vec<crate::sources::mqtt::MqttConfig>,
    /// Ferry devices: boards that connect over TCP (emulated boards).
    #[serde(default)]
    pub device_tcp_listen: Vec<DeviceListen>,
    /// Ferry devices: boards the agent connects to over TCP.
    #[serde(default)]
    pub device_tcp_connect: Vec<DeviceConnect>,
    /// Ferry devices on serial ports.
    #[serde(default)]
    pub device_serial: Vec<DeviceSerial>,
    /// Directory the config file is in (paths are relative to it).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// `[[influx_tcp]]` / `[[influx_udp]]`: an address and the source settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxListen {
    /// Address to listen on, e.g. `127.0.0.1:8094`; port 0 picks one.
    pub listen: SocketAddr,
    /// Parser and limits.
    #[serde(flatten)]
    pub source: crate::sources::influx::InfluxConfig,
}

/// `[[device_tcp_listen]]`: accept boards that connect to the agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceListen {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Link settings.
    #[serde(flatten)]
    pub link: crate::sources::device::DeviceLinkConfig,
}

/// `[[device_tcp_connect]]`: connect to a board's TCP serial bridge.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConnect {
    /// The board's address.
    pub connect: SocketAddr,
    /// Link settings.
    #[serde(flatten)]
    pub link: crate::sources::device::DeviceLinkConfig,
}

/// `[[device_serial]]`: a board on a serial port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSerial {
    /// The port, e.g. `/dev/ttyACM0`.
    pub path: String,
    /// Baud rate.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// Link settings.
    #[serde(flatten)]
    pub link: crate::sources::device::DeviceLinkConfig,
}

fn default_baud() -> u32 {
    115_200
}

/// `[agent]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSection {
    /// Data directory: holds `journal.redb`.
    pub data_dir: PathBuf,
    /// The shortest pause between checks of windows and lingering batches
    /// when no input comes. With nothing waiting on time the agent sleeps
    /// until input arrives.
    #[serde(deserialize_with = "duration")]
    pub tick: Duration,
    /// How often the readings received per source are reported to the
    /// collector as health records (kind 7, docs/protocol.md).
    #[serde(deserialize_with = "duration")]
    pub health_interval: Duration,
    /// Oldest timestamp accepted at ingest, before the collector's first
    /// Welcome says its own (readings older than now minus this are
    /// refused and counted, health kind 8). The collector's default.
    #[serde(deserialize_with = "duration")]
    pub max_past: Duration,
    /// Furthest timestamp ahead of now accepted at ingest, before the first
    /// Welcome (as `max_past`).
    #[serde(deserialize_with = "duration")]
    pub max_future: Duration,
    /// Refuse readings outside the collector's time window at ingest (the
    /// default). Off, such readings are journaled and shipped, and the
    /// collector refuses them one by one (counted at the collector).
    pub check_timestamps: bool,
    /// One bound for series-key caches, connection buffers, chunks waiting
    /// for their commit, the batch being filled and window state (`"8 MiB"`
    /// or bytes); by default what a 32 MiB agent has
    /// left after the journal's page cache and a fixed reserve
    /// ([`crate::limits::default_budget`]).
    #[serde(deserialize_with = "optional_bytes")]
    pub memory_budget: Option<u64>,
}

impl AgentSection {
    /// The memory budget in bytes, with a journal page cache of
    /// `journal_cache` bytes.
    pub fn memory_budget(&self, journal_cache: u64) -> u64 {
        self.memory_budget
            .unwrap_or_else(|| crate::limits::default_budget(journal_cache))
    }
}

fn optional_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    bytes(d).map(Some)
}

impl Default for AgentSection {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("ferry-agent-data"),
            tick: Duration::from_millis(5),
            health_interval: Duration::from_secs(10),
            max_past: Duration::from_secs(30 * 86_400),
            max_future: Duration::from_secs(600),
            check_timestamps: true,
            memory_budget: None,
        }
    }
}

/// `[collector]`: written by `ferry-collector enroll`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorSection {
    /// QUIC address, `host:port`.
    pub address: String,
    /// Other collectors (cluster mode, docs/cluster.md), `host:port` each,
    /// tried in order when `address` cannot be reached; the shipper goes
    /// back to `address` after `[shipping] fail_back_after`.
    #[serde(default)]
    pub fallback: Vec<String>,
    /// Name on the collector's certificate.
    pub server_name: String,
    /// The collector's CA certificate.
    pub ca: PathBuf,
    /// This agent's certificate.
    pub cert: PathBuf,
    /// This agent's private key.
    pub key: PathBuf,
    /// This agent's id (for logs; the collector reads it from the certificate).
    pub agent_id: String,
}

/// `[journal]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalSection {
    /// Disk budget: `"1 GiB"` or bytes.
    #[serde(deserialize_with = "bytes")]
    pub budget: u64,
    /// `drop_oldest` (default) or `backpressure`.
    pub policy: PolicyName,
    /// Readings per batch.
    pub batch_max_readings: usize,
    /// Longest a reading waits for its batch to fill.
    #[serde(deserialize_with = "duration")]
    pub batch_linger: Duration,
    /// Seal a batch at a commit while the shipper has sent everything sealed
    /// and at most `eager_seal_unacked` batches await their ack (low latency
    /// when it keeps up; batches grow when it does not). `false`: batches
    /// fill to `batch_max_readings` or `batch_linger` (agent/README.md).
    pub eager_seal: bool,
    /// How many sealed batches may await the collector's ack for a commit
    /// still to seal eagerly. 0 (default): Nagle's rule, a batch is sealed
    /// once the previous one is answered, so a steady stream goes out in
    /// batches of one round trip's readings (fewer wire bytes) for at most
    /// one round trip of added latency.
    pub eager_seal_unacked: usize,
    /// redb page cache, bytes.
    #[serde(deserialize_with = "bytes")]
    pub cache: u64,
}

impl Default for JournalSection {
    fn default() -> Self {
        Self {
            budget: 1 << 30,
            policy: PolicyName::DropOldest,
            batch_max_readings: 16_384,
            batch_linger: Duration::from_millis(10),
            eager_seal: true,
            eager_seal_unacked: 0,
            cache: 4 << 20,
        }
    }
}

/// Journal full policy names.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PolicyName {
    /// Drop the oldest batches, counted.
    DropOldest,
    /// Slow sources down.
    Backpressure,
}

/// `[shipping]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShippingSection {
    /// Bytes of batches in flight.
    #[serde(deserialize_with = "bytes")]
    pub max_in_flight: u64,
    /// `oldest_first` (default) or `newest_first`.
    pub order: Order,
    /// `zstd` (default) or `none`.
    pub compression: CompressionName,
    /// First reconnect delay.
    #[serde(deserialize_with = "duration")]
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    #[serde(deserialize_with = "duration")]
    pub backoff_max: Duration,
    /// Give up on a connection silent for this long (QUIC idle timeout; the
    /// smaller of the agent's and the collector's applies): a dead
    /// collector is noticed, and reconnected to, this soon.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// Ping the collector after this long without traffic, so a healthy
    /// idle connection never times out. Shorter than `idle_timeout`.
    #[serde(deserialize_with = "duration")]
    pub keep_alive: Duration,
    /// With `[collector] fallback` addresses: how long a session with a
    /// fallback lasts before the first collector is tried again.
    #[serde(deserialize_with = "duration")]
    pub fail_back_after: Duration,
    /// Send batches of up to 4096 readings compact (protocol revision 4)
    /// when the collector takes them: series as ids defined once per
    /// session instead of keys in every batch, and (revision 5) values
    /// coded against value references when the collector keeps them.
    pub compact: bool,
}

impl Default for ShippingSection {
    fn default() -> Self {
        Self {
            max_in_flight: 1 << 20,
            order: Order::OldestFirst,
            compression: CompressionName::Zstd,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(6),
            keep_alive: Duration::from_secs(2),
            fail_back_after: Duration::from_secs(300),
            compact: true,
        }
    }
}

/// Backlog order.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Oldest batches first.
    OldestFirst,
    /// Newest batches first.
    NewestFirst,
}

/// Batch compression.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CompressionName {
    /// zstd level 1 when the collector accepts it.
    Zstd,
    /// None.
    None,
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Address of `/status` and `/metrics`; port 0 picks one. Loopback
    /// only, unless `token` is set.
    pub listen: SocketAddr,
    /// When set, every request but `/healthz` must carry
    /// `Authorization: Bearer <token>` (at least 16 characters); required
    /// to listen beyond loopback.
    pub token: Option<String>,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7412)),
            token: None,
        }
    }
}

/// `[[aggregate]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateSection {
    /// Metric name pattern (`*` wildcards).
    pub metric: String,
    /// Window length.
    #[serde(deserialize_with = "duration")]
    pub period: Duration,
    /// How late a reading may be and still count.
    #[serde(default, deserialize_with = "duration")]
    pub lateness: Duration,
    /// Keep a DDSketch per window.
    #[serde(default)]
    pub sketch: bool,
    /// `raw` (default: ship late readings raw) or `drop` (count them).
    #[serde(default)]
    pub late: LateName,
}

/// Late reading policy names.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LateName {
    /// Ship raw.
    #[default]
    Raw,
    /// Drop and count.
    Drop,
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Self::parse(&text, &path.display().to_string(), base)
    }

    /// Parses `text` (from `name`) with paths relative to `base_dir`.
    pub fn parse(text: &str, name: &str, base_dir: PathBuf) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: name.to_string(),
            message,
        };
        let mut config: Config =
            toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_string()))?;
        config.base_dir = base_dir;
        for (i, a) in config.aggregate.iter().enumerate() {
            if a.period.is_zero() {
                return Err(invalid(format!(
                    "aggregate[{i}].period: must be longer than zero"
                )));
            }
            if a.metric.is_empty() {
                return Err(invalid(format!("aggregate[{i}].metric: empty pattern")));
            }
        }
        for h in &config.influx_http {
            h.check().map_err(|e| invalid(e.to_string()))?;
        }
        for m in &config.mqtt {
            m.check().map_err(|e| invalid(e.to_string()))?;
        }
        let mut names: Vec<&str> = config.mqtt.iter().map(|m| m.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(invalid(format!(
                "[[mqtt]] name {:?} is used twice (each source keeps its own redelivery marks)",
                w[0]
            )));
        }
        if config.journal.batch_max_readings == 0 {
            return Err(invalid(
                "journal.batch_max_readings: must be at least 1".into(),
            ));
        }
        if config.journal.budget < 64 << 10 {
            return Err(invalid("journal.budget: at least 64 KiB".into()));
        }
        let s = &config.shipping;
        if s.keep_alive.is_zero() || s.keep_alive >= s.idle_timeout {
            return Err(invalid(
                "shipping.keep_alive: must be positive and shorter than shipping.idle_timeout"
                    .into(),
            ));
        }
        match &config.admin.token {
            Some(t) if t.trim().len() < 16 => {
                return Err(invalid(
                    "admin.token: at least 16 characters (e.g. `openssl rand -hex 32`)".into(),
                ));
            }
            None if !config.admin.listen.ip().is_loopback() => {
                return Err(invalid(format!(
                    "admin.listen = \"{}\" is not a loopback address: set admin.token to require a token, or listen on 127.0.0.1",
                    config.admin.listen
                )));
            }
            _ => {}
        }
        Ok(config)
    }

    /// A path from the file, resolved against the file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// The journal settings.
    pub fn journal_config(&self) -> JournalConfig {
        JournalConfig {
            budget_bytes: self.journal.budget,
            policy: match self.journal.policy {
                PolicyName::DropOldest => FullPolicy::DropOldest,
                PolicyName::Backpressure => FullPolicy::Backpressure,
            },
            batch_max_readings: self.journal.batch_max_readings,
            batch_linger_ns: self.journal.batch_linger.as_nanos() as i64,
            eager_seal: self.journal.eager_seal,
            eager_seal_unacked: self.journal.eager_seal_unacked,
            rules: self
                .aggregate
                .iter()
                .map(|a| AggregateRule {
                    metric: a.metric.clone(),
                    window: WindowRule {
                        period_ns: a.period.as_nanos() as u64,
                        lateness_ns: a.lateness.as_nanos() as u64,
                        sketch: a.sketch,
                        late: match a.late {
                            LateName::Raw => LatePolicy::Raw,
                            LateName::Drop => LatePolicy::Drop,
                        },
                    },
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;
