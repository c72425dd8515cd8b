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
//! instants (`now_ns`, wall clock) in, [`Work`] and [`Downlink`] messages out,
//! no socket and no clock. [`run_link`] is its tokio driver over any byte
//! stream; [`run_tcp_client`], [`run_tcp_listener`] and [`run_serial`] open
//! the streams and reconnect.
//!
//! # Behaviour
//! - **Hello**: the link remembers the device id (lowercase hex), boot, the
//!   channel catalogue (one [`SeriesKey`] per channel,
//!   `<quantity>{device="<hex>",sensor="<sensor>",unit="<unit>"}`) and the
//!   clock offset `now_ns − uptime_ms·10⁶`, and answers
//!   `Ack{boot, up_to}` with the highest sequence of that boot known to be in
//!   the journal (from the [`DeviceRegistry`]; 0 for none), which also stops
//!   the device repeating its hello. A configured [`LinkConfig`] follows.
//!   The offset is measured once per `(device, boot)` and kept in the
//!   registry, so a reconnect does not shift the device's windows.
//! - **Report before any hello** (the gateway restarted) and heartbeat before
//!   any hello: answered with `HelloRequest` (at most one per
//!   [`DeviceLinkConfig::hello_request_interval_ms`]); the report is not
//!   journaled, since there is no catalogue to name its series.
//! - **Report**: each window becomes `(SeriesKey, Partial)`: start = offset +
//!   `start_ms`, f32 values widened to f64 (exact), no sketch. `first_ts` is
//!   the window start and `last_ts` the window's last nanosecond
//!   (`start + len − 1`): the device does not send sample instants, and these
//!   are the tightest bounds known to hold. A window naming a channel the
//!   hello did not declare (or with `count` or `len_ms` 0) rejects the whole
//!   report, counted and logged; the device keeps resending it and it keeps
//!   being counted.
//! - **Acks** go out only after [`Intake::submit`] returned: `Ack{boot,
//!   up_to}` with the highest sequence the journal answered `true` for. The
//!   journal accepts a report only as the next after its record (or after the
//!   heartbeat's floor, below which the device holds nothing), so every
//!   sequence below an accepted one is journaled or was dropped and counted by
//!   the device: the highest accepted sequence is the highest *contiguous*
//!   one. A report at or below what this link already acked is acked again
//!   without a commit; a report the journal answers `false` for (a gap) is
//!   not acked and comes again.
//! - **Heartbeat**: `floor = next_seq − queued − 1` goes into
//!   [`DeviceReport::floor`]; increases of `dropped` (per boot, from 0) go to
//!   the journal as a health increment `(device, DROPPED_DEVICE_RING, Δ)`.
//! - **Bad frames** (COBS, CRC, too long or short, undecodable) are counted
//!   by kind in [`DeviceStats`] and logged at most once per
//!   [`DeviceLinkConfig::warn_interval_ms`] per kind; the stream carries on.
//!
//! **Bounded:** reports waiting for a commit are at most
//! [`DeviceLinkConfig::max_pending_reports`] (more are dropped unacked: the
//! device resends them); at most one commit is in flight per link; downlinks
//! waiting to be written are coalesced (one ack, one config, one hello
//! request); the registry holds at most [`DeviceLinkConfig::max_devices`].

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_proto::codec;
use ferry_proto::health;
use ferry_proto::link::{
    DeviceHello, Downlink, Heartbeat, LINK_VERSION, LinkAck, LinkConfig, Report, Uplink,
    WindowReport,
};
use ferry_proto::serial::{self, Deframer, MAX_LINK_PAYLOAD, MAX_SERIAL_FRAME, SerialError};
use ferry_proto::series::SeriesKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::intake::{Intake, SubmitError};
use crate::journal::{CommitReport, DeviceReport, Work};
use crate::window::Partial;

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
    /// Most simultaneous connections of [`run_tcp_listener`].
    pub max_connections: usize,
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
}

impl DeviceStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn inc(counter: &AtomicU64) {
        Self::add(counter, 1);
    }
}

