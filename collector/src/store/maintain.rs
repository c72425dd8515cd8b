//! Maintenance: compaction of staged bundles into per-series chunks,
//! downsampling of old readings
//! into windows, retention by age and by size. Runs in the writer thread
//! between group commits, each run bounded to [`MAX_WORK`] chunks so that
//! ingest never waits long behind it.

use std::time::Duration;

use ferry_proto::batch::{Reading, WindowAggregate};
use redb::{ReadTransaction, ReadableDatabase, ReadableTable, WriteTransaction};

use std::collections::BTreeMap;

use super::{
    AGGREGATES, CHUNK_SPAN_NS, CHUNKS, CHUNKS_BY_TIME, STAGED, Store, StoreError, WriterState,
    bundle, chunk, corrupt,
};
use crate::config::StorageConfig;

/// Most chunks (and staged pieces) one maintenance run touches.
pub const MAX_WORK: usize = 20_000;
/// A bucket's staged bundles are compacted once it ended this long ago, so
/// that batches still in flight for it mostly arrive before.
pub const COMPACT_SETTLE_NS: i64 = 300_000_000_000;

/// What one maintenance run should do, computed from the clock and the
/// configuration: a plain value, so the policy is testable without a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPlan {
    /// Chunks of buckets ending at or before this are downsampled into
    /// windows of `downsample_len` and deleted.
    pub raw_before: Option<i64>,
    /// Window length for downsampling, ns.
    pub downsample_len: u64,
    /// Aggregates starting before this are deleted.
    pub aggregates_before: Option<i64>,
    /// Chunk bytes kept at most.
    pub max_bytes: Option<u64>,
    /// Dirty buckets ending at or before this are compacted.
    pub compact_before: i64,
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl RetentionPlan {
    /// The plan at `now_ns` under `cfg`.
    pub fn at(now_ns: i64, cfg: &StorageConfig) -> Self {
        let cutoff = |d: Duration| (!d.is_zero()).then(|| now_ns.saturating_sub(nanos(d)));
        Self {
            raw_before: cutoff(cfg.raw_retention),
            downsample_len: u64::try_from(nanos(cfg.downsample_window)).unwrap_or(u64::MAX),
            aggregates_before: cutoff(cfg.aggregate_retention),
            max_bytes: (cfg.max_bytes > 0).then_some(cfg.max_bytes),
            compact_before: now_ns.saturating_sub(COMPACT_SETTLE_NS),
        }
    }
}

/// What one maintenance run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    /// Chunks merged into fewer chunks.
    pub compacted_chunks: u64,
    /// Chunks downsampled into windows and deleted.
    pub downsampled_chunks: u64,
    /// Aggregates deleted by age.
    pub aggregates_deleted: u64,
    /// Chunks deleted to respect `max_bytes`.
    pub chunks_evicted: u64,
}

impl MaintenanceReport {
    /// Adds another pass's figures.
    pub fn add(&mut self, other: &MaintenanceReport) {
        self.compacted_chunks += other.compacted_chunks;
        self.downsampled_chunks += other.downsampled_chunks;
        self.aggregates_deleted += other.aggregates_deleted;
        self.chunks_evicted += other.chunks_evicted;
    }
}

type ChunkKey = (u64, i64, u64);

/// The expensive half of one maintenance pass: computed by
/// [`Store::prepare_maintenance`] on a read snapshot, outside the writer
/// (decoding, merging, sorting, re-encoding chunks), and applied by
/// [`Store::apply_maintenance`] in one short write transaction. Only
/// maintenance deletes staged bundles and writes chunks, and passes run one
/// at a time, so the snapshot still holds when the work is applied; the
/// apply checks it anyway and refuses work whose rows changed.
#[derive(Debug, Clone, Default)]
pub struct MaintenanceWork {
    plan: Option<RetentionPlan>,
    /// Staged bundles moved into chunks: key and length.
    staged: Vec<((i64, u64), u64)>,
    /// Chunks replaced by compaction or downsampled: key and length.
    deletes: Vec<(ChunkKey, u64)>,
    /// New chunks: series, bucket, encoded chunk.
    inserts: Vec<(u64, i64, Vec<u8>)>,
    /// Windows downsampled from deleted chunks, merged into `AGGREGATES`.
    windows: Vec<(u64, WindowAggregate)>,
    report: MaintenanceReport,
    /// The pass stopped at its budget: another one has work.
    more: bool,
}

