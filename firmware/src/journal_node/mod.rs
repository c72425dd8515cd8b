//! A sensor node that journals, for parts that must not lose a window to a
//! power cut or a long gateway outage: each closed window boundary is
//! appended at once to a small **report log** in its own flash sectors
//! (`storage::ReportLog`, CRC'd records), streamed to the gateway from
//! there, and forgotten when the gateway acks it. Only reports still
//! unacknowledged when their log sector is needed again are **folded** into
//! the gateway agent's own redb [`Journal`] (`ferry-agent` without `std`),
//! many per transaction. Windows dropped because both are full are counted
//! in a flash **tally** (`storage::Tally`). Feature `journal`; needs an
//! allocator. The RAM-ring [`Node`](crate::node::Node) is the build for
//! parts without the flash or RAM for redb.
//!
//! ```text
//!  sampler ─▶ closed windows ─▶ ReportLog::append(report seq n)     (durable: one record)
//!  ReportLog / redb batches ─▶ up to IN_FLIGHT reports ─▶ frames ─▶ gateway
//!  Ack{epoch, up_to} ─▶ acked = up_to (RAM; written into the next record)
//!  log full ─▶ oldest sector: its unacked reports ─▶ node_folds row (txn A)
//!                                                ─▶ Journal::commit(reports) (txn B, one batch)
//!                                                ─▶ erase the sector
//! ```
//!
//! # Why (flash endurance)
//! A redb commit programs 13–18 KB of flash; a report record ~80 B. With
//! the gateway acking, the journal build writes only records, one per
//! window, spread over the log's sectors in turn: on the nRF52840's internal
//! flash (10 000 cycles) that is decades instead of months
//! (firmware/README.md, "Wear"; `examples/node_wear.rs` measures it).
//!
//! # Identity across power loss
//! - **Epoch**: the link's `boot` number, chosen when the journal is
//!   created and kept in the resume record (`node_resume`), so the
//!   gateway's `(device, boot, seq)` dedupe covers reports sent before and
//!   after a power loss.
//! - **Sequence**: a report's link `seq`, given when its record is appended
//!   (from 1 per epoch, +1 per report, never reused: after a power loss the
//!   next is one past the highest in the log and the journal).
//! - **Device time** (`start_ms`, the hello's `uptime_ms`) counts from the
//!   epoch and excludes time without power: each power-up starts where the
//!   last logged window ended (its power-up record says where), so windows
//!   before and after a power loss are contiguous.
//!
//! # Crash consistency
//! Power can go at any instant:
//! - during an append: the record is torn (its CRC fails), the window was
//!   not journaled (and not sent: a report is sent only once logged); after
//!   the mount the log continues in a fresh sector;
//! - during a fold: txn A (the batch's layout, `node_folds`) commits before
//!   txn B (the journal commit); lost between them, the reports are still in
//!   the log (a sector is erased only after txn B) and the next fold writes
//!   both again; lost after txn B, before the erase, the reports are in both
//!   (the journal's `devices` row says which are folded) and the next
//!   reclaim erases the sector;
//! - acks are kept in RAM and written into every later record (`acked`):
//!   after a power loss the gateway may get again what it acked since the
//!   last record; its own dedupe holds them.
//!
//! **Invariants:** every sequence below `next_seq` is acked, in the log
//! (`seq > folded`), or in a journal batch (`seq ≤ folded`, with its row in
//! `node_folds`); the journal's batches hold consecutive sequences (a fold
//! first deletes batches the gateway acked, in the same commit); every
//! window the sampler closed is journaled or counted in the drop tally,
//! which heartbeats carry to the collector.

use alloc::string::String;
use alloc::vec::Vec;

use embedded_storage::nor_flash::NorFlash;
pub use ferry_agent::journal::CommitError;
use ferry_agent::journal::{DeviceReport, FullPolicy, Journal, JournalConfig, Work};
use ferry_agent::window::Partial;
use ferry_proto::batch::Batch;
use ferry_proto::codec;
use ferry_proto::link::{
    Channel, DeviceHello, DeviceId, Downlink, Heartbeat, LINK_VERSION, LinkAck, LinkConfig,
    MAX_REPORT_WINDOWS, Report, ReportTime, TimeSync, Uplink, WindowReport,
};
use ferry_proto::serial::Deframer;
use ferry_proto::series::SeriesKey;
use redb::Database;

use crate::link::{LinkTimers, frame};
use crate::storage::{LogError, ReportLog, Tally};

mod clock;
mod record;
mod resume;

use crate::node::FIRMWARE;
use crate::sampler::{ConfigError, MAX_SENSORS, Sampler, SamplerStats};
use crate::sensor::Sensor;
use clock::Clock;
use record::{PowerUpRecord, Record, ReportRecord};
pub use resume::ResumeRecord;
use resume::{Fold, read_clocks, read_folds, read_resume};

/// Reports sent and not yet acknowledged, at most.
pub const IN_FLIGHT: usize = 4;

/// Journal settings of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalSettings {
    /// Most bytes of journal rows in redb (folded reports); past it, the
    /// report log keeps what it can hold, then windows are dropped and
    /// counted.
    pub budget_bytes: u64,
}

impl Default for JournalSettings {
    fn default() -> Self {
        // redb's heap use grows with the pages in use; 96 KiB of rows keeps
        // the emulated journal image's heap peak under its 80 KiB heap
        // (README "Sizes").
        Self {
            budget_bytes: 96 * 1024,
        }
    }
}

