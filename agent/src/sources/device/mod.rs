//! The device link, gateway side: Ferry firmware on a serial port or an
//! emulated board's TCP socket (docs/protocol.md, section 3).
//!
//! ```text
//!  bytes ─▶ Deframer ─▶ GatewayLink ──poll_work──▶ Intake::submit ─▶ journal
//!                        │   ▲                                        │
//!   frames ◀─ poll_transmit  └──────── handle_commit(CommitReport) ◀──┘
//! ```
//!
//! [`GatewayLink`] is the protocol, one per connection, sans-IO: bytes and
//! instants (`now_ns`, wall clock) in, [`Work`](crate::journal::Work) and [`Downlink`](ferry_proto::link::Downlink) messages out,
//! no socket and no clock. [`run_link`] is its tokio driver over any byte
//! stream; [`run_tcp_client`], [`run_tcp_listener`] and [`run_serial`] open
//! the streams and reconnect.
//!
//! # Behaviour
//! - **Hello**: the link remembers the device id (lowercase hex), boot, the
//!   channel catalogue (one [`SeriesKey`](ferry_proto::series::SeriesKey) per channel,
//!   `<quantity>{device="<hex>",sensor="<sensor>",unit="<unit>"}`) and the
//!   clock offset `now_ns − uptime_ms·10⁶`, and answers
//!   `Ack{boot, up_to}` with the highest sequence of that boot known to be in
//!   the journal (from the [`DeviceRegistry`]; 0 for none), which also stops
//!   the device repeating its hello. A configured [`LinkConfig`] follows.
//!   The offset is measured once per `(device, boot)` and kept in the
//!   registry. The hello is also answered with a
//!   [`TimeSync`](ferry_proto::link::TimeSync) (the wall clock now, echoing
//!   the hello's `power_up` and `uptime_ms`), and so is every heartbeat: the
//!   device's clock keeps its wall-clock zero.
//! - **Report before any hello** (the gateway restarted) and heartbeat before
//!   any hello: answered with `HelloRequest` (at most one per
//!   [`DeviceLinkConfig::hello_request_interval_ms`]); the report is not
//!   journaled, since there is no catalogue to name its series.
//! - **Report**: each window becomes `(SeriesKey, Partial)`: start =
//!   the report's `time.wall_at_zero_ms` + `start_ms` (the device's clock of
//!   power-up `time.power_up`, placed by a time sync; a device that journals
//!   carries reports across power-ups, each with its own clock), f32 values
//!   widened to f64 (exact), no sketch. Reports whose time the device could
//!   only estimate (a power-up that ended before any sync) are counted. `first_ts` is
//!   the window start and `last_ts` the window's last nanosecond
//!   (`start + len − 1`): the device does not send sample instants, and these
//!   are the tightest bounds known to hold. A window naming a channel the
//!   hello did not declare (or with `count` or `len_ms` 0) rejects the whole
//!   report, counted and logged; the device keeps resending it and it keeps
//!   being counted.
//! - **Acks** go out only after [`Intake::submit`](crate::intake::Intake::submit) returned: `Ack{boot,
//!   up_to}` with the highest sequence the journal answered `true` for. The
//!   journal accepts a report only as the next after its record (or after the
//!   heartbeat's floor, below which the device holds nothing), so every
//!   sequence below an accepted one is journaled or was dropped and counted by
//!   the device: the highest accepted sequence is the highest *contiguous*
//!   one. A report at or below what this link already acked is acked again
//!   without a commit; a report the journal answers `false` for (a gap) is
//!   not acked and comes again.
//! - **Heartbeat**: `floor = next_seq − queued − 1` goes into
//!   [`DeviceReport::floor`](crate::journal::DeviceReport::floor); increases of `dropped` (per boot, from 0) go to
//!   the journal as the device's total (`Work::device_dropped`); the journal
//!   records the increase as health `(device, DROPPED_DEVICE_RING, Δ)`.
//! - **Bad frames** (COBS, CRC, too long or short, undecodable) are counted
//!   by kind in [`DeviceStats`] and logged at most once per
//!   [`DeviceLinkConfig::warn_interval_ms`] per kind; the stream carries on.
//!
//! **Bounded:** reports waiting for a commit are at most
//! [`DeviceLinkConfig::max_pending_reports`] (more are dropped unacked: the
//! device resends them); at most one commit is in flight per link; downlinks
//! waiting to be written are coalesced (one ack, one config, one hello
//! request); the registry holds at most [`DeviceLinkConfig::max_devices`].
//! A link silent for [`DeviceLinkConfig::idle_timeout_ms`] is closed
//! ([`LinkEnd::Idle`], the deadline is [`Deadlines`](super::conn::Deadlines)),
//! and a listener at [`DeviceLinkConfig::max_connections`] closes new
//! connections at once, counted and logged at most once per
//! `warn_interval_ms`.
//!
//! # Layout
//! `link` is the protocol ([`GatewayLink`]); `registry` what is known of
//! each device ([`DeviceRegistry`]); `driver` the tokio loops and the
//! reconnecting streams ([`DeviceSource`], [`run_link`]).

mod driver;
mod link;
mod registry;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};

use ferry_proto::link::LinkConfig;

pub use self::driver::{
    DeviceSource, LinkEnd, LinkError, run_link, run_serial, run_tcp_client, run_tcp_listener,
};
pub use self::link::{GatewayLink, encode_downlink};
pub use self::registry::{DeviceInfo, DeviceMark, DeviceRegistry};

