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
use ferry_agent::journal::Journal;
use ferry_agent::window::Partial;
use ferry_proto::link::{
    Channel, DeviceId, LinkAck, LinkConfig, MAX_REPORT_WINDOWS, ReportTime, TimeSync, WindowReport,
};
use ferry_proto::serial::Deframer;
use ferry_proto::series::SeriesKey;
use redb::Database;

use crate::link::LinkTimers;
use crate::storage::{LogError, ReportLog, Tally};

mod clock;
mod downlink;
mod flash;
mod fold;
mod record;
mod resume;
mod start;
mod uplink;

pub use flash::{FlashLayout, MountError, mount_flash};

use crate::sampler::{ConfigError, Sampler, SamplerStats};
use clock::Clock;
use resume::Fold;
pub use resume::ResumeRecord;

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