/// Where a journaling node keeps things: redb (on the translation layer,
/// or a host file), the report log and the drop tally (regions of NOR
/// flash, usually the same chip through [`crate::storage::SharedFlash`]).
pub struct NodeStorage<F> {
    /// The agent's journal lives here, and the node's own tables.
    pub db: Database,
    /// The report log.
    pub log: ReportLog<F>,
    /// Windows dropped because the log and the journal were full.
    pub drops: Tally<F>,
}

impl<F> core::fmt::Debug for NodeStorage<F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NodeStorage").finish_non_exhaustive()
    }
}

/// Why a journaling node could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// The journal or the node's tables could not be read or written.
    Journal(CommitError),
    /// The report log or the drop tally could not be read.
    Log(LogError),
    /// The resume record or a fold row does not decode.
    BadResumeRecord,
    /// The config or sensor layout was refused.
    Config(ConfigError),
}

impl core::fmt::Display for StartError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Journal(e) => write!(f, "{e}"),
            Self::Log(e) => write!(f, "{e}"),
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

impl From<LogError> for StartError {
    fn from(e: LogError) -> Self {
        Self::Log(e)
    }
}

/// What a downlink frame did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalEvent {
    /// Reports up to `up_to` are acknowledged (and leave the log and the
    /// journal).
    Acked {
        /// The ack's `up_to`.
        up_to: u32,
        /// Reports newly acknowledged.
        released: u32,
    },
    /// A config was scheduled (or refused: counted).
    Config(LinkConfig),
    /// The gateway asked for a hello: everything in flight goes again.
    HelloRequested,
    /// The gateway's clock: this power-up's clock zero is at
    /// `wall_at_zero_ms` (Unix ms).
    TimeSynced {
        /// Wall-clock time of uptime 0.
        wall_at_zero_ms: i64,
    },
    /// A time sync for another power-up, or echoing an uptime not yet
    /// reached: ignored.
    StaleTimeSync(TimeSync),
    /// An ack of another epoch or of sequences never sent: ignored.
    StaleAck(LinkAck),
    /// A corrupt or unknown frame.
    BadFrame,
}

/// Counters of a journaling node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JournalNodeStats {
    /// Sampler counters (since power-up).
    pub sampler: SamplerStats,
    /// Reports logged (since power-up).
    pub journaled: u32,
    /// Windows lost and counted because the log and the journal were full,
    /// since the epoch began (persistent: the drop tally).
    pub dropped: u32,
    /// Reports acknowledged (since power-up).
    pub acked: u32,
    /// Report transmissions after the first.
    pub resent: u32,
    /// Frames refused.
    pub bad_frames: u32,
    /// Acks ignored.
    pub stale_acks: u32,
    /// Log, tally or journal reads or writes that failed.
    pub journal_errors: u32,
    /// Folds into the journal (since power-up).
    pub folds: u32,
    /// Reports folded into the journal (since power-up).
    pub folded_reports: u32,
    /// Reports that could not be read back to be sent (never expected).
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
    time: ReportTime,
    sent_ms: Option<u64>,
}

/// What one log sector holds: its report sequences, the highest power-up
/// of its power-up records, and whether it holds clock records.
#[derive(Debug, Clone, Copy, Default)]
struct SectorIndex {
    reports: Option<(u32, u32)>,
    power_up: Option<u32>,
    clocks: bool,
}

/// A report read back: its power-up and windows.
type Stored = (u32, heapless::Vec<WindowReport, MAX_REPORT_WINDOWS>);

/// A sampler, the report log, the agent's journal and the device end of
/// the link.
pub struct JournalNode<F> {
    sampler: Sampler,
    journal: Journal,
    log: ReportLog<F>,
    drops: Tally<F>,
    record: ResumeRecord,
    power_up: u32,
    device_id: DeviceId,
    device_hex: String,
    firmware: heapless::String<24>,
    channels: heapless::Vec<Channel, { ferry_proto::link::MAX_CHANNELS }>,
    series: Vec<SeriesKey>,
    timers: LinkTimers,
    deframer: Deframer,
    /// Clocks of this power-up and of those with unacknowledged reports,
    /// by power-up.
    clocks: Vec<Clock>,
    next_seq: u32,
    /// Highest sequence the gateway acked (RAM; logged with each record).
    acked: u32,
    /// Highest sequence folded into the journal (its `devices` row).
    folded: u32,
    index: Vec<SectorIndex>,
    /// The journal's batches: their reports.
    folds: Vec<(u64, Fold)>,
    /// Reports of the journal batch read last (sequence, power-up, windows).
    batch_cache: Vec<(u32, Stored)>,
    outgoing: heapless::Deque<Outgoing, IN_FLIGHT>,
    hello_due_ms: Option<u64>,
    hello_sent: bool,
    heard_gateway: bool,
    heartbeat_due_ms: u64,
    /// The sampling the last power-up record names.
    logged_config: LinkConfig,
    /// The next report to send waits for this power-up's first sync.
    waiting_for_sync: bool,
    /// A log write failed part-way: nothing more is appended until restart.
    log_failed: bool,
    stats: JournalNodeStats,
}

