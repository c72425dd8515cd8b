//! The agent's counters, rendered in the Prometheus text format by the admin
//! endpoint and summarised by `ferry-agent status`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::journal::JournalStats;

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// The value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

const BUCKETS_MS: [f64; 10] = [
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0, 5000.0,
];

/// A latency histogram with fixed buckets (ms).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; 10],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        for (b, limit) in self.buckets.iter().zip(BUCKETS_MS) {
            if ms <= limit {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, limit) in self.buckets.iter().zip(BUCKETS_MS) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {}",
                limit / 1000.0,
                b.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Readings of stored batches the collector refused, by reason code.
#[derive(Debug, Default)]
pub struct Refusals {
    bad_timestamp: Counter,
    series_limit: Counter,
    other: Counter,
}

impl Refusals {
    /// Adds `n` readings refused for `code` (a `ferry_proto::session::reason`).
    pub fn add(&self, code: u16, n: u64) {
        use ferry_proto::session::reason;
        match code {
            reason::BAD_TIMESTAMP => self.bad_timestamp.add(n),
            reason::SERIES_LIMIT => self.series_limit.add(n),
            _ => self.other.add(n),
        }
    }

    /// Readings refused for `code`'s counter.
    pub fn get(&self, code: u16) -> u64 {
        use ferry_proto::session::reason;
        match code {
            reason::BAD_TIMESTAMP => self.bad_timestamp.get(),
            reason::SERIES_LIMIT => self.series_limit.get(),
            _ => self.other.get(),
        }
    }

    fn render(&self, out: &mut String) {
        let name = "ferry_agent_readings_refused_total";
        let _ = writeln!(
            out,
            "# HELP {name} Readings of stored batches the collector refused, by reason \
             (counted by the collector too, per device: not reported back).\n# TYPE {name} counter"
        );
        for (reason, c) in [
            ("bad_timestamp", &self.bad_timestamp),
            ("series_limit", &self.series_limit),
            ("other", &self.other),
        ] {
            let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {}", c.get());
        }
    }
}

/// Every counter of the agent process.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    /// Readings committed to the journal.
    pub readings_in: Counter,
    /// Readings dropped as late for their window.
    pub readings_late_dropped: Counter,
    /// Readings dropped because the journal was full.
    pub dropped_full: Counter,
    /// Submissions refused under backpressure.
    pub backpressure: Counter,
    /// Batches sealed.
    pub batches_sealed: Counter,
    /// Batches acked stored by the collector.
    pub batches_stored: Counter,
    /// Batches acked duplicate.
    pub batches_duplicate: Counter,
    /// Batches rejected permanently.
    pub batches_rejected: Counter,
    /// Batches rejected transiently (kept, resent).
    pub batches_retried: Counter,
    /// Readings in batches the collector acknowledged (refused ones
    /// included: see `readings_refused`).
    pub readings_out: Counter,
    /// Readings of acknowledged batches the collector refused, by reason.
    pub readings_refused: Refusals,
    /// Bytes of batch frames sent (after compression).
    pub wire_bytes: Counter,
    /// Connection attempts.
    pub connects: Counter,
    /// Connections lost or failed.
    pub disconnects: Counter,
    /// 1 while connected to the collector.
    pub connected: Gauge,
    /// Journal commit latency.
    pub commit_latency: Histogram,
    /// Send-to-ack latency of batches.
    pub ack_latency: Histogram,
    /// Journal bytes.
    pub journal_bytes: Gauge,
    /// Journal budget.
    pub journal_budget: Gauge,
    /// Batches waiting for an ack.
    pub outbox_batches: Gauge,
    /// Readings waiting in the outbox.
    pub outbox_readings: Gauge,
    /// Readings in the batch being filled and in open windows.
    pub pending_readings: Gauge,
    /// `created_ns` of the oldest unacked batch, 0 if none.
    pub oldest_unacked_ns: Gauge,
    /// Guarantees of issue 14 (idle commits, full disks, rejected
    /// timestamps, kernel drops) and the per-source counters.
    pub guard: Guarantees,
    /// The memory budget of caches, buffers and window state, once set.
    pub memory: std::sync::OnceLock<std::sync::Arc<crate::limits::MemoryBudget>>,
}

