//! DDSketch: a mergeable quantile sketch with 1% relative accuracy.
//!
//! Masson, Rim and Lee, "DDSketch: A Fast and Fully-Mergeable Quantile Sketch
//! with Relative-Error Guarantees" (VLDB 2019). A value `v > 0` falls in bin
//! `i = ceil(ln v / ln γ)` with `γ = (1 + α) / (1 − α)` and `α = 0.01`; the bin
//! stands for `2γ^i / (γ + 1)`, which is within 1% of every value in it.
//! Negative values use a mirrored store; values with `|v| <=`
//! [`MIN_INDEXABLE`] count as zero.
//!
//! Each store keeps at most [`MAX_BINS`] contiguous bins; when a value would
//! need more, the bins of smallest magnitude are merged into one, so accuracy
//! is kept for the large quantiles (collapsing lowest, as in the paper).
//!
//! Bin indices are computed with `libm` on every build, so a device, an agent
//! and a collector put the same value in the same bin.

use alloc::vec::Vec;

use crate::wire_struct;

/// Relative accuracy of every quantile estimate.
pub const RELATIVE_ACCURACY: f64 = 0.01;
/// Most bins in each of the positive and negative stores.
pub const MAX_BINS: usize = 2048;
/// Magnitudes at or below this count in the zero bin.
pub const MIN_INDEXABLE: f64 = 1e-9;

const GAMMA: f64 = (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY);

fn ln_gamma() -> f64 {
    libm::log(GAMMA)
}

wire_struct! {
    /// Contiguous bins starting at `offset`.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct Bins {
        /// Index of `counts[0]`.
        pub offset: i32,
        /// Count per bin.
        pub counts: Vec<u64>,
    }
}

wire_struct! {
    /// A DDSketch; see the module docs.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct DdSketch {
        /// Values with magnitude at most [`MIN_INDEXABLE`].
        pub zero: u64,
        /// Bins of positive values.
        pub positive: Bins,
        /// Bins of negative values, indexed by magnitude.
        pub negative: Bins,
    }
}

/// A sketch that breaks its bounds (from a decoder: the wire can say anything).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SketchError {
    /// A store has more than [`MAX_BINS`] bins.
    #[error("sketch store has {bins} bins, at most {MAX_BINS} allowed")]
    TooManyBins {
        /// Bins found.
        bins: usize,
    },
    /// `offset + bins` does not fit an `i32` bin index.
    #[error("sketch bin index overflows")]
    IndexOverflow,
}

impl Bins {
    fn total(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, &c| a.saturating_add(c))
    }

    fn validate(&self) -> Result<(), SketchError> {
        if self.counts.len() > MAX_BINS {
            return Err(SketchError::TooManyBins {
                bins: self.counts.len(),
            });
        }
        // len <= MAX_BINS, so it fits an i32.
        self.offset
            .checked_add(self.counts.len() as i32)
            .ok_or(SketchError::IndexOverflow)?;
        Ok(())
    }

    fn add(&mut self, index: i32, count: u64) {
        if self.counts.is_empty() {
            self.offset = index;
            self.counts.push(count);
            return;
        }
        let end = self.offset + self.counts.len() as i32; // exclusive
        if index < self.offset {
            // Grow downwards, unless that would exceed MAX_BINS: then the value
            // joins the lowest bin (collapsing lowest).
            let grow = (self.offset - index) as usize;
            if self.counts.len() + grow > MAX_BINS {
                self.counts[0] = self.counts[0].saturating_add(count);
                return;
            }
            let mut counts = Vec::with_capacity(self.counts.len() + grow);
            counts.resize(grow, 0);
            counts.extend_from_slice(&self.counts);
            counts[0] = count;
            self.counts = counts;
            self.offset = index;
        } else if index >= end {
            let new_len = (index - self.offset) as usize + 1;
            if new_len > MAX_BINS {
                // Merge the lowest bins so that `index` fits.
                let shift = new_len - MAX_BINS;
                let merged = self.counts[..shift.min(self.counts.len())]
                    .iter()
                    .fold(0u64, |a, &c| a.saturating_add(c));
                self.counts.drain(..shift.min(self.counts.len()));
                self.offset += shift as i32;
                if self.counts.is_empty() {
                    self.offset = index;
                    self.counts.push(merged);
                } else {
                    self.counts[0] = self.counts[0].saturating_add(merged);
                }
                let new_len = (index - self.offset) as usize + 1;
                self.counts.resize(new_len, 0);
            } else {
                self.counts.resize(new_len, 0);
            }
            let i = (index - self.offset) as usize;
            self.counts[i] = self.counts[i].saturating_add(count);
        } else {
            let i = (index - self.offset) as usize;
            self.counts[i] = self.counts[i].saturating_add(count);
        }
    }
}

fn bin_index(magnitude: f64) -> i32 {
    let i = libm::ceil(libm::log(magnitude) / ln_gamma());
    // ln(f64::MAX)/ln γ ≈ 35 000, ln(1e-9)/ln γ ≈ −1 030: always in i32.
    i as i32
}

fn bin_value(index: i32) -> f64 {
    2.0 * libm::exp(f64::from(index) * ln_gamma()) / (GAMMA + 1.0)
}

