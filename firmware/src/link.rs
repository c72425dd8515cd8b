//! The device side of the serial link, sans-IO: bytes and instants in,
//! frames out (see `ferry_proto::link` for the messages).
//!
//! ```text
//!            push_report ─▶ ┌────────── retry ring (N reports) ──────────┐
//!                           │ seq 7 (sent 12:00.1) │ seq 8 │ seq 9 (new)  │ ─▶ poll_transmit ─▶ frame
//!   Ack{boot, up_to: 7} ─▶  └── popped ────────────┘                    ─┘
//! ```
//!
//! - **Hello** goes out at start, on [`Downlink::HelloRequest`], and every
//!   `hello_every_ms` until the gateway has said anything at all.
//! - **Reports** get per-boot sequence numbers from 1 and wait in a bounded
//!   ring until a cumulative [`LinkAck`] of this boot covers them. A report is
//!   sent at once, then again every `resend_after_ms` while unacknowledged.
//! - **Overflow**: pushing into a full ring drops the *oldest* report and
//!   counts it in `dropped`, which every [`Heartbeat`] carries, so the loss
//!   reaches the collector as a figure rather than as silence.
//! - **Heartbeats** every `heartbeat_every_ms`.
//! - **Time**: the boot is the power-up (`power_up = boot`) and times are
//!   the caller's `now_ms` (ms since boot). A [`TimeSync`] for this boot
//!   sets the clock's wall-clock zero; reports wait in the ring until the
//!   first one (the gateway answers the hello with one), then carry it: a
//!   report closed before that first sync is marked `BEFORE_SYNC`.
//!
//! **Invariants:** the ring holds consecutive sequence numbers, oldest
//! first (a drop removes only the oldest, so no gap opens inside the ring);
//! every sequence number handed out is acked, queued or dropped, exactly one
//! of them: `next_seq - 1 == acked + queued + dropped`.

use ferry_proto::codec;
use ferry_proto::link::{
    Channel, DeviceHello, DeviceId, Downlink, Heartbeat, LINK_VERSION, LinkAck, LinkConfig,
    MAX_CHANNELS, MAX_REPORT_WINDOWS, Report, ReportTime, TimeSync, Uplink, WindowReport,
    time_quality,
};
use ferry_proto::serial::{self, MAX_LINK_PAYLOAD, MAX_SERIAL_FRAME};

/// Link timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkTimers {
    /// Resend an unacknowledged report after this long.
    pub resend_after_ms: u32,
    /// Send a heartbeat this often.
    pub heartbeat_every_ms: u32,
    /// Repeat the hello this often until the first downlink arrives.
    pub hello_every_ms: u32,
}

impl Default for LinkTimers {
    fn default() -> Self {
        Self {
            resend_after_ms: 2_000,
            heartbeat_every_ms: 10_000,
            hello_every_ms: 2_000,
        }
    }
}

/// What identifies this device and its sensors in a hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Unique id.
    pub device_id: DeviceId,
    /// Boot number.
    pub boot: u32,
    /// Firmware name and version.
    pub firmware: heapless::String<24>,
    /// Channel catalogue.
    pub channels: heapless::Vec<Channel, MAX_CHANNELS>,
}

/// What a downlink frame did, for the caller to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Reports up to this sequence were acknowledged (and left the ring).
    Acked {
        /// The ack's `up_to`.
        up_to: u32,
        /// Reports removed from the ring.
        released: u16,
    },
    /// The gateway sent settings; the caller applies them.
    Config(LinkConfig),
    /// The gateway asked for a hello; everything queued will be resent.
    HelloRequested,
    /// The gateway's clock: this boot's clock zero is at `wall_at_zero_ms`.
    TimeSynced {
        /// Wall-clock time (Unix ms) of uptime 0.
        wall_at_zero_ms: i64,
    },
    /// A time sync for another power-up, or echoing an uptime not yet
    /// reached: ignored.
    StaleTimeSync(TimeSync),
    /// An ack for another boot, or for sequences never sent: ignored.
    StaleAck(LinkAck),
    /// The frame was corrupt or not a downlink message: ignored.
    BadFrame,
}

