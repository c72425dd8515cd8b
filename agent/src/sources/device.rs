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
//!   registry. The hello is also answered with a [`TimeSync`] (the wall
//!   clock now, echoing the hello's `power_up` and `uptime_ms`), and so is
//!   every heartbeat: the device's clock keeps its wall-clock zero.
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

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_proto::codec;
use ferry_proto::link::{
    DeviceHello, Downlink, Heartbeat, LINK_VERSION, LinkAck, LinkConfig, Report, TimeSync, Uplink,
    time_quality,
};
use ferry_proto::serial::{self, Deframer, MAX_SERIAL_FRAME, SerialError};
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

    /// Adds the journal's device-time offsets `(device, boot, offset_ns)`,
    /// as [`Journal::device_offsets`](crate::journal::Journal::device_offsets)
    /// returns them: a device that says hello again in the same boot keeps
    /// the offset its earlier windows were mapped with.
    pub fn with_offsets(self, offsets: impl IntoIterator<Item = (String, u32, i64)>) -> Self {
        {
            let mut marks = self.lock();
            for (device, boot, offset) in offsets {
                let mark = marks.entry(device).or_default();
                if mark.boot == boot || (mark.boot == 0 && mark.journaled == 0) {
                    mark.boot = boot;
                    mark.offset_ns = Some(offset);
                }
            }
        }
        self
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
        // A payload is shorter than the frame it came in.
        let mut payload = [0u8; MAX_SERIAL_FRAME];
        for &b in bytes {
            let len = match self.deframer.push(b) {
                None => continue,
                Some(Ok(p)) => {
                    payload[..p.len()].copy_from_slice(p);
                    Ok(p.len())
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
            // The total, not a delta: the journal counts the increase over
            // what it has recorded, so a restart never counts drops twice.
            work.device_dropped
                .push((s.hex.clone(), s.boot, s.dropped_seen));
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
            // In whole ms, as the TimeSync answering this hello tells the
            // device: the registry's offset is the zero the device's
            // reports will carry.
            let now_ms_ns = now_ns.div_euclid(1_000_000).saturating_mul(1_000_000);
            let offset_ns = known
                .and_then(|m| m.offset_ns)
                .unwrap_or_else(|| now_ms_ns.saturating_sub(uptime_ns));
            let session = Session {
                hex: hex.clone(),
                boot: h.boot,
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
        self.queue_time_sync(now_ns, h.power_up, h.uptime_ms);
        if let Some(config) = self.config.push_config {
            self.transmit.retain(|m| !matches!(m, Downlink::Config(_)));
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
        let windows = match map_windows(s, &r) {
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
        if r.time.quality == time_quality::ESTIMATED {
            DeviceStats::inc(&self.stats.reports_time_estimated);
        }
        let report = DeviceReport {
            device: s.hex.clone(),
            boot: s.boot,
            seq: r.seq,
            floor: s.floor,
            offset_ns: ms_to_ns_signed(r.time.wall_at_zero_ms),
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
        let (power_up, uptime_ms) = (h.power_up, h.uptime_ms);
        let floor = h
            .next_seq
            .saturating_sub(u32::from(h.queued))
            .saturating_sub(1);
        s.floor = s.floor.max(floor);
        s.dropped_seen = s.dropped_seen.max(h.dropped);
        if s.dropped_seen > s.dropped_forwarded {
            self.health_due = true;
        }
        self.queue_time_sync(now_ns, power_up, uptime_ms);
    }

    /// The wall clock now, for the device's clock of `power_up` at
    /// `uptime_ms` (replacing one not yet sent).
    fn queue_time_sync(&mut self, now_ns: i64, power_up: u32, uptime_ms: u64) {
        self.transmit
            .retain(|m| !matches!(m, Downlink::TimeSync(_)));
        self.transmit.push_back(Downlink::TimeSync(TimeSync {
            power_up,
            uptime_ms,
            wall_ms: now_ns.div_euclid(1_000_000),
        }));
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

fn ms_to_ns_signed(ms: i64) -> i64 {
    ms.saturating_mul(1_000_000)
}

/// The windows of a report in wall-clock time (its clock's zero plus each
/// window's start on that clock), or why they are refused.
fn map_windows(s: &Session, r: &Report) -> Result<Vec<(SeriesKey, Partial)>, String> {
    let zero_ns = ms_to_ns_signed(r.time.wall_at_zero_ms);
    r.windows
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
            let start_ns = zero_ns.saturating_add(ms_to_ns(w.start_ms));
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

#[cfg(test)]
mod tests {
    use ferry_proto::link::{Channel, DeviceId, ReportTime, WindowReport};

    use super::*;

    /// The fake wall clock at the first hello.
    const T0: i64 = 1_700_000_000_000_000_000;
    const MS: i64 = 1_000_000;
    const HEX: &str = "0a1b2c";

    fn n(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn frame(msg: &Uplink) -> Vec<u8> {
        let payload = codec::to_vec(msg).unwrap();
        let mut out = [0u8; MAX_SERIAL_FRAME];
        let len = serial::encode_frame(&payload, &mut out).unwrap();
        out[..len].to_vec()
    }

    fn channel(id: u8, sensor: &str, quantity: &str, unit: &str) -> Channel {
        Channel {
            id,
            sensor: sensor.try_into().unwrap(),
            quantity: quantity.try_into().unwrap(),
            unit: unit.try_into().unwrap(),
        }
    }

    fn hello(boot: u32, uptime_ms: u64) -> Uplink {
        Uplink::Hello(DeviceHello {
            link_version: LINK_VERSION,
            device_id: DeviceId::from_bytes(&[0x0a, 0x1b, 0x2c]).unwrap(),
            boot,
            firmware: "ferry-fw 0.1.0".try_into().unwrap(),
            uptime_ms,
            channels: [
                channel(0, "sht4x", "temperature", "Cel"),
                channel(1, "sht4x", "relative_humidity", "%"),
                channel(2, "tmp102", "temperature", "Cel"),
            ]
            .into_iter()
            .collect(),
            power_up: boot,
        })
    }

    fn window(channel: u8, start_ms: u64, v: f32) -> WindowReport {
        WindowReport {
            channel,
            start_ms,
            len_ms: 1_000,
            count: 10,
            sum: v * 10.0,
            min: v - 0.25,
            max: v + 0.5,
            first: v - 0.1,
            last: v + 0.3,
        }
    }

    /// A report of boot 7's clock, whose zero the device learnt from the
    /// sync answering its hello (at T0, 5 s of uptime).
    fn report(seq: u32, windows: &[WindowReport]) -> Uplink {
        Uplink::Report(Report {
            seq,
            windows: windows.iter().copied().collect(),
            time: ReportTime {
                power_up: 7,
                wall_at_zero_ms: T0 / MS - 5_000,
                quality: time_quality::SYNCED,
            },
        })
    }

    fn heartbeat(dropped: u32, queued: u16, next_seq: u32) -> Uplink {
        Uplink::Heartbeat(Heartbeat {
            uptime_ms: 0,
            dropped,
            queued,
            next_seq,
            power_up: 7,
        })
    }

    fn link_with(config: DeviceLinkConfig, registry: DeviceRegistry) -> GatewayLink {
        GatewayLink::new(Arc::new(config), registry, Arc::default())
    }

    fn link() -> GatewayLink {
        link_with(DeviceLinkConfig::default(), DeviceRegistry::new())
    }

    fn send(link: &mut GatewayLink, now: i64, msg: &Uplink) {
        link.handle_bytes(now, &frame(msg));
    }

    /// The downlinks waiting, without the time syncs (the test below
    /// checks those).
    fn drain(link: &mut GatewayLink) -> Vec<Downlink> {
        core::iter::from_fn(|| link.poll_transmit())
            .filter(|m| !matches!(m, Downlink::TimeSync(_)))
            .collect()
    }

    #[test]
    fn hellos_and_heartbeats_get_the_wall_clock_and_reports_are_placed_by_their_own_clock() {
        let mut link = link();
        send(&mut link, T0, &hello(7, 5_000));
        let sync = TimeSync {
            power_up: 7,
            uptime_ms: 5_000,
            wall_ms: T0 / MS,
        };
        assert_eq!(
            core::iter::from_fn(|| link.poll_transmit()).collect::<Vec<_>>(),
            [ack(7, 0), Downlink::TimeSync(sync)]
        );
        // A heartbeat a second later: one sync queued, the latest.
        send(&mut link, T0 + 1_000 * MS, &heartbeat(0, 0, 1));
        send(&mut link, T0 + 2_000 * MS, &heartbeat(0, 0, 1));
        assert_eq!(
            core::iter::from_fn(|| link.poll_transmit()).collect::<Vec<_>>(),
            [Downlink::TimeSync(TimeSync {
                power_up: 7,
                uptime_ms: 0,
                wall_ms: T0 / MS + 2_000,
            })]
        );
        // A journaling device sends a report of an earlier power-up (3),
        // whose zero it could only estimate: placed there, and counted.
        let zero_ms = T0 / MS - 3_600_000;
        let Uplink::Report(mut r) = report(1, &[window(0, 10_000, 21.0)]) else {
            unreachable!()
        };
        r.time = ReportTime {
            power_up: 3,
            wall_at_zero_ms: zero_ms,
            quality: time_quality::ESTIMATED,
        };
        send(&mut link, T0 + 2_000 * MS, &Uplink::Report(r));
        let work = link.poll_work().unwrap();
        let (_, window) = &work.reports[0].windows[0];
        assert_eq!(window.start_ns, (zero_ms + 10_000) * MS);
        assert_eq!(n(&link.stats().reports_time_estimated), 1);
    }

    fn ack(boot: u32, up_to: u32) -> Downlink {
        Downlink::Ack(LinkAck { boot, up_to })
    }

    fn answered(reports: &[bool]) -> CommitReport {
        CommitReport {
            reports: reports.to_vec(),
            wrote: true,
            ..CommitReport::default()
        }
    }

    /// A link that has heard the hello of boot 7 at T0 with 5 s of uptime.
    fn greeted() -> GatewayLink {
        let mut l = link();
        send(&mut l, T0, &hello(7, 5_000));
        assert_eq!(drain(&mut l), [ack(7, 0)]);
        l
    }

    #[test]
    fn hello_is_acked_with_what_the_journal_holds_of_that_boot_and_config_follows() {
        let registry =
            DeviceRegistry::from_journal([(HEX.to_owned(), 7, 4), ("ffff".to_owned(), 1, 9)]);
        let push = LinkConfig {
            sample_period_ms: 20,
            window_ms: 200,
        };
        let config = DeviceLinkConfig {
            push_config: Some(push),
            ..DeviceLinkConfig::default()
        };
        let mut l = link_with(config.clone(), registry.clone());
        send(&mut l, T0, &hello(7, 5_000));
        assert_eq!(drain(&mut l), [ack(7, 4), Downlink::Config(push)]);
        assert_eq!(l.device(), Some((HEX, 7)));
        assert_eq!(l.acked_up_to(), Some(4));
        let mark = registry.get(HEX).unwrap();
        assert_eq!(mark.offset_ns, Some(T0 - 5_000 * MS));
        assert!(mark.said_hello);

        // The hello repeated (the device had not heard us yet): same answer,
        // the offset measured at the first hello stays.
        send(&mut l, T0 + 2_000 * MS, &hello(7, 7_003));
        assert_eq!(drain(&mut l), [ack(7, 4), Downlink::Config(push)]);
        assert_eq!(registry.get(HEX).unwrap().offset_ns, Some(T0 - 5_000 * MS));

        // A reconnect (new link) keeps the offset of this boot too.
        let mut again = link_with(config.clone(), registry.clone());
        send(&mut again, T0 + 9_000 * MS, &hello(7, 14_010));
        assert_eq!(drain(&mut again)[0], ack(7, 4));

        // A new boot starts from nothing.
        send(&mut l, T0 + 60_000 * MS, &hello(8, 100));
        assert_eq!(drain(&mut l), [ack(8, 0), Downlink::Config(push)]);
        assert_eq!(
            registry.get(HEX).unwrap(),
            DeviceMark {
                boot: 8,
                journaled: 0,
                dropped_forwarded: 0,
                offset_ns: Some(T0 + 60_000 * MS - 100 * MS),
                said_hello: true,
            }
        );
        assert_eq!(n(&l.stats().hellos), 3);
        assert_eq!(n(&l.stats().devices_seen), 1);
        assert_eq!(n(&again.stats().devices_seen), 0, "seen by the first link");

        // Another link version is refused (version 1 had no time sync).
        let mut v2 = link();
        let Uplink::Hello(mut h) = hello(7, 0) else {
            unreachable!()
        };
        h.link_version = 1;
        send(&mut v2, T0, &Uplink::Hello(h));
        assert_eq!(drain(&mut v2), []);
        assert_eq!(v2.device(), None);
        assert_eq!(n(&v2.stats().bad_hellos), 1);
    }

    #[test]
    fn a_report_becomes_exact_wall_clock_windows_and_is_acked_after_the_commit() {
        let mut l = greeted();
        let offset = T0 - 5_000 * MS;
        send(
            &mut l,
            T0 + 10 * MS,
            &report(1, &[window(0, 4_000, 21.37), window(2, 4_000, 19.0625)]),
        );
        assert_eq!(drain(&mut l), [], "no ack before the journal has it");
        let work = l.poll_work().unwrap();
        assert!(l.poll_work().is_none(), "one commit in flight");
        assert!(work.health.is_empty() && work.readings.is_empty());
        let [rep] = &work.reports[..] else {
            panic!("{work:?}")
        };
        assert_eq!(
            (rep.device.as_str(), rep.boot, rep.seq, rep.floor),
            (HEX, 7, 1, 0)
        );
        let names: Vec<String> = rep.windows.iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(
            names,
            [
                r#"temperature{device="0a1b2c",sensor="sht4x",unit="Cel"}"#,
                r#"temperature{device="0a1b2c",sensor="tmp102",unit="Cel"}"#,
            ]
        );
        let start = offset + 4_000 * MS;
        let w = window(0, 4_000, 21.37);
        assert_eq!(
            rep.windows[0].1,
            Partial {
                start_ns: start,
                len_ns: 1_000_000_000,
                count: 10,
                sum: f64::from(w.sum),
                min: f64::from(w.min),
                max: f64::from(w.max),
                first_ts: start,
                first: f64::from(w.first),
                last_ts: start + 1_000 * MS - 1,
                last: f64::from(w.last),
                sketch: None,
            }
        );
        // Widened exactly: the f32's value, not the decimal it was written as.
        assert_eq!(rep.windows[0].1.sum, 213.700_012_207_031_25);
        assert_eq!(rep.windows[0].1.min, 21.120_000_839_233_4);
        assert_eq!(
            rep.windows[1].1.min, 18.8125,
            "19.0625 − 0.25 is exact in f32"
        );

        l.handle_commit(T0 + 20 * MS, Ok(&answered(&[true])));
        assert_eq!(drain(&mut l), [ack(7, 1)]);
        assert!(!l.commit_in_flight());
        assert_eq!(n(&l.stats().reports_journaled), 1);
    }

    #[test]
    fn duplicates_are_acked_without_a_second_commit() {
        let registry = DeviceRegistry::new();
        let mut l = link_with(DeviceLinkConfig::default(), registry.clone());
        send(&mut l, T0, &hello(7, 0));
        drain(&mut l);
        send(&mut l, T0, &report(1, &[window(0, 0, 1.0)]));
        send(&mut l, T0, &report(2, &[window(0, 1_000, 2.0)]));
        let work = l.poll_work().unwrap();
        assert_eq!(work.reports.len(), 2);
        // Resent while its commit is in flight: nothing new to commit.
        send(
            &mut l,
            T0 + 2_000 * MS,
            &report(2, &[window(0, 1_000, 2.0)]),
        );
        l.handle_commit(T0, Ok(&answered(&[true, true])));
        assert!(l.poll_work().is_none());
        assert_eq!(drain(&mut l), [ack(7, 2)]);
        assert_eq!(registry.get(HEX).unwrap().journaled, 2);
        // Resent after the ack was lost: acked again at once.
        send(&mut l, T0 + 4_000 * MS, &report(1, &[window(0, 0, 1.0)]));
        assert!(l.poll_work().is_none());
        assert_eq!(drain(&mut l), [ack(7, 2)]);
        assert_eq!(n(&l.stats().reports_duplicate), 2);
        assert_eq!(n(&l.stats().reports_journaled), 2);

        // A gateway that does not know what the journal holds (no registry
        // mark) submits the report; the journal answers "held before"; acked.
        let mut fresh = link();
        send(&mut fresh, T0, &hello(7, 0));
        assert_eq!(drain(&mut fresh), [ack(7, 0)]);
        send(&mut fresh, T0, &report(2, &[window(0, 1_000, 2.0)]));
        assert_eq!(fresh.poll_work().unwrap().reports[0].seq, 2);
        fresh.handle_commit(T0, Ok(&answered(&[true])));
        assert_eq!(drain(&mut fresh), [ack(7, 2)]);
    }

    #[test]
    fn out_of_order_reports_are_not_acked_until_the_gap_is_filled() {
        let mut l = greeted();
        send(&mut l, T0, &report(3, &[window(0, 2_000, 3.0)]));
        send(&mut l, T0, &report(2, &[window(0, 1_000, 2.0)]));
        let work = l.poll_work().unwrap();
        let seqs: Vec<u32> = work.reports.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [2, 3], "sorted by sequence");
        l.handle_commit(T0, Ok(&answered(&[false, false])));
        assert_eq!(drain(&mut l), []);
        assert_eq!(n(&l.stats().reports_out_of_order), 2);

        // Report 1 comes, then the resends.
        for seq in 1..=3 {
            send(&mut l, T0, &report(seq, &[window(0, 0, 1.0)]));
        }
        assert_eq!(l.poll_work().unwrap().reports.len(), 3);
        l.handle_commit(T0, Ok(&answered(&[true, true, false])));
        assert_eq!(drain(&mut l), [ack(7, 2)]);
        assert_eq!(n(&l.stats().reports_journaled), 2);
        assert_eq!(n(&l.stats().reports_out_of_order), 3);
    }

    #[test]
    fn a_commit_failure_acks_nothing() {
        let mut l = greeted();
        send(&mut l, T0, &report(1, &[window(0, 0, 1.0)]));
        l.poll_work().unwrap();
        l.handle_commit(T0, Err(&SubmitError::Full { used: 9, budget: 8 }));
        assert_eq!(drain(&mut l), []);
        assert!(l.poll_work().is_none(), "the device resends; nothing kept");
        assert_eq!(n(&l.stats().commit_failures), 1);
        send(&mut l, T0, &report(1, &[window(0, 0, 1.0)]));
        l.poll_work().unwrap();
        l.handle_commit(T0, Ok(&answered(&[true])));
        assert_eq!(drain(&mut l), [ack(7, 1)]);
    }

    #[test]
    fn reports_and_heartbeats_before_any_hello_ask_for_one_at_a_bounded_rate() {
        let mut l = link();
        send(&mut l, T0, &report(4, &[window(0, 0, 1.0)]));
        assert!(l.poll_work().is_none(), "no catalogue: nothing journaled");
        assert_eq!(drain(&mut l), [Downlink::HelloRequest(())]);
        send(&mut l, T0 + 500 * MS, &report(5, &[window(0, 0, 1.0)]));
        send(&mut l, T0 + 600 * MS, &heartbeat(0, 2, 6));
        assert_eq!(drain(&mut l), [], "one request a second");
        send(&mut l, T0 + 1_000 * MS, &heartbeat(0, 2, 6));
        assert_eq!(drain(&mut l), [Downlink::HelloRequest(())]);
        assert_eq!(n(&l.stats().before_hello), 4);
        assert_eq!(n(&l.stats().hello_requests), 2);
        assert!(l.poll_work().is_none());

        send(&mut l, T0 + 1_100 * MS, &hello(7, 3_000));
        assert_eq!(drain(&mut l), [ack(7, 0)]);
        send(&mut l, T0 + 1_200 * MS, &report(4, &[window(0, 0, 1.0)]));
        assert_eq!(l.poll_work().unwrap().reports.len(), 1);
    }

    #[test]
    fn heartbeats_set_the_floor_and_forward_drop_increases_per_boot() {
        let mut l = greeted();
        // next_seq 9 with 3 queued: 1..=5 were acked or dropped.
        send(&mut l, T0, &heartbeat(0, 3, 9));
        assert!(l.poll_work().is_none(), "no drops: nothing to commit");
        send(&mut l, T0, &report(6, &[window(0, 5_000, 6.0)]));
        let work = l.poll_work().unwrap();
        assert_eq!(work.reports[0].floor, 5);
        l.handle_commit(T0, Ok(&answered(&[true])));
        assert_eq!(drain(&mut l), [ack(7, 6)]);

        send(&mut l, T0, &heartbeat(3, 2, 9));
        let work = l.poll_work().unwrap();
        assert_eq!(work.device_dropped, [(HEX.to_owned(), 7, 3)]);
        assert!(work.reports.is_empty());
        // A failed commit forwards nothing; the next heartbeat tries again.
        l.handle_commit(T0, Err(&SubmitError::Storage("disk".into())));
        assert!(l.poll_work().is_none());
        send(&mut l, T0, &heartbeat(3, 2, 9));
        assert_eq!(l.poll_work().unwrap().device_dropped[0].2, 3);
        l.handle_commit(T0, Ok(&answered(&[])));
        assert_eq!(n(&l.stats().device_dropped), 3);

        send(&mut l, T0, &heartbeat(3, 2, 9));
        assert!(l.poll_work().is_none(), "no increase");
        send(&mut l, T0, &heartbeat(5, 2, 10));
        let work = l.poll_work().unwrap();
        assert_eq!(work.device_dropped, [(HEX.to_owned(), 7, 5)]);
        l.handle_commit(T0, Ok(&answered(&[])));

        // A new boot counts from 0 again.
        send(&mut l, T0, &hello(8, 10));
        drain(&mut l);
        send(&mut l, T0, &heartbeat(1, 0, 2));
        assert_eq!(
            l.poll_work().unwrap().device_dropped,
            [(HEX.to_owned(), 8, 1)]
        );
        l.handle_commit(T0, Ok(&answered(&[])));
        assert_eq!(n(&l.stats().device_dropped), 6);
    }

    #[test]
    fn unknown_channels_and_empty_windows_reject_the_report_every_time() {
        let mut l = greeted();
        for _ in 0..3 {
            send(
                &mut l,
                T0,
                &report(1, &[window(0, 0, 1.0), window(9, 0, 1.0)]),
            );
        }
        let mut empty = window(1, 0, 1.0);
        empty.count = 0;
        send(&mut l, T0, &report(1, &[empty]));
        assert!(l.poll_work().is_none());
        assert_eq!(drain(&mut l), []);
        assert_eq!(n(&l.stats().reports_rejected), 4);
    }

    #[test]
    fn bad_frames_are_counted_by_kind_and_the_stream_carries_on() {
        let mut l = link();
        let good = frame(&hello(7, 0));
        let mut bytes = Vec::new();
        // CRC: one flipped bit in the body.
        let mut crc = good.clone();
        crc[3] ^= 0x10;
        bytes.extend_from_slice(&crc);
        // COBS: a code byte pointing past the frame's end.
        bytes.extend_from_slice(&[0x09, 0x41, 0x00]);
        // Shorter than the CRC.
        bytes.extend_from_slice(&[0x03, 0x41, 0x42, 0x00]);
        // Too long: no delimiter for 600 bytes.
        bytes.extend_from_slice(&[0x55; 600]);
        bytes.push(0);
        // A good CRC around bytes that are no uplink message.
        let mut junk = [0u8; 16];
        let len = serial::encode_frame(&[0xc1, 0x01], &mut junk).unwrap();
        bytes.extend_from_slice(&junk[..len]);
        bytes.extend_from_slice(&good);
        // Fed in awkward pieces, as a UART delivers them.
        for chunk in bytes.chunks(7) {
            l.handle_bytes(T0, chunk);
        }
        let s = l.stats();
        assert_eq!(
            [
                n(&s.bad_crc),
                n(&s.bad_cobs),
                n(&s.too_short),
                n(&s.too_long),
                n(&s.undecodable),
                n(&s.frames_ok),
            ],
            [1, 1, 1, 1, 1, 1]
        );
        assert_eq!(l.device(), Some((HEX, 7)));
        assert_eq!(drain(&mut l), [ack(7, 0)]);
    }

    #[test]
    fn bounded_pending_reports() {
        let config = DeviceLinkConfig {
            max_pending_reports: 2,
            ..DeviceLinkConfig::default()
        };
        let mut l = link_with(config, DeviceRegistry::new());
        send(&mut l, T0, &hello(7, 0));
        for seq in 1..=3 {
            send(&mut l, T0, &report(seq, &[window(0, 0, 1.0)]));
        }
        assert_eq!(l.poll_work().unwrap().reports.len(), 2);
        assert_eq!(n(&l.stats().reports_overflow), 1);
    }

    #[test]
    fn config_reads_from_toml() {
        let c: DeviceLinkConfig = toml::from_str(
            "name = \"uart0\"\npush_config = { sample_period_ms = 20, window_ms = 200 }\nreconnect_max_ms = 5000\n",
        )
        .unwrap();
        assert_eq!(c.name, "uart0");
        assert_eq!(
            c.push_config,
            Some(LinkConfig {
                sample_period_ms: 20,
                window_ms: 200
            })
        );
        assert_eq!(c.reconnect_max_ms, 5_000);
        assert_eq!(
            c.reconnect_min_ms,
            DeviceLinkConfig::default().reconnect_min_ms
        );
        let err = toml::from_str::<DeviceLinkConfig>("nmae = \"x\"").unwrap_err();
        assert!(err.to_string().contains("nmae"), "{err}");
    }

    #[test]
    fn downlinks_frame_for_the_device() {
        let bytes = encode_downlink(&ack(7, 3));
        let mut d = Deframer::new();
        let (last, body) = bytes.split_last().unwrap();
        assert!(body.iter().all(|&b| d.push(b).is_none()));
        let payload = d.push(*last).unwrap().unwrap();
        assert_eq!(
            codec::from_bytes::<Downlink>("Downlink", payload).unwrap(),
            ack(7, 3)
        );
    }
}
