//! Reads by series id for the Prometheus query API: the series dictionary,
//! the data of chosen series in a time range (bounded before it is
//! allocated), and which series have data in a range without reading it.

use std::collections::{HashMap, HashSet};

use ferry_proto::batch::{Reading, WindowAggregate};
use ferry_proto::codec;
use ferry_proto::series::SeriesKey;
use redb::{ReadableDatabase, ReadableTable};

use super::{
    AGGREGATES, CHUNKS, SERIES, STAGED, Store, StoreError, bucket_of, bundle, chunk, corrupt,
};

/// What to read of one series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    /// Series id.
    pub id: u64,
    /// Its raw readings.
    pub raw: bool,
    /// Its window aggregates.
    pub windows: bool,
}

/// The data of one series in a range.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeriesData {
    /// Raw readings with `from <= ts <= to`, in time order.
    pub readings: Vec<Reading>,
    /// Windows ending in `[from, to]` (starting at most `margin` before
    /// `from`), in start order.
    pub windows: Vec<WindowAggregate>,
}

/// What a series has in a range, as far as the store can tell without
/// decoding its data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Presence {
    /// Raw readings in an hour bucket that overlaps the range.
    pub raw: bool,
    /// Windows starting in `[from - margin, to]`.
    pub windows: bool,
    /// The first of them carries a quantile sketch.
    pub sketch: bool,
}