impl MaintenanceWork {
    /// Whether the pass stopped at its work budget, so that another pass
    /// right away has more to do (a backlog of settled buckets).
    pub fn has_more(&self) -> bool {
        self.more
    }

    /// Readings' chunks this work touches (staged pieces compacted plus
    /// chunks downsampled).
    pub fn size(&self) -> u64 {
        self.report.compacted_chunks + self.report.downsampled_chunks
    }
}

fn chunks_of(
    table: &impl ReadableTable<ChunkKey, &'static [u8]>,
    sid: u64,
    bucket: i64,
) -> Result<Vec<(ChunkKey, Vec<Reading>, u64)>, StoreError> {
    let mut out = Vec::new();
    for entry in table.range((sid, bucket, 0u64)..=(sid, bucket, u64::MAX))? {
        let (k, v) = entry?;
        let bytes = v.value();
        out.push((
            k.value(),
            chunk::decode(bytes).map_err(corrupt)?,
            bytes.len() as u64,
        ));
    }
    Ok(out)
}

fn delete_chunk(
    txn: &WriteTransaction,
    state: &mut WriterState,
    key: ChunkKey,
    len: u64,
) -> Result<bool, StoreError> {
    let (sid, bucket, cid) = key;
    let gone = txn.open_table(CHUNKS)?.remove(key)?.is_some();
    txn.open_table(CHUNKS_BY_TIME)?.remove((bucket, sid, cid))?;
    state.sub_bytes(len);
    Ok(gone)
}

impl Store {
    /// Runs maintenance passes ([`Store::prepare_maintenance`] then
    /// [`Store::apply_maintenance`]) until one leaves nothing more to do,
    /// and returns their summed report. On `Err` the failed pass changed
    /// nothing and `state` is rolled back to before it.
    pub fn maintain(
        &self,
        state: &mut WriterState,
        plan: &RetentionPlan,
    ) -> Result<MaintenanceReport, StoreError> {
        let mut total = MaintenanceReport::default();
        loop {
            let work = self.prepare_maintenance(plan)?;
            let more = work.has_more();
            total.add(&self.apply_maintenance(state, work)?);
            if !more {
                return Ok(total);
            }
        }
    }

    /// Computes compaction and downsampling of one pass (at most
    /// [`MAX_WORK`] staged pieces and chunks) from a read snapshot. Any
    /// thread may call it; the writer is not blocked meanwhile.
    pub fn prepare_maintenance(&self, plan: &RetentionPlan) -> Result<MaintenanceWork, StoreError> {
        let txn = self.db().begin_read()?;
        let mut work = MaintenanceWork {
            plan: Some(*plan),
            ..MaintenanceWork::default()
        };
        let mut budget = MAX_WORK;
        compact(&txn, plan, &mut budget, &mut work)?;
        downsample(&txn, plan, &mut budget, &mut work)?;
        // Buckets compacted now may be old enough to downsample: that is
        // the next pass's (its snapshot has the chunks this one writes).
        work.more = budget == 0 || (!work.staged.is_empty() && plan.raw_before.is_some());
        Ok(work)
    }

    /// Applies prepared work in one durable transaction, then expires
    /// aggregates and evicts chunks over the size limit. Refuses work whose
    /// rows changed since it was prepared (nothing is applied; the next pass
    /// prepares afresh). On `Err` nothing changed and `state` is rolled back.
    pub fn apply_maintenance(
        &self,
        state: &mut WriterState,
        work: MaintenanceWork,
    ) -> Result<MaintenanceReport, StoreError> {
        let Some(plan) = work.plan else {
            return Ok(MaintenanceReport::default());
        };
        state.begin();
        let result = (|| {
            let mut txn = self.db().begin_write()?;
            txn.set_durability(redb::Durability::Immediate)?;
            let mut report = work.report;
            apply(&txn, state, work)?;
            expire_aggregates(&txn, state, &plan, &mut report)?;
            let mut evictions = MAX_WORK;
            evict(&txn, state, &plan, &mut evictions, &mut report)?;
            state.save_counters(&txn)?;
            txn.commit()?;
            Ok(report)
        })();
        if result.is_err() {
            state.rollback();
        }
        result
    }
}

