//! Maintenance: compaction of staged bundles into per-series chunks,
//! downsampling of old readings
//! into windows, retention by age and by size. Runs in the writer thread
//! between group commits, each run bounded to [`MAX_WORK`] chunks so that
//! ingest never waits long behind it.

use std::time::Duration;

use ferry_proto::batch::Reading;
use redb::{ReadableTable, WriteTransaction};

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

type ChunkKey = (u64, i64, u64);

fn chunks_of(
    txn: &WriteTransaction,
    sid: u64,
    bucket: i64,
) -> Result<Vec<(ChunkKey, Vec<Reading>, u64)>, StoreError> {
    let table = txn.open_table(CHUNKS)?;
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
) -> Result<(), StoreError> {
    let (sid, bucket, cid) = key;
    txn.open_table(CHUNKS)?.remove(key)?;
    txn.open_table(CHUNKS_BY_TIME)?.remove((bucket, sid, cid))?;
    state.sub_bytes(len);
    Ok(())
}

impl Store {
    /// Runs one bounded maintenance pass in one durable transaction. On
    /// `Err` nothing changed and `state` is rolled back.
    pub fn maintain(
        &self,
        state: &mut WriterState,
        plan: &RetentionPlan,
    ) -> Result<MaintenanceReport, StoreError> {
        state.begin();
        let result = (|| {
            let mut txn = self.db().begin_write()?;
            txn.set_durability(redb::Durability::Immediate)?;
            let mut report = MaintenanceReport::default();
            let mut budget = MAX_WORK;
            compact(&txn, state, plan, &mut budget, &mut report)?;
            downsample(&txn, state, plan, &mut budget, &mut report)?;
            expire_aggregates(&txn, state, plan, &mut report)?;
            evict(&txn, state, plan, &mut budget, &mut report)?;
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

/// Moves settled staged bundles, oldest bucket first, into per-series
/// chunks: each series' new pieces are merged with the bucket's chunks that
/// are not full or not before them, sorted, and re-encoded in chunks of at
/// most [`chunk::MAX_CHUNK_READINGS`].
fn compact(
    txn: &WriteTransaction,
    state: &mut WriterState,
    plan: &RetentionPlan,
    budget: &mut usize,
    report: &mut MaintenanceReport,
) -> Result<(), StoreError> {
    let end = plan.compact_before.saturating_sub(CHUNK_SPAN_NS);
    let mut pieces = 0usize;
    let mut rows: Vec<(i64, u64)> = Vec::new();
    let mut fresh: BTreeMap<(i64, u64), Vec<Reading>> = BTreeMap::new();
    {
        let staged = txn.open_table(STAGED)?;
        for entry in staged.range((i64::MIN, 0u64)..(end.saturating_add(1), 0u64))? {
            if pieces >= *budget {
                break;
            }
            let (key, bytes) = entry?;
            let (bucket, id) = key.value();
            let bytes = bytes.value();
            for (sid, piece) in bundle::decode(bytes).map_err(corrupt)? {
                fresh
                    .entry((bucket, sid))
                    .or_default()
                    .extend(chunk::decode(piece).map_err(corrupt)?);
                pieces += 1;
            }
            rows.push((bucket, id));
            state.sub_bytes(bytes.len() as u64);
        }
    }
    {
        let mut staged = txn.open_table(STAGED)?;
        for key in &rows {
            staged.remove(*key)?;
        }
    }
    for ((bucket, sid), mut readings) in fresh {
        let first_new = readings.iter().map(|r| r.ts_ns).min().unwrap_or(i64::MAX);
        for (key, rs, len) in chunks_of(txn, sid, bucket)? {
            let full_and_before = rs.len() >= chunk::MAX_CHUNK_READINGS
                && rs.last().is_some_and(|r| r.ts_ns <= first_new);
            if !full_and_before {
                readings.extend(rs);
                delete_chunk(txn, state, key, len)?;
            }
        }
        // Stable: equal timestamps keep their write order.
        readings.sort_by_key(|r| r.ts_ns);
        for (b, block) in chunk::chunks_of_sorted(&readings) {
            let bytes = chunk::encode(&block);
            let cid = state.next_chunk_id();
            txn.open_table(CHUNKS)?
                .insert((sid, b, cid), bytes.as_slice())?;
            txn.open_table(CHUNKS_BY_TIME)?
                .insert((b, sid, cid), bytes.len() as u32)?;
            state.add_bytes(bytes.len() as u64);
        }
    }
    report.compacted_chunks += pieces as u64;
    *budget = budget.saturating_sub(pieces);
    Ok(())
}

/// The bucket of the oldest staged bundle, if any.
fn oldest_staged(txn: &WriteTransaction) -> Result<Option<i64>, StoreError> {
    Ok(txn.open_table(STAGED)?.first()?.map(|(k, _)| k.value().0))
}

fn downsample(
    txn: &WriteTransaction,
    state: &mut WriterState,
    plan: &RetentionPlan,
    budget: &mut usize,
    report: &mut MaintenanceReport,
) -> Result<(), StoreError> {
    let Some(before) = plan.raw_before else {
        return Ok(());
    };
    // Whole buckets only: (bucket, series) groups whose bucket ended, and
    // whose staged bundles are all compacted (older buckets first).
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
    for (bucket, sid) in groups {
        let parts = chunks_of(txn, sid, bucket)?;
        let mut readings = Vec::new();
        for (key, rs, len) in parts.iter().cloned() {
            readings.extend(rs);
            delete_chunk(txn, state, key, len)?;
        }
        readings.sort_by_key(|r| r.ts_ns);
        let mut aggs = txn.open_table(AGGREGATES)?;
        for w in chunk::downsample(&readings, plan.downsample_len) {
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
        report.downsampled_chunks += parts.len() as u64;
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
mod tests {
    use super::*;

    #[test]
    fn plan_follows_the_clock() {
        let cfg = StorageConfig {
            raw_retention: Duration::from_secs(10),
            downsample_window: Duration::from_secs(2),
            aggregate_retention: Duration::ZERO,
            max_bytes: 5,
            ..StorageConfig::default()
        };
        let now = 1_000_000_000_000;
        let plan = RetentionPlan::at(now, &cfg);
        assert_eq!(plan.raw_before, Some(now - 10_000_000_000));
        assert_eq!(plan.downsample_len, 2_000_000_000);
        assert_eq!(plan.aggregates_before, None);
        assert_eq!(plan.max_bytes, Some(5));
        assert_eq!(plan.compact_before, now - COMPACT_SETTLE_NS);
    }
}
