//! The journal: every reading the agent accepted, in redb, until the
//! collector has acknowledged it.
//!
//! One write transaction per group commit holds everything a commit changes,
//! so a crash at any instant leaves the journal at the end of some commit.
//! The same code runs in the gateway daemon (redb on a file) and in firmware
//! (redb on the device's flash through a [`redb::StorageBackend`]): it needs
//! `alloc`, not `std`, and takes time as a `now` parameter.
//!
//! # Tables
//! Every table is `&[u8] → &[u8]` ([`layout::Bytes`]: one instance of
//! redb's B-tree code, which matters on a microcontroller's flash); the
//! encodings of keys and values are in [`layout`]: ids big-endian, strings
//! escaped where another part follows, integer values little-endian.
//!
//! | table | key → value | holds |
//! |---|---|---|
//! | `pending` | row id (u64) → [`PendingRow`] | raw readings and closed windows not yet in a batch, one row per commit |
//! | `windows` | encoded [`SeriesKey`] → [`SeriesWindows`] | open windows of aggregated series |
//! | `outbox` | batch seq (u64) → `[codec][body]` | sealed batches waiting for an ack: the encoded [`Batch`](ferry_proto::batch::Batch), stored as it is sent (codec 1: zstd, with a [`Compressor`]; 0: plain) |
//! | `outbox_meta` | batch seq (u64) → [`OutboxMeta`] | size, readings per origin, age |
//! | `health` | (origin, kind u16, dropped batch seq u64 or 0) → count u64 | health increments not yet in a batch |
//! | `dropped` | (origin, kind u16) → count u64 | cumulative drops, for `status` |
//! | `devices` | device id → (boot u32, seq u32) | highest device report journaled |
//! | `device_drops` | device id → (boot u32, dropped u32) | the device's ring-drop total already counted |
//! | `device_offsets` | device id → (boot u32, offset ns i64) | device-time to wall-clock offset of the boot |
//! | `meta` | name → u64 | `next_seq`, `next_row`, `bytes`, `format`, `epoch` |
//! | `salvaged` | batch seq (u64) → wire seq (u64) | outbox batches salvaged from a quarantined journal: their body keeps that journal's epoch and seq ([`Journal::import_salvaged`]) |
//!
//! # Invariants
//! 1. **Nothing accepted is lost**: a reading passed to [`Journal::commit`]
//!    that returned `Ok` is, after that commit, in exactly one of: a pending
//!    row, an open window, an outbox batch; or it has been counted in
//!    `health`/`dropped` (dropped under `drop_oldest`, or late under a `drop`
//!    rule). Never both, never neither.
//! 2. **Sequences are never reused**: `next_seq` only grows and is written in
//!    the transaction that seals the batch.
//! 3. **Acked means gone**: a batch leaves the outbox only through
//!    [`Journal::commit`] with its ack (stored, duplicate: delivered; rejected:
//!    counted as dropped), or through `drop_oldest` (counted as dropped).
//! 4. **In-flight batches are never dropped**: `drop_oldest` skips batches
//!    handed out by [`Journal::next_to_send`] and not yet acked or released,
//!    so a batch is never both delivered and counted as dropped.
//! 5. **Bounded**: `bytes` (the sum of encoded row sizes in `pending`,
//!    `windows`, `outbox` and `outbox_meta`) stays at or below the budget
//!    after every commit, except by in-flight batches under `drop_oldest`;
//!    under `backpressure` a commit that would start above the budget is
//!    refused whole ([`CommitError::Full`]).
//! 6. **Each reading is written once on the fast path**: a commit that seals
//!    (the batch is full, the linger is up, the commit alone holds a quarter
//!    of a batch, or, with [`JournalConfig::eager_seal`], the shipper has
//!    nothing unsent and at most [`JournalConfig::eager_seal_unacked`]
//!    batches await their ack) puts its readings straight into the sealed batch; only
//!    a commit that does not seal writes a `pending` row.
//! 7. **Device reports are journaled once**: a report `(device, boot, seq)`
//!    is accepted only if it is the next after the one recorded in
//!    `devices`, and the record moves in the same transaction.
//! 8. **One identity**: the journal's `epoch` (a random nonzero u64) is
//!    chosen in the transaction that creates the journal and never changes;
//!    every sealed batch carries it, so `(epoch, seq)` names a batch for good
//!    (a replaced journal has another epoch: docs/protocol.md, "Journal
//!    identity").
//! 9. **Every drop names its batch**: a batch removed as dropped leaves at
//!    least one health record tagged with its seq (a zero count when it held
//!    no readings), so the collector resolves that sequence
//!    (docs/storage.md, "Dedupe").
//!
//! # Layout
//! `config` and `work` are the types a caller fills in; `commit` is one
//! group commit, phase by phase; `seal` the batch being filled and sealing
//! it; `outbox` handing batches out and removing them; `budget` invariant 5;
//! `dictionary` a batch's series index; `stats` what operators read;
//! `layout` and `rows` the encodings.