/// Counters that show a loss or a stall where an operator looks: on
/// `/metrics`, and `disk_full` in `status`.
#[derive(Debug, Default)]
pub struct Guarantees {
    /// Journal write transactions begun (an idle agent begins none).
    pub journal_transactions: Counter,
    /// 1 while the data directory's filesystem is full (or a journal write
    /// failed) and sources are paused.
    pub disk_full: Gauge,
    /// Times the disk filled (the gauge went from 0 to 1).
    pub disk_full_events: Counter,
    /// Readings refused at ingest: outside the collector's time window.
    pub readings_rejected_timestamp: Counter,
    /// Datagrams the kernel dropped on the agent's UDP sockets (receive
    /// buffer full), from `/proc/net/udp`.
    pub udp_kernel_drops: Counter,
    /// Per-source counters, rendered with their `source` label.
    sources: std::sync::Mutex<Vec<SourceCounters>>,
}

#[derive(Debug)]
enum SourceCounters {
    Influx(String, std::sync::Arc<crate::sources::influx::SourceStats>),
    Device(String, std::sync::Arc<crate::sources::device::DeviceStats>),
    Mqtt(String, std::sync::Arc<crate::sources::mqtt::MqttStats>),
}

impl Guarantees {
    /// Exports an Influx source's counters (`ferry_agent_influx_*`).
    pub fn add_influx(
        &self,
        name: &str,
        stats: std::sync::Arc<crate::sources::influx::SourceStats>,
    ) {
        if let Ok(mut s) = self.sources.lock() {
            s.push(SourceCounters::Influx(name.to_owned(), stats));
        }
    }

    /// Exports an MQTT source's counters (`ferry_agent_mqtt_*`).
    pub fn add_mqtt(&self, name: &str, stats: std::sync::Arc<crate::sources::mqtt::MqttStats>) {
        if let Ok(mut s) = self.sources.lock() {
            s.push(SourceCounters::Mqtt(name.to_owned(), stats));
        }
    }

    /// Exports a device-link source's counters (`ferry_agent_device_*`).
    pub fn add_device(
        &self,
        name: &str,
        stats: std::sync::Arc<crate::sources::device::DeviceStats>,
    ) {
        if let Ok(mut s) = self.sources.lock() {
            s.push(SourceCounters::Device(name.to_owned(), stats));
        }
    }

    fn render(&self, out: &mut String) {
        let counters: [(&str, &str, u64, &str); 5] = [
            (
                "ferry_agent_journal_transactions_total",
                "Journal write transactions begun (an idle agent begins none).",
                self.journal_transactions.get(),
                "counter",
            ),
            (
                "ferry_agent_disk_full",
                "1 while the journal's filesystem is full (or a journal write failed): sources are paused.",
                self.disk_full.get().max(0) as u64,
                "gauge",
            ),
            (
                "ferry_agent_disk_full_events_total",
                "Times the journal's filesystem filled up.",
                self.disk_full_events.get(),
                "counter",
            ),
            (
                "ferry_agent_readings_rejected_timestamp_total",
                "Readings refused at ingest: outside the collector's accepted time window (health kind 8).",
                self.readings_rejected_timestamp.get(),
                "counter",
            ),
            (
                "ferry_agent_udp_kernel_drops_total",
                "Datagrams the kernel dropped on the agent's UDP sockets (health kind 9).",
                self.udp_kernel_drops.get(),
                "counter",
            ),
        ];
        for (name, help, v, kind) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        let Ok(sources) = self.sources.lock() else {
            return;
        };
        let influx: Vec<_> = sources
            .iter()
            .filter_map(|s| match s {
                SourceCounters::Influx(n, st) => Some((n, st)),
                SourceCounters::Device(..) | SourceCounters::Mqtt(..) => None,
            })
            .collect();
        if !influx.is_empty() {
            let mut body = String::new();
            for (name, stats) in influx {
                stats.render_prometheus(name, &mut body);
            }
            render_families(out, &body, "Influx line protocol source counter.");
        }
        let mut body = String::new();
        for s in sources.iter() {
            if let SourceCounters::Device(name, d) = s {
                render_device(name, d, &mut body);
            }
        }
        if !body.is_empty() {
            render_families(out, &body, "Device-link source counter.");
        }
        let mut body = String::new();
        for s in sources.iter() {
            if let SourceCounters::Mqtt(name, m) = s {
                m.render_prometheus(name, &mut body);
            }
        }
        if !body.is_empty() {
            render_families(out, &body, "MQTT source counter.");
        }
    }
}

