//! A sensor node that journals: the [`Sampler`]'s closed windows go into the
//! gateway agent's own redb [`Journal`] (`ferry-agent` without `std`) on the
//! device's flash, and the link streams them from the journal's outbox, so a
//! sensor that loses its gateway or its power loses nothing it measured.
//! Feature `journal`; needs an allocator. The RAM-ring [`Node`](crate::node::Node)
//! is the build for parts without the flash or RAM for redb.
//!
//! ```text
//!  sampler ─▶ closed windows ─▶ Journal::commit(DeviceReport{epoch, n})   (transaction 1)
//!                                   └▶ outbox batch `seq` (one per report)
//!                             ─▶ resume record {epoch, n+1, next window}  (transaction 2)
//!  outbox ─▶ up to IN_FLIGHT reports `seq` ─▶ frames ─▶ gateway
//!  Ack{epoch, up_to} ─▶ Journal::commit(acks: lowest..=up_to)  (deleted only now)
//! ```
//!
//! # Identity across power loss
//! - **Epoch**: the link's `boot` number. It is chosen when the journal is
//!   created (the board's boot argument, or its clock) and kept in the
//!   resume record, so it stays the same across power losses: the gateway's
//!   `(device, boot, seq)` dedupe then covers reports sent before and after a
//!   restart.
//! - **Sequence**: a report's link `seq` is its journal batch sequence, which
//!   the journal persists and never reuses; it starts at 1 per epoch, +1 per
//!   report, so the gateway sees no gaps.
//! - **Device time** (`start_ms`, the hello's `uptime_ms`) counts from the
//!   epoch and excludes time without power: after a restart the node
//!   carries on at the start of the first window not yet journaled (the
//!   resume record), with [`Sampler::resume`], so the windows continue the
//!   schedule as if the power had never gone.
//!
//! # Crash consistency
//! Power can go at any instant. The journal commit and the resume record
//! are two transactions, in that order:
//! - lost before transaction 1: the window was not journaled and the record
//!   still points at its start: it is sampled again;
//! - lost between them: the window is journaled but the record points at
//!   its start: it is sampled again and committed as the same
//!   `DeviceReport` number `n`, which the journal's `devices` table already
//!   holds, so nothing is added (journaled once);
//! - an ack's deletion is one journal commit; lost before it, the gateway
//!   acks the same sequences again (its own dedupe holds them).
//!
//! **Invariants:** the outbox holds exactly the sequences
//! `lowest_unacked .. next_seq` (acks delete prefixes, and the journal runs
//! under `backpressure`, so it never drops a batch); every window the
//! sampler closed is in the outbox, acked, or counted in `dropped` (journal
//! full or failing), which heartbeats carry to the collector.

use alloc::string::String;
use alloc::vec::Vec;

pub use ferry_agent::journal::CommitError;
use ferry_agent::journal::{DeviceReport, FullPolicy, Journal, JournalConfig, Work};
use ferry_agent::window::Partial;
use ferry_proto::batch::Batch;
use ferry_proto::codec;
use ferry_proto::link::{
    Channel, DeviceHello, DeviceId, Downlink, Heartbeat, LINK_VERSION, LinkAck, LinkConfig,
    MAX_REPORT_WINDOWS, Report, Uplink, WindowReport,
};
use ferry_proto::serial::Deframer;
use ferry_proto::series::SeriesKey;
use redb::Database;

use crate::link::{LinkTimers, frame};

mod resume;

use crate::node::FIRMWARE;
use crate::sampler::{ConfigError, MAX_SENSORS, Sampler, SamplerStats};
use crate::sensor::Sensor;
pub use resume::ResumeRecord;
use resume::{read_record, write_record};

/// Reports sent and not yet acknowledged, at most.
pub const IN_FLIGHT: usize = 4;
/// Most batches one journal commit deletes on an ack.
const ACK_CHUNK: u64 = 32;

/// Journal settings of a node: budget of journal rows, redb cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalSettings {
    /// Most bytes of journal rows (past it, windows are dropped and counted).
    pub budget_bytes: u64,
}