/// Settings of one device-link source.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceLinkConfig {
    /// Source name, in logs.
    pub name: String,
    /// Settings pushed to every device after its hello (`sample_period_ms`,
    /// `window_ms`); none by default.
    #[serde(deserialize_with = "de_link_config")]
    pub push_config: Option<LinkConfig>,
    /// First wait before reconnecting (or reopening a serial port), ms.
    pub reconnect_min_ms: u64,
    /// Longest wait between reconnection attempts, ms (the wait doubles).
    pub reconnect_max_ms: u64,
    /// Least time between two `HelloRequest`s on one link, ms.
    pub hello_request_interval_ms: u64,
    /// Least time between two warnings of one kind on one link, ms.
    pub warn_interval_ms: u64,
    /// Most reports of one link waiting for a journal commit.
    pub max_pending_reports: usize,
    /// Most devices the [`DeviceRegistry`] remembers.
    pub max_devices: usize,
    /// Most simultaneous connections of [`run_tcp_listener`]; more are
    /// closed at once (counted in `connections_refused`, logged at most
    /// once per `warn_interval_ms`).
    pub max_connections: usize,
    /// A link with no byte for this long is closed (and, for a serial port
    /// or a board the agent connects to, reopened), ms; 0: never. Devices
    /// send a heartbeat far more often.
    pub idle_timeout_ms: u64,
}

impl Default for DeviceLinkConfig {
    fn default() -> Self {
        Self {
            name: "device".into(),
            push_config: None,
            reconnect_min_ms: 100,
            reconnect_max_ms: 10_000,
            hello_request_interval_ms: 1_000,
            warn_interval_ms: 10_000,
            max_pending_reports: 256,
            max_devices: 4_096,
            max_connections: 64,
            idle_timeout_ms: 300_000,
        }
    }
}

fn de_link_config<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<LinkConfig>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Named {
        sample_period_ms: u32,
        window_ms: u32,
    }
    let named: Option<Named> = serde::Deserialize::deserialize(d)?;
    Ok(named.map(|n| LinkConfig {
        sample_period_ms: n.sample_period_ms,
        window_ms: n.window_ms,
    }))
}

/// Counters of a device-link source, shared by its connections.
#[derive(Debug, Default)]
pub struct DeviceStats {
    /// Frames that passed the CRC and decoded as an uplink message.
    pub frames_ok: AtomicU64,
    /// Frames whose CRC did not match.
    pub bad_crc: AtomicU64,
    /// Frames that were not valid COBS.
    pub bad_cobs: AtomicU64,
    /// Frames shorter than their CRC.
    pub too_short: AtomicU64,
    /// Frames longer than the maximum, skipped to the next delimiter.
    pub too_long: AtomicU64,
    /// Frames with a good CRC that are not an uplink message.
    pub undecodable: AtomicU64,
    /// Hellos accepted.
    pub hellos: AtomicU64,
    /// Hellos refused (unsupported link version).
    pub bad_hellos: AtomicU64,
    /// Catalogue channels that cannot name a series (left out).
    pub bad_channels: AtomicU64,
    /// Heartbeats from known devices.
    pub heartbeats: AtomicU64,
    /// `HelloRequest`s sent.
    pub hello_requests: AtomicU64,
    /// Reports (or heartbeats) from a device that has not said hello.
    pub before_hello: AtomicU64,
    /// Reports the journal accepted (now, or found it held before).
    pub reports_journaled: AtomicU64,
    /// Reports received again after they were acked or while they were
    /// being committed: acked without another commit.
    pub reports_duplicate: AtomicU64,
    /// Reports the journal refused as out of order (not acked).
    pub reports_out_of_order: AtomicU64,
    /// Reports rejected: unknown channel or an invalid window.
    pub reports_rejected: AtomicU64,
    /// Reports whose wall-clock time the device could only estimate (a
    /// power-up that ended before any time sync), journaled at the estimate.
    pub reports_time_estimated: AtomicU64,
    /// Reports dropped unacked because too many were waiting for a commit.
    pub reports_overflow: AtomicU64,
    /// Commits that failed (journal full under backpressure, storage).
    pub commit_failures: AtomicU64,
    /// Reports devices said they dropped, forwarded as health records.
    pub device_dropped: AtomicU64,
    /// Distinct devices that said hello since the source started.
    pub devices_seen: AtomicU64,
    /// Connections (or serial port openings) made.
    pub connections: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub connections_refused: AtomicU64,
    /// Links closed after `idle_timeout_ms` without a byte.
    pub idle_timeouts: AtomicU64,
}

impl DeviceStats {
    /// Appends Prometheus samples `ferry_agent_device_<counter>{source="name"}`
    /// (no `# HELP`/`# TYPE` lines, so several sources can share a family)
    /// for `frames_ok_total`, `bad_frames_total` (CRC, COBS, too short, too
    /// long, undecodable), `reports_journaled_total`,
    /// `reports_rejected_total`, `connections_total`,
    /// `connections_refused_total` and `idle_timeouts_total`.
    pub fn render_prometheus(&self, source: &str, out: &mut String) {
        use std::fmt::Write as _;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let source = source.replace('\\', r"\\").replace('"', "\\\"");
        let bad = get(&self.bad_crc)
            + get(&self.bad_cobs)
            + get(&self.too_short)
            + get(&self.too_long)
            + get(&self.undecodable);
        for (name, value) in [
            ("frames_ok_total", get(&self.frames_ok)),
            ("bad_frames_total", bad),
            ("reports_journaled_total", get(&self.reports_journaled)),
            ("reports_rejected_total", get(&self.reports_rejected)),
            ("connections_total", get(&self.connections)),
            ("connections_refused_total", get(&self.connections_refused)),
            ("idle_timeouts_total", get(&self.idle_timeouts)),
        ] {
            let _ = writeln!(
                out,
                "ferry_agent_device_{name}{{source=\"{source}\"}} {value}"
            );
        }
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn inc(counter: &AtomicU64) {
        Self::add(counter, 1);
    }
}