impl<F> core::fmt::Debug for JournalNode<F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("JournalNode")
            .field("record", &self.record)
            .field("power_up", &self.power_up)
            .field("next_seq", &self.next_seq)
            .field("acked", &self.acked)
            .field("folded", &self.folded)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<F: NorFlash> JournalNode<F> {
    /// Opens the journal, reads the report log and starts the node at
    /// uptime `now_ms` (ms since this power-up began: the clock its windows
    /// and hellos count in). On new storage the epoch is `new_epoch` and
    /// sampling uses `config`; otherwise the storage decides (and
    /// `new_epoch` and `config` are not used).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        now_ms: u64,
        storage: NodeStorage<F>,
        settings: JournalSettings,
        device_id: DeviceId,
        new_epoch: u32,
        config: LinkConfig,
        timers: LinkTimers,
        sensors: &[&dyn Sensor],
        every: &[u32],
    ) -> Result<Self, StartError> {
        let NodeStorage { db, mut log, drops } = storage;
        let journal = Journal::open(
            db,
            JournalConfig {
                budget_bytes: settings.budget_bytes,
                policy: FullPolicy::Backpressure,
                // Every commit seals what it holds: a fold is one batch.
                batch_max_readings: 1,
                batch_linger_ns: 0,
                rules: Vec::new(),
                eager_seal: false,
            },
        )?;
        let stored = read_resume(journal.database())?;
        let folds_on_disk = read_folds(journal.database())?;
        // Clocks as of the last fold; the log's records are newer.
        let mut clocks: Vec<Clock> = read_clocks(journal.database())?;

        // The log, oldest record first.
        let mut index = alloc::vec![SectorIndex::default(); log.config().sectors as usize];
        let mut max_seq = 0u32;
        let mut acked_hint = 0u32;
        let mut latest_config: Option<LinkConfig> = None;
        let mut max_power_up = clocks.iter().map(|c| c.power_up).max().unwrap_or(0);
        for sector in log.sectors_oldest_first() {
            let entry = &mut index[sector as usize];
            log.for_each_record(sector, |_, bytes| match Record::decode(bytes) {
                Some(Record::Report(r)) => {
                    entry.reports = Some(match entry.reports {
                        Some((lo, hi)) => (lo.min(r.seq), hi.max(r.seq)),
                        None => (r.seq, r.seq),
                    });
                    max_seq = max_seq.max(r.seq);
                    acked_hint = acked_hint.max(r.acked);
                    max_power_up = max_power_up.max(r.power_up);
                    clock_mut(&mut clocks, r.power_up)
                        .saw_report(r.seq, r.start_ms + u64::from(r.len_ms));
                }
                Some(Record::PowerUp(p)) => {
                    entry.power_up = Some(entry.power_up.unwrap_or(0).max(p.power_up));
                    max_power_up = max_power_up.max(p.power_up);
                    latest_config = Some(LinkConfig {
                        sample_period_ms: p.period_ms,
                        window_ms: p.window_ms,
                    });
                }
                Some(Record::Clock(c)) => {
                    entry.clocks = true;
                    max_power_up = max_power_up.max(c.power_up);
                    clock_mut(&mut clocks, c.power_up).update_from(&c);
                }
                None => {}
            })?;
        }

        let mut record = match stored {
            Some(r) => r,
            None => {
                let r = ResumeRecord {
                    epoch: new_epoch,
                    power_ups: 0,
                    sample_period_ms: config.sample_period_ms,
                    window_ms: config.window_ms,
                };
                // The epoch is named once, for the journal's life.
                resume::write(journal.database(), &r, None, 0, &[], false)?;
                r
            }
        };
        let config = latest_config.unwrap_or(LinkConfig {
            sample_period_ms: record.sample_period_ms,
            window_ms: record.window_ms,
        });
        let power_up = record.power_ups.max(max_power_up) + 1;
        for entry in &mut index {
            // Power-up records the resume record already covers need no care.
            entry.power_up = entry.power_up.filter(|&p| p > record.power_ups);
        }
        record.power_ups = record.power_ups.max(max_power_up);

        let device_hex = alloc::format!("{device_id}");
        let folded = journal
            .devices()?
            .into_iter()
            .find(|(d, b, _)| *d == device_hex && *b == record.epoch)
            .map_or(0, |(_, _, seq)| seq);
        let js = journal.stats()?;
        let lowest_batch = js.next_seq - js.outbox_batches;
        let folds: Vec<(u64, Fold)> = folds_on_disk
            .into_iter()
            .filter(|(b, _)| *b >= lowest_batch && *b < js.next_seq)
            .collect();
        for (_, f) in &folds {
            for (k, &(_, p)) in f.reports.iter().enumerate() {
                clock_mut(&mut clocks, p).saw_report(f.first_seq + k as u32, 0);
            }
        }
        let next_seq = max_seq
            .max(folded)
            .max(folds.last().map_or(0, |(_, f)| f.last_seq()))
            + 1;
        // Reports below the journal's oldest batch were acked (their
        // batches are gone); with no batch, every folded one was.
        let acked_floor = folds
            .first()
            .map_or(folded, |(_, f)| f.first_seq.saturating_sub(1));
        let acked = acked_hint.max(acked_floor).min(next_seq - 1);

        // This power-up's clock: estimated from the latest power-up whose
        // zero is known, as if the power had come back at once.
        clocks.sort_unstable_by_key(|c| c.power_up);
        let mut now_clock = Clock::new(power_up);
        now_clock.estimate = clocks
            .iter()
            .rev()
            .find_map(|c| Some(c.zero()?.saturating_add(c.end_ms as i64)));
        clocks.push(now_clock);

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
        // The window grid starts at this power-up's zero; samples due
        // before `now_ms` are taken late, at their scheduled instants.
        let sampler = Sampler::new(0, config, &counts, every).map_err(StartError::Config)?;
        let mut node = Self {
            sampler,
            journal,
            log,
            drops,
            record,
            power_up,
            device_id,
            device_hex,
            firmware: heapless::String::try_from(FIRMWARE).unwrap_or_default(),
            channels,
            series,
            timers,
            deframer: Deframer::new(),
            clocks,
            next_seq,
            acked,
            folded,
            index,
            folds,
            batch_cache: Vec::new(),
            outgoing: heapless::Deque::new(),
            hello_due_ms: Some(now_ms),
            hello_sent: false,
            heard_gateway: false,
            heartbeat_due_ms: now_ms + u64::from(timers.heartbeat_every_ms),
            logged_config: config,
            waiting_for_sync: false,
            log_failed: false,
            stats: JournalNodeStats::default(),
        };
        node.stats.dropped = node.drops.total();
        node.prune_clocks();
        // This power-up, in the log: its number is never used again, and
        // its sampling and estimated clock are found after a power loss.
        match node.log_power_up() {
            Ok(()) => {}
            Err(LogError::Full) => {
                // A log full of unacknowledged reports (and a full
                // journal): the power-up is counted in the resume record.
                node.record.power_ups = power_up;
                let lowest = node.folds.first().map_or(u64::MAX, |(b, _)| *b);
                resume::write(
                    node.journal.database(),
                    &node.record,
                    None,
                    lowest,
                    &[],
                    false,
                )?;
            }
            Err(_) => node.stats.journal_errors += 1,
        }
        Ok(node)
    }

    /// Appends this power-up's record (number and sampling) and its clock.
    fn log_power_up(&mut self) -> Result<(), LogError> {
        let config = self.sampler.config();
        let rec = PowerUpRecord {
            power_up: self.power_up,
            period_ms: config.sample_period_ms,
            window_ms: config.window_ms,
        };
        let mut buf = [0u8; record::MAX_LEN];
        let n = rec.encode(&mut buf);
        self.append(&buf[..n], None, Some(self.power_up), false)?;
        self.logged_config = config;
        self.log_clock(self.power_up)
    }

    /// Appends the clock of `power_up` (what is known of it now).
    fn log_clock(&mut self, power_up: u32) -> Result<(), LogError> {
        let Some(c) = self.clocks.iter().find(|c| c.power_up == power_up) else {
            return Ok(());
        };
        let mut buf = [0u8; record::MAX_LEN];
        let n = record::encode_clock(c, &mut buf);
        self.append(&buf[..n], None, None, true)
    }

    /// Forgets clocks no unacknowledged report needs (keeping this
    /// power-up's and the latest one with a known zero, which the next
    /// power-up's estimate starts from).
    fn prune_clocks(&mut self) {
        let acked = self.acked;
        let current = self.power_up;
        let anchor = self
            .clocks
            .iter()
            .filter(|c| c.power_up != current && c.zero().is_some())
            .map(|c| c.power_up)
            .max();
        self.clocks
            .retain(|c| c.power_up == current || Some(c.power_up) == anchor || c.last_seq > acked);
    }

    /// The resume record as of this power-up (epoch, power-ups counted).
    pub fn record(&self) -> ResumeRecord {
        ResumeRecord {
            power_ups: self.power_up,
            sample_period_ms: self.sampler.config().sample_period_ms,
            window_ms: self.sampler.config().window_ms,
            ..self.record
        }
    }

    /// Wall-clock time (Unix ms) of this power-up's zero, once synced.
    pub fn wall_at_zero_ms(&self) -> Option<i64> {
        self.clocks
            .iter()
            .find(|c| c.power_up == self.power_up)
            .and_then(|c| c.syncs.last().map(|&(_, w)| w))
    }

    /// This power-up's number (1 for the first on a new journal).
    pub fn power_up(&self) -> u32 {
        self.power_up
    }

    /// The link sequence the next report will get.
    pub fn next_seq(&self) -> u64 {
        u64::from(self.next_seq)
    }

    /// Reports journaled and not yet acknowledged.
    pub fn unacked(&self) -> u64 {
        u64::from(self.next_seq - 1 - self.acked)
    }

    /// Highest sequence folded into the journal.
    pub fn folded(&self) -> u32 {
        self.folded
    }

    /// The sampler.
    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// The journal (read-only use: stats, inspection).
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The report log (read-only use: stats).
    pub fn log(&self) -> &ReportLog<F> {
        &self.log
    }

    /// Counters.
    pub fn stats(&self) -> JournalNodeStats {
        JournalNodeStats {
            sampler: self.sampler.stats(),
            ..self.stats
        }
    }

    /// Gives the storage back (tests: a "power loss" drops the node and
    /// mounts the same flash again).
    pub fn into_storage(self) -> NodeStorage<F> {
        NodeStorage {
            db: self.journal.into_database(),
            log: self.log,
            drops: self.drops,
        }
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
            Downlink::TimeSync(sync) => self.handle_time_sync(now_ms, sync),
        }
    }

    fn handle_time_sync(&mut self, now_ms: u64, sync: TimeSync) -> JournalEvent {
        let uptime = i64::try_from(sync.uptime_ms).ok();
        let Some(up) =
            uptime.filter(|_| sync.power_up == self.power_up && sync.uptime_ms <= now_ms)
        else {
            return JournalEvent::StaleTimeSync(sync);
        };
        let sample = sync.wall_ms.saturating_sub(up);
        let current = self.power_up;
        let next_seq = self.next_seq;
        let first = clock_mut(&mut self.clocks, current).syncs.is_empty();
        if clock_mut(&mut self.clocks, current).sync(next_seq, sample) {
            let zero = clock_mut(&mut self.clocks, current)
                .zero()
                .unwrap_or(sample);
            let mut changed = alloc::vec![current];
            if first {
                // Earlier power-ups nothing placed (a device that never met
                // a gateway): each ended where the next began.
                let mut next_zero = zero;
                for c in self
                    .clocks
                    .iter_mut()
                    .rev()
                    .filter(|c| c.power_up < current)
                {
                    match c.zero() {
                        Some(z) => next_zero = z,
                        None => {
                            let z = next_zero.saturating_sub(c.end_ms as i64);
                            c.estimate = Some(z);
                            next_zero = z;
                            changed.push(c.power_up);
                        }
                    }
                }
            }
            for p in changed {
                if self.log_clock(p).is_err() {
                    self.stats.journal_errors += 1;
                }
            }
        }
        self.waiting_for_sync = false;
        let zero = clock_mut(&mut self.clocks, current)
            .zero()
            .unwrap_or(sample);
        JournalEvent::TimeSynced {
            wall_at_zero_ms: zero,
        }
    }

    fn handle_ack(&mut self, now_ms: u64, ack: LinkAck) -> JournalEvent {
        if ack.boot != self.record.epoch || ack.up_to >= self.next_seq {
            self.stats.stale_acks += 1;
            return JournalEvent::StaleAck(ack);
        }
        let released = ack.up_to.saturating_sub(self.acked);
        self.acked = self.acked.max(ack.up_to);
        self.stats.acked += released;
        while self.outgoing.front().is_some_and(|o| o.seq <= self.acked) {
            self.outgoing.pop_front();
        }
        // Once the gateway has everything the journal holds, one commit
        // empties it.
        if self
            .folds
            .last()
            .is_some_and(|(_, f)| f.last_seq() <= self.acked)
        {
            let work = Work {
                acks: self.folds.iter().map(|(b, _)| (*b, true)).collect(),
                ..Work::default()
            };
            match self.journal.commit(work, ms_to_ns(now_ms)) {
                Ok(_) => {
                    self.folds.clear();
                    self.batch_cache.clear();
                }
                // Kept; the next fold or ack tries again.
                Err(_) => self.stats.journal_errors += 1,
            }
        }
        JournalEvent::Acked {
            up_to: ack.up_to,
            released,
        }
    }

    /// Samples what is due and logs the windows of each boundary reached.
    pub fn poll(&mut self, now_ms: u64, sensors: &mut [&mut dyn Sensor]) {
        while let Some(windows) = self.sampler.poll(now_ms, sensors) {
            if self.sampler.config() != self.logged_config {
                // A config took effect at this boundary: logged before the
                // first report under it, so a power-up after finds it.
                let config = self.sampler.config();
                let rec = PowerUpRecord {
                    power_up: self.power_up,
                    period_ms: config.sample_period_ms,
                    window_ms: config.window_ms,
                };
                let mut buf = [0u8; record::MAX_LEN];
                let n = rec.encode(&mut buf);
                if self
                    .append(&buf[..n], None, Some(self.power_up), false)
                    .is_ok()
                {
                    self.logged_config = config;
                }
            }
            self.journal_windows(&windows);
        }
    }

    fn journal_windows(&mut self, windows: &[WindowReport]) {
        let Some(first) = windows.first() else { return };
        let rec = ReportRecord {
            seq: self.next_seq,
            power_up: self.power_up,
            start_ms: first.start_ms,
            len_ms: first.len_ms,
            acked: self.acked,
            windows: windows.iter().copied().collect(),
        };
        let mut buf = [0u8; record::MAX_LEN];
        let n = rec.encode(&mut buf);
        match self.append(&buf[..n], Some(rec.seq), None, false) {
            Ok(()) => {
                let end = rec.start_ms + u64::from(rec.len_ms);
                clock_mut(&mut self.clocks, self.power_up).saw_report(rec.seq, end);
                self.next_seq += 1;
                self.stats.journaled += 1;
            }
            Err(e) => {
                if e != LogError::Full {
                    // The record may or may not be whole on the flash: no
                    // more appends (and no sequence given twice) until a
                    // restart reads the log again.
                    self.log_failed = true;
                }
                // The window is lost, and counted.
                match self.drops.add_one() {
                    Ok(total) => self.stats.dropped = total,
                    Err(_) => self.stats.journal_errors += 1,
                }
            }
        }
    }

    /// Appends a record, making room (folding the oldest sector) when the
    /// log is full; then keeps one sector free for the next.
    fn append(
        &mut self,
        bytes: &[u8],
        seq: Option<u32>,
        power_up: Option<u32>,
        clock: bool,
    ) -> Result<(), LogError> {
        if self.log_failed {
            return Err(LogError::Full);
        }
        let at = match self.log.append(bytes) {
            Err(LogError::Full) => {
                if !self.reclaim_oldest() {
                    return Err(LogError::Full);
                }
                self.log.append(bytes)
            }
            other => other,
        }
        .inspect_err(|e| {
            if *e != LogError::Full {
                self.stats.journal_errors += 1;
            }
        })?;
        let entry = &mut self.index[at.sector as usize];
        if let Some(seq) = seq {
            entry.reports = Some(entry.reports.map_or((seq, seq), |(lo, _)| (lo, seq)));
        }
        if let Some(p) = power_up {
            entry.power_up = Some(p);
        }
        entry.clocks |= clock;
        if self.log.free_sectors() == 0 {
            // Ahead of need, while the head still has room: a fold that
            // fails now costs nothing yet.
            let _ = self.reclaim_oldest();
        }
        Ok(())
    }

    /// Frees the oldest log sector: folds its unacknowledged reports into
    /// the journal (and notes its power-up in the resume record), then
    /// erases it. `false` if it cannot (the journal is full or failing, or
    /// the oldest sector is the head).
    fn reclaim_oldest(&mut self) -> bool {
        let order = self.log.sectors_oldest_first();
        let Some(&oldest) = order.first() else {
            return false;
        };
        if Some(oldest) == self.log.head() {
            return false;
        }
        let entry = self.index[oldest as usize];
        let done = self.acked.max(self.folded);
        if entry.reports.is_some_and(|(_, hi)| hi > done) {
            match self.fold_sector(oldest, done) {
                Ok(()) => {}
                // The journal is at its budget: the log keeps what it has.
                Err(CommitError::Full { .. }) => return false,
                Err(_) => {
                    self.stats.journal_errors += 1;
                    return false;
                }
            }
        }
        // What the sector says of this power-up (its number and sampling)
        // and of clocks still needed must outlive it: copied to the head
        // (there is room: a sector was just taken), or else into redb.
        self.prune_clocks();
        let mut carried = true;
        if entry.power_up == Some(self.power_up) && self.record.power_ups < self.power_up {
            let config = self.sampler.config();
            let rec = PowerUpRecord {
                power_up: self.power_up,
                period_ms: config.sample_period_ms,
                window_ms: config.window_ms,
            };
            let mut buf = [0u8; record::MAX_LEN];
            let n = rec.encode(&mut buf);
            carried &= self.carry(&buf[..n], Some(self.power_up), false);
        }
        if entry.clocks || !carried {
            let mut buf = [0u8; record::MAX_LEN];
            for k in 0..self.clocks.len() {
                let n = record::encode_clock(&self.clocks[k], &mut buf);
                carried &= self.carry(&buf[..n], None, true);
            }
        }
        if !carried {
            let record = ResumeRecord {
                power_ups: self.record.power_ups.max(self.power_up),
                ..self.record
            };
            let lowest = self.folds.first().map_or(u64::MAX, |(b, _)| *b);
            let clocks: Vec<&Clock> = self.clocks.iter().collect();
            if resume::write(
                self.journal.database(),
                &record,
                None,
                lowest,
                &clocks,
                true,
            )
            .is_err()
            {
                self.stats.journal_errors += 1;
                return false;
            }
            self.record = record;
        }
        if self.log.erase(oldest).is_err() {
            self.stats.journal_errors += 1;
            return false;
        }
        self.index[oldest as usize] = SectorIndex::default();
        true
    }

    /// Appends a record to the head sector without taking a new one;
    /// `false` if it does not fit or the write fails.
    fn carry(&mut self, bytes: &[u8], power_up: Option<u32>, clock: bool) -> bool {
        if !self.log.fits_in_head(bytes.len()) {
            return false;
        }
        match self.log.append(bytes) {
            Ok(at) => {
                let entry = &mut self.index[at.sector as usize];
                if power_up.is_some() {
                    entry.power_up = power_up;
                }
                entry.clocks |= clock;
                true
            }
            Err(_) => false,
        }
    }

    /// Folds the reports of `sector` above `done` into the journal: txn A
    /// (resume record, the batch's row), then txn B (the journal commit,
    /// which also deletes batches the gateway has acked).
    fn fold_sector(&mut self, sector: u32, done: u32) -> Result<(), CommitError> {
        // Refused before anything is written: a full journal costs no
        // flash per attempt.
        if let Some((used, budget)) = self.journal.refuses_data() {
            return Err(CommitError::Full { used, budget });
        }
        let mut reports: Vec<ReportRecord> = Vec::new();
        let mut power_up = 0u32;
        let read = self
            .log
            .for_each_record(sector, |_, bytes| match Record::decode(bytes) {
                Some(Record::Report(r)) if r.seq > done => reports.push(r),
                Some(Record::PowerUp(p)) => power_up = power_up.max(p.power_up),
                _ => {}
            });
        if read.is_err() {
            return Err(CommitError::Corrupt("report log unreadable".into()));
        }
        // Appended in sequence order: already sorted.
        let acked_batches: Vec<u64> = self
            .folds
            .iter()
            .filter(|(_, f)| f.last_seq() <= self.acked)
            .map(|(b, _)| *b)
            .collect();
        let next_batch = self.journal.stats()?.next_seq;
        let fold = (!reports.is_empty()).then(|| Fold {
            first_seq: reports[0].seq,
            reports: reports
                .iter()
                .map(|r| (r.windows.len() as u8, r.power_up))
                .collect(),
        });
        let config = self.sampler.config();
        let record = ResumeRecord {
            power_ups: self.record.power_ups.max(power_up),
            sample_period_ms: config.sample_period_ms,
            window_ms: config.window_ms,
            ..self.record
        };
        // The clocks of what is unacknowledged go with it: the log's clock
        // records may be gone before these reports are.
        self.prune_clocks();
        let clocks: Vec<&Clock> = self.clocks.iter().collect();
        let lowest_kept = self
            .folds
            .iter()
            .map(|(b, _)| *b)
            .find(|b| !acked_batches.contains(b))
            .unwrap_or(next_batch);
        resume::write(
            self.journal.database(),
            &record,
            fold.as_ref().map(|f| (next_batch, f)),
            lowest_kept,
            &clocks,
            true,
        )?;
        self.record = record;
        let Some(fold) = fold else {
            return Ok(());
        };
        let floor = fold.first_seq - 1;
        let work = Work {
            reports: reports
                .iter()
                .map(|r| DeviceReport {
                    device: self.device_hex.clone(),
                    boot: self.record.epoch,
                    seq: r.seq,
                    floor,
                    offset_ns: 0,
                    windows: r
                        .windows
                        .iter()
                        .filter_map(|w| {
                            let series = self.series.get(usize::from(w.channel))?.clone();
                            Some((series, to_partial(w)))
                        })
                        .collect(),
                })
                .collect(),
            acks: acked_batches.iter().map(|&b| (b, true)).collect(),
            ..Work::default()
        };
        let r = self.journal.commit(work, 0)?;
        if r.sealed.as_slice() != [next_batch] {
            return Err(CommitError::Corrupt(
                "a fold sealed another batch than its row names".into(),
            ));
        }
        self.folds.retain(|(b, _)| !acked_batches.contains(b));
        self.batch_cache.clear();
        self.journal.release_in_flight();
        self.folded = self.folded.max(fold.last_seq());
        self.stats.folds += 1;
        self.stats.folded_reports += fold.reports.len() as u32;
        self.folds.push((next_batch, fold));
        Ok(())
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
        let sample = self.sampler.next_due_ms();
        let fill = if self.outgoing.len() < IN_FLIGHT
            && self.next_to_load() < self.next_seq
            && !self.waiting_for_sync
        {
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

    fn next_to_load(&self) -> u32 {
        self.outgoing
            .back()
            .map_or(self.acked + 1, |o| o.seq + 1)
            .max(self.acked + 1)
    }

    fn fill_outgoing(&mut self) {
        while !self.outgoing.is_full() {
            let seq = self.next_to_load();
            if seq >= self.next_seq {
                return;
            }
            let stored = if seq <= self.folded {
                self.read_from_journal(seq)
            } else {
                self.read_from_log(seq)
            };
            let Some((power_up, windows)) = stored else {
                // Cannot happen for what this node wrote. Counted; the link
                // stalls visibly rather than send out of order.
                self.stats.unsendable += 1;
                return;
            };
            // Where its windows lie. This power-up's reports wait for its
            // first sync (the gateway answers the hello with one), and what
            // follows them waits too, in order; an ended power-up's
            // estimate is the best anyone will know.
            let current = power_up == self.power_up;
            let Some(time) = self
                .clocks
                .iter()
                .find(|c| c.power_up == power_up)
                .filter(|c| !current || !c.syncs.is_empty())
                .and_then(|c| c.time_of(seq))
            else {
                // Not due again until a sync comes (no busy loop).
                self.waiting_for_sync = true;
                return;
            };
            // Not full (checked above).
            let _ = self.outgoing.push_back(Outgoing {
                seq,
                windows,
                time,
                sent_ms: None,
            });
        }
    }

    fn read_from_log(&mut self, seq: u32) -> Option<Stored> {
        let sector = self
            .index
            .iter()
            .position(|e| e.reports.is_some_and(|(lo, hi)| lo <= seq && seq <= hi))?;
        let mut found = None;
        self.log
            .for_each_record(sector as u32, |_, bytes| {
                if let Some(Record::Report(r)) = Record::decode(bytes)
                    && r.seq == seq
                {
                    found = Some((r.power_up, r.windows));
                }
            })
            .ok()?;
        found
    }

    fn read_from_journal(&mut self, seq: u32) -> Option<Stored> {
        for attempt in 0..2 {
            if let Some((_, w)) = self.batch_cache.iter().find(|(s, _)| *s == seq) {
                return Some(w.clone());
            }
            // The journal hands batches out oldest first, each once, until
            // released: read on to the batch that holds `seq`.
            loop {
                let batches = self.journal.next_to_send(0, false).ok()?;
                let Some((batch, body)) = batches.into_iter().next() else {
                    break;
                };
                let fold = self.folds.iter().find(|(b, _)| *b == batch)?.1.clone();
                if fold.last_seq() < seq {
                    continue;
                }
                self.batch_cache = self.split_batch(&fold, &body)?;
                break;
            }
            if attempt == 0 && !self.batch_cache.iter().any(|(s, _)| *s == seq) {
                // Behind us (a resend after a hello request): from the start.
                self.journal.release_in_flight();
                self.batch_cache.clear();
            }
        }
        None
    }

    /// A folded batch back into its link reports.
    fn split_batch(&self, fold: &Fold, body: &[u8]) -> Option<Vec<(u32, Stored)>> {
        let batch: Batch = codec::from_slice("Batch", body).ok()?;
        let mut aggregates = batch.aggregates.iter();
        let mut out = Vec::with_capacity(fold.reports.len());
        for (k, &(n, power_up)) in fold.reports.iter().enumerate() {
            let mut windows = heapless::Vec::new();
            for _ in 0..n {
                let a = aggregates.next()?;
                let key = batch.series.get(a.series as usize)?;
                let channel = self.series.iter().position(|s| s == key)? as u8;
                windows
                    .push(WindowReport {
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
                    })
                    .ok()?;
            }
            out.push((fold.first_seq + k as u32, (power_up, windows)));
        }
        Some(out)
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
                uptime_ms: now_ms,
                channels: self.channels.clone(),
                power_up: self.power_up,
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
                time: o.time,
            }));
        }
        if self.heartbeat_due_ms <= now_ms {
            self.heartbeat_due_ms = now_ms + u64::from(self.timers.heartbeat_every_ms);
            return Some(Uplink::Heartbeat(self.heartbeat(now_ms)));
        }
        None
    }

    /// The heartbeat as it would be sent at `now_ms`: `queued` is what the
    /// node holds unacknowledged (saturating), so the gateway's floor
    /// `next_seq − queued − 1` is the highest acknowledged sequence.
    pub fn heartbeat(&self, now_ms: u64) -> Heartbeat {
        Heartbeat {
            uptime_ms: now_ms,
            dropped: self.drops.total(),
            queued: u16::try_from(self.unacked()).unwrap_or(u16::MAX),
            next_seq: self.next_seq,
            power_up: self.power_up,
        }
    }
}