/// What the gateway knows of one device, across its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceMark {
    /// The boot the other fields belong to.
    pub boot: u32,
    /// Highest sequence of `boot` known to be in the journal.
    pub journaled: u32,
    /// The device's `dropped` figure already journaled as health.
    pub dropped_forwarded: u32,
    /// Clock offset measured at the first hello of `boot`, ns.
    pub offset_ns: Option<i64>,
    /// Said hello since the agent started.
    pub said_hello: bool,
}

/// Per-device marks shared by every link of a source (and the journal's
/// records at start), so a device that reconnects is acked from what the
/// journal holds. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct DeviceRegistry {
    marks: Arc<Mutex<BTreeMap<String, DeviceMark>>>,
}

impl DeviceRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry seeded with the journal's records `(device, boot, seq)`,
    /// as [`Journal::devices`](crate::journal::Journal::devices) returns them.
    pub fn from_journal(records: impl IntoIterator<Item = (String, u32, u32)>) -> Self {
        let marks = records
            .into_iter()
            .map(|(device, boot, seq)| {
                let mark = DeviceMark {
                    boot,
                    journaled: seq,
                    ..DeviceMark::default()
                };
                (device, mark)
            })
            .collect();
        Self {
            marks: Arc::new(Mutex::new(marks)),
        }
    }

    /// The mark of `device` (lowercase hex id).
    pub fn get(&self, device: &str) -> Option<DeviceMark> {
        self.lock().get(device).copied()
    }

    /// Devices known.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no device is known.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, DeviceMark>> {
        self.marks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores `mark` unless that would hold more than `max` devices.
    fn put(&self, device: &str, mark: DeviceMark, max: usize) {
        let mut marks = self.lock();
        if let Some(m) = marks.get_mut(device) {
            *m = mark;
        } else if marks.len() < max {
            marks.insert(device.to_owned(), mark);
        }
    }

    /// Applies `f` to the mark of `device` if it is of `boot`.
    fn update(&self, device: &str, boot: u32, f: impl FnOnce(&mut DeviceMark)) {
        if let Some(m) = self.lock().get_mut(device)
            && m.boot == boot
        {
            f(m);
        }
    }
}

/// The device a link talks to, from its hello.
#[derive(Debug, Clone)]
struct Session {
    hex: String,
    boot: u32,
    offset_ns: i64,
    series: BTreeMap<u8, SeriesKey>,
    /// Highest sequence acked to the device.
    acked: u32,
    /// From the latest heartbeat: sequences at or below never come again.
    floor: u32,
    /// The latest heartbeat's `dropped`.
    dropped_seen: u32,
    /// The part of `dropped_seen` already journaled as health.
    dropped_forwarded: u32,
}

/// A report identity: device, boot, sequence.
type ReportId = (String, u32, u32);

/// What the commit in flight carries.
#[derive(Debug)]
struct InFlight {
    reports: Vec<ReportId>,
    /// `(device, boot, dropped)`: the figure journaled if the commit succeeds.
    dropped: Option<(String, u32, u32)>,
}

/// Kinds of rate-limited warnings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum WarnKind {
    Frame,
    Message,
    Hello,
    Report,
    OutOfOrder,
    Commit,
}

#[derive(Debug, Default)]
struct WarnState {
    last_ns: Option<i64>,
    suppressed: u64,
}

/// The gateway end of one device link; see the module docs.
#[derive(Debug)]
pub struct GatewayLink {
    config: Arc<DeviceLinkConfig>,
    registry: DeviceRegistry,
    stats: Arc<DeviceStats>,
    deframer: Deframer,
    session: Option<Session>,
    pending: BTreeMap<ReportId, DeviceReport>,
    health_due: bool,
    in_flight: Option<InFlight>,
    transmit: VecDeque<Downlink>,
    last_hello_request_ns: Option<i64>,
    warnings: BTreeMap<WarnKind, WarnState>,
}

