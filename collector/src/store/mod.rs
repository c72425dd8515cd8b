//! The embedded store: one redb file, `ferry.redb`, in the data directory.
//!
//! docs/storage.md describes the tables and their invariants; in short:
//! raw readings live in per-series, per-hour chunks keyed
//! `(series, bucket, chunk id)`, window aggregates in `(series, start, len)`,
//! and the dedupe ranges `(agent, epoch, seq)` are written in the same
//! transaction as the data they vouch for ([`dedupe`]).
//!
//! **Invariant:** only the writer thread ([`crate::writer`]) opens write
//! transactions while the server runs; readers (queries, `/metrics`) use read
//! transactions and never block it.

mod bundle;
mod chunk;
pub mod dedupe;
mod events;
mod footprint;
mod maintain;
mod read;
mod stepped;
mod write;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ferry_proto::batch::WindowAggregate;
use ferry_proto::codec;
use ferry_proto::series::SeriesKey;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

pub use chunk::{CHUNK_SPAN_NS, align, bucket_of, merge_aggregate};
pub(crate) use chunk::{decode as decode_chunk, encode as encode_chunk, split_block};
pub use dedupe::EpochRecord;
pub(crate) use events::append_log;
pub use events::{AlertFilter, CursorRecord, FanoutCommit, SinkCommit};
pub use footprint::{Footprint, TableBytes};
pub use maintain::{COMPACT_SETTLE_NS, MaintenanceReport, MaintenanceWork, RetentionPlan};
pub use read::{Presence, SeriesData, Want};
pub use stepped::StepReads;
pub use write::{
    Applied, DEFAULT_MAX_DEDUPE_RANGES, DEFAULT_MAX_EPOCHS, DedupeLimits, PreparedBatch,
    PreparedChunk, SessionOutcome, SessionRequest, WriterState,
};

use crate::query::{Query, Selector};

/// `name -> u64`: counters (`next_series`, `next_chunk`, `chunk_bytes`).
pub(crate) const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// `series id -> SeriesKey` (MessagePack).
pub(crate) const SERIES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("series");
/// `SeriesKey (MessagePack) -> series id`.
pub(crate) const SERIES_BY_KEY: TableDefinition<'_, &[u8], u64> =
    TableDefinition::new("series_by_key");
/// `(bucket start, id) -> bundle`: the chunks one batch brought for one
/// bucket, not yet moved into per-series chunks ([`bundle`]).
pub(crate) const STAGED: TableDefinition<'_, (i64, u64), &[u8]> = TableDefinition::new("staged");
/// `(series, bucket start, chunk id) -> chunk`.
pub(crate) const CHUNKS: TableDefinition<'_, (u64, i64, u64), &[u8]> =
    TableDefinition::new("chunks");
/// `(bucket start, series, chunk id) -> chunk length`: the time index that
/// retention and downsampling walk oldest first.
pub(crate) const CHUNKS_BY_TIME: TableDefinition<'_, (i64, u64, u64), u32> =
    TableDefinition::new("chunks_by_time");
/// `(series, window start, window length) -> WindowAggregate`.
pub(crate) const AGGREGATES: TableDefinition<'_, (u64, i64, u64), &[u8]> =
    TableDefinition::new("aggregates");
/// `(agent, device, reason) -> readings` the collector refused (device: the
/// series' `device` tag, "" without one).
pub(crate) const REFUSED: TableDefinition<'_, (&str, &str, u16), u64> =
    TableDefinition::new("refused");
