//! Compact batches (revision 4): series referenced by journal-scoped ids,
//! readings in columns.
//!
//! A [`Batch`] names its series by key, once per batch: at a few hundred
//! readings per batch, one reading per series, the keys are most of its
//! bytes. A [`CompactBatch`] names them by a **series id** that the agent's
//! journal assigned to the key for good (within the journal's epoch), and
//! the agent tells the collector what an id means in [`Definitions`], once
//! per session, on the batch stream ahead of the first batch that uses it.
//! The batch itself stays as it was sealed, so the journal keeps it as
//! sent and any session can send it again: only the definitions depend on
//! the session. [`CompactBatch::resolve`] turns a compact batch back into
//! a self-contained [`Batch`], given the session's ids.
//!
//! Readings travel in [`Columns`]: the batch's series in ascending id order
//! (ids delta-coded), how many readings each has, the timestamps as
//! per-series delta-of-delta runs whose starts are delta-coded across
//! series, and the values as one [`Values`] column. Regular data becomes
//! runs of small repeated integers, which zstd packs to a few bits.
//!
//! See docs/protocol.md, "Compact batches".

use alloc::vec::Vec;

use crate::batch::{
    Batch, BatchError, BlockError, HealthRecord, MAX_BATCH_AGGREGATES, MAX_BATCH_HEALTH,
    MAX_BATCH_READINGS, MAX_BATCH_SERIES, Reading, ReadingBlock, Values, WindowAggregate,
};
use crate::series::{SeriesError, SeriesKey};
use crate::wire_struct;

pub mod refs;
pub use refs::References;

/// Most definitions in one [`Definitions`] message.
pub const MAX_DEFINITIONS: usize = 65_536;
/// Default (and largest recommended) number of series ids a collector keeps
/// per session (`Welcome.max_series_ids`).
pub const DEFAULT_MAX_SERIES_IDS: u32 = 65_536;

wire_struct! {
    /// What series ids mean: `ids[i]` names `keys[i]`, for the rest of the
    /// session. Sent on a batch stream before the [`CompactBatch`] frame.
    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct Definitions {
        /// Series ids, each once.
        pub ids: Vec<u32>,
        /// Their keys, as many as `ids`.
        pub keys: Vec<SeriesKey>,
    }
}

wire_struct! {
    /// Raw readings of a compact batch, column by column.
    #[derive(Debug, Clone, PartialEq, Default)]
    pub struct Columns {
        /// The batch's series in strictly ascending id order: the first id,
        /// then each id minus the one before it (so every later entry ≥ 1).
        pub ids: Vec<u32>,
        /// Readings of each series, each ≥ 1; as many as `ids`.
        pub counts: Vec<u32>,
        /// Each series' first timestamp: the first absolute (ns since the
        /// Unix epoch), then each minus the previous series' first.
        pub starts: Vec<i64>,
        /// Per series, its `count − 1` timestamp delta-of-deltas as in a
        /// [`ReadingBlock`], concatenated in series order.
        pub dods: Vec<i64>,
        /// Every reading's value, series after series; a decimal column's
        /// deltas chain across series boundaries.
        pub values: Values,
    }
}

wire_struct! {
    /// A batch whose series are journal-scoped ids (frame type 8).
    #[derive(Debug, Clone, PartialEq, Default)]
    pub struct CompactBatch {
        /// As [`Batch::seq`].
        pub seq: u64,
        /// As [`Batch::created_ns`].
        pub created_ns: i64,
        /// The journal epoch `seq` and the ids count in: the session's
        /// (`Hello.epoch`), or 0 for it.
        pub epoch: u64,
        /// As [`Batch::resolved_below`].
        pub resolved_below: u64,
        /// Raw readings.
        pub readings: Columns,
        /// Window aggregates; their `series` is a series id.
        pub aggregates: Vec<WindowAggregate>,
        /// Health counters.
        pub health: Vec<HealthRecord>,
    }
    appended {
        /// Revision 5: the reference generation the values are coded
        /// against ([`References`]); 0: none (revision 4's coding).
        pub ref_base: u64,
        /// Revision 5: the reference generation this batch sets (each of
        /// its series' last value becomes that series' reference); 0: none.
        pub ref_sets: u64,
    }
}

