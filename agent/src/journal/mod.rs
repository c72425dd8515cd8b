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
//! | `outbox` | batch seq (u64) → `[codec][body]` | sealed batches waiting for an ack: the encoded [`Batch`], stored as it is sent (codec 1: zstd, with a [`Compressor`]; 0: plain) |
//! | `outbox_meta` | batch seq (u64) → [`OutboxMeta`] | size, readings per origin, age |
//! | `health` | (origin, kind u16, dropped batch seq u64 or 0) → count u64 | health increments not yet in a batch |
//! | `dropped` | (origin, kind u16) → count u64 | cumulative drops, for `status` |
//! | `devices` | device id → (boot u32, seq u32) | highest device report journaled |
//! | `device_drops` | device id → (boot u32, dropped u32) | the device's ring-drop total already counted |
//! | `device_offsets` | device id → (boot u32, offset ns i64) | device-time to wall-clock offset of the boot |
//! | `meta` | name → u64 | `next_seq`, `next_row`, `bytes`, `format`, `epoch` |
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
//!    nothing unsent) puts its readings straight into the sealed batch; only
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

pub mod layout;
mod rows;

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use ferry_proto::batch::{Batch, HealthRecord, Reading, ReadingBlock};
use ferry_proto::codec;
use ferry_proto::health;
use ferry_proto::series::SeriesKey;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};

pub use rows::{OriginCount, OutboxMeta, PendingRow};

use layout::{Bytes, Table};

use crate::window::{Added, Aggregator, LatePolicy, Partial, SeriesWindows, WindowRule};

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

/// The journal's on-disk format, kept in `meta` as `format`. A journal of
/// another format is refused with [`CommitError::Format`] (the agent moves
/// such a file aside and starts a fresh one, loudly).
pub const FORMAT: u64 = 2;

/// Health kind for batches the collector rejected permanently.
pub const DROPPED_REJECTED: u16 = health::DROPPED_REJECTED;

/// What the journal does when its disk budget is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FullPolicy {
    /// Drop the oldest batches not in flight, counting their readings per
    /// origin (the default: fresh data matters most after a long outage).
    #[default]
    DropOldest,
    /// Refuse new readings until shipping frees space; sources slow down.
    Backpressure,
}

/// A window rule and the metrics it applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateRule {
    /// Metric name pattern: `*` matches any run of characters.
    pub metric: String,
    /// The window.
    pub window: WindowRule,
}

/// Journal settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    /// Most bytes of rows kept (see invariant 5).
    pub budget_bytes: u64,
    /// Behaviour at the budget.
    pub policy: FullPolicy,
    /// Seal a batch once this many readings and aggregates are pending.
    pub batch_max_readings: usize,
    /// Seal a batch once its oldest content is this old, ns.
    pub batch_linger_ns: i64,
    /// Window rules, first match wins; unmatched series pass raw.
    pub rules: Vec<AggregateRule>,
    /// Seal at every commit while every sealed batch is already in flight
    /// (the shipper keeps up): latency is then one journal commit, not the
    /// linger. Batches grow again as soon as the shipper falls behind.
    pub eager_seal: bool,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            budget_bytes: 1 << 30,
            policy: FullPolicy::DropOldest,
            batch_max_readings: 16_384,
            batch_linger_ns: 10_000_000,
            rules: Vec::new(),
            eager_seal: false,
        }
    }
}

/// Readings of one series from one origin.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesReadings {
    /// The series.
    pub series: SeriesKey,
    /// Device id or source name, for loss accounting.
    pub origin: String,
    /// The readings.
    pub readings: Vec<Reading>,
}

/// A device report: windows computed on a device, journaled at most once.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceReport {
    /// Device id (hex).
    pub device: String,
    /// Boot number from the device's hello.
    pub boot: u32,
    /// Report sequence.
    pub seq: u32,
    /// Reports of this boot at or below `floor` will never come (the device
    /// dropped them and counts them itself): from its latest heartbeat,
    /// `next_seq − queued − 1`; 0 when unknown.
    pub floor: u32,
    /// Wall-clock minus device time (ns) used for `windows`. The first one
    /// journaled for a boot is kept (see [`Journal::device_offsets`]) so a
    /// restarted agent maps the rest of the boot identically.
    pub offset_ns: i64,
    /// Closed windows, already in wall-clock time.
    pub windows: Vec<(SeriesKey, Partial)>,
}

