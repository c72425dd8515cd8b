//! PromQL functions over range vectors and instant vectors, as Prometheus
//! 2.42 computes them (extrapolation, counter resets, Kahan sums).

use super::source::QueryError;

/// Functions over a range vector (`f(x[5m])`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeFn {
    /// `rate`
    Rate,
    /// `increase`
    Increase,
    /// `delta`
    Delta,
    /// `irate`
    Irate,
    /// `idelta`
    Idelta,
    /// `changes`
    Changes,
    /// `resets`
    Resets,
    /// `avg_over_time`
    Avg,
    /// `sum_over_time`
    Sum,
    /// `count_over_time`
    Count,
    /// `min_over_time`
    Min,
    /// `max_over_time`
    Max,
    /// `last_over_time` (keeps the metric name)
    Last,
    /// `stddev_over_time`
    Stddev,
    /// `stdvar_over_time`
    Stdvar,
    /// `present_over_time`
    Present,
    /// `quantile_over_time(φ, …)`
    Quantile,
}

impl RangeFn {
    /// The function of this name.
    pub fn of(name: &str) -> Option<Self> {
        Some(match name {
            "rate" => Self::Rate,
            "increase" => Self::Increase,
            "delta" => Self::Delta,
            "irate" => Self::Irate,
            "idelta" => Self::Idelta,
            "changes" => Self::Changes,
            "resets" => Self::Resets,
            "avg_over_time" => Self::Avg,
            "sum_over_time" => Self::Sum,
            "count_over_time" => Self::Count,
            "min_over_time" => Self::Min,
            "max_over_time" => Self::Max,
            "last_over_time" => Self::Last,
            "stddev_over_time" => Self::Stddev,
            "stdvar_over_time" => Self::Stdvar,
            "present_over_time" => Self::Present,
            "quantile_over_time" => Self::Quantile,
            _ => return None,
        })
    }

    /// The result keeps `__name__` (only `last_over_time` does).
    pub fn keeps_name(self) -> bool {
        self == Self::Last
    }

    /// Applies the function to the samples of one series in the window
    /// `[range_start, range_end]` (ms). `param` is φ for quantiles. `None`:
    /// no output for this series.
    pub fn apply(
        self,
        samples: &[(i64, f64)],
        range_start: i64,
        range_end: i64,
        param: f64,
    ) -> Option<f64> {
        if samples.is_empty() {
            return None;
        }
        let values = || samples.iter().map(|s| s.1);
        Some(match self {
            Self::Rate => extrapolated_rate(samples, range_start, range_end, true, true)?,
            Self::Increase => extrapolated_rate(samples, range_start, range_end, true, false)?,
            Self::Delta => extrapolated_rate(samples, range_start, range_end, false, false)?,
            Self::Irate => instant_value(samples, true)?,
            Self::Idelta => instant_value(samples, false)?,
            Self::Changes => samples
                .windows(2)
                .filter(|w| w[0].1 != w[1].1 && !(w[0].1.is_nan() && w[1].1.is_nan()))
                .count() as f64,
            Self::Resets => samples.windows(2).filter(|w| w[1].1 < w[0].1).count() as f64,
            Self::Avg => avg(values()),
            Self::Sum => {
                let (mut sum, mut c) = (0.0, 0.0);
                for v in values() {
                    (sum, c) = kahan_inc(v, sum, c);
                }
                if sum.is_infinite() { sum } else { sum + c }
            }
            Self::Count => samples.len() as f64,
            Self::Min => {
                values().fold(samples[0].1, |m, v| if v < m || m.is_nan() { v } else { m })
            }
            Self::Max => {
                values().fold(samples[0].1, |m, v| if v > m || m.is_nan() { v } else { m })
            }
            Self::Last => samples[samples.len() - 1].1,
            Self::Stddev => stdvar(values()).sqrt(),
            Self::Stdvar => stdvar(values()),
            Self::Present => 1.0,
            Self::Quantile => quantile(param, values().collect()),
        })
    }
}

/// Neumaier's improved Kahan summation step.
pub fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

fn avg(values: impl Iterator<Item = f64>) -> f64 {
    let (mut mean, mut count, mut c) = (0.0f64, 0.0f64, 0.0f64);
    for v in values {
        count += 1.0;
        if mean.is_infinite() {
            if v.is_infinite() && (mean > 0.0) == (v > 0.0) {
                continue;
            }
            if !v.is_infinite() && !v.is_nan() {
                continue;
            }
        }
        (mean, c) = kahan_inc(v / count - mean / count, mean, c);
    }
    if mean.is_infinite() { mean } else { mean + c }
}