/// `agent -> AgentRecord`.
pub(crate) const AGENTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("agents");
/// `(agent, source, kind) -> total`: health counters agents reported.
pub(crate) const HEALTH: TableDefinition<'_, (&str, &str, u16), u64> =
    TableDefinition::new("health");

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store is open in another process (a running collector).
    #[error("the store {0} is in use by another process (is the collector running?)")]
    Locked(PathBuf),
    /// redb reported an error.
    #[error("store: {0}")]
    Redb(#[from] redb::Error),
    /// Stored bytes did not decode: the file is damaged or from a newer
    /// version.
    #[error("corrupt store record: {0}")]
    Corrupt(String),
    /// Prepared maintenance found its rows changed when applied: nothing
    /// was applied, and the next pass prepares afresh.
    #[error("maintenance: {0}")]
    Stale(String),
    /// A query asked for more than the store will return at once.
    #[error("query too large: {0}")]
    TooLarge(String),
    /// A query went past its memory budget (`[query]`).
    #[error("query refused: {0}")]
    OverBudget(crate::query::OverBudget),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Redb(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// What the store knows about one agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentRecord {
    /// The agent id (certificate Common Name).
    pub id: String,
    /// Refused from now on.
    pub revoked: bool,
    /// When its first batch was stored, ns since the epoch (0: never).
    pub first_seen_ns: i64,
    /// When its last batch was stored, ns since the epoch (0: never).
    pub last_seen_ns: i64,
    /// Remote address of its last stored batch.
    pub last_addr: String,
    /// Batches stored.
    pub batches: u64,
    /// Raw readings stored.
    pub readings: u64,
    /// Highest batch sequence stored in the current epoch.
    pub last_seq: Option<u64>,
    /// Readings the agent reported as dropped (health kinds 1, 2, 3, 5, 6).
    pub dropped: u64,
    /// The agent's journal identity, from its latest Hello (0: none known).
    pub epoch: u64,
    /// When the collector first saw `epoch` as the agent's current one, ns.
    pub epoch_since_ns: i64,
    /// The epoch before `epoch` (0: none).
    pub previous_epoch: u64,
    /// Times the agent came back with another journal epoch than before:
    /// its journal was replaced (quarantined, wiped, re-imaged).
    pub journal_resets: u64,
    /// Journal epochs of this agent the store keeps dedupe state for.
    pub epochs: u64,
    /// Readings of stored batches the collector refused (`refused` table).
    pub refused: u64,
    /// Readings inside the window aggregates stored (their `count`s).
    pub window_readings: u64,
}

/// One series as listed by [`Store::series`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesInfo {
    /// Store id.
    pub id: u64,
    /// The series in Prometheus text form.
    pub name: String,
    /// The key.
    pub metric: String,
    /// Its tags, sorted by key.
    pub tags: Vec<(String, String)>,
}

pub use ferry_proto::query::{SeriesResult, WindowRow};

/// A stored aggregate as a query answers it.
fn window_row(a: &WindowAggregate) -> WindowRow {
    let q = |q| a.sketch.as_ref().and_then(|s| s.quantile(q));
    WindowRow {
        start_ns: a.start_ns,
        len_ns: a.len_ns,
        count: a.count,
        sum: a.sum,
        min: a.min,
        max: a.max,
        first: a.first,
        last: a.last,
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
    }
}

/// The store; see the module docs.
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