/// Everything one group commit applies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Work {
    /// Readings from sources.
    pub readings: Vec<SeriesReadings>,
    /// Device reports.
    pub reports: Vec<DeviceReport>,
    /// Health increments `(origin, kind, count)`.
    pub health: Vec<(String, u16, u64)>,
    /// Devices' own drop totals `(device, boot, dropped since boot)` from
    /// their heartbeats. The journal counts only the increase over the total
    /// it has recorded for that boot, so a total sent twice (an agent
    /// restart, a resent heartbeat) is counted once.
    pub device_dropped: Vec<(String, u32, u32)>,
    /// Collector answers `(seq, delivered)`: `true` for stored/duplicate,
    /// `false` for a permanent rejection.
    pub acks: Vec<(u64, bool)>,
}

impl Work {
    /// True when the commit would change nothing but time-driven state.
    pub fn is_empty(&self) -> bool {
        self.readings.is_empty()
            && self.reports.is_empty()
            && self.health.is_empty()
            && self.acks.is_empty()
            && self.device_dropped.is_empty()
    }

    /// Readings carried (raw readings plus samples in device windows).
    pub fn reading_count(&self) -> u64 {
        let raw: usize = self.readings.iter().map(|s| s.readings.len()).sum();
        let windows: u64 = self
            .reports
            .iter()
            .flat_map(|r| &r.windows)
            .map(|(_, p)| p.count)
            .sum();
        raw as u64 + windows
    }
}

/// What a commit did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitReport {
    /// Readings accepted (raw and into windows).
    pub accepted: u64,
    /// Readings dropped as late.
    pub late_dropped: u64,
    /// For each report in [`Work::reports`]: true if journaled now or before
    /// (ack it), false if out of order (do not ack).
    pub reports: Vec<bool>,
    /// Batches sealed.
    pub sealed: Vec<u64>,
    /// Batches dropped to stay within the budget.
    pub dropped_batches: u64,
    /// Readings in those batches.
    pub dropped_readings: u64,
    /// Whether a write transaction was committed.
    pub wrote: bool,
    /// Readings (and window counts) in the batches this commit deleted as
    /// delivered (acked stored or duplicate).
    pub delivered_readings: u64,
}

/// Why a commit failed. Nothing of the commit was applied.
#[derive(Debug)]
#[non_exhaustive]
pub enum CommitError {
    /// Under `backpressure`, the journal is at its budget.
    Full {
        /// Bytes used.
        used: u64,
        /// The budget.
        budget: u64,
    },
    /// Storage failed.
    Storage(redb::Error),
    /// A row could not be encoded or decoded.
    Corrupt(String),
    /// The file is a journal of another on-disk format.
    Format {
        /// The format the file says it holds.
        found: u64,
    },
}

impl fmt::Display for CommitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full { used, budget } => {
                write!(
                    f,
                    "journal full: {used} bytes used of a {budget}-byte budget"
                )
            }
            Self::Storage(e) => write!(f, "journal storage: {e}"),
            Self::Corrupt(e) => write!(f, "journal corrupt: {e}"),
            Self::Format { found } => write!(
                f,
                "journal format {found}: this build reads format {FORMAT} only"
            ),
        }
    }
}

impl core::error::Error for CommitError {}

impl<E: Into<redb::Error>> From<E> for CommitError {
    fn from(e: E) -> Self {
        Self::Storage(e.into())
    }
}

/// Counters for `status` and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Bytes of rows (invariant 5).
    pub bytes: u64,
    /// Disk budget.
    pub budget_bytes: u64,
    /// Readings in the batch being filled.
    pub pending_readings: u64,
    /// Readings counted in open windows.
    pub window_readings: u64,
    /// Open windows.
    pub open_windows: u64,
    /// Sealed batches waiting for an ack.
    pub outbox_batches: u64,
    /// Readings in those batches.
    pub outbox_readings: u64,
    /// `created_ns` of the oldest unacked batch.
    pub oldest_unacked_ns: Option<i64>,
    /// Next batch sequence.
    pub next_seq: u64,
    /// Batches handed out and not yet acked.
    pub in_flight: u64,
    /// Cumulative drops by (origin, kind).
    pub dropped: Vec<(String, u16, u64)>,
}

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
    fn decompress(&self, stored: &[u8], max: usize) -> Result<Vec<u8>, String>;
}

/// Largest encoded batch the journal decompresses (a stored batch is at most
/// this when plain; see `ferry_proto::stream::DEFAULT_MAX_FRAME`).
const MAX_BATCH_BYTES: usize = 64 << 20;

/// A sealed batch as stored in the outbox and sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBatch {
    /// Batch sequence.
    pub seq: u64,
    /// Codec of `body` (0: plain encoded [`Batch`]).
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

