//! Prometheus metrics, served as text at `/metrics`.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use ferry_proto::session::reason;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::ingest::{BadInput, LogLimiter};

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];
type Dynamic = Vec<(&'static str, String)>;

/// The collector's metrics. Names start with `ferry_collector_`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Open agent connections.
    pub connections: Gauge,
    /// Agent connections accepted (handshake completed).
    pub connections_accepted: Counter,
    /// Connections refused, by reason (`busy`, `shutting_down`, `revoked`).
    pub connections_refused: Family<Labels1, Counter>,
    /// Batches by outcome (`stored`, `duplicate`, `rejected`) and reason.
    pub batches: Family<Labels2, Counter>,
    /// Readings by outcome.
    pub readings: Family<Labels1, Counter>,
    /// Bad input by class.
    pub bad_input: Family<Labels1, Counter>,
    /// Duration of one group commit (write transaction + fsync).
    pub commit_seconds: Histogram,
    /// Batches per group commit.
    pub commit_batches: Histogram,
    /// Failed commits.
    pub commit_errors: Counter,
    /// Size of the store file.
    pub store_file_bytes: Gauge<u64, AtomicU64>,
    /// Bytes of chunk data.
    pub store_chunk_bytes: Gauge<u64, AtomicU64>,
    /// Series in the store.
    pub series: Gauge<u64, AtomicU64>,
    /// Agents revoked while running.
    pub revocations: Counter,
    /// Maintenance runs and what they did, by action.
    pub maintenance_chunks: Family<Labels1, Counter>,
    /// Per fan-out subscriber: entries behind its log's head.
    pub fanout_lag: Family<Dynamic, Gauge<u64, AtomicU64>>,
    /// Per fan-out subscriber: entries handled (durable total).
    pub fanout_handled: Family<Dynamic, Gauge<u64, AtomicU64>>,
    /// Per fan-out subscriber: entries skipped past its lag budget.
    pub fanout_skipped: Family<Dynamic, Gauge<u64, AtomicU64>>,
    /// Per sink: events dead-lettered (durable total).
    pub fanout_dead_letters: Family<Dynamic, Gauge<u64, AtomicU64>>,
    /// Alert events emitted, by rule and state.
    pub alerts: Family<Dynamic, Counter>,
    /// Webhook deliveries by sink and outcome (`delivered`, `dead_letter`).
    pub webhook_deliveries: Family<Dynamic, Counter>,
    /// Webhook retries by sink.
    pub webhook_retries: Family<Dynamic, Counter>,
    /// Batches that waited for a subscriber past its lag budget.
    pub backpressure_waits: Counter,
    /// Batches that came as revision-4 compact batches and were resolved
    /// through their session's series ids.
    pub compact_batches: Counter,
    /// Compact batches whose values were coded against value references
    /// (revision 5).
    pub referenced_batches: Counter,
    /// Batches waiting now for a subscriber past its lag budget.
    pub ingest_waiting: Gauge<u64, AtomicU64>,
    /// Configuration reloads by outcome (`ok`, `error`).
    pub reloads: Family<Labels1, Counter>,
    /// Readings of stored batches refused one by one, by reason.
    pub refused_readings: Family<Labels1, Counter>,
    /// Agents that came back with another journal epoch while this
    /// process ran.
    pub journal_resets: Counter,
    /// Per agent, device and reason: readings the agent reported dropped
    /// (`by="agent"`, its health records) or the collector refused
    /// (`by="collector"`); durable totals from the store, set at each scrape.
    pub dropped_readings: Family<Dynamic, Gauge<u64, AtomicU64>>,
    /// Per agent: journal resets (durable total from the store).
    pub agent_journal_resets: Family<Dynamic, Gauge<u64, AtomicU64>>,
    /// Per agent: readings in its journal not yet acknowledged, as its
    /// newest status report said.
    pub agent_backlog_readings: Family<Dynamic, Gauge<u64, AtomicU64>>,
    /// Per agent: age of its oldest unacknowledged batch at its newest
    /// status report, seconds (0: none waiting).
    pub agent_backlog_age_seconds: Family<Dynamic, Gauge<f64, AtomicU64>>,
    /// Storage sinks: readings (and aggregate rows or samples) by sink and
    /// outcome (`delivered`, `refused`).
    pub sink_readings: Family<Dynamic, Counter>,
    /// Storage sinks: delivery attempts retried, by sink.
    pub sink_retries: Family<Dynamic, Counter>,
    /// HTTP requests refused by the auth gate, by reason (`no_credentials`,
    /// `bad_token`, `forbidden`).
    pub http_refused: Family<Labels1, Counter>,
    /// Queries refused for their memory budget, by API (`ferry`,
    /// `prometheus`) and bound (`series`, `points`, `bytes`, `step`).
    pub queries_refused: Family<Labels2, Counter>,
    /// Cluster mode: log records by role (`front_end`, `worker`), kind
    /// (`session`, `batch`) and outcome (front end: `published`,
    /// `duplicate`, `failed`; worker: `stored`, `duplicate`, `rejected`,
    /// `retried`, `undecodable`).
    pub cluster_records: Family<Dynamic, Counter>,
    /// Cluster mode, per stream and consumer: records not yet delivered
    /// (`pending`) and delivered but not yet acked (`ack_pending`), as the
    /// log last reported them.
    pub cluster_consumer_records: Family<Dynamic, Gauge<u64, AtomicU64>>,
    /// Cluster mode: 1 while the NATS client is connected.
    pub cluster_connected: Gauge<u64, AtomicU64>,
    log: Mutex<LogLimiter>,
}