fn stale(what: &str) -> StoreError {
    StoreError::Stale(format!(
        "{what} changed since the maintenance pass was prepared"
    ))
}

fn apply(
    txn: &WriteTransaction,
    state: &mut WriterState,
    work: MaintenanceWork,
) -> Result<(), StoreError> {
    {
        let mut staged = txn.open_table(STAGED)?;
        for (key, len) in work.staged {
            if staged.remove(key)?.is_none() {
                return Err(stale("a staged bundle"));
            }
            state.sub_bytes(len);
        }
    }
    for (key, len) in work.deletes {
        if !delete_chunk(txn, state, key, len)? {
            return Err(stale("a chunk"));
        }
    }
    {
        let mut chunks = txn.open_table(CHUNKS)?;
        let mut by_time = txn.open_table(CHUNKS_BY_TIME)?;
        for (sid, bucket, bytes) in work.inserts {
            let cid = state.next_chunk_id();
            chunks.insert((sid, bucket, cid), bytes.as_slice())?;
            by_time.insert((bucket, sid, cid), bytes.len() as u32)?;
            state.add_bytes(bytes.len() as u64);
        }
    }
    let mut aggs = txn.open_table(AGGREGATES)?;
    for (sid, w) in work.windows {
        // Agents' windows are written by ingest meanwhile: merged here.
        let key = (sid, w.start_ns, w.len_ns);
        let merged = match aggs.get(key)? {
            Some(old) => {
                let mut acc = chunk::decode_aggregate(old.value()).map_err(corrupt)?;
                chunk::merge_aggregate(&mut acc, &w);
                acc
            }
            None => w,
        };
        aggs.insert(key, chunk::encode_aggregate(&merged).as_slice())?;
    }
    Ok(())
}

/// Moves settled staged bundles, oldest bucket first, into per-series
/// chunks: each series' new pieces are merged with the bucket's chunks that
/// are not full or not before them, sorted, and re-encoded in chunks of at
/// most [`chunk::MAX_CHUNK_READINGS`].
fn compact(
    txn: &ReadTransaction,
    plan: &RetentionPlan,
    budget: &mut usize,
    work: &mut MaintenanceWork,
) -> Result<(), StoreError> {
    let end = plan.compact_before.saturating_sub(CHUNK_SPAN_NS);
    let mut pieces = 0usize;
    let mut fresh: BTreeMap<(i64, u64), Vec<Reading>> = BTreeMap::new();
    {
        let staged = txn.open_table(STAGED)?;
        for entry in staged.range((i64::MIN, 0u64)..(end.saturating_add(1), 0u64))? {
            if pieces >= *budget {
                break;
            }
            let (key, bytes) = entry?;
            let bytes = bytes.value();
            let bucket = key.value().0;
            for (sid, piece) in bundle::decode(bytes).map_err(corrupt)? {
                fresh
                    .entry((bucket, sid))
                    .or_default()
                    .extend(chunk::decode(piece).map_err(corrupt)?);
                pieces += 1;
            }
            work.staged.push((key.value(), bytes.len() as u64));
        }
    }
    let chunks = txn.open_table(CHUNKS)?;
    for ((bucket, sid), mut readings) in fresh {
        let first_new = readings.iter().map(|r| r.ts_ns).min().unwrap_or(i64::MAX);
        for (key, rs, len) in chunks_of(&chunks, sid, bucket)? {
            let full_and_before = rs.len() >= chunk::MAX_CHUNK_READINGS
                && rs.last().is_some_and(|r| r.ts_ns <= first_new);
            if !full_and_before {
                readings.extend(rs);
                work.deletes.push((key, len));
            }
        }
        // Stable: equal timestamps keep their write order.
        readings.sort_by_key(|r| r.ts_ns);
        for (b, block) in chunk::chunks_of_sorted(&readings) {
            work.inserts
                .push((sid, b, chunk::encode_settled(b, &block)));
        }
    }
    work.report.compacted_chunks += pieces as u64;
    *budget = budget.saturating_sub(pieces);
    Ok(())
}