mod budget;
mod commit;
mod config;
mod dictionary;
mod error;
mod footprint;
pub mod layout;
mod outbox;
mod rows;
mod salvage;
mod seal;
mod stats;
mod work;

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::ToString;
use alloc::vec::Vec;

use ferry_proto::codec;
use ferry_proto::health;
use ferry_proto::series::SeriesKey;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};

pub use rows::{OriginCount, OutboxMeta, PendingRow};

use layout::Bytes;

use crate::window::{Aggregator, LatePolicy, SeriesWindows, WindowRule};

use self::commit::*;
pub use self::config::{AggregateRule, FullPolicy, JournalConfig, glob_match};
use self::dictionary::*;
pub use self::error::{CommitError, DecompressError};
pub use self::salvage::{Ledger, SALVAGE_ORIGIN, SalvagedBatch};
use self::seal::*;
use self::stats::*;
pub use self::stats::{JournalStats, inspect_in, stats_in};
pub use self::work::{CommitReport, DeviceReport, Mark, SeriesReadings, Work};

const PENDING: Bytes = Bytes::new("pending");
const WINDOWS: Bytes = Bytes::new("windows");
const OUTBOX: Bytes = Bytes::new("outbox");
const OUTBOX_META: Bytes = Bytes::new("outbox_meta");
const HEALTH: Bytes = Bytes::new("health");
const DROPPED: Bytes = Bytes::new("dropped");
const DEVICES: Bytes = Bytes::new("devices");
const DEVICE_DROPS: Bytes = Bytes::new("device_drops");
const DEVICE_OFFSETS: Bytes = Bytes::new("device_offsets");
const META: Bytes = Bytes::new("meta");
const SOURCE_MARKS: Bytes = Bytes::new("source_marks");
const SALVAGED: Bytes = Bytes::new("salvaged");

/// The journal's on-disk format, kept in `meta` as `format`. A journal of
/// another format is refused with [`CommitError::Format`] (the agent moves
/// such a file aside and starts a fresh one, loudly).
pub const FORMAT: u64 = 2;

/// Health kind for batches the collector rejected permanently.
pub const DROPPED_REJECTED: u16 = health::DROPPED_REJECTED;

/// Compresses sealed batches as they are stored, so the journal writes each
/// reading once and compactly, and the shipper sends the stored bytes as
/// they are. The gateway plugs in zstd; firmware stores batches plain.
pub trait Compressor: Send {
    /// The codec id (`ferry_proto::stream::compression`) of what
    /// [`Compressor::compress`] returns; never 0 (plain).
    fn codec(&self) -> u8;
    /// `raw` compressed, or `None` to store it plain (not smaller, or the
    /// compressor failed).
    fn compress(&self, raw: &[u8]) -> Option<Vec<u8>>;
    /// `stored` (of [`Compressor::codec`]) decompressed, at most `max` bytes.
    fn decompress(&self, stored: &[u8], max: usize) -> Result<Vec<u8>, DecompressError>;
}

/// Largest encoded batch the journal decompresses (a stored batch is at most
/// this when plain; see `ferry_proto::stream::DEFAULT_MAX_FRAME`).
const MAX_BATCH_BYTES: usize = 64 << 20;

