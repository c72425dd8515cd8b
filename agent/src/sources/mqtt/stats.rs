//! An MQTT source's counters: messages, readings accepted, redeliveries
//! skipped, malformed payloads by reason and connections, shared with the
//! agent's `/metrics` (rendered in Prometheus text) and watchable for
//! changes.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

use super::payload::Malformed;

/// A source's counters.
#[derive(Debug)]
pub struct MqttStats {
    pub(super) messages: AtomicU64,
    pub(super) readings_accepted: AtomicU64,
    pub(super) redeliveries_skipped: AtomicU64,
    pub(super) string_fields_skipped: AtomicU64,
    pub(super) malformed: [AtomicU64; Malformed::ALL.len()],
    pub(super) connections: AtomicU64,
    pub(super) connection_errors: AtomicU64,
    pub(super) changed: watch::Sender<()>,
}

impl Default for MqttStats {
    fn default() -> Self {
        Self {
            messages: AtomicU64::new(0),
            readings_accepted: AtomicU64::new(0),
            redeliveries_skipped: AtomicU64::new(0),
            string_fields_skipped: AtomicU64::new(0),
            malformed: Default::default(),
            connections: AtomicU64::new(0),
            connection_errors: AtomicU64::new(0),
            changed: watch::channel(()).0,
        }
    }
}

impl MqttStats {
    /// Messages committed (and acknowledged).
    pub fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }
    /// Readings committed.
    pub fn readings_accepted(&self) -> u64 {
        self.readings_accepted.load(Ordering::Relaxed)
    }
    /// Redeliveries of committed messages, acknowledged and not stored.
    pub fn redeliveries_skipped(&self) -> u64 {
        self.redeliveries_skipped.load(Ordering::Relaxed)
    }
    /// Malformed messages for `reason`.
    pub fn malformed(&self, reason: Malformed) -> u64 {
        let i = Malformed::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.malformed[i].load(Ordering::Relaxed)
    }
    /// Connections made (ConnAcks).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// A receiver marked changed after each update.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// Prometheus samples `ferry_agent_mqtt_<counter>{source="name"}`
    /// (`messages_total`, `readings_accepted_total`,
    /// `redeliveries_skipped_total`, `string_fields_skipped_total`,
    /// `connections_total`, `connection_errors_total`) and
    /// `ferry_agent_mqtt_malformed_total{source,reason}`.
    pub fn render_prometheus(&self, source: &str, out: &mut String) {
        let source = source.replace('\\', r"\\").replace('"', "\\\"");
        for (name, c) in [
            ("messages_total", &self.messages),
            ("readings_accepted_total", &self.readings_accepted),
            ("redeliveries_skipped_total", &self.redeliveries_skipped),
            ("string_fields_skipped_total", &self.string_fields_skipped),
            ("connections_total", &self.connections),
            ("connection_errors_total", &self.connection_errors),
        ] {
            let v = c.load(Ordering::Relaxed);
            let _ = writeln!(out, "ferry_agent_mqtt_{name}{{source=\"{source}\"}} {v}");
        }
        for (reason, c) in Malformed::ALL.iter().zip(&self.malformed) {
            let _ = writeln!(
                out,
                "ferry_agent_mqtt_malformed_total{{source=\"{source}\",reason=\"{}\"}} {}",
                reason.name(),
                c.load(Ordering::Relaxed)
            );
        }
    }

    pub(super) fn add(&self, c: &AtomicU64, n: u64) {
        if n > 0 {
            c.fetch_add(n, Ordering::Relaxed);
            self.changed.send_modify(|_| {});
        }
    }
}