impl GatewayLink {
    /// A link that has heard nothing yet.
    pub fn new(
        config: Arc<DeviceLinkConfig>,
        registry: DeviceRegistry,
        stats: Arc<DeviceStats>,
    ) -> Self {
        Self {
            config,
            registry,
            stats,
            deframer: Deframer::new(),
            session: None,
            pending: BTreeMap::new(),
            health_due: false,
            in_flight: None,
            transmit: VecDeque::new(),
            last_hello_request_ns: None,
            warnings: BTreeMap::new(),
        }
    }

    /// The device's id (hex) and boot, once it said hello.
    pub fn device(&self) -> Option<(&str, u32)> {
        self.session.as_ref().map(|s| (s.hex.as_str(), s.boot))
    }

    /// Highest sequence acked to the device (of its current boot).
    pub fn acked_up_to(&self) -> Option<u32> {
        self.session.as_ref().map(|s| s.acked)
    }

    /// True while a commit from [`poll_work`](Self::poll_work) is waiting
    /// for [`handle_commit`](Self::handle_commit).
    pub fn commit_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Counters.
    pub fn stats(&self) -> &Arc<DeviceStats> {
        &self.stats
    }

    /// Feeds bytes from the device.
    pub fn handle_bytes(&mut self, now_ns: i64, bytes: &[u8]) {
        let mut payload = [0u8; MAX_LINK_PAYLOAD];
        for &b in bytes {
            let len = match self.deframer.push(b) {
                None => continue,
                Some(Ok(p)) => {
                    // The deframer's payloads are at most MAX_LINK_PAYLOAD
                    // bytes: a longer frame fails as too long.
                    let n = p.len().min(payload.len());
                    payload[..n].copy_from_slice(&p[..n]);
                    Ok(n)
                }
                Some(Err(e)) => Err(e),
            };
            match len {
                Ok(n) => self.handle_frame(now_ns, &payload[..n]),
                Err(e) => self.handle_frame_error(now_ns, e),
            }
        }
    }

    /// Counts a frame the deframer refused.
    pub fn handle_frame_error(&mut self, now_ns: i64, error: SerialError) {
        let counter = match error {
            SerialError::BadCrc { .. } => &self.stats.bad_crc,
            SerialError::BadCobs { .. } => &self.stats.bad_cobs,
            SerialError::TooShort { .. } => &self.stats.too_short,
            SerialError::TooLong
            | SerialError::PayloadTooLong { .. }
            | SerialError::BufferTooSmall { .. } => &self.stats.too_long,
        };
        DeviceStats::inc(counter);
        self.warn(now_ns, WarnKind::Frame, || format!("bad frame: {error}"));
    }

    /// Handles one deframed payload (CRC already checked).
    pub fn handle_frame(&mut self, now_ns: i64, payload: &[u8]) {
        match codec::from_bytes::<Uplink>("Uplink", payload) {
            Ok(msg) => {
                DeviceStats::inc(&self.stats.frames_ok);
                self.handle_uplink(now_ns, msg);
            }
            Err(e) => {
                DeviceStats::inc(&self.stats.undecodable);
                self.warn(now_ns, WarnKind::Message, || {
                    format!("undecodable frame of {} bytes: {e}", payload.len())
                });
            }
        }
    }

    /// Handles one uplink message.
    pub fn handle_uplink(&mut self, now_ns: i64, msg: Uplink) {
        match msg {
            Uplink::Hello(h) => self.handle_hello(now_ns, h),
            Uplink::Report(r) => self.handle_report(now_ns, r),
            Uplink::Heartbeat(h) => self.handle_heartbeat(now_ns, h),
        }
    }