impl Store {
    /// Opens (or creates) the store file and its tables.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = match Database::create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Locked(path.to_owned()));
            }
            Err(e) => return Err(StoreError::Redb(e.into())),
        };
        let txn = db.begin_write()?;
        {
            txn.open_table(META)?;
            txn.open_table(SERIES)?;
            txn.open_table(SERIES_BY_KEY)?;
            txn.open_table(CHUNKS)?;
            txn.open_table(CHUNKS_BY_TIME)?;
            txn.open_table(STAGED)?;
            txn.open_table(AGGREGATES)?;
            txn.open_table(dedupe::DEDUPE)?;
            txn.open_table(dedupe::EPOCHS)?;
            txn.open_table(REFUSED)?;
            txn.open_table(AGENTS)?;
            txn.open_table(HEALTH)?;
            txn.open_table(events::EVENT_LOG)?;
            txn.open_table(events::ALERTS)?;
            txn.open_table(events::CURSORS)?;
            txn.open_table(events::RULE_STATE)?;
        }
        txn.commit()?;
        Ok(Self {
            db,
            path: path.to_owned(),
        })
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the store file in bytes.
    pub fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// Bytes of chunk data stored (the figure `max_bytes` bounds).
    pub fn chunk_bytes(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get("chunk_bytes")?.map_or(0, |v| v.value()))
    }

    /// Number of series.
    pub fn series_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(SERIES)?.len()?)
    }

    /// Loads what the writer keeps in memory.
    pub fn writer_state(&self) -> Result<WriterState, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let get =
            |k: &str| -> Result<u64, StoreError> { Ok(meta.get(k)?.map_or(0, |v| v.value())) };
        let mut dict = HashMap::new();
        for entry in txn.open_table(SERIES_BY_KEY)?.iter()? {
            let (k, v) = entry?;
            dict.insert(k.value().to_vec(), v.value());
        }
        Ok(WriterState::new(
            dict,
            get("next_series")?,
            get("next_chunk")?,
            get("chunk_bytes")?,
            get("next_event")?,
        ))
    }

    /// Every agent the store knows, sorted by id.
    pub fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(AGENTS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (_, v) = entry?;
            out.push(codec::from_bytes::<AgentRecord>("AgentRecord", v.value()).map_err(corrupt)?);
        }
        Ok(out)
    }

    /// Ids of revoked agents.
    pub fn revoked(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .agents()?
            .into_iter()
            .filter(|a| a.revoked)
            .map(|a| a.id)
            .collect())
    }

    /// Health totals agents reported: `(agent, source, kind, total)`.
    pub fn health(&self) -> Result<Vec<(String, String, u16, u64)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(HEALTH)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            let (agent, source, kind) = k.value();
            out.push((agent.to_owned(), source.to_owned(), kind, v.value()));
        }
        Ok(out)
    }

    /// Readings the collector refused: `(agent, device, reason, total)`.
    pub fn refused(&self) -> Result<Vec<(String, String, u16, u64)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REFUSED)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            let (agent, device, code) = k.value();
            out.push((agent.to_owned(), device.to_owned(), code, v.value()));
        }
        Ok(out)
    }

    /// Every journal epoch of every agent: `(agent, epoch, record)`.
    pub fn epochs(&self) -> Result<Vec<(String, u64, EpochRecord)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(dedupe::EPOCHS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            let (agent, epoch) = k.value();
            let rec = codec::from_bytes("EpochRecord", v.value()).map_err(corrupt)?;
            out.push((agent.to_owned(), epoch, rec));
        }
        Ok(out)
    }

    /// The resolved ranges `[first, last]` of one agent's epoch
    /// (docs/storage.md, "Dedupe").
    pub fn dedupe_ranges(&self, agent: &str, epoch: u64) -> Result<Vec<(u64, u64)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(dedupe::DEDUPE)?;
        let mut out = Vec::new();
        for entry in table.range((agent, epoch, 0u64)..=(agent, epoch, u64::MAX))? {
            let (k, v) = entry?;
            out.push((k.value().2, v.value()));
        }
        Ok(out)
    }

    /// Series matching `selector`, by id.
    pub fn series(&self, selector: &Selector) -> Result<Vec<SeriesInfo>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SERIES)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (id, bytes) = entry?;
            let key: SeriesKey = codec::from_bytes("SeriesKey", bytes.value()).map_err(corrupt)?;
            if selector.matches(&key) {
                out.push(SeriesInfo {
                    id: id.value(),
                    name: key.to_string(),
                    tags: key
                        .tags
                        .iter()
                        .map(|t| (t.key.clone(), t.value.clone()))
                        .collect(),
                    metric: key.metric,
                });
            }
        }
        Ok(out)
    }

    /// Runs a query within the default budget; see [`Query`] and
    /// [`Store::query_within`].
    pub fn query(&self, q: &Query) -> Result<Vec<SeriesResult>, StoreError> {
        self.query_within(q, &crate::query::QueryLimits::default())
    }

    /// Runs a query, holding at most what `limits` allows: the step is
    /// checked before anything is read ([`Query::plan`]), the series count
    /// from the dictionary, and every chunk, bundle and window as it is
    /// decoded, so that a refusal comes before a large allocation. With a
    /// step, a chunk lying wholly inside one step window and the range is
    /// answered by its stored summary, and decoded chunks are let go once
    /// in windows (docs/storage.md, "Chunk summaries").
    pub fn query_within(
        &self,
        q: &Query,
        limits: &crate::query::QueryLimits,
    ) -> Result<Vec<SeriesResult>, StoreError> {
        Ok(self.query_reading(q, limits, true)?.0)
    }

    /// [`Store::query_within`], saying how its chunks were read; with
    /// `summaries` false a stepped query decodes every chunk (the
    /// reference the summaries answer like, bit for bit).
    pub fn query_reading(
        &self,
        q: &Query,
        limits: &crate::query::QueryLimits,
        summaries: bool,
    ) -> Result<(Vec<SeriesResult>, StepReads), StoreError> {
        use crate::query::{Held, window_bytes};
        let over = |e: crate::query::OverBudget| StoreError::OverBudget(e);
        q.plan(limits).map_err(over)?;
        let mut held = Held::new(*limits);
        let mut reads = StepReads::default();
        let series = self.series(&q.selector)?;
        held.series(series.len()).map_err(over)?;
        let txn = self.db.begin_read()?;
        let chunks = txn.open_table(CHUNKS)?;
        let aggs = txn.open_table(AGGREGATES)?;
        let mut out = Vec::new();
        // Readings still in staged bundles, piece by piece: one pass over
        // the bundles of the range for every series asked for.
        let mut staged: HashMap<u64, Vec<Vec<ferry_proto::batch::Reading>>> = HashMap::new();
        if q.raw && !series.is_empty() {
            let wanted: std::collections::HashSet<u64> = series.iter().map(|s| s.id).collect();
            let table = txn.open_table(STAGED)?;
            for entry in table.range((bucket_of(q.from_ns), 0u64)..(q.to_ns, 0u64))? {
                let (_, bytes) = entry?;
                for (sid, piece) in bundle::decode(bytes.value()).map_err(corrupt)? {
                    if !wanted.contains(&sid) {
                        continue;
                    }
                    let kept =
                        keep(&mut held, chunk::decode(piece).map_err(corrupt)?, q).map_err(over)?;
                    staged.entry(sid).or_default().push(kept);
                }
            }
        }
        for s in series {
            let mut readings = Vec::new();
            let mut raw_windows = Vec::new();
            let pieces = staged.remove(&s.id).unwrap_or_default();
            match q.step_ns {
                Some(step) if q.raw => {
                    raw_windows = stepped::raw_windows(
                        &chunks, s.id, q, step, pieces, &mut held, summaries, &mut reads,
                    )?;
                }
                _ if q.raw => {
                    let lo = (s.id, bucket_of(q.from_ns), 0u64);
                    let hi = (s.id, q.to_ns, 0u64);
                    for entry in chunks.range(lo..hi)? {
                        let (_, bytes) = entry?;
                        let kept =
                            keep(&mut held, chunk::decode(bytes.value()).map_err(corrupt)?, q)
                                .map_err(over)?;
                        readings.extend(kept);
                    }
                    // Staged readings were written after every chunk
                    // (already counted).
                    readings.extend(pieces.into_iter().flatten());
                    readings.sort_by_key(|r| r.ts_ns);
                }
                _ => {}
            }
            let mut windows = Vec::new();
            let mut windows_held = 0u64;
            if q.aggregates {
                let lo = (s.id, q.from_ns, 0u64);
                let hi = (s.id, q.to_ns, 0u64);
                for entry in aggs.range(lo..hi)? {
                    let (_, bytes) = entry?;
                    let w = chunk::decode_aggregate(bytes.value()).map_err(corrupt)?;
                    let b = window_bytes(&w);
                    held.take(1, b).map_err(over)?;
                    windows_held += b;
                    windows.push(w);
                }
            }
            let (rows_readings, windows) = match q.step_ns {
                None => (
                    readings.iter().map(|r| (r.ts_ns, r.value)).collect(),
                    windows,
                ),
                Some(step) => {
                    // At most one window per bucket and per input, each
                    // counted as a window, before they are built.
                    let inputs = raw_windows.len() + windows.len();
                    let n = (inputs as u128).min(crate::query::buckets(q.from_ns, q.to_ns, step))
                        as usize;
                    let each = stepped::WINDOW_BYTES;
                    held.take(n, n as u64 * each).map_err(over)?;
                    let raw_n = raw_windows.len();
                    let built = rebucket(&windows, raw_windows, step);
                    let built_bytes: u64 = built.iter().map(window_bytes).sum();
                    held.give_back(n, n as u64 * each);
                    held.give_back(raw_n, raw_n as u64 * each);
                    held.give_back(windows.len(), windows_held);
                    held.take(built.len(), built_bytes).map_err(over)?;
                    (Vec::new(), built)
                }
            };
            if rows_readings.is_empty() && windows.is_empty() {
                continue;
            }
            out.push(SeriesResult {
                series: s.name,
                readings: rows_readings,
                windows: windows.iter().map(window_row).collect(),
            });
        }
        Ok((out, reads))
    }

    /// Marks `agent` revoked (creating its record if needed) in its own
    /// durable transaction; true if it was not revoked before. For the CLI
    /// when no server runs; a running server revokes through its writer.
    pub fn revoke(&self, agent: &str) -> Result<bool, StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        let changed = write::revoke_in(&txn, agent)?;
        txn.commit()?;
        Ok(changed)
    }

    /// Compacts the store file in place (redb moves pages down and truncates
    /// free space at the end). Needs the file for itself: the server must not
    /// run. Returns the file size before and after.
    pub fn compact_file(path: &Path) -> Result<(u64, u64), StoreError> {
        let size = || std::fs::metadata(path).map_or(0, |m| m.len());
        let before = size();
        let mut db = match Database::open(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Locked(path.to_owned()));
            }
            Err(e) => return Err(StoreError::Redb(e.into())),
        };
        while db.compact().map_err(|e| StoreError::Redb(e.into()))? {}
        drop(db);
        Ok((before, size()))
    }

    pub(crate) fn db(&self) -> &Database {
        &self.db
    }
}