/// What is wrong with a compact batch or definitions.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CompactError {
    /// A count is over its limit.
    #[error("{what}: {count} exceeds the limit of {limit}")]
    TooMany {
        /// What was counted.
        what: &'static str,
        /// How many there were.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// Two columns that must have the same length do not.
    #[error("{what}: {got}, expected {expected}")]
    Length {
        /// Which column.
        what: &'static str,
        /// Its length.
        got: usize,
        /// What the other columns say.
        expected: usize,
    },
    /// Ids are not strictly ascending (a delta of 0) or overflow a u32.
    #[error("series id column: entry {at} is not above the previous id")]
    IdOrder {
        /// Which entry.
        at: usize,
    },
    /// A series has no readings.
    #[error("series id {id}: count is zero")]
    EmptySeries {
        /// The id.
        id: u32,
    },
    /// A value cannot be reconstructed.
    #[error("values: {0}")]
    Values(BlockError),
    /// An id the session has no definition for: the agent must send its
    /// definition again (transient).
    #[error("series id {0} is not defined in this session")]
    UnknownId(u32),
    /// The same id is defined twice with different keys.
    #[error("series id {id} is defined twice")]
    Redefined {
        /// The id.
        id: u32,
    },
    /// A defined key breaks the series rules.
    #[error("definition of series id {id}: {source}")]
    Series {
        /// The id.
        id: u32,
        /// The rule broken.
        source: SeriesError,
    },
    /// Revision 5: a reference generation the session does not hold (any
    /// more): the agent must re-establish its references (transient).
    #[error("reference generation {0} is not held in this session")]
    UnknownReference(u64),
    /// Revision 5: a batch sets a reference generation that is not above
    /// every generation the session has seen (generations are never
    /// reused in a session).
    #[error("reference generation {sets} is not above the session's latest, {latest}")]
    Generation {
        /// The generation the batch sets.
        sets: u64,
        /// The session's latest.
        latest: u64,
    },
    /// The resolved batch breaks a rule of [`Batch::validate`].
    #[error(transparent)]
    Batch(#[from] BatchError),
}

impl Definitions {
    /// Checks the limits, that the columns pair up, that no id repeats
    /// and that every key follows the series rules.
    pub fn validate(&self) -> Result<(), CompactError> {
        if self.ids.len() > MAX_DEFINITIONS {
            return Err(CompactError::TooMany {
                what: "definitions",
                count: self.ids.len(),
                limit: MAX_DEFINITIONS,
            });
        }
        if self.keys.len() != self.ids.len() {
            return Err(CompactError::Length {
                what: "definition keys",
                got: self.keys.len(),
                expected: self.ids.len(),
            });
        }
        let mut sorted: Vec<u32> = self.ids.clone();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(CompactError::Redefined { id: w[0] });
        }
        for (&id, key) in self.ids.iter().zip(&self.keys) {
            key.validate()
                .map_err(|source| CompactError::Series { id, source })?;
        }
        Ok(())
    }
}

impl Columns {
    /// Encodes runs of readings: `(series id, readings)`, ids strictly
    /// ascending, each run non-empty and in the order it is to be sent.
    pub fn encode<'a>(runs: impl IntoIterator<Item = (u32, &'a [Reading])>) -> Columns {
        Self::encode_with(runs, |_| None)
    }

    /// As [`Columns::encode`], coding each series' values against its
    /// reference value `refs(id)` where the decimal scale allows
    /// (revision 5: docs/protocol.md, "Value references").
    pub fn encode_with<'a>(
        runs: impl IntoIterator<Item = (u32, &'a [Reading])>,
        mut refs: impl FnMut(u32) -> Option<f64>,
    ) -> Columns {
        let mut out = Columns::default();
        let mut values = Vec::new();
        let mut bases = Vec::new();
        let mut prev_id = 0u32;
        let mut prev_start = 0i64;
        for (n, (id, readings)) in runs.into_iter().enumerate() {
            let Some(first) = readings.first() else {
                continue;
            };
            out.ids
                .push(if n == 0 { id } else { id.wrapping_sub(prev_id) });
            prev_id = id;
            out.counts.push(readings.len() as u32);
            out.starts.push(if n == 0 {
                first.ts_ns
            } else {
                first.ts_ns.wrapping_sub(prev_start)
            });
            prev_start = first.ts_ns;
            let block = ReadingBlock::encode(0, readings);
            out.dods.extend_from_slice(&block.dods);
            bases.push((values.len(), refs(id)));
            values.extend(readings.iter().map(|r| r.value));
        }
        out.values = refs::encode_values(&values, &bases);
        out
    }

    /// Raw readings in the columns.
    pub fn reading_count(&self) -> usize {
        self.values.len()
    }

    /// Expands the columns, calling `f` with each series id and its
    /// readings, in order. Checks every rule of the columns; never panics.
    pub fn for_each_run(
        &self,
        f: impl FnMut(u32, &[Reading]) -> Result<(), CompactError>,
    ) -> Result<(), CompactError> {
        self.for_each_run_with(|_| None, f)
    }

    /// As [`Columns::for_each_run`], with each series' values coded
    /// against its reference value `refs(id)` ([`Columns::encode_with`]).
    pub fn for_each_run_with(
        &self,
        mut refs: impl FnMut(u32) -> Option<f64>,
        mut f: impl FnMut(u32, &[Reading]) -> Result<(), CompactError>,
    ) -> Result<(), CompactError> {
        let series = self.ids.len();
        if series > MAX_BATCH_SERIES {
            return Err(CompactError::TooMany {
                what: "series",
                count: series,
                limit: MAX_BATCH_SERIES,
            });
        }
        if self.values.len() > MAX_BATCH_READINGS {
            return Err(CompactError::TooMany {
                what: "readings",
                count: self.values.len(),
                limit: MAX_BATCH_READINGS,
            });
        }
        for (what, got) in [("counts", self.counts.len()), ("starts", self.starts.len())] {
            if got != series {
                return Err(CompactError::Length {
                    what,
                    got,
                    expected: series,
                });
            }
        }
        let mut total = 0usize;
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                return Err(CompactError::EmptySeries { id: self.ids[i] });
            }
            total = total.saturating_add(c as usize);
        }
        if self.values.len() != total {
            return Err(CompactError::Length {
                what: "values",
                got: self.values.len(),
                expected: total,
            });
        }
        if self.dods.len() != total - series {
            return Err(CompactError::Length {
                what: "dods",
                got: self.dods.len(),
                expected: total - series,
            });
        }
        let values = ValueCursor::new(&self.values)?;
        let mut values = values;
        let mut id = 0u32;
        let mut start = 0i64;
        let mut dods = self.dods.iter();
        let mut run: Vec<Reading> = Vec::new();
        for i in 0..series {
            id = if i == 0 {
                self.ids[0]
            } else {
                match self.ids[i] {
                    0 => return Err(CompactError::IdOrder { at: i }),
                    d => id.checked_add(d).ok_or(CompactError::IdOrder { at: i })?,
                }
            };
            start = if i == 0 {
                self.starts[0]
            } else {
                start.wrapping_add(self.starts[i])
            };
            run.clear();
            values.start(refs(id));
            let mut t = start;
            let mut d = 0i64;
            for k in 0..self.counts[i] {
                if k > 0 {
                    // Lengths were checked above: a dod is there.
                    d = d.wrapping_add(dods.next().copied().unwrap_or(0));
                    t = t.wrapping_add(d);
                }
                run.push(Reading {
                    ts_ns: t,
                    value: values.next()?,
                });
            }
            f(id, &run)?;
        }
        Ok(())
    }
}

