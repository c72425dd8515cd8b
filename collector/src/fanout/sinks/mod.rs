//! Storage sinks: `[sink.<name>]` tables with `kind = "prometheus_remote_write"`,
//! `"postgres"` or `"parquet"` (docs/sinks.md).
//!
//! A storage sink reads the **event log** (one entry per stored batch: its
//! readings and window aggregates), not alerts. It is a subscriber of the
//! log like the processors: it has a durable cursor `sink/<name>` in
//! `cursors`, a lag budget, and it holds the log's entries until its cursor
//! has passed them (bus.rs, "held for every subscriber").
//!
//! **Delivery.** Each sink reads entries after its cursor ([`feed`]),
//! delivers them, then commits its cursor through the writer, which trims
//! the log in the same transaction. What "exactly once" means per kind:
//!
//! - `postgres`: the rows and the sink's cursor commit in **one PostgreSQL
//!   transaction**; PostgreSQL holds the authoritative cursor. At start the
//!   sink reconciles: PostgreSQL ahead of the collector's cursor means a
//!   crash fell between the two commits, and the collector's cursor moves up
//!   to it. Nothing is repeated, nothing lost.
//! - `parquet`: files are named by the cursor range they cover and listed in
//!   a manifest replaced atomically (write, fsync, rename) together with the
//!   sink's cursor; the manifest is authoritative, files it does not list are
//!   leftovers of a crash and are deleted at start.
//! - `prometheus_remote_write`: at least once; the samples of a range sent
//!   again after a crash are ones Prometheus already has (same timestamp,
//!   same value): it keeps one copy.

mod error;
pub(crate) mod feed;
mod gather;
mod http;
mod parquet;
mod postgres;
mod remote_write;
mod retry;
mod tls;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::bus::{Bus, LogKind};
use super::rules::{LagBudget, SinkConfig};
use crate::server::Shared;
use crate::store::CursorRecord;

pub use error::{DurationError, RemoteWriteConfigError, StorageSinkError, UrlError};
pub use parquet::ParquetSink;
pub use postgres::PostgresSink;
pub use remote_write::RemoteWriteSink;

/// One `[sink.<name>]` storage sink, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageSink {
    /// Its name (the table's key); names the cursor `sink/<name>`.
    pub name: String,
    /// What it writes to.
    pub kind: StorageKind,
}

/// The kinds of storage sinks.
#[derive(Debug, Clone, PartialEq)]
pub enum StorageKind {
    /// `kind = "prometheus_remote_write"`.
    RemoteWrite(RemoteWriteSink),
    /// `kind = "postgres"`.
    Postgres(PostgresSink),
    /// `kind = "parquet"`.
    Parquet(ParquetSink),
}

/// `[sink.<name>]` as written: the `kind` picks the table's keys.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StorageRaw {
    /// Prometheus remote_write 1.0.
    PrometheusRemoteWrite(remote_write::RemoteWriteRaw),
    /// PostgreSQL.
    Postgres(postgres::PostgresRaw),
    /// Parquet files in a directory.
    Parquet(parquet::ParquetRaw),
}

impl StorageSink {
    /// Checks `raw` for the sink named `name`.
    pub fn new(name: &str, raw: StorageRaw) -> Result<Self, StorageSinkError> {
        super::rules::check_name(name)?;
        let kind = match raw {
            StorageRaw::PrometheusRemoteWrite(r) => {
                StorageKind::RemoteWrite(RemoteWriteSink::try_from(r)?)
            }
            StorageRaw::Postgres(r) => StorageKind::Postgres(PostgresSink::try_from(r)?),
            StorageRaw::Parquet(r) => StorageKind::Parquet(ParquetSink::try_from(r)?),
        };
        Ok(Self {
            name: name.to_owned(),
            kind,
        })
    }

    /// Its lag budget, in stored batches (event-log entries).
    pub fn lag_budget(&self) -> LagBudget {
        match &self.kind {
            StorageKind::RemoteWrite(s) => s.raw.lag_budget,
            StorageKind::Postgres(s) => s.raw.lag_budget,
            StorageKind::Parquet(s) => s.raw.lag_budget,
        }
    }

    /// `prometheus_remote_write`, `postgres` or `parquet`.
    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            StorageKind::RemoteWrite(_) => "prometheus_remote_write",
            StorageKind::Postgres(_) => "postgres",
            StorageKind::Parquet(_) => "parquet",
        }
    }

    /// Its cursor's name.
    pub fn key(&self) -> String {
        format!("sink/{}", self.name)
    }
}