/// The metric label of a reason code ("" for none).
pub fn reason_label(code: u16) -> &'static str {
    if code == 0 { "" } else { reason::name(code) }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("ferry_collector"),
            connections: Gauge::default(),
            connections_accepted: Counter::default(),
            connections_refused: Family::default(),
            batches: Family::default(),
            readings: Family::default(),
            bad_input: Family::default(),
            commit_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            commit_batches: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            commit_errors: Counter::default(),
            store_file_bytes: Gauge::default(),
            store_chunk_bytes: Gauge::default(),
            series: Gauge::default(),
            revocations: Counter::default(),
            maintenance_chunks: Family::default(),
            fanout_lag: Family::default(),
            fanout_handled: Family::default(),
            fanout_skipped: Family::default(),
            fanout_dead_letters: Family::default(),
            alerts: Family::default(),
            webhook_deliveries: Family::default(),
            webhook_retries: Family::default(),
            backpressure_waits: Counter::default(),
            compact_batches: Counter::default(),
            referenced_batches: Counter::default(),
            ingest_waiting: Gauge::default(),
            reloads: Family::default(),
            refused_readings: Family::default(),
            journal_resets: Counter::default(),
            dropped_readings: Family::default(),
            agent_journal_resets: Family::default(),
            agent_backlog_readings: Family::default(),
            agent_backlog_age_seconds: Family::default(),
            sink_readings: Family::default(),
            sink_retries: Family::default(),
            http_refused: Family::default(),
            queries_refused: Family::default(),
            cluster_records: Family::default(),
            cluster_consumer_records: Family::default(),
            cluster_connected: Gauge::default(),
            log: Mutex::new(LogLimiter::new(std::time::Duration::from_secs(10))),
        };
        m.registry.register(
            "connections",
            "Open agent connections",
            m.connections.clone(),
        );
        m.registry.register(
            "connections_accepted",
            "Agent connections whose handshake completed",
            m.connections_accepted.clone(),
        );
        m.registry.register(
            "connections_refused",
            "Connections refused, by reason",
            m.connections_refused.clone(),
        );
        m.registry.register(
            "batches",
            "Batches by outcome and reason",
            m.batches.clone(),
        );
        m.registry
            .register("readings", "Raw readings by outcome", m.readings.clone());
        m.registry
            .register("bad_input", "Bad input by class", m.bad_input.clone());
        m.registry.register(
            "commit_seconds",
            "Duration of one group commit, fsync included",
            m.commit_seconds.clone(),
        );
        m.registry.register(
            "commit_batches",
            "Batches per group commit",
            m.commit_batches.clone(),
        );
        m.registry.register(
            "commit_errors",
            "Failed group commits",
            m.commit_errors.clone(),
        );
        m.registry.register(
            "store_file_bytes",
            "Size of the store file",
            m.store_file_bytes.clone(),
        );
        m.registry.register(
            "store_chunk_bytes",
            "Bytes of raw-reading chunks stored",
            m.store_chunk_bytes.clone(),
        );
        m.registry
            .register("series", "Series in the store", m.series.clone());
        m.registry
            .register("revocations", "Agents revoked", m.revocations.clone());
        m.registry.register(
            "maintenance_chunks",
            "Chunks handled by maintenance, by action",
            m.maintenance_chunks.clone(),
        );
        m.registry.register(
            "fanout_lag",
            "Entries a fan-out subscriber is behind its log's head",
            m.fanout_lag.clone(),
        );
        m.registry.register(
            "fanout_handled",
            "Entries a fan-out subscriber handled (durable total)",
            m.fanout_handled.clone(),
        );
        m.registry.register(
            "fanout_skipped",
            "Entries a fan-out subscriber skipped past its lag budget (durable total)",
            m.fanout_skipped.clone(),
        );
        m.registry.register(
            "fanout_dead_letters",
            "Alert events a sink gave up on (durable total)",
            m.fanout_dead_letters.clone(),
        );
        m.registry.register(
            "alerts",
            "Alert events emitted, by rule and state",
            m.alerts.clone(),
        );
        m.registry.register(
            "webhook_deliveries",
            "Webhook deliveries by sink and outcome",
            m.webhook_deliveries.clone(),
        );
        m.registry.register(
            "webhook_retries",
            "Webhook delivery retries by sink",
            m.webhook_retries.clone(),
        );
        m.registry.register(
            "backpressure_waits",
            "Batches that waited for a fan-out subscriber past its lag budget",
            m.backpressure_waits.clone(),
        );
        m.registry.register(
            "compact_batches",
            "Batches that came compact (protocol revision 4), resolved through their session's series ids",
            m.compact_batches.clone(),
        );
        m.registry.register(
            "referenced_batches",
            "Compact batches whose values were coded against value references (protocol revision 5)",
            m.referenced_batches.clone(),
        );
        m.registry.register(
            "ingest_waiting",
            "Batches waiting now for a fan-out subscriber past its lag budget",
            m.ingest_waiting.clone(),
        );
        m.registry.register(
            "reloads",
            "Configuration reloads by outcome",
            m.reloads.clone(),
        );
        m.registry.register(
            "refused_readings",
            "Readings of stored batches the collector refused one by one, by reason",
            m.refused_readings.clone(),
        );
        m.registry.register(
            "journal_resets",
            "Agents that came back with a new journal epoch (a replaced journal) while this collector ran",
            m.journal_resets.clone(),
        );
        m.registry.register(
            "dropped_readings",
            "Readings lost per agent, device and reason: reported by the agent (by=agent) or refused by the collector (by=collector); durable totals",
            m.dropped_readings.clone(),
        );
        m.registry.register(
            "agent_journal_resets",
            "Times an agent came back with another journal epoch (durable total)",
            m.agent_journal_resets.clone(),
        );
        m.registry.register(
            "agent_backlog_readings",
            "Readings in an agent's journal not yet acknowledged, from its newest status report",
            m.agent_backlog_readings.clone(),
        );
        m.registry.register(
            "agent_backlog_age_seconds",
            "Age of an agent's oldest unacknowledged batch at its newest status report (0: none waiting)",
            m.agent_backlog_age_seconds.clone(),
        );
        m.registry.register(
            "sink_readings",
            "Storage sinks: readings and aggregate rows by sink and outcome (delivered, refused)",
            m.sink_readings.clone(),
        );
        m.registry.register(
            "sink_retries",
            "Storage sinks: delivery attempts retried, by sink",
            m.sink_retries.clone(),
        );
        m.registry.register(
            "http_refused",
            "HTTP requests refused by authentication, by reason",
            m.http_refused.clone(),
        );
        m.registry.register(
            "queries_refused",
            "Queries refused for their memory budget, by API and bound",
            m.queries_refused.clone(),
        );
        m.registry.register(
            "cluster_records",
            "Cluster mode: log records by role, kind and outcome",
            m.cluster_records.clone(),
        );
        m.registry.register(
            "cluster_consumer_records",
            "Cluster mode: records per consumer, pending (not delivered) or ack_pending",
            m.cluster_consumer_records.clone(),
        );
        m.registry.register(
            "cluster_connected",
            "Cluster mode: 1 while connected to NATS",
            m.cluster_connected.clone(),
        );
        for reason in ["no_credentials", "bad_token", "forbidden"] {
            let _ = m.http_refused.get_or_create(&[("reason", reason)]);
        }
        for kind in BadInput::ALL {
            let _ = m.bad_input.get_or_create(&[("kind", kind.label())]);
        }
        m
    }

    /// Counts an emitted alert event.
    pub fn alert(&self, rule: &str, state: &'static str) {
        self.alerts
            .get_or_create(&vec![
                ("rule", rule.to_owned()),
                ("state", state.to_owned()),
            ])
            .inc();
    }

    /// Counts a webhook delivery outcome.
    pub fn delivery(&self, sink: &str, outcome: &'static str) {
        self.webhook_deliveries
            .get_or_create(&vec![
                ("sink", sink.to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .inc();
    }

    /// Counts a webhook retry.
    pub fn webhook_retry(&self, sink: &str) {
        self.webhook_retries
            .get_or_create(&vec![("sink", sink.to_owned())])
            .inc();
    }

    /// Counts storage-sink readings by outcome.
    pub fn sink_readings(&self, sink: &str, outcome: &'static str, n: u64) {
        if n > 0 {
            self.sink_readings
                .get_or_create(&vec![
                    ("sink", sink.to_owned()),
                    ("outcome", outcome.to_owned()),
                ])
                .inc_by(n);
        }
    }

    /// Counts a storage-sink retry.
    pub fn sink_retry(&self, sink: &str) {
        self.sink_retries
            .get_or_create(&vec![("sink", sink.to_owned())])
            .inc();
    }

    /// Sets the per-subscriber gauges from the bus.
    pub fn set_subscribers(&self, views: &[crate::fanout::SubscriberView]) {
        for v in views {
            let l = vec![("subscriber", v.name.clone())];
            self.fanout_lag.get_or_create(&l).set(v.lag);
            self.fanout_handled.get_or_create(&l).set(v.handled);
            self.fanout_skipped.get_or_create(&l).set(v.skipped);
            self.fanout_dead_letters
                .get_or_create(&l)
                .set(v.dead_letters);
        }
    }

    /// Counts a batch outcome.
    pub fn batch(&self, outcome: &'static str, code: u16, readings: u64) {
        self.batches
            .get_or_create(&[("outcome", outcome), ("reason", reason_label(code))])
            .inc();
        self.readings
            .get_or_create(&[("outcome", outcome)])
            .inc_by(readings);
    }

    /// Counts readings of a stored batch the collector refused.
    pub fn refused(&self, refused: &[ferry_proto::session::Refused]) {
        for r in refused {
            self.refused_readings
                .get_or_create(&[("reason", reason::name(r.code))])
                .inc_by(r.readings);
            self.readings
                .get_or_create(&[("outcome", "refused")])
                .inc_by(r.readings);
        }
    }

    /// Sets the per-agent loss gauges from the store's durable totals.
    pub fn set_losses(&self, losses: &[crate::admin::DropRow], resets: &[(String, u64)]) {
        for d in losses {
            self.dropped_readings
                .get_or_create(&vec![
                    ("agent", d.agent.clone()),
                    ("device", d.device.clone()),
                    ("reason", d.reason.clone()),
                    ("by", d.counted_by.to_owned()),
                ])
                .set(d.readings);
        }
        for (agent, n) in resets {
            self.agent_journal_resets
                .get_or_create(&vec![("agent", agent.clone())])
                .set(*n);
        }
    }

    /// Sets the per-agent backlog gauges from a status report.
    pub fn set_agent_status(&self, agent: &str, status: &ferry_proto::session::AgentStatus) {
        let labels = vec![("agent", agent.to_owned())];
        self.agent_backlog_readings
            .get_or_create(&labels)
            .set(status.backlog_readings);
        let age_ns = if status.oldest_unacked_ns > 0 {
            status
                .sent_ns
                .saturating_sub(status.oldest_unacked_ns)
                .max(0)
        } else {
            0
        };
        self.agent_backlog_age_seconds
            .get_or_create(&labels)
            .set(age_ns as f64 / 1e9);
    }

    /// Counts bad input and logs it, at most one line per class per 10 s.
    pub fn bad(&self, kind: BadInput, detail: &dyn std::fmt::Display) {
        self.bad_input
            .get_or_create(&[("kind", kind.label())])
            .inc();
        let now = crate::now_ns();
        let suppressed = self
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(kind, now);
        if let Some(suppressed) = suppressed {
            match kind {
                BadInput::GarbageDatagram | BadInput::RateLimited => {
                    tracing::info!(kind = kind.label(), suppressed, "{detail}");
                }
                _ => tracing::warn!(kind = kind.label(), suppressed, "{detail}"),
            }
        }
    }

    /// Current value of a bad-input counter.
    pub fn bad_count(&self, kind: BadInput) -> u64 {
        self.bad_input
            .get_or_create(&[("kind", kind.label())])
            .get()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