/// The bucket of the oldest staged bundle, if any.
fn oldest_staged(txn: &ReadTransaction) -> Result<Option<i64>, StoreError> {
    Ok(txn.open_table(STAGED)?.first()?.map(|(k, _)| k.value().0))
}

fn downsample(
    txn: &ReadTransaction,
    plan: &RetentionPlan,
    budget: &mut usize,
    work: &mut MaintenanceWork,
) -> Result<(), StoreError> {
    let Some(before) = plan.raw_before else {
        return Ok(());
    };
    // Whole buckets only: (bucket, series) groups whose bucket ended, and
    // whose staged bundles are all compacted (older buckets first). The
    // compaction of this same pass only touches buckets with staged bundles,
    // so the two never touch the same chunks.
    let mut end = before.saturating_sub(CHUNK_SPAN_NS);
    if let Some(staged) = oldest_staged(txn)? {
        end = end.min(staged.saturating_sub(1));
    }
    let groups: Vec<(i64, u64)> = {
        let by_time = txn.open_table(CHUNKS_BY_TIME)?;
        let mut groups: Vec<(i64, u64)> = Vec::new();
        for entry in by_time.range((i64::MIN, 0u64, 0u64)..(end.saturating_add(1), 0u64, 0u64))? {
            let (bucket, sid, _) = entry?.0.value();
            if groups.last() != Some(&(bucket, sid)) {
                if groups.len() >= *budget {
                    break;
                }
                groups.push((bucket, sid));
            }
        }
        groups
    };
    let chunks = txn.open_table(CHUNKS)?;
    for (bucket, sid) in groups {
        let parts = chunks_of(&chunks, sid, bucket)?;
        let mut readings = Vec::new();
        for (key, rs, len) in &parts {
            readings.extend_from_slice(rs);
            work.deletes.push((*key, *len));
        }
        readings.sort_by_key(|r| r.ts_ns);
        for w in chunk::downsample(&readings, plan.downsample_len) {
            work.windows.push((sid, w));
        }
        work.report.downsampled_chunks += parts.len() as u64;
        *budget = budget.saturating_sub(parts.len().max(1));
    }
    Ok(())
}

fn expire_aggregates(
    txn: &WriteTransaction,
    state: &WriterState,
    plan: &RetentionPlan,
    report: &mut MaintenanceReport,
) -> Result<(), StoreError> {
    let Some(before) = plan.aggregates_before else {
        return Ok(());
    };
    let mut aggs = txn.open_table(AGGREGATES)?;
    for sid in 1..=state.max_series_id() {
        let old: Vec<ChunkKey> = aggs
            .range((sid, i64::MIN, 0u64)..(sid, before, 0u64))?
            .map(|e| e.map(|(k, _)| k.value()))
            .collect::<Result<_, _>>()?;
        for key in old {
            aggs.remove(key)?;
            report.aggregates_deleted += 1;
        }
    }
    Ok(())
}

fn evict(
    txn: &WriteTransaction,
    state: &mut WriterState,
    plan: &RetentionPlan,
    budget: &mut usize,
    report: &mut MaintenanceReport,
) -> Result<(), StoreError> {
    let Some(max) = plan.max_bytes else {
        return Ok(());
    };
    while state.chunk_bytes() > max && *budget > 0 {
        let oldest = {
            let by_time = txn.open_table(CHUNKS_BY_TIME)?;
            let first = by_time.first()?;
            first.map(|(k, v)| (k.value(), u64::from(v.value())))
        };
        // A staged bundle of an older bucket goes first.
        let staged = {
            let table = txn.open_table(STAGED)?;
            let first = table.first()?;
            first.map(|(k, v)| (k.value(), v.value().len() as u64))
        };
        let chunk_first = match (&oldest, &staged) {
            (Some(((bucket, _, _), _)), Some(((b, _), _))) => bucket <= b,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        if chunk_first {
            if let Some(((bucket, sid, cid), len)) = oldest {
                delete_chunk(txn, state, (sid, bucket, cid), len)?;
            }
        } else if let Some((key, len)) = staged {
            txn.open_table(STAGED)?.remove(key)?;
            state.sub_bytes(len);
        }
        report.chunks_evicted += 1;
        *budget -= 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