/// The hasher of series dictionaries: seeded per process where std has
/// entropy (series names come from the network), fixed on devices.
#[cfg(feature = "std")]
type SeriesHasher = foldhash::fast::RandomState;
#[cfg(not(feature = "std"))]
type SeriesHasher = foldhash::fast::FixedState;

/// The index of a batch's series dictionary (`Batch::series`): a hash table
/// of positions in that `Vec`, so a key is stored once, in the batch, and
/// looking one up costs a hash and one comparison.
#[derive(Default)]
struct Dictionary {
    index: hashbrown::HashTable<u32>,
    hasher: SeriesHasher,
}

impl fmt::Debug for Dictionary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dictionary({} series)", self.index.len())
    }
}

impl Dictionary {
    fn find(&self, series: &[SeriesKey], key: &SeriesKey) -> (Option<u32>, u64) {
        use core::hash::BuildHasher;
        let hash = self.hasher.hash_one(key);
        let found = self.index.find(hash, |&i| series[i as usize] == *key);
        (found.copied(), hash)
    }

    fn push(&mut self, series: &mut Vec<SeriesKey>, key: SeriesKey, hash: u64) -> u32 {
        use core::hash::BuildHasher;
        let i = series.len() as u32;
        series.push(key);
        let hasher = &self.hasher;
        self.index
            .insert_unique(hash, i, |&j| hasher.hash_one(&series[j as usize]));
        i
    }

    /// The index of `key` in `series`, appending it if new (moved: no copy).
    fn intern(&mut self, series: &mut Vec<SeriesKey>, key: SeriesKey) -> u32 {
        match self.find(series, &key) {
            (Some(i), _) => i,
            (None, hash) => self.push(series, key, hash),
        }
    }

    /// [`intern`](Self::intern) for a borrowed key: copied only if new.
    fn intern_ref(&mut self, series: &mut Vec<SeriesKey>, key: &SeriesKey) -> u32 {
        match self.find(series, key) {
            (Some(i), _) => i,
            (None, hash) => self.push(series, key.clone(), hash),
        }
    }
}

/// In-memory copy of the batch being filled (mirrors the `pending` rows).
#[derive(Debug, Default)]
struct Pending {
    index: Dictionary,
    batch: Batch,
    /// Raw readings by series index in `batch.series`.
    raw: Vec<Vec<Reading>>,
    origins: BTreeMap<String, u64>,
    count: usize,
    since_ns: Option<i64>,
    rows: Vec<u64>,
}

impl Pending {
    /// Adds a row read back from the `pending` table.
    fn add_row(&mut self, row: PendingRow) -> Result<(), CommitError> {
        let mut raw = Vec::with_capacity(row.batch.blocks.len());
        for block in &row.batch.blocks {
            let readings = block
                .readings()
                .map_err(|e| CommitError::Corrupt(alloc::format!("pending row: {e}")))?;
            raw.push((block.series, readings));
        }
        self.absorb(row, raw)
    }