impl Default for JournalSettings {
    fn default() -> Self {
        // redb's heap use grows with the pages in use (~75 B per journaled
        // report on the emulated board); 96 KiB of rows keeps the journal
        // image's heap peak under its 80 KiB heap (README "Sizes").
        Self {
            budget_bytes: 96 * 1024,
        }
    }
}

/// Why a journaling node could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// The journal or the resume record could not be read or written.
    Journal(CommitError),
    /// The resume record does not decode.
    BadResumeRecord,
    /// The config or sensor layout was refused.
    Config(ConfigError),
}

impl core::fmt::Display for StartError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Journal(e) => write!(f, "{e}"),
            Self::BadResumeRecord => write!(f, "the resume record does not decode"),
            Self::Config(e) => write!(f, "config refused: {e:?}"),
        }
    }
}

impl From<CommitError> for StartError {
    fn from(e: CommitError) -> Self {
        Self::Journal(e)
    }
}

/// What a downlink frame did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalEvent {
    /// Reports up to `up_to` were deleted from the journal.
    Acked {
        /// The ack's `up_to`.
        up_to: u32,
        /// Reports deleted.
        released: u32,
    },
    /// A config was scheduled (or refused: counted).
    Config(LinkConfig),
    /// The gateway asked for a hello: everything in flight goes again.
    HelloRequested,
    /// An ack of another epoch, of sequences never sent, or one whose
    /// deletion failed: nothing was deleted.
    StaleAck(LinkAck),
    /// A corrupt or unknown frame.
    BadFrame,
}

/// Counters of a journaling node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JournalNodeStats {
    /// Sampler counters (since power-up).
    pub sampler: SamplerStats,
    /// Reports journaled (since power-up).
    pub journaled: u32,
    /// Reports the journal already held (sampled again after a power loss
    /// between its two transactions).
    pub rejournaled: u32,
    /// Reports lost and counted, since the epoch began (persistent).
    pub dropped: u32,
    /// Reports deleted on an ack (since power-up).
    pub acked: u32,
    /// Report transmissions after the first.
    pub resent: u32,
    /// Frames refused.
    pub bad_frames: u32,
    /// Acks ignored.
    pub stale_acks: u32,
    /// Journal reads or writes that failed.
    pub journal_errors: u32,
    /// Outbox batches that could not be turned into a report (never
    /// expected: one report per batch).
    pub unsendable: u32,
    /// Configs refused as out of range.
    pub configs_rejected: u32,
    /// Messages that could not be encoded.
    pub encode_errors: u32,
}

#[derive(Debug, Clone)]
struct Outgoing {
    seq: u32,
    windows: heapless::Vec<WindowReport, MAX_REPORT_WINDOWS>,
    sent_ms: Option<u64>,
}

/// A sampler, the agent's journal and the device end of the link.
pub struct JournalNode {
    sampler: Sampler,
    journal: Journal,
    record: ResumeRecord,
    device_id: DeviceId,
    device_hex: String,
    firmware: heapless::String<24>,
    channels: heapless::Vec<Channel, { ferry_proto::link::MAX_CHANNELS }>,
    series: Vec<SeriesKey>,
    timers: LinkTimers,
    deframer: Deframer,
    /// Device time at power-up: device ms = `base_ms + now_ms - start_ms`.
    base_ms: u64,
    start_ms: u64,
    lowest_unacked: u64,
    next_seq: u64,
    outgoing: heapless::Deque<Outgoing, IN_FLIGHT>,
    hello_due_ms: Option<u64>,
    hello_sent: bool,
    heard_gateway: bool,
    heartbeat_due_ms: u64,
    stats: JournalNodeStats,
}

