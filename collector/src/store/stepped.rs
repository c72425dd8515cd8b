//! Raw readings of one series in step windows, for a query with a `step`:
//! from the [`Summary`] a settled chunk carries when the chunk lies wholly
//! inside one step window and the query's range, by decoding the chunk
//! otherwise (it straddles a window edge or the range's, is short, or was
//! written before summaries).
//!
//! Both ways give the same windows bit for bit, because a window is
//! defined per chunk: each chunk's readings in the window (stored order)
//! make one [`Summary`] ([`Summary::add`]), the same function compaction
//! stored the summary with, and the window joins the chunks' summaries in
//! chunk order (then the staged pieces', in write order) with
//! [`Summary::merge`]. So a window's `sum` is the ordered sum of per-chunk
//! sums, whichever way each chunk was read.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use ferry_proto::batch::{Reading, WindowAggregate};
use redb::ReadableTable;

use super::chunk::{self, Summary};
use super::{StoreError, align, bucket_of, corrupt};
use crate::query::{Held, OverBudget, Query, READING_BYTES};

/// How a stepped query read its chunks (for tests and benchmarks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepReads {
    /// Chunks answered by their stored summary.
    pub summarised: u64,
    /// Chunks decoded.
    pub decoded: u64,
}

/// Bytes a step window is counted as while it is built (its sketch's bins
/// are counted when the built windows are: `window_bytes`).
pub(super) const WINDOW_BYTES: u64 = std::mem::size_of::<WindowAggregate>() as u64;

/// The step windows being built for one series, by start.
struct Windows<'h> {
    span: i64,
    by_start: BTreeMap<i64, Summary>,
    held: &'h mut Held,
}

impl Windows<'_> {
    /// Joins `part` (readings of one chunk or piece, all in the window
    /// starting at `start`) into its window, counting a new window.
    fn join(&mut self, start: i64, part: Summary) -> Result<(), OverBudget> {
        match self.by_start.entry(start) {
            Entry::Occupied(mut w) => w.get_mut().merge(&part),
            Entry::Vacant(w) => {
                self.held.take(1, WINDOW_BYTES)?;
                w.insert(part);
            }
        }
        Ok(())
    }

    /// Joins the readings of one chunk or piece that fall in `[from, to)`,
    /// one summary per window they touch (stored order).
    fn fold(&mut self, readings: &[Reading], q: &Query) -> Result<(), OverBudget> {
        let mut run: Option<(i64, Summary)> = None;
        for r in readings {
            if r.ts_ns < q.from_ns || r.ts_ns >= q.to_ns {
                continue;
            }
            let start = align(r.ts_ns, self.span);
            match &mut run {
                Some((s, part)) if *s == start => part.add(r),
                _ => {
                    if let Some((s, part)) = run.take() {
                        self.join(s, part)?;
                    }
                    run = Some((start, Summary::of(r)));
                }
            }
        }
        if let Some((s, part)) = run {
            self.join(s, part)?;
        }
        Ok(())
    }
}

/// The raw readings of series `sid` in `q`'s range as windows of `step`
/// (aligned, in start order, each with a sketch), from its chunks and
/// then `staged` (its staged pieces, filtered to the range and already
/// counted in `held`: given back here). With `summaries` false every
/// chunk is decoded (the reference the summaries are checked against).
/// The windows stay counted in `held`, [`WINDOW_BYTES`] each.
#[allow(clippy::too_many_arguments)]
pub(super) fn raw_windows(
    chunks: &impl ReadableTable<(u64, i64, u64), &'static [u8]>,
    sid: u64,
    q: &Query,
    step: u64,
    staged: Vec<Vec<Reading>>,
    held: &mut Held,
    summaries: bool,
    reads: &mut StepReads,
) -> Result<Vec<WindowAggregate>, StoreError> {
    let over = StoreError::OverBudget;
    let span = i64::try_from(step).unwrap_or(i64::MAX).max(1);
    let mut windows = Windows {
        span,
        by_start: BTreeMap::new(),
        held,
    };
    let lo = (sid, bucket_of(q.from_ns), 0u64);
    let hi = (sid, q.to_ns, 0u64);
    for entry in chunks.range(lo..hi)? {
        let (key, bytes) = entry?;
        let bytes = bytes.value();
        if summaries
            && let Some(s) = chunk::summary(bytes, key.value().1).map_err(corrupt)?
            && s.first_ts >= q.from_ns
            && s.last_ts < q.to_ns
            && align(s.first_ts, span) == align(s.last_ts, span)
        {
            reads.summarised += 1;
            windows.join(align(s.first_ts, span), s).map_err(over)?;
            continue;
        }
        reads.decoded += 1;
        let rs = chunk::decode(bytes).map_err(corrupt)?;
        let n = rs.len();
        windows
            .held
            .take(n, n as u64 * READING_BYTES)
            .map_err(over)?;
        windows.fold(&rs, q).map_err(over)?;
        windows.held.give_back(n, n as u64 * READING_BYTES);
    }
    for piece in staged {
        windows.fold(&piece, q).map_err(over)?;
        let n = piece.len();
        windows.held.give_back(n, n as u64 * READING_BYTES);
    }
    Ok(windows
        .by_start
        .into_iter()
        .map(|(start, s)| s.window(start, step))
        .collect())
}

#[cfg(test)]
mod tests;