/// Link counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkStats {
    /// Reports dropped because the ring was full (also in heartbeats).
    pub dropped: u32,
    /// Reports acknowledged.
    pub acked: u32,
    /// Report transmissions after the first.
    pub resent: u32,
    /// Frames refused (framing, CRC, decoding).
    pub bad_frames: u32,
    /// Acks ignored as stale.
    pub stale_acks: u32,
    /// Messages that could not be encoded (a bug or an oversized catalogue).
    pub encode_errors: u32,
}

#[derive(Debug, Clone)]
struct Pending<const W: usize> {
    seq: u32,
    windows: heapless::Vec<WindowReport, W>,
    /// The clock's wall-clock zero when the report was queued (`None`:
    /// before the boot's first sync).
    wall_at_zero_ms: Option<i64>,
    /// Last transmission; `None` until first sent (or after a hello request).
    sent_ms: Option<u64>,
}

/// The device end of the link, with a ring of `N` reports of at most `W`
/// windows each.
#[derive(Debug)]
pub struct Link<const N: usize, const W: usize = MAX_REPORT_WINDOWS> {
    identity: Identity,
    timers: LinkTimers,
    next_seq: u32,
    ring: heapless::Deque<Pending<W>, N>,
    hello_due_ms: Option<u64>,
    hello_sent: bool,
    heard_gateway: bool,
    heartbeat_due_ms: u64,
    /// Wall-clock time of uptime 0, from the time syncs ([`SyncFilter`]).
    sync: SyncFilter,
    wall_at_zero_ms: Option<i64>,
    stats: LinkStats,
}

impl<const N: usize, const W: usize> Link<N, W> {
    /// A link that starts at `now_ms` and sends its hello first.
    pub fn new(now_ms: u64, identity: Identity, timers: LinkTimers) -> Self {
        const { assert!(W > 0 && W <= MAX_REPORT_WINDOWS && N > 0) };
        Self {
            identity,
            timers,
            next_seq: 1,
            ring: heapless::Deque::new(),
            hello_due_ms: Some(now_ms),
            hello_sent: false,
            heard_gateway: false,
            heartbeat_due_ms: now_ms + u64::from(timers.heartbeat_every_ms),
            sync: SyncFilter::default(),
            wall_at_zero_ms: None,
            stats: LinkStats::default(),
        }
    }

    /// Wall-clock time (Unix ms) of uptime 0, once synced.
    pub fn wall_at_zero_ms(&self) -> Option<i64> {
        self.wall_at_zero_ms
    }

    /// This boot's number.
    pub fn boot(&self) -> u32 {
        self.identity.boot
    }

    /// Counters.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Reports waiting for an ack.
    pub fn queued(&self) -> usize {
        self.ring.len()
    }

    /// Sequence the next report gets.
    pub fn next_seq(&self) -> u32 {
        self.next_seq
    }