impl core::fmt::Debug for JournalNode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("JournalNode")
            .field("record", &self.record)
            .field("lowest_unacked", &self.lowest_unacked)
            .field("next_seq", &self.next_seq)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl JournalNode {
    /// Opens the journal in `db` and starts the node at uptime `now_ms`.
    /// On a new journal the epoch is `new_epoch` and sampling starts at
    /// device time 0 with `config`; on an existing one the resume record
    /// decides (and `new_epoch` and `config` are not used).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        now_ms: u64,
        db: Database,
        settings: JournalSettings,
        device_id: DeviceId,
        new_epoch: u32,
        config: LinkConfig,
        timers: LinkTimers,
        sensors: &[&dyn Sensor],
        every: &[u32],
    ) -> Result<Self, StartError> {
        let journal = Journal::open(
            db,
            JournalConfig {
                budget_bytes: settings.budget_bytes,
                policy: FullPolicy::Backpressure,
                // One batch per report: a batch is a link report.
                batch_max_readings: 1,
                batch_linger_ns: 0,
                rules: Vec::new(),
                eager_seal: false,
            },
        )?;
        let mut record = match read_record(journal.database())? {
            Some(r) => r,
            None => ResumeRecord {
                epoch: new_epoch,
                next_report: 1,
                window_start_ms: 0,
                schedule_epoch_ms: 0,
                sample_period_ms: config.sample_period_ms,
                window_ms: config.window_ms,
                dropped: 0,
                power_ups: 0,
            },
        };
        record.power_ups = record.power_ups.saturating_add(1);
        write_record(journal.database(), &record)?;

        let mut channels = heapless::Vec::new();
        let mut series = Vec::new();
        let mut counts = heapless::Vec::<u8, MAX_SENSORS>::new();
        for sensor in sensors {
            let qs = sensor.quantities();
            counts
                .push(qs.len() as u8)
                .map_err(|_| StartError::Config(ConfigError::BadLayout))?;
            for q in qs {
                let id = channels.len() as u8;
                let channel = Channel {
                    id,
                    sensor: short(q.sensor)?,
                    quantity: short(q.quantity)?,
                    unit: short(q.unit)?,
                };
                channels
                    .push(channel)
                    .map_err(|_| StartError::Config(ConfigError::BadLayout))?;
                series.push(channel_series(id).ok_or(StartError::Config(ConfigError::BadLayout))?);
            }
        }
        let sampler = Sampler::resume(
            record.schedule_epoch_ms,
            record.window_start_ms,
            LinkConfig {
                sample_period_ms: record.sample_period_ms,
                window_ms: record.window_ms,
            },
            &counts,
            every,
        )
        .map_err(StartError::Config)?;
        let js = journal.stats()?;
        let device_hex = alloc::format!("{device_id}");
        Ok(Self {
            sampler,
            lowest_unacked: js.next_seq - js.outbox_batches,
            next_seq: js.next_seq,
            journal,
            base_ms: record.window_start_ms,
            record,
            device_id,
            device_hex,
            firmware: heapless::String::try_from(FIRMWARE).unwrap_or_default(),
            channels,
            series,
            timers,
            deframer: Deframer::new(),
            start_ms: now_ms,
            outgoing: heapless::Deque::new(),
            hello_due_ms: Some(now_ms),
            hello_sent: false,
            heard_gateway: false,
            heartbeat_due_ms: now_ms + u64::from(timers.heartbeat_every_ms),
            stats: JournalNodeStats {
                dropped: record.dropped,
                ..JournalNodeStats::default()
            },
        })
    }

    /// The resume record in force.
    pub fn record(&self) -> ResumeRecord {
        self.record
    }

    /// Device time at uptime `now_ms`.
    pub fn device_ms(&self, now_ms: u64) -> u64 {
        self.base_ms + now_ms.saturating_sub(self.start_ms)
    }

    /// The link sequence the next report will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Reports journaled and not yet acknowledged.
    pub fn unacked(&self) -> u64 {
        self.next_seq - self.lowest_unacked
    }

    /// The sampler.
    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// The journal (read-only use: stats, inspection).
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Counters.
    pub fn stats(&self) -> JournalNodeStats {
        JournalNodeStats {
            sampler: self.sampler.stats(),
            ..self.stats
        }
    }

    /// Gives the database back (tests: a "power loss" drops the node and
    /// reopens the same storage).
    pub fn into_database(self) -> Database {
        self.journal.into_database()
    }

    /// Feeds one received byte; returns what a completed frame did.
    pub fn handle_rx(&mut self, now_ms: u64, byte: u8) -> Option<JournalEvent> {
        let event = match self.deframer.push(byte)? {
            Ok(payload) => match codec::from_slice::<Downlink>("Downlink", payload) {
                Ok(msg) => self.handle_downlink(now_ms, msg),
                Err(_) => {
                    self.stats.bad_frames += 1;
                    JournalEvent::BadFrame
                }
            },
            Err(_) => {
                self.stats.bad_frames += 1;
                JournalEvent::BadFrame
            }
        };
        Some(event)
    }

    /// Handles one downlink message.
    pub fn handle_downlink(&mut self, now_ms: u64, msg: Downlink) -> JournalEvent {
        if !self.heard_gateway {
            self.heard_gateway = true;
            if self.hello_sent {
                self.hello_due_ms = None;
            }
        }
        match msg {
            Downlink::Ack(ack) => self.handle_ack(now_ms, ack),
            Downlink::Config(config) => {
                if self.sampler.apply_config(config).is_err() {
                    self.stats.configs_rejected += 1;
                }
                JournalEvent::Config(config)
            }
            Downlink::HelloRequest(()) => {
                self.hello_due_ms = Some(now_ms);
                for o in self.outgoing.iter_mut() {
                    o.sent_ms = None;
                }
                JournalEvent::HelloRequested
            }
        }
    }

    fn handle_ack(&mut self, now_ms: u64, ack: LinkAck) -> JournalEvent {
        let up_to = u64::from(ack.up_to);
        if ack.boot != self.record.epoch || up_to >= self.next_seq {
            self.stats.stale_acks += 1;
            return JournalEvent::StaleAck(ack);
        }
        if up_to < self.lowest_unacked {
            return JournalEvent::Acked {
                up_to: ack.up_to,
                released: 0,
            };
        }
        // Deleted in commits of at most ACK_CHUNK batches: after a long
        // outage one ack can cover hundreds, and a commit's transient heap
        // grows with what it deletes.
        let mut released = 0u32;
        while self.lowest_unacked <= up_to {
            let last = up_to.min(self.lowest_unacked + ACK_CHUNK - 1);
            let work = Work {
                acks: (self.lowest_unacked..=last).map(|s| (s, true)).collect(),
                ..Work::default()
            };
            if self.journal.commit(work, self.device_ns(now_ms)).is_err() {
                // Nothing of this chunk was deleted; the gateway's next ack
                // tries again.
                self.stats.journal_errors += 1;
                break;
            }
            released += (last + 1 - self.lowest_unacked) as u32;
            self.lowest_unacked = last + 1;
        }
        self.stats.acked += released;
        while self
            .outgoing
            .front()
            .is_some_and(|o| u64::from(o.seq) < self.lowest_unacked)
        {
            self.outgoing.pop_front();
        }
        if released == 0 {
            return JournalEvent::StaleAck(ack);
        }
        JournalEvent::Acked {
            up_to: ack.up_to,
            released,
        }
    }

    /// Samples what is due and journals the windows of each boundary
    /// reached.
    pub fn poll(&mut self, now_ms: u64, sensors: &mut [&mut dyn Sensor]) {
        let device_now = self.device_ms(now_ms);
        while let Some(windows) = self.sampler.poll(device_now, sensors) {
            self.journal_windows(device_now, &windows);
        }
    }

    fn journal_windows(&mut self, device_now: u64, windows: &[WindowReport]) {
        let report = DeviceReport {
            device: self.device_hex.clone(),
            boot: self.record.epoch,
            seq: self.record.next_report,
            // Numbers below this one never come again (a window lost to a
            // full journal keeps its number): no gap can block the journal.
            floor: self.record.next_report - 1,
            offset_ns: 0,
            windows: windows
                .iter()
                .filter_map(|w| {
                    let series = self.series.get(usize::from(w.channel))?.clone();
                    Some((series, to_partial(w)))
                })
                .collect(),
        };
        let work = Work {
            reports: alloc::vec![report],
            ..Work::default()
        };
        let now_ns = ms_to_ns(device_now);
        match self.journal.commit(work, now_ns) {
            Ok(r) => {
                if r.sealed.is_empty() {
                    self.stats.rejournaled += 1;
                } else {
                    self.stats.journaled += 1;
                }
                if let Some(&last) = r.sealed.last() {
                    self.next_seq = last + 1;
                }
            }
            Err(_) => {
                // Full (backpressure) or failing storage: the window is lost,
                // and counted.
                self.stats.journal_errors += 1;
                self.record.dropped = self.record.dropped.saturating_add(1);
                self.stats.dropped = self.record.dropped;
            }
        }
        let config = self.sampler.config();
        self.record.next_report += 1;
        self.record.window_start_ms = self.sampler.window_start_ms();
        self.record.schedule_epoch_ms = self.sampler.epoch_ms();
        self.record.sample_period_ms = config.sample_period_ms;
        self.record.window_ms = config.window_ms;
        if write_record(self.journal.database(), &self.record).is_err() {
            // The record lags: after a power loss the window is sampled again
            // and the journal recognises its number.
            self.stats.journal_errors += 1;
        }
    }

    /// The next frame to send, written to `out` (at least
    /// [`crate::link::TX_BUFFER`] bytes). Order: hello, reports oldest
    /// first, heartbeat.
    pub fn poll_transmit(&mut self, now_ms: u64, out: &mut [u8]) -> Option<usize> {
        loop {
            let msg = self.next_message(now_ms)?;
            match frame(&msg, out) {
                Some(n) => return Some(n),
                None => self.stats.encode_errors += 1,
            }
        }
    }

    /// The next instant `poll` or `poll_transmit` has work, in uptime ms.
    pub fn next_due_ms(&self, now_ms: u64) -> u64 {
        let resend = u64::from(self.timers.resend_after_ms);
        let sample = self
            .sampler
            .next_due_ms()
            .saturating_sub(self.device_ms(now_ms))
            + now_ms;
        let fill = if self.outgoing.len() < IN_FLIGHT && self.unsent_in_journal() {
            now_ms
        } else {
            u64::MAX
        };
        self.outgoing
            .iter()
            .map(|o| o.sent_ms.map_or(0, |t| t + resend))
            .chain(self.hello_due_ms)
            .fold(self.heartbeat_due_ms.min(sample).min(fill), u64::min)
    }

    fn unsent_in_journal(&self) -> bool {
        let next_load = self
            .outgoing
            .back()
            .map_or(self.lowest_unacked, |o| u64::from(o.seq) + 1);
        next_load < self.next_seq
    }

    fn fill_outgoing(&mut self) {
        while !self.outgoing.is_full() && self.unsent_in_journal() {
            let batches = match self.journal.next_to_send(0, false) {
                Ok(b) => b,
                Err(_) => {
                    self.stats.journal_errors += 1;
                    return;
                }
            };
            let Some((seq, body)) = batches.into_iter().next() else {
                return;
            };
            match self.to_report(seq, &body) {
                Some(o) => {
                    // Not full (checked above).
                    let _ = self.outgoing.push_back(o);
                }
                None => {
                    // Cannot happen for batches this node sealed. Counted;
                    // the journal keeps the batch and hands it out again, so
                    // the link stalls visibly rather than send out of order.
                    self.stats.unsendable += 1;
                    self.journal.release(&[seq]);
                    return;
                }
            }
        }
    }

    fn to_report(&self, seq: u64, body: &[u8]) -> Option<Outgoing> {
        let batch: Batch = codec::from_slice("Batch", body).ok()?;
        let mut windows = heapless::Vec::new();
        for a in &batch.aggregates {
            let key = batch.series.get(a.series as usize)?;
            let channel = self.series.iter().position(|s| s == key)? as u8;
            let window = WindowReport {
                channel,
                start_ms: u64::try_from(a.start_ns / 1_000_000).ok()?,
                len_ms: u32::try_from(a.len_ns / 1_000_000).ok()?,
                count: u32::try_from(a.count).ok()?,
                // Widened from f32 when journaled: narrowing is exact.
                sum: a.sum as f32,
                min: a.min as f32,
                max: a.max as f32,
                first: a.first as f32,
                last: a.last as f32,
            };
            windows.push(window).ok()?;
        }
        Some(Outgoing {
            seq: u32::try_from(seq).ok()?,
            windows,
            sent_ms: None,
        })
    }

    fn next_message(&mut self, now_ms: u64) -> Option<Uplink> {
        if self.hello_due_ms.is_some_and(|t| t <= now_ms) {
            self.hello_sent = true;
            self.hello_due_ms =
                (!self.heard_gateway).then(|| now_ms + u64::from(self.timers.hello_every_ms));
            return Some(Uplink::Hello(DeviceHello {
                link_version: LINK_VERSION,
                device_id: self.device_id.clone(),
                boot: self.record.epoch,
                firmware: self.firmware.clone(),
                uptime_ms: self.device_ms(now_ms),
                channels: self.channels.clone(),
            }));
        }
        self.fill_outgoing();
        let resend = u64::from(self.timers.resend_after_ms);
        if let Some(o) = self
            .outgoing
            .iter_mut()
            .find(|o| o.sent_ms.is_none_or(|t| t + resend <= now_ms))
        {
            if o.sent_ms.is_some() {
                self.stats.resent += 1;
            }
            o.sent_ms = Some(now_ms);
            return Some(Uplink::Report(Report {
                seq: o.seq,
                windows: o.windows.clone(),
            }));
        }
        if self.heartbeat_due_ms <= now_ms {
            self.heartbeat_due_ms = now_ms + u64::from(self.timers.heartbeat_every_ms);
            return Some(Uplink::Heartbeat(self.heartbeat(now_ms)));
        }
        None
    }

    /// The heartbeat as it would be sent at `now_ms`: `queued` is what the
    /// journal holds unacknowledged (saturating), so the gateway's floor
    /// `next_seq − queued − 1` is the highest acknowledged sequence.
    pub fn heartbeat(&self, now_ms: u64) -> Heartbeat {
        Heartbeat {
            uptime_ms: self.device_ms(now_ms),
            dropped: self.record.dropped,
            queued: u16::try_from(self.unacked()).unwrap_or(u16::MAX),
            next_seq: u32::try_from(self.next_seq).unwrap_or(u32::MAX),
        }
    }

    fn device_ns(&self, now_ms: u64) -> i64 {
        ms_to_ns(self.device_ms(now_ms))
    }
}

/// The journal's name for a channel's windows on the device: `ch<id>`.
fn channel_series(id: u8) -> Option<SeriesKey> {
    let tags: [(&str, &str); 0] = [];
    SeriesKey::new(alloc::format!("ch{id}"), tags).ok()
}

fn short<const L: usize>(s: &str) -> Result<heapless::String<L>, StartError> {
    heapless::String::try_from(s).map_err(|_| StartError::Config(ConfigError::BadLayout))
}

fn to_partial(w: &WindowReport) -> Partial {
    let start_ns = ms_to_ns(w.start_ms);
    let len_ns = u64::from(w.len_ms) * 1_000_000;
    Partial {
        start_ns,
        len_ns,
        count: u64::from(w.count),
        sum: f64::from(w.sum),
        min: f64::from(w.min),
        max: f64::from(w.max),
        first_ts: start_ns,
        first: f64::from(w.first),
        last_ts: start_ns.saturating_add_unsigned(len_ns.saturating_sub(1)),
        last: f64::from(w.last),
        sketch: None,
    }
}

fn ms_to_ns(ms: u64) -> i64 {
    i64::try_from(ms)
        .unwrap_or(i64::MAX)
        .saturating_mul(1_000_000)
}