/// Reads a [`Values`] column one value at a time.
struct ValueCursor<'a> {
    values: &'a Values,
    at: usize,
    acc: i64,
    pow: f64,
}

impl ValueCursor<'_> {
    /// A series starts: a decimal column's sum restarts at its reference
    /// value when that has an exact integer at the column's scale.
    fn start(&mut self, reference: Option<f64>) {
        if let (Values::Decimal(d), Some(r)) = (self.values, reference)
            && let Some(n) = crate::batch::scaled_checked(r, d.scale)
        {
            self.acc = n;
        }
    }
}

impl<'a> ValueCursor<'a> {
    fn new(values: &'a Values) -> Result<Self, CompactError> {
        const POW10: [f64; 10] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];
        let pow =
            match values {
                Values::Float(_) => 1.0,
                Values::Decimal(d) => *POW10.get(d.scale as usize).ok_or(CompactError::Values(
                    BlockError::BadScale { scale: d.scale },
                ))?,
            };
        Ok(Self {
            values,
            at: 0,
            acc: 0,
            pow,
        })
    }

    fn next(&mut self) -> Result<f64, CompactError> {
        let at = self.at;
        self.at += 1;
        let overflow = CompactError::Values(BlockError::Overflow { at });
        match self.values {
            Values::Float(v) => v.get(at).copied().ok_or(overflow),
            Values::Decimal(d) => {
                let delta = d.deltas.get(at).ok_or(overflow.clone())?;
                self.acc = self.acc.checked_add(*delta).ok_or(overflow)?;
                Ok(self.acc as f64 / self.pow)
            }
        }
    }
}

impl CompactBatch {
    /// Raw readings.
    pub fn reading_count(&self) -> usize {
        self.readings.reading_count()
    }