    /// Work for the journal: reports waiting for a commit and the device's
    /// new drops. `None` while a commit is in flight or when there is
    /// nothing to commit. Submit it, then call
    /// [`handle_commit`](Self::handle_commit) with the answer.
    pub fn poll_work(&mut self) -> Option<Work> {
        if self.in_flight.is_some() {
            return None;
        }
        let mut work = Work::default();
        let mut in_flight = InFlight {
            reports: Vec::new(),
            dropped: None,
        };
        for (id, mut report) in core::mem::take(&mut self.pending) {
            if let Some(s) = &self.session
                && s.hex == report.device
                && s.boot == report.boot
            {
                report.floor = s.floor;
            }
            in_flight.reports.push(id);
            work.reports.push(report);
        }
        if core::mem::take(&mut self.health_due)
            && let Some(s) = &self.session
            && s.dropped_seen > s.dropped_forwarded
        {
            let delta = u64::from(s.dropped_seen - s.dropped_forwarded);
            work.health
                .push((s.hex.clone(), health::DROPPED_DEVICE_RING, delta));
            in_flight.dropped = Some((s.hex.clone(), s.boot, s.dropped_seen));
        }
        if work.is_empty() {
            return None;
        }
        self.in_flight = Some(in_flight);
        Some(work)
    }