    /// Adds a commit's content: `raw` readings by index into `row`'s series
    /// (its blocks are ignored), its aggregates and origins.
    fn absorb(
        &mut self,
        row: PendingRow,
        raw: Vec<(u32, Vec<Reading>)>,
    ) -> Result<(), CommitError> {
        let PendingRow {
            batch,
            origins,
            written_ns,
        } = row;
        // The row's dictionary, moved into the batch's.
        let to_batch: Vec<u32> = batch
            .series
            .into_iter()
            .map(|key| self.index.intern(&mut self.batch.series, key))
            .collect();
        let unknown = || CommitError::Corrupt("pending row references an unknown series".into());
        for (series, readings) in raw {
            let i = *to_batch.get(series as usize).ok_or_else(unknown)? as usize;
            self.count += readings.len();
            if self.raw.len() <= i {
                self.raw.resize_with(i + 1, Vec::new);
            }
            let slot = &mut self.raw[i];
            if slot.is_empty() {
                *slot = readings;
            } else {
                slot.extend(readings);
            }
        }
        for mut agg in batch.aggregates {
            agg.series = *to_batch.get(agg.series as usize).ok_or_else(unknown)?;
            self.batch.aggregates.push(agg);
            self.count += 1;
        }
        for o in origins {
            *self.origins.entry(o.origin).or_default() += o.readings;
        }
        self.since_ns = Some(self.since_ns.map_or(written_ns, |s| s.min(written_ns)));
        Ok(())
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

/// `*`-glob match of `name` against `pattern`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            pi += 1;
            mark = ni;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
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
        crate::writer::now_ns().unsigned_abs().max(1)
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
        match row.split_first() {
            Some((0, body)) => Ok(body.to_vec()),
            Some((&codec, body)) => match &self.compressor {
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
        journal.outbox.clear();
        journal.outbox_readings = 0;
        for entry in txn.open_table(OUTBOX_META)?.iter()? {
            let (seq, meta) = entry?;
            let meta: OutboxMeta = decode("OutboxMeta", meta.value())?;
            journal.outbox_readings += meta.readings;
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

    fn rule_for(&self, key: &SeriesKey) -> Option<WindowRule> {
        self.config
            .rules
            .iter()
            .find(|r| glob_match(&r.metric, &key.metric))
            .map(|r| r.window)
    }

    /// `Some((used, budget))` when a commit carrying readings or device
    /// reports would be refused ([`CommitError::Full`], `backpressure`).
    pub fn refuses_data(&self) -> Option<(u64, u64)> {
        (self.config.policy == FullPolicy::Backpressure && self.bytes >= self.config.budget_bytes)
            .then_some((self.bytes, self.config.budget_bytes))
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

    fn commit_inner(&mut self, work: Work, now: i64) -> Result<CommitReport, CommitError> {
        let mut report = CommitReport::default();
        let mut row = PendingRow {
            batch: Batch::default(),
            origins: Vec::new(),
            written_ns: now,
        };
        let mut row_index = Dictionary::default();
        let mut row_origins: BTreeMap<String, u64> = BTreeMap::new();
        let mut row_raw: Vec<(u32, Vec<Reading>)> = Vec::new();
        let mut touched: BTreeSet<SeriesKey> = BTreeSet::new();
        let mut health_add: Vec<(String, u16, u64)> = work.health;

        let txn = self.db.begin_write()?;
        {
            let mut devices = txn.open_table(DEVICES)?;
            // Raw readings and windows.
            for group in work.readings {
                let SeriesReadings {
                    series,
                    origin,
                    readings,
                } = group;
                let rule = self.rule_for(&series);
                let total = readings.len() as u64;
                let mut raw: Vec<Reading> = Vec::new();
                let mut late_dropped = 0u64;
                match rule {
                    None => raw = readings,
                    Some(rule) => {
                        for r in &readings {
                            match self
                                .aggregator
                                .add(&series, &origin, rule, r.ts_ns, r.value, now)
                            {
                                Added::Window => {}
                                Added::Late(LatePolicy::Raw) => raw.push(*r),
                                Added::Late(LatePolicy::Drop) => late_dropped += 1,
                            }
                        }
                        touched.insert(series.clone());
                    }
                }
                report.accepted += total - late_dropped;
                report.late_dropped += late_dropped;
                if late_dropped > 0 {
                    health_add.push((origin.clone(), health::DROPPED_LATE, late_dropped));
                }
                if !raw.is_empty() {
                    let i = row_index.intern(&mut row.batch.series, series);
                    *row_origins.entry(origin).or_default() += raw.len() as u64;
                    row_raw.push((i, raw));
                }
                // Readings in windows are attributed when the window closes.
            }
            // Device reports: in order, once.
            for rep in &work.reports {
                let last = match devices.get(rep.device.as_bytes())? {
                    Some(v) => Some(layout::u32_pair_of("devices", v.value())?),
                    None => None,
                };
                let done = match last {
                    Some((boot, seq)) if boot == rep.boot => seq,
                    _ => 0,
                };
                if rep.seq <= done {
                    report.reports.push(true); // journaled before: ack again
                    continue;
                }
                if rep.seq != done.max(rep.floor) + 1 {
                    report.reports.push(false); // a gap: wait for the missing one
                    continue;
                }
                for (series, partial) in &rep.windows {
                    let i = row_index.intern_ref(&mut row.batch.series, series);
                    row.batch.aggregates.push(partial.to_aggregate(i));
                    *row_origins.entry(rep.device.clone()).or_default() += partial.count;
                    report.accepted += partial.count;
                }
                devices.insert(
                    rep.device.as_bytes(),
                    layout::u32_pair_value(rep.boot, rep.seq).as_slice(),
                )?;
                let mut offsets = txn.open_table(DEVICE_OFFSETS)?;
                let boot = match offsets.get(rep.device.as_bytes())? {
                    Some(v) => Some(layout::offset_of(v.value())?.0),
                    None => None,
                };
                if boot != Some(rep.boot) {
                    offsets.insert(
                        rep.device.as_bytes(),
                        layout::offset_value(rep.boot, rep.offset_ns).as_slice(),
                    )?;
                }
                report.reports.push(true);
            }
        }
        // Device drop totals → increments.
        if !work.device_dropped.is_empty() {
            let mut drops = txn.open_table(DEVICE_DROPS)?;
            for (device, boot, total) in &work.device_dropped {
                let last = match drops.get(device.as_bytes())? {
                    Some(v) => Some(layout::u32_pair_of("device_drops", v.value())?),
                    None => None,
                };
                let base = match last {
                    Some((b, counted)) if b == *boot => counted,
                    _ => 0,
                };
                if *total > base {
                    health_add.push((
                        device.clone(),
                        health::DROPPED_DEVICE_RING,
                        u64::from(total - base),
                    ));
                }
                drops.insert(
                    device.as_bytes(),
                    layout::u32_pair_value(*boot, (*total).max(base)).as_slice(),
                )?;
            }
        }
        // Windows due now.
        let closed = self.aggregator.close_due(now, |k| {
            touched.insert(k.clone());
        });
        for c in closed {
            let i = row_index.intern(&mut row.batch.series, c.series);
            row.batch.aggregates.push(c.window.to_aggregate(i));
            *row_origins.entry(c.origin).or_default() += c.window.count;
        }
        row.origins = row_origins
            .into_iter()
            .map(|(origin, readings)| OriginCount { origin, readings })
            .collect();

        let mut wrote = !work.acks.is_empty()
            || !health_add.is_empty()
            || !work.reports.is_empty()
            || !work.device_dropped.is_empty();
        {
            // Open windows of touched series.
            let mut windows = txn.open_table(WINDOWS)?;
            for key in &touched {
                let k = encode(key)?;
                let old = windows
                    .get(k.as_slice())?
                    .map_or(0, |v| v.value().len() as u64);
                match self.aggregator.state(key) {
                    Some(state) => {
                        let v = encode(state)?;
                        self.bytes = self.bytes - old.min(self.bytes) + v.len() as u64;
                        windows.insert(k.as_slice(), v.as_slice())?;
                    }
                    None => {
                        self.bytes -= old.min(self.bytes);
                        windows.remove(k.as_slice())?;
                    }
                }
                wrote = true;
            }
            // Health increments.
            let mut health_table = txn.open_table(HEALTH)?;
            for (origin, kind, count) in &health_add {
                if *count == 0 {
                    continue;
                }
                add_count(
                    &mut health_table,
                    &layout::count_key(origin, *kind, Some(0)),
                    *count,
                )?;
                self.health_pending = true;
            }
            let mut dropped = txn.open_table(DROPPED)?;
            for (origin, kind, count) in &health_add {
                if matches!(*kind, health::DROPPED_LATE) {
                    add_count(
                        &mut dropped,
                        &layout::count_key(origin, *kind, None),
                        *count,
                    )?;
                }
            }
        }
        // Acks.
        for (seq, delivered) in &work.acks {
            self.in_flight.remove(seq);
            let readings = self.remove_batch(
                &txn,
                *seq,
                if *delivered {
                    None
                } else {
                    Some(DROPPED_REJECTED)
                },
            )?;
            if *delivered {
                report.delivered_readings += readings;
            }
        }
        // Seal now? Then this commit's content goes straight into the batch
        // (invariant 6); otherwise into a pending row.
        let row_count =
            row_raw.iter().map(|(_, r)| r.len()).sum::<usize>() + row.batch.aggregates.len();
        let count = self.pending.count + row_count;
        let has_content = count > 0 || self.health_pending;
        // Health only: its linger starts now.
        let since = self.pending.since_ns.or(has_content.then_some(now));
        let due = since.is_some_and(|s| now.saturating_sub(s) >= self.config.batch_linger_ns);
        let max = self.config.batch_max_readings;
        let caught_up =
            self.config.eager_seal && self.outbox.keys().all(|seq| self.in_flight.contains(seq));
        let seal_now =
            has_content && (count >= max || due || row_count.saturating_mul(4) >= max || caught_up);
        if row_count > 0 {
            if !seal_now {
                for (i, raw) in &row_raw {
                    row.batch.blocks.push(ReadingBlock::encode(*i, raw));
                }
                let bytes = encode(&row)?;
                let id = self.next_row;
                self.next_row += 1;
                txn.open_table(PENDING)?
                    .insert(layout::id_key(id).as_slice(), bytes.as_slice())?;
                self.bytes += bytes.len() as u64;
                self.pending.rows.push(id);
            }
            self.pending.absorb(row, row_raw)?;
            wrote = true;
        }
        if has_content && self.pending.since_ns.is_none() {
            self.pending.since_ns = since;
        }
        if seal_now && let Some(seq) = self.seal(&txn, now)? {
            report.sealed.push(seq);
            wrote = true;
        }
        // Budget.
        if self.config.policy == FullPolicy::DropOldest {
            while self.bytes > self.config.budget_bytes {
                let victim = self
                    .outbox
                    .keys()
                    .find(|seq| !self.in_flight.contains(seq))
                    .copied();
                let Some(seq) = victim else { break };
                report.dropped_readings +=
                    self.remove_batch(&txn, seq, Some(health::DROPPED_JOURNAL_FULL))?;
                report.dropped_batches += 1;
                wrote = true;
            }
        }
        if wrote {
            let mut meta = txn.open_table(META)?;
            for (name, value) in [
                ("next_seq", self.next_seq),
                ("next_row", self.next_row),
                ("bytes", self.bytes),
            ] {
                meta.insert(name.as_bytes(), layout::u64_value(value).as_slice())?;
            }
            drop(meta);
            txn.commit()?;
            report.wrote = true;
        } else {
            txn.abort()?;
        }
        Ok(report)
    }

    /// Removes a batch from the outbox. With `dropped_kind`, its readings are
    /// counted as dropped per origin, and its health records are kept for
    /// the next batch (a count is never lost with the batch carrying it).
    /// Returns the batch's readings. A missing batch (acked twice) is a no-op.
    fn remove_batch(
        &mut self,
        txn: &redb::WriteTransaction,
        seq: u64,
        dropped_kind: Option<u16>,
    ) -> Result<u64, CommitError> {
        let mut outbox = txn.open_table(OUTBOX)?;
        let mut metas = txn.open_table(OUTBOX_META)?;
        let key = layout::id_key(seq);
        let Some(body) = outbox.remove(key.as_slice())? else {
            return Ok(0);
        };
        let body_len = body.value().len() as u64;
        let batch_health: Vec<HealthRecord> = if dropped_kind.is_some() {
            decode::<Batch>("Batch", &self.plain(seq, body.value())?)?.health
        } else {
            Vec::new()
        };
        drop(body);
        if let Some(sealed) = self.outbox.remove(&seq) {
            self.outbox_readings -= sealed.readings.min(self.outbox_readings);
        }
        let meta = metas.remove(key.as_slice())?.map(|m| {
            (
                m.value().len() as u64,
                decode::<OutboxMeta>("OutboxMeta", m.value()),
            )
        });
        let (meta_len, meta) = match meta {
            Some((len, m)) => (len, m?),
            None => {
                return Err(CommitError::Corrupt(alloc::format!(
                    "batch {seq} has no outbox_meta row"
                )));
            }
        };
        self.bytes -= (body_len + meta_len).min(self.bytes);
        if let Some(kind) = dropped_kind {
            let mut health_table = txn.open_table(HEALTH)?;
            let mut dropped = txn.open_table(DROPPED)?;
            if meta.origins.iter().all(|o| o.readings == 0) {
                // No readings to count, but the drop still names the batch
                // (invariant 9).
                add_count(
                    &mut health_table,
                    &layout::count_key("", kind, Some(seq)),
                    0,
                )?;
            }
            for o in &meta.origins {
                add_count(
                    &mut health_table,
                    &layout::count_key(&o.origin, kind, Some(seq)),
                    o.readings,
                )?;
                add_count(
                    &mut dropped,
                    &layout::count_key(&o.origin, kind, None),
                    o.readings,
                )?;
            }
            // The dropped batch's own health records travel on in a later
            // batch, keeping their batch tags.
            for h in &batch_health {
                add_count(
                    &mut health_table,
                    &layout::count_key(&h.source, h.kind, Some(h.batch)),
                    h.count,
                )?;
            }
            self.health_pending = true;
        }
        Ok(meta.readings)
    }

    /// Seals the pending rows and health increments into the next batch.
    fn seal(&mut self, txn: &redb::WriteTransaction, now: i64) -> Result<Option<u64>, CommitError> {
        let mut pending = core::mem::take(&mut self.pending);
        let mut batch = core::mem::take(&mut pending.batch);
        for (series, mut readings) in core::mem::take(&mut pending.raw).into_iter().enumerate() {
            if readings.is_empty() {
                continue;
            }
            // Readings of a series may come from several commits: order them
            // so the block's deltas stay small.
            readings.sort_by_key(|r| r.ts_ns);
            batch
                .blocks
                .push(ReadingBlock::encode(series as u32, &readings));
        }
        {
            let mut health_table = txn.open_table(HEALTH)?;
            for entry in health_table.iter()? {
                let (k, v) = entry?;
                let (source, kind, dropped_batch) = layout::count_key_of("health", k.value())?;
                batch.health.push(HealthRecord {
                    source,
                    kind,
                    count: count_of("health", v.value())?,
                    batch: dropped_batch.unwrap_or_default(),
                });
            }
            health_table.retain(|_, _| false)?;
        }
        self.health_pending = false;
        if batch.blocks.is_empty() && batch.aggregates.is_empty() && batch.health.is_empty() {
            return Ok(None);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        batch.seq = seq;
        batch.created_ns = now;
        batch.epoch = self.epoch;
        let readings =
            batch.reading_count() as u64 + batch.aggregates.iter().map(|a| a.count).sum::<u64>();
        let plain = encode(&batch)?;
        drop(batch);
        let mut body = Vec::new();
        match self
            .compressor
            .as_ref()
            .and_then(|c| Some((c.codec(), c.compress(&plain)?)))
        {
            Some((codec, packed)) => {
                body.reserve_exact(packed.len() + 1);
                body.push(codec);
                body.extend_from_slice(&packed);
            }
            None => {
                body.reserve_exact(plain.len() + 1);
                body.push(0);
                body.extend_from_slice(&plain);
            }
        }
        drop(plain);
        let meta = encode(&OutboxMeta {
            bytes: body.len() as u64,
            readings,
            created_ns: now,
            origins: pending
                .origins
                .iter()
                .map(|(origin, &readings)| OriginCount {
                    origin: origin.clone(),
                    readings,
                })
                .collect(),
        })?;
        let key = layout::id_key(seq);
        txn.open_table(OUTBOX)?
            .insert(key.as_slice(), body.as_slice())?;
        txn.open_table(OUTBOX_META)?
            .insert(key.as_slice(), meta.as_slice())?;
        self.outbox.insert(
            seq,
            Sealed {
                readings,
                created_ns: now,
            },
        );
        self.outbox_readings += readings;
        self.bytes += (body.len() + meta.len()) as u64;
        let mut rows = txn.open_table(PENDING)?;
        for id in &pending.rows {
            if let Some(old) = rows.remove(layout::id_key(*id).as_slice())? {
                self.bytes -= (old.value().len() as u64).min(self.bytes);
            }
        }
        Ok(Some(seq))
    }

    /// Hands out up to `max_bytes` of batches that are not in flight, oldest
    /// (or newest) first, and marks them in flight. At least one batch is
    /// returned if any is waiting.
    pub fn next_to_send(
        &mut self,
        max_bytes: u64,
        newest_first: bool,
    ) -> Result<Vec<(u64, Vec<u8>)>, CommitError> {
        let stored = self.next_to_ship(max_bytes, newest_first)?;
        let mut out = Vec::with_capacity(stored.len());
        for b in stored {
            let plain = if b.codec == 0 {
                b.body
            } else {
                let mut row = Vec::with_capacity(b.body.len() + 1);
                row.push(b.codec);
                row.extend_from_slice(&b.body);
                self.plain(b.seq, &row)?
            };
            out.push((b.seq, plain));
        }
        Ok(out)
    }

    /// Like [`Journal::next_to_send`], but the batches as stored (maybe
    /// compressed), `max_bytes` counting stored bytes: what the shipper
    /// sends without re-encoding.
    pub fn next_to_ship(
        &mut self,
        max_bytes: u64,
        newest_first: bool,
    ) -> Result<Vec<StoredBatch>, CommitError> {
        let txn = self.db.begin_read()?;
        let outbox = txn.open_table(OUTBOX)?;
        let out = if newest_first {
            pick(outbox.iter()?.rev(), &self.in_flight, max_bytes)?
        } else {
            pick(outbox.iter()?, &self.in_flight, max_bytes)?
        };
        for b in &out {
            self.in_flight.insert(b.seq);
        }
        Ok(out)
    }

    /// Hands these batches out again (a transient rejection).
    pub fn release(&mut self, seqs: &[u64]) {
        for seq in seqs {
            self.in_flight.remove(seq);
        }
    }

    /// Forgets which batches are in flight (the connection was lost): they
    /// will be handed out again.
    pub fn release_in_flight(&mut self) {
        self.in_flight.clear();
    }

    /// Counters for `status`.
    pub fn stats(&self) -> Result<JournalStats, CommitError> {
        let txn = self.db.begin_read()?;
        let mut stats = JournalStats {
            bytes: self.bytes,
            budget_bytes: self.config.budget_bytes,
            pending_readings: self.pending.count as u64,
            window_readings: self.aggregator.open_readings(),
            open_windows: self.aggregator.open_windows() as u64,
            next_seq: self.next_seq,
            in_flight: self.in_flight.len() as u64,
            outbox_batches: self.outbox.len() as u64,
            outbox_readings: self.outbox_readings,
            oldest_unacked_ns: self.outbox.values().next().map(|s| s.created_ns),
            ..JournalStats::default()
        };
        for entry in txn.open_table(DROPPED)?.iter()? {
            let (k, v) = entry?;
            let (origin, kind, _) = layout::count_key_of("dropped", k.value())?;
            stats
                .dropped
                .push((origin, kind, count_of("dropped", v.value())?));
        }
        Ok(stats)
    }

    /// What is waiting, per series: `(series, raw readings, windows)` over
    /// the outbox and the batch being filled.
    pub fn inspect(&self) -> Result<Vec<(String, u64, u64)>, CommitError> {
        let mut per: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut add = |batch: &Batch| {
            for b in &batch.blocks {
                if let Some(s) = batch.series.get(b.series as usize) {
                    per.entry(s.to_string()).or_default().0 += b.len() as u64;
                }
            }
            for a in &batch.aggregates {
                if let Some(s) = batch.series.get(a.series as usize) {
                    per.entry(s.to_string()).or_default().1 += 1;
                }
            }
        };
        let txn = self.db.begin_read()?;
        for entry in txn.open_table(OUTBOX)?.iter()? {
            let (seq, body) = entry?;
            let seq = layout::id_of("outbox", seq.value())?;
            add(&decode::<Batch>("Batch", &self.plain(seq, body.value())?)?);
        }
        for entry in txn.open_table(PENDING)?.iter()? {
            let (_, row) = entry?;
            add(&decode::<PendingRow>("PendingRow", row.value())?.batch);
        }
        Ok(per.into_iter().map(|(k, (r, w))| (k, r, w)).collect())
    }

    /// Device report high-water marks `(device, boot, seq)`.
    pub fn devices(&self) -> Result<Vec<(String, u32, u32)>, CommitError> {
        let txn = self.db.begin_read()?;
        let mut out = Vec::new();
        for entry in txn.open_table(DEVICES)?.iter()? {
            let (k, v) = entry?;
            let (boot, seq) = layout::u32_pair_of("devices", v.value())?;
            out.push((layout::str_of("devices", k.value())?.into(), boot, seq));
        }
        Ok(out)
    }

    /// Device-time offsets `(device, boot, offset_ns)` of the boots journaled.
    pub fn device_offsets(&self) -> Result<Vec<(String, u32, i64)>, CommitError> {
        let txn = self.db.begin_read()?;
        let mut out = Vec::new();
        for entry in txn.open_table(DEVICE_OFFSETS)?.iter()? {
            let (k, v) = entry?;
            let (boot, offset) = layout::offset_of(v.value())?;
            out.push((
                layout::str_of("device_offsets", k.value())?.into(),
                boot,
                offset,
            ));
        }
        Ok(out)
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

/// `table[key] += n` (`health`, `dropped`).
fn add_count(table: &mut Table<'_>, key: &[u8], n: u64) -> Result<(), CommitError> {
    let old = match table.get(key)? {
        Some(v) => count_of("count", v.value())?,
        None => 0,
    };
    table.insert(key, layout::u64_value(old.saturating_add(n)).as_slice())?;
    Ok(())
}

fn count_of(table: &str, value: &[u8]) -> Result<u64, CommitError> {
    layout::u64_of(value)
        .ok_or_else(|| CommitError::Corrupt(alloc::format!("a {table} count does not decode")))
}

type OutboxEntry<'a> = Result<
    (
        redb::AccessGuard<'a, &'static [u8]>,
        redb::AccessGuard<'a, &'static [u8]>,
    ),
    redb::StorageError,
>;

fn pick<'a>(
    entries: impl Iterator<Item = OutboxEntry<'a>>,
    in_flight: &BTreeSet<u64>,
    max_bytes: u64,
) -> Result<Vec<StoredBatch>, CommitError> {
    let mut out = Vec::new();
    let mut total = 0u64;
    for entry in entries {
        let (seq, row) = entry?;
        let seq = layout::id_of("outbox", seq.value())?;
        if in_flight.contains(&seq) {
            continue;
        }
        let Some((&codec, body)) = row.value().split_first() else {
            return Err(CommitError::Corrupt(alloc::format!(
                "batch {seq}: empty row"
            )));
        };
        if !out.is_empty() && total + body.len() as u64 > max_bytes {
            break;
        }
        total += body.len() as u64;
        out.push(StoredBatch {
            seq,
            codec,
            body: body.to_vec(),
        });
    }
    Ok(out)
}