/// A sealed batch as stored in the outbox and sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBatch {
    /// Batch sequence (the outbox key: what acks are applied to).
    pub seq: u64,
    /// The sequence the body carries, which the collector's ack names:
    /// `seq`, but for a batch salvaged from a quarantined journal, which
    /// keeps that journal's epoch and sequence.
    pub wire_seq: u64,
    /// Codec of `body` (0: plain encoded [`Batch`](ferry_proto::batch::Batch)).
    pub codec: u8,
    /// The body.
    pub body: Vec<u8>,
}

/// What memory keeps of an outbox batch.
#[derive(Debug, Clone, Copy)]
struct Sealed {
    readings: u64,
    created_ns: i64,
}

/// An outbox row's encoded batch, decompressed by `compressor` if stored
/// compressed.
fn plain_with(
    compressor: Option<&dyn Compressor>,
    seq: u64,
    row: &[u8],
) -> Result<Vec<u8>, CommitError> {
    match row.split_first() {
        Some((0, body)) => Ok(body.to_vec()),
        Some((&codec, body)) => match compressor {
            Some(c) if c.codec() == codec => c
                .decompress(body, MAX_BATCH_BYTES)
                .map_err(|e| CommitError::Corrupt(alloc::format!("batch {seq}: {e}"))),
            _ => Err(CommitError::Corrupt(alloc::format!(
                "batch {seq} is stored with codec {codec}, and the journal has no decompressor for it"
            ))),
        },
        None => Err(CommitError::Corrupt(alloc::format!(
            "batch {seq}: empty row"
        ))),
    }
}