    /// Sequence numbers waiting for an ack, oldest first.
    pub fn queued_seqs(&self) -> impl Iterator<Item = u32> + '_ {
        self.ring.iter().map(|p| p.seq)
    }

    /// Queues closed windows as reports of at most `W` windows, each with the
    /// next sequence number. A full ring drops its oldest report (counted).
    pub fn push_report(&mut self, windows: &[WindowReport]) {
        for chunk in windows.chunks(W) {
            let pending = Pending {
                seq: self.next_seq,
                // chunks(W) yields at most W items.
                windows: heapless::Vec::from_slice(chunk).unwrap_or_default(),
                wall_at_zero_ms: self.wall_at_zero_ms,
                sent_ms: None,
            };
            self.next_seq += 1;
            if self.ring.is_full() {
                self.ring.pop_front();
                self.stats.dropped += 1;
            }
            // Not full after the pop above.
            let _ = self.ring.push_back(pending);
        }
    }

    /// Handles one deframed downlink payload.
    pub fn handle_payload(&mut self, now_ms: u64, payload: &[u8]) -> Event {
        match codec::from_slice::<Downlink>("Downlink", payload) {
            Ok(msg) => self.handle_downlink(now_ms, msg),
            Err(_) => {
                self.stats.bad_frames += 1;
                Event::BadFrame
            }
        }
    }

    /// Counts a frame the deframer refused.
    pub fn handle_bad_frame(&mut self) -> Event {
        self.stats.bad_frames += 1;
        Event::BadFrame
    }

    /// Handles one downlink message.
    pub fn handle_downlink(&mut self, now_ms: u64, msg: Downlink) -> Event {
        if !self.heard_gateway {
            self.heard_gateway = true;
            // Stop repeating the hello, once it has gone out at all.
            if self.hello_sent {
                self.hello_due_ms = None;
            }
        }
        match msg {
            Downlink::Ack(ack) => self.handle_ack(ack),
            Downlink::Config(config) => Event::Config(config),
            Downlink::HelloRequest(()) => {
                self.hello_due_ms = Some(now_ms);
                // The gateway restarted: whatever was in flight may be lost.
                for p in self.ring.iter_mut() {
                    p.sent_ms = None;
                }
                Event::HelloRequested
            }
            Downlink::TimeSync(sync) => {
                let uptime = i64::try_from(sync.uptime_ms).ok();
                match uptime {
                    Some(up) if sync.power_up == self.identity.boot && sync.uptime_ms <= now_ms => {
                        self.sync.offer(sync.wall_ms.saturating_sub(up));
                        self.wall_at_zero_ms = self.sync.zero();
                        Event::TimeSynced {
                            wall_at_zero_ms: self.sync.zero().unwrap_or_default(),
                        }
                    }
                    _ => Event::StaleTimeSync(sync),
                }
            }
        }
    }

    fn handle_ack(&mut self, ack: LinkAck) -> Event {
        if ack.boot != self.identity.boot || ack.up_to >= self.next_seq {
            self.stats.stale_acks += 1;
            return Event::StaleAck(ack);
        }
        let mut released = 0u16;
        while self.ring.front().is_some_and(|p| p.seq <= ack.up_to) {
            self.ring.pop_front();
            released += 1;
        }
        self.stats.acked += u32::from(released);
        Event::Acked {
            up_to: ack.up_to,
            released,
        }
    }

    /// The next instant [`Link::poll_transmit`] has something to send.
    pub fn next_due_ms(&self) -> u64 {
        let resend = u64::from(self.timers.resend_after_ms);
        self.ring
            .iter()
            .filter(|_| self.wall_at_zero_ms.is_some())
            .map(|p| p.sent_ms.map_or(0, |t| t + resend))
            .chain(self.hello_due_ms)
            .fold(self.heartbeat_due_ms, u64::min)
    }

    /// Writes the next due frame into `out` (at least [`MAX_SERIAL_FRAME`]
    /// bytes) and returns its length; `None` when nothing is due. Order: the
    /// hello, then reports oldest first, then the heartbeat.
    pub fn poll_transmit(&mut self, now_ms: u64, out: &mut [u8]) -> Option<usize> {
        loop {
            let msg = self.next_message(now_ms)?;
            match frame(&msg, out) {
                Some(n) => return Some(n),
                None => self.stats.encode_errors += 1,
            }
        }
    }

    fn next_message(&mut self, now_ms: u64) -> Option<Uplink> {
        if self.hello_due_ms.is_some_and(|t| t <= now_ms) {
            self.hello_sent = true;
            self.hello_due_ms =
                (!self.heard_gateway).then(|| now_ms + u64::from(self.timers.hello_every_ms));
            return Some(Uplink::Hello(DeviceHello {
                link_version: LINK_VERSION,
                device_id: self.identity.device_id.clone(),
                boot: self.identity.boot,
                firmware: self.identity.firmware.clone(),
                uptime_ms: now_ms,
                channels: self.identity.channels.clone(),
                power_up: self.identity.boot,
            }));
        }
        let resend = u64::from(self.timers.resend_after_ms);
        // Reports wait for the boot's first sync: before it, nothing says
        // where their windows are in wall-clock time.
        let synced = self.wall_at_zero_ms;
        if let Some(zero) = synced
            && let Some(p) = self
                .ring
                .iter_mut()
                .find(|p| p.sent_ms.is_none_or(|t| t + resend <= now_ms))
        {
            if p.sent_ms.is_some() {
                self.stats.resent += 1;
            }
            p.sent_ms = Some(now_ms);
            let mut windows = heapless::Vec::new();
            // W <= MAX_REPORT_WINDOWS (checked in `new`).
            let _ = windows.extend_from_slice(&p.windows);
            let time = ReportTime {
                power_up: self.identity.boot,
                wall_at_zero_ms: p.wall_at_zero_ms.unwrap_or(zero),
                quality: if p.wall_at_zero_ms.is_some() {
                    time_quality::SYNCED
                } else {
                    time_quality::BEFORE_SYNC
                },
            };
            return Some(Uplink::Report(Report {
                seq: p.seq,
                windows,
                time,
            }));
        }
        if self.heartbeat_due_ms <= now_ms {
            self.heartbeat_due_ms = now_ms + u64::from(self.timers.heartbeat_every_ms);
            return Some(Uplink::Heartbeat(self.heartbeat(now_ms)));
        }
        None
    }

    /// The heartbeat as it would be sent at `now_ms`.
    pub fn heartbeat(&self, now_ms: u64) -> Heartbeat {
        Heartbeat {
            uptime_ms: now_ms,
            dropped: self.stats.dropped,
            queued: self.ring.len() as u16,
            next_seq: self.next_seq,
            power_up: self.identity.boot,
        }
    }
}

