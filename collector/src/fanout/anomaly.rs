//! Anomaly detection per series: an exponentially weighted moving mean and
//! variance (West/Finch incremental form). After `warm_up` readings, a
//! reading whose z-score `(v - mean) / sd` exceeds `z` in absolute value is
//! an anomaly; the reading is then absorbed into the mean and variance like
//! any other, so a lasting level shift stops being anomalous after a while.
//! A series whose variance is still zero (constant so far) scores any
//! change as infinitely far.
//!
//! A reading older than the newest seen is ignored (event time).

use serde::{Deserialize, Serialize};

use super::rules::AnomalyRule;

/// One series' moving statistics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EwmaState {
    /// Readings absorbed.
    pub n: u64,
    /// Moving mean.
    pub mean: f64,
    /// Moving variance.
    pub var: f64,
    /// Newest timestamp taken into account.
    pub last_ts: i64,
    /// Timestamp of the last anomaly event (cooldown).
    pub last_event_ts: Option<i64>,
}

impl Default for EwmaState {
    fn default() -> Self {
        Self {
            n: 0,
            mean: 0.0,
            var: 0.0,
            last_ts: i64::MIN,
            last_event_ts: None,
        }
    }
}

/// An anomalous reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Anomaly {
    /// Its z-score against the statistics before it.
    pub z: f64,
    /// The mean before it.
    pub mean: f64,
    /// The standard deviation before it.
    pub sd: f64,
}

impl EwmaState {
    /// Scores and absorbs reading `(ts, v)`.
    pub fn observe(&mut self, rule: &AnomalyRule, ts: i64, v: f64) -> Option<Anomaly> {
        if ts < self.last_ts || !v.is_finite() {
            return None;
        }
        self.last_ts = ts;
        if self.n == 0 {
            self.n = 1;
            self.mean = v;
            self.var = 0.0;
            return None;
        }
        let diff = v - self.mean;
        let sd = self.var.sqrt();
        let mut out = None;
        if self.n >= rule.raw.warm_up {
            let z = if sd > 0.0 {
                diff / sd
            } else if diff == 0.0 {
                0.0
            } else {
                f64::INFINITY.copysign(diff)
            };
            let cooled = self
                .last_event_ts
                .is_none_or(|t| ts.saturating_sub(t) >= rule.cooldown_ns);
            if z.abs() > rule.raw.z && cooled {
                self.last_event_ts = Some(ts);
                out = Some(Anomaly {
                    z,
                    mean: self.mean,
                    sd,
                });
            }
        }
        let a = rule.raw.alpha;
        let incr = a * diff;
        self.mean += incr;
        self.var = (1.0 - a) * (self.var + diff * incr);
        self.n += 1;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::rules::AnomalyRaw;

    fn rule(warm_up: u64, cooldown: &str) -> AnomalyRule {
        AnomalyRule::try_from(AnomalyRaw {
            name: "txn".into(),
            selector: "txn_amount".into(),
            alpha: 0.1,
            z: 4.0,
            warm_up,
            cooldown: cooldown.into(),
        })
        .unwrap()
    }

    /// A customer's usual transactions: 40..60, deterministic.
    fn usual(i: i64) -> f64 {
        50.0 + ((i * 7) % 21 - 10) as f64
    }

    #[test]
    fn a_sudden_jump_is_an_anomaly_after_warm_up() {
        let r = rule(20, "0s");
        let mut st = EwmaState::default();
        for i in 0..100 {
            assert_eq!(st.observe(&r, i, usual(i)), None, "reading {i}");
        }
        let a = st.observe(&r, 100, 900.0).expect("anomaly");
        assert!(a.z > 4.0, "{a:?}");
        assert!((a.mean - 50.0).abs() < 5.0, "{a:?}");
        // Back to usual: no more events.
        for i in 101..110 {
            assert_eq!(st.observe(&r, i, usual(i)), None);
        }
    }

    #[test]
    fn nothing_is_judged_during_warm_up() {
        let r = rule(20, "0s");
        let mut st = EwmaState::default();
        for i in 0..19 {
            st.observe(&r, i, usual(i));
        }
        // The 20th reading (n = 19 absorbed) is not judged, however far off.
        assert_eq!(st.observe(&r, 19, 1e6), None);
        assert_eq!(st.n, 20);
    }

    #[test]
    fn cooldown_and_backwards_clock() {
        let r = rule(5, "10ns");
        let mut st = EwmaState::default();
        for i in 0..50 {
            st.observe(&r, i, usual(i));
        }
        assert!(st.observe(&r, 50, 1e4).is_some());
        // Within the cooldown: scored but not reported.
        assert_eq!(st.observe(&r, 55, 1e6), None);
        // Older than the newest reading: ignored entirely.
        let before = st;
        assert_eq!(st.observe(&r, 10, 1e9), None);
        assert_eq!(st, before);
        assert!(st.observe(&r, 60, -1e9).is_some());
    }

    #[test]
    fn a_constant_series_flags_any_change() {
        let r = rule(3, "0s");
        let mut st = EwmaState::default();
        for i in 0..5 {
            assert_eq!(st.observe(&r, i, 7.0), None);
        }
        let a = st.observe(&r, 5, 7.5).unwrap();
        assert_eq!(a.z, f64::INFINITY);
    }
}