fn stdvar(values: impl Iterator<Item = f64>) -> f64 {
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for v in values {
        count += 1.0;
        let delta = v - (mean + c_mean);
        (mean, c_mean) = kahan_inc(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_inc(delta * (v - (mean + c_mean)), aux, c_aux);
    }
    (aux + c_aux) / count
}

/// The φ-quantile of `values`, interpolating between neighbours.
pub fn quantile(q: f64, mut values: Vec<f64>) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    // NaN sorts first, as in Prometheus.
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal),
    });
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

/// `rate`, `increase` and `delta`: the change over the samples in the
/// window, with counter resets added back (`counter`), extrapolated to the
/// window's edges when the first and last samples are near them (within
/// 1.1 average sample intervals; otherwise by half an interval), never
/// below a counter's zero point; per second for `rate`.
fn extrapolated_rate(
    samples: &[(i64, f64)],
    range_start: i64,
    range_end: i64,
    counter: bool,
    per_second: bool,
) -> Option<f64> {
    if samples.len() < 2 {
        return None;
    }
    let (first, last) = (samples[0], samples[samples.len() - 1]);
    let mut result = last.1 - first.1;
    if counter {
        let mut prev = first.1;
        for s in &samples[1..] {
            if s.1 < prev {
                result += prev;
            }
            prev = s.1;
        }
    }
    let mut to_start = (first.0 - range_start) as f64 / 1000.0;
    let to_end = (range_end - last.0) as f64 / 1000.0;
    let sampled = (last.0 - first.0) as f64 / 1000.0;
    let average = sampled / (samples.len() - 1) as f64;
    if counter && result > 0.0 && first.1 >= 0.0 {
        let to_zero = sampled * (first.1 / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = average * 1.1;
    let mut interval = sampled;
    interval += if to_start < threshold {
        to_start
    } else {
        average / 2.0
    };
    interval += if to_end < threshold {
        to_end
    } else {
        average / 2.0
    };
    let mut factor = interval / sampled;
    if per_second {
        factor /= (range_end - range_start) as f64 / 1000.0;
    }
    Some(result * factor)
}

/// `irate` and `idelta`: from the last two samples.
fn instant_value(samples: &[(i64, f64)], rate: bool) -> Option<f64> {
    if samples.len() < 2 {
        return None;
    }
    let last = samples[samples.len() - 1];
    let prev = samples[samples.len() - 2];
    let mut v = if rate && last.1 < prev.1 {
        last.1
    } else {
        last.1 - prev.1
    };
    let interval = last.0 - prev.0;
    if interval == 0 {
        return None;
    }
    if rate {
        v /= interval as f64 / 1000.0;
    }
    Some(v)
}

/// Functions of an instant vector's values that drop `__name__`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueFn {
    /// `abs`
    Abs,
    /// `ceil`
    Ceil,
    /// `floor`
    Floor,
    /// `exp`
    Exp,
    /// `sqrt`
    Sqrt,
    /// `ln`
    Ln,
    /// `log2`
    Log2,
    /// `log10`
    Log10,
    /// `sgn`
    Sgn,
    /// `round(v, to_nearest = 1)`
    Round,
    /// `clamp(v, min, max)`
    Clamp,
    /// `clamp_min(v, min)`
    ClampMin,
    /// `clamp_max(v, max)`
    ClampMax,
}

impl ValueFn {
    /// The function of this name.
    pub fn of(name: &str) -> Option<Self> {
        Some(match name {
            "abs" => Self::Abs,
            "ceil" => Self::Ceil,
            "floor" => Self::Floor,
            "exp" => Self::Exp,
            "sqrt" => Self::Sqrt,
            "ln" => Self::Ln,
            "log2" => Self::Log2,
            "log10" => Self::Log10,
            "sgn" => Self::Sgn,
            "round" => Self::Round,
            "clamp" => Self::Clamp,
            "clamp_min" => Self::ClampMin,
            "clamp_max" => Self::ClampMax,
            _ => return None,
        })
    }

    /// Applies it; `a` and `b` are the scalar arguments after the vector.
    pub fn apply(self, v: f64, a: Option<f64>, b: Option<f64>) -> f64 {
        match self {
            Self::Abs => v.abs(),
            Self::Ceil => v.ceil(),
            Self::Floor => v.floor(),
            Self::Exp => v.exp(),
            Self::Sqrt => v.sqrt(),
            Self::Ln => v.ln(),
            Self::Log2 => v.log2(),
            Self::Log10 => v.log10(),
            Self::Sgn => {
                if v > 0.0 {
                    1.0
                } else if v < 0.0 {
                    -1.0
                } else {
                    v
                }
            }
            Self::Round => {
                let inverse = 1.0 / a.unwrap_or(1.0);
                (v * inverse + 0.5).floor() / inverse
            }
            Self::Clamp => {
                let (lo, hi) = (a.unwrap_or(f64::NAN), b.unwrap_or(f64::NAN));
                go_max(lo, go_min(hi, v))
            }
            Self::ClampMin => go_max(a.unwrap_or(f64::NAN), v),
            Self::ClampMax => go_min(a.unwrap_or(f64::NAN), v),
        }
    }
}

/// Go's `math.Max`/`math.Min` propagate NaN; Rust's do not. The clamp
/// family goes through these.
pub fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// See [`go_max`].
pub fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

/// The arity check for functions the engine knows, as Prometheus words it.
pub fn expect_args(name: &str, got: usize, min: usize, max: usize) -> Result<(), QueryError> {
    if got < min || got > max {
        return Err(QueryError::BadData(format!(
            "expected {min}..{max} arguments in call to {name:?}, got {got}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_extrapolates_to_the_window_and_adds_resets_back() {
        // 10 s apart over a 60 s window ending at 60 s, first sample at 5 s.
        let s: Vec<(i64, f64)> = (0..6)
            .map(|i| (5_000 + i * 10_000, i as f64 * 10.0))
            .collect();
        // increase: 50 over 50 s sampled; 5 s to each edge (< 11 s):
        // extrapolated to 60 s but not below zero: to_zero = 0, so start
        // extrapolation is 0 → 50 * 55/50 = 55.
        let inc = RangeFn::Increase.apply(&s, 0, 60_000, 0.0).unwrap();
        assert!((inc - 55.0).abs() < 1e-9, "{inc}");
        let rate = RangeFn::Rate.apply(&s, 0, 60_000, 0.0).unwrap();
        assert!((rate - 55.0 / 60.0).abs() < 1e-9);
        // A reset: 0 10 20 | 5 15 25: 20 + 25 = 45 of increase sampled.
        let r = [
            (5_000, 0.0),
            (15_000, 10.0),
            (25_000, 20.0),
            (35_000, 5.0),
            (45_000, 15.0),
            (55_000, 25.0),
        ];
        let inc = RangeFn::Increase.apply(&r, 0, 60_000, 0.0).unwrap();
        assert!((inc - 45.0 * 55.0 / 50.0).abs() < 1e-9, "{inc}");
        // delta does not treat a decrease as a reset, and may extrapolate
        // both ways.
        let d = RangeFn::Delta.apply(&r, 0, 60_000, 0.0).unwrap();
        assert!((d - 25.0 * 60.0 / 50.0).abs() < 1e-9, "{d}");
        // One sample: no rate.
        assert_eq!(RangeFn::Rate.apply(&r[..1], 0, 60_000, 0.0), None);
        // Far from the edges: half an interval each side.
        let far = [(20_000, 1.0), (30_000, 2.0), (40_000, 3.0)];
        let inc = RangeFn::Delta.apply(&far, 0, 60_000, 0.0).unwrap();
        assert!((inc - 2.0 * 30.0 / 20.0).abs() < 1e-9, "{inc}");
    }

    #[test]
    fn irate_uses_the_last_two_samples() {
        let r = [(0, 5.0), (10_000, 30.0), (20_000, 10.0)];
        assert_eq!(RangeFn::Irate.apply(&r, 0, 20_000, 0.0), Some(1.0));
        assert_eq!(RangeFn::Idelta.apply(&r, 0, 20_000, 0.0), Some(-20.0));
    }

    #[test]
    fn over_time_functions() {
        let r = [(0, 1.0), (1, 2.0), (2, 4.0), (3, f64::NAN)];
        assert_eq!(RangeFn::Count.apply(&r, 0, 3, 0.0), Some(4.0));
        assert_eq!(RangeFn::Min.apply(&r[..3], 0, 3, 0.0), Some(1.0));
        assert_eq!(RangeFn::Max.apply(&r[..3], 0, 3, 0.0), Some(4.0));
        assert_eq!(RangeFn::Sum.apply(&r[..3], 0, 3, 0.0), Some(7.0));
        assert_eq!(RangeFn::Last.apply(&r[..3], 0, 3, 0.0), Some(4.0));
        let avg = RangeFn::Avg.apply(&r[..3], 0, 3, 0.0).unwrap();
        assert!((avg - 7.0 / 3.0).abs() < 1e-12);
        assert_eq!(RangeFn::Quantile.apply(&r[..3], 0, 3, 0.5), Some(2.0));
        assert_eq!(RangeFn::Quantile.apply(&r[..3], 0, 3, 0.75), Some(3.0));
        let var = RangeFn::Stdvar.apply(&r[..3], 0, 3, 0.0).unwrap();
        assert!((var - 14.0 / 9.0).abs() < 1e-12, "{var}");
        assert_eq!(RangeFn::Changes.apply(&r[..3], 0, 3, 0.0), Some(2.0));
        assert_eq!(quantile(1.5, vec![1.0]), f64::INFINITY);
    }
}