/// Encodes and frames an uplink message; `None` if it does not fit.
pub fn frame(msg: &Uplink, out: &mut [u8]) -> Option<usize> {
    let mut payload = [0u8; MAX_LINK_PAYLOAD];
    let n = codec::to_slice(msg, &mut payload).ok()?;
    serial::encode_frame(&payload[..n], out).ok()
}

/// A later time sync moves a clock's zero only when it differs by this
/// much or more (drift); smaller differences are the transit time's jitter
/// and would only shift windows against each other.
pub const RESYNC_MS: i64 = 250;
/// Samples in a row that must say the zero moved later before it does (a
/// sample is late by its transit time, so one late sample is no evidence).
pub const RESYNC_LATER_SAMPLES: u8 = 3;

/// Filters a clock's time syncs: the first sets the zero; later ones move it
/// earlier by [`RESYNC_MS`] or more at once, later by as much only when
/// [`RESYNC_LATER_SAMPLES`] in a row agree. Returns the new zero when it
/// moves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncFilter {
    zero: Option<i64>,
    later_in_a_row: u8,
}

impl SyncFilter {
    /// The zero in force.
    pub fn zero(&self) -> Option<i64> {
        self.zero
    }

    /// Offers a sample `wall − uptime`; `Some(zero)` if the zero moved.
    pub fn offer(&mut self, sample: i64) -> Option<i64> {
        let Some(zero) = self.zero else {
            self.zero = Some(sample);
            return self.zero;
        };
        if sample <= zero - RESYNC_MS {
            self.later_in_a_row = 0;
            self.zero = Some(sample);
            return self.zero;
        }
        if sample >= zero + RESYNC_MS {
            self.later_in_a_row += 1;
            if self.later_in_a_row >= RESYNC_LATER_SAMPLES {
                self.later_in_a_row = 0;
                self.zero = Some(sample);
                return self.zero;
            }
        } else {
            self.later_in_a_row = 0;
        }
        None
    }
}

/// Buffer size for [`Link::poll_transmit`].
pub const TX_BUFFER: usize = MAX_SERIAL_FRAME;