/// The clock of `power_up` in `clocks`, added if missing.
fn clock_mut(clocks: &mut Vec<Clock>, power_up: u32) -> &mut Clock {
    let at = match clocks.iter().position(|c| c.power_up == power_up) {
        Some(at) => at,
        None => {
            clocks.push(Clock::new(power_up));
            clocks.len() - 1
        }
    };
    &mut clocks[at]
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

/// Where a journaling node's three stores lie on one NOR flash chip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlashLayout {
    /// redb's region, under the translation layer.
    pub journal: crate::storage::Config,
    /// The report log's region.
    pub log: crate::storage::LogConfig,
    /// The drop tally's region.
    pub drops: crate::storage::LogConfig,
    /// redb's page cache, bytes.
    pub cache_bytes: usize,
}

impl FlashLayout {
    /// 128 sectors of 4 KiB from `offset` (512 KiB: the nRF52840-DK's
    /// journal region, the upper half of its internal flash): redb in the
    /// first 48 (160 KiB for its file), the tally in the next 2, the report
    /// log in the last 78 (51 reports of two windows per sector: eleven
    /// hours at one per 10 s before the first fold). The log's share is
    /// what endurance needs at 10 000 erase cycles (firmware/README.md,
    /// "Wear").
    #[must_use]
    pub const fn internal_512k(offset: u32) -> Self {
        Self {
            journal: crate::storage::Config::new(offset, 48),
            drops: crate::storage::LogConfig {
                offset: offset + 48 * 4096,
                sectors: 2,
            },
            log: crate::storage::LogConfig {
                offset: offset + 50 * 4096,
                sectors: 78,
            },
            cache_bytes: 16 * 1024,
        }
    }