/// The journal. See the module docs for its tables and invariants.
pub struct Journal {
    db: Database,
    config: JournalConfig,
    /// The journal's identity (invariant 8).
    epoch: u64,
    aggregator: Aggregator,
    pending: Pending,
    in_flight: BTreeSet<u64>,
    next_seq: u64,
    next_row: u64,
    bytes: u64,
    /// Health increments not yet sealed, mirrored from the `health` table.
    health_pending: bool,
    /// The outbox's batches, mirrored from `outbox_meta`.
    outbox: BTreeMap<u64, Sealed>,
    /// Readings in those batches.
    outbox_readings: u64,
    /// Compresses sealed batches; none: stored plain.
    compressor: Option<alloc::boxed::Box<dyn Compressor>>,
    /// Outbox batches salvaged from a quarantined journal: outbox seq →
    /// the seq their body carries (mirrors `salvaged`).
    salvaged: BTreeMap<u64, u64>,
    /// Health counts the journal holds and has not delivered (in `health`
    /// and in the outbox's batches), per kind: the [`Ledger`]'s `health`.
    held_health: BTreeMap<u16, u64>,
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, CommitError> {
    codec::encode_alloc(value).map_err(|e| CommitError::Corrupt(e.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, CommitError> {
    codec::from_slice(what, bytes).map_err(|e| CommitError::Corrupt(e.to_string()))
}

/// A random nonzero journal epoch from the operating system's generator.
/// Without `std` there is no generator the journal can reach: 1, and
/// firmware that needs distinct identities passes its own to
/// [`Journal::open_with_epoch`].
pub fn fresh_epoch() -> u64 {
    #[cfg(feature = "std")]
    {
        use ring::rand::SecureRandom as _;
        let rng = ring::rand::SystemRandom::new();
        loop {
            let mut bytes = [0u8; 8];
            if rng.fill(&mut bytes).is_err() {
                break;
            }
            let epoch = u64::from_le_bytes(bytes);
            if epoch != 0 {
                return epoch;
            }
        }
        // No OS randomness: the clock's nanoseconds, still nonzero.
        ferry_clock::now_ns().unsigned_abs().max(1)
    }
    #[cfg(not(feature = "std"))]
    {
        1
    }
}

impl Journal {
    /// Opens (or creates) the journal in `db` and rebuilds its in-memory
    /// state: the batch being filled and the open windows. A journal
    /// created now gets a [`fresh_epoch`].
    pub fn open(db: Database, config: JournalConfig) -> Result<Self, CommitError> {
        Self::open_with_epoch(db, config, fresh_epoch())
    }

    /// [`Journal::open`], with the epoch a journal created now (or one
    /// without an epoch yet) takes: `new_epoch`, nonzero.
    pub fn open_with_epoch(
        db: Database,
        config: JournalConfig,
        new_epoch: u64,
    ) -> Result<Self, CommitError> {
        let txn = db.begin_write()?;
        {
            // Create every table so readers never meet a missing one.
            txn.open_table(PENDING)?;
            txn.open_table(WINDOWS)?;
            txn.open_table(OUTBOX)?;
            txn.open_table(OUTBOX_META)?;
            txn.open_table(HEALTH)?;
            txn.open_table(DROPPED)?;
            txn.open_table(DEVICES)?;
            txn.open_table(DEVICE_DROPS)?;
            txn.open_table(DEVICE_OFFSETS)?;
            txn.open_table(SOURCE_MARKS)?;
            txn.open_table(SALVAGED)?;
            let mut meta = txn.open_table(META)?;
            let found = match meta.get(b"format".as_slice())? {
                Some(v) => Some(
                    layout::u64_of(v.value())
                        .ok_or_else(|| CommitError::Corrupt("meta format is not a u64".into()))?,
                ),
                None => None,
            };
            match found {
                Some(FORMAT) => {}
                Some(found) => return Err(CommitError::Format { found }),
                None => {
                    meta.insert(b"format".as_slice(), layout::u64_value(FORMAT).as_slice())?;
                }
            }
            if meta.get(b"epoch".as_slice())?.is_none() {
                meta.insert(
                    b"epoch".as_slice(),
                    layout::u64_value(new_epoch.max(1)).as_slice(),
                )?;
            }
        }
        txn.commit()?;
        let mut journal = Self {
            db,
            config,
            epoch: 0,
            aggregator: Aggregator::new(),
            pending: Pending::default(),
            in_flight: BTreeSet::new(),
            next_seq: 1,
            next_row: 1,
            bytes: 0,
            health_pending: false,
            outbox: BTreeMap::new(),
            outbox_readings: 0,
            compressor: None,
            salvaged: BTreeMap::new(),
            held_health: BTreeMap::new(),
        };
        journal.reload()?;
        Ok(journal)
    }

    /// Stores batches sealed from now on compressed by `compressor` (and
    /// reads back batches it compressed before).
    pub fn set_compressor(&mut self, compressor: alloc::boxed::Box<dyn Compressor>) {
        self.compressor = Some(compressor);
    }

    /// An outbox row's encoded batch.
    fn plain(&self, seq: u64, row: &[u8]) -> Result<Vec<u8>, CommitError> {
        plain_with(self.compressor.as_deref(), seq, row)
    }

    /// Rebuilds the in-memory state (batch being filled, open windows,
    /// counters) from the tables.
    fn reload(&mut self) -> Result<(), CommitError> {
        let journal = self;
        journal.aggregator = Aggregator::new();
        journal.pending = Pending::default();
        let txn = journal.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let get = |name: &str| -> Result<Option<u64>, CommitError> {
            match meta.get(name.as_bytes())? {
                Some(v) => layout::u64_of(v.value()).map(Some).ok_or_else(|| {
                    CommitError::Corrupt(alloc::format!("meta {name} is not a u64"))
                }),
                None => Ok(None),
            }
        };
        journal.epoch = get("epoch")?.unwrap_or(0);
        journal.next_seq = get("next_seq")?.unwrap_or(1);
        journal.next_row = get("next_row")?.unwrap_or(1);
        journal.bytes = get("bytes")?.unwrap_or(0);
        for entry in txn.open_table(PENDING)?.iter()? {
            let (id, row) = entry?;
            let row: PendingRow = decode("PendingRow", row.value())?;
            journal.pending.add_row(row)?;
            journal
                .pending
                .rows
                .push(layout::id_of("pending", id.value())?);
        }
        for entry in txn.open_table(WINDOWS)?.iter()? {
            let (key, state) = entry?;
            let key: SeriesKey = decode("SeriesKey", key.value())?;
            let state: SeriesWindows = decode("SeriesWindows", state.value())?;
            // Windows of series no rule matches any more close at the next
            // commit (a zero-length lateness under the old period).
            let rule = journal.rule_for(&key).unwrap_or(WindowRule {
                period_ns: state.open.first().map_or(1, |p| p.len_ns),
                lateness_ns: 0,
                sketch: false,
                late: LatePolicy::Raw,
            });
            journal.aggregator.restore(key, rule, state);
        }
        journal.health_pending = txn.open_table(HEALTH)?.len()? > 0;
        journal.held_health.clear();
        for entry in txn.open_table(HEALTH)?.iter()? {
            let (k, v) = entry?;
            let (_, kind, _) = layout::count_key_of("health", k.value())?;
            *journal.held_health.entry(kind).or_default() += count_of("health", v.value())?;
        }
        journal.outbox.clear();
        journal.outbox_readings = 0;
        journal.salvaged.clear();
        for entry in txn.open_table(SALVAGED)?.iter()? {
            let (seq, wire) = entry?;
            let wire = layout::u64_of(wire.value())
                .ok_or_else(|| CommitError::Corrupt("a salvaged value is not a u64".into()))?;
            journal
                .salvaged
                .insert(layout::id_of("salvaged", seq.value())?, wire);
        }
        for entry in txn.open_table(OUTBOX_META)?.iter()? {
            let (seq, meta) = entry?;
            let meta: OutboxMeta = decode("OutboxMeta", meta.value())?;
            journal.outbox_readings += meta.readings;
            for h in &meta.health {
                *journal.held_health.entry(h.kind).or_default() += h.count;
            }
            journal.outbox.insert(
                layout::id_of("outbox_meta", seq.value())?,
                Sealed {
                    readings: meta.readings,
                    created_ns: meta.created_ns,
                },
            );
        }
        Ok(())
    }

    /// The journal's identity: a random nonzero number chosen when it was
    /// created, carried by every batch it seals (invariant 8).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The configuration in force.
    pub fn config(&self) -> &JournalConfig {
        &self.config
    }

    /// True when a reading of `key` would start aggregation state for a
    /// series that has none: a window rule matches it and it has no open
    /// window.
    pub fn is_new_window_series(&self, key: &SeriesKey) -> bool {
        self.rule_for(key).is_some() && self.aggregator.state(key).is_none()
    }

    /// Series with open windows (state held in memory).
    pub fn window_series(&self) -> usize {
        self.aggregator.series_count()
    }

    fn rule_for(&self, key: &SeriesKey) -> Option<WindowRule> {
        self.config
            .rules
            .iter()
            .find(|r| glob_match(&r.metric, &key.metric))
            .map(|r| r.window)
    }

    /// The earliest time (ns, the clock passed to [`Journal::commit`]) at
    /// which a commit with no work would change something: the batch being
    /// filled reaches its linger, or a window closes. None when nothing waits
    /// on time, so the writer can sleep until input comes.
    pub fn next_due(&self) -> Option<i64> {
        let lingering = (self.pending.count > 0 || self.health_pending).then(|| {
            // Content whose linger has not started yet starts it at the next
            // commit: due now.
            self.pending
                .since_ns
                .map_or(i64::MIN, |s| s.saturating_add(self.config.batch_linger_ns))
        });
        lingering
            .into_iter()
            .chain(self.aggregator.next_due())
            .min()
    }

    /// Applies `work` in one durable write transaction, closes due windows,
    /// seals a batch when one is full or old enough, and enforces the
    /// budget. Writes nothing (no fsync) when nothing changed.
    pub fn commit(&mut self, work: Work, now: i64) -> Result<CommitReport, CommitError> {
        if let Some((used, budget)) = self.refuses_data()
            && (!work.readings.is_empty() || !work.reports.is_empty())
        {
            return Err(CommitError::Full { used, budget });
        }
        // On failure the transaction was dropped (aborted): rebuild memory
        // from disk so both agree again. In-flight marks survive.
        let result = self.commit_inner(work, now);
        if result.is_err() {
            self.reload()?;
        }
        result
    }

    /// The database, for an embedder that keeps its own tables beside the
    /// journal's in the same file (the firmware's resume record). Its write
    /// transactions are separate from the journal's commits.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Gives the database back (tests, shutdown).
    pub fn into_database(self) -> Database {
        self.db
    }
}