impl Store {
    /// Every series key with its id, in id order.
    pub fn series_keys(&self) -> Result<Vec<(u64, SeriesKey)>, StoreError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(SERIES)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (id, bytes) = entry?;
            let key: SeriesKey = codec::from_bytes("SeriesKey", bytes.value()).map_err(corrupt)?;
            out.push((id.value(), key));
        }
        Ok(out)
    }

    /// Reads the raw readings and windows of `wants` in `[from_ns, to_ns]`
    /// (both inclusive; windows by their end, starting at most
    /// `margin_ns` before `from_ns`). Fails with [`StoreError::OverBudget`]
    /// as soon as the readings and windows decoded (before they are
    /// filtered to the range: what is allocated) pass `limits.max_points`
    /// or `limits.max_bytes`.
    pub fn read_series(
        &self,
        wants: &[Want],
        from_ns: i64,
        to_ns: i64,
        margin_ns: i64,
        limits: &crate::query::QueryLimits,
    ) -> Result<HashMap<u64, SeriesData>, StoreError> {
        use crate::query::{Held, READING_BYTES, window_bytes};
        let txn = self.db().begin_read()?;
        let chunks = txn.open_table(CHUNKS)?;
        let aggs = txn.open_table(AGGREGATES)?;
        let mut held = Held::new(*limits);
        let mut take = |n: usize, bytes: u64| -> Result<(), StoreError> {
            held.take(n, bytes).map_err(StoreError::OverBudget)
        };
        let mut out: HashMap<u64, SeriesData> = HashMap::new();
        let raw: HashSet<u64> = wants.iter().filter(|w| w.raw).map(|w| w.id).collect();
        if !raw.is_empty() {
            let staged = txn.open_table(STAGED)?;
            for entry in staged.range((bucket_of(from_ns), 0u64)..=(to_ns, u64::MAX))? {
                let (_, bytes) = entry?;
                for (sid, piece) in bundle::decode(bytes.value()).map_err(corrupt)? {
                    if !raw.contains(&sid) {
                        continue;
                    }
                    let decoded = chunk::decode(piece).map_err(corrupt)?;
                    take(decoded.len(), decoded.len() as u64 * READING_BYTES)?;
                    let rs: Vec<Reading> = decoded
                        .into_iter()
                        .filter(|r| r.ts_ns >= from_ns && r.ts_ns <= to_ns)
                        .collect();
                    out.entry(sid).or_default().readings.extend(rs);
                }
            }
        }
        for w in wants {
            let data = out.entry(w.id).or_default();
            if w.raw {
                let mut rs = Vec::new();
                for entry in
                    chunks.range((w.id, bucket_of(from_ns), 0u64)..=(w.id, to_ns, u64::MAX))?
                {
                    let (_, bytes) = entry?;
                    let decoded = chunk::decode(bytes.value()).map_err(corrupt)?;
                    take(decoded.len(), decoded.len() as u64 * READING_BYTES)?;
                    let part: Vec<Reading> = decoded
                        .into_iter()
                        .filter(|r| r.ts_ns >= from_ns && r.ts_ns <= to_ns)
                        .collect();
                    rs.extend(part);
                }
                // Staged readings were written after every chunk.
                rs.append(&mut data.readings);
                rs.sort_by_key(|r| r.ts_ns);
                data.readings = rs;
            }
            if w.windows {
                let lo = (w.id, from_ns.saturating_sub(margin_ns), 0u64);
                for entry in aggs.range(lo..=(w.id, to_ns, u64::MAX))? {
                    let (_, bytes) = entry?;
                    let a = chunk::decode_aggregate(bytes.value()).map_err(corrupt)?;
                    let end = a.start_ns.saturating_add_unsigned(a.len_ns);
                    if end >= from_ns && end <= to_ns {
                        take(1, window_bytes(&a))?;
                        data.windows.push(a);
                    }
                }
            }
        }
        Ok(out)
    }

    /// For each of `ids`, what it has in `[from_ns, to_ns]` (see
    /// [`Presence`]), reading indexes and bundle directories only.
    pub fn presence(
        &self,
        ids: &[u64],
        from_ns: i64,
        to_ns: i64,
        margin_ns: i64,
    ) -> Result<HashMap<u64, Presence>, StoreError> {
        let txn = self.db().begin_read()?;
        let chunks = txn.open_table(CHUNKS)?;
        let aggs = txn.open_table(AGGREGATES)?;
        let staged = txn.open_table(STAGED)?;
        let wanted: HashSet<u64> = ids.iter().copied().collect();
        let mut in_staged = HashSet::new();
        for entry in staged.range((bucket_of(from_ns), 0u64)..=(to_ns, u64::MAX))? {
            let (_, bytes) = entry?;
            for (sid, _) in bundle::decode(bytes.value()).map_err(corrupt)? {
                if wanted.contains(&sid) {
                    in_staged.insert(sid);
                }
            }
        }
        let mut out = HashMap::new();
        for &id in ids {
            let raw = in_staged.contains(&id)
                || chunks
                    .range((id, bucket_of(from_ns), 0u64)..=(id, to_ns, u64::MAX))?
                    .next()
                    .transpose()?
                    .is_some();
            let lo = (id, from_ns.saturating_sub(margin_ns), 0u64);
            let first = aggs.range(lo..=(id, to_ns, u64::MAX))?.next().transpose()?;
            let (windows, sketch) = match first {
                Some((_, bytes)) => {
                    let a = chunk::decode_aggregate(bytes.value()).map_err(corrupt)?;
                    (true, a.sketch.is_some())
                }
                None => (false, false),
            };
            out.insert(
                id,
                Presence {
                    raw,
                    windows,
                    sketch,
                },
            );
        }
        Ok(out)
    }

    /// For each of `ids`, the time of its newest reading or window end,
    /// ns (series without data are left out). Reads the newest staged
    /// bundles until every series is found there or they run out, then
    /// one chunk and one window per series.
    pub fn last_seen(&self, ids: &[u64]) -> Result<HashMap<u64, i64>, StoreError> {
        let txn = self.db().begin_read()?;
        let chunks = txn.open_table(CHUNKS)?;
        let aggs = txn.open_table(AGGREGATES)?;
        let staged = txn.open_table(STAGED)?;
        let mut out: HashMap<u64, i64> = HashMap::new();
        let wanted: HashSet<u64> = ids.iter().copied().collect();
        let newest = |rs: &[Reading]| rs.iter().map(|r| r.ts_ns).max();
        for entry in staged.iter()?.rev() {
            if out.len() == wanted.len() {
                break;
            }
            let (_, bytes) = entry?;
            for (sid, piece) in bundle::decode(bytes.value()).map_err(corrupt)? {
                if wanted.contains(&sid)
                    && !out.contains_key(&sid)
                    && let Some(t) = newest(&chunk::decode(piece).map_err(corrupt)?)
                {
                    out.insert(sid, t);
                }
            }
        }
        for &id in ids {
            let mut best = out.get(&id).copied();
            if best.is_none()
                && let Some(entry) = chunks
                    .range((id, i64::MIN, 0u64)..=(id, i64::MAX, u64::MAX))?
                    .next_back()
            {
                let (_, bytes) = entry?;
                best = newest(&chunk::decode(bytes.value()).map_err(corrupt)?);
            }
            if let Some(entry) = aggs
                .range((id, i64::MIN, 0u64)..=(id, i64::MAX, u64::MAX))?
                .next_back()
            {
                let (_, bytes) = entry?;
                let a = chunk::decode_aggregate(bytes.value()).map_err(corrupt)?;
                let end = a.start_ns.saturating_add_unsigned(a.len_ns);
                best = Some(best.map_or(end, |b| b.max(end)));
            }
            if let Some(t) = best {
                out.insert(id, t);
            }
        }
        Ok(out)
    }
}
