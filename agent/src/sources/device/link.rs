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

mod uplink;

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

/// Encodes and frames a downlink message for the wire.
pub fn encode_downlink(msg: &Downlink) -> Vec<u8> {
    let mut frame = [0u8; MAX_SERIAL_FRAME];
    // Downlink messages are a few bytes: far below the payload limit.
    let payload = codec::to_vec(msg).unwrap_or_default();
    let n = serial::encode_frame(&payload, &mut frame).unwrap_or(0);
    frame[..n].to_vec()
}