    /// The journal's answer to the last [`poll_work`](Self::poll_work):
    /// acks what it accepted. On an error nothing is acked; the device
    /// resends its reports, and its drops go out with the next heartbeat.
    pub fn handle_commit(&mut self, now_ns: i64, result: Result<&CommitReport, &SubmitError>) {
        let Some(in_flight) = self.in_flight.take() else {
            return;
        };
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                DeviceStats::inc(&self.stats.commit_failures);
                let n = in_flight.reports.len();
                self.warn(now_ns, WarnKind::Commit, || {
                    format!("journal commit of {n} device reports failed: {e}")
                });
                return;
            }
        };
        let mut ack = None;
        for (i, (device, boot, seq)) in in_flight.reports.iter().enumerate() {
            if !report.reports.get(i).copied().unwrap_or(false) {
                DeviceStats::inc(&self.stats.reports_out_of_order);
                let (device, boot, seq) = (device.clone(), *boot, *seq);
                self.warn(now_ns, WarnKind::OutOfOrder, || {
                    format!(
                        "device {device} boot {boot}: report {seq} is out of order for the \
                         journal (an earlier one is missing); not acked, the device resends"
                    )
                });
                continue;
            }
            DeviceStats::inc(&self.stats.reports_journaled);
            self.registry
                .update(device, *boot, |m| m.journaled = m.journaled.max(*seq));
            if let Some(s) = &mut self.session
                && s.hex == *device
                && s.boot == *boot
            {
                s.acked = s.acked.max(*seq);
                ack = Some(LinkAck {
                    boot: s.boot,
                    up_to: s.acked,
                });
            }
        }
        if let Some((device, boot, dropped)) = in_flight.dropped {
            self.registry.update(&device, boot, |m| {
                m.dropped_forwarded = m.dropped_forwarded.max(dropped);
            });
            if let Some(s) = &mut self.session
                && s.hex == device
                && s.boot == boot
            {
                let delta = dropped.saturating_sub(s.dropped_forwarded);
                DeviceStats::add(&self.stats.device_dropped, u64::from(delta));
                s.dropped_forwarded = s.dropped_forwarded.max(dropped);
            }
        }
        if let Some(ack) = ack {
            self.queue_ack(ack);
        }
    }

    /// The next message for the device.
    pub fn poll_transmit(&mut self) -> Option<Downlink> {
        self.transmit.pop_front()
    }

    fn handle_hello(&mut self, now_ns: i64, h: DeviceHello) {
        let hex = h.device_id.to_string();
        if h.link_version != LINK_VERSION {
            DeviceStats::inc(&self.stats.bad_hellos);
            self.warn(now_ns, WarnKind::Hello, || {
                format!(
                    "device {hex}: link version {} is not supported (this agent speaks {LINK_VERSION})",
                    h.link_version
                )
            });
            return;
        }
        DeviceStats::inc(&self.stats.hellos);
        let mut series = BTreeMap::new();
        for c in &h.channels {
            let key = SeriesKey::new(
                c.quantity.as_str(),
                [
                    ("device", hex.as_str()),
                    ("sensor", c.sensor.as_str()),
                    ("unit", c.unit.as_str()),
                ],
            );
            match key {
                Ok(key) if !series.contains_key(&c.id) => {
                    series.insert(c.id, key);
                }
                Ok(_) => {
                    DeviceStats::inc(&self.stats.bad_channels);
                    self.warn(now_ns, WarnKind::Hello, || {
                        format!("device {hex}: channel {} declared twice; first kept", c.id)
                    });
                }
                Err(e) => {
                    DeviceStats::inc(&self.stats.bad_channels);
                    self.warn(now_ns, WarnKind::Hello, || {
                        format!(
                            "device {hex}: channel {} cannot name a series ({e}); its windows are refused",
                            c.id
                        )
                    });
                }
            }
        }
        let same = self
            .session
            .as_ref()
            .is_some_and(|s| s.hex == hex && s.boot == h.boot);
        if same {
            // A repeated hello (after a HelloRequest, or before our ack got
            // through): keep what this link knows, refresh the catalogue.
            if let Some(s) = &mut self.session {
                s.series = series;
            }
        } else {
            let mark = self.registry.get(&hex);
            let known = mark.filter(|m| m.boot == h.boot);
            let uptime_ns = i64::try_from(h.uptime_ms)
                .unwrap_or(i64::MAX)
                .saturating_mul(1_000_000);
            let offset_ns = known
                .and_then(|m| m.offset_ns)
                .unwrap_or_else(|| now_ns.saturating_sub(uptime_ns));
            let session = Session {
                hex: hex.clone(),
                boot: h.boot,
                offset_ns,
                series,
                acked: known.map_or(0, |m| m.journaled),
                floor: 0,
                dropped_seen: 0,
                dropped_forwarded: known.map_or(0, |m| m.dropped_forwarded),
            };
            if !mark.is_some_and(|m| m.said_hello) {
                DeviceStats::inc(&self.stats.devices_seen);
            }
            tracing::info!(
                source = %self.config.name,
                device = %hex,
                boot = h.boot,
                firmware = %h.firmware,
                channels = session.series.len(),
                acked = session.acked,
                "device said hello"
            );
            self.registry.put(
                &hex,
                DeviceMark {
                    boot: h.boot,
                    journaled: session.acked,
                    dropped_forwarded: session.dropped_forwarded,
                    offset_ns: Some(offset_ns),
                    said_hello: true,
                },
                self.config.max_devices,
            );
            self.session = Some(session);
        }
        let acked = self.session.as_ref().map_or(0, |s| s.acked);
        self.queue_ack(LinkAck {
            boot: h.boot,
            up_to: acked,
        });
        if let Some(config) = self.config.push_config {
            self.transmit
                .retain(|m| !matches!(m, Downlink::Config(_)));
            self.transmit.push_back(Downlink::Config(config));
        }
    }

    fn handle_report(&mut self, now_ns: i64, r: Report) {
        let Some(s) = &self.session else {
            DeviceStats::inc(&self.stats.before_hello);
            self.request_hello(now_ns);
            return;
        };
        if r.seq <= s.acked {
            DeviceStats::inc(&self.stats.reports_duplicate);
            let ack = LinkAck {
                boot: s.boot,
                up_to: s.acked,
            };
            self.queue_ack(ack);
            return;
        }
        let id = (s.hex.clone(), s.boot, r.seq);
        let committing = self
            .in_flight
            .as_ref()
            .is_some_and(|f| f.reports.contains(&id));
        if committing || self.pending.contains_key(&id) {
            // A resend of a report on its way to the journal: the ack after
            // that commit covers it.
            DeviceStats::inc(&self.stats.reports_duplicate);
            return;
        }
        let windows = match map_windows(s, &r.windows) {
            Ok(w) => w,
            Err(why) => {
                DeviceStats::inc(&self.stats.reports_rejected);
                let (hex, boot) = (s.hex.clone(), s.boot);
                self.warn(now_ns, WarnKind::Report, || {
                    format!("device {hex} boot {boot}: report {} refused: {why}", r.seq)
                });
                return;
            }
        };
        if self.pending.len() >= self.config.max_pending_reports {
            DeviceStats::inc(&self.stats.reports_overflow);
            return;
        }
        let report = DeviceReport {
            device: s.hex.clone(),
            boot: s.boot,
            seq: r.seq,
            floor: s.floor,
            windows,
        };
        self.pending.insert(id, report);
    }

    fn handle_heartbeat(&mut self, now_ns: i64, h: Heartbeat) {
        let Some(s) = &mut self.session else {
            DeviceStats::inc(&self.stats.before_hello);
            self.request_hello(now_ns);
            return;
        };
        DeviceStats::inc(&self.stats.heartbeats);
        let floor = h
            .next_seq
            .saturating_sub(u32::from(h.queued))
            .saturating_sub(1);
        s.floor = s.floor.max(floor);
        s.dropped_seen = s.dropped_seen.max(h.dropped);
        if s.dropped_seen > s.dropped_forwarded {
            self.health_due = true;
        }
    }

    fn queue_ack(&mut self, ack: LinkAck) {
        for m in &mut self.transmit {
            if let Downlink::Ack(a) = m
                && a.boot == ack.boot
            {
                a.up_to = a.up_to.max(ack.up_to);
                return;
            }
        }
        self.transmit.push_back(Downlink::Ack(ack));
    }

    fn request_hello(&mut self, now_ns: i64) {
        let interval = ms_to_ns(self.config.hello_request_interval_ms);
        if self
            .last_hello_request_ns
            .is_some_and(|t| now_ns.saturating_sub(t) < interval)
            || self
                .transmit
                .iter()
                .any(|m| matches!(m, Downlink::HelloRequest(())))
        {
            return;
        }
        self.last_hello_request_ns = Some(now_ns);
        DeviceStats::inc(&self.stats.hello_requests);
        self.transmit.push_back(Downlink::HelloRequest(()));
    }

    /// Logs at most one warning of `kind` per `warn_interval_ms`, with the
    /// number suppressed since the last one.
    fn warn(&mut self, now_ns: i64, kind: WarnKind, message: impl FnOnce() -> String) {
        let interval = ms_to_ns(self.config.warn_interval_ms);
        let state = self.warnings.entry(kind).or_default();
        if state
            .last_ns
            .is_some_and(|t| now_ns.saturating_sub(t) < interval)
        {
            state.suppressed += 1;
            return;
        }
        let suppressed = core::mem::take(&mut state.suppressed);
        state.last_ns = Some(now_ns);
        tracing::warn!(
            source = %self.config.name,
            suppressed,
            "device link: {}",
            message()
        );
    }
}