impl DdSketch {
    /// An empty sketch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one value. NaN is ignored (callers count it elsewhere).
    pub fn add(&mut self, value: f64) {
        self.add_n(value, 1);
    }

    /// Adds `count` copies of `value`.
    pub fn add_n(&mut self, value: f64, count: u64) {
        if value.is_nan() || count == 0 {
            return;
        }
        let magnitude = libm::fabs(value);
        if magnitude <= MIN_INDEXABLE {
            self.zero = self.zero.saturating_add(count);
        } else if value > 0.0 {
            self.positive.add(bin_index(magnitude.min(f64::MAX)), count);
        } else {
            self.negative.add(bin_index(magnitude.min(f64::MAX)), count);
        }
    }

    /// Folds `other` into `self`; the result is the sketch of both inputs.
    pub fn merge(&mut self, other: &DdSketch) {
        self.zero = self.zero.saturating_add(other.zero);
        for (store, theirs) in [
            (&mut self.positive, &other.positive),
            (&mut self.negative, &other.negative),
        ] {
            for (i, &c) in theirs.counts.iter().enumerate() {
                if c > 0 {
                    store.add(theirs.offset.saturating_add(i as i32), c);
                }
            }
        }
    }

    /// Number of values added.
    pub fn count(&self) -> u64 {
        self.zero
            .saturating_add(self.positive.total())
            .saturating_add(self.negative.total())
    }

    /// The `q`-quantile (0 ≤ q ≤ 1) within 1% relative error, or `None` for an
    /// empty sketch or a `q` outside [0, 1].
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        // Rank of the wanted value among the sorted values, 0-based.
        let rank = (q * (count - 1) as f64) as u64;
        let mut seen = 0u64;
        for (i, &c) in self.negative.counts.iter().enumerate().rev() {
            seen = seen.saturating_add(c);
            if seen > rank {
                return Some(-bin_value(self.negative.offset + i as i32));
            }
        }
        seen = seen.saturating_add(self.zero);
        if seen > rank {
            return Some(0.0);
        }
        for (i, &c) in self.positive.counts.iter().enumerate() {
            seen = seen.saturating_add(c);
            if seen > rank {
                return Some(bin_value(self.positive.offset + i as i32));
            }
        }
        // Only reachable with saturated counts; the largest bin is the answer.
        self.positive
            .counts
            .len()
            .checked_sub(1)
            .map(|i| bin_value(self.positive.offset + i as i32))
    }

    /// Checks the bounds a decoded sketch must respect.
    pub fn validate(&self) -> Result<(), SketchError> {
        self.positive.validate()?;
        self.negative.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn exact_quantile(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() - 1) as f64) as usize]
    }

    #[test]
    fn quantiles_within_one_percent() {
        let mut s = DdSketch::new();
        let values: Vec<f64> = (1..=10_000).map(|i| f64::from(i) * 0.37).collect();
        for &v in &values {
            s.add(v);
        }
        assert_eq!(s.count(), 10_000);
        for q in [0.0, 0.1, 0.5, 0.9, 0.99, 1.0] {
            let want = exact_quantile(&values, q);
            let got = s.quantile(q).unwrap();
            assert!(
                (got - want).abs() <= want * RELATIVE_ACCURACY,
                "q={q} got={got} want={want}"
            );
        }
        assert_eq!(s.quantile(1.5), None);
        assert_eq!(DdSketch::new().quantile(0.5), None);
    }

    #[test]
    fn bins_are_bounded_and_collapse_lowest() {
        let mut s = DdSketch::new();
        // 1e-6 .. 1e12 spans ~2100 bins at 1%: more than MAX_BINS.
        let mut v = 1e-6;
        while v < 1e12 {
            s.add(v);
            v *= 1.01;
        }
        assert_eq!(s.positive.counts.len(), MAX_BINS);
        let top = s.quantile(1.0).unwrap();
        assert!((top - 1e12).abs() <= 1e12 * 0.011, "{top}");
    }

    proptest! {
        #[test]
        fn merge_equals_sketch_of_union(
            a in proptest::collection::vec(-1e6f64..1e6, 0..200),
            b in proptest::collection::vec(-1e6f64..1e6, 0..200),
        ) {
            let mut sa = DdSketch::new();
            a.iter().for_each(|&v| sa.add(v));
            let mut sb = DdSketch::new();
            b.iter().for_each(|&v| sb.add(v));
            let mut all = DdSketch::new();
            a.iter().chain(&b).for_each(|&v| all.add(v));
            sa.merge(&sb);
            prop_assert_eq!(sa.count(), all.count());
            for q in [0.0, 0.25, 0.5, 0.75, 1.0] {
                prop_assert_eq!(sa.quantile(q), all.quantile(q));
            }
        }

        #[test]
        fn relative_error_holds(values in proptest::collection::vec(1e-3f64..1e9, 1..500), q in 0.0f64..=1.0) {
            let mut s = DdSketch::new();
            values.iter().for_each(|&v| s.add(v));
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            let want = exact_quantile(&sorted, q);
            let got = s.quantile(q).unwrap();
            prop_assert!((got - want).abs() <= want * RELATIVE_ACCURACY * 1.000_001);
        }
    }
}