/// Counts `decoded` (one chunk or bundle piece) against `held`, and
/// returns its readings in the query's range, giving back the others.
fn keep(
    held: &mut crate::query::Held,
    decoded: Vec<ferry_proto::batch::Reading>,
    q: &Query,
) -> Result<Vec<ferry_proto::batch::Reading>, crate::query::OverBudget> {
    use crate::query::READING_BYTES;
    let n = decoded.len();
    held.take(n, n as u64 * READING_BYTES)?;
    let kept: Vec<_> = decoded
        .into_iter()
        .filter(|r| r.ts_ns >= q.from_ns && r.ts_ns < q.to_ns)
        .collect();
    let dropped = n - kept.len();
    held.give_back(dropped, dropped as u64 * READING_BYTES);
    Ok(kept)
}

/// Re-buckets stored windows into aligned windows of `step` ns (assigned
/// by their start) and merges them with the raw readings' windows of that
/// step (`raw`, from [`stepped::raw_windows`]), stored windows first,
/// merging sketches.
fn rebucket(
    windows: &[WindowAggregate],
    raw: Vec<WindowAggregate>,
    step: u64,
) -> Vec<WindowAggregate> {
    let span = i64::try_from(step).unwrap_or(i64::MAX).max(1);
    let mut parts: Vec<WindowAggregate> = windows
        .iter()
        .map(|w| {
            let mut w = w.clone();
            w.start_ns = align(w.start_ns, span);
            w.len_ns = step;
            w
        })
        .collect();
    parts.extend(raw);
    // Stable: equal starts keep stored windows before raw readings.
    parts.sort_by_key(|w| w.start_ns);
    let mut out: Vec<WindowAggregate> = Vec::new();
    for p in parts {
        match out.last_mut() {
            Some(acc) if acc.start_ns == p.start_ns => merge_aggregate(acc, &p),
            _ => out.push(p),
        }
    }
    out
}