    /// Every series id the batch references (readings and aggregates),
    /// ascending, each once; checks the columns on the way.
    pub fn series_ids(&self) -> Result<Vec<u32>, CompactError> {
        let mut ids = Vec::with_capacity(self.readings.ids.len() + self.aggregates.len());
        self.readings.for_each_run(|id, _| {
            ids.push(id);
            Ok(())
        })?;
        ids.extend(self.aggregates.iter().map(|a| a.series));
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// The self-contained [`Batch`] this compact batch stands for, with
    /// `key` giving each id's definition (`None`: not defined, which is
    /// [`CompactError::UnknownId`]). The result is validated as any batch
    /// is ([`Batch::validate`]), so a collector stores it as it stores a
    /// [`Batch`], and a cluster publishes it as one.
    pub fn resolve(
        &self,
        key: impl FnMut(u32) -> Option<SeriesKey>,
    ) -> Result<Batch, CompactError> {
        if self.ref_base != 0 {
            return Err(CompactError::UnknownReference(self.ref_base));
        }
        self.resolve_with(key, |_| None, |_, _| {})
    }

    /// As [`CompactBatch::resolve`], with `refs(id)` the reference value
    /// the batch's `ref_base` gives series `id`, and `last` called with
    /// each series' last reading (its reference if the batch sets a
    /// generation). [`References::resolve`] is the checked way in.
    pub fn resolve_with(
        &self,
        mut key: impl FnMut(u32) -> Option<SeriesKey>,
        refs: impl FnMut(u32) -> Option<f64>,
        mut last: impl FnMut(u32, f64),
    ) -> Result<Batch, CompactError> {
        if self.aggregates.len() > MAX_BATCH_AGGREGATES {
            return Err(CompactError::TooMany {
                what: "aggregates",
                count: self.aggregates.len(),
                limit: MAX_BATCH_AGGREGATES,
            });
        }
        if self.health.len() > MAX_BATCH_HEALTH {
            return Err(CompactError::TooMany {
                what: "health records",
                count: self.health.len(),
                limit: MAX_BATCH_HEALTH,
            });
        }
        let mut batch = Batch {
            seq: self.seq,
            created_ns: self.created_ns,
            epoch: self.epoch,
            resolved_below: self.resolved_below,
            health: self.health.clone(),
            ..Batch::default()
        };
        // Series ids → dictionary indices, in order of first reference.
        let mut index: alloc::collections::BTreeMap<u32, u32> = Default::default();
        let mut intern = |id: u32, series: &mut Vec<SeriesKey>| -> Result<u32, CompactError> {
            if let Some(&i) = index.get(&id) {
                return Ok(i);
            }
            let k = key(id).ok_or(CompactError::UnknownId(id))?;
            let i = series.len() as u32;
            series.push(k);
            index.insert(id, i);
            Ok(i)
        };
        let mut blocks = Vec::with_capacity(self.readings.ids.len());
        self.readings.for_each_run_with(refs, |id, run| {
            let i = intern(id, &mut batch.series)?;
            if let Some(r) = run.last() {
                last(id, r.value);
            }
            blocks.push(ReadingBlock::encode(i, run));
            Ok(())
        })?;
        batch.blocks = blocks;
        for a in &self.aggregates {
            let mut a = a.clone();
            a.series = intern(a.series, &mut batch.series)?;
            batch.aggregates.push(a);
        }
        batch.validate()?;
        Ok(batch)
    }

    /// Packs a self-contained batch whose dictionary index `i` has the
    /// series id `ids[i]`: the inverse of [`CompactBatch::resolve`] (the
    /// agent's encoder; series ids must be distinct).
    pub fn from_batch(batch: &Batch, ids: &[u32]) -> Result<CompactBatch, CompactError> {
        Self::from_batch_with(batch, ids, |_| None)
    }

    /// As [`CompactBatch::from_batch`], coding each series' values
    /// against `refs(id)` ([`Columns::encode_with`]); the caller sets
    /// `ref_base` (and `ref_sets`) to the generation `refs` is.
    pub fn from_batch_with(
        batch: &Batch,
        ids: &[u32],
        refs: impl FnMut(u32) -> Option<f64>,
    ) -> Result<CompactBatch, CompactError> {
        if ids.len() != batch.series.len() {
            return Err(CompactError::Length {
                what: "series ids",
                got: ids.len(),
                expected: batch.series.len(),
            });
        }
        let id_of = |i: u32| -> Result<u32, CompactError> {
            ids.get(i as usize)
                .copied()
                .ok_or(CompactError::Batch(BatchError::UnknownSeries {
                    what: "block",
                    index: 0,
                    series: i,
                    len: ids.len(),
                }))
        };
        let mut runs: alloc::collections::BTreeMap<u32, Vec<Reading>> = Default::default();
        for (index, b) in batch.blocks.iter().enumerate() {
            let readings = b
                .readings()
                .map_err(|source| BatchError::Block { index, source })?;
            runs.entry(id_of(b.series)?).or_default().extend(readings);
        }
        let mut aggregates = batch.aggregates.clone();
        for a in &mut aggregates {
            a.series = id_of(a.series)?;
        }
        Ok(CompactBatch {
            seq: batch.seq,
            created_ns: batch.created_ns,
            epoch: batch.epoch,
            resolved_below: batch.resolved_below,
            readings: Columns::encode_with(runs.iter().map(|(&id, r)| (id, r.as_slice())), refs),
            aggregates,
            health: batch.health.clone(),
            ref_base: 0,
            ref_sets: 0,
        })
    }
}

#[cfg(test)]
mod tests;