fn ms_to_ns(ms: u64) -> i64 {
    i64::try_from(ms)
        .unwrap_or(i64::MAX)
        .saturating_mul(1_000_000)
}

/// The windows of a report in wall-clock time, or why they are refused.
fn map_windows(
    s: &Session,
    windows: &[WindowReport],
) -> Result<Vec<(SeriesKey, Partial)>, String> {
    windows
        .iter()
        .map(|w| {
            let series = s.series.get(&w.channel).ok_or_else(|| {
                format!(
                    "channel {} is not in the device's hello catalogue",
                    w.channel
                )
            })?;
            if w.count == 0 || w.len_ms == 0 {
                return Err(format!(
                    "window of channel {} has count {} and length {} ms (both must be > 0)",
                    w.channel, w.count, w.len_ms
                ));
            }
            let start_ns = s.offset_ns.saturating_add(ms_to_ns(w.start_ms));
            let len_ns = u64::from(w.len_ms) * 1_000_000;
            let partial = Partial {
                start_ns,
                len_ns,
                count: u64::from(w.count),
                sum: f64::from(w.sum),
                min: f64::from(w.min),
                max: f64::from(w.max),
                first_ts: start_ns,
                first: f64::from(w.first),
                last_ts: start_ns.saturating_add_unsigned(len_ns - 1),
                last: f64::from(w.last),
                sketch: None,
            };
            Ok((series.clone(), partial))
        })
        .collect()
}

/// Encodes and frames a downlink message for the wire.
pub fn encode_downlink(msg: &Downlink) -> Vec<u8> {
    let mut frame = [0u8; MAX_SERIAL_FRAME];
    // Downlink messages are a few bytes: far below the payload limit.
    let payload = codec::to_vec(msg).unwrap_or_default();
    let n = serial::encode_frame(&payload, &mut frame).unwrap_or(0);
    frame[..n].to_vec()
}