/// Samples grouped by metric name, each family with its `# TYPE`.
fn render_families(out: &mut String, samples: &str, help: &str) {
    let mut families: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for line in samples.lines() {
        let name = line.split(['{', ' ']).next().unwrap_or(line);
        families.entry(name).or_default().push(line);
    }
    for (name, lines) in families {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for l in lines {
            let _ = writeln!(out, "{l}");
        }
    }
}

fn render_device(source: &str, d: &crate::sources::device::DeviceStats, out: &mut String) {
    let source = source.replace('\\', r"\\").replace('"', "\\\"");
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    for (name, c) in [
        ("frames_ok", &d.frames_ok),
        ("bad_crc", &d.bad_crc),
        ("bad_cobs", &d.bad_cobs),
        ("too_short", &d.too_short),
        ("too_long", &d.too_long),
        ("undecodable", &d.undecodable),
        ("hellos", &d.hellos),
        ("bad_hellos", &d.bad_hellos),
        ("bad_channels", &d.bad_channels),
        ("heartbeats", &d.heartbeats),
        ("hello_requests", &d.hello_requests),
        ("before_hello", &d.before_hello),
        ("reports_journaled", &d.reports_journaled),
        ("reports_duplicate", &d.reports_duplicate),
        ("reports_out_of_order", &d.reports_out_of_order),
        ("reports_rejected", &d.reports_rejected),
        ("reports_time_estimated", &d.reports_time_estimated),
        ("reports_overflow", &d.reports_overflow),
        ("commit_failures", &d.commit_failures),
        ("device_dropped", &d.device_dropped),
        ("devices_seen", &d.devices_seen),
        ("connections", &d.connections),
        ("connections_refused", &d.connections_refused),
        ("idle_timeouts", &d.idle_timeouts),
    ] {
        let _ = writeln!(
            out,
            "ferry_agent_device_{name}_total{{source=\"{source}\"}} {}",
            get(c)
        );
    }
}

/// What `ferry-agent status` shows; served as JSON at `/status`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Status {
    /// Connected to the collector.
    pub connected: bool,
    /// Journal bytes used.
    pub journal_bytes: u64,
    /// Journal budget.
    pub journal_budget: u64,
    /// Age of the oldest unacked batch, seconds.
    pub oldest_unacked_age_s: Option<f64>,
    /// Batches waiting for an ack.
    pub outbox_batches: u64,
    /// Readings waiting.
    pub outbox_readings: u64,
    /// Readings not yet in a batch.
    pub pending_readings: u64,
    /// Readings committed since start.
    pub readings_in: u64,
    /// Readings acknowledged by the collector since start.
    pub readings_out: u64,
    /// Cumulative drops `(origin, kind, count)`.
    pub dropped: Vec<(String, u16, u64)>,
    /// The journal's filesystem is full (or a journal write failed):
    /// sources are paused until space returns.
    #[serde(default)]
    pub disk_full: bool,
}

impl AgentMetrics {
    /// Records a commit's duration.
    pub fn observe_commit(&self, d: Duration) {
        self.commit_latency.observe(d);
    }

