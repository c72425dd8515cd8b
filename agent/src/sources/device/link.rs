//! [`GatewayLink`]: the device link protocol, gateway side, sans-IO.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use ferry_proto::codec;
use ferry_proto::link::{
    DeviceHello, Downlink, Heartbeat, LINK_VERSION, LinkAck, Report, TimeSync, Uplink, time_quality,
};
use ferry_proto::serial::{self, Deframer, MAX_SERIAL_FRAME, SerialError};
use ferry_proto::series::SeriesKey;

use crate::intake::SubmitError;
use crate::journal::{CommitReport, DeviceReport, Work};
use crate::window::Partial;

use super::*;

/// The device a link talks to, from its hello.
#[derive(Debug, Clone)]
pub(super) struct Session {
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
pub(super) type ReportId = (String, u32, u32);

/// What the commit in flight carries.
#[derive(Debug)]
pub(super) struct InFlight {
    reports: Vec<ReportId>,
    /// `(device, boot, dropped)`: the figure journaled if the commit succeeds.
    dropped: Option<(String, u32, u32)>,
}

/// Kinds of rate-limited warnings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum WarnKind {
    Frame,
    Message,
    Hello,
    Report,
    OutOfOrder,
    Commit,
}

#[derive(Debug, Default)]
pub(super) struct WarnState {
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
        if let Some(s) = &self.session {
            self.registry.seen(&s.hex, now_ns);
        }
    }

    /// The link is gone (closed, idle, shut down): the device no longer
    /// counts as connected through it.
    pub fn handle_closed(&mut self) {
        if let Some(s) = self.session.take() {
            self.registry.link_down(&s.hex);
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
        if !same {
            if let Some(old) = &self.session {
                self.registry.link_down(&old.hex);
            }
            self.registry.link_up(
                &hex,
                h.firmware.as_str(),
                h.link_version,
                now_ns,
                self.config.max_devices,
            );
        }
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

pub(super) fn ms_to_ns(ms: u64) -> i64 {
    i64::try_from(ms)
        .unwrap_or(i64::MAX)
        .saturating_mul(1_000_000)
}

fn ms_to_ns_signed(ms: i64) -> i64 {
    ms.saturating_mul(1_000_000)
}

/// The windows of a report in wall-clock time (its clock's zero plus each
/// window's start on that clock), or why they are refused.
pub(super) fn map_windows(s: &Session, r: &Report) -> Result<Vec<(SeriesKey, Partial)>, String> {
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