/// A wall clock in ns since the Unix epoch (tests pass a fake one).
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
    })
}

/// Everything the drivers share: settings, the journal intake, the device
/// registry, counters and the clock. Cheap to clone.
#[derive(Clone)]
pub struct DeviceSource {
    /// Settings.
    pub config: Arc<DeviceLinkConfig>,
    /// Where work goes.
    pub intake: Intake,
    /// What is known of each device.
    pub registry: DeviceRegistry,
    /// Counters.
    pub stats: Arc<DeviceStats>,
    /// Wall clock.
    pub clock: Clock,
}

impl std::fmt::Debug for DeviceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSource")
            .field("config", &self.config)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl DeviceSource {
    /// A source with the system clock, fresh counters and `registry`
    /// (seed it with [`DeviceRegistry::from_journal`]).
    pub fn new(config: DeviceLinkConfig, intake: Intake, registry: DeviceRegistry) -> Self {
        Self {
            config: Arc::new(config),
            intake,
            registry,
            stats: Arc::default(),
            clock: system_clock(),
        }
    }

    /// The same source with another clock.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    fn link(&self) -> GatewayLink {
        GatewayLink::new(
            self.config.clone(),
            self.registry.clone(),
            self.stats.clone(),
        )
    }
}

/// Why a link stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEnd {
    /// The device closed the stream (EOF).
    Closed,
    /// The shutdown future completed.
    Shutdown,
}

/// Why a driver failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Reading or writing the stream failed.
    #[error("device link I/O: {0}")]
    Io(#[from] io::Error),
    /// The journal writer is gone: the agent is shutting down.
    #[error("the journal writer has stopped")]
    IntakeClosed,
}

type CommitFuture = Pin<Box<dyn Future<Output = Result<CommitReport, SubmitError>> + Send>>;

/// Drives one [`GatewayLink`] over `stream` until the device closes it, an
/// I/O error, or `shutdown`. Reads go on while a commit is in flight; the
/// next commit starts when it returns.
pub async fn run_link<S>(
    stream: S,
    source: &DeviceSource,
    shutdown: impl Future<Output = ()>,
) -> Result<LinkEnd, LinkError>
where
    S: AsyncRead + AsyncWrite,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut link = source.link();
    let mut buf = vec![0u8; 4 * MAX_SERIAL_FRAME];
    let mut commit: Option<CommitFuture> = None;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let mut wrote = false;
        while let Some(msg) = link.poll_transmit() {
            wr.write_all(&encode_downlink(&msg)).await?;
            wrote = true;
        }
        if wrote {
            wr.flush().await?;
        }
        if commit.is_none()
            && let Some(work) = link.poll_work()
        {
            let intake = source.intake.clone();
            commit = Some(Box::pin(async move { intake.submit(work).await }));
        }
        let committed = async {
            match commit.as_mut() {
                Some(c) => c.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = &mut shutdown => return Ok(LinkEnd::Shutdown),
            result = committed => {
                commit = None;
                if matches!(result, Err(SubmitError::Shutdown)) {
                    return Err(LinkError::IntakeClosed);
                }
                link.handle_commit((source.clock)(), result.as_ref());
            }
            n = rd.read(&mut buf) => {
                let n = n?;
                if n == 0 {
                    return Ok(LinkEnd::Closed);
                }
                link.handle_bytes((source.clock)(), &buf[..n]);
            }
        }
    }
}