/// Puts every configured storage sink on the bus, at its durable cursor (a
/// new sink at the head: it gets what is stored from now on), before any
/// batch can be stored or any other subscriber can trim the log: from here
/// on the log holds what they have not delivered.
pub(crate) fn subscribe_storage_sinks(
    bus: &Bus,
    cursors: &BTreeMap<String, CursorRecord>,
    cfg: &SinkConfig,
) {
    for s in &cfg.storage {
        let key = s.key();
        let record = match cursors.get(&key) {
            Some(r) => *r,
            None => CursorRecord {
                seq: bus.event_head(),
                ..CursorRecord::default()
            },
        };
        bus.subscribe(&key, LogKind::Events, record, s.lag_budget());
    }
}

/// Runs one storage sink until `stop` (collector shutdown or reload).
pub(crate) async fn run(shared: Arc<Shared>, sink: StorageSink, stop: watch::Receiver<bool>) {
    let key = sink.key();
    // A sink added by a reload: on the bus at the head, before its first
    // commit can let anyone else trim past it.
    if !shared.bus.is_subscribed(&key) {
        let cursors = shared.store.cursors().unwrap_or_default();
        let one = SinkConfig {
            storage: vec![sink.clone()],
            ..SinkConfig::default()
        };
        subscribe_storage_sinks(&shared.bus, &cursors, &one);
    }
    shared.bus.set_budget(&key, sink.lag_budget());
    let mut feed = match feed::Feed::open(shared.clone(), &sink, stop).await {
        Some(f) => f,
        None => return,
    };
    tracing::info!(
        sink = key,
        kind = sink.kind_name(),
        cursor = feed.cursor(),
        "storage sink running"
    );
    match &sink.kind {
        StorageKind::RemoteWrite(cfg) => remote_write::run(&mut feed, cfg).await,
        StorageKind::Postgres(cfg) => postgres::run(&mut feed, cfg).await,
        StorageKind::Parquet(cfg) => parquet::run(&mut feed, cfg).await,
    }
    tracing::debug!(sink = key, "storage sink stopped");
}

/// Parses the duration `text` of the key `what`.
pub(crate) fn duration(what: &'static str, text: &str) -> Result<Duration, DurationError> {
    humantime::parse_duration(text).map_err(|source| DurationError {
        what,
        text: text.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    /// Every TOML example in docs/sinks.md parses and validates.
    #[test]
    fn documented_configurations_are_valid() {
        let doc = include_str!("../../../../docs/sinks.md");
        let mut blocks = 0;
        for part in doc.split("```toml\n").skip(1) {
            let block = part.split("```").next().unwrap();
            let config: crate::Config = toml::from_str(block)
                .unwrap_or_else(|e| panic!("docs/sinks.md block {blocks}: {e}\n{block}"));
            config.validate().unwrap();
            assert_eq!(config.sink.storage.len(), 1);
            blocks += 1;
        }
        assert_eq!(blocks, 3);
    }

    #[test]
    fn sinks_are_named_tables_with_a_kind_and_bad_ones_are_explained() {
        let c: crate::Config = toml::from_str(
            "[sink.b]\nkind = \"parquet\"\ndir = \"/x\"\n[sink.a]\nkind = \"postgres\"\ndsn = \"host=h\"\n[[sink.log]]\nname = \"l\"\n",
        )
        .unwrap();
        let names: Vec<(&str, &str)> = c
            .sink
            .storage
            .iter()
            .map(|s| (s.name.as_str(), s.kind_name()))
            .collect();
        assert_eq!(names, [("a", "postgres"), ("b", "parquet")]);
        assert_eq!(c.sink.log.len(), 1);
        let err = |t: &str| toml::from_str::<crate::Config>(t).unwrap_err().to_string();
        let e = err("[sink.p]\nkind = \"prometheus_remote_write\"\nurl = \"ftp://x\"\n");
        assert!(
            e.contains("sink.p: url \"ftp://x\": expected http:// or https://"),
            "{e}"
        );
        let e = err("[sink.p]\nkind = \"kafka\"\n");
        assert!(e.contains("kafka"), "{e}");
        let e = err("[sink.p]\nkind = \"parquet\"\ndir = \"/x\"\nroll = \"1h\"\n");
        assert!(e.contains("roll"), "{e}");
        let e = err("[sink.\"bad name\"]\nkind = \"parquet\"\ndir = \"/x\"\n");
        assert!(e.contains("use 1 to 64"), "{e}");
        let c: crate::Config = toml::from_str(
            "[sink.x]\nkind = \"parquet\"\ndir = \"/x\"\n[[sink.log]]\nname = \"x\"\n",
        )
        .unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("used by two sinks")
        );
    }
}
