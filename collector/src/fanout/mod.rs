//! Fan-out: every stored batch goes through processors (threshold, rate,
//! anomaly and offline rules), which emit alert events, which go to sinks
//! (webhook, log). docs/alerts.md is the full description; in short:
//!
//! - **Event log.** When processors are configured, the writer appends one
//!   log entry per stored batch (its agent, commit time and chunks) to the
//!   `event_log` table *in the batch's own transaction*: the log is exactly
//!   as durable as the data, and an entry exists iff its batch is stored.
//! - **Processors** read the log from their durable cursor, run the rules
//!   (sans-IO state machines: [`level`], [`rate`], [`anomaly`],
//!   [`offline`]) and hand the writer one commit holding the new cursor,
//!   the rules' new state, the emitted alert events and the deletion of the
//!   consumed log entries. **Invariant:** state, cursor and emitted events
//!   commit atomically, so a restart neither loses nor repeats an alert.
//! - **Alerts** are stored in `alerts` keyed by a monotonically increasing
//!   id and are queryable (`/api/v1/alerts`, `ferry-collector alerts`).
//! - **Sinks** read `alerts` from their own durable cursor and advance it
//!   after each delivery (a webhook's 2xx, or its dead-lettering): delivery
//!   is at-least-once, and at most the one event in flight at a crash is
//!   sent twice; events carry their `id` so a receiver can dedupe.
//! - **Lag budgets** ([`bus`]): each subscriber may fall `max` entries
//!   behind its log's head; past it, `backpressure` makes ingest wait and
//!   `skip` jumps the subscriber to the head, counting and reporting the
//!   skipped range.

pub mod anomaly;
pub mod bus;
pub mod level;
pub mod offline;
pub mod pipeline;
pub mod rate;
pub mod rules;
pub(crate) mod run;
pub mod sinks;
mod webhook;

use serde::{Deserialize, Serialize};

pub use bus::{Bus, SubscriberView};
pub use pipeline::Processors;
pub use rules::{LagBudget, LagPolicy, ProcessorConfig, SinkConfig};

/// Name of the processors' cursor.
pub const PROCESSORS: &str = "processors";

/// What an alert event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// A threshold or rate rule fired.
    Firing,
    /// A firing threshold or rate rule resolved.
    Resolved,
    /// An anomaly rule flagged a reading.
    Anomaly,
    /// A device or agent went silent.
    Offline,
    /// A device or agent that was offline sent data again.
    Online,
    /// The processors skipped part of the event log (lag budget, `skip`):
    /// alerts may be missing for that range.
    Skipped,
}

impl AlertState {
    /// Its name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
            AlertState::Anomaly => "anomaly",
            AlertState::Offline => "offline",
            AlertState::Online => "online",
            AlertState::Skipped => "skipped",
        }
    }

    /// Parses a name.
    pub fn parse(text: &str) -> Option<Self> {
        [
            AlertState::Firing,
            AlertState::Resolved,
            AlertState::Anomaly,
            AlertState::Offline,
            AlertState::Online,
            AlertState::Skipped,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// One alert event, as stored, queried and delivered to sinks (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    /// Unique, increasing; receivers dedupe on it.
    pub id: u64,
    /// The rule, `kind/name` (e.g. `threshold/heart-rate`).
    pub rule: String,
    /// What happened.
    pub state: AlertState,
    /// The series (Prometheus text form), or `device=…` / `agent=…`.
    pub subject: String,
    /// The reading (threshold, anomaly), the rate (rate rules), or 0.
    pub value: f64,
    /// When it happened: the reading's timestamp for threshold, rate and
    /// anomaly rules, the collector's clock for offline; ns since the epoch.
    pub ts_ns: i64,
    /// When the condition started (the first breaching reading, the last
    /// data before going offline), ns.
    pub since_ns: i64,
    /// When the collector emitted it, ns (collector clock).
    pub emitted_ns: i64,
    /// A human-readable sentence.
    pub message: String,
}

/// One entry of the event log: a stored batch as the processors see it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The agent that sent the batch.
    pub agent: String,
    /// Commit time, collector clock, ns.
    pub stored_ns: i64,
    /// `(series id, chunk bytes)`: the batch's raw readings.
    pub chunks: Vec<(u64, Vec<u8>)>,
    /// Series that only had window aggregates in the batch (they count as
    /// data for offline detection; rules evaluate raw readings only).
    pub aggregate_series: Vec<u64>,
    /// `(series id, aggregate)`: the batch's window aggregates, for the
    /// storage sinks (the aggregate's own `series` index is meaningless
    /// here). Absent from entries written before storage sinks existed.
    #[serde(default)]
    pub aggregates: Vec<(u64, ferry_proto::batch::WindowAggregate)>,
}

/// Alert query parameters as text, from a URL query string or the CLI.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertParams {
    /// `firing`, `resolved`, `anomaly`, `offline`, `online` or `skipped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Series selector.
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Rule, `kind/name` or `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Event time from (as in queries); default: the beginning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Event time to, exclusive; default: no end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Most events (the newest); default 1000, at most 100000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// Most alert events one query returns.
pub const MAX_ALERTS: usize = 100_000;

/// Why an alert query's parameters were refused ([`AlertParams::resolve`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AlertParamsError {
    /// `state` names no state.
    #[error("state {0:?}: expected firing, resolved, anomaly, offline, online or skipped")]
    State(String),
    /// `match`, `from` or `to` does not parse (the message names which).
    #[error(transparent)]
    Query(#[from] crate::query::QueryError),
    /// `limit` is out of range.
    #[error("limit {0}: expected 1 to {MAX_ALERTS}")]
    Limit(usize),
}

impl AlertParams {
    /// Checks and resolves relative times against `now_ns`.
    pub fn resolve(&self, now_ns: i64) -> Result<crate::store::AlertFilter, AlertParamsError> {
        let state = match &self.state {
            None => None,
            Some(s) => {
                Some(AlertState::parse(s).ok_or_else(|| AlertParamsError::State(s.clone()))?)
            }
        };
        let selector = match &self.selector {
            None => None,
            Some(s) => Some(crate::query::Selector::parse(s)?),
        };
        let from_ns = match &self.from {
            None => i64::MIN,
            Some(t) => crate::query::parse_time("from", t, now_ns)?,
        };
        let to_ns = match &self.to {
            None => i64::MAX,
            Some(t) => crate::query::parse_time("to", t, now_ns)?,
        };
        let limit = self.limit.unwrap_or(1000);
        if limit == 0 || limit > MAX_ALERTS {
            return Err(AlertParamsError::Limit(limit));
        }
        Ok(crate::store::AlertFilter {
            state,
            selector,
            rule: self.rule.clone(),
            from_ns,
            to_ns,
            limit,
        })
    }
}