    /// Copies journal counters into gauges.
    pub fn set_journal(&self, s: &JournalStats) {
        self.journal_bytes.set(s.bytes as i64);
        self.journal_budget.set(s.budget_bytes as i64);
        self.outbox_batches.set(s.outbox_batches as i64);
        self.outbox_readings.set(s.outbox_readings as i64);
        self.pending_readings
            .set((s.pending_readings + s.window_readings) as i64);
        self.oldest_unacked_ns.set(s.oldest_unacked_ns.unwrap_or(0));
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters: [(&str, &str, &Counter); 14] = [
            (
                "ferry_agent_readings_in_total",
                "Readings committed to the journal.",
                &self.readings_in,
            ),
            (
                "ferry_agent_readings_late_dropped_total",
                "Readings dropped as too late for their window.",
                &self.readings_late_dropped,
            ),
            (
                "ferry_agent_readings_dropped_full_total",
                "Readings dropped because the journal reached its budget (drop_oldest).",
                &self.dropped_full,
            ),
            (
                "ferry_agent_backpressure_total",
                "Source submissions refused because the journal was full (backpressure).",
                &self.backpressure,
            ),
            (
                "ferry_agent_batches_sealed_total",
                "Batches sealed into the outbox.",
                &self.batches_sealed,
            ),
            (
                "ferry_agent_batches_stored_total",
                "Batches the collector acknowledged as stored.",
                &self.batches_stored,
            ),
            (
                "ferry_agent_batches_duplicate_total",
                "Batches the collector acknowledged as duplicates.",
                &self.batches_duplicate,
            ),
            (
                "ferry_agent_batches_rejected_total",
                "Batches the collector rejected permanently.",
                &self.batches_rejected,
            ),
            (
                "ferry_agent_batches_retried_total",
                "Batches the collector refused transiently (kept and resent).",
                &self.batches_retried,
            ),
            (
                "ferry_agent_readings_out_total",
                "Readings in batches the collector acknowledged.",
                &self.readings_out,
            ),
            (
                "ferry_agent_wire_bytes_total",
                "Bytes of batch frames sent, after compression.",
                &self.wire_bytes,
            ),
            (
                "ferry_agent_connects_total",
                "Connection attempts to the collector.",
                &self.connects,
            ),
            (
                "ferry_agent_disconnects_total",
                "Connections to the collector lost or failed.",
                &self.disconnects,
            ),
            (
                "ferry_agent_commit_groups_total",
                "Journal commits.",
                &Counter(AtomicU64::new(
                    self.commit_latency.count.load(Ordering::Relaxed),
                )),
            ),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.get()
            );
        }
        let gauges: [(&str, &str, &Gauge); 7] = [
            (
                "ferry_agent_connected",
                "1 while connected to the collector.",
                &self.connected,
            ),
            (
                "ferry_agent_journal_bytes",
                "Bytes of journal rows.",
                &self.journal_bytes,
            ),
            (
                "ferry_agent_journal_budget_bytes",
                "Journal disk budget.",
                &self.journal_budget,
            ),
            (
                "ferry_agent_outbox_batches",
                "Batches waiting for an ack.",
                &self.outbox_batches,
            ),
            (
                "ferry_agent_outbox_readings",
                "Readings waiting for an ack.",
                &self.outbox_readings,
            ),
            (
                "ferry_agent_pending_readings",
                "Readings not yet sealed into a batch (incl. open windows).",
                &self.pending_readings,
            ),
            (
                "ferry_agent_oldest_unacked_timestamp_ns",
                "Creation time of the oldest unacked batch (0: none).",
                &self.oldest_unacked_ns,
            ),
        ];
        for (name, help, g) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                g.get()
            );
        }
        self.readings_refused.render(&mut out);
        self.guard.render(&mut out);
        if let Some(memory) = self.memory.get() {
            memory.render_prometheus(&mut out);
        }
        self.commit_latency.render(
            &mut out,
            "ferry_agent_commit_seconds",
            "Journal group-commit latency.",
        );
        self.ack_latency.render(
            &mut out,
            "ferry_agent_ack_seconds",
            "Latency from sending a batch to its ack.",
        );
        out
    }

    /// The status summary, with `now` for ages.
    pub fn status(&self, stats: &JournalStats, now_ns: i64) -> Status {
        Status {
            connected: self.connected.get() == 1,
            journal_bytes: stats.bytes,
            journal_budget: stats.budget_bytes,
            oldest_unacked_age_s: stats
                .oldest_unacked_ns
                .map(|t| now_ns.saturating_sub(t).max(0) as f64 / 1e9),
            outbox_batches: stats.outbox_batches,
            outbox_readings: stats.outbox_readings,
            pending_readings: stats.pending_readings + stats.window_readings,
            readings_in: self.readings_in.get(),
            readings_out: self.readings_out.get(),
            dropped: stats.dropped.clone(),
            disk_full: self.guard.disk_full.get() == 1,
        }
    }
}