    /// 256 sectors of 4 KiB from `offset` (a 1 MiB SPI NOR chip): redb in
    /// the first 128 (512 KiB, 512-byte pages), the tally in 2, the report
    /// log in 126.
    #[must_use]
    pub const fn spi_nor_1m(offset: u32) -> Self {
        Self {
            journal: crate::storage::Config::new(offset, 128),
            drops: crate::storage::LogConfig {
                offset: offset + 128 * 4096,
                sectors: 2,
            },
            log: crate::storage::LogConfig {
                offset: offset + 130 * 4096,
                sectors: 126,
            },
            cache_bytes: 16 * 1024,
        }
    }
}

/// Why the stores on a flash could not be mounted.
#[derive(Debug)]
#[non_exhaustive]
pub enum MountError {
    /// The translation layer refused the region (corrupt metadata, another
    /// geometry, a flash error). A blank region is formatted, not refused.
    Ftl(crate::storage::Error),
    /// redb could not open or create its database.
    Database(redb::DatabaseError),
    /// The report log or the tally region is unusable.
    Log(LogError),
}

impl core::fmt::Display for MountError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Ftl(e) => write!(f, "journal region: {e}"),
            Self::Database(e) => write!(f, "journal database: {e}"),
            Self::Log(e) => write!(f, "report log: {e}"),
        }
    }
}

/// Mounts the three stores of `layout` on `flash`: the translation layer
/// (formatting a blank region) with redb on it, the report log and the
/// drop tally, each through its own [`SharedFlash`](crate::storage::SharedFlash)
/// handle of the chip.
///
/// # Errors
/// [`MountError`]; nothing is erased on an error.
pub fn mount_flash<F: NorFlash + Send + 'static>(
    flash: F,
    layout: &FlashLayout,
) -> Result<NodeStorage<crate::storage::SharedFlash<F>>, MountError> {
    let shared = crate::storage::SharedFlash::new(flash);
    let backend = crate::storage::NorBackend::mount_or_format(shared.clone(), layout.journal)
        .map_err(MountError::Ftl)?;
    let db = crate::storage::open_database(
        redb::Builder::new().set_cache_size(layout.cache_bytes),
        backend,
    )
    .map_err(MountError::Database)?;
    let log = ReportLog::mount(shared.clone(), layout.log).map_err(MountError::Log)?;
    let drops = Tally::mount(shared, layout.drops).map_err(MountError::Log)?;
    Ok(NodeStorage { db, log, drops })
}