/// Opens streams with `open` and runs [`run_link`] on each, waiting with
/// exponential backoff between attempts, until `shutdown` or the journal
/// writer stops.
async fn reconnecting<S, F, Fut>(
    what: &str,
    source: &DeviceSource,
    shutdown: impl Future<Output = ()>,
    mut open: F,
) -> Result<(), LinkError>
where
    S: AsyncRead + AsyncWrite,
    F: FnMut() -> Fut,
    Fut: Future<Output = io::Result<S>>,
{
    let min = Duration::from_millis(source.config.reconnect_min_ms.max(1));
    let max = Duration::from_millis(source.config.reconnect_max_ms).max(min);
    let mut backoff = min;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let opened = tokio::select! {
            biased;
            () = &mut shutdown => return Ok(()),
            s = open() => s,
        };
        match opened {
            Ok(stream) => {
                DeviceStats::inc(&source.stats.connections);
                tracing::info!(source = %source.config.name, "device link {what} open");
                backoff = min;
                match run_link(stream, source, shutdown.as_mut()).await {
                    Ok(LinkEnd::Shutdown) => return Ok(()),
                    Ok(LinkEnd::Closed) => {
                        tracing::warn!(source = %source.config.name, "device link {what} closed; reconnecting");
                    }
                    Err(LinkError::IntakeClosed) => return Err(LinkError::IntakeClosed),
                    Err(LinkError::Io(e)) => {
                        tracing::warn!(source = %source.config.name, "device link {what}: {e}; reconnecting");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(
                    source = %source.config.name,
                    "device link {what}: {e}; retrying in {backoff:?}"
                );
            }
        }
        tokio::select! {
            biased;
            () = &mut shutdown => return Ok(()),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(max);
    }
}

/// Connects to a board's UART socket at `addr` (QEMU's `-chardev
/// socket,server=on`) and reconnects with backoff whenever it drops, until
/// `shutdown`. Returns an error only when the journal writer stops.
pub async fn run_tcp_client(
    addr: SocketAddr,
    source: &DeviceSource,
    shutdown: impl Future<Output = ()>,
) -> Result<(), LinkError> {
    let what = format!("tcp {addr}");
    reconnecting(&what, source, shutdown, || TcpStream::connect(addr)).await
}

/// Accepts boards that connect to the gateway (QEMU's `-chardev
/// socket,server=off`), one link per connection and at most
/// [`DeviceLinkConfig::max_connections`] at once (more are closed at once),
/// until `shutdown`.
pub async fn run_tcp_listener(
    listener: TcpListener,
    source: &DeviceSource,
    shutdown: impl Future<Output = ()>,
) -> Result<(), LinkError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut links = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let result = loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break Ok(()),
            Some(done) = links.join_next(), if !links.is_empty() => {
                if let Ok(Err(LinkError::IntakeClosed)) = done {
                    break Err(LinkError::IntakeClosed);
                }
            }
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Per-connection failures (e.g. reset before accept).
                        tracing::warn!(source = %source.config.name, "device link accept: {e}");
                        continue;
                    }
                };
                if links.len() >= source.config.max_connections {
                    tracing::warn!(
                        source = %source.config.name,
                        %peer,
                        "device link: {} connections open; refusing another",
                        links.len()
                    );
                    continue;
                }
                DeviceStats::inc(&source.stats.connections);
                let source = source.clone();
                let mut stop = stop_rx.clone();
                links.spawn(async move {
                    let stopped = async move {
                        let _ = stop.wait_for(|s| *s).await;
                    };
                    let end = run_link(stream, &source, stopped).await;
                    match &end {
                        Ok(_) => tracing::info!(source = %source.config.name, %peer, "device link closed"),
                        Err(e) => tracing::warn!(source = %source.config.name, %peer, "device link: {e}"),
                    }
                    end
                });
            }
        }
    };
    let _ = stop_tx.send(true);
    while links.join_next().await.is_some() {}
    result
}

/// Reads a device on serial port `path` at `baud` (8N1), reopening the
/// port with backoff when it fails or disappears (USB unplug), until
/// `shutdown`.
pub async fn run_serial(
    path: &str,
    baud: u32,
    source: &DeviceSource,
    shutdown: impl Future<Output = ()>,
) -> Result<(), LinkError> {
    use tokio_serial::SerialPortBuilderExt as _;
    let what = format!("serial {path}");
    reconnecting(&what, source, shutdown, || {
        let opened = tokio_serial::new(path, baud)
            .open_native_async()
            .map_err(io::Error::from);
        std::future::ready(opened)
    })
    .await
}
