//! Value references (revision 5): compact batches whose values are coded
//! against each series' value in an earlier batch of the session.
//!
//! In an eager batch each series has about one reading, so revision 4's
//! decimal column codes each value against *another series'* value: most
//! of a compact batch's bytes. Here a batch may name a **reference
//! generation** (`CompactBatch.ref_base`): each series' values then start
//! from that series' **reference value**, so a slowly moving series costs
//! a small delta. A batch may also **set** a generation
//! (`CompactBatch.ref_sets`): once it is resolved, each of its series'
//! last value is that series' reference in the new generation.
//!
//! Both sides keep the same [`References`]: the collector applies a
//! generation when it resolves the batch that sets it; the agent when that
//! batch is answered `stored` or `duplicate`, and codes batches only
//! against generations so confirmed. The collector keeps the latest two
//! generations, and per series id at most two reference values; a batch
//! naming any other generation is refused with the transient
//! `UNKNOWN_REFERENCE`, and the agent starts again from no references (a
//! batch coded against nothing always resolves). So a batch stays
//! independently resendable: at every send the agent codes it against what
//! that session holds.
//!
//! See docs/protocol.md, "Value references (revision 5)".

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use super::{CompactBatch, CompactError};
use crate::batch::{Batch, DecimalValues, Values, scaled_checked};
use crate::series::SeriesKey;

/// Reference generations a collector keeps (`Welcome.reference_generations`):
/// the latest and the one before.
pub const REFERENCE_GENERATIONS: u32 = 2;

/// One session's value references (both sides keep one).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct References {
    latest: u64,
    previous: u64,
    /// Per series id its two newest references `(generation, value)`,
    /// newest first; generation 0 is an empty slot.
    values: BTreeMap<u32, [(u64, f64); 2]>,
}

impl References {
    /// The latest generation (0: none).
    pub fn latest(&self) -> u64 {
        self.latest
    }

    /// The generation before the latest (0: none).
    pub fn previous(&self) -> u64 {
        self.previous
    }

    /// Series ids with a reference value.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when no series has a reference value.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Series `id`'s reference value in generation `base`: its value in
    /// the newest generation up to `base` that set one (`None` for base 0,
    /// or when no such generation included the series).
    pub fn reference(&self, id: u32, base: u64) -> Option<f64> {
        if base == 0 {
            return None;
        }
        let slots = self.values.get(&id)?;
        slots
            .iter()
            .find(|&&(g, _)| g != 0 && g <= base)
            .map(|&(_, v)| v)
    }

    /// Checks that a batch coded against `base` and setting `sets` can be
    /// resolved here: `base` is 0, the latest or the previous generation;
    /// a batch that sets a generation sets one above the latest, on top of
    /// the latest (or of none: it starts afresh).
    pub fn check(&self, base: u64, sets: u64) -> Result<(), CompactError> {
        if base != 0 && base != self.latest && base != self.previous {
            return Err(CompactError::UnknownReference(base));
        }
        if sets != 0 {
            if sets <= self.latest {
                return Err(CompactError::Generation {
                    sets,
                    latest: self.latest,
                });
            }
            if base != 0 && base != self.latest {
                return Err(CompactError::UnknownReference(base));
            }
        }
        Ok(())
    }

    /// Applies generation `sets` (0: nothing) of a batch coded against
    /// `base`, whose series' last values are `last`. A generation on top
    /// of none (`base` 0) starts afresh: every earlier reference goes.
    pub fn set(&mut self, base: u64, sets: u64, last: &[(u32, f64)]) -> Result<(), CompactError> {
        if sets == 0 {
            return Ok(());
        }
        self.check(base, sets)?;
        if base == 0 {
            self.values.clear();
            self.previous = 0;
        } else {
            self.previous = self.latest;
        }
        self.latest = sets;
        for &(id, v) in last {
            let slots = self.values.entry(id).or_insert([(0, 0.0); 2]);
            *slots = [(sets, v), slots[0]];
        }
        Ok(())
    }

    /// Resolves `compact` (as [`CompactBatch::resolve`]) against these
    /// references, and applies the generation it sets. Nothing changes
    /// when it does not resolve.
    pub fn resolve(
        &mut self,
        compact: &CompactBatch,
        key: impl FnMut(u32) -> Option<SeriesKey>,
    ) -> Result<Batch, CompactError> {
        let (base, sets) = (compact.ref_base, compact.ref_sets);
        self.check(base, sets)?;
        let mut last = Vec::new();
        let batch = compact.resolve_with(
            key,
            |id| self.reference(id, base),
            |id, v| {
                if sets != 0 {
                    last.push((id, v));
                }
            },
        )?;
        self.set(base, sets, &last)?;
        Ok(batch)
    }

    /// Packs `batch` (dictionary index `i` is series id `ids[i]`) coded
    /// against the latest generation, setting generation `sets` (0: none):
    /// the compact batch, and the last values the generation will hold
    /// (for [`References::set`] once the collector confirms it).
    pub fn encode(
        &self,
        batch: &Batch,
        ids: &[u32],
        sets: u64,
    ) -> Result<(CompactBatch, Vec<(u32, f64)>), CompactError> {
        let base = self.latest;
        let mut compact = CompactBatch::from_batch_with(batch, ids, |id| self.reference(id, base))?;
        compact.ref_base = base;
        compact.ref_sets = sets;
        let mut last = Vec::new();
        if sets != 0 {
            // The values as the collector will read them back.
            compact.readings.for_each_run_with(
                |id| self.reference(id, base),
                |id, run| {
                    if let Some(r) = run.last() {
                        last.push((id, r.value));
                    }
                    Ok(())
                },
            )?;
        }
        Ok((compact, last))
    }
}

/// The values column of readings `values`, series `k` starting at index
/// `starts[k].0` with reference value `starts[k].1`: a decimal column's
/// sum restarts at a series' reference when the reference has an exact
/// integer at the column's scale. The scale, and the choice between
/// decimal and float, are [`Values::encode`]'s.
pub(crate) fn encode_values(values: &[f64], starts: &[(usize, Option<f64>)]) -> Values {
    let plain = Values::encode(values);
    let Values::Decimal(d) = &plain else {
        return plain;
    };
    if starts.iter().all(|(_, r)| r.is_none()) {
        return plain;
    }
    let scale = d.scale;
    let mut deltas = Vec::with_capacity(values.len());
    let mut acc = 0i64;
    let mut next = starts.iter().peekable();
    for (i, &v) in values.iter().enumerate() {
        while let Some(&&(at, r)) = next.peek() {
            if at > i {
                break;
            }
            next.next();
            if at == i
                && let Some(n) = r.and_then(|r| scaled_checked(r, scale))
            {
                acc = n;
            }
        }
        let Some(n) = scaled_checked(v, scale) else {
            return plain;
        };
        let Some(delta) = n.checked_sub(acc) else {
            return plain;
        };
        deltas.push(delta);
        acc = n;
    }
    Values::Decimal(DecimalValues { scale, deltas })
}

#[cfg(test)]
mod tests;
